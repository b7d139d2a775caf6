//! The behaviour every store passes: caching, keys, TTL, invalidation,
//! errors, bad data and outages. Run against plain Redis by
//! `tests/redis_store.rs` and with values kept in MongoDB by
//! `tests/mongo_store.rs`; each provides `super::builder(redis_url)`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use smache::{computed, Entity, Smache};
use smache_suite::layout::{self, Layout};
use smache_suite::{
    eventually, free_port, redis_connection, redis_url, unique, Calls, RedisServer, TcpProxy,
};

/// Calls per test tag (or function and argument), to tell caller
/// computes from executor ones.
static CALLS: Calls = Calls::new();

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Card {
    title: String,
    lang: String,
}

#[computed(Raw, User, Raw)]
async fn card(tag: &str, user: &User, lang: &str) -> Card {
    CALLS.bump(tag);
    Card {
        title: format!("{} ({lang})", user.name),
        lang: lang.to_owned(),
    }
}

#[computed(Raw, Raw)]
fn square(tag: &str, x: u64) -> u64 {
    CALLS.bump(tag);
    x * x
}

#[computed(Raw, Raw, ttl_secs = 1)]
async fn short_lived(tag: &str, x: u32) -> u32 {
    CALLS.bump(tag);
    x + 1
}

#[computed(Raw, Raw)]
async fn no_ttl(tag: &str, x: u32) -> u32 {
    CALLS.bump(tag);
    x
}

#[computed(Raw, Raw)]
async fn parse(tag: &str, input: &str) -> Result<u32, String> {
    CALLS.bump(tag);
    let n: u32 = input
        .parse()
        .map_err(|_| format!("not a number: {input}"))?;
    Ok(n)
}

fn instance(prefix: &str) -> Smache {
    super::builder(redis_url()).prefix(prefix).build().unwrap()
}

fn ada() -> User {
    User {
        id: ObjectId::new(),
        name: "Ada".into(),
    }
}

#[tokio::test]
async fn a_miss_computes_once_and_stores_in_redis() {
    let tag = unique("miss");
    let smache = instance(&unique("p"));
    let user = ada();

    let first = smache.scope(card(&tag, &user, "en")).await;
    let second = smache.scope(card(&tag, &user, "en")).await;

    assert_eq!(first, second);
    assert_eq!(first.title, "Ada (en)");
    assert_eq!(CALLS.get(&tag), 1, "the hit must not compute");

    let key = smache.storage_key(&card::key(&tag, &user, "en").unwrap());
    // Under the instance's tag, or one of its shards' (`{prefix#<n>}`).
    let base = match layout::shards() {
        1 => format!("{{{}}}:", smache.prefix()),
        _ => format!("{{{}#", smache.prefix()),
    };
    assert!(key.starts_with(&base) && key.contains("}:v:"), "{key}");
    assert!(
        key.contains(&format!("o:{}", user.id.to_hex())),
        "entity keyed by id: {key}"
    );
    let mut conn = redis_connection(&redis_url()).await;
    let version: String = conn.hget(&key, "v").await.unwrap();
    let data: Vec<u8> = conn.hget(&key, "d").await.unwrap();
    assert_eq!(version, "1");
    assert!(data.starts_with(b"sm\x01"), "a smache envelope");
}

#[tokio::test]
async fn entities_are_keyed_by_id_and_raw_args_by_value() {
    let tag = unique("keys");
    let smache = instance(&unique("p"));
    let user = ada();
    let renamed = User {
        name: "Augusta".into(),
        ..user.clone()
    };

    smache.scope(card(&tag, &user, "en")).await;
    // Same id: the same value, even though another field differs.
    let same = smache.scope(card(&tag, &renamed, "en")).await;
    assert_eq!(same.title, "Ada (en)");
    assert_eq!(CALLS.get(&tag), 1);

    // A different raw argument or a different entity: a different key.
    smache.scope(card(&tag, &user, "fr")).await;
    smache.scope(card(&tag, &ada(), "en")).await;
    assert_eq!(CALLS.get(&tag), 3);
    assert_ne!(
        card::key(&tag, &user, "en").unwrap(),
        card::key(&tag, &user, "fr").unwrap()
    );
}

