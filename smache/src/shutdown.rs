//! Stopping: what stops a worker or an executor run from `run` (not
//! `run_until`), and the bounded drain of the tasks still running.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Result;

/// Ctrl-C, or SIGTERM on Unix.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Lets the tasks of `tracker` end, waiting at most `bound` (no new task is
/// tracked after); whether they all ended.
pub(crate) async fn drain(tracker: &TaskTracker, bound: Duration) -> bool {
    tracker.close();
    tokio::time::timeout(bound, tracker.wait()).await.is_ok()
}

/// A running background executor; see [`spawn`](crate::executor::spawn).
/// (Defined beside the drain, below the executor, so that the instance
/// holding one does not depend on the executor.)
#[derive(Debug)]
pub struct ExecutorHandle {
    stop: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl ExecutorHandle {
    pub(crate) fn new(stop: CancellationToken, task: JoinHandle<Result<()>>) -> Self {
        ExecutorHandle { stop, task }
    }

    /// Stops taking jobs, waits for the running ones (for up to
    /// [`DRAIN_FOR`](crate::executor::DRAIN_FOR)), and returns.
    ///
    /// # Errors
    /// The executor's own error, if it stopped on one.
    pub async fn shutdown(self) -> Result<()> {
        self.stop.cancel();
        self.task.await.unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_its_tasks_within_its_bound() {
        let tracker = TaskTracker::new();
        tracker.spawn(tokio::time::sleep(Duration::from_millis(10)));
        assert!(drain(&tracker, Duration::from_secs(5)).await);

        let tracker = TaskTracker::new();
        let stuck = tracker.spawn(std::future::pending::<()>());
        assert!(!drain(&tracker, Duration::from_millis(20)).await);
        assert_eq!(tracker.len(), 1);
        stuck.abort();
        tracker.wait().await;
    }
}
