//! The guest's protocol lines on COM1 (`BATON <word> ...`, docs/guest-interface.md), typed: one
//! [`GuestLine`] per line the guest prints, its `Display` (the line as printed, without the `\n`)
//! and one parser, [`GuestLine::parse`], which the shim uses for every guest it follows.
//!
//! The lines with a body of their own keep their formatter and strict parser next to their data:
//! `BATON result` in [`crate::report`], `BATON port-stats` in [`crate::stats`], `BATON timeline` in
//! [`crate::timeline`]; this module dispatches on the word and checks the short lines itself.
//!
//! Guest output is untrusted (invariant I6): parsing never panics, allocates nothing and borrows
//! the free-text parts (panic and peer-fault messages) from the input. A line that is not a
//! protocol line (free-form log output such as `[INFO ] ...`) parses to `None`; a protocol line
//! that is malformed parses to `Some(Err(..))` naming its [`Kind`], so callers can say which line
//! was bad and how.

use crate::cmdline::Role;
use crate::guest_steps::{self, StepsError, StepsLine};
use crate::report::{self, GuestReport, ReportError};
use crate::stats::{self, PortStats, StatsError};
use crate::text::{ShortStr, parse_u64};
use crate::timeline::{self, TimelineError, TimelineLine};

/// What every protocol line starts with.
pub const PREFIX: &str = "BATON ";

/// The word after [`PREFIX`]: which protocol line it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `ready role=<role> vm=<id>`: booted, command line accepted.
    Ready,
    /// `waiting-for-disk`: booted with `disk=hotplug`, polling for the hot-added disk.
    WaitingForDisk,
    /// `first-io`: the first request was submitted to a device.
    FirstIo,
    /// `port-stats ...`: one port's completions and latency ([`crate::stats`]).
    PortStats,
    /// `timeline ...`: completions per bin of the workload ([`crate::timeline`]).
    Timeline,
    /// `peer-fault <message>`: the peer broke the ring protocol.
    PeerFault,
    /// `fault-injected`: a peer started with `fault=bad-completion` published its bad entry.
    FaultInjected,
    /// `switch kind=<handoff|failback> n=<n> gap_us=<µs>`: the owner's completion gap around one
    /// switch of the device ([`SwitchLine`]).
    Switch,
    /// `steps role=.. kind=.. n=.. at=..`: when and how a guest took each step of one switch
    /// ([`crate::guest_steps`]).
    Steps,
    /// `result ...`: the workload's report ([`crate::report`]).
    Result,
    /// `net-result ...`: the NIC workload's counts ([`NetResultLine`], issue 11).
    NetResult,
    /// `panic <message>`: the guest panicked (it then exits with failure).
    Panic,
}

impl Kind {
    /// Every kind, in the order docs/guest-interface.md lists them.
    pub const ALL: [Kind; 12] = [
        Kind::Ready,
        Kind::WaitingForDisk,
        Kind::FirstIo,
        Kind::PortStats,
        Kind::Timeline,
        Kind::PeerFault,
        Kind::FaultInjected,
        Kind::Switch,
        Kind::Steps,
        Kind::Result,
        Kind::NetResult,
        Kind::Panic,
    ];

    /// The word as printed after [`PREFIX`].
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Kind::Ready => "ready",
            Kind::WaitingForDisk => "waiting-for-disk",
            Kind::FirstIo => "first-io",
            Kind::PortStats => "port-stats",
            Kind::Timeline => "timeline",
            Kind::PeerFault => "peer-fault",
            Kind::FaultInjected => "fault-injected",
            Kind::Switch => "switch",
            Kind::Steps => "steps",
            Kind::Result => "result",
            Kind::NetResult => "net-result",
            Kind::Panic => "panic",
        }
    }

    /// The kind printed as `word`, if any.
    #[must_use]
    pub fn from_word(word: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.word() == word)
    }
}

impl core::fmt::Display for Kind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.word())
    }
}

