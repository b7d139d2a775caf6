//! What every scenario shares: the servers, the run's id, the size.

use std::time::Duration;

use redis::aio::ConnectionManager;
use smache::Smache;

pub(crate) use crate::target::{ping, scan};
use crate::target::{Raw, Target};

/// Errors of the bench: any, with a message.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;
/// A bench result.
pub(crate) type Result<T> = std::result::Result<T, Error>;

/// The servers and settings of one run.
pub(crate) struct Ctx {
    pub(crate) quick: bool,
    pub(crate) redis_url: String,
    pub(crate) mongodb_uri: Option<String>,
    /// Eight hex digits naming this run's keys and databases.
    pub(crate) run: String,
    /// A plain connection for baselines and inspection (60 s response
    /// timeout).
    pub(crate) redis: ConnectionManager,
    /// The Redis Cluster of `--cluster-url`, if any: P1a, P2 and P3 run
    /// on it too.
    pub(crate) cluster: Option<Target>,
    /// Redis prefixes and MongoDB databases this run wrote, for cleaning up.
    pub(crate) written: std::sync::Mutex<Vec<Written>>,
}

/// Something a scenario left behind.
#[derive(Debug, Clone)]
pub(crate) enum Written {
    /// Keys matching `{prefix}:*`, and plain keys under `prefix:`.
    Prefix(String),
    /// A MongoDB database.
    Database(String),
}

impl Ctx {
    /// Reads `SMACHE_REDIS_URL` (required) and `SMACHE_MONGODB_URI`;
    /// connects to the cluster at `cluster_url` if given.
    pub(crate) async fn from_env(quick: bool, cluster_url: Option<&str>) -> Result<Ctx> {
        let redis_url = std::env::var("SMACHE_REDIS_URL").map_err(|_| {
            "SMACHE_REDIS_URL is not set: run `./scripts/with-servers.sh cargo run --release -p smache-bench`"
        })?;
        let mongodb_uri = std::env::var("SMACHE_MONGODB_URI")
            .ok()
            .filter(|uri| !uri.is_empty());
        // Patient: a long script (P3's change with 100k dependants) may
        // hold Redis for longer than the default 500 ms.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(60)));
        let redis =
            ConnectionManager::new_with_config(redis::Client::open(redis_url.as_str())?, config)
                .await?;
        let cluster = match cluster_url {
            Some(url) => Some(
                Target::cluster(url)
                    .await
                    .map_err(|err| format!("the Redis Cluster of --cluster-url: {err}"))?,
            ),
            None => None,
        };
        let run = bson::oid::ObjectId::new().to_hex()[16..].to_owned();
        Ok(Ctx {
            quick,
            redis_url,
            mongodb_uri,
            run,
            redis,
            cluster,
            written: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// `quick` in a quick run, else `full`.
    pub(crate) fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// A key prefix of this run for `scenario`, short like a real one.
    pub(crate) fn prefix(&self, scenario: &str) -> String {
        let prefix = format!("sb{}-{scenario}", self.run);
        self.wrote(Written::Prefix(prefix.clone()));
        prefix
    }

    /// A MongoDB database name of this run for `scenario`.
    pub(crate) fn database(&self, scenario: &str) -> String {
        let name = format!("smache_bench_{}_{scenario}", self.run);
        self.wrote(Written::Database(name.clone()));
        name
    }

    fn wrote(&self, written: Written) {
        if let Ok(mut all) = self.written.lock() {
            all.push(written);
        }
    }

    /// The run's Redis server as a [`Target`], beside
    /// [`cluster`](Self::cluster).
    pub(crate) fn server(&self) -> Target {
        Target {
            cluster: false,
            url: self.redis_url.clone(),
            raw: Raw::Server(self.redis.clone()),
        }
    }

    /// A smache instance on Redis under `prefix`.
    pub(crate) fn redis_instance(&self, prefix: &str) -> Result<Smache> {
        Ok(Smache::builder()
            .redis_url(&self.redis_url)
            .prefix(prefix)
            .local_cache_capacity(0)
            .build()?)
    }

    /// An instance on the run's Redis with the in-process layer in front
    /// (the default), which [`redis_instance`](Self::redis_instance) turns
    /// off so that its hits measure Redis.
    pub(crate) fn layered_instance(&self, prefix: &str) -> Result<Smache> {
        Ok(Smache::builder()
            .redis_url(&self.redis_url)
            .prefix(prefix)
            .build()?)
    }

    /// The MongoDB client, or why there is none.
    pub(crate) async fn mongo(&self) -> Result<mongodb::Client> {
        let uri = self
            .mongodb_uri
            .as_deref()
            .ok_or("SMACHE_MONGODB_URI is not set")?;
        Ok(mongodb::Client::with_uri_str(uri).await?)
    }

    /// `n` sequential `PING` round trips on the shared connection manager.
    pub(crate) async fn rtt(&self, n: usize) -> Result<Vec<Duration>> {
        let mut conn = self.redis.clone();
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            samples.push(ping(&mut conn).await?);
        }
        Ok(samples)
    }

    /// Removes what the scenarios wrote (best effort).
    pub(crate) async fn clean_up(&self) {
        let written = self
            .written
            .lock()
            .map(|all| all.clone())
            .unwrap_or_default();
        let mongo = self.mongo().await.ok();
        for item in written {
            let done = match &item {
                Written::Prefix(prefix) => self.unlink_prefix(prefix).await,
                Written::Database(name) => match &mongo {
                    Some(client) => client.database(name).drop().await.map_err(Into::into),
                    None => Ok(()),
                },
            };
            if let Err(err) = done {
                eprintln!("[smache-bench] cleaning up {item:?} failed: {err}");
            }
        }
    }

    /// Unlinks the keys of `prefix` on the server and on the cluster, if
    /// any (a prefix is used on one of them; looking on both is cheap).
    async fn unlink_prefix(&self, prefix: &str) -> Result<()> {
        let targets = std::iter::once(self.server()).chain(self.cluster.clone());
        for target in targets {
            let mut conn = target.raw;
            // (`{prefix#*`: the keys of an instance of several shards)
            let patterns = [
                format!("{{{prefix}}}:*"),
                format!("{{{prefix}#*"),
                format!("{prefix}:*"),
            ];
            for pattern in patterns {
                // (on a cluster, redis-rs splits an UNLINK of keys of
                // several slots by node)
                for chunk in conn.scan(&pattern).await?.chunks(1000) {
                    let _: () = redis::cmd("UNLINK")
                        .arg(chunk)
                        .query_async(&mut conn)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// A connection manager to `url`, the kind smache itself uses.
pub(crate) async fn connection_manager(url: &str) -> Result<ConnectionManager> {
    Ok(ConnectionManager::new(redis::Client::open(url)?).await?)
}

/// Sleeps about `d` on this thread, below tokio's 1 ms timer resolution.
pub(crate) fn short_sleep(d: Duration) {
    tokio::task::block_in_place(|| std::thread::sleep(d));
}
