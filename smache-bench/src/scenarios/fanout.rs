//! P3: one change with N dependants; the time until all N are fresh,
//! against a pipelined `SET` of N values, with the worker and one executor
//! in another process. With a cluster (`--cluster-url`), the same on the
//! cluster with one and with three executors (`P3·cluster 1 exec`,
//! `P3·cluster 3 exec`), each against the one-Redis run of the same size.

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
use crate::target::{Raw, ServerCommands, Target};

/// The number of executors of the second cluster run.
const CLUSTER_EXECUTORS: usize = 3;

/// P3 at one size.
struct FanOut {
    n: u32,
    /// Executors (child processes; the first also runs the worker).
    executors: usize,
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
    /// CPU seconds of the worker + executor processes, start to stop.
    refresher_cpu: Option<f64>,
    /// Wall time of the whole run at this size (setup included).
    wall: Duration,
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

/// P3 at `n` dependants on `target`, with `executors` executors.
async fn fan_out(
    ctx: &Ctx,
    target: &Target,
    client: &mongodb::Client,
    n: u32,
    executors: usize,
) -> Result<FanOut> {
    let started = Instant::now();
    let size = if n >= 1000 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    };
    let name = if target.cluster {
        format!("p3c{executors}-{size}")
    } else {
        format!("p3-{size}")
    };
    let database = ctx.database(&name.replace('-', "_"));
    let prefix = ctx.prefix(&name);
    let smache = Smache::builder()
        .redis_url(&target.url)
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
    let refresher = RefresherProcess::start(&prefix, &database, &target.url, executors).await?;
    let id = row_id(target, executors);
    eprintln!("[smache-bench] {id}: computing {n} dependants of one collection");
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
    let mut conn = target.raw.clone();
    // Server commands (INFO, SLOWLOG) go to the node holding the values.
    let mut node = target.node(&prefix);

