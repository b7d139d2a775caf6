//! The embedded store: a bounded in-process cache (moka) with per-entry TTL.
//!
//! An entry past its TTL is a miss: checked on read (a clock read only for
//! entries that have a TTL), and dropped by the byte bound in time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use std::collections::HashMap;
use std::sync::Mutex;

use super::Decoded;
use super::{keys, Lookup, Slot};
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
    cache: Cache<String, Arc<Stored>>,
    /// Aliases: key → the value id it stands for. Few, and never evicted.
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
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            // The envelope counted twice: once as bytes, once for the
            // value a hit keeps decoded beside them (about its size).
            .weigher(|key: &String, entry: &Arc<Stored>| {
                u32::try_from(key.len() + 2 * entry.data.len() + 32).unwrap_or(u32::MAX)
            })
            .build();
        MemoryStore {
            base: keys::base(prefix),
            cache,
            links: Mutex::default(),
            linked: AtomicBool::new(false),
        }
    }

    /// The envelope stored under `{prefix}:v:{id}` (the id written by
    /// `write_id`), shared rather than copied: the read of a hit.
    /// `None` when nothing is stored, and when the key is an alias (the
    /// caller then takes the path of [`get`](Self::get), which follows it).
    pub(crate) fn peek(&self, write_id: impl FnOnce(&mut String)) -> Option<Arc<Stored>> {
        keys::with_value_key(&self.base, write_id, |key| {
            if self.linked.load(Ordering::Acquire) && lock(&self.links).contains_key(key) {
                return None;
            }
            self.cache.get(key).filter(|entry| entry.live())
        })
    }

    pub(crate) fn get(&self, key: &str) -> Lookup {
        if let Some(target) = lock(&self.links).get(key) {
            return Lookup::Alias {
                target: target.clone(),
                full_args: String::new(), // no executors here
            };
        }
        match self.cache.get(key).filter(|entry| entry.live()) {
            Some(entry) => Lookup::Hit {
                version: entry.version,
                data: entry.data.to_vec(),
                stale_since_ms: None,
                expired: false,
            },
            None => Lookup::Miss,
        }
    }

    pub(crate) fn set(&self, key: &str, data: Vec<u8>, ttl: Option<Duration>) -> u64 {
        let data = data.into_boxed_slice();
        let expires_at = ttl.and_then(|ttl| Instant::now().checked_add(ttl));
        let entry = self.cache.entry_by_ref(key).and_upsert_with(|old| {
            Arc::new(Stored {
                version: old.map_or(0, |old| old.value().version) + 1,
                data,
                expires_at,
                decoded: Decoded::new(),
            })
        });
        entry.value().version
    }

    pub(crate) fn delete(&self, key: &str) -> bool {
        let linked = lock(&self.links).remove(key).is_some();
        self.cache.remove(key).is_some() || linked
    }

    /// Makes `alias` stand for `target`'s value (see `lua/alias.lua`);
    /// the value id it names, or `None` for a cycle.
    pub(crate) fn alias(&self, alias: Slot<'_>, target: Slot<'_>) -> Option<String> {
        if alias.id == target.id {
            return None;
        }
        let mut links = lock(&self.links);
        let named = links
            .get(target.key)
            .cloned()
            .unwrap_or_else(|| target.id.to_owned());
        if named == alias.id {
            return None;
        }
        self.linked.store(true, Ordering::Release);
        self.cache.remove(alias.key);
        for link in links.values_mut() {
            if *link == alias.id {
                link.clone_from(&named);
            }
        }
        links.insert(alias.key.to_owned(), named.clone());
        Some(named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_delete_forgets() {
        let store = MemoryStore::new(1 << 20, "test");
        assert!(matches!(store.get("k"), Lookup::Miss));
        assert_eq!(store.set("k", b"a".to_vec(), None), 1);
        assert_eq!(store.set("k", b"b".to_vec(), None), 2);
        match store.get("k") {
            Lookup::Hit { version, data, .. } => {
                assert_eq!(version, 2);
                assert_eq!(data, b"b");
            }
            other => panic!("{other:?}"),
        }
        assert!(store.delete("k"));
        assert!(!store.delete("k"));
        assert!(matches!(store.get("k"), Lookup::Miss));
    }

    #[test]
    fn entries_expire() {
        let store = MemoryStore::new(1 << 20, "test");
        store.set("k", b"a".to_vec(), Some(Duration::from_millis(30)));
        assert!(matches!(store.get("k"), Lookup::Hit { .. }));
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(store.get("k"), Lookup::Miss));
    }
}
