//! [`Timing`]: what [`Engine::time_replays`](crate::Engine::time_replays)
//! measured, with summary statistics.

use serde::Serialize;

/// Summary statistics of a series of measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    /// The median (mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// The arithmetic mean.
    pub mean: f64,
    /// Number of values.
    pub count: usize,
}

impl Stats {
    /// Statistics of `values`; `None` when there are none (NaNs sort last).
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            mean: sorted.iter().sum::<f64>() / n as f64,
            count: n,
        })
    }
}

/// Per-replay measurements of the forward.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timing {
    /// GPU milliseconds of each replay, between CUDA events recorded on the
    /// stream right before and right after its launch.
    pub gpu_ms: Vec<f64>,
    /// Host microseconds each launch call took on an idle stream (the
    /// graph launch call, or enqueueing every step when the engine has no
    /// graph).
    pub launch_us: Vec<f64>,
}

impl Timing {
    /// Statistics of [`gpu_ms`](Self::gpu_ms).
    pub fn gpu(&self) -> Option<Stats> {
        Stats::of(&self.gpu_ms)
    }

    /// Statistics of [`launch_us`](Self::launch_us).
    pub fn launch(&self) -> Option<Stats> {
        Stats::of(&self.launch_us)
    }

    /// Median GPU milliseconds per forward (NaN without replays).
    pub fn median_ms(&self) -> f64 {
        self.gpu().map_or(f64::NAN, |s| s.median)
    }

    /// Fastest forward in GPU milliseconds (NaN without replays).
    pub fn min_ms(&self) -> f64 {
        self.gpu().map_or(f64::NAN, |s| s.min)
    }

    /// Slowest forward in GPU milliseconds (NaN without replays).
    pub fn max_ms(&self) -> f64 {
        self.gpu().map_or(f64::NAN, |s| s.max)
    }

    /// Median host microseconds per launch call (NaN without replays).
    pub fn median_launch_us(&self) -> f64 {
        self.launch().map_or(f64::NAN, |s| s.median)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_odd_and_even_series() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            (s.median, s.min, s.max, s.mean, s.count),
            (2.0, 1.0, 3.0, 2.0, 3)
        );
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Stats::of(&[]), None);
    }

    #[test]
    fn timing_helpers() {
        let t = Timing {
            gpu_ms: vec![10.0, 12.0, 11.0],
            launch_us: vec![5.0, 7.0],
        };
        assert_eq!((t.median_ms(), t.min_ms(), t.max_ms()), (11.0, 10.0, 12.0));
        assert_eq!(t.median_launch_us(), 6.0);
        assert!(Timing::default().median_ms().is_nan());
    }
}
