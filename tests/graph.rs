//! The dependency graph in Redis: edges recorded with each value, cleaned
//! when it goes, and change generations that keep a slow computation from
//! overwriting a newer value.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use bson::oid::ObjectId;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use smache::{computed, Entity, Smache};
use smache_suite::layout::{value_base, value_id, Layout};
use smache_suite::{redis_connection, redis_url, unique};
use tokio::sync::Notify;

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "plans")]
struct Plan {
    #[serde(rename = "_id")]
    id: i64,
}

#[computed(User)]
async fn name_of(user: &User) -> String {
    user.name.clone()
}

#[computed(User, sources(Plan))]
async fn badge(user: &User) -> String {
    format!("<{}>", name_of(user).await)
}

/// Stored with a TTL of a second: its key expires two seconds after.
#[computed(User, ttl_secs = 1)]
async fn brief_badge(user: &User) -> String {
    format!("[{}]", name_of(user).await)
}

/// Says it started (`NAMING`), then computes once the test lets it go
/// (`NAME_NOW`).
#[computed(User)]
async fn held_name(user: &User) -> String {
    NAMING.notify_one();
    NAME_NOW.notified().await;
    user.name.clone()
}

static NAMING: Notify = Notify::const_new();
static NAME_NOW: Notify = Notify::const_new();

/// Stored with a TTL of a second. The first run after `REFRESH_GATE` is
/// set says it started (`REFRESHING`) and waits for the test
/// (`REFRESH_NOW`); the others run at once.
#[computed(Raw, ttl_secs = 1)]
async fn brief_name(tag: String) -> String {
    if REFRESH_GATE.swap(false, std::sync::atomic::Ordering::SeqCst) {
        REFRESHING.notify_one();
        REFRESH_NOW.notified().await;
    }
    format!("name {tag}")
}

static REFRESH_GATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static REFRESHING: Notify = Notify::const_new();
static REFRESH_NOW: Notify = Notify::const_new();

fn instance() -> Smache {
    Smache::builder()
        .redis_url(redis_url())
        .prefix(unique("g"))
        .build()
        .unwrap()
}

fn ada() -> User {
    User {
        id: ObjectId::new(),
        name: "Ada".into(),
    }
}

