//! The fan-out handler: a change with many dependants is signalled a chunk
//! at a time, each chunk a job of its own.

use super::Executor;

impl Executor {
    /// Signals one chunk of a token's many dependants; the script queues
    /// the next chunk and acknowledges the job. `lazy`: the change has more
    /// dependants than `max_fanout`; they are only marked stale.
    pub(super) async fn fan_out(
        &self,
        entry: &str,
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
}
