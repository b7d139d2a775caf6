//! An executor's reading of the jobs streams, one per shard: the consumer
//! group on each, reading new jobs, and reclaiming those other executors
//! left.
//!
//! One shard (the layout on one server): a blocking `XREADGROUP` on its
//! one stream, as before shards existed. Several: `XREADGROUP` can block
//! only on streams of one slot on a cluster, so a sweep reads every
//! shard's stream without blocking, a window of shards per round trip
//! (pipelined: on a cluster each command goes to its node), starting each
//! window where the last one stopped so that no shard waits behind
//! another; between empty sweeps the executor waits on the doorbell (see
//! `bell`), and sweeps again at least every [`BLOCK_FOR`]. Each shard's
//! consumer group spreads that shard's jobs over the executors, so adding
//! executors adds throughput.
//!
//! The read of the shards a ring of the bell named is a script per shard
//! (`lua/take.lua`), which also starts the recompute jobs it takes whose
//! function the executor has (`start_value`, what `lua/start.lua` does
//! alone): a job so found, the one a caller waits for when the executors
//! are idle, runs its function with no round trip of its own first. A
//! sweep reads with plain `XREADGROUP`s, cheaper for Redis than as many
//! scripts while most of its reads find nothing, and its jobs are started
//! one by one; but after a read that took as many jobs as it asked for
//! (jobs are waiting: a fan-out, a burst), the next sweep takes and starts
//! them with the script too.

use std::sync::LazyLock;
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamReadReply};

use super::bell::Bell;
use super::{millis, StreamEntry};
use crate::error::{Error, Result};
use crate::store::keys::{self, GROUP};
use crate::store::redis::{Conn, RedisStore, Start, BLOCK_FOR};
use crate::store::script::StoreScript;

/// `lua/take.lua`, with `lua/start_value.lua` in front (not
/// `lua/common.lua`, whose preamble every read of a shard would pay).
static TAKE: LazyLock<StoreScript> = LazyLock::new(|| {
    StoreScript::new(concat!(
        include_str!("../../../../lua/start_value.lua"),
        include_str!("../../../../lua/take.lua")
    ))
});

/// What a read of several shards needs to start the recompute jobs it
/// takes (`lua/take.lua`).
#[derive(Debug, Clone)]
pub(crate) struct Starting {
    /// The functions the executor has (`<name>#<version>`): a job of
    /// another is left unstarted, for an executor that has it.
    pub(crate) heads: Vec<String>,
    /// The least time between two recomputes of one value.
    pub(crate) interval: Duration,
}

/// An executor's own connection to the jobs streams, for its reads (a
/// blocking one, on one shard) that must not hold up the shared one.
pub(crate) struct JobReader {
    conn: Conn,
    /// Each shard's jobs stream, by shard.
    streams: Vec<String>,
    consumer: String,
    /// Where the next reclaim scan of each shard starts.
    reclaim_from: Vec<String>,
    /// The shard the next sweep starts at.
    next: usize,
    /// The doorbell, with several shards.
    bell: Option<Bell>,
    /// How reads of several shards start the jobs they take.
    starting: Starting,
    /// Whether the last read of several shards took as many jobs as it
    /// asked for (more are likely waiting): the next sweep then starts
    /// the jobs it takes too.
    busy: bool,
}

impl std::fmt::Debug for JobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobReader")
            .field("streams", &self.streams.len())
            .field("consumer", &self.consumer)
            .field("bell", &self.bell)
            .finish_non_exhaustive()
    }
}

