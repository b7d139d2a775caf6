//! The worker: follows MongoDB's change stream and queues a recompute job
//! for every value that depends on a changed document.
//!
//! `smache-worker` (the bundled binary) runs [`run_until`]. Several workers
//! may run for availability: one holds a lease in Redis and watches, the
//! others wait and take over within [`WorkerOptions::lease`] of its death.
//! Each change is turned into jobs, and the stream's resume token saved, in
//! one atomic script that only the lease holder may run (fencing), so a
//! change is never lost nor its jobs queued twice by two workers. On
//! restart the worker resumes after the saved token; if MongoDB no longer
//! has that point of its history, every value is marked stale and the
//! worker carries on from now. If Redis holds no token (a first start, or
//! Redis restarted empty), a worker that was watching resumes from its own
//! last position; one that was not starts from now and marks every value
//! stored so far stale, since the changes before its start never reach them.
//! The watching worker checks at each lease renewal that the saved token
//! is the one it saved last (and each change it records checks so too): if
//! Redis lost it (restarted empty, FLUSHALL) or holds an older one (came
//! back from an older snapshot), it restarts its watch from what is saved,
//! else from its own last position, and saves its position at once, so
//! [`watching`] comes back by itself, with no change needed, and the gap of
//! an older snapshot is replayed.
//!
//! Key layout (beside the graph keys described in `lua/common.lua`):
//! `{prefix}:w:token` the resume token, `{prefix}:w:lease` the lease holder,
//! `{prefix}:w:fence` the fencing counter, `{prefix}:w:lost` set while
//! marking every value stale is still owed (`start`: no position was
//! saved; `lost`: the history after it is gone),
//! `{prefix}:w:time` the cluster time of the saved position (saved with it),
//! `{prefix}:workers` every live worker's announcement, renewed with each
//! lease attempt: worker id → `<heartbeat ms> <lives ms> <JSON>`, the
//! heartbeat by the Redis clock, alive for twice the lease, the JSON with
//! its database, host, version, uptime, changes seen per collection, lag
//! behind the change stream and last error (see `lua/heartbeat.lua`).
//!
//! The code, by concern: this file the public API; `lease` the worker's
//! life (taking and keeping the lease, announcing itself, standing by,
//! releasing it on shutdown); `watch` following the change stream and
//! recording each change with its jobs; `change` what a change event
//! touches; `position` the saved position and the stale-marking owed when
//! it is gone. Every Redis command is the store's
//! (`store/redis/watch.rs`).

mod change;
mod lease;
mod position;
mod watch;

use std::future::Future;
use std::time::Duration;

use mongodb::change_stream::event::ResumeToken;

use crate::error::{Error, Result};
use crate::instance::Smache;
use crate::roster::Presence;
use crate::store::{GraphSweep, RedisStore, Store};

/// The default of [`WorkerOptions::max_fanout`].
pub const DEFAULT_MAX_FANOUT: u64 = 100_000;

/// The worker's tunables.
///
/// ```
/// use std::time::Duration;
/// use smache::worker::WorkerOptions;
///
/// let options = WorkerOptions::default()
///     .lease(Duration::from_secs(5))
///     .max_fanout(20_000);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct WorkerOptions {
    lease: Duration,
    await_time: Duration,
    max_fanout: u64,
    sweep_every: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            lease: Duration::from_secs(10),
            await_time: Duration::from_millis(500),
            max_fanout: DEFAULT_MAX_FANOUT,
            sweep_every: Duration::from_secs(1),
        }
    }
}

impl WorkerOptions {
    /// How long the watcher's lease lasts without renewal (default 10 s): a
    /// standby worker takes over within this long after the watcher dies.
    /// The watcher renews it every third of this, and then also restores
    /// its saved position if Redis lost it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long one poll of the change stream waits for events (default
    /// 500 ms); also the worker's reaction time to shutdown.
    pub fn await_time(mut self, await_time: Duration) -> Self {
        self.await_time = await_time;
        self
    }

    /// The most values one change recomputes in the background (default
    /// [`DEFAULT_MAX_FANOUT`]). A document with more dependants is logged
    /// (a warning naming it and the count) and its dependants are marked
    /// stale without a job each: every one is recomputed by its next
    /// caller, and never served stale. Protects the executors from a hot
    /// document (a shared settings record, say) that would queue a
    /// recompute of half the cache on each change.
    ///
    /// The watching worker stores it in Redis (`{prefix}:config`), where
    /// every script that signals dependants reads it, so the worker that
    /// watches sets it for the deployment.
    pub fn max_fanout(mut self, max: u64) -> Self {
        self.max_fanout = max;
        self
    }