/// One protocol line of the guest, borrowing its free text from the parsed input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestLine<'a> {
    /// `BATON ready role=<role> vm=<id>`.
    Ready {
        /// The role the guest took from its command line.
        role: Role,
        /// Its VM id.
        vm: u32,
    },
    /// `BATON waiting-for-disk`.
    WaitingForDisk,
    /// `BATON first-io`.
    FirstIo,
    /// `BATON port-stats port=.. completions=.. ...`.
    PortStats(PortStats),
    /// `BATON timeline start_us=.. bin_us=.. from=.. counts=..`.
    Timeline(TimelineLine),
    /// `BATON peer-fault <message>`.
    PeerFault(&'a str),
    /// `BATON fault-injected`.
    FaultInjected,
    /// `BATON switch kind=.. n=.. gap_us=..`.
    Switch(SwitchLine),
    /// `BATON steps role=.. kind=.. n=.. at=..`.
    Steps(StepsLine),
    /// `BATON result key=value ...`.
    Result(GuestReport),
    /// `BATON net-result tx_sent=.. rx_received=.. ...`.
    NetResult(NetResultLine),
    /// `BATON panic <message>` (the message may be empty).
    Panic(&'a str),
    /// `BATON <word> ...` with a word this version does not know: everything after the prefix.
    Unknown(&'a str),
}

impl<'a> GuestLine<'a> {
    /// Parses one console line (a trailing `\r`/`\n` is ignored).
    ///
    /// `None`: not a protocol line (it does not start with [`PREFIX`]). `Some(Err(e))`: a protocol
    /// line of kind [`LineError::kind`] that is malformed. Strict: words without a body take no
    /// arguments; `result`, `port-stats` and `timeline` are checked by their own parsers (with
    /// their length limits). Never panics.
    #[must_use]
    pub fn parse(line: &'a str) -> Option<Result<GuestLine<'a>, LineError>> {
        let text = line.trim_end_matches(['\r', '\n']);
        let rest = text.strip_prefix(PREFIX)?;
        let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let Some(kind) = Kind::from_word(word) else {
            return Some(Ok(GuestLine::Unknown(rest)));
        };
        let bare = |l: GuestLine<'a>| {
            if rest.len() == word.len() {
                Ok(l)
            } else {
                Err(LineError::UnexpectedArgs(kind))
            }
        };
        Some(match kind {
            Kind::Ready => parse_ready(args),
            Kind::Switch => parse_switch(args).map(GuestLine::Switch),
            Kind::Steps => guest_steps::parse_args(args)
                .map(GuestLine::Steps)
                .map_err(LineError::Steps),
            Kind::WaitingForDisk => bare(GuestLine::WaitingForDisk),
            Kind::FirstIo => bare(GuestLine::FirstIo),
            Kind::FaultInjected => bare(GuestLine::FaultInjected),
            Kind::PortStats => stats::parse_line(text)
                .map(GuestLine::PortStats)
                .map_err(LineError::PortStats),
            Kind::Timeline => timeline::parse_line(text)
                .map(GuestLine::Timeline)
                .map_err(LineError::Timeline),
            Kind::Result => report::parse_line(text)
                .map(GuestLine::Result)
                .map_err(LineError::Result),
            Kind::NetResult => parse_net_result(args).map(GuestLine::NetResult),
            Kind::PeerFault => Ok(GuestLine::PeerFault(args)),
            Kind::Panic => Ok(GuestLine::Panic(args)),
        })
    }

    /// Which line this is; `None` for [`GuestLine::Unknown`].
    #[must_use]
    pub fn kind(&self) -> Option<Kind> {
        Some(match self {
            GuestLine::Ready { .. } => Kind::Ready,
            GuestLine::WaitingForDisk => Kind::WaitingForDisk,
            GuestLine::FirstIo => Kind::FirstIo,
            GuestLine::PortStats(_) => Kind::PortStats,
            GuestLine::Timeline(_) => Kind::Timeline,
            GuestLine::PeerFault(_) => Kind::PeerFault,
            GuestLine::FaultInjected => Kind::FaultInjected,
            GuestLine::Switch(_) => Kind::Switch,
            GuestLine::Steps(_) => Kind::Steps,
            GuestLine::Result(_) => Kind::Result,
            GuestLine::NetResult(_) => Kind::NetResult,
            GuestLine::Panic(_) => Kind::Panic,
            GuestLine::Unknown(_) => return None,
        })
    }
}

/// Why [`key_values`] rejected the arguments of a line.
enum FieldError {
    /// The key expected next is absent or another word is there.
    Expected(&'static str),
    /// Words after the last key.
    Extra,
}

/// The values of `keys` in `args`: one `key=value` word per key, in that order, separated by
/// single spaces, nothing after the last one.
fn key_values<'a, const N: usize>(
    args: &'a str,
    keys: [&'static str; N],
) -> Result<[&'a str; N], FieldError> {
    let mut words = args.split(' ');
    let mut values = [""; N];
    for (value, key) in values.iter_mut().zip(keys) {
        *value = words
            .next()
            .and_then(|w| w.strip_prefix(key))
            .and_then(|w| w.strip_prefix('='))
            .ok_or(FieldError::Expected(key))?;
    }
    match words.next() {
        Some(_) => Err(FieldError::Extra),
        None => Ok(values),
    }
}

fn parse_ready(args: &str) -> Result<GuestLine<'static>, LineError> {
    let [role_word, vm_word] = key_values(args, ["role", "vm"]).map_err(|e| {
        LineError::Ready(match e {
            FieldError::Expected(key) => ReadyError::Expected(key),
            FieldError::Extra => ReadyError::Extra,
        })
    })?;
    let role = Role::from_word(role_word).ok_or(LineError::Ready(ReadyError::BadValue(
        ShortStr::new(role_word),
    )))?;
    let vm = parse_u64(vm_word)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(LineError::Ready(ReadyError::BadValue(ShortStr::new(
            vm_word,
        ))))?;
    Ok(GuestLine::Ready { role, vm })
}

fn parse_net_result(args: &str) -> Result<NetResultLine, LineError> {
    let v = key_values(args, NetResultLine::KEYS).map_err(|e| {
        LineError::NetResult(match e {
            FieldError::Expected(key) => FieldsError::Expected(key),
            FieldError::Extra => FieldsError::Extra,
        })
    })?;
    let mut n = [0u64; 7];
    for (out, w) in n.iter_mut().zip(v) {
        *out = parse_u64(w)
            .ok_or_else(|| LineError::NetResult(FieldsError::BadValue(ShortStr::new(w))))?;
    }
    let [
        tx_sent,
        rx_received,
        rx_bad,
        rx_duplicated,
        rx_reordered,
        rx_skipped,
        elapsed_us,
    ] = n;
    Ok(NetResultLine {
        tx_sent,
        rx_received,
        rx_bad,
        rx_duplicated,
        rx_reordered,
        rx_skipped,
        elapsed_us,
    })
}

fn parse_switch(args: &str) -> Result<SwitchLine, LineError> {
    let [kind, n, gap_us] = key_values(args, ["kind", "n", "gap_us"]).map_err(|e| {
        LineError::Switch(match e {
            FieldError::Expected(key) => SwitchError::Expected(key),
            FieldError::Extra => SwitchError::Extra,
        })
    })?;
    let bad = |w: &str| LineError::Switch(SwitchError::BadValue(ShortStr::new(w)));
    Ok(SwitchLine {
        kind: SwitchKind::from_word(kind).ok_or_else(|| bad(kind))?,
        n: parse_u64(n)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad(n))?,
        gap_us: parse_u64(gap_us).ok_or_else(|| bad(gap_us))?,
    })
}

/// Which way a switch moved the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SwitchKind {
    /// `handoff`: from the owner (port 1) to the peer (port 2; claim 1, the forward direction).
    Handoff,
    /// `failback`: from the peer back to the owner (port 2 to port 1: the handoff in reverse).
    Failback,
}

