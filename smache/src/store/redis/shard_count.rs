//! Every process of an instance spreads its keys over one shard count.
//!
//! A value's keys live in the shard its id hashes to, modulo the count
//! (`store::shards`). A process with another count reads and writes other
//! keys than the rest of the instance: the values it stores would never be
//! found by the worker's signals (served fresh over changed documents),
//! and it would never see theirs. So the count is recorded in Redis, in
//! `{prefix}:config` field `shards`, by the first process to use the store
//! (`HSETNX`: whoever comes first, every later process reads that one).
//! Before its first operation, each process compares its count with the
//! recorded one:
//!
//! - the same: the store is used as usual, at no further cost (one atomic
//!   load per operation);
//! - another: the process refuses the store. Every operation fails with
//!   [`Error::ShardCountMismatch`] at once, so calls compute their values
//!   directly (correct, never cached), workers and executors wait, and the
//!   refusal is logged as an error. Not an outage: the breaker stays shut.
//!
//! Every [`RECHECK_EVERY`], in the background, each process reads the
//! record again (recording its count if the record is gone, say after a
//! `FLUSHALL`): a process that refused starts using the store once an
//! operator sets the record to its count, and one that agreed stops if the
//! record changed under it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use super::conn::Conn;
use crate::error::{Error, Result};
use crate::store::keys;
use crate::sync::lock;

/// How often each process reads the recorded count again.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(10);

/// The field of `{prefix}:config` holding the instance's shard count.
pub(crate) const SHARDS_FIELD: &str = "shards";

/// This process's count, and whether the instance agrees with it.
#[derive(Debug)]
pub(super) struct ShardCount {
    prefix: String,
    /// `{prefix}:config`.
    config: String,
    count: usize,
    state: AtomicU8,
    /// What Redis recorded, when it differs from `count`.
    recorded: Mutex<String>,
    /// Held by the first check, so that concurrent first operations wait
    /// for one answer instead of each asking.
    first: tokio::sync::Mutex<()>,
}

const UNKNOWN: u8 = 0;
const AGREED: u8 = 1;
const REFUSED: u8 = 2;

impl ShardCount {
    pub(super) fn new(prefix: &str, base: &str, count: usize) -> Arc<Self> {
        Arc::new(ShardCount {
            prefix: prefix.to_owned(),
            config: keys::config(base),
            count,
            state: AtomicU8::new(UNKNOWN),
            recorded: Mutex::new(String::new()),
            first: tokio::sync::Mutex::new(()),
        })
    }

    /// `Ok` if the instance uses this process's count, asking Redis over
    /// `conn` (within `timeout`) the first time; the refusal otherwise.
    /// A failure to ask is returned as it is (the caller's breaker judges
    /// it), and the next operation asks again. The rechecks after use
    /// whatever connection `shared` holds then (the breaker's probe may
    /// have replaced a stuck one).
    pub(super) async fn agreed(
        self: &Arc<Self>,
        conn: &Conn,
        shared: &Arc<RwLock<Option<Conn>>>,
        timeout: Duration,
    ) -> Result<()> {
        if let Some(settled) = self.settled() {
            return settled;
        }
        let _first = self.first.lock().await;
        if let Some(settled) = self.settled() {
            return settled;
        }
        let recorded = match tokio::time::timeout(timeout, self.record(conn.clone())).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Timeout {
                    op: "shard_count",
                    timeout,
                })
            }
        };
        self.found(&recorded);
        // On smache's own runtime: it lives as long as the store, longer
        // than the runtime of whichever caller came first.
        let _background = crate::runtime::enter_background();
        tokio::spawn(recheck(
            Arc::downgrade(self),
            Arc::downgrade(shared),
            timeout,
        ));
        self.settled().unwrap_or(Ok(()))
    }

    /// What the last check found, if there was one.
    pub(super) fn settled(&self) -> Option<Result<()>> {
        match self.state.load(Ordering::Acquire) {
            AGREED => Some(Ok(())),
            REFUSED => Some(Err(Error::ShardCountMismatch {
                prefix: self.prefix.clone(),
                configured: self.count,
                recorded: lock(&self.recorded).clone(),
            })),
            _ => None,
        }
    }

    /// Records this process's count unless one is recorded, and returns
    /// the recorded one.
    async fn record(&self, mut conn: Conn) -> Result<String> {
        let mut pipe = redis::pipe();
        pipe.cmd("HSETNX")
            .arg(&self.config)
            .arg(SHARDS_FIELD)
            .arg(self.count)
            .ignore()
            .cmd("HGET")
            .arg(&self.config)
            .arg(SHARDS_FIELD);
        let (recorded,): (Option<String>,) = pipe.query_async(&mut conn).await?;
        // Deleted between the two commands: this process's count stands
        // until the next check records one again.
        Ok(recorded.unwrap_or_else(|| self.count.to_string()))
    }

    /// Takes what Redis recorded, logging a change of mind.
    fn found(&self, recorded: &str) {
        let agrees = recorded.trim().parse::<usize>() == Ok(self.count);
        let before = self
            .state
            .swap(if agrees { AGREED } else { REFUSED }, Ordering::AcqRel);
        if !agrees {
            *lock(&self.recorded) = recorded.to_owned();
        }
        match (before, agrees) {
            (UNKNOWN | AGREED, false) => tracing::error!(
                prefix = %self.prefix,
                configured = self.count,
                recorded,
                "smache: this process spreads the Redis keys over {} shards, the instance over \
                 {recorded:?} (recorded in Redis): not using the store, computing every value \
                 directly until they agree. Every process of an instance must use the same \
                 count (SmacheBuilder::redis_shards, SMACHE_REDIS_SHARDS; the default is 48 on a \
                 Redis Cluster, else 1); see the README's \"Shards\" to change it",
                self.count,
            ),
            (REFUSED, true) => tracing::info!(
                prefix = %self.prefix,
                shards = self.count,
                "smache: the recorded shard count now agrees with this process's; using the store"
            ),
            _ => {}
        }
    }
}

/// Reads the record again every [`RECHECK_EVERY`], for as long as the
/// store lives. A check that fails (Redis away) changes nothing.
async fn recheck(check: Weak<ShardCount>, shared: Weak<RwLock<Option<Conn>>>, timeout: Duration) {
    loop {
        tokio::time::sleep(RECHECK_EVERY).await;
        let (Some(check), Some(shared)) = (check.upgrade(), shared.upgrade()) else {
            return;
        };
        let conn = shared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(conn) = conn else {
            continue;
        };
        if let Ok(Ok(recorded)) = tokio::time::timeout(timeout, check.record(conn)).await {
            check.found(&recorded);
        }
    }
}

impl super::RedisStore {
    /// The shard count the instance recorded, if any, read without the
    /// check (which a process of another count fails): for tools that take
    /// the instance's count rather than refuse it.
    pub(crate) async fn recorded_shards(&self) -> Result<Option<String>> {
        self.admit()?;
        let mut conn = self.shared()?;
        let mut cmd = redis::cmd("HGET");
        cmd.arg(keys::config(&self.base)).arg(SHARDS_FIELD);
        self.bounded("recorded_shards", cmd.query_async(&mut conn))
            .await
    }
}