    // The baseline: the same number of values, pipelined SETs (in the
    // values' hash tag: on a cluster, one slot's pipeline to its master).
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
                .arg(format!("{{{prefix}}}:raw:{i}"))
                .arg(&envelope)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
    }
    let baseline = baseline.elapsed();

    eprintln!("[smache-bench] {id}: one change, {n} dependants");
    let generation = |conn: &mut Raw| {
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
    // Every shard's jobs stream (one on one Redis; 48 on a cluster by
    // default), each asked on its own (a pipeline may not cross slots).
    let streams: Vec<String> = smache
        .inspect_jobs()
        .await?
        .shards
        .into_iter()
        .map(|shard| shard.stream)
        .collect();
    let limit = Duration::from_secs(30) + Duration::from_millis(u64::from(n));
    let _: () = node.query(redis::cmd("SLOWLOG").arg("RESET")).await?;
    let cpu_before = redis_cpu_seconds(&mut node).await?;
    let stats_before = command_counts(&mut node).await?;
    settings
        .update_one(doc! { "_id": "fanout" }, doc! { "$set": { "value": "1" } })
        .await?;
    let committed = Instant::now();
    // Dependants are signalled by a fan-out job, 1,000 per script: the
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
        let mut left = 0;
        for stream in &streams {
            let length: u64 = redis::cmd("XLEN")
                .arg(stream)
                .query_async(&mut conn)
                .await?;
            left += length;
        }
        if left == 0 {
            break;
        }
        if committed.elapsed() > limit {
            return Err(format!("{left} jobs still queued after {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = committed.elapsed();
    let redis_cpu = redis_cpu_seconds(&mut node).await? - cpu_before;
    let stats_after = command_counts(&mut node).await?;
    let per_value = commands_per(
        &stats_before,
        &stats_after,
        n as usize,
        &["hget", "xlen", "info", "ping"],
    );
    let slowest = slowest_command(&mut node, &script_names()).await?;
    let (peak_kib, refresher_cpu) = refresher.stop().await?;
    let mut fresh = 0;
    // By shard (the key's hash tag), so that no pipeline crosses slots.
    let mut by_shard: std::collections::BTreeMap<&str, Vec<&String>> = Default::default();
    for key in &keys {
        let tag = key.find("}:").map_or(key.as_str(), |end| &key[..end]);
        by_shard.entry(tag).or_default().push(key);
    }
    for chunk in by_shard.values().flat_map(|keys| keys.chunks(1_000)) {
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
        executors,
        queued,
        done,
        fresh,
        baseline,
        peak_kib,
        setup,
        slowest,
        refresher_cpu,
        wall: started.elapsed(),
        redis_cpu,
        script_us: usec_per(&stats_before, &stats_after, "evalsha", n as usize),
        commands: per_value.values().sum(),
    })
}

/// The row id of a run: `P3`, `P3·cluster 1 exec`, `P3·cluster 3 exec`.
fn row_id(target: &Target, executors: usize) -> String {
    if target.cluster {
        format!("{} {executors} exec", target.id("P3"))
    } else {
        "P3".to_owned()
    }
}

/// P3: one change with many dependants, at each of `sizes` (empty: the
/// mode's default); with a cluster, after each size on the server the
/// same size on the cluster with one executor, then with three.
pub(crate) async fn fan_outs(ctx: &Ctx, sizes: &[u32]) -> Result<Vec<Row>> {
    let client = ctx.mongo().await?;
    let sizes: Vec<u32> = if sizes.is_empty() {
        ctx.pick(vec![1_000], vec![10_000, 100_000])
    } else {
        sizes.to_vec()
    };
    let server = ctx.server();
    let mut runs = vec![(&server, 1)];
    if let Some(cluster) = &ctx.cluster {
        runs.extend([(cluster, 1), (cluster, CLUSTER_EXECUTORS)]);
    }
    let mut rows = Vec::new();
    for n in sizes {
        let mut one_redis = None;
        for &(target, executors) in &runs {
            let id = row_id(target, executors);
            let scenario = format!("one change, {n} dependants → all refreshed");
            let run = match fan_out(ctx, target, &client, n, executors).await {
                Ok(run) => run,
                Err(err) => {
                    eprintln!("[smache-bench] {id} with {n} dependants failed: {err}");
                    let goal = if target.cluster { "—" } else { "≥ 0.50×" };
                    rows.push(Row::na(&id, &scenario, goal, &format!("failed: {err}")));
                    continue;
                }
            };
            eprintln!(
                "[smache-bench] {id} with {n} dependants: {:.1} s in all",
                run.wall.as_secs_f64()
            );
            if target.cluster {
                rows.push(cluster_row(id, scenario, &run, one_redis.as_ref()));
            } else {
                rows.push(server_row(id, scenario, &run));
                one_redis = Some(run);
            }
        }
    }
    Ok(rows)
}

/// Values a second, of smache and of the pipelined `SET`.
fn throughputs(run: &FanOut) -> (f64, f64) {
    (
        f64::from(run.n) / run.done.as_secs_f64(),
        f64::from(run.n) / run.baseline.as_secs_f64(),
    )
}

/// A P3 row on the run's server: against the pipelined `SET`.
fn server_row(id: String, scenario: String, run: &FanOut) -> Row {
    let (ours, theirs) = throughputs(run);
    let ratio = ours / theirs;
    Row {
        id,
        scenario,
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
        notes: notes(run),
        data: data(run),
    }
}

/// A P3 row on the cluster: against the same size on the run's server
/// (one executor there), the cluster's own pipelined `SET` in the notes.
/// No target: all of an instance's keys share one slot for now, so these
/// rows are the baseline for spreading them.
fn cluster_row(id: String, scenario: String, run: &FanOut, one_redis: Option<&FanOut>) -> Row {
    let (ours, theirs) = throughputs(run);
    let mut notes = notes(run);
    notes.insert(
        0,
        format!(
            "pipelined SET ×{} on the cluster (in one slot; the values are spread over the instance's shards, 48 by default): {} ({theirs:.0} values/s); smache / that {:.2}× (P3's target ≥ 0.50×); Redis CPU, script time and commands below are those of the master of the instance's own tag only (one of the masters)",
            run.n,
            Micros(us(run.baseline)),
            ours / theirs
        ),
    );
    let baseline = one_redis.map(|one| throughputs(one).0);
    let mut data = data(run);
    data["one_redis_values_per_s"] = json!(baseline);
    Row {
        id,
        scenario,
        smache: format!("{} ({ours:.0} values/s)", Micros(us(run.done))),
        baseline: match one_redis {
            Some(one) => format!(
                "P3 on one Redis (1 executor): {} ({:.0} values/s)",
                Micros(us(one.done)),
                throughputs(one).0
            ),
            None => "P3 on one Redis: n/a".to_owned(),
        },
        ratio: baseline.map(|theirs| ours / theirs),
        ratio_of: format!(
            "throughput on the cluster, {} executor{} / on one Redis, 1 executor (same size, same run)",
            run.executors,
            if run.executors == 1 { "" } else { "s" }
        ),
        target: "— (#16: against one Redis)".to_owned(),
        met: if run.fresh == run.n as usize {
            Met::Na
        } else {
            Met::No
        },
        notes,
        data,
    }
}

/// What a P3 row notes under the table.
fn notes(run: &FanOut) -> Vec<String> {
    let processes = match run.executors {
        1 => "one executor (default concurrency) and the worker in a child process".to_owned(),
        n => format!(
            "{n} executors (default concurrency), each in a child process, the first also running the worker"
        ),
    };
    let mut notes = vec![
        format!(
            "sampled dependant signalled {} after the update (change stream, then a fan-out job signalling the {} dependants, 1,000 per script); all acknowledged after {}",
            Micros(us(run.queued)),
            run.n,
            Micros(us(run.done))
        ),
        format!(
            "{processes}; peak RSS {}",
            run.peak_kib
                .map_or("n/a".to_owned(), |kib| format!("{} MiB", kib / 1024))
        ),
        format!(
            "values depend on a collection (sources), so a recompute loads nothing from MongoDB; building them took {:.1} s (64 concurrent misses); {:.1} s in all at this size",
            run.setup.as_secs_f64(),
            run.wall.as_secs_f64()
        ),
    ];
    notes.push(format!(
        "CPU: Redis {:.2} s during the refresh, {} of script time and {:.1} commands a value (scripts' own included); the worker + executor process{} {} in all",
        run.redis_cpu,
        Micros(run.script_us),
        run.commands,
        if run.executors == 1 { "" } else { "es" },
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
    notes
}

/// The raw figures of a P3 row.
fn data(run: &FanOut) -> serde_json::Value {
    json!({
        "n": run.n,
        "executors": run.executors,
        "queued_us": us(run.queued),
        "done_us": us(run.done),
        "baseline_us": us(run.baseline),
        "fresh": run.fresh,
        "refresher_vmhwm_kib": run.peak_kib,
        "setup_us": us(run.setup),
        "wall_s": run.wall.as_secs_f64(),
        "redis_cpu_s": run.redis_cpu,
        "refresher_cpu_s": run.refresher_cpu,
        "script_us_per_value": run.script_us,
        "commands_per_value": run.commands,
        "slowest_command": run.slowest.as_ref().map(|(took, name)| json!({ "us": us(*took), "command": name })),
    })
}
