//! Faults the whole loop must survive: Redis restarting without its data,
//! or with it, while a worker, an executor and callers keep going; an
//! executor that cannot reach MongoDB.

use std::time::Duration;

use bson::doc;
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use smache::{computed, Entity, Smache};
use smache_suite::{
    eventually, first_mongodb_host, mongodb_uri, mongodb_uri_via, unique, RedisServer, TcpProxy,
    WorkerProcess,
};

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[computed(User)]
async fn greeting(user: &User) -> String {
    format!("hello {}", user.name)
}

/// What a caller holding `user` gets, with the document's current name:
/// the function reads only its argument, so a correct cached value is
/// the one computed from the current document.
async fn current(db: &mongodb::Database, id: ObjectId) -> User {
    db.collection::<User>("users")
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .unwrap()
}

/// What the Redis and worker tests share: a `redis-server` of their own
/// (to stop and start), a database, an instance with an executor, and Ada
/// inserted.
struct Scene {
    redis: RedisServer,
    database: String,
    prefix: String,
    db: mongodb::Database,
    smache: Smache,
    users: mongodb::Collection<User>,
    ada: User,
}

impl Scene {
    async fn new() -> Scene {
        smache_suite::init_logs();
        let redis = RedisServer::start();
        let database = unique("faults").replace('-', "_");
        let prefix = unique("faults");
        let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
        let db = client.database(&database);
        let smache = Smache::builder()
            .redis_url(redis.url())
            .mongodb(&client, &database)
            .prefix(&prefix)
            .op_timeout(Duration::from_millis(300))
            .run_executor()
            .build()
            .unwrap();
        let users = db.collection::<User>("users");
        let ada = User {
            id: ObjectId::new(),
            name: "Ada".into(),
        };
        users.insert_one(&ada).await.unwrap();
        Scene {
            redis,
            database,
            prefix,
            db,
            smache,
            users,
            ada,
        }
    }
}

async fn rename(users: &mongodb::Collection<User>, user: &User, name: &str) {
    users
        .update_one(doc! { "_id": user.id }, doc! { "$set": { "name": name } })
        .await
        .unwrap();
}

/// Caches Ada's greeting and waits until it is fresh; its key.
async fn cached_and_fresh(smache: &Smache, ada: &User) -> smache::CacheKey {
    assert_eq!(smache.scope(greeting(ada)).await, "hello Ada");
    let key = greeting::key(ada).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            smache.is_fresh(&key).await.unwrap_or(false)
        })
        .await
    );
    key
}

