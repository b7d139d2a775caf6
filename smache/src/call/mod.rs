//! What a `#[computed]` function does when called: look up, else compute
//! and store, recording what the value depends on. Reached only through
//! the generated code, which emits the function's body once, as a private
//! function, and hands it here as a closure that makes its future: called
//! only on a miss.
//!
//! * [`call_async`] and [`call_sync`] are the two entries (the wrapper of an
//!   `async fn`, of a `fn`). An executor's job enters through the same two,
//!   passing the [`Job`]: a recompute computes and stores conditionally on
//!   the job's change generation; a submitted task takes the plain path.
//! * [`path`] is the one algorithm behind both, and behind `submit`'s
//!   lookup; [`drive`] is the only difference between async and sync: where
//!   store operations run.
//! * [`deps`] records what a computation depends on; [`turn`] is a
//!   caller's turn across processes after a miss; [`edge`], a nested read
//!   of a value of another shard (its edge first).

mod deps;
mod drive;
mod edge;
mod keep;
mod mode;
mod path;
mod turn;

use std::future::Future;
use std::time::Instant;

use futures::future::Either;
use serde::de::DeserializeOwned;

pub(crate) use self::drive::Drive;
pub use self::keep::{DecodeEach, Keep, KeepClone, KeepCloned, KeepDecode, KeepProbe};
pub use self::mode::{Mode, OkOnly, Plain, ValueType};
pub(crate) use self::path::{Call, Looked};

use crate::error::Result;
use crate::instance::Smache;
use crate::key::{CacheKey, Job};
use crate::metrics::Served;
use crate::spec::FnSpec;
use crate::store::Store;

/// The body of an `async` computed function. `compute` makes the
/// function's own body's future; `job` is an executor's job for this call,
/// `None` for a caller; `keep`, whether hits keep the value decoded (see
/// [`keep`]).
///
/// Not an `async fn`: an in-process hit is answered when it is called,
/// [`Answer::Now`], and the generated wrapper (inside the caller's
/// [`Smache::scope`]) returns that value without a future of its own
/// around it; otherwise the wrapper awaits [`Answer::Later`], the rest of
/// the call, boxed (see `boxed_full`). A hit's value is then moved from
/// here to the caller's future once, not through two more futures (each
/// move of it through memory was measured at several nanoseconds: the
/// reads stall on the writes just before them).
pub fn call_async<'a, M, R, F, Fut, K>(
    spec: &'static FnSpec,
    key: Result<CacheKey>,
    compute: F,
    job: Option<&'a Job>,
    keep: K,
) -> Answer<R, impl Future<Output = R> + use<'a, M, R, F, Fut, K>>
where
    M: Mode<R>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
    K: Keep<M::Value>,
{
    let hit = Smache::with_current(
        // See `local_hit`.
        #[inline(always)]
        |smache| local_hit::<M::Value>(smache, spec, &key, job, keep),
    );
    match hit {
        Some(value) => Answer::Now(M::from_cached(value)),
        None => Answer::Later(boxed_full::<M, R, F, Fut>(spec, key, compute, job)),
    }
}

/// What [`call_async`] answers: the value at once (a hit in this
/// process's memory), or the future of the rest of the call. Used by the
/// generated code.
#[derive(Debug)]
pub enum Answer<R, F> {
    /// The value, found in this process's memory.
    Now(R),
    /// The rest of the call (the store, or a computation), to await.
    Later(F),
}

/// Awaited as it is, the answer is its value.
impl<R, F: Future<Output = R>> std::future::IntoFuture for Answer<R, F> {
    type Output = R;
    type IntoFuture = Either<std::future::Ready<R>, F>;

    fn into_future(self) -> Self::IntoFuture {
        match self {
            Answer::Now(value) => Either::Left(std::future::ready(value)),
            Answer::Later(rest) => Either::Right(rest),
        }
    }
}

/// [`call_full`]'s future, boxed: the other paths talk to Redis,
/// next to which an allocation is nothing. Out of line: the future is made
/// on the stack before it moves into its box, and it takes kilobytes; in
/// [`call_async`] that frame would be set up (its stack pages probed) on
/// every hit.
#[inline(never)]
fn boxed_full<'a, M, R, F, Fut>(
    spec: &'static FnSpec,
    key: Result<CacheKey>,
    compute: F,
    job: Option<&'a Job>,
) -> std::pin::Pin<Box<impl Future<Output = R> + use<'a, M, R, F, Fut>>>
where
    M: Mode<R>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    Box::pin(call_full::<M, R, F, Fut>(
        Smache::current(),
        spec,
        key,
        compute,
        job,
        Drive::Async,
    ))
}

