//! The jobs stream (`{prefix}:jobs`) as the executors and `inspect` use it:
//! the consumer group, reading, reclaiming, renewing and acknowledging
//! jobs, announcing what an executor runs (`{prefix}:fns`,
//! `{prefix}:config`), and reading the stream, its held entries and the
//! dead letters back for a report.
//!
//! Jobs are written by the Lua scripts (see `lua/common.lua`); [`StreamJob`]
//! is the one place their fields are read back. What only `inspect` reads
//! is in `report`.

mod report;

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::{RedisStore, BLOCK_FOR};
use crate::error::{Error, Result};
use crate::store::keys::{self, GROUP};

/// The field of `{prefix}:config` holding the executors' orphan timeout (ms).
pub(super) const ORPHAN_TIMEOUT_FIELD: &str = "orphan_timeout";

/// What a job of the stream asks for, as the scripts write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamJob {
    /// Recompute the value with this id (field `id`).
    Value(String),
    /// Compute the value `id` for the submitted task `task`; `args` are the
    /// full arguments when the id holds only their hash (fields `id`,
    /// `task`, `args`).
    Submitted {
        id: String,
        task: String,
        args: String,
    },
    /// Signal the dependants of `token`, a chunk from SSCAN `cursor`
    /// (fields `fan`, `cur`, `lazy`, `n`).
    FanOut {
        token: String,
        cursor: String,
        /// Past max_fanout: mark stale only.
        lazy: bool,
        /// How many dependants the change had (lazy jobs say).
        dependants: Option<u64>,
    },
    /// Run the callback `name` of the finished task `task` (fields `cb`,
    /// `task`, `args`).
    Callback {
        name: String,
        task: String,
        args: String,
    },
    /// A document of a collection named in some `relations(...)` changed
    /// (fields `rel`, `doc`, `op`, `pre`).
    Related {
        collection: String,
        doc: String,
        /// The kind of change ("i", "u", "r", "d"; none from a worker
        /// older than this field).
        op: Option<String>,
        /// The document before the change (BSON), when MongoDB gave it.
        before: Option<Vec<u8>>,
    },
    /// None of the above.
    Malformed,
}

impl StreamJob {
    /// Reads a job back from its stream entry's fields.
    pub(super) fn of(entry: &StreamId) -> StreamJob {
        let args = || entry.get::<String>("args").unwrap_or_default();
        if let Some(token) = entry.get::<String>("fan") {
            return StreamJob::FanOut {
                token,
                cursor: entry.get::<String>("cur").unwrap_or_else(|| "0".into()),
                lazy: entry.get::<String>("lazy").is_some_and(|v| v == "1"),
                dependants: entry.get::<u64>("n"),
            };
        }
        if let (Some(name), Some(task)) = (entry.get::<String>("cb"), entry.get::<String>("task")) {
            return StreamJob::Callback {
                name,
                task,
                args: args(),
            };
        }
        if let Some(id) = entry.get::<String>("id") {
            return match entry.get::<String>("task") {
                Some(task) => StreamJob::Submitted {
                    id,
                    task,
                    args: args(),
                },
                None => StreamJob::Value(id),
            };
        }
        match (entry.get::<String>("rel"), entry.get::<String>("doc")) {
            (Some(collection), Some(doc)) => StreamJob::Related {
                collection,
                doc,
                op: entry.get::<String>("op"),
                before: entry.get::<Vec<u8>>("pre"),
            },
            _ => StreamJob::Malformed,
        }
    }

