//! The in-process layer in front of Redis: hits answered from memory,
//! dropped the moment Redis says the value changed, in every process.
//! Against real Redis servers (the shared one, and servers of the tests'
//! own to flush, kill and restart), with several instances per process
//! (each has its own tracking connection) and several OS processes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::doc;
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use smache::{computed, Entity, Smache};
use smache_suite::{
    eventually, mongodb_uri, redis_connection, redis_url, unique, Calls, RedisServer, TcpProxy,
    WorkerProcess,
};

static CALLS: Calls = Calls::new();

/// A value that says how many times it was computed for `tag`: a value
/// computed anew is a different value.
#[computed(Raw)]
async fn generation(tag: &str) -> String {
    CALLS.bump(tag);
    format!("{tag}#{}", CALLS.get(tag))
}

/// [`generation`], synchronous.
#[computed(Raw)]
fn generation_sync(tag: &str) -> String {
    CALLS.bump(tag);
    format!("{tag}#{}", CALLS.get(tag))
}

/// An instance with the layer on, whatever `SMACHE_LOCAL_CACHE_CAPACITY`
/// says (the suite also runs with it off).
fn instance(url: &str, prefix: &str) -> Smache {
    Smache::builder()
        .redis_url(url)
        .prefix(prefix)
        .local_cache_capacity(smache::DEFAULT_LOCAL_CACHE_CAPACITY)
        .build()
        .unwrap()
}

/// Waits until the instance's layer is up (its tracking connection).
async fn live(smache: &Smache) {
    assert!(
        eventually(Duration::from_secs(10), || async {
            smache.local_cache().is_some_and(|layer| layer.live)
        })
        .await,
        "the layer's tracking connection did not come up"
    );
}

