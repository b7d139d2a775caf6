//! The chaos run: random document updates, inserts, deletes and moves of
//! related documents between entities feeding cached values (entity
//! arguments, a relation, a nested function), while the worker and the
//! executor processes are SIGKILLed and restarted at random moments. Half
//! the runs keep pre-images of the related collection (MongoDB's
//! changeStreamPreAndPostImages), half do not; some related documents
//! predate the worker, so their first change it sees may be a move. Once the writes stop and the system quiesces, every
//! cached value must equal what its function returns on the current data:
//! 0 stale, 0 lost.
//!
//! CI size by default; `SMACHE_CHAOS_OPS=10000 SMACHE_CHAOS_USERS=200`
//! for the long run. The executors are this test binary again, running the
//! ignored `chaos_executor` test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bson::doc;
use bson::oid::ObjectId;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use smache::{computed, Entity, Smache};
use smache_suite::{mongodb_uri, redis_connection, redis_url, unique, WorkerProcess};

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

/// The sentinel: a document the driver changes once its writes are done.
#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "flags")]
struct Flag {
    #[serde(rename = "_id")]
    id: String,
    value: String,
}

/// Refreshed only after the worker has seen every write before the
/// sentinel's (the change stream is ordered).
#[computed(Flag)]
async fn flag_value(flag: &Flag) -> String {
    flag.value.clone()
}

/// What `card` must return for a user as stored now.
fn card_of(user: &User) -> String {
    format!("{} ({})", user.name, user.score)
}

#[computed(User)]
async fn card(user: &User) -> String {
    count_run("card").await;
    card_of(user)
}

/// Nested: depends on `card` of the same user.
#[computed(User)]
async fn headline(user: &User) -> String {
    count_run("headline").await;
    format!("** {} **", card(user).await)
}

/// Related: the sum of the user's orders.
#[computed(User, relations(Order => |o: &Order| o.user_id))]
async fn spent(user: &User) -> i64 {
    count_run("spent").await;
    let db = Smache::current().mongodb().cloned().expect("a database");
    smache_suite::orders_total(&db, "orders", user.id).await
}

/// Counts function runs in Redis, across processes.
async fn count_run(function: &str) {
    if let Ok(prefix) = std::env::var("SMACHE_CHAOS_PREFIX") {
        let mut conn = redis_connection(&redis_url()).await;
        let _: i64 = conn
            .hincr(format!("chaos-runs:{prefix}"), function, 1)
            .await
            .unwrap_or(0);
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), seeded per run.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % n as u64).unwrap()
    }
}

/// An executor process: this binary running `chaos_executor`.
/// An executor process of the run; killed when dropped, so a failing run
/// leaves none behind.
struct ExecutorProcess(Child);

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

fn executor_process(prefix: &str, database: &str) -> ExecutorProcess {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "chaos_executor",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SMACHE_CHAOS_PREFIX", prefix)
        .env("SMACHE_CHAOS_DATABASE", database)
        .stdout(Stdio::null())
        .stderr(executor_log(prefix))
        .spawn()
        .unwrap();
    ExecutorProcess(child)
}

/// Where the executors of a run write their stderr (appended).
fn executor_log(prefix: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::env::temp_dir().join(format!("{prefix}-executors.log")))
        .expect("executor log")
}