    /// How often the watching worker takes a step of the graph sweep
    /// (default 1 s; zero turns it off). A step is at most
    /// [`SWEEP_CALLS_PER_STEP`] Redis calls and 10 ms, taken between two
    /// polls of the change stream; a pass walks every reverse-edge set and
    /// removes the ids of values that no longer exist (see
    /// [`sweep_graph`]), and the next pass starts at the next step.
    /// Without it, the ids of values that expired stay in the sets of the
    /// documents they depended on until each document changes.
    pub fn sweep_every(mut self, every: Duration) -> Self {
        self.sweep_every = every;
        self
    }
}

/// The most Redis calls one step of the worker's graph sweep makes (a
/// `SCAN` page, or one chunk of one set: see [`WorkerOptions::sweep_every`]).
pub const SWEEP_CALLS_PER_STEP: usize = 32;

pub use crate::store::Swept;

/// One whole pass of the graph sweep, at once: every reverse-edge set of
/// the instance (every shard) loses the ids of values that no longer
/// exist (expired, or dropped while their documents never changed). The
/// watching worker runs the same passes a step at a time
/// ([`WorkerOptions::sweep_every`]); this is for operators and tests. Safe
/// beside running workers, callers and executors: an id is removed only
/// when its value has no hash, in one script with the check, and a later
/// store records its edges anew.
///
/// ```no_run
/// # async fn run(smache: smache::Smache) -> Result<(), smache::Error> {
/// let swept = smache::worker::sweep_graph(&smache).await?;
/// println!("{} sets, {} edges removed", swept.sets, swept.removed);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// When the instance has no Redis store, or Redis fails.
pub async fn sweep_graph(smache: &Smache) -> Result<Swept> {
    let Store::Redis(store) = &smache.inner.store else {
        return Err(Error::Config(
            "the graph sweep needs the Redis store".into(),
        ));
    };
    store.sweep_graph().await
}

/// Whether a worker of this instance's prefix is watching: it holds the
/// lease (so it is alive: the lease expires unless renewed), has saved
/// its position in the change stream, and owes no stale-marking (a worker
/// starting without a saved position marks the values stored before it):
/// from now on every change reaches the values. A readiness check for
/// deploys and tests; [`readiness`] says why not, and `smache-worker
/// ready` is the same check for scripts and probes.
///
/// ```no_run
/// # async fn run(smache: smache::Smache) -> Result<(), smache::Error> {
/// while !smache::worker::watching(&smache).await? {
///     tokio::time::sleep(std::time::Duration::from_millis(50)).await;
/// }
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::Config`] without the Redis store; [`Error::Redis`] if Redis
/// cannot be asked.
pub async fn watching(smache: &Smache) -> Result<bool> {
    Ok(readiness(smache).await?.is_ready())
}

/// What [`readiness`] found in Redis about the workers of a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Readiness {
    /// The worker holding the lease (`{prefix}:w:lease`), if any.
    pub watcher: Option<String>,
    /// Whether a position in the change stream is saved (`{prefix}:w:token`).
    pub position_saved: bool,
    /// Whether marking every value stale is still owed (`{prefix}:w:lost`).
    pub stale_marking_owed: bool,
}

impl Readiness {
    /// Whether a worker watches: see [`watching`].
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.watcher.is_some() && self.position_saved && !self.stale_marking_owed
    }
}

impl std::fmt::Display for Readiness {
    /// `ready: …`, or `not ready: ` and why.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let (true, Some(watcher)) = (self.is_ready(), &self.watcher) {
            return write!(
                f,
                "ready: worker {watcher} watches the change stream from a saved position"
            );
        }
        let mut why = Vec::new();
        match &self.watcher {
            None => why.push(
                "no worker holds the lease (none runs, or Redis lost it and the watcher has not \
                 renewed it yet)"
                    .to_owned(),
            ),
            Some(watcher) => why.push(format!("worker {watcher} holds the lease")),
        }
        if !self.position_saved {
            why.push("no position in the change stream is saved".to_owned());
        }
        if self.stale_marking_owed {
            why.push("marking every value stale is still owed".to_owned());
        }
        write!(f, "not ready: {}", why.join("; "))
    }
}

/// Whether a worker of this instance's prefix is watching, and if not, why.
///
/// ```no_run
/// # async fn run(smache: smache::Smache) -> Result<(), smache::Error> {
/// let readiness = smache::worker::readiness(&smache).await?;
/// if !readiness.is_ready() {
///     eprintln!("{readiness}"); // "not ready: no worker holds the lease …"
/// }
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`watching`].
pub async fn readiness(smache: &Smache) -> Result<Readiness> {
    let Store::Redis(store) = &smache.inner.store else {
        return Err(Error::Config("the worker needs the Redis store".into()));
    };
    let state = store.watch_state().await?;
    Ok(Readiness {
        watcher: state.watcher,
        position_saved: state.position_saved,
        stale_marking_owed: state.stale_marking_owed,
    })
}

