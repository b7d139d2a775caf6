//! `smache-worker`: follows MongoDB change streams and queues a recompute
//! job for every cached value that depends on a changed document.
//!
//! Run one or more (one watches, the others stand by); the jobs are run by
//! executors, the processes that link your `#[computed]` functions.
//!
//! `smache-worker inspect jobs` prints the jobs queued, held and given up,
//! `smache-worker inspect graph <start>` the dependency graph around a
//! value, a document or a collection, `smache-worker inspect workers` the
//! live workers, what they watch and how far behind they are (see
//! `smache::inspect`); `smache-worker ready [--wait 60s]` exits 0 once a
//! worker watches with a saved position, else says why and exits 1 (a
//! readiness probe; see `smache::worker::readiness`). They need only
//! `--redis-url`.
//!
//! `--metrics-addr 0.0.0.0:9464` serves the worker's metrics (its lag
//! behind the change stream, the changes it handled, the job queue's
//! length; see `smache::metrics`) as Prometheus text over HTTP.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use smache::inspect::{GraphFormat, GraphOptions, GraphStart};
use smache::worker::WorkerOptions;
use smache::Smache;
use tracing_subscriber::EnvFilter;

/// Follows MongoDB change streams and queues recompute jobs for smache.
#[derive(Debug, Parser)]
#[command(
    name = "smache-worker",
    version,
    about = "Follows MongoDB change streams and queues smache recompute jobs",
    long_about = None,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Redis URL (redis:// or rediss://).
    #[arg(long, env = "SMACHE_REDIS_URL", hide_env_values = true, global = true)]
    redis_url: Option<String>,

    /// MongoDB URI of a replica set (change streams need one).
    #[arg(
        long,
        env = "SMACHE_MONGODB_URI",
        hide_env_values = true,
        required = true
    )]
    mongodb_uri: Option<String>,

    /// The database whose collections hold the entities [default: the
    /// URI's, else `smache`].
    #[arg(long, env = "SMACHE_MONGODB_DATABASE", hide_env_values = true)]
    database: Option<String>,

    /// How many shards the instance spreads its Redis keys over; every
    /// process of an instance uses one count [default: the count the
    /// instance recorded in Redis, else 48 on a Redis Cluster and 1 on one
    /// server].
    #[arg(
        long,
        env = "SMACHE_REDIS_SHARDS",
        hide_env_values = true,
        global = true
    )]
    redis_shards: Option<usize>,

    /// The key prefix of the applications' smache instances.
    #[arg(
        long,
        env = "SMACHE_PREFIX",
        hide_env_values = true,
        default_value = smache::DEFAULT_PREFIX,
        global = true
    )]
    prefix: String,

    /// Seconds the watcher's lease lasts; a standby worker takes over
    /// within this long after the watcher dies.
    #[arg(
        long,
        env = "SMACHE_WORKER_LEASE_SECS",
        hide_env_values = true,
        default_value_t = 10
    )]
    lease_secs: u64,

    /// The most values one change recomputes in the background; a
    /// document with more dependants has them marked stale, each
    /// recomputed by its next caller.
    #[arg(
        long,
        env = "SMACHE_MAX_FANOUT",
        hide_env_values = true,
        default_value_t = smache::worker::DEFAULT_MAX_FANOUT
    )]
    max_fanout: u64,

    /// How often the watcher takes a step of the graph sweep, which drops
    /// from the dependency graph the edges of values that expired (e.g.
    /// `1s`, `200ms`; `0s` turns it off). A step is a few dozen Redis calls.
    #[arg(
        long,
        env = "SMACHE_SWEEP_EVERY",
        hide_env_values = true,
        default_value = "1s",
        value_parser = humantime::parse_duration
    )]
    sweep_every: Duration,

    /// Serve the worker's metrics as Prometheus text over HTTP on this
    /// address (e.g. `0.0.0.0:9464`; any path answers).
    #[arg(long, env = "SMACHE_METRICS_ADDR", hide_env_values = true)]
    metrics_addr: Option<SocketAddr>,

    /// Log filter, as RUST_LOG (e.g. `info`, `smache=debug`).
    #[arg(
        long,
        env = "SMACHE_LOG",
        hide_env_values = true,
        default_value = "info",
        global = true
    )]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints what smache holds in Redis, for operators.
    Inspect {
        #[command(subcommand)]
        what: Inspect,
    },
    /// Exits 0 if a worker of the prefix is watching: it holds the lease,
    /// has saved its position in the change stream and owes no
    /// stale-marking; else prints why and exits 1. For readiness probes
    /// and deploy scripts.
    Ready {
        /// Poll until ready or this long has passed (e.g. `30s`, `2m`).
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
}

#[derive(Debug, Subcommand)]
enum Inspect {
    /// The jobs queued, held by executors and given up (dead letters),
    /// grouped by function; flags jobs no live executor can run.
    Jobs,
    /// The dependency graph around a value, a document or a collection:
    /// what it depends on and what depends on it, each value with its
    /// version, freshness, pending job and computed-at time.
    Graph {
        /// A value id (`app::card#1:o:65f0…`, as `inspect jobs` shows it),
        /// `<collection>/<document id>` (an ObjectId's hex, an integer,
        /// else a string; or as keys write it: `o:<hex>`, `i:<n>`,
        /// `s:"<string>"`), or a collection alone.
        start: String,
        /// Output format: a text tree, Graphviz dot (`| dot -Tsvg`), or a
        /// Mermaid flowchart.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// The most dependants (and dependencies) shown of one node; the
        /// others are counted, never read.
        #[arg(long, default_value_t = GraphOptions::default().limit)]
        limit: usize,
        /// How many edges away from the start to go, up the dependencies
        /// and down the dependants.
        #[arg(long, default_value_t = GraphOptions::default().depth)]
        depth: usize,
        /// The most nodes shown in all.
        #[arg(long, default_value_t = GraphOptions::default().max_nodes)]
        max_nodes: usize,
    },
    /// The live workers of the prefix: the database each follows, whether
    /// it watches or stands by, how far behind the change stream it is,
    /// the collections it saw changes in; with none, the prefixes that
    /// have some.
    Workers,
}

