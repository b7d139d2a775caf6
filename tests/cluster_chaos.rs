//! Redis Cluster under chaos (#16), with the cluster's default of 48
//! shards (16 on each master). The run: while documents change and
//! callers read, the master holding the instance's own tag (the worker's
//! keys, and the shards on that master) is SIGKILLed (its replica is
//! promoted; the killed node comes back, as a replica), then the slot of
//! the shard holding a user's card (values, their reverse edges, that
//! shard's jobs) is moved to another master the way `redis-cli --cluster
//! reshard` does it, but slowly, a few keys at a time, so that clients
//! meet `ASK` and `TRYAGAIN` while traffic runs. A real `smache-worker`
//! follows the change stream, two executor processes recompute, one
//! writer changes users and moves orders between them, four readers call
//! `card`, `headline` (nested), `banner` (nested only: it hears of a change
//! from `card`'s store alone) and `spent` (related documents).
//!
//! What must hold:
//! * every call returns within [`CALL_BOUND`], with a value its function
//!   returns on a version of the data that was current at some moment
//!   between [`STALE_BOUND`] before the call and its end (a caller may
//!   compute directly while the store is unusable; no error reaches it);
//! * no key is held by both masters during the move (a write on the
//!   importing master while the migrating one still held the key:
//!   `redis-cli --cluster reshard` stops there, and whichever copy is
//!   kept, the other's writes are lost);
//! * once the writes stop and the system quiesces, every cached value is
//!   fresh and equals what its function returns on the current data (0
//!   stale, 0 lost: the users are in three groups whose last changes fall
//!   in the failover, in the move and after them, so a change lost in a
//!   disruption is never repaired by a later one), and no job was given
//!   up.
//!
//! Beside it, deterministically: `a_pipeline_whose_slot_is_half_moved_is_served_whole`,
//! a pipeline meeting its slot in migration, and
//! `a_value_computed_while_its_slot_moves_writes_nothing_on_the_importing_master`,
//! the store's scripts meeting it, and
//! `a_pipeline_over_every_shard_is_answered_whole_after_a_slot_moves`, a
//! pipeline sent per master from a map gone stale.
//!
//! **Ignored by design outside the cluster pass.** These tests kill nodes
//! of the cluster `scripts/with-servers.sh` starts with
//! `SMACHE_TEST_CLUSTER=1` and move its slots (they need its directory of
//! node configurations, not only its URL), so they run one at a time,
//! alone against it, after every other test: `scripts/test.sh` runs them
//! last, by themselves, with `--ignored`. By hand:
//!
//! ```text
//! SMACHE_TEST_CLUSTER=1 ./scripts/with-servers.sh bash -c \
//!   'cargo test --test cluster_chaos -- --ignored'
//! ```
//!
//! (`--ignored` also runs `cluster_chaos_executor`, the executor
//! processes' entry point, which returns at once when the run did not
//! start it.) Without the cluster's variables they fail, saying how to run
//! them. About 55 s, most of it waiting for jobs a disruption left
//! unacknowledged, which executors reclaim after
//! [`RECLAIM_AFTER`](smache::executor::RECLAIM_AFTER).

use std::collections::HashSet;
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::doc;
use bson::oid::ObjectId;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use smache::inspect::GraphOptions;
use smache::{computed, Entity, Smache};
use smache_suite::cluster::{NodeInfo, TestCluster};
use smache_suite::layout::{value_base, value_id, Layout};
use smache_suite::{mongodb_uri, redis_connection, unique, WorkerProcess};

#[path = "cluster_chaos/traffic.rs"]
mod traffic;

use traffic::{populate, process_oid, read_loop, write_loop, Dice, Shared};

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
    score: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "orders")]
struct Order {
    #[serde(rename = "_id")]
    id: ObjectId,
    user_id: ObjectId,
    total: i64,
}

/// The sentinel: a document the run changes once its writes are done.
#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "flags")]
struct Flag {
    #[serde(rename = "_id")]
    id: String,
    value: String,
}

#[computed(Flag)]
async fn flag_value(flag: &Flag) -> String {
    flag.value.clone()
}

fn card_of(user: &User) -> String {
    format!("{} ({})", user.name, user.score)
}

