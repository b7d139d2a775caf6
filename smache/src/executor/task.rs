//! The task handler: compute the value of a submitted task (see
//! [`crate::task`]), with retries, and finish the task with its value or
//! its error.

use super::function::Ran;
use super::retry::{self, Attempt, Exhausted};
use super::Executor;
use crate::instance::Located;
use crate::key::{split_value_id, Job, JobError};
use crate::registry;
use crate::store::{Abandon, EntryRef, StreamJob};

impl Executor {
    /// Computes the value of a submitted task, with retries, and finishes
    /// the task with its value or its error.
    pub(super) async fn process_task(
        &self,
        entry: &EntryRef,
        id: &str,
        task: &str,
        full_args: String,
    ) {
        let key = self.smache.inner.store.value_key(id);
        let Some((head, id_args)) = split_value_id(id) else {
            tracing::warn!(id, task, "smache executor: malformed task; failed");
            let failed = Err(format!("malformed value id {id:?}"));
            return self.finish(entry, task, &key, &failed).await;
        };
        let Some(registration) = registry::find(head) else {
            let abandon = Abandon::Task {
                id,
                task,
                retention: self.smache.inner.settings.task_retention,
            };
            let again = StreamJob::Submitted {
                id: id.to_owned(),
                task: task.to_owned(),
                args: full_args.clone(),
            };
            return self
                .orphaned(entry, head, &format!("function {head}"), abandon, again)
                .await;
        };
        let args = if full_args.is_empty() {
            id_args.to_owned()
        } else {
            full_args
        };
        let (key, args) = (&key, &args);
        let exhausted = retry::attempts(
            self.smache.inner.settings.retry,
            |_| async move {
                // No generation: the plain call path (a hit, single flight
                // with other callers, or a computation) with its failure noted.
                let job = Job::new(self.smache.mongodb().cloned(), key.clone(), None, args.clone());
                let (ran, report) = self.run_function(registration, job).await;
                let failure = match ran {
                    Ran::Returned(Ok(())) => match self.reread(key, id).await {
                        Ok(Some(fetched))
                            if self.smache.inner.acceptable(registration.spec, &fetched) =>
                        {
                            // A value kept in MongoDB stays there: a copy for
                            // the task, and a reference in the task's record.
                            let data = if self.smache.inner.external(registration.spec) {
                                match self.smache.inner.keep_for_task(task, &fetched.data).await {
                                    Ok(reference) => reference,
                                    Err(err) => {
                                        tracing::warn!(error = %err, task, "smache executor: mongodb unavailable; task left for retry");
                                        return Attempt::Settled;
                                    }
                                }
                            } else {
                                fetched.data
                            };
                            self.finish(entry, task, key, &Ok(data)).await;
                            return Attempt::Settled;
                        }
                        Ok(_) => report
                            .failure
                            .unwrap_or_else(|| "the value was computed but not stored".to_owned()),
                        Err(()) => {
                            tracing::warn!(
                                task,
                                "smache executor: redis unavailable; task left for retry"
                            );
                            return Attempt::Settled;
                        }
                    },
                    Ran::Returned(Err(err @ (JobError::EntityGone { .. } | JobError::Malformed(_)))) => {
                        // Retrying cannot help.
                        self.finish(entry, task, key, &Err(err.to_string())).await;
                        return Attempt::Settled;
                    }
                    Ran::Returned(Err(err)) => err.to_string(),
                    Ran::Panicked(message) => message,
                };
                Attempt::Failed(failure)
            },
            |failure, run| {
                tracing::debug!(task, id, error = %failure, run, "smache executor: task run failed; retrying");
            },
        )
        .await;
        if let Some(Exhausted { failure, runs: run }) = exhausted {
            tracing::warn!(task, id, error = %failure, runs = run, "smache executor: task failed");
            self.finish(entry, task, key, &Err(failure)).await;
        }
    }

    /// Reads a task's value after its run, following an alias (a key that
    /// became one meanwhile has its value under the target's key).
    async fn reread(
        &self,
        key: &str,
        id: &str,
    ) -> std::result::Result<Option<crate::instance::Fetched>, ()> {
        let at = Located {
            key: key.to_owned(),
            id: id.to_owned(),
            full_args: String::new(),
        };
        Ok(self.smache.inner.lookup(&at).await?.0)
    }

    /// Records a task's result (once), queues its callbacks, wakes its
    /// waiters; acknowledges the job once that is done.
    async fn finish(
        &self,
        entry: &EntryRef,
        task: &str,
        value_key: &str,
        result: &std::result::Result<Vec<u8>, String>,
    ) {
        let inner = &self.smache.inner;
        match self
            .store
            .finish_task(task, value_key, result, inner.settings.task_retention)
            .await
        {
            Ok(_) => self.ack(entry).await,
            Err(err) => {
                tracing::warn!(error = %err, task, "smache executor: cannot finish a task; left for retry");
            }
        }
    }
}
