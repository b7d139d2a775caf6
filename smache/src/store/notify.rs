//! The `{prefix}:done` subscription: callers waiting for a computation in
//! another process are woken when it ends (`lua/store.lua`,
//! `lua/release.lua` and `lua/finish.lua` publish the value id).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::oneshot;

use crate::sync::lock;

/// Wakes the waiters of this process when a computation ends anywhere:
/// one subscription to `{prefix}:done` per instance.
pub(crate) struct Notifier {
    waiters: Arc<Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>>,
    alive: Arc<AtomicBool>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("alive", &self.alive.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Subscribes on a connection of its own; the listening task runs on
    /// the current tokio runtime.
    pub(crate) async fn start(client: &redis::Client, channel: &str) -> redis::RedisResult<Self> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        let waiters: Arc<Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (task_waiters, task_alive) = (Arc::clone(&waiters), Arc::clone(&alive));
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Ok(id) = message.get_payload::<String>() else {
                    continue;
                };
                let woken = lock(&task_waiters).remove(&id);
                for waiter in woken.into_iter().flatten() {
                    let _ = waiter.send(());
                }
            }
            // The connection is gone: wake everyone (they re-check) and let
            // the next waiter start a new subscription.
            task_alive.store(false, Ordering::Relaxed);
            for (_, list) in lock(&task_waiters).drain() {
                for waiter in list {
                    let _ = waiter.send(());
                }
            }
        });
        Ok(Notifier { waiters, alive })
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// A receiver woken when the computation of `id` ends.
    pub(crate) fn register(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = lock(&self.waiters);
        let list = waiters.entry(id.to_owned()).or_default();
        // Waiters that gave up (their lease check timed out) are dropped
        // here, so ids whose computation never reports do not pile up.
        list.retain(|waiter| !waiter.is_closed());
        list.push(tx);
        rx
    }
}
