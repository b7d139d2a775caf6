//! The entities and `#[computed]` functions the scenarios call. They live in
//! the binary, so the child processes it starts (P4's callers, P2/P3's
//! worker and executor) know them too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use smache::{computed, Entity};

/// A document values depend on (P2, P5).
#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
pub(crate) struct User {
    #[serde(rename = "_id")]
    pub(crate) id: ObjectId,
    pub(crate) name: String,
}

/// A collection whole functions depend on through `sources(Setting)` (P3, P5).
#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "settings")]
pub(crate) struct Setting {
    #[serde(rename = "_id")]
    pub(crate) id: String,
    pub(crate) value: String,
}

/// `size` bytes of text: the cached value of the hit scenarios (P1).
#[computed(Raw)]
pub(crate) async fn payload(size: usize) -> String {
    text(size)
}

/// The same text a moka or `cached` user would store.
pub(crate) fn text(size: usize) -> String {
    "smache bench value; ".chars().cycle().take(size).collect()
}

/// How long the last body of [`miss_probe`] ran, in nanoseconds.
pub(crate) static MISS_OWN_NS: AtomicU64 = AtomicU64::new(0);

/// Does nothing, and times itself doing it (P6).
#[computed(Raw, Raw)]
pub(crate) async fn miss_probe(run: &str, n: u64) -> u64 {
    let start = Instant::now();
    let value = std::hint::black_box(run.len() as u64 + n);
    MISS_OWN_NS.store(
        u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    value
}

/// What [`flight_value`] needs in a P4 caller process.
#[derive(Debug)]
pub(crate) struct FlightEnv {
    /// Counts executions (`INCR <tag>:runs`), shared by every process.
    pub(crate) counter: ConnectionManager,
    /// The function's own work.
    pub(crate) compute: Duration,
}

/// Set once by a P4 caller process before its calls.
pub(crate) static FLIGHT_ENV: OnceLock<FlightEnv> = OnceLock::new();
/// When the body of [`flight_value`] last started and ended in this process.
pub(crate) static FLIGHT_SPAN: Mutex<Option<(Instant, Instant)>> = Mutex::new(None);

/// The expensive function of P4: counts its executions in Redis, then
/// works for `FlightEnv::compute`.
#[computed(Raw)]
pub(crate) async fn flight_value(tag: String) -> String {
    let start = Instant::now();
    if let Some(env) = FLIGHT_ENV.get() {
        let mut conn = env.counter.clone();
        let counted: redis::RedisResult<u64> = redis::cmd("INCR")
            .arg(format!("{tag}:runs"))
            .query_async(&mut conn)
            .await;
        if let Err(err) = counted {
            eprintln!("[flight] cannot count an execution: {err}");
        }
        tokio::time::sleep(env.compute).await;
    }
    if let Ok(mut span) = FLIGHT_SPAN.lock() {
        *span = Some((start, Instant::now()));
    }
    format!("{tag} computed by pid {}", std::process::id())
}

/// Depends on one user document; no work of its own (P2).
#[computed(User)]
pub(crate) async fn label(user: &User) -> String {
    user.name.clone()
}

/// Depends on the whole `settings` collection; no work of its own (P3).
/// No entity argument: a recompute loads nothing from MongoDB, so P3
/// measures smache's own fan-out.
#[computed(Raw, sources(Setting))]
pub(crate) async fn fan(n: u32) -> u32 {
    n
}

/// Two dependency edges a value: its user and the `settings` collection (P5, P7).
#[computed(User, Raw, sources(Setting))]
pub(crate) async fn edge_value(user: &User, n: u32) -> u32 {
    std::hint::black_box(user.name.len() as u32 + n)
}

/// `users` new users and `per_user` values of [`edge_value`] for each,
/// computed (and so stored with their 2 edges) by `smache`, `at_once` at a
/// time (P5, P7). The users, in order.
pub(crate) async fn edge_values(
    smache: &smache::Smache,
    users: u32,
    per_user: u32,
    at_once: usize,
) -> Vec<User> {
    use futures::StreamExt;
    let all: Vec<User> = (0..users)
        .map(|i| User {
            id: ObjectId::new(),
            name: format!("user {i}"),
        })
        .collect();
    let calls = all
        .iter()
        .flat_map(|user| (0..per_user).map(move |n| (user, n)))
        .map(|(user, n)| async move { smache.scope(edge_value(user, n)).await });
    futures::stream::iter(calls)
        .buffer_unordered(at_once)
        .collect::<Vec<_>>()
        .await;
    all
}
