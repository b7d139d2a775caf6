//! Reading and storing values for a call: where a value lives
//! ([`Located`]), what was read ([`Fetched`]), whether it may be served,
//! following aliases, values kept in MongoDB, encoding and decoding.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Inner;
use crate::envelope;
use crate::error::Result;
use crate::spec::{FnSpec, Refresh, ValueStore};
use crate::store::Outcome;
use crate::store::{Backend, Lookup, Put, Slot};

/// MongoDB documents hold at most 16 MiB; leave room for the fields.
const MONGO_MAX_VALUE_SIZE: usize = 16 * 1024 * 1024 - 64 * 1024;

/// Where a value lives, resolved against an instance's prefix.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    /// The storage key, `{prefix}:v:<id>`.
    pub(crate) key: String,
    /// The value id: the key without `{prefix}:v:`.
    pub(crate) id: String,
    /// The encoded arguments of a hashed key (which its id does not
    /// hold), else empty.
    pub(crate) full_args: String,
}

impl Located {
    /// The value's place as the store's methods take it.
    pub(crate) fn slot(&self) -> Slot<'_> {
        Slot {
            key: &self.key,
            id: &self.id,
            full_args: &self.full_args,
        }
    }
}

/// A stored value as read by a call.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The value version the store assigned it.
    pub(crate) version: u64,
    /// The envelope (a value kept in MongoDB already read from there).
    pub(crate) data: Vec<u8>,
    /// Past its time-to-live: serve it once more and refresh it.
    pub(crate) expired: bool,
    /// A document it depends on changed after it was computed.
    pub(crate) stale: bool,
    /// How long it has been stale; `Duration::MAX` when no recompute is
    /// coming (marked past `max_fanout`, "stale since 0").
    pub(crate) stale_for: Duration,
}

impl Inner {
    /// Whether a stored value of `spec`'s function may be served. A
    /// `write_through` value that is stale is served while an executor
    /// refreshes it (for at most `max_stale`); `mark_stale` values that are
    /// stale or past their time-to-live, and stale values no recompute is
    /// coming for, are recomputed by the caller.
    pub(crate) fn acceptable(&self, spec: &FnSpec, fetched: &Fetched) -> bool {
        let write_through = spec.refresh() == Refresh::WriteThrough;
        let abandoned = fetched.stale_for == Duration::MAX;
        if fetched.stale
            && (!write_through || abandoned || fetched.stale_for > self.settings.max_stale)
        {
            return false;
        }
        write_through || !fetched.expired
    }

    /// Reads the value at `at`, following an alias: what is stored, and
    /// the value the alias stands for, if `at` is one (a call then computes
    /// and stores that value). `Err` means the store could not be asked
    /// (already logged).
    pub(crate) async fn lookup(
        &self,
        at: &Located,
    ) -> Result<(Option<Fetched>, Option<Located>), ()> {
        self.lookup_from(at, None).await
    }

    /// [`lookup`](Self::lookup) for a nested call made while value `home`
    /// computes, on a store of several shards: the target of an alias that
    /// lives in another shard than `home` is read only once `home`'s edge
    /// on it is written (see `Store::edge_first`); `Err` if it cannot be.
    pub(crate) async fn lookup_from(
        &self,
        at: &Located,
        home: Option<&str>,
    ) -> Result<(Option<Fetched>, Option<Located>), ()> {
        match self.store.get(&at.key).await {
            Ok(Lookup::Alias { target, full_args }) => {
                let target = Located {
                    key: self.store.value_key(&target),
                    id: target,
                    full_args,
                };
                if let Some(home) = home {
                    match self.store.edge_first(home, &target.id).await {
                        Ok(true) => {}
                        Ok(false) => return Err(()),
                        Err(err) => {
                            self.health.failed(&err);
                            return Err(());
                        }
                    }
                }
                let fetched = self.fetch(&target.key).await?;
                Ok((fetched, Some(target)))
            }
            lookup => {
                let fetched = self.fetched(&at.key, lookup)?;
                Ok((self.materialize(&at.key, fetched).await?, None))
            }
        }
    }

    /// What is stored under `storage_key`, an alias followed to the value
    /// it stands for (aliases name values that are not aliases), as is:
    /// for reports of a value, not for a call (see [`lookup`](Self::lookup)).
    pub(super) async fn stored(&self, storage_key: &str) -> Result<Lookup> {
        match self.store.get(storage_key).await? {
            Lookup::Alias { target, .. } => self.store.get(&self.store.value_key(&target)).await,
            lookup => Ok(lookup),
        }
    }

