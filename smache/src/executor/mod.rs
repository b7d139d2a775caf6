//! Executors: the processes that recompute values in the background.
//!
//! `smache-worker` turns document changes into recompute jobs on a Redis
//! stream (`{prefix}:jobs`, consumer group `executors`). Running a job needs
//! the user's function, so jobs are executed by processes that link the
//! `#[computed]` functions: an application with the executor enabled, or a
//! dedicated process:
//!
//! ```no_run
//! # async fn run() -> Result<(), smache::Error> {
//! let smache = smache::Smache::from_env()?; // Redis + MongoDB from SMACHE_*
//! smache::executor::run(smache).await // until Ctrl-C or SIGTERM
//! # }
//! ```
//!
//! A job is a recompute (a change made a value stale), a submitted task
//! (see [Tasks](crate#tasks)), a callback of a finished task, or a changed
//! document of a collection named in some `relations(...)`.
//!
//! To recompute a value, the executor loads its entity
//! arguments fresh from MongoDB, calls the function, and stores the result
//! only if no value computed from newer data was stored meanwhile. A job is
//! acknowledged only once its value is stored (or is gone); jobs of a
//! crashed executor are reclaimed by the others after [`RECLAIM_AFTER`].
//! A job for a function (or callback) this process lacks is left for an
//! executor that has it, until no live executor has announced it for
//! [`SmacheBuilder::orphan_timeout`](crate::SmacheBuilder::orphan_timeout):
//! then it is moved to the dead letters with why (see [`crate::inspect`]).
//!
//! On a store of several shards (see `store::shards`) each shard has a
//! stream of its own: an executor reads them all, and acknowledges, renews
//! and gives up each job in the shard it came from.
//!
//! The consumer loop is in `consumer`, one handler per kind of job in
//! `recompute`, `task`, `callback`, `fan_out` (both kinds of fan-out) and
//! `relation`, sharing one retry policy (`retry`); the job format is in
//! `store::StreamJob`.

mod callback;
mod consumer;
mod fan_out;
mod function;
mod orphan;
mod recompute;
mod relation;
mod retry;
mod task;

pub use crate::shutdown::ExecutorHandle;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::relation::RelatedChange;
use crate::error::{Error, Result};
use crate::instance::Smache;
use crate::store::{EntryRef, RedisStore, Start, Store, StreamEntry, StreamJob};

pub use crate::store::keys::GROUP;
/// A job left unacknowledged this long (its executor died, or it failed)
/// is handed to another executor.
pub const RECLAIM_AFTER: Duration = Duration::from_secs(30);

pub use crate::store::keys::DEAD_LETTERS_KEPT;

/// How long a stopping executor waits for the jobs it is running; those
/// still running then are dropped, unacknowledged, and reclaimed by
/// another executor after [`RECLAIM_AFTER`].
pub const DRAIN_FOR: Duration = RECLAIM_AFTER;

/// Recomputes of one value start at least this far apart. A lone change is
/// recomputed at once; the changes of a burst coalesce into a few jobs.
pub const MIN_RECOMPUTE_INTERVAL: Duration = Duration::from_millis(50);

/// Runs an executor until Ctrl-C or SIGTERM.
///
/// # Errors
/// When the instance has no Redis store.
pub async fn run(smache: Smache) -> Result<()> {
    run_until(smache, crate::shutdown::shutdown_signal()).await
}

/// Runs an executor until `shutdown` completes; jobs in progress finish
/// first, for up to [`DRAIN_FOR`] (those still running then are left for
/// other executors to reclaim).
///
/// # Errors
/// When the instance has no Redis store.
pub async fn run_until(
    smache: Smache,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let stop = CancellationToken::new();
    let consumer = consumer::consume(smache, stop.clone());
    tokio::pin!(consumer);
    tokio::select! {
        result = &mut consumer => return result,
        () = shutdown => stop.cancel(),
    }
    consumer.await
}

/// Starts an executor as a background task of the current tokio runtime.
/// Dropping the handle does not stop it; call [`ExecutorHandle::shutdown`].
///
/// ```no_run
/// # async fn run() -> Result<(), smache::Error> {
/// let smache = smache::Smache::from_env()?;
/// let executor = smache::executor::spawn(&smache); // recompute in this app
/// // … serve requests …
/// executor.shutdown().await?; // finish the jobs in progress
/// # Ok(())
/// # }
/// ```
///
/// # Panics
/// Outside a tokio runtime.
pub fn spawn(smache: &Smache) -> ExecutorHandle {
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer::consume(smache.clone(), stop.clone()));
    ExecutorHandle::new(stop, task)
}

