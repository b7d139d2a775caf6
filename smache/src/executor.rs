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
//! (see [`crate::task`]), a callback of a finished task, or a changed
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

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::entity::EntityId;
use crate::error::{Error, Result};
use crate::instance::{Located, Smache};
use crate::key::{split_value_id, Job, Report};
use crate::registry;
use crate::store::{keys, Abandon, Outcome, RedisStore, Related, Start, Store, BLOCK_FOR};
use crate::task::Completion;

pub use crate::store::keys::GROUP;
/// A job left unacknowledged this long (its executor died, or it failed)
/// is handed to another executor.
pub const RECLAIM_AFTER: Duration = Duration::from_secs(30);

pub use crate::store::keys::DEAD_LETTERS_KEPT;

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

/// Runs an executor until `shutdown` completes; jobs in progress finish first.
///
/// # Errors
/// When the instance has no Redis store.
pub async fn run_until(
    smache: Smache,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let (executor, mut again) = Executor::new(smache)?;
    tokio::pin!(shutdown);
    let mut running = JoinSet::new();
    let permits = Arc::new(Semaphore::new(executor.concurrency));
    let mut last_reclaim = tokio::time::Instant::now() - RECLAIM_AFTER;
    let mut conn = None;
    let held = Arc::new(Mutex::new(HashSet::new()));
    let heartbeat = tokio::spawn(executor.clone().keep_claimed(Arc::clone(&held)));
    let _sampling = crate::metrics::Sampling::start(&executor.smache);
    loop {
        if conn.is_none() {
            conn = match executor.store.dedicated().await {
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
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Some(conn) = conn.as_mut() {
                executor.ensure_group(conn).await;
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
            () = &mut shutdown => break,
            read = executor.read(connection) => read,
        };
        match read {
            Ok(entries) => batch.extend(entries),
            Err(err) => {
                // Reconnecting tells the store whether Redis is down (it
                // logs an outage once).
                if err.is_io_error() {
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
        batch.retain(|(entry, _)| crate::sync::lock(&held).insert(entry.clone()));
        for (entry, task) in batch {
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .expect("never closed");
            let executor = executor.clone();
            // Forgets the entry however the job ends (a panicking relation
            // mapper included), so the heartbeat stops claiming it.
            let release = Held(Arc::clone(&held), entry.clone());
            running.spawn(async move {
                let _release = release;
                executor.run_job(&entry, task).await;
                drop(permit);
            });
        }
        // Jobs left for an executor that has their function, due to be
        // given up before a reclaim would bring them back: looked at again
        // now, unless running here. Not held (the heartbeat would claim
        // them): giving one up checks that this executor still holds it.
        while let Ok((entry, task)) = again.try_recv() {
            if crate::sync::lock(&held).contains(&entry) {
                continue;
            }
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .expect("never closed");
            let executor = executor.clone();
            running.spawn(async move {
                executor.run_job(&entry, task).await;
                drop(permit);
            });
        }
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    heartbeat.abort();
    Ok(())
}

/// Starts an executor as a background task of the current tokio runtime.
/// Dropping the handle does not stop it; call [`ExecutorHandle::shutdown`].
///
/// # Panics
/// Outside a tokio runtime.
pub fn spawn(smache: &Smache) -> ExecutorHandle {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_until(smache.clone(), async move {
        let _ = stopped.await;
    }));
    ExecutorHandle { stop, task }
}

/// A running background executor; see [`spawn`].
#[derive(Debug)]
pub struct ExecutorHandle {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl ExecutorHandle {
    /// Stops taking jobs, waits for the running ones, and returns.
    ///
    /// # Errors
    /// The executor's own error, if it stopped on one.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(Ok(()))
    }
}

/// What a stream entry asks for.
#[derive(Debug, Clone)]
enum Task {
    /// Recompute the value with this id.
    Value(String),
    /// Compute the value `id` for the submitted task `task`; `args` are the
    /// full arguments when the id holds only their hash.
    Submitted {
        id: String,
        task: String,
        args: String,
    },
    /// Signal the dependants of `token`, a chunk from SSCAN `cursor`.
    FanOut {
        token: String,
        cursor: String,
        /// Past max_fanout: mark stale only.
        lazy: bool,
        /// How many dependants the change had (lazy jobs say).
        dependants: Option<u64>,
    },
    /// Run the callback `name` of the finished task `task`.
    Callback {
        name: String,
        task: String,
        args: String,
    },
    /// A document of a collection named in some `relations(...)` changed.
    Related {
        collection: String,
        doc: String,
        /// The kind of change ("i", "u", "r", "d"; none from a worker
        /// older than this field).
        op: Option<String>,
        /// The document before the change (BSON), when MongoDB gave it.
        before: Option<Vec<u8>>,
    },
    Malformed,
}

impl Task {
    fn of(entry: &redis::streams::StreamId) -> Task {
        let args = || entry.get::<String>("args").unwrap_or_default();
        if let Some(token) = entry.get::<String>("fan") {
            return Task::FanOut {
                token,
                cursor: entry.get::<String>("cur").unwrap_or_else(|| "0".into()),
                lazy: entry.get::<String>("lazy").is_some_and(|v| v == "1"),
                dependants: entry.get::<u64>("n"),
            };
        }
        if let (Some(name), Some(task)) = (entry.get::<String>("cb"), entry.get::<String>("task")) {
            return Task::Callback {
                name,
                task,
                args: args(),
            };
        }
        if let Some(id) = entry.get::<String>("id") {
            return match entry.get::<String>("task") {
                Some(task) => Task::Submitted {
                    id,
                    task,
                    args: args(),
                },
                None => Task::Value(id),
            };
        }
        match (entry.get::<String>("rel"), entry.get::<String>("doc")) {
            (Some(collection), Some(doc)) => Task::Related {
                collection,
                doc,
                op: entry.get::<String>("op"),
                before: entry.get::<Vec<u8>>("pre"),
            },
            _ => Task::Malformed,
        }
    }
}

#[derive(Clone)]
struct Executor {
    smache: Smache,
    store: Arc<RedisStoreRef>,
    stream: String,
    consumer: String,
    concurrency: usize,
    /// Where the next XAUTOCLAIM scan starts.
    reclaim_from: Arc<Mutex<String>>,
    /// How long a job waits for an executor that has its function.
    orphan_timeout: Duration,
    /// Jobs to look at again (see [`Executor::recheck`]).
    again: mpsc::UnboundedSender<(String, Task)>,
}

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
    fn new(smache: Smache) -> Result<(Self, mpsc::UnboundedReceiver<(String, Task)>)> {
        if !matches!(smache.inner.store, Store::Redis(_)) {
            return Err(Error::Config("executors need the Redis store".into()));
        }
        let concurrency = smache.inner.executor_concurrency;
        let (again, rechecks) = mpsc::unbounded_channel();
        let executor = Executor {
            stream: keys::jobs(&smache.inner.base),
            consumer: consumer_name(),
            store: Arc::new(RedisStoreRef(smache.clone())),
            orphan_timeout: smache.inner.orphan_timeout,
            smache,
            concurrency,
            reclaim_from: Arc::new(Mutex::new("0-0".to_owned())),
            again,
        };
        Ok((executor, rechecks))
    }

    /// Runs one job, whatever its kind.
    async fn run_job(&self, entry: &str, task: Task) {
        match task {
            Task::Value(id) => {
                let function = split_value_id(&id)
                    .and_then(|(head, _)| head.rsplit_once('#'))
                    .map_or("", |(name, _)| name);
                let span = tracing::info_span!("smache.recompute", function, id = %id, job = entry);
                self.process(entry, &id).instrument(span).await;
            }
            Task::Submitted { id, task, args } => {
                self.process_task(entry, &id, &task, args).await;
            }
            Task::Callback { name, task, args } => {
                self.callback(entry, &name, &task, args).await;
            }
            Task::FanOut {
                token,
                cursor,
                lazy,
                dependants,
            } => {
                self.fan_out(entry, &token, &cursor, lazy, dependants).await;
            }
            Task::Related {
                collection,
                doc,
                op,
                before,
            } => {
                let change = RelatedChange {
                    collection: &collection,
                    doc: &doc,
                    op: op.as_deref(),
                    before: before.as_deref(),
                };
                self.relate(entry, &change).await;
            }
            Task::Malformed => {
                tracing::warn!(
                    entry,
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

    async fn ensure_group(&self, conn: &mut redis::aio::MultiplexedConnection) {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        if let Err(err) = created {
            if err.code() != Some("BUSYGROUP") {
                tracing::warn!(error = %err, "smache executor: cannot create the consumer group");
            }
        }
    }

    async fn read(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<Vec<(String, Task)>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.concurrency)
            .arg("BLOCK")
            .arg(u64::try_from(BLOCK_FOR.as_millis()).unwrap_or(1000))
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(conn)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .map(|entry| (entry.id.clone(), Task::of(&entry)))
            .collect())
    }

    /// Jobs another executor took and did not finish.
    async fn reclaim(&self, conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, Task)> {
        let from = crate::sync::lock(&self.reclaim_from).clone();
        let reply: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(u64::try_from(RECLAIM_AFTER.as_millis()).unwrap_or(u64::MAX))
            .arg(from)
            .arg("COUNT")
            .arg(100)
            .query_async(conn)
            .await;
        match reply {
            Ok(reply) => {
                // Go on from where this scan stopped next time ("0-0" once
                // it went round), so old entries cannot hide newer ones.
                *crate::sync::lock(&self.reclaim_from) = reply.next_stream_id;
                reply
                    .claimed
                    .into_iter()
                    .map(|entry| (entry.id.clone(), Task::of(&entry)))
                    .collect()
            }
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
    async fn keep_claimed(self, held: Arc<Mutex<HashSet<String>>>) {
        loop {
            self.announce().await;
            tokio::time::sleep(RECLAIM_AFTER / 3).await;
            let ids: Vec<String> = crate::sync::lock(&held).iter().cloned().collect();
            if ids.is_empty() {
                continue;
            }
            let Ok(mut conn) = self.store.shared().await else {
                continue;
            };
            let claimed: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID")
                .query_async(&mut conn)
                .await;
            if let Err(err) = claimed {
                tracing::debug!(error = %err, "smache executor: cannot renew the claim on running jobs");
            }
        }
    }

    async fn ack(&self, entry: &str) {
        let Ok(mut conn) = self.store.shared().await else {
            return;
        };
        let result: redis::RedisResult<()> = redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(entry)
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, entry, "smache executor: cannot acknowledge a job; it will run again");
        }
    }

    /// Moves a job that can never succeed to the dead-letter stream, with
    /// why, acknowledging it; if Redis cannot be told, the job stays
    /// pending and comes back.
    async fn give_up(&self, entry: &str, reason: &str) {
        self.give_up_undoing(entry, reason, Abandon::Nothing).await;
    }

    /// [`give_up`](Self::give_up), undoing `abandon` in the same step.
    async fn give_up_undoing(&self, entry: &str, reason: &str, abandon: Abandon<'_>) {
        let base = &self.smache.inner.base;
        match self
            .store
            .dead_letter(base, entry, reason, &self.consumer, abandon)
            .await
        {
            Ok(true) => crate::metrics::dead_lettered(),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %err, entry, "smache executor: cannot dead-letter a job; it will run again");
            }
        }
    }

    /// When the job `entry`, for `field` of `{prefix}:fns` (a function head
    /// or `cb:<name>`) that this process lacks, is given up.
    async fn absence(&self, entry: &str, field: &str) -> Result<Absence> {
        let mut conn = self.store.shared().await?;
        let ((seconds, micros), announced): ((u64, u64), Option<String>) = redis::pipe()
            .cmd("TIME")
            .cmd("HGET")
            .arg(format!("{}fns", self.smache.inner.base))
            .arg(field)
            .query_async(&mut conn)
            .await?;
        let announced_ms = announced.and_then(|at| at.parse().ok());
        Ok(Absence {
            now_ms: seconds * 1000 + micros / 1000,
            announced_ms,
            deadline_ms: crate::inspect::orphan_deadline(
                crate::inspect::entry_ms(entry),
                announced_ms,
                self.orphan_timeout,
            ),
        })
    }

    /// A job for `what` (`function <head>` or `callback <name>`), known
    /// to executors as `field`, that this process lacks: left for an
    /// executor that has it (a deploy in progress) until none has
    /// announced it for the orphan timeout; then moved to the dead letters
    /// with why, undoing `abandon`. `task` is the job, to look at again.
    async fn orphaned(
        &self,
        entry: &str,
        field: &str,
        what: &str,
        abandon: Abandon<'_>,
        task: Task,
    ) {
        match self.absence(entry, field).await {
            Err(err) => {
                tracing::warn!(error = %err, entry, "smache executor: redis unavailable; job left for retry");
            }
            Ok(absence) if absence.due() => {
                let reason = absence.reason(what, self.orphan_timeout);
                tracing::error!(
                    entry,
                    reason,
                    "smache executor: no live executor can run a job; dead-lettered"
                );
                self.give_up_undoing(entry, &reason, abandon).await;
            }
            Ok(absence) => {
                tracing::warn!(
                    entry,
                    needs = what,
                    given_up_in_ms = absence.deadline_ms.saturating_sub(absence.now_ms),
                    "smache executor: not in this process; leaving the job for another executor"
                );
                self.recheck(entry, task, &absence);
            }
        }
    }

    /// Looks at a job left for another executor again at its deadline, if
    /// that comes before a reclaim would bring it back (after
    /// [`RECLAIM_AFTER`]), so it is given up on time.
    fn recheck(&self, entry: &str, task: Task, absence: &Absence) {
        let wait = Duration::from_millis(absence.deadline_ms.saturating_sub(absence.now_ms));
        if wait >= RECLAIM_AFTER {
            return;
        }
        let again = self.again.clone();
        let entry = entry.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(wait + Duration::from_millis(10)).await;
            // The executor stopped: nothing to do.
            let _ = again.send((entry, task));
        });
    }

    /// Tells `inspect` and the other executors which functions and
    /// callbacks this executor runs (`{prefix}:fns`, by the Redis clock, as
    /// the jobs' times are), so jobs nobody can run stand out and are given
    /// up in time; and publishes its orphan timeout (`{prefix}:config`),
    /// for `inspect` to say when.
    async fn announce(&self) {
        let Ok(mut conn) = self.store.shared().await else {
            return;
        };
        let now: redis::RedisResult<(u64, u64)> = redis::cmd("TIME").query_async(&mut conn).await;
        let Ok((seconds, micros)) = now else {
            return;
        };
        let now = seconds * 1000 + micros / 1000;
        let base = &self.smache.inner.base;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(keys::config(base))
            .arg("orphan_timeout")
            .arg(u64::try_from(self.orphan_timeout.as_millis()).unwrap_or(u64::MAX))
            .ignore();
        let callbacks = &self.smache.inner.callbacks;
        if registry::heads().next().is_some() || !callbacks.is_empty() {
            let cmd = pipe.cmd("HSET").arg(keys::functions(base));
            for head in registry::heads() {
                cmd.arg(head).arg(now);
            }
            for name in callbacks.keys() {
                cmd.arg(format!("cb:{name}")).arg(now);
            }
            cmd.ignore();
        }
        let announced: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        if let Err(err) = announced {
            tracing::debug!(error = %err, "smache executor: cannot announce its functions");
        }
    }

    /// Runs one job; acknowledges it when it is done for good.
    async fn process(&self, entry: &str, id: &str) {
        let base = &self.smache.inner.base;
        let at = Located {
            key: keys::value(base, id),
            id: id.to_owned(),
            full_args: String::new(),
        };
        let Some((head, id_args)) = split_value_id(id) else {
            tracing::warn!(id, "smache executor: malformed job; dead-lettered");
            return self.give_up(entry, "malformed value id").await;
        };
        let Some(registration) = registry::find(head) else {
            // Another version of the application may have it (a deploy in
            // progress): leave the job for an executor that does, for a while.
            return self
                .orphaned(
                    entry,
                    head,
                    &format!("function {head}"),
                    Abandon::Recompute { id },
                    Task::Value(id.to_owned()),
                )
                .await;
        };
        let (started, full_args) = loop {
            match self.store.start_job(&at.key, MIN_RECOMPUTE_INTERVAL).await {
                Ok(Start::Run { started, full_args }) => break (started, full_args),
                Ok(Start::Wait(delay)) => tokio::time::sleep(delay).await,
                Ok(Start::Gone) => return self.ack(entry).await,
                Err(err) => {
                    tracing::warn!(error = %err, id, "smache executor: redis unavailable; job left for retry");
                    return;
                }
            }
        };
        let args = if full_args.is_empty() {
            id_args.to_owned()
        } else {
            full_args
        };
        let retry = self.smache.inner.retry;
        let mut run = 1;
        loop {
            let job = Job::new(
                self.smache.mongodb().cloned(),
                at.key.clone(),
                Some(started),
                args.clone(),
            );
            let began = Instant::now();
            let (ran, report) = self.run_function(registration, job).await;
            let outcome = report.outcome;
            let spec = registration.spec;
            crate::metrics::recomputed(spec, outcome_label(&ran, outcome), began.elapsed());
            let failure = match (ran, outcome) {
                (Ran::Returned(Ok(())), Some(Outcome::Stored | Outcome::Superseded)) => {
                    if outcome == Some(Outcome::Stored) {
                        crate::metrics::refreshed(spec, crate::inspect::entry_ms(entry));
                    }
                    return self.ack(entry).await;
                }
                (Ran::Returned(Ok(())), Some(Outcome::TooLarge)) => {
                    tracing::error!(id, "smache executor: the recomputed value is larger than max_value_size; not stored, the old value stays (stale); dead-lettered");
                    return self
                        .give_up(entry, "the value is larger than max_value_size")
                        .await;
                }
                (Ran::Returned(Ok(())), Some(Outcome::NotCached)) => report
                    .failure
                    .unwrap_or_else(|| "the value was not cached".to_owned()),
                (Ran::Returned(Ok(())), _) => {
                    tracing::warn!(
                        id,
                        "smache executor: the value could not be stored; job left for retry"
                    );
                    return;
                }
                (
                    Ran::Returned(Err(Error::EntityGone {
                        collection,
                        id: gone,
                    })),
                    _,
                ) => {
                    tracing::debug!(id, collection, %gone, "smache executor: an entity is gone; dropping the value");
                    return match self.store.drop_value(at.slot(base)).await {
                        Ok(_) => {
                            self.smache
                                .inner
                                .forget_external(registration.spec, &at.key)
                                .await;
                            self.ack(entry).await;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, id, "smache executor: cannot drop the value; job left for retry");
                        }
                    };
                }
                (Ran::Returned(Err(err @ Error::Job(_))), _) => {
                    tracing::error!(error = %err, id, "smache executor: the job does not match the function; dead-lettered");
                    return self.give_up(entry, &err.to_string()).await;
                }
                (Ran::Returned(Err(err)), _) => {
                    if run >= retry.attempts() {
                        // MongoDB or Redis unreachable: keep the job for
                        // another round (reclaimed after RECLAIM_AFTER).
                        tracing::warn!(error = %err, id, "smache executor: recompute failed; job left for retry");
                        return;
                    }
                    err.to_string()
                }
                (Ran::Panicked(message), _) => message,
            };
            if run >= retry.attempts() {
                tracing::error!(id, error = %failure, runs = run, "smache executor: recompute failed on every attempt; the old value stays (stale); dead-lettered");
                let reason = format!("recompute failed on every attempt ({run} runs): {failure}");
                return self.give_up(entry, &reason).await;
            }
            tracing::warn!(id, error = %failure, run, "smache executor: recompute failed; retrying");
            tokio::time::sleep(retry.delay(run)).await;
            run += 1;
        }
    }

    /// Runs a job's function on a blocking thread of its own (the user's
    /// function need not be `Send`), catching a panic; with what the call
    /// path reported.
    async fn run_function(
        &self,
        registration: &'static registry::Registration,
        job: Job,
    ) -> (Ran, Report) {
        let recompute = registration.recompute;
        let smache = self.smache.clone();
        let handle = tokio::runtime::Handle::current();
        // The job's span goes along to the blocking thread.
        let span = tracing::Span::current();
        let run = move || {
            span.in_scope(|| {
                let result = handle.block_on(smache.scope(recompute(&job)));
                (result, job.take_report())
            })
        };
        match tokio::task::spawn_blocking(run).await {
            Ok((result, report)) => (Ran::Returned(result), report),
            Err(err) => (Ran::Panicked(panic_message(err)), Report::default()),
        }
    }

    /// Computes the value of a submitted task, with retries, and finishes
    /// the task with its value or its error.
    async fn process_task(&self, entry: &str, id: &str, task: &str, full_args: String) {
        let base = &self.smache.inner.base;
        let key = keys::value(base, id);
        let Some((head, id_args)) = split_value_id(id) else {
            tracing::warn!(id, task, "smache executor: malformed task; failed");
            let failed = Err(format!("malformed value id {id:?}"));
            return self.finish(entry, task, &key, &failed).await;
        };
        let Some(registration) = registry::find(head) else {
            let abandon = Abandon::Task {
                id,
                task,
                retention: self.smache.inner.task_retention,
            };
            let again = Task::Submitted {
                id: id.to_owned(),
                task: task.to_owned(),
                args: full_args.clone(),
            };
            return self
                .orphaned(entry, head, &format!("function {head}"), abandon, again)
                .await;
        };
        let args = if full_args.is_empty() {
            id_args.to_owned()
        } else {
            full_args
        };
        let retry = self.smache.inner.retry;
        let mut run = 1;
        loop {
            // No generation: the plain call path (a hit, single flight
            // with other callers, or a computation) with its failure noted.
            let job = Job::new(
                self.smache.mongodb().cloned(),
                key.clone(),
                None,
                args.clone(),
            );
            let (ran, report) = self.run_function(registration, job).await;
            let failure = match ran {
                Ran::Returned(Ok(())) => match self.reread(&key, id).await {
                    Ok(Some(fetched))
                        if self.smache.inner.acceptable(registration.spec, &fetched) =>
                    {
                        // A value kept in MongoDB stays there: a copy for
                        // the task, and a reference in the task's record.
                        let data = if self.smache.inner.external(registration.spec) {
                            match self.smache.inner.keep_for_task(task, &fetched.data).await {
                                Ok(reference) => reference,
                                Err(err) => {
                                    tracing::warn!(error = %err, task, "smache executor: mongodb unavailable; task left for retry");
                                    return;
                                }
                            }
                        } else {
                            fetched.data
                        };
                        return self.finish(entry, task, &key, &Ok(data)).await;
                    }
                    Ok(_) => report
                        .failure
                        .unwrap_or_else(|| "the value was computed but not stored".to_owned()),
                    Err(()) => {
                        tracing::warn!(
                            task,
                            "smache executor: redis unavailable; task left for retry"
                        );
                        return;
                    }
                },
                Ran::Returned(Err(err @ (Error::EntityGone { .. } | Error::Job(_)))) => {
                    // Retrying cannot help.
                    return self.finish(entry, task, &key, &Err(err.to_string())).await;
                }
                Ran::Returned(Err(err)) => err.to_string(),
                Ran::Panicked(message) => message,
            };
            if run >= retry.attempts() {
                tracing::warn!(task, id, error = %failure, runs = run, "smache executor: task failed");
                return self.finish(entry, task, &key, &Err(failure)).await;
            }
            tracing::debug!(task, id, error = %failure, run, "smache executor: task run failed; retrying");
            tokio::time::sleep(retry.delay(run)).await;
            run += 1;
        }
    }

    /// Signals one chunk of a token's many dependants; the script queues
    /// the next chunk and acknowledges the job. `lazy`: the change has more
    /// dependants than `max_fanout`; they are only marked stale.
    async fn fan_out(
        &self,
        entry: &str,
        token: &str,
        cursor: &str,
        lazy: bool,
        dependants: Option<u64>,
    ) {
        if lazy && cursor == "0" {
            tracing::warn!(
                token,
                dependants,
                "smache executor: a change has more dependants than max_fanout; they are marked \
                 stale without a recompute each, and recomputed when next read"
            );
        }
        match self
            .store
            .fan_out(&self.smache.inner.base, token, cursor, entry, lazy)
            .await
        {
            Ok(queued) => {
                // Acknowledged by the script itself.
                tracing::debug!(token, cursor, queued, "smache executor: fanned out a chunk");
            }
            Err(err) => {
                tracing::warn!(error = %err, token, "smache executor: redis unavailable; fan-out left for retry");
            }
        }
    }

    /// Reads a task's value after its run, following an alias (a key that
    /// became one meanwhile has its value under the target's key).
    async fn reread(
        &self,
        key: &str,
        id: &str,
    ) -> std::result::Result<Option<crate::instance::Fetched>, ()> {
        let at = Located {
            key: key.to_owned(),
            id: id.to_owned(),
            full_args: String::new(),
        };
        Ok(self.smache.inner.lookup(&at).await?.0)
    }

    /// Records a task's result (once), queues its callbacks, wakes its
    /// waiters; acknowledges the job once that is done.
    async fn finish(
        &self,
        entry: &str,
        task: &str,
        value_key: &str,
        result: &std::result::Result<Vec<u8>, String>,
    ) {
        let inner = &self.smache.inner;
        match self
            .store
            .finish_task(&inner.base, task, value_key, result, inner.task_retention)
            .await
        {
            Ok(_) => self.ack(entry).await,
            Err(err) => {
                tracing::warn!(error = %err, task, "smache executor: cannot finish a task; left for retry");
            }
        }
    }

    /// Runs one callback of a finished task. Whatever the callback does,
    /// the job is acknowledged: a failing callback is logged, not retried.
    async fn callback(&self, entry: &str, name: &str, task: &str, args: String) {
        let Some(handler) = self.smache.inner.callbacks.get(name).cloned() else {
            if let Ok(None) = self.store.task(&self.smache.inner.base, task).await {
                tracing::warn!(
                    callback = name,
                    task,
                    "smache executor: a callback nobody here has, of a task that expired; dropped"
                );
                return self.ack(entry).await;
            }
            let again = Task::Callback {
                name: name.to_owned(),
                task: task.to_owned(),
                args,
            };
            return self
                .orphaned(
                    entry,
                    &format!("cb:{name}"),
                    &format!("callback {name}"),
                    Abandon::Nothing,
                    again,
                )
                .await;
        };
        let state = match self.store.task(&self.smache.inner.base, task).await {
            Ok(Some(state)) => state,
            Ok(None) => {
                tracing::warn!(
                    callback = name,
                    task,
                    "smache executor: the task expired before its callback ran; dropped"
                );
                return self.ack(entry).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, task, "smache executor: redis unavailable; callback left for retry");
                return;
            }
        };
        let outcome = match state.state {
            b'd' => match self.smache.inner.task_value(task, &state).await {
                Ok(data) => Ok(data),
                Err(err) => {
                    tracing::warn!(error = %err, task, "smache executor: cannot read a task's value; callback left for retry");
                    return;
                }
            },
            b'f' => Err(String::from_utf8_lossy(&state.result).into_owned()),
            _ => Err("the task has not finished".to_owned()),
        };
        let completion = Completion::new(task.to_owned(), outcome, args);
        match tokio::spawn(handler(completion)).await {
            Ok(Ok(())) => {
                tracing::debug!(callback = name, task, "smache executor: callback done");
            }
            Ok(Err(err)) => {
                tracing::warn!(callback = name, task, error = %err, "smache executor: a callback failed; dead-lettered");
                return self
                    .give_up(entry, &format!("the callback failed: {err}"))
                    .await;
            }
            Err(err) => {
                let message = panic_of("the callback", err);
                tracing::error!(callback = name, task, error = %message, "smache executor: a callback panicked; dead-lettered");
                return self.give_up(entry, &message).await;
            }
        }
        self.ack(entry).await;
    }
}

