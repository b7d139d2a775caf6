//! Values: reading one, the compute lease around a miss (begin, renew,
//! release, and the waiters woken when it ends), storing, aliasing and
//! dropping.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{is_wrong_type, millis, parse_u64, tracking, RedisStore};
use crate::error::{Error, Result};
use crate::spec::Refresh;
use crate::store::keys;
use crate::store::layer::Cached;
use crate::store::notify::Notifier;
use crate::store::{Lookup, Put, Slot};

impl RedisStore {
    /// What is stored under `key`. With an in-process layer up, read over
    /// its tracking connection, and a value that may be served as it is
    /// (fresh, within its time-to-live) is kept in the layer.
    pub(crate) async fn get(&self, key: &str) -> Result<Lookup> {
        let tracked = self
            .tracking
            .as_ref()
            .and_then(|t| Some((t, t.begin_read(key)?)));
        let (reply, tracking, ticket) = match tracked {
            Some((tracking, (mut conn, ticket))) => {
                self.admitted().await?;
                // Not the breaker's business: a tracking connection that
                // fails is given up, and the read made over the shared one.
                match tokio::time::timeout(self.timeout, hmget(&mut conn, key)).await {
                    Ok(Err(err)) if !tracking::unreachable(&err) => {
                        (Err(Error::Redis(err)), Some(tracking), Some(ticket))
                    }
                    Ok(Ok(reply)) => (Ok(reply), Some(tracking), Some(ticket)),
                    // Gone, or no answer in time.
                    Ok(Err(_)) | Err(_) => {
                        tracking.failed();
                        (self.read_shared(key).await, None, None)
                    }
                }
            }
            None => (self.read_shared(key).await, None, None),
        };
        let lookup = match reply {
            Ok([.., Some(link), args]) => Lookup::Alias {
                target: String::from_utf8_lossy(&link).into_owned(),
                full_args: String::from_utf8_lossy(&args.unwrap_or_default()).into_owned(),
            },
            Ok([_, None, ..]) => Lookup::Miss,
            Ok([version, Some(data), generation, computed_from, stale_at, expires, None, _]) => {
                let Some(version) = parse_u64(version.as_deref()) else {
                    return Ok(Lookup::Foreign("the value version is not a number".into()));
                };
                let stale = parse_u64(generation.as_deref()).unwrap_or(0)
                    > parse_u64(computed_from.as_deref()).unwrap_or(0);
                let expires_at_ms = parse_u64(expires.as_deref());
                let expired = expires_at_ms.is_some_and(|at| at <= crate::envelope::now_ms());
                // Values kept in MongoDB are served through the full path.
                let reference = crate::envelope::is_reference(&data);
                if let (Some(tracking), Some(ticket), false, false, false) =
                    (tracking, ticket, stale, expired, reference)
                {
                    let cached = Cached {
                        version,
                        data: Arc::from(data.as_slice()),
                        expires_at_ms,
                        epoch: 0,
                        decoded: crate::store::Decoded::new(),
                    };
                    tracking.layer().fill(key, ticket, cached);
                }
                Lookup::Hit {
                    version,
                    data,
                    stale_since_ms: stale.then(|| parse_u64(stale_at.as_deref()).unwrap_or(0)),
                    expired,
                }
            }
            Err(Error::Redis(err)) if is_wrong_type(&err) => {
                Lookup::Foreign("the key holds a Redis type other than a hash".into())
            }
            Err(err) => return Err(err),
        };
        Ok(lookup)
    }

    /// [`hmget`] over the shared connection, bounded and watched by the
    /// breaker.
    async fn read_shared(&self, key: &str) -> Result<[Option<Vec<u8>>; 8]> {
        let mut conn = self.connection().await?;
        self.bounded("get", hmget(&mut conn, key)).await
    }

    /// The value of id `write_id` writes in the in-process layer, if it
    /// may be served from there: the read of a hit, with no round trip.
    /// `None` sends the caller to Redis.
    pub(crate) fn peek(&self, write_id: impl FnOnce(&mut String)) -> Option<Arc<Cached>> {
        let layer = self.layer()?;
        let cached = keys::with_value_id(write_id, |id| layer.get_id(id));
        if cached.is_none() {
            crate::metrics::layer(crate::metrics::LayerEvent::Missed);
        }
        cached
    }

