//! `smache-bench`: smache's numbers, each measured side by side with a
//! baseline in the same run (shared machines are noisy: absolute times are
//! context, ratios are the result). Targets are goals, not assertions.
//!
//! ```text
//! ./scripts/with-servers.sh cargo run --release -p smache-bench            # full size
//! ./scripts/with-servers.sh cargo run --release -p smache-bench -- --quick # a smoke run
//! ```
//!
//! It prints a markdown table and writes the same as JSON
//! (`target/smache-bench.json` unless `--json` says otherwise). Given a
//! Redis Cluster (`--cluster-url`, or the one `SMACHE_TEST_CLUSTER=1
//! ./scripts/with-servers.sh` starts), P1a, P2 and P3 run on it too, and
//! P7 measures how the keys of an instance of 48 shards spread over its
//! masters.

mod child;
mod ctx;
mod fns;
mod probe;
mod report;
mod scenarios;
mod stats;
mod target;

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::ctx::{Ctx, Result};
use crate::probe::load_average;
use crate::report::{Report, Row};
use crate::scenarios::{
    cluster, fanout, flight, hits, layer, memory, miss, refresh, refresher, spread,
};

/// smache's benchmark: scenarios P1–P6 against the servers in
/// SMACHE_REDIS_URL and SMACHE_MONGODB_URI, each beside a baseline.
#[derive(Debug, Parser)]
#[command(name = "smache-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    /// A smoke run in seconds: small sizes and few samples.
    #[arg(long)]
    quick: bool,
    /// The scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/smache-bench.json")]
    json: PathBuf,
    /// P3's numbers of dependants, comma-separated (default: 10000,100000;
    /// 1000 with --quick).
    #[arg(long, value_delimiter = ',')]
    p3_sizes: Vec<u32>,
    /// Leave the keys and databases the run wrote.
    #[arg(long)]
    keep: bool,
    /// A Redis Cluster to run P1a, P2 and P3 on as well (rows `P1a·cluster`,
    /// `P2·cluster`, `P3·cluster 1 exec`, `P3·cluster 3 exec`):
    /// redis+cluster://host:port[,host:port…]. Default: SMACHE_BENCH_CLUSTER_URL,
    /// else SMACHE_TEST_REDIS_CLUSTER_URL (set by `SMACHE_TEST_CLUSTER=1
    /// ./scripts/with-servers.sh`); empty for none.
    #[arg(long, env = "SMACHE_BENCH_CLUSTER_URL")]
    cluster_url: Option<String>,
    #[command(subcommand)]
    child: Option<ChildMode>,
}

/// The scenarios of issue 6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Hit, Redis store, against a raw GET.
    P1a,
    /// Hit, embedded store, against moka.
    P1b,
    /// Hit, Redis store, against the `cached` crate.
    P1c,
    /// Hit, in-process layer, against moka and a raw GET.
    P1d,
    /// Cross-process invalidation of the in-process layer.
    P1e,
    /// Update → fresh value readable.
    P2,
    /// One change with 10k / 100k dependants.
    P3,
    /// 1,000 concurrent misses from 4 processes.
    P4,
    /// Redis memory per dependency edge.
    P5,
    /// Miss overhead.
    P6,
    /// Keys and memory per master of a cluster, keys over 48 shards.
    P7,
}

/// Modes of the child processes the scenarios start.
#[derive(Debug, Subcommand)]
enum ChildMode {
    /// One process of P4's callers.
    #[command(hide = true)]
    FlightChild(flight::FlightChild),
    /// A worker and an executor for P2/P3.
    #[command(hide = true)]
    Refresher(refresher::Refresher),
    /// P1e's reader process.
    #[command(hide = true)]
    LayerReader(layer::LayerReader),
}

