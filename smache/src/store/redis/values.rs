//! Values: reading one, the compute lease around a miss (begin, renew,
//! release, and the waiters woken when it ends), storing, aliasing and
//! dropping.

use std::time::Duration;

use tokio::sync::oneshot;

use super::{is_wrong_type, millis, parse_u64, RedisStore};
use crate::error::{Error, Result};
use crate::spec::Refresh;
use crate::store::keys;
use crate::store::notify::Notifier;
use crate::store::{Lookup, Put, Slot};

impl RedisStore {
    pub(crate) async fn get(&self, key: &str) -> Result<Lookup> {
        let mut conn = self.connection().await?;
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
        let reply = self
            .bounded("get", cmd.query_async::<[Option<Vec<u8>>; 8]>(&mut conn))
            .await;
        match reply {
            Ok([.., Some(link), args]) => Ok(Lookup::Alias {
                target: String::from_utf8_lossy(&link).into_owned(),
                full_args: String::from_utf8_lossy(&args.unwrap_or_default()).into_owned(),
            }),
            Ok([_, None, ..]) => Ok(Lookup::Miss),
            Ok([version, Some(data), generation, computed_from, stale_at, expires, None, _]) => {
                let Some(version) = parse_u64(version.as_deref()) else {
                    return Ok(Lookup::Foreign("the value version is not a number".into()));
                };
                let stale = parse_u64(generation.as_deref()).unwrap_or(0)
                    > parse_u64(computed_from.as_deref()).unwrap_or(0);
                Ok(Lookup::Hit {
                    version,
                    data,
                    stale_since_ms: stale.then(|| parse_u64(stale_at.as_deref()).unwrap_or(0)),
                    expired: parse_u64(expires.as_deref())
                        .is_some_and(|at| at <= crate::envelope::now_ms()),
                })
            }
            Err(Error::Redis(err)) if is_wrong_type(&err) => Ok(Lookup::Foreign(
                "the key holds a Redis type other than a hash".into(),
            )),
            Err(err) => Err(err),
        }
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
            .arg(&self.base)
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
        invocation.arg(&self.base).arg(slot.id).arg(owner);
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
        let client = self.client.as_ref()?;
        self.admit().ok()?;
        let mut slot = self.notifier.lock().await;
        if !slot.as_ref().is_some_and(|n| n.is_alive()) {
            let channel = keys::done(&self.base);
            match tokio::time::timeout(self.timeout, Notifier::start(client, &channel)).await {
                Ok(Ok(notifier)) => *slot = Some(notifier),
                _ => return None,
            }
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
        let mut invocation = self.scripts.store.key(put.slot.key);
        invocation
            .arg(&self.base)
            .arg(put.slot.id)
            .arg(put.data)
            .arg(ttl)
            .arg(put.started)
            .arg(put.slot.full_args)
            .arg(mark_stale)
            .arg(put.relations.len())
            .arg(put.relations)
            .arg(put.read.len());
        for (id, mark) in put.read {
            invocation.arg(id).arg(mark);
        }
        invocation.arg(put.deps);
        let version: i64 = self
            .bounded("store", invocation.invoke_async(&mut conn))
            .await?;
        Ok(u64::try_from(version).ok())
    }

    /// Makes `alias` stand for `target`; `None` for a cycle.
    pub(crate) async fn alias(&self, alias: Slot<'_>, target: Slot<'_>) -> Result<Option<String>> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.alias.key(alias.key);
        invocation
            .key(target.key)
            .arg(&self.base)
            .arg(alias.id)
            .arg(target.id)
            .arg(target.full_args);
        match self
            .bounded("alias", invocation.invoke_async::<String>(&mut conn))
            .await
        {
            Ok(named) => Ok(Some(named)),
            Err(Error::Redis(err)) if err.to_string().contains("cycle") => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub(crate) async fn drop_value(&self, slot: Slot<'_>) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.drop.key(slot.key);
        invocation.arg(&self.base).arg(slot.id);
        let existed: i64 = self
            .bounded("drop", invocation.invoke_async(&mut conn))
            .await?;
        Ok(existed > 0)
    }
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
