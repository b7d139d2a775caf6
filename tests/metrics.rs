//! What smache measures (see `smache::metrics`): read through a
//! process-wide debugging recorder, this test binary's own (the other test
//! binaries run without one), and from `smache-worker --metrics-addr`.
//! Each test calls functions of its own, so their labels keep the tests
//! apart; unlabelled metrics are compared before and after.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bson::doc;
use bson::oid::ObjectId;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use smache::metrics::{
    COALESCED, COMPUTATIONS, COMPUTATION_DURATION, DEAD_LETTERS, HITS, JOB_QUEUE_LENGTH,
    LOCAL_BYTES, LOCAL_ENTRIES, LOCAL_INVALIDATIONS, LOCAL_MISSES, MISSES, RECOMPUTATIONS,
    RECOMPUTATION_DURATION, REFRESH_LAG,
};
use smache::{computed, Entity, Smache};
use smache_suite::layout::Layout;
use smache_suite::{
    eventually, free_port, mongodb_uri, redis_connection, redis_url, unique, WorkerProcess,
};

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[computed(Raw)]
async fn square(x: u64) -> u64 {
    x * x
}

#[computed(Raw)]
fn cube(x: u64) -> u64 {
    x * x * x
}

#[computed(Raw)]
async fn slow_double(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(100)).await;
    x * 2
}

#[computed(User)]
async fn badge(user: &User) -> String {
    format!("<{}>", user.name)
}

/// `badge`'s twin, for the test that counts shards (the recorder is
/// shared: `badge`'s counts are another test's).
#[computed(User)]
async fn plate(user: &User) -> String {
    format!("[{}]", user.name)
}

/// Expires two seconds after it is stored (twice its TTL), for the test of
/// the graph sweep's counter.
#[computed(User, ttl_secs = 1)]
async fn blip(user: &User) -> String {
    format!("·{}·", user.name)
}

/// Everything recorded so far: the debugging recorder hands each value out
/// once (a snapshot resets counters and drains histograms), so snapshots
/// are added up here for all the tests.
#[derive(Default)]
struct Recorded {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, Vec<f64>>,
    histograms: HashMap<String, Vec<f64>>,
}

impl Recorded {
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters.get(&id(name, labels)).copied().unwrap_or(0)
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> &[f64] {
        self.histograms
            .get(&id(name, labels))
            .map_or(&[], Vec::as_slice)
    }

    fn gauge(&self, name: &str) -> &[f64] {
        self.labelled_gauge(name, &[])
    }

    fn labelled_gauge(&self, name: &str, labels: &[(&str, &str)]) -> &[f64] {
        self.gauges
            .get(&id(name, labels))
            .map_or(&[], Vec::as_slice)
    }
}

/// `name{a=1,b=2}`, labels sorted.
fn id(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// Installs the recorder (once); then what it recorded up to now.
fn recorded() -> MutexGuard<'static, Recorded> {
    static RECORDER: OnceLock<(Snapshotter, Mutex<Recorded>)> = OnceLock::new();
    let (snapshotter, recorded) = RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this binary");
        (snapshotter, Mutex::default())
    });
    let mut recorded = recorded.lock().unwrap_or_else(|e| e.into_inner());
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let id = id(key.name(), &labels);
        match value {
            DebugValue::Counter(n) => *recorded.counters.entry(id).or_default() += n,
            DebugValue::Gauge(v) => recorded.gauges.entry(id).or_default().push(v.0),
            DebugValue::Histogram(values) => recorded
                .histograms
                .entry(id)
                .or_default()
                .extend(values.into_iter().map(|v| v.0)),
        }
    }
    recorded
}

#[tokio::test]
async fn embedded_hits_misses_and_computations_are_counted_by_function() {
    drop(recorded());
    let smache = Smache::builder().prefix(unique("metrics")).build().unwrap();
    smache
        .scope(async {
            for x in [2, 2, 3, 2] {
                square(x).await;
            }
        })
        .await;
    smache.scope_sync(|| {
        cube(4);
        cube(4);
    });

    let recorded = recorded();
    let square = [("function", square::SPEC.name())];
    let square_at = [square[0], ("layer", "embedded")];
    assert_eq!(recorded.counter(MISSES, &square_at), 2);
    assert_eq!(recorded.counter(HITS, &square_at), 2);
    assert_eq!(recorded.counter(COMPUTATIONS, &square), 2);
    assert_eq!(recorded.histogram(COMPUTATION_DURATION, &square).len(), 2);
    let cube = [("function", cube::SPEC.name())];
    let cube_at = [cube[0], ("layer", "embedded")];
    assert_eq!(recorded.counter(MISSES, &cube_at), 1);
    assert_eq!(recorded.counter(HITS, &cube_at), 1);
    assert_eq!(recorded.counter(COMPUTATIONS, &cube), 1);
    assert_eq!(
        recorded.counter(HITS, &[cube[0], ("layer", "redis")]),
        0,
        "the layer is the store's"
    );
}

