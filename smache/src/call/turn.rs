//! A caller's turn after a miss: waiting across processes for the compute
//! lease (or the value another process stores meanwhile), keeping the
//! lease while computing, and storing the result.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::deps::Recorded;
use super::path::Call;
use crate::flight::{Landing, Pilot};
use crate::instance::{Fetched, Inner};
use crate::runtime;
use crate::store::{keys, Backend, Begin, Outcome};

impl Call {
    /// After a miss, waits for this caller's turn across processes: compute
    /// (holding the compute lease), or read the value another process
    /// stored meanwhile. `seen` is the version of the value this caller's
    /// lookup found, if any: the lease is never granted over a value stored
    /// after this caller's last read (the holder it waited for finished
    /// just before), which is read instead, and served if it may be.
    pub(super) async fn take_turn(self: Arc<Self>, seen: Option<u64>) -> Turn {
        // As begin.lua compares it: "" for none.
        let mut seen = seen.map_or_else(String::new, |version| version.to_string());
        let owner = bson::oid::ObjectId::new().to_hex();
        let static_deps = keys::static_deps(&self.key);
        loop {
            // Registered before asking, so a notification cannot slip by.
            let waiter = self.inner.store.waiter(&self.at.id).await;
            let begun = self
                .inner
                .store
                .begin(
                    self.at.slot(),
                    &static_deps,
                    &owner,
                    self.inner.settings.compute_lease,
                    &seen,
                )
                .await;
            // The version begin.lua found stored when it says to read it.
            let stored = match begun {
                Ok(Begin::Go(generation)) => {
                    self.inner.store_ok();
                    return Turn::Compute {
                        started: Some(generation),
                        owner,
                    };
                }
                Ok(Begin::Read(stored)) => stored,
                Ok(Begin::Wait(left)) => {
                    // Woken by the notification; re-checked at least every
                    // 250 ms in case it is lost, and when the lease ends.
                    let pause = left.clamp(Duration::from_millis(1), Duration::from_millis(250));
                    match waiter {
                        Some(waiter) => {
                            let _ = tokio::time::timeout(pause, waiter).await;
                        }
                        None => tokio::time::sleep(pause.min(Duration::from_millis(25))).await,
                    }
                    String::new()
                }
                Err(err) => {
                    self.inner.store_failed(&err);
                    return Turn::Compute {
                        started: None,
                        owner,
                    };
                }
            };
            match self.inner.fetch(&self.at.key).await {
                Ok(Some(fetched)) if self.acceptable(&fetched) => return Turn::Ready(fetched),
                // Not servable (stale, say): the next turn may compute.
                Ok(Some(fetched)) => seen = fetched.version.to_string(),
                // Nothing readable (gone, or not a value): what begin.lua
                // found counts as seen, so that only a newer store is new.
                Ok(None) => seen = stored,
                Err(()) => {
                    return Turn::Compute {
                        started: None,
                        owner,
                    }
                }
            }
        }
    }

    /// Resolves a caller's turn: the value another process stored (its
    /// bytes handed on to this process's followers), or what to compute
    /// with. No turn (the store failed) means computing without storing.
    pub(super) fn resolve<V: DeserializeOwned>(
        &self,
        turn: Option<Turn>,
        pilot: Pilot,
    ) -> Resolved<V> {
        match turn {
            Some(Turn::Ready(fetched)) => match Inner::decode(&self.at.key, &fetched.data) {
                Some(value) => {
                    let landing = self.landing(Arc::new(fetched.data), Some(fetched.version));
                    self.note_landing(&landing);
                    pilot.land(landing);
                    Resolved::Cached(value)
                }
                None => Resolved::Compute(pilot, None, String::new()),
            },
            Some(Turn::Compute { started, owner }) => Resolved::Compute(pilot, started, owner),
            None => Resolved::Compute(pilot, None, String::new()),
        }
    }

