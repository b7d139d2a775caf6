//! How a call reaches the store: from async code in the caller's task, or
//! from synchronous code, which blocks its thread on the call.

use std::future::Future;

use crate::instance::Inner;
use crate::runtime;
use crate::store::Backend;

/// Where a call's store operations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drive {
    /// From an `async` function: in the caller's tokio runtime, or on the
    /// background runtime when the caller has none.
    Async,
    /// From a synchronous function, whose thread blocks on the whole call
    /// (see [`block_on`]): Redis operations run on the background runtime;
    /// the embedded store, which never waits, runs in place.
    Blocking,
}

impl Drive {
    /// Runs one store operation; `None` if the background runtime could
    /// not run it.
    pub(crate) async fn store<F>(self, inner: &Inner, op: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Drive::Async => runtime::in_tokio(op).await.ok(),
            Drive::Blocking if inner.store.backend() == Backend::Embedded => Some(op.await),
            Drive::Blocking => runtime::on_background(op).await.ok(),
        }
    }
}

/// Blocks the calling thread on a synchronous function's call. `pollster`
/// rather than `futures::executor::block_on`: a synchronous computed
/// function that calls another blocks again inside this one, which
/// `futures`' executor refuses.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    pollster::block_on(fut)
}