    /// Whether `spec`'s values are kept in MongoDB.
    pub(crate) fn external(&self, spec: &FnSpec) -> bool {
        let mongo = spec.store().unwrap_or(self.settings.value_store) == ValueStore::Mongo;
        if !mongo || self.store.backend() != Backend::Redis {
            return false;
        }
        if self.values.is_none() {
            if !self.values_missing_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    function = spec.name(),
                    "smache: values kept in MongoDB need SmacheBuilder::mongodb; keeping them in Redis"
                );
            }
            return false;
        }
        true
    }

    /// Replaces a reference to a value kept in MongoDB by the value.
    async fn materialize(
        &self,
        storage_key: &str,
        fetched: Option<Fetched>,
    ) -> Result<Option<Fetched>, ()> {
        let Some(mut fetched) = fetched else {
            return Ok(None);
        };
        if !envelope::is_reference(&fetched.data) {
            return Ok(Some(fetched));
        }
        let Some(document) = envelope::referenced_document(&fetched.data) else {
            tracing::warn!(
                key = storage_key,
                "smache: a malformed reference to MongoDB; recomputing"
            );
            return Ok(None);
        };
        let Some(values) = &self.values else {
            tracing::warn!(key = storage_key, "smache: a value is kept in MongoDB but this instance has no MongoDB database; recomputing");
            return Ok(None);
        };
        match values
            .get(storage_key, &bson::oid::ObjectId::from_bytes(document))
            .await
        {
            Ok(Some(data)) => {
                fetched.data = data;
                Ok(Some(fetched))
            }
            Ok(None) => Ok(None),
            Err(err) => {
                self.health.failed(&err);
                Err(())
            }
        }
    }

    /// After a value is removed: lets its MongoDB documents expire.
    pub(crate) async fn forget_external(&self, spec: &FnSpec, storage_key: &str) {
        if let (true, Some(values)) = (self.external(spec), &self.values) {
            if let Err(err) = values.forget(storage_key).await {
                tracing::debug!(key = storage_key, error = %err, "smache: cannot retire the MongoDB documents of a removed value");
            }
        }
    }

    /// Reads what is stored under `storage_key`. `Err` means the store
    /// could not be asked (already logged).
    pub(crate) async fn fetch(&self, storage_key: &str) -> Result<Option<Fetched>, ()> {
        let lookup = self.store.get(storage_key).await;
        let fetched = self.fetched(storage_key, lookup)?;
        self.materialize(storage_key, fetched).await
    }

    /// A store's answer as a [`Fetched`], noting the store's health;
    /// `Err` when the store could not be asked (already logged).
    pub(super) fn fetched(
        &self,
        storage_key: &str,
        lookup: Result<Lookup>,
    ) -> Result<Option<Fetched>, ()> {
        match lookup {
            Ok(Lookup::Hit {
                version,
                data,
                stale_since_ms,
                expired,
            }) => {
                self.health.ok();
                Ok(Some(Fetched {
                    version,
                    data,
                    expired,
                    stale: stale_since_ms.is_some(),
                    stale_for: match stale_since_ms {
                        Some(0) => Duration::MAX,
                        since => Duration::from_millis(
                            since.map_or(0, |since| envelope::now_ms().saturating_sub(since)),
                        ),
                    },
                }))
            }
            Ok(Lookup::Miss) => {
                self.health.ok();
                Ok(None)
            }
            Ok(Lookup::Foreign(why)) => {
                self.health.ok();
                tracing::warn!(key = storage_key, reason = %why, "smache: foreign data under a value key; recomputing and overwriting");
                Ok(None)
            }
            Ok(Lookup::Alias { .. }) => {
                // Aliases name values that are not aliases: only a race
                // with a new alias gets here. Treated as a miss.
                self.health.ok();
                Ok(None)
            }
            Err(err) => {
                self.health.failed(&err);
                Err(())
            }
        }
    }

    /// Decodes fetched bytes; a corrupt entry is logged and treated as a miss.
    pub(crate) fn decode<T: DeserializeOwned>(storage_key: &str, data: &[u8]) -> Option<T> {
        match envelope::decode(data).and_then(|env| env.value()) {
            Ok(value) => Some(value),
            Err(err) => {
                tracing::warn!(key = storage_key, error = %err, "smache: corrupt cached value; recomputing and overwriting");
                None
            }
        }
    }

    /// Encodes a value for storage; a value that cannot be serialized is
    /// logged and not cached.
    pub(crate) fn encode<T: Serialize + ?Sized>(storage_key: &str, value: &T) -> Option<Vec<u8>> {
        match envelope::encode(value, envelope::now_ms()) {
            Ok(data) => Some(data),
            Err(err) => {
                tracing::warn!(key = storage_key, error = %err, "smache: value not cached");
                None
            }
        }
    }

    /// Stores a value; failures are logged. A value kept in MongoDB is
    /// written there first, then its reference in Redis. With the value
    /// version it was stored as.
    pub(crate) async fn put(&self, mut put: Put<'_>) -> (Outcome, Option<u64>) {
        let key = put.slot.key;
        let started = put.started;
        let values = if put.external {
            self.values.as_ref()
        } else {
            None
        };
        let limit = match values {
            Some(_) => self.settings.max_value_size.min(MONGO_MAX_VALUE_SIZE),
            None => self.settings.max_value_size,
        };
        if put.data.len() > limit {
            tracing::warn!(
                key,
                bytes = put.data.len(),
                limit,
                "smache: value larger than max_value_size; returned but not cached"
            );
            return (Outcome::TooLarge, None);
        }
        let mut document = None;
        if let Some(values) = values {
            match values.put(key, started, &put.data, put.ttl).await {
                Ok(oid) => {
                    put.data = envelope::reference(&put.data, oid.bytes());
                    document = Some((values, oid));
                }
                Err(err) => {
                    self.health.failed(&err);
                    return (Outcome::Unreachable, None);
                }
            }
        }
        match self.store.put(put).await {
            Ok(Some(version)) => {
                self.health.ok();
                if let Some((values, oid)) = document {
                    if let Err(err) = values.retire(key, &oid, started).await {
                        tracing::debug!(key, error = %err, "smache: cannot retire replaced MongoDB documents");
                    }
                }
                (Outcome::Stored, Some(version))
            }
            Ok(None) => {
                self.health.ok();
                tracing::debug!(
                    key,
                    "smache: a value computed from newer data is already stored"
                );
                if let Some((values, oid)) = document {
                    if let Err(err) = values.discard(key, &oid).await {
                        tracing::debug!(key, error = %err, "smache: cannot delete a refused MongoDB document");
                    }
                }
                (Outcome::Superseded, None)
            }
            Err(err) => {
                self.health.failed(&err);
                (Outcome::Unreachable, None)
            }
        }
    }
}