/// Renames Ada while Redis is down: callers holding the new document get
/// values computed directly, with no error. The new document.
async fn rename_while_redis_is_down(
    smache: &Smache,
    users: &mongodb::Collection<User>,
    db: &mongodb::Database,
    ada: &User,
    name: &str,
) -> User {
    rename(users, ada, name).await;
    let during = current(db, ada.id).await;
    for _ in 0..3 {
        assert_eq!(
            smache.scope(greeting(&during)).await,
            format!("hello {name}")
        );
    }
    during
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_empty_breaks_no_caller_and_the_loop_recovers() {
    let Scene {
        mut redis,
        database,
        prefix,
        db,
        smache,
        users,
        ada,
    } = Scene::new().await;
    let mut worker = WorkerProcess::start(&redis.url(), &mongodb_uri(), &database, &prefix);
    let key = cached_and_fresh(&smache, &ada).await;

    // Redis goes away; the document changes meanwhile. Callers get values
    // computed directly from what they pass, with no error.
    redis.kill();
    let during = rename_while_redis_is_down(&smache, &users, &db, &ada, "Augusta").await;

    // It comes back empty: no value, no graph, no resume token, no lease.
    redis.resume();
    assert!(
        eventually(Duration::from_secs(15), || async {
            smache.scope(greeting(&during)).await;
            smache.is_fresh(&key).await.unwrap_or(false)
        })
        .await,
        "caching resumes"
    );
    assert_eq!(smache.scope(greeting(&during)).await, "hello Augusta");

    // The worker and the executor reconnected by themselves: a change made
    // now refreshes the value in the background, as before the outage.
    // (Wait for the worker to hold its lease again and save a position.)
    worker.wait_watching(Duration::from_secs(20)).await;
    let mut conn = smache_suite::redis_connection(&redis.url()).await;
    users
        .update_one(doc! { "_id": ada.id }, doc! { "$set": { "name": "Grace" } })
        .await
        .unwrap();
    // The caller still holds the old struct: only a background recompute
    // from the updated document produces the new name.
    let refreshed = eventually(Duration::from_secs(20), || async {
        smache.scope(greeting(&during)).await == "hello Grace"
    })
    .await;
    assert!(refreshed, "refreshed after the restart\n{}", worker.log());
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();

    smache.stop_executor().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_with_its_data_serves_nothing_stale_after_the_outage() {
    let Scene {
        mut redis,
        database,
        prefix,
        db,
        smache,
        users,
        ada,
    } = Scene::new().await;
    let mut worker = WorkerProcess::start(&redis.url(), &mongodb_uri(), &database, &prefix);
    worker.wait_watching(Duration::from_secs(20)).await;
    let key = cached_and_fresh(&smache, &ada).await;

    // Redis stops with its data (the value, the graph, the resume token)
    // and the document changes while it is down: no caller sees an error.
    redis.save_and_kill();
    rename_while_redis_is_down(&smache, &users, &db, &ada, "Augusta").await;

    // It comes back with the value computed before the change, which it
    // still calls fresh. The worker resumes from the saved token, sees the
    // change made in the outage, and the value is recomputed: a caller
    // holding the old struct gets the new name, from the cache.
    redis.resume();
    let refreshed = eventually(Duration::from_secs(30), || async {
        smache.scope(greeting(&ada)).await == "hello Augusta"
    })
    .await;
    assert!(
        refreshed,
        "the change made during the outage reached the value\n{}",
        worker.log()
    );
    assert!(smache.is_fresh(&key).await.unwrap());

    smache.stop_executor().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}

/// Redis holds no resume token (it came back empty, or no worker ever
/// ran) while callers store values and documents change: the first worker
/// to start cannot replay those changes, so it marks the values stored
/// before it stale, and they are recomputed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_starting_without_a_saved_position_leaves_no_value_stale() {
    let Scene {
        redis,
        database,
        prefix,
        db,
        smache,
        users,
        ada,
    } = Scene::new().await;
    assert_eq!(smache.scope(greeting(&ada)).await, "hello Ada");
    rename(&users, &ada, "Augusta").await;
    // No worker watched: the cached value is out of date and nothing knows.
    assert_eq!(smache.scope(greeting(&ada)).await, "hello Ada");

    let mut worker = WorkerProcess::start(&redis.url(), &mongodb_uri(), &database, &prefix);
    let refreshed = eventually(Duration::from_secs(30), || async {
        smache.scope(greeting(&ada)).await == "hello Augusta"
    })
    .await;
    assert!(
        refreshed,
        "the value stored before the worker started was refreshed\n{}",
        worker.log()
    );
    // The watching worker published its settings for the scripts.
    let mut conn = smache_suite::redis_connection(&redis.url()).await;
    let max_fanout: u64 = redis::cmd("HGET")
        .arg(format!("{{{prefix}}}:config"))
        .arg("max_fanout")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(max_fanout, smache::worker::DEFAULT_MAX_FANOUT);

    smache.stop_executor().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}

/// MongoDB goes away for the worker only (a proxy between them is cut)
/// while a document changes: the worker keeps retrying, and once MongoDB
/// is back it resumes after its saved token and the change is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_mongodb_retries_and_misses_no_change() {
    let Scene {
        redis,
        database,
        prefix,
        db,
        smache,
        users,
        ada,
    } = Scene::new().await;
    let mut proxy = TcpProxy::start(&first_mongodb_host(&mongodb_uri())).await;
    let through_proxy = format!(
        "{}&serverSelectionTimeoutMS=1000&connectTimeoutMS=1000",
        mongodb_uri_via(&mongodb_uri(), proxy.port())
    );
    let mut worker = WorkerProcess::start(&redis.url(), &through_proxy, &database, &prefix);
    worker.wait_watching(Duration::from_secs(20)).await;
    assert_eq!(smache.scope(greeting(&ada)).await, "hello Ada");

    proxy.cut();
    rename(&users, &ada, "Augusta").await;
    // The worker cannot see it; it keeps running and retrying.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        smache.scope(greeting(&ada)).await,
        "hello Ada",
        "nothing saw the change yet"
    );
    assert!(
        worker.running(),
        "the worker outlives the outage\n{}",
        worker.log()
    );

    proxy.restore().await;
    let refreshed = eventually(Duration::from_secs(30), || async {
        smache.scope(greeting(&ada)).await == "hello Augusta"
    })
    .await;
    assert!(
        refreshed,
        "the change made while MongoDB was away was applied\n{}",
        worker.log()
    );
    assert!(
        worker.log().contains("retrying"),
        "the worker said it retries\n{}",
        worker.log()
    );

    smache.stop_executor().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_without_mongodb_acknowledges_nothing_and_another_finishes_the_job() {
    smache_suite::init_logs();
    let redis_url = smache_suite::redis_url();
    let database = unique("faults_mongo").replace('-', "_");
    let prefix = unique("faults-mongo");
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let db = client.database(&database);
    // The caller's instance has MongoDB; the first executor's does not
    // reach it (nothing listens on that port).
    let smache = Smache::builder()
        .redis_url(&redis_url)
        .mongodb(&client, &database)
        .prefix(&prefix)
        .build()
        .unwrap();
    let port = smache_suite::free_port();
    let unreachable = mongodb::Client::with_uri_str(format!(
        "mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=300&connectTimeoutMS=300"
    ))
    .await
    .unwrap();
    let cut_off = Smache::builder()
        .redis_url(&redis_url)
        .mongodb(&unreachable, &database)
        .prefix(&prefix)
        .retry(smache::Retry::new(2, Duration::from_millis(50)))
        .build()
        .unwrap();
    let mut worker = WorkerProcess::start(&redis_url, &mongodb_uri(), &database, &prefix);
    let users = db.collection::<User>("users");
    let ada = User {
        id: ObjectId::new(),
        name: "Ada".into(),
    };
    users.insert_one(&ada).await.unwrap();
    worker.wait_watching(Duration::from_secs(20)).await;
    assert_eq!(smache.scope(greeting(&ada)).await, "hello Ada");
    let key = greeting::key(&ada).unwrap();
    let conn = smache_suite::redis_connection(&redis_url).await;

    let first = smache::executor::spawn(&cut_off);
    users
        .update_one(doc! { "_id": ada.id }, doc! { "$set": { "name": "Grace" } })
        .await
        .unwrap();
    // The job is taken, its reload fails (twice, by the retry policy), and
    // it stays pending: not acknowledged, the value still stale.
    // (In the stream of the value's shard.)
    let jobs = format!("{}jobs", smache_suite::layout::value_base(&smache, &key));
    let pending = || {
        let mut conn = conn.clone();
        let jobs = jobs.clone();
        async move {
            let reply: redis::RedisResult<redis::streams::StreamPendingReply> =
                redis::cmd("XPENDING")
                    .arg(&jobs)
                    .arg(smache::executor::GROUP)
                    .query_async(&mut conn)
                    .await;
            match reply {
                Ok(reply) => reply.count(),
                // Until the executor, started apart, made its group.
                Err(err) if err.code() == Some("NOGROUP") => 0,
                Err(err) => panic!("XPENDING: {err}"),
            }
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || async { pending().await == 1 }).await,
        "the job was taken\n{}",
        worker.log()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pending().await, 1, "nothing acknowledged early");
    assert!(!smache.is_fresh(&key).await.unwrap(), "still stale");
    first.shutdown().await.unwrap();

    // An executor that reaches MongoDB reclaims it once it has been idle
    // for RECLAIM_AFTER, and refreshes the value.
    let second = smache::executor::spawn(&smache);
    let refreshed = eventually(
        smache::executor::RECLAIM_AFTER + Duration::from_secs(20),
        || async { smache.is_fresh(&key).await.unwrap_or(false) },
    )
    .await;
    assert!(refreshed, "reclaimed and refreshed\n{}", worker.log());
    assert_eq!(smache.scope(greeting(&ada)).await, "hello Grace");
    assert_eq!(pending().await, 0);
    second.shutdown().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}

