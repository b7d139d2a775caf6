//! Jobs an executor cannot finish are never lost: a job for a function no
//! process has stays queued and shows in `inspect`; a job that fails on
//! every attempt, or that is malformed, becomes a dead letter with why.

use std::time::Duration;

use redis::AsyncCommands;
use smache::{computed, Retry, Smache};
use smache_suite::{eventually, redis_connection, redis_url, unique, worker_binary};

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

async fn queue(prefix: &str, fields: &[(&str, &str)]) -> String {
    let mut conn = redis_connection(&redis_url()).await;
    conn.xadd(format!("{{{prefix}}}:jobs"), "*", fields)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_recompute_failing_on_every_attempt_becomes_a_dead_letter() {
    let prefix = unique("inspect-dead");
    let tag = unique("inspect-dead-tag");
    let smache = with_executor(&prefix);
    assert_eq!(smache.scope(fragile(tag.clone())).await, Ok(7));
    let key = fragile::key(tag.clone()).unwrap();
    let storage = smache.storage_key(&key);
    let id = storage
        .strip_prefix(&format!("{{{prefix}}}:v:"))
        .unwrap()
        .to_owned();
    let mut conn = redis_connection(&redis_url()).await;
    let _: () = conn.set(format!("{tag}:broken"), 1).await.unwrap();
    let entry = queue(&prefix, &[("id", &id)]).await;

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
        conn.xrange_all(format!("{{{prefix}}}:dead")).await.unwrap();
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
    queue(&prefix, &[("what", "is this")]).await;
    queue(&prefix, &[("id", "no-version-here")]).await;
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
    queue(&prefix, &[("id", "app::retired#3:\"x\"")]).await;
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
    let announced: std::collections::HashMap<String, u64> =
        conn.hgetall(format!("{{{prefix}}}:fns")).await.unwrap();
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
