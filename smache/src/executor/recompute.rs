//! The recompute handler: a change made a value stale; run its function
//! again, from fresh arguments, and store the result unless a value
//! computed from newer data was stored meanwhile.

use std::time::Instant;

use super::function::Ran;
use super::retry::{self, Attempt, Exhausted};
use super::{Executor, MIN_RECOMPUTE_INTERVAL};
use crate::instance::Located;
use crate::key::{split_value_id, Job, JobError};
use crate::registry;
use crate::store::{Abandon, EntryRef, Outcome, Start, StreamJob};

impl Executor {
    /// Runs one job; acknowledges it when it is done for good. `start`:
    /// what starting it answered, if it was started as it was read (see
    /// `lua/take.lua`); else it is started here.
    pub(super) async fn process(&self, entry: &EntryRef, id: &str, start: Option<Start>) {
        let at = Located {
            key: self.smache.inner.store.value_key(id),
            id: id.to_owned(),
            full_args: String::new(),
        };
        let Some((head, id_args)) = split_value_id(id) else {
            tracing::warn!(id, "smache executor: malformed job; dead-lettered");
            return self.give_up(entry, "malformed value id").await;
        };
        let Some(registration) = registry::find(head) else {
            // Another version of the application may have it (a deploy in
            // progress): leave the job for an executor that does, for a while.
            return self
                .orphaned(
                    entry,
                    head,
                    &format!("function {head}"),
                    Abandon::Recompute { id },
                    StreamJob::Value(id.to_owned()),
                )
                .await;
        };
        // Started in the job's shard, which is the value's own but for a
        // job queued under another shard count: then started here, in
        // the value's shard.
        let mut start = start
            .filter(|_| self.store.shard_of(id) == entry.shard)
            .map(Ok);
        let (started, full_args) = loop {
            let answer = match start.take() {
                Some(answer) => answer,
                None => self.store.start_job(&at.key, MIN_RECOMPUTE_INTERVAL).await,
            };
            match answer {
                Ok(Start::Run { started, full_args }) => break (started, full_args),
                Ok(Start::Wait(delay)) => tokio::time::sleep(delay).await,
                Ok(Start::Gone) => return self.ack(entry).await,
                Err(err) => {
                    tracing::warn!(error = %err, id, "smache executor: redis unavailable; job left for retry");
                    return;
                }
            }
        };
        let args = if full_args.is_empty() {
            id_args.to_owned()
        } else {
            full_args
        };
        let (at, args) = (&at, &args);
        let exhausted = retry::attempts(
            self.smache.inner.settings.retry,
            |run| async move {
                let job = Job::new(
                    self.smache.mongodb().cloned(),
                    at.key.clone(),
                    Some(started),
                    args.clone(),
                );
                let began = Instant::now();
                let (ran, report) = self.run_function(registration, job).await;
                let outcome = report.outcome;
                let spec = registration.spec;
                crate::metrics::recomputed(spec.name(), outcome_label(&ran, outcome), began.elapsed());
                let failure = match (ran, outcome) {
                    (Ran::Returned(Ok(())), Some(Outcome::Stored | Outcome::Superseded)) => {
                        if outcome == Some(Outcome::Stored) {
                            crate::metrics::refreshed(spec.name(), crate::inspect::entry_ms(&entry.id));
                        }
                        self.ack(entry).await;
                        return Attempt::Settled;
                    }
                    (Ran::Returned(Ok(())), Some(Outcome::TooLarge)) => {
                        tracing::error!(id, "smache executor: the recomputed value is larger than max_value_size; not stored, the old value stays (stale); dead-lettered");
                        self.give_up(entry, "the value is larger than max_value_size")
                            .await;
                        return Attempt::Settled;
                    }
                    (Ran::Returned(Ok(())), Some(Outcome::NotCached)) => report
                        .failure
                        .unwrap_or_else(|| "the value was not cached".to_owned()),
                    (Ran::Returned(Ok(())), _) => {
                        tracing::warn!(
                            id,
                            "smache executor: the value could not be stored; job left for retry"
                        );
                        return Attempt::Settled;
                    }
                    (
                        Ran::Returned(Err(JobError::EntityGone {
                            collection,
                            id: gone,
                        })),
                        _,
                    ) => {
                        tracing::debug!(id, collection, %gone, "smache executor: an entity is gone; dropping the value");
                        match self.store.drop_value(at.slot()).await {
                            Ok(_) => {
                                self.smache
                                    .inner
                                    .forget_external(registration.spec, &at.key)
                                    .await;
                                self.ack(entry).await;
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, id, "smache executor: cannot drop the value; job left for retry");
                            }
                        };
                        return Attempt::Settled;
                    }
                    (Ran::Returned(Err(err @ JobError::Malformed(_))), _) => {
                        tracing::error!(error = %err, id, "smache executor: the job does not match the function; dead-lettered");
                        self.give_up(entry, &err.to_string()).await;
                        return Attempt::Settled;
                    }
                    (Ran::Returned(Err(err)), _) => {
                        if run.last {
                            // MongoDB or Redis unreachable: keep the job for
                            // another round (reclaimed after RECLAIM_AFTER).
                            tracing::warn!(error = %err, id, "smache executor: recompute failed; job left for retry");
                            return Attempt::Settled;
                        }
                        err.to_string()
                    }
                    (Ran::Panicked(message), _) => message,
                };
                Attempt::Failed(failure)
            },
            |failure, run| {
                tracing::warn!(id, error = %failure, run, "smache executor: recompute failed; retrying");
            },
        )
        .await;
        if let Some(Exhausted { failure, runs: run }) = exhausted {
            tracing::error!(id, error = %failure, runs = run, "smache executor: recompute failed on every attempt; the old value stays (stale); dead-lettered");
            let reason = format!("recompute failed on every attempt ({run} runs): {failure}");
            self.give_up(entry, &reason).await;
        }
    }
}

/// What a recompute run came to, for [`crate::metrics::RECOMPUTATIONS`].
fn outcome_label(ran: &Ran, outcome: Option<Outcome>) -> &'static str {
    match (ran, outcome) {
        (Ran::Returned(Ok(())), Some(Outcome::Stored)) => "stored",
        (Ran::Returned(Ok(())), Some(Outcome::Superseded)) => "superseded",
        (Ran::Returned(Ok(())), Some(Outcome::TooLarge)) => "too_large",
        (Ran::Returned(Ok(())), Some(Outcome::Unreachable) | None) => "unreachable",
        (Ran::Returned(Err(JobError::EntityGone { .. })), _) => "gone",
        _ => "error",
    }
}
