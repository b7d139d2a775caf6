//! What executors do with the jobs streams: start a recompute, give a job
//! up (dead letters, in its shard), and how much is queued (in every
//! shard).

use std::time::Duration;

use redis::streams::StreamRangeReply;

use super::stream::EntryRef;
use super::{millis, RedisStore};
use crate::error::Result;
use crate::store::keys;

impl RedisStore {
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
        Ok(Start::of(reply))
    }

    /// Moves job `entry` to its shard's dead-letter stream with `reason`
    /// and acknowledges it, undoing what `abandon` says in the same step
    /// (the value a job is for lives in the job's shard); false if it was
    /// gone already or another executor holds it now.
    pub(crate) async fn dead_letter(
        &self,
        entry: &EntryRef,
        reason: &str,
        consumer: &str,
        abandon: Abandon<'_>,
    ) -> Result<bool> {
        let mut conn = self.connection().await?;
        let base = self.shards.base(entry.shard);
        let mut invocation = self.scripts.dead.key(keys::jobs(base));
        invocation
            .key(keys::dead(base))
            .arg(&entry.id)
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

    /// Whether a relation job queued in some shard at or before that
    /// shard's entry in `upto` (by shard; `None`: its stream was empty) is
    /// still in its stream (waiting, or held by an executor).
    pub(crate) async fn relations_pending(&self, upto: &[Option<String>]) -> Result<bool> {
        for (shard, upto) in upto.iter().enumerate() {
            if let Some(upto) = upto {
                if self.shard_relations_pending(shard, upto).await? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// [`relations_pending`](Self::relations_pending) in one shard.
    async fn shard_relations_pending(&self, shard: usize, upto: &str) -> Result<bool> {
        const PAGE: usize = 500;
        let mut conn = self.connection().await?;
        let jobs = self.jobs_key(shard);
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

    /// How many entries the jobs streams hold, in every shard: waiting,
    /// and held by executors (acknowledged jobs are deleted); 0 for a
    /// stream that does not exist.
    pub(crate) async fn job_queue_length(&self) -> Result<u64> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        for base in self.shards.bases() {
            pipe.cmd("XLEN").arg(keys::jobs(base));
        }
        let lengths: Vec<u64> = self.bounded("xlen", pipe.query_async(&mut conn)).await?;
        Ok(lengths.into_iter().sum())
    }

    /// Samples the job stream's length into the metrics every
    /// [`QUEUE_SAMPLE_EVERY`](crate::metrics::QUEUE_SAMPLE_EVERY), until
    /// dropped (see [`Sampling`](crate::metrics::Sampling)).
    pub(crate) async fn sample_job_queue(&self) {
        loop {
            match self.job_queue_length().await {
                Ok(length) => crate::metrics::job_queue_length(length),
                Err(err) => {
                    tracing::debug!(error = %err, "smache: cannot sample the job queue's length");
                }
            }
            tokio::time::sleep(crate::metrics::QUEUE_SAMPLE_EVERY).await;
        }
    }
}

/// The answer to an executor starting a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// The value no longer exists.
    Gone,
    /// Recomputed too recently: try again after this long.
    Wait(Duration),
    /// Go: compute from this change generation.
    Run { started: u64, full_args: String },
}

impl Start {
    /// What `start_value` (`lua/start_value.lua`) answered.
    pub(crate) fn of(reply: Option<(String, String)>) -> Start {
        match reply {
            None => Start::Gone,
            Some((first, wait)) if first == "wait" => {
                Start::Wait(Duration::from_millis(wait.parse().unwrap_or(1)))
            }
            Some((generation, args)) => Start::Run {
                started: generation.parse().unwrap_or(0),
                full_args: args,
            },
        }
    }
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