    /// The id of the value the job is for (a recompute or a task).
    pub(crate) fn value_id(&self) -> Option<&str> {
        match self {
            StreamJob::Value(id) | StreamJob::Submitted { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// A job read from the stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamEntry {
    /// Its entry id, `<ms>-<seq>` by the Redis clock.
    pub(crate) id: String,
    /// What it asks for.
    pub(crate) job: StreamJob,
}

impl StreamEntry {
    /// Reads a job and its entry id back from the stream.
    pub(super) fn of(entry: &StreamId) -> StreamEntry {
        StreamEntry {
            id: entry.id.clone(),
            job: StreamJob::of(entry),
        }
    }
}

/// What one scan for abandoned jobs found.
#[derive(Debug)]
pub(crate) struct Reclaimed {
    /// Where the next scan starts ("0-0" once this one went round).
    pub(crate) next: String,
    /// The jobs now claimed by the caller.
    pub(crate) entries: Vec<StreamEntry>,
}

/// When an executor last said it has a function or callback, by the Redis
/// clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastAnnounced {
    /// Now (ms).
    pub(crate) now_ms: u64,
    /// When it was last announced (ms); `None`: never.
    pub(crate) announced_ms: Option<u64>,
}

/// An executor's own connection to the jobs stream, for its blocking reads
/// (`XREADGROUP BLOCK`) that must not hold up the shared one.
pub(crate) struct JobReader {
    conn: super::Conn,
    stream: String,
    consumer: String,
}

impl std::fmt::Debug for JobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobReader")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl JobReader {
    /// Creates the consumer group (and the stream) unless it exists.
    pub(crate) async fn join_group(&mut self) -> Result<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn)
            .await;
        match created {
            Err(err) if err.code() != Some("BUSYGROUP") => Err(Error::Redis(err)),
            _ => Ok(()),
        }
    }

    /// Up to `count` new jobs for this consumer, waiting up to
    /// [`BLOCK_FOR`] for one.
    pub(crate) async fn read(&mut self, count: usize) -> Result<Vec<StreamEntry>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(u64::try_from(BLOCK_FOR.as_millis()).unwrap_or(1000))
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut self.conn)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .map(|entry| StreamEntry::of(&entry))
            .collect())
    }

    /// Claims for this consumer up to `count` jobs another one left
    /// unacknowledged for `idle`, scanning from entry `from`.
    pub(crate) async fn reclaim(
        &mut self,
        from: &str,
        idle: Duration,
        count: usize,
    ) -> Result<Reclaimed> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(millis(idle))
            .arg(from)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn)
            .await?;
        Ok(Reclaimed {
            next: reply.next_stream_id,
            entries: reply.claimed.iter().map(StreamEntry::of).collect(),
        })
    }
}

impl RedisStore {
    /// A connection of its own to the jobs stream, reading as
    /// `consumer`; `None` when the store was built from a connection
    /// manager and knows no URL.
    pub(crate) async fn job_reader(&self, consumer: &str) -> Result<Option<JobReader>> {
        Ok(self.dedicated().await?.map(|conn| JobReader {
            conn,
            stream: keys::jobs(&self.base),
            consumer: consumer.to_owned(),
        }))
    }

    /// Claims the jobs `entries` for `consumer` again, so that they do not
    /// look abandoned to other executors.
    pub(crate) async fn renew_claims(&self, consumer: &str, entries: &[String]) -> Result<()> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(keys::jobs(&self.base))
            .arg(GROUP)
            .arg(consumer)
            .arg(0)
            .arg(entries)
            .arg("JUSTID");
        let _: redis::Value = self.bounded("xclaim", cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    /// Acknowledges the job `entry` and deletes it from the stream.
    pub(crate) async fn ack(&self, entry: &str) -> Result<()> {
        let mut conn = self.connection().await?;
        let stream = keys::jobs(&self.base);
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(entry)
            .ignore();
        self.bounded("ack", pipe.query_async(&mut conn)).await
    }

    /// Says, by the Redis clock, that an executor runs the functions
    /// `heads` and the callbacks `callbacks` (in `{prefix}:fns`), and
    /// publishes its orphan timeout (in `{prefix}:config`).
    pub(crate) async fn announce(
        &self,
        orphan_timeout: Duration,
        heads: &[&str],
        callbacks: &[&str],
    ) -> Result<()> {
        let now = self.clock_ms().await?;
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(keys::config(&self.base))
            .arg(ORPHAN_TIMEOUT_FIELD)
            .arg(millis(orphan_timeout))
            .ignore();
        if !heads.is_empty() || !callbacks.is_empty() {
            let cmd = pipe.cmd("HSET").arg(keys::functions(&self.base));
            for head in heads {
                cmd.arg(head).arg(now);
            }
            for name in callbacks {
                cmd.arg(keys::callback_field(name)).arg(now);
            }
            cmd.ignore();
        }
        self.bounded("announce", pipe.query_async(&mut conn)).await
    }

    /// Now, and when an executor last announced `field` of `{prefix}:fns`
    /// (a function head, or [`keys::callback_field`]).
    pub(crate) async fn last_announced(&self, field: &str) -> Result<LastAnnounced> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("TIME")
            .cmd("HGET")
            .arg(keys::functions(&self.base))
            .arg(field);
        let ((seconds, micros), announced): ((u64, u64), Option<String>) = self
            .bounded("announced", pipe.query_async(&mut conn))
            .await?;
        Ok(LastAnnounced {
            now_ms: seconds * 1000 + micros / 1000,
            announced_ms: announced.and_then(|at| at.parse().ok()),
        })
    }

