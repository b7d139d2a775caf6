//! What `inspect` reads of the jobs stream: the published announcements
//! and orphan timeout, a page of the jobs or of those held, and the dead
//! letters.

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
    /// The key of the jobs stream, `{prefix}:jobs`, as reports name it.
    pub(crate) fn jobs_stream_key(&self) -> String {
        keys::jobs(&self.base)
    }

    /// The key of the dead-letter stream, `{prefix}:dead`, as reports
    /// name it.
    pub(crate) fn dead_stream_key(&self) -> String {
        keys::dead(&self.base)
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

    /// Up to `count` held jobs (delivered, not acknowledged), in entry
    /// order after `after` (from the start for `None`).
    pub(crate) async fn held_jobs(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<HeldJob>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(keys::jobs(&self.base))
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

    /// Up to `count` jobs of the stream, in entry order after `after`
    /// (from the start for `None`).
    pub(crate) async fn queued_jobs(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(keys::jobs(&self.base))
            .arg(range_start(after))
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let page: StreamRangeReply = self.bounded("xrange", cmd.query_async(&mut conn)).await?;
        Ok(page.ids.iter().map(StreamEntry::of).collect())
    }

    /// How many jobs were given up and are still kept.
    pub(crate) async fn dead_letter_count(&self) -> Result<u64> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(keys::dead(&self.base));
        self.bounded("xlen", cmd.query_async(&mut conn)).await
    }

    /// The latest `count` dead letters, newest first.
    pub(crate) async fn latest_dead_letters(&self, count: usize) -> Result<Vec<DeadEntry>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(keys::dead(&self.base))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count);
        let latest: StreamRangeReply = self
            .bounded("xrevrange", cmd.query_async(&mut conn))
            .await?;
        Ok(latest
            .ids
            .iter()
            .map(|entry| DeadEntry {
                id: entry.id.clone(),
                job: StreamJob::of(entry),
                reason: text(entry, "reason"),
                by: text(entry, "by"),
            })
            .collect())
    }
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
    fn pages_start_after_the_last_entry() {
        assert_eq!(range_start(None), "-");
        assert_eq!(range_start(Some("5-1")), "(5-1");
    }
}
