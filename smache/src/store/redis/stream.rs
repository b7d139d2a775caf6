//! The jobs streams (`<shard base>jobs`, one per shard; `{prefix}:jobs`
//! on one shard) as the executors and `inspect` use them: renewing and
//! acknowledging jobs, announcing what an executor runs (`{prefix}:fns`,
//! `{prefix}:config`), and reading the streams, their held entries and the
//! dead letters back for a report.
//!
//! Jobs are written by the Lua scripts (see `lua/common.lua`); [`StreamJob`]
//! is the one place their fields are read back. An executor's reading
//! (the consumer group, reads, reclaims, the doorbell) is in `reader`,
//! what only `inspect` reads in `report`.

mod bell;
mod reader;
mod report;

use std::time::Duration;

use redis::streams::StreamId;

use super::jobs::Start;
use super::RedisStore;
use crate::error::Result;
use crate::store::keys::{self, GROUP};

pub(crate) use self::reader::{JobReader, Starting};

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
    /// Signal the dependants of a value's token (`v:<id>`) in every shard
    /// but the job's own, which its script signalled inline (fields `fan`,
    /// `all`, `lazy`).
    FanAll {
        token: String,
        /// The value turned stale with no new value coming: mark its
        /// dependants stale only.
        lazy: bool,
    },
    /// Signal the dependants of `token`, a chunk at a time from SSCAN
    /// `cursor`, or from the job's record of how far it got (fields `fan`,
    /// `cur`, `lazy`, `n`).
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
    /// (fields `rel`, `doc`, `op`, `pre`, `all`).
    Related {
        collection: String,
        doc: String,
        /// The kind of change ("i", "u", "r", "d"; none from a worker
        /// older than this field).
        op: Option<String>,
        /// The document before the change (BSON), when MongoDB gave it.
        before: Option<Vec<u8>>,
        /// The job answers for every shard (one job per change); else for
        /// its own shard only (a job of one shard per shard, from a worker
        /// older than this field).
        all: bool,
    },
    /// None of the above.
    Malformed,
}

impl StreamJob {
    /// Reads a job back from its stream entry's fields.
    pub(super) fn of(entry: &StreamId) -> StreamJob {
        let args = || entry.get::<String>("args").unwrap_or_default();
        if let Some(token) = entry.get::<String>("fan") {
            let lazy = entry.get::<String>("lazy").is_some_and(|v| v == "1");
            if entry.get::<String>("all").is_some_and(|v| v == "1") {
                return StreamJob::FanAll { token, lazy };
            }
            return StreamJob::FanOut {
                token,
                cursor: entry.get::<String>("cur").unwrap_or_else(|| "0".into()),
                lazy,
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
                all: entry.get::<String>("all").is_some_and(|v| v == "1"),
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

/// Where a job is: the shard whose stream holds it, and its entry id
/// there (two shards' streams may hold the same entry id). Acknowledging,
/// renewing and giving it up go to that shard's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct EntryRef {
    /// The shard (0 on a store of one).
    pub(crate) shard: usize,
    /// Its entry id, `<ms>-<seq>` by the Redis clock.
    pub(crate) id: String,
}

impl std::fmt::Display for EntryRef {
    /// The entry id, followed by `@<shard>` past shard 0.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.shard {
            0 => f.write_str(&self.id),
            shard => write!(f, "{}@{shard}", self.id),
        }
    }
}

/// A job read from a shard's stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamEntry {
    /// Where it is.
    pub(crate) at: EntryRef,
    /// What it asks for.
    pub(crate) job: StreamJob,
    /// A recompute job started as it was read (`lua/take.lua`): what
    /// starting it answered, which the executor then does not ask again.
    pub(crate) start: Option<Start>,
}

impl StreamEntry {
    /// Reads a job and its entry id back from shard `shard`'s stream.
    pub(super) fn of(shard: usize, entry: &StreamId) -> StreamEntry {
        StreamEntry {
            at: EntryRef {
                shard,
                id: entry.id.clone(),
            },
            job: StreamJob::of(entry),
            start: None,
        }
    }
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

impl RedisStore {
    /// The jobs stream of shard `shard`.
    pub(crate) fn jobs_key(&self, shard: usize) -> String {
        keys::jobs(self.shards.base(shard))
    }

    /// Claims the jobs `entries` for `consumer` again, so that they do not
    /// look abandoned to other executors: one `XCLAIM` per shard holding
    /// some, pipelined.
    pub(crate) async fn renew_claims(&self, consumer: &str, entries: &[EntryRef]) -> Result<()> {
        let mut by_shard: std::collections::BTreeMap<usize, Vec<&str>> = Default::default();
        for entry in entries {
            by_shard.entry(entry.shard).or_default().push(&entry.id);
        }
        if by_shard.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        for (shard, ids) in by_shard {
            pipe.cmd("XCLAIM")
                .arg(self.jobs_key(shard))
                .arg(GROUP)
                .arg(consumer)
                .arg(0)
                .arg(ids)
                .arg("JUSTID")
                .ignore();
        }
        self.bounded("xclaim", pipe.query_async(&mut conn)).await
    }

    /// Acknowledges the job `entry` and deletes it from its shard's stream.
    pub(crate) async fn ack(&self, entry: &EntryRef) -> Result<()> {
        let mut conn = self.connection().await?;
        let stream = self.jobs_key(entry.shard);
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(&entry.id)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(&entry.id)
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
}

/// A duration as Redis takes it (ms).
pub(super) fn millis(duration: Duration) -> u64 {
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
            StreamJob::of(&entry(&[("fan", "v:f#1:x"), ("all", "1")])),
            StreamJob::FanAll {
                token: "v:f#1:x".into(),
                lazy: false
            }
        );
        assert_eq!(
            StreamJob::of(&entry(&[("fan", "v:f#1:x"), ("all", "1"), ("lazy", "1")])),
            StreamJob::FanAll {
                token: "v:f#1:x".into(),
                lazy: true
            }
        );
        assert_eq!(
            StreamJob::of(&entry(&[("rel", "orders"), ("doc", "o:1"), ("op", "u")])),
            StreamJob::Related {
                collection: "orders".into(),
                doc: "o:1".into(),
                op: Some("u".into()),
                before: None,
                all: false,
            }
        );
        assert_eq!(StreamJob::of(&entry(&[("x", "y")])), StreamJob::Malformed);
        assert_eq!(
            StreamJob::of(&entry(&[("rel", "orders")])),
            StreamJob::Malformed
        );
    }
}
