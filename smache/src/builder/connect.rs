//! The connections a builder is given and assembles: the store
//! (embedded, or Redis from a URL, a client or a connection manager) and
//! the MongoDB database (given, or from the environment). Nothing connects here: Redis is
//! reached on first use.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::SmacheBuilder;
use crate::error::{Error, Result};
use crate::runtime;
use crate::store::{Endpoint, MemoryStore, RedisStore, Store};

/// The connections: Redis and MongoDB.
impl SmacheBuilder {
    /// Use Redis at `url` (`redis://[user:password@]host:port/db`, or
    /// `rediss://` for TLS). The connection is made on first use.
    ///
    /// A Redis Cluster is named by the scheme `redis+cluster://` (or
    /// `rediss+cluster://`) with one or more seed nodes,
    /// `redis+cluster://[user:password@]host:port[,host:port…]`, or by
    /// several `redis://` URLs separated by commas; the client learns the
    /// other nodes, follows redirections and failovers from the cluster
    /// itself. On a cluster the in-process layer
    /// ([`local_cache_capacity`](Self::local_cache_capacity)) is off for
    /// now.
    ///
    /// ```no_run
    /// # fn run() -> smache::Result<()> {
    /// let smache = smache::Smache::builder()
    ///     .redis_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000")
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(RedisSource::Url(url.into()));
        self
    }

    /// Use a Redis client you built: for TLS with your own certificate
    /// authority or a client certificate (`redis::Client::build_with_tls`),
    /// or any connection setting a URL cannot express. Like
    /// [`redis_url`](Self::redis_url), connections are made on first use,
    /// and executors open their own from it for blocking reads.
    ///
    /// ```no_run
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/ssl/private-ca.pem")?;
    /// let client = redis::Client::build_with_tls(
    ///     "rediss://redis.internal:6380/",
    ///     redis::TlsCertificates {
    ///         client_tls: None,
    ///         root_cert: Some(ca),
    ///     },
    /// )?;
    /// let smache = smache::Smache::builder().redis_client(client).build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis_client(mut self, client: redis::Client) -> Self {
        self.redis = Some(RedisSource::Client(Box::new(client)));
        self
    }

    /// Use an existing Redis connection manager (it is cloned per call, as
    /// redis-rs intends). Executors need [`redis_url`](Self::redis_url) or
    /// [`redis_client`](Self::redis_client) instead, for connections of
    /// their own.
    pub fn redis_connection(mut self, manager: ConnectionManager) -> Self {
        self.redis = Some(RedisSource::Manager(manager));
        self
    }

    /// The MongoDB database the entity documents live in (used by the
    /// dependency tracking and the worker).
    pub fn mongodb(mut self, client: &mongodb::Client, database: &str) -> Self {
        self.mongo = Some(client.database(database));
        self
    }

    /// [`mongodb`](Self::mongodb), from a database handle.
    pub fn mongodb_database(mut self, database: mongodb::Database) -> Self {
        self.mongo = Some(database);
        self
    }
}

/// Where the Redis store's connections come from.
pub(super) enum RedisSource {
    /// A `redis://`, `rediss://` or cluster URL, opened by [`store`].
    Url(String),
    /// A client the application built (TLS settings, …).
    Client(Box<redis::Client>),
    /// A connection manager the application made (no executor: it cannot
    /// open connections of its own).
    Manager(ConnectionManager),
}

impl RedisSource {
    /// What the source is, for `Debug`: a URL or a client can carry a
    /// password, so neither is ever printed.
    pub(super) fn redacted(&self) -> &'static str {
        match self {
            RedisSource::Url(_) => "url (redacted)",
            RedisSource::Client(_) => "client (redacted)",
            RedisSource::Manager(_) => "connection manager",
        }
    }
}

/// The store of an instance: Redis from `redis` (with an in-process layer
/// of `local_cache` bytes in front, if more than 0), else the embedded
/// store of `memory_capacity` bytes.
pub(super) fn store(
    redis: Option<RedisSource>,
    memory_capacity: u64,
    local_cache: u64,
    shards: Option<usize>,
    timeout: Duration,
    prefix: &str,
) -> Result<Store> {
    Ok(match redis {
        None => Store::Memory(MemoryStore::new(memory_capacity, prefix)),
        Some(RedisSource::Url(url)) => {
            // The error text never includes the URL itself.
            let endpoint = Endpoint::parse(&url).map_err(Error::Config)?;
            let default = if endpoint.is_cluster() {
                CLUSTER_SHARDS
            } else {
                1
            };
            Store::Redis(
                RedisStore::from_endpoint(endpoint, timeout, prefix)
                    .with_shards(shard_count(shards, default)?)
                    .with_layer(local_cache),
            )
        }
        Some(RedisSource::Client(client)) => Store::Redis(
            RedisStore::from_endpoint(Endpoint::Server(client), timeout, prefix)
                .with_shards(shard_count(shards, 1)?)
                .with_layer(local_cache),
        ),
        Some(RedisSource::Manager(manager)) => Store::Redis(
            RedisStore::from_manager(manager, timeout, prefix).with_shards(shard_count(shards, 1)?),
        ),
    })
}

/// How many shards the Redis store spreads values over: `given` by the
/// builder, else `SMACHE_REDIS_SHARDS`, else `default` ([`CLUSTER_SHARDS`]
/// on a Redis Cluster, 1 on one server). A
/// count that is not a number from 1 to [`MAX_SHARDS`] is a configuration
/// error rather than a silent 1, which would put this process's keys where
/// no other process of the instance looks. (Every process of an instance
/// must use the same count: the store checks it against the count
/// recorded in Redis, see `store::redis::shard_count`.)
fn shard_count(given: Option<usize>, default: usize) -> Result<usize> {
    const NAME: &str = "SMACHE_REDIS_SHARDS";
    if let Some(count) = given {
        return match count {
            1..=MAX_SHARDS => Ok(count),
            _ => Err(Error::Config(format!(
                "redis_shards({count}): expected a number of shards from 1 to {MAX_SHARDS}"
            ))),
        };
    }
    let Ok(value) = std::env::var(NAME) else {
        return Ok(default);
    };
    match value.trim().parse::<usize>() {
        Ok(count) if (1..=MAX_SHARDS).contains(&count) => Ok(count),
        _ => Err(Error::Config(format!(
            "{NAME}={value:?}: expected a number of shards from 1 to {MAX_SHARDS}"
        ))),
    }
}

/// The default count on a Redis Cluster: 16 shards on each of 3 masters
/// of `redis-cli --cluster create`'s even split, 12 on each of 4, 8 on each
/// of 6, so keys and load spread evenly over the usual sizes, while a
/// fan-out to every shard stays 47 script calls.
pub(crate) const CLUSTER_SHARDS: usize = 48;

/// The most shards an instance may have: a shard per slot band, and bands
/// of at least 16 slots, so that a tag for each is found quickly.
const MAX_SHARDS: usize = 1024;

/// The MongoDB database `database` (else the URI's, else `smache`) of
/// the deployment at `uri`.
pub(super) fn mongo_database(uri: String, database: Option<String>) -> Result<mongodb::Database> {
    // Parsing may resolve DNS (mongodb+srv), which is async, and the
    // client starts background tasks: both need a runtime, which a
    // synchronous caller may not have, so they run on smache's own.
    runtime::block_on(async move {
        let options = mongodb::options::ClientOptions::parse(uri).await?;
        let database = database
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| "smache".to_owned());
        let client = mongodb::Client::with_options(options)?;
        Ok::<_, Error>(client.database(&database))
    })?
}