    /// Now by the Redis clock (Unix ms), the clock of the jobs' entry ids.
    pub(crate) async fn clock_ms(&self) -> Result<u64> {
        let mut conn = self.connection().await?;
        let (seconds, micros): (u64, u64) = self
            .bounded("time", redis::cmd("TIME").query_async(&mut conn))
            .await?;
        Ok(seconds * 1000 + micros / 1000)
    }

    /// The functions (heads) with `relations(...)` on `collection`.
    pub(crate) async fn related_functions(&self, collection: &str) -> Result<Vec<String>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(keys::relations(&self.base, collection));
        self.bounded("relations", cmd.query_async(&mut conn)).await
    }

    /// Marks every value of the function `head` stale, with no recompute
    /// coming; how many values, and how many jobs queued.
    pub(crate) async fn mark_function_stale(&self, head: &str) -> Result<(usize, u64)> {
        self.mark_matching_stale(&keys::function_values(head), true)
            .await
    }
}

/// A duration as Redis takes it (ms).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream entry with these text fields.
    pub(super) fn entry(pairs: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        redis::Value::BulkString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
            ..StreamId::default()
        }
    }

    #[test]
    fn jobs_read_back_as_the_scripts_write_them() {
        assert_eq!(
            StreamJob::of(&entry(&[("id", "app::card#2:o:0123")])),
            StreamJob::Value("app::card#2:o:0123".into())
        );
        assert_eq!(
            StreamJob::of(&entry(&[("id", "f#1:1"), ("task", "t"), ("args", "a")])),
            StreamJob::Submitted {
                id: "f#1:1".into(),
                task: "t".into(),
                args: "a".into()
            }
        );
        assert_eq!(
            StreamJob::of(&entry(&[("cb", "mail"), ("args", ""), ("task", "t")])),
            StreamJob::Callback {
                name: "mail".into(),
                task: "t".into(),
                args: String::new()
            }
        );
        assert_eq!(
            StreamJob::of(&entry(&[("fan", "e:users:o:1"), ("cur", "0")])),
            StreamJob::FanOut {
                token: "e:users:o:1".into(),
                cursor: "0".into(),
                lazy: false,
                dependants: None
            }
        );
        assert_eq!(
            StreamJob::of(&entry(&[
                ("fan", "t"),
                ("cur", "0"),
                ("lazy", "1"),
                ("n", "9")
            ])),
            StreamJob::FanOut {
                token: "t".into(),
                cursor: "0".into(),
                lazy: true,
                dependants: Some(9)
            }
        );
        assert_eq!(
            StreamJob::of(&entry(&[("rel", "orders"), ("doc", "o:1"), ("op", "u")])),
            StreamJob::Related {
                collection: "orders".into(),
                doc: "o:1".into(),
                op: Some("u".into()),
                before: None
            }
        );
        assert_eq!(StreamJob::of(&entry(&[("x", "y")])), StreamJob::Malformed);
        assert_eq!(
            StreamJob::of(&entry(&[("rel", "orders")])),
            StreamJob::Malformed
        );
    }
}
