//! A change with many dependants (over a chunk of 1,000 in one shard): an
//! executor marks them all, one script a chunk, before their recomputes
//! are done, and an executor that stops between two chunks leaves the
//! rest to the next one, which goes on after the last chunk signalled.
//!
//! Every instance here has one shard, whatever the pass's
//! `SMACHE_REDIS_SHARDS`, so that all the dependants are in one set; the
//! change is the plans collection's, signalled as the watching worker
//! would (no worker runs).

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use smache::{computed, Entity, Smache};
use smache_suite::layout::{touch, value_id, Layout};
use smache_suite::{eventually, quiesced, redis_connection, redis_url, unique};

const PARENTS: u32 = 2_500; // 3 chunks of at most 1,000

/// The tests take turns: one sets a process-wide crash point that the
/// others' fan-outs must not meet.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Tags whose parents' recomputes wait (see [`held_parent`]).
static HELD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn held(tag: &str) -> bool {
    HELD.lock().unwrap().contains(tag)
}

fn hold(tag: &str, on: bool) {
    let mut held = HELD.lock().unwrap();
    if on {
        held.insert(tag.to_owned());
    } else {
        held.remove(tag);
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "plans")]
struct Plan {
    #[serde(rename = "_id")]
    id: i64,
}

/// Depends on the plans; while `tag` is held, its recomputes wait.
#[computed(Raw, Raw, sources(Plan))]
async fn held_parent(tag: String, n: u32) -> String {
    while held(&tag) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    format!("{n} of {tag}")
}

/// Runs of [`counted_parent`].
static COUNTED_RUNS: AtomicU64 = AtomicU64::new(0);

/// Depends on the plans; counts its runs.
#[computed(Raw, Raw, sources(Plan))]
async fn counted_parent(tag: String, n: u32) -> String {
    COUNTED_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{n} of {tag}")
}

