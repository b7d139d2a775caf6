//! Executors over a store of several shards (#16 step 3), on one Redis:
//! every shard's stream is read, each job is acknowledged, dead-lettered
//! and reclaimed in its own shard, the doorbell wakes an idle executor,
//! and a value stored anew tells its dependants in the other shards (the
//! fan-all job).
//!
//! Every test here builds its instances with 4 shards
//! (`SmacheBuilder::redis_shards`, whatever the pass's
//! `SMACHE_REDIS_SHARDS`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::AsyncCommands;
use smache::{computed, Retry, Smache, Submitted};
use smache_suite::{eventually, redis_connection, redis_url, unique, RedisConn};

const SHARDS: usize = 4;

/// Doubles `n` after `millis` ms, counting its runs in Redis.
#[computed(Raw, Raw, Raw)]
async fn slow_double(tag: String, n: u64, millis: u64) -> u64 {
    let mut conn = redis_connection(&redis_url()).await;
    let _: u64 = conn.incr(format!("{tag}:runs"), 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(millis)).await;
    n * 2
}

/// What `{tag}:n` holds now (a stand-in for a document).
#[computed(Raw)]
async fn setting(tag: String) -> String {
    let mut conn = redis_connection(&redis_url()).await;
    let n: Option<u64> = conn.get(format!("{tag}:n")).await.unwrap();
    format!("setting {}", n.unwrap_or(0))
}

/// Depends on `setting` through the edge the test writes (as a nested
/// read writes it edge-first, #16 item 3): `k` only spreads its values
/// over the shards.
#[computed(Raw, Raw)]
async fn built_on_setting(tag: String, k: u32) -> String {
    let _ = tag;
    format!("built {k}")
}

fn instance(prefix: &str) -> Smache {
    Smache::builder()
        .redis_url(redis_url())
        .prefix(prefix)
        .redis_shards(SHARDS)
        .retry(Retry::none())
        .executor_concurrency(1)
        .build()
        .unwrap()
}

/// The shard base of a storage key, `{prefix#<n>}:`.
fn base_of(storage_key: &str) -> String {
    let end = storage_key.find("}:").expect("a tagged key") + 2;
    storage_key[..end].to_owned()
}

/// Each shard's jobs stream, by shard, as `inspect` names them.
async fn streams(smache: &Smache) -> Vec<String> {
    let report = smache.inspect_jobs().await.unwrap();
    report
        .shards
        .iter()
        .map(|shard| shard.stream.clone())
        .collect()
}

/// The shard whose base is `base`.
fn shard_of(streams: &[String], base: &str) -> usize {
    streams
        .iter()
        .position(|stream| *stream == format!("{base}jobs"))
        .expect("one of the shards")
}

/// Submits `count` values of `slow_double`, none computed yet: their
/// tasks.
async fn submit_all(smache: &Smache, tag: &str, count: u64, millis: u64) -> Vec<smache::Task<u64>> {
    let mut tasks = Vec::new();
    for n in 0..count {
        match smache
            .scope(slow_double::submit(tag.to_owned(), n, millis))
            .await
            .unwrap()
        {
            Submitted::Pending(task) => tasks.push(task),
            Submitted::Ready(_) => panic!("nothing computed yet"),
        }
    }
    tasks
}

/// The doorbell channel of the instance of `prefix`.
fn bell(prefix: &str) -> String {
    format!("{{{prefix}}}:bell")
}

/// Submits `count` values of `slow_double` with no executor running; the
/// tasks, and how many jobs each shard's stream holds.
async fn submit_spread(
    smache: &Smache,
    tag: &str,
    count: u64,
    millis: u64,
) -> (Vec<smache::Task<u64>>, Vec<u64>) {
    let tasks = submit_all(smache, tag, count, millis).await;
    let report = smache.inspect_jobs().await.unwrap();
    let per_shard = report.shards.iter().map(|shard| shard.queued).collect();
    assert_eq!(report.queued, count, "every job counted, over every shard");
    (tasks, per_shard)
}

