//! What `inspect` reads of the jobs streams: the published announcements
//! and orphan timeout, a page of a shard's jobs or of those held, and the
//! dead letters of every shard.

use std::collections::HashMap;
use std::time::Duration;

use redis::streams::{StreamId, StreamRangeReply};

use super::{StreamEntry, StreamJob, ORPHAN_TIMEOUT_FIELD};
use crate::error::Result;
use crate::store::keys::{self, GROUP};
use crate::store::RedisStore;

/// A job delivered to an executor and not acknowledged yet.
#[derive(Debug, Clone)]
pub(crate) struct HeldJob {
    /// Its entry id.
    pub(crate) id: String,
    /// The executor (consumer) holding it.
    pub(crate) consumer: String,
    /// How many times it was delivered.
    pub(crate) deliveries: u64,
}

/// A job given up, from the dead-letter stream.
#[derive(Debug, Clone)]
pub(crate) struct DeadEntry {
    /// Its entry id in the dead-letter stream (when it was given up).
    pub(crate) id: String,
    /// The job as it was queued.
    pub(crate) job: StreamJob,
    /// Why it was given up.
    pub(crate) reason: String,
    /// The executor that gave it up.
    pub(crate) by: String,
}

impl RedisStore {
    /// How many shards (each with a jobs stream and a dead-letter stream).
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.count()
    }

    /// The shard of `id` (a value id, or a document's token, whose shard
    /// holds its relation jobs and mapping).
    pub(crate) fn shard_of(&self, id: &str) -> usize {
        self.shards.of(id)
    }

    /// The jobs streams as reports name them: `{prefix}:jobs`, or on
    /// several shards the first one's key and how many.
    pub(crate) fn jobs_stream_key(&self) -> String {
        self.streams_named(keys::jobs)
    }

    /// The dead-letter streams as reports name them: `{prefix}:dead`, or
    /// on several shards the first one's key and how many.
    pub(crate) fn dead_stream_key(&self) -> String {
        self.streams_named(keys::dead)
    }

    fn streams_named(&self, key: fn(&str) -> String) -> String {
        match self.shards.count() {
            1 => key(self.shards.base(0)),
            n => format!("{} … ({n} shards)", key(self.shards.base(0))),
        }
    }

    /// The length of every shard's jobs stream and dead-letter stream, by
    /// shard (0 for one that does not exist): one `XLEN` each, pipelined.
    pub(crate) async fn stream_lengths(&self) -> Result<Vec<(u64, u64)>> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        for base in self.shards.bases() {
            pipe.cmd("XLEN").arg(keys::jobs(base));
            pipe.cmd("XLEN").arg(keys::dead(base));
        }
        let lengths: Vec<u64> = self.bounded("xlen", pipe.query_async(&mut conn)).await?;
        Ok(lengths
            .chunks(2)
            .map(|pair| (pair[0], pair.get(1).copied().unwrap_or(0)))
            .collect())
    }

    /// Every field of `{prefix}:fns` (function heads and callbacks) with
    /// when it was last announced (ms, Redis clock).
    pub(crate) async fn announced(&self) -> Result<HashMap<String, u64>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(keys::functions(&self.base));
        self.bounded("announced", cmd.query_async(&mut conn)).await
    }

    /// The orphan timeout the executors published, if any.
    pub(crate) async fn published_orphan_timeout(&self) -> Result<Option<Duration>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("HGET");
        cmd.arg(keys::config(&self.base)).arg(ORPHAN_TIMEOUT_FIELD);
        let ms: Option<u64> = self.bounded("config", cmd.query_async(&mut conn)).await?;
        Ok(ms.map(Duration::from_millis))
    }

    /// Up to `count` held jobs (delivered, not acknowledged) of shard
    /// `shard`, in entry order after `after` (from the start for `None`).
    pub(crate) async fn held_jobs(
        &self,
        shard: usize,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<HeldJob>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(self.jobs_key(shard))
            .arg(GROUP)
            .arg(range_start(after))
            .arg("+")
            .arg(count);
        let page: Vec<(String, String, u64, u64)> =
            self.bounded("xpending", cmd.query_async(&mut conn)).await?;
        Ok(page
            .into_iter()
            .map(|(id, consumer, _idle, deliveries)| HeldJob {
                id,
                consumer,
                deliveries,
            })
            .collect())
    }

    /// Up to `count` jobs of shard `shard`'s stream, in entry order after
    /// `after` (from the start for `None`).
    pub(crate) async fn queued_jobs(
        &self,
        shard: usize,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.jobs_key(shard))
            .arg(range_start(after))
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let page: StreamRangeReply = self.bounded("xrange", cmd.query_async(&mut conn)).await?;
        Ok(page
            .ids
            .iter()
            .map(|entry| StreamEntry::of(shard, entry))
            .collect())
    }

    /// The latest `count` dead letters of every shard, newest first (the
    /// latest `count` of each shard, merged by entry id).
    pub(crate) async fn latest_dead_letters(&self, count: usize) -> Result<Vec<DeadEntry>> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        for base in self.shards.bases() {
            pipe.cmd("XREVRANGE")
                .arg(keys::dead(base))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(count);
        }
        let latest: Vec<StreamRangeReply> = self
            .bounded("xrevrange", pipe.query_async(&mut conn))
            .await?;
        let mut letters: Vec<DeadEntry> = latest
            .iter()
            .flat_map(|shard| &shard.ids)
            .map(|entry| DeadEntry {
                id: entry.id.clone(),
                job: StreamJob::of(entry),
                reason: text(entry, "reason"),
                by: text(entry, "by"),
            })
            .collect();
        letters.sort_by_key(|letter| std::cmp::Reverse(entry_order(&letter.id)));
        letters.truncate(count);
        Ok(letters)
    }
}

/// An entry id's `(ms, seq)`, to order entries of several streams.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Where an `XRANGE`/`XPENDING` page starts: after `after` (exclusive),
/// else at the start.
fn range_start(after: Option<&str>) -> String {
    after.map_or_else(|| "-".to_owned(), |last| format!("({last}"))
}

/// A field of an entry as text (other bytes lossily; "" when absent).
fn text(entry: &StreamId, field: &str) -> String {
    match entry.map.get(field) {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(redis::Value::SimpleString(text)) => text.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::entry;
    use super::*;

    #[test]
    fn dead_letters_hold_the_jobs_fields_besides_their_own() {
        let dead = entry(&[("job", "1-0"), ("reason", "r"), ("by", "x"), ("id", "f#1:")]);
        assert_eq!(StreamJob::of(&dead).value_id(), Some("f#1:"));
        assert_eq!(text(&dead, "reason"), "r");
    }

    #[test]
    fn entries_of_several_streams_order_by_time_then_sequence() {
        assert!(entry_order("10-2") > entry_order("10-1"));
        assert!(entry_order("9-5") < entry_order("10-0"));
        assert!(entry_order("100-0") > entry_order("99-9"));
    }

    #[test]
    fn pages_start_after_the_last_entry() {
        assert_eq!(range_start(None), "-");
        assert_eq!(range_start(Some("5-1")), "(5-1");
    }
}
