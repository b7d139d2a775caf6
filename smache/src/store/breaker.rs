//! The circuit breaker in front of Redis.
//!
//! Closed, every operation goes to Redis. The first one that cannot reach
//! it (refused, dropped, timed out) opens the breaker: from then on every
//! operation fails at once with [`Error::Unavailable`] without trying
//! Redis, so a call computes its value directly and an executor or worker
//! waits, none of them paying a connection attempt or a timeout. Meanwhile
//! one probe at a time asks Redis whether it is back: the first
//! [`FIRST_PROBE_AFTER`] after the failure, then at doubling intervals up
//! to [`PROBE_AT_MOST_EVERY`]. The first probe that gets an answer closes
//! the breaker. Opening logs one warning and closing one info line, so an
//! outage reads as two lines in each process, whatever the traffic.
//!
//! The breaker only keeps the state; the store runs the probes (see
//! `RedisStore::admit`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::sync::lock;

/// The first probe of an outage comes this long after the failure.
pub(crate) const FIRST_PROBE_AFTER: Duration = Duration::from_millis(250);

/// Each failed probe doubles the wait for the next, up to this.
pub(crate) const PROBE_AT_MOST_EVERY: Duration = Duration::from_secs(2);

/// Whether Redis is known to be unreachable; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Breaker {
    /// Set while open: the one thing the hot path reads.
    open: AtomicBool,
    outage: Mutex<Option<Outage>>,
    /// The instance's prefix, to tell instances apart in the logs.
    prefix: String,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    next_probe: Instant,
    /// The wait before the probe after next.
    interval: Duration,
    /// A probe is running.
    probing: bool,
}

/// What an operation may do now; see [`Breaker::gate`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Closed: go to Redis.
    Pass,
    /// Open: fail at once.
    Skip,
    /// Open, and a probe is due: start one (and report it with
    /// [`Probe::report`]), then fail at once.
    Probe,
}

/// A probe under way; see [`Gate::Probe`]. Dropped without a report (its
/// task was cancelled with its runtime), it counts as failed, so that the
/// next one is not held up for good.
#[derive(Debug)]
pub(crate) struct Probe(Option<Arc<Breaker>>);

impl Probe {
    pub(crate) fn new(breaker: Arc<Breaker>) -> Self {
        Probe(Some(breaker))
    }

    /// What the probe found.
    pub(crate) fn report(mut self, result: Result<(), &Error>) {
        if let Some(breaker) = self.0.take() {
            breaker.probed(result, Instant::now());
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(breaker) = self.0.take() {
            breaker.probed(Err(&Error::Unavailable), Instant::now());
        }
    }
}

impl Breaker {
    /// The instance's prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn new(prefix: &str) -> Self {
        Breaker {
            open: AtomicBool::new(false),
            outage: Mutex::new(None),
            prefix: prefix.to_owned(),
        }
    }

    /// Whether an operation may go to Redis at `now`. While open, hands
    /// the due probe to exactly one caller.
    pub(crate) fn gate(&self, now: Instant) -> Gate {
        if !self.open.load(Ordering::Acquire) {
            return Gate::Pass;
        }
        match lock(&self.outage).as_mut() {
            None => Gate::Pass,
            Some(outage) if !outage.probing && now >= outage.next_probe => {
                outage.probing = true;
                Gate::Probe
            }
            Some(_) => Gate::Skip,
        }
    }

    /// An operation could not reach Redis: opens the breaker, unless it
    /// is open already (operations in flight when it opened fail too).
    pub(crate) fn failed(&self, err: &Error, now: Instant) {
        let mut outage = lock(&self.outage);
        if outage.is_some() {
            return;
        }
        *outage = Some(Outage {
            since: now,
            next_probe: now + FIRST_PROBE_AFTER,
            interval: FIRST_PROBE_AFTER,
            probing: false,
        });
        self.open.store(true, Ordering::Release);
        tracing::warn!(
            prefix = %self.prefix,
            error = %err,
            "smache: Redis is unreachable; until it answers again, calls compute their values \
             directly and background work waits, without trying Redis (a probe checks every \
             {}-{} s)",
            FIRST_PROBE_AFTER.as_secs_f32(),
            PROBE_AT_MOST_EVERY.as_secs_f32(),
        );
    }

