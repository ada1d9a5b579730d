//! Per-port I/O statistics: a fixed-size log-linear latency histogram and the guest's
//! `BATON port-stats` line, which the shim reads to compare port 1 (direct) with port 2
//! (forwarded through the peer).
//!
//! The histogram keeps 16 linear sub-buckets per power of two of microseconds, so a percentile is
//! reported within 1/16 (6.25 %) of the true value, with no allocation and constant memory.
//!
//! Line format (one per port that completed anything), strict like [`crate::report`]:
//! `BATON port-stats port=1 completions=N first_us=F last_us=L p50_us=A p99_us=B max_us=C`
//! where `first_us`/`last_us` are the guest's clock at the first and last completion on that port.

use crate::text::{ShortStr, parse_u64};

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Powers of two covered (latencies up to 2^40 µs; larger ones land in the last bucket).
const OCTAVES: usize = 41;
const BUCKETS: usize = OCTAVES * SUB;

/// Latency histogram in microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: [u32; BUCKETS],
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros(); // >= SUB_BITS
    let sub = (us >> (octave - SUB_BITS)) as usize & (SUB - 1);
    let index = (octave - SUB_BITS + 1) as usize * SUB + sub;
    index.min(BUCKETS - 1)
}

/// The smallest latency that falls into bucket `index` (the value reported for it).
fn bucket_floor(index: usize) -> u64 {
    let group = index / SUB;
    let sub = (index % SUB) as u64;
    if group == 0 {
        return sub;
    }
    let octave = group as u32 + SUB_BITS - 1;
    (1u64 << octave) | (sub << (octave - SUB_BITS))
}

impl Histogram {
    /// An empty histogram.
    #[must_use]
    pub const fn new() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    /// Records one latency.
    pub fn record(&mut self, us: u64) {
        let b = bucket_of(us);
        if let Some(c) = self.counts.get_mut(b) {
            *c = c.saturating_add(1);
        }
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// Samples recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest latency recorded (exact).
    #[must_use]
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The latency at quantile `q` (0.0..=1.0), rounded down to its bucket; 0 when empty.
    #[must_use]
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // Rank of the wanted sample, 1-based, at least 1.
        let rank = ((q * self.total as f64) as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return bucket_floor(i).min(self.max);
            }
        }
        self.max
    }
}

/// One port's figures, as printed by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStats {
    /// 1 (device) or 2 (ring).
    pub port: u8,
    /// Requests completed on the port.
    pub completions: u64,
    /// Guest clock (µs since boot) at the first completion.
    pub first_us: u64,
    /// Guest clock at the last completion.
    pub last_us: u64,
    /// Median latency, submit to completion.
    pub p50_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
    /// Largest latency.
    pub max_us: u64,
}

/// What every port-stats line starts with.
pub const PREFIX: &str = "BATON port-stats ";
/// Longest line [`parse_line`] accepts.
pub const MAX_LINE_LEN: usize = 512;

impl PortStats {
    /// Figures for `port` from its histogram and completion times.
    #[must_use]
    pub fn from_histogram(port: u8, h: &Histogram, first_us: u64, last_us: u64) -> Self {
        PortStats {
            port,
            completions: h.count(),
            first_us,
            last_us,
            p50_us: h.quantile(0.50),
            p99_us: h.quantile(0.99),
            max_us: h.max(),
        }
    }

    /// Completions per second between the first and the last completion (0 with fewer than two).
    #[must_use]
    pub fn iops(&self) -> u64 {
        let span = self.last_us.saturating_sub(self.first_us);
        if self.completions < 2 || span == 0 {
            return 0;
        }
        (self.completions - 1).saturating_mul(1_000_000) / span
    }
}

impl core::fmt::Display for PortStats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{PREFIX}port={} completions={} first_us={} last_us={} p50_us={} p99_us={} max_us={}",
            self.port,
            self.completions,
            self.first_us,
            self.last_us,
            self.p50_us,
            self.p99_us,
            self.max_us
        )
    }
}

/// Why a port-stats line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsError {
    /// Longer than [`MAX_LINE_LEN`].
    TooLong,
    /// Does not start with [`PREFIX`].
    MissingPrefix,
    /// A word that is not `key=value`, an unknown key, or a key given twice.
    BadKey(ShortStr),
    /// A value that is not a decimal number in range.
    BadValue(ShortStr),
    /// A key is missing.
    Missing,
}

