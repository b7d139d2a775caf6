//! The Redis store.
//!
//! Each value is a small hash `{ v: <value version>, d: <envelope> }`, read
//! with one `HMGET` and written with one `EVALSHA` of `lua/set.lua`. One
//! [`ConnectionManager`] (a multiplexed connection that reconnects by itself)
//! serves every call; it is made on first use, so an application starts even
//! while Redis is down, and after a failed attempt no new attempt is made for
//! [`RECONNECT_BACKOFF`], so callers fall back to computing at once instead of
//! each waiting for a connect timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::sync::OnceCell;

use super::Lookup;
use crate::error::{Error, Result};

/// How long after a failed connection attempt calls skip Redis.
pub(crate) const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct RedisStore {
    client: Option<Client>,
    manager: OnceCell<ConnectionManager>,
    failed_at: Mutex<Option<Instant>>,
    set_script: Script,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, and with it possibly a password: leave it out.
        f.debug_struct("RedisStore")
            .field("connected", &self.manager.initialized())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    pub(crate) fn from_client(client: Client, timeout: Duration) -> Self {
        Self::with(Some(client), OnceCell::new(), timeout)
    }

    pub(crate) fn from_manager(manager: ConnectionManager, timeout: Duration) -> Self {
        Self::with(None, OnceCell::new_with(Some(manager)), timeout)
    }

    fn with(
        client: Option<Client>,
        manager: OnceCell<ConnectionManager>,
        timeout: Duration,
    ) -> Self {
        RedisStore {
            client,
            manager,
            failed_at: Mutex::new(None),
            set_script: Script::new(include_str!("../../lua/set.lua")),
            timeout,
        }
    }

    async fn connection(&self) -> Result<ConnectionManager> {
        if let Some(manager) = self.manager.get() {
            return Ok(manager.clone());
        }
        if let Some(at) = *lock(&self.failed_at) {
            if at.elapsed() < RECONNECT_BACKOFF {
                return Err(Error::Unavailable);
            }
        }
        let result = self
            .manager
            .get_or_try_init(|| async {
                let client = self.client.clone().ok_or(Error::Unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                let connect = ConnectionManager::new_with_config(client, config);
                match tokio::time::timeout(self.timeout, connect).await {
                    Ok(Ok(manager)) => Ok(manager),
                    Ok(Err(err)) => Err(Error::Redis(err)),
                    Err(_) => Err(Error::Timeout {
                        op: "connect",
                        timeout: self.timeout,
                    }),
                }
            })
            .await;
        match result {
            Ok(manager) => Ok(manager.clone()),
            Err(err) => {
                *lock(&self.failed_at) = Some(Instant::now());
                Err(err)
            }
        }
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result.map_err(Error::Redis),
            Err(_) => Err(Error::Timeout {
                op,
                timeout: self.timeout,
            }),
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Lookup> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key).arg("v").arg("d");
        let query = cmd.query_async::<(Option<Vec<u8>>, Option<Vec<u8>>)>(&mut conn);
        let reply = tokio::time::timeout(self.timeout, query)
            .await
            .map_err(|_| Error::Timeout {
                op: "get",
                timeout: self.timeout,
            })?;
        match reply {
            Ok((_, None)) => Ok(Lookup::Miss),
            Ok((version, Some(data))) => {
                let version = version
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u64>().ok());
                Ok(match version {
                    Some(version) => Lookup::Hit { version, data },
                    None => Lookup::Foreign("the value version is not a number".into()),
                })
            }
            Err(err) if is_wrong_type(&err) => Ok(Lookup::Foreign(
                "the key holds a Redis type other than a hash".into(),
            )),
            Err(err) => Err(Error::Redis(err)),
        }
    }

    pub(crate) async fn set(&self, key: &str, data: Vec<u8>, ttl: Option<Duration>) -> Result<u64> {
        let mut conn = self.connection().await?;
        let ttl_ms = ttl.map_or(0, |ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let version: u64 = self
            .bounded("set", async {
                self.set_script
                    .key(key)
                    .arg(data)
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(version)
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<bool> {
        let mut conn = self.connection().await?;
        let removed: i64 = self
            .bounded("delete", async {
                redis::cmd("DEL").arg(key).query_async(&mut conn).await
            })
            .await?;
        Ok(removed > 0)
    }
}

fn is_wrong_type(err: &redis::RedisError) -> bool {
    err.code() == Some("WRONGTYPE")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