    /// Keeps the compute lease alive while the computation runs. Call
    /// [`LeaseKeeper::done`] when it returns; a keeper dropped without it
    /// (the function panicked, or the caller dropped its future) gives the
    /// lease up, so that waiters elsewhere take over at once.
    pub(super) fn keep_lease(self: &Arc<Self>, owner: &str) -> LeaseKeeper {
        if self.inner.store.backend() == Backend::Embedded || owner.is_empty() {
            return LeaseKeeper {
                renewal: None,
                release: None,
            };
        }
        let call = Arc::clone(self);
        let owner = owner.to_owned();
        let owner_for_release = owner.clone();
        let every = call.inner.settings.compute_lease / 3;
        let task = runtime::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match call
                    .inner
                    .store
                    .renew(&call.at.key, &owner, call.inner.settings.compute_lease)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => break, // taken over, or already stored
                    Err(err) => {
                        tracing::debug!(key = %call.at.key, error = %err, "smache: could not renew a compute lease");
                    }
                }
            }
        });
        LeaseKeeper {
            renewal: Some(task.abort_handle()),
            release: Some((Arc::clone(self), owner_for_release)),
        }
    }

    /// Stores what a computation produced (or gives up its lease), and says
    /// what the callers waiting on it in this process get.
    pub(super) async fn settle(
        self: Arc<Self>,
        started: Option<u64>,
        owner: Option<String>,
        data: Option<Vec<u8>>,
        mut recorded: Recorded,
    ) -> (Outcome, Landing) {
        match (started, data) {
            (Some(started), Some(data)) => {
                let shared = Arc::new(data.clone());
                // A value read many times is checked once.
                recorded.read.sort_unstable();
                recorded.read.dedup();
                let (outcome, version) = self
                    .inner
                    .put(self.put_request(data, started, &recorded))
                    .await;
                if outcome == Outcome::Stored && self.needs_a_worker(&recorded) {
                    crate::roster::stored(&self.inner);
                }
                if let (Outcome::Unreachable | Outcome::TooLarge, Some(owner)) = (outcome, &owner) {
                    // Nothing was stored (MongoDB failed while Redis may be
                    // fine, or the value is too large): let waiters go.
                    let _ = self.inner.store.release(self.at.slot(), owner).await;
                }
                let landing = match outcome {
                    Outcome::Stored => self.landing(shared, version),
                    // A newer value is stored: whoever read this one read
                    // a value that is not the stored one.
                    Outcome::Superseded => self.landing(shared, Some(0)),
                    Outcome::Unreachable | Outcome::TooLarge => self.landing(shared, None),
                    Outcome::NotCached => Landing::Failed,
                };
                (outcome, landing)
            }
            (Some(_), None) => {
                if let Some(owner) = owner {
                    if let Err(err) = self.inner.store.release(self.at.slot(), &owner).await {
                        self.inner.store_failed(&err);
                    }
                }
                (Outcome::NotCached, Landing::Failed)
            }
            (None, data) => (
                Outcome::Unreachable,
                data.map_or(Landing::Failed, |data| self.landing(Arc::new(data), None)),
            ),
        }
    }
}

/// A resolved turn: a value to return, or a computation to run (as pilot,
/// from this generation, holding the lease as this owner).
pub(super) enum Resolved<V> {
    Cached(V),
    Compute(Pilot, Option<u64>, String),
}

/// Renews a compute lease while a computation runs; see [`Call::keep_lease`].
pub(super) struct LeaseKeeper {
    renewal: Option<tokio::task::AbortHandle>,
    /// Armed until the computation returns.
    release: Option<(Arc<Call>, String)>,
}

impl LeaseKeeper {
    /// The value was stored (or the lease given up): stop renewing,
    /// nothing to release.
    pub(super) fn done(mut self) {
        self.release = None;
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
        if let Some((call, owner)) = self.release.take() {
            runtime::spawn(async move {
                let slot = call.at.slot();
                if let Err(err) = call.inner.store.release(slot, &owner).await {
                    call.inner.store_failed(&err);
                }
            });
        }
    }
}

/// What a caller that missed does after [`Call::take_turn`].
pub(super) enum Turn {
    /// Compute: from this change generation (`None`: the store is
    /// unreachable, compute without storing), holding the lease as `owner`.
    Compute { started: Option<u64>, owner: String },
    /// Another process stored the value meanwhile.
    Ready(Fetched),
}
