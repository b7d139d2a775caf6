//! Helpers shared by the integration tests in `tests/`.
//!
//! The tests run against real servers. `scripts/test.sh` starts a
//! `redis-server` and the Mongo test server on free loopback ports and
//! exports their addresses; set the variables yourself to use other servers:
//!
//! | variable | what |
//! |---|---|
//! | `SMACHE_TEST_REDIS_URL` | a Redis the tests may write to (keys under unique prefixes) |
//! | `SMACHE_TEST_MONGODB_URI` | a MongoDB replica set, or the Mongo test server |
//! | `SMACHE_TEST_REDIS_SERVER` | the `redis-server` binary, for tests that start and kill their own |
//!
//! Tests that kill nodes of the Redis Cluster `scripts/with-servers.sh`
//! starts with `SMACHE_TEST_CLUSTER=1` find it with [`cluster::TestCluster`].

pub mod cluster;
pub mod layout;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn required(var: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{var} is not set: run the suite with `./scripts/test.sh`, which starts the test servers, \
             or point {var} at a server you run"
        ),
    }
}

/// The Redis the tests share.
pub fn redis_url() -> String {
    required("SMACHE_TEST_REDIS_URL")
}

/// The MongoDB server the tests share.
pub fn mongodb_uri() -> String {
    required("SMACHE_TEST_MONGODB_URI")
}

/// The sum of the `total` fields of the documents of `collection` whose
/// `user_id` is `user`: what the suites' functions over a user's orders
/// compute, and what the tests expect of them.
pub async fn orders_total(
    db: &mongodb::Database,
    collection: &str,
    user: mongodb::bson::oid::ObjectId,
) -> i64 {
    use mongodb::bson::{doc, Bson, Document};
    let mut orders = db
        .collection::<Document>(collection)
        .find(doc! { "user_id": user })
        .await
        .expect("find orders");
    let mut total = 0;
    while orders.advance().await.expect("read orders") {
        total += match orders.deserialize_current().expect("an order").get("total") {
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Int32(n)) => i64::from(*n),
            // (Counted as 0, it would pass a test comparing two sums.)
            other => panic!("an order's total is an integer, not {other:?}"),
        };
    }
    total
}

/// A database of the shared MongoDB, usable from any test, async or not,
/// and from every runtime: the client lives on a runtime of its own that
/// runs for the whole test process.
pub fn mongo_database(name: &str) -> mongodb::Database {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    static CLIENT: std::sync::OnceLock<mongodb::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        let runtime = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the MongoDB client")
        });
        let uri = mongodb_uri();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                mongodb::Client::with_uri_str(uri)
                    .await
                    .expect("a valid SMACHE_TEST_MONGODB_URI")
            })
        })
        .join()
        .expect("the MongoDB client is made")
    });
    client.database(name)
}

/// A name no other test (in this run or an earlier one) uses.
pub fn unique(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!(
        "{label}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A plain connection for checking what smache wrote: to one server, or
/// to a Redis Cluster when `url` names one (`redis+cluster://host:port,…`),
/// following its redirections.
pub async fn redis_connection(url: &str) -> RedisConn {
    match cluster_nodes(url) {
        Some(nodes) => RedisConn::Cluster(
            redis::cluster::ClusterClient::new(nodes)
                .expect("valid redis cluster url")
                .get_async_connection()
                .await
                .expect("connect to the test redis cluster"),
        ),
        None => RedisConn::Server(
            redis::Client::open(url)
                .expect("valid redis url")
                .get_multiplexed_async_connection()
                .await
                .expect("connect to the test redis"),
        ),
    }
}

/// Whether the tests' Redis is a cluster.
pub fn on_cluster() -> bool {
    cluster_nodes(&redis_url()).is_some()
}

/// A URL of one server of the tests' Redis: itself, or a cluster's first
/// node (where a subscriber hears a plain `PUBLISH` sent to any node).
pub fn one_node_url(url: &str) -> String {
    cluster_nodes(url)
        .and_then(|nodes| nodes.into_iter().next())
        .unwrap_or_else(|| url.to_owned())
}

/// The nodes of a `redis+cluster://a,b,…` URL.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let hosts = url.strip_prefix("redis+cluster://")?;
    Some(
        hosts
            .trim_end_matches('/')
            .split(',')
            .map(|host| format!("redis://{host}/"))
            .collect(),
    )
}

/// A test's connection to the tests' Redis, one server or a cluster.
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Server(redis::aio::MultiplexedConnection),
    /// A cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Server(_) => "RedisConn::Server",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Server(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Server(conn) => conn.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A `redis-server` of the test's own, to stop and start at will.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port, with no persistence.
    pub fn start() -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("smache-redis"));
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let mut server = RedisServer {
            port,
            dir,
            child: None,
        };
        server.resume();
        server
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `127.0.0.1:<port>`, for a [`TcpProxy`] in front of it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Saves the data to disk (`SAVE`), then kills the server: the next
    /// [`resume`](RedisServer::resume) starts with that data, as a Redis
    /// with persistence does after a restart.
    pub fn save_and_kill(&mut self) {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client.get_connection().expect("connect to redis");
        let () = redis::cmd("SAVE").query(&mut conn).expect("SAVE");
        self.kill();
    }

    /// Starts the server again on the same port: empty, or with the data
    /// of the last [`save_and_kill`](RedisServer::save_and_kill).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let binary =
            std::env::var("SMACHE_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start {binary} (set SMACHE_TEST_REDIS_SERVER or run ./scripts/test.sh): {err}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind a loopback port")
}

