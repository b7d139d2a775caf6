//! Where an instance's keys are in Redis, for the tests that read or write
//! them by name, whatever the instance's shard count (`SMACHE_REDIS_SHARDS`,
//! see the README's "Shards").
//!
//! With one shard every key is under `{prefix}:`. With several, a value's
//! hash, its tasks, its jobs and the reverse edges of its own dependencies
//! are under its shard's base `{prefix#<n>}:`, and the instance's own keys
//! (`config`, the worker's, the workers' announcements) stay under
//! `{prefix}:`. A test asks here rather than formatting `{prefix}` itself.

use std::collections::HashSet;

use redis::streams::{StreamId, StreamRangeReply};
use redis::AsyncCommands;
use smache::{CacheKey, Smache};

use crate::RedisConn;

/// The shard count the tests' instances get from the environment (1 when
/// unset: the test command sets it for every pass against a cluster but
/// the chaos run, which asks its instance's [`Layout`]).
pub fn shards() -> usize {
    std::env::var("SMACHE_REDIS_SHARDS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

/// An instance's key bases.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `{prefix}:`: the instance's own keys.
    instance: String,
    /// Each shard's base, in shard order (`{prefix}:` alone with one).
    bases: Vec<String>,
}

impl Layout {
    /// The layout of `smache`'s store, its shards named as `inspect jobs`
    /// names their streams (`<base>jobs`).
    pub async fn of(smache: &Smache) -> Layout {
        let report = smache.inspect_jobs().await.expect("inspect jobs");
        let bases = report
            .shards
            .iter()
            .map(|shard| {
                shard
                    .stream
                    .strip_suffix("jobs")
                    .expect("a jobs stream is <base>jobs")
                    .to_owned()
            })
            .collect();
        Layout {
            instance: format!("{{{}}}:", smache.prefix()),
            bases,
        }
    }

    /// `{prefix}:`, the base of the keys that stay with the instance.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Every shard's base.
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// The shard of value `id`, for tests that write a value by hand.
    ///
    /// Stated here again on purpose, not taken from the crate: a value's
    /// shard is part of the stored layout (a process of another version
    /// must find the value where this one put it), so a change to the
    /// hash fails these tests rather than quietly moving every value.
    pub fn shard_of(&self, id: &str) -> usize {
        if self.bases.len() == 1 {
            return 0;
        }
        // 64-bit FNV-1a, then MurmurHash3's finalizer, modulo the count.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &byte in id.as_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^= hash >> 33;
        usize::try_from(hash % self.bases.len() as u64).unwrap()
    }

    /// The base of the shard of value `id`.
    pub fn base_of(&self, id: &str) -> &str {
        &self.bases[self.shard_of(id)]
    }

    /// A task id for a task of value `id` made by hand: `<shard>.<name>`
    /// with several shards, as the store names them.
    pub fn task_id(&self, id: &str, name: &str) -> String {
        match self.bases.len() {
            1 => name.to_owned(),
            _ => format!("{}.{name}", self.shard_of(id)),
        }
    }

    /// The base of the shard a task belongs to (its id is `<shard>.<id>`
    /// with several shards).
    pub fn task_base(&self, task: &str) -> &str {
        let shard = match self.bases.len() {
            1 => 0,
            _ => task
                .split_once('.')
                .and_then(|(shard, _)| shard.parse().ok())
                .expect("a sharded task id is <shard>.<id>"),
        };
        &self.bases[shard]
    }

    /// A task's record.
    pub fn task_key(&self, task: &str) -> String {
        format!("{}t:{task}", self.task_base(task))
    }

    /// `suffix` in every shard (`{prefix#<n>}:<suffix>`), e.g. the shards'
    /// parts of a token's reverse edges, `r:<token>`.
    pub fn everywhere(&self, suffix: &str) -> Vec<String> {
        self.bases
            .iter()
            .map(|base| format!("{base}{suffix}"))
            .collect()
    }

    /// The members of set `suffix` over every shard: a token's dependants
    /// (`r:<token>`), the collections watched (`collections`).
    pub async fn members(&self, conn: &mut RedisConn, suffix: &str) -> HashSet<String> {
        let mut all = HashSet::new();
        for key in self.everywhere(suffix) {
            let members: HashSet<String> = conn.smembers(key).await.unwrap();
            all.extend(members);
        }
        all
    }

    /// Every job queued, in every shard's stream (oldest first per shard).
    pub async fn jobs(&self, conn: &mut RedisConn) -> Vec<StreamId> {
        self.entries(conn, "jobs").await
    }

    /// Every dead letter, in every shard.
    pub async fn dead(&self, conn: &mut RedisConn) -> Vec<StreamId> {
        self.entries(conn, "dead").await
    }

    /// How many jobs are queued, in every shard.
    pub async fn jobs_len(&self, conn: &mut RedisConn) -> u64 {
        let mut len = 0;
        for key in self.everywhere("jobs") {
            let queued: u64 = conn.xlen(key).await.unwrap();
            len += queued;
        }
        len
    }

    /// Makes every job held by an executor idle past `RECLAIM_AFTER`, as
    /// if held that long by a dead one: the next executor's first reclaim
    /// takes them (rather than the test waiting 30 s). How many it aged.
    pub async fn age_held_jobs(&self, conn: &mut RedisConn) -> usize {
        let idle = smache::executor::RECLAIM_AFTER + std::time::Duration::from_secs(5);
        let mut aged = 0;
        for stream in self.everywhere("jobs") {
            let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&stream)
                .arg("executors")
                .arg("-")
                .arg("+")
                .arg(100)
                .query_async(conn)
                .await
                .unwrap_or_default();
            for held in pending.ids {
                let _: redis::Value = redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg("executors")
                    .arg(&held.consumer)
                    .arg(0)
                    .arg(&held.id)
                    .arg("IDLE")
                    .arg(u64::try_from(idle.as_millis()).unwrap())
                    .arg("JUSTID")
                    .query_async(conn)
                    .await
                    .unwrap();
                aged += 1;
            }
        }
        aged
    }

    async fn entries(&self, conn: &mut RedisConn, stream: &str) -> Vec<StreamId> {
        let mut all = Vec::new();
        for key in self.everywhere(stream) {
            let reply: StreamRangeReply = conn.xrange_all(key).await.unwrap();
            all.extend(reply.ids);
        }
        all
    }
}

/// The base of the shard of `key`'s value (`{prefix#<n>}:`, or
/// `{prefix}:` with one shard).
pub fn value_base(smache: &Smache, key: &CacheKey) -> String {
    let storage = smache.storage_key(key);
    let at = storage.find("}:v:").expect("a value key is <base>v:<id>") + 2;
    storage[..at].to_owned()
}

/// The value id of `key`: its storage key without `<base>v:`.
pub fn value_id(smache: &Smache, key: &CacheKey) -> String {
    let storage = smache.storage_key(key);
    let at = storage.find("}:v:").expect("a value key is <base>v:<id>") + 4;
    storage[at..].to_owned()
}

/// Runs the signal script of a store (`touch.lua`: what the watching
/// worker runs in one shard for a document change, and a value's fan-out
/// job in each other shard) for `token` in shard `base`.
pub async fn touch(conn: &mut RedisConn, base: &str, token: &str) {
    let touch = redis::Script::new(concat!(
        include_str!("../../smache/lua/common.lua"),
        include_str!("../../smache/lua/touch.lua")
    ));
    let _: redis::Value = touch
        .key(format!("{base}jobs"))
        .arg(base)
        .arg("")
        .arg("")
        .arg(token)
        .invoke_async(conn)
        .await
        .unwrap();
}