/// One executor: what its consumer loop and its handlers share.
#[derive(Clone)]
struct Executor {
    smache: Smache,
    store: Arc<RedisStoreRef>,
    /// Its consumer name in the group.
    consumer: String,
    /// How many jobs run at once (and, apart, how many fan-out jobs).
    concurrency: usize,
    /// How long a job waits for an executor that has its function.
    orphan_timeout: Duration,
    /// Jobs to look at again (see [`Executor::recheck`]).
    again: mpsc::UnboundedSender<StreamEntry>,
    /// Fan-out chunks this executor runs at once (see
    /// [`FAN_OUT_CHUNKS_AT_ONCE`]).
    fan_out_chunks: Arc<tokio::sync::Semaphore>,
}

/// How many chunk scripts of fan-outs (`lua/fanout.lua`, tens of
/// milliseconds each) one executor runs at once. Each fan-out job runs its
/// chunks back to back; on a store of many shards one change queues a
/// fan-out job in each, and without a bound the chunk scripts of them all
/// would queue on the masters past the operation timeout. Fan-out jobs run
/// on `concurrency` permits of their own, apart from the other jobs':
/// those waiting for a turn leave the others' permits to recomputes.
const FAN_OUT_CHUNKS_AT_ONCE: usize = 2;

/// Borrows the Redis store out of the instance.
struct RedisStoreRef(Smache);

impl std::ops::Deref for RedisStoreRef {
    type Target = RedisStore;
    fn deref(&self) -> &RedisStore {
        match &self.0.inner.store {
            Store::Redis(store) => store,
            Store::Memory(_) => unreachable!("checked in Executor::new"),
        }
    }
}

impl Executor {
    /// The executor, and where the jobs it wants to look at again arrive.
    fn new(smache: Smache) -> Result<(Self, mpsc::UnboundedReceiver<StreamEntry>)> {
        if !matches!(smache.inner.store, Store::Redis(_)) {
            return Err(Error::Config("executors need the Redis store".into()));
        }
        let concurrency = smache.inner.settings.executor_concurrency;
        let (again, rechecks) = mpsc::unbounded_channel();
        let executor = Executor {
            consumer: consumer::consumer_name(),
            store: Arc::new(RedisStoreRef(smache.clone())),
            orphan_timeout: smache.inner.settings.orphan_timeout,
            smache,
            concurrency,
            again,
            fan_out_chunks: Arc::new(tokio::sync::Semaphore::new(FAN_OUT_CHUNKS_AT_ONCE)),
        };
        Ok((executor, rechecks))
    }

    /// Runs one job, whatever its kind; `start`, what starting it
    /// answered if it was started as it was read.
    async fn run_job(&self, entry: &EntryRef, job: StreamJob, start: Option<Start>) {
        match job {
            StreamJob::Value(id) => {
                let function = crate::key::split_value_id(&id)
                    .and_then(|(head, _)| head.rsplit_once('#'))
                    .map_or("", |(name, _)| name);
                let span =
                    tracing::info_span!("smache.recompute", function, id = %id, job = %entry);
                self.process(entry, &id, start).instrument(span).await;
            }
            StreamJob::Submitted { id, task, args } => {
                self.process_task(entry, &id, &task, args).await;
            }
            StreamJob::Callback { name, task, args } => {
                self.callback(entry, &name, &task, args).await;
            }
            StreamJob::FanAll { token, lazy } => {
                self.fan_all(entry, &token, lazy).await;
            }
            StreamJob::FanOut {
                token,
                cursor,
                lazy,
                dependants,
            } => {
                self.fan_out(entry, &token, &cursor, lazy, dependants).await;
            }
            StreamJob::Related {
                collection,
                doc,
                op,
                before,
                all,
            } => {
                let change = RelatedChange {
                    collection: &collection,
                    doc: &doc,
                    op: op.as_deref(),
                    before: before.as_deref(),
                    all,
                };
                self.relate(entry, &change).await;
            }
            StreamJob::Malformed => {
                tracing::warn!(
                    entry = %entry,
                    "smache executor: a job of no known kind; dead-lettered"
                );
                self.give_up(
                    entry,
                    "a job of no known kind (no `id`, `cb`, `fan` or `rel` field)",
                )
                .await;
            }
        }
    }
}
