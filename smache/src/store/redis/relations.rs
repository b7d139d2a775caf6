//! The relation job's reads of the graph (`lua/relate.lua` writes it):
//! which functions of each shard declare relations on a collection
//! (`rel:<collection>`), and what a related document mapped to at its
//! last change seen (`m:<function>|<document>`). A key of another type
//! there (not smache's write) reads as empty, as the scripts treat it.

use super::{is_wrong_type, RedisStore};
use crate::error::{Error, Result};
use crate::store::keys;

impl RedisStore {
    /// The functions with relations on `collection` in each of `shards`
    /// (pipelined: on a cluster, a pipeline per slot, sent at once), by
    /// shard, leaving out shards with none. A shard whose key holds
    /// something else than a set (not smache's) has none, as for the
    /// worker's script (`lua/common.lua` `related_document`), rather than
    /// failing the job at every try: the next store of a value with
    /// relations there writes the set again.
    pub(crate) async fn related_functions(
        &self,
        shards: &[usize],
        collection: &str,
    ) -> Result<Vec<(usize, Vec<String>)>> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        // Each reply on its own: one shard's key of another type must not
        // fail the others (a server error inside a pipeline carries no
        // code of its own unless taken from its reply).
        pipe.ignore_errors();
        for &shard in shards {
            pipe.cmd("SMEMBERS")
                .arg(keys::relations(self.shards.base(shard), collection));
        }
        let replies: Vec<redis::Value> = self
            .bounded("relations", pipe.query_async(&mut conn))
            .await?;
        let mut found = Vec::new();
        for (&shard, reply) in shards.iter().zip(replies) {
            let heads: Vec<String> = match reply.extract_error() {
                Ok(value) => redis::from_redis_value(value).map_err(redis::RedisError::from)?,
                Err(err) if is_wrong_type(&err) => {
                    not_a_set(&keys::relations(self.shards.base(shard), collection));
                    Vec::new()
                }
                Err(err) => return Err(Error::Redis(err)),
            };
            if !heads.is_empty() {
                found.push((shard, heads));
            }
        }
        Ok(found)
    }

    /// The targets recorded for the mapping of `source` by the function
    /// `head` in shard `shard` (the relation job's: see `lua/relate.lua`);
    /// empty if none is, or if the key holds something else.
    pub(crate) async fn recorded_targets(
        &self,
        shard: usize,
        head: &str,
        source: &str,
    ) -> Result<Vec<String>> {
        let key = keys::mapping(self.shards.base(shard), head, source);
        self.members_or_none("recorded_targets", &key).await
    }

    /// The members of set `key`; none, with a warning, when the key holds
    /// another type (not smache's: `lua/relate.lua` replaces it). For a
    /// recorded mapping, none is "unknown": the relation job marks the
    /// function's values stale unless a pre-image says what it concerned.
    async fn members_or_none(&self, what: &'static str, key: &str) -> Result<Vec<String>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(key);
        match self.bounded(what, cmd.query_async(&mut conn)).await {
            Err(Error::Redis(err)) if is_wrong_type(&err) => {
                not_a_set(key);
                Ok(Vec::new())
            }
            other => other,
        }
    }
}

/// Says that `key`, of a relation's graph, holds something else than a
/// set (not smache's write), read as empty.
fn not_a_set(key: &str) {
    tracing::warn!(
        key,
        "smache: a key of a relation's graph holds something else than a set; read as empty"
    );
}
