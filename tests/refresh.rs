//! The self-refreshing loop end to end: a real `smache-worker` process
//! follows the Mongo server's change stream, an executor in this process
//! recomputes, and cached values follow the documents without any caller
//! computing them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::doc;
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use smache::{computed, Entity, Smache};
use smache_suite::{mongodb_uri, redis_connection, redis_url, unique, Calls, WorkerProcess};
use tokio::sync::Notify;

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "settings")]
struct Setting {
    #[serde(rename = "_id")]
    id: String,
    value: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "orders")]
struct Order {
    #[serde(rename = "_id")]
    id: ObjectId,
    user_id: ObjectId,
    total: i64,
}

/// Calls per test tag (or function and argument), to tell caller
/// computes from executor ones.
static CALLS: Calls = Calls::new();

#[computed(User)]
async fn profile(user: &User) -> String {
    CALLS.bump(format!("profile:{}", user.id));
    format!("profile of {}", user.name)
}

/// Nested: depends on `profile` of the same user.
#[computed(User)]
async fn card(user: &User) -> String {
    format!("[{}]", profile(user).await)
}

/// Reads a whole collection: refreshed by any change in it.
#[computed(Raw, sources(Setting))]
async fn greeting(name: String) -> String {
    let db = Smache::current().mongodb().cloned().expect("a database");
    let mut settings = db
        .collection::<Setting>("settings")
        .find(doc! {})
        .await
        .expect("find settings");
    let mut salutation = String::from("Hello");
    while settings.advance().await.expect("cursor") {
        let setting = settings.deserialize_current().expect("setting");
        if setting.id == "salutation" {
            salutation = setting.value;
        }
    }
    format!("{salutation}, {name}")
}

/// Depends on the user's orders through a relation: a changed order maps
/// to its user.
#[computed(User, relations(Order => |o: &Order| o.user_id))]
async fn spent(user: &User) -> i64 {
    let db = Smache::current().mongodb().cloned().expect("a database");
    smache_suite::orders_total(&db, "orders", user.id).await
}

/// A trade between two users.
#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "trades")]
struct Trade {
    #[serde(rename = "_id")]
    id: ObjectId,
    buyer: ObjectId,
    seller: ObjectId,
    total: i64,
}

/// Two relations on one collection: a trade concerns its buyer and its
/// seller.
#[computed(User, relations(Trade => |t: &Trade| t.buyer, Trade => |t: &Trade| t.seller))]
async fn traded(user: &User) -> i64 {
    use futures::TryStreamExt;
    let db = Smache::current().mongodb().cloned().expect("a database");
    let trades: Vec<Trade> = db
        .collection::<Trade>("trades")
        .find(doc! { "$or": [{ "buyer": user.id }, { "seller": user.id }] })
        .await
        .expect("find trades")
        .try_collect()
        .await
        .expect("read trades");
    trades.iter().map(|t| t.total).sum()
}

/// An order kept in a collection whose name holds `:`.
#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "shop:orders")]
struct ShopOrder {
    #[serde(rename = "_id")]
    id: ObjectId,
    user_id: ObjectId,
    total: i64,
}

/// `spent`, over the orders of `shop:orders`.
#[computed(User, relations(ShopOrder => |o: &ShopOrder| o.user_id))]
async fn shop_spent(user: &User) -> i64 {
    let db = Smache::current().mongodb().cloned().expect("a database");
    smache_suite::orders_total(&db, "shop:orders", user.id).await
}

/// How many times `spent_mapped`'s relation mapped an order.
static MAPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `spent`, its relation counting the orders it maps (for one test only).
#[computed(User, relations(Order => |o: &Order| {
    MAPPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    o.user_id
}))]
async fn spent_mapped(user: &User) -> i64 {
    spent(user).await
}

#[computed(User, ttl_secs = 1)]
async fn short_profile(user: &User) -> String {
    CALLS.bump(format!("short:{}", user.id));
    format!("short {}", user.name)
}

/// A run of `gated_short` for a user with a gate here says it started
/// (the first `Notify`) and waits until the test lets it go (the second).
static GATES: Mutex<Vec<Gate>> = Mutex::new(Vec::new());

/// A user's id, "started", "let go".
type Gate = (ObjectId, Arc<Notify>, Arc<Notify>);

#[computed(User, ttl_secs = 1)]
async fn gated_short(user: &User) -> String {
    CALLS.bump(format!("gated:{}", user.id));
    let gate = {
        let mut gates = GATES.lock().unwrap();
        let at = gates.iter().position(|(id, ..)| *id == user.id);
        at.map(|at| gates.remove(at))
    };
    if let Some((_, started, release)) = gate {
        started.notify_one();
        release.notified().await;
    }
    format!("gated {}", user.name)
}

#[computed(User, refresh = mark_stale)]
async fn lazy_profile(user: &User) -> String {
    CALLS.bump(format!("lazy:{}", user.id));
    format!("lazy {}", user.name)
}

