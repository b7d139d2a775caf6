//! The worker and an executor of P2 and P3, run as a child process of
//! this binary (a deployment runs them apart from the application): the
//! worker follows MongoDB's change stream, the executor recomputes. More
//! executors, when asked for, each run in a child process of their own.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use smache::Smache;

use crate::child::{hear, say, ChildProcess};
use crate::ctx::Result;
use crate::probe::{cpu_seconds, memory_kib};

/// The hidden `refresher` mode: a worker and an executor for one prefix,
/// until a line (or the end) on standard input. Redis is the one in
/// `SMACHE_REDIS_URL` (set by the parent to a server's or a cluster's URL).
#[derive(Debug, Args)]
pub(crate) struct Refresher {
    /// The smache prefix.
    #[arg(long)]
    prefix: String,
    /// The MongoDB database.
    #[arg(long)]
    database: String,
    /// An executor alone, no worker.
    #[arg(long)]
    executor_only: bool,
}

/// The child side: runs until told to stop, then reports its peak memory
/// and CPU time.
pub(crate) async fn refresher(args: Refresher) -> Result<()> {
    let redis_url = std::env::var("SMACHE_REDIS_URL")?;
    let mongodb_uri = std::env::var("SMACHE_MONGODB_URI")?;
    let client = mongodb::Client::with_uri_str(&mongodb_uri).await?;
    let mut builder = Smache::builder()
        .redis_url(&redis_url)
        .mongodb(&client, &args.database)
        .prefix(&args.prefix);
    // For experiments: the executor's concurrency (default: SmacheBuilder::executor_concurrency).
    if let Some(jobs) = std::env::var("SMACHE_BENCH_EXECUTOR_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.executor_concurrency(jobs);
    }
    let smache = builder.build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = (!args.executor_only).then(|| {
        tokio::spawn(smache::worker::run_until(
            smache.clone(),
            smache::worker::WorkerOptions::default(),
            async move {
                let _ = stopped.await;
            },
        ))
    });
    let executor = smache::executor::spawn(&smache);
    // Watching once the worker saved where its change stream starts and
    // marked stale what it owed (a worker without a saved position marks
    // the values stored before it).
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.is_some() {
        if smache::worker::watching(&smache).await? {
            break;
        }
        if Instant::now() > deadline {
            return Err("the worker did not start watching within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say("READY", "");
    let _ = hear().await?;
    let _ = stop.send(());
    if let Some(worker) = worker {
        worker.await??;
    }
    executor.shutdown().await?;
    let (peak, now) = memory_kib();
    say(
        "RESULT",
        &json!({ "vmhwm_kib": peak, "vmrss_kib": now, "cpu_s": cpu_seconds() }).to_string(),
    );
    Ok(())
}

/// The running refresher children: the worker and an executor in the
/// first, one more executor in each of the others.
pub(crate) struct RefresherProcess(Vec<ChildProcess>);

impl RefresherProcess {
    /// Starts the worker and `executors` executors (at least one) for
    /// `prefix` on `database`, smache's Redis at `redis_url`; returns
    /// once the worker watches and every executor runs.
    pub(crate) async fn start(
        prefix: &str,
        database: &str,
        redis_url: &str,
        executors: usize,
    ) -> Result<RefresherProcess> {
        let mut children = Vec::with_capacity(executors.max(1));
        for i in 0..executors.max(1) {
            let mut args = vec![
                "refresher".to_owned(),
                format!("--prefix={prefix}"),
                format!("--database={database}"),
            ];
            let name = if i == 0 {
                "refresher (worker + executor)".to_owned()
            } else {
                args.push("--executor-only".to_owned());
                format!("refresher (executor {})", i + 1)
            };
            let mut child =
                ChildProcess::spawn_with_env(&name, &args, &[("SMACHE_REDIS_URL", redis_url)])?;
            child.expect("READY", Duration::from_secs(60)).await?;
            children.push(child);
        }
        Ok(RefresherProcess(children))
    }

    /// Stops them; returns the largest peak resident set of them in KiB
    /// and the CPU time they used together, in seconds.
    pub(crate) async fn stop(self) -> Result<(Option<u64>, Option<f64>)> {
        let mut peak: Option<u64> = None;
        let mut cpu = Some(0.0);
        for mut child in self.0 {
            child.send("STOP").await?;
            let line = child.expect("RESULT", Duration::from_secs(30)).await?;
            child.finish(Duration::from_secs(10)).await?;
            let report: serde_json::Value = serde_json::from_str(&line)?;
            peak = peak.max(report["vmhwm_kib"].as_u64());
            cpu = cpu.zip(report["cpu_s"].as_f64()).map(|(a, b)| a + b);
        }
        Ok((peak, cpu))
    }
}
