//! Crash points of the store protocol over several shards (#16; README,
//! "Shards", the protocol table): a process killed between two of its
//! steps, and what the process that takes over must find — no change
//! lost.
//!
//! The process killed is a child of this test binary (a worker or an
//! executor of the test's instance, [`crash_points_child`]) in which one
//! of smache's crash points (`fail::fail_point!`, compiled in by smache's
//! test-only `failpoints` feature) calls `std::process::abort`: no
//! destructor runs, no lease is given up, no job acknowledged. Then a
//! worker or an executor without the crash point takes over (a worker
//! once the dead one's lease ends; an executor reclaims the dead one's
//! jobs, made idle past `RECLAIM_AFTER` here rather than waited for), and
//! the values the change concerns must be refreshed in the background.
//!
//! Every instance here has 4 shards, whatever the pass's
//! `SMACHE_REDIS_SHARDS`: the steps apart exist only with several.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bson::doc;
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use smache::{computed, CacheKey, Entity, Smache};
use smache_suite::layout::Layout;
use smache_suite::{mongodb_uri, redis_connection, redis_url, unique, WorkerProcess};

const SHARDS: usize = 4;

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "orders")]
struct Order {
    #[serde(rename = "_id")]
    id: ObjectId,
    user_id: ObjectId,
    total: i64,
}

/// Depends on the user document.
#[computed(User)]
async fn greeting(user: &User) -> String {
    format!("hello {}", user.name)
}

/// Depends on the user's orders through a relation.
#[computed(User, relations(Order => |o: &Order| o.user_id))]
async fn spent(user: &User) -> i64 {
    let db = Smache::current().mongodb().cloned().expect("a database");
    smache_suite::orders_total(&db, "orders", user.id).await
}

/// The user's name: a value of the user's shard.
#[computed(User)]
async fn leaf(user: &User) -> String {
    user.name.clone()
}

/// Reads `leaf` of the user with this id: depends on that value alone (its
/// argument is a plain string), so it hears of a change of the user only
/// from `leaf`'s store anew, through a fan-all job when the two are in
/// different shards.
#[computed(Raw)]
async fn trunk(user_id: String) -> String {
    let db = Smache::current().mongodb().cloned().expect("a database");
    let id = ObjectId::parse_str(&user_id).expect("an id");
    let user = db
        .collection::<User>("users")
        .find_one(doc! { "_id": id })
        .await
        .expect("load a user")
        .expect("the user");
    format!("<{}>", leaf(&user).await)
}

/// A card by name: a value with no document, to be made an alias.
#[computed(Raw)]
async fn card(name: String) -> String {
    format!("card {name}")
}

/// Reads the card of the same name: depends on that value alone.
#[computed(Raw)]
async fn frame(name: String) -> String {
    format!("[{}]", card(name).await)
}

