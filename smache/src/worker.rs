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

use std::future::Future;
use std::time::{Duration, Instant};

use bson::doc;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::error::ErrorKind;
use mongodb::options::FullDocumentBeforeChangeType;

use crate::entity::EntityId;
use crate::error::{Error, Result};
use crate::instance::Smache;
use crate::roster::Presence;
use crate::store::keys::WorkerKeys;
use crate::store::{Changed, RedisStore, Seen, Store};

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
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            lease: Duration::from_secs(10),
            await_time: Duration::from_millis(500),
            max_fanout: DEFAULT_MAX_FANOUT,
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
    let keys = WorkerKeys::new(&smache.inner.base);
    let mut conn = store.shared().await?;
    let (watcher, token, lost): (Option<String>, bool, bool) = redis::pipe()
        .cmd("GET")
        .arg(&keys.lease)
        .cmd("EXISTS")
        .arg(&keys.token)
        .cmd("EXISTS")
        .arg(&keys.lost)
        .query_async(&mut conn)
        .await?;
    Ok(Readiness {
        watcher,
        position_saved: token,
        stale_marking_owed: lost,
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
        keys: WorkerKeys::new(&smache.inner.base),
        id: format!(
            "{}-{}",
            std::process::id(),
            bson::oid::ObjectId::new().to_hex()
        ),
        options,
        last_token: None,
        position: Vec::new(),
    };
    let _sampling = crate::metrics::Sampling::start(&smache);
    worker.run(shutdown).await;
    Ok(())
}

struct Worker<'a> {
    store: &'a RedisStore,
    db: mongodb::Database,
    /// What it announces about itself (`{prefix}:workers`).
    presence: Presence,
    keys: WorkerKeys,
    id: String,
    options: WorkerOptions,
    /// The last position this worker saved, should Redis lose it.
    last_token: Option<ResumeToken>,
    /// What the token key holds as far as this worker knows (empty:
    /// nothing): what it read when it started watching, then what it
    /// saved. Anything else found there means Redis lost it or went back.
    position: Vec<u8>,
}

/// Why a watch ended.
enum Ended {
    Shutdown,
    LeaseLost,
    Restart,
}

