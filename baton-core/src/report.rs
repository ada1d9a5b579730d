//! The guest's final report line, `BATON result key=value ...` (see `docs/guest-interface.md`).
//!
//! The guest renders a [`GuestReport`] with `Display` on COM1; the shim reads the serial log and
//! turns the line back into a [`GuestReport`] with [`parse_line`]. Guest output is untrusted
//! (invariant I6), so the parser is strict (every key exactly once, nothing unknown), bounded
//! ([`MAX_LINE_LEN`]) and cannot panic on any input.

use crate::cmdline::{GuestConfig, Role};
use crate::text::{ShortStr, parse_u64};

/// How many failed-write sequence numbers a report carries.
pub const MAX_ERROR_SEQS: usize = 64;
/// Longest line [`parse_line`] accepts, in bytes.
pub const MAX_LINE_LEN: usize = 4096;
/// What every report line starts with.
pub const PREFIX: &str = "BATON result ";

/// What a workload run did, as reported by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestReport {
    /// The guest's role.
    pub role: Role,
    /// VM id.
    pub vm: u32,
    /// Schedule seed.
    pub seed: u64,
    /// Distinct blocks in the schedule.
    pub blocks: u64,
    /// Passes over the blocks.
    pub passes: u32,
    /// Queue depth used.
    pub qd: u16,
    /// First LBA used.
    pub first_lba: u64,
    /// Writes handed to the redirector.
    pub writes_submitted: u64,
    /// Writes completed successfully.
    pub writes_acked: u64,
    /// Writes completed with an error status.
    pub write_errors: u64,
    /// Sequence numbers of the first [`MAX_ERROR_SEQS`] failed writes; entries at and past
    /// `error_seq_count` are zero.
    pub error_seqs: [u64; MAX_ERROR_SEQS],
    /// How many entries of `error_seqs` are used (at most [`MAX_ERROR_SEQS`]).
    pub error_seq_count: u8,
    /// Blocks read back whose tag and payload matched the expected write.
    pub reads_verified: u64,
    /// Blocks read back that did not match.
    pub read_mismatches: u64,
    /// Microseconds from the first submission to the last completion.
    pub elapsed_us: u64,
    /// Completed writes per second over `elapsed_us`.
    pub iops: u64,
    /// Requests that went through port 1 (the device).
    pub port1_requests: u64,
    /// Requests that went through port 2 (the ring).
    pub port2_requests: u64,
    /// Requests held at port 2 while port 1 drained (0 without a handoff).
    pub held_at_switch: u64,
    /// Longest gap between two completions the workload saw, in microseconds (the blackout).
    pub max_gap_us: u64,
    /// Completions delivered for a request that was not outstanding (must be 0).
    pub duplicates: u64,
}

impl GuestReport {
    /// A report for `cfg` with all counters zero.
    #[must_use]
    pub fn new(cfg: &GuestConfig) -> GuestReport {
        GuestReport {
            role: cfg.role,
            vm: cfg.vm,
            seed: cfg.seed,
            blocks: cfg.blocks,
            passes: cfg.passes,
            qd: cfg.qd,
            first_lba: cfg.first_lba,
            writes_submitted: 0,
            writes_acked: 0,
            write_errors: 0,
            error_seqs: [0; MAX_ERROR_SEQS],
            error_seq_count: 0,
            reads_verified: 0,
            read_mismatches: 0,
            elapsed_us: 0,
            iops: 0,
            port1_requests: 0,
            port2_requests: 0,
            held_at_switch: 0,
            max_gap_us: 0,
            duplicates: 0,
        }
    }

    /// Counts a failed write and remembers its sequence number if there is room.
    pub fn record_write_error(&mut self, seq: u64) {
        self.write_errors = self.write_errors.saturating_add(1);
        let n = usize::from(self.error_seq_count);
        if let Some(slot) = self.error_seqs.get_mut(n) {
            *slot = seq;
            self.error_seq_count += 1;
        }
    }

    /// The recorded failed-write sequence numbers.
    #[must_use]
    pub fn error_seqs(&self) -> &[u64] {
        let n = usize::from(self.error_seq_count).min(MAX_ERROR_SEQS);
        &self.error_seqs[..n]
    }
}

/// The report's keys, in the order they are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Field {
    Role,
    Vm,
    Seed,
    Blocks,
    Passes,
    Qd,
    FirstLba,
    WritesSubmitted,
    WritesAcked,
    WriteErrors,
    ErrorSeqs,
    ReadsVerified,
    ReadMismatches,
    ElapsedUs,
    Iops,
    Port1Requests,
    Port2Requests,
    HeldAtSwitch,
    MaxGapUs,
    Duplicates,
}

