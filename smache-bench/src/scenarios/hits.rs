//! P1: a hit. Through the Redis store, side by side with a raw `GET` of
//! the same bytes (P1a) and with the `cached` crate's async Redis store
//! (P1c); through the embedded store, side by side with `moka` (P1b).
//!
//! The contenders take turns in rounds (the order alternating), so drift
//! on a shared machine hits them alike.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use redis::aio::ConnectionManager;
use serde_json::json;
use smache::Smache;

use crate::ctx::{connection_manager, Ctx, Result};
use crate::fns::{payload, text};
use crate::report::{Met, Row};
use crate::stats::{Micros, Summary};

/// The value sizes of P1.
pub(crate) const SIZES: [usize; 2] = [100, 10 * 1024];

pub(crate) fn size_name(size: usize) -> String {
    if size >= 1024 {
        format!("{} KB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Who answers a hit over Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Smache,
    RawGet,
    /// The `HMGET` smache sends, with no decoding: splits smache's cost
    /// into its key layout and its client work.
    RawHmget,
    Cached,
}

struct RedisSide<'a> {
    smache: &'a Smache,
    raw: ConnectionManager,
    raw_key: String,
    value_key: String,
    cached: Option<&'a AsyncRedisCache<String, String>>,
    size: usize,
    envelope_len: usize,
}

impl RedisSide<'_> {
    /// One timed hit.
    async fn once(&mut self, who: Contender) -> Result<Duration> {
        let start = Instant::now();
        let (len, expected) = match who {
            Contender::Smache => (
                black_box(self.smache.scope(payload(self.size)).await).len(),
                self.size,
            ),
            Contender::RawGet => {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(&self.raw_key)
                    .query_async(&mut self.raw)
                    .await?;
                (black_box(bytes).len(), self.envelope_len)
            }
            Contender::RawHmget => {
                let fields: [Option<Vec<u8>>; 6] = redis::cmd("HMGET")
                    .arg(&self.value_key)
                    .arg(&["v", "d", "g", "w", "t", "e"])
                    .query_async(&mut self.raw)
                    .await?;
                let [_, data, ..] = black_box(fields);
                (data.map_or(0, |d| d.len()), self.envelope_len)
            }
            Contender::Cached => {
                let cache = self.cached.ok_or("no cached store")?;
                let hit = cache.async_cache_get(&self.size.to_string()).await?;
                (black_box(hit.ok_or("cached: a miss")?).len(), self.size)
            }
        };
        let elapsed = start.elapsed();
        if len != expected {
            return Err(format!("{who:?} returned {len} bytes, not {expected}").into());
        }
        Ok(elapsed)
    }
}

