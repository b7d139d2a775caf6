//! The worker and an executor of P2 and P3, run as a child process of
//! this binary (a deployment runs them apart from the application): the
//! worker follows MongoDB's change stream, the executor recomputes.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use smache::Smache;

use crate::child::{hear, say, ChildProcess};
use crate::ctx::Result;
use crate::probe::{cpu_seconds, memory_kib};

/// The hidden `refresher` mode: a worker and an executor for one prefix,
/// until a line (or the end) on standard input.
#[derive(Debug, Args)]
pub(crate) struct Refresher {
    /// The smache prefix.
    #[arg(long)]
    prefix: String,
    /// The MongoDB database.
    #[arg(long)]
    database: String,
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
    let worker = tokio::spawn(smache::worker::run_until(
        smache.clone(),
        smache::worker::WorkerOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let executor = smache::executor::spawn(&smache);
    // Watching once the worker saved where its change stream starts and
    // marked stale what it owed (a worker without a saved position marks
    // the values stored before it).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
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
    worker.await??;
    executor.shutdown().await?;
    let (peak, now) = memory_kib();
    say(
        "RESULT",
        &json!({ "vmhwm_kib": peak, "vmrss_kib": now, "cpu_s": cpu_seconds() }).to_string(),
    );
    Ok(())
}

/// A running refresher child.
pub(crate) struct RefresherProcess(ChildProcess);

impl RefresherProcess {
    /// Starts one for `prefix` on `database`; returns once it watches.
    pub(crate) async fn start(prefix: &str, database: &str) -> Result<RefresherProcess> {
        let mut child = ChildProcess::spawn(
            "refresher (worker + executor)",
            &[
                "refresher".to_owned(),
                format!("--prefix={prefix}"),
                format!("--database={database}"),
            ],
        )?;
        child.expect("READY", Duration::from_secs(60)).await?;
        Ok(RefresherProcess(child))
    }

    /// Stops it; returns its peak resident set in KiB and the CPU time
    /// it used, in seconds.
    pub(crate) async fn stop(mut self) -> Result<(Option<u64>, Option<f64>)> {
        self.0.send("STOP").await?;
        let line = self.0.expect("RESULT", Duration::from_secs(30)).await?;
        self.0.finish(Duration::from_secs(10)).await?;
        let report: serde_json::Value = serde_json::from_str(&line)?;
        Ok((report["vmhwm_kib"].as_u64(), report["cpu_s"].as_f64()))
    }
}
