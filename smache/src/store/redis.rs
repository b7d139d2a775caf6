//! The Redis store.
//!
//! Each value is a small hash (`v` value version, `d` envelope, `g`/`w`
//! change generations; see `lua/common.lua`), read with one `HMGET` and
//! written, with its dependency edges, by one `EVALSHA` of `lua/store.lua`. One
//! shared connection ([`Conn`]: to one server, a multiplexed connection that
//! reconnects by itself; or to a Redis Cluster) serves every call; it is
//! made on first use and connects lazily, so an application starts even
//! while Redis is down. Every operation is bounded
//! by the instance's timeout, and goes through a circuit breaker
//! ([`Breaker`]): once an operation finds Redis unreachable, the others
//! skip it until a probe, run in the background, finds it back, so callers
//! fall back to computing at once instead of each waiting for a timeout.
//!
//! This file holds the connection, the breaker plumbing and the scripts;
//! the operations are grouped by concern in its submodules: `values` (read,
//! compute lease, store, alias, drop), `alias` (aliases on a store of
//! several shards, step by step), `tasks` (submitted tasks), `jobs`
//! (what executors do with the jobs stream), `signal` (signalling
//! dependants as changed) and `watch` (the worker's lease, position and
//! stale-marking).

pub(super) mod stream;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::breaker::{Breaker, Gate, Probe};
use super::keys::{self, WorkerKeys};
use super::layer::Layer;
use super::notify::Notifier;
use super::script::StoreScript;
use crate::error::{Error, Result};

mod alias;
mod conn;
mod jobs;
mod pipeline;
mod relations;
mod scan;
mod shard_count;
mod signal;
mod sweep;
mod tasks;
mod tracking;
mod values;
mod watch;

pub(crate) use self::conn::{Conn, Endpoint};
pub(crate) use self::jobs::{Abandon, Start};
pub(crate) use self::scan::Scan;
use self::shard_count::ShardCount;
pub(crate) use self::signal::Related;
pub(crate) use self::stream::EntryRef;
pub(crate) use self::sweep::GraphSweep;
pub use self::sweep::Swept;
pub(crate) use self::tasks::{TaskPhase, TaskState};
use self::tracking::Tracking;
pub(crate) use self::values::Begin;
pub(crate) use self::watch::{timestamp_key, Changed, Owed, Seen};

pub(crate) struct RedisStore {
    /// `{prefix}:`, the start of every key of the instance (see
    /// [`keys`]); the scripts are given it to build the graph's keys.
    pub(super) base: String,
    /// Where each value's keys live (one shard: all under `base`).
    pub(super) shards: super::shards::Shards,
    /// Whether the instance spreads its keys over as many shards.
    shard_count: Arc<ShardCount>,
    /// The worker's keys, from `base`.
    worker: WorkerKeys,
    /// Where connections go; `None` when the store was given a connection
    /// manager and knows no more.
    endpoint: Option<Endpoint>,
    /// The shared connection, made on first use, and made anew when the
    /// breaker's probe finds it stuck (see [`RedisStore::admit`]).
    shared: Arc<RwLock<Option<Conn>>>,
    breaker: Arc<Breaker>,
    scripts: Scripts,
    timeout: Duration,
    notifier: tokio::sync::Mutex<Option<Notifier>>,
    /// The in-process layer in front, with its tracking connection.
    tracking: Option<Tracking>,
}

/// The Lua scripts, each with `lua/common.lua` in front (but the worker's
/// lease scripts and `sweep.lua`, which need none of it, and `start.lua`,
/// which needs only `lua/start_value.lua`).
struct Scripts {
    begin: StoreScript,
    store: StoreScript,
    drop: StoreScript,
    start: StoreScript,
    change: StoreScript,
    touch: StoreScript,
    relation: StoreScript,
    lease: StoreScript,
    resign: StoreScript,
    stale: StoreScript,
    relate: StoreScript,
    refresh: StoreScript,
    release: StoreScript,
    renew: StoreScript,
    alias: StoreScript,
    alias_link: StoreScript,
    alias_point: StoreScript,
    alias_set: StoreScript,
    edge: StoreScript,
    fanout: StoreScript,
    spread: StoreScript,
    dead: StoreScript,
    submit: StoreScript,
    finish: StoreScript,
    attach: StoreScript,
    sweep: StoreScript,
}

