//! The worker's life: taking the lease and keeping it (a standby worker
//! retries every quarter of the lease), announcing itself, watching while
//! it holds the lease, and releasing it on shutdown.

use std::future::Future;
use std::time::Duration;

use super::{Ended, Worker};
use crate::store::RedisStore;

impl Worker<'_> {
    pub(super) async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
        let mut leader = false;
        loop {
            if futures::FutureExt::now_or_never(shutdown.clone()).is_some() {
                break;
            }
            let asked = std::time::Instant::now();
            match self.store.lease(&self.id, self.options.lease).await {
                Ok(Some(fence)) => {
                    self.announce().await;
                    if !leader {
                        tracing::info!(worker = %self.id, fence, "smache worker: holds the lease; watching");
                        leader = true;
                    }
                    match self.watch(&shutdown, fence, asked).await {
                        Ok(Ended::Shutdown) => break,
                        Ok(Ended::LeaseLost) => {
                            tracing::warn!(worker = %self.id, "smache worker: lost the lease; standing by");
                            leader = false;
                        }
                        Ok(Ended::Restart) => {}
                        Err(err) => {
                            // The store logs a Redis outage once.
                            if err.is_unreachable() {
                                tracing::debug!(error = %err, "smache worker: redis unavailable; retrying");
                            } else {
                                tracing::warn!(error = %err, "smache worker: watching failed; retrying");
                            }
                            self.presence.failed(&err);
                            self.pause(&shutdown, Duration::from_secs(1)).await;
                        }
                    }
                }
                Ok(None) => {
                    leader = false;
                    self.presence.standby();
                    self.announce().await;
                    self.pause(&shutdown, self.options.lease / 4).await;
                }
                Err(err) => {
                    if err.is_unreachable() {
                        tracing::debug!(error = %err, "smache worker: redis unavailable; retrying");
                    } else {
                        tracing::warn!(error = %err, "smache worker: cannot take the lease; retrying");
                    }
                    self.pause(&shutdown, Duration::from_secs(1)).await;
                }
            }
        }
        self.release().await;
        tracing::info!(worker = %self.id, "smache worker: stopped");
    }

    async fn pause(&self, shutdown: &(impl Future<Output = ()> + Clone), delay: Duration) {
        tokio::select! {
            () = shutdown.clone() => {},
            () = tokio::time::sleep(delay) => {},
        }
    }

    /// Stores the settings the scripts read (`{prefix}:config`).
    pub(super) async fn publish_config(&self) -> crate::error::Result<()> {
        self.store.publish_max_fanout(self.options.max_fanout).await
    }

    /// Takes or renews the lease while watching (see [`keep_lease`]).
    pub(super) async fn keep_lease(
        &self,
        fence: u64,
        since: Duration,
    ) -> crate::error::Result<Option<Ended>> {
        keep_lease(self.store, &self.id, self.options.lease, fence, since).await
    }

    /// Tells applications and `inspect` this worker is alive, what it
    /// watches and how far behind it is (`{prefix}:workers`), for twice
    /// the lease.
    pub(super) async fn announce(&self) {
        announce(
            self.store,
            &self.id,
            &self.presence.record(),
            self.options.lease,
        )
        .await;
    }

    /// Withdraws the announcement and gives up the lease, if this worker
    /// still holds it; either expires by itself should Redis not answer.
    async fn release(&self) {
        if let Err(err) = self.store.retire(&self.id).await {
            tracing::debug!(error = %err, "smache worker: cannot withdraw its announcement; it will expire");
        }
        if let Err(err) = self.store.resign(&self.id).await {
            tracing::debug!(error = %err, "smache worker: could not release the lease; it will expire");
        }
    }
}

/// Takes or renews the lease of worker `id` while it watches: `Ok(None)`
/// while it still holds it with fencing token `fence`, else why the watch
/// ends. `since`: how long ago the request that last took or renewed it
/// was sent.
pub(super) async fn keep_lease(
    store: &RedisStore,
    id: &str,
    lease: Duration,
    fence: u64,
    since: Duration,
) -> crate::error::Result<Option<Ended>> {
    /// Why a lease runs out under a live worker.
    const HELD_UP: &str =
        "its loop was held up: a slow change, Redis or MongoDB slow to answer, a starved process";
    match store.lease(id, lease).await? {
        None => {
            if since >= lease {
                // (The watch's end logs the loss itself.)
                tracing::info!(worker = %id, ?since, ?lease, why = HELD_UP, "smache worker: the lease expired before this worker renewed it");
            }
            Ok(Some(Ended::LeaseLost))
        }
        Some(now) if now != fence => {
            // Taken anew, not renewed: the lease key was gone.
            if since >= lease {
                tracing::warn!(worker = %id, fence = now, ?since, ?lease, why = HELD_UP, "smache worker: the lease expired before this worker renewed it; taken again, restarting the watch");
            } else {
                tracing::warn!(worker = %id, fence = now, ?since, "smache worker: the lease was lost and taken again, though renewed in time (Redis lost its data?); restarting the watch");
            }
            Ok(Some(Ended::Restart))
        }
        Some(_) => Ok(None),
    }
}

/// Announces worker `id` with `record` (see [`Worker::announce`]), for
/// twice `lease`.
pub(super) async fn announce(store: &RedisStore, id: &str, record: &str, lease: Duration) {
    if let Err(err) = store.heartbeat(id, record, lease * 2).await {
        tracing::debug!(error = %err, "smache worker: cannot announce itself");
    }
}
