//! What a `#[computed]` function does when called: look up, else compute
//! and store, recording what the value depends on. Reached only through
//! the generated code.
//!
//! Two task-locals carry context through a computation:
//! * `DEPS`: the dependencies of the value being computed; a `#[computed]`
//!   call made while computing adds itself (`v:<id>`), so nested values are
//!   tracked without the user saying so. Work moved to other tasks
//!   (`tokio::spawn`) is not tracked.
//! * `TARGET`: set by an executor running a recompute job; the call whose
//!   key it names skips the lookup, computes, and stores conditionally on
//!   the job's change generation.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;
use crate::instance::{Inner, Located, Smache};
use crate::key::CacheKey;
use crate::runtime;
use crate::spec::{FnSpec, Refresh};
use crate::store::{Backend, Put};

/// How a function's return value maps to the cached value.
pub trait Mode<R> {
    /// The type that is stored.
    type Value: Serialize + DeserializeOwned;
    /// The part of a result to store, if any.
    fn cacheable(result: &R) -> Option<&Self::Value>;
    /// Rebuilds a result from a stored value.
    fn from_cached(value: Self::Value) -> R;
}

/// Every return value is cached.
#[derive(Debug)]
pub struct Plain;

impl<T: Serialize + DeserializeOwned> Mode<T> for Plain {
    type Value = T;
    fn cacheable(result: &T) -> Option<&T> {
        Some(result)
    }
    fn from_cached(value: T) -> T {
        value
    }
}

/// For functions returning `Result`: only `Ok` values are cached.
#[derive(Debug)]
pub struct OkOnly;

impl<T: Serialize + DeserializeOwned, E> Mode<Result<T, E>> for OkOnly {
    type Value = T;
    fn cacheable(result: &Result<T, E>) -> Option<&T> {
        result.as_ref().ok()
    }
    fn from_cached(value: T) -> Result<T, E> {
        Ok(value)
    }
}

type Deps = Arc<Mutex<Vec<String>>>;

tokio::task_local! {
    static DEPS: Deps;
    static TARGET: Arc<Target>;
}

/// A recompute an executor asked for.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) key: String,
    pub(crate) started: u64,
    pub(crate) outcome: Mutex<Option<Outcome>>,
}

/// What became of a recompute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The value was stored.
    Stored,
    /// A value computed from newer data was already stored.
    Superseded,
    /// The function returned an error or an unserializable value.
    NotCached,
    /// The store could not be reached.
    Unreachable,
}