impl core::fmt::Display for StatsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StatsError::TooLong => write!(f, "port-stats: line longer than {MAX_LINE_LEN} bytes"),
            StatsError::MissingPrefix => {
                write!(f, "port-stats: line does not start with `{PREFIX}`")
            }
            StatsError::BadKey(k) => write!(f, "port-stats: bad or repeated key `{k}`"),
            StatsError::BadValue(k) => write!(f, "port-stats: bad value for `{k}`"),
            StatsError::Missing => f.write_str("port-stats: a key is missing"),
        }
    }
}

impl core::error::Error for StatsError {}

const KEYS: [&str; 7] = [
    "port",
    "completions",
    "first_us",
    "last_us",
    "p50_us",
    "p99_us",
    "max_us",
];

/// Parses a port-stats line. Strict (every key once, nothing else), bounded, never panics.
pub fn parse_line(line: &str) -> Result<PortStats, StatsError> {
    if line.len() > MAX_LINE_LEN {
        return Err(StatsError::TooLong);
    }
    let body = line
        .trim_end_matches(['\r', '\n'])
        .strip_prefix(PREFIX)
        .ok_or(StatsError::MissingPrefix)?;
    let mut values = [0u64; KEYS.len()];
    let mut seen = [false; KEYS.len()];
    for word in body.split_ascii_whitespace() {
        let (k, v) = word
            .split_once('=')
            .ok_or(StatsError::BadKey(ShortStr::new(word)))?;
        let i = KEYS
            .iter()
            .position(|&key| key == k)
            .ok_or(StatsError::BadKey(ShortStr::new(k)))?;
        if core::mem::replace(&mut seen[i], true) {
            return Err(StatsError::BadKey(ShortStr::new(k)));
        }
        values[i] = parse_u64(v).ok_or(StatsError::BadValue(ShortStr::new(k)))?;
    }
    if seen.contains(&false) {
        return Err(StatsError::Missing);
    }
    let port = u8::try_from(values[0])
        .ok()
        .filter(|p| (1..=2).contains(p))
        .ok_or(StatsError::BadValue(ShortStr::new("port")))?;
    Ok(PortStats {
        port,
        completions: values[1],
        first_us: values[2],
        last_us: values[3],
        p50_us: values[4],
        p99_us: values[5],
        max_us: values[6],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::ToString;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in 0..200_000u64 {
            let b = bucket_of(us);
            assert!(b >= last);
            last = b;
            let floor = bucket_floor(b);
            assert!(floor <= us, "{us} -> bucket {b} floor {floor}");
            assert!(us - floor <= us / 16 + 1, "{us} floor {floor}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        for us in 1..=1000 {
            h.record(us);
        }
        let p50 = h.quantile(0.5);
        assert!((470..=500).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((930..=990).contains(&p99), "{p99}");
        assert_eq!(h.max(), 1000);
        assert_eq!(h.quantile(1.0), 992); // bucket floor of 1000
        h.record(u64::MAX);
        assert_eq!(h.max(), u64::MAX);
    }

    #[test]
    fn line_round_trip_and_errors() {
        let s = PortStats {
            port: 2,
            completions: 100,
            first_us: 10,
            last_us: 1_000_010,
            p50_us: 90,
            p99_us: 300,
            max_us: 4000,
        };
        assert_eq!(s.iops(), 99);
        let line = s.to_string();
        assert_eq!(parse_line(&line), Ok(s));
        assert_eq!(
            parse_line("BATON result x=1"),
            Err(StatsError::MissingPrefix)
        );
        assert!(parse_line(&line.replace("port=2", "port=3")).is_err());
        assert!(parse_line(&line.replace(" max_us=4000", "")).is_err());
        assert!(parse_line(&std::format!("{line} port=2")).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = parse_line(&s);
            let _ = parse_line(&std::format!("{PREFIX}{s}"));
        }

        #[test]
        fn quantile_within_bounds(v in proptest::collection::vec(0u64..10_000_000, 1..200), q in 0.0f64..=1.0) {
            let mut h = Histogram::new();
            for &x in &v { h.record(x); }
            let r = h.quantile(q);
            prop_assert!(r <= *v.iter().max().unwrap());
        }
    }
}
