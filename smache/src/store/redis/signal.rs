//! Signalling dependants as changed: marking values stale (by id, or all
//! that match), related documents, fan-out jobs (a chunk in one shard, or
//! a value's token in every other shard), background refreshes, and
//! finding which documents some value depends on.

use super::stream::EntryRef;
use super::{RedisStore, Scan};
use crate::error::Result;
use crate::store::keys;

impl RedisStore {
    /// Every key matching `pattern`.
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<String>> {
        let mut conn = self.connection().await?;
        let (mut scan, mut keys) = (Scan::new(pattern, None), Vec::new());
        while let Some(page) = self.bounded("scan", scan.next_page(&mut conn)).await? {
            keys.extend(page);
        }
        Ok(keys)
    }

    /// The dependency tokens of the documents of `collection` that some
    /// value depends on (`e:<collection>:<id key>`), found by a scan of
    /// the reverse edges of every shard.
    pub(crate) async fn dependant_documents(&self, collection: &str) -> Result<Vec<String>> {
        let mut tokens = std::collections::BTreeSet::new();
        for base in self.shards.bases() {
            let prefix = keys::dependants_prefix(base);
            let pattern = keys::document_dependants_pattern(base, collection);
            // (`e:shop:*` matches the documents of `shop:orders` too.)
            tokens.extend(
                self.scan(&pattern)
                    .await?
                    .into_iter()
                    .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned))
                    .filter(|token| {
                        keys::split_document(token).is_some_and(|(of, _)| of == collection)
                    }),
            );
        }
        Ok(tokens.into_iter().collect())
    }

    /// Signals as changed every value whose id matches `id_glob` (`lazy`:
    /// marks them stale with no recompute coming), in every shard, a page
    /// of the scan at a time; how many values, and how many jobs queued.
    pub(crate) async fn mark_matching_stale(
        &self,
        id_glob: &str,
        lazy: bool,
    ) -> Result<(usize, u64)> {
        self.mark_matching_stale_in(self.shards.bases(), id_glob, lazy)
            .await
    }

    /// Marks every value of the function `head` in `shards` stale, with no
    /// recompute coming; how many values, and how many jobs queued. For a
    /// relation job whose document's earlier targets are unknown: the
    /// shards are those holding values of the function (or the job's
    /// alone, for a job of one shard from an older worker).
    pub(crate) async fn mark_function_stale(
        &self,
        shards: &[usize],
        head: &str,
    ) -> Result<(usize, u64)> {
        let bases: Vec<&str> = shards
            .iter()
            .map(|&shard| self.shards.base(shard))
            .collect();
        self.mark_matching_stale_in(bases, &keys::function_values(head), true)
            .await
    }

    /// [`mark_matching_stale`](Self::mark_matching_stale) in the shards
    /// of `bases` only.
    async fn mark_matching_stale_in<'a>(
        &self,
        bases: impl IntoIterator<Item = &'a str>,
        id_glob: &str,
        lazy: bool,
    ) -> Result<(usize, u64)> {
        let mut conn = self.connection().await?;
        let (mut values, mut queued) = (0, 0);
        for base in bases {
            let prefix = keys::value_prefix(base);
            let mut scan = Scan::new(format!("{prefix}{id_glob}"), None);
            while let Some(keys) = self.bounded("scan", scan.next_page(&mut conn)).await? {
                let ids: Vec<String> = keys
                    .iter()
                    .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned))
                    .collect();
                values += ids.len();
                for chunk in ids.chunks(500) {
                    queued += self.mark_stale(base, chunk, lazy).await?;
                }
            }
        }
        Ok((values, queued))
    }

    /// Signals every value in `ids`, all of shard `base`, as changed
    /// (`lazy`: marks them stale with no recompute coming).
    async fn mark_stale(&self, base: &str, ids: &[String], lazy: bool) -> Result<u64> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.stale.key(keys::jobs(base));
        invocation
            .arg(base)
            .arg(if lazy { "1" } else { "0" })
            .arg(ids);
        self.bounded("stale", invocation.invoke_async(&mut conn))
            .await
    }

    /// Refreshes the values of `head` in shard `shard` that a related
    /// document maps to now and mapped to before its change
    /// (`lua/relate.lua`), how many jobs were queued. `related.before`
    /// holds every earlier target known (the pre-image's and the
    /// recorded ones). With `record`, in the relation job's shard: the
    /// record there counts too, and is replaced by the current mapping.
    pub(crate) async fn relate(
        &self,
        shard: usize,
        head: &str,
        related: &Related<'_>,
        record: bool,
    ) -> Result<u64> {
        let mut conn = self.connection().await?;
        let invocation = self.relate_invocation(shard, head, related, record);
        self.bounded("relate", invocation.invoke_async(&mut conn))
            .await
    }

    /// [`relate`](Self::relate) without the record in each of `shards`,
    /// all at once; how many jobs were queued.
    pub(crate) async fn relate_in(
        &self,
        shards: &[usize],
        head: &str,
        related: &Related<'_>,
    ) -> Result<u64> {
        let conn = self.connection().await?;
        let relates: Vec<_> = shards
            .iter()
            .map(|&shard| {
                let mut conn = conn.clone();
                let invocation = self.relate_invocation(shard, head, related, false);
                async move { invocation.invoke_async::<u64>(&mut conn).await }
            })
            .collect();
        let queued = self
            .bounded("relate", futures::future::try_join_all(relates))
            .await?;
        Ok(queued.into_iter().sum())
    }

    /// The call of `lua/relate.lua` in shard `shard` (see
    /// [`relate`](Self::relate)).
    fn relate_invocation(
        &self,
        shard: usize,
        head: &str,
        related: &Related<'_>,
        record: bool,
    ) -> super::super::script::Invocation<'_> {
        let base = self.shards.base(shard);
        let mut invocation = self.scripts.relate.key(keys::jobs(base));
        invocation
            .arg(base)
            .arg(head)
            .arg(related.source)
            .arg(related.target)
            .arg(if related.gone { "1" } else { "0" })
            .arg(if record { "1" } else { "0" })
            .arg(related.now.len())
            .arg(related.now)
            .arg(related.before.unwrap_or_default());
        invocation
    }

    /// Signals the next chunk of the dependants of `token` in the shard of
    /// the fan-out job `entry`, from where the job's last chunk left off
    /// (else from `cursor`, the job's own), and records how far it got; the
    /// last chunk acknowledges `entry` (`lua/fanout.lua`). The number of
    /// recompute jobs queued, and whether dependants are left.
    pub(crate) async fn fan_out(
        &self,
        token: &str,
        cursor: &str,
        entry: &EntryRef,
        lazy: bool,
    ) -> Result<(u64, bool)> {
        let mut conn = self.connection().await?;
        let base = self.shards.base(entry.shard);
        let mut invocation = self.scripts.fanout.key(keys::jobs(base));
        invocation
            .arg(base)
            .arg(token)
            .arg(cursor)
            .arg(&entry.id)
            .arg(keys::GROUP)
            .arg(if lazy { "1" } else { "0" });
        let (queued, next): (u64, String) = self
            .bounded("fanout", invocation.invoke_async(&mut conn))
            .await?;
        Ok((queued, next != "0"))
    }

    /// Signals the dependants of a value's token (`v:<id>`) in every
    /// shard but that of the fan-all job `entry` (whose script signalled
    /// its own), all at once (`lua/spread.lua`), then acknowledges the
    /// job; the number of jobs queued. A failure leaves the job
    /// unacknowledged, to run again (each dependant signalled again: at
    /// most one more recompute).
    pub(crate) async fn fan_all(&self, entry: &EntryRef, token: &str, lazy: bool) -> Result<u64> {
        let conn = self.connection().await?;
        let spreads = self
            .shards
            .bases()
            .enumerate()
            .filter(|(shard, _)| *shard != entry.shard)
            .map(|(_, base)| {
                let mut conn = conn.clone();
                let mut invocation = self.scripts.spread.key(keys::jobs(base));
                invocation
                    .arg(base)
                    .arg(token)
                    .arg(if lazy { "1" } else { "0" });
                async move { invocation.invoke_async::<u64>(&mut conn).await }
            });
        let queued = self
            .bounded("spread", futures::future::try_join_all(spreads))
            .await?;
        self.ack(entry).await?;
        Ok(queued.into_iter().sum())
    }

    /// Queues a background refresh of a value past its time-to-live,
    /// found as `version` (see `lua/refresh.lua`), in the value's shard.
    pub(crate) async fn refresh(&self, id: &str, version: u64) -> Result<()> {
        let mut conn = self.connection().await?;
        let base = self.shards.base_of(id);
        let mut invocation = self.scripts.refresh.key(keys::jobs(base));
        invocation.arg(base).arg(id).arg(version);
        let _: i64 = self
            .bounded("refresh", invocation.invoke_async(&mut conn))
            .await?;
        Ok(())
    }
}

/// A related document mapped for one function; see [`RedisStore::relate`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Related<'a> {
    /// The document's collection.
    pub(crate) collection: &'a str,
    /// The document, `<collection>:<id key>`, which names its record
    /// (`#<n>` after it for the function's n-th relation on the
    /// collection, counted from 0, when n > 0).
    pub(crate) source: &'a str,
    /// The collection of the entities it maps to.
    pub(crate) target: &'a str,
    /// Whether it was deleted.
    pub(crate) gone: bool,
    /// The id keys it maps to now.
    pub(crate) now: &'a [String],
    /// The id keys it mapped to before the change, when known (its
    /// pre-image's mapping; empty for an insert).
    pub(crate) before: Option<&'a [String]>,
}