/// An entry this process holds; dropping it lets go.
struct Held(Arc<Mutex<HashSet<String>>>, String);

impl Drop for Held {
    fn drop(&mut self) {
        crate::sync::lock(&self.0).remove(&self.1);
    }
}

/// When a job for a function (or callback) this process lacks is given up.
struct Absence {
    /// Now, by the Redis clock (ms).
    now_ms: u64,
    /// When an executor last announced it has the function (ms).
    announced_ms: Option<u64>,
    /// When the job is given up (ms).
    deadline_ms: u64,
}

impl Absence {
    fn due(&self) -> bool {
        self.now_ms >= self.deadline_ms
    }

    fn reason(&self, what: &str, timeout: Duration) -> String {
        crate::inspect::orphan_reason(what, self.announced_ms, self.now_ms, timeout)
    }
}

/// What a recompute run came to, for [`crate::metrics::RECOMPUTATIONS`].
fn outcome_label(ran: &Ran, outcome: Option<Outcome>) -> &'static str {
    match (ran, outcome) {
        (Ran::Returned(Ok(())), Some(Outcome::Stored)) => "stored",
        (Ran::Returned(Ok(())), Some(Outcome::Superseded)) => "superseded",
        (Ran::Returned(Ok(())), Some(Outcome::TooLarge)) => "too_large",
        (Ran::Returned(Ok(())), Some(Outcome::Unreachable) | None) => "unreachable",
        (Ran::Returned(Err(Error::EntityGone { .. })), _) => "gone",
        _ => "error",
    }
}

