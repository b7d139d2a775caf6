//! Single flight: however many callers miss one key at once, in however
//! many processes, the function runs once and everyone gets its result;
//! if the process computing it dies, a waiter takes over.
//!
//! The other processes are this test binary again, running the ignored
//! `child_callers` test with `SMACHE_SF_*` variables.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use smache::{computed, Smache};
use smache_suite::{redis_connection, redis_url, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

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
    // Callers in three more processes and here wait for it (and would
    // compute at once: they all wake when its lease ends, so a waiter's
    // last read and its next turn straddle the store of the one that took
    // over)...
    let waiters: Vec<_> = (0..5).map(|_| child(&prefix, &tag, 20, 0)).collect();
    let smache = instance(&prefix);
    DELAY_MS.store(0, Ordering::SeqCst);
    let waiting = tokio::spawn({
        let tag = tag.clone();
        async move { call_many(&smache, &tag, 50).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...and it dies mid-computation.
    doomed.kill().unwrap();
    let _ = doomed.wait();

    let mut results = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiters take over once the lease ends")
        .unwrap();
    for waiter in waiters {
        results.extend(results_of(waiter));
    }
    assert_eq!(results.len(), 150);
    assert_eq!(runs(&tag).await, 2, "exactly one waiter computed again");
    assert!(
        results.iter().all(|r| r == &results[0]),
        "everyone got one value: {:?}",
        results.iter().collect::<std::collections::BTreeSet<_>>()
    );
    assert!(results[0].contains("run 2"), "{}", results[0]);
}

/// A TCP proxy to Redis for one caller: it forwards everything until a
/// connection sends its `nth` `HMGET` (a read of a value), then holds
/// what that connection sends next until [`release`](Self::release)d: the
/// caller is paused between reading a value and its next step.
struct HoldingProxy {
    port: u16,
    held: Arc<Notify>,
    release: watch::Sender<bool>,
}

impl HoldingProxy {
    async fn start(target: String, nth: usize) -> HoldingProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(Notify::new());
        let (release, released) = watch::channel(false);
        let reads = Arc::new(AtomicUsize::new(0));
        let (held_, reads_) = (Arc::clone(&held), Arc::clone(&reads));
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut from_client, mut to_client) = inbound.into_split();
                let (mut from_server, mut to_server) = outbound.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let (held, reads, mut released) =
                    (Arc::clone(&held_), Arc::clone(&reads_), released.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut hold_next = false;
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if std::mem::take(&mut hold_next) {
                            held.notify_one();
                            let _ = released.wait_for(|r| *r).await;
                        }
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        let read = buf[..n].windows(5).any(|w| w == b"HMGET");
                        if read && reads.fetch_add(1, Ordering::SeqCst) + 1 == nth {
                            hold_next = true;
                        }
                    }
                });
            }
        });
        HoldingProxy {
            port,
            held,
            release,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Waits until the caller is held.
    async fn holding(&self) {
        tokio::time::timeout(Duration::from_secs(20), self.held.notified())
            .await
            .expect("the caller is held after its read");
    }

    fn release(&self) {
        let _ = self.release.send(true);
    }
}

/// A run of `gated(tag)` for a tag with a gate here says it started and
/// waits until the test lets it go.
static GATES: Mutex<Vec<Gate>> = Mutex::new(Vec::new());

/// A tag, "started", "let go".
type Gate = (String, Arc<Notify>, Arc<Notify>);

/// Counts its runs in Redis, like `expensive`, and can be held.
#[computed(Raw)]
async fn gated(tag: String) -> String {
    let mut conn = redis_connection(&redis_url()).await;
    let run: u64 = conn.incr(format!("{tag}:runs"), 1).await.unwrap();
    let gate = {
        let mut gates = GATES.lock().unwrap();
        let at = gates.iter().position(|(t, ..)| *t == tag);
        at.map(|at| gates.remove(at))
    };
    if let Some((_, started, release)) = gate {
        started.notify_one();
        release.notified().await;
    }
    format!("{tag} run {run}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_read_just_before_the_value_was_stored_does_not_compute_it_again() {
    // Two processes: A computes; B waits, and B's Redis traffic goes
    // through a proxy that holds B right after its second read.
    let prefix = unique("sf");
    let tag = unique("late");
    let a = instance(&prefix);
    let proxy = HoldingProxy::start(
        redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned(),
        2,
    )
    .await;
    let b = Smache::builder()
        .redis_url(proxy.url())
        .prefix(&prefix)
        .compute_lease(Duration::from_secs(1))
        .build()
        .unwrap();
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    GATES
        .lock()
        .unwrap()
        .push((tag.clone(), Arc::clone(&started), Arc::clone(&release)));
    let computing = tokio::spawn({
        let (a, tag) = (a.clone(), tag.clone());
        async move { a.scope(gated(tag)).await }
    });
    started.notified().await;
    // B misses (read 1), finds A's lease and waits; on its next look
    // (read 2) there is still no value, and B is held right after it.
    let waiting = tokio::spawn({
        let (b, tag) = (b.clone(), tag.clone());
        async move { b.scope(gated(tag)).await }
    });
    proxy.holding().await;
    // A stores its value (and with it gives up its lease)...
    release.notify_one();
    let computed = computing.await.unwrap();
    // ...and only then does B take its next step.
    proxy.release();
    let got = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("B gets a value")
        .unwrap();
    assert_eq!(runs(&tag).await, 1, "the function ran once");
    assert_eq!(got, computed, "B got A's value");
}
