//! The worker's state in Redis: the watcher lease and its fencing
//! counter, the saved position in the change stream (and its cluster
//! time), the stale-marking owed, the settings the watcher publishes, and
//! recording a change with its jobs. Key names: [`WorkerKeys`](keys::WorkerKeys).

use std::time::Duration;

use redis::streams::StreamRangeReply;

use super::RedisStore;
use crate::error::Result;
use crate::store::keys;

impl RedisStore {
    /// Takes or renews the watcher lease; the fencing token, or `None` if
    /// another worker holds it.
    pub(crate) async fn lease(&self, worker: &str, ttl: Duration) -> Result<Option<u64>> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.lease.key(&self.worker.lease);
        invocation
            .key(&self.worker.fence)
            .arg(worker)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let fence: u64 = self
            .bounded("lease", invocation.invoke_async(&mut conn))
            .await?;
        Ok((fence > 0).then_some(fence))
    }

    /// A worker that stops gives up the watcher lease, if it still holds
    /// it (`lua/resign.lua`); whether it did.
    pub(crate) async fn resign(&self, worker: &str) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.resign.key(&self.worker.lease);
        invocation.arg(worker);
        let resigned: i64 = self
            .bounded("resign", invocation.invoke_async(&mut conn))
            .await?;
        Ok(resigned == 1)
    }

    /// The worker saw a change (or an empty batch); queues the jobs and
    /// saves its position, if the saved token is `expected` (empty: none).
    pub(crate) async fn changed(
        &self,
        worker: &str,
        expected: &[u8],
        seen: &Seen<'_>,
    ) -> Result<Changed> {
        let mut conn = self.connection().await?;
        let mut tokens = seen.tokens;
        let (mut touched, mut signalled) = (0, None);
        if self.shards.count() > 1 && !tokens.is_empty() {
            // Every shard concerned first (together), then the position: a
            // crash between replays the change rather than losing it.
            fail::fail_point!("smache::worker::before_signals");
            let (queued, shards) = self.touch_shards(&conn, seen).await?;
            (touched, signalled) = (queued, Some(shards));
            fail::fail_point!("smache::worker::before_position");
            tokens = &[];
        }
        let mut invocation = self.scripts.change.key(&self.worker.token);
        invocation
            .key(&self.worker.lease)
            .key(&self.worker.time)
            .arg(&self.base)
            .arg(worker)
            .arg(seen.resume)
            .arg(expected)
            .arg(seen.time.map_or_else(String::new, |time| time.to_string()))
            .arg(seen.op)
            .arg(seen.before.unwrap_or_default())
            .arg(tokens);
        let queued: i64 = self
            .bounded("change", invocation.invoke_async(&mut conn))
            .await?;
        Ok(match queued {
            -1 => Changed::LeaseLost,
            -2 => Changed::Moved,
            n => {
                // Counted once the change is recorded: a replayed change is
                // counted once.
                if let Some(shards) = signalled {
                    crate::metrics::shards_signalled(shards);
                }
                Changed::Queued(u64::try_from(n).unwrap_or(0) + touched)
            }
        })
    }

    /// Signals the dependants of a change's tokens in every shard
    /// (`lua/touch.lua`), all at once, then queues one relation job for
    /// each changed document that some shard has functions with relations
    /// on (`lua/relation.lua`, in the document's own shard: the job
    /// answers for every shard, so the document is mapped once); how many
    /// jobs were queued, and in how many shards the script ran.
    async fn touch_shards(&self, conn: &super::Conn, seen: &Seen<'_>) -> Result<(u64, usize)> {
        let concerned = self.concerned_shards(conn, seen.tokens).await?;
        let signalled = concerned.len();
        let touches = concerned.into_iter().map(|shard| {
            let base = self.shards.base(shard);
            let mut conn = conn.clone();
            let mut invocation = self.scripts.touch.key(keys::jobs(base));
            invocation
                .arg(base)
                .arg(seen.op)
                .arg(seen.before.unwrap_or_default())
                .arg(seen.tokens);
            async move {
                invocation
                    .invoke_async::<Vec<redis::Value>>(&mut conn)
                    .await
            }
        });
        let replies = self
            .bounded("touch", futures::future::try_join_all(touches))
            .await?;
        let mut queued = 0;
        let mut related: Vec<Vec<String>> = vec![Vec::new(); self.shards.count()];
        for reply in replies {
            // The count of jobs queued, then the tokens.
            let mut reply = reply.into_iter();
            if let Some(jobs) = reply.next() {
                queued += redis::from_redis_value::<u64>(jobs).map_err(redis::RedisError::from)?;
            }
            for token in reply {
                let token: String =
                    redis::from_redis_value(token).map_err(redis::RedisError::from)?;
                let home = &mut related[self.shards.of(&token)];
                if !home.contains(&token) {
                    home.push(token);
                }
            }
        }
        let relations = related
            .into_iter()
            .enumerate()
            .filter(|(_, tokens)| !tokens.is_empty())
            .map(|(shard, tokens)| {
                let mut conn = conn.clone();
                let base = self.shards.base(shard);
                let mut invocation = self.scripts.relation.key(keys::jobs(base));
                invocation
                    .arg(base)
                    .arg(seen.op)
                    .arg(seen.before.unwrap_or_default())
                    .arg(tokens);
                async move { invocation.invoke_async::<u64>(&mut conn).await }
            });
        let queued_relations = self
            .bounded("relation", futures::future::try_join_all(relations))
            .await?;
        Ok((
            queued + queued_relations.into_iter().sum::<u64>(),
            signalled,
        ))
    }

    /// The shards that hold anything a change of `tokens` concerns: a
    /// dependant of a token (`r:<token>`), or a function with relations on
    /// a changed document's collection (`rel:<collection>`), which is all
    /// `lua/touch.lua` reads. One `EXISTS` of those keys per shard (they
    /// share its slot), pipelined: on a cluster, one pipeline per master,
    /// sent at once. A change then runs a script in these shards alone,
    /// rather than in every shard (48 on a cluster by default, most with
    /// nothing to do), which made the change path, and the worker's
    /// throughput, grow with the shard count.
    ///
    /// A key that appears between this read and the touches (a computation
    /// beginning in a skipped shard) goes unsignalled, as one appearing
    /// after the touches always did: such a computation began after the
    /// change was committed, so what it reads from the database is no
    /// older than the change (README, "Shards").
    async fn concerned_shards(&self, conn: &super::Conn, tokens: &[String]) -> Result<Vec<usize>> {
        let mut collections: Vec<&str> = tokens
            .iter()
            .filter_map(|token| keys::document_collection(token))
            .collect();
        collections.sort_unstable();
        collections.dedup();
        let mut pipe = redis::pipe();
        for base in self.shards.bases() {
            let exists = pipe.cmd("EXISTS");
            for token in tokens {
                exists.arg(keys::dependants(base, token));
            }
            for collection in &collections {
                exists.arg(keys::relations(base, collection));
            }
        }
        let mut conn = conn.clone();
        let found: Vec<u64> = self
            .bounded("concerned_shards", pipe.query_async(&mut conn))
            .await?;
        Ok(found
            .into_iter()
            .enumerate()
            .filter(|&(_, n)| n > 0)
            .map(|(shard, _)| shard)
            .collect())
    }

    /// The saved position in the change stream: the encoded resume token
    /// (empty: none is saved).
    pub(crate) async fn saved_position(&self) -> Result<Vec<u8>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(&self.worker.token);
        let bytes: Option<Vec<u8>> = self
            .bounded("saved_position", cmd.query_async(&mut conn))
            .await?;
        Ok(bytes.unwrap_or_default())
    }

    /// How far the worker has followed the change stream: the cluster time
    /// of its saved position (`seconds << 32 | increment`), if any, and the
    /// entry id of the newest job in each shard's stream (by shard; `None`:
    /// empty), such that every job queued for the changes up to that time
    /// is at or before its shard's entry. One shard: read together. Several:
    /// the time first, then the streams (a change is queued in every shard
    /// before its position is saved), so a stream read later holds at
    /// least the jobs of that time.
    pub(crate) async fn worker_progress(&self) -> Result<(Option<u64>, Vec<Option<String>>)> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&self.worker.time);
        let time = if self.shards.count() == 1 {
            None
        } else {
            let (time,): (Option<String>,) = self
                .bounded("worker_progress", pipe.query_async(&mut conn))
                .await?;
            pipe = redis::pipe();
            Some(time)
        };
        for base in self.shards.bases() {
            pipe.cmd("XREVRANGE")
                .arg(keys::jobs(base))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let mut replies: Vec<redis::Value> = self
            .bounded("worker_progress", pipe.query_async(&mut conn))
            .await?;
        let time: Option<String> = match time {
            Some(time) => time,
            None if replies.is_empty() => None,
            None => redis::from_redis_value(replies.remove(0)).map_err(redis::RedisError::from)?,
        };
        let mut newest = Vec::with_capacity(replies.len());
        for reply in replies {
            let reply: StreamRangeReply =
                redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
            newest.push(reply.ids.into_iter().next().map(|entry| entry.id));
        }
        Ok((time.and_then(|time| time.parse().ok()), newest))
    }

    /// Who watches, whether a position is saved and whether a
    /// stale-marking is owed, read together.
    pub(crate) async fn watch_state(&self) -> Result<WatchState> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(&self.worker.lease)
            .cmd("EXISTS")
            .arg(&self.worker.token)
            .cmd("EXISTS")
            .arg(&self.worker.lost);
        let (watcher, position_saved, stale_marking_owed): (Option<String>, bool, bool) = self
            .bounded("watch_state", pipe.query_async(&mut conn))
            .await?;
        Ok(WatchState {
            watcher,
            position_saved,
            stale_marking_owed,
        })
    }

    /// Records that every value must be marked stale, and why, and drops
    /// the saved position, in one step (`MULTI`), so whichever worker
    /// watches next does it.
    pub(crate) async fn owe_stale_marking(&self, why: Owed) -> Result<()> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&self.worker.lost)
            .arg(why.marker())
            .ignore()
            .cmd("DEL")
            .arg(&self.worker.token)
            .ignore();
        self.bounded("owe_stale_marking", pipe.query_async(&mut conn))
            .await
    }

    /// Why marking every value stale is owed, if it is.
    pub(crate) async fn stale_marking_owed(&self) -> Result<Option<Owed>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(&self.worker.lost);
        let marker: Option<String> = self
            .bounded("stale_marking_owed", cmd.query_async(&mut conn))
            .await?;
        Ok(marker.map(|marker| Owed::of_marker(&marker)))
    }

    /// The stale-marking owed is done: clears the marker.
    pub(crate) async fn stale_marking_done(&self) -> Result<()> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&self.worker.lost);
        let _: i64 = self
            .bounded("stale_marking_done", cmd.query_async(&mut conn))
            .await?;
        Ok(())
    }

    /// Stores the most values one change recomputes eagerly, which every
    /// script that signals dependants reads (`{prefix}:config`
    /// `max_fanout`).
    ///
    /// Written to the instance's `{prefix}:config` and, with several
    /// shards, to each shard's, since a script reads its own shard's.
    pub(crate) async fn publish_max_fanout(&self, max_fanout: u64) -> Result<()> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        let shards = self.shards.bases().filter(|_| self.shards.count() > 1);
        for base in std::iter::once(self.base.as_str()).chain(shards) {
            pipe.cmd("HSET")
                .arg(keys::config(base))
                .arg("max_fanout")
                .arg(max_fanout)
                .ignore();
        }
        let () = self
            .bounded("publish_max_fanout", pipe.query_async(&mut conn))
            .await?;
        Ok(())
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

