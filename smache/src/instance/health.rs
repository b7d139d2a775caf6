//! Store health: a store failure is logged once per outage rather than
//! once per call, and marks the store degraded until a success.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::Inner;
use crate::envelope;
use crate::error::Error;

impl Inner {
    /// Logs a store failure (rate-limited) and marks the store degraded.
    pub(crate) fn store_failed(&self, err: &Error) {
        self.health.failed(err);
    }

    /// Notes a store success (ends a degraded period).
    pub(crate) fn store_ok(&self) {
        self.health.ok();
    }
}

/// Tracks whether the store works, to log its failures once rather than
/// once per call. Redis being unreachable is the Redis store's to log (its
/// circuit breaker logs each outage once): this tracks the other failures
/// (MongoDB, for values kept there; errors Redis answers with).
#[derive(Default)]
pub(super) struct Health {
    degraded: AtomicBool,
    last_warning_ms: AtomicU64,
}

/// While degraded, repeat the warning at most this often.
const WARN_EVERY_MS: u64 = 10_000;

impl Health {
    /// A store operation succeeded: ends a degraded period, saying so.
    pub(super) fn ok(&self) {
        if self.degraded.load(Ordering::Relaxed) && self.degraded.swap(false, Ordering::Relaxed) {
            crate::metrics::store_degraded(false);
            tracing::info!("smache: the store is reachable again; caching resumed");
        }
    }

    /// A store operation failed: logs it (an unreachable Redis at debug
    /// level only, its breaker having said so) and marks the store degraded.
    pub(super) fn failed(&self, err: &Error) {
        if err.is_unreachable() {
            tracing::debug!(error = %err, "smache: Redis unreachable; computing directly");
            return;
        }
        let now = envelope::now_ms();
        let was_degraded = self.degraded.swap(true, Ordering::Relaxed);
        crate::metrics::store_degraded(true);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if !was_degraded || now.saturating_sub(last) >= WARN_EVERY_MS {
            self.last_warning_ms.store(now, Ordering::Relaxed);
            tracing::warn!(error = %err, "smache: the store is unavailable; computing values directly until it returns");
        } else {
            tracing::debug!(error = %err, "smache: store still unavailable");
        }
    }
}

impl Inner {
    /// Samples the job stream's length into the metrics until dropped;
    /// nothing for the embedded store. Run it with
    /// [`Sampling::start`](crate::metrics::Sampling::start).
    pub(crate) async fn sample_job_queue(self: std::sync::Arc<Self>) {
        if let crate::store::Store::Redis(store) = &self.store {
            store.sample_job_queue().await;
        }
    }
}

/// What the in-process layer in front of the Redis store holds; see
/// [`Smache::local_cache`](crate::Smache::local_cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalCacheStats {
    /// Values it holds.
    pub entries: u64,
    /// Their weight in bytes (keys and envelopes).
    pub bytes: u64,
    /// Its bound in bytes.
    pub capacity: u64,
    /// Whether it serves: its tracking connection is up. While it is not,
    /// every hit is read from Redis.
    pub live: bool,
}

impl crate::Smache {
    /// The in-process layer in front of Redis, if this instance has one
    /// (see [`SmacheBuilder::local_cache_capacity`](crate::SmacheBuilder::local_cache_capacity)):
    /// what it holds and whether it serves.
    ///
    /// ```
    /// // The embedded store has no layer in front of it.
    /// assert!(smache::Smache::embedded().local_cache().is_none());
    /// ```
    #[must_use]
    pub fn local_cache(&self) -> Option<LocalCacheStats> {
        let crate::store::Store::Redis(store) = &self.inner.store else {
            return None;
        };
        let layer = store.layer()?;
        let (entries, bytes) = layer.measure();
        Some(LocalCacheStats {
            entries,
            bytes,
            capacity: layer.capacity(),
            live: layer.is_live(),
        })
    }

    /// Waits until every change Redis reported to this process before the
    /// call has reached the in-process layer. A value this process stores
    /// or invalidates is seen by its next read at once (with, after
    /// [`invalidate`](crate::Smache::invalidate), the values built on it);
    /// a write by another process, and the values a store here marks
    /// stale, reach the layer within milliseconds. When another process
    /// tells you it wrote (a message, a reply), call this first to read
    /// its write for sure.
    /// Returns at once without a layer, or while it is off (it serves
    /// nothing then).
    ///
    /// ```no_run
    /// # async fn run(smache: smache::Smache) -> Result<(), smache::Error> {
    /// // Another process said it refreshed a value: read its write.
    /// smache.sync_local_cache().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Redis`](crate::Error::Redis) or
    /// [`Error::Timeout`](crate::Error::Timeout) when Redis does not
    /// answer within the operation timeout.
    pub async fn sync_local_cache(&self) -> crate::Result<()> {
        match &self.inner.store {
            crate::store::Store::Redis(store) => store.sync_layer().await,
            crate::store::Store::Memory(_) => Ok(()),
        }
    }
}
