//! What executors do with the jobs stream: start a recompute, give a job
//! up (dead letters), and how much is queued.

use std::time::Duration;

use redis::streams::StreamRangeReply;

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

    /// Moves job `entry` to the dead-letter stream with `reason` and
    /// acknowledges it, undoing what `abandon` says in the same step;
    /// false if it was gone already or another executor holds it now.
    pub(crate) async fn dead_letter(
        &self,
        entry: &str,
        reason: &str,
        consumer: &str,
        abandon: Abandon<'_>,
    ) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.dead.key(keys::jobs(&self.base));
        invocation
            .key(keys::dead(&self.base))
            .arg(entry)
            .arg(keys::GROUP)
            .arg(reason)
            .arg(consumer)
            .arg(keys::DEAD_LETTERS_KEPT);
        match abandon {
            Abandon::Nothing => {}
            Abandon::Recompute { id } => {
                invocation.arg(&self.base).arg(id).arg("").arg(0);
            }
            Abandon::Task {
                id,
                task,
                retention,
            } => {
                invocation
                    .arg(&self.base)
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

    /// Whether a relation job queued at or before stream entry `upto` is
    /// still in the stream (waiting, or held by an executor).
    pub(crate) async fn relations_pending(&self, shard: usize, upto: &str) -> Result<bool> {
        const PAGE: usize = 500;
        let mut conn = self.connection().await?;
        let jobs = keys::jobs(self.shards.base(shard));
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

    /// How many entries the job stream holds: waiting, and held by
    /// executors (acknowledged jobs are deleted); 0 when it does not exist.
    pub(crate) async fn job_queue_length(&self) -> Result<u64> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(keys::jobs(&self.base));
        self.bounded("xlen", cmd.query_async(&mut conn)).await
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
#[derive(Debug)]
pub(crate) enum Start {
    /// The value no longer exists.
    Gone,
    /// Recomputed too recently: try again after this long.
    Wait(Duration),
    /// Go: compute from this change generation.
    Run { started: u64, full_args: String },
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
