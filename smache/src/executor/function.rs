//! Running a job's function: on a blocking thread of its own, its span
//! along, a panic caught and worded.

use super::Executor;
use crate::error::Result;
use crate::key::{Job, JobError, Report};
use crate::registry;

impl Executor {
    /// Runs a job's function on a blocking thread of its own (the user's
    /// function need not be `Send`), catching a panic; with what the call
    /// path reported to the job.
    pub(super) async fn run_function(
        &self,
        registration: &'static registry::Registration,
        job: Job,
    ) -> (Ran, Report) {
        let recompute = registration.recompute;
        let smache = self.smache.clone();
        let handle = tokio::runtime::Handle::current();
        // The job's span goes along to the blocking thread.
        let span = tracing::Span::current();
        let run = move || {
            span.in_scope(|| {
                let result = handle.block_on(smache.scope(recompute(&job)));
                (result, job.take_report())
            })
        };
        match tokio::task::spawn_blocking(run).await {
            Ok((result, report)) => (Ran::Returned(result), report),
            Err(err) => (Ran::Panicked(panic_message(err)), Report::default()),
        }
    }
}

/// How a job's function run ended.
pub(super) enum Ran {
    /// It returned this.
    Returned(Result<(), JobError>),
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