/// `smache-worker ready` for this Redis and prefix, with `extra` arguments.
fn ready(redis_url: &str, prefix: &str, extra: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(smache_suite::worker_binary());
    command
        .args(["ready", "--redis-url", redis_url, "--prefix", prefix])
        .args(extra)
        .env_remove("SMACHE_REDIS_URL")
        .env_remove("SMACHE_MONGODB_URI");
    command
}

/// Its exit code and what it printed.
fn run_ready(redis_url: &str, prefix: &str, extra: &[&str]) -> (Option<i32>, String) {
    let output = ready(redis_url, prefix, extra).output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

/// Redis loses its data (FLUSHALL: a restart without persistence) while
/// the watching worker is idle: no change comes to make it save its
/// position again, yet within a few lease renewals it is watching again,
/// with its position saved, and the loop works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watching_worker_is_ready_again_after_redis_loses_its_data() {
    let Scene {
        redis,
        database,
        prefix,
        db,
        smache,
        users,
        ada,
    } = Scene::new().await;
    let mut worker = WorkerProcess::start(&redis.url(), &mongodb_uri(), &database, &prefix);
    worker.wait_watching(Duration::from_secs(20)).await;

    let mut conn = smache_suite::redis_connection(&redis.url()).await;
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    // Without any document change (the lease lasts 2 s).
    let back = eventually(Duration::from_secs(10), || async {
        smache::worker::watching(&smache).await.unwrap_or(false)
    })
    .await;
    assert!(back, "watching again by itself\n{}", worker.log());
    assert_eq!(
        run_ready(&redis.url(), &prefix, &[]).0,
        Some(0),
        "{}",
        worker.log()
    );

    // From the position it saved again: a change made now refreshes.
    let key = cached_and_fresh(&smache, &ada).await;
    rename(&users, &ada, "Augusta").await;
    let refreshed = eventually(Duration::from_secs(20), || async {
        smache.scope(greeting(&ada)).await == "hello Augusta"
    })
    .await;
    assert!(refreshed, "refreshed after the flush\n{}", worker.log());
    assert!(smache.is_fresh(&key).await.unwrap());

    smache.stop_executor().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}

