//! The Redis store.
//!
//! Each value is a small hash (`v` value version, `d` envelope, `g`/`w`
//! change generations; see `lua/common.lua`), read with one `HMGET` and
//! written, with its dependency edges, by one `EVALSHA` of `lua/store.lua`. One
//! [`ConnectionManager`] (a multiplexed connection that reconnects by itself)
//! serves every call; it is made on first use and connects lazily, so an
//! application starts even while Redis is down. Every operation is bounded
//! by the instance's timeout, and goes through a circuit breaker
//! ([`Breaker`]): once an operation finds Redis unreachable, the others
//! skip it until a probe, run in the background, finds it back, so callers
//! fall back to computing at once instead of each waiting for a timeout.

pub(super) mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamRangeReply;
use redis::{Client, Script};

use tokio::sync::oneshot;

use super::breaker::{Breaker, Gate, Probe};
use super::keys::{self, WorkerKeys};
use super::notify::Notifier;
use super::{Lookup, Put, Slot};
use crate::error::{Error, Result};
use crate::spec::Refresh;

pub(crate) struct RedisStore {
    client: Option<Client>,
    manager: OnceCell<ConnectionManager>,
    breaker: Arc<Breaker>,
    scripts: Scripts,
    timeout: Duration,
    notifier: tokio::sync::Mutex<Option<Notifier>>,
}

