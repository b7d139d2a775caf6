//! The builder's defaults (`DEFAULT_*`), the settings read from the
//! environment ([`Smache::from_env`](crate::Smache::from_env)), and the
//! check of a key prefix.

use std::time::Duration;

use super::{connect, SmacheBuilder};
use crate::error::{Error, Result};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "smache";
/// The default bound on one store operation.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(500);
/// The default bound on serving a stale value; see [`SmacheBuilder::max_stale`].
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(30);
/// The default compute lease; see [`SmacheBuilder::compute_lease`].
pub const DEFAULT_COMPUTE_LEASE: Duration = Duration::from_secs(30);
/// The default bound on one stored value; see [`SmacheBuilder::max_value_size`].
pub const DEFAULT_MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;
/// The default size of the embedded store.
pub const DEFAULT_MEMORY_CAPACITY: u64 = 64 * 1024 * 1024;
/// The default size of the in-process layer in front of Redis; see
/// [`SmacheBuilder::local_cache_capacity`].
pub const DEFAULT_LOCAL_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;
/// The default time a job waits for an executor that has its function;
/// see [`SmacheBuilder::orphan_timeout`].
pub const DEFAULT_ORPHAN_TIMEOUT: Duration = Duration::from_secs(600);
/// The default time an instance may find no worker serving it before it
/// warns (three default worker leases); see
/// [`SmacheBuilder::expect_worker_within`].
pub const DEFAULT_EXPECT_WORKER_WITHIN: Duration = Duration::from_secs(30);

impl SmacheBuilder {
    /// A builder preset from the environment; see [`Smache::from_env`](crate::Smache::from_env).
    pub(crate) fn from_env() -> Result<Self> {
        let mut builder = SmacheBuilder::default();
        if let Some(url) = env("SMACHE_REDIS_URL") {
            builder = builder.redis_url(url);
        }
        if let Some(prefix) = env("SMACHE_PREFIX") {
            builder = builder.prefix(prefix);
        }
        if let Some(uri) = env("SMACHE_MONGODB_URI") {
            let database = env("SMACHE_MONGODB_DATABASE");
            builder.mongo = Some(connect::mongo_database(uri, database)?);
        }
        Ok(builder)
    }
}

/// The in-process layer's size: `SMACHE_LOCAL_CACHE_CAPACITY` (bytes, `0`
/// for none), else [`DEFAULT_LOCAL_CACHE_CAPACITY`].
pub(super) fn local_cache_from_env() -> Result<u64> {
    const NAME: &str = "SMACHE_LOCAL_CACHE_CAPACITY";
    match env(NAME) {
        None => Ok(DEFAULT_LOCAL_CACHE_CAPACITY),
        Some(value) => value.trim().parse().map_err(|_| {
            Error::Config(format!(
                "{NAME} must be a number of bytes (0 turns the in-process layer off), not {value:?}"
            ))
        }),
    }
}

/// The environment variable `name`, unless unset or empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Checks that `prefix` is 1 to 64 characters of `[A-Za-z0-9_-.:/]` (no
/// braces: it becomes the Redis hash tag).
pub(super) fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "prefix {prefix:?} must be 1 to 64 characters of [A-Za-z0-9_-.:/]"
        )))
    }
}
