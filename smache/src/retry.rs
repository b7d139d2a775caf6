//! The retry policy of background work (recomputes, tasks, callbacks):
//! a plain value the instance is configured with and the executor follows.

use std::time::Duration;

/// How an executor retries background work that fails: a submitted task,
/// or the recompute of a value after a change. A failure is an `Err` from
/// the function, a value that cannot be serialized, a panic, or a MongoDB
/// error while loading the arguments. The delay doubles after each attempt.
///
/// ```
/// use std::time::Duration;
/// use smache::Retry;
///
/// let retry = Retry::new(4, Duration::from_millis(50));
/// assert_eq!(retry.attempts(), 4);
/// assert_eq!(Retry::default(), Retry::new(3, Duration::from_millis(100)));
/// assert_eq!(Retry::none().attempts(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    attempts: u32,
    backoff: Duration,
}

impl Retry {
    /// At most `attempts` runs in all (at least one), waiting `backoff`
    /// before the second, twice that before the third, and so on (at most
    /// a minute).
    #[must_use]
    pub const fn new(attempts: u32, backoff: Duration) -> Retry {
        Retry {
            attempts: if attempts == 0 { 1 } else { attempts },
            backoff,
        }
    }

    /// One run, no retry.
    #[must_use]
    pub const fn none() -> Retry {
        Retry::new(1, Duration::ZERO)
    }

    /// The number of runs at most.
    #[must_use]
    pub const fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before the first retry.
    #[must_use]
    pub const fn backoff(&self) -> Duration {
        self.backoff
    }

    /// The delay after failed run number `run` (1-based).
    pub(crate) fn delay(&self, run: u32) -> Duration {
        let factor = 1u32 << run.saturating_sub(1).min(16);
        self.backoff
            .saturating_mul(factor)
            .min(Duration::from_secs(60))
    }
}

impl Default for Retry {
    /// Three runs, 100 ms then 200 ms apart.
    fn default() -> Self {
        Retry::new(3, Duration::from_millis(100))
    }
}
