//! `smache-worker`: follows MongoDB change streams and queues a recompute
//! job for every cached value that depends on a changed document.
//!
//! Run one or more (one watches, the others stand by); the jobs are run by
//! executors, the processes that link your `#[computed]` functions.

use std::time::Duration;

use clap::Parser;
use smache::worker::WorkerOptions;
use smache::Smache;
use tracing_subscriber::EnvFilter;

/// Follows MongoDB change streams and queues recompute jobs for smache.
#[derive(Debug, Parser)]
#[command(
    name = "smache-worker",
    version,
    about = "Follows MongoDB change streams and queues smache recompute jobs",
    long_about = None
)]
struct Args {
    /// Redis URL (redis:// or rediss://).
    #[arg(long, env = "SMACHE_REDIS_URL", hide_env_values = true)]
    redis_url: String,

    /// MongoDB URI of a replica set (change streams need one).
    #[arg(long, env = "SMACHE_MONGODB_URI", hide_env_values = true)]
    mongodb_uri: String,

    /// The database whose collections hold the entities [default: the
    /// URI's, else `smache`].
    #[arg(long, env = "SMACHE_MONGODB_DATABASE")]
    database: Option<String>,

    /// The key prefix of the applications' smache instances.
    #[arg(long, env = "SMACHE_PREFIX", default_value = smache::DEFAULT_PREFIX)]
    prefix: String,

    /// Seconds the watcher's lease lasts; a standby worker takes over
    /// within this long after the watcher dies.
    #[arg(long, env = "SMACHE_WORKER_LEASE_SECS", default_value_t = 10)]
    lease_secs: u64,

    /// Log filter, as RUST_LOG (e.g. `info`, `smache=debug`).
    #[arg(long, env = "SMACHE_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "smache-worker: stopped on an error");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), smache::Error> {
    let options = mongodb::options::ClientOptions::parse(&args.mongodb_uri).await?;
    let database = args
        .database
        .clone()
        .or_else(|| options.default_database.clone())
        .unwrap_or_else(|| "smache".to_owned());
    let client = mongodb::Client::with_options(options)?;
    let smache = Smache::builder()
        .redis_url(args.redis_url)
        .mongodb(&client, &database)
        .prefix(args.prefix)
        .build()?;
    tracing::info!(
        prefix = smache.prefix(),
        database,
        "smache-worker: starting"
    );
    let options = WorkerOptions::default().lease(Duration::from_secs(args.lease_secs.max(1)));
    smache::worker::run(smache, options).await
}