#[computed(User)]
async fn card(user: &User) -> String {
    card_of(user)
}

/// One of many lines of a user: values of one user in any shard.
#[computed(User, Raw)]
async fn line(user: &User, n: u32) -> String {
    format!("{} {n}", user.name)
}

/// Nested: depends on `card` of the same user.
#[computed(User)]
async fn headline(user: &User) -> String {
    format!("** {} **", card(user).await)
}

/// Nested only: depends on `card` and on nothing else (it loads the user
/// itself), so it hears of a change only from `card`'s store, which
/// signals the values built on it.
#[computed(Raw)]
async fn banner(user_id: String) -> String {
    let db = Smache::current().mongodb().cloned().expect("a database");
    let id = ObjectId::parse_str(&user_id).expect("a user id");
    let user = db
        .collection::<User>("users")
        .find_one(doc! { "_id": id })
        .await
        .expect("load a user")
        .expect("the user");
    format!("[{}]", card(&user).await)
}

/// Related: the sum of the user's orders.
#[computed(User, relations(Order => |o: &Order| o.user_id))]
async fn spent(user: &User) -> i64 {
    let db = Smache::current().mongodb().cloned().expect("a database");
    smache_suite::orders_total(&db, "orders", user.id).await
}

/// Users whose values the run reads and changes.
const USERS: usize = 16;
/// Readers calling the functions at once, each in a loop.
const READERS: usize = 4;
/// The longest a call may take (a hang is a failure).
const CALL_BOUND: Duration = Duration::from_secs(10);
/// How far behind the data a value may be: the worker's lag through a
/// failover (the node timeout, the promotion, the breaker's probes, the
/// worker's retry) plus the time a stale value is served while its
/// recompute runs (`max_stale` below).
const STALE_BOUND: Duration = Duration::from_secs(20);
/// The callers' `max_stale`: past it they compute a stale value themselves
/// rather than wait for a recompute that a failover may have delayed.
const MAX_STALE: Duration = Duration::from_secs(5);
/// The slot moves this many keys per `MIGRATE`, this long apart: a few
/// seconds of migration for the run's hundred-odd keys.
const MOVE_BATCH: usize = 3;
const MOVE_PAUSE: Duration = Duration::from_millis(100);
/// How long into the move of smache's slot the writer stops changing the
/// users of group 1.
const FREEZE_INTO_MOVE: Duration = Duration::from_millis(1500);

/// An executor process of the run; killed when dropped.
struct ExecutorProcess(Child);

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn executor_log_path(prefix: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{prefix}-executors.log"))
}

fn executor_process(url: &str, prefix: &str, database: &str) -> ExecutorProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(executor_log_path(prefix))
        .expect("executor log");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "cluster_chaos_executor",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SMACHE_CLUSTER_CHAOS_REDIS_URL", url)
        .env("SMACHE_CLUSTER_CHAOS_PREFIX", prefix)
        .env("SMACHE_CLUSTER_CHAOS_DATABASE", database)
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap();
    ExecutorProcess(child)
}

/// The moments of the run, for its report and its failure messages.
struct RunLog {
    started: Instant,
    events: Mutex<Vec<String>>,
}

impl RunLog {
    fn note(&self, what: impl std::fmt::Display) {
        // With the time of day (UTC), as the logs have it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ms = now.as_millis() % 86_400_000;
        let line = format!(
            "{:6.2} s ({:02}:{:02}:{:02}.{:03})  {what}",
            self.started.elapsed().as_secs_f64(),
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        );
        println!("cluster_chaos: {line}");
        self.events.lock().unwrap().push(line);
    }