/// Polls `check` every 50 ms until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `smache` has no job queued or held, seen 3 times in a row
/// 50 ms apart; `false` after `timeout`. Once is not enough on several
/// shards: a report reads the streams one after another, and a chain of
/// jobs (a store in one shard queueing a fan-all job in another) can pass
/// between two reads.
pub async fn quiesced(smache: &smache::Smache, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut quiet = 0;
    loop {
        let jobs = smache.inspect_jobs().await.expect("inspect the jobs");
        quiet = if jobs.queued == 0 && jobs.held == 0 {
            quiet + 1
        } else {
            0
        };
        if quiet == 3 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `smache-worker` binary: `SMACHE_TEST_WORKER_BIN`, else built once
/// with the cargo that runs the tests.
pub fn worker_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Ok(path) = std::env::var("SMACHE_TEST_WORKER_BIN") {
                return PathBuf::from(path);
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-q", "-p", "smache-worker"])
                .status()
                .expect("run cargo build for smache-worker");
            assert!(status.success(), "building smache-worker failed");
            // target/<profile>/deps/<test> -> target/<profile>/smache-worker
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("target dir")
                .join("smache-worker")
        })
        .clone()
}

/// A `smache-worker` process of the test's own.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
    redis_url: String,
    prefix: String,
}

impl WorkerProcess {
    /// Starts a worker for `prefix` on `database`, with a short lease so
    /// takeovers are quick.
    pub fn start(redis_url: &str, mongodb_uri: &str, database: &str, prefix: &str) -> Self {
        let mut worker = Self::prepare(redis_url, mongodb_uri, database, prefix);
        worker.restart();
        worker
    }

