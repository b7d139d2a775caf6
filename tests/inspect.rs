//! Jobs an executor cannot finish are never lost: a job for a function no
//! process has stays queued and shows in `inspect`; a job that fails on
//! every attempt, or that is malformed, becomes a dead letter with why.

use std::time::Duration;

use redis::AsyncCommands;
use smache::{computed, Retry, Smache};
use smache_suite::layout::{value_base, value_id, Layout};
use smache_suite::{
    eventually, mongo_database, redis_connection, redis_url, unique, worker_binary,
};

/// Fails while `{tag}:broken` is set in Redis.
#[computed(Raw)]
async fn fragile(tag: String) -> Result<u32, String> {
    let mut conn = redis_connection(&redis_url()).await;
    let broken: bool = conn.exists(format!("{tag}:broken")).await.unwrap();
    if broken {
        return Err(format!("{tag} is broken"));
    }
    Ok(7)
}

fn with_executor(prefix: &str) -> Smache {
    Smache::builder()
        .redis_url(redis_url())
        .prefix(prefix)
        .retry(Retry::new(2, Duration::from_millis(10)))
        .run_executor()
        .build()
        .unwrap()
}

/// Queues a job in the jobs stream of the shard of `base` (`{prefix}:`,
/// or `{prefix#<n>}:` on a store of several).
async fn queue(base: &str, fields: &[(&str, &str)]) -> String {
    let mut conn = redis_connection(&redis_url()).await;
    conn.xadd(format!("{base}jobs"), "*", fields).await.unwrap()
}

#[tokio::test]
async fn a_recompute_failing_on_every_attempt_becomes_a_dead_letter() {
    let prefix = unique("inspect-dead");
    let tag = unique("inspect-dead-tag");
    let smache = with_executor(&prefix);
    assert_eq!(smache.scope(fragile(tag.clone())).await, Ok(7));
    let key = fragile::key(tag.clone()).unwrap();
    let (base, id) = (value_base(&smache, &key), value_id(&smache, &key));
    let mut conn = redis_connection(&redis_url()).await;
    let _: () = conn.set(format!("{tag}:broken"), 1).await.unwrap();
    let entry = queue(&base, &[("id", &id)]).await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            smache.inspect_jobs().await.unwrap().dead == 1
        })
        .await,
        "{}",
        smache.inspect_jobs().await.unwrap()
    );
    let report = smache.inspect_jobs().await.unwrap();
    assert_eq!(
        report.queued, 0,
        "acknowledged once dead-lettered\n{report}"
    );
    let letter = &report.recent_dead[0];
    assert_eq!(letter.job, format!("recompute {id}"));
    assert_eq!(
        letter.reason,
        format!("recompute failed on every attempt (2 runs): {tag} is broken")
    );
    // The letter keeps the job's own fields, to replay it by hand.
    let letters: redis::streams::StreamRangeReply =
        conn.xrange_all(format!("{base}dead")).await.unwrap();
    let fields = &letters.ids[0];
    assert_eq!(fields.get::<String>("id"), Some(id));
    assert_eq!(fields.get::<String>("job"), Some(entry));
    // The old value is kept, marked by nothing: the next change retries.
    assert_eq!(smache.scope(fragile(tag.clone())).await, Ok(7));
    smache.stop_executor().await.unwrap();
}

#[tokio::test]
async fn a_malformed_job_becomes_a_dead_letter() {
    let prefix = unique("inspect-malformed");
    let smache = with_executor(&prefix);
    let layout = Layout::of(&smache).await;
    let last = layout.bases().last().unwrap();
    queue(&layout.bases()[0], &[("what", "is this")]).await;
    queue(last, &[("id", "no-version-here")]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            smache.inspect_jobs().await.unwrap().dead == 2
        })
        .await
    );
    let report = smache.inspect_jobs().await.unwrap();
    let mut reasons: Vec<&str> = report
        .recent_dead
        .iter()
        .map(|l| l.reason.as_str())
        .collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            "a job of no known kind (no `id`, `cb`, `fan` or `rel` field)",
            "malformed value id"
        ]
    );
    assert_eq!(report.queued, 0, "{report}");
    smache.stop_executor().await.unwrap();
}

