//! What a computation depends on, recorded as it runs.
//!
//! `DEPS`, a task-local, holds the dependencies of the value being
//! computed. A `#[computed]` call made while computing adds itself
//! (`v:<id>`), so nested values are tracked without the user saying so,
//! and which value it read (version and computed-at time), so that a value
//! stored anew before the computation's own store makes that store stale
//! (see `store.lua`). Work moved to other tasks (`tokio::spawn`) is not
//! tracked.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::envelope;
use crate::key::CacheKey;
use crate::store::keys;
use crate::sync::lock;

/// What a computation depends on.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    /// Its dependency tokens.
    pub(crate) tokens: Vec<String>,
    /// The values it read (nested calls): each one's id and what was read
    /// of it, `<version>:<computed-at ms>` (see [`read_mark`]).
    pub(crate) read: Vec<(String, String)>,
    /// On a store of several shards, the id of the value being computed,
    /// whose nested reads of values of other shards write its edge first
    /// (see `Store::edge_first`); `None` with one shard.
    home: Option<String>,
    /// The values of other shards whose edge this computation wrote.
    edged: Vec<String>,
}

type Deps = Arc<Mutex<Recorded>>;

tokio::task_local! {
    static DEPS: Deps;
}

/// How many computations are recording in this process. While none is,
/// no task holds `DEPS`, and a hit skips reading it. (Relaxed is enough:
/// a computation's own calls run after its increment in the same task,
/// and the count cannot fall below it before that computation ends.)
static RECORDING: AtomicUsize = AtomicUsize::new(0);

/// Counts one recording computation while it lives (dropped when the
/// computation ends, fails, panics or is cancelled).
struct Recording;

impl Recording {
    fn start() -> Recording {
        RECORDING.fetch_add(1, Ordering::Relaxed);
        Recording
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        RECORDING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `f` with the dependencies of the computation in progress in this
/// task, if there is one.
#[inline]
fn with_deps<R>(f: impl FnOnce(&Deps) -> R) -> Option<R> {
    if RECORDING.load(Ordering::Relaxed) == 0 {
        return None;
    }
    DEPS.try_with(f).ok()
}

/// The dependencies of one computation, filled while it runs.
#[derive(Debug)]
pub(crate) struct Recorder(Deps);

impl Recorder {
    /// Starts with the dependencies known from the key alone; `home`, on
    /// a store of several shards, is the id of the value computed.
    pub(crate) fn new(key: &CacheKey, home: Option<String>) -> Recorder {
        Recorder(Arc::new(Mutex::new(Recorded {
            tokens: keys::static_deps(key),
            read: Vec::new(),
            home,
            edged: Vec::new(),
        })))
    }

    /// Runs `fut`, recording what the calls it makes depend on.
    pub(crate) async fn record<F: Future>(self, fut: F) -> (F::Output, Recorded) {
        let recording = Recording::start();
        let output = DEPS.scope(Arc::clone(&self.0), fut).await;
        drop(recording);
        let recorded = std::mem::take(&mut *lock(&self.0));
        (output, recorded)
    }
}

/// Tells the computation in progress, if any, that it depends on the value
/// `id`. Whether there is one.
pub(crate) fn depends_on_value(id: &str) -> bool {
    with_deps(|deps| lock(deps).tokens.push(keys::value_token(id))).is_some()
}

/// [`depends_on_value`] for the value of `key`, without building its id
/// when no computation is in progress (the embedded store's hit path).
#[inline]
pub(crate) fn depends_on_key(key: &CacheKey) {
    let _ = with_deps(|deps| {
        let mut token = String::with_capacity(2 + key.args().len() + 32);
        keys::write_value_token(&mut token, |out| key.write_value_id(out));
        lock(deps).tokens.push(token);
    });
}

/// [`depends_on_key`] for a hit of the in-process layer, which also tells
/// the computation in progress which version of the value it read (see
/// [`read`]); the value id is built only if there is one.
pub(crate) fn read_key(key: &CacheKey, version: u64, data: &[u8]) {
    let _ = with_deps(|deps| {
        let mut id = String::with_capacity(key.args().len() + 32);
        key.write_value_id(&mut id);
        let mark = read_mark(version, data);
        let mut deps = lock(deps);
        deps.tokens.push(keys::value_token(&id));
        deps.read.push((id, mark));
    });
}

/// Tells the computation in progress that it read the value `id` stored as
/// `version` with envelope `data`.
pub(crate) fn read(id: &str, version: u64, data: &[u8]) {
    let _ = with_deps(|deps| {
        lock(deps)
            .read
            .push((id.to_owned(), read_mark(version, data)));
    });
}

/// On a store of several shards, the id of the value whose computation is
/// in progress, if any: a nested read of a value of another shard writes
/// its edge first.
pub(crate) fn home() -> Option<String> {
    with_deps(|deps| lock(deps).home.clone()).flatten()
}

/// Whether the computation in progress wrote its edge on value `id`.
pub(crate) fn edged(id: &str) -> bool {
    with_deps(|deps| lock(deps).edged.iter().any(|e| e == id)).unwrap_or(false)
}

/// Tells the computation in progress that its edge on value `id` is
/// written (see `Store::edge_first`): later reads of `id` need none.
pub(crate) fn edge_written(id: &str) {
    let _ = with_deps(|deps| {
        let mut deps = lock(deps);
        if !deps.edged.iter().any(|e| e == id) {
            deps.edged.push(id.to_owned());
        }
    });
}

/// Whether the computation in progress, if any, may read the value of
/// `key` from the in-process layer: not when it is a value of another
/// shard (by `same_shard`, given two value ids), which is read from Redis
/// after the edge is written (see `Store::edge_first`).
pub(crate) fn may_read_locally(key: &CacheKey, same_shard: impl Fn(&str, &str) -> bool) -> bool {
    with_deps(|deps| {
        let deps = lock(deps);
        let Some(home) = &deps.home else {
            return true;
        };
        let mut id = String::with_capacity(key.args().len() + 32);
        key.write_value_id(&mut id);
        same_shard(home, &id)
    })
    .unwrap_or(true)
}

/// What identifies a value read as `version` with envelope `data`, as
/// `store.lua` compares it: the version alone starts over at 1 when a key
/// is removed and computed again, the computed-at time tells those apart.
/// Version 0 (no stored value has it) for a value that is not the stored
/// one.
fn read_mark(version: u64, data: &[u8]) -> String {
    let at = envelope::decode(data).map_or(0, |env| env.computed_at_ms);
    format!("{version}:{at}")
}
