//! Aliases on a store of several shards (#16): an alias, its target, the
//! target's set of aliases and the aliases of the alias live in different
//! shards, so making an alias is a few one-shard steps instead of
//! `lua/alias.lua`'s one script (which one shard keeps).
//!
//! The steps, each safe to be the last one run (a crash between them):
//!
//! 1. The alias's own aliases are read (`al:<alias>`, its shard).
//! 2. They and the alias are added to the target's set (`al:<target>`, the
//!    target's shard; `lua/alias_link.lua`), resolving a target that is
//!    an alias to the value it names. Left alone: members that name
//!    something else, which every reader of the set skips and a later
//!    re-aliasing or drop removes.
//! 3. Each alias of the alias is re-pointed to the target, in its own
//!    shard (`lua/alias_point.lua`). Left alone: aliases that already name
//!    the target while the alias is still a value: what they are to name,
//!    never a chain.
//! 4. The alias becomes one (`lua/alias_set.lua`, its shard): its value and
//!    edges are dropped, its shard's dependants told and, if a value of
//!    another shard ever read it (`rd:`), a fan-all job queued for the
//!    others (`lua/common.lua` `fan_all`, as for a value stored anew);
//!    aliases of it made meanwhile are returned and go through 2–3 too.
//! 5. Its dependants in every other shard are told at once
//!    (`lua/spread.lua`), as that job will again. Left to the job after a
//!    crash before this step.
//!
//! `tests/crash_points.rs` kills the process before step 3 and before
//! step 5.
//!
//! An alias made while its target, or an alias of it, is being made an
//! alias concurrently can still end up naming an alias (both operations
//! read before the other wrote): a lookup through it then misses and
//! computes, and the next aliasing of either collapses it.

use super::{is_wrong_type, RedisStore};
use crate::error::{Error, Result};
use crate::store::{keys, Slot};

/// How many links step 2 follows from a target that is an alias (one,
/// but for a race with another aliasing) before giving up.
const MAX_LINKS: usize = 4;

impl RedisStore {
    /// [`alias`](Self::alias) on a store of several shards, step by step
    /// (see the module's documentation).
    pub(super) async fn alias_across(
        &self,
        alias: Slot<'_>,
        target: Slot<'_>,
    ) -> Result<Option<String>> {
        if alias.id == target.id {
            return Ok(None);
        }
        let mut conn = self.connection().await?;
        let base = self.shards.base_of(alias.id);
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(keys::aliases(base, alias.id));
        let theirs: Vec<String> = match self.bounded("alias", cmd.query_async(&mut conn)).await {
            Ok(members) => members,
            Err(Error::Redis(err)) if is_wrong_type(&err) => Vec::new(),
            Err(err) => return Err(err),
        };
        let mut registered: Vec<&str> = vec![alias.id];
        registered.extend(theirs.iter().map(String::as_str));
        let Some((to, args)) = self
            .link(alias.id, target.id, target.full_args, &registered)
            .await?
        else {
            return Ok(None);
        };
        fail::fail_point!("smache::store::alias::before_repoint");
        self.repoint(alias.id, &to, &args, &theirs).await?;
        let mut invocation = self.scripts.alias_set.key(alias.key);
        invocation
            .arg(base)
            .arg(alias.id)
            .arg(&to)
            .arg(&args)
            .arg(&theirs);
        let left: Vec<String> = self
            .bounded("alias", invocation.invoke_async(&mut conn))
            .await?;
        if !left.is_empty() {
            // Aliases of the alias made meanwhile.
            let left_ids: Vec<&str> = left.iter().map(String::as_str).collect();
            self.link(alias.id, &to, &args, &left_ids).await?;
            self.repoint(alias.id, &to, &args, &left).await?;
            let mut cmd = redis::cmd("SREM");
            cmd.arg(keys::aliases(base, alias.id)).arg(&left);
            let _: i64 = self.bounded("alias", cmd.query_async(&mut conn)).await?;
        }
        fail::fail_point!("smache::store::alias::before_signals");
        self.signal_elsewhere(alias.id).await?;
        Ok(Some(to))
    }

    /// Step 2: adds `members` to the set of aliases of `target` (or of the
    /// value it names, if it is an alias); that value's id and full
    /// arguments, or `None` for a cycle (it is `alias`).
    async fn link(
        &self,
        alias: &str,
        target: &str,
        full_args: &str,
        members: &[&str],
    ) -> Result<Option<(String, String)>> {
        let mut conn = self.connection().await?;
        let (mut to, mut args) = (target.to_owned(), full_args.to_owned());
        for _ in 0..MAX_LINKS {
            if to == alias {
                return Ok(None);
            }
            let base = self.shards.base_of(&to);
            let mut invocation = self.scripts.alias_link.key(keys::value(base, &to));
            invocation.arg(base).arg(&to).arg(members);
            let reply: Vec<String> = self
                .bounded("alias", invocation.invoke_async(&mut conn))
                .await?;
            match reply.as_slice() {
                [verdict, link, link_args] if verdict == "alias" => {
                    (to, args) = (link.clone(), link_args.clone());
                }
                _ => return Ok(Some((to, args))),
            }
        }
        Err(Error::Corrupt(format!(
            "the target of alias {alias} names an alias over {MAX_LINKS} times"
        )))
    }

    /// Step 3: re-points each of `aliases` that names `from` to `to` (full
    /// arguments `args`), each in its own shard, all at once.
    async fn repoint(&self, from: &str, to: &str, args: &str, aliases: &[String]) -> Result<()> {
        if aliases.is_empty() {
            return Ok(());
        }
        let conn = self.connection().await?;
        let points = aliases.iter().map(|other| {
            let mut conn = conn.clone();
            let mut invocation = self.scripts.alias_point.key(self.value_key(other));
            invocation.arg(from).arg(to).arg(args);
            async move { invocation.invoke_async::<i64>(&mut conn).await }
        });
        self.bounded("alias", futures::future::try_join_all(points))
            .await?;
        Ok(())
    }

    /// Tells the dependants of value `id` in every shard but its own (which
    /// its own script told) that it changed, at once (`lua/spread.lua`,
    /// as the fan-all job its own script queued will again: one signal
    /// more at most, where `touch.lua` would have queued a fan-all job in
    /// every shard, each signalling every shard again).
    pub(super) async fn signal_elsewhere(&self, id: &str) -> Result<()> {
        let conn = self.connection().await?;
        let own = self.shards.of(id);
        let token = keys::value_token(id);
        let touches = self
            .shards
            .bases()
            .enumerate()
            .filter(|(shard, _)| *shard != own)
            .map(|(_, base)| {
                let mut conn = conn.clone();
                let mut invocation = self.scripts.spread.key(keys::jobs(base));
                invocation.arg(base).arg(&token).arg("0");
                async move { invocation.invoke_async::<u64>(&mut conn).await }
            });
        self.bounded("signal", futures::future::try_join_all(touches))
            .await?;
        Ok(())
    }
}
