//! P4: 1,000 concurrent misses of one cold key from 4 processes. The
//! function must run exactly once (counted with a Redis `INCR` in its
//! body), and a caller's latency should exceed the function's own time by
//! at most 2 round trips.
//!
//! On a small shared machine, waking 4 processes × 250 tasks costs
//! milliseconds by itself, so each trial is followed by a control burst
//! with the same shape and no smache: every task sleeps until the
//! function's own time has passed, then makes one `GET`.

use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::child::{hear, say, ChildProcess};
use crate::ctx::{connection_manager, Ctx, Result};
use crate::fns::{flight_value, FlightEnv, FLIGHT_ENV, FLIGHT_SPAN};
use crate::report::{Met, Row};
use crate::stats::{Micros, Summary};

const PROCESSES: usize = 4;
const CALLERS: usize = 250;

/// The hidden `flight-child` mode: one process of P4's callers.
#[derive(Debug, Args)]
pub(crate) struct FlightChild {
    /// The smache prefix.
    #[arg(long)]
    prefix: String,
    /// The cold key's argument.
    #[arg(long)]
    tag: String,
    /// Concurrent calls in this process.
    #[arg(long)]
    callers: usize,
    /// The function's own time, in ms.
    #[arg(long)]
    compute_ms: u64,
    /// The control burst: sleep, one GET, no smache.
    #[arg(long)]
    control: bool,
}

/// What a child reports.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    /// Each call's latency from the start signal, in µs.
    latencies_us: Vec<u64>,
    /// The function's own time, if it ran in this process.
    own_us: Option<u64>,
    /// When it started, from the start signal, if it ran here.
    body_start_us: Option<u64>,
    /// The distinct values the calls returned.
    values: Vec<String>,
}

/// Child side: warm up, say READY, wait for the start line, make the
/// calls at once, report.
pub(crate) async fn child(args: FlightChild) -> Result<()> {
    let redis_url = std::env::var("SMACHE_REDIS_URL")?;
    let counter = connection_manager(&redis_url).await?;
    FLIGHT_ENV
        .set(FlightEnv {
            counter,
            compute: Duration::from_millis(args.compute_ms),
        })
        .map_err(|_| "flight env set twice")?;
    let smache = smache::Smache::builder()
        .redis_url(&redis_url)
        .prefix(&args.prefix)
        .build()?;
    // Warm-up on a key of this process: connection, subscription, scripts.
    let warm = format!("{}-warm-{}", args.tag, std::process::id());
    smache.scope(flight_value(warm.clone())).await;
    smache.scope(flight_value(warm)).await;
    *FLIGHT_SPAN.lock().map_err(|_| "poisoned")? = None;
    say("READY", "");
    hear().await?.ok_or("no start line")?;
    let start = Instant::now();
    let compute = Duration::from_millis(args.compute_ms);
    let mut tasks = Vec::with_capacity(args.callers);
    for _ in 0..args.callers {
        let smache = smache.clone();
        let tag = args.tag.clone();
        let mut conn = FLIGHT_ENV.get().ok_or("no flight env")?.counter.clone();
        let control = args.control;
        tasks.push(tokio::spawn(async move {
            let value = if control {
                tokio::time::sleep_until((start + compute).into()).await;
                let value: redis::RedisResult<Option<String>> =
                    redis::cmd("GET").arg(&tag).query_async(&mut conn).await;
                value.ok().flatten().unwrap_or_default()
            } else {
                smache.scope(flight_value(tag)).await
            };
            (start.elapsed(), value)
        }));
    }
    let mut latencies_us = Vec::with_capacity(args.callers);
    let mut values = Vec::new();
    for task in tasks {
        let (latency, value) = task.await?;
        latencies_us.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        if !values.contains(&value) {
            values.push(value);
        }
    }
    let span = *FLIGHT_SPAN.lock().map_err(|_| "poisoned")?;
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let report = ChildReport {
        latencies_us,
        own_us: if args.control {
            Some(micros(compute))
        } else {
            span.map(|(from, to)| micros(to - from))
        },
        body_start_us: span.map(|(from, _)| micros(from.saturating_duration_since(start))),
        values,
    };
    say("RESULT", &serde_json::to_string(&report)?);
    Ok(())
}

/// One trial: 4 processes × 250 callers on a fresh key.
struct Trial {
    /// Each process's added latency, "min..p50..max".
    per_process: Vec<String>,
    executions: u64,
    /// Each call's latency minus the function's own time, in µs.
    added_us: Vec<f64>,
    own_us: u64,
    calls: usize,
    distinct_values: usize,
}

