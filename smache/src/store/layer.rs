//! The in-process layer in front of the Redis store: recently read values
//! kept in this process's memory (a byte-bounded [`moka`] cache), dropped
//! the moment Redis says they changed.
//!
//! Coherence comes from Redis's server-assisted client-side caching: the
//! values are read over a connection with `CLIENT TRACKING` on (see
//! `redis/tracking.rs`), so Redis remembers which keys this process read
//! and pushes an invalidation on that connection when any client writes
//! one of them (a new value, a stale mark, a delete, an expiry, an
//! eviction, `FLUSHALL`). This module is the layer's state and the rules
//! that close the races:
//!
//! * **A write while a read is in flight.** Its invalidation may be handled
//!   before the read's reply is put in the layer (the two travel apart
//!   inside the client). Every read takes a [`Ticket`] before it is sent:
//!   the invalidation counter of the key's stripe and the layer's epoch.
//!   [`fill`](Layer::fill) inserts only if neither moved; it checks and
//!   inserts holding the stripe's lock, and an invalidation bumps the
//!   counter and removes the key holding it too, so no reader ever sees a
//!   value filled after its invalidation was handled.
//! * **The connection lost, or Redis restarted.** Invalidations sent while
//!   the connection was down are lost, so the layer is flushed and serves
//!   nothing ([`Layer::suspend`]) until a new connection has tracking on
//!   ([`Layer::resume`]); the epoch moves, so no read begun before the
//!   flush fills it after, and every entry carries the epoch it was filled
//!   in: one of an older epoch is never served (whatever moka's lazy
//!   `invalidate_all` still holds).
//! * **The server's tracking table full** (`tracking-table-max-keys`):
//!   Redis forgets keys by sending their invalidations, which drop them
//!   here like any other.
//!
//! Only values fresh when read are kept (not stale, not past their
//! time-to-live); an entry is served until its time-to-live and never
//! after, so every rule of the Redis store still holds from the layer.
//!
//! Entries are kept under their value id, the Redis key without
//! `{prefix}:v:` (the same for every key the layer holds), so that a hit
//! can look its `CacheKey`'s id up as it is ([`Layer::get_id`]), as the
//! embedded store's do. The other methods take Redis keys; only value
//! keys are kept.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use moka::sync::Cache;

use super::{keys, Decoded, IdHasher};
use crate::metrics::LayerEvent;
use crate::sync::lock;

/// Invalidation counters: a read is conservative about every key of its
/// stripe, so a few hundred keep false alarms rare at little cost.
const STRIPES: usize = 256;

/// A value in the layer.
#[derive(Debug)]
pub(crate) struct Cached {
    /// The value version Redis assigned it.
    pub(crate) version: u64,
    /// The envelope, shared with every hit rather than copied.
    pub(crate) data: Arc<[u8]>,
    /// When its time-to-live ends (Unix ms), if it has one.
    pub(crate) expires_at_ms: Option<u64>,
    /// The layer's epoch when it was filled (set by [`Layer::fill`]).
    pub(crate) epoch: u64,
    /// The value, once a hit decoded it (see `call::keep`).
    pub(crate) decoded: Decoded,
}

/// What a read saw before it was sent; see [`Layer::fill`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    stripe: usize,
    count: u64,
    epoch: u64,
}

