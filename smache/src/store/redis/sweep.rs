//! The graph sweep: reverse-edge sets cleared of values that no longer
//! exist (`lua/sweep.lua`), a bounded step at a time, so that the memory
//! of values that expired is reclaimed even when what they depended on
//! never changes. The watching worker runs it (see `worker::watch`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{RedisStore, Scan};
use crate::error::Result;
use crate::store::keys;

/// Sets swept by one call of `lua/sweep.lua` (all of one shard), and the
/// members each gives it (`SSCAN`'s `COUNT`): bounds on how long one call
/// holds Redis. A larger set is swept over several calls.
const SETS_PER_CALL: usize = 64;
const MEMBERS_PER_SET: usize = 64;

/// One pass of the sweep over every reverse-edge set of the instance, in
/// every shard: one walk of the keyspace (`SCAN`, every master's on a
/// cluster), the sets it finds swept a batch of one shard's at a time.
pub(crate) struct GraphSweep {
    scan: Scan,
    /// Sets found and not swept to their end: key, its shard (an index
    /// in the store's bases) and its `SSCAN` cursor.
    pending: VecDeque<(String, usize, u64)>,
    /// What this pass did so far.
    pub(crate) swept: Swept,
}

/// What a pass of the graph sweep did.
///
/// ```
/// let swept = smache::worker::Swept::default();
/// assert_eq!((swept.sets, swept.removed), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Swept {
    /// Reverse-edge sets swept to their end.
    pub sets: u64,
    /// Edges removed: ids of values that no longer exist.
    pub removed: u64,
}

impl RedisStore {
    /// A new pass of the graph sweep.
    pub(crate) fn graph_sweep(&self) -> GraphSweep {
        // One pattern finds the sets of every shard: `{<prefix>}:r:*` for
        // one, `{<prefix>#*}:r:*` for several (`#` is never in a prefix,
        // nor are glob characters).
        let pattern = if self.sharded() {
            let tag = self.base.trim_end_matches(':').trim_end_matches('}');
            format!("{}#*}}:r:*", keys::glob_escape(tag))
        } else {
            format!(
                "{}*",
                keys::glob_escape(&keys::dependants_prefix(&self.base))
            )
        };
        GraphSweep {
            scan: Scan::new(pattern, Some("set")),
            pending: VecDeque::new(),
            swept: Swept::default(),
        }
    }

    /// Runs Redis calls of `sweep` until `calls` are made or `time` has
    /// passed; `true` once the pass is done. After an error the pass is
    /// over (the sets of the failed call are dropped from it): start a
    /// new one. Failures never open the breaker (see
    /// [`timed`](Self::timed)): a node the walk cannot reach is no reason
    /// for callers to skip Redis.
    pub(crate) async fn sweep_step(
        &self,
        sweep: &mut GraphSweep,
        calls: usize,
        time: Duration,
    ) -> Result<bool> {
        let started = Instant::now();
        let mut conn = self.connection().await?;
        let bases: Vec<&str> = self.shards.bases().collect();
        for _ in 0..calls {
            if started.elapsed() >= time {
                break;
            }
            let Some(&(_, shard, _)) = sweep.pending.front() else {
                match self.timed("scan", sweep.scan.next_page(&mut conn)).await? {
                    // Only the sets of this instance's own shards.
                    Some(page) => sweep.pending.extend(page.into_iter().filter_map(|key| {
                        let base = keys::base_of_key(&key)?;
                        let shard = bases.iter().position(|b| *b == base)?;
                        key[base.len()..]
                            .starts_with("r:")
                            .then_some((key, shard, 0))
                    })),
                    None => return Ok(true),
                }
                continue;
            };
            // A batch of that shard's sets, taken out while it runs.
            let mut batch = Vec::new();
            let mut rest = VecDeque::with_capacity(sweep.pending.len());
            for entry in sweep.pending.drain(..) {
                if entry.1 == shard && batch.len() < SETS_PER_CALL {
                    batch.push(entry);
                } else {
                    rest.push_back(entry);
                }
            }
            sweep.pending = rest;
            let mut invocation = self.scripts.sweep.key(&batch[0].0);
            invocation.arg(bases[shard]).arg(MEMBERS_PER_SET);
            for (i, (key, _, cursor)) in batch.iter().enumerate() {
                if i > 0 {
                    invocation.key(key);
                }
                invocation.arg(cursor);
            }
            let reply: Vec<u64> = self
                .timed("sweep", invocation.invoke_async(&mut conn))
                .await?;
            if reply.len() != batch.len() + 1 {
                return Err(crate::error::Error::Corrupt(
                    "sweep.lua answered a reply of another length".into(),
                ));
            }
            sweep.swept.removed += reply[0];
            for ((key, shard, _), next) in batch.into_iter().zip(&reply[1..]) {
                if *next == 0 {
                    sweep.swept.sets += 1;
                } else {
                    sweep.pending.push_back((key, shard, *next));
                }
            }
        }
        Ok(sweep.scan.is_done() && sweep.pending.is_empty())
    }

    /// A whole pass of the graph sweep, at once.
    pub(crate) async fn sweep_graph(&self) -> Result<Swept> {
        let mut sweep = self.graph_sweep();
        while !self
            .sweep_step(&mut sweep, usize::MAX, Duration::MAX)
            .await?
        {}
        Ok(sweep.swept)
    }
}
