//! The doorbell of an instance of several shards: its scripts publish on
//! `{prefix}:bell` as they queue a job in any shard (`ring` in
//! `lua/common.lua`), and its executors, which cannot block on the
//! streams of several slots at once, wait on it between empty sweeps.
//!
//! Each ring names the shard (its base, `{prefix#n}:`) whose stream got
//! the job, so an executor woken reads that stream first rather than
//! sweeping every shard's (48 on a cluster by default) before it starts
//! the job. A ring naming none (from an older version) means any.
//!
//! A bell is a hint, never the only way a job is found: one lost (the
//! subscription down, a message dropped) only delays a job until the next
//! sweep, at most [`BLOCK_FOR`](super::super::BLOCK_FOR) later. A plain
//! `PUBLISH` reaches every node of a cluster, so any node serves the
//! subscription, as for `{prefix}:done` (see `store::notify`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use crate::sync::lock;

/// How many distinct shards a subscription remembers between two waits;
/// past that, the rest are found by the sweep that follows.
const REMEMBERED: usize = 64;

/// An executor's doorbell: the subscription, made again when it is lost.
pub(super) struct Bell {
    /// Clients of single nodes to subscribe on, in the order to try them.
    subscribers: Vec<redis::Client>,
    /// `{prefix}:bell`.
    channel: String,
    /// How long subscribing may take.
    timeout: Duration,
    /// The live subscription, if any.
    current: Option<Subscription>,
}

impl std::fmt::Debug for Bell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bell")
            .field("channel", &self.channel)
            .field(
                "subscribed",
                &self.current.as_ref().is_some_and(Subscription::is_alive),
            )
            .finish_non_exhaustive()
    }
}

impl Bell {
    /// A doorbell on `channel`, subscribed on the first of `subscribers`
    /// that answers (see [`Bell::subscribe`]).
    pub(super) fn new(subscribers: Vec<redis::Client>, channel: String, timeout: Duration) -> Self {
        Bell {
            subscribers,
            channel,
            timeout,
            current: None,
        }
    }

    /// Subscribes unless subscribed: done before each sweep, so that a job
    /// queued after the sweep read its stream rings a bell this executor
    /// hears. Failing leaves the executor sweeping every `BLOCK_FOR`.
    pub(super) async fn subscribe(&mut self) {
        if self.current.as_ref().is_some_and(Subscription::is_alive) {
            return;
        }
        self.current = None;
        for client in &self.subscribers {
            let start = Subscription::start(client, &self.channel);
            match tokio::time::timeout(self.timeout, start).await {
                Ok(Ok(subscription)) => {
                    self.current = Some(subscription);
                    return;
                }
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "smache executor: cannot subscribe to the doorbell");
                }
                Err(_) => {
                    tracing::debug!("smache executor: subscribing to the doorbell timed out");
                }
            }
        }
    }

    /// Waits until the bell rings (or rang since the last wait) or until
    /// `deadline`: `None` if it did not ring, else the bases of the shards
    /// it named since the last wait (empty: any shard).
    pub(super) async fn wait(&mut self, deadline: tokio::time::Instant) -> Option<Vec<String>> {
        match &self.current {
            Some(subscription) if subscription.is_alive() => tokio::select! {
                () = subscription.rung.notified() => {
                    Some(std::mem::take(&mut *lock(&subscription.named)))
                }
                () = tokio::time::sleep_until(deadline) => None,
            },
            _ => {
                tokio::time::sleep_until(deadline).await;
                None
            }
        }
    }
}

/// One subscription to the bell, on a connection of its own; dropping it
/// ends the listening task, and with it the connection.
struct Subscription {
    /// Holds a permit for each ring no waiter took yet (at most one).
    rung: Arc<Notify>,
    /// The shards the rings since the last wait named (see [`REMEMBERED`]).
    named: Arc<Mutex<Vec<String>>>,
    /// Whether the connection is still up.
    alive: Arc<AtomicBool>,
    /// The listening task.
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    async fn start(client: &redis::Client, channel: &str) -> redis::RedisResult<Self> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        let rung = Arc::new(Notify::new());
        let named = Arc::new(Mutex::new(Vec::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let (task_rung, task_named, task_alive) =
            (Arc::clone(&rung), Arc::clone(&named), Arc::clone(&alive));
        let task = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let base: String = message.get_payload().unwrap_or_default();
                if !base.is_empty() {
                    let mut named = lock(&task_named);
                    if named.len() < REMEMBERED && !named.contains(&base) {
                        named.push(base);
                    }
                }
                // A permit if nobody waits: the next wait returns at once.
                task_rung.notify_one();
            }
            // Lost: the waiter sweeps, and subscribes again first.
            task_alive.store(false, Ordering::Relaxed);
            task_rung.notify_one();
        });
        Ok(Subscription {
            rung,
            named,
            alive,
            task,
        })
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}