    pub(crate) async fn begin(
        &self,
        slot: Slot<'_>,
        deps: &[String],
        owner: &str,
        lease: Duration,
        seen: &str,
    ) -> Result<Begin> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.begin.key(slot.key);
        invocation
            .arg(slot.base())
            .arg(slot.id)
            .arg(slot.full_args)
            .arg(BEGIN_LEASE_MS.max(millis(lease)))
            .arg(owner)
            .arg(millis(lease))
            .arg(seen)
            .arg(deps);
        let (verdict, number): (String, String) = self
            .bounded("begin", invocation.invoke_async(&mut conn))
            .await?;
        Ok(match verdict.as_str() {
            "wait" => Begin::Wait(Duration::from_millis(number.parse().unwrap_or(0))),
            "read" => Begin::Read(number),
            _ => Begin::Go(number.parse().unwrap_or(0)),
        })
    }

    /// Gives up a compute lease without storing, and wakes the waiters.
    pub(crate) async fn release(&self, slot: Slot<'_>, owner: &str) -> Result<()> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.release.key(slot.key);
        invocation.arg(slot.base()).arg(slot.id).arg(owner);
        let _: i64 = self
            .bounded("release", invocation.invoke_async(&mut conn))
            .await?;
        Ok(())
    }

    /// Extends a compute lease; `false` if `owner` no longer holds it.
    pub(crate) async fn renew(&self, key: &str, owner: &str, lease: Duration) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.renew.key(key);
        invocation.arg(owner).arg(millis(lease));
        let renewed: i64 = self
            .bounded("renew", invocation.invoke_async(&mut conn))
            .await?;
        Ok(renewed == 1)
    }

    /// A receiver woken when the computation of `id` ends in any process;
    /// `None` when notifications are unavailable (callers poll instead).
    pub(crate) async fn waiter(&self, id: &str) -> Option<oneshot::Receiver<()>> {
        let endpoint = self.endpoint()?;
        self.admit().ok()?;
        let mut slot = self.notifier.lock().await;
        if !slot.as_ref().is_some_and(|n| n.is_alive()) {
            let channel = keys::done(&self.base);
            // On a cluster, any node serves: the first that answers.
            let mut started = None;
            for client in endpoint.subscribers() {
                let start = Notifier::start(&client, &channel);
                if let Ok(Ok(notifier)) = tokio::time::timeout(self.timeout, start).await {
                    started = Some(notifier);
                    break;
                }
            }
            *slot = Some(started?);
        }
        slot.as_ref().map(|notifier| notifier.register(id))
    }

    pub(crate) async fn put(&self, put: Put<'_>) -> Result<Option<u64>> {
        let mut conn = self.connection().await?;
        let ttl = match put.ttl {
            Some(ttl) if !ttl.is_zero() => {
                // Redis takes expiries up to 2^63 ms; twice this must fit.
                let ms = u64::try_from(ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .min(MAX_TTL_MS);
                format!("{ms} {}", crate::envelope::now_ms().saturating_add(ms))
            }
            _ => "0".to_owned(),
        };
        let mark_stale = if put.refresh == Refresh::MarkStale {
            "1"
        } else {
            "0"
        };
        // store.lua checks the nested values of the value's own shard;
        // those of other shards had their edge written before they were
        // read (see `edge_first`), and a store of them signals this value.
        let checked: Vec<&(String, String)> = put
            .read
            .iter()
            .filter(|(id, _)| self.same_shard(put.slot.id, id))
            .collect();
        let mut invocation = self.scripts.store.key(put.slot.key);
        invocation
            .arg(put.slot.base())
            .arg(put.slot.id)
            .arg(put.data)
            .arg(ttl)
            .arg(put.started)
            .arg(put.slot.full_args)
            .arg(mark_stale)
            .arg(put.relations.len())
            .arg(put.relations)
            .arg(checked.len());
        for (id, mark) in checked {
            invocation.arg(id).arg(mark);
        }
        invocation.arg(put.deps);
        let version = self
            .bounded("store", invocation.invoke_async::<i64>(&mut conn))
            .await;
        self.forget(put.slot.key);
        Ok(u64::try_from(version?).ok())
    }

    /// Whether values spread over several shards.
    pub(crate) fn sharded(&self) -> bool {
        self.shards.count() > 1
    }

    /// Whether values `a` and `b` live in the same shard (always, with one).
    pub(crate) fn same_shard(&self, a: &str, b: &str) -> bool {
        self.shards.count() == 1 || self.shards.of(a) == self.shards.of(b)
    }

    /// Before a computation of value `home` reads value `id` of another
    /// shard (a nested call): records `home`'s reverse edge on `v:<id>` in
    /// `home`'s own shard (`lua/edge.lua`), so that any store of `id` from
    /// now on signals `home`, whose own store then lands stale. `true`
    /// once recorded, or at once when both live in one shard (store.lua
    /// checks those); `false` when `home` has no hash (gone, or an alias),
    /// where an edge would not be seen.
    pub(crate) async fn edge_first(&self, home: &str, id: &str) -> Result<bool> {
        if self.same_shard(home, id) {
            return Ok(true);
        }
        let mut conn = self.connection().await?;
        let base = self.shards.base_of(home);
        let mut invocation = self.scripts.edge.key(keys::value(base, home));
        invocation.arg(base).arg(home).arg(keys::value_token(id));
        let recorded: i64 = self
            .bounded("edge", invocation.invoke_async(&mut conn))
            .await?;
        if recorded != 1 {
            return Ok(false);
        }
        fail::fail_point!("smache::store::edge::before_readers");
        // Then, still before the read, `home`'s shard among the readers of
        // `id`, in `id`'s shard: a store of `id` from now on fans out to
        // the other shards (lua/common.lua `fan_all`), this edge's among
        // them. Never removed: a shard once a reader's is told of every
        // store after (one job each, at worst a needless one).
        let mut cmd = redis::cmd("SADD");
        cmd.arg(keys::readers(self.shards.base_of(id), id))
            .arg(base);
        let _: i64 = self.bounded("edge", cmd.query_async(&mut conn)).await?;
        Ok(true)
    }

    /// Makes `alias` stand for `target`; `None` for a cycle.
    pub(crate) async fn alias(&self, alias: Slot<'_>, target: Slot<'_>) -> Result<Option<String>> {
        if self.sharded() {
            let named = self.alias_across(alias, target).await;
            self.forget(alias.key);
            return named;
        }
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.alias.key(alias.key);
        invocation
            .key(target.key)
            .arg(&self.base)
            .arg(alias.id)
            .arg(target.id)
            .arg(target.full_args);
        let named = self
            .bounded("alias", invocation.invoke_async::<String>(&mut conn))
            .await;
        self.forget(alias.key);
        match named {
            Ok(named) => Ok(Some(named)),
            Err(Error::Redis(err)) if err.to_string().contains("cycle") => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub(crate) async fn drop_value(&self, slot: Slot<'_>) -> Result<bool> {
        let mut conn = self.connection().await?;
        // On several shards, an alias's target set lives in the target's
        // shard: the link is read first, to leave that set after.
        let link = if self.sharded() {
            self.link_of(slot.key).await?
        } else {
            None
        };
        let mut invocation = self.scripts.drop.key(slot.key);
        invocation.arg(slot.base()).arg(slot.id);
        let existed = self
            .bounded("drop", invocation.invoke_async::<i64>(&mut conn))
            .await;
        self.forget(slot.key);
        if existed.is_ok() && self.sharded() {
            // A crash before this leaves the id in the target's set (which
            // skips members that name something else) and dependants of
            // other shards fresh until their next change.
            if let Some(link) = link {
                let mut cmd = redis::cmd("SREM");
                cmd.arg(keys::aliases(self.shards.base_of(&link), &link))
                    .arg(slot.id);
                match self
                    .bounded("drop", cmd.query_async::<i64>(&mut conn))
                    .await
                {
                    Err(Error::Redis(err)) if is_wrong_type(&err) => {}
                    other => {
                        other?;
                    }
                }
            }
            self.signal_elsewhere(slot.id).await?;
        }
        // The values built on it were marked stale in the same script:
        // wait for Redis's word of them too, so that this process does not
        // serve one of them after `invalidate` returned.
        if existed.is_ok() && self.layer().is_some_and(|layer| layer.is_live()) {
            let _ = self.sync_layer().await;
        }
        Ok(existed? > 0)
    }

    /// The value id the alias under `key` names, if it is one.
    async fn link_of(&self, key: &str) -> Result<Option<String>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("HGET");
        cmd.arg(key).arg("l");
        match self.bounded("drop", cmd.query_async(&mut conn)).await {
            Err(Error::Redis(err)) if is_wrong_type(&err) => Ok(None),
            other => other,
        }
    }

    /// This process wrote the value under `key` (or may have: the write
    /// failed or timed out): drop it from the in-process layer at once,
    /// so that this process reads its own writes. Other processes hear of
    /// it from Redis.
    fn forget(&self, key: &str) {
        if let Some(layer) = self.layer() {
            layer.drop_key(key);
        }
    }

    /// Returns once every invalidation Redis sent this process before now
    /// has been applied to the in-process layer (at once without one).
    pub(crate) async fn sync_layer(&self) -> Result<()> {
        match &self.tracking {
            Some(tracking) => tracking.barrier(self.timeout).await,
            None => Ok(()),
        }
    }
}

/// The fields of the value hash `key` a read needs, over `conn`.
async fn hmget(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> redis::RedisResult<[Option<Vec<u8>>; 8]> {
    // Sized up front: no regrowth while the arguments are written.
    let mut cmd = redis::Cmd::with_capacity(10, key.len() + 16);
    cmd.arg("HMGET");
    cmd.arg(key)
        .arg("v")
        .arg("d")
        .arg("g")
        .arg("w")
        .arg("t")
        .arg("e")
        .arg("l")
        .arg("la");
    cmd.query_async(conn).await
}

/// The answer to a caller about to compute a missing value.
#[derive(Debug)]
pub(crate) enum Begin {
    /// Compute, from this change generation.
    Go(u64),
    /// Another process is computing it; its lease ends in this long.
    Wait(Duration),
    /// A value was stored since the caller's last read: read it. The
    /// version field as stored ("" for none).
    Read(String),
}

/// The longest time-to-live smache passes to Redis (about 35 years).
const MAX_TTL_MS: u64 = 1 << 40;

/// How long a key that holds no value yet keeps the edges of a computation
/// in progress, should the caller die.
const BEGIN_LEASE_MS: u64 = 60_000;
