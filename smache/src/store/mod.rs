//! Where values are kept: Redis, or the embedded in-process store.
//!
//! The set of stores is closed, so it is an enum rather than a trait object:
//! the hot path (a hit) is a direct call with no boxing. Only the Redis
//! store keeps the dependency graph (see `lua/common.lua` for its layout):
//! the worker that refreshes values needs Redis anyway.

mod breaker;
mod graph;
pub(crate) mod keys;
mod layer;
mod memory;
mod mongo;
mod notify;
mod redis;
mod roster;
mod script;
pub(crate) mod shards;

use std::time::Duration;

pub(crate) use self::graph::{TokenRead, ValueFields, ValueRead};
pub(crate) use self::memory::MemoryStore;
pub(crate) use self::mongo::MongoValues;
pub use self::mongo::DEFAULT_VALUES_COLLECTION;
pub(crate) use self::redis::stream::{JobReader, Starting, StreamEntry, StreamJob};
pub use self::redis::Swept;
pub(crate) use self::redis::{
    timestamp_key, Abandon, Begin, Changed, Endpoint, EntryRef, GraphSweep, Owed, RedisStore,
    Related, Seen, Start, TaskPhase, TaskState,
};
pub(crate) use self::roster::{Announced, Roll};
use crate::error::Result;
pub(crate) use crate::key::Outcome;
use crate::spec::Refresh;

/// Where an in-process entry (the embedded store's, the layer's) keeps its
/// value decoded, once a hit decoded it (see `call::keep`).
pub(crate) type Decoded = std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>;

/// How the in-process caches (the embedded store, the layer) hash their
/// value ids: foldhash, randomly seeded per cache. A hit hashes its id, a
/// few dozen bytes, for which std's SipHash costs about as much as the
/// rest of the lookup.
pub(crate) type IdHasher = foldhash::fast::RandomState;

/// What a store found under a key.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Nothing is stored.
    Miss,
    /// An entry: the store-assigned value version, the envelope bytes, and
    /// whether a document it depends on changed since it was computed.
    Hit {
        version: u64,
        data: Vec<u8>,
        /// When it went stale (Unix ms, the store's clock), if it is stale.
        stale_since_ms: Option<u64>,
        /// Whether it is past its time-to-live (Redis only: the embedded
        /// store drops such values).
        expired: bool,
    },
    /// Something is stored that is not a smache entry.
    Foreign(String),
    /// An alias: the value is the one of value id `target`, whose full
    /// arguments are `full_args` when the id holds only their hash.
    Alias { target: String, full_args: String },
}

/// Which kind of store an instance uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The embedded in-process store (the default without configuration).
    Embedded,
    /// Redis.
    Redis,
}

/// Where a value lives: its key and its value id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot<'a> {
    pub(crate) key: &'a str,
    pub(crate) id: &'a str,
    /// The full arguments when `id` holds only their hash, else "".
    pub(crate) full_args: &'a str,
}

impl Slot<'_> {
    /// The base of the value's keys (its shard's): the key without
    /// `v:<id>`, what the scripts build the value's other keys from.
    pub(crate) fn base(&self) -> &str {
        let end = self.key.len().saturating_sub(self.id.len() + 2);
        self.key.get(..end).unwrap_or(self.key)
    }
}

/// A computed value to store.
#[derive(Debug)]
pub(crate) struct Put<'a> {
    pub(crate) slot: Slot<'a>,
    pub(crate) data: Vec<u8>,
    pub(crate) ttl: Option<Duration>,
    /// The change generation the computation started from.
    pub(crate) started: u64,
    pub(crate) refresh: Refresh,
    /// The collections of the function's `relations(...)`.
    pub(crate) relations: &'static [&'static str],
    /// Every dependency token of the value.
    pub(crate) deps: &'a [String],
    /// The values the computation read (nested calls): each one's id and
    /// what was read of it, `<version>:<computed-at ms>`. The Redis store
    /// marks the value stale if one of them was stored anew since (those
    /// of its own shard, in `store.lua`; those of another shard had their
    /// edge written before they were read: see `Store::edge_first`).
    pub(crate) read: &'a [(String, String)],
    /// Keep the envelope in MongoDB (`store = mongo`), a reference in Redis.
    pub(crate) external: bool,
}