impl Worker<'_> {
    async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
        let mut leader = false;
        loop {
            if futures::FutureExt::now_or_never(shutdown.clone()).is_some() {
                break;
            }
            match self
                .store
                .lease(&self.keys, &self.id, self.options.lease)
                .await
            {
                Ok(Some(fence)) => {
                    self.announce().await;
                    if !leader {
                        tracing::info!(worker = %self.id, fence, "smache worker: holds the lease; watching");
                        leader = true;
                    }
                    match self.watch(&shutdown, fence).await {
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

    /// Follows the change stream until shutdown, loss of the lease or an
    /// error, holding the lease with fencing token `fence`.
    async fn watch(
        &mut self,
        shutdown: &(impl Future<Output = ()> + Clone),
        fence: u64,
    ) -> Result<Ended> {
        self.publish_config().await?;
        let saved = match self.saved_token().await? {
            Some(token) => Some(token),
            None => self.position_when_none_is_saved().await?,
        };
        let mut stream = match self.open(saved).await {
            Ok(stream) => stream,
            Err(err) if history_lost(&err) => {
                self.forget_history(&err).await?;
                return Ok(Ended::Restart);
            }
            Err(err) => return Err(err.into()),
        };
        // Save where the stream starts at once: should this worker die
        // before the first event, its successor resumes from here rather
        // than from its own later start.
        let mut saved = stream.resume_token();
        match self.record(saved.as_ref(), None).await? {
            Changed::Queued(_) => {}
            Changed::LeaseLost => return Ok(Ended::LeaseLost),
            Changed::Moved => return Ok(self.moved()),
        }
        self.last_token.clone_from(&saved);
        if let Some(why) = self.stale_marking_owed().await? {
            // The new stream starts now and its position is saved: mark
            // everything stale, so no change in the lost gap stays unseen.
            // The marker goes only once that is done.
            self.mark_everything_stale(why).await?;
            let mut conn = self.store.shared().await?;
            let _: () = redis::cmd("DEL")
                .arg(&self.keys.lost)
                .query_async(&mut conn)
                .await?;
        }
        let mut renewed = Instant::now();
        loop {
            if futures::FutureExt::now_or_never(shutdown.clone()).is_some() {
                return Ok(Ended::Shutdown);
            }
            if renewed.elapsed() >= self.options.lease / 3 {
                match self
                    .store
                    .lease(&self.keys, &self.id, self.options.lease)
                    .await?
                {
                    None => return Ok(Ended::LeaseLost),
                    Some(now) if now != fence => {
                        // Taken anew, not renewed: Redis lost the lease.
                        tracing::warn!(
                            worker = %self.id,
                            fence = now,
                            "smache worker: the lease was lost and taken again (Redis lost its \
                             data?); restarting the watch"
                        );
                        return Ok(Ended::Restart);
                    }
                    Some(_) => {}
                }
                // An idle stream records nothing: check the saved position
                // here, so a Redis that lost it (or went back to an older
                // one) gets this worker's again without waiting for a change.
                if self.saved_bytes().await? != self.position {
                    return Ok(self.moved());
                }
                // Again with each renewal: a Redis that came back empty
                // lost it while this worker kept (or retook) the lease.
                self.publish_config().await?;
                self.announce().await;
                renewed = Instant::now();
            }
            // Never cancelled mid-poll: a dropped getMore could lose a batch.
            let event = match stream.next_if_any().await {
                Ok(event) => event,
                Err(err) if history_lost(&err) => {
                    self.forget_history(&err).await?;
                    return Ok(Ended::Restart);
                }
                Err(err) => return Err(err.into()),
            };
            let token = stream.resume_token();
            // An empty batch: the stream had nothing more to give.
            let event_was_none = event.is_none();
            let (recorded, restart) = match event {
                Some(event) => {
                    let collection = event.ns.as_ref().and_then(|ns| ns.coll.as_deref());
                    self.presence.saw(collection);
                    let (change, restart) = self.change_of(&event).await?;
                    (self.record(token.as_ref(), Some(&change)).await?, restart)
                }
                // An empty batch still moves the stream's position on.
                None if token != saved => {
                    self.presence.caught_up();
                    (self.record(token.as_ref(), None).await?, false)
                }
                None => {
                    self.presence.caught_up();
                    (Changed::Queued(0), false)
                }
            };
            if event_was_none {
                crate::metrics::worker_caught_up();
            }
            match recorded {
                Changed::Queued(_) if restart => return Ok(Ended::Restart),
                Changed::Queued(_) => {}
                Changed::LeaseLost => return Ok(Ended::LeaseLost),
                // Not recorded: replayed from the saved position.
                Changed::Moved => return Ok(self.moved()),
            }
            self.last_token.clone_from(&token);
            saved = token;
        }
    }

    async fn open(
        &self,
        saved: Option<ResumeToken>,
    ) -> mongodb::error::Result<ChangeStream<ChangeStreamEvent<bson::Document>>> {
        // The whole database, unfiltered: a collection that gains its first
        // dependant later is covered without restarting the stream. With
        // the documents before each change where the collection keeps them
        // (changeStreamPreAndPostImages): a related document's earlier
        // targets.
        let watch = self
            .db
            .watch()
            .max_await_time(self.options.await_time)
            .full_document_before_change(FullDocumentBeforeChangeType::WhenAvailable);
        let stream = match saved {
            Some(token) => watch.start_after(token).await?,
            None => watch.await?,
        };
        Ok(stream)
    }

    /// What a change event tells the scripts, and whether the stream must
    /// be reopened after it (it was invalidated).
    async fn change_of(&self, event: &ChangeStreamEvent<bson::Document>) -> Result<(Change, bool)> {
        let (tokens, restart) = self.tokens_of(event).await?;
        let op = match event.operation_type {
            OperationType::Insert => "i",
            OperationType::Update => "u",
            OperationType::Replace => "r",
            OperationType::Delete => "d",
            _ => "",
        };
        let before = match &event.full_document_before_change {
            Some(document) if !op.is_empty() => {
                Some(bson::to_vec(document).map_err(|err| Error::Serialize {
                    what: "pre-image",
                    message: err.to_string(),
                })?)
            }
            _ => None,
        };
        let change = Change {
            tokens,
            op,
            before,
            time: event.cluster_time.map(timestamp_key),
        };
        Ok((change, restart))
    }

    /// The dependency tokens a change touches, and whether the stream must
    /// be reopened after it (it was invalidated).
    async fn tokens_of(
        &self,
        event: &ChangeStreamEvent<bson::Document>,
    ) -> Result<(Vec<String>, bool)> {
        let coll = event.ns.as_ref().and_then(|ns| ns.coll.clone());
        match (&event.operation_type, coll) {
            (
                OperationType::Insert
                | OperationType::Update
                | OperationType::Replace
                | OperationType::Delete,
                Some(coll),
            ) => {
                let mut tokens = vec![format!("c:{coll}")];
                let id = event
                    .document_key
                    .as_ref()
                    .and_then(|key| key.get("_id"))
                    .and_then(EntityId::from_bson);
                if let Some(id) = id {
                    tokens.push(id.token(&coll));
                }
                Ok((tokens, false))
            }
            (OperationType::Drop | OperationType::Rename, Some(coll)) => {
                tracing::warn!(collection = coll, "smache worker: a collection was dropped or renamed; refreshing everything that depends on it");
                Ok((self.collection_tokens(&coll).await?, false))
            }
            (OperationType::Invalidate, _) => Ok((Vec::new(), true)),
            (other, coll) => {
                tracing::warn!(operation = ?other, collection = ?coll, "smache worker: a change smache cannot map to documents; marking every value stale");
                self.mark_everything_stale(Unseen::Unmappable).await?;
                Ok((Vec::new(), false))
            }
        }
    }

    /// Every token of a collection: the collection itself and each of its
    /// documents that some value depends on.
    async fn collection_tokens(&self, coll: &str) -> Result<Vec<String>> {
        let prefix = format!("{}r:", self.keys.base);
        let mut tokens = vec![format!("c:{coll}")];
        let pattern = format!("{prefix}e:{}:*", crate::store::keys::glob_escape(coll));
        for key in self.store.scan(&pattern).await? {
            if let Some(token) = key.strip_prefix(&prefix) {
                tokens.push(token.to_owned());
            }
        }
        Ok(tokens)
    }

    /// Saves the stream's new position `token`, reached after `change`
    /// (none: an empty batch, or where a stream starts), with the jobs of
    /// the change, in one script, if the saved position is still the one
    /// this worker knows.
    async fn record(
        &mut self,
        token: Option<&ResumeToken>,
        change: Option<&Change>,
    ) -> Result<Changed> {
        let bytes = match token {
            Some(token) => encode_token(token)?,
            None => Vec::new(),
        };
        // The token's own time where it says (a post-batch token may be
        // later than the batch's last event), else the event's.
        let time = token
            .and_then(token_time)
            .max(change.and_then(|change| change.time));
        let seen = Seen {
            resume: &bytes,
            time,
            op: change.map_or("", |change| change.op),
            before: change.and_then(|change| change.before.as_deref()),
            tokens: change.map_or(&[], |change| &change.tokens),
        };
        let recorded = self
            .store
            .changed(&self.keys, &self.id, &self.position, &seen)
            .await?;
        if let Changed::Queued(queued) = recorded {
            if let Some(change) = change {
                crate::metrics::change_handled(change.time, queued);
            }
            self.presence.saved(time);
            if queued > 0 {
                tracing::debug!(queued, "smache worker: recompute jobs queued");
            }
            if !bytes.is_empty() {
                self.position = bytes;
            }
        }
        Ok(recorded)
    }

    /// The saved position is not the one this worker saved: Redis lost it
    /// (restarted empty, FLUSHALL) or holds an older one (an older
    /// snapshot, without the jobs queued since). Watch again from what is
    /// saved (replaying the gap), else from this worker's last position.
    fn moved(&self) -> Ended {
        tracing::warn!(
            worker = %self.id,
            "smache worker: the saved resume token is not the one this worker saved (Redis lost \
             its data, or came back from an older snapshot); restarting the watch from it"
        );
        Ended::Restart
    }

    /// What the token key holds (empty: nothing).
    async fn saved_bytes(&self) -> Result<Vec<u8>> {
        let mut conn = self.store.shared().await?;
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&self.keys.token)
            .query_async(&mut conn)
            .await?;
        Ok(bytes.unwrap_or_default())
    }

    /// The saved position, which this worker now takes for its own.
    async fn saved_token(&mut self) -> Result<Option<ResumeToken>> {
        let bytes = self.saved_bytes().await?;
        self.position.clone_from(&bytes);
        if bytes.is_empty() {
            return Ok(None);
        }
        match decode_token(&bytes) {
            Some(token) => Ok(Some(token)),
            None => {
                tracing::error!("smache worker: the saved resume token is corrupt; treating the history as lost: every value will be marked stale");
                self.owe_stale_marking(Unseen::Lost).await?;
                self.position.clear();
                Ok(None)
            }
        }
    }

    /// Stores the settings the scripts read (`{prefix}:config`).
    async fn publish_config(&self) -> Result<()> {
        let mut conn = self.store.shared().await?;
        let _: () = redis::cmd("HSET")
            .arg(format!("{}config", self.keys.base))
            .arg("max_fanout")
            .arg(self.options.max_fanout)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Where to start when Redis holds no position: where this worker last
    /// was, if it watched before (Redis lost its data while we ran: replay
    /// the changes since); else from now, owing a stale-marking of every
    /// value stored so far, since changes made before the stream opens
    /// would never reach them (a first start finds few; a Redis that came
    /// back empty while no worker watched finds the values stored since).
    async fn position_when_none_is_saved(&self) -> Result<Option<ResumeToken>> {
        if let Some(token) = &self.last_token {
            tracing::warn!(
                "smache worker: Redis holds no resume token (it restarted empty?); resuming from \
                 this worker's last position"
            );
            return Ok(Some(token.clone()));
        }
        tracing::info!(
            "smache worker: no saved position; watching from now, and marking the values stored \
             before stale"
        );
        self.owe_stale_marking(Unseen::BeforeStart).await?;
        Ok(None)
    }

    async fn forget_history(&mut self, err: &mongodb::error::Error) -> Result<()> {
        // This worker's own last position is as gone as the saved one.
        self.last_token = None;
        tracing::error!(
            error = %err,
            "smache worker: MongoDB no longer has the change history after the saved resume token \
             (the worker was down longer than the oplog window); changes in that gap cannot be \
             replayed, so every cached value is marked stale and will be recomputed"
        );
        self.owe_stale_marking(Unseen::Lost).await
    }

    /// Records that everything must be marked stale, and why, and drops
    /// the token, in one step, so whichever worker watches next does it.
    async fn owe_stale_marking(&self, why: Unseen) -> Result<()> {
        let mut conn = self.store.shared().await?;
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&self.keys.lost)
            .arg(why.marker())
            .ignore()
            .cmd("DEL")
            .arg(&self.keys.token)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Why marking every value stale is owed, if it is.
    async fn stale_marking_owed(&self) -> Result<Option<Unseen>> {
        let mut conn = self.store.shared().await?;
        let marker: Option<String> = redis::cmd("GET")
            .arg(&self.keys.lost)
            .query_async(&mut conn)
            .await?;
        Ok(marker.map(|marker| Unseen::of_marker(&marker)))
    }

    async fn mark_everything_stale(&self, why: Unseen) -> Result<()> {
        let (values, queued) = self
            .store
            .mark_matching_stale(&self.keys.base, "*", false)
            .await?;
        match why {
            // The documented first start: no cause for alarm.
            Unseen::BeforeStart => tracing::info!(
                values,
                queued,
                "smache worker: marked the values stored before it watched stale; their \
                 recomputes are queued"
            ),
            Unseen::Lost | Unseen::Unmappable => {
                tracing::warn!(values, queued, "smache worker: marked every value stale");
            }
        }
        Ok(())
    }

    /// Tells applications and `inspect` this worker is alive, what it
    /// watches and how far behind it is (`{prefix}:workers`), for twice
    /// the lease.
    async fn announce(&self) {
        let record = self.presence.record();
        let lives = self.options.lease * 2;
        if let Err(err) = self
            .store
            .heartbeat(&self.keys.base, &self.id, &record, lives)
            .await
        {
            tracing::debug!(error = %err, "smache worker: cannot announce itself");
        }
    }

    async fn release(&self) {
        if let Err(err) = self.store.retire(&self.keys.base, &self.id).await {
            tracing::debug!(error = %err, "smache worker: cannot withdraw its announcement; it will expire");
        }
        let Ok(mut conn) = self.store.shared().await else {
            return;
        };
        let released: redis::RedisResult<i64> = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(&self.keys.lease)
        .arg(&self.id)
        .invoke_async(&mut conn)
        .await;
        if let Err(err) = released {
            tracing::debug!(error = %err, "smache worker: could not release the lease; it will expire");
        }
    }
}

/// Why changes may have gone unseen, so that every value is marked stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unseen {
    /// No position was saved: a first start (or Redis came back empty
    /// while no worker watched); the changes before it are unknown.
    BeforeStart,
    /// MongoDB no longer has the history after the saved position, or
    /// the saved position is corrupt.
    Lost,
    /// A change smache cannot map to documents.
    Unmappable,
}

impl Unseen {
    /// What `{prefix}:w:lost` holds while the marking is owed.
    fn marker(self) -> &'static str {
        match self {
            Unseen::BeforeStart => "start",
            Unseen::Lost | Unseen::Unmappable => "lost",
        }
    }

    /// Any other marker (`1`, from older workers) is lost history.
    fn of_marker(marker: &str) -> Self {
        if marker == "start" {
            Unseen::BeforeStart
        } else {
            Unseen::Lost
        }
    }
}

/// What one change event means to smache.
struct Change {
    /// The dependency tokens it touches.
    tokens: Vec<String>,
    /// Its kind, as `change.lua` takes it.
    op: &'static str,
    /// The document before the change (BSON), when MongoDB gave it.
    before: Option<Vec<u8>>,
    /// Its cluster time ([`timestamp_key`]).
    time: Option<u64>,
}

/// A cluster time as one number that orders as the time does:
/// `seconds << 32 | increment`.
pub(crate) fn timestamp_key(time: bson::Timestamp) -> u64 {
    (u64::from(time.time) << 32) | u64::from(time.increment)
}

/// The cluster time a resume token stands for, where it says: MongoDB's
/// tokens (4.2 on) are `{_data: "<hex>"}` whose first byte, 0x82, tags the
/// Timestamp that follows (seconds and increment, big-endian). `None` for
/// a token of another form.
fn token_time(token: &ResumeToken) -> Option<u64> {
    let value = bson::to_bson(token).ok()?;
    let data = value.as_document()?.get_str("_data").ok()?;
    let hex = data.get(..18)?;
    if !hex.starts_with("82") {
        return None;
    }
    let seconds = u32::from_str_radix(&hex[2..10], 16).ok()?;
    let increment = u32::from_str_radix(&hex[10..18], 16).ok()?;
    Some(timestamp_key(bson::Timestamp {
        time: seconds,
        increment,
    }))
}

/// The server cannot resume from the token: the history is gone.
fn history_lost(err: &mongodb::error::Error) -> bool {
    // 286 ChangeStreamHistoryLost, 280 ChangeStreamFatalError,
    // 136 CappedPositionLost.
    matches!(&*err.kind, ErrorKind::Command(cmd) if matches!(cmd.code, 286 | 280 | 136))
}

fn encode_token(token: &ResumeToken) -> Result<Vec<u8>> {
    let value = bson::to_bson(token).map_err(|err| Error::Serialize {
        what: "resume token",
        message: err.to_string(),
    })?;
    bson::to_vec(&doc! { "t": value }).map_err(|err| Error::Serialize {
        what: "resume token",
        message: err.to_string(),
    })
}

fn decode_token(bytes: &[u8]) -> Option<ResumeToken> {
    let doc: bson::Document = bson::from_slice(bytes).ok()?;
    bson::from_bson(doc.get("t")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(data: &str) -> ResumeToken {
        bson::from_bson(bson::bson!({ "_data": data })).unwrap()
    }

    #[test]
    fn resume_tokens_tell_their_cluster_time() {
        // MongoDB's form: 0x82, then seconds and increment, big-endian.
        let mongodb = token("82654A1B2C0000000A2B022C0100296E5A1004");
        assert_eq!(
            token_time(&mongodb),
            Some(timestamp_key(bson::Timestamp {
                time: 0x654A_1B2C,
                increment: 10
            }))
        );
        assert!(
            timestamp_key(bson::Timestamp {
                time: 2,
                increment: 0
            }) > timestamp_key(bson::Timestamp {
                time: 1,
                increment: u32::MAX
            })
        );
        for other in ["", "82", "83654A1B2C0000000A", "82zz4A1B2C0000000A"] {
            assert_eq!(token_time(&token(other)), None, "{other:?}");
        }
    }

    #[test]
    fn the_scripts_default_fanout_limit_is_the_documented_one() {
        let common = include_str!("../lua/common.lua");
        assert!(
            common.contains(&format!(
                "local DEFAULT_MAX_FANOUT = {DEFAULT_MAX_FANOUT}\n"
            )),
            "lua/common.lua and worker::DEFAULT_MAX_FANOUT disagree"
        );
    }
}