/// A crash point set until dropped (a failing test leaves none set for
/// the next).
struct FailPoint(&'static str);

impl FailPoint {
    fn set(name: &'static str, action: &str) -> FailPoint {
        fail::cfg(name, action).unwrap();
        FailPoint(name)
    }
}

impl Drop for FailPoint {
    fn drop(&mut self) {
        fail::remove(self.0);
    }
}

/// Depends on the plans.
#[computed(Raw, Raw, sources(Plan))]
async fn plain_parent(tag: String, n: u32) -> String {
    format!("{n} of {tag}")
}

fn instance() -> Smache {
    Smache::builder()
        .redis_url(redis_url())
        .prefix(unique("fo"))
        .redis_shards(1)
        .build()
        .unwrap()
}

/// How many of `keys` are fresh.
async fn fresh_among(smache: &Smache, keys: &[smache::CacheKey]) -> usize {
    let mut fresh = 0;
    for key in keys {
        if smache.is_fresh(key).await.unwrap() {
            fresh += 1;
        }
    }
    fresh
}

/// The plans changed, as the watching worker tells the instance's one
/// shard: the `PARENTS` values that depend on them are signalled through
/// one fan-out job (no executor runs yet). The instance's layout.
async fn plans_changed(smache: &Smache) -> Layout {
    let layout = Layout::of(smache).await;
    let mut conn = redis_connection(&redis_url()).await;
    touch(&mut conn, &layout.bases()[0], "c:plans").await;
    let jobs = layout.jobs(&mut conn).await;
    assert_eq!(jobs.len(), 1, "one fan-out job, no recompute job yet");
    assert_eq!(jobs[0].get::<String>("fan").as_deref(), Some("c:plans"));
    layout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_with_many_dependants_marks_them_all_while_their_recomputes_wait() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let smache = instance();
    let tag = unique("held");
    let keys: Vec<_> = (0..PARENTS)
        .map(|n| held_parent::key(tag.clone(), n).unwrap())
        .collect();
    for n in 0..PARENTS {
        smache.scope(held_parent(tag.clone(), n)).await;
    }
    hold(&tag, true);
    plans_changed(&smache).await;

    // Every recompute the first chunk queues waits, filling the executor:
    // the other chunks are marked all the same.
    let executor = smache::executor::spawn(&smache);
    let all_marked = eventually(Duration::from_secs(20), || {
        let (smache, keys) = (smache.clone(), keys.clone());
        async move { fresh_among(&smache, &keys).await == 0 }
    })
    .await;
    let still_fresh = fresh_among(&smache, &keys).await;
    hold(&tag, false);
    assert!(
        all_marked,
        "{still_fresh} of {PARENTS} dependants still said fresh while the recomputes waited"
    );

    assert!(
        quiesced(&smache, Duration::from_secs(60)).await,
        "jobs left"
    );
    assert_eq!(fresh_among(&smache, &keys).await, keys.len());
    executor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_stopped_between_chunks_leaves_the_rest_to_the_next_one() {
    const BETWEEN_CHUNKS: &str = "smache::executor::fan_out::between_chunks";
    let _turn = ONE_AT_A_TIME.lock().await;
    let smache = instance();
    let tag = unique("cut");
    let keys: Vec<_> = (0..PARENTS)
        .map(|n| counted_parent::key(tag.clone(), n).unwrap())
        .collect();
    for n in 0..PARENTS {
        smache.scope(counted_parent(tag.clone(), n)).await;
    }
    let layout = plans_changed(&smache).await;
    let mut conn = redis_connection(&redis_url()).await;

    // The first executor signals one chunk, then its fan-out stops (as if
    // it died there: the job held, not acknowledged; reclaimed only once
    // idle for RECLAIM_AFTER) and it runs the recomputes that chunk queued
    // (SSCAN's chunks are about 1,000).
    // Under RECLAIM_AFTER (30 s) less a heartbeat: the first executor
    // must not reclaim the job itself meanwhile.
    let cut = FailPoint::set(BETWEEN_CHUNKS, "return");
    let before = COUNTED_RUNS.load(Ordering::SeqCst);
    let first = smache::executor::spawn(&smache);
    let one_chunk_done = eventually(Duration::from_secs(15), || {
        let layout = layout.clone();
        async move {
            let mut conn = redis_connection(&redis_url()).await;
            layout.jobs_len(&mut conn).await == 1 && COUNTED_RUNS.load(Ordering::SeqCst) > before
        }
    })
    .await;
    drop(cut);
    let first_chunk = COUNTED_RUNS.load(Ordering::SeqCst) - before;
    assert!(
        one_chunk_done && (900..=1_100).contains(&first_chunk),
        "one chunk recomputed ({first_chunk} runs), the fan-out job left"
    );
    first.shutdown().await.unwrap();
    let records = format!("{}fo:*", layout.bases()[0]);
    let left: Vec<String> = conn.keys(&records).await.unwrap();
    assert_eq!(left.len(), 1, "the fan-out recorded how far it got");

    // The next executor reclaims the job and goes on after that chunk: the
    // recomputed 1,000 are not signalled again (each parent runs once).
    assert_eq!(layout.age_held_jobs(&mut conn).await, 1);
    let next = smache::executor::spawn(&smache);
    assert!(
        quiesced(&smache, Duration::from_secs(60)).await,
        "jobs left"
    );
    assert_eq!(fresh_among(&smache, &keys).await, keys.len());
    assert_eq!(
        COUNTED_RUNS.load(Ordering::SeqCst) - before,
        u64::from(PARENTS),
        "every parent recomputed once"
    );
    let left: Vec<String> = conn.keys(&records).await.unwrap();
    assert!(
        left.is_empty(),
        "the fan-out's record went with it: {left:?}"
    );
    next.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_job_of_an_earlier_version_goes_on_from_its_own_cursor() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let smache = instance();
    let tag = unique("chain");
    for n in 0..PARENTS {
        smache.scope(plain_parent(tag.clone(), n)).await;
    }
    let layout = Layout::of(&smache).await;
    let base = layout.bases()[0].clone();
    let mut conn = redis_connection(&redis_url()).await;

    // What an earlier version queued after signalling a first chunk: a
    // job of the next chunk, at the cursor that chunk's SSCAN returned.
    let (cursor, first): (String, Vec<String>) = redis::cmd("SSCAN")
        .arg(format!("{base}r:c:plans"))
        .arg(0)
        .arg("COUNT")
        .arg(1_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_ne!(cursor, "0", "more than one chunk");
    let _: String = redis::cmd("XADD")
        .arg(format!("{base}jobs"))
        .arg("*")
        .arg("fan")
        .arg("c:plans")
        .arg("cur")
        .arg(&cursor)
        .query_async(&mut conn)
        .await
        .unwrap();

    let executor = smache::executor::spawn(&smache);
    assert!(
        quiesced(&smache, Duration::from_secs(60)).await,
        "jobs left"
    );
    executor.shutdown().await.unwrap();
    let first: HashSet<String> = first.into_iter().collect();
    let (mut untouched, mut recomputed) = (0, 0);
    for n in 0..PARENTS {
        let key = plain_parent::key(tag.clone(), n).unwrap();
        let entry = smache.entry(&key).await.unwrap().expect("stored");
        assert!(!entry.is_stale());
        let in_first = first.contains(&value_id(&smache, &key));
        match (in_first, entry.version()) {
            (true, 1) => untouched += 1,
            (false, version) if version >= 2 => recomputed += 1,
            (in_first, version) => {
                panic!("parent {n} (first chunk: {in_first}) at version {version}")
            }
        }
    }
    assert_eq!(
        untouched,
        first.len(),
        "the first chunk is not signalled again"
    );
    assert_eq!(recomputed + untouched, PARENTS as usize);
    let left: Vec<String> = conn.keys(format!("{base}fo:*")).await.unwrap();
    assert!(
        left.is_empty(),
        "the fan-out's record went with it: {left:?}"
    );
}