/// Reads `tag` through `smache` until its layer holds a value. A read
/// right after this process's own computation may be kept out: Redis's
/// word of that computation's writes can land while the read is in
/// flight, which makes the layer drop the read's reply to be safe.
async fn held(smache: &Smache, tag: &str) -> String {
    for _ in 0..200 {
        let value = smache.scope(generation(tag)).await;
        if smache.local_cache().is_some_and(|layer| layer.entries >= 1) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the layer never held {tag}");
}

/// Reads `tag` through `smache` until it is not `old` (or 5 s pass).
async fn until_changed(smache: &Smache, tag: &str, old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = smache.scope(generation(tag)).await;
        if now != old || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn hits_are_answered_in_process_and_a_write_elsewhere_drops_them() {
    let prefix = unique("layer");
    let (reader, writer) = (
        instance(&redis_url(), &prefix),
        instance(&redis_url(), &prefix),
    );
    live(&reader).await;
    let tag = unique("hit");
    let first = writer.scope(generation(&tag)).await;
    assert_eq!(held(&reader, &tag).await, first, "read from Redis");
    let before = reader.local_cache().unwrap();
    assert!(before.entries >= 1 && before.bytes > 0, "{before:?}");
    for _ in 0..100 {
        assert_eq!(reader.scope(generation(&tag)).await, first);
    }
    assert_eq!(CALLS.get(&tag), 1);

    // Another instance (another connection, as another process would)
    // drops the value: the reader's copy goes with it.
    assert!(writer
        .invalidate(&generation::key(&tag).unwrap())
        .await
        .unwrap());
    let second = until_changed(&reader, &tag, &first).await;
    assert_eq!(second, format!("{tag}#2"), "recomputed, not served old");
    for _ in 0..100 {
        assert_eq!(reader.scope(generation(&tag)).await, second);
    }
}

#[tokio::test]
async fn an_instance_reads_its_own_writes_and_sync_local_cache_reads_others() {
    let prefix = unique("layer-sync");
    let smache = instance(&redis_url(), &prefix);
    live(&smache).await;
    let tag = unique("own");
    let key = generation::key(&tag).unwrap();
    let first = smache.scope(generation(&tag)).await;
    assert_eq!(held(&smache, &tag).await, first);

    // Its own write: the next read sees it, with no wait.
    assert!(smache.invalidate(&key).await.unwrap());
    let second = smache.scope(generation(&tag)).await;
    assert_eq!(second, format!("{tag}#2"), "not {first}");
    assert_eq!(held(&smache, &tag).await, second);

    // A write on another connection, then the barrier: seen at once.
    let mut conn = redis_connection(&redis_url()).await;
    redis::cmd("DEL")
        .arg(smache.storage_key(&key))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    smache.sync_local_cache().await.unwrap();
    assert_eq!(smache.scope(generation(&tag)).await, format!("{tag}#3"));
}

#[tokio::test]
async fn a_layer_turned_off_answers_from_redis() {
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(unique("layer-off"))
        .local_cache_capacity(0)
        .build()
        .unwrap();
    assert!(smache.local_cache().is_none());
    let tag = unique("off");
    let value = smache.scope(generation(&tag)).await;
    assert_eq!(smache.scope(generation(&tag)).await, value);
    assert_eq!(CALLS.get(&tag), 1);
}

#[tokio::test]
async fn flushall_empties_the_layer() {
    let server = RedisServer::start();
    let smache = instance(&server.url(), &unique("flush"));
    live(&smache).await;
    let tag = unique("flush");
    let first = smache.scope(generation(&tag)).await;
    assert_eq!(held(&smache, &tag).await, first);

    let mut conn = redis_connection(&server.url()).await;
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    smache.sync_local_cache().await.unwrap();
    assert_eq!(
        smache.scope(generation(&tag)).await,
        format!("{tag}#2"),
        "the flushed value is not served"
    );
}

#[tokio::test]
async fn a_lost_connection_flushes_the_layer_and_a_restart_serves_nothing_old() {
    let mut server = RedisServer::start();
    let smache = instance(&server.url(), &unique("restart"));
    live(&smache).await;
    let tag = unique("restart");
    let first = smache.scope(generation(&tag)).await;
    assert_eq!(held(&smache, &tag).await, first);

    // Every client connection killed: the tracking connection with them.
    let mut conn = redis_connection(&server.url()).await;
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            smache.local_cache().unwrap().entries == 0
        })
        .await,
        "the layer was flushed"
    );
    live(&smache).await;
    assert_eq!(held(&smache, &tag).await, first, "still in Redis");

    // A restart without persistence: the value is gone from Redis, and
    // the layer does not serve it either.
    server.kill();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !smache.local_cache().unwrap().live
        })
        .await
    );
    server.resume();
    live(&smache).await;
    assert_eq!(
        smache.scope(generation(&tag)).await,
        format!("{tag}#2"),
        "the first read after the restart serves nothing old"
    );
}

/// Redis hangs (seen through a proxy that drops the connections and then
/// accepts new ones without ever answering): the layer turns off and
/// serves nothing, keeps trying, and comes back once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_redis_turns_the_layer_off_until_it_answers() {
    let server = RedisServer::start();
    let mut proxy = TcpProxy::start(&server.address()).await;
    let smache = Smache::builder()
        .redis_url(format!("redis://127.0.0.1:{}/", proxy.port()))
        .prefix(unique("silent"))
        .op_timeout(Duration::from_millis(300))
        .local_cache_capacity(smache::DEFAULT_LOCAL_CACHE_CAPACITY)
        .build()
        .unwrap();
    live(&smache).await;
    let tag = unique("silent");
    let first = smache.scope(generation(&tag)).await;
    assert_eq!(held(&smache, &tag).await, first);

    proxy.mute().await;
    let muted = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !smache.local_cache().unwrap().live
        })
        .await,
        "the layer still serves over a silent connection"
    );
    // At once (the connection was dropped); a silent death would take the
    // heartbeat (500 ms) and the operation timeout. Slack for a loaded
    // machine.
    assert!(
        muted.elapsed() < Duration::from_secs(3),
        "{:?}",
        muted.elapsed()
    );
    let second = smache.scope(generation(&tag)).await;
    assert_eq!(
        second,
        format!("{tag}#2"),
        "computed, not served from memory"
    );
    assert_eq!(smache.local_cache().unwrap().entries, 0);

    proxy.restore().await;
    live(&smache).await;
    let kept = held(&smache, &tag).await;
    assert!(kept == first || kept == second, "{kept}");
}