#[computed(Raw)]
async fn quad(x: u64) -> u64 {
    x * x * x * x
}

/// The size test's own function: the layer test counts `quad`'s
/// computations exactly, and both run at once in this binary.
#[computed(Raw)]
async fn quint(x: u64) -> u64 {
    x.pow(5)
}

#[tokio::test]
async fn hits_of_the_in_process_layer_and_its_invalidations_are_counted() {
    let (invalidated, missed) = {
        let recorded = recorded();
        (
            recorded.counter(LOCAL_INVALIDATIONS, &[]),
            recorded.counter(LOCAL_MISSES, &[]),
        )
    };
    let prefix = unique("metrics-layer");
    let layered = || {
        Smache::builder()
            .redis_url(redis_url())
            .prefix(&prefix)
            .local_cache_capacity(smache::DEFAULT_LOCAL_CACHE_CAPACITY)
            .build()
            .unwrap()
    };
    let (smache, other) = (layered(), layered());
    assert!(
        eventually(Duration::from_secs(10), || async {
            smache.local_cache().is_some_and(|layer| layer.live)
        })
        .await
    );
    let function = [("function", quad::SPEC.name())];
    let local = [function[0], ("layer", "local")];
    smache.scope(quad(3)).await;
    // Read until the layer holds it, then ten hits from memory.
    assert!(
        eventually(Duration::from_secs(5), || async {
            smache.scope(quad(3)).await;
            smache.local_cache().is_some_and(|layer| layer.entries == 1)
        })
        .await
    );
    let before = recorded().counter(HITS, &local);
    for _ in 0..10 {
        assert_eq!(smache.scope(quad(3)).await, 81);
    }
    assert_eq!(recorded().counter(HITS, &local), before + 10);

    // Another instance drops it: Redis tells this one, whose next call
    // misses the layer and computes.
    assert!(other.invalidate(&quad::key(3).unwrap()).await.unwrap());
    smache.sync_local_cache().await.unwrap();
    let computed = recorded().counter(COMPUTATIONS, &function);
    assert_eq!(smache.scope(quad(3)).await, 81);
    let recorded = recorded();
    assert_eq!(recorded.counter(HITS, &local), before + 10, "no local hit");
    assert_eq!(recorded.counter(COMPUTATIONS, &function), computed + 1);
    // (Other tests of this binary count into these too: at least ours.)
    assert!(recorded.counter(LOCAL_INVALIDATIONS, &[]) > invalidated);
    assert!(recorded.counter(LOCAL_MISSES, &[]) > missed);
}

/// Two instances of one process, each with a layer: each reports its own
/// size, labelled by its prefix, rather than overwriting the other's.
#[tokio::test]
async fn each_layer_reports_its_size_under_its_prefix() {
    let layered = |prefix: &str| {
        Smache::builder()
            .redis_url(redis_url())
            .prefix(prefix)
            .local_cache_capacity(smache::DEFAULT_LOCAL_CACHE_CAPACITY)
            .build()
            .unwrap()
    };
    let (a, b) = (unique("metrics-size-a"), unique("metrics-size-b"));
    let (one, two) = (layered(&a), layered(&b));
    // One value in the first layer, two in the second (read until held).
    for (smache, xs, held) in [(&one, &[5][..], 1), (&two, &[6, 7][..], 2)] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                for &x in xs {
                    smache.scope(quint(x)).await;
                }
                smache
                    .local_cache()
                    .is_some_and(|layer| layer.live && layer.entries == held)
            })
            .await
        );
    }
    // The heartbeat samples each layer every half second (the debugging
    // recorder hands a gauge's value out once, then 0).
    let sampled = |prefix: &str, entries: f64| {
        let recorded = recorded();
        let labels = [("prefix", prefix)];
        recorded
            .labelled_gauge(LOCAL_ENTRIES, &labels)
            .contains(&entries)
            && recorded
                .labelled_gauge(LOCAL_BYTES, &labels)
                .iter()
                .any(|bytes| *bytes > 0.0)
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            sampled(&a, 1.0) && sampled(&b, 2.0)
        })
        .await
    );
}

