//! The tuning budget: one wall-clock limit shared by every search of a
//! compile (`[autotune] budget_s`).
//!
//! A [`Budget`] starts when tuning starts; callers check
//! [`Budget::exhausted`] before each kernel or GEMM and hand
//! [`Budget::deadline`] to the searches (`SearchOptions::deadline`), so a
//! search running when the budget ends stops at its next measurement.

use std::time::{Duration, Instant};

/// A wall-clock budget, started at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    started: Instant,
    limit: Duration,
}

/// Why a number of seconds is not a budget.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("a tuning budget must be a positive, finite number of seconds, got {0}")]
pub struct BadBudget(pub f64);

impl Budget {
    /// A budget of `seconds`, starting now.
    pub fn start(seconds: f64) -> Result<Budget, BadBudget> {
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(BadBudget(seconds));
        }
        let limit = Duration::try_from_secs_f64(seconds).map_err(|_| BadBudget(seconds))?;
        Ok(Budget {
            started: Instant::now(),
            limit,
        })
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// When the budget ends (`None`: later than this clock can say).
    pub fn deadline(&self) -> Option<Instant> {
        self.started.checked_add(self.limit)
    }

    /// Whether the budget is spent.
    pub fn exhausted(&self) -> bool {
        self.elapsed() >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_positive_and_finite() {
        for bad in [0.0, -3.0, f64::NAN, f64::INFINITY, 1e300] {
            assert!(Budget::start(bad).is_err(), "{bad}");
        }
        let b = Budget::start(3600.0).unwrap();
        assert_eq!(b.limit(), Duration::from_secs(3600));
        assert!(!b.exhausted());
        assert!(b.deadline().unwrap() > Instant::now());
        let tiny = Budget::start(1e-9).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        assert!(tiny.exhausted());
        assert!(BadBudget(-1.0).to_string().contains("got -1"));
    }
}