/// The Lua scripts, each with `lua/common.lua` in front.
struct Scripts {
    begin: Script,
    store: Script,
    drop: Script,
    start: Script,
    change: Script,
    lease: Script,
    stale: Script,
    relate: Script,
    refresh: Script,
    release: Script,
    renew: Script,
    alias: Script,
    fanout: Script,
    dead: Script,
    submit: Script,
    finish: Script,
    attach: Script,
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
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
            start: script!("start.lua"),
            change: script!("change.lua"),
            lease: Script::new(include_str!("../../lua/lease.lua")),
            stale: script!("stale.lua"),
            relate: script!("relate.lua"),
            refresh: script!("refresh.lua"),
            release: script!("release.lua"),
            renew: script!("renew.lua"),
            alias: script!("alias.lua"),
            fanout: script!("fanout.lua"),
            dead: script!("dead.lua"),
            submit: script!("submit.lua"),
            finish: script!("finish.lua"),
            attach: script!("attach.lua"),
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, and with it possibly a password: leave it out.
        f.debug_struct("RedisStore")
            .field("connected", &self.manager.get().is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    pub(crate) fn from_client(client: Client, timeout: Duration, prefix: &str) -> Self {
        Self::with(Some(client), OnceCell::new(), timeout, prefix)
    }

    pub(crate) fn from_manager(
        manager: ConnectionManager,
        timeout: Duration,
        prefix: &str,
    ) -> Self {
        Self::with(None, OnceCell::with_value(manager), timeout, prefix)
    }

    fn with(
        client: Option<Client>,
        manager: OnceCell<ConnectionManager>,
        timeout: Duration,
        prefix: &str,
    ) -> Self {
        RedisStore {
            client,
            manager,
            breaker: Arc::new(Breaker::new(prefix)),
            scripts: Scripts::new(),
            notifier: tokio::sync::Mutex::new(None),
            timeout,
        }
    }

    /// The shared connection manager, made on first use. It connects
    /// lazily (the first command waits for the connection, within the
    /// operation's bound) and makes one attempt per reconnection: the
    /// breaker's probes do the retrying, so no command waits for a series
    /// of attempts.
    fn manager(&self) -> Result<ConnectionManager> {
        self.manager
            .get_or_try_init(|| {
                let client = self.client.clone().ok_or(Error::Unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(0);
                Ok(ConnectionManager::new_lazy_with_config(client, config)?)
            })
            .cloned()
    }

    /// Whether an operation may go to Redis: `Err(Unavailable)` at once
    /// while the breaker is open, starting the due probe, if any, in the
    /// background.
    fn admit(&self) -> Result<()> {
        match self.breaker.gate(Instant::now()) {
            Gate::Pass => Ok(()),
            Gate::Skip => Err(Error::Unavailable),
            Gate::Probe => {
                let probe = Probe::new(Arc::clone(&self.breaker));
                let manager = self.manager();
                let timeout = self.timeout;
                crate::runtime::spawn(async move {
                    let answered = match manager {
                        Ok(manager) => ping(manager, timeout).await,
                        Err(err) => Err(err),
                    };
                    probe.report(answered.as_ref().map(|_| ()));
                });
                Err(Error::Unavailable)
            }
        }
    }

    pub(super) async fn connection(&self) -> Result<ConnectionManager> {
        self.admit()?;
        self.manager()
    }

    /// Runs `fut` within the operation timeout; a failure to reach Redis
    /// opens the breaker.
    pub(super) async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result.map_err(Error::Redis),
            Err(_) => Err(Error::Timeout {
                op,
                timeout: self.timeout,
            }),
        };
        if let Err(err) = &result {
            if err.is_unreachable() {
                self.breaker.failed(err, Instant::now());
            }
        }
        result
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Lookup> {
        let mut conn = self.connection().await?;
        // Sized up front: no regrowth while the arguments are written.
        let mut cmd = redis::Cmd::with_capacity(10, key.len() + 16);
        cmd.arg("HMGET");
        cmd.arg(key)
            .arg("v")
            .arg("d")
            .arg("g")
            .arg("w")
            .arg("t")
            .arg("e")
            .arg("l")
            .arg("la");
        let reply = self
            .bounded("get", cmd.query_async::<[Option<Vec<u8>>; 8]>(&mut conn))
            .await;
        match reply {
            Ok([.., Some(link), args]) => Ok(Lookup::Alias {
                target: String::from_utf8_lossy(&link).into_owned(),
                full_args: String::from_utf8_lossy(&args.unwrap_or_default()).into_owned(),
            }),
            Ok([_, None, ..]) => Ok(Lookup::Miss),
            Ok([version, Some(data), generation, computed_from, stale_at, expires, None, _]) => {
                let Some(version) = parse_u64(version.as_deref()) else {
                    return Ok(Lookup::Foreign("the value version is not a number".into()));
                };
                let stale = parse_u64(generation.as_deref()).unwrap_or(0)
                    > parse_u64(computed_from.as_deref()).unwrap_or(0);
                Ok(Lookup::Hit {
                    version,
                    data,
                    stale_since_ms: stale.then(|| parse_u64(stale_at.as_deref()).unwrap_or(0)),
                    expired: parse_u64(expires.as_deref())
                        .is_some_and(|at| at <= crate::envelope::now_ms()),
                })
            }
            Err(Error::Redis(err)) if is_wrong_type(&err) => Ok(Lookup::Foreign(
                "the key holds a Redis type other than a hash".into(),
            )),
            Err(err) => Err(err),
        }
    }

    pub(crate) async fn begin(
        &self,
        slot: Slot<'_>,
        deps: &[String],
        owner: &str,
        lease: Duration,
        seen: &str,
    ) -> Result<Begin> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.begin.key(slot.key);
        invocation
            .arg(slot.base)
            .arg(slot.id)
            .arg(slot.full_args)
            .arg(BEGIN_LEASE_MS.max(millis(lease)))
            .arg(owner)
            .arg(millis(lease))
            .arg(seen)
            .arg(deps);
        let (verdict, number): (String, String) = self
            .bounded("begin", invocation.invoke_async(&mut conn))
            .await?;
        Ok(match verdict.as_str() {
            "wait" => Begin::Wait(Duration::from_millis(number.parse().unwrap_or(0))),
            "read" => Begin::Read(number),
            _ => Begin::Go(number.parse().unwrap_or(0)),
        })
    }

    /// Gives up a compute lease without storing, and wakes the waiters.
    pub(crate) async fn release(&self, slot: Slot<'_>, owner: &str) -> Result<()> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.release.key(slot.key);
        invocation.arg(slot.base).arg(slot.id).arg(owner);
        let _: i64 = self
            .bounded("release", invocation.invoke_async(&mut conn))
            .await?;
        Ok(())
    }