#[tokio::main]
async fn main() -> std::result::Result<(), ctx::Error> {
    let cli = Cli::parse();
    let filter =
        std::env::var("SMACHE_BENCH_LOG").unwrap_or_else(|_| "smache=warn,warn".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    match cli.child {
        Some(ChildMode::FlightChild(args)) => flight::child(args).await,
        Some(ChildMode::Refresher(args)) => refresher::refresher(args).await,
        Some(ChildMode::LayerReader(args)) => layer::reader(args).await,
        None => run(&cli).await,
    }
}

async fn run(cli: &Cli) -> Result<()> {
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let load_before = load_average();
    let cluster_url = cli
        .cluster_url
        .clone()
        .or_else(|| std::env::var("SMACHE_TEST_REDIS_CLUSTER_URL").ok())
        .filter(|url| !url.trim().is_empty());
    let ctx = Ctx::from_env(cli.quick, cluster_url.as_deref()).await?;
    let wants = |s: Scenario| cli.only.is_empty() || cli.only.contains(&s);
    let mut rows = Vec::new();
    let mut seconds = Vec::new();
    macro_rules! group {
        ($name:literal, $fallback:expr, $run:expr) => {{
            let at = Instant::now();
            match $run.await {
                Ok(new) => rows.extend(new),
                Err(err) => {
                    eprintln!("[smache-bench] {} failed: {err}", $name);
                    let (id, scenario, target): (&str, &str, &str) = $fallback;
                    rows.push(Row::na(id, scenario, target, &format!("failed: {err}")));
                }
            }
            seconds.push(($name.to_owned(), at.elapsed().as_secs_f64()));
        }};
    }
    if wants(Scenario::P1a) || wants(Scenario::P1c) {
        group!(
            "P1a+P1c",
            ("P1a/c", "hit, Redis store", "≤ 1.05× / faster"),
            hits::redis_hits(&ctx, wants(Scenario::P1a), wants(Scenario::P1c))
        );
    }
    if let (true, Some(on)) = (wants(Scenario::P1a), &ctx.cluster) {
        group!(
            "P1a·cluster",
            ("P1a·cluster", "hit, Redis store", "≤ 1.05×"),
            cluster::hits(&ctx, on, &rows)
        );
    }
    if wants(Scenario::P1b) {
        group!(
            "P1b",
            ("P1b", "hit, embedded store", "≤ 1.5×"),
            hits::embedded_hits(&ctx)
        );
    }
    if wants(Scenario::P1d) {
        group!(
            "P1d",
            ("P1d", "hit, in-process layer", "≤ 1.5× moka, ≤ 0.05× GET"),
            layer::layer_hits(&ctx)
        );
    }
    if wants(Scenario::P1e) {
        group!(
            "P1e",
            ("P1e", "cross-process invalidation", "p99 ≤ 5 ms"),
            layer::cross_process(&ctx)
        );
    }
    if wants(Scenario::P6) {
        group!(
            "P6",
            ("P6", "miss overhead", "≤ 3 round trips"),
            miss::miss_overhead(&ctx)
        );
    }
    if wants(Scenario::P4) {
        group!(
            "P4",
            (
                "P4",
                "1,000 concurrent misses, 4 processes",
                "exactly 1 execution; added ≤ 2 round trips"
            ),
            flight::single_flight(&ctx)
        );
    }
    if wants(Scenario::P5) {
        group!(
            "P5",
            ("P5", "Redis memory per dependency edge", "≤ 100 B"),
            memory::memory_per_edge(&ctx)
        );
    }
    if let (true, Some(on)) = (wants(Scenario::P7), &ctx.cluster) {
        group!(
            "P7·cluster",
            (
                "P7·cluster",
                "keys and memory per master",
                "33% ± 5% per master"
            ),
            spread::spread(&ctx, on)
        );
    }
    if wants(Scenario::P2) {
        group!(
            "P2",
            (
                "P2",
                "update committed → fresh value",
                "p50 ≤ 5 ms, p99 ≤ 20 ms"
            ),
            refresh::update_to_fresh(&ctx, &ctx.server())
        );
    }
    if let (true, Some(on)) = (wants(Scenario::P2), &ctx.cluster) {
        group!(
            "P2·cluster",
            (
                "P2·cluster",
                "update committed → fresh value",
                "p50 ≤ 5 ms, p99 ≤ 20 ms"
            ),
            cluster::update_to_fresh_on(&ctx, on, &rows)
        );
    }
    if wants(Scenario::P3) {
        // (with a cluster, each size on it too: `P3·cluster 1 exec`, `3 exec`)
        group!(
            "P3",
            ("P3", "one change, many dependants", "≥ 0.50×"),
            fanout::fan_outs(&ctx, &cli.p3_sizes)
        );
    }
    if !cli.keep {
        ctx.clean_up().await;
    }
    let redis_version = redis_version(&ctx).await.unwrap_or_default();
    let report = Report {
        mode: if cli.quick { "quick" } else { "full" },
        started_at,
        machine: json!({
            "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            "load_before": load_before,
            "load_after": load_average(),
            "redis_version": redis_version,
        }),
        rows,
        seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    println!("{}", report.markdown());
    report.write_json(&cli.json)?;
    eprintln!("[smache-bench] wrote {}", cli.json.display());
    Ok(())
}

async fn redis_version(ctx: &Ctx) -> Result<String> {
    let mut conn = ctx.redis.clone();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or_default()
        .trim()
        .to_owned())
}