/// The number of shards the instance spreads its Redis keys over, as its
/// first process recorded it in Redis (`None` before any process used the
/// store). Every process of an instance must use that count
/// ([`SmacheBuilder::redis_shards`](crate::SmacheBuilder::redis_shards)):
/// one with another count does not use the store
/// ([`Error::ShardCountMismatch`]). A tool that was told no count can
/// take this one, as `smache-worker` does.
///
/// ```no_run
/// # async fn run() -> Result<(), smache::Error> {
/// let builder = || smache::Smache::builder().redis_url("redis://127.0.0.1/");
/// let mut smache = builder().build()?;
/// if let Some(count) = smache::worker::recorded_shards(&smache).await? {
///     smache = builder().redis_shards(count).build()?;
/// }
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// Without the Redis store, when Redis cannot be reached, or when what is
/// recorded is not a count ([`Error::Config`]).
pub async fn recorded_shards(smache: &Smache) -> Result<Option<usize>> {
    let Store::Redis(store) = &smache.inner.store else {
        return Err(Error::Config("shards need the Redis store".into()));
    };
    let Some(recorded) = store.recorded_shards().await? else {
        return Ok(None);
    };
    recorded.trim().parse().map(Some).map_err(|_| {
        Error::Config(format!(
            "the shard count recorded in Redis ({recorded:?}, `{{{}}}:config` field `shards`) \
             is not a number",
            smache.prefix()
        ))
    })
}

/// Runs a worker until Ctrl-C or SIGTERM.
///
/// # Errors
/// When the instance lacks Redis or MongoDB.
pub async fn run(smache: Smache, options: WorkerOptions) -> Result<()> {
    run_until(smache, options, crate::shutdown::shutdown_signal()).await
}

/// Runs a worker until `shutdown` completes, then releases its lease.
///
/// # Errors
/// When the instance lacks Redis or MongoDB. Outages of either are
/// retried, not returned.
pub async fn run_until(
    smache: Smache,
    options: WorkerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let Store::Redis(store) = &smache.inner.store else {
        return Err(Error::Config("the worker needs the Redis store".into()));
    };
    let Some(db) = smache.mongodb().cloned() else {
        return Err(Error::Config("the worker needs a MongoDB database".into()));
    };
    let worker = Worker {
        store,
        presence: Presence::new(db.name()),
        db,
        id: format!(
            "{}-{}",
            std::process::id(),
            bson::oid::ObjectId::new().to_hex()
        ),
        options,
        last_token: None,
        position: Vec::new(),
        sweep: Sweeping {
            pass: None,
            last: std::time::Instant::now(),
            failing: false,
        },
    };
    let _sampling =
        crate::metrics::Sampling::start(std::sync::Arc::clone(&smache.inner).sample_job_queue());
    worker.run(shutdown).await;
    Ok(())
}

struct Worker<'a> {
    store: &'a RedisStore,
    db: mongodb::Database,
    /// What it announces about itself (`{prefix}:workers`).
    presence: Presence,
    id: String,
    options: WorkerOptions,
    /// The last position this worker saved, should Redis lose it.
    last_token: Option<ResumeToken>,
    /// What the token key holds as far as this worker knows (empty:
    /// nothing): what it read when it started watching, then what it
    /// saved. Anything else found there means Redis lost it or went back.
    position: Vec<u8>,
    /// The graph sweep's state.
    sweep: Sweeping,
}

/// Where the watching worker's graph sweep stands.
struct Sweeping {
    /// The pass in progress (`None`: the next step starts one).
    pass: Option<GraphSweep>,
    /// When it last stepped.
    last: std::time::Instant,
    /// Whether its last step failed (a warning is logged once a run).
    failing: bool,
}

/// Why a watch ended.
enum Ended {
    Shutdown,
    LeaseLost,
    Restart,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_default_fanout_limit_is_the_documented_one() {
        let common = include_str!("../../lua/common.lua");
        assert!(
            common.contains(&format!(
                "local DEFAULT_MAX_FANOUT = {DEFAULT_MAX_FANOUT}\n"
            )),
            "lua/common.lua and worker::DEFAULT_MAX_FANOUT disagree"
        );
    }
}
