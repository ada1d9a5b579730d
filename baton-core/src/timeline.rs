//! Completions per time bin across a run, for the handoff timeline plot: the guest counts every
//! completion its workload sees in fixed bins (1 ms by default) from the first submission on, and
//! prints the counts as `BATON timeline` lines that the shim reassembles.
//!
//! Line format (strict, bounded, like [`crate::report`]):
//! `BATON timeline start_us=S bin_us=B from=I counts=C,C,...` where `from` is the index of the
//! first bin on the line and a run of `n` equal counts `c` may be written `c*n` (so a blackout of
//! 100 empty bins is `0*100`). At most [`BINS_PER_LINE`] bins per line.

use crate::text::{ShortStr, parse_u64};

/// What every timeline line starts with.
pub const PREFIX: &str = "BATON timeline ";
/// Longest line [`parse_line`] accepts.
pub const MAX_LINE_LEN: usize = 4096;
/// Most bins one line carries.
pub const BINS_PER_LINE: usize = 256;

/// Completion counts per bin, fixed capacity.
#[derive(Clone)]
pub struct Timeline<const BINS: usize> {
    counts: [u16; BINS],
    start_us: u64,
    bin_us: u64,
    used: usize,
    /// Completions after the last bin (not counted in any bin).
    pub overflow: u64,
}

impl<const BINS: usize> core::fmt::Debug for Timeline<BINS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Timeline")
            .field("start_us", &self.start_us)
            .field("bin_us", &self.bin_us)
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

impl<const BINS: usize> Timeline<BINS> {
    /// An empty timeline whose bin 0 starts at `start_us` (guest clock), `bin_us` wide.
    #[must_use]
    pub const fn new(start_us: u64, bin_us: u64) -> Self {
        Timeline {
            counts: [0; BINS],
            start_us,
            bin_us: if bin_us == 0 { 1 } else { bin_us },
            used: 0,
            overflow: 0,
        }
    }

    /// Counts one completion at guest time `now_us`.
    pub fn record(&mut self, now_us: u64) {
        let bin = (now_us.saturating_sub(self.start_us) / self.bin_us) as usize;
        match self.counts.get_mut(bin) {
            Some(c) => {
                *c = c.saturating_add(1);
                self.used = self.used.max(bin + 1);
            }
            None => self.overflow += 1,
        }
    }

    /// The bins up to the last one that was counted into.
    #[must_use]
    pub fn counts(&self) -> &[u16] {
        &self.counts[..self.used]
    }

    /// Writes the timeline as lines (each ending in `\n`) to `out`.
    pub fn write_lines(&self, out: &mut impl core::fmt::Write) -> core::fmt::Result {
        for (chunk_index, chunk) in self.counts().chunks(BINS_PER_LINE).enumerate() {
            write_line(
                out,
                self.start_us,
                self.bin_us,
                (chunk_index * BINS_PER_LINE) as u64,
                chunk,
            )?;
            out.write_str("\n")?;
        }
        Ok(())
    }
}

/// Writes one line (without its `\n`): the prefix, the keys and `counts` run-length compressed.
fn write_line(
    out: &mut impl core::fmt::Write,
    start_us: u64,
    bin_us: u64,
    from: u64,
    counts: &[u16],
) -> core::fmt::Result {
    write!(
        out,
        "{PREFIX}start_us={start_us} bin_us={bin_us} from={from} counts="
    )?;
    let mut i = 0;
    let mut first = true;
    while i < counts.len() {
        let c = counts[i];
        let run = counts[i..].iter().take_while(|&&x| x == c).count();
        if !first {
            out.write_str(",")?;
        }
        first = false;
        if run > 2 {
            write!(out, "{c}*{run}")?;
        } else {
            write!(out, "{c}")?;
            if run == 2 {
                write!(out, ",{c}")?;
            }
        }
        i += run;
    }
    Ok(())
}

/// One parsed timeline line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineLine {
    /// Guest time of bin 0.
    pub start_us: u64,
    /// Bin width.
    pub bin_us: u64,
    /// Index of the first bin on this line.
    pub from: u64,
    /// Bins on this line (at most [`BINS_PER_LINE`]).
    pub len: usize,
    counts: [u16; BINS_PER_LINE],
}