/// Redis comes back from an older snapshot while the watching worker is
/// idle: a value computed before a change, called fresh, and the position
/// before that change, without the jobs it queued. The worker notices the
/// saved position is not its own and resumes from it, replaying the change:
/// the value is refreshed, with no new change to prompt it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_replays_from_an_older_saved_position() {
    let Scene {
        redis,
        database,
        prefix,
        db,
        smache,
        users,
        ada,
    } = Scene::new().await;
    let mut worker = WorkerProcess::start(&redis.url(), &mongodb_uri(), &database, &prefix);
    worker.wait_watching(Duration::from_secs(20)).await;
    let key = cached_and_fresh(&smache, &ada).await;
    let value_key = smache.storage_key(&key);
    let token_key = format!("{{{prefix}}}:w:token");
    let mut conn = smache_suite::redis_connection(&redis.url()).await;
    // The snapshot: the value and the position as they are now.
    let value: Vec<u8> = redis::cmd("DUMP")
        .arg(&value_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let token: Vec<u8> = redis::cmd("GET")
        .arg(&token_key)
        .query_async(&mut conn)
        .await
        .unwrap();

    rename(&users, &ada, "Augusta").await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            smache.scope(greeting(&ada)).await == "hello Augusta"
        })
        .await,
        "{}",
        worker.log()
    );
    let () = redis::cmd("RESTORE")
        .arg(&value_key)
        .arg(0)
        .arg(&value)
        .arg("REPLACE")
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg(&token_key)
        .arg(&token)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Restored behind smache's back: let Redis's word reach the layer.
    smache.sync_local_cache().await.unwrap();
    assert_eq!(smache.scope(greeting(&ada)).await, "hello Ada");

    let replayed = eventually(Duration::from_secs(15), || async {
        smache.scope(greeting(&ada)).await == "hello Augusta"
    })
    .await;
    assert!(replayed, "the change was replayed\n{}", worker.log());
    assert!(smache.is_fresh(&key).await.unwrap());

    smache.stop_executor().await.unwrap();
    assert!(worker.terminate(), "{}", worker.log());
    let _ = db.drop().await;
}

