//! The fan-out handlers: a change with many dependants is signalled a
//! chunk at a time, one script each, the job held until the last; and on a
//! store of several shards, a value stored anew tells its dependants in the
//! other shards through a fan-all job.

use super::Executor;
use crate::store::EntryRef;

impl Executor {
    /// Signals a token's many dependants, one chunk per script, each
    /// script recording how far it got, the last one acknowledging the job
    /// (see `lua/fanout.lua`): every dependant is marked before the
    /// recomputes of the first chunks are done, and a job reclaimed after
    /// a crash resumes after the last chunk signalled. Each chunk waits its
    /// turn among the executor's fan-outs (`FAN_OUT_CHUNKS_AT_ONCE`). `lazy`: the change
    /// has more dependants than `max_fanout`; they are only marked stale.
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
        let mut chunks = 0_u64;
        loop {
            fail::fail_point!(
                "smache::executor::fan_out::between_chunks",
                chunks > 0,
                |_| ()
            );
            let _turn = self.fan_out_chunks.acquire().await.expect("never closed");
            match self.store.fan_out(token, cursor, entry, lazy).await {
                Ok((queued, more)) => {
                    chunks += 1;
                    tracing::debug!(token, chunks, queued, "smache executor: fanned out a chunk");
                    if !more {
                        // Acknowledged by the last chunk's script.
                        return;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, token, chunks, "smache executor: redis unavailable; the rest of the fan-out left for retry");
                    return;
                }
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