/// Who holds entries of each shard's stream now.
async fn holders(conn: &mut RedisConn, streams: &[String]) -> HashSet<String> {
    let mut seen = HashSet::new();
    for stream in streams {
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg("executors")
            .query_async(conn)
            .await
            .unwrap_or(redis::Value::Nil);
        if let redis::Value::Array(parts) = summary {
            if let Some(redis::Value::Array(consumers)) = parts.get(3) {
                for consumer in consumers {
                    if let redis::Value::Array(pair) = consumer {
                        if let Some(redis::Value::BulkString(name)) = pair.first() {
                            seen.insert(String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
            }
        }
    }
    seen
}

async fn all_done(smache: &Smache, tasks: Vec<smache::Task<u64>>) -> Vec<u64> {
    let mut values = Vec::new();
    for task in tasks {
        let value = tokio::time::timeout(Duration::from_secs(30), task.wait())
            .await
            .expect("the task finishes")
            .unwrap();
        values.push(value);
    }
    // Acknowledged: nothing left in any shard's stream, nothing held.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let report = smache.inspect_jobs().await.unwrap();
            report.queued == 0 && report.held == 0
        })
        .await,
        "every job acknowledged in its shard: {}",
        smache.inspect_jobs().await.unwrap()
    );
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_executor_runs_and_acknowledges_the_jobs_of_every_shard() {
    let smache = instance(&unique("spread-one"));
    let tag = unique("spread-one-tag");
    let (tasks, per_shard) = submit_spread(&smache, &tag, 16, 0).await;
    assert_eq!(per_shard.len(), SHARDS);
    assert!(
        per_shard.iter().filter(|queued| **queued > 0).count() >= 3,
        "16 values spread over the shards: {per_shard:?}"
    );
    let executor = smache::executor::spawn(&smache);
    let values = all_done(&smache, tasks).await;
    assert_eq!(values, (0..16).map(|n| n * 2).collect::<Vec<_>>());
    executor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_executors_share_the_jobs_of_every_shard() {
    let prefix = unique("spread-two");
    let smache = instance(&prefix);
    let tag = unique("spread-two-tag");
    let (tasks, per_shard) = submit_spread(&smache, &tag, 12, 250).await;
    assert!(per_shard.iter().filter(|queued| **queued > 0).count() >= 2);
    let streams = streams(&smache).await;
    // Two executors, one job at a time each.
    let first = smache::executor::spawn(&smache);
    let other = instance(&prefix);
    let second = smache::executor::spawn(&other);
    let mut conn = redis_connection(&redis_url()).await;
    let mut seen = HashSet::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        seen.extend(holders(&mut conn, &streams).await);
        let runs: Option<u64> = conn.get(format!("{tag}:runs")).await.unwrap();
        if runs == Some(12) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let values = all_done(&smache, tasks).await;
    assert_eq!(values, (0..12).map(|n| n * 2).collect::<Vec<_>>());
    assert_eq!(seen.len(), 2, "both executors held jobs: {seen:?}");
    let runs: Option<u64> = conn.get(format!("{tag}:runs")).await.unwrap();
    assert_eq!(runs, Some(12), "each job ran once");
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_dead_lettered_in_its_own_shard_and_counted() {
    let smache = instance(&unique("spread-dead"));
    let streams = streams(&smache).await;
    let shard = SHARDS - 1;
    let mut conn = redis_connection(&redis_url()).await;
    // A job no executor can run (no known kind), in the last shard.
    let _: String = conn
        .xadd(&streams[shard], "*", &[("nonsense", "1")])
        .await
        .unwrap();
    let executor = smache::executor::spawn(&smache);
    assert!(
        eventually(Duration::from_secs(10), || async {
            smache.inspect_jobs().await.unwrap().dead == 1
        })
        .await,
        "dead-lettered"
    );
    let report = smache.inspect_jobs().await.unwrap();
    assert_eq!(report.queued, 0, "acknowledged");
    for (at, counted) in report.shards.iter().enumerate() {
        let expected = u64::from(at == shard);
        assert_eq!(counted.dead, expected, "shard {at}: {report}");
        let dead_key = counted.stream.replace("jobs", "dead");
        let length: u64 = conn.xlen(&dead_key).await.unwrap();
        assert_eq!(length, expected, "{dead_key}");
    }
    assert_eq!(report.recent_dead.len(), 1);
    assert!(
        report.recent_dead[0].reason.contains("no known kind"),
        "{:?}",
        report.recent_dead[0]
    );
    executor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_held_by_a_dead_executor_in_another_shard_is_reclaimed_and_run() {
    let smache = instance(&unique("spread-reclaim"));
    let streams = streams(&smache).await;
    let tag = unique("spread-reclaim-tag");
    // A value whose job lands in a shard other than 0.
    let mut chosen = None;
    for n in 0..64 {
        let key = slow_double::key(tag.clone(), n, 0).unwrap();
        let shard = shard_of(&streams, &base_of(&smache.storage_key(&key)));
        if shard != 0 {
            chosen = Some((n, shard));
            break;
        }
    }
    let (n, shard) = chosen.expect("some value outside shard 0");
    let task = match smache
        .scope(slow_double::submit(tag.clone(), n, 0))
        .await
        .unwrap()
    {
        Submitted::Pending(task) => task,
        Submitted::Ready(_) => panic!("nothing computed yet"),
    };
    // An executor that read it and died: the job is held by it, idle for
    // longer than RECLAIM_AFTER.
    let mut conn = redis_connection(&redis_url()).await;
    let stream = &streams[shard];
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("executors")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("executors")
        .arg("dead-executor")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 1, "the task's job, in shard {shard}");
    let idle = smache::executor::RECLAIM_AFTER + Duration::from_secs(5);
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(stream)
        .arg("executors")
        .arg("dead-executor")
        .arg(0)
        .arg(&ids[0])
        .arg("IDLE")
        .arg(u64::try_from(idle.as_millis()).unwrap())
        .arg("JUSTID")
        .query_async(&mut conn)
        .await
        .unwrap();

    let executor = smache::executor::spawn(&smache);
    let value = tokio::time::timeout(Duration::from_secs(15), task.wait())
        .await
        .expect("reclaimed and run")
        .unwrap();
    assert_eq!(value, n * 2);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let length: u64 = redis_connection(&redis_url())
                .await
                .xlen(stream)
                .await
                .unwrap();
            length == 0
        })
        .await,
        "acknowledged in shard {shard}"
    );
    executor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_stored_anew_or_dropped_tells_its_dependants_in_other_shards() {
    let smache = instance(&unique("spread-fan"));
    let streams = streams(&smache).await;
    let tag = unique("spread-fan-tag");
    let child_key = setting::key(tag.clone()).unwrap();
    let child_storage = smache.storage_key(&child_key);
    let child_base = base_of(&child_storage);
    let child_id = child_storage[child_base.len() + 2..].to_owned();
    // A dependant in another shard than the value it depends on.
    let k = (0..64)
        .find(|k| {
            let key = built_on_setting::key(tag.clone(), *k).unwrap();
            base_of(&smache.storage_key(&key)) != child_base
        })
        .expect("some dependant in another shard");
    let parent_key = built_on_setting::key(tag.clone(), k).unwrap();
    let parent_storage = smache.storage_key(&parent_key);
    let parent_base = base_of(&parent_storage);
    let parent_id = parent_storage[parent_base.len() + 2..].to_owned();
    assert_eq!(smache.scope(setting(tag.clone())).await, "setting 0");
    assert_eq!(
        smache.scope(built_on_setting(tag.clone(), k)).await,
        format!("built {k}")
    );
    // What the first stores queued runs (no fan-out job: no value of
    // another shard has read them yet).
    let executor = smache::executor::spawn(&smache);
    assert!(
        eventually(Duration::from_secs(10), || async {
            smache.inspect_jobs().await.unwrap().queued == 0
        })
        .await
    );
    // The reverse edge, in the dependant's shard, and that shard among the
    // value's readers, in the value's shard (what a nested read writes
    // first: Store::edge_first).
    let mut conn = redis_connection(&redis_url()).await;
    let _: u64 = conn
        .sadd(format!("{parent_base}r:v:{child_id}"), &parent_id)
        .await
        .unwrap();
    let _: u64 = conn
        .sadd(format!("{child_base}rd:{child_id}"), &parent_base)
        .await
        .unwrap();
    let version = |smache: Smache, key: smache::CacheKey| async move {
        smache
            .entry(&key)
            .await
            .unwrap()
            .filter(|entry| !entry.is_stale())
            .map(|entry| entry.version())
    };
    assert_eq!(version(smache.clone(), parent_key.clone()).await, Some(1));

    // The setting changes, and its value is recomputed (the worker's
    // recompute job, in its own shard) and stored anew: its own shard has
    // no dependant, the fan-all job finds the one in the other shard
    // (version 2 or more: at most one recompute more is the protocol's).
    let _: () = conn.set(format!("{tag}:n"), 1).await.unwrap();
    let _: String = conn
        .xadd(format!("{child_base}jobs"), "*", &[("id", &child_id)])
        .await
        .unwrap();
    let ok = eventually(Duration::from_secs(15), || async {
        version(smache.clone(), parent_key.clone()).await >= Some(2)
    })
    .await;
    assert!(
        ok,
        "the dependant in shard {} recomputed after the store in shard {}",
        shard_of(&streams, &parent_base),
        shard_of(&streams, &child_base)
    );
    assert_eq!(smache.scope(setting(tag.clone())).await, "setting 1");

    // Dropping the value tells it too, once the jobs of the store are done.
    // (The dependant's recompute reads the dropped setting, so computes and
    // stores it, which tells the dependant once more: its version may pass
    // the next one before a poll sees it.)
    assert!(smache_suite::quiesced(&smache, Duration::from_secs(10)).await);
    let before = version(smache.clone(), parent_key.clone()).await;
    assert!(before >= Some(2), "{before:?}");
    assert!(smache.invalidate(&child_key).await.unwrap());
    assert!(
        eventually(Duration::from_secs(15), || async {
            version(smache.clone(), parent_key.clone()).await > before
        })
        .await,
        "the dependant recomputed after the drop: {:?}",
        smache
            .entry(&parent_key)
            .await
            .unwrap()
            .map(|e| (e.version(), e.is_stale()))
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            smache.inspect_jobs().await.unwrap().queued == 0
        })
        .await,
        "every job acknowledged, the fan-all jobs too"
    );
    let dead: u64 = smache.inspect_jobs().await.unwrap().dead;
    assert_eq!(dead, 0);
    executor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queueing_a_job_rings_the_doorbell_and_wakes_an_idle_executor() {
    let prefix = unique("spread-bell");
    let smache = instance(&prefix);
    let tag = unique("spread-bell-tag");
    let client = redis::Client::open(smache_suite::one_node_url(&redis_url())).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(bell(&prefix)).await.unwrap();
    let mut rings = pubsub.into_on_message();
    match smache
        .scope(slow_double::submit(tag.clone(), 1, 0))
        .await
        .unwrap()
    {
        Submitted::Pending(task) => {
            let rang = tokio::time::timeout(Duration::from_secs(5), rings.next()).await;
            let Ok(Some(ring)) = rang else {
                panic!("the submit rang the bell");
            };
            // Naming the shard whose stream holds the job, which a woken
            // executor reads first.
            let base: String = ring.get_payload().unwrap();
            let mut conn = redis_connection(&redis_url()).await;
            let queued: u64 = conn.xlen(format!("{base}jobs")).await.unwrap();
            assert!(
                base.starts_with(&format!("{{{prefix}#")) && queued == 1,
                "the ring names the job's shard: {base:?}, {queued} job(s) there"
            );
            let executor = smache::executor::spawn(&smache);
            assert_eq!(task.wait().await.unwrap(), 2);
            // Idle now: each job is picked up at once, not at the next
            // sweep (up to a second later) as it would be without a bell.
            let mut slowest = Duration::ZERO;
            for n in 2..10 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let started = Instant::now();
                match smache
                    .scope(slow_double::submit(tag.clone(), n, 0))
                    .await
                    .unwrap()
                {
                    Submitted::Pending(task) => assert_eq!(task.wait().await.unwrap(), n * 2),
                    Submitted::Ready(_) => panic!("nothing computed yet"),
                }
                slowest = slowest.max(started.elapsed());
            }
            assert!(
                slowest < Duration::from_millis(700),
                "an idle executor heard the bell: slowest {slowest:?}"
            );
            executor.shutdown().await.unwrap();
        }
        Submitted::Ready(_) => panic!("nothing computed yet"),
    }
}

