//! Running a job's function: on a blocking thread of its own, its span
//! along, a panic caught and worded.

use std::sync::Arc;

use super::job::Job;
use super::Executor;
use crate::call::Target;
use crate::error::Result;
use crate::registry;

impl Executor {
    /// Runs a job's function on a blocking thread of its own (the user's
    /// function need not be `Send`), catching a panic.
    pub(super) async fn run_function(
        &self,
        registration: &'static registry::Registration,
        target: &Arc<Target>,
        args: String,
    ) -> Ran {
        let job = Job {
            smache: self.smache.clone(),
            target: Arc::clone(target),
            args,
        };
        let recompute = registration.recompute;
        let handle = tokio::runtime::Handle::current();
        // The job's span goes along to the blocking thread.
        let span = tracing::Span::current();
        let run = move || span.in_scope(|| handle.block_on(recompute(job)));
        match tokio::task::spawn_blocking(run).await {
            Ok(result) => Ran::Returned(result),
            Err(err) => Ran::Panicked(panic_message(err)),
        }
    }
}

/// How a job's function run ended.
pub(super) enum Ran {
    /// It returned this.
    Returned(Result<()>),
    /// It panicked, with this message.
    Panicked(String),
}

/// The message of a panicked task.
fn panic_message(err: tokio::task::JoinError) -> String {
    panic_of("the function", err)
}

/// What ended `what`'s task: `<what> panicked: <message>`, or how else.
pub(super) fn panic_of(what: &str, err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".to_owned());
            format!("{what} panicked: {text}")
        }
        Err(err) => format!("{what}'s task ended: {err}"),
    }
}
