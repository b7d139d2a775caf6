//! Latency samples and their percentiles (a sorted `Vec`: exact, and the
//! sample counts here are small).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of latencies, in microseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) min_us: f64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
}

impl Summary {
    /// Summarizes `samples` (microseconds); `None` when there are none.
    pub(crate) fn of_us(mut samples: Vec<f64>) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| {
            // Nearest rank.
            let rank = (p * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Some(Summary {
            n: samples.len(),
            min_us: samples[0],
            mean_us: samples.iter().sum::<f64>() / samples.len() as f64,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: samples[samples.len() - 1],
        })
    }

    /// Summarizes durations.
    pub(crate) fn of(samples: &[Duration]) -> Option<Summary> {
        Summary::of_us(samples.iter().map(|d| us(*d)).collect())
    }
}

/// "p50 52.1 µs · p99 81.0 µs".
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} · p99 {}",
            Micros(self.p50_us),
            Micros(self.p99_us)
        )
    }
}

/// A duration given in microseconds, printed with a fitting unit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Micros(pub(crate) f64);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us.abs() < 1.0 {
            write!(f, "{:.0} ns", us * 1000.0)
        } else if us.abs() < 1000.0 {
            write!(f, "{us:.1} µs")
        } else if us.abs() < 1_000_000.0 {
            write!(f, "{:.2} ms", us / 1000.0)
        } else {
            write!(f, "{:.2} s", us / 1_000_000.0)
        }
    }
}

/// A duration in microseconds.
pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::of_us((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!(
            (s.p50_us, s.p90_us, s.p99_us, s.max_us),
            (50.0, 90.0, 99.0, 100.0)
        );
        let one = Summary::of_us(vec![7.0]).unwrap();
        assert_eq!((one.p50_us, one.p99_us), (7.0, 7.0));
        assert!(Summary::of_us(Vec::new()).is_none());
    }

    #[test]
    fn units() {
        assert_eq!(Micros(0.25).to_string(), "250 ns");
        assert_eq!(Micros(52.14).to_string(), "52.1 µs");
        assert_eq!(Micros(4_800.0).to_string(), "4.80 ms");
        assert_eq!(Micros(2_500_000.0).to_string(), "2.50 s");
    }
}
