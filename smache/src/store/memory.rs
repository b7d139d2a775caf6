//! The embedded store: a bounded in-process cache (moka) with per-entry TTL.
//!
//! An entry past its TTL is a miss: checked on read (a clock read only for
//! entries that have a TTL), and dropped by the byte bound in time.
//!
//! Entries are kept under their value id, the storage key without
//! `{prefix}:v:` (the same for every key of the store): a hit looks its
//! [`CacheKey`]'s id up as it is, with no key to build, and hashes fewer
//! bytes. The methods that take a storage key strip that start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use std::collections::HashMap;
use std::sync::Mutex;

use super::{keys, Lookup, Slot};
use super::{Decoded, IdHasher};
use crate::key::CacheKey;
use crate::sync::lock;

/// A stored value, shared by every hit.
pub(crate) struct Stored {
    version: u64,
    /// The envelope.
    pub(crate) data: Box<[u8]>,
    expires_at: Option<Instant>,
    /// The value, once a hit decoded it (see `call::keep`).
    pub(crate) decoded: Decoded,
}

impl Stored {
    /// Not past its time-to-live.
    fn live(&self) -> bool {
        self.expires_at.is_none_or(|at| at > Instant::now())
    }
}

/// Values in process memory, bounded by total bytes (least recently used
/// entries are evicted first).
pub(crate) struct MemoryStore {
    /// `{prefix}:`, the start of every key of the instance (see
    /// [`keys`]).
    pub(super) base: String,
    /// `{prefix}:v:`, the start of every value key.
    value_prefix: String,
    /// By value id.
    cache: Cache<String, Arc<Stored>, IdHasher>,
    /// Aliases: value id → the value id it stands for. Few, and never
    /// evicted.
    links: Mutex<HashMap<String, String>>,
    /// Whether any alias was ever made: until then a hit need not look
    /// at `links` (see [`peek`](Self::peek)).
    linked: AtomicBool,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl MemoryStore {
    pub(crate) fn new(capacity_bytes: u64, prefix: &str) -> Self {
        let base = keys::base(prefix);
        let value_prefix = keys::value_prefix(&base);
        let prefix_len = value_prefix.len();
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            // The whole storage key; the envelope counted twice: once as
            // bytes, once for the value a hit keeps decoded beside them
            // (about its size).
            .weigher(move |id: &String, entry: &Arc<Stored>| {
                u32::try_from(prefix_len + id.len() + 2 * entry.data.len() + 32).unwrap_or(u32::MAX)
            })
            .build_with_hasher(IdHasher::default());
        MemoryStore {
            value_prefix,
            base,
            cache,
            links: Mutex::default(),
            linked: AtomicBool::new(false),
        }
    }

    /// The value id of storage key `key`; `None` for a key that names no
    /// value (nothing is stored under it).
    fn id<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.value_prefix)
    }

    /// The envelope stored for `key`, shared rather than copied: the read
    /// of a hit. `None` when nothing is stored, and when the key is an
    /// alias (the caller then takes the path of [`get`](Self::get), which
    /// follows it).
    #[inline]
    pub(crate) fn peek(&self, key: &CacheKey) -> Option<Arc<Stored>> {
        key.with_value_id(|id| {
            if self.linked.load(Ordering::Acquire) && lock(&self.links).contains_key(id) {
                return None;
            }
            self.cache.get(id).filter(|entry| entry.live())
        })
    }

    pub(crate) fn get(&self, key: &str) -> Lookup {
        let Some(id) = self.id(key) else {
            return Lookup::Miss;
        };
        if let Some(target) = lock(&self.links).get(id) {
            return Lookup::Alias {
                target: target.clone(),
                full_args: String::new(), // no executors here
            };
        }
        match self.cache.get(id).filter(|entry| entry.live()) {
            Some(entry) => Lookup::Hit {
                version: entry.version,
                data: entry.data.to_vec(),
                stale_since_ms: None,
                expired: false,
            },
            None => Lookup::Miss,
        }
    }

    pub(crate) fn set(&self, slot: Slot<'_>, data: Vec<u8>, ttl: Option<Duration>) -> u64 {
        let data = data.into_boxed_slice();
        let expires_at = ttl.and_then(|ttl| Instant::now().checked_add(ttl));
        let entry = self.cache.entry_by_ref(slot.id).and_upsert_with(|old| {
            Arc::new(Stored {
                version: old.map_or(0, |old| old.value().version) + 1,
                data,
                expires_at,
                decoded: Decoded::new(),
            })
        });
        entry.value().version
    }

    pub(crate) fn delete(&self, slot: Slot<'_>) -> bool {
        let linked = lock(&self.links).remove(slot.id).is_some();
        self.cache.remove(slot.id).is_some() || linked
    }

    /// Makes `alias` stand for `target`'s value (see `lua/alias.lua`);
    /// the value id it names, or `None` for a cycle.
    pub(crate) fn alias(&self, alias: Slot<'_>, target: Slot<'_>) -> Option<String> {
        if alias.id == target.id {
            return None;
        }
        let mut links = lock(&self.links);
        let named = links
            .get(target.id)
            .cloned()
            .unwrap_or_else(|| target.id.to_owned());
        if named == alias.id {
            return None;
        }
        self.linked.store(true, Ordering::Release);
        self.cache.remove(alias.id);
        for link in links.values_mut() {
            if *link == alias.id {
                link.clone_from(&named);
            }
        }
        links.insert(alias.id.to_owned(), named.clone());
        Some(named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(key: &str) -> Slot<'_> {
        Slot {
            key,
            id: key.strip_prefix("{test}:v:").unwrap(),
            full_args: "",
        }
    }

    #[test]
    fn versions_increase_and_delete_forgets() {
        let store = MemoryStore::new(1 << 20, "test");
        let k = slot("{test}:v:f#1:1");
        assert!(matches!(store.get(k.key), Lookup::Miss));
        assert_eq!(store.set(k, b"a".to_vec(), None), 1);
        assert_eq!(store.set(k, b"b".to_vec(), None), 2);
        match store.get(k.key) {
            Lookup::Hit { version, data, .. } => {
                assert_eq!(version, 2);
                assert_eq!(data, b"b");
            }
            other => panic!("{other:?}"),
        }
        assert!(store.delete(k));
        assert!(!store.delete(k));
        assert!(matches!(store.get(k.key), Lookup::Miss));
    }

    #[test]
    fn entries_expire() {
        let store = MemoryStore::new(1 << 20, "test");
        let k = slot("{test}:v:f#1:1");
        store.set(k, b"a".to_vec(), Some(Duration::from_millis(30)));
        assert!(matches!(store.get(k.key), Lookup::Hit { .. }));
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(store.get(k.key), Lookup::Miss));
    }

    #[test]
    fn keys_that_name_no_value_find_nothing() {
        let store = MemoryStore::new(1 << 20, "test");
        store.set(slot("{test}:v:f#1:1"), b"a".to_vec(), None);
        for key in ["f#1:1", "{other}:v:f#1:1", "{test}:jobs"] {
            assert!(matches!(store.get(key), Lookup::Miss), "{key}");
        }
    }
}