/// The layer's state, shared with the tracking connection's push handler.
pub(crate) struct Layer {
    /// By value id.
    cache: Cache<String, Arc<Cached>, IdHasher>,
    /// `{prefix}:v:`, the start of every value key.
    value_prefix: String,
    /// Invalidation counters, each behind the lock its fills and
    /// invalidations hold.
    stripes: Box<[Mutex<u64>]>,
    /// Moves on every flush.
    epoch: AtomicU64,
    /// A tracking connection is up: only then may the layer serve or fill.
    live: AtomicBool,
    hasher: IdHasher,
    /// The instance's prefix, for its logs and metrics.
    prefix: String,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Layer {
    /// A layer of at most `capacity_bytes` (keys and values counted), not
    /// live until [`resume`](Self::resume).
    pub(crate) fn new(capacity_bytes: u64, prefix: &str) -> Self {
        let value_prefix = keys::value_prefix(&keys::base(prefix));
        let prefix_len = value_prefix.len();
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            // The whole Redis key; the envelope counted twice: once as
            // bytes, once for the value a hit keeps decoded beside them
            // (about its size).
            .weigher(move |id: &String, entry: &Arc<Cached>| {
                u32::try_from(prefix_len + id.len() + 2 * entry.data.len() + 64).unwrap_or(u32::MAX)
            })
            .build_with_hasher(IdHasher::default());
        Layer {
            cache,
            value_prefix,
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            hasher: IdHasher::default(),
            prefix: prefix.to_owned(),
        }
    }

    /// The value id of Redis key `key`, `{prefix}:v:<id>` or, on a store
    /// of several shards, `{prefix#<n>}:v:<id>`; `None` for a key that
    /// names no value (the layer keeps none of those).
    fn id<'k>(&self, key: &'k str) -> Option<&'k str> {
        if let Some(id) = key.strip_prefix(&self.value_prefix) {
            return Some(id);
        }
        // `{prefix` then `#<digits>` then `}:v:`.
        let open = self.value_prefix.strip_suffix("}:v:")?;
        let rest = key.strip_prefix(open)?.strip_prefix('#')?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest[digits..].strip_prefix("}:v:")
    }

    fn stripe(&self, key: &str) -> usize {
        // Truncation intended: any bits of the hash pick a stripe.
        #[allow(clippy::cast_possible_truncation)]
        let stripe = self.hasher.hash_one(key) as usize % STRIPES;
        stripe
    }

    /// [`get_id`](Self::get_id) by the value's Redis key, as the tests
    /// name entries.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.get_id(self.id(key)?)
    }

    /// The value of id `id`, if the layer may serve it now: a tracking
    /// connection is up and it is not past its time-to-live. A miss is
    /// counted by the caller, which goes on to Redis.
    pub(crate) fn get_id(&self, id: &str) -> Option<Arc<Cached>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let entry = self.cache.get(id)?;
        if entry.epoch != self.epoch.load(Ordering::Acquire) {
            return None;
        }
        if entry
            .expires_at_ms
            .is_some_and(|at| at <= crate::envelope::now_ms())
        {
            // Served from Redis from now on, which refreshes it.
            self.cache.invalidate(id);
            return None;
        }
        Some(entry)
    }

    /// Whether the layer serves: a tracking connection is up.
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Taken before a read of `key` is sent, for [`fill`](Self::fill).
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let stripe = self.stripe(key);
        Ticket {
            stripe,
            epoch: self.epoch.load(Ordering::SeqCst),
            count: *lock(&self.stripes[stripe]),
        }
    }

    /// Keeps what a read of `key`, begun with `ticket`, returned; nothing
    /// if the key may have changed since the read was sent.
    pub(crate) fn fill(&self, key: &str, ticket: Ticket, mut entry: Cached) {
        // Only a value is ever looked up (see `get`).
        let Some(id) = self.id(key) else {
            return;
        };
        let count = lock(&self.stripes[ticket.stripe]);
        if *count != ticket.count
            || !self.live.load(Ordering::SeqCst)
            || self.epoch.load(Ordering::SeqCst) != ticket.epoch
        {
            return;
        }
        // A flush from here on moves the epoch: this entry is then never
        // served.
        entry.epoch = ticket.epoch;
        self.cache.insert(id.to_owned(), Arc::new(entry));
        drop(count);
    }

    /// Redis says `key` changed: drop it.
    pub(crate) fn invalidate(&self, key: &str) {
        self.drop_key(key);
        crate::metrics::layer(LayerEvent::Invalidated);
    }

    /// This process wrote `key`: drop it (not counted as an invalidation).
    pub(crate) fn drop_key(&self, key: &str) {
        let mut count = lock(&self.stripes[self.stripe(key)]);
        *count += 1;
        if let Some(id) = self.id(key) {
            self.cache.invalidate(id);
        }
    }

    /// Redis says everything changed (`FLUSHALL`, `FLUSHDB`): drop it all.
    pub(crate) fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
        crate::metrics::layer(LayerEvent::Flushed);
    }

    /// The tracking connection is gone: invalidations may be missed from
    /// now on, so serve nothing and drop everything.
    pub(crate) fn suspend(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.flush();
    }

    /// A tracking connection is up again (tracking on before any read).
    pub(crate) fn resume(&self) {
        self.live.store(true, Ordering::SeqCst);
    }

    /// Entries and their weight in bytes (for inspect).
    pub(crate) fn measure(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// [`measure`](Self::measure), recorded as the layer's gauges,
    /// labelled by its instance's prefix: the tracking connection's
    /// heartbeat samples it.
    pub(crate) fn size(&self) -> (u64, u64) {
        let (entries, bytes) = self.measure();
        crate::metrics::local_size(&self.prefix, entries, bytes);
        (entries, bytes)
    }

    /// Its bound in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(0)
    }

    /// The prefix of the instance it belongs to.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64) -> Cached {
        Cached {
            version,
            data: Arc::from(&b"sm-value"[..]),
            expires_at_ms: None,
            epoch: 0,
            decoded: Decoded::new(),
        }
    }

    fn live() -> Layer {
        let layer = Layer::new(1 << 20, "t");
        layer.resume();
        layer
    }

    const K: &str = "{t}:v:k";

    #[test]
    fn a_read_fills_and_an_invalidation_drops() {
        let layer = live();
        let ticket = layer.ticket(K);
        layer.fill(K, ticket, entry(1));
        assert_eq!(layer.get(K).map(|e| e.version), Some(1));
        layer.invalidate(K);
        assert!(layer.get(K).is_none());
    }

    #[test]
    fn an_invalidation_during_the_read_keeps_its_reply_out() {
        let layer = live();
        let ticket = layer.ticket(K);
        layer.invalidate(K);
        layer.fill(K, ticket, entry(1));
        assert!(layer.get(K).is_none());
    }

    #[test]
    fn a_flush_during_the_read_keeps_its_reply_out() {
        let layer = live();
        let ticket = layer.ticket(K);
        layer.flush();
        layer.fill(K, ticket, entry(1));
        assert!(layer.get(K).is_none());
    }

    #[test]
    fn keys_that_name_no_value_are_not_kept() {
        let layer = live();
        for key in ["{t}:jobs", "{u}:v:k", "k"] {
            layer.fill(key, layer.ticket(key), entry(1));
            assert!(layer.get(key).is_none(), "{key}");
        }
        layer.fill(K, layer.ticket(K), entry(1));
        layer.invalidate("k");
        assert_eq!(layer.get(K).map(|e| e.version), Some(1));
    }

    #[test]
    fn a_suspended_layer_serves_and_keeps_nothing() {
        let layer = live();
        layer.fill(K, layer.ticket(K), entry(1));
        layer.suspend();
        assert!(layer.get(K).is_none());
        let ticket = layer.ticket(K);
        layer.fill(K, ticket, entry(2));
        layer.resume();
        assert!(layer.get(K).is_none(), "a fill while down is kept out");
        layer.fill(K, layer.ticket(K), entry(3));
        assert_eq!(layer.get(K).map(|e| e.version), Some(3));
    }

    #[test]
    fn an_entry_past_its_time_to_live_is_not_served() {
        let layer = live();
        let past = Cached {
            expires_at_ms: Some(crate::envelope::now_ms() - 1),
            ..entry(1)
        };
        layer.fill(K, layer.ticket(K), past);
        assert!(layer.get(K).is_none());
    }

    #[test]
    fn other_keys_survive_an_invalidation() {
        let layer = live();
        let (a, b) = ("{t}:v:a", "{t}:v:b");
        layer.fill(a, layer.ticket(a), entry(1));
        layer.fill(b, layer.ticket(b), entry(2));
        layer.invalidate(a);
        assert!(layer.get(a).is_none());
        assert_eq!(layer.get(b).map(|e| e.version), Some(2));
    }

    /// A reader filling the key with what it read after taking its ticket,
    /// against a writer that bumps the stored version and then hands the
    /// layer its invalidation: once an invalidation is handled, the layer
    /// never serves a version older than the write's.
    #[test]
    fn no_fill_races_past_an_invalidation() {
        let layer = Arc::new(live());
        let stored = Arc::new(AtomicU64::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (layer, stored, stop) = (layer.clone(), stored.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ticket = layer.ticket(K);
                    let version = stored.load(Ordering::SeqCst);
                    layer.fill(K, ticket, entry(version));
                }
            })
        };
        for _ in 0..50_000 {
            let now = stored.fetch_add(1, Ordering::SeqCst) + 1;
            layer.invalidate(K);
            if let Some(served) = layer.get(K) {
                assert!(
                    served.version >= now,
                    "{} served after {now}",
                    served.version
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    }

    #[test]
    fn the_byte_bound_holds_under_ten_times_the_working_set() {
        let layer = Layer::new(64 * 1024, "t");
        layer.resume();
        for i in 0..640 {
            let key = format!("{{t}}:v:k{i}");
            let data: Arc<[u8]> = vec![0u8; 1000].into();
            layer.fill(
                &key,
                layer.ticket(&key),
                Cached {
                    version: 1,
                    data,
                    expires_at_ms: None,
                    epoch: 0,
                    decoded: Decoded::new(),
                },
            );
        }
        let (_, bytes) = layer.measure();
        assert!(bytes <= 64 * 1024, "{bytes} bytes kept");
        assert!(bytes > 0);
    }

    #[test]
    fn a_sharded_value_key_names_its_id_and_no_other_key_does() {
        let layer = Layer::new(1 << 20, "p");
        assert_eq!(layer.id("{p}:v:f#1:a"), Some("f#1:a"));
        assert_eq!(layer.id("{p#17}:v:f#1:a"), Some("f#1:a"));
        for other in [
            "{p#}:v:x",
            "{p#1x}:v:x",
            "{p#1}:r:x",
            "{pq}:v:x",
            "{q#1}:v:x",
            "{p}:jobs",
        ] {
            assert_eq!(layer.id(other), None, "{other}");
        }
    }
}