    /// Extends a compute lease; `false` if `owner` no longer holds it.
    pub(crate) async fn renew(&self, key: &str, owner: &str, lease: Duration) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.renew.key(key);
        invocation.arg(owner).arg(millis(lease));
        let renewed: i64 = self
            .bounded("renew", invocation.invoke_async(&mut conn))
            .await?;
        Ok(renewed == 1)
    }

    /// A receiver woken when the computation of `id` ends in any process;
    /// `None` when notifications are unavailable (callers poll instead).
    pub(crate) async fn waiter(&self, base: &str, id: &str) -> Option<oneshot::Receiver<()>> {
        let client = self.client.as_ref()?;
        self.admit().ok()?;
        let mut slot = self.notifier.lock().await;
        if !slot.as_ref().is_some_and(|n| n.is_alive()) {
            let channel = keys::done(base);
            match tokio::time::timeout(self.timeout, Notifier::start(client, &channel)).await {
                Ok(Ok(notifier)) => *slot = Some(notifier),
                _ => return None,
            }
        }
        slot.as_ref().map(|notifier| notifier.register(id))
    }

    pub(crate) async fn put(&self, put: Put<'_>) -> Result<Option<u64>> {
        let mut conn = self.connection().await?;
        let ttl = match put.ttl {
            Some(ttl) if !ttl.is_zero() => {
                // Redis takes expiries up to 2^63 ms; twice this must fit.
                let ms = u64::try_from(ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .min(MAX_TTL_MS);
                format!("{ms} {}", crate::envelope::now_ms().saturating_add(ms))
            }
            _ => "0".to_owned(),
        };
        let mark_stale = if put.refresh == Refresh::MarkStale {
            "1"
        } else {
            "0"
        };
        let mut invocation = self.scripts.store.key(put.slot.key);
        invocation
            .arg(put.slot.base)
            .arg(put.slot.id)
            .arg(put.data)
            .arg(ttl)
            .arg(put.started)
            .arg(put.slot.full_args)
            .arg(mark_stale)
            .arg(put.relations.len())
            .arg(put.relations)
            .arg(put.read.len());
        for (id, mark) in put.read {
            invocation.arg(id).arg(mark);
        }
        invocation.arg(put.deps);
        let version: i64 = self
            .bounded("store", invocation.invoke_async(&mut conn))
            .await?;
        Ok(u64::try_from(version).ok())
    }

    /// Makes `alias` stand for `target`; `None` for a cycle.
    pub(crate) async fn alias(&self, alias: Slot<'_>, target: Slot<'_>) -> Result<Option<String>> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.alias.key(alias.key);
        invocation
            .key(target.key)
            .arg(alias.base)
            .arg(alias.id)
            .arg(target.id)
            .arg(target.full_args);
        match self
            .bounded("alias", invocation.invoke_async::<String>(&mut conn))
            .await
        {
            Ok(named) => Ok(Some(named)),
            Err(Error::Redis(err)) if err.to_string().contains("cycle") => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub(crate) async fn drop_value(&self, slot: Slot<'_>) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.drop.key(slot.key);
        invocation.arg(slot.base).arg(slot.id);
        let existed: i64 = self
            .bounded("drop", invocation.invoke_async(&mut conn))
            .await?;
        Ok(existed > 0)
    }

    /// An executor takes a job: `Gone` if the value is gone, `Wait` if its
    /// last recompute started less than `interval` ago, else the generation
    /// to compute from and the full arguments ("" if the id has them).
    pub(crate) async fn start_job(&self, key: &str, interval: Duration) -> Result<Start> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.start.key(key);
        invocation.arg(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX));
        let reply: Option<(String, String)> = self
            .bounded("start", invocation.invoke_async(&mut conn))
            .await?;
        Ok(match reply {
            None => Start::Gone,
            Some((first, wait)) if first == "wait" => {
                Start::Wait(Duration::from_millis(wait.parse().unwrap_or(1)))
            }
            Some((generation, args)) => Start::Run {
                started: generation.parse().unwrap_or(0),
                full_args: args,
            },
        })
    }

    /// The worker saw a change (or an empty batch); queues the jobs and
    /// saves its position, if the saved token is `expected` (empty: none).
    pub(crate) async fn changed(
        &self,
        keys: &WorkerKeys,
        worker: &str,
        expected: &[u8],
        seen: &Seen<'_>,
    ) -> Result<Changed> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.change.key(&keys.token);
        invocation
            .key(&keys.lease)
            .key(&keys.time)
            .arg(&keys.base)
            .arg(worker)
            .arg(seen.resume)
            .arg(expected)
            .arg(seen.time.map_or_else(String::new, |time| time.to_string()))
            .arg(seen.op)
            .arg(seen.before.unwrap_or_default())
            .arg(seen.tokens);
        let queued: i64 = self
            .bounded("change", invocation.invoke_async(&mut conn))
            .await?;
        Ok(match queued {
            -1 => Changed::LeaseLost,
            -2 => Changed::Moved,
            n => Changed::Queued(u64::try_from(n).unwrap_or(0)),
        })
    }

    /// How far the worker has followed the change stream: the cluster time
    /// of its saved position (`seconds << 32 | increment`), if any, and the
    /// entry id of the newest job in the stream, if any; read together, so
    /// that every job queued for the changes up to that time is at or
    /// before that entry.
    pub(crate) async fn worker_progress(
        &self,
        keys: &WorkerKeys,
    ) -> Result<(Option<u64>, Option<String>)> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(&keys.time)
            .cmd("XREVRANGE")
            .arg(keys::jobs(&keys.base))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let (time, newest): (Option<String>, StreamRangeReply) = self
            .bounded("worker_progress", pipe.query_async(&mut conn))
            .await?;
        let newest = newest.ids.into_iter().next().map(|entry| entry.id);
        Ok((time.and_then(|time| time.parse().ok()), newest))
    }

    /// Whether a relation job queued at or before stream entry `upto` is
    /// still in the stream (waiting, or held by an executor).
    pub(crate) async fn relations_pending(&self, base: &str, upto: &str) -> Result<bool> {
        const PAGE: usize = 500;
        let mut conn = self.connection().await?;
        let jobs = keys::jobs(base);
        let mut from = "-".to_owned();
        loop {
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(&jobs).arg(&from).arg(upto).arg("COUNT").arg(PAGE);
            let page: StreamRangeReply = self
                .bounded("relations_pending", cmd.query_async(&mut conn))
                .await?;
            if page.ids.iter().any(|entry| entry.map.contains_key("rel")) {
                return Ok(true);
            }
            match page.ids.last() {
                Some(last) if page.ids.len() == PAGE => from = format!("({}", last.id),
                _ => return Ok(false),
            }
        }
    }

    /// Takes or renews the watcher lease; the fencing token, or `None` if
    /// another worker holds it.
    pub(crate) async fn lease(
        &self,
        keys: &WorkerKeys,
        worker: &str,
        ttl: Duration,
    ) -> Result<Option<u64>> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.lease.key(&keys.lease);
        invocation
            .key(&keys.fence)
            .arg(worker)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let fence: u64 = self
            .bounded("lease", invocation.invoke_async(&mut conn))
            .await?;
        Ok((fence > 0).then_some(fence))
    }

    /// One page of `SCAN … MATCH pattern`: the next cursor and the keys.
    async fn scan_page(
        conn: &mut ConnectionManager,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<String>)> {
        Ok(redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?)
    }

    /// Every key matching `pattern`.
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<String>> {
        let mut conn = self.connection().await?;
        let (mut cursor, mut keys) = (0, Vec::new());
        loop {
            let (next, page) = Self::scan_page(&mut conn, cursor, pattern).await?;
            keys.extend(page);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Signals as changed every value whose id matches `id_glob` (`lazy`:
    /// marks them stale with no recompute coming), a page of the scan at a
    /// time; how many values, and how many jobs queued.
    pub(crate) async fn mark_matching_stale(
        &self,
        base: &str,
        id_glob: &str,
        lazy: bool,
    ) -> Result<(usize, u64)> {
        let prefix = keys::value_prefix(base);
        let pattern = format!("{prefix}{id_glob}");
        let mut conn = self.connection().await?;
        let (mut cursor, mut values, mut queued) = (0, 0, 0);
        loop {
            let (next, keys) = Self::scan_page(&mut conn, cursor, &pattern).await?;
            let ids: Vec<String> = keys
                .iter()
                .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned))
                .collect();
            values += ids.len();
            for chunk in ids.chunks(500) {
                queued += self.mark_stale(base, chunk, lazy).await?;
            }
            if next == 0 {
                return Ok((values, queued));
            }
            cursor = next;
        }
    }

    /// Signals every value in `ids` as changed (`lazy`: marks them stale
    /// with no recompute coming).
    pub(crate) async fn mark_stale(&self, base: &str, ids: &[String], lazy: bool) -> Result<u64> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.stale.key(keys::jobs(base));
        invocation
            .arg(base)
            .arg(if lazy { "1" } else { "0" })
            .arg(ids);
        self.bounded("stale", invocation.invoke_async(&mut conn))
            .await
    }

    /// Refreshes the values of `head` that a related document maps to now
    /// and mapped to before its change; `None` when what it mapped to
    /// before is unknown (neither given nor recorded).
    pub(crate) async fn relate(
        &self,
        base: &str,
        head: &str,
        related: &Related<'_>,
    ) -> Result<Option<u64>> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.relate.key(keys::jobs(base));
        invocation
            .arg(base)
            .arg(head)
            .arg(related.source)
            .arg(related.target)
            .arg(if related.gone { "1" } else { "0" })
            .arg(if related.before.is_some() { "1" } else { "0" })
            .arg(related.now.len())
            .arg(related.now)
            .arg(related.before.unwrap_or_default());
        let queued: i64 = self
            .bounded("relate", invocation.invoke_async(&mut conn))
            .await?;
        Ok(u64::try_from(queued).ok())
    }

    /// Signals one chunk of the dependants of `token` (a fan-out job),
    /// queues the next and acknowledges `entry`; the number of recompute
    /// jobs queued.
    pub(crate) async fn fan_out(
        &self,
        base: &str,
        token: &str,
        cursor: &str,
        entry: &str,
        lazy: bool,
    ) -> Result<u64> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.fanout.key(keys::jobs(base));
        invocation
            .arg(base)
            .arg(token)
            .arg(cursor)
            .arg(entry)
            .arg(keys::GROUP)
            .arg(if lazy { "1" } else { "0" });
        self.bounded("fanout", invocation.invoke_async(&mut conn))
            .await
    }

    /// Moves job `entry` to the dead-letter stream with `reason` and
    /// acknowledges it, undoing what `abandon` says in the same step;
    /// false if it was gone already or another executor holds it now.
    pub(crate) async fn dead_letter(
        &self,
        base: &str,
        entry: &str,
        reason: &str,
        consumer: &str,
        abandon: Abandon<'_>,
    ) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.dead.key(keys::jobs(base));
        invocation
            .key(keys::dead(base))
            .arg(entry)
            .arg(keys::GROUP)
            .arg(reason)
            .arg(consumer)
            .arg(keys::DEAD_LETTERS_KEPT);
        match abandon {
            Abandon::Nothing => {}
            Abandon::Recompute { id } => {
                invocation.arg(base).arg(id).arg("").arg(0);
            }
            Abandon::Task {
                id,
                task,
                retention,
            } => {
                invocation
                    .arg(base)
                    .arg(id)
                    .arg(task)
                    .arg(millis(retention).max(1));
            }
        }
        let moved: i64 = self
            .bounded("dead_letter", invocation.invoke_async(&mut conn))
            .await?;
        Ok(moved == 1)
    }

    /// Queues a background refresh of a value past its time-to-live,
    /// found as `version` (see `lua/refresh.lua`).
    pub(crate) async fn refresh(&self, base: &str, id: &str, version: u64) -> Result<()> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.refresh.key(keys::jobs(base));
        invocation.arg(base).arg(id).arg(version);
        let _: i64 = self
            .bounded("refresh", invocation.invoke_async(&mut conn))
            .await?;
        Ok(())
    }

    /// Submits the computation of a value to the executors; the id of the
    /// task pending for it (`task` if there was none).
    pub(crate) async fn submit(
        &self,
        slot: Slot<'_>,
        task: &str,
        retention: Duration,
    ) -> Result<String> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.submit.key(slot.key);
        invocation
            .arg(slot.base)
            .arg(slot.id)
            .arg(slot.full_args)
            .arg(task)
            .arg(millis(retention).max(1));
        self.bounded("submit", invocation.invoke_async(&mut conn))
            .await
    }

    /// Finishes a pending task; `false` if it was not pending.
    pub(crate) async fn finish_task(
        &self,
        base: &str,
        task: &str,
        value_key: &str,
        result: &std::result::Result<Vec<u8>, String>,
        retention: Duration,
    ) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.finish.key(task_key(base, task));
        invocation.key(value_key).arg(base).arg(task);
        match result {
            Ok(data) => invocation.arg("d").arg(data.as_slice()),
            Err(message) => invocation.arg("f").arg(message.as_str()),
        };
        invocation.arg(millis(retention).max(1));
        let finished: i64 = self
            .bounded("finish", invocation.invoke_async(&mut conn))
            .await?;
        Ok(finished == 1)
    }

    /// Attaches a callback to a task; `false` if the task is unknown.
    pub(crate) async fn attach(
        &self,
        base: &str,
        task: &str,
        callback: &str,
        args: &str,
    ) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.attach.key(task_key(base, task));
        invocation.arg(base).arg(task).arg(callback).arg(args);
        let attached: i64 = self
            .bounded("attach", invocation.invoke_async(&mut conn))
            .await?;
        Ok(attached == 1)
    }

    /// A task's state; `None` if it is unknown.
    pub(crate) async fn task(&self, base: &str, task: &str) -> Result<Option<TaskState>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(task_key(base, task)).arg("s").arg("r").arg("v");
        match self
            .bounded("task", cmd.query_async::<[Option<Vec<u8>>; 3]>(&mut conn))
            .await
        {
            Ok([Some(state), result, value]) => Ok(Some(TaskState {
                state: state.first().copied().unwrap_or(b'?'),
                result: result.unwrap_or_default(),
                value_id: String::from_utf8_lossy(&value.unwrap_or_default()).into_owned(),
            })),
            Ok([None, ..]) => Ok(None),
            Err(Error::Redis(err)) if is_wrong_type(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// How many entries the job stream holds: waiting, and held by
    /// executors (acknowledged jobs are deleted); 0 when it does not exist.
    pub(crate) async fn job_queue_length(&self, base: &str) -> Result<u64> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(keys::jobs(base));
        self.bounded("xlen", cmd.query_async(&mut conn)).await
    }

    /// The shared connection, for the worker and executors.
    pub(crate) async fn shared(&self) -> Result<ConnectionManager> {
        self.connection().await
    }

    /// A connection of its own, for blocking reads (`XREADGROUP BLOCK`)
    /// that must not hold up the shared one. `None` when the store was
    /// built from a connection manager and knows no URL.
    pub(crate) async fn dedicated(&self) -> Result<Option<redis::aio::MultiplexedConnection>> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        self.admit()?;
        // Blocking reads wait up to `BLOCK_FOR` for a reply: allow for it.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(BLOCK_FOR + self.timeout));
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        self.bounded("connect", connect).await.map(Some)
    }
}