impl TimelineLine {
    /// A line carrying `counts` (1 to [`BINS_PER_LINE`] bins) from bin `from` on; `None` when the
    /// counts do not fit one line or `bin_us` is zero (what [`parse_line`] would reject).
    #[must_use]
    pub fn new(start_us: u64, bin_us: u64, from: u64, counts: &[u16]) -> Option<Self> {
        if counts.is_empty() || counts.len() > BINS_PER_LINE || bin_us == 0 {
            return None;
        }
        let mut all = [0u16; BINS_PER_LINE];
        all[..counts.len()].copy_from_slice(counts);
        Some(TimelineLine {
            start_us,
            bin_us,
            from,
            len: counts.len(),
            counts: all,
        })
    }

    /// The counts on this line.
    #[must_use]
    pub fn counts(&self) -> &[u16] {
        // `len` is public; a value past the array reads as the whole array instead of panicking.
        self.counts.get(..self.len).unwrap_or(&self.counts)
    }
}

impl core::fmt::Display for TimelineLine {
    /// Renders the line as the guest prints it (without the `\n`), e.g.
    /// `BATON timeline start_us=5 bin_us=1000 from=0 counts=2,1,0*293,1`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write_line(f, self.start_us, self.bin_us, self.from, self.counts())
    }
}

/// Why a timeline line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineError {
    /// Longer than [`MAX_LINE_LEN`].
    TooLong,
    /// Does not start with [`PREFIX`].
    MissingPrefix,
    /// Keys missing, repeated, unknown or out of order.
    BadKeys,
    /// A malformed number (the offending text, truncated).
    BadValue(ShortStr),
    /// More than [`BINS_PER_LINE`] bins, or a zero bin width.
    OutOfRange,
}

impl core::fmt::Display for TimelineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TimelineError::TooLong => write!(f, "timeline: line longer than {MAX_LINE_LEN} bytes"),
            TimelineError::MissingPrefix => {
                write!(f, "timeline: line does not start with `{PREFIX}`")
            }
            TimelineError::BadKeys => {
                f.write_str("timeline: expected start_us, bin_us, from, counts")
            }
            TimelineError::BadValue(v) => write!(f, "timeline: bad value `{v}`"),
            TimelineError::OutOfRange => f.write_str("timeline: too many bins or zero bin width"),
        }
    }
}

impl core::error::Error for TimelineError {}

