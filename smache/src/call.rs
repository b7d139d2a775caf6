//! What a `#[computed]` function does when called: look up, else compute
//! and store. Reached only through the generated code.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;
use crate::instance::{Inner, Smache};
use crate::key::CacheKey;
use crate::runtime;
use crate::spec::FnSpec;
use crate::store::Backend;

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

struct Prepared {
    inner: Arc<Inner>,
    storage_key: String,
    ttl: Option<Duration>,
}

fn prepare(spec: &'static FnSpec, key: Result<CacheKey>) -> Option<Prepared> {
    let smache = Smache::current();
    match key {
        Ok(key) => Some(Prepared {
            storage_key: smache.storage_key(&key),
            ttl: spec.ttl().or(smache.inner.default_ttl),
            inner: smache.inner,
        }),
        Err(err) => {
            tracing::warn!(function = spec.name(), error = %err, "smache: cannot build the cache key; computing without the cache");
            None
        }
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
    let fetched = {
        let inner = Arc::clone(&call.inner);
        let storage_key = call.storage_key.clone();
        runtime::in_tokio(async move { inner.fetch(&storage_key).await })
            .await
            .unwrap_or(Err(()))
    };
    let reachable = fetched.is_ok();
    if let Ok(Some(data)) = fetched {
        if let Some(value) = Inner::decode::<M::Value>(&call.storage_key, &data) {
            return M::from_cached(value);
        }
    }
    let result = compute.await;
    if reachable {
        if let Some(data) = M::cacheable(&result).and_then(|v| Inner::encode(&call.storage_key, v))
        {
            let Prepared {
                inner,
                storage_key,
                ttl,
            } = call;
            let _ =
                runtime::in_tokio(async move { inner.put(&storage_key, data, ttl).await }).await;
        }
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
    let fetched = blocking(&call.inner, {
        let inner = Arc::clone(&call.inner);
        let storage_key = call.storage_key.clone();
        async move { inner.fetch(&storage_key).await }
    })
    .unwrap_or(Err(()));
    let reachable = fetched.is_ok();
    if let Ok(Some(data)) = fetched {
        if let Some(value) = Inner::decode::<M::Value>(&call.storage_key, &data) {
            return M::from_cached(value);
        }
    }
    let result = compute();
    if reachable {
        if let Some(data) = M::cacheable(&result).and_then(|v| Inner::encode(&call.storage_key, v))
        {
            let Prepared {
                inner,
                storage_key,
                ttl,
            } = call;
            let target = Arc::clone(&inner);
            let _ = blocking(
                &target,
                async move { inner.put(&storage_key, data, ttl).await },
            );
        }
    }
    result
}

/// Runs a store future to completion from synchronous code. The embedded
/// store never waits, so it runs in place; Redis goes through the
/// background runtime.
/// `None` if the background runtime could not run it.
fn blocking<F>(inner: &Inner, fut: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match inner.store.backend() {
        Backend::Embedded => Some(futures::executor::block_on(fut)),
        _ => runtime::block_on(fut).ok(),
    }
}