#[tokio::test]
async fn a_job_for_a_function_nobody_has_waits_and_shows_in_inspect() {
    let prefix = unique("inspect-orphan");
    let smache = with_executor(&prefix);
    let layout = Layout::of(&smache).await;
    let retired = "app::retired#3:\"x\"";
    queue(layout.base_of(retired), &[("id", retired)]).await;
    // An executor takes it, leaves it pending for one that has the
    // function, and says which functions it has.
    assert!(
        eventually(Duration::from_secs(10), || async {
            smache.inspect_jobs().await.unwrap().held == 1
        })
        .await
    );
    let report = smache.inspect_jobs().await.unwrap();
    assert_eq!(report.queued, 1, "{report}");
    assert_eq!(report.dead, 0, "never dropped nor dead-lettered\n{report}");
    let group = report
        .groups
        .iter()
        .find(|g| g.what == "recompute app::retired#3")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!((group.queued, group.held), (1, 1));
    assert!(group.orphaned(), "{report}");
    assert!(report
        .to_string()
        .contains("NONE: waits for an executor that has it"));

    // The executor announced the functions it has.
    let mut conn = redis_connection(&redis_url()).await;
    let announced: std::collections::HashMap<String, u64> = conn
        .hgetall(format!("{}fns", layout.instance()))
        .await
        .unwrap();
    assert!(
        announced.keys().any(|f| f.ends_with("fragile#1")),
        "{announced:?}"
    );

    // The same report from the command line.
    let output = std::process::Command::new(worker_binary())
        .args([
            "inspect",
            "jobs",
            "--redis-url",
            &redis_url(),
            "--prefix",
            &prefix,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("recompute app::retired#3"), "{stdout}");
    assert!(
        stdout.contains("NONE: waits for an executor that has it"),
        "{stdout}"
    );
    assert!(stdout.contains("1 queued, 1 held"), "{stdout}");
    smache.stop_executor().await.unwrap();
}

/// A `version` bump deployed: jobs of the old version wait for an executor
/// that has it only so long. Past the orphan timeout with no live executor
/// announcing the function, each is a dead letter with why; a recompute's
/// value loses its pending flag (its next change queues a job again) and,
/// stale, is recomputed by its next caller, and the values built on it are
/// told; a submitted task fails, so its waiters get an error, not a hang.
/// A function a live executor announced is never given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_no_live_executor_can_run_are_dead_letters_after_the_orphan_timeout() {
    let prefix = unique("inspect-orphan-timeout");
    let timeout = Duration::from_secs(3);
    let smache = Smache::builder()
        .redis_url(redis_url())
        .prefix(&prefix)
        .orphan_timeout(timeout)
        .run_executor()
        .build()
        .unwrap();
    let layout = Layout::of(&smache).await;
    let mut conn = redis_connection(&redis_url()).await;
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now_ms = seconds * 1000 + micros / 1000;

    // A stale value of the retired function, its recompute queued as a
    // change queues it, and a value built on it (a mark_stale one).
    let stale = "app::retired#3:\"stale\"";
    let built_on = "app::page#1:\"p\"";
    let _: () = conn
        .hset_multiple(
            format!("{}v:{stale}", layout.base_of(stale)),
            &[
                ("v", "1"),
                ("d", "old"),
                ("g", "2"),
                ("w", "1"),
                ("q", "1"),
                ("t", &(now_ms - 1000).to_string()),
            ],
        )
        .await
        .unwrap();
    let _: () = conn
        .hset_multiple(
            format!("{}v:{built_on}", layout.base_of(built_on)),
            &[
                ("v", "1"),
                ("d", "page"),
                ("g", "0"),
                ("w", "0"),
                ("m", "1"),
            ],
        )
        .await
        .unwrap();
    let _: () = conn
        .sadd(format!("{}r:v:{stale}", layout.base_of(built_on)), built_on)
        .await
        .unwrap();
    // (In another shard, its shard is among the stale value's readers, as
    // a nested read lists it: Store::edge_first.)
    let _: () = conn
        .sadd(
            format!("{}rd:{stale}", layout.base_of(stale)),
            layout.base_of(built_on),
        )
        .await
        .unwrap();
    queue(layout.base_of(stale), &[("id", stale)]).await;
    // A task submitted for the retired function, and a callback nobody has.
    let tasked = "app::retired#3:\"task\"";
    let task = layout.task_id(tasked, &unique("task"));
    let _: () = conn
        .hset_multiple(layout.task_key(&task), &[("s", "p"), ("v", tasked)])
        .await
        .unwrap();
    queue(
        layout.task_base(&task),
        &[("id", tasked), ("task", &task), ("args", "")],
    )
    .await;
    let finished = layout.task_id(tasked, &unique("finished"));
    let _: () = conn
        .hset_multiple(layout.task_key(&finished), &[("s", "f"), ("r", "no")])
        .await
        .unwrap();
    queue(
        layout.task_base(&finished),
        &[("cb", "retired-mail"), ("task", &finished), ("args", "")],
    )
    .await;
    // A function that a live executor elsewhere has: never given up.
    let _: () = conn
        .hset(
            format!("{}fns", layout.instance()),
            "app::elsewhere#1",
            now_ms,
        )
        .await
        .unwrap();
    let elsewhere = "app::elsewhere#1:\"e\"";
    queue(layout.base_of(elsewhere), &[("id", elsewhere)]).await;
    let handle = smache.task_handle::<u32>(&task);
    let waiter = tokio::spawn(async move { handle.wait().await });

    // Meanwhile they wait, and inspect says when they will be given up.
    assert!(
        eventually(Duration::from_secs(10), || async {
            smache.inspect_jobs().await.unwrap().held == 4
        })
        .await,
        "{}",
        smache.inspect_jobs().await.unwrap()
    );
    let report = smache.inspect_jobs().await.unwrap();
    let retired = report
        .groups
        .iter()
        .find(|g| g.what == "recompute app::retired#3")
        .unwrap_or_else(|| panic!("{report}"));
    assert!(retired.orphaned(), "{report}");
    assert!(
        retired.gives_up_in.is_some_and(|d| d <= timeout),
        "{report}"
    );
    let elsewhere = report
        .groups
        .iter()
        .find(|g| g.what == "recompute app::elsewhere#1")
        .unwrap_or_else(|| panic!("{report}"));
    assert!(!elsewhere.orphaned(), "{report}");
    assert_eq!(elsewhere.gives_up_in, None, "{report}");
    assert!(report.to_string().contains("given up"), "{report}");

    assert!(
        eventually(Duration::from_secs(20), || async {
            smache.inspect_jobs().await.unwrap().dead == 3
        })
        .await,
        "{}",
        smache.inspect_jobs().await.unwrap()
    );
    let report = smache.inspect_jobs().await.unwrap();
    assert_eq!(report.queued, 1, "only the live function's job\n{report}");
    let mut letters: Vec<(String, String)> = report
        .recent_dead
        .iter()
        .map(|l| (l.job.clone(), l.reason.clone()))
        .collect();
    letters.sort();
    let gone = "no live executor has function app::retired#3 (never announced) for 3 s";
    assert_eq!(
        letters,
        [
            (
                "callback retired-mail".to_owned(),
                "no live executor has callback retired-mail (never announced) for 3 s".to_owned()
            ),
            (format!("recompute {stale}"), gone.to_owned()),
            ("task app::retired#3:\"task\"".to_owned(), gone.to_owned()),
        ],
        "{report}"
    );

    // The value: no job pending any more, and stale with none coming, so
    // its next caller recomputes it rather than being served it.
    let (q, t): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(format!("{}v:{stale}", layout.base_of(stale)))
        .arg("q")
        .arg("t")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((q, t.as_deref()), (None, Some("0")));
    // The value built on it was told (marked stale).
    assert!(
        eventually(Duration::from_secs(10), || async {
            let mut conn = redis_connection(&redis_url()).await;
            let g: Option<String> = conn
                .hget(format!("{}v:{built_on}", layout.base_of(built_on)), "g")
                .await
                .unwrap();
            g.as_deref() == Some("1")
        })
        .await
    );
    // The task failed with the reason; its waiter got it.
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter does not hang")
        .unwrap();
    match waited {
        Err(smache::Error::TaskFailed { message, .. }) => assert_eq!(message, gone),
        other => panic!("{other:?}"),
    }
    smache.stop_executor().await.unwrap();
}

