//! `BATON steps role=<role> kind=<kind> n=<n> at=<step>:<µs>:<wake>,...`: where one guest's time
//! went in one switch of the device (issue 12, "find where each millisecond goes").
//!
//! Each guest records the steps it takes in a switch with its own clock (µs since boot) and how it
//! came to take each one: still running since the step before (`spin`), or woken from `hlt` by the
//! control channel's interrupt (`irq`) or by a timer tick (`tick`). A step reached after a `tick`
//! waited for the timer; one reached by `irq` waited for a frame from the shim. The guest prints the
//! line once the switch is over for it (the owner at its first completion on the new port, the
//! peer once it is idle after its first forwarded completion, or after its release), so the
//! printing never falls inside the blackout it describes.
//!
//! Like every guest line, the parser is strict, bounded ([`MAX_STEPS`]) and never panics.

use crate::cmdline::Role;
use crate::console::SwitchKind;
use crate::text::{ShortStr, parse_u64};

/// Most steps one line carries; later ones are dropped by [`StepLog::mark`].
pub const MAX_STEPS: usize = 16;

/// A step of a switch, as one guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepName {
    /// Owner: `redirect` received (the switch directed).
    Redirect,
    /// Owner: `failback` received.
    Failback,
    /// Owner: the old port has nothing in flight (port 1 in a handoff, port 2 in a failback).
    Drained,
    /// Owner: the device reset and `drained`, `released` queued for the shim.
    Released,
    /// Owner: the released disk's slot ejected (after the shim acknowledged `released`).
    Ejected,
    /// Owner: port 2 opened (the peer attached to the ring, or `open-port2` came first).
    Port2Open,
    /// Owner: `direct` sent (the disk back behind port 1, the held requests sent to it).
    Direct,
    /// Owner: the first completion on the new port (the end of the blackout).
    FirstCompletion,
    /// Peer: `ring-opened` received.
    RingOpened,
    /// Both: `disk-attached` received.
    DiskAttached,
    /// Both: the disk's BARs placed (decoding still off).
    Pci,
    /// Both: the virtio PCI transport read the device's capabilities.
    Transport,
    /// Both: the virtio-blk device initialised (its queue set up, `DRIVER_OK`).
    DiskUp,
    /// Peer: attached to the ring (its side `Ready`).
    RingAttached,
    /// Peer: `peer-ready` queued for the shim.
    PeerReady,
    /// Peer: the first forwarded request taken from the ring.
    FirstRequest,
    /// Peer: the first forwarded request completed into the ring.
    FirstServed,
    /// Peer: `release-disk` received (the failback).
    ReleaseDisk,
    /// Peer: the disk reset and `released` queued.
    PeerReleased,
    /// Peer: the disk's slot ejected.
    PeerEjected,
}

impl StepName {
    /// Every step, in the order docs/guest-interface.md lists them.
    pub const ALL: [StepName; 20] = [
        StepName::Redirect,
        StepName::Failback,
        StepName::Drained,
        StepName::Released,
        StepName::Ejected,
        StepName::Port2Open,
        StepName::Direct,
        StepName::FirstCompletion,
        StepName::RingOpened,
        StepName::DiskAttached,
        StepName::Pci,
        StepName::Transport,
        StepName::DiskUp,
        StepName::RingAttached,
        StepName::PeerReady,
        StepName::FirstRequest,
        StepName::FirstServed,
        StepName::ReleaseDisk,
        StepName::PeerReleased,
        StepName::PeerEjected,
    ];

    /// The word as printed.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            StepName::Redirect => "redirect",
            StepName::Failback => "failback",
            StepName::Drained => "drained",
            StepName::Released => "released",
            StepName::Ejected => "ejected",
            StepName::Port2Open => "port2-open",
            StepName::Direct => "direct",
            StepName::FirstCompletion => "first-completion",
            StepName::RingOpened => "ring-opened",
            StepName::DiskAttached => "disk-attached",
            StepName::Pci => "pci",
            StepName::Transport => "transport",
            StepName::DiskUp => "disk-up",
            StepName::RingAttached => "ring-attached",
            StepName::PeerReady => "peer-ready",
            StepName::FirstRequest => "first-request",
            StepName::FirstServed => "first-served",
            StepName::ReleaseDisk => "release-disk",
            StepName::PeerReleased => "peer-released",
            StepName::PeerEjected => "peer-ejected",
        }
    }

    /// The step printed as `word`, if any.
    #[must_use]
    pub fn from_word(word: &str) -> Option<StepName> {
        StepName::ALL.into_iter().find(|s| s.word() == word)
    }
}

