//! Order statistics over repeated runs: median, min and max.
//!
//! Owns only arithmetic over samples; knows nothing about runs or files. NaN samples (a run
//! that produced no number) are dropped before any statistic is taken, so one failed run does
//! not poison a cell.

use serde::{Deserialize, Serialize};

/// Median, min and max of a set of samples, with how many samples went in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
}

impl Spread {
    /// `None` when no finite sample is left.
    pub fn of(samples: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1], samples: n })
    }
}

/// The median of the finite samples, `None` when there are none.
pub fn median(samples: &[f64]) -> Option<f64> {
    Spread::of(samples).map(|s| s.median)
}

/// Seconds per GB (10^9 bytes) of moved data: the unit the CPU-cost columns use.
pub fn per_gb(value: f64, bytes: u64) -> Option<f64> {
    if bytes == 0 || !value.is_finite() {
        return None;
    }
    Some(value / (bytes as f64 / 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_takes_the_middle() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(s, Spread { median: 2.0, min: 1.0, max: 3.0, samples: 3 });
    }

    #[test]
    fn even_count_averages_the_middle_pair() {
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!((s.min, s.max, s.samples), (1.0, 4.0, 4));
    }

    #[test]
    fn single_sample_is_its_own_spread() {
        let s = Spread::of(&[7.5]).unwrap();
        assert_eq!((s.median, s.min, s.max), (7.5, 7.5, 7.5));
    }

    #[test]
    fn non_finite_samples_are_dropped() {
        let s = Spread::of(&[f64::NAN, 5.0, f64::INFINITY, 1.0]).unwrap();
        assert_eq!((s.median, s.samples), (3.0, 2));
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[f64::NAN]).is_none());
        assert_eq!(median(&[2.0, 9.0, 4.0]), Some(4.0));
    }

    #[test]
    fn per_gb_uses_decimal_gigabytes() {
        assert_eq!(per_gb(2.0, 4_000_000_000), Some(0.5));
        assert_eq!(per_gb(1.0, 0), None);
    }
}