/// How a job's function run ended.
enum Ran {
    Returned(Result<()>),
    Panicked(String),
}

/// The message of a panicked task.
fn panic_message(err: tokio::task::JoinError) -> String {
    panic_of("the function", err)
}

/// What ended `what`'s task: "<what> panicked: <message>", or how else.
fn panic_of(what: &str, err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".to_owned());
            format!("{what} panicked: {text}")
        }
        Err(err) => format!("{what}'s task ended: {err}"),
    }
}

impl Executor {
    /// A related document changed: for each function with a relation on
    /// its collection, map it (as it is now, and as it was before the
    /// change when that is known) to entity ids and refresh their values.
    async fn relate(&self, entry: &str, change: &RelatedChange<'_>) {
        let base = &self.smache.inner.base;
        let RelatedChange {
            collection, doc, ..
        } = *change;
        let Some(id) = EntityId::from_key(doc) else {
            tracing::warn!(
                entry,
                doc,
                "smache executor: malformed relation job; dead-lettered"
            );
            return self
                .give_up(entry, "malformed document id in a relation job")
                .await;
        };
        let before = match change.before.map(bson::from_slice::<bson::Document>) {
            Some(Ok(before)) => Some(before),
            Some(Err(err)) => {
                // Mapped as if MongoDB had given no pre-image.
                tracing::warn!(entry, error = %err, "smache executor: a relation job's pre-image does not decode; ignored");
                None
            }
            None => None,
        };
        let heads: Vec<String> = match self.store.shared().await {
            Ok(mut conn) => match redis::cmd("SMEMBERS")
                .arg(keys::relations(base, collection))
                .query_async(&mut conn)
                .await
            {
                Ok(heads) => heads,
                Err(err) => {
                    tracing::warn!(error = %err, "smache executor: redis unavailable; job left for retry");
                    return;
                }
            },
            Err(err) => {
                tracing::warn!(error = %err, "smache executor: redis unavailable; job left for retry");
                return;
            }
        };
        let Some(db) = self.smache.mongodb() else {
            tracing::error!(
                "smache executor: relation jobs need a MongoDB database (SmacheBuilder::mongodb)"
            );
            return;
        };
        let document = match db
            .collection::<bson::Document>(collection)
            .find_one(bson::doc! { "_id": id.to_bson() })
            .await
        {
            Ok(document) => document,
            Err(err) => {
                tracing::warn!(error = %err, "smache executor: mongodb unavailable; job left for retry");
                return;
            }
        };
        let source = format!("{collection}:{doc}");
        // Every function concerned must be known here, or the job is left
        // for an executor that has them all (a deploy in progress), until
        // those missing have had no live executor for the orphan timeout:
        // then it is applied for the others and dead-lettered.
        let mut registrations = Vec::with_capacity(heads.len());
        let mut missing = Vec::new();
        for head in &heads {
            match registry::find(head) {
                Some(registration) => registrations.push((head, registration)),
                None => missing.push(head),
            }
        }
        let mut given_up = Vec::new();
        for head in missing {
            let what = format!("function {head}");
            match self.absence(entry, head).await {
                Ok(absence) if absence.due() => {
                    given_up.push(absence.reason(&what, self.orphan_timeout));
                }
                Ok(absence) => {
                    tracing::warn!(function = head, "smache executor: a relation of a function this process does not have; leaving the job for another executor");
                    let again = Task::Related {
                        collection: collection.to_owned(),
                        doc: doc.to_owned(),
                        op: change.op.map(str::to_owned),
                        before: change.before.map(<[u8]>::to_vec),
                    };
                    return self.recheck(entry, again, &absence);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "smache executor: redis unavailable; job left for retry");
                    return;
                }
            }
        }
        let applied = registrations.len();
        for (head, registration) in registrations {
            for relation in registration
                .relations
                .iter()
                .filter(|r| r.source == collection)
            {
                let Some(now) = map_related(relation, head, document.as_ref()) else {
                    continue;
                };
                // What it mapped to before: its pre-image's targets; none
                // for an insert; else unknown (the recorded mapping, if
                // any, stands in).
                let earlier = match &before {
                    Some(before) => map_related(relation, head, Some(before)),
                    None if change.op == Some("i") => Some(Vec::new()),
                    None => None,
                };
                let related = Related {
                    source: &source,
                    target: relation.target,
                    gone: document.is_none(),
                    now: &now,
                    before: earlier.as_deref(),
                };
                match self.store.relate(base, head, &related).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        unknown_earlier_targets(head, collection, &source);
                        if let Err(err) = self.stale_function(head).await {
                            tracing::warn!(error = %err, "smache executor: job left for retry");
                            return;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "smache executor: redis unavailable; job left for retry");
                        return;
                    }
                }
            }
        }
        if given_up.is_empty() {
            return self.ack(entry).await;
        }
        let mut reason = given_up.join("; ");
        if applied > 0 {
            reason.push_str("; applied for the other functions");
        }
        tracing::error!(
            entry,
            reason,
            "smache executor: no live executor can run a relation job; dead-lettered"
        );
        self.give_up(entry, &reason).await;
    }

    /// Marks every value of one function stale, with no recompute coming:
    /// each is recomputed by its next reader (a recompute of every value
    /// of a function on each such change could swamp the executors).
    async fn stale_function(&self, head: &str) -> Result<()> {
        let glob = format!("{}:*", keys::glob_escape(head));
        self.store
            .mark_matching_stale(&self.smache.inner.base, &glob, true)
            .await?;
        Ok(())
    }
}