/// Asks Redis whether it answers, within `timeout`. A manager that had
/// given up its connection fails the first command at once and starts
/// reconnecting: the second waits for that.
async fn ping(mut conn: ConnectionManager, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut again = true;
    let cmd = redis::cmd("PING");
    loop {
        let pong = cmd.query_async::<()>(&mut conn);
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

/// What the worker saw, for `change.lua`: one change event, or an empty
/// batch that moved the stream's position on.
#[derive(Debug)]
pub(crate) struct Seen<'a> {
    /// The resume token of the new position (encoded), or empty to keep.
    pub(crate) resume: &'a [u8],
    /// The cluster time of the new position, `seconds << 32 | increment`.
    pub(crate) time: Option<u64>,
    /// The kind of change: "i", "u", "r", "d", or "" (another, or none).
    pub(crate) op: &'static str,
    /// The document before the change (BSON), when MongoDB gave it.
    pub(crate) before: Option<&'a [u8]>,
    /// The dependency tokens it changed.
    pub(crate) tokens: &'a [String],
}

/// A related document mapped for one function; see [`RedisStore::relate`].
#[derive(Debug)]
pub(crate) struct Related<'a> {
    /// The document, `<collection>:<id key>`.
    pub(crate) source: &'a str,
    /// The collection of the entities it maps to.
    pub(crate) target: &'a str,
    /// Whether it was deleted.
    pub(crate) gone: bool,
    /// The id keys it maps to now.
    pub(crate) now: &'a [String],
    /// The id keys it mapped to before the change, when known (its
    /// pre-image's mapping; empty for an insert).
    pub(crate) before: Option<&'a [String]>,
}