/// How the guest came to take a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wake {
    /// It had not halted since the step before: it was running or polling.
    Spin,
    /// It had halted, and the control channel's interrupt woke it last (a frame arrived).
    Irq,
    /// It had halted, and a timer tick woke it last (it waited for the timer).
    Tick,
}

impl Wake {
    /// Every way, as printed.
    pub const ALL: [Wake; 3] = [Wake::Spin, Wake::Irq, Wake::Tick];

    /// The word as printed.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Wake::Spin => "spin",
            Wake::Irq => "irq",
            Wake::Tick => "tick",
        }
    }

    /// The way printed as `word`, if any.
    #[must_use]
    pub fn from_word(word: &str) -> Option<Wake> {
        Wake::ALL.into_iter().find(|w| w.word() == word)
    }
}

/// One recorded step: which, when (guest µs since boot) and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Which step.
    pub name: StepName,
    /// Guest time, µs since boot.
    pub at_us: u64,
    /// How the guest got there.
    pub wake: Wake,
}

/// The steps of one guest in one switch: what `BATON steps` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepsLine {
    /// The guest's role.
    pub role: Role,
    /// Which way the device moved.
    pub kind: SwitchKind,
    /// Which switch of that kind (from 1, counted by the guest).
    pub n: u32,
    steps: [Option<Step>; MAX_STEPS],
}

impl StepsLine {
    /// A line without steps yet.
    #[must_use]
    pub const fn new(role: Role, kind: SwitchKind, n: u32) -> StepsLine {
        StepsLine {
            role,
            kind,
            n,
            steps: [None; MAX_STEPS],
        }
    }

    /// The steps, in the order they were taken.
    pub fn steps(&self) -> impl Iterator<Item = Step> + '_ {
        self.steps.iter().map_while(|s| *s)
    }

    /// Appends `step`; `false` (and nothing changes) when [`MAX_STEPS`] are there already.
    pub fn push(&mut self, step: Step) -> bool {
        match self.steps.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(step);
                true
            }
            None => false,
        }
    }
}

impl core::fmt::Display for StepsLine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{}{} role={} kind={} n={} at=",
            crate::console::PREFIX,
            crate::console::Kind::Steps.word(),
            self.role.as_str(),
            self.kind.word(),
            self.n
        )?;
        for (i, s) in self.steps().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}:{}:{}", s.name.word(), s.at_us, s.wake.word())?;
        }
        Ok(())
    }
}

/// Why a `BATON steps` line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepsError {
    /// The key expected next is missing or another word is there.
    Expected(&'static str),
    /// A value that does not parse (its start).
    BadValue(ShortStr),
    /// More than [`MAX_STEPS`] steps.
    TooMany,
}

impl core::fmt::Display for StepsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StepsError::Expected(key) => write!(f, "expected `{key}=`"),
            StepsError::BadValue(v) => write!(f, "bad value `{v}`"),
            StepsError::TooMany => write!(f, "more than {MAX_STEPS} steps"),
        }
    }
}

/// Parses the arguments of a `BATON steps` line (everything after `steps `). Strict: the four keys
/// in order, single spaces, `at=` a comma-separated list of `<step>:<µs>:<wake>` (possibly empty).
/// Errors: [`StepsError`]. Never panics.
pub fn parse_args(args: &str) -> Result<StepsLine, StepsError> {
    let mut words = args.split(' ');
    let mut next = |key: &'static str| {
        words
            .next()
            .and_then(|w| w.strip_prefix(key))
            .and_then(|w| w.strip_prefix('='))
            .ok_or(StepsError::Expected(key))
    };
    let bad = |w: &str| StepsError::BadValue(ShortStr::new(w));
    let role_word = next("role")?;
    let kind_word = next("kind")?;
    let n_word = next("n")?;
    let at = next("at")?;
    if words.next().is_some() {
        return Err(StepsError::Expected("end of line"));
    }
    let role = Role::from_word(role_word).ok_or_else(|| bad(role_word))?;
    let kind = SwitchKind::from_word(kind_word).ok_or_else(|| bad(kind_word))?;
    let n = parse_u64(n_word)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| bad(n_word))?;
    let mut line = StepsLine::new(role, kind, n);
    if at.is_empty() {
        return Ok(line);
    }
    for item in at.split(',') {
        let mut parts = item.split(':');
        let (Some(name), Some(us), Some(wake), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(item));
        };
        let step = Step {
            name: StepName::from_word(name).ok_or_else(|| bad(name))?,
            at_us: parse_u64(us).ok_or_else(|| bad(us))?,
            wake: Wake::from_word(wake).ok_or_else(|| bad(wake))?,
        };
        if !line.push(step) {
            return Err(StepsError::TooMany);
        }
    }
    Ok(line)
}