fn read_executor_log(prefix: &str) -> String {
    std::fs::read_to_string(std::env::temp_dir().join(format!("{prefix}-executors.log")))
        .unwrap_or_default()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_is_fresh_after_random_changes_and_kills() {
    chaos_run().await;
}

async fn chaos_run() {
    smache_suite::init_logs();
    let ops = env_number("SMACHE_CHAOS_OPS", 600);
    let user_count = env_number("SMACHE_CHAOS_USERS", 30);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut dice = Dice(seed);
    let database = unique("chaos").replace('-', "_");
    let prefix = unique("chaos");
    std::env::set_var("SMACHE_CHAOS_PREFIX", &prefix);
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let db = client.database(&database);
    let smache = Smache::builder()
        .redis_url(redis_url())
        .mongodb(&client, &database)
        .prefix(&prefix)
        .build()
        .unwrap();
    let pre_images = (seed >> 1) & 1 == 1;
    if pre_images {
        db.run_command(doc! {
            "create": "orders",
            "changeStreamPreAndPostImages": { "enabled": true },
        })
        .await
        .unwrap();
    }
    let users = db.collection::<User>("users");
    let orders = db.collection::<Order>("orders");

    let mut people = Vec::new();
    for i in 0..user_count {
        let user = User {
            id: ObjectId::new(),
            name: format!("user{i}"),
            score: 0,
        };
        users.insert_one(&user).await.unwrap();
        people.push(user);
    }
    // Orders the worker never sees inserted: their first change it sees
    // may move them to another user, during the run or (`unseen`) as the
    // last writes, when nothing else changes their old owners after.
    let (mut live_orders, mut unseen): (Vec<ObjectId>, Vec<ObjectId>) = (Vec::new(), Vec::new());
    for (i, user) in people.iter().enumerate() {
        let order = Order {
            id: ObjectId::new(),
            user_id: user.id,
            total: dice.below(100) as i64 + 1,
        };
        orders.insert_one(&order).await.unwrap();
        if i % 2 == 0 {
            live_orders.push(order.id);
        } else {
            unseen.push(order.id);
        }
    }
    let flag = Flag {
        id: "sentinel".into(),
        value: "running".into(),
    };
    let flags = db.collection::<Flag>("flags");
    flags.insert_one(&flag).await.unwrap();
    let mut worker = WorkerProcess::start(&redis_url(), &mongodb_uri(), &database, &prefix);
    let mut executors = vec![
        executor_process(&prefix, &database),
        executor_process(&prefix, &database),
    ];
    // Every value cached once, then the worker watching.
    smache.scope(flag_value(&flag)).await;
    for user in &people {
        smache.scope(card(user)).await;
        smache.scope(headline(user)).await;
        smache.scope(spent(user)).await;
    }
    worker.wait_watching(Duration::from_secs(20)).await;
    let mut conn = redis_connection(&redis_url()).await;

    let (mut worker_kills, mut executor_kills) = (0, 0);
    for op in 0..ops {
        let user = &people[dice.below(people.len())];
        match dice.below(10) {
            0..=4 => {
                users
                    .update_one(
                        doc! { "_id": user.id },
                        doc! { "$set": { "score": op as i64 } },
                    )
                    .await
                    .unwrap();
            }
            5..=6 => {
                let order = Order {
                    id: ObjectId::new(),
                    user_id: user.id,
                    total: dice.below(100) as i64 + 1,
                };
                orders.insert_one(&order).await.unwrap();
                live_orders.push(order.id);
            }
            7 => {
                if !live_orders.is_empty() {
                    let moved = live_orders[dice.below(live_orders.len())];
                    orders
                        .update_one(
                            doc! { "_id": moved },
                            doc! { "$set": { "user_id": user.id } },
                        )
                        .await
                        .unwrap();
                }
            }
            _ => {
                if !live_orders.is_empty() {
                    let gone = live_orders.swap_remove(dice.below(live_orders.len()));
                    orders.delete_one(doc! { "_id": gone }).await.unwrap();
                }
            }
        }
        // Now and then, a SIGKILL.
        match dice.below(ops / 6 + 1) {
            0 => {
                worker.kill();
                worker_kills += 1;
                tokio::time::sleep(Duration::from_millis(dice.below(300) as u64)).await;
                worker.restart();
            }
            1 => {
                let which = dice.below(executors.len());
                kill(&mut executors[which].0);
                executor_kills += 1;
                executors[which] = executor_process(&prefix, &database);
            }
            _ => {}
        }
        if dice.below(20) == 0 {
            tokio::time::sleep(Duration::from_millis(dice.below(50) as u64)).await;
        }
    }

    let keys: Vec<(usize, smache::CacheKey)> = people
        .iter()
        .enumerate()
        .flat_map(|(i, user)| {
            [
                (i, card::key(user).unwrap()),
                (i, headline::key(user).unwrap()),
                (i, spent::key(user).unwrap()),
            ]
        })
        .collect();
    // Quiesce twice: after the random run, and after the last writes (each
    // unseen order moves to the next user), made once nothing else is in
    // flight that could recompute their old owners' values by chance.
    for phase in ["settled", "done"] {
        if phase == "done" {
            for (i, order) in unseen.iter().enumerate() {
                let to = &people[(2 * i + 2) % people.len()];
                orders
                    .update_one(doc! { "_id": order }, doc! { "$set": { "user_id": to.id } })
                    .await
                    .unwrap();
            }
        }
        // With a bound. First the sentinel: once its value is refreshed,
        // the worker has turned every earlier write into jobs.
        let deadline =
            Instant::now() + smache::executor::RECLAIM_AFTER * 3 + Duration::from_secs(30);
        flags
            .update_one(
                doc! { "_id": "sentinel" },
                doc! { "$set": { "value": phase } },
            )
            .await
            .unwrap();
        while smache.scope(flag_value(&flag)).await != phase {
            assert!(
                Instant::now() < deadline,
                "seed {seed}: the sentinel was never refreshed\n--- worker ---\n{}\n--- executors ---\n{}",
                worker.log(),
                read_executor_log(&prefix)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then every value fresh (a killed executor's jobs are reclaimed
        // after RECLAIM_AFTER) and no job left. A value marked stale with
        // no recompute coming (a related document whose earlier owner is
        // unknown, without pre-images) is fresh once read: read those.
        loop {
            let mut stale = 0;
            for (person, key) in &keys {
                // An error (the store's bounded wait ran out: CI machines
                // run this beside other builds) says nothing either way:
                // counted as stale, asked again on the next round.
                if smache.is_fresh(key).await.unwrap_or(false) {
                    continue;
                }
                stale += 1;
                let since: Option<String> = conn.hget(smache.storage_key(key), "t").await.unwrap();
                if since.as_deref() == Some("0") {
                    let now = users
                        .find_one(doc! { "_id": people[*person].id })
                        .await
                        .unwrap()
                        .unwrap();
                    smache.scope(read_all(&now)).await;
                }
            }
            let queued: u64 = conn.xlen(format!("{{{prefix}}}:jobs")).await.unwrap();
            if stale == 0 && queued == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: {stale} values still stale, {queued} jobs queued\n--- worker ---\n{}\n--- executors ---\n{}",
                worker.log(),
                read_executor_log(&prefix)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Every cached value equals its function on the current data. Fresh
    // values are hits: these calls compute nothing.
    let mut wrong = Vec::new();
    for person in &people {
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
                smache.scope(spent(&now)).await.to_string(),
                smache_suite::orders_total(&db, "orders", now.id)
                    .await
                    .to_string(),
            ),
        ];
        for (cached, expected) in checks {
            if cached != expected {
                wrong.push(format!(
                    "{}: cached {cached:?}, expected {expected:?}",
                    now.name
                ));
            }
        }
    }
    let runs: std::collections::HashMap<String, u64> =
        conn.hgetall(format!("chaos-runs:{prefix}")).await.unwrap();
    let report = smache.inspect_jobs().await.unwrap();
    println!(
        "chaos: seed {seed}, {ops} ops over {user_count} users ({} values), pre-images {pre_images}, \
         {worker_kills} worker kills, {executor_kills} executor kills, function runs {runs:?}, \
         {} dead letters, {} wrong",
        keys.len(),
        report.dead,
        wrong.len()
    );
    assert_eq!(report.dead, 0, "no job given up\n{report}");
    assert!(
        wrong.is_empty(),
        "seed {seed}: stale or lost values:\n{}",
        wrong.join("\n")
    );

    drop(executors);
    assert!(worker.terminate(), "{}", worker.log());
    let _: () = conn.del(format!("chaos-runs:{prefix}")).await.unwrap();
    let _ = db.drop().await;
}

/// Reads every value of a user (a caller computes those not servable).
async fn read_all(user: &User) {
    card(user).await;
    headline(user).await;
    spent(user).await;
}

/// An executor process of the chaos run (started by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of the chaos run, started by it"]
async fn chaos_executor() {
    let (Ok(prefix), Ok(database)) = (
        std::env::var("SMACHE_CHAOS_PREFIX"),
        std::env::var("SMACHE_CHAOS_DATABASE"),
    ) else {
        return;
    };
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let smache = Smache::builder()
        .redis_url(redis_url())
        .mongodb(&client, &database)
        .prefix(&prefix)
        .build()
        .unwrap();
    smache::executor::run(smache).await.unwrap();
}