macro_rules! script {
    ($file:literal) => {
        StoreScript::new(concat!(
            include_str!("../../lua/common.lua"),
            include_str!(concat!("../../lua/", $file))
        ))
    };
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            begin: script!("begin.lua"),
            store: script!("store.lua"),
            drop: script!("drop.lua"),
            start: StoreScript::new(concat!(
                include_str!("../../lua/start_value.lua"),
                include_str!("../../lua/start.lua")
            )),
            change: script!("change.lua"),
            touch: script!("touch.lua"),
            relation: script!("relation.lua"),
            lease: StoreScript::new(include_str!("../../lua/lease.lua")),
            resign: StoreScript::new(include_str!("../../lua/resign.lua")),
            stale: script!("stale.lua"),
            relate: script!("relate.lua"),
            refresh: script!("refresh.lua"),
            release: script!("release.lua"),
            renew: script!("renew.lua"),
            alias: script!("alias.lua"),
            alias_link: script!("alias_link.lua"),
            alias_point: script!("alias_point.lua"),
            alias_set: script!("alias_set.lua"),
            edge: script!("edge.lua"),
            fanout: script!("fanout.lua"),
            spread: script!("spread.lua"),
            dead: script!("dead.lua"),
            submit: script!("submit.lua"),
            finish: script!("finish.lua"),
            attach: script!("attach.lua"),
            sweep: StoreScript::new(include_str!("../../lua/sweep.lua")),
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, and with it possibly a password: leave it out.
        f.debug_struct("RedisStore")
            .field("endpoint", &self.endpoint)
            .field("connected", &read(&self.shared).is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    pub(crate) fn from_endpoint(endpoint: Endpoint, timeout: Duration, prefix: &str) -> Self {
        Self::with(Some(endpoint), None, timeout, prefix)
    }

    pub(crate) fn from_manager(
        manager: ConnectionManager,
        timeout: Duration,
        prefix: &str,
    ) -> Self {
        Self::with(None, Some(Conn::Server(manager)), timeout, prefix)
    }

    fn with(
        endpoint: Option<Endpoint>,
        shared: Option<Conn>,
        timeout: Duration,
        prefix: &str,
    ) -> Self {
        let base = keys::base(prefix);
        RedisStore {
            worker: WorkerKeys::new(&base),
            shards: super::shards::Shards::new(prefix, 1),
            shard_count: ShardCount::new(prefix, &base, 1),
            base,
            endpoint,
            shared: Arc::new(RwLock::new(shared)),
            breaker: Arc::new(Breaker::new(prefix)),
            scripts: Scripts::new(),
            notifier: tokio::sync::Mutex::new(None),
            timeout,
            tracking: None,
        }
    }

    /// Puts an in-process layer of `capacity` bytes in front (none if 0,
    /// or without a client to open its tracking connection with). Its
    /// tracking connection opens at once, in the background. None on a
    /// Redis Cluster yet: its invalidations come from each node (#16).
    pub(crate) fn with_layer(mut self, capacity: u64) -> Self {
        match (&self.endpoint, capacity > 0) {
            (Some(Endpoint::Server(client)), true) => {
                let layer = Arc::new(Layer::new(capacity, self.breaker.prefix()));
                self.tracking = Some(Tracking::start(client, layer, self.timeout));
            }
            (Some(endpoint), true) if endpoint.is_cluster() => tracing::info!(
                prefix = self.breaker.prefix(),
                "smache: no in-process layer on Redis Cluster yet; every hit reads Redis"
            ),
            _ => {}
        }
        self
    }

    /// Spreads the values over `count` shards (see `store::shards`).
    pub(crate) fn with_shards(mut self, count: usize) -> Self {
        self.shards = super::shards::Shards::new(self.breaker.prefix(), count);
        self.shard_count = ShardCount::new(self.breaker.prefix(), &self.base, self.shards.count());
        self
    }

    /// The storage key of value `id`: `{prefix[:tag]}:v:<id>`.
    pub(crate) fn value_key(&self, id: &str) -> String {
        keys::value(self.shards.base_of(id), id)
    }

    /// The in-process layer, if there is one.
    pub(crate) fn layer(&self) -> Option<&Layer> {
        self.tracking.as_ref().map(Tracking::layer)
    }

    /// The shared connection, made on first use (see [`Endpoint::shared`]).
    pub(super) fn shared(&self) -> Result<Conn> {
        if let Some(conn) = read(&self.shared).as_ref() {
            return Ok(conn.clone());
        }
        let mut slot = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let endpoint = self.endpoint.as_ref().ok_or(Error::Unavailable)?;
        let conn = endpoint.shared(self.timeout)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Whether an operation may go to Redis: `Err(Unavailable)` at once
    /// while the breaker is open, starting the due probe, if any, in the
    /// background.
    pub(super) fn admit(&self) -> Result<()> {
        match self.breaker.gate(Instant::now()) {
            Gate::Pass => Ok(()),
            Gate::Skip => Err(Error::Unavailable),
            Gate::Probe => {
                let probe = Probe::new(Arc::clone(&self.breaker));
                let conn = self.shared();
                let timeout = self.timeout;
                let bases = self.probed_bases();
                let renewal = match &self.endpoint {
                    Some(endpoint) if endpoint.is_cluster() => Some((
                        endpoint.clone(),
                        Arc::clone(&self.shared),
                        self.breaker.prefix().to_owned(),
                    )),
                    _ => None,
                };
                crate::runtime::spawn(async move {
                    let answered = match conn {
                        Ok(conn) => ping(conn, &bases, timeout).await,
                        Err(err) => Err(err),
                    };
                    let answered = match (answered, renewal) {
                        (Err(Error::Timeout { .. }), Some((endpoint, shared, prefix))) => {
                            renew(&endpoint, &shared, &bases, timeout, &prefix).await
                        }
                        (answered, _) => answered,
                    };
                    probe.report(answered.as_ref().map(|_| ()));
                });
                Err(Error::Unavailable)
            }
        }
    }

    /// The key bases the breaker's probe asks about: the instance's own,
    /// and each shard's if there are several.
    fn probed_bases(&self) -> Vec<String> {
        let shards = self.shards.bases().filter(|_| self.shards.count() > 1);
        std::iter::once(self.base.as_str())
            .chain(shards)
            .map(str::to_owned)
            .collect()
    }

    /// The shared connection, for an operation that may go to Redis now:
    /// the breaker is shut and the instance uses this process's shard
    /// count (asked on first use, see `shard_count`).
    pub(super) async fn connection(&self) -> Result<Conn> {
        self.admitted().await?;
        self.shared()
    }

    /// Whether an operation may go to Redis now: the breaker is shut and
    /// the instance uses this process's shard count, which costs one
    /// question to Redis on first use, and an atomic load after (a failure
    /// to ask opens the breaker as any operation's would).
    async fn admitted(&self) -> Result<()> {
        self.admit()?;
        if let Some(settled) = self.shard_count.settled() {
            return settled;
        }
        let agreed = self
            .shard_count
            .agreed(&self.shared()?, &self.shared, self.timeout)
            .await;
        if let Err(err) = &agreed {
            if err.is_unreachable() {
                self.breaker.failed(err, Instant::now());
            }
        }
        agreed
    }

    /// Runs `fut` within the operation timeout; a failure to reach Redis
    /// opens the breaker.
    pub(super) async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let result = self.timed(op, fut).await;
        if let Err(err) = &result {
            if err.is_unreachable() {
                self.breaker.failed(err, Instant::now());
            }
        }
        result
    }

    /// Runs `fut` within the operation timeout, and leaves the breaker
    /// alone: for background upkeep (the graph sweep), whose failure to
    /// reach one node says nothing of the calls' connection.
    pub(super) async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result.map_err(Error::Redis),
            Err(_) => Err(Error::Timeout {
                op,
                timeout: self.timeout,
            }),
        }
    }

    /// A connection of its own, for blocking reads (`XREADGROUP BLOCK`)
    /// that must not hold up the shared one. `None` when the store was
    /// built from a connection manager and knows no URL.
    pub(crate) async fn dedicated(&self) -> Result<Option<Conn>> {
        let Some(endpoint) = &self.endpoint else {
            return Ok(None);
        };
        self.admitted().await?;
        // Blocking reads wait up to `BLOCK_FOR` for a reply: allow for it.
        let connect = endpoint.dedicated(self.timeout, BLOCK_FOR + self.timeout);
        self.bounded("connect", connect).await.map(Some)
    }

    /// Where the store connects, if it knows.
    pub(crate) fn endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }
}