impl JobReader {
    /// Creates the consumer group (and the stream) of every shard unless
    /// it exists.
    pub(crate) async fn join_group(&mut self) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for stream in &self.streams {
            pipe.cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM");
        }
        // Each reply on its own: a group that exists answers BUSYGROUP.
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.conn).await?;
        for reply in replies {
            if let Err(err) = reply.extract_error() {
                if err.code() != Some("BUSYGROUP") {
                    return Err(Error::Redis(err));
                }
            }
        }
        Ok(())
    }

    /// Up to about `count` new jobs for this consumer, waiting up to
    /// [`BLOCK_FOR`] for one.
    pub(crate) async fn read(&mut self, count: usize) -> Result<Vec<StreamEntry>> {
        if self.streams.len() == 1 {
            return self.read_blocking(count).await;
        }
        let deadline = tokio::time::Instant::now() + BLOCK_FOR;
        loop {
            if let Some(bell) = self.bell.as_mut() {
                bell.subscribe().await;
            }
            let entries = self.sweep(count).await?;
            self.busy = entries.len() >= count.max(1);
            if !entries.is_empty() {
                return Ok(entries);
            }
            let named = match self.bell.as_mut() {
                Some(bell) => bell.wait(deadline).await,
                None => {
                    tokio::time::sleep_until(deadline).await;
                    None
                }
            };
            let Some(named) = named else {
                return Ok(entries);
            };
            // Rung: the shards it named first (as many as a sweep's
            // window, so fewer than `2 * count` jobs are taken), then
            // sweep again (another executor may be first to them).
            let mut shards: Vec<usize> = named
                .iter()
                .filter_map(|base| {
                    self.streams
                        .iter()
                        .position(|stream| stream.strip_suffix("jobs") == Some(base.as_str()))
                })
                .collect();
            shards.truncate(count.max(1));
            if !shards.is_empty() {
                let per_shard = count.max(1).div_ceil(shards.len());
                let entries = self.take_shards(&shards, per_shard).await?;
                self.busy = entries.len() >= count.max(1);
                if !entries.is_empty() {
                    return Ok(entries);
                }
            }
        }
    }

    /// One shard: a read blocking up to [`BLOCK_FOR`].
    async fn read_blocking(&mut self, count: usize) -> Result<Vec<StreamEntry>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(millis(BLOCK_FOR))
            .arg("STREAMS")
            .arg(&self.streams[0])
            .arg(">")
            .query_async(&mut self.conn)
            .await?;
        Ok(entries_of(0, reply))
    }

    /// Reads every shard's stream once, without blocking, a window of
    /// `min(count, shards)` streams at a time, `count / window` (rounded
    /// up) jobs from each, until some window has jobs: so a sweep takes
    /// fewer than `2 * count` jobs, and each starts where the last
    /// stopped.
    async fn sweep(&mut self, count: usize) -> Result<Vec<StreamEntry>> {
        let shards = self.streams.len();
        let width = count.clamp(1, shards);
        let per_shard = count.max(1).div_ceil(width);
        let mut swept = 0;
        while swept < shards {
            let window: Vec<usize> = (0..width.min(shards - swept))
                .map(|k| (self.next + k) % shards)
                .collect();
            self.next = (self.next + window.len()) % shards;
            swept += window.len();
            let entries = if self.busy {
                self.take_shards(&window, per_shard).await?
            } else {
                self.read_shards(&window, per_shard).await?
            };
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
        Ok(Vec::new())
    }

    /// Up to `per_shard` new jobs from each of `shards`' streams, without
    /// blocking (one pipeline: on a cluster, one per slot, sent at once).
    async fn read_shards(
        &mut self,
        shards: &[usize],
        per_shard: usize,
    ) -> Result<Vec<StreamEntry>> {
        let mut pipe = redis::pipe();
        for &shard in shards {
            pipe.cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(per_shard)
                .arg("STREAMS")
                .arg(&self.streams[shard])
                .arg(">");
        }
        let replies: Vec<Option<StreamReadReply>> = pipe.query_async(&mut self.conn).await?;
        Ok(shards
            .iter()
            .zip(replies)
            .flat_map(|(&shard, reply)| entries_of(shard, reply))
            .collect())
    }

    /// Up to `per_shard` new jobs from each of `shards`' streams, without
    /// blocking, the recompute jobs among them started (`lua/take.lua`,
    /// one call per shard in one pipeline: on a cluster, one per master,
    /// sent at once). A shard whose server lacks the script (a restart,
    /// a failover) is asked again on its own, which loads it.
    async fn take_shards(
        &mut self,
        shards: &[usize],
        per_shard: usize,
    ) -> Result<Vec<StreamEntry>> {
        let interval = u64::try_from(self.starting.interval.as_millis()).unwrap_or(u64::MAX);
        let mut calls: Vec<_> = shards
            .iter()
            .map(|&shard| {
                let stream = &self.streams[shard];
                let mut call = TAKE.key(stream);
                call.arg(GROUP)
                    .arg(&self.consumer)
                    .arg(per_shard)
                    .arg(stream.strip_suffix("jobs").unwrap_or_default())
                    .arg(interval)
                    .arg(&self.starting.heads);
                call
            })
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for call in &mut calls {
            call.pipe_into(&mut pipe);
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.conn).await?;
        let (mut entries, mut failed) = (Vec::new(), None);
        for ((&shard, call), reply) in shards.iter().zip(calls).zip(replies) {
            let reply = match reply.extract_error() {
                Err(err)
                    if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    call.invoke_async(&mut self.conn).await
                }
                reply => reply,
            };
            match reply
                .map_err(Error::from)
                .and_then(|reply| taken(shard, reply))
            {
                Ok(taken) => entries.extend(taken),
                Err(err) => failed = Some(err),
            }
        }
        // The jobs other shards handed over run (they are this consumer's
        // now, and started). A shard whose call failed may have handed
        // jobs over all the same (its reply lost): held by this consumer,
        // they come back by a reclaim, after RECLAIM_AFTER.
        match failed {
            Some(err) if entries.is_empty() => Err(err),
            Some(err) => {
                tracing::debug!(error = %err, "smache executor: reading a shard's jobs failed");
                Ok(entries)
            }
            None => Ok(entries),
        }
    }

    /// Claims for this consumer up to `count` jobs per shard that another
    /// one left unacknowledged for `idle`: one `XAUTOCLAIM` per shard,
    /// pipelined, each going on from where the last scan of its shard
    /// stopped (so old entries cannot hide newer ones).
    pub(crate) async fn reclaim(
        &mut self,
        idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>> {
        let mut pipe = redis::pipe();
        for (stream, from) in self.streams.iter().zip(&self.reclaim_from) {
            pipe.cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(millis(idle))
                .arg(from)
                .arg("COUNT")
                .arg(count);
        }
        let replies: Vec<StreamAutoClaimReply> = pipe.query_async(&mut self.conn).await?;
        let mut entries = Vec::new();
        for (shard, reply) in replies.into_iter().enumerate() {
            if let Some(from) = self.reclaim_from.get_mut(shard) {
                // "0-0" once the scan went round.
                *from = reply.next_stream_id;
            }
            entries.extend(
                reply
                    .claimed
                    .iter()
                    .map(|entry| StreamEntry::of(shard, entry)),
            );
        }
        Ok(entries)
    }
}