/// P1a and P1c: hits through the Redis store.
pub(crate) async fn redis_hits(ctx: &Ctx, raw_rows: bool, cached_rows: bool) -> Result<Vec<Row>> {
    let prefix = ctx.prefix("p1");
    let smache = ctx.redis_instance(&prefix)?;
    let cached = if cached_rows {
        match AsyncRedisCache::<String, String>::builder("cached")
            .namespace(&prefix)
            .connection_string(&ctx.redis_url)
            .connection_manager(true)
            .build()
            .await
        {
            Ok(cache) => Ok(cache),
            Err(err) => Err(format!("the cached store does not build: {err}")),
        }
    } else {
        Err("not selected".to_owned())
    };
    let (warmup, rounds, per_round) = ctx.pick((200, 10, 100), (2_000, 40, 500));
    let mut rows = Vec::new();
    for size in SIZES {
        eprintln!("[smache-bench] P1a/P1c: Redis hits, {}", size_name(size));
        let value = smache.scope(payload(size)).await;
        let key = payload::key(size)?;
        let before = smache
            .entry(&key)
            .await?
            .ok_or("the value was not stored")?;
        let mut conn = ctx.redis.clone();
        let envelope: Vec<u8> = redis::cmd("HGET")
            .arg(smache.storage_key(&key))
            .arg("d")
            .query_async(&mut conn)
            .await?;
        let raw_key = format!("{prefix}:raw:{size}");
        let _: () = redis::cmd("SET")
            .arg(&raw_key)
            .arg(&envelope)
            .query_async(&mut conn)
            .await?;
        if let Ok(cache) = &cached {
            cache.async_cache_set(size.to_string(), value).await?;
        }
        let mut side = RedisSide {
            smache: &smache,
            raw: connection_manager(&ctx.redis_url).await?,
            raw_key,
            value_key: smache.storage_key(&key),
            cached: cached.as_ref().ok(),
            size,
            envelope_len: envelope.len(),
        };
        let mut contenders = vec![Contender::Smache, Contender::RawGet, Contender::RawHmget];
        if side.cached.is_some() {
            contenders.push(Contender::Cached);
        }
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
        for &who in &contenders {
            for _ in 0..warmup {
                side.once(who).await?;
            }
        }
        for round in 0..rounds {
            for i in 0..contenders.len() {
                // Rotate who goes first.
                let at = (i + round) % contenders.len();
                for _ in 0..per_round {
                    samples[at].push(side.once(contenders[at]).await?);
                }
            }
        }
        let after = smache.entry(&key).await?.ok_or("the value vanished")?;
        if after.version() != before.version() {
            return Err("the value was stored again while measuring hits".into());
        }
        let summary = |who: Contender| {
            contenders
                .iter()
                .position(|c| *c == who)
                .and_then(|i| Summary::of(&samples[i]))
        };
        let ours = summary(Contender::Smache).ok_or("no samples")?;
        let hmget = summary(Contender::RawHmget).ok_or("no samples")?;
        if raw_rows {
            let raw = summary(Contender::RawGet).ok_or("no samples")?;
            let mut row = side_by_side(
                "P1a",
                format!("hit, Redis store, {}", size_name(size)),
                ours,
                raw,
                format!("raw GET of the same {} B", envelope.len()),
                ("≤ 1.05×", |r| r <= 1.05),
                vec![
                    "both on a redis ConnectionManager; smache: one HMGET of 6 fields, envelope + MessagePack decode".to_owned(),
                    format!(
                        "the same HMGET raw, no decoding: p50 {} ({:.2}× the GET): the hash layout costs {}, smache's client work {}",
                        Micros(hmget.p50_us),
                        hmget.p50_us / raw.p50_us,
                        Micros(hmget.p50_us - raw.p50_us),
                        Micros(ours.p50_us - hmget.p50_us)
                    ),
                ],
            );
            row.data["raw_hmget"] = json!(hmget);
            rows.push(row);
        }
        if cached_rows {
            rows.push(match (summary(Contender::Cached), &cached) {
                (Some(peer), _) => side_by_side(
                    "P1c",
                    format!("hit, Redis store, {}", size_name(size)),
                    ours,
                    peer,
                    "`cached` AsyncRedisCache get".to_owned(),
                    ("faster (< 1×)", |r| r < 1.0),
                    vec!["cached 4.1, connection_manager(true), same String value".to_owned()],
                ),
                (None, Err(reason)) => Row::na(
                    "P1c",
                    &format!("hit, Redis store, {}", size_name(size)),
                    "faster (< 1×)",
                    reason,
                ),
                (None, Ok(_)) => return Err("no samples of cached".into()),
            });
        }
    }
    Ok(rows)
}

/// P1b: hits through the embedded store, against moka holding the same
/// value keyed by the function's argument (what a memoizing moka user
/// writes). Hits take well under a microsecond: each sample times a batch.
pub(crate) async fn embedded_hits(ctx: &Ctx) -> Result<Vec<Row>> {
    const BATCH: u32 = 100;
    let smache = Smache::builder().prefix(ctx.prefix("p1b")).build()?;
    let (warmup, rounds, per_round) = ctx.pick((50, 10, 20), (500, 50, 40));
    let mut rows = Vec::new();
    for size in SIZES {
        eprintln!("[smache-bench] P1b: embedded hits, {}", size_name(size));
        smache.scope(payload(size)).await;
        let key = payload::key(size)?;
        let before = smache
            .entry(&key)
            .await?
            .ok_or("the value was not stored")?;
        let moka = moka_holding(size);
        let ours = |scoping| smache_batch(&smache, size, BATCH, scoping);
        let theirs = || moka_batch(&moka, size, BATCH);
        for _ in 0..warmup {
            ours(Scoping::Batch).await;
            ours(Scoping::EachCall).await;
            theirs();
        }
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let ours_first = round % 2 == 0;
            if ours_first {
                for turn in 0..per_round {
                    sample_scopings(&ours, turn, &mut a, &mut c).await;
                }
            }
            for _ in 0..per_round {
                b.push(theirs());
            }
            if !ours_first {
                for turn in 0..per_round {
                    sample_scopings(&ours, turn, &mut a, &mut c).await;
                }
            }
        }
        let after = smache.entry(&key).await?.ok_or("the value vanished")?;
        if after.version() != before.version() {
            return Err("the value was stored again while measuring hits".into());
        }
        let (ours, moka_get, each_call) = (
            Summary::of(&a).ok_or("no samples")?,
            Summary::of(&b).ok_or("no samples")?,
            Summary::of(&c).ok_or("no samples")?,
        );
        let each_call = each_call_note(&each_call, &moka_get);
        rows.push(side_by_side(
            "P1b",
            format!("hit, embedded store, {}", size_name(size)),
            ours,
            moka_get,
            "moka::sync::Cache get".to_owned(),
            ("≤ 1.5×", |r| r <= 1.5),
            vec![
                format!(
                    "per-call means of batches of {BATCH}, inside one Smache::scope per batch (as calls in a request handler run in one scope); moka keyed by the argument (a usize), as a memoizing moka user would"
                ),
                each_call,
            ],
        ));
    }
    Ok(rows)
}

