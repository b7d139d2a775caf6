//! Single flight: however many callers miss one key at once, in however
//! many processes, the function runs once and everyone gets its result;
//! if the process computing it dies, a waiter takes over.
//!
//! The other processes are this test binary again, running the ignored
//! `child_callers` test with `SMACHE_SF_*` variables.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use smache::{computed, Smache};
use smache_suite::{redis_connection, redis_url, unique};

/// How long the function takes, set per process.
static DELAY_MS: AtomicU64 = AtomicU64::new(300);

/// Counts its executions in Redis (so all processes share the count) and
/// returns a value naming the process that computed it.
#[computed(Raw)]
async fn expensive(tag: String) -> String {
    let mut conn = redis_connection(&redis_url()).await;
    let run: u64 = conn.incr(format!("{tag}:runs"), 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(DELAY_MS.load(Ordering::SeqCst))).await;
    format!("{tag} run {run} by pid {}", std::process::id())
}

fn instance(prefix: &str) -> Smache {
    Smache::builder()
        .redis_url(redis_url())
        .prefix(prefix)
        .compute_lease(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// `callers` concurrent calls; returns their results.
async fn call_many(smache: &Smache, tag: &str, callers: usize) -> Vec<String> {
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let smache = smache.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(
            async move { smache.scope(expensive(tag)).await },
        ));
    }
    let mut results = Vec::with_capacity(callers);
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

async fn runs(tag: &str) -> u64 {
    let mut conn = redis_connection(&redis_url()).await;
    conn.get::<_, Option<u64>>(format!("{tag}:runs"))
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Starts this binary as another process of callers.
fn child(prefix: &str, tag: &str, callers: usize, delay_ms: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "child_callers",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SMACHE_SF_PREFIX", prefix)
        .env("SMACHE_SF_TAG", tag)
        .env("SMACHE_SF_CALLERS", callers.to_string())
        .env("SMACHE_SF_DELAY_MS", delay_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The callers of one child process (run by the tests below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of the single-flight tests, started by them"]
async fn child_callers() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} (run by the other tests)"))
    };
    DELAY_MS.store(var("SMACHE_SF_DELAY_MS").parse().unwrap(), Ordering::SeqCst);
    let smache = instance(&var("SMACHE_SF_PREFIX"));
    let callers = var("SMACHE_SF_CALLERS").parse().unwrap();
    for result in call_many(&smache, &var("SMACHE_SF_TAG"), callers).await {
        println!("SF-RESULT {result}");
    }
}

fn results_of(child: std::process::Child) -> Vec<String> {
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "a child process failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        // The harness may print "test child_callers ... " on the same line.
        .filter_map(|line| line.split_once("SF-RESULT ").map(|(_, r)| r.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_in_four_processes_run_the_function_once() {
    let prefix = unique("sf");
    let tag = unique("cold");
    let children: Vec<_> = (0..4).map(|_| child(&prefix, &tag, 250, 1500)).collect();
    let mut results = Vec::new();
    for child in children {
        results.extend(results_of(child));
    }
    assert_eq!(results.len(), 1000, "every caller got a value");
    assert_eq!(runs(&tag).await, 1, "the function body ran exactly once");
    let first = &results[0];
    assert!(
        results.iter().all(|r| r == first),
        "everyone got the same value: {first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_in_one_process_share_one_computation() {
    let smache = instance(&unique("sf"));
    let tag = unique("local");
    let results = call_many(&smache, &tag, 250).await;
    assert_eq!(runs(&tag).await, 1);
    assert!(results.iter().all(|r| r == &results[0]));
    // And the value is cached for later callers.
    assert_eq!(smache.scope(expensive(tag.clone())).await, results[0]);
    assert_eq!(runs(&tag).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_computing_process_dies_a_waiter_takes_over() {
    let prefix = unique("sf");
    let tag = unique("crash");
    // A process starts computing and would take a minute.
    let mut doomed = child(&prefix, &tag, 1, 60_000);
    for _ in 0..400 {
        if runs(&tag).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(runs(&tag).await, 1, "the first process is computing");
    // Callers here wait for it...
    let smache = instance(&prefix);
    DELAY_MS.store(100, Ordering::SeqCst);
    let waiting = tokio::spawn({
        let tag = tag.clone();
        async move { call_many(&smache, &tag, 50).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and it dies mid-computation.
    doomed.kill().unwrap();
    let _ = doomed.wait();

    let results = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiters take over once the lease ends")
        .unwrap();
    assert_eq!(results.len(), 50);
    assert_eq!(runs(&tag).await, 2, "exactly one waiter computed again");
    assert!(
        results.iter().all(|r| r == &results[0]),
        "everyone got one value"
    );
    assert!(results[0].contains("run 2"), "{}", results[0]);
}