/// A guest's recorder of the switch under way: [`StepLog::begin`] it when the switch starts,
/// [`StepLog::mark`] each step, and take the line with [`StepLog::take`] once the switch is over
/// for this guest. Marks outside a switch are ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepLog {
    line: Option<StepsLine>,
}

impl StepLog {
    /// No switch under way.
    #[must_use]
    pub const fn new() -> StepLog {
        StepLog { line: None }
    }

    /// Starts recording switch `n` of `kind` (a line not taken yet is dropped).
    pub fn begin(&mut self, role: Role, kind: SwitchKind, n: u32) {
        self.line = Some(StepsLine::new(role, kind, n));
    }

    /// Records `name` at `at_us`, reached by `wake`, in the switch under way (if any, and if it
    /// has room left).
    pub fn mark(&mut self, name: StepName, at_us: u64, wake: Wake) {
        if let Some(line) = self.line.as_mut() {
            line.push(Step { name, at_us, wake });
        }
    }

    /// The switch under way, if any: `(kind, n)`.
    #[must_use]
    pub fn current(&self) -> Option<(SwitchKind, u32)> {
        self.line.map(|l| (l.kind, l.n))
    }

    /// Ends the switch under way and returns its line.
    pub fn take(&mut self) -> Option<StepsLine> {
        self.line.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_prints_and_parses_back_as_itself() {
        let mut log = StepLog::new();
        log.mark(StepName::Drained, 1, Wake::Spin);
        log.begin(Role::Owner, SwitchKind::Handoff, 2);
        log.mark(StepName::Redirect, 1_000, Wake::Irq);
        log.mark(StepName::Drained, 4_000, Wake::Spin);
        log.mark(StepName::Port2Open, 9_500, Wake::Tick);
        let line = log.take().unwrap();
        assert!(log.take().is_none());
        let text = line.to_string();
        assert_eq!(
            text,
            "BATON steps role=owner kind=handoff n=2 at=redirect:1000:irq,drained:4000:spin,port2-open:9500:tick"
        );
        let args = text.strip_prefix("BATON steps ").unwrap();
        assert_eq!(parse_args(args), Ok(line));
        let empty = StepsLine::new(Role::Peer, SwitchKind::Failback, 1);
        let text = empty.to_string();
        assert_eq!(
            parse_args(text.strip_prefix("BATON steps ").unwrap()),
            Ok(empty)
        );
    }

    #[test]
    fn malformed_lines_are_rejected() {
        for args in [
            "",
            "role=owner kind=handoff n=1",
            "role=owner kind=handoff n=1 at=x:1:spin",
            "role=owner kind=handoff n=1 at=drained:1",
            "role=owner kind=handoff n=1 at=drained:1:spin:2",
            "role=owner kind=handoff n=1 at=drained:-1:spin",
            "role=owner kind=handoff n=1 at=drained:1:nap",
            "role=owner kind=sideways n=1 at=",
            "role=boss kind=handoff n=1 at=",
            "role=owner kind=handoff n=99999999999 at=",
            "role=owner kind=handoff n=1 at= extra",
            "role=owner  kind=handoff n=1 at=",
        ] {
            assert!(parse_args(args).is_err(), "{args:?}");
        }
        let many = ["drained:1:spin"; MAX_STEPS + 1].join(",");
        let args = format!("role=peer kind=handoff n=1 at={many}");
        assert_eq!(parse_args(&args), Err(StepsError::TooMany));
    }

    #[test]
    fn every_word_round_trips() {
        for s in StepName::ALL {
            assert_eq!(StepName::from_word(s.word()), Some(s));
        }
        for w in Wake::ALL {
            assert_eq!(Wake::from_word(w.word()), Some(w));
        }
    }
}