/// A value's dependencies: field `f` of its hash, each token ended by NUL.
async fn dependencies(
    conn: &mut smache_suite::RedisConn,
    smache: &Smache,
    key: &smache::CacheKey,
) -> HashSet<String> {
    let f: Option<String> = conn.hget(smache.storage_key(key), "f").await.unwrap();
    f.unwrap_or_default()
        .split_terminator('\0')
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn edges_are_recorded_with_the_value_in_both_directions() {
    let smache = instance();
    let user = ada();
    assert_eq!(smache.scope(badge(&user)).await, "<Ada>");

    let layout = Layout::of(&smache).await;
    let badge_key = badge::key(&user).unwrap();
    let badge_id = value_id(&smache, &badge_key);
    let name_id = value_id(&smache, &name_of::key(&user).unwrap());
    let doc = format!("e:users:o:{}", user.id.to_hex());
    let mut conn = redis_connection(&redis_url()).await;

    let forward = dependencies(&mut conn, &smache, &badge_key).await;
    let expected: HashSet<String> =
        [doc.clone(), "c:plans".to_owned(), format!("v:{name_id}")].into();
    assert_eq!(
        forward, expected,
        "entity argument, declared source, nested call"
    );
    // (Each in the shard of the value that depends: over every shard.)
    assert_eq!(
        layout.members(&mut conn, &format!("r:{doc}")).await,
        [badge_id.clone(), name_id.clone()].into()
    );
    assert_eq!(
        layout.members(&mut conn, &format!("r:v:{name_id}")).await,
        [badge_id.clone()].into()
    );
    assert_eq!(
        layout.members(&mut conn, "r:c:plans").await,
        [badge_id.clone()].into()
    );
    assert_eq!(
        layout.members(&mut conn, "collections").await,
        ["users".to_owned(), "plans".to_owned()].into()
    );

    // Dropping a value leaves no edge behind.
    assert!(smache.invalidate(&badge_key).await.unwrap());
    assert!(dependencies(&mut conn, &smache, &badge_key)
        .await
        .is_empty());
    assert_eq!(
        layout.members(&mut conn, &format!("r:{doc}")).await,
        [name_id.clone()].into()
    );
    assert!(layout
        .members(&mut conn, &format!("r:v:{name_id}"))
        .await
        .is_empty());
    assert!(layout.members(&mut conn, "r:c:plans").await.is_empty());
}

#[tokio::test]
async fn a_changed_dependency_makes_the_value_stale_until_recomputed() {
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(unique("g"))
        .max_stale(Duration::from_millis(300))
        .build()
        .unwrap();
    let user = ada();
    smache.scope(name_of(&user)).await;
    let key = name_of::key(&user).unwrap();
    let mut conn = redis_connection(&redis_url()).await;
    // What the worker's script does to a value when its document changes.
    let _: () = conn.hincr(smache.storage_key(&key), "g", 1).await.unwrap();
    let _: () = conn
        .hset(smache.storage_key(&key), "t", smache_now_ms())
        .await
        .unwrap();
    // Written behind smache's back: let Redis's word reach the layer.
    smache.sync_local_cache().await.unwrap();

    let entry = smache.entry(&key).await.unwrap().unwrap();
    assert!(entry.is_stale());
    assert!(!smache.is_fresh(&key).await.unwrap());
    // Within max_stale the previous value is served (an executor is on it).
    let renamed = User {
        name: "Augusta".into(),
        ..user.clone()
    };
    assert_eq!(smache.scope(name_of(&renamed)).await, "Ada");
    // Past it, the caller computes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(smache.scope(name_of(&renamed)).await, "Augusta");
    assert!(smache.is_fresh(&key).await.unwrap());
    assert_eq!(smache.entry(&key).await.unwrap().unwrap().version(), 2);
}

fn smache_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The data the racing function reads, and a gate to hold it mid-compute.
static DATA: Mutex<String> = Mutex::new(String::new());
static GATE: Notify = Notify::const_new();
static HOLD: Mutex<bool> = Mutex::new(false);

#[computed(Raw)]
async fn report(tag: String) -> String {
    let data = DATA.lock().unwrap().clone();
    let hold = std::mem::take(&mut *HOLD.lock().unwrap());
    if hold {
        GATE.notified().await;
    }
    format!("{tag}:{data}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_computation_never_overwrites_a_newer_value() {
    // Two instances on one prefix stand for two processes: each has its
    // own in-process single flight, and they meet in Redis.
    let prefix = unique("race");
    let process = || {
        Smache::builder()
            .redis_url(redis_url())
            .prefix(&prefix)
            .compute_lease(Duration::from_millis(200))
            .build()
            .unwrap()
    };
    let (a, b) = (process(), process());
    let tag = unique("race");
    let key = report::key(tag.clone()).unwrap();
    let mut conn = redis_connection(&redis_url()).await;

    *DATA.lock().unwrap() = "old".into();
    *HOLD.lock().unwrap() = true;
    // A reads "old" and stalls.
    let slow = tokio::spawn({
        let tag = tag.clone();
        async move { a.scope(report(tag)).await }
    });
    while *HOLD.lock().unwrap() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The data changes; the worker would bump the value's generation.
    *DATA.lock().unwrap() = "new".into();
    let _: () = conn.hincr(b.storage_key(&key), "g", 1).await.unwrap();
    // A loses its compute lease while stalled (a long pause, a partition):
    // B takes over and computes from the new data.
    let _: () = conn.hdel(b.storage_key(&key), &["c", "cx"]).await.unwrap();
    assert_eq!(b.scope(report(tag.clone())).await, format!("{tag}:new"));
    // A finishes late; its older value must not replace B's.
    GATE.notify_one();
    assert_eq!(
        slow.await.unwrap(),
        format!("{tag}:old"),
        "A's caller gets what A computed"
    );
    assert_eq!(b.scope(report(tag.clone())).await, format!("{tag}:new"));
    assert!(b.is_fresh(&key).await.unwrap());
}

#[tokio::test]
async fn foreign_data_under_graph_keys_is_replaced_not_fatal() {
    let smache = instance();
    let user = ada();
    let doc = format!("e:users:o:{}", user.id.to_hex());
    let key = name_of::key(&user).unwrap();
    let name_id = value_id(&smache, &key);
    // The keys the value's script writes: its shard's.
    let base = value_base(&smache, &key);
    let layout = Layout::of(&smache).await;
    let mut conn = redis_connection(&redis_url()).await;
    // Strings where the scripts expect sets and a stream.
    for key in [
        format!("{base}r:{doc}"),
        format!("{base}collections"),
        format!("{base}v:{name_id}"),
        format!("{base}jobs"),
    ] {
        let _: () = conn.set(&key, "garbage").await.unwrap();
    }
    smache.sync_local_cache().await.unwrap();
    assert_eq!(smache.scope(name_of(&user)).await, "Ada");
    assert!(smache.is_fresh(&key).await.unwrap());
    assert_eq!(
        layout.members(&mut conn, &format!("r:{doc}")).await,
        [name_id.clone()].into()
    );
    assert!(layout
        .members(&mut conn, "collections")
        .await
        .contains("users"));
    // Dropping works too.
    assert!(smache.invalidate(&key).await.unwrap());
    assert!(layout
        .members(&mut conn, &format!("r:{doc}"))
        .await
        .is_empty());
}

#[computed(Raw)]
async fn shared_setting(tag: String) -> String {
    format!("setting of {tag}")
}

#[computed(Raw, Raw)]
async fn many_parents(tag: String, n: u32) -> String {
    format!("{n}: {}", shared_setting(tag).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_with_many_dependants_fans_out_in_chunks() {
    const PARENTS: u32 = 2_500; // over 2 chunks of 1,000
    let smache = instance();
    let tag = unique("fan");
    for n in 0..PARENTS {
        smache.scope(many_parents(tag.clone(), n)).await;
    }
    let layout = Layout::of(&smache).await;
    let child = value_id(&smache, &shared_setting::key(tag.clone()).unwrap());
    let mut conn = redis_connection(&redis_url()).await;
    let dependants = layout.members(&mut conn, &format!("r:v:{child}")).await;
    assert_eq!(dependants.len(), PARENTS as usize);

    // Dropping the child signals its 2,500 parents: not in that script,
    // but as one fan-out job. (With several shards, each shard's part of
    // them, under a chunk, is signalled by that shard's own script.)
    assert!(smache
        .invalidate(&shared_setting::key(tag.clone()).unwrap())
        .await
        .unwrap());
    if layout.bases().len() == 1 {
        let jobs = layout.jobs(&mut conn).await;
        assert_eq!(jobs.len(), 1, "one fan-out job, no recompute job yet");
        assert_eq!(jobs[0].get::<String>("fan"), Some(format!("v:{child}")));
        assert!(smache
            .is_fresh(&many_parents::key(tag.clone(), 7).unwrap())
            .await
            .unwrap());
    }

    // An executor signals them a chunk at a time, then recomputes them all.
    let executor = smache::executor::spawn(&smache);
    let all_fresh_again = smache_suite::eventually(Duration::from_secs(60), || {
        let (smache, tag, layout) = (smache.clone(), tag.clone(), layout.clone());
        async move {
            let mut conn = redis_connection(&redis_url()).await;
            layout.jobs_len(&mut conn).await == 0
                && smache
                    .is_fresh(&shared_setting::key(tag).unwrap())
                    .await
                    .unwrap()
        }
    })
    .await;
    assert!(all_fresh_again, "every job done");
    for n in [0, 999, 1_000, 1_999, 2_499] {
        let entry = smache
            .entry(&many_parents::key(tag.clone(), n).unwrap())
            .await
            .unwrap()
            .expect("stored");
        // Recomputed: once for the drop, and maybe again when the first
        // recompute stored the child anew (a new value tells its parents).
        assert!(entry.version() >= 2, "parent {n} was recomputed");
        assert!(!entry.is_stale());
    }
    executor.shutdown().await.unwrap();
}

#[computed(Raw, Raw)]
async fn counted_parent(tag: String, n: u32) -> String {
    let mut conn = redis_connection(&redis_url()).await;
    let _: u64 = conn.incr(format!("{tag}:runs:{n}"), 1).await.unwrap();
    format!("{n}: {}", shared_setting(tag).await)
}

#[computed(Raw)]
async fn counted_grandparent(tag: String) -> String {
    let mut conn = redis_connection(&redis_url()).await;
    let _: u64 = conn.incr(format!("{tag}:runs:grand"), 1).await.unwrap();
    format!("[{}]", counted_parent(tag, 0).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_past_max_fanout_marks_its_dependants_stale_and_readers_recompute() {
    const PARENTS: u32 = 12;
    let smache = instance();
    let tag = unique("lazy");
    let layout = Layout::of(&smache).await;
    let mut conn = redis_connection(&redis_url()).await;
    // As the watching worker does with WorkerOptions::max_fanout(5), in
    // every shard. (With several, each holds a part of the 12 parents, so
    // none would pass 5: there every dependant is past a limit of 0.)
    let max_fanout = if layout.bases().len() == 1 { 5 } else { 0 };
    for config in layout.everywhere("config") {
        let _: () = conn.hset(config, "max_fanout", max_fanout).await.unwrap();
    }
    for n in 0..PARENTS {
        smache.scope(counted_parent(tag.clone(), n)).await;
    }
    // A value built on parent 0: no new parent is stored to tell it, so
    // the marking must reach it too.
    smache.scope(counted_grandparent(tag.clone())).await;
    let grandparent = counted_grandparent::key(tag.clone()).unwrap();
    let child = value_id(&smache, &shared_setting::key(tag.clone()).unwrap());
    assert!(smache
        .invalidate(&shared_setting::key(tag.clone()).unwrap())
        .await
        .unwrap());
    let jobs = layout.jobs(&mut conn).await;
    if layout.bases().len() == 1 {
        assert_eq!(jobs.len(), 1, "one lazy fan-out job");
        assert_eq!(jobs[0].get::<u64>("n"), Some(u64::from(PARENTS)));
    }
    // (With several shards, each shard's part is a lazy fan-out job of its
    // own, and the child's shard also queues the job that signals the
    // others again, should its caller have died before it signalled them.)
    // (Other jobs there: each value stored or marked tells the values
    // built on it in the other shards by a job of its own.)
    let child_token = format!("v:{child}");
    assert!(
        jobs.iter().any(|job| job.contains_key("lazy")
            && job.get::<String>("fan").as_ref() == Some(&child_token)),
        "a lazy fan-out job: {jobs:?}"
    );
    for job in jobs.iter().filter(|job| {
        layout.bases().len() == 1 || job.get::<String>("fan").as_ref() == Some(&child_token)
    }) {
        assert_eq!(job.get::<String>("fan"), Some(child_token.clone()));
        assert!(
            job.get::<String>("lazy").as_deref() == Some("1") || job.contains_key("all"),
            "a lazy fan-out, or the job that signals every other shard: {job:?}"
        );
    }

    // The executor marks them stale and queues no recompute.
    let executor = smache::executor::spawn(&smache);
    let marked = smache_suite::eventually(Duration::from_secs(10), || async {
        let mut conn = redis_connection(&redis_url()).await;
        layout.jobs_len(&mut conn).await == 0
    })
    .await;
    assert!(marked, "the fan-out job is done");
    for n in 0..PARENTS {
        let key = counted_parent::key(tag.clone(), n).unwrap();
        assert!(!smache.is_fresh(&key).await.unwrap(), "parent {n} is stale");
        let runs: u64 = conn.get(format!("{tag}:runs:{n}")).await.unwrap();
        assert_eq!(runs, 1, "parent {n} was not recomputed in the background");
    }
    assert!(
        !smache.is_fresh(&grandparent).await.unwrap(),
        "the marking reached the value built on a marked one"
    );
    let runs: u64 = conn.get(format!("{tag}:runs:grand")).await.unwrap();
    assert_eq!(runs, 1, "and did not recompute it either");
    smache.scope(counted_grandparent(tag.clone())).await;
    let runs: u64 = conn.get(format!("{tag}:runs:grand")).await.unwrap();
    assert_eq!(runs, 2, "its next read recomputes it");
    // Its next read recomputes it rather than serving the stale value.
    smache.scope(counted_parent(tag.clone(), 3)).await;
    let runs: u64 = conn.get(format!("{tag}:runs:3")).await.unwrap();
    assert_eq!(runs, 2, "recomputed by its reader");
    // (That read stored the child anew, which tells its 12 parents: past
    // the limit again, so they are marked once more, and a read after that
    // finds everything settled.)
    let key = counted_parent::key(tag.clone(), 4).unwrap();
    let settled = smache_suite::eventually(Duration::from_secs(10), || async {
        smache.scope(counted_parent(tag.clone(), 4)).await;
        smache.is_fresh(&key).await.unwrap()
    })
    .await;
    assert!(
        settled,
        "a read leaves the value fresh once nothing changes"
    );
    executor.shutdown().await.unwrap();
}

/// Per-tag gates for `raced`: each computation takes the next gate and
/// the data as it is when it starts.
static GATES: Mutex<Vec<(String, std::sync::Arc<Notify>)>> = Mutex::new(Vec::new());
static RACE_DATA: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

#[computed(Raw)]
async fn raced(tag: String) -> u32 {
    let data = RACE_DATA
        .lock()
        .unwrap()
        .iter()
        .find(|(t, _)| *t == tag)
        .map_or(0, |(_, d)| *d);
    let gate = {
        let mut gates = GATES.lock().unwrap();
        let at = gates.iter().position(|(t, _)| *t == tag);
        at.map(|at| gates.remove(at).1)
    };
    if let Some(gate) = gate {
        gate.notified().await;
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_computations_finishing_in_any_order_leave_the_newest_value() {
    const ROUNDS: u64 = 12;
    const RACERS: usize = 4;
    let prefix = unique("races");
    let mut seed = smache_now_ms() | 1;
    let mut next = move |n: usize| {
        // xorshift: a reproducible order per seed, no extra crate.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        usize::try_from(seed % n as u64).unwrap()
    };
    let seed_shown = smache_now_ms();
    let mut conn = redis_connection(&redis_url()).await;
    for round in 0..ROUNDS {
        let tag = unique("raced");
        let instances: Vec<Smache> = (0..RACERS)
            .map(|_| {
                Smache::builder()
                    .redis_url(redis_url())
                    .prefix(&prefix)
                    .compute_lease(Duration::from_millis(200))
                    .build()
                    .unwrap()
            })
            .collect();
        let key = raced::key(tag.clone()).unwrap();
        let storage = instances[0].storage_key(&key);
        let mut gates = Vec::new();
        let mut running = Vec::new();
        for (i, smache) in instances.iter().enumerate() {
            // The data changes (generation bumped as the worker would),
            // and the previous racer loses its lease: this one starts from
            // newer data than every racer before it.
            RACE_DATA.lock().unwrap().retain(|(t, _)| *t != tag);
            RACE_DATA.lock().unwrap().push((tag.clone(), i as u32));
            if i > 0 {
                let _: () = conn.hincr(&storage, "g", 1).await.unwrap();
                let _: () = conn.hdel(&storage, &["c", "cx"]).await.unwrap();
            }
            let gate = std::sync::Arc::new(Notify::new());
            GATES
                .lock()
                .unwrap()
                .push((tag.clone(), std::sync::Arc::clone(&gate)));
            gates.push(gate);
            let (smache, racer_tag) = (smache.clone(), tag.clone());
            running.push(tokio::spawn(
                async move { smache.scope(raced(racer_tag)).await },
            ));
            // Wait until it took its gate (it is computing).
            while GATES.lock().unwrap().iter().any(|(t, _)| *t == tag) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // Finish in a random order.
        let mut order: Vec<usize> = (0..RACERS).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, next(i + 1));
        }
        for &i in &order {
            gates[i].notify_one();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        for (i, task) in running.into_iter().enumerate() {
            assert_eq!(
                task.await.unwrap(),
                i as u32,
                "each caller gets its own computation"
            );
        }
        // Stored, from the newest generation (not computed again below).
        assert!(instances[0].is_fresh(&key).await.unwrap(), "round {round}");
        let computed_from: u64 = conn.hget(&storage, "w").await.unwrap();
        assert_eq!(computed_from, RACERS as u64 - 1, "round {round}");
        let stored = instances[0].scope(raced(tag.clone())).await;
        assert_eq!(
            stored,
            RACERS as u32 - 1,
            "round {round} (seed {seed_shown}, order {order:?}): the newest value stays"
        );
    }
}

/// The data `leaf` reads, per tag.
static LEAF_DATA: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// A run of `trunk(tag)` for a tag with a gate here says it read its leaf,
/// and waits until the test lets it go.
static TRUNK_GATES: Mutex<Vec<TrunkGate>> = Mutex::new(Vec::new());

/// A tag, "read the leaf", "let go".
type TrunkGate = (String, std::sync::Arc<Notify>, std::sync::Arc<Notify>);

fn set_leaf(tag: &str, data: &str) {
    let mut leaves = LEAF_DATA.lock().unwrap();
    leaves.retain(|(t, _)| t != tag);
    leaves.push((tag.to_owned(), data.to_owned()));
}

/// `mark_stale`: a stale leaf is recomputed by its next reader.
#[computed(Raw, refresh = mark_stale)]
async fn leaf(tag: String) -> String {
    let leaves = LEAF_DATA.lock().unwrap();
    leaves.iter().find(|(t, _)| *t == tag).unwrap().1.clone()
}

#[computed(Raw)]
async fn trunk(tag: String) -> String {
    let leaf = leaf(tag.clone()).await;
    let gate = {
        let mut gates = TRUNK_GATES.lock().unwrap();
        let at = gates.iter().position(|(t, ..)| *t == tag);
        at.map(|at| gates.remove(at))
    };
    if let Some((_, read, release)) = gate {
        read.notify_one();
        release.notified().await;
    }
    format!("<{leaf}>")
}

/// How the test stores a leaf anew while its trunk computes.
#[derive(Clone, Copy, Debug)]
enum Restore {
    /// Invalidated and computed again: its version starts over at 1.
    Invalidate,
    /// Marked stale (as the worker does) and recomputed by a reader: its
    /// version goes up.
    Recompute,
}

/// A trunk reads its leaf, then pauses; meanwhile the leaf is stored anew
/// with another value, before the trunk's first value is stored (so no
/// edge yet tells the trunk). The trunk's value must not be fresh over the
/// leaf's old value: it is stored stale, and recomputed from the new leaf.
async fn a_leaf_restored_while_its_trunk_computes(smache: Smache, restore: Restore) {
    let tag = unique("leaf");
    let mut conn = redis_connection(&redis_url()).await;
    let leaf_key = leaf::key(tag.clone()).unwrap();
    let trunk_key = trunk::key(tag.clone()).unwrap();
    set_leaf(&tag, "old");
    if let Restore::Invalidate = restore {
        // Read by the trunk as a hit.
        assert_eq!(smache.scope(leaf(tag.clone())).await, "old");
    }
    let (read, release) = (
        std::sync::Arc::new(Notify::new()),
        std::sync::Arc::new(Notify::new()),
    );
    TRUNK_GATES.lock().unwrap().push((
        tag.clone(),
        std::sync::Arc::clone(&read),
        std::sync::Arc::clone(&release),
    ));
    let computing = tokio::spawn({
        let (smache, tag) = (smache.clone(), tag.clone());
        async move { smache.scope(trunk(tag)).await }
    });
    tokio::time::timeout(Duration::from_secs(10), read.notified())
        .await
        .expect("the trunk read its leaf");

    set_leaf(&tag, "new");
    match restore {
        Restore::Invalidate => {
            assert!(smache.invalidate(&leaf_key).await.unwrap());
        }
        Restore::Recompute => {
            let _: () = conn
                .hincr(smache.storage_key(&leaf_key), "g", 1)
                .await
                .unwrap();
        }
    }
    assert_eq!(smache.scope(leaf(tag.clone())).await, "new");
    assert!(smache.is_fresh(&leaf_key).await.unwrap());

    release.notify_one();
    assert_eq!(
        computing.await.unwrap(),
        "<old>",
        "the caller gets what was computed"
    );
    let fresh = smache.is_fresh(&trunk_key).await.unwrap();
    if value_base(&smache, &trunk_key) == value_base(&smache, &leaf_key) {
        assert!(
            !fresh,
            "{restore:?}: a trunk computed from the leaf's old value is stale"
        );
    } else if fresh {
        // In another shard, the leaf's new value reaches the trunk through
        // a job that signals the other shards (README, "Shards"): queued.
        let leaf_token = format!("v:{}", value_id(&smache, &leaf_key));
        let jobs = Layout::of(&smache).await.jobs(&mut conn).await;
        assert!(
            jobs.iter()
                .any(|job| job.get::<String>("fan").as_ref() == Some(&leaf_token)
                    && job.contains_key("all")),
            "{restore:?}: a trunk in another shard is told by a queued job: {jobs:?}"
        );
    }
    // An executor recomputes it from the new leaf.
    let executor = smache::executor::spawn(&smache);
    let refreshed = smache_suite::eventually(Duration::from_secs(20), || async {
        smache.is_fresh(&trunk_key).await.unwrap()
            && smache.scope(trunk(tag.clone())).await == "<new>"
    })
    .await;
    assert!(
        refreshed,
        "{restore:?}: the trunk is recomputed from the new leaf"
    );
    executor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_value_stored_anew_while_its_parent_computes_leaves_the_parent_stale() {
    for restore in [Restore::Invalidate, Restore::Recompute] {
        a_leaf_restored_while_its_trunk_computes(instance(), restore).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_value_stored_anew_while_its_parent_computes_leaves_the_parent_stale_in_mongodb() {
    for restore in [Restore::Invalidate, Restore::Recompute] {
        let smache = Smache::builder()
            .redis_url(redis_url())
            .prefix(unique("gm"))
            .mongodb_database(smache_suite::mongo_database("smache_graph_tests"))
            .value_store(smache::ValueStore::Mongo)
            .build()
            .unwrap();
        a_leaf_restored_while_its_trunk_computes(smache, restore).await;
    }
}

/// An `invalidate` while a computation of the value runs: if another
/// process computes and stores the value after the drop, the computation
/// that started before it does not land fresh over that newer value (the
/// drop keeps the value's change generation, so its store is taken for
/// what it is: older).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidate_while_a_value_computes_keeps_that_computation_from_landing_over_a_newer_one()
{
    let smache = instance();
    // Another process of the instance, reading Redis on every call.
    let other = Smache::builder()
        .redis_url(redis_url())
        .prefix(smache.prefix())
        .local_cache_capacity(0)
        .build()
        .unwrap();
    let tag = unique("dropped");
    let key = raced::key(tag.clone()).unwrap();
    RACE_DATA.lock().unwrap().push((tag.clone(), 1));
    let gate = std::sync::Arc::new(Notify::new());
    GATES
        .lock()
        .unwrap()
        .push((tag.clone(), std::sync::Arc::clone(&gate)));
    // A caller computes from data 1 and is held (it took its gate).
    let slow = tokio::spawn({
        let (smache, tag) = (smache.clone(), tag.clone());
        async move { smache.scope(raced(tag)).await }
    });
    let held = smache_suite::eventually(Duration::from_secs(10), || async {
        !GATES.lock().unwrap().iter().any(|(t, _)| *t == tag)
    })
    .await;
    assert!(held, "the first computation is held");

    // The data changes; the value is invalidated (nothing stored yet: the
    // drop takes the held computation's lease) and computed again there.
    for (t, data) in RACE_DATA.lock().unwrap().iter_mut() {
        if *t == tag {
            *data = 2;
        }
    }
    assert!(!other.invalidate(&key).await.unwrap());
    assert_eq!(other.scope(raced(tag.clone())).await, 2);

    gate.notify_one();
    assert_eq!(slow.await.unwrap(), 1, "its caller gets what it computed");
    assert_eq!(
        other.scope(raced(tag.clone())).await,
        2,
        "the value computed after the drop stays"
    );
    assert!(other.is_fresh(&key).await.unwrap());
}

#[tokio::test]
async fn the_graph_sweep_removes_the_edges_of_values_that_expired_and_no_other() {
    let smache = instance();
    let user = ada();
    assert_eq!(smache.scope(brief_badge(&user)).await, "[Ada]");
    let layout = Layout::of(&smache).await;
    let brief_key = brief_badge::key(&user).unwrap();
    let brief_id = value_id(&smache, &brief_key);
    let name_id = value_id(&smache, &name_of::key(&user).unwrap());
    let doc = format!("r:e:users:o:{}", user.id.to_hex());
    let nested = format!("r:v:{name_id}");
    let mut conn = redis_connection(&redis_url()).await;
    assert_eq!(
        layout.members(&mut conn, &doc).await,
        [brief_id.clone(), name_id.clone()].into()
    );
    assert_eq!(
        layout.members(&mut conn, &nested).await,
        [brief_id.clone()].into()
    );

    // Its key expires, and nothing it depends on changes: its edges stay.
    assert!(
        expired(&smache, &brief_key).await,
        "the value's key expires twice its TTL after it was stored"
    );
    assert!(layout.members(&mut conn, &doc).await.contains(&brief_id));

    let swept = smache::worker::sweep_graph(&smache).await.unwrap();
    assert_eq!(swept.removed, 2, "{swept:?}");
    assert_eq!(
        layout.members(&mut conn, &doc).await,
        [name_id.clone()].into(),
        "the live value keeps its edge"
    );
    for key in layout.everywhere(&nested) {
        let left: bool = conn.exists(&key).await.unwrap();
        assert!(!left, "a set emptied goes with its last member: {key}");
    }
    let again = smache::worker::sweep_graph(&smache).await.unwrap();
    assert_eq!(again.removed, 0, "nothing more to remove: {again:?}");
    // Computed again, the value records its edges anew.
    assert_eq!(smache.scope(brief_badge(&user)).await, "[Ada]");
    assert_eq!(
        layout.members(&mut conn, &doc).await,
        [brief_id.clone(), name_id].into()
    );
    assert_eq!(layout.members(&mut conn, &nested).await, [brief_id].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_sweep_keeps_the_edges_of_a_value_being_computed() {
    let smache = instance();
    let user = ada();
    let call = tokio::spawn({
        let (smache, user) = (smache.clone(), user.clone());
        async move { smache.scope(held_name(&user)).await }
    });
    NAMING.notified().await;
    // Computing: its hash holds the compute lease and no value yet, and
    // its known dependency is recorded.
    let layout = Layout::of(&smache).await;
    let id = value_id(&smache, &held_name::key(&user).unwrap());
    let doc = format!("r:e:users:o:{}", user.id.to_hex());
    let mut conn = redis_connection(&redis_url()).await;
    assert_eq!(layout.members(&mut conn, &doc).await, [id.clone()].into());

    smache::worker::sweep_graph(&smache).await.unwrap();
    assert_eq!(
        layout.members(&mut conn, &doc).await,
        [id].into(),
        "a value being computed keeps its edges"
    );
    NAME_NOW.notify_one();
    assert_eq!(call.await.unwrap(), "Ada");
}

/// Stores `brief_name(tag)`, waits past its TTL, and reads it again with
/// the gate on: an executor's recompute starts and is held. Returns once
/// the value's key has expired under it (twice the TTL after the store):
/// a change to what it read would now find no value to signal.
async fn held_past_its_key(smache: &Smache, tag: &str) -> smache::CacheKey {
    let name = format!("name {tag}");
    assert_eq!(smache.scope(brief_name(tag.to_owned())).await, name);
    let key = brief_name::key(tag.to_owned()).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    REFRESH_GATE.store(true, std::sync::atomic::Ordering::SeqCst);
    // Past its TTL: served once more, and an executor recomputes it.
    assert_eq!(smache.scope(brief_name(tag.to_owned())).await, name);
    tokio::time::timeout(Duration::from_secs(10), REFRESHING.notified())
        .await
        .expect("the executor's recompute starts");
    assert!(
        expired(smache, &key).await,
        "the key expires twice its TTL after the store"
    );
    key
}

/// Whether the key of `key`'s value is gone within 10 s (it expired).
async fn expired(smache: &Smache, key: &smache::CacheKey) -> bool {
    let (conn, storage) = (
        redis_connection(&redis_url()).await,
        smache.storage_key(key),
    );
    smache_suite::eventually(Duration::from_secs(10), || {
        let (mut conn, storage) = (conn.clone(), storage.clone());
        async move { !conn.exists::<_, bool>(&storage).await.unwrap() }
    })
    .await
}

/// Waits until `key` holds a value stored at `version` or later.
async fn stored(smache: &Smache, key: &smache::CacheKey, version: u64) -> smache::EntryInfo {
    for _ in 0..400 {
        if let Some(entry) = smache.entry(key).await.unwrap() {
            if entry.version() >= version {
                return entry;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing stored at {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_whose_key_expires_while_it_is_recomputed_is_never_stored_fresh() {
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(unique("g"))
        .run_executor()
        .build()
        .unwrap();

    // Nothing made the key anew: the recompute is stored, but stale, and
    // the next read recomputes it (no job: one could outlast the key again).
    let tag = unique("brief");
    let key = held_past_its_key(&smache, &tag).await;
    REFRESH_NOW.notify_one();
    let entry = stored(&smache, &key, 1).await;
    assert!(entry.is_stale());
    assert!(!smache.is_fresh(&key).await.unwrap());
    assert_eq!(
        smache.scope(brief_name(tag.clone())).await,
        format!("name {tag}")
    );
    assert!(
        smache.is_fresh(&key).await.unwrap(),
        "the read recomputed it"
    );

    // A reader made the key anew meanwhile and stored its value, computed
    // after the gap: the held recompute, begun before, does not land.
    let tag = unique("brief");
    let key = held_past_its_key(&smache, &tag).await;
    assert_eq!(
        smache.scope(brief_name(tag.clone())).await,
        format!("name {tag}")
    );
    let read = stored(&smache, &key, 1).await;
    assert!(smache.is_fresh(&key).await.unwrap());
    REFRESH_NOW.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = smache.entry(&key).await.unwrap().unwrap();
    assert_eq!(
        after.version(),
        read.version(),
        "the held recompute is refused"
    );
    assert!(smache.is_fresh(&key).await.unwrap());
    smache.stop_executor().await.unwrap();
}