/// A relation job names every function with a relation on the changed
/// collection, an old `version` included: once that one has had no live
/// executor for the orphan timeout, the job is applied for the functions
/// the executor has and dead-lettered for the rest, not held forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relation_job_for_a_retired_function_is_a_dead_letter_after_the_orphan_timeout() {
    let prefix = unique("inspect-orphan-rel");
    let database = unique("inspect_orphan_rel").replace('-', "_");
    let smache = Smache::builder()
        .redis_url(redis_url())
        .mongodb_database(mongo_database(&database))
        .prefix(&prefix)
        .orphan_timeout(Duration::from_secs(1))
        .run_executor()
        .build()
        .unwrap();
    // (A relation job reads its own shard's record of the functions.)
    let base = Layout::of(&smache).await.bases()[0].clone();
    let mut conn = redis_connection(&redis_url()).await;
    let _: () = conn
        .sadd(format!("{base}rel:orders"), "app::retired#3")
        .await
        .unwrap();
    queue(&base, &[("rel", "orders"), ("doc", "i:7")]).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            smache.inspect_jobs().await.unwrap().dead == 1
        })
        .await,
        "{}",
        smache.inspect_jobs().await.unwrap()
    );
    let report = smache.inspect_jobs().await.unwrap();
    assert_eq!(report.queued, 0, "{report}");
    assert_eq!(report.recent_dead[0].job, "relation orders");
    assert_eq!(
        report.recent_dead[0].reason,
        "no live executor has function app::retired#3 (never announced) for 1 s"
    );
    smache.stop_executor().await.unwrap();
}
