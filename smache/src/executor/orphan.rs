//! Jobs this process cannot run (their function or callback is not linked
//! here): left for an executor that has it (a deploy in progress) until no
//! live executor has announced it for the orphan timeout, then given up.

use std::time::Duration;

use super::{Executor, RECLAIM_AFTER};
use crate::error::Result;
use crate::store::{Abandon, EntryRef, StreamEntry, StreamJob};

/// When a job for a function (or callback) this process lacks is given up.
pub(super) struct Absence {
    /// Now, by the Redis clock (ms).
    now_ms: u64,
    /// When an executor last announced it has the function (ms).
    announced_ms: Option<u64>,
    /// When the job is given up (ms).
    deadline_ms: u64,
}

impl Absence {
    /// Whether the job is to be given up now.
    pub(super) fn due(&self) -> bool {
        self.now_ms >= self.deadline_ms
    }

    /// Why the job is given up, `what` naming what it needs.
    pub(super) fn reason(&self, what: &str, timeout: Duration) -> String {
        crate::inspect::orphan_reason(what, self.announced_ms, self.now_ms, timeout)
    }
}

impl Executor {
    /// When the job `entry`, for `field` of `{prefix}:fns` (a function head
    /// or a callback's field) that this process lacks, is given up.
    pub(super) async fn absence(&self, entry: &EntryRef, field: &str) -> Result<Absence> {
        let last = self.store.last_announced(field).await?;
        Ok(Absence {
            now_ms: last.now_ms,
            announced_ms: last.announced_ms,
            deadline_ms: crate::inspect::orphan_deadline(
                crate::inspect::entry_ms(&entry.id),
                last.announced_ms,
                self.orphan_timeout,
            ),
        })
    }

    /// A job for `what` (`function <head>` or `callback <name>`), known
    /// to executors as `field`, that this process lacks: left for an
    /// executor that has it (a deploy in progress) until none has
    /// announced it for the orphan timeout; then moved to the dead letters
    /// with why, undoing `abandon`. `job` is the job, to look at again.
    pub(super) async fn orphaned(
        &self,
        entry: &EntryRef,
        field: &str,
        what: &str,
        abandon: Abandon<'_>,
        job: StreamJob,
    ) {
        match self.absence(entry, field).await {
            Err(err) => {
                tracing::warn!(error = %err, entry = %entry, "smache executor: redis unavailable; job left for retry");
            }
            Ok(absence) if absence.due() => {
                let reason = absence.reason(what, self.orphan_timeout);
                tracing::error!(
                    entry = %entry,
                    reason,
                    "smache executor: no live executor can run a job; dead-lettered"
                );
                self.give_up_undoing(entry, &reason, abandon).await;
            }
            Ok(absence) => {
                tracing::warn!(
                    entry = %entry,
                    needs = what,
                    given_up_in_ms = absence.deadline_ms.saturating_sub(absence.now_ms),
                    "smache executor: not in this process; leaving the job for another executor"
                );
                self.recheck(entry, job, &absence);
            }
        }
    }

    /// Looks at a job left for another executor again at its deadline, if
    /// that comes before a reclaim would bring it back (after
    /// [`RECLAIM_AFTER`]), so it is given up on time.
    pub(super) fn recheck(&self, entry: &EntryRef, job: StreamJob, absence: &Absence) {
        let wait = Duration::from_millis(absence.deadline_ms.saturating_sub(absence.now_ms));
        if wait >= RECLAIM_AFTER {
            return;
        }
        let again = self.again.clone();
        let at = entry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait + Duration::from_millis(10)).await;
            // The executor stopped: nothing to do.
            let _ = again.send(StreamEntry {
                at,
                job,
                start: None,
            });
        });
    }
}