/// The jobs `lua/take.lua` read from shard `shard`'s stream, each with
/// what starting it answered, if it was started.
fn taken(shard: usize, reply: redis::Value) -> Result<Vec<StreamEntry>> {
    let (read, starts): (Option<StreamReadReply>, Vec<redis::Value>) =
        redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
    let mut entries = entries_of(shard, read);
    for (entry, start) in entries.iter_mut().zip(starts) {
        if start == redis::Value::Int(0) {
            continue;
        }
        // An answer that does not read as one: the executor starts the
        // job itself (starting it again only waits out the interval).
        match redis::from_redis_value::<Option<(String, String)>>(start) {
            Ok(start) => entry.start = Some(Start::of(start)),
            Err(err) => {
                tracing::debug!(error = %err, job = %entry.at, "smache executor: a job's start did not read; starting it again");
            }
        }
    }
    Ok(entries)
}

/// The jobs of a read of shard `shard`'s stream.
fn entries_of(shard: usize, reply: Option<StreamReadReply>) -> Vec<StreamEntry> {
    reply
        .into_iter()
        .flat_map(|reply| reply.keys)
        .flat_map(|key| key.ids)
        .map(|entry| StreamEntry::of(shard, &entry))
        .collect()
}

impl RedisStore {
    /// A connection of its own to the jobs streams, reading as
    /// `consumer`, with the doorbell when there are several shards;
    /// `None` when the store was built from a connection manager and knows
    /// no URL.
    pub(crate) async fn job_reader(
        &self,
        consumer: &str,
        starting: Starting,
    ) -> Result<Option<JobReader>> {
        let Some(conn) = self.dedicated().await? else {
            return Ok(None);
        };
        let shards = self.shards.count();
        let bell = match (shards, self.endpoint()) {
            (1, _) | (_, None) => None,
            (_, Some(endpoint)) => Some(Bell::new(
                endpoint.subscribers(),
                keys::bell(&self.base),
                self.timeout,
            )),
        };
        Ok(Some(JobReader {
            conn,
            streams: (0..shards).map(|shard| self.jobs_key(shard)).collect(),
            consumer: consumer.to_owned(),
            reclaim_from: vec!["0-0".to_owned(); shards],
            next: 0,
            bell,
            starting,
            busy: false,
        }))
    }
}