/// A `moka` cache holding the text of `size` bytes under `size`: what a
/// memoizing moka user writes, the baseline of in-process hits.
pub(crate) fn moka_holding(size: usize) -> moka::sync::Cache<usize, String> {
    let moka = moka::sync::Cache::new(1_000);
    moka.insert(size, text(size));
    moka
}

/// How the hits of [`smache_batch`] find their instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scoping {
    /// One [`Smache::scope`] around the whole batch: what each call costs
    /// a request handler run in one scope (an installed instance,
    /// `Smache::install`, is found by a static's read instead of the
    /// task-local's). The rows' figure.
    Batch,
    /// A [`Smache::scope`] around each call (its task-local swap and its
    /// `Arc` clone): reported beside, in a note.
    EachCall,
}

/// The mean time of `batch` hits of `payload(size)` through `smache`
/// (hits take well under a microsecond: one sample times a batch).
pub(crate) async fn smache_batch(
    smache: &Smache,
    size: usize,
    batch: u32,
    scoping: Scoping,
) -> Duration {
    match scoping {
        Scoping::Batch => {
            smache
                .scope(async {
                    let start = Instant::now();
                    for _ in 0..batch {
                        black_box(payload(black_box(size)).await);
                    }
                    start.elapsed() / batch
                })
                .await
        }
        Scoping::EachCall => {
            let start = Instant::now();
            for _ in 0..batch {
                black_box(smache.scope(payload(black_box(size))).await);
            }
            start.elapsed() / batch
        }
    }
}

/// One sample of `ours` with each [`Scoping`], their order alternating
/// with `turn`.
pub(crate) async fn sample_scopings<F, Fut>(
    ours: F,
    turn: u32,
    batch: &mut Vec<Duration>,
    each_call: &mut Vec<Duration>,
) where
    F: Fn(Scoping) -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    if turn.is_multiple_of(2) {
        batch.push(ours(Scoping::Batch).await);
        each_call.push(ours(Scoping::EachCall).await);
    } else {
        each_call.push(ours(Scoping::EachCall).await);
        batch.push(ours(Scoping::Batch).await);
    }
}

/// The note giving the hits measured with a scope around each call.
pub(crate) fn each_call_note(each_call: &Summary, moka: &Summary) -> String {
    format!(
        "with a Smache::scope around each call instead: p50 {} ({:.2}× moka)",
        Micros(each_call.p50_us),
        each_call.p50_us / moka.p50_us
    )
}

/// The mean time of `batch` gets of `size` from `moka`.
pub(crate) fn moka_batch(
    moka: &moka::sync::Cache<usize, String>,
    size: usize,
    batch: u32,
) -> Duration {
    let start = Instant::now();
    for _ in 0..batch {
        black_box(moka.get(&black_box(size)));
    }
    start.elapsed() / batch
}

/// A row comparing two latency distributions by their medians.
pub(crate) fn side_by_side(
    id: &str,
    scenario: String,
    ours: Summary,
    theirs: Summary,
    baseline: String,
    (target, meets): (&str, fn(f64) -> bool),
    notes: Vec<String>,
) -> Row {
    let ratio = ours.p50_us / theirs.p50_us;
    Row {
        id: id.to_owned(),
        scenario,
        smache: ours.to_string(),
        baseline: format!("{baseline}: {theirs}"),
        ratio: Some(ratio),
        ratio_of: "p50 smache / p50 baseline".to_owned(),
        target: target.to_owned(),
        met: Met::from(meets(ratio)),
        notes: {
            let mut notes = notes;
            notes.push(format!(
                "p99 ratio {:.2}× ({} vs {}), n = {}",
                ours.p99_us / theirs.p99_us,
                Micros(ours.p99_us),
                Micros(theirs.p99_us),
                ours.n
            ));
            notes
        },
        data: json!({ "smache": ours, "baseline": theirs }),
    }
}