#[tokio::test]
async fn concurrent_callers_of_one_value_count_one_miss_and_the_rest_coalesced() {
    drop(recorded());
    let smache = Smache::builder().prefix(unique("metrics")).build().unwrap();
    let values = smache
        .scope(futures::future::join_all((0..5).map(|_| slow_double(21))))
        .await;
    assert_eq!(values, [42; 5]);

    let recorded = recorded();
    let double = [("function", slow_double::SPEC.name())];
    let double_at = [double[0], ("layer", "embedded")];
    assert_eq!(recorded.counter(MISSES, &double_at), 1);
    assert_eq!(recorded.counter(COMPUTATIONS, &double), 1);
    assert_eq!(recorded.counter(COALESCED, &double), 4);
    let took = recorded.histogram(COMPUTATION_DURATION, &double);
    assert!(took.len() == 1 && took[0] >= 0.1, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_recompute_records_its_run_and_the_refresh_lag() {
    drop(recorded());
    let database = unique("metrics").replace('-', "_");
    let prefix = unique("metrics");
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let db = client.database(&database);
    let smache = Smache::builder()
        .redis_url(redis_url())
        .mongodb(&client, &database)
        .prefix(&prefix)
        .run_executor()
        .build()
        .unwrap();
    let ada = User {
        id: ObjectId::new(),
        name: "Ada".into(),
    };
    let users = db.collection::<User>("users");
    users.insert_one(&ada).await.unwrap();
    let mut worker = WorkerProcess::prepare(&redis_url(), &mongodb_uri(), &database, &prefix);
    worker.restart();
    worker.wait_watching(Duration::from_secs(20)).await;

    assert_eq!(smache.scope(badge(&ada)).await, "<Ada>");
    assert_eq!(smache.scope(badge(&ada)).await, "<Ada>");
    let function = [("function", badge::SPEC.name())];
    let at_redis = [function[0], ("layer", "redis")];
    {
        let recorded = recorded();
        assert_eq!(recorded.counter(MISSES, &at_redis), 1);
        assert_eq!(recorded.counter(HITS, &at_redis), 1);
        assert_eq!(recorded.counter(COMPUTATIONS, &function), 1);
    }

    users
        .update_one(
            doc! { "_id": ada.id },
            doc! { "$set": { "name": "Augusta" } },
        )
        .await
        .unwrap();
    let stored = [function[0], ("outcome", "stored")];
    assert!(
        eventually(Duration::from_secs(20), || async {
            recorded().counter(RECOMPUTATIONS, &stored) == 1
        })
        .await,
        "no recompute recorded\n{}",
        worker.log()
    );
    assert_eq!(smache.scope(badge(&ada)).await, "<Augusta>");

    {
        let recorded = recorded();
        let runs = recorded.histogram(RECOMPUTATION_DURATION, &function);
        assert_eq!(runs.len(), 1, "{runs:?}");
        let lag = recorded.histogram(REFRESH_LAG, &function);
        assert_eq!(lag.len(), 1, "one refresh, one lag: {lag:?}");
        assert!(
            (0.0..20.0).contains(&lag[0]) && lag[0] >= runs[0] - 0.05,
            "the lag covers the run: lag {lag:?}, run {runs:?}"
        );
        assert_eq!(
            recorded.counter(COMPUTATIONS, &function),
            1,
            "the executor's run is no caller's computation"
        );
        assert!(
            !recorded.gauge(JOB_QUEUE_LENGTH).is_empty(),
            "the executor sampled the job queue"
        );
    }
    smache.stop_executor().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}

#[tokio::test]
async fn a_job_given_up_counts_a_dead_letter() {
    let before = recorded().counter(DEAD_LETTERS, &[]);
    let prefix = unique("metrics-dead");
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(&prefix)
        .run_executor()
        .build()
        .unwrap();
    let mut conn = redis_connection(&redis_url()).await;
    let jobs = format!("{}jobs", Layout::of(&smache).await.bases()[0]);
    let _: String = conn.xadd(jobs, "*", &[("what", "is this")]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            recorded().counter(DEAD_LETTERS, &[]) > before
        })
        .await
    );
    smache.stop_executor().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smache_worker_serves_its_metrics_as_prometheus_text() {
    let database = unique("metrics").replace('-', "_");
    let prefix = unique("metrics");
    let port = free_port();
    let mut worker = WorkerProcess::prepare(&redis_url(), &mongodb_uri(), &database, &prefix);
    worker.arg(format!("--metrics-addr=127.0.0.1:{port}"));
    worker.restart();
    worker.wait_watching(Duration::from_secs(20)).await;

    // A change in the watched database, handled by the worker.
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let db = client.database(&database);
    db.collection::<User>("users")
        .insert_one(User {
            id: ObjectId::new(),
            name: "Ada".into(),
        })
        .await
        .unwrap();
    let page = metrics_page_showing(port, "smache_worker_changes_total 1").await;
    assert!(
        page.contains("smache_worker_changes_total 1"),
        "{page}\n--- worker log ---\n{}",
        worker.log()
    );
    for expected in [
        "# TYPE smache_worker_changes_total counter",
        "# HELP smache_worker_lag_seconds ",
        "smache_worker_lag_seconds ",
        "smache_job_queue_length ",
    ] {
        assert!(page.contains(expected), "{expected:?} missing from\n{page}");
    }
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}

/// On a store of several shards, a change runs its script only in the
/// shards that hold its dependants (`smache_worker_shards_signalled_total`):
/// none for a user nothing depends on, one for a user with one value, which
/// is refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_runs_its_script_only_in_the_shards_holding_its_dependants() {
    let database = unique("shards").replace('-', "_");
    let prefix = unique("shards");
    let port = free_port();
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let db = client.database(&database);
    let users = db.collection::<User>("users");
    let ada = User {
        id: ObjectId::new(),
        name: "Ada".into(),
    };
    let bob = User {
        id: ObjectId::new(),
        name: "Bob".into(),
    };
    users.insert_many([&ada, &bob]).await.unwrap();
    let smache = Smache::builder()
        .redis_url(redis_url())
        .mongodb(&client, &database)
        .prefix(&prefix)
        .redis_shards(4)
        .build()
        .unwrap();
    let mut worker = WorkerProcess::prepare(&redis_url(), &mongodb_uri(), &database, &prefix);
    worker.arg("--redis-shards=4");
    worker.arg(format!("--metrics-addr=127.0.0.1:{port}"));
    worker.restart();
    // (`wait_watching`'s probe has one shard: asked with this instance.)
    assert!(
        eventually(Duration::from_secs(20), || async {
            matches!(smache::worker::watching(&smache).await, Ok(true))
        })
        .await,
        "the worker watches\n{}",
        worker.log()
    );
    let executor = smache::executor::spawn(&smache);
    assert_eq!(smache.scope(plate(&ada)).await, "[Ada]");

    for (user, name) in [(&bob, "Bo"), (&ada, "Ada L.")] {
        users
            .update_one(doc! { "_id": user.id }, doc! { "$set": { "name": name } })
            .await
            .unwrap();
    }
    // Refreshed in the background (a caller would compute from its copy).
    assert!(
        eventually(Duration::from_secs(20), || async {
            smache.scope(plate(&ada)).await == "[Ada L.]"
        })
        .await,
        "Ada's plate is refreshed\n{}",
        worker.log()
    );
    let page = metrics_page_showing(port, "smache_worker_changes_total 2").await;
    assert!(
        page.contains("smache_worker_changes_total 2")
            && page.contains("smache_worker_shards_signalled_total 1\n"),
        "two changes, one shard signalled (Ada's value's), of 4:\n{page}\n--- worker log ---\n{}",
        worker.log()
    );
    executor.shutdown().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}