/// Fails twice for users named "Flaky", always for "Broken".
#[computed(User)]
async fn checked_profile(user: &User) -> Result<String, String> {
    let runs_key = format!("checked:{}:{}", user.id, user.name);
    CALLS.bump(runs_key.clone());
    let runs = CALLS.get(&runs_key);
    match user.name.as_str() {
        "Flaky" if runs <= 2 => Err(format!("flaky run {runs}")),
        "Broken" => Err("always broken".into()),
        name => Ok(format!("checked {name}")),
    }
}

/// One test's world: its own prefix, database, worker process and executor.
struct World {
    smache: Smache,
    db: mongodb::Database,
    worker: WorkerProcess,
}

impl World {
    async fn new() -> World {
        smache_suite::init_logs();
        let database = unique("refresh").replace('-', "_");
        let prefix = unique("r");
        let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
        let smache = Smache::builder()
            .redis_url(redis_url())
            .mongodb(&client, &database)
            .prefix(&prefix)
            .run_executor()
            .build()
            .unwrap();
        // Started by `watching`, once the test's documents are in: their
        // inserts are no changes to the values computed after.
        let worker = WorkerProcess::prepare(&redis_url(), &mongodb_uri(), &database, &prefix);
        World {
            db: client.database(&database),
            smache,
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

    /// Gives order `order` to user `to`.
    async fn move_order(&self, order: ObjectId, to: ObjectId) {
        self.db
            .collection::<Order>("orders")
            .update_one(doc! { "_id": order }, doc! { "$set": { "user_id": to } })
            .await
            .unwrap();
    }

    async fn rename(&self, user: &User, name: &str) {
        self.db
            .collection::<User>("users")
            .update_one(doc! { "_id": user.id }, doc! { "$set": { "name": name } })
            .await
            .unwrap();
    }

    /// Waits until a call returns `expected` (each call is a cache hit
    /// once the value is stored), or fails with the worker's log.
    async fn eventually<F, Fut>(&self, what: &str, expected: &str, call: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            last = self.smache.scope(call()).await;
            if last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "{what}: expected {expected:?}, still {last:?}\n--- worker log ---\n{}",
            self.worker.log()
        );
    }

    /// Waits until the value at `key` is stored anew, past `version`, and
    /// fresh, with no caller reading it (an executor refreshed it), or
    /// fails saying `what` with the worker's log.
    async fn refreshed(&self, key: &smache::CacheKey, version: u64, what: &str) {
        for _ in 0..400 {
            let entry = self.smache.entry(key).await.unwrap();
            if entry.is_some_and(|e| e.version() > version && !e.is_stale()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{what}\n--- worker log ---\n{}", self.worker.log());
    }

    /// Starts the worker if it is not running, and waits until it holds
    /// its lease and follows the stream, so that changes made from now on
    /// are seen.
    async fn watching(&mut self) {
        if self.worker.pid().is_none() {
            self.worker.restart();
        }
        self.worker.wait_watching(Duration::from_secs(20)).await;
    }

    async fn stop(mut self) {
        self.smache.stop_executor().await.unwrap();
        assert!(
            self.worker.terminate(),
            "the worker exits cleanly on SIGTERM\n{}",
            self.worker.log()
        );
        let _ = self.db.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_refreshes_the_value_without_a_caller_computing_it() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    world.watching().await;
    assert_eq!(world.smache.scope(profile(&ada)).await, "profile of Ada");
    let computed_by_callers = CALLS.get(&format!("profile:{}", ada.id));

    world.rename(&ada, "Augusta").await;
    // The caller still holds the old struct: only a background recompute
    // from the updated document can produce the new name.
    world
        .eventually("refresh", "profile of Augusta", || profile(&ada))
        .await;
    assert_eq!(
        CALLS.get(&format!("profile:{}", ada.id)),
        computed_by_callers + 1,
        "exactly one recompute, by the executor"
    );
    let key = profile::key(&ada).unwrap();
    assert!(world
        .smache
        .wait_fresh(&key, Duration::from_secs(5))
        .await
        .unwrap());
    let entry = world.smache.entry(&key).await.unwrap().unwrap();
    assert_eq!(entry.version(), 2);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_recompute_is_retried_by_the_policy_then_given_up() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    world.watching().await;
    let checked = || async { checked_profile(&ada).await.unwrap_or_default() };
    assert_eq!(world.smache.scope(checked()).await, "checked Ada");

    // Two failures, then the third run (Retry::default) stores the value.
    world.rename(&ada, "Flaky").await;
    world
        .eventually("retried refresh", "checked Flaky", checked)
        .await;
    assert_eq!(CALLS.get(&format!("checked:{}:Flaky", ada.id)), 3);

    // Always failing: three runs, then the job is given up (acknowledged)
    // and the previous value is still served.
    world.rename(&ada, "Broken").await;
    let broken = format!("checked:{}:Broken", ada.id);
    assert!(
        smache_suite::eventually(Duration::from_secs(10), || async {
            CALLS.get(&broken) >= 3
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(CALLS.get(&broken), 3, "no run after the last attempt");
    assert_eq!(world.smache.scope(checked()).await, "checked Flaky");
    assert!(!world
        .smache
        .is_fresh(&checked_profile::key(&ada).unwrap())
        .await
        .unwrap());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_values_refresh_after_the_values_they_call() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    world.watching().await;
    assert_eq!(world.smache.scope(card(&ada)).await, "[profile of Ada]");

    world.rename(&ada, "Augusta").await;
    world
        .eventually("nested refresh", "[profile of Augusta]", || card(&ada))
        .await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_wide_source_refreshes_every_value() {
    let mut world = World::new().await;
    let settings = world.db.collection::<Setting>("settings");
    settings
        .insert_one(Setting {
            id: "salutation".into(),
            value: "Hello".into(),
        })
        .await
        .unwrap();
    world.watching().await;
    assert_eq!(
        world.smache.scope(greeting("Ada".into())).await,
        "Hello, Ada"
    );
    assert_eq!(
        world.smache.scope(greeting("Bob".into())).await,
        "Hello, Bob"
    );

    settings
        .update_one(
            doc! { "_id": "salutation" },
            doc! { "$set": { "value": "Howdy" } },
        )
        .await
        .unwrap();
    world
        .eventually("source refresh", "Howdy, Ada", || greeting("Ada".into()))
        .await;
    world
        .eventually("source refresh", "Howdy, Bob", || greeting("Bob".into()))
        .await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn related_documents_refresh_the_values_they_map_to() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    let orders = world.db.collection::<Order>("orders");
    let order = |total| Order {
        id: ObjectId::new(),
        user_id: ada.id,
        total,
    };
    let first = order(10);
    orders.insert_one(&first).await.unwrap();
    world.watching().await;
    let total = || async { spent(&ada).await.to_string() };
    assert_eq!(world.smache.scope(total()).await, "10");

    let second = order(5);
    orders.insert_one(&second).await.unwrap();
    world.eventually("related insert", "15", total).await;

    orders
        .update_one(doc! { "_id": first.id }, doc! { "$set": { "total": 20 } })
        .await
        .unwrap();
    world.eventually("related update", "25", total).await;

    orders.delete_one(doc! { "_id": second.id }).await.unwrap();
    world.eventually("related delete", "20", total).await;
    world.stop().await;
}

/// On several shards a related document's change is one relation job,
/// whatever the number of shards holding values of the function: the
/// document is read and mapped once, its mapping recorded in its own
/// shard, and the values concerned refreshed in theirs (README, "Shards").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_related_document_is_mapped_once_per_change_and_refreshes_values_in_every_shard() {
    let mut world = World::new().await;
    let base = |user: &User| {
        let key = world.smache.storage_key(&spent_mapped::key(user).unwrap());
        key[..key.find("}:").unwrap() + 2].to_owned()
    };
    // Ada, Bob in another shard than hers (when there are several), and
    // bystanders, whose values no change concerns.
    let ada = world.insert_user("Ada").await;
    let mut bob = world.insert_user("Bob").await;
    for _ in 0..64 {
        if base(&bob) != base(&ada) || smache_suite::layout::shards() == 1 {
            break;
        }
        bob = world.insert_user("Bob").await;
    }
    let mut bystanders = Vec::new();
    for name in ["Cy", "Di", "Ed", "Flo", "Gus", "Hal"] {
        bystanders.push(world.insert_user(name).await);
    }
    world.watching().await;
    for user in [&ada, &bob].into_iter().chain(&bystanders) {
        assert_eq!(world.smache.scope(spent_mapped(user)).await, 0);
    }
    let orders = world.db.collection::<Order>("orders");
    let order = Order {
        id: ObjectId::new(),
        user_id: ada.id,
        total: 7,
    };
    orders.insert_one(&order).await.unwrap();
    let ada_total = || async { spent_mapped(&ada).await.to_string() };
    world.eventually("the first owner", "7", ada_total).await;
    // Settled: the versions from here on. (On several shards a value's
    // first store can have its readers in other shards computed once
    // more: the nested `spent` is stored after its reader wrote its edge.)
    drained(&world).await;
    let mut versions = Vec::new();
    for user in [&ada, &bob].into_iter().chain(&bystanders) {
        let key = spent_mapped::key(user).unwrap();
        versions.push(world.smache.entry(&key).await.unwrap().unwrap().version());
    }
    let (moved, bystanders_at) = (&versions[..2], &versions[2..]);

    // Moved to Bob: an update with no pre-image, so what it concerned
    // before comes from the mapping recorded at its insert.
    world.move_order(order.id, bob.id).await;
    // Both owners are refreshed in the background, not marked stale (a
    // refresh begun before the move may land first: then the next).
    for ((user, total), &version) in [(&ada, 0), (&bob, 7)].into_iter().zip(moved) {
        let key = spent_mapped::key(user).unwrap();
        let what = format!("{}'s value is recomputed by an executor", user.name);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            world.refreshed(&key, version, &what).await;
            if world.smache.scope(spent_mapped(user)).await == total {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {total}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    // Nothing left to run, then: two changes, two mappings (one job each,
    // not one per shard holding values), and no bystander touched.
    drained(&world).await;
    assert_eq!(
        MAPPED.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "each change is mapped once"
    );
    for (user, &version) in bystanders.iter().zip(bystanders_at) {
        let entry = world
            .smache
            .entry(&spent_mapped::key(user).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (entry.version(), entry.is_stale()),
            (version, false),
            "{}'s value stays as it was (version, stale)\n{}",
            user.name,
            world.worker.log()
        );
    }
    world.stop().await;
}

/// Waits until no job is queued or held.
async fn drained(world: &World) {
    assert!(
        smache_suite::quiesced(&world.smache, Duration::from_secs(10)).await,
        "the jobs are run\n{}",
        world.worker.log()
    );
}

/// Each relation of a function on one collection keeps its own record of
/// what a document mapped to: a trade's buyer changed with no pre-image
/// refreshes the old buyer, whom only the buyer relation's record names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relations_on_one_collection_each_remember_their_own_targets() {
    let mut world = World::new().await;
    let (ann, ben, cat) = (
        world.insert_user("Ann").await,
        world.insert_user("Ben").await,
        world.insert_user("Cat").await,
    );
    world.watching().await;
    for user in [&ann, &ben, &cat] {
        assert_eq!(world.smache.scope(traded(user)).await, 0);
    }
    let trades = world.db.collection::<Trade>("trades");
    let trade = Trade {
        id: ObjectId::new(),
        buyer: ann.id,
        seller: ben.id,
        total: 5,
    };
    trades.insert_one(&trade).await.unwrap();
    let ann_total = || async { traded(&ann).await.to_string() };
    let ben_total = || async { traded(&ben).await.to_string() };
    world.eventually("the buyer", "5", ann_total).await;
    world.eventually("the seller", "5", ben_total).await;
    let key = traded::key(&ann).unwrap();
    let version = world.smache.entry(&key).await.unwrap().unwrap().version();

    // Cat buys it instead: Ann is refreshed in the background (her value
    // is not read meanwhile), from the buyer relation's record.
    trades
        .update_one(
            doc! { "_id": trade.id },
            doc! { "$set": { "buyer": cat.id } },
        )
        .await
        .unwrap();
    world
        .refreshed(&key, version, "the old buyer's value is recomputed")
        .await;
    assert_eq!(world.smache.scope(traded(&ann)).await, 0);
    // Cat's value is recomputed by a job of its own, which may end after
    // Ann's: awaited, not read once.
    let cat_total = || async { traded(&cat).await.to_string() };
    world.eventually("the new buyer", "5", cat_total).await;
    assert_eq!(world.smache.scope(traded(&ben)).await, 5);
    world.stop().await;
}

/// A collection's name may hold `:`: a document of it is still mapped by
/// the relation and its value refreshed (the scripts once took the name
/// up to its first `:`, and never queued the relation's job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relation_on_a_collection_named_with_a_colon_refreshes_its_values() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    world.watching().await;
    assert_eq!(world.smache.scope(shop_spent(&ada)).await, 0);
    let key = shop_spent::key(&ada).unwrap();
    let version = world.smache.entry(&key).await.unwrap().unwrap().version();
    world
        .db
        .collection::<ShopOrder>("shop:orders")
        .insert_one(ShopOrder {
            id: ObjectId::new(),
            user_id: ada.id,
            total: 7,
        })
        .await
        .unwrap();
    world
        .refreshed(&key, version, "the value of the order's user is recomputed")
        .await;
    assert_eq!(world.smache.scope(shop_spent(&ada)).await, 7);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_document_drops_its_values() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    world.watching().await;
    world.smache.scope(card(&ada)).await;
    let key = profile::key(&ada).unwrap();
    assert!(world.smache.is_fresh(&key).await.unwrap());

    world
        .db
        .collection::<User>("users")
        .delete_one(doc! { "_id": ada.id })
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..400 {
        let profile_gone = world.smache.entry(&key).await.unwrap().is_none();
        let card_gone = world
            .smache
            .entry(&card::key(&ada).unwrap())
            .await
            .unwrap()
            .is_none();
        if profile_gone && card_gone {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        gone,
        "values of a deleted document are removed\n{}",
        world.worker.log()
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_updates_ends_with_the_last_one_and_few_recomputes() {
    let mut world = World::new().await;
    let ada = world.insert_user("v0").await;
    world.watching().await;
    world.smache.scope(profile(&ada)).await;
    let before = CALLS.get(&format!("profile:{}", ada.id));

    let burst = std::time::Instant::now();
    for i in 1..=100 {
        world.rename(&ada, &format!("v{i}")).await;
    }
    let written = burst.elapsed();
    world
        .eventually("burst", "profile of v100", || profile(&ada))
        .await;
    assert!(world
        .smache
        .wait_fresh(&profile::key(&ada).unwrap(), Duration::from_secs(10))
        .await
        .unwrap());
    let settled = burst.elapsed();
    let recomputes = CALLS.get(&format!("profile:{}", ada.id)) - before;
    // Recomputes of one value start at least 50 ms apart, so a burst costs
    // about one recompute per 50 ms that its changes take to be signalled,
    // not one per update (about 10 for half a second). The bound follows
    // that time, from the first update until the value is fresh: the
    // worker may take longer than the writes (at 48 shards, each change
    // is a script in every shard), and the recomputes follow it.
    let bound = usize::try_from(settled.as_millis() / 50).unwrap_or(usize::MAX) + 4;
    assert!(
        recomputes <= bound.min(50),
        "duplicate jobs coalesce: {recomputes} recomputes for 100 updates written over \
         {written:?}, fresh after {settled:?}"
    );
    eprintln!(
        "burst of 100 updates over {written:?}, fresh after {settled:?}: {recomputes} recomputes"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_stale_values_are_recomputed_by_the_next_call() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    world.watching().await;
    assert_eq!(world.smache.scope(lazy_profile(&ada)).await, "lazy Ada");
    let key = lazy_profile::key(&ada).unwrap();

    world.rename(&ada, "Augusta").await;
    let mut stale = false;
    for _ in 0..400 {
        if world
            .smache
            .entry(&key)
            .await
            .unwrap()
            .is_some_and(|e| e.is_stale())
        {
            stale = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(stale, "the value is marked stale\n{}", world.worker.log());
    assert_eq!(
        CALLS.get(&format!("lazy:{}", ada.id)),
        1,
        "no background recompute"
    );

    // The caller's own (updated) struct is used by the recompute.
    let fresh = User {
        name: "Augusta".into(),
        ..ada.clone()
    };
    assert_eq!(
        world.smache.scope(lazy_profile(&fresh)).await,
        "lazy Augusta"
    );
    assert_eq!(CALLS.get(&format!("lazy:{}", ada.id)), 2);
    assert!(world.smache.is_fresh(&key).await.unwrap());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_the_worker_is_down_are_applied_after_restart() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    world.watching().await;
    world.smache.scope(profile(&ada)).await;
    world.rename(&ada, "Augusta").await;
    world
        .eventually("first refresh", "profile of Augusta", || profile(&ada))
        .await;

    world.worker.kill();
    world.rename(&ada, "Ada again").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        world.smache.scope(profile(&ada)).await,
        "profile of Augusta",
        "no worker, no refresh yet"
    );
    world.worker.restart();
    world
        .eventually("resumed", "profile of Ada again", || profile(&ada))
        .await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_worker_takes_over_when_the_watcher_dies() {
    let mut world = World::new().await;
    let database = world.db.name().to_owned();
    let mut standby = WorkerProcess::start(
        &redis_url(),
        &mongodb_uri(),
        &database,
        world.smache.prefix(),
    );
    let ada = world.insert_user("Ada").await;
    world.watching().await;
    world.smache.scope(profile(&ada)).await;

    // Kill whichever worker holds the lease.
    let mut conn = smache_suite::redis_connection(&redis_url()).await;
    let holder: String =
        redis::AsyncCommands::get(&mut conn, format!("{{{}}}:w:lease", world.smache.prefix()))
            .await
            .unwrap();
    let leader_pid = holder.split('-').next().unwrap().parse::<u32>().unwrap();
    if world.worker.pid() == Some(leader_pid) {
        world.worker.kill();
    } else {
        assert_eq!(standby.pid(), Some(leader_pid));
        standby.kill();
    }

    world.rename(&ada, "Augusta").await;
    world
        .eventually("takeover", "profile of Augusta", || profile(&ada))
        .await;
    standby.kill();
    world.worker.kill();
    world.smache.stop_executor().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_ttl_a_value_is_refreshed_in_the_background() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    world.watching().await;
    world.smache.scope(short_profile(&ada)).await;
    let key = short_profile::key(&ada).unwrap();
    let first = world.smache.entry(&key).await.unwrap().unwrap();

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Served once more at once; an executor recomputes it.
    assert_eq!(world.smache.scope(short_profile(&ada)).await, "short Ada");
    let mut refreshed = false;
    for _ in 0..400 {
        let entry = world.smache.entry(&key).await.unwrap();
        if entry.is_some_and(|e| e.version() > first.version() && !e.is_stale()) {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refreshed, "the executor refreshed the expired value");
    assert_eq!(
        CALLS.get(&format!("short:{}", ada.id)),
        2,
        "one call, one background refresh"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watching_worker_sweeps_the_edges_of_values_that_expired() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    // A step every 100 ms: a pass walks the whole test server's keyspace.
    world.worker.arg("--sweep-every=100ms");
    world.watching().await;
    world.smache.scope(short_profile(&ada)).await;
    world.smache.scope(profile(&ada)).await;
    let layout = smache_suite::layout::Layout::of(&world.smache).await;
    let short = smache_suite::layout::value_id(&world.smache, &short_profile::key(&ada).unwrap());
    let long = smache_suite::layout::value_id(&world.smache, &profile::key(&ada).unwrap());
    let doc = format!("r:e:users:o:{}", ada.id.to_hex());
    let mut conn = redis_connection(&redis_url()).await;
    assert_eq!(
        layout.members(&mut conn, &doc).await,
        [short.clone(), long.clone()].into()
    );
    // The short-lived value expires (after twice its TTL of a second); no
    // document changes, and the worker's sweep drops its edge.
    let mut left = Default::default();
    for _ in 0..1200 {
        left = layout.members(&mut conn, &doc).await;
        if !left.contains(&short) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        left,
        [long].into(),
        "only the live value keeps its edge\n--- worker log ---\n{}",
        world.worker.log()
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_change_history_marks_every_value_stale_and_carries_on() {
    if std::env::var_os("SMACHE_TEST_REAL_MONGODB").is_some() {
        eprintln!("skipped: smacheTestForgetHistory exists on the test server only");
        return;
    }
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    let bob = world.insert_user("Bob").await;
    world.watching().await;
    world.smache.scope(profile(&ada)).await;
    world.smache.scope(profile(&bob)).await;

    // The worker is down while Ada changes, and MongoDB forgets that part
    // of its history (the worker was down longer than the oplog window).
    world.worker.kill();
    world.rename(&ada, "Augusta").await;
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    client
        .database("admin")
        .run_command(doc! { "smacheTestForgetHistory": 1, "db": world.db.name() })
        .await
        .unwrap();

    world.worker.restart();
    world
        .eventually("after lost history", "profile of Augusta", || profile(&ada))
        .await;
    assert!(
        world
            .worker
            .log()
            .contains("no longer has the change history"),
        "the loss is logged loudly\n{}",
        world.worker.log()
    );
    // Changes after the restart are followed again.
    world.rename(&bob, "Robert").await;
    world
        .eventually("carries on", "profile of Robert", || profile(&bob))
        .await;
    world.stop().await;
}

/// Users Ada, Bob and Cy; one order of Ada's, inserted before the worker
/// watches (so smache never saw it change); `spent` cached for all three.
/// The order then moves to Bob: its first change seen is the move.
struct Moved {
    world: World,
    ada: User,
    cy: User,
}

async fn move_an_order_seen_for_the_first_time(pre_images: bool) -> Moved {
    let mut world = World::new().await;
    if pre_images {
        world
            .db
            .run_command(doc! {
                "create": "orders",
                "changeStreamPreAndPostImages": { "enabled": true },
            })
            .await
            .unwrap();
    }
    let (ada, bob, cy) = (
        world.insert_user("Ada").await,
        world.insert_user("Bob").await,
        world.insert_user("Cy").await,
    );
    let orders = world.db.collection::<Order>("orders");
    let order = Order {
        id: ObjectId::new(),
        user_id: ada.id,
        total: 7,
    };
    orders.insert_one(&order).await.unwrap();
    world.watching().await;
    for (user, total) in [(&ada, 7), (&bob, 0), (&cy, 0)] {
        assert_eq!(world.smache.scope(spent(user)).await, total);
    }
    world.move_order(order.id, bob.id).await;
    let bob_total = || async { spent(&bob).await.to_string() };
    world.eventually("the new owner", "7", bob_total).await;
    Moved { world, ada, cy }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_related_document_moved_on_its_first_seen_change_refreshes_its_old_entity_from_the_pre_image(
) {
    let Moved { world, ada, cy } = move_an_order_seen_for_the_first_time(true).await;
    // The old owner is refreshed in the background (no caller computes it)…
    let ada_key = spent::key(&ada).unwrap();
    world
        .refreshed(
            &ada_key,
            1,
            "the old owner's value is recomputed by an executor",
        )
        .await;
    assert_eq!(world.smache.scope(spent(&ada)).await, 0);
    // …and, with the pre-image, nothing else is touched.
    let cy_entry = world
        .smache
        .entry(&spent::key(&cy).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cy_entry.version(), cy_entry.is_stale()),
        (1, false),
        "an unrelated value stays as it was"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_related_document_moved_on_its_first_seen_change_without_a_pre_image_leaves_nothing_fresh_and_wrong(
) {
    let Moved { world, ada, cy } = move_an_order_seen_for_the_first_time(false).await;
    // What the order concerned before is unknown: every value of the
    // function is marked stale, none served stale, each recomputed when read.
    let (ada_key, cy_key) = (spent::key(&ada).unwrap(), spent::key(&cy).unwrap());
    let mut marked = false;
    for _ in 0..400 {
        if !world.smache.is_fresh(&ada_key).await.unwrap()
            && !world.smache.is_fresh(&cy_key).await.unwrap()
        {
            marked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        marked,
        "the function's values are marked stale\n{}",
        world.worker.log()
    );
    assert_eq!(world.smache.scope(spent(&ada)).await, 0);
    assert_eq!(world.smache.scope(spent(&cy)).await, 0);
    assert!(world.smache.is_fresh(&ada_key).await.unwrap());
    world.stop().await;
}

/// A recorded mapping (`m:`) holding something else than a set (not
/// smache's write) reads as unknown, and a shard's list of functions with
/// relations (`rel:`) as none: the relation job marks the function's
/// values stale, refreshes the order's new user and records the mapping
/// anew, rather than failing at every try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_recorded_mapping_reads_as_unknown_and_is_replaced() {
    use smache_suite::layout::{value_id, Layout};
    let mut world = World::new().await;
    let (ada, bob) = (
        world.insert_user("Ada").await,
        world.insert_user("Bob").await,
    );
    world.watching().await;
    let orders = world.db.collection::<Order>("orders");
    let order = Order {
        id: ObjectId::new(),
        user_id: ada.id,
        total: 5,
    };
    orders.insert_one(&order).await.unwrap();
    world
        .eventually("Ada's total", "5", || async {
            spent(&ada).await.to_string()
        })
        .await;
    let (ada_key, bob_key) = (spent::key(&ada).unwrap(), spent::key(&bob).unwrap());
    assert_eq!(world.smache.scope(spent(&bob)).await, 0);
    // The insert's relation job done (it records the mapping).
    drained(&world).await;
    let bob_version = world
        .smache
        .entry(&bob_key)
        .await
        .unwrap()
        .unwrap()
        .version();

    // A string where the order's mapping is recorded (in every shard: the
    // order's own holds it).
    let id = value_id(&world.smache, &ada_key);
    let hash = id.find('#').unwrap();
    let head = &id[..hash + id[hash..].find(':').unwrap()];
    let record = format!("m:{head}|orders:o:{}", order.id.to_hex());
    let layout = Layout::of(&world.smache).await;
    let mut conn = redis_connection(&redis_url()).await;
    for key in layout.everywhere(&record) {
        let _: () = redis::AsyncCommands::set(&mut conn, &key, "garbage")
            .await
            .unwrap();
    }
    // And where a shard has no functions with relations on orders (with
    // several shards): the job reads every shard's.
    for key in layout.everywhere("rel:orders") {
        let _: bool = redis::cmd("SET")
            .arg(&key)
            .arg("garbage")
            .arg("NX")
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    // Moved to Bob, with no pre-image: what it concerned before is unknown.
    world.move_order(order.id, bob.id).await;
    world
        .refreshed(&bob_key, bob_version, "the new user's value")
        .await;
    // Ada's value was marked stale first, with no recompute coming (what
    // the order concerned before is unknown): never served old.
    assert!(!world.smache.is_fresh(&ada_key).await.unwrap());
    assert_eq!(world.smache.scope(spent(&bob)).await, 5);
    assert_eq!(world.smache.scope(spent(&ada)).await, 0);
    assert!(world.smache.is_fresh(&ada_key).await.unwrap());
    let mut replaced = false;
    for key in layout.everywhere(&record) {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        replaced |= kind == "set";
    }
    assert!(replaced, "the mapping recorded anew, as a set");
    assert!(
        layout.dead(&mut conn).await.is_empty(),
        "no relation job failed for good"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_waits_for_the_worker_and_never_returns_the_old_value() {
    let mut world = World::new().await;
    let ada = world.insert_user("v0").await;
    let orders = world.db.collection::<Order>("orders");
    let order = Order {
        id: ObjectId::new(),
        user_id: ada.id,
        total: 0,
    };
    orders.insert_one(&order).await.unwrap();
    world.watching().await;
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let users = client.database(world.db.name()).collection::<User>("users");
    let orders = client
        .database(world.db.name())
        .collection::<Order>("orders");
    let mut session = client.start_session().await.unwrap();
    let (profile_key, spent_key) = (profile::key(&ada).unwrap(), spent::key(&ada).unwrap());
    world.smache.scope(profile(&ada)).await;
    world.smache.scope(spent(&ada)).await;
    for i in 1..=200_i64 {
        // A direct dependency and a related document, in turn.
        let related = i % 2 == 0;
        if related {
            orders
                .update_one(doc! { "_id": order.id }, doc! { "$set": { "total": i } })
                .session(&mut session)
                .await
                .unwrap();
        } else {
            users
                .update_one(
                    doc! { "_id": ada.id },
                    doc! { "$set": { "name": format!("v{i}") } },
                )
                .session(&mut session)
                .await
                .unwrap();
        }
        let written = session.operation_time().expect("the server reports it");
        let key = if related { &spent_key } else { &profile_key };
        assert!(
            world
                .smache
                .wait_fresh_after(key, written, Duration::from_secs(20))
                .await
                .unwrap(),
            "write {i}: not fresh in time\n{}",
            world.worker.log()
        );
        // `ada` is the struct as first read: only the refreshed cache
        // value can hold the new data.
        if related {
            assert_eq!(world.smache.scope(spent(&ada)).await, i, "write {i}");
        } else {
            assert_eq!(
                world.smache.scope(profile(&ada)).await,
                format!("profile of v{i}"),
                "write {i}"
            );
        }
    }
    world.stop().await;
}

/// What a [`held_reader`] is told to do, on its runtime number `.0`.
enum Step {
    /// Read `gated_short`: served at once; a refresh it queues is held.
    Read(usize),
    /// Run what the runtime holds (a queued refresh) to completion.
    Release(usize),
}

/// A reader of `gated_short(user)` with runtimes of its own (on a thread of
/// its own) that run nothing between steps: the refresh a read queues in
/// the background waits on its runtime until the test releases it, so the
/// test picks the moment it reaches Redis. Answers each step with the
/// value read, or "released".
fn held_reader(
    smache: Smache,
    user: User,
    runtimes: usize,
) -> (
    std::sync::mpsc::Sender<Step>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (steps, step) = std::sync::mpsc::channel();
    let (answer, answers) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let runtimes: Vec<_> = (0..runtimes)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
            })
            .collect();
        while let Ok(step) = step.recv() {
            let said = match step {
                Step::Read(i) => {
                    let value = runtimes[i].block_on(smache.scope(gated_short(&user)));
                    assert_eq!(
                        runtimes[i].metrics().num_alive_tasks(),
                        1,
                        "the read queued its refresh, and nothing ran it yet"
                    );
                    value
                }
                Step::Release(i) => {
                    runtimes[i].block_on(async {
                        let metrics = tokio::runtime::Handle::current().metrics();
                        while metrics.num_alive_tasks() > 0 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    });
                    "released".to_owned()
                }
            };
            if answer.send(said).is_err() {
                return;
            }
        }
    });
    (steps, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_find_a_value_past_its_ttl_refresh_it_once() {
    let mut world = World::new().await;
    let ada = world.insert_user("Ada").await;
    world.watching().await;
    assert_eq!(world.smache.scope(gated_short(&ada)).await, "gated Ada");
    let key = gated_short::key(&ada).unwrap();
    let runs = format!("gated:{}", ada.id);
    // Another process reading the value, whose background refreshes wait
    // until the test lets them go (connected from this runtime: its first
    // read goes over its shared connection, which is then driven here, not
    // by the reader's runtimes, whose tasks the test counts; the in-process
    // layer would make that first read over its own connection).
    let other = Smache::builder()
        .redis_url(redis_url())
        .prefix(world.smache.prefix())
        .local_cache_capacity(0)
        .build()
        .unwrap();
    assert!(other.is_fresh(&key).await.unwrap());
    let (steps, mut answers) = held_reader(other, ada.clone(), 2);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Two reads there find the value past its TTL, as fresh: each is
    // served it and queues a refresh, held for now.
    for i in 0..2 {
        steps.send(Step::Read(i)).unwrap();
        assert_eq!(answers.recv().await.unwrap(), "gated Ada");
    }
    // A read here queues the refresh; an executor starts it and is held.
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    GATES
        .lock()
        .unwrap()
        .push((ada.id, Arc::clone(&started), Arc::clone(&release)));
    assert_eq!(world.smache.scope(gated_short(&ada)).await, "gated Ada");
    tokio::time::timeout(Duration::from_secs(20), started.notified())
        .await
        .expect("an executor starts the refresh");
    // The first held refresh lands while the recompute runs...
    steps.send(Step::Release(0)).unwrap();
    answers.recv().await.unwrap();
    release.notify_one();
    let stored = smache_suite::eventually(Duration::from_secs(20), || async {
        let entry = world.smache.entry(&key).await.unwrap();
        entry.is_some_and(|e| e.version() >= 2)
    })
    .await;
    assert!(stored, "the refresh stored a new value");
    // ...the second once it stored the new value.
    steps.send(Step::Release(1)).unwrap();
    answers.recv().await.unwrap();

    // Settled: no job left to run.
    let jobs = format!("{{{}}}:jobs", world.smache.prefix());
    let conn = redis_connection(&redis_url()).await;
    let settled = smache_suite::eventually(Duration::from_secs(20), || {
        let (jobs, mut conn) = (jobs.clone(), conn.clone());
        async move {
            let queued: u64 = redis::AsyncCommands::xlen(&mut conn, jobs).await.unwrap();
            queued == 0
        }
    })
    .await;
    assert!(settled, "the jobs ran");
    assert_eq!(
        CALLS.get(&runs),
        2,
        "the first call and one refresh: one expiry, one recompute"
    );
    let entry = world.smache.entry(&key).await.unwrap().unwrap();
    assert_eq!(entry.version(), 2);
    assert!(!entry.is_stale(), "the refreshed value is fresh");
    drop(conn);
    world.stop().await;
}
