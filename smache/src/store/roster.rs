//! The workers' announcements in Redis (`{prefix}:workers`, written by
//! `lua/heartbeat.lua`): each live worker's record, by the Redis clock.
//! What a record says is `crate::roster`'s business; this module stores
//! and reads it.

use std::time::Duration;

use once_cell::sync::Lazy;

use super::redis::Scan;
use super::script::StoreScript;
use super::RedisStore;
use crate::error::Result;

static HEARTBEAT: Lazy<StoreScript> =
    Lazy::new(|| StoreScript::new(include_str!("../../lua/heartbeat.lua")));

/// At most this many keys are looked through for the workers of other
/// prefixes (a `SCAN`, a thousand keys a page).
pub(crate) const MAX_KEYS_SEARCHED: usize = 100_000;

/// A worker's record as stored, with when it was written.
#[derive(Debug, Clone)]
pub(crate) struct Announced {
    /// The worker's id.
    pub(crate) id: String,
    /// Its last heartbeat (ms, Redis clock).
    pub(crate) at_ms: u64,
    /// How long after it the worker counts as alive (ms).
    pub(crate) lives_ms: u64,
    /// What it said (JSON).
    pub(crate) record: String,
}

/// What is in Redis about the workers of one prefix.
#[derive(Debug, Clone, Default)]
pub(crate) struct Roll {
    /// The Redis time it was read at (ms).
    pub(crate) now_ms: u64,
    /// The live workers' records (dead ones are left out).
    pub(crate) workers: Vec<Announced>,
    /// The worker holding the watcher lease.
    pub(crate) watcher: Option<String>,
    /// The collections some value depends on.
    pub(crate) collections: Vec<String>,
}

impl RedisStore {
    /// A worker's heartbeat: stores its record, alive for `lives`.
    pub(crate) async fn heartbeat(&self, id: &str, record: &str, lives: Duration) -> Result<()> {
        let mut conn = self.connection().await?;
        let mut invocation = HEARTBEAT.key(self.workers_key());
        invocation
            .arg(id)
            .arg(record)
            .arg(u64::try_from(lives.as_millis()).unwrap_or(u64::MAX));
        let _: u64 = self
            .bounded("heartbeat", invocation.invoke_async(&mut conn))
            .await?;
        Ok(())
    }

    /// A worker that stops takes its record away.
    pub(crate) async fn retire(&self, id: &str) -> Result<()> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.workers_key()).arg(id);
        let _: i64 = self.bounded("retire", cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    /// The key of the workers' records, `{prefix}:workers`.
    pub(crate) fn workers_key(&self) -> String {
        super::keys::workers(&self.base)
    }

    /// The live workers of this store's prefix.
    pub(crate) async fn roll(&self) -> Result<Roll> {
        self.roll_of(&self.base).await
    }

    /// The live workers of the prefix whose keys start with `base`.
    async fn roll_of(&self, base: &str) -> Result<Roll> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        // Foreign data under a key reads as nothing there.
        pipe.ignore_errors()
            .cmd("TIME")
            .cmd("HGETALL")
            .arg(super::keys::workers(base))
            .cmd("GET")
            .arg(super::keys::worker_lease(base))
            .cmd("SMEMBERS")
            .arg(super::keys::collections(base));
        let replies: Vec<redis::Value> = self.bounded("roll", pipe.query_async(&mut conn)).await?;
        let mut replies = replies.into_iter();
        let mut next = || replies.next().unwrap_or(redis::Value::Nil);
        let (seconds, micros): (u64, u64) =
            redis::from_redis_value(next()).map_err(redis::RedisError::from)?;
        let now_ms = seconds * 1000 + micros / 1000;
        let records: Vec<(String, String)> = redis::from_redis_value(next()).unwrap_or_default();
        let watcher: Option<String> = redis::from_redis_value(next()).unwrap_or_default();
        let mut collections: Vec<String> = redis::from_redis_value(next()).unwrap_or_default();
        collections.sort();
        let workers = records
            .into_iter()
            .filter_map(|(id, stored)| parse(id, &stored))
            .filter(|worker| worker.at_ms.saturating_add(worker.lives_ms) >= now_ms)
            .collect();
        Ok(Roll {
            now_ms,
            workers,
            watcher,
            collections,
        })
    }

    /// The other prefixes (than this store's) with live workers, each
    /// with what is known of them, looking through at most
    /// [`MAX_KEYS_SEARCHED`] keys; and whether that covered every key.
    pub(crate) async fn other_rolls(&self) -> Result<(Vec<(String, Roll)>, bool)> {
        let mut conn = self.connection().await?;
        let mut scan = Scan::new("{*}:workers", Some("hash"));
        let (mut searched, mut found) = (0_usize, Vec::new());
        while let Some(keys) = self.bounded("scan", scan.next_page(&mut conn)).await? {
            found.extend(keys);
            searched += 1000;
            if searched >= MAX_KEYS_SEARCHED {
                break;
            }
        }
        let complete = scan.is_done();
        let mut others = Vec::new();
        for key in found {
            let Some(prefix) = key
                .strip_prefix('{')
                .and_then(|rest| rest.strip_suffix("}:workers"))
                .filter(|prefix| !prefix.contains(['{', '}']))
            else {
                continue;
            };
            let other = super::keys::base(prefix);
            if other == self.base {
                continue;
            }
            let roll = self.roll_of(&other).await?;
            if !roll.workers.is_empty() {
                others.push((prefix.to_owned(), roll));
            }
        }
        others.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((others, complete))
    }
}

/// A stored record: `<heartbeat ms> <lives ms> <record>`.
fn parse(id: String, stored: &str) -> Option<Announced> {
    let mut parts = stored.splitn(3, ' ');
    let at_ms = parts.next()?.parse().ok()?;
    let lives_ms = parts.next()?.parse().ok()?;
    let record = parts.next()?.to_owned();
    Some(Announced {
        id,
        at_ms,
        lives_ms,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_records_parse_and_garbage_does_not() {
        let worker = parse("w1".into(), r#"1700000000000 20000 {"db":"shop"}"#).unwrap();
        assert_eq!(
            (worker.at_ms, worker.lives_ms, worker.record.as_str()),
            (1_700_000_000_000, 20_000, r#"{"db":"shop"}"#)
        );
        for garbage in ["", "12", "x 1 {}", "1 y {}", "1 2"] {
            assert!(parse("w".into(), garbage).is_none(), "{garbage:?}");
        }
    }
}
