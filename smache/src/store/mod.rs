//! Where values are kept: Redis, or the embedded in-process store.
//!
//! The set of stores is closed, so it is an enum rather than a trait object:
//! the hot path (a hit) is a direct call with no boxing.

mod memory;
mod redis;

use std::time::Duration;

pub(crate) use self::memory::MemoryStore;
pub(crate) use self::redis::RedisStore;
use crate::error::Result;

/// What a store found under a key.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Nothing is stored.
    Miss,
    /// An entry: the store-assigned value version and the envelope bytes.
    Hit { version: u64, data: Vec<u8> },
    /// Something is stored that is not a smache entry.
    Foreign(String),
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

    pub(crate) async fn get(&self, key: &str) -> Result<Lookup> {
        match self {
            Store::Memory(store) => Ok(store.get(key)),
            Store::Redis(store) => store.get(key).await,
        }
    }

    /// Stores an envelope; returns the new value version.
    pub(crate) async fn set(&self, key: &str, data: Vec<u8>, ttl: Option<Duration>) -> Result<u64> {
        match self {
            Store::Memory(store) => Ok(store.set(key, data, ttl)),
            Store::Redis(store) => store.set(key, data, ttl).await,
        }
    }

    /// Removes a key; returns whether it existed.
    pub(crate) async fn delete(&self, key: &str) -> Result<bool> {
        match self {
            Store::Memory(store) => Ok(store.delete(key)),
            Store::Redis(store) => store.delete(key).await,
        }
    }
}
