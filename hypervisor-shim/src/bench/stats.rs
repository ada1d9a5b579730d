//! Order statistics of a handful of samples (median, p99, max), nearest-rank.

use serde::Serialize;

/// Summary of one figure over several runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median (nearest rank: the lower middle of an even count).
    pub p50: f64,
    /// 99th percentile, nearest rank (with fewer than 100 samples: the largest).
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// The summary of the finite values of `v`; `None` if there are none.
    pub fn of(v: &[f64]) -> Option<Self> {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        Some(Self {
            n,
            min: s[0],
            p50: nearest_rank(&s, 50),
            p99: nearest_rank(&s, 99),
            max: s[n - 1],
        })
    }
}

/// The `pct`th percentile of sorted `s` by nearest rank: the `ceil(pct/100 × n)`th value.
fn nearest_rank(s: &[f64], pct: usize) -> f64 {
    let n = s.len();
    let rank = (pct * n).div_ceil(100).clamp(1, n);
    s[rank - 1]
}

/// Median of `v` (nearest rank), `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    Summary::of(v).map(|s| s.p50)
}

/// Rounds to `digits` decimals (for reports).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!(
            (s.n, s.min, s.p50, s.p99, s.max),
            (20, 1.0, 10.0, 20.0, 20.0)
        );
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.p50, s.p99), (100.0, 198.0));
        assert_eq!(median(&[3.0, f64::NAN, 1.0, 2.0]), Some(2.0));
        assert!(Summary::of(&[f64::NAN]).is_none());
        assert_eq!(round(1.23456, 2), 1.23);
    }
}
