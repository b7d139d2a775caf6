//! P3: one change with N dependants; the time until all N are fresh,
//! against a pipelined `SET` of N values, with the worker and one executor
//! in another process.

use std::time::{Duration, Instant};

use bson::doc;
use futures::StreamExt;
use serde_json::json;
use smache::Smache;

use super::refresher::RefresherProcess;
use crate::ctx::{short_sleep, Ctx, Result};
use crate::fns::{fan, Setting};
use crate::probe::{command_counts, commands_per, redis_cpu_seconds, slowest_command, usec_per};
use crate::report::{Met, Row};
use crate::stats::{us, Micros};

/// P3 at one size.
struct FanOut {
    n: u32,
    /// From the update to the sampled dependant being signalled.
    queued: Duration,
    /// From the update to every job acknowledged.
    done: Duration,
    fresh: usize,
    baseline: Duration,
    peak_kib: Option<u64>,
    setup: Duration,
    /// The longest single Redis command during the refresh.
    slowest: Option<(Duration, String)>,
    /// CPU seconds of the worker + executor process, start to stop.
    refresher_cpu: Option<f64>,
    /// CPU seconds of the Redis server during the refresh.
    redis_cpu: f64,
    /// Redis server time of scripts during the refresh, µs a value.
    script_us: f64,
    /// Redis commands during the refresh, a value (scripts' included).
    commands: f64,
}

/// smache's scripts that may show in the slow log, by hash.
fn script_names() -> Vec<(String, &'static str)> {
    const COMMON: &str = include_str!("../../../smache/lua/common.lua");
    [
        ("change.lua", include_str!("../../../smache/lua/change.lua")),
        ("store.lua", include_str!("../../../smache/lua/store.lua")),
        ("start.lua", include_str!("../../../smache/lua/start.lua")),
        ("begin.lua", include_str!("../../../smache/lua/begin.lua")),
    ]
    .into_iter()
    .map(|(name, body)| {
        (
            redis::Script::new(&format!("{COMMON}{body}"))
                .get_hash()
                .to_owned(),
            name,
        )
    })
    .collect()
}