/// What Redis holds about the watch (see [`RedisStore::watch_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchState {
    /// The worker holding the lease, if any.
    pub(crate) watcher: Option<String>,
    /// Whether a position in the change stream is saved.
    pub(crate) position_saved: bool,
    /// Whether marking every value stale is still owed.
    pub(crate) stale_marking_owed: bool,
}

/// Why marking every value stale is owed: what `{prefix}:w:lost` holds
/// while it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owed {
    /// No position was saved (`start`): a first start, or Redis came back
    /// empty while no worker watched; the changes before it are unknown.
    BeforeStart,
    /// The history after the saved position is gone, or the saved
    /// position is corrupt (`lost`).
    Lost,
}

impl Owed {
    /// What the marker key holds.
    fn marker(self) -> &'static str {
        match self {
            Owed::BeforeStart => "start",
            Owed::Lost => "lost",
        }
    }

    /// Any other marker (`1`, from older workers) is lost history.
    fn of_marker(marker: &str) -> Self {
        if marker == "start" {
            Owed::BeforeStart
        } else {
            Owed::Lost
        }
    }
}

/// A cluster time as one number that orders as the time does:
/// `seconds << 32 | increment`, as `{prefix}:w:time` holds it.
pub(crate) fn timestamp_key(time: bson::Timestamp) -> u64 {
    (u64::from(time.time) << 32) | u64::from(time.increment)
}

#[cfg(test)]
mod tests {
    use super::Owed;

    #[test]
    fn the_owed_marker_round_trips_and_older_markers_read_as_lost() {
        for owed in [Owed::BeforeStart, Owed::Lost] {
            assert_eq!(Owed::of_marker(owed.marker()), owed);
        }
        assert_eq!(Owed::of_marker("1"), Owed::Lost);
    }
}