    /// What a probe found at `now`: an answer closes the breaker, a
    /// failure schedules the next probe.
    fn probed(&self, result: Result<(), &Error>, now: Instant) {
        let mut slot = lock(&self.outage);
        let Some(outage) = slot.as_mut() else {
            return;
        };
        match result {
            Ok(()) => {
                let down = now.saturating_duration_since(outage.since);
                *slot = None;
                self.open.store(false, Ordering::Release);
                tracing::info!(
                    prefix = %self.prefix,
                    "smache: Redis answers again after {:.1} s; caching resumes",
                    down.as_secs_f64()
                );
            }
            Err(err) => {
                outage.interval = (outage.interval * 2).min(PROBE_AT_MOST_EVERY);
                outage.next_probe = now + outage.interval;
                outage.probing = false;
                tracing::debug!(prefix = %self.prefix, error = %err, "smache: Redis still unreachable");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Error {
        Error::Timeout {
            op: "get",
            timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn a_failure_opens_it_and_one_probe_at_a_time_closes_it() {
        let breaker = Breaker::new("t");
        let t0 = Instant::now();
        assert_eq!(breaker.gate(t0), Gate::Pass);
        breaker.failed(&refused(), t0);
        // Open: every operation skips Redis until the first probe is due.
        assert_eq!(breaker.gate(t0), Gate::Skip);
        assert_eq!(breaker.gate(t0 + FIRST_PROBE_AFTER / 2), Gate::Skip);
        let due = t0 + FIRST_PROBE_AFTER;
        assert_eq!(breaker.gate(due), Gate::Probe);
        // Only one probe at a time.
        assert_eq!(breaker.gate(due), Gate::Skip);
        // A failure in flight changes nothing.
        breaker.failed(&refused(), due);
        assert_eq!(breaker.gate(due + PROBE_AT_MOST_EVERY), Gate::Skip);
        // A failed probe doubles the wait.
        breaker.probed(Err(&refused()), due);
        assert_eq!(breaker.gate(due + FIRST_PROBE_AFTER), Gate::Skip);
        assert_eq!(breaker.gate(due + FIRST_PROBE_AFTER * 2), Gate::Probe);
        // An answer closes it.
        breaker.probed(Ok(()), due + FIRST_PROBE_AFTER * 2);
        assert_eq!(breaker.gate(due), Gate::Pass);
    }

    #[test]
    fn a_probe_dropped_unreported_counts_as_failed() {
        let breaker = Arc::new(Breaker::new("t"));
        let t0 = Instant::now();
        breaker.failed(&refused(), t0);
        assert_eq!(breaker.gate(t0 + FIRST_PROBE_AFTER), Gate::Probe);
        drop(Probe::new(Arc::clone(&breaker)));
        let later = Instant::now() + PROBE_AT_MOST_EVERY;
        assert_eq!(breaker.gate(later), Gate::Probe);
        Probe::new(Arc::clone(&breaker)).report(Ok(()));
        assert_eq!(breaker.gate(later), Gate::Pass);
    }

    #[test]
    fn probes_back_off_up_to_the_bound() {
        let breaker = Breaker::new("t");
        let mut now = Instant::now();
        breaker.failed(&refused(), now);
        let mut waits = Vec::new();
        let mut last = now;
        for _ in 0..8 {
            while breaker.gate(now) != Gate::Probe {
                now += Duration::from_millis(50);
            }
            waits.push(now - last);
            last = now;
            breaker.probed(Err(&refused()), now);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 2000, 2000, 2000, 2000]);
    }
}