    /// A worker as [`start`](Self::start) makes, not started yet: start it
    /// with [`restart`](Self::restart) once the test's data is in place, so
    /// that the stream does not report the test's own setup.
    pub fn prepare(redis_url: &str, mongodb_uri: &str, database: &str, prefix: &str) -> Self {
        let args = vec![
            format!("--redis-url={redis_url}"),
            format!("--mongodb-uri={mongodb_uri}"),
            format!("--database={database}"),
            format!("--prefix={prefix}"),
            "--lease-secs=2".to_owned(),
            "--log=smache=debug,info".to_owned(),
        ];
        let log = std::env::temp_dir().join(format!("{}.log", unique("smache-worker")));
        WorkerProcess {
            child: None,
            args,
            log,
            redis_url: redis_url.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    /// Adds a command-line argument, for the next start.
    pub fn arg(&mut self, arg: impl Into<String>) {
        self.args.push(arg.into());
    }

    /// Starts the process again after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "worker already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("worker log file");
        let child = Command::new(worker_binary())
            .args(&self.args)
            .env_remove("SMACHE_REDIS_URL")
            .env_remove("SMACHE_MONGODB_URI")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start smache-worker");
        self.child = Some(child);
    }

    /// Whether the process is alive (started and not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the worker gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a graceful exit; returns its success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the worker logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a worker of this prefix holds the lease and has saved
    /// its position in the change stream, so that changes made from now on
    /// are seen, and has marked stale what it owed (a worker starting
    /// without a saved position marks the values stored before it); panics
    /// with the worker's log after `timeout`.
    pub async fn wait_watching(&self, timeout: Duration) {
        let probe = smache::Smache::builder()
            .redis_url(&self.redis_url)
            .prefix(&self.prefix)
            .build()
            .expect("a Redis-only instance to probe the worker");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(true) = smache::worker::watching(&probe).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the worker never started watching\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends the test's own logs to the test output, filtered by `SMACHE_TEST_LOG`
/// (default `smache=warn`); shown for failing tests.
pub fn init_logs() {
    let filter = std::env::var("SMACHE_TEST_LOG").unwrap_or_else(|_| "smache=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// Everything the test process logs at `filter` (e.g. `smache=info`), kept
/// in memory, for tests that assert what was logged. The first call in a
/// test binary installs it as the global subscriber (so do not also call
/// [`init_logs`] there); later calls return the same capture.
pub fn capture_logs(filter: &str) -> &'static LogCapture {
    static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
    let capture = CAPTURE.get_or_init(LogCapture::default);
    let writer = capture.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init();
    capture
}

/// What [`capture_logs`] captured.
#[derive(Debug, Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    /// The lines logged so far.
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How often each test's functions ran, by a key the test chooses, so
/// tests running in parallel on shared functions keep apart.
#[derive(Debug)]
pub struct Calls(std::sync::Mutex<Option<std::collections::HashMap<String, usize>>>);

impl Calls {
    /// An empty counter, usable in a `static`.
    pub const fn new() -> Self {
        Calls(std::sync::Mutex::new(None))
    }

    /// Counts one call under `key`.
    pub fn bump(&self, key: impl Into<String>) {
        let mut calls = self.0.lock().unwrap();
        *calls
            .get_or_insert_with(Default::default)
            .entry(key.into())
            .or_default() += 1;
    }

    /// The calls counted under `key`.
    pub fn get(&self, key: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|c| c.get(key).copied())
            .unwrap_or(0)
    }
}

impl Default for Calls {
    fn default() -> Self {
        Calls::new()
    }
}

/// A TCP proxy on a loopback port to `target`, that a test can cut (every
/// connection dropped, the port closed), mute (every connection dropped,
/// new ones accepted and never answered: a server that hangs) and restore
/// on the same port: a server going away and coming back, seen from one
/// client only. It counts the connections it accepts.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    target: String,
    running: Option<tokio::task::JoinHandle<()>>,
    accepted: std::sync::Arc<AtomicU64>,
}

impl TcpProxy {
    /// Starts proxying a free loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> TcpProxy {
        let mut proxy = TcpProxy {
            port: free_port(),
            target: target.to_owned(),
            running: None,
            accepted: std::sync::Arc::default(),
        };
        proxy.restore().await;
        proxy
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many connections it accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every connection and stops listening.
    pub fn cut(&mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
        }
    }

    /// Drops every connection, and from now on accepts connections and
    /// never answers on them, until [`restore`](Self::restore)d.
    pub async fn mute(&mut self) {
        self.cut();
        self.listen(false).await;
    }

    /// Listens again on the same port, forwarding.
    pub async fn restore(&mut self) {
        self.cut();
        self.listen(true).await;
    }

    async fn listen(&mut self, forward: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(err) => {
                    assert!(Instant::now() < deadline, "cannot listen again: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let target = self.target.clone();
        let accepted = std::sync::Arc::clone(&self.accepted);
        self.running = Some(tokio::spawn(async move {
            // The connections are tasks of this set: aborting the accept
            // loop drops the set, which aborts them all.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                connections.spawn(async move {
                    if !forward {
                        // Held open, never answered.
                        std::future::pending::<()>().await;
                    }
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A MongoDB URI's parts: scheme, credentials (`user:pass@` or empty),
/// hosts (`h1:p1,h2:p2`) and the rest (`/db?options`, possibly empty).
fn mongodb_uri_parts(uri: &str) -> (&str, &str, &str, &str) {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("mongodb", uri));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (credentials, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    (scheme, credentials, hosts, tail)
}

/// The first `host:port` of a MongoDB URI (`mongodb://[user@]host:port,…/…`).
pub fn first_mongodb_host(uri: &str) -> String {
    let (_, _, hosts, _) = mongodb_uri_parts(uri);
    let first = hosts.split(',').next().unwrap_or(hosts);
    if first.contains(':') {
        first.to_owned()
    } else {
        format!("{first}:27017")
    }
}

/// `uri` with its hosts replaced by `127.0.0.1:<port>` (a [`TcpProxy`]) and
/// `directConnection=true`, so the driver talks only through the proxy.
pub fn mongodb_uri_via(uri: &str, port: u16) -> String {
    let (scheme, credentials, _, tail) = mongodb_uri_parts(uri);
    let tail = if tail.is_empty() { "/" } else { tail };
    let separator = if tail.contains('?') { '&' } else { '?' };
    let tail = if tail.starts_with('?') {
        format!("/{tail}")
    } else {
        tail.to_owned()
    };
    format!("{scheme}://{credentials}127.0.0.1:{port}{tail}{separator}directConnection=true")
}