/// A cluster connection that gave the probe no answer at all may be stuck
/// rather than its cluster down: redis-rs's async cluster connection was
/// seen, after a master's failover under load (`tests/cluster_chaos.rs`
/// at 48 shards), to time out every command from then on while a new
/// connection to the same cluster answered at once. So the probe asks over
/// a new connection too, and if that one answers, it replaces the shared
/// one (the old one goes with its last clone).
async fn renew(
    endpoint: &Endpoint,
    shared: &RwLock<Option<Conn>>,
    bases: &[String],
    timeout: Duration,
    prefix: &str,
) -> Result<()> {
    let fresh = endpoint.shared(timeout)?;
    ping(fresh.clone(), bases, timeout).await?;
    tracing::warn!(
        prefix,
        "smache: the Redis Cluster connection gave no answer while a new one did; using the new \
         one"
    );
    *shared.write().unwrap_or_else(PoisonError::into_inner) = Some(fresh);
    Ok(())
}

/// The shared connection slot, read (recovering it if a writer panicked:
/// it holds a connection or none, valid either way).
fn read(shared: &RwLock<Option<Conn>>) -> std::sync::RwLockReadGuard<'_, Option<Conn>> {
    shared.read().unwrap_or_else(PoisonError::into_inner)
}

/// Asks Redis whether it serves the store (whose keys start with
/// `bases`), within `timeout` (on a cluster, the masters of the store's
/// slots, none moving: see [`Conn::ping`]). A manager that had given up its
/// connection fails the first command at once and starts reconnecting:
/// the second waits for that.
async fn ping(mut conn: Conn, bases: &[String], timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut again = true;
    loop {
        let pong = conn.ping(bases);
        match tokio::time::timeout_at(deadline, pong).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) if again && err.is_io_error() => again = false,
            Ok(Err(err)) => return Err(Error::Redis(err)),
            Err(_) => {
                return Err(Error::Timeout {
                    op: "probe",
                    timeout,
                })
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How long a blocking read (`XREADGROUP BLOCK`) waits for jobs.
pub(crate) const BLOCK_FOR: Duration = Duration::from_secs(1);

fn parse_u64(bytes: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(bytes?).ok()?.parse().ok()
}

fn is_wrong_type(err: &redis::RedisError) -> bool {
    err.code() == Some("WRONGTYPE")
}