/// `smache-worker ready` exits 0 only while a worker holds the lease with
/// its position saved, else says why and exits 1; `--wait` polls until
/// then or times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smache_worker_ready_exits_0_only_while_a_worker_watches() {
    let Scene {
        redis,
        database,
        prefix,
        db,
        smache,
        ..
    } = Scene::new().await;
    let url = redis.url();
    let (code, printed) = run_ready(&url, &prefix, &[]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(printed.contains("not ready"), "{printed}");
    let started = std::time::Instant::now();
    let (code, printed) = run_ready(&url, &prefix, &["--wait", "1s"]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(started.elapsed() >= Duration::from_secs(1), "{printed}");

    // Waiting for a worker that starts meanwhile.
    let waiting = ready(&url, &prefix, &["--wait", "60s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worker = WorkerProcess::start(&url, &mongodb_uri(), &database, &prefix);
    let output = tokio::task::spawn_blocking(move || waiting.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        worker.log()
    );
    assert!(smache::worker::watching(&smache).await.unwrap());
    let (code, printed) = run_ready(&url, &prefix, &[]);
    assert_eq!(code, Some(0), "{printed}");

    // The worker stops (releasing its lease): its saved position is no
    // watcher.
    assert!(worker.terminate(), "{}", worker.log());
    let (code, printed) = run_ready(&url, &prefix, &[]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(printed.contains("lease"), "{printed}");
    assert!(!smache::worker::watching(&smache).await.unwrap());

    smache.stop_executor().await.unwrap();
    let _ = db.drop().await;
}

/// Holds this process's workers in their watch's setup (the fail point
/// `smache::worker::watch::setup`) while it lives. Only the tests below
/// run a worker in this process (the others' are processes of their
/// own), one at a time: the fail point is the process's.
struct HeldInSetup(#[allow(dead_code)] tokio::sync::MutexGuard<'static, ()>);

impl HeldInSetup {
    async fn for_ms(ms: u64) -> HeldInSetup {
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let turn = ONE_AT_A_TIME.lock().await;
        fail::cfg("smache::worker::watch::setup", &format!("return({ms})")).unwrap();
        HeldInSetup(turn)
    }
}

impl Drop for HeldInSetup {
    fn drop(&mut self) {
        fail::remove("smache::worker::watch::setup");
    }
}

/// A worker of `smache` run in this process, with `lease`: the sender
/// stops it.
fn worker_in_process(
    smache: &Smache,
    lease: Duration,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<smache::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(smache::worker::run_until(
        smache.clone(),
        smache::worker::WorkerOptions::default().lease(lease),
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, worker)
}

/// A watch whose setup outlasts the lease (marking every value stale can,
/// on a large instance) keeps the lease meanwhile, then watches and
/// handles changes. With the lease renewed only after the setup, it had
/// run out by then: the worker lost it, set up again, lost it again, and
/// never watched. The setup is held by a fail point, in this process's
/// worker only (the other tests' workers are processes of their own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_setup_outlasts_its_lease_keeps_it_and_watches() {
    let Scene {
        redis,
        db,
        smache,
        users,
        ada,
        ..
    } = Scene::new().await;
    // The lease is renewed between two polls of the stream (500 ms each)
    // once the watch runs: 2 s leaves room on a loaded machine.
    let lease = Duration::from_secs(2);
    let held = HeldInSetup::for_ms(5000).await;
    let (stop, worker) = worker_in_process(&smache, lease);
    let watching = eventually(Duration::from_secs(20), || async {
        smache::worker::watching(&smache).await.unwrap_or(false)
    })
    .await;
    assert!(watching, "the worker held in its setup never watched");
    let key = cached_and_fresh(&smache, &ada).await;
    rename(&users, &ada, "Augusta").await;
    let renamed = current(&db, ada.id).await;
    let refreshed = eventually(Duration::from_secs(15), || async {
        smache.scope(greeting(&renamed)).await == "hello Augusta"
            && smache.is_fresh(&key).await.unwrap_or(false)
    })
    .await;
    assert!(refreshed, "the change after the long setup was handled");
    drop(held);

    let _ = stop.send(());
    worker.await.unwrap().unwrap();
    smache.stop_executor().await.unwrap();
    drop(redis);
    let _ = db.drop().await;
}

/// A worker stopped while its watch sets up (marking every value stale on
/// a large instance, say) stops at once and gives up the lease, rather
/// than holding it until the setup ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_during_its_setup_stops_at_once_and_gives_up_the_lease() {
    let Scene {
        redis, db, smache, ..
    } = Scene::new().await;
    let _held = HeldInSetup::for_ms(30_000).await;
    let (stop, worker) = worker_in_process(&smache, Duration::from_secs(2));
    let holds = eventually(Duration::from_secs(10), || async {
        smache::worker::readiness(&smache)
            .await
            .is_ok_and(|readiness| readiness.watcher.is_some())
    })
    .await;
    assert!(holds, "the worker took the lease");
    let _ = stop.send(());
    let ended = tokio::time::timeout(Duration::from_secs(5), worker).await;
    assert!(
        ended.is_ok(),
        "the worker stopped within 5 s, though held 30 s in its setup"
    );
    let readiness = smache::worker::readiness(&smache).await.unwrap();
    assert_eq!(readiness.watcher, None, "the lease was given up");
    assert!(!readiness.position_saved, "the setup saved nothing");

    smache.stop_executor().await.unwrap();
    drop(redis);
    let _ = db.drop().await;
}
