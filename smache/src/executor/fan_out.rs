//! The fan-out handlers: a change with many dependants is signalled a
//! chunk at a time, one script each, the job held until the last; and on a
//! store of several shards, a value stored anew tells its dependants in the
//! other shards through a fan-all job.

use std::time::Duration;

use super::Executor;
use crate::store::EntryRef;

/// How many more times a fan-out chunk Redis did not answer (it timed out,
/// or the breaker was open) is tried before the job is left for a reclaim
/// ([`RECLAIM_AFTER`](super::RECLAIM_AFTER) later).
const CHUNK_TRIES: u32 = 4;
/// The first pause before a chunk is tried again, doubling after each
/// failure (3.75 s in all).
const CHUNK_PAUSE: Duration = Duration::from_millis(250);

impl Executor {
    /// Signals a token's many dependants, one chunk per script, each
    /// script recording how far it got, the last one acknowledging the job
    /// (see `lua/fanout.lua`): the last chunks are marked without waiting
    /// behind the recomputes the first ones queued, and a job reclaimed
    /// after a crash resumes after the last chunk signalled. Each chunk
    /// waits its turn among the executor's fan-outs
    /// (`FAN_OUT_CHUNKS_AT_ONCE`); a chunk Redis did not answer is tried
    /// again a few times. A stopping executor runs its fan-outs on while it
    /// drains (a chunk's script runs whole or not at all, so one dropped
    /// when the drain runs out resumes after its last chunk elsewhere).
    /// `lazy`: the change has more dependants than `max_fanout`; they are
    /// only marked stale.
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
        let (mut chunks, mut failures) = (0_u64, 0_u32);
        loop {
            fail::fail_point!(
                "smache::executor::fan_out::between_chunks",
                chunks > 0,
                |_| ()
            );
            let turn = self.fan_out_chunks.acquire().await.expect("never closed");
            let chunk = self.store.fan_out(token, cursor, entry, lazy).await;
            drop(turn);
            match chunk {
                Ok((queued, more)) => {
                    chunks += 1;
                    failures = 0;
                    tracing::debug!(token, chunks, queued, "smache executor: fanned out a chunk");
                    if !more {
                        // Acknowledged by the last chunk's script.
                        return;
                    }
                }
                Err(err) if err.is_unreachable() && failures < CHUNK_TRIES => {
                    // Safe to run again: a chunk's script writes its
                    // progress with its signals, or writes nothing.
                    failures += 1;
                    let pause = CHUNK_PAUSE * 2_u32.pow(failures - 1);
                    tracing::debug!(error = %err, token, chunks, ?pause, "smache executor: a fan-out chunk failed; trying again");
                    tokio::time::sleep(pause).await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, token, chunks, "smache executor: a fan-out chunk failed; the rest of the fan-out is left for a reclaim");
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