// One per instance, behind its `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Store::Memory(_) => Backend::Embedded,
            Store::Redis(_) => Backend::Redis,
        }
    }

    /// `{prefix}:`, the start of every key of the instance.
    fn base(&self) -> &str {
        match self {
            Store::Memory(store) => &store.base,
            Store::Redis(store) => &store.base,
        }
    }

    /// The storage key of the value `id`, `{prefix}:v:<id>` (with the
    /// tag of its shard on a sharded Redis store).
    pub(crate) fn value_key(&self, id: &str) -> String {
        match self {
            Store::Redis(store) => store.value_key(id),
            Store::Memory(_) => keys::value(self.base(), id),
        }
    }

    /// The storage key of the value whose id `write_id` writes, built in
    /// one `String` sized for an id of about `id_len` bytes; with where
    /// the id starts in it.
    pub(crate) fn value_key_with(
        &self,
        id_len: usize,
        write_id: impl FnOnce(&mut String),
    ) -> (String, usize) {
        if let Store::Redis(store) = self {
            if store.shards.count() > 1 {
                // The shard is the id's: the id first.
                let mut id = String::with_capacity(id_len);
                write_id(&mut id);
                let key = store.value_key(&id);
                let id_at = key.len() - id.len();
                return (key, id_at);
            }
        }
        let base = self.base();
        let mut key = String::with_capacity(base.len() + 2 + id_len);
        let id_at = keys::write_value(&mut key, base, write_id);
        (key, id_at)
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Lookup> {
        match self {
            Store::Memory(store) => Ok(store.get(key)),
            Store::Redis(store) => store.get(key).await,
        }
    }

    /// Records a miss about to be computed: [`Begin::Go`] with the change
    /// generation it starts from, [`Begin::Wait`] while another process
    /// computes it, or [`Begin::Read`] when the stored value is not the
    /// version `seen` last (`""`: none), one stored since.
    pub(crate) async fn begin(
        &self,
        slot: Slot<'_>,
        deps: &[String],
        owner: &str,
        lease: Duration,
        seen: &str,
    ) -> Result<Begin> {
        match self {
            Store::Memory(_) => Ok(Begin::Go(0)),
            Store::Redis(store) => store.begin(slot, deps, owner, lease, seen).await,
        }
    }

    /// Whether values spread over several shards (a Redis store only).
    pub(crate) fn sharded(&self) -> bool {
        matches!(self, Store::Redis(store) if store.shards.count() > 1)
    }

    /// Whether values `a` and `b` live in the same shard.
    pub(crate) fn same_shard(&self, a: &str, b: &str) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(store) => store.same_shard(a, b),
        }
    }

    /// Before a computation of value `home` reads value `id`: on a store of
    /// several shards, records `home`'s reverse edge on `id` first when
    /// `id` lives in another shard (see `RedisStore::edge_first`). `false`
    /// when it could not be recorded because `home` has no hash.
    pub(crate) async fn edge_first(&self, home: &str, id: &str) -> Result<bool> {
        match self {
            Store::Memory(_) => Ok(true),
            Store::Redis(store) => store.edge_first(home, id).await,
        }
    }

    /// Gives up a compute lease taken by [`begin`](Self::begin).
    pub(crate) async fn release(&self, slot: Slot<'_>, owner: &str) -> Result<()> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(store) => store.release(slot, owner).await,
        }
    }

    /// Extends a compute lease; `false` once `owner` no longer holds it.
    pub(crate) async fn renew(&self, key: &str, owner: &str, lease: Duration) -> Result<bool> {
        match self {
            Store::Memory(_) => Ok(false),
            Store::Redis(store) => store.renew(key, owner, lease).await,
        }
    }

    /// A receiver woken when the computation of `id` ends in any process.
    pub(crate) async fn waiter(&self, id: &str) -> Option<tokio::sync::oneshot::Receiver<()>> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(store) => store.waiter(id).await,
        }
    }

    /// Stores a value; `None` when a value computed from newer data is
    /// already stored (the new one is dropped).
    pub(crate) async fn put(&self, put: Put<'_>) -> Result<Option<u64>> {
        match self {
            Store::Memory(store) => Ok(Some(store.set(put.slot, put.data, put.ttl))),
            Store::Redis(store) => store.put(put).await,
        }
    }

    /// Queues a background refresh of a value past its time-to-live,
    /// found as `version`: nothing is queued if another value was stored
    /// since, or a recompute is already owed.
    pub(crate) async fn refresh(&self, slot: Slot<'_>, version: u64) -> Result<()> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(store) => store.refresh(slot.id, version).await,
        }
    }

    /// Makes `alias` stand for `target`'s value; the value id it now
    /// names (chains are collapsed), or `None` for a cycle.
    pub(crate) async fn alias(&self, alias: Slot<'_>, target: Slot<'_>) -> Result<Option<String>> {
        match self {
            Store::Memory(store) => Ok(store.alias(alias, target)),
            Store::Redis(store) => store.alias(alias, target).await,
        }
    }

    /// Removes a value (and its edges); returns whether it existed.
    pub(crate) async fn drop_value(&self, slot: Slot<'_>) -> Result<bool> {
        match self {
            Store::Memory(store) => Ok(store.delete(slot)),
            Store::Redis(store) => store.drop_value(slot).await,
        }
    }
}