/// `inspect graph --format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Dot,
    Mermaid,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Logs go to stderr (what `inspect` and `ready` print goes to stdout),
    // coloured only on a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(Command::Ready { wait }) = args.command {
        return ready(args.redis_url, args.prefix, args.redis_shards, wait).await;
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "smache-worker: stopped on an error");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `smache-worker ready`: 0 once a worker watches, else 1, saying why.
async fn ready(
    redis_url: Option<String>,
    prefix: String,
    shards: Option<usize>,
    wait: Option<Duration>,
) -> std::process::ExitCode {
    let Some(redis_url) = redis_url else {
        println!("not ready: --redis-url (or SMACHE_REDIS_URL) is required");
        return std::process::ExitCode::FAILURE;
    };
    let builder = || Smache::builder().redis_url(&redis_url).prefix(&prefix);
    let smache = match instance(builder, shards).await {
        Ok(smache) => smache,
        Err(err) => {
            println!("not ready: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
    loop {
        let status = match smache::worker::readiness(&smache).await {
            Ok(readiness) if readiness.is_ready() => {
                println!("{readiness}");
                return std::process::ExitCode::SUCCESS;
            }
            Ok(readiness) => readiness.to_string(),
            Err(err) => format!("not ready: cannot ask Redis: {err}"),
        };
        if tokio::time::Instant::now() >= deadline {
            println!("{status}");
            return std::process::ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn run(args: Args) -> Result<(), smache::Error> {
    let Some(redis_url) = args.redis_url.clone() else {
        return Err(smache::Error::Config(
            "--redis-url (or SMACHE_REDIS_URL) is required".into(),
        ));
    };
    if let Some(Command::Inspect { what }) = args.command {
        let builder = || Smache::builder().redis_url(&redis_url).prefix(&args.prefix);
        let smache = instance(builder, args.redis_shards).await?;
        match what {
            Inspect::Jobs => print!("{}", smache.inspect_jobs().await?),
            Inspect::Graph {
                start,
                format,
                limit,
                depth,
                max_nodes,
            } => {
                let start: GraphStart = start.parse()?;
                let options = GraphOptions::default()
                    .limit(limit)
                    .depth(depth)
                    .max_nodes(max_nodes);
                let report = smache.inspect_graph(start, options).await?;
                let format = match format {
                    Format::Text => GraphFormat::Text,
                    Format::Dot => GraphFormat::Dot,
                    Format::Mermaid => GraphFormat::Mermaid,
                };
                print!("{}", report.format(format));
            }
            Inspect::Workers => print!("{}", smache.inspect_workers().await?),
        }
        return Ok(());
    }
    let Some(mongodb_uri) = args.mongodb_uri.clone() else {
        return Err(smache::Error::Config(
            "--mongodb-uri (or SMACHE_MONGODB_URI) is required".into(),
        ));
    };
    let options = smache::mongodb::options::ClientOptions::parse(&mongodb_uri).await?;
    let database = args
        .database
        .clone()
        .or_else(|| options.default_database.clone())
        .unwrap_or_else(|| "smache".to_owned());
    if let Some(addr) = args.metrics_addr {
        serve_metrics(addr)?;
    }
    let client = smache::mongodb::Client::with_options(options)?;
    let builder = || {
        Smache::builder()
            .redis_url(&redis_url)
            .mongodb(&client, &database)
            .prefix(&args.prefix)
    };
    let smache = instance(builder, args.redis_shards).await?;
    tracing::info!(
        prefix = smache.prefix(),
        database,
        "smache-worker: starting"
    );
    let options = WorkerOptions::default()
        .lease(Duration::from_secs(args.lease_secs.max(1)))
        .max_fanout(args.max_fanout)
        .sweep_every(args.sweep_every);
    smache::worker::run(smache, options).await
}

/// The instance `builder` makes, over `shards` shards if given, else over
/// the count the instance recorded in Redis (README "Shards"): a process
/// of another count would not use the store, and this one, told no count,
/// has no reason to differ. With nothing recorded yet, or Redis away, the
/// default count (48 on a Redis Cluster, 1 on one server).
async fn instance(
    builder: impl Fn() -> smache::SmacheBuilder,
    shards: Option<usize>,
) -> Result<Smache, smache::Error> {
    if let Some(count) = shards {
        return builder().redis_shards(count).build();
    }
    let smache = builder().build()?;
    match smache::worker::recorded_shards(&smache).await {
        Ok(Some(count)) => builder().redis_shards(count).build(),
        // Recorded, but not a count: say so rather than be refused later.
        Err(err @ smache::Error::Config(_)) => Err(err),
        // Nothing recorded yet (this process's first use records its
        // default), or Redis away: the default.
        Ok(None) | Err(_) => Ok(smache),
    }
}

/// Installs the Prometheus recorder, its HTTP listener on `addr` (a task of
/// this runtime) and the metrics' descriptions.
fn serve_metrics(addr: SocketAddr) -> Result<(), smache::Error> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|err| smache::Error::Config(format!("--metrics-addr {addr}: {err}")))?;
    smache::metrics::describe();
    tracing::info!(%addr, "smache-worker: serving metrics");
    Ok(())
}
