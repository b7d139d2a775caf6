//! Whether a worker serves this application: the small state machine an
//! instance keeps, one step per check (the checks themselves, which read
//! the worker roster, are `roster::watchdog`'s).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// An application's check that a worker serves it: the state the
/// roster's check (`roster::watchdog`) keeps in the instance.
#[derive(Debug)]
pub(crate) struct Watchdog {
    /// How long no serving worker may be found before a warning; `None`:
    /// no check.
    pub(crate) within: Option<Duration>,
    /// When a store may start the next check (ms); `u64::MAX` while one
    /// runs.
    pub(crate) next_ms: AtomicU64,
    state: Mutex<Served>,
}

/// What the checks found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Unknown,
    Yes,
    /// No serving worker since then.
    Missing(Instant),
    /// None for long enough, and said so.
    Warned,
}

/// What a check calls for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Served: check again after a while.
    Served,
    /// Served again after the warning: say so.
    Appeared,
    /// Not served: look again soon.
    Missing,
    /// Not served for this long: warn, then look again soon.
    Warn(Duration),
}

impl Watchdog {
    pub(crate) fn new(within: Option<Duration>) -> Self {
        Watchdog {
            within,
            next_ms: AtomicU64::new(0),
            state: Mutex::new(Served::Unknown),
        }
    }

    /// What finding a serving worker (or not) at `now` calls for.
    pub(crate) fn observe(&self, served: bool, now: Instant, within: Duration) -> Step {
        let mut state = lock(&self.state);
        let (next, step) = match (*state, served) {
            (Served::Warned, true) => (Served::Yes, Step::Appeared),
            (_, true) => (Served::Yes, Step::Served),
            (Served::Unknown | Served::Yes, false) => (Served::Missing(now), Step::Missing),
            (Served::Missing(since), false) if now.duration_since(since) >= within => {
                (Served::Warned, Step::Warn(now.duration_since(since)))
            }
            (missing, false) => (missing, Step::Missing),
        };
        *state = next;
        step
    }
}
