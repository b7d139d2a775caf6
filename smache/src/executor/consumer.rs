//! The stream consumer: reads jobs from the consumer group of every
//! shard's stream, reclaims those other executors left, runs each on a
//! permit (fan-outs on permits of their own), keeps the claim on the ones
//! it holds, announces what it runs, and acknowledges or gives up each
//! job, in its shard, once it is settled.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::oid::ObjectId;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Executor, DRAIN_FOR, MIN_RECOMPUTE_INTERVAL, RECLAIM_AFTER};
use crate::error::{Error, Result};
use crate::instance::Smache;
use crate::registry;
use crate::store::{Abandon, EntryRef, JobReader, Starting, StreamEntry, StreamJob};

/// How many abandoned jobs one reclaim scan claims at most, per shard.
const RECLAIM_COUNT: usize = 100;

/// Runs an executor until `stop` is cancelled; jobs in progress finish
/// first, for up to [`DRAIN_FOR`].
pub(super) async fn consume(smache: Smache, stop: CancellationToken) -> Result<()> {
    let (executor, mut again) = Executor::new(smache)?;
    let running = TaskTracker::new();
    // Cancelled when the drain runs out, or when this future is dropped:
    // the jobs still running are dropped (unacknowledged).
    let abandon = CancellationToken::new();
    let _abandon_if_dropped = abandon.clone().drop_guard();
    let permits = Arc::new(Semaphore::new(executor.concurrency));
    let fan_out_permits = Arc::new(Semaphore::new(executor.concurrency));
    let mut last_reclaim = tokio::time::Instant::now() - RECLAIM_AFTER;
    let mut conn: Option<JobReader> = None;
    let starting = Starting {
        heads: registry::heads().map(str::to_owned).collect(),
        interval: MIN_RECOMPUTE_INTERVAL,
    };
    let held = Arc::new(Mutex::new(HashSet::new()));
    let heartbeat = tokio::spawn(executor.clone().keep_claimed(Arc::clone(&held)));
    let _sampling =
        crate::metrics::Sampling::start(Arc::clone(&executor.smache.inner).sample_job_queue());
    loop {
        if conn.is_none() {
            conn = match executor
                .store
                .job_reader(&executor.consumer, starting.clone())
                .await
            {
                Ok(Some(conn)) => Some(conn),
                Ok(None) => {
                    heartbeat.abort();
                    return Err(Error::Config(
                        "executors need SmacheBuilder::redis_url or redis_client (a connection of their own for blocking reads)".into(),
                    ));
                }
                Err(err) => {
                    // The store logs an outage once; other failures here.
                    if err.is_unreachable() {
                        tracing::debug!(error = %err, "smache executor: redis unavailable; retrying");
                    } else {
                        tracing::warn!(error = %err, "smache executor: cannot connect to redis; retrying");
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Some(conn) = conn.as_mut() {
                if let Err(err) = conn.join_group().await {
                    tracing::warn!(error = %err, "smache executor: cannot create the consumer group");
                }
            }
        }
        let Some(connection) = conn.as_mut() else {
            continue;
        };
        let mut batch = Vec::new();
        if last_reclaim.elapsed() >= RECLAIM_AFTER / 3 {
            last_reclaim = tokio::time::Instant::now();
            batch.extend(executor.reclaim(connection).await);
        }
        let read = tokio::select! {
            () = stop.cancelled() => break,
            read = connection.read(executor.concurrency) => read,
        };
        match read {
            Ok(entries) => batch.extend(entries),
            Err(err) => {
                // Reconnecting tells the store whether Redis is down (it
                // logs an outage once).
                if err.is_unreachable() {
                    tracing::debug!(error = %err, "smache executor: reading jobs failed; reconnecting");
                } else {
                    tracing::warn!(error = %err, "smache executor: reading jobs failed; reconnecting");
                }
                conn = None;
                continue;
            }
        }
        // Entries this process holds, running or waiting for a permit: a
        // reclaim may hand one back to us while it runs (it is skipped),
        // and the heartbeat keeps them from looking abandoned to others.
        batch.retain(|entry| crate::sync::lock(&held).insert(entry.at.clone()));
        for StreamEntry {
            at: entry,
            job,
            start,
        } in batch
        {
            // Fan-outs run on permits of their own: a fan-out spends most
            // of its time waiting its turn for a chunk among the others
            // (see `fan_out`), and waiting ones must not hold the permits
            // recomputes need.
            let pool = match job {
                StreamJob::FanOut { .. } => &fan_out_permits,
                _ => &permits,
            };
            let permit = Arc::clone(pool)
                .acquire_owned()
                .await
                .expect("never closed");
            let executor = executor.clone();
            // Forgets the entry however the job ends (a panicking relation
            // mapper included), so the heartbeat stops claiming it.
            let release = Held(Arc::clone(&held), entry.clone());
            running.spawn(abandon.clone().run_until_cancelled_owned(async move {
                let _release = release;
                executor.run_job(&entry, job, start).await;
                drop(permit);
            }));
        }
        // Jobs left for an executor that has their function, due to be
        // given up before a reclaim would bring them back: looked at again
        // now, unless running here. Not held (the heartbeat would claim
        // them): giving one up checks that this executor still holds it.
        while let Ok(StreamEntry { at: entry, job, .. }) = again.try_recv() {
            if crate::sync::lock(&held).contains(&entry) {
                continue;
            }
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .expect("never closed");
            let executor = executor.clone();
            running.spawn(abandon.clone().run_until_cancelled_owned(async move {
                executor.run_job(&entry, job, None).await;
                drop(permit);
            }));
        }
    }
    if !crate::shutdown::drain(&running, DRAIN_FOR).await {
        tracing::warn!(
            jobs = running.len(),
            "smache executor: jobs still running when the drain ran out; left for other executors to reclaim"
        );
        abandon.cancel();
        running.wait().await;
    }
    heartbeat.abort();
    Ok(())
}

impl Executor {
    /// Jobs another executor took and did not finish, in every shard.
    async fn reclaim(&self, conn: &mut JobReader) -> Vec<StreamEntry> {
        match conn.reclaim(RECLAIM_AFTER, RECLAIM_COUNT).await {
            Ok(entries) => entries,
            Err(err) => {
                tracing::debug!(error = %err, "smache executor: XAUTOCLAIM failed");
                Vec::new()
            }
        }
    }

    /// Claims the entries this process holds again every third of
    /// [`RECLAIM_AFTER`], so that a long job (or one waiting for a permit,
    /// or between retries) is never taken for abandoned and run twice.
    /// Also announces this executor's functions, at once and then as often.
    async fn keep_claimed(self, held: Arc<Mutex<HashSet<EntryRef>>>) {
        loop {
            self.announce().await;
            tokio::time::sleep(RECLAIM_AFTER / 3).await;
            let ids: Vec<EntryRef> = crate::sync::lock(&held).iter().cloned().collect();
            if ids.is_empty() {
                continue;
            }
            match self.store.renew_claims(&self.consumer, &ids).await {
                Ok(()) | Err(Error::Unavailable) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "smache executor: cannot renew the claim on running jobs");
                }
            }
        }
    }

    /// Acknowledges a job that is done for good; if Redis cannot be told,
    /// it runs again.
    pub(super) async fn ack(&self, entry: &EntryRef) {
        match self.store.ack(entry).await {
            // Redis is known to be down (the store logged it).
            Ok(()) | Err(Error::Unavailable) => {}
            Err(err) => {
                tracing::warn!(error = %err, entry = %entry, "smache executor: cannot acknowledge a job; it will run again");
            }
        }
    }

    /// Moves a job that can never succeed to the dead-letter stream, with
    /// why, acknowledging it; if Redis cannot be told, the job stays
    /// pending and comes back.
    pub(super) async fn give_up(&self, entry: &EntryRef, reason: &str) {
        self.give_up_undoing(entry, reason, Abandon::Nothing).await;
    }

    /// [`give_up`](Self::give_up), undoing `abandon` in the same step.
    pub(super) async fn give_up_undoing(
        &self,
        entry: &EntryRef,
        reason: &str,
        abandon: Abandon<'_>,
    ) {
        match self
            .store
            .dead_letter(entry, reason, &self.consumer, abandon)
            .await
        {
            Ok(true) => crate::metrics::dead_lettered(),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %err, entry = %entry, "smache executor: cannot dead-letter a job; it will run again");
            }
        }
    }

    /// Tells `inspect` and the other executors which functions and
    /// callbacks this executor runs (`{prefix}:fns`, by the Redis clock, as
    /// the jobs' times are), so jobs nobody can run stand out and are given
    /// up in time; and publishes its orphan timeout (`{prefix}:config`),
    /// for `inspect` to say when.
    async fn announce(&self) {
        let heads: Vec<&str> = registry::heads().collect();
        let callbacks: Vec<&str> = self
            .smache
            .inner
            .callbacks
            .keys()
            .map(String::as_str)
            .collect();
        let announced = self
            .store
            .announce(self.orphan_timeout, &heads, &callbacks)
            .await;
        if let Err(err) = announced {
            tracing::debug!(error = %err, "smache executor: cannot announce its functions");
        }
    }
}

/// An entry this process holds; dropping it lets go.
struct Held(Arc<Mutex<HashSet<EntryRef>>>, EntryRef);

impl Drop for Held {
    fn drop(&mut self) {
        crate::sync::lock(&self.0).remove(&self.1);
    }
}

/// A consumer name unique to this executor: host, process, and a random
/// part.
pub(super) fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{}", std::process::id(), ObjectId::new().to_hex())
}