async fn trial(
    ctx: &Ctx,
    prefix: &str,
    tag: &str,
    compute_ms: u64,
    control: bool,
) -> Result<Trial> {
    let mut args = vec![
        "flight-child".to_owned(),
        format!("--prefix={prefix}"),
        format!("--tag={tag}"),
        format!("--callers={CALLERS}"),
        format!("--compute-ms={compute_ms}"),
    ];
    if control {
        args.push("--control".to_owned());
    }
    let mut children = Vec::with_capacity(PROCESSES);
    for i in 0..PROCESSES {
        children.push(ChildProcess::spawn(&format!("P4 caller {i}"), &args)?);
    }
    for child in &mut children {
        child.expect("READY", Duration::from_secs(30)).await?;
    }
    // Start them as close together as possible.
    for child in &mut children {
        child.send("GO").await?;
    }
    let mut reports = Vec::with_capacity(PROCESSES);
    for mut child in children {
        let line = child.expect("RESULT", Duration::from_secs(60)).await?;
        reports.push(serde_json::from_str::<ChildReport>(&line)?);
        child.finish(Duration::from_secs(10)).await?;
    }
    let mut conn = ctx.redis.clone();
    let executions: Option<u64> = redis::cmd("GET")
        .arg(format!("{tag}:runs"))
        .query_async(&mut conn)
        .await?;
    let own_us = reports.iter().filter_map(|r| r.own_us).max().unwrap_or(0);
    let mut values: Vec<&String> = reports.iter().flat_map(|r| &r.values).collect();
    values.sort();
    values.dedup();
    let per_process = reports
        .iter()
        .map(|r| {
            let added: Vec<f64> = r
                .latencies_us
                .iter()
                .map(|l| *l as f64 - own_us as f64)
                .collect();
            let s = Summary::of_us(added);
            format!(
                "{}{}",
                s.map_or("—".to_owned(), |s| format!(
                    "{}..{}..{}",
                    Micros(s.min_us),
                    Micros(s.p50_us),
                    Micros(s.max_us)
                )),
                r.body_start_us.map_or(String::new(), |at| format!(
                    " (computed; the function started {} after the signal)",
                    Micros(at as f64)
                ))
            )
        })
        .collect();
    Ok(Trial {
        per_process,
        executions: executions.unwrap_or(0),
        added_us: reports
            .iter()
            .flat_map(|r| &r.latencies_us)
            .map(|l| *l as f64 - own_us as f64)
            .collect(),
        own_us,
        calls: reports.iter().map(|r| r.latencies_us.len()).sum(),
        distinct_values: values.len(),
    })
}

/// P4.
pub(crate) async fn single_flight(ctx: &Ctx) -> Result<Vec<Row>> {
    let prefix = ctx.prefix("p4");
    let trials = ctx.pick(1, 3);
    let compute_ms = 100;
    let mut added = Vec::new();
    let mut control = Vec::new();
    let mut executions = Vec::new();
    let mut own = Vec::new();
    let mut problems = Vec::new();
    let mut per_process = Vec::new();
    for t in 0..trials {
        eprintln!(
            "[smache-bench] P4: {PROCESSES} processes × {CALLERS} callers, trial {}/{trials}",
            t + 1
        );
        let tag = format!("{prefix}:cold-{t}");
        let got = trial(ctx, &prefix, &tag, compute_ms, false).await?;
        if got.calls != PROCESSES * CALLERS {
            problems.push(format!("trial {t}: {} calls returned", got.calls));
        }
        if got.distinct_values != 1 {
            problems.push(format!(
                "trial {t}: {} distinct values",
                got.distinct_values
            ));
        }
        per_process.push(format!("trial {t}: {}", got.per_process.join(", ")));
        executions.push(got.executions);
        own.push(got.own_us);
        added.extend(got.added_us);
        let tag = format!("{prefix}:control-{t}");
        control.extend(trial(ctx, &prefix, &tag, compute_ms, true).await?.added_us);
    }
    let rtt = Summary::of(&ctx.rtt(ctx.pick(200, 1_000)).await?).ok_or("no samples")?;
    let added = Summary::of_us(added).ok_or("no samples")?;
    let control = Summary::of_us(control).ok_or("no samples")?;
    let once = executions.iter().all(|n| *n == 1);
    let ratio = added.p50_us / rtt.p50_us;
    let mut notes = vec![
        format!(
            "added latency = each call's latency from the start signal − the function's own time ({} ms work + one INCR; measured {})",
            compute_ms,
            own.iter()
                .map(|us| Micros(*us as f64).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!(
            "p99 {:.1} round trips, max {}; {trials} trial(s) × {} calls",
            added.p99_us / rtt.p50_us,
            Micros(added.max_us),
            PROCESSES * CALLERS
        ),
    ];
    notes.push(format!(
        "beyond the control burst: p50 {:.1} round trips ({})",
        (added.p50_us - control.p50_us) / rtt.p50_us,
        Micros(added.p50_us - control.p50_us)
    ));
    notes.push(format!(
        "added latency min..p50..max by process: {}",
        per_process.join("; ")
    ));
    notes.extend(problems.iter().cloned());
    Ok(vec![Row {
        id: "P4".to_owned(),
        scenario: format!(
            "{} concurrent misses of one key from {PROCESSES} processes",
            PROCESSES * CALLERS
        ),
        smache: format!(
            "executions per trial: {}; added {added}",
            executions
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        baseline: format!(
            "Redis round trip (PING): {rtt}; the same burst without smache (sleep, one GET): added {control}"
        ),
        ratio: Some(ratio),
        ratio_of: "p50 added latency / p50 round trip, i.e. in round trips".to_owned(),
        target: "exactly 1 execution; added ≤ 2 round trips".to_owned(),
        met: Met::from(once && problems.is_empty() && ratio <= 2.0),
        notes,
        data: json!({
            "executions": executions,
            "own_us": own,
            "added": added,
            "rtt": rtt,
            "control_added": control,
            "problems": problems,
            "per_process": per_process,
        }),
    }])
}
