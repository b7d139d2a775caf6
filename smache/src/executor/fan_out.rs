//! The fan-out handlers: a change with many dependants is signalled a
//! chunk at a time, each chunk a job of its own; and on a store of several
//! shards, a value stored anew tells its dependants in the other shards
//! through a fan-all job.

use super::Executor;
use crate::store::EntryRef;

impl Executor {
    /// Signals one chunk of a token's many dependants; the script queues
    /// the next chunk and acknowledges the job. `lazy`: the change has more
    /// dependants than `max_fanout`; they are only marked stale.
    pub(super) async fn fan_out(
        &self,
        entry: &EntryRef,
        token: &str,
        cursor: &str,
        lazy: bool,
        dependants: Option<u64>,
    ) {
        if lazy && cursor == "0" {
            tracing::warn!(
                token,
                dependants,
                "smache executor: a change has more dependants than max_fanout; they are marked \
                 stale without a recompute each, and recomputed when next read"
            );
        }
        match self.store.fan_out(token, cursor, entry, lazy).await {
            Ok(queued) => {
                // Acknowledged by the script itself.
                tracing::debug!(token, cursor, queued, "smache executor: fanned out a chunk");
            }
            Err(err) => {
                tracing::warn!(error = %err, token, "smache executor: redis unavailable; fan-out left for retry");
            }
        }
    }

    /// Signals the dependants of a value's token in every shard but the
    /// job's own (which its script signalled inline), then acknowledges
    /// the job. Should this executor die before the acknowledgement, the
    /// job is reclaimed and run again: each dependant is signalled twice,
    /// at most one more recompute. `lazy`: the value turned stale with no
    /// new value coming; its dependants are only marked stale.
    pub(super) async fn fan_all(&self, entry: &EntryRef, token: &str, lazy: bool) {
        fail::fail_point!("smache::executor::fan_all::before_signals");
        match self.store.fan_all(entry, token, lazy).await {
            Ok(queued) => {
                tracing::debug!(
                    token,
                    queued,
                    "smache executor: signalled a value's dependants in every shard"
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, token, entry = %entry, "smache executor: redis unavailable; fan-out to the other shards left for retry");
            }
        }
    }
}
