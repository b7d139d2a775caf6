//! Nested reads across shards (#16, item 3 of docs/cluster-spread.md): on
//! a store of several shards, a computation reads a value of another
//! shard only once its own reverse edge on that value is written, in its
//! own shard (`Store::edge_first`). store.lua checks in its script the
//! nested values of the value's own shard, but cannot read another's: the
//! edge written first makes any store of the nested value after the read
//! signal the computing value, whose own store then lands stale. One round
//! trip per such value per computation, on a miss only; none with one
//! shard, none for a value of the same shard.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::deps;
use super::drive::Drive;
use super::path::Call;
use crate::flight::Landing;
use crate::instance::Inner;

impl Call {
    /// Before this nested call reads value `id`: when `id` lives in
    /// another shard than the value computing, that value's reverse edge
    /// on `id` is written first (once per computation). `false` when the
    /// edge could not be written (the store is unreachable, already
    /// logged, or the computing value has no hash): the caller computes
    /// `id`'s value directly rather than read it.
    pub(super) async fn edge_first(self: &Arc<Self>, id: &str, drive: Drive) -> bool {
        let Some(home) = &self.home else {
            return true;
        };
        if self.inner.store.same_shard(home, id) || deps::edged(id) {
            return true;
        }
        let (call, home, target) = (Arc::clone(self), home.clone(), id.to_owned());
        let written = drive
            .store(&self.inner, async move {
                call.inner.store.edge_first(&home, &target).await
            })
            .await;
        match written {
            Some(Ok(true)) => {
                deps::edge_written(id);
                true
            }
            Some(Ok(false)) => {
                tracing::debug!(key = %self.at.key, "smache: the computing value has no hash for its edge; computing a nested value directly");
                false
            }
            Some(Err(err)) => {
                self.inner.store_failed(&err);
                false
            }
            None => false,
        }
    }

    /// What a follower must read again rather than take from its pilot's
    /// landing, on a store of several shards: the pilot may have read it
    /// before this computation's edge on it existed, and a store of it in
    /// between told no one (README, "Shards"). That is the value itself
    /// when it lives in another shard than the value computing (its edge
    /// was written before this call joined the flight, but the pilot may
    /// have started before), and, through an alias, a target of another
    /// shard whose edge this computation has not written. The id to read
    /// (see [`read_target`](Self::read_target)).
    pub(super) fn read_again(&self, landing: &Landing) -> Option<Arc<str>> {
        let home = self.home.as_deref()?;
        let store = &self.inner.store;
        match landing {
            Landing::Value(_, Some(target), _)
                if !store.same_shard(home, target) && !deps::edged(target) =>
            {
                Some(Arc::clone(target))
            }
            Landing::Value(_, None, _) if !store.same_shard(home, &self.at.id) => {
                Some(Arc::from(self.at.id.as_str()))
            }
            _ => None,
        }
    }

    /// Reads the value `target` (an alias's, reached by a follower) after
    /// writing this computation's edge on it; `None` when it cannot be
    /// served so (the caller computes directly).
    pub(super) async fn read_target<V: DeserializeOwned>(
        self: &Arc<Self>,
        target: &str,
        drive: Drive,
    ) -> Option<V> {
        if !self.edge_first(target, drive).await {
            return None;
        }
        let (call, key) = (Arc::clone(self), self.inner.store.value_key(target));
        let fetched = drive
            .store(&self.inner, async move { call.inner.fetch(&key).await })
            .await?
            .ok()??;
        if !self.acceptable(&fetched) {
            return None;
        }
        let value = Inner::decode(&self.at.key, &fetched.data)?;
        deps::depends_on_value(target);
        self.note_read(target, fetched.version, &fetched.data);
        Some(value)
    }
}