/// An executor of `prefix`, idle: subscribed to the bell, its first
/// sweep done, so that what a ring names is read by the named read. (On
/// a cluster a node counts its own subscribers only: there the wait for
/// the subscription may see none, and the pause alone is relied on.)
async fn idle_executor(smache: &Smache, prefix: &str) -> smache::executor::ExecutorHandle {
    let executor = smache::executor::spawn(smache);
    let bell = bell(prefix);
    let _subscribed = eventually(Duration::from_secs(5), || async {
        let mut conn = redis_connection(&redis_url()).await;
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&bell)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        counts.iter().any(|(_, n)| *n > 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    executor
}

/// An executor woken by the bell starts the recompute jobs it takes from
/// the shard named (lua/take.lua), but only those of functions it has: a
/// job of a function it lacks (a deploy in progress), once read, still
/// leaves its value pending, not marked as being recomputed, for an
/// executor that has the function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_starts_no_job_of_a_function_the_executor_lacks() {
    let prefix = unique("spread-take");
    let smache = instance(&prefix);
    let layout = smache_suite::layout::Layout::of(&smache).await;
    let executor = idle_executor(&smache, &prefix).await;
    let retired = "app::retired#3:\"x\"";
    let base = layout.base_of(retired).to_owned();
    let vkey = format!("{base}v:{retired}");
    let mut conn = redis_connection(&redis_url()).await;
    let _: () = conn
        .hset_multiple(
            &vkey,
            &[("v", "1"), ("d", "old"), ("g", "2"), ("w", "1"), ("q", "1")],
        )
        .await
        .unwrap();
    let _: String = conn
        .xadd(format!("{base}jobs"), "*", &[("id", retired)])
        .await
        .unwrap();
    // The bell, naming the job's shard, as a script queueing it rings it.
    let _: () = conn.publish(bell(&prefix), &base).await.unwrap();
    let stream = [format!("{base}jobs")];
    assert!(
        eventually(Duration::from_secs(10), || async {
            let mut conn = redis_connection(&redis_url()).await;
            !holders(&mut conn, &stream).await.is_empty()
        })
        .await,
        "the executor reads the job"
    );
    let (pending, started): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(&vkey)
        .arg("q")
        .arg("s")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.as_deref(), Some("1"), "still pending");
    assert_eq!(started, None, "not started");
    executor.shutdown().await.unwrap();
}

/// A server that lost the scripts (a restart, a failover to a replica
/// that never loaded them) answers the read of the shards the bell names
/// `NOSCRIPT`: the read loads its script again, and the jobs run, with no
/// read failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_after_the_server_forgets_the_scripts() {
    let logs = smache_suite::capture_logs("smache=warn");
    let prefix = unique("spread-noscript");
    let smache = instance(&prefix);
    let executor = idle_executor(&smache, &prefix).await;
    let mut conn = redis_connection(&redis_url()).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let tag = unique("spread-noscript-tag");
    let tasks = submit_all(&smache, &tag, 8, 0).await;
    let values = all_done(&smache, tasks).await;
    assert_eq!(values, (0..8).map(|n| n * 2).collect::<Vec<_>>());
    let failed: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|line| line.contains("reading jobs failed"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    executor.shutdown().await.unwrap();
}