/// The key of a task's record (see `lua/common.lua`).
pub(crate) fn task_key(base: &str, task: &str) -> String {
    keys::task(base, task)
}

/// What is recorded about a task.
#[derive(Debug)]
pub(crate) struct TaskState {
    /// `p` pending, `d` done, `f` failed.
    pub(crate) state: u8,
    /// The value's envelope (done), or the error message (failed).
    pub(crate) result: Vec<u8>,
    /// The id of the value the task computes.
    pub(crate) value_id: String,
}

/// What became of the changes a worker recorded (`lua/change.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Changed {
    /// Recorded: this many jobs queued.
    Queued(u64),
    /// Refused: another worker holds the lease.
    LeaseLost,
    /// Refused: the saved position is not the one this worker saved.
    Moved,
}

/// What giving a job up undoes besides (see `lua/dead.lua`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Abandon<'a> {
    /// Nothing: the job ran (and failed), or holds nothing.
    Nothing,
    /// The recompute of value `id` that never started: its pending flag.
    Recompute { id: &'a str },
    /// The submitted task `task` of value `id` that never started: it
    /// fails with the reason, kept for `retention`.
    Task {
        id: &'a str,
        task: &'a str,
        retention: Duration,
    },
}

/// The answer to a caller about to compute a missing value.
#[derive(Debug)]
pub(crate) enum Begin {
    /// Compute, from this change generation.
    Go(u64),
    /// Another process is computing it; its lease ends in this long.
    Wait(Duration),
    /// A value was stored since the caller's last read: read it. The
    /// version field as stored ("" for none).
    Read(String),
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The answer to an executor starting a job.
#[derive(Debug)]
pub(crate) enum Start {
    /// The value no longer exists.
    Gone,
    /// Recomputed too recently: try again after this long.
    Wait(Duration),
    /// Go: compute from this change generation.
    Run { started: u64, full_args: String },
}

/// The longest time-to-live smache passes to Redis (about 35 years).
const MAX_TTL_MS: u64 = 1 << 40;

/// How long a blocking read (`XREADGROUP BLOCK`) waits for jobs.
pub(crate) const BLOCK_FOR: Duration = Duration::from_secs(1);

/// How long a key that holds no value yet keeps the edges of a computation
/// in progress, should the caller die.
const BEGIN_LEASE_MS: u64 = 60_000;

fn parse_u64(bytes: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(bytes?).ok()?.parse().ok()
}

fn is_wrong_type(err: &redis::RedisError) -> bool {
    err.code() == Some("WRONGTYPE")
}
