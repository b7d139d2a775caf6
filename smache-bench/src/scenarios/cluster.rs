//! The cluster rows of P1a and P2 (with `--cluster-url`): the same
//! measurements with smache on a Redis Cluster, against baselines on the
//! same cluster, each noted beside its one-Redis row of the same run. (P3's
//! cluster rows are in `fanout`, run right after each one-Redis size.)
//!
//! All of an instance's keys share one hash tag, so on a cluster they sit
//! in one slot on one master for now: these rows are the baseline for
//! spreading them (#16).

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::json;
use smache::Smache;

use super::hits::{side_by_side, size_name, SIZES};
use super::refresh::update_to_fresh;
use crate::ctx::{Ctx, Result};
use crate::fns::payload;
use crate::report::Row;
use crate::stats::{Micros, Summary};
use crate::target::{Raw, Target};

/// Who answers a hit on the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Smache,
    /// A `GET` of the same bytes through a cluster connection.
    RawGet,
    /// The `HMGET` smache sends, with no decoding.
    RawHmget,
}

const CONTENDERS: [Contender; 3] = [Contender::Smache, Contender::RawGet, Contender::RawHmget];

struct Side<'a> {
    smache: &'a Smache,
    raw: Raw,
    raw_key: String,
    value_key: String,
    size: usize,
    envelope_len: usize,
}

impl Side<'_> {
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
        };
        let elapsed = start.elapsed();
        if len != expected {
            return Err(format!("{who:?} returned {len} bytes, not {expected}").into());
        }
        Ok(elapsed)
    }
}

/// P1a·cluster: hits through the Redis store on the cluster, against a
/// raw `GET` of the same bytes through a cluster connection (its key in
/// the value's hash tag, so both go to the same master). `earlier` are
/// the run's rows so far, for the one-Redis P1a figures.
pub(crate) async fn hits(ctx: &Ctx, cluster: &Target, earlier: &[Row]) -> Result<Vec<Row>> {
    let prefix = ctx.prefix("p1a-cl");
    // (no in-process layer on a cluster anyway, for now)
    let smache = Smache::builder()
        .redis_url(&cluster.url)
        .prefix(&prefix)
        .local_cache_capacity(0)
        .build()?;
    let (warmup, rounds, per_round) = ctx.pick((200, 10, 100), (2_000, 40, 500));
    let mut rows = Vec::new();
    for size in SIZES {
        eprintln!(
            "[smache-bench] P1a·cluster: Redis hits, {}",
            size_name(size)
        );
        smache.scope(payload(size)).await;
        let key = payload::key(size)?;
        let before = smache
            .entry(&key)
            .await?
            .ok_or("the value was not stored")?;
        let value_key = smache.storage_key(&key);
        let mut conn = cluster.raw.clone();
        let envelope: Vec<u8> = redis::cmd("HGET")
            .arg(&value_key)
            .arg("d")
            .query_async(&mut conn)
            .await?;
        let raw_key = format!("{{{prefix}}}:raw:{size}");
        let _: () = redis::cmd("SET")
            .arg(&raw_key)
            .arg(&envelope)
            .query_async(&mut conn)
            .await?;
        let mut side = Side {
            smache: &smache,
            raw: cluster.connect().await?,
            raw_key,
            value_key,
            size,
            envelope_len: envelope.len(),
        };
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); CONTENDERS.len()];
        for who in CONTENDERS {
            for _ in 0..warmup {
                side.once(who).await?;
            }
        }
        for round in 0..rounds {
            for i in 0..CONTENDERS.len() {
                // Rotate who goes first.
                let at = (i + round) % CONTENDERS.len();
                for _ in 0..per_round {
                    samples[at].push(side.once(CONTENDERS[at]).await?);
                }
            }
        }
        let after = smache.entry(&key).await?.ok_or("the value vanished")?;
        if after.version() != before.version() {
            return Err("the value was stored again while measuring hits".into());
        }
        let summary = |who: Contender| {
            CONTENDERS
                .iter()
                .position(|c| *c == who)
                .and_then(|i| Summary::of(&samples[i]))
        };
        let ours = summary(Contender::Smache).ok_or("no samples")?;
        let raw = summary(Contender::RawGet).ok_or("no samples")?;
        let hmget = summary(Contender::RawHmget).ok_or("no samples")?;
        let scenario = format!("hit, Redis store, {}", size_name(size));
        let mut notes = vec![
            "both on redis-rs's async ClusterConnection (default settings, as smache's); the raw key shares the value's hash tag, so both ask the same master; smache: one HMGET of 6 fields, envelope + MessagePack decode, no in-process layer".to_owned(),
            format!(
                "the same HMGET raw, no decoding: p50 {} ({:.2}× the GET): the hash layout costs {}, smache's client work {}",
                Micros(hmget.p50_us),
                hmget.p50_us / raw.p50_us,
                Micros(hmget.p50_us - raw.p50_us),
                Micros(ours.p50_us - hmget.p50_us)
            ),
        ];
        let one_redis = p50_of(earlier, "P1a", &scenario, "smache");
        if let (Some(smache_one), Some(get_one)) =
            (one_redis, p50_of(earlier, "P1a", &scenario, "baseline"))
        {
            notes.push(format!(
                "on one Redis in this run (P1a): smache p50 {}, GET p50 {}; the cluster's {:.2}× and {:.2}× those",
                Micros(smache_one),
                Micros(get_one),
                ours.p50_us / smache_one,
                raw.p50_us / get_one
            ));
        }
        let mut row = side_by_side(
            &cluster.id("P1a"),
            scenario,
            ours,
            raw,
            format!(
                "raw GET of the same {} B, cluster connection",
                envelope.len()
            ),
            ("≤ 1.05×", |r| r <= 1.05),
            notes,
        );
        row.data["raw_hmget"] = json!(hmget);
        row.data["one_redis_smache_p50_us"] = json!(one_redis);
        rows.push(row);
    }
    Ok(rows)
}

/// P2·cluster: P2 with smache, its worker and executor on the cluster,
/// noted beside P2 on one Redis in the same run.
pub(crate) async fn update_to_fresh_on(
    ctx: &Ctx,
    cluster: &Target,
    earlier: &[Row],
) -> Result<Vec<Row>> {
    let mut rows = update_to_fresh(ctx, cluster).await?;
    let one_redis = earlier
        .iter()
        .find(|row| row.id == "P2")
        .and_then(|row| row.data["latency"]["p50_us"].as_f64());
    for row in &mut rows {
        row.notes.push(
            "no in-process layer on a cluster (for now): each poll reads Redis; the round trip is a PING through the cluster connection to the master holding the values".to_owned(),
        );
        let ours = row.data["latency"]["p50_us"].as_f64();
        if let (Some(ours), Some(one)) = (ours, one_redis) {
            row.notes.push(format!(
                "P2 on one Redis in this run: p50 {}; the cluster's p50 {:.2}× that",
                Micros(one),
                ours / one
            ));
        }
        row.data["one_redis_p50_us"] = json!(one_redis);
    }
    Ok(rows)
}

/// A p50 (µs) of an earlier row: `side` is `smache` or `baseline`.
fn p50_of(rows: &[Row], id: &str, scenario: &str, side: &str) -> Option<f64> {
    rows.iter()
        .find(|row| row.id == id && row.scenario == scenario)
        .and_then(|row| row.data[side]["p50_us"].as_f64())
}