/// Parses one timeline line. Strict, bounded, never panics.
pub fn parse_line(line: &str) -> Result<TimelineLine, TimelineError> {
    if line.len() > MAX_LINE_LEN {
        return Err(TimelineError::TooLong);
    }
    let body = line
        .trim_end_matches(['\r', '\n'])
        .strip_prefix(PREFIX)
        .ok_or(TimelineError::MissingPrefix)?;
    let mut words = body.split_ascii_whitespace();
    let mut field = |key: &str| -> Result<&str, TimelineError> {
        words
            .next()
            .and_then(|w| w.strip_prefix(key))
            .and_then(|w| w.strip_prefix('='))
            .ok_or(TimelineError::BadKeys)
    };
    let num = |s: &str| parse_u64(s).ok_or(TimelineError::BadValue(ShortStr::new(s)));
    let start_us = num(field("start_us")?)?;
    let bin_us = num(field("bin_us")?)?;
    let from = num(field("from")?)?;
    let counts_text = field("counts")?;
    if words.next().is_some() {
        return Err(TimelineError::BadKeys);
    }
    if bin_us == 0 {
        return Err(TimelineError::OutOfRange);
    }
    let mut counts = [0u16; BINS_PER_LINE];
    let mut len = 0usize;
    for item in counts_text.split(',') {
        let (value, run) = match item.split_once('*') {
            Some((v, n)) => (v, num(n)?),
            None => (item, 1),
        };
        let value = u16::try_from(num(value)?)
            .map_err(|_| TimelineError::BadValue(ShortStr::new(value)))?;
        // A run of 0 would print as nothing (`counts=` or a missing item), which does not parse.
        let run = usize::try_from(run)
            .ok()
            .filter(|&r| r > 0)
            .ok_or(TimelineError::OutOfRange)?;
        let end = len.checked_add(run).ok_or(TimelineError::OutOfRange)?;
        counts
            .get_mut(len..end)
            .ok_or(TimelineError::OutOfRange)?
            .fill(value);
        len = end;
    }
    Ok(TimelineLine {
        start_us,
        bin_us,
        from,
        len,
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::String;
    use std::vec::Vec;

    fn round_trip<const N: usize>(t: &Timeline<N>) -> Vec<u16> {
        let mut text = String::new();
        t.write_lines(&mut text).unwrap();
        let mut out = Vec::new();
        for line in text.lines() {
            let l = parse_line(line).unwrap();
            assert_eq!(l.from as usize, out.len());
            assert!(line.len() <= MAX_LINE_LEN);
            out.extend_from_slice(l.counts());
        }
        out
    }

    #[test]
    fn records_and_compresses() {
        let mut t: Timeline<1000> = Timeline::new(5_000, 1000);
        t.record(4_000); // before the start: bin 0
        t.record(5_999);
        t.record(6_000);
        t.record(300_000);
        t.record(2_000_000); // beyond the last bin
        assert_eq!(t.overflow, 1);
        assert_eq!(t.counts().len(), 296);
        assert_eq!(&t.counts()[..2], &[2, 1]);
        assert_eq!(round_trip(&t), t.counts());
        let mut text = String::new();
        t.write_lines(&mut text).unwrap();
        assert!(text.contains("0*254"), "{text}");
    }

    #[test]
    fn rejects() {
        assert_eq!(
            parse_line("BATON result x"),
            Err(TimelineError::MissingPrefix)
        );
        let ok = "BATON timeline start_us=1 bin_us=1000 from=0 counts=1,0*3,2";
        assert_eq!(parse_line(ok).unwrap().counts(), &[1, 0, 0, 0, 2]);
        assert!(parse_line(&ok.replace("bin_us=1000", "bin_us=0")).is_err());
        assert!(parse_line(&ok.replace("0*3", "0*300")).is_err());
        assert!(parse_line(&ok.replace("0*3", "0*0")).is_err(), "a run of 0");
        assert!(parse_line("BATON timeline start_us=0 bin_us=1000 from=0 counts=4*0").is_err());
        assert!(parse_line(&ok.replace("1,0", "70000,0")).is_err());
        assert!(parse_line(&ok.replace("from=0 ", "")).is_err());
        assert!(parse_line(&std::format!("{ok} extra=1")).is_err());
    }

    #[test]
    fn one_line_renders_and_parses_back() {
        let l = TimelineLine::new(5, 1000, 256, &[2, 1, 0, 0, 0, 7, 7]).unwrap();
        let text = std::format!("{l}");
        assert_eq!(
            text,
            "BATON timeline start_us=5 bin_us=1000 from=256 counts=2,1,0*3,7,7"
        );
        assert_eq!(parse_line(&text), Ok(l));
        assert!(TimelineLine::new(0, 1000, 0, &[]).is_none());
        assert!(TimelineLine::new(0, 0, 0, &[1]).is_none());
        assert!(TimelineLine::new(0, 1, 0, &[1; BINS_PER_LINE + 1]).is_none());
    }

    proptest! {
        #[test]
        fn line_display_round_trips(
            start in any::<u64>(), bin in 1u64.., from in any::<u64>(),
            counts in proptest::collection::vec(prop_oneof![Just(0u16), Just(1), any::<u16>()], 1..=BINS_PER_LINE),
        ) {
            let l = TimelineLine::new(start, bin, from, &counts).unwrap();
            let text = std::format!("{l}");
            prop_assert!(text.len() <= MAX_LINE_LEN);
            prop_assert_eq!(parse_line(&text), Ok(l));
        }

        #[test]
        fn round_trips(times in proptest::collection::vec(0u64..3_000_000, 0..2000)) {
            let mut t: Timeline<2048> = Timeline::new(0, 1000);
            for &x in &times { t.record(x); }
            prop_assert_eq!(round_trip(&t), t.counts().to_vec());
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = parse_line(&s);
            let _ = parse_line(&std::format!("{PREFIX}{s}"));
        }
    }
}