impl Field {
    /// Every field, in rendering order.
    pub const ALL: [Field; 20] = [
        Field::Role,
        Field::Vm,
        Field::Seed,
        Field::Blocks,
        Field::Passes,
        Field::Qd,
        Field::FirstLba,
        Field::WritesSubmitted,
        Field::WritesAcked,
        Field::WriteErrors,
        Field::ErrorSeqs,
        Field::ReadsVerified,
        Field::ReadMismatches,
        Field::ElapsedUs,
        Field::Iops,
        Field::Port1Requests,
        Field::Port2Requests,
        Field::HeldAtSwitch,
        Field::MaxGapUs,
        Field::Duplicates,
    ];

    /// The key as written in the line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Role => "role",
            Field::Vm => "vm",
            Field::Seed => "seed",
            Field::Blocks => "blocks",
            Field::Passes => "passes",
            Field::Qd => "qd",
            Field::FirstLba => "first_lba",
            Field::WritesSubmitted => "writes_submitted",
            Field::WritesAcked => "writes_acked",
            Field::WriteErrors => "write_errors",
            Field::ErrorSeqs => "error_seqs",
            Field::ReadsVerified => "reads_verified",
            Field::ReadMismatches => "read_mismatches",
            Field::ElapsedUs => "elapsed_us",
            Field::Iops => "iops",
            Field::Port1Requests => "port1_requests",
            Field::Port2Requests => "port2_requests",
            Field::HeldAtSwitch => "held_at_switch",
            Field::MaxGapUs => "max_gap_us",
            Field::Duplicates => "duplicates",
        }
    }

    fn from_word(s: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl core::fmt::Display for Field {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a report line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportError {
    /// The line is longer than [`MAX_LINE_LEN`].
    TooLong,
    /// The line does not start with [`PREFIX`].
    MissingPrefix,
    /// A word is not `key=value` (possibly truncated).
    MissingEquals(ShortStr),
    /// An unknown key (possibly truncated).
    UnknownKey(ShortStr),
    /// A key given twice.
    DuplicateKey(Field),
    /// A key that is absent.
    MissingKey(Field),
    /// A malformed value.
    BadValue(Field),
    /// A number too large for the field, or more than [`MAX_ERROR_SEQS`] error seqs.
    OutOfRange(Field),
    /// Values that contradict each other (more error seqs than write errors).
    Inconsistent(Field),
}

impl core::fmt::Display for ReportError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReportError::TooLong => write!(f, "report: line longer than {MAX_LINE_LEN} bytes"),
            ReportError::MissingPrefix => write!(f, "report: line does not start with `{PREFIX}`"),
            ReportError::MissingEquals(w) => write!(f, "report: `{w}` is not key=value"),
            ReportError::UnknownKey(k) => write!(f, "report: unknown key `{k}`"),
            ReportError::DuplicateKey(k) => write!(f, "report: key `{k}` given twice"),
            ReportError::MissingKey(k) => write!(f, "report: key `{k}` missing"),
            ReportError::BadValue(k) => write!(f, "report: bad value for `{k}`"),
            ReportError::OutOfRange(k) => write!(f, "report: value of `{k}` out of range"),
            ReportError::Inconsistent(k) => write!(f, "report: value of `{k}` inconsistent"),
        }
    }
}

impl core::error::Error for ReportError {}

impl core::fmt::Display for GuestReport {
    /// Renders the full line, e.g. `BATON result role=owner vm=1 ... error_seqs=3,7 ...`
    /// (`error_seqs=-` when there are none).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{PREFIX}role={} vm={} seed={} blocks={} passes={} qd={} first_lba={} \
             writes_submitted={} writes_acked={} write_errors={} error_seqs=",
            self.role,
            self.vm,
            self.seed,
            self.blocks,
            self.passes,
            self.qd,
            self.first_lba,
            self.writes_submitted,
            self.writes_acked,
            self.write_errors,
        )?;
        let seqs = self.error_seqs();
        if seqs.is_empty() {
            f.write_str("-")?;
        }
        for (i, seq) in seqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{seq}")?;
        }
        write!(
            f,
            " reads_verified={} read_mismatches={} elapsed_us={} iops={} port1_requests={} \
             port2_requests={} held_at_switch={} max_gap_us={} duplicates={}",
            self.reads_verified,
            self.read_mismatches,
            self.elapsed_us,
            self.iops,
            self.port1_requests,
            self.port2_requests,
            self.held_at_switch,
            self.max_gap_us,
            self.duplicates,
        )
    }
}

fn num<T: TryFrom<u64>>(field: Field, value: &str) -> Result<T, ReportError> {
    let v = parse_u64(value).ok_or(ReportError::BadValue(field))?;
    T::try_from(v).map_err(|_| ReportError::OutOfRange(field))
}