impl SwitchKind {
    /// Both kinds.
    pub const ALL: [SwitchKind; 2] = [SwitchKind::Handoff, SwitchKind::Failback];

    /// The word as printed after `kind=`.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            SwitchKind::Handoff => "handoff",
            SwitchKind::Failback => "failback",
        }
    }

    /// The kind printed as `word`, if any.
    #[must_use]
    pub fn from_word(word: &str) -> Option<SwitchKind> {
        SwitchKind::ALL.into_iter().find(|k| k.word() == word)
    }
}

impl core::fmt::Display for SwitchKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.word())
    }
}

/// `BATON switch kind=<kind> n=<n> gap_us=<µs>`: the owner's workload saw a completion on the port
/// that serves it after switch `n` (counted per kind by the owner, from 1) and reports the
/// longest gap between two consecutive completions from the moment the switch began (the gap
/// open then included) to that completion: the blackout the switch caused, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchLine {
    /// Handoff or failback.
    pub kind: SwitchKind,
    /// Which switch of that kind.
    pub n: u32,
    /// The longest completion gap around the switch, in µs.
    pub gap_us: u64,
}

impl core::fmt::Display for SwitchLine {
    /// The line as the guest prints it, without the trailing `\n`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let SwitchLine { kind, n, gap_us } = self;
        let word = Kind::Switch.word();
        write!(f, "{PREFIX}{word} kind={kind} n={n} gap_us={gap_us}")
    }
}