    fn text(&self) -> String {
        self.events.lock().unwrap().join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kills nodes of the Redis Cluster of scripts/with-servers.sh: run alone, last, by scripts/test.sh's cluster pass (--ignored)"]
async fn a_failover_and_a_slot_migration_under_traffic_break_no_caller_and_lose_no_change() {
    let _alone = ALONE.lock().await;
    let logs = logs();
    let cluster = TestCluster::from_env();
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let url = cluster.url().to_owned();
    let run = RunLog {
        started: Instant::now(),
        events: Mutex::default(),
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut dice = Dice(seed);
    let database = unique("cluster_chaos").replace('-', "_");
    let prefix = unique("cchaos");
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let db = client.database(&database);
    let smache = Smache::builder()
        .redis_url(&url)
        .mongodb(&client, &database)
        .prefix(&prefix)
        .max_stale(MAX_STALE)
        .build()
        .unwrap();
    let (shared, live_orders) = populate(&db, &mut dice).await;
    let flag = Flag {
        id: "sentinel".into(),
        value: "running".into(),
    };
    let flags = db.collection::<Flag>("flags");
    flags.insert_one(&flag).await.unwrap();

    let mut worker = WorkerProcess::start(&url, &mongodb_uri(), &database, &prefix);
    let executors = [
        executor_process(&url, &prefix, &database),
        executor_process(&url, &prefix, &database),
    ];
    smache.scope(flag_value(&flag)).await;
    for user in &shared.people {
        smache.scope(read_all(user)).await;
    }
    worker.wait_watching(Duration::from_secs(20)).await;
    // The failover takes the master of the instance's own tag (the
    // worker's keys, `config`) and of the shards on it; the move, the
    // slot of the shard holding a user's card (values, their edges, that
    // shard's jobs), or the instance's tag on a store of one shard.
    let slot = cluster.keyslot(&format!("{{{prefix}}}")).await;
    let card_key = smache.storage_key(&card::key(&shared.people[0]).unwrap());
    let shard_slot = cluster.keyslot(&card_key).await;
    run.note(format!(
        "seed {seed}: {USERS} users, prefix {prefix} in slot {slot}, {} shards, a card in slot \
         {shard_slot}, worker watching",
        smache
            .inspect_jobs()
            .await
            .map_or(0, |jobs| jobs.shards.len())
    ));

    // Traffic: one writer and READERS readers, until told to stop.
    let writer = tokio::spawn(write_loop(
        db.clone(),
        Arc::clone(&shared),
        live_orders,
        dice.below(usize::MAX) as u64,
    ));
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            tokio::spawn(read_loop(
                smache.clone(),
                db.clone(),
                Arc::clone(&shared),
                seed.wrapping_mul(i as u64 + 3) | 1,
                url.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    fail_over(&cluster, slot, &run, &shared).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = move_slot(&cluster, shard_slot, &run, &shared).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    shared.stop.store(true, Ordering::SeqCst);
    let writes = writer.await.expect("the writer");
    for reader in readers {
        reader.await.expect("a reader");
    }
    let reads = &shared.reads;
    run.note(format!(
        "traffic stopped: {writes} writes, {}",
        reads.summary()
    ));

    // Quiescing: the worker watching, the sentinel refreshed (the worker
    // has turned every write before it into jobs), then every value fresh
    // and no job left. A killed master's unreplicated writes may have
    // taken a job's acknowledgement with them: it is reclaimed after
    // RECLAIM_AFTER.
    let deadline = Instant::now() + smache::executor::RECLAIM_AFTER + Duration::from_secs(20);
    let failed = |what: String| diagnostics(seed, &what, &run, &worker, &prefix);
    worker.wait_watching(Duration::from_secs(20)).await;
    flags
        .update_one(
            doc! { "_id": "sentinel" },
            doc! { "$set": { "value": "done" } },
        )
        .await
        .unwrap();
    // Called with the document as it is now, as a caller would: the value
    // reads "done" once the worker's signal marked it stale (an executor
    // recomputes it, or a caller past MAX_STALE), and never before. (With
    // the document of before, a caller computing it past MAX_STALE would
    // store "running" again, from its own old copy.)
    let sentinel = || async {
        let now = flags
            .find_one(doc! { "_id": "sentinel" })
            .await
            .unwrap()
            .unwrap();
        smache.scope(flag_value(&now)).await
    };
    while sentinel().await != "done" {
        if Instant::now() >= deadline {
            // What the worker saw, and the sentinel's graph as Redis holds it.
            let workers = match smache.inspect_workers().await {
                Ok(report) => report.to_string(),
                Err(err) => err.to_string(),
            };
            let start = "flags/sentinel"
                .parse::<smache::inspect::GraphStart>()
                .unwrap();
            let graph = match smache.inspect_graph(start, GraphOptions::default()).await {
                Ok(graph) => graph.to_string(),
                Err(err) => err.to_string(),
            };
            panic!(
                "{}",
                failed(format!(
                    "the sentinel was never refreshed\n{workers}\n{graph}"
                ))
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.note("sentinel refreshed");
    let users = db.collection::<User>("users");
    loop {
        let mut stale = 0;
        for user in &shared.people {
            let keys = [
                card::key(user).unwrap(),
                headline::key(user).unwrap(),
                banner::key(user.id.to_hex()).unwrap(),
                spent::key(user).unwrap(),
            ];
            let mut fresh = true;
            for key in &keys {
                fresh &= smache.is_fresh(key).await.unwrap_or(false);
            }
            if !fresh {
                // A value stale with no recompute coming (or for longer
                // than MAX_STALE) is computed by its next reader.
                stale += 1;
                let now = users
                    .find_one(doc! { "_id": user.id })
                    .await
                    .unwrap()
                    .unwrap();
                smache.scope(read_all(&now)).await;
            }
        }
        let queued = smache
            .inspect_jobs()
            .await
            .map_or(u64::MAX, |jobs| jobs.queued);
        if stale == 0 && queued == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            failed(format!(
                "users with stale values: {stale}, jobs queued: {queued}"
            ))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.note("every value fresh, no job queued");

    // Every cached value equals its function on the current data.
    let mut wrong = Vec::new();
    for (i, person) in shared.people.iter().enumerate() {
        let now = users
            .find_one(doc! { "_id": person.id })
            .await
            .unwrap()
            .unwrap();
        let expected_card = card_of(&now);
        let checks = [
            (smache.scope(card(&now)).await, expected_card.clone()),
            (
                smache.scope(headline(&now)).await,
                format!("** {expected_card} **"),
            ),
            (
                smache.scope(banner(now.id.to_hex())).await,
                format!("[{expected_card}]"),
            ),
            (
                smache.scope(spent(&now)).await.to_string(),
                smache_suite::orders_total(&db, "orders", now.id)
                    .await
                    .to_string(),
            ),
        ];
        let mismatches: Vec<String> = checks
            .into_iter()
            .filter(|(cached, expected)| cached != expected)
            .map(|(cached, expected)| format!("cached {cached:?}, expected {expected:?}"))
            .collect();
        if !mismatches.is_empty() {
            // When it last changed, and its graph as Redis holds it.
            let changed = shared.model.lock().unwrap().last_change(person.id);
            let start = format!("users/{}", person.id.to_hex())
                .parse::<smache::inspect::GraphStart>()
                .unwrap();
            let graph = match smache.inspect_graph(start, GraphOptions::default()).await {
                Ok(graph) => graph.to_string(),
                Err(err) => err.to_string(),
            };
            wrong.push(format!(
                "{} (group {}, last changed {:.2} s into the run): {}\n{graph}",
                now.name,
                i % 3,
                changed.saturating_duration_since(run.started).as_secs_f64(),
                mismatches.join("; ")
            ));
        }
    }
    let report = smache.inspect_jobs().await.unwrap();
    let warnings = summarize_warnings(&logs.lines());
    let failures = reads.failures();
    println!(
        "cluster_chaos: seed {seed}: {writes} writes, {}; {} busy keys in the move, {} dead \
         letters, {} wrong at the end; took {:.1} s. Warnings in this process, and the breaker \
         (count, first):\n{warnings}",
        reads.summary(),
        busy.len(),
        report.dead,
        wrong.len(),
        run.started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{}",
        failed(format!("reads failed:\n{}", failures.join("\n")))
    );
    assert!(
        wrong.is_empty(),
        "{}",
        failed(format!("stale or lost values:\n{}", wrong.join("\n")))
    );
    assert!(
        busy.is_empty(),
        "{}",
        failed(format!(
            "keys both masters held during the move (written on the importing one while the \
             migrating one still held them; `redis-cli --cluster reshard` stops there, and \
             whichever copy is kept, the other's writes are lost):\n{}",
            busy.join("\n")
        ))
    );
    assert_eq!(report.dead, 0, "no job given up\n{report}");

    drop(executors);
    assert!(worker.terminate(), "{}", worker.log());
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let _ = db.drop().await;
}

/// Kills the master of `slot` (SIGKILL), waits for its replica's
/// promotion, then starts the killed node again and waits until it has
/// rejoined as a replica and the cluster is healthy.
async fn fail_over(cluster: &TestCluster, slot: u16, run: &RunLog, shared: &Shared) {
    let master = cluster.master_of(slot, &[]).await;
    run.note(format!(
        "kill -9 of {} (master of slot {slot})",
        master.addr
    ));
    cluster.kill(&master.addr).await;
    let killed_at = Instant::now();
    let promoted = wait_for(Duration::from_secs(30), || async {
        let view = cluster.view(&[master.addr.as_str()]).await;
        view.into_iter()
            .find(|node| node.is_master() && node.serves(slot) && node.id != master.id)
    })
    .await
    .unwrap_or_else(|| panic!("no replica took over slot {slot}\n{}", run.text()));
    shared.freeze(0);
    run.note(format!(
        "{} promoted, {:.1} s after the kill; users of group 0 change no more",
        promoted.addr,
        killed_at.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(&master.addr).await;
    run.note(format!("{} started again", master.addr));
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let itself = cluster
        .view_of(&master.addr)
        .await
        .unwrap()
        .into_iter()
        .find(|node| node.flags.iter().any(|f| f == "myself"))
        .expect("myself");
    assert!(itself.is_replica(), "{} came back as a master", master.addr);
    run.note(format!(
        "{} rejoined as a replica; cluster healthy",
        master.addr
    ));
}

/// Moves `slot` and its neighbours from their master to another, a few
/// keys at a time; returns the keys found on both masters at once.
async fn move_slot(cluster: &TestCluster, slot: u16, run: &RunLog, shared: &Shared) -> Vec<String> {
    let source = cluster.master_of(slot, &[]).await;
    let target: NodeInfo = cluster
        .view(&[])
        .await
        .into_iter()
        .find(|node| {
            node.is_master() && node.connected && node.id != source.id && !node.slots.is_empty()
        })
        .expect("another master");
    let range: Vec<u16> = (slot.saturating_sub(1)..=slot.saturating_add(1).min(16383))
        .filter(|&s| source.serves(s))
        .collect();
    run.note(format!(
        "moving slots {range:?} from {} to {}",
        source.addr, target.addr
    ));
    let mut busy = Vec::new();
    for &s in &range {
        let moving = cluster.move_slot(s, &source, &target, MOVE_BATCH, MOVE_PAUSE);
        if s != slot {
            busy.extend(moving.await.busy);
            continue;
        }
        // Group 1's last changes are recomputed while smache's keys are
        // split between the two masters.
        let freezing = async {
            tokio::time::sleep(FREEZE_INTO_MOVE).await;
            shared.freeze(1);
            run.note("users of group 1 change no more");
        };
        let (moved, ()) = tokio::join!(moving, freezing);
        run.note(format!(
            "slot {slot} moved: {} keys in {} batches, {} busy keys {:?}",
            moved.keys,
            moved.batches,
            moved.busy.len(),
            moved.busy
        ));
        busy.extend(moved.busy);
    }
    cluster.wait_healthy(Duration::from_secs(30)).await;
    assert_eq!(cluster.master_of(slot, &[]).await.id, target.id);
    run.note("cluster healthy, the slot on its new master");
    busy
}

/// A failure message: what, with the run's moments and the tails of the
/// worker's and the executors' logs.
fn diagnostics(
    seed: u64,
    what: &str,
    run: &RunLog,
    worker: &WorkerProcess,
    prefix: &str,
) -> String {
    let executors = std::fs::read_to_string(executor_log_path(prefix)).unwrap_or_default();
    let ids: Vec<&str> = executors
        .lines()
        .filter(|line| line.contains("process oid"))
        .collect();
    format!(
        "seed {seed}: {what}\n--- run ---\n{}\n--- worker ---\n{}\n--- executors ---\n{}\n\
         --- process ids ---\nthis process (the callers): process oid {}\n{}",
        run.text(),
        tail(&quiet(&worker.log()), 60),
        tail(&quiet(&executors), 60),
        process_oid(),
        ids.join("\n"),
    )
}

/// A log without redis-rs's own cluster recovery lines (dozens a second
/// while a node is down), which would crowd out smache's in a tail; how
/// many were left out is said at the end.
fn quiet(log: &str) -> String {
    let noisy = |line: &&str| line.contains("redis::cluster_handling");
    let left_out = log.lines().filter(noisy).count();
    let mut kept: Vec<&str> = log.lines().filter(|line| !noisy(line)).collect();
    let note = format!("({left_out} lines of redis::cluster_handling left out)");
    kept.push(&note);
    kept.join("\n")
}

/// What this process logs: warnings, and the breaker's opening and
/// closing (one capture for the binary: the first call installs it).
fn logs() -> &'static smache_suite::LogCapture {
    smache_suite::capture_logs("smache=warn,smache::store::breaker=info")
}

/// The tests of this file change the cluster (kill nodes, move slots):
/// one at a time.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pipeline whose slot is half moved: its first key on the importing
/// master, the others still on the migrating one. The client follows the
/// first `ASK` with the whole pipeline after one `ASKING`, which covers
/// its first command only; smache's connection then runs the commands one
/// by one, each following its own redirection, so the pipeline is served
/// whole (here the worker's readiness: `GET` lease, `EXISTS` token,
/// `EXISTS` owed marking; an executor's `XACK` + `XDEL` likewise, which
/// otherwise acknowledged a job and left it in the stream for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "moves a slot of the Redis Cluster of scripts/with-servers.sh: run alone, last, by scripts/test.sh's cluster pass (--ignored)"]
async fn a_pipeline_whose_slot_is_half_moved_is_served_whole() {
    let (_alone, cluster) = alone_on_the_cluster().await;
    let prefix = unique("cpipe");
    let smache = Smache::builder()
        .redis_url(cluster.url())
        .prefix(&prefix)
        .build()
        .unwrap();
    let (lease, token) = (
        format!("{{{prefix}}}:w:lease"),
        format!("{{{prefix}}}:w:token"),
    );
    let mut conn = redis_connection(cluster.url()).await;
    let () = conn.set(&lease, "a-worker").await.unwrap();
    let () = conn.set(&token, "a-position").await.unwrap();
    let ready = smache::worker::readiness(&smache).await.unwrap();
    assert_eq!(ready.watcher.as_deref(), Some("a-worker"));
    assert!(ready.position_saved);

    let slot = cluster.keyslot(&lease).await;
    let from = cluster.master_of(slot, &[]).await;
    let to = another_master(&cluster, &from).await;
    cluster.open_move(slot, &from, &to).await;
    let busy = cluster
        .migrate(&from, &to, std::slice::from_ref(&lease))
        .await;
    let half_moved = smache::worker::readiness(&smache).await;
    let rest = cluster
        .migrate_slot(slot, &from, &to, 100, Duration::ZERO)
        .await;
    cluster.close_move(slot, &from, &to).await;
    cluster.wait_healthy(Duration::from_secs(30)).await;

    assert!(busy.is_empty() && rest.busy.is_empty(), "{busy:?} {rest:?}");
    let ready = half_moved.expect("the readiness read with its slot half moved");
    assert_eq!(ready.watcher.as_deref(), Some("a-worker"));
    assert!(ready.position_saved);
    assert!(!ready.stale_marking_owed);
    let () = conn.del(&[lease, token]).await.unwrap();
}

/// A value computed while its shard's slot moves, with none of its keys on
/// either master yet: its scripts must run on neither. Redis checks only
/// the keys a script declares, so a script let into the importing master
/// by `ASKING` (its declared keys missing on the migrating one) would read
/// the user's reverse edges, still on the migrating master, as missing and
/// create them anew there: the move then meets `BUSYKEY`, and whichever
/// copy is kept, the other's edges are lost (with them, a refresh). Every
/// call declares a never-written key of its slot too, so the migrating
/// master answers `ASK` or `TRYAGAIN` and the importing one `TRYAGAIN`
/// until the move ends: the caller computes directly
/// meanwhile, and the value is stored, with its edge, once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "moves a slot of the Redis Cluster of scripts/with-servers.sh: run alone, last, by scripts/test.sh's cluster pass (--ignored)"]
async fn a_value_computed_while_its_slot_moves_writes_nothing_on_the_importing_master() {
    let (_alone, cluster) = alone_on_the_cluster().await;
    let smache = on_cluster(&cluster, "cmove");
    let ada = User {
        id: ObjectId::new(),
        name: "Ada".into(),
        score: 1,
    };
    assert_eq!(smache.scope(card(&ada)).await, card_of(&ada));
    let card_key = card::key(&ada).unwrap();
    let base = value_base(&smache, &card_key);
    // A line of Ada's in the card's shard: its edge joins the card's.
    let n = (0..10_000)
        .find(|&n| value_base(&smache, &line::key(&ada, n).unwrap()) == base)
        .expect("a line in the card's shard");
    let line_key = line::key(&ada, n).unwrap();
    let edges = format!("{base}r:e:users:o:{}", ada.id.to_hex());
    let mut conn = redis_connection(cluster.url()).await;
    let members: HashSet<String> = conn.smembers(&edges).await.unwrap();
    assert_eq!(members, [value_id(&smache, &card_key)].into());

    let slot = cluster.keyslot(&edges).await;
    let from = cluster.master_of(slot, &[]).await;
    let to = another_master(&cluster, &from).await;
    cluster.open_move(slot, &from, &to).await;
    let during = smache.scope(line(&ada, n)).await;
    let moved = cluster
        .migrate_slot(slot, &from, &to, 100, Duration::ZERO)
        .await;
    cluster.close_move(slot, &from, &to).await;
    cluster.wait_healthy(Duration::from_secs(30)).await;

    assert_eq!(during, format!("Ada {n}"), "computed directly meanwhile");
    assert!(
        moved.busy.is_empty(),
        "keys written on the importing master while the migrating one held them: {:?}",
        moved.busy
    );
    // Once the store serves the slot again, the line is stored, its edge
    // beside the card's.
    let stored = wait_for(Duration::from_secs(10), || async {
        smache.scope(line(&ada, n)).await;
        smache.entry(&line_key).await.ok().flatten()
    })
    .await;
    assert!(stored.is_some(), "the line is stored once the move ends");
    let members: HashSet<String> = conn.smembers(&edges).await.unwrap();
    assert_eq!(
        members,
        [value_id(&smache, &card_key), value_id(&smache, &line_key)].into()
    );
}

/// A pipeline over every shard (here `inspect jobs`'s) goes out as one
/// pipeline per master, from a map of the slots' masters the connection
/// keeps. Once a slot moves the map is stale: the part sent to the old
/// master fails, goes again slot by slot, and the replies are the same;
/// the next such pipeline reads the map again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "moves a slot of the Redis Cluster of scripts/with-servers.sh: run alone, last, by scripts/test.sh's cluster pass (--ignored)"]
async fn a_pipeline_over_every_shard_is_answered_whole_after_a_slot_moves() {
    let (_alone, cluster) = alone_on_the_cluster().await;
    let smache = on_cluster(&cluster, "cmap");
    let bases = Layout::of(&smache).await.bases().to_vec();
    assert!(bases.len() > 3, "shards over every master: {bases:?}");
    // Jobs of no kind an executor knows (none runs here): one in the first
    // shard, two in the last.
    let mut conn = redis_connection(cluster.url()).await;
    let last = bases.len() - 1;
    for (shard, jobs) in [(0, 1), (last, 2)] {
        for _ in 0..jobs {
            let _: String = conn
                .xadd(format!("{}jobs", bases[shard]), "*", &[("probe", "1")])
                .await
                .unwrap();
        }
    }
    let queued = |report: &smache::inspect::JobsReport| -> Vec<u64> {
        report.shards.iter().map(|shard| shard.queued).collect()
    };
    let before = queued(&smache.inspect_jobs().await.unwrap());
    assert_eq!((before[0], before[last]), (1, 2), "{before:?}");

    let slot = cluster.keyslot(&format!("{}jobs", bases[0])).await;
    let from = cluster.master_of(slot, &[]).await;
    let to = another_master(&cluster, &from).await;
    let moved = cluster
        .move_slot(slot, &from, &to, 100, Duration::ZERO)
        .await;
    cluster.wait_healthy(Duration::from_secs(30)).await;
    assert!(moved.busy.is_empty(), "{moved:?}");

    let after = smache.inspect_jobs().await.expect("inspect after the move");
    assert_eq!(queued(&after), before, "the same replies, the map stale");
    let again = smache
        .inspect_jobs()
        .await
        .expect("inspect, the map read again");
    assert_eq!(queued(&again), before);
}

/// This test alone on the cluster (see [`ALONE`]), once it is healthy,
/// with this process's logs captured.
async fn alone_on_the_cluster() -> (tokio::sync::MutexGuard<'static, ()>, TestCluster) {
    let alone = ALONE.lock().await;
    logs();
    let cluster = TestCluster::from_env();
    cluster.wait_healthy(Duration::from_secs(30)).await;
    (alone, cluster)
}

/// An instance on the cluster, of the cluster's default shard count, with
/// a prefix of its own.
fn on_cluster(cluster: &TestCluster, label: &str) -> Smache {
    Smache::builder()
        .redis_url(cluster.url())
        .prefix(unique(label))
        .build()
        .unwrap()
}

/// A master of the cluster other than `from` that serves slots.
async fn another_master(cluster: &TestCluster, from: &NodeInfo) -> NodeInfo {
    cluster
        .view(&[])
        .await
        .into_iter()
        .find(|node| node.is_master() && node.id != from.id && !node.slots.is_empty())
        .expect("another master")
}

/// Reads every value of a user.
async fn read_all(user: &User) {
    card(user).await;
    headline(user).await;
    banner(user.id.to_hex()).await;
    spent(user).await;
}

/// Polls `probe` every 100 ms until it finds something or `timeout` passes.
async fn wait_for<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The warnings captured, one line per message (its error detail cut):
/// how many, and the first in full.
fn summarize_warnings(lines: &[String]) -> String {
    // message → (count, first line, time of the last)
    let mut counts: Vec<(String, usize, String, String)> = Vec::new();
    for line in lines
        .iter()
        .filter(|line| line.contains("WARN") || line.contains("INFO"))
    {
        let message = line
            .split_once("smache: ")
            .map_or(line.as_str(), |(_, rest)| rest);
        // The message's start, and its error's, if any.
        let message: String = match message.split_once("error=") {
            Some((text, error)) => format!(
                "{} … error={}",
                text.chars().take(60).collect::<String>(),
                error.chars().take(60).collect::<String>()
            ),
            None => message.chars().take(100).collect(),
        };
        // "2026-11-29T08:08:31.812256Z …": the time of day.
        let at = line.get(11..23).unwrap_or_default().to_owned();
        match counts.iter_mut().find(|(m, ..)| *m == message) {
            Some((_, count, _, last)) => {
                *count += 1;
                *last = at;
            }
            None => counts.push((message, 1, line.clone(), at)),
        }
    }
    counts
        .iter()
        .map(|(_, count, example, last)| format!("  {count} × (last at {last}) {example}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `lines` lines of `text`, debug lines left out.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .filter(|line| !line.contains(" DEBUG "))
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An executor process of the run (started by it; returns at once
/// otherwise, as when `--ignored` runs it beside the run itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an executor process of the cluster chaos run, started by it"]
async fn cluster_chaos_executor() {
    let (Ok(url), Ok(prefix), Ok(database)) = (
        std::env::var("SMACHE_CLUSTER_CHAOS_REDIS_URL"),
        std::env::var("SMACHE_CLUSTER_CHAOS_PREFIX"),
        std::env::var("SMACHE_CLUSTER_CHAOS_DATABASE"),
    ) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "smache=info,smache::store::breaker=debug,redis=info",
        ))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    eprintln!(
        "cluster chaos executor: pid {}, process oid {}",
        std::process::id(),
        process_oid()
    );
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let smache = Smache::builder()
        .redis_url(url)
        .mongodb(&client, &database)
        .prefix(&prefix)
        .build()
        .unwrap();
    smache::executor::run(smache).await.unwrap();
}
