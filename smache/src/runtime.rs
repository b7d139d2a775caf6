//! A small background runtime for callers without one.
//!
//! Synchronous `#[computed]` functions talk to Redis through this runtime, so
//! they work from plain threads with no tokio runtime around, and from
//! inside one (the caller's thread blocks only on its own call).

use std::future::Future;

use once_cell::sync::Lazy;
use tokio::runtime::{Builder, Runtime};

use crate::error::{Error, Result};

static BACKGROUND: Lazy<Runtime> = Lazy::new(|| {
    Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("smache-background")
        .enable_all()
        .build()
        .expect("smache: cannot start its background runtime thread")
});

/// Runs `fut` on the background runtime and blocks the calling thread until
/// it is done. A panic inside `fut` is reported as [`Error::Unavailable`].
pub(crate) fn block_on<F>(fut: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    futures::executor::block_on(BACKGROUND.spawn(fut)).map_err(|_| Error::Unavailable)
}

/// Runs `fut` on the background runtime and waits for it without
/// blocking (the caller's executor need not be tokio's).
pub(crate) async fn on_background<F>(fut: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    BACKGROUND.spawn(fut).await.map_err(|_| Error::Unavailable)
}

/// Runs `fut` where it can reach the tokio reactor: in place when the caller
/// is inside a tokio runtime, else on the background runtime.
pub(crate) async fn in_tokio<F>(fut: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        Ok(fut.await)
    } else {
        BACKGROUND.spawn(fut).await.map_err(|_| Error::Unavailable)
    }
}

/// Spawns `fut` on the caller's tokio runtime if there is one, else on the
/// background runtime.
pub(crate) fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.spawn(fut),
        Err(_) => BACKGROUND.spawn(fut),
    }
}

/// Enters the background runtime for the time the guard lives: what is
/// spawned meanwhile (a connection's driver task, say) runs there, for as
/// long as the process, whichever runtime the caller is on.
pub(crate) fn enter_background() -> tokio::runtime::EnterGuard<'static> {
    BACKGROUND.enter()
}