async fn fan_out(ctx: &Ctx, client: &mongodb::Client, n: u32) -> Result<FanOut> {
    let size = if n >= 1000 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    };
    let database = ctx.database(&format!("p3_{size}"));
    let prefix = ctx.prefix(&format!("p3-{size}"));
    let smache = Smache::builder()
        .redis_url(&ctx.redis_url)
        .mongodb(client, &database)
        .prefix(&prefix)
        .build()?;
    let settings = client.database(&database).collection::<Setting>("settings");
    settings
        .insert_one(Setting {
            id: "fanout".to_owned(),
            value: "0".to_owned(),
        })
        .await?;
    // The worker and executor first: a worker that starts after the values
    // were stored (with no saved position) would mark them all stale.
    let refresher = RefresherProcess::start(&prefix, &database, &ctx.redis_url, 1).await?;
    eprintln!("[smache-bench] P3: computing {n} dependants of one collection");
    let setup = Instant::now();
    let calls = (0..n).map(|i| {
        let smache = smache.clone();
        async move { smache.scope(fan(i)).await }
    });
    futures::stream::iter(calls)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let setup = setup.elapsed();
    let keys: Vec<String> = (0..n)
        .map(|i| Ok(smache.storage_key(&fan::key(i)?)))
        .collect::<Result<_>>()?;
    let mut conn = ctx.redis.clone();

    // The baseline: the same number of values, pipelined SETs.
    let envelope: Vec<u8> = redis::cmd("HGET")
        .arg(&keys[0])
        .arg("d")
        .query_async(&mut conn)
        .await?;
    let baseline = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET")
                .arg(format!("{prefix}:raw:{i}"))
                .arg(&envelope)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
    }
    let baseline = baseline.elapsed();

    eprintln!("[smache-bench] P3: one change, {n} dependants");
    let generation = |conn: &mut redis::aio::ConnectionManager| {
        let mut conn = conn.clone();
        let key = keys[0].clone();
        async move {
            let g: Option<u64> = redis::cmd("HGET")
                .arg(&key)
                .arg("g")
                .query_async(&mut conn)
                .await?;
            Ok::<_, crate::ctx::Error>(g.unwrap_or(0))
        }
    };
    let g0 = generation(&mut conn).await?;
    let jobs = format!("{{{prefix}}}:jobs");
    let limit = Duration::from_secs(30) + Duration::from_millis(u64::from(n));
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut conn)
        .await?;
    let cpu_before = redis_cpu_seconds(&mut conn).await?;
    let stats_before = command_counts(&mut conn).await?;
    settings
        .update_one(doc! { "_id": "fanout" }, doc! { "$set": { "value": "1" } })
        .await?;
    let committed = Instant::now();
    // Dependants are signalled by fan-out jobs, 1,000 at a time: the
    // sampled one's generation bump says its chunk has been signalled.
    while generation(&mut conn).await? == g0 {
        if committed.elapsed() > limit {
            return Err("the change was not seen".into());
        }
        short_sleep(Duration::from_micros(500));
    }
    let queued = committed.elapsed();
    // An executor deletes each job once its value is stored.
    loop {
        let left: u64 = redis::cmd("XLEN").arg(&jobs).query_async(&mut conn).await?;
        if left == 0 {
            break;
        }
        if committed.elapsed() > limit {
            return Err(format!("{left} jobs still queued after {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = committed.elapsed();
    let redis_cpu = redis_cpu_seconds(&mut conn).await? - cpu_before;
    let stats_after = command_counts(&mut conn).await?;
    let per_value = commands_per(
        &stats_before,
        &stats_after,
        n as usize,
        &["hget", "xlen", "info", "ping"],
    );
    let slowest = slowest_command(&mut conn, &script_names()).await?;
    let (peak_kib, refresher_cpu) = refresher.stop().await?;
    let mut fresh = 0;
    for chunk in keys.chunks(1_000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("HMGET").arg(key).arg("g").arg("w");
        }
        let replies: Vec<(Option<u64>, Option<u64>)> = pipe.query_async(&mut conn).await?;
        fresh += replies
            .iter()
            .filter(|(g, w)| matches!((g, w), (Some(g), Some(w)) if w >= g && *g > g0))
            .count();
    }
    Ok(FanOut {
        n,
        queued,
        done,
        fresh,
        baseline,
        peak_kib,
        setup,
        slowest,
        refresher_cpu,
        redis_cpu,
        script_us: usec_per(&stats_before, &stats_after, "evalsha", n as usize),
        commands: per_value.values().sum(),
    })
}

/// P3: one change with many dependants, at each of `sizes` (empty: the
/// mode's default).
pub(crate) async fn fan_outs(ctx: &Ctx, sizes: &[u32]) -> Result<Vec<Row>> {
    let client = ctx.mongo().await?;
    let sizes: Vec<u32> = if sizes.is_empty() {
        ctx.pick(vec![1_000], vec![10_000, 100_000])
    } else {
        sizes.to_vec()
    };
    let mut rows = Vec::new();
    for n in sizes {
        let run = match fan_out(ctx, &client, n).await {
            Ok(run) => run,
            Err(err) => {
                eprintln!("[smache-bench] P3 with {n} dependants failed: {err}");
                rows.push(Row::na(
                    "P3",
                    &format!("one change, {n} dependants → all refreshed"),
                    "≥ 0.50×",
                    &format!("failed: {err}"),
                ));
                continue;
            }
        };
        let ours = f64::from(run.n) / run.done.as_secs_f64();
        let theirs = f64::from(run.n) / run.baseline.as_secs_f64();
        let ratio = ours / theirs;
        let mut notes = vec![
            format!(
                "sampled dependant signalled {} after the update (change stream, then fan-out jobs signalling the {} dependants 1,000 at a time); all acknowledged after {}",
                Micros(us(run.queued)),
                run.n,
                Micros(us(run.done))
            ),
            format!(
                "one executor (default concurrency) and the worker in a child process; its peak RSS {}",
                run.peak_kib
                    .map_or("n/a".to_owned(), |kib| format!("{} MiB", kib / 1024))
            ),
            format!(
                "values depend on a collection (sources), so a recompute loads nothing from MongoDB; building them took {:.1} s (64 concurrent misses)",
                run.setup.as_secs_f64()
            ),
        ];
        notes.push(format!(
            "CPU: Redis {:.2} s during the refresh, {} of script time and {:.1} commands a value (scripts' own included); the worker + executor process {} in all",
            run.redis_cpu,
            Micros(run.script_us),
            run.commands,
            run.refresher_cpu.map_or("n/a".to_owned(), |s| format!("{s:.2} s"))
        ));
        if let Some((took, command)) = &run.slowest {
            notes.push(format!(
                "longest single Redis command meanwhile (SLOWLOG): {command}, {} (Redis serves no one else while it runs)",
                Micros(us(*took))
            ));
        }
        if run.fresh != run.n as usize {
            notes.push(format!(
                "only {} of {} values fresh at the end",
                run.fresh, run.n
            ));
        }
        rows.push(Row {
            id: "P3".to_owned(),
            scenario: format!("one change, {} dependants → all refreshed", run.n),
            smache: format!("{} ({ours:.0} values/s)", Micros(us(run.done))),
            baseline: format!(
                "pipelined SET ×{}: {} ({theirs:.0} values/s)",
                run.n,
                Micros(us(run.baseline))
            ),
            ratio: Some(ratio),
            ratio_of: "smache throughput / baseline throughput, one executor".to_owned(),
            target: "≥ 0.50×".to_owned(),
            met: Met::from(ratio >= 0.5 && run.fresh == run.n as usize),
            notes,
            data: json!({
                "n": run.n,
                "queued_us": us(run.queued),
                "done_us": us(run.done),
                "baseline_us": us(run.baseline),
                "fresh": run.fresh,
                "refresher_vmhwm_kib": run.peak_kib,
                "setup_us": us(run.setup),
                "redis_cpu_s": run.redis_cpu,
                "refresher_cpu_s": run.refresher_cpu,
                "script_us_per_value": run.script_us,
                "commands_per_value": run.commands,
                "slowest_command": run.slowest.as_ref().map(|(took, name)| json!({ "us": us(*took), "command": name })),
            }),
        });
    }
    Ok(rows)
}