/// `size` bytes for `n`.
#[computed(Raw, Raw)]
async fn block(n: u32, size: usize) -> String {
    format!("{n:>size$}")
}

#[tokio::test]
async fn the_byte_bound_holds_under_a_working_set_ten_times_its_size() {
    const CAPACITY: u64 = 64 * 1024;
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(unique("bound"))
        .local_cache_capacity(CAPACITY)
        .build()
        .unwrap();
    live(&smache).await;
    // 640 values of 1 KiB: ten times the layer. The first round computes
    // them (a value this process stores is not kept: it is read back from
    // Redis, into the layer, by the next rounds).
    for round in 0..4 {
        for n in 0..640 {
            assert_eq!(smache.scope(block(n, 1024)).await.len(), 1024, "{round}");
        }
        let layer = smache.local_cache().unwrap();
        assert!(layer.bytes <= CAPACITY, "{layer:?}");
        assert!(layer.entries < 640, "{layer:?}");
        assert!(round == 0 || layer.entries > 0, "{layer:?}");
    }
}

/// On a `current_thread` runtime whose only task keeps answering hits
/// (which never yield), and from synchronous functions on a plain thread,
/// invalidations still land: they are applied on the layer's own thread.
#[test]
fn invalidations_land_while_the_reader_never_yields() {
    let prefix = unique("busy");
    let writer_runtime = tokio::runtime::Runtime::new().unwrap();
    let writer = writer_runtime.block_on(async { instance(&redis_url(), &prefix) });
    let reader = writer_runtime.block_on(async {
        let reader = instance(&redis_url(), &prefix);
        live(&reader).await;
        reader
    });
    let (tag, sync_tag) = (unique("busy"), unique("busy-sync"));
    let first = writer_runtime.block_on(writer.scope(generation(&tag)));
    let first_sync = writer.scope_sync(|| generation_sync(&sync_tag));
    // Both values in the reader's layer: its loops below are hits from
    // memory, which never yield.
    writer_runtime.block_on(async {
        assert_eq!(held(&reader, &tag).await, first);
        for _ in 0..200 {
            reader.scope_sync(|| generation_sync(&sync_tag));
            if reader.local_cache().unwrap().entries >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(reader.local_cache().unwrap().entries, 2);
    });
    let started = Arc::new(AtomicBool::new(false));

    let busy = {
        let (reader, tag, first, started) = (
            reader.clone(),
            tag.clone(),
            first.clone(),
            Arc::clone(&started),
        );
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let value = reader.scope(generation(&tag)).await;
                    started.store(true, Ordering::SeqCst);
                    if value != first || Instant::now() > deadline {
                        return value;
                    }
                }
            })
        })
    };
    let plain = {
        let (reader, tag, first) = (reader.clone(), sync_tag.clone(), first_sync.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let value = reader.scope_sync(|| generation_sync(&tag));
                if value != first || Instant::now() > deadline {
                    return value;
                }
            }
        })
    };
    while !started.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    writer_runtime.block_on(async {
        for key in [generation::key(&tag), generation_sync::key(&sync_tag)] {
            assert!(writer.invalidate(&key.unwrap()).await.unwrap());
        }
    });
    assert_eq!(busy.join().unwrap(), format!("{tag}#2"));
    assert_eq!(plain.join().unwrap(), format!("{sync_tag}#2"));
}

// ---- several OS processes, values refreshed by an executor ----

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[computed(User)]
async fn badge(user: &User) -> String {
    user.name.clone()
}

/// The environment of a reader process: `<prefix> <database> <user id>
/// <last value>`.
const READER: &str = "SMACHE_TEST_LAYER_READER";