/// `BATON net-result ...`: what the NIC workload did (issue 11). TX is the guest's own numbered
/// sequence (the host end checks it), RX the host's as the guest checked it
/// ([`crate::net::SeqCheck`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetResultLine {
    /// Numbered frames the guest sent whose transmission completed.
    pub tx_sent: u64,
    /// Numbered frames from the host received in order (the next number expected).
    pub rx_received: u64,
    /// Received frames that were not valid numbered frames to the guest.
    pub rx_bad: u64,
    /// Received frames whose number had been seen.
    pub rx_duplicated: u64,
    /// Received frames that skipped ahead of the next number.
    pub rx_reordered: u64,
    /// Numbers skipped over.
    pub rx_skipped: u64,
    /// From the first frame sent to the last received, µs.
    pub elapsed_us: u64,
}

impl NetResultLine {
    /// The keys, in the order printed.
    pub const KEYS: [&'static str; 7] = [
        "tx_sent",
        "rx_received",
        "rx_bad",
        "rx_duplicated",
        "rx_reordered",
        "rx_skipped",
        "elapsed_us",
    ];
}

impl core::fmt::Display for NetResultLine {
    /// The line as the guest prints it, without the trailing `\n`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let NetResultLine {
            tx_sent,
            rx_received,
            rx_bad,
            rx_duplicated,
            rx_reordered,
            rx_skipped,
            elapsed_us,
        } = self;
        write!(
            f,
            "{PREFIX}{} tx_sent={tx_sent} rx_received={rx_received} rx_bad={rx_bad} \
             rx_duplicated={rx_duplicated} rx_reordered={rx_reordered} rx_skipped={rx_skipped} \
             elapsed_us={elapsed_us}",
            Kind::NetResult.word()
        )
    }
}

impl core::fmt::Display for GuestLine<'_> {
    /// The line as the guest prints it, without the trailing `\n`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let word = |k: Kind| k.word();
        match self {
            GuestLine::Ready { role, vm } => write!(f, "{PREFIX}ready role={role} vm={vm}"),
            GuestLine::WaitingForDisk => write!(f, "{PREFIX}{}", word(Kind::WaitingForDisk)),
            GuestLine::FirstIo => write!(f, "{PREFIX}{}", word(Kind::FirstIo)),
            GuestLine::FaultInjected => write!(f, "{PREFIX}{}", word(Kind::FaultInjected)),
            GuestLine::Switch(s) => write!(f, "{s}"),
            GuestLine::Steps(s) => write!(f, "{s}"),
            GuestLine::PortStats(s) => write!(f, "{s}"),
            GuestLine::Timeline(t) => write!(f, "{t}"),
            GuestLine::Result(r) => write!(f, "{r}"),
            GuestLine::NetResult(r) => write!(f, "{r}"),
            GuestLine::PeerFault(m) => write!(f, "{PREFIX}{} {m}", word(Kind::PeerFault)),
            GuestLine::Panic(m) => write!(f, "{PREFIX}{} {m}", word(Kind::Panic)),
            GuestLine::Unknown(rest) => write!(f, "{PREFIX}{rest}"),
        }
    }
}

