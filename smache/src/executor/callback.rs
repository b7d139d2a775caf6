//! The callback handler: run a callback of a finished task (see
//! [`crate::task`]), with the task's outcome.

use super::function::panic_of;
use super::Executor;
use crate::callback::Completion;
use crate::store::{keys, Abandon, EntryRef, StreamJob, TaskPhase};

impl Executor {
    /// Runs one callback of a finished task. Whatever the callback does,
    /// the job is acknowledged: a failing callback is logged, not retried.
    pub(super) async fn callback(&self, entry: &EntryRef, name: &str, task: &str, args: String) {
        let Some(handler) = self.smache.inner.callbacks.get(name).cloned() else {
            if let Ok(None) = self.store.task(task).await {
                tracing::warn!(
                    callback = name,
                    task,
                    "smache executor: a callback nobody here has, of a task that expired; dropped"
                );
                return self.ack(entry).await;
            }
            let again = StreamJob::Callback {
                name: name.to_owned(),
                task: task.to_owned(),
                args,
            };
            return self
                .orphaned(
                    entry,
                    &keys::callback_field(name),
                    &format!("callback {name}"),
                    Abandon::Nothing,
                    again,
                )
                .await;
        };
        let state = match self.store.task(task).await {
            Ok(Some(state)) => state,
            Ok(None) => {
                tracing::warn!(
                    callback = name,
                    task,
                    "smache executor: the task expired before its callback ran; dropped"
                );
                return self.ack(entry).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, task, "smache executor: redis unavailable; callback left for retry");
                return;
            }
        };
        let outcome = match state.state {
            TaskPhase::Done => match self.smache.inner.task_value(task, &state).await {
                Ok(data) => Ok(data),
                Err(err) => {
                    tracing::warn!(error = %err, task, "smache executor: cannot read a task's value; callback left for retry");
                    return;
                }
            },
            TaskPhase::Failed => Err(String::from_utf8_lossy(&state.result).into_owned()),
            _ => Err("the task has not finished".to_owned()),
        };
        let completion = Completion::new(task.to_owned(), outcome, args);
        match tokio::spawn(handler(completion)).await {
            Ok(Ok(())) => {
                tracing::debug!(callback = name, task, "smache executor: callback done");
            }
            Ok(Err(err)) => {
                tracing::warn!(callback = name, task, error = %err, "smache executor: a callback failed; dead-lettered");
                return self
                    .give_up(entry, &format!("the callback failed: {err}"))
                    .await;
            }
            Err(err) => {
                let message = panic_of("the callback", err);
                tracing::error!(callback = name, task, error = %message, "smache executor: a callback panicked; dead-lettered");
                return self.give_up(entry, &message).await;
            }
        }
        self.ack(entry).await;
    }
}