/// Run as a child process by the test below (ignored otherwise): reads
/// the badge as fast as it can and prints every value it sees change to,
/// with the time (Unix ms), until half a second after it saw the last
/// value (or a minute passes).
#[tokio::test]
#[ignore = "a child process of a_value_refreshed_by_the_executor_is_never_served_old_by_any_process"]
async fn layer_reader_process() {
    let Ok(args) = std::env::var(READER) else {
        return;
    };
    let args: Vec<&str> = args.split(' ').collect();
    let (prefix, database, id, last_value) = (args[0], args[1], args[2], args[3]);
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let smache = Smache::builder()
        .redis_url(redis_url())
        .mongodb(&client, database)
        .prefix(prefix)
        .local_cache_capacity(smache::DEFAULT_LOCAL_CACHE_CAPACITY)
        .build()
        .unwrap();
    live(&smache).await;
    let user: User = client
        .database(database)
        .collection::<User>("users")
        .find_one(doc! { "_id": ObjectId::parse_str(id).unwrap() })
        .await
        .unwrap()
        .unwrap();
    let mut deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let value = smache.scope(badge(&user)).await;
        if value != last {
            println!("seen {value} {}", now_ms());
            if value == last_value {
                deadline = Instant::now() + Duration::from_millis(500);
            }
            last = value;
        }
        tokio::task::yield_now().await;
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_refreshed_by_the_executor_is_never_served_old_by_any_process() {
    smache_suite::init_logs();
    const ROUNDS: u32 = 8;
    let database = unique("layer").replace('-', "_");
    let prefix = unique("lp");
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let db = client.database(&database);
    let smache = Smache::builder()
        .redis_url(redis_url())
        .mongodb(&client, &database)
        .prefix(&prefix)
        .run_executor()
        .build()
        .unwrap();
    let user = User {
        id: ObjectId::new(),
        name: "g0".into(),
    };
    db.collection::<User>("users")
        .insert_one(&user)
        .await
        .unwrap();
    assert_eq!(smache.scope(badge(&user)).await, "g0");
    let mut worker = WorkerProcess::start(&redis_url(), &mongodb_uri(), &database, &prefix);
    worker.wait_watching(Duration::from_secs(20)).await;

    let readers: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "layer_reader_process",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env(
                    READER,
                    format!("{prefix} {database} {} g{ROUNDS}", user.id.to_hex()),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut stored_at = Vec::new();
    for round in 1..=ROUNDS {
        let name = format!("g{round}");
        db.collection::<User>("users")
            .update_one(doc! { "_id": user.id }, doc! { "$set": { "name": &name } })
            .await
            .unwrap();
        let key = badge::key(&user).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while smache.scope(badge(&user)).await != name {
            assert!(
                Instant::now() < deadline,
                "round {round} not refreshed\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(smache.is_fresh(&key).await.unwrap());
        stored_at.push(now_ms());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    worker.terminate();

    for reader in readers {
        let output = reader.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        let seen: Vec<(u32, u128)> = out
            .lines()
            .filter_map(|line| line.strip_prefix("seen g"))
            .map(|rest| {
                let (round, at) = rest.split_once(' ').unwrap();
                (round.parse().unwrap(), at.parse().unwrap())
            })
            .collect();
        assert!(!seen.is_empty(), "the reader saw nothing:\n{out}");
        for pair in seen.windows(2) {
            assert!(
                pair[1].0 > pair[0].0,
                "a reader went back to an older value: {seen:?}"
            );
        }
        assert_eq!(seen.last().unwrap().0, ROUNDS, "{seen:?}");
        // Each refreshed value reached the reader within a second of its
        // store (speed is the benchmark's: P1e).
        for (round, at) in &seen {
            if *round > 0 {
                let stored = stored_at[*round as usize - 1];
                assert!(
                    *at <= stored + 1000,
                    "round {round} reached a reader {} ms after its store",
                    at.saturating_sub(stored)
                );
            }
        }
    }
    let _ = db.drop().await;
}