/// Why a `BATON ready` line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyError {
    /// The key expected next (`role`, then `vm`) is absent or another word is there.
    Expected(&'static str),
    /// Words after `vm=..`.
    Extra,
    /// An unknown role or a VM id that is not a `u32` (the offending text, possibly truncated).
    BadValue(ShortStr),
}

/// Why a line of `key=value` words (`BATON net-result`) was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldsError {
    /// The key expected next is absent or another word is there.
    Expected(&'static str),
    /// Words after the last key.
    Extra,
    /// A value that is not a `u64` (the offending text, possibly truncated).
    BadValue(ShortStr),
}

/// Why a `BATON switch` line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchError {
    /// The key expected next (`kind`, `n`, then `gap_us`) is absent or another word is there.
    Expected(&'static str),
    /// Words after `gap_us=..`.
    Extra,
    /// An unknown kind, an `n` that is not a `u32` or a `gap_us` that is not a `u64` (the
    /// offending text, possibly truncated).
    BadValue(ShortStr),
}

/// Why a protocol line was rejected. `Display` for `result`, `port-stats` and `timeline` is that of
/// the line's own parser error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// A malformed `BATON ready` line.
    Ready(ReadyError),
    /// A malformed `BATON switch` line.
    Switch(SwitchError),
    /// A line whose word takes no arguments came with some.
    UnexpectedArgs(Kind),
    /// A malformed `BATON result` line.
    Result(ReportError),
    /// A malformed `BATON port-stats` line.
    PortStats(StatsError),
    /// A malformed `BATON timeline` line.
    Timeline(TimelineError),
    /// A malformed `BATON steps` line.
    Steps(StepsError),
    /// A malformed `BATON net-result` line.
    NetResult(FieldsError),
}

impl LineError {
    /// The kind of the rejected line.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            LineError::Ready(_) => Kind::Ready,
            LineError::Switch(_) => Kind::Switch,
            LineError::UnexpectedArgs(k) => *k,
            LineError::Result(_) => Kind::Result,
            LineError::PortStats(_) => Kind::PortStats,
            LineError::Timeline(_) => Kind::Timeline,
            LineError::Steps(_) => Kind::Steps,
            LineError::NetResult(_) => Kind::NetResult,
        }
    }
}

impl core::fmt::Display for LineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LineError::Ready(ReadyError::Expected(key)) => {
                write!(f, "ready: expected `{key}=` next")
            }
            LineError::Ready(ReadyError::Extra) => f.write_str("ready: words after `vm=`"),
            LineError::Ready(ReadyError::BadValue(v)) => write!(f, "ready: bad value `{v}`"),
            LineError::Switch(SwitchError::Expected(key)) => {
                write!(f, "switch: expected `{key}=` next")
            }
            LineError::Switch(SwitchError::Extra) => f.write_str("switch: words after `gap_us=`"),
            LineError::Switch(SwitchError::BadValue(v)) => write!(f, "switch: bad value `{v}`"),
            LineError::UnexpectedArgs(k) => write!(f, "{k}: takes no arguments"),
            LineError::Result(e) => write!(f, "{e}"),
            LineError::PortStats(e) => write!(f, "{e}"),
            LineError::Timeline(e) => write!(f, "{e}"),
            LineError::Steps(e) => write!(f, "steps: {e}"),
            LineError::NetResult(FieldsError::Expected(key)) => {
                write!(f, "net-result: expected `{key}=` next")
            }
            LineError::NetResult(FieldsError::Extra) => {
                f.write_str("net-result: words after `elapsed_us=`")
            }
            LineError::NetResult(FieldsError::BadValue(v)) => {
                write!(f, "net-result: bad value `{v}`")
            }
        }
    }
}

impl core::error::Error for LineError {}

#[cfg(test)]
mod tests;