/// A related document's change, as a relation job gives it.
#[derive(Debug, Clone, Copy)]
struct RelatedChange<'a> {
    collection: &'a str,
    doc: &'a str,
    op: Option<&'a str>,
    before: Option<&'a [u8]>,
}

/// The id keys a relation maps a version of a related document to (none
/// for no document); `None` if its mapper fails (logged).
fn map_related(
    relation: &registry::Relation,
    head: &str,
    document: Option<&bson::Document>,
) -> Option<Vec<String>> {
    let Some(document) = document else {
        return Some(Vec::new());
    };
    match (relation.map)(document.clone()) {
        Ok(ids) => Some(
            ids.iter()
                .map(|id| {
                    let mut key = String::new();
                    id.write_key(&mut key);
                    key
                })
                .collect(),
        ),
        Err(err) => {
            tracing::warn!(error = %err, function = head, "smache executor: a relation mapper failed; skipped");
            None
        }
    }
}

/// Says, once per function and collection in this process, that a related
/// document changed whose earlier targets are unknown, and what that costs.
fn unknown_earlier_targets(head: &str, collection: &str, source: &str) {
    static WARNED: Mutex<Option<HashSet<(String, String)>>> = Mutex::new(None);
    let first = crate::sync::lock(&WARNED)
        .get_or_insert_with(HashSet::new)
        .insert((head.to_owned(), collection.to_owned()));
    if first {
        tracing::warn!(function = head, collection, source, "smache executor: a related document changed that smache had not seen change before, and MongoDB gave no pre-image: what it concerned before is unknown, so every value of the function is marked stale (recomputed when next read). Enable changeStreamPreAndPostImages on the collection to refresh only the values concerned");
    } else {
        tracing::debug!(function = head, source, "smache executor: a related document's earlier targets are unknown; every value of the function marked stale");
    }
}

fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{}", std::process::id(), ObjectId::new().to_hex())
}