impl Target {
    pub(crate) async fn scope<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        TARGET.scope(Arc::clone(self), fut).await
    }

    pub(crate) fn scope_sync<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        TARGET.sync_scope(Arc::clone(self), f)
    }

    fn finish(&self, outcome: Outcome) {
        *lock(&self.outcome) = Some(outcome);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Call {
    inner: Arc<Inner>,
    at: Located,
    spec: &'static FnSpec,
    ttl: Option<Duration>,
    static_deps: Vec<String>,
}

fn prepare(spec: &'static FnSpec, key: Result<CacheKey>) -> Option<Call> {
    let smache = Smache::current();
    match key {
        Ok(key) => {
            let at = smache.locate(&key);
            // A computation in progress depends on this value.
            let _ = DEPS.try_with(|deps| lock(deps).push(format!("v:{}", at.id)));
            Some(Call {
                ttl: spec.ttl().or(smache.inner.default_ttl),
                static_deps: key.static_deps(),
                inner: smache.inner,
                at,
                spec,
            })
        }
        Err(err) => {
            tracing::warn!(function = spec.name(), error = %err, "smache: cannot build the cache key; computing without the cache");
            None
        }
    }
}

impl Call {
    fn target(&self) -> Option<Arc<Target>> {
        TARGET
            .try_with(|target| (target.key == self.at.key).then(|| Arc::clone(target)))
            .ok()
            .flatten()
    }

    /// A usable stored value, if any. A `write_through` value that is stale
    /// is served while an executor refreshes it (for at most `max_stale`),
    /// and one past its time-to-live is served once more and a refresh
    /// queued; `mark_stale` values are recomputed by the caller instead.
    fn usable<V: DeserializeOwned>(
        self: &Arc<Self>,
        fetched: Option<crate::instance::Fetched>,
    ) -> Option<V> {
        let fetched = fetched?;
        let write_through = self.spec.refresh() == Refresh::WriteThrough;
        if fetched.stale && (!write_through || fetched.stale_for > self.inner.max_stale) {
            return None;
        }
        if fetched.expired {
            if !write_through {
                return None;
            }
            if !fetched.stale {
                self.refresh_in_background();
            }
        }
        Inner::decode(&self.at.key, &fetched.data)
    }

    /// Queues a refresh without making the caller wait for it.
    fn refresh_in_background(self: &Arc<Self>) {
        let call = Arc::clone(self);
        let refresh = async move {
            if let Err(err) = call
                .inner
                .store
                .refresh(call.at.slot(&call.inner.base))
                .await
            {
                tracing::debug!(key = %call.at.key, error = %err, "smache: could not queue the refresh of an expired value");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(refresh);
            }
            Err(_) => {
                let _ = runtime::block_on(refresh);
            }
        }
    }

    fn put_request<'a>(&'a self, data: Vec<u8>, started: u64, deps: &'a [String]) -> Put<'a> {
        Put {
            slot: self.at.slot(&self.inner.base),
            data,
            ttl: self.ttl,
            started,
            refresh: self.spec.refresh(),
            relations: self.spec.relations(),
            deps,
        }
    }

    fn deps(&self) -> Deps {
        Arc::new(Mutex::new(self.static_deps.clone()))
    }
}

/// The body of an `async` computed function.
pub async fn call_async<M, R>(
    spec: &'static FnSpec,
    key: Result<CacheKey>,
    compute: impl Future<Output = R>,
) -> R
where
    M: Mode<R>,
{
    let Some(call) = prepare(spec, key) else {
        return compute.await;
    };
    let call = Arc::new(call);
    let (started, target) = match call.target() {
        Some(target) => (Some(target.started), Some(target)),
        None => {
            let fetched = {
                let call = Arc::clone(&call);
                runtime::in_tokio(async move { call.inner.fetch(&call.at.key).await })
                    .await
                    .unwrap_or(Err(()))
            };
            let Ok(fetched) = fetched else {
                return compute.await;
            };
            if let Some(value) = call.usable::<M::Value>(fetched) {
                return M::from_cached(value);
            }
            let begun = {
                let call = Arc::clone(&call);
                runtime::in_tokio(
                    async move { call.inner.begin(&call.at, &call.static_deps).await },
                )
                .await
                .ok()
                .flatten()
            };
            (begun, None)
        }
    };
    let deps = call.deps();
    let result = DEPS.scope(Arc::clone(&deps), compute).await;
    let outcome = match (started, M::cacheable(&result)) {
        (None, _) => Outcome::Unreachable,
        (Some(started), Some(value)) => match Inner::encode(&call.at.key, value) {
            Some(data) => {
                let deps = lock(&deps).clone();
                let call = Arc::clone(&call);
                runtime::in_tokio(async move {
                    call.inner.put(call.put_request(data, started, &deps)).await
                })
                .await
                .unwrap_or(Outcome::Unreachable)
            }
            None => Outcome::NotCached,
        },
        (Some(_), None) => Outcome::NotCached,
    };
    if let Some(target) = target {
        target.finish(outcome);
    }
    result
}

/// The body of a synchronous computed function. Works with or without a
/// tokio runtime around the caller.
pub fn call_sync<M, R>(
    spec: &'static FnSpec,
    key: Result<CacheKey>,
    compute: impl FnOnce() -> R,
) -> R
where
    M: Mode<R>,
{
    let Some(call) = prepare(spec, key) else {
        return compute();
    };
    let call = Arc::new(call);
    let (started, target) = match call.target() {
        Some(target) => (Some(target.started), Some(target)),
        None => {
            let fetched = blocking(
                &call,
                |call| async move { call.inner.fetch(&call.at.key).await },
            )
            .unwrap_or(Err(()));
            let Ok(fetched) = fetched else {
                return compute();
            };
            if let Some(value) = call.usable::<M::Value>(fetched) {
                return M::from_cached(value);
            }
            let begun = blocking(&call, |call| async move {
                call.inner.begin(&call.at, &call.static_deps).await
            })
            .flatten();
            (begun, None)
        }
    };
    let deps = call.deps();
    let result = DEPS.sync_scope(Arc::clone(&deps), compute);
    let outcome = match (started, M::cacheable(&result)) {
        (None, _) => Outcome::Unreachable,
        (Some(started), Some(value)) => match Inner::encode(&call.at.key, value) {
            Some(data) => {
                let deps = lock(&deps).clone();
                blocking(&call, move |call| async move {
                    call.inner.put(call.put_request(data, started, &deps)).await
                })
                .unwrap_or(Outcome::Unreachable)
            }
            None => Outcome::NotCached,
        },
        (Some(_), None) => Outcome::NotCached,
    };
    if let Some(target) = target {
        target.finish(outcome);
    }
    result
}

/// Runs a store operation to completion from synchronous code. The embedded
/// store never waits, so it runs in place; Redis goes through the
/// background runtime. `None` if the background runtime could not run it.
fn blocking<F, Fut>(call: &Arc<Call>, op: F) -> Option<Fut::Output>
where
    F: FnOnce(Arc<Call>) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let fut = op(Arc::clone(call));
    match call.inner.store.backend() {
        Backend::Embedded => Some(futures::executor::block_on(fut)),
        _ => runtime::block_on(fut).ok(),
    }
}