/// A call past the in-process fast path, its store operations run as
/// `drive` says: [`call_async`]'s, and [`call_sync`]'s blocked on.
async fn call_full<M, R, F, Fut>(
    smache: Smache,
    spec: &'static FnSpec,
    key: Result<CacheKey>,
    compute: F,
    job: Option<&Job>,
    drive: Drive,
) -> R
where
    M: Mode<R>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    // Boxed when made, on a miss only: a computed function that awaits
    // another would otherwise hold the callee's whole future inline, and
    // nesting multiplies future sizes (and, in debug builds, stack use).
    let compute = move || Box::pin(compute());
    let Some(call) = Call::prepare(smache, spec, key) else {
        return uncached(spec, compute()).await;
    };
    match job {
        None => path::run::<M, R, _, _>(call, compute, drive).await.0,
        Some(job) => for_job::<M, R, _, _>(call, compute, job, drive).await,
    }
}

/// The body of a synchronous computed function. Works with or without a
/// tokio runtime around the caller, whose thread blocks on the call.
pub fn call_sync<M, R, F>(
    spec: &'static FnSpec,
    key: Result<CacheKey>,
    compute: F,
    job: Option<&Job>,
    keep: impl Keep<M::Value>,
) -> R
where
    M: Mode<R>,
    F: FnOnce() -> R,
{
    let hit = Smache::with_current(
        // See `local_hit`.
        #[inline(always)]
        |smache| local_hit::<M::Value>(smache, spec, &key, job, keep),
    );
    if let Some(value) = hit {
        return M::from_cached(value);
    }
    call_sync_full::<M, R, F>(spec, key, compute, job)
}

/// [`call_sync`] past the in-process fast path. Out of line, for the
/// reason [`boxed_full`] is: its futures take kilobytes of stack.
#[inline(never)]
fn call_sync_full<M, R, F>(
    spec: &'static FnSpec,
    key: Result<CacheKey>,
    compute: F,
    job: Option<&Job>,
) -> R
where
    M: Mode<R>,
    F: FnOnce() -> R,
{
    drive::block_on(call_full::<M, R, _, _>(
        Smache::current(),
        spec,
        key,
        move || async move { compute() },
        job,
        Drive::Blocking,
    ))
}

/// A job's call: a recompute of this very value, or a submitted task's
/// (the plain path), its failure reported to the job either way.
async fn for_job<M, R, F, Fut>(call: std::sync::Arc<Call>, compute: F, job: &Job, drive: Drive) -> R
where
    M: Mode<R>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    match job.started() {
        Some(started) if job.key() == call.at().key => {
            path::recompute::<M, R>(call, started, compute(), job).await
        }
        _ => {
            let (result, failure) = path::run::<M, R, F, Fut>(call, compute, drive).await;
            job.report(None, failure);
            result
        }
    }
}

/// Computes without the cache (the key could not be built).
async fn uncached<R>(spec: &'static FnSpec, fut: impl Future<Output = R>) -> R {
    let started = Instant::now();
    let result = fut.await;
    crate::metrics::computed(spec.name(), spec.metrics(), started.elapsed());
    result
}

/// A hit in this process's memory (the embedded store, or the in-process
/// layer in front of Redis), answered before anything else is set up: the
/// value decoded from the stored bytes, which are shared with the store
/// rather than copied out. `None` sends the call down the full path (a
/// miss, an alias, a value kept in MongoDB, an executor's job, bytes that
/// do not decode: that path logs them).
///
/// Always inlined, as is the closure that calls it: a hit's value then
/// stays in registers up to its answer.
#[inline(always)]
fn local_hit<V: DeserializeOwned>(
    smache: &Smache,
    spec: &'static FnSpec,
    key: &Result<CacheKey>,
    job: Option<&Job>,
    keep: impl Keep<V>,
) -> Option<V> {
    if job.is_some() {
        return None;
    }
    let key = key.as_ref().ok()?;
    match &smache.inner.store {
        Store::Memory(store) => {
            let stored = store.peek(key)?;
            let value = keep::serve(&stored.data, &stored.decoded, keep)?;
            // A computation in progress depends on this value.
            deps::depends_on_key(key);
            crate::metrics::hit(spec.name(), spec.metrics(), Served::Embedded);
            Some(value)
        }
        Store::Redis(store) => {
            if store.sharded() && !deps::may_read_locally(key, |a, b| store.same_shard(a, b)) {
                // A nested read of another shard: its edge first (see `edge`).
                return None;
            }
            let cached = store.peek(|out| key.write_value_id(out))?;
            // (The layer keeps no value held in MongoDB.)
            let value = keep::serve(&cached.data, &cached.decoded, keep)?;
            // A computation in progress depends on this value, and read
            // this version of it.
            deps::read_key(key, cached.version, &cached.data);
            crate::metrics::hit(spec.name(), spec.metrics(), Served::Local);
            Some(value)
        }
    }
}