/// The watching worker counts the edges its graph sweep removes
/// (`smache_worker_edges_swept_total`): one, the user's edge of a value
/// that expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edges_the_graph_sweep_removes_are_counted() {
    let database = unique("swept").replace('-', "_");
    let prefix = unique("swept");
    let port = free_port();
    // (Only the worker needs MongoDB: nothing here is recomputed.)
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(&prefix)
        .build()
        .unwrap();
    let mut worker = WorkerProcess::prepare(&redis_url(), &mongodb_uri(), &database, &prefix);
    worker.arg("--sweep-every=100ms");
    worker.arg(format!("--metrics-addr=127.0.0.1:{port}"));
    worker.restart();
    worker.wait_watching(Duration::from_secs(20)).await;
    let ada = User {
        id: ObjectId::new(),
        name: "Ada".into(),
    };
    assert_eq!(smache.scope(blip(&ada)).await, "·Ada·");
    let page = metrics_page_showing(port, "smache_worker_edges_swept_total 1\n").await;
    assert!(
        page.contains("smache_worker_edges_swept_total 1\n")
            && !page.contains("smache_worker_sweep_failures_total"),
        "one edge swept, no step failed:\n{page}\n--- worker log ---\n{}",
        worker.log()
    );
    assert!(worker.terminate(), "{}", worker.log());
}

/// The worker's `/metrics` page on the loopback `port`, once it shows
/// `line`, or as it is after 20 s.
async fn metrics_page_showing(port: u16, line: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = get(port, "/metrics").await.unwrap_or_default();
        if page.contains(line) || tokio::time::Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The body of an HTTP/1.0 GET of `path` on the loopback `port`.
async fn get(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_owned())
        }
        _ => Err(std::io::Error::other(response)),
    }
}