#[tokio::test]
async fn past_its_ttl_a_value_is_served_once_more_and_refreshed() {
    let tag = unique("ttl");
    let smache = super::builder(redis_url())
        .prefix(unique("p"))
        .max_stale(Duration::from_millis(500))
        .build()
        .unwrap();
    assert_eq!(smache.scope(short_lived(&tag, 1)).await, 2);
    let key = short_lived::key(&tag, 1).unwrap();
    let storage = smache.storage_key(&key);
    let mut conn = redis_connection(&redis_url()).await;
    // The key itself lives twice the time-to-live.
    let pttl: i64 = conn.pttl(&storage).await.unwrap();
    assert!(pttl > 1000 && pttl <= 2000, "pttl {pttl}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!smache.is_fresh(&key).await.unwrap(), "past its ttl");
    // Served once more, and a refresh is queued for the executors.
    assert_eq!(smache.scope(short_lived(&tag, 1)).await, 2);
    assert_eq!(CALLS.get(&tag), 1);
    // (With several shards, stores also queue jobs that tell other
    // shards: count the recomputes.)
    let layout = Layout::of(&smache).await;
    let queued = eventually(Duration::from_secs(5), || {
        let layout = layout.clone();
        async move {
            let mut conn = redis_connection(&redis_url()).await;
            let jobs = layout.jobs(&mut conn).await;
            jobs.iter().filter(|job| job.contains_key("id")).count() == 1
        }
    })
    .await;
    assert!(queued, "one refresh job");
    // No executor runs here: past max_stale the caller computes itself.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(smache.scope(short_lived(&tag, 1)).await, 2);
    assert_eq!(CALLS.get(&tag), 2);
    assert!(smache.is_fresh(&key).await.unwrap());
}

#[tokio::test]
async fn redis_drops_values_nobody_reads() {
    let tag = unique("ttl-gone");
    let smache = instance(&unique("p"));
    smache.scope(short_lived(&tag, 3)).await;
    let key = short_lived::key(&tag, 3).unwrap();
    let gone = eventually(Duration::from_secs(5), || {
        let smache = smache.clone();
        let key = key.clone();
        async move { smache.entry(&key).await.unwrap().is_none() }
    })
    .await;
    assert!(gone, "the key expires after twice its ttl");
    smache.scope(short_lived(&tag, 3)).await;
    assert_eq!(CALLS.get(&tag), 2);
}

#[tokio::test]
async fn the_instance_default_ttl_applies_to_functions_without_one() {
    let tag = unique("default-ttl");
    let smache = super::builder(redis_url())
        .prefix(unique("p"))
        .default_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    smache.scope(no_ttl(&tag, 5)).await;
    smache.scope(short_lived(&tag, 5)).await;

    let mut conn = redis_connection(&redis_url()).await;
    let default: i64 = conn
        .pttl(smache.storage_key(&no_ttl::key(&tag, 5).unwrap()))
        .await
        .unwrap();
    let own: i64 = conn
        .pttl(smache.storage_key(&short_lived::key(&tag, 5).unwrap()))
        .await
        .unwrap();
    // Keys live twice their time-to-live (see `past_its_ttl_…`).
    assert!(
        default > 30_000 && default <= 60_000,
        "default ttl {default}"
    );
    assert!(
        own > 1_000 && own <= 2_000,
        "the function's own ttl wins: {own}"
    );

    // Without any TTL the key does not expire.
    let plain = instance(&unique("p"));
    plain.scope(no_ttl(&tag, 6)).await;
    let none: i64 = conn
        .pttl(plain.storage_key(&no_ttl::key(&tag, 6).unwrap()))
        .await
        .unwrap();
    assert_eq!(none, -1);
}

#[tokio::test]
async fn invalidate_forces_a_recompute() {
    let tag = unique("invalidate");
    let smache = instance(&unique("p"));
    let user = ada();
    smache.scope(card(&tag, &user, "en")).await;
    assert!(smache
        .scope(card::is_fresh(&tag, &user, "en"))
        .await
        .unwrap());

    assert!(smache
        .scope(card::invalidate(&tag, &user, "en"))
        .await
        .unwrap());
    assert!(!smache
        .scope(card::is_fresh(&tag, &user, "en"))
        .await
        .unwrap());
    assert!(!smache
        .invalidate(&card::key(&tag, &user, "en").unwrap())
        .await
        .unwrap());

    smache.scope(card(&tag, &user, "en")).await;
    assert_eq!(CALLS.get(&tag), 2);
    assert!(smache
        .is_fresh(&card::key(&tag, &user, "en").unwrap())
        .await
        .unwrap());
}

#[tokio::test]
async fn errors_are_not_cached() {
    let tag = unique("result");
    let smache = instance(&unique("p"));
    for _ in 0..2 {
        let err = smache.scope(parse(&tag, "x")).await.unwrap_err();
        assert_eq!(err, "not a number: x");
    }
    assert_eq!(CALLS.get(&tag), 2, "each Err is computed again");
    assert!(!smache
        .is_fresh(&parse::key(&tag, "x").unwrap())
        .await
        .unwrap());

    assert_eq!(smache.scope(parse(&tag, "7")).await, Ok(7));
    assert_eq!(smache.scope(parse(&tag, "7")).await, Ok(7));
    assert_eq!(CALLS.get(&tag), 3, "Ok is cached");
}

#[test]
fn sync_functions_work_without_a_runtime() {
    let tag = unique("sync");
    let smache = instance(&unique("p"));
    assert_eq!(smache.scope_sync(|| square(&tag, 12)), 144);
    assert_eq!(smache.scope_sync(|| square(&tag, 12)), 144);
    assert_eq!(CALLS.get(&tag), 1);

    let key = smache.storage_key(&square::key(&tag, 12).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let exists: bool = runtime.block_on(async {
        let mut conn = smache_suite::redis_connection(&redis_url()).await;
        redis::AsyncCommands::exists(&mut conn, &key).await.unwrap()
    });
    assert!(exists, "{key} stored in redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_functions_work_inside_a_runtime() {
    let tag = unique("sync-in-rt");
    let smache = instance(&unique("p"));
    let result = tokio::task::spawn_blocking({
        let smache = smache.clone();
        let tag = tag.clone();
        move || smache.scope_sync(|| (square(&tag, 3), square(&tag, 3)))
    })
    .await
    .unwrap();
    assert_eq!(result, (9, 9));
    assert_eq!(CALLS.get(&tag), 1);
    assert!(smache
        .is_fresh(&square::key(&tag, 3).unwrap())
        .await
        .unwrap());
}

#[tokio::test]
async fn instances_with_different_prefixes_do_not_collide() {
    let tag = unique("prefixes");
    let a = instance(&unique("a"));
    let b = instance(&unique("b"));
    a.scope(no_ttl(&tag, 1)).await;
    b.scope(no_ttl(&tag, 1)).await;
    a.scope(no_ttl(&tag, 1)).await;
    assert_eq!(CALLS.get(&tag), 2, "one computation per instance");

    assert!(a.invalidate(&no_ttl::key(&tag, 1).unwrap()).await.unwrap());
    assert!(b.is_fresh(&no_ttl::key(&tag, 1).unwrap()).await.unwrap());
    assert_ne!(
        a.storage_key(&no_ttl::key(&tag, 1).unwrap()),
        b.storage_key(&no_ttl::key(&tag, 1).unwrap())
    );
}

#[tokio::test]
async fn garbage_under_a_key_is_recomputed_and_overwritten() {
    let tag = unique("garbage");
    let smache = instance(&unique("p"));
    let user = ada();
    let key = smache.storage_key(&card::key(&tag, &user, "en").unwrap());
    let mut conn = redis_connection(&redis_url()).await;

    // A foreign string value under the key.
    let _: () = conn.set(&key, "not a smache value").await.unwrap();
    // Written behind smache's back: let Redis's word reach the layer.
    smache.sync_local_cache().await.unwrap();
    assert_eq!(
        smache.scope(card(&tag, &user, "en")).await.title,
        "Ada (en)"
    );
    assert_eq!(CALLS.get(&tag), 1);
    assert_eq!(
        smache.scope(card(&tag, &user, "en")).await.title,
        "Ada (en)"
    );
    assert_eq!(CALLS.get(&tag), 1, "the overwritten value is a hit");

    // A hash with a corrupt envelope keeps its version counter going.
    let _: () = conn
        .hset_multiple(&key, &[("v", "5"), ("d", "junk")])
        .await
        .unwrap();
    smache.sync_local_cache().await.unwrap();
    assert_eq!(
        smache.scope(card(&tag, &user, "en")).await.title,
        "Ada (en)"
    );
    assert_eq!(CALLS.get(&tag), 2);
    let entry = smache
        .entry(&card::key(&tag, &user, "en").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.version(), 6, "versions only go up");

    // A valid envelope around a payload of another type.
    let foreign = {
        let mut bytes = b"sm\x01\x00".to_vec();
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&[0xc3]); // MessagePack `true`
        bytes
    };
    let _: () = conn.hset(&key, "d", foreign).await.unwrap();
    smache.sync_local_cache().await.unwrap();
    assert_eq!(
        smache.scope(card(&tag, &user, "en")).await.title,
        "Ada (en)"
    );
    assert_eq!(CALLS.get(&tag), 3);

    // A version that is not a number.
    let _: () = conn.hset(&key, "v", "many").await.unwrap();
    smache.sync_local_cache().await.unwrap();
    assert_eq!(
        smache.scope(card(&tag, &user, "en")).await.title,
        "Ada (en)"
    );
    assert_eq!(CALLS.get(&tag), 4);
    assert!(smache
        .is_fresh(&card::key(&tag, &user, "en").unwrap())
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_redis_going_away_and_cache_again_when_it_returns() {
    let tag = unique("outage");
    let mut server = RedisServer::start();
    // The Redis path and its breaker: without the in-process layer, which
    // would answer hits until it hears its connection is gone (see
    // tests/local_layer.rs for the layer through an outage).
    let smache = super::builder(server.url())
        .prefix(unique("p"))
        .op_timeout(Duration::from_millis(300))
        .local_cache_capacity(0)
        .build()
        .unwrap();

    assert_eq!(smache.scope(no_ttl(&tag, 1)).await, 1);
    assert_eq!(smache.scope(no_ttl(&tag, 1)).await, 1);
    assert_eq!(CALLS.get(&tag), 1);

    server.kill();
    // Every call still returns the right value, computed directly.
    for x in [1, 2, 2, 3] {
        assert_eq!(smache.scope(no_ttl(&tag, x)).await, x);
    }
    assert_eq!(CALLS.get(&tag), 5);
    assert!(smache
        .is_fresh(&no_ttl::key(&tag, 1).unwrap())
        .await
        .is_err());

    server.resume();
    let recovered = eventually(Duration::from_secs(15), || {
        let smache = smache.clone();
        let tag = tag.clone();
        async move {
            smache.scope(no_ttl(&tag, 9)).await;
            smache
                .is_fresh(&no_ttl::key(&tag, 9).unwrap())
                .await
                .unwrap_or(false)
        }
    })
    .await;
    assert!(recovered, "caching resumes once redis is back");
    let before = CALLS.get(&tag);
    assert_eq!(smache.scope(no_ttl(&tag, 9)).await, 9);
    assert_eq!(CALLS.get(&tag), before, "a hit again");
}

/// Redis stops answering (its connections dropped, new ones accepted and
/// never answered: the costliest outage, where every attempt waits a whole
/// timeout). The call that finds it gone opens the circuit breaker; from
/// then on calls compute at once without trying Redis (the only
/// connections made are the background probes'), and caching resumes once
/// it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_hangs_calls_skip_it_at_once_and_cache_again_when_it_answers() {
    let tag = unique("breaker");
    let server = RedisServer::start();
    let mut proxy = TcpProxy::start(&server.address()).await;
    let timeout = Duration::from_millis(300);
    // The breaker, without the in-process layer (which would answer hits,
    // and open a tracking connection of its own through the proxy).
    let smache = super::builder(format!("redis://127.0.0.1:{}/", proxy.port()))
        .prefix(unique("p"))
        .op_timeout(timeout)
        .local_cache_capacity(0)
        .build()
        .unwrap();
    assert_eq!(smache.scope(no_ttl(&tag, 1)).await, 1);
    assert_eq!(smache.scope(no_ttl(&tag, 1)).await, 1);
    assert_eq!(CALLS.get(&tag), 1);

    proxy.mute().await;
    let connected = proxy.accepted();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for x in 0..50 {
        let call = Instant::now();
        assert_eq!(smache.scope(no_ttl(&tag, x)).await, x);
        slowest = slowest.max(call.elapsed());
    }
    let took = started.elapsed();
    let attempts = proxy.accepted() - connected;
    eprintln!("50 calls while Redis hangs: {took:?} in all, the slowest {slowest:?}, {attempts} connection attempts");
    assert_eq!(CALLS.get(&tag), 51, "each computed directly");
    assert!(
        took < timeout * 2,
        "one bounded wait at most, not one per call: {took:?}"
    );
    assert!(
        attempts <= 4,
        "no call tries Redis while it is known to be down: {attempts} connections for 50 calls in {took:?}"
    );

    proxy.restore().await;
    let answered = Instant::now();
    let recovered = eventually(Duration::from_secs(15), || {
        let smache = smache.clone();
        let tag = tag.clone();
        async move {
            smache.scope(no_ttl(&tag, 99)).await;
            smache
                .is_fresh(&no_ttl::key(&tag, 99).unwrap())
                .await
                .unwrap_or(false)
        }
    })
    .await;
    eprintln!(
        "caching resumed {:?} after Redis answered again",
        answered.elapsed()
    );
    assert!(recovered, "caching resumes once redis answers again");
    let before = CALLS.get(&tag);
    assert_eq!(smache.scope(no_ttl(&tag, 99)).await, 99);
    assert_eq!(CALLS.get(&tag), before, "a hit again");
}

/// Nothing listens where Redis should be: the first calls, however many at
/// once, share one connection attempt, refused at once, and none waits for
/// another's; the calls after them do not try again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_costs_the_first_calls_one_bounded_wait_together() {
    let tag = unique("refused");
    let timeout = Duration::from_millis(300);
    let smache = super::builder(format!("redis://127.0.0.1:{}/", free_port()))
        .prefix(unique("p"))
        .op_timeout(timeout)
        .build()
        .unwrap();
    let started = Instant::now();
    let first = futures::future::join_all((0..8).map(|x| {
        let smache = smache.clone();
        let tag = tag.clone();
        async move { smache.scope(no_ttl(&tag, x)).await }
    }))
    .await;
    let took = started.elapsed();
    assert_eq!(first, (0..8).collect::<Vec<_>>());
    let started = Instant::now();
    for x in 0..50 {
        assert_eq!(smache.scope(no_ttl(&tag, x)).await, x);
    }
    let then = started.elapsed();
    eprintln!("8 first calls at once on a refused connection: {took:?}; 50 calls after: {then:?}");
    assert!(
        took < timeout * 2,
        "8 first calls at once cost one bounded wait, not one each: {took:?}"
    );
    assert!(then < timeout * 2, "50 calls after them: {then:?}");
    assert_eq!(CALLS.get(&tag), 58, "no cache, so each call computes");
}

#[tokio::test]
async fn a_redis_that_never_answers_costs_one_timeout_not_a_hang() {
    let tag = unique("blackhole");
    // Accepts connections and never replies.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let smache = super::builder(format!("redis://127.0.0.1:{port}/"))
        .prefix(unique("p"))
        .op_timeout(Duration::from_millis(200))
        .build()
        .unwrap();

    let value = tokio::time::timeout(Duration::from_secs(10), smache.scope(no_ttl(&tag, 4)))
        .await
        .expect("the call must not hang on a silent redis");
    assert_eq!(value, 4);
    assert_eq!(smache.scope(no_ttl(&tag, 4)).await, 4);
    assert_eq!(CALLS.get(&tag), 2, "no cache, so each call computes");
}

#[computed(Raw, Raw)]
async fn sized(tag: &str, bytes: usize) -> String {
    CALLS.bump(tag);
    "x".repeat(bytes)
}

#[tokio::test]
async fn a_value_over_max_value_size_is_returned_but_not_cached() {
    let tag = unique("too-large");
    let smache = super::builder(redis_url())
        .prefix(unique("p"))
        .max_value_size(1024)
        .build()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(smache.scope(sized(&tag, 4096)).await.len(), 4096);
    }
    assert_eq!(CALLS.get(&tag), 2, "not cached: computed each time");
    assert!(smache
        .entry(&sized::key(&tag, 4096).unwrap())
        .await
        .unwrap()
        .is_none());
    // Below the limit, cached as usual.
    for _ in 0..2 {
        assert_eq!(smache.scope(sized(&tag, 100)).await.len(), 100);
    }
    assert_eq!(CALLS.get(&tag), 3);
}