fn error_seqs(value: &str) -> Result<([u64; MAX_ERROR_SEQS], u8), ReportError> {
    let mut seqs = [0u64; MAX_ERROR_SEQS];
    if value == "-" {
        return Ok((seqs, 0));
    }
    let mut n = 0usize;
    for part in value.split(',') {
        let slot = seqs
            .get_mut(n)
            .ok_or(ReportError::OutOfRange(Field::ErrorSeqs))?;
        *slot = parse_u64(part).ok_or(ReportError::BadValue(Field::ErrorSeqs))?;
        n += 1;
    }
    // n <= MAX_ERROR_SEQS (64) fits a u8.
    Ok((seqs, n as u8))
}

/// Parses a full report line (starting with [`PREFIX`]; a trailing `\r`/`\n` is ignored).
///
/// Strict: every key exactly once, no unknown keys, numbers in decimal. Never panics.
pub fn parse_line(line: &str) -> Result<GuestReport, ReportError> {
    if line.len() > MAX_LINE_LEN {
        return Err(ReportError::TooLong);
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let body = line
        .strip_prefix(PREFIX)
        .ok_or(ReportError::MissingPrefix)?;
    let mut r = GuestReport::new(&GuestConfig::default());
    let mut seen = [false; Field::ALL.len()];
    for word in body.split_ascii_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            return Err(ReportError::MissingEquals(ShortStr::new(word)));
        };
        let field = Field::from_word(k).ok_or(ReportError::UnknownKey(ShortStr::new(k)))?;
        if core::mem::replace(&mut seen[field as usize], true) {
            return Err(ReportError::DuplicateKey(field));
        }
        match field {
            Field::Role => r.role = Role::from_word(v).ok_or(ReportError::BadValue(field))?,
            Field::Vm => r.vm = num(field, v)?,
            Field::Seed => r.seed = num(field, v)?,
            Field::Blocks => r.blocks = num(field, v)?,
            Field::Passes => r.passes = num(field, v)?,
            Field::Qd => r.qd = num(field, v)?,
            Field::FirstLba => r.first_lba = num(field, v)?,
            Field::WritesSubmitted => r.writes_submitted = num(field, v)?,
            Field::WritesAcked => r.writes_acked = num(field, v)?,
            Field::WriteErrors => r.write_errors = num(field, v)?,
            Field::ErrorSeqs => (r.error_seqs, r.error_seq_count) = error_seqs(v)?,
            Field::ReadsVerified => r.reads_verified = num(field, v)?,
            Field::ReadMismatches => r.read_mismatches = num(field, v)?,
            Field::ElapsedUs => r.elapsed_us = num(field, v)?,
            Field::Iops => r.iops = num(field, v)?,
            Field::Port1Requests => r.port1_requests = num(field, v)?,
            Field::Port2Requests => r.port2_requests = num(field, v)?,
            Field::HeldAtSwitch => r.held_at_switch = num(field, v)?,
            Field::MaxGapUs => r.max_gap_us = num(field, v)?,
            Field::Duplicates => r.duplicates = num(field, v)?,
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(ReportError::MissingKey(Field::ALL[i]));
    }
    if u64::from(r.error_seq_count) > r.write_errors {
        return Err(ReportError::Inconsistent(Field::ErrorSeqs));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::{String, ToString};

    fn sample() -> GuestReport {
        let mut r = GuestReport::new(&GuestConfig::default());
        r.writes_submitted = 1024;
        r.writes_acked = 1022;
        r.record_write_error(3);
        r.record_write_error(7);
        r.reads_verified = 256;
        r.elapsed_us = 123_456;
        r.iops = 8294;
        r.port1_requests = 600;
        r.port2_requests = 424;
        r.held_at_switch = 17;
        r.max_gap_us = 2500;
        r
    }

    #[test]
    fn renders() {
        assert_eq!(
            sample().to_string(),
            "BATON result role=owner vm=1 seed=1 blocks=256 passes=4 qd=32 first_lba=0 \
             writes_submitted=1024 writes_acked=1022 write_errors=2 error_seqs=3,7 \
             reads_verified=256 read_mismatches=0 elapsed_us=123456 iops=8294 \
             port1_requests=600 port2_requests=424 held_at_switch=17 max_gap_us=2500 \
             duplicates=0"
        );
        let none = GuestReport::new(&GuestConfig::default()).to_string();
        assert!(none.contains(" error_seqs=- "));
        assert_eq!(
            parse_line(&none),
            Ok(GuestReport::new(&GuestConfig::default()))
        );
    }

    #[test]
    fn round_trip_and_crlf() {
        let r = sample();
        assert_eq!(parse_line(&r.to_string()), Ok(r));
        assert_eq!(parse_line(&std::format!("{r}\r\n")), Ok(r));
    }

    #[test]
    fn record_caps_at_max() {
        let mut r = GuestReport::new(&GuestConfig::default());
        for seq in 1..=100 {
            r.record_write_error(seq);
        }
        assert_eq!(r.write_errors, 100);
        assert_eq!(
            r.error_seqs(),
            &(1..=MAX_ERROR_SEQS as u64).collect::<std::vec::Vec<u64>>()[..]
        );
        assert_eq!(parse_line(&r.to_string()), Ok(r));
    }

    #[test]
    fn errors() {
        let good = sample().to_string();
        assert_eq!(parse_line(""), Err(ReportError::MissingPrefix));
        assert_eq!(parse_line(&good[1..]), Err(ReportError::MissingPrefix));
        assert_eq!(
            parse_line(&good.replace("vm=1", "vm=1 vm=1")),
            Err(ReportError::DuplicateKey(Field::Vm))
        );
        assert_eq!(
            parse_line(&good.replace(" iops=8294", "")),
            Err(ReportError::MissingKey(Field::Iops))
        );
        assert_eq!(
            parse_line(&std::format!("{good} extra=1")),
            Err(ReportError::UnknownKey(ShortStr::new("extra")))
        );
        assert_eq!(
            parse_line(&std::format!("{good} extra")),
            Err(ReportError::MissingEquals(ShortStr::new("extra")))
        );
        assert_eq!(
            parse_line(&good.replace("qd=32", "qd=65536")),
            Err(ReportError::OutOfRange(Field::Qd))
        );
        assert_eq!(
            parse_line(&good.replace("role=owner", "role=root")),
            Err(ReportError::BadValue(Field::Role))
        );
        assert_eq!(
            parse_line(&good.replace("error_seqs=3,7", "error_seqs=3,,7")),
            Err(ReportError::BadValue(Field::ErrorSeqs))
        );
        assert_eq!(
            parse_line(&good.replace("error_seqs=3,7", "error_seqs=3,7,9")),
            Err(ReportError::Inconsistent(Field::ErrorSeqs))
        );
        let too_many = (1..=MAX_ERROR_SEQS as u64 + 1)
            .map(|i| i.to_string())
            .collect::<std::vec::Vec<_>>()
            .join(",");
        let line = good
            .replace("write_errors=2", "write_errors=1000")
            .replace("error_seqs=3,7", &std::format!("error_seqs={too_many}"));
        assert_eq!(
            parse_line(&line),
            Err(ReportError::OutOfRange(Field::ErrorSeqs))
        );
        let long = std::format!("{good}{}", " ".repeat(MAX_LINE_LEN));
        assert_eq!(parse_line(&long), Err(ReportError::TooLong));
    }

    fn arb_report() -> impl Strategy<Value = GuestReport> {
        (
            (
                prop_oneof![Just(Role::Owner), Just(Role::Peer)],
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<u16>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            proptest::collection::vec(any::<u64>(), 0..=MAX_ERROR_SEQS),
            0u64..1000,
            proptest::array::uniform10(any::<u64>()),
        )
            .prop_map(
                |((role, vm, seed, blocks, passes, qd, first_lba, ws, wa), seqs, extra, n)| {
                    let mut error_seqs = [0; MAX_ERROR_SEQS];
                    error_seqs[..seqs.len()].copy_from_slice(&seqs);
                    GuestReport {
                        role,
                        vm,
                        seed,
                        blocks,
                        passes,
                        qd,
                        first_lba,
                        writes_submitted: ws,
                        writes_acked: wa,
                        write_errors: seqs.len() as u64 + extra,
                        error_seqs,
                        error_seq_count: seqs.len() as u8,
                        reads_verified: n[0],
                        read_mismatches: n[1],
                        elapsed_us: n[2],
                        iops: n[3],
                        port1_requests: n[4],
                        port2_requests: n[5],
                        held_at_switch: n[6],
                        max_gap_us: n[7],
                        duplicates: n[8],
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn display_round_trips(r in arb_report()) {
            let line = r.to_string();
            prop_assert!(line.len() <= MAX_LINE_LEN);
            prop_assert_eq!(parse_line(&line), Ok(r));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse_line(&s);
            let _ = parse_line(&std::format!("{PREFIX}{s}"));
        }

        #[test]
        fn parse_never_panics_mutated(r in arb_report(), pos in any::<usize>(), junk in "[0-9a-z=, -]{0,12}") {
            let mut line = r.to_string();
            let mut at = pos % (line.len() + 1);
            while !line.is_char_boundary(at) { at -= 1; }
            line.insert_str(at, &junk);
            let _ = parse_line(&line);
            let cut: String = line.chars().take(at).collect();
            let _ = parse_line(&cut);
        }
    }
}