fn instance(client: &mongodb::Client, database: &str, prefix: &str) -> Smache {
    Smache::builder()
        .redis_url(redis_url())
        .mongodb(client, database)
        .prefix(prefix)
        .redis_shards(SHARDS)
        // A dead process's lease on a value ends soon.
        .compute_lease(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// One test's instance, database and worker (not started).
struct World {
    smache: Smache,
    db: mongodb::Database,
    database: String,
    prefix: String,
    worker: WorkerProcess,
}

impl World {
    async fn new(label: &str) -> World {
        smache_suite::init_logs();
        let database = unique(label).replace('-', "_");
        let prefix = unique(label);
        let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
        let smache = instance(&client, &database, &prefix);
        // Its first use records the instance's shard count (before any
        // worker or probe of another count could).
        smache.inspect_jobs().await.unwrap();
        let mut worker = WorkerProcess::prepare(&redis_url(), &mongodb_uri(), &database, &prefix);
        worker.arg(format!("--redis-shards={SHARDS}"));
        World {
            db: client.database(&database),
            smache,
            database,
            prefix,
            worker,
        }
    }

    async fn insert_user(&self, name: &str) -> User {
        let user = User {
            id: ObjectId::new(),
            name: name.into(),
        };
        self.db
            .collection::<User>("users")
            .insert_one(&user)
            .await
            .unwrap();
        user
    }

    /// The shard base (`{prefix#n}:`) of a value.
    fn base(&self, key: &CacheKey) -> String {
        let storage = self.smache.storage_key(key);
        storage[..storage.find("}:").unwrap() + 2].to_owned()
    }

    /// The shard base and the value id of a value.
    fn split(&self, key: &CacheKey) -> (String, String) {
        let storage = self.smache.storage_key(key);
        let at = storage.find("}:v:").unwrap();
        (storage[..at + 2].to_owned(), storage[at + 4..].to_owned())
    }

    /// Whether Redis set `set` holds `member`.
    async fn holds(&self, set: &str, member: &str) -> bool {
        let mut conn = redis_connection(&redis_url()).await;
        redis::cmd("SISMEMBER")
            .arg(set)
            .arg(member)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// A user (inserted) whose `trunk` and `leaf` are in different shards.
    async fn user_apart(&self) -> User {
        for _ in 0..64 {
            let ada = self.insert_user("Ada").await;
            if self.base(&trunk::key(ada.id.to_hex()).unwrap())
                != self.base(&leaf::key(&ada).unwrap())
            {
                return ada;
            }
        }
        panic!("no user's trunk and leaf in different shards");
    }

    /// Gives order `order` to user `to`.
    async fn move_order(&self, order: ObjectId, to: ObjectId) {
        self.db
            .collection::<Order>("orders")
            .update_one(doc! { "_id": order }, doc! { "$set": { "user_id": to } })
            .await
            .unwrap();
    }

    /// Renames a user.
    async fn rename(&self, user: &User, name: &str) {
        self.db
            .collection::<User>("users")
            .update_one(doc! { "_id": user.id }, doc! { "$set": { "name": name } })
            .await
            .unwrap();
    }

    /// Waits until a worker follows the change stream from a saved
    /// position.
    async fn wait_watching(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !smache::worker::watching(&self.smache)
            .await
            .unwrap_or(false)
        {
            assert!(Instant::now() < deadline, "no worker watching");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the value at `key` is stored anew (a version past
    /// `version`), in the background, and fresh.
    async fn refreshed(&self, key: &CacheKey, version: u64, what: &str, crashed: &Crashing) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(entry) = self.smache.entry(key).await.unwrap() {
                if entry.version() > version && !entry.is_stale() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not refreshed after the crash\n--- the crashed process ---\n{}\n--- worker ---\n{}",
                crashed.log(),
                self.worker.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn version(&self, key: &CacheKey) -> u64 {
        self.smache.entry(key).await.unwrap().unwrap().version()
    }

    /// The jobs streams, by shard.
    async fn streams(&self) -> Vec<String> {
        let report = self.smache.inspect_jobs().await.unwrap();
        report.shards.iter().map(|s| s.stream.clone()).collect()
    }

    /// See [`Layout::age_held_jobs`].
    async fn age_held_jobs(&self) -> usize {
        let mut conn = redis_connection(&redis_url()).await;
        Layout::of(&self.smache)
            .await
            .age_held_jobs(&mut conn)
            .await
    }

    /// Once the executor `crashing` died at its crash point holding its
    /// job, a new one (in this process) that reclaims it at once.
    async fn take_over_from(&self, crashing: &mut Crashing) -> smache::executor::ExecutorHandle {
        crashing.crashed().await;
        assert!(
            self.age_held_jobs().await >= 1,
            "the dead executor held the job"
        );
        smache::executor::spawn(&self.smache)
    }

    /// Once the jobs queued so far have run, stops `executor`: the state a
    /// crash test starts from, no executor left to take the next job.
    async fn settle(&self, executor: smache::executor::ExecutorHandle) {
        self.drained().await;
        executor.shutdown().await.unwrap();
    }

    /// Waits until no job is queued or held.
    async fn drained(&self) {
        assert!(
            smache_suite::quiesced(&self.smache, Duration::from_secs(20)).await,
            "jobs left"
        );
    }

    async fn stop(mut self) {
        // (The alias tests run none.)
        if self.worker.pid().is_some() {
            assert!(self.worker.terminate(), "{}", self.worker.log());
        }
        let _ = self.db.drop().await;
    }
}

/// A worker or an executor of a test's instance, in a child process,
/// that aborts at a crash point; killed when dropped.
struct Crashing {
    child: Child,
    log: PathBuf,
}

impl Crashing {
    fn start(world: &World, role: &str, point: &str) -> Crashing {
        Crashing::start_with(world, role, point, "")
    }

    /// [`start`](Self::start), the role given `args` (`SMACHE_CRASH_ARGS`).
    fn start_with(world: &World, role: &str, point: &str, args: &str) -> Crashing {
        let log = std::env::temp_dir().join(format!("{}-{role}.log", world.prefix));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_points_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SMACHE_CRASH_ROLE", role)
            .env("SMACHE_CRASH_POINT", point)
            .env("SMACHE_CRASH_PREFIX", &world.prefix)
            .env("SMACHE_CRASH_DATABASE", &world.database)
            .env("SMACHE_CRASH_ARGS", args)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Crashing { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process aborted (SIGABRT) at its crash point.
    async fn crashed(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert_eq!(
                    status.signal(),
                    Some(6),
                    "the process aborted at its crash point ({status})\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the process never reached its crash point\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Crashing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child process: a worker or an executor of the test's instance that
/// aborts at `SMACHE_CRASH_POINT` (run by [`Crashing::start`]; does
/// nothing when run otherwise, as when `--ignored` runs it beside the
/// tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a process the crash-point tests start and kill"]
async fn crash_points_child() {
    let (Ok(role), Ok(point), Ok(prefix), Ok(database)) = (
        std::env::var("SMACHE_CRASH_ROLE"),
        std::env::var("SMACHE_CRASH_POINT"),
        std::env::var("SMACHE_CRASH_PREFIX"),
        std::env::var("SMACHE_CRASH_DATABASE"),
    ) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("smache=debug"))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let at = point.clone();
    fail::cfg_callback(point, move || {
        eprintln!("crash point {at}: aborting");
        std::process::abort();
    })
    .unwrap();
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let smache = instance(&client, &database, &prefix);
    match role.as_str() {
        "worker" => {
            let options = smache::worker::WorkerOptions::default().lease(Duration::from_secs(2));
            smache::worker::run(smache, options).await.unwrap();
        }
        "executor" => smache::executor::run(smache).await.unwrap(),
        // A caller of `trunk` for the user of this id (hex).
        "caller" => {
            let id = std::env::var("SMACHE_CRASH_ARGS").unwrap();
            let trunk = smache.scope(trunk(id)).await;
            panic!("the call returned {trunk:?}: no crash");
        }
        // Makes the card of the first name an alias of the second's.
        "aliaser" => {
            let names = std::env::var("SMACHE_CRASH_ARGS").unwrap();
            let (alias, target) = names.split_once(',').unwrap();
            let alias = card::key(alias.to_owned()).unwrap();
            let target = card::key(target.to_owned()).unwrap();
            let named = smache.alias(&alias, &target).await;
            panic!("the alias was made ({named:?}): no crash");
        }
        other => panic!("no role {other}"),
    }
}

/// A worker killed at `point` while handling a document's change; the next
/// worker must replay the change from the position saved before it.
async fn a_worker_killed_at(point: &str) {
    let mut world = World::new("crash-worker").await;
    let ada = world.insert_user("Ada").await;
    let executor = smache::executor::spawn(&world.smache);
    let mut crashing = Crashing::start(&world, "worker", point);
    world.wait_watching().await;
    let key = greeting::key(&ada).unwrap();
    assert_eq!(world.smache.scope(greeting(&ada)).await, "hello Ada");
    let version = world.version(&key).await;

    world
        .db
        .collection::<User>("users")
        .update_one(
            doc! { "_id": ada.id },
            doc! { "$set": { "name": "Ada L." } },
        )
        .await
        .unwrap();
    crashing.crashed().await;

    // The next worker, once the dead one's lease (2 s) ends.
    world.worker.restart();
    world
        .refreshed(&key, version, "Ada's greeting", &crashing)
        .await;
    assert_eq!(world.smache.scope(greeting(&ada)).await, "hello Ada L.");
    // It replayed the change: the dead one never saved a position past it.
    let id = format!("{}-", world.worker.pid().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = world.smache.inspect_workers().await.unwrap();
        let replayed = report.workers.iter().any(|worker| {
            worker.id.starts_with(&id)
                && worker
                    .collections
                    .iter()
                    .any(|(collection, seen)| collection == "users" && *seen >= 1)
        });
        if replayed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the next worker replays the change: {report:?}\n{}",
            world.worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    executor.shutdown().await.unwrap();
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_reading_a_change_and_before_signalling_it_loses_nothing() {
    a_worker_killed_at("smache::worker::before_signals").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_signalling_a_change_and_before_saving_its_position_loses_nothing() {
    a_worker_killed_at("smache::worker::before_position").await;
}

/// An executor killed at `point` in the relation job of an order moved
/// from Ada to Bob, Bob's value in another shard than the order's own
/// (where its mapping is recorded), Ada's in it if `ada_at_home`; the
/// next executor reruns the job.
async fn an_executor_killed_in_a_relation_job_at(point: &str, ada_at_home: bool) {
    let mut world = World::new("crash-relation").await;
    let mut users = Vec::new();
    for i in 0..12 {
        users.push(world.insert_user(&format!("user {i}")).await);
    }
    world.worker.restart();
    world.wait_watching().await;
    for user in &users {
        assert_eq!(world.smache.scope(spent(user)).await, 0);
    }
    // The order's relation job is queued, no executor running yet, in the
    // order's own shard: its stream says which.
    let orders = world.db.collection::<Order>("orders");
    let order = Order {
        id: ObjectId::new(),
        user_id: users[0].id,
        total: 7,
    };
    orders.insert_one(&order).await.unwrap();
    let streams = world.streams().await;
    let mut conn = redis_connection(&redis_url()).await;
    let mut home = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while home.is_none() {
        for stream in &streams {
            let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(stream)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap();
            if entries.ids.iter().any(|e| e.map.contains_key("rel")) {
                home = Some(stream.strip_suffix("jobs").unwrap().to_owned());
            }
        }
        assert!(Instant::now() < deadline, "no relation job queued");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let home = home.unwrap();
    // Ada (in the order's shard or not) and Bob (not): users made until
    // both are found.
    let at_home = |user: &User| world.base(&spent::key(user).unwrap()) == home;
    let mut ada = users
        .iter()
        .skip(1)
        .find(|u| at_home(u) == ada_at_home)
        .cloned();
    let mut bob = users
        .iter()
        .skip(1)
        .find(|u| !at_home(u) && Some(u.id) != ada.as_ref().map(|a| a.id))
        .cloned();
    for i in 0..64 {
        if ada.is_some() && bob.is_some() {
            break;
        }
        let user = world.insert_user(&format!("more {i}")).await;
        assert_eq!(world.smache.scope(spent(&user)).await, 0);
        if ada.is_none() && at_home(&user) == ada_at_home {
            ada = Some(user);
        } else if bob.is_none() && !at_home(&user) {
            bob = Some(user);
        }
    }
    let (ada, bob) = (ada.unwrap(), bob.unwrap());
    let (ada_key, bob_key) = (spent::key(&ada).unwrap(), spent::key(&bob).unwrap());

    // The order goes to Ada; its mapping is recorded.
    let executor = smache::executor::spawn(&world.smache);
    world.move_order(order.id, ada.id).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.smache.scope(spent(&ada)).await != 7 {
        assert!(Instant::now() < deadline, "Ada's total");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    world.settle(executor).await;
    let (ada_version, bob_version) = (world.version(&ada_key).await, world.version(&bob_key).await);

    // Moved to Bob, with no pre-image: what it concerned before is the
    // recorded mapping. The executor running the job dies at `point`.
    let mut crashing = Crashing::start(&world, "executor", point);
    world.move_order(order.id, bob.id).await;
    let executor = world.take_over_from(&mut crashing).await;
    world
        .refreshed(&ada_key, ada_version, "Ada's total", &crashing)
        .await;
    world
        .refreshed(&bob_key, bob_version, "Bob's total", &crashing)
        .await;
    assert_eq!(world.smache.scope(spent(&ada)).await, 0);
    assert_eq!(world.smache.scope(spent(&bob)).await, 7);
    executor.shutdown().await.unwrap();
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_after_signalling_other_shards_and_before_the_record_loses_nothing() {
    // Ada's value in the order's shard: only the step after the crash
    // point signals it, so only the rerun can.
    an_executor_killed_in_a_relation_job_at("smache::executor::relation::before_record", true)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_after_replacing_the_record_and_before_acknowledging_loses_nothing() {
    // Ada's value in another shard: signalled before the record is
    // replaced, or never (the rerun reads the new record).
    an_executor_killed_in_a_relation_job_at("smache::executor::relation::after_record", false)
        .await;
}

/// An executor killed in the fan-all job of a value stored anew (`leaf`,
/// after its user changed), before it signalled the value's dependants in
/// the other shards (`trunk`, in another shard); the next executor reruns
/// the job. README, "Shards": the row "a value is stored anew".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_in_a_fan_all_job_before_signalling_loses_nothing() {
    let mut world = World::new("crash-fan").await;
    let ada = world.user_apart().await;
    let trunk_key = trunk::key(ada.id.to_hex()).unwrap();
    world.worker.restart();
    world.wait_watching().await;
    // Computed, and whatever the first stores queued run, then no executor.
    let executor = smache::executor::spawn(&world.smache);
    assert_eq!(world.smache.scope(trunk(ada.id.to_hex())).await, "<Ada>");
    world.settle(executor).await;
    let version = world.version(&trunk_key).await;

    // Ada renamed: the dying executor recomputes `leaf`, whose store
    // queues the fan-all job, and dies in it.
    let mut crashing = Crashing::start(
        &world,
        "executor",
        "smache::executor::fan_all::before_signals",
    );
    world.rename(&ada, "Ada L.").await;
    let executor = world.take_over_from(&mut crashing).await;
    world
        .refreshed(&trunk_key, version, "the trunk in another shard", &crashing)
        .await;
    assert_eq!(world.smache.scope(trunk(ada.id.to_hex())).await, "<Ada L.>");
    executor.shutdown().await.unwrap();
    world.stop().await;
}

/// A computation of `trunk` killed after writing its reverse edge on
/// `leaf` (a value of another shard) and before adding its shard to
/// `leaf`'s readers (`rd:`), so before reading `leaf`. README, "Shards":
/// the row "a computation reads a nested value in another shard". The
/// next caller computes `trunk`, and a change of `leaf` then reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computation_killed_between_its_edge_and_the_readers_entry_loses_nothing() {
    let mut world = World::new("crash-edge").await;
    let ada = world.user_apart().await;
    let (trunk_key, leaf_key) = (
        trunk::key(ada.id.to_hex()).unwrap(),
        leaf::key(&ada).unwrap(),
    );
    world.worker.restart();
    world.wait_watching().await;

    let mut crashing = Crashing::start_with(
        &world,
        "caller",
        "smache::store::edge::before_readers",
        &ada.id.to_hex(),
    );
    crashing.crashed().await;
    // The edge is written; the readers entry is not, and nothing was read.
    let (trunk_base, trunk_id) = world.split(&trunk_key);
    let (leaf_base, leaf_id) = world.split(&leaf_key);
    let edge = format!("{trunk_base}r:v:{leaf_id}");
    assert!(
        world.holds(&edge, &trunk_id).await,
        "the dead computation's edge on leaf"
    );
    let mut conn = redis_connection(&redis_url()).await;
    let readers: bool = redis::cmd("EXISTS")
        .arg(format!("{leaf_base}rd:{leaf_id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!readers, "no readers entry before the crash point");

    // The next caller (once the dead one's compute lease ends).
    let executor = smache::executor::spawn(&world.smache);
    assert_eq!(world.smache.scope(trunk(ada.id.to_hex())).await, "<Ada>");
    world.drained().await;
    let version = world.version(&trunk_key).await;
    world.rename(&ada, "Ada L.").await;
    world
        .refreshed(&trunk_key, version, "the trunk in another shard", &crashing)
        .await;
    assert_eq!(world.smache.scope(trunk(ada.id.to_hex())).await, "<Ada L.>");
    executor.shutdown().await.unwrap();
    world.stop().await;
}

/// Names `old` whose card and frame are in different shards, and whose
/// card is not in the shard of the card `new`.
fn names_apart(world: &World, new: &str) -> String {
    let new_base = world.base(&card::key(new.to_owned()).unwrap());
    (0..256)
        .map(|i| format!("old-{i}"))
        .find(|old| {
            let base = world.base(&card::key(old.clone()).unwrap());
            base != world.base(&frame::key(old.clone()).unwrap()) && base != new_base
        })
        .expect("a name apart")
}

/// A card made an alias of another while a frame of another shard reads
/// it; the process making the alias killed after its card became one
/// (its own shard told) and before the other shards were told. README,
/// "Shards": the row "an alias is made"; the fan-all job the last step's
/// script queued tells the frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aliasing_killed_before_telling_the_other_shards_loses_nothing() {
    let world = World::new("crash-alias-signals").await;
    let new = "new".to_owned();
    let old = names_apart(&world, &new);
    let executor = smache::executor::spawn(&world.smache);
    assert_eq!(world.smache.scope(card(new.clone())).await, "card new");
    let frame_key = frame::key(old.clone()).unwrap();
    assert_eq!(
        world.smache.scope(frame(old.clone())).await,
        format!("[card {old}]")
    );
    world.settle(executor).await;
    let version = world.version(&frame_key).await;

    let mut crashing = Crashing::start_with(
        &world,
        "aliaser",
        "smache::store::alias::before_signals",
        &format!("{old},{new}"),
    );
    crashing.crashed().await;
    let executor = smache::executor::spawn(&world.smache);
    world
        .refreshed(&frame_key, version, "the frame of the alias", &crashing)
        .await;
    assert_eq!(world.smache.scope(frame(old.clone())).await, "[card new]");
    assert_eq!(world.smache.scope(card(old)).await, "card new");
    executor.shutdown().await.unwrap();
    world.stop().await;
}

/// The process making a card an alias killed after registering it (and
/// the card's own alias) in the target's set and before re-pointing the
/// card's own alias and making the card one: the card is still a value,
/// served and fresh, the target's extra members are ignored, and the
/// aliasing done again completes. README, "Shards": the row "an alias is
/// made".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aliasing_killed_after_registering_in_the_targets_set_loses_nothing() {
    let world = World::new("crash-alias-link").await;
    let new = "new".to_owned();
    let old = names_apart(&world, &new);
    let older = format!("{old}-older");
    let (old_key, new_key, older_key) = (
        card::key(old.clone()).unwrap(),
        card::key(new.clone()).unwrap(),
        card::key(older.clone()).unwrap(),
    );
    let executor = smache::executor::spawn(&world.smache);
    assert_eq!(world.smache.scope(card(new.clone())).await, "card new");
    assert_eq!(
        world.smache.scope(frame(old.clone())).await,
        format!("[card {old}]")
    );
    // The card has an alias of its own.
    world.smache.alias(&older_key, &old_key).await.unwrap();
    assert_eq!(
        world.smache.scope(card(older.clone())).await,
        format!("card {old}")
    );
    world.settle(executor).await;

    let mut crashing = Crashing::start_with(
        &world,
        "aliaser",
        "smache::store::alias::before_repoint",
        &format!("{old},{new}"),
    );
    crashing.crashed().await;
    // Registered in the target's set, and nothing else.
    let (new_base, new_id) = world.split(&new_key);
    let (_, old_id) = world.split(&old_key);
    let (_, older_id) = world.split(&older_key);
    let aliases = format!("{new_base}al:{new_id}");
    assert!(
        world.holds(&aliases, &old_id).await && world.holds(&aliases, &older_id).await,
        "the card and its alias in its target's set of aliases"
    );
    // The card is still a value, and its alias names it: both serve it.
    assert!(world.smache.is_fresh(&old_key).await.unwrap());
    assert_eq!(
        world.smache.scope(card(old.clone())).await,
        format!("card {old}")
    );
    assert_eq!(
        world.smache.scope(card(older.clone())).await,
        format!("card {old}")
    );
    // The target's set names it, but it is no alias: invalidating the
    // target leaves it alone.
    assert!(world.smache.invalidate(&new_key).await.unwrap());
    assert!(world.smache.is_fresh(&old_key).await.unwrap());
    assert!(world.smache.is_fresh(&older_key).await.unwrap());
    assert_eq!(world.smache.scope(card(new.clone())).await, "card new");

    // Done again, the aliasing completes; the frame reading the card, in
    // another shard, is told.
    let executor = smache::executor::spawn(&world.smache);
    let frame_key = frame::key(old.clone()).unwrap();
    let version = world.version(&frame_key).await;
    world.smache.alias(&old_key, &new_key).await.unwrap();
    world
        .refreshed(&frame_key, version, "the frame of the alias", &crashing)
        .await;
    assert_eq!(world.smache.scope(frame(old.clone())).await, "[card new]");
    assert_eq!(world.smache.scope(card(old)).await, "card new");
    assert_eq!(world.smache.scope(card(older)).await, "card new");
    executor.shutdown().await.unwrap();
    world.stop().await;
}
