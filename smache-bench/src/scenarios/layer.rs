//! P1d: a hit through the in-process layer in front of Redis, beside a
//! `moka` get of the same value and a raw Redis `GET` of the same bytes.
//! P1e: cross-process invalidation: a writer process drops a value
//! (`Smache::invalidate`, a write to its hash like any refresh) and a
//! reader process, hitting the value in its layer in a loop, stops
//! serving the old value: its next call misses and computes.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use smache::{computed, Smache};

use super::hits::{
    each_call_note, moka_batch, moka_holding, sample_scopings, side_by_side, size_name,
    smache_batch, Scoping, SIZES,
};
use crate::child::{hear, say, ChildProcess};
use crate::ctx::{connection_manager, Ctx, Result};
use crate::fns::payload;
use crate::report::{Met, Row};
use crate::stats::{Micros, Summary};

/// Waits until `smache`'s layer serves (its tracking connection is up).
async fn live(smache: &Smache) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !smache.local_cache().is_some_and(|layer| layer.live) {
        if Instant::now() > deadline {
            return Err("the in-process layer did not come up".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// P1d: hits through the layer. Each sample times a batch (hits take
/// about a microsecond); the raw `GET` is timed one by one.
pub(crate) async fn layer_hits(ctx: &Ctx) -> Result<Vec<Row>> {
    const BATCH: u32 = 100;
    let prefix = ctx.prefix("p1d");
    let smache = ctx.layered_instance(&prefix)?;
    live(&smache).await?;
    let (warmup, rounds, per_round) = ctx.pick((50, 10, 20), (500, 50, 40));
    let mut raw = connection_manager(&ctx.redis_url).await?;
    let mut rows = Vec::new();
    for size in SIZES {
        eprintln!("[smache-bench] P1d: layer hits, {}", size_name(size));
        // The first call stores, the second reads from Redis into the layer.
        smache.scope(payload(size)).await;
        smache.scope(payload(size)).await;
        let key = payload::key(size)?;
        let envelope: Vec<u8> = redis::cmd("HGET")
            .arg(smache.storage_key(&key))
            .arg("d")
            .query_async(&mut raw)
            .await?;
        let raw_key = format!("{prefix}:raw:{size}");
        redis::cmd("SET")
            .arg(&raw_key)
            .arg(&envelope)
            .query_async::<()>(&mut raw)
            .await?;
        let held = smache.local_cache().map_or(0, |layer| layer.entries);
        if held == 0 {
            return Err("the value did not reach the layer".into());
        }
        let moka = moka_holding(size);
        let ours = |scoping| smache_batch(&smache, size, BATCH, scoping);
        let theirs = || moka_batch(&moka, size, BATCH);
        let get = || {
            let mut raw = raw.clone();
            let raw_key = raw_key.clone();
            async move {
                let start = Instant::now();
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(&raw_key)
                    .query_async(&mut raw)
                    .await?;
                black_box(bytes);
                Ok::<_, crate::ctx::Error>(start.elapsed())
            }
        };
        for _ in 0..warmup {
            ours(Scoping::Batch).await;
            ours(Scoping::EachCall).await;
            theirs();
            get().await?;
        }
        let before = smache
            .entry(&key)
            .await?
            .ok_or("the value was not stored")?;
        let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let ours_first = round % 2 == 0;
            if ours_first {
                for turn in 0..per_round {
                    sample_scopings(&ours, turn, &mut a, &mut d).await;
                }
            }
            for _ in 0..per_round {
                b.push(theirs());
                c.push(get().await?);
            }
            if !ours_first {
                for turn in 0..per_round {
                    sample_scopings(&ours, turn, &mut a, &mut d).await;
                }
            }
        }
        let after = smache.entry(&key).await?.ok_or("the value vanished")?;
        if after.version() != before.version() {
            return Err("the value was stored again while measuring hits".into());
        }
        let (ours, moka_get, raw_get, each_call) = (
            Summary::of(&a).ok_or("no samples")?,
            Summary::of(&b).ok_or("no samples")?,
            Summary::of(&c).ok_or("no samples")?,
            Summary::of(&d).ok_or("no samples")?,
        );
        let each_call = each_call_note(&each_call, &moka_get);
        let against_get = ours.p50_us / raw_get.p50_us;
        let mut row = side_by_side(
            "P1d",
            format!("hit, in-process layer, {}", size_name(size)),
            ours,
            moka_get,
            "moka::sync::Cache get".to_owned(),
            ("≤ 1.5× moka, ≤ 0.05× GET", |r| r <= 1.5),
            vec![
                format!(
                    "against a raw Redis GET of the same {} B (p50 {}): {against_get:.3}× (target ≤ 0.05×)",
                    envelope.len(),
                    Micros(raw_get.p50_us)
                ),
                format!(
                    "per-call means of batches of {BATCH}, inside one Smache::scope per batch (as calls in a request handler run in one scope)"
                ),
                each_call,
            ],
        );
        if against_get > 0.05 {
            row.met = Met::from(false);
        }
        row.data["raw_get"] = serde_json::json!(raw_get);
        rows.push(row);
    }
    Ok(rows)
}

/// The hidden `layer-reader` mode: P1e's reader process.
#[derive(Debug, Args)]
pub(crate) struct LayerReader {
    /// The smache prefix.
    #[arg(long)]
    prefix: String,
    /// The value's argument.
    #[arg(long)]
    tag: String,
}

/// When the reader's computation last started (Unix µs): the moment it
/// stopped serving the old value.
static COMPUTED_AT_US: AtomicU64 = AtomicU64::new(0);

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The value P1e's reader serves: computed anew (a different value) each
/// time it is not served from the cache.
#[computed(Raw)]
async fn p1e_value(tag: &str) -> String {
    COMPUTED_AT_US.store(unix_us(), Ordering::SeqCst);
    format!("{tag}@{}", unix_us())
}

/// Reader side: for each line `ROUND`, reads the value until the layer
/// holds it, says `HELD`, then hits it in a loop until it changes and
/// says `CHANGED <unix µs the computation began>`.
pub(crate) async fn reader(args: LayerReader) -> Result<()> {
    let smache = Smache::builder()
        .redis_url(std::env::var("SMACHE_REDIS_URL")?)
        .prefix(&args.prefix)
        .build()?;
    live(&smache).await?;
    say("READY", "");
    while let Some(line) = hear().await? {
        if line.trim() != "ROUND" {
            break;
        }
        let old = smache.scope(p1e_value(&args.tag)).await;
        let old = loop {
            // Read again until a hit of the layer: the value it holds.
            let again = smache.scope(p1e_value(&args.tag)).await;
            if again == old && smache.local_cache().is_some_and(|l| l.entries > 0) {
                break again;
            }
        };
        say("HELD", "");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if black_box(smache.scope(p1e_value(&args.tag)).await) != old {
                break;
            }
            if Instant::now() > deadline {
                return Err("the old value was served for 10 s".into());
            }
        }
        say(
            "CHANGED",
            &COMPUTED_AT_US.load(Ordering::SeqCst).to_string(),
        );
    }
    Ok(())
}

/// P1e: the writer here, the reader in a process of its own.
pub(crate) async fn cross_process(ctx: &Ctx) -> Result<Vec<Row>> {
    let prefix = ctx.prefix("p1e");
    let tag = format!("p1e-{}", ctx.run);
    let writer = ctx.redis_instance(&prefix)?;
    let rounds = ctx.pick(30, 300);
    let mut reader = ChildProcess::spawn(
        "P1e reader",
        &[
            "layer-reader".to_owned(),
            format!("--prefix={prefix}"),
            format!("--tag={tag}"),
        ],
    )?;
    reader.expect("READY", Duration::from_secs(30)).await?;
    let key = p1e_value::key(&tag)?;
    let mut lags = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        reader.send("ROUND").await?;
        reader.expect("HELD", Duration::from_secs(10)).await?;
        // Let the reader spin on hits for a moment.
        tokio::time::sleep(Duration::from_millis(2)).await;
        writer.invalidate(&key).await?;
        let returned = unix_us();
        let began: u64 = reader
            .expect("CHANGED", Duration::from_secs(15))
            .await?
            .parse()?;
        lags.push(began.saturating_sub(returned) as f64);
    }
    reader.finish(Duration::from_secs(10)).await?;
    let lag = Summary::of_us(lags).ok_or("no samples")?;
    Ok(vec![Row {
        id: "P1e".to_owned(),
        scenario: "cross-process invalidation: writer's store returns → reader stops serving the old value".to_owned(),
        smache: lag.to_string(),
        baseline: "none (absolute; same machine's clock on both sides)".to_owned(),
        ratio: None,
        ratio_of: String::new(),
        target: "p99 ≤ 5 ms".to_owned(),
        met: Met::from(lag.p99_us <= 5_000.0),
        notes: vec![
            "the writer's Smache::invalidate (a DEL of the value's hash) returns; the reader, a process of its own hitting the value in its layer in a loop, starts computing it anew: from one to the other".to_owned(),
            format!("{rounds} rounds; Redis on loopback"),
        ],
        data: serde_json::json!({ "lag": lag }),
    }])
}
