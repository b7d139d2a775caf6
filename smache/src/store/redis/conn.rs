//! Where the Redis store connects, one server or a Redis Cluster, and the
//! one connection type every operation uses on either.
//!
//! A server is reached through redis-rs's `ConnectionManager` (multiplexed,
//! reconnecting); a cluster through its async `ClusterConnection`, which
//! follows `MOVED`/`ASK` redirections and refreshes the slot map after a
//! failover by itself. Both are made lazily: an application starts while
//! Redis is down. [`Conn`] puts them behind redis-rs's own
//! [`ConnectionLike`], so commands, pipelines and scripts are written once;
//! the one command that must know the topology, `SCAN`, goes through
//! `Scan` (in `scan.rs`), which walks every master of a cluster in turn.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value,
};

use crate::store::keys;

/// Where the store's connections go (each client boxed: they are
/// hundreds of bytes, of different sizes).
#[derive(Clone)]
pub(crate) enum Endpoint {
    /// One Redis server (or a proxy in front of one).
    Server(Box<Client>),
    /// A Redis Cluster, found from its seed nodes.
    Cluster {
        /// The client of the cluster's connections.
        client: Box<ClusterClient>,
        /// The seed nodes, each reachable alone: for the `{prefix}:done`
        /// subscription, which any node serves (a `PUBLISH` reaches the
        /// whole cluster).
        seeds: Vec<ConnectionInfo>,
    },
}

/// How many times the cluster client retries a command (redirections,
/// `TRYAGAIN`, a node's reconnection), waiting 10–100 ms between.
const CLUSTER_RETRIES: u32 = 3;

/// The URL forms [`Endpoint::parse`] accepts, for its error messages.
const URL_FORMS: &str = "expected redis://[user:password@]host[:port][/db] (rediss:// for TLS), \
     or for Redis Cluster redis+cluster://[user:password@]host:port[,host:port…] \
     (rediss+cluster:// for TLS) or several redis:// URLs separated by commas";

impl Endpoint {
    /// The endpoint a URL names: a Redis Cluster when its scheme is
    /// `redis+cluster://` (`rediss+cluster://` for TLS) or when it lists
    /// several comma-separated nodes, else one server. Only the seed nodes
    /// are listed: the cluster tells the client about the others. The
    /// error never repeats the URL, which may hold a password.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim().trim_matches(',').trim();
        let nodes = cluster_nodes(url);
        if nodes.is_empty() {
            return Client::open(url)
                .map(|client| Endpoint::Server(Box::new(client)))
                .map_err(|err| format!("invalid Redis URL ({err}); {URL_FORMS}"));
        }
        let mut infos = Vec::with_capacity(nodes.len());
        for node in nodes {
            let info = node
                .as_str()
                .into_connection_info()
                .map_err(|err| format!("invalid Redis Cluster node URL ({err}); {URL_FORMS}"))?;
            if info.redis_settings().db() != 0 {
                // Redis Cluster has database 0 only: a node would refuse
                // every connection, for a reason the client never shows.
                return Err(format!(
                    "a Redis Cluster has database 0 only: leave /<db> out of the URL; {URL_FORMS}"
                ));
            }
            infos.push(info);
        }
        ClusterClientBuilder::new(infos.clone())
            // Enough to follow MOVED/ASK and a failover's new master;
            // past it, the store's breaker takes over (callers compute
            // directly) rather than an operation waiting seconds.
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()
            .map(|client| Endpoint::Cluster {
                client: Box::new(client),
                seeds: infos,
            })
            .map_err(|err| format!("invalid Redis Cluster URL ({err}); {URL_FORMS}"))
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Endpoint::Cluster { .. })
    }

    /// Clients of single nodes a subscription may use, in the order to
    /// try them: the server, or each seed node of a cluster.
    pub(crate) fn subscribers(&self) -> Vec<Client> {
        match self {
            Endpoint::Server(client) => vec![Client::clone(client)],
            Endpoint::Cluster { seeds, .. } => seeds
                .iter()
                .filter_map(|seed| Client::open(seed.clone()).ok())
                .collect(),
        }
    }

    /// The shared connection, connecting lazily: the first command waits
    /// for it. On a server it makes one attempt per reconnection (the
    /// store's breaker does the retrying, so no command waits for a series
    /// of attempts); a cluster connection retries redirections and
    /// failovers itself, within each operation's bound.
    pub(crate) fn shared(&self, timeout: Duration) -> RedisResult<Conn> {
        Ok(match self {
            Endpoint::Server(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(0);
                Conn::Server(ConnectionManager::new_lazy_with_config(
                    Client::clone(client),
                    config,
                )?)
            }
            Endpoint::Cluster { client, .. } => {
                // Its driver lives on smache's own runtime: a cluster
                // connection does not heal once the runtime its driver ran
                // on is gone (a test's, a short-lived `block_on`), and a
                // sync call blocking a current-thread runtime would starve
                // it.
                let _background = crate::runtime::enter_background();
                Conn::Cluster(
                    client.get_pending_async_connection_with_config(cluster_config(
                        connect_timeout(timeout),
                        timeout,
                    )),
                    Arc::default(),
                )
            }
        })
    }

    /// A connection of its own, for blocking reads whose replies may take
    /// `response_timeout`.
    pub(crate) async fn dedicated(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> RedisResult<Conn> {
        Ok(match self {
            Endpoint::Server(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                Conn::Direct(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Endpoint::Cluster { client, .. } => Conn::Cluster(
                client
                    .get_async_connection_with_config(cluster_config(
                        self::connect_timeout(connect_timeout),
                        response_timeout,
                    ))
                    .await?,
                Arc::default(),
            ),
        })
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Both hold the URL, and with it possibly a password: leave it out.
        f.write_str(match self {
            Endpoint::Server(_) => "Server",
            Endpoint::Cluster { .. } => "Cluster",
        })
    }
}

/// A cluster node's connection timeout: half the operation's, since the
/// first connection waits for every seed node, one that never answers
/// included.
fn connect_timeout(timeout: Duration) -> Duration {
    timeout / 2
}

fn cluster_config(connect_timeout: Duration, response_timeout: Duration) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(connect_timeout)
        .set_response_timeout(response_timeout)
}

/// The node URLs of a cluster URL, each with the scheme, credentials and
/// path of the whole; empty for a one-server URL.
fn cluster_nodes(url: &str) -> Vec<String> {
    let cluster_scheme = [
        ("redis+cluster://", "redis://"),
        ("rediss+cluster://", "rediss://"),
    ]
    .into_iter()
    .find_map(|(cluster, plain)| {
        let head = url.get(..cluster.len())?;
        head.eq_ignore_ascii_case(cluster)
            .then(|| (&url[cluster.len()..], plain))
    });
    if let Some((rest, scheme)) = cluster_scheme {
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (credentials, hosts) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        return hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(|host| format!("{scheme}{credentials}{host}{path}"))
            .collect();
    }
    let listed: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(str::to_owned)
        .collect();
    // Several nodes make a cluster; one (a trailing comma) is a server.
    if listed.len() > 1 {
        listed
    } else {
        Vec::new()
    }
}

/// A connection to the store's Redis: shared (reconnecting), dedicated, or
/// to a cluster. Cloning shares it.
#[derive(Clone)]
pub(crate) enum Conn {
    /// The shared connection to one server.
    Server(ConnectionManager),
    /// A connection of its own to one server.
    Direct(MultiplexedConnection),
    /// A connection to a cluster (shared or dedicated), with where its
    /// slots' masters are, for pipelines over several slots.
    Cluster(ClusterConnection, Arc<super::pipeline::Masters>),
}

impl Conn {
    /// Whether Redis serves the store (the breaker's probe): a `PING` to
    /// one server. On a cluster, for each of the store's key bases (the
    /// instance's own and each shard's), `EXISTS` of two keys of its slot
    /// that are never written, all at once (a pipeline per slot): the
    /// master serving a slot answers 0 while the slot is stable, but
    /// nothing answers while that master is down and its replica not yet
    /// promoted, and while the slot moves between masters the migrating
    /// node answers `ASK` and the importing one `TRYAGAIN` (several keys,
    /// not all there). So the breaker stays open until every slot of the
    /// store is served and stable again: one outage per failover or slot
    /// move (a probe that any master answered closed it at once, for the
    /// next operation to open it again: a dozen times in a failover),
    /// during which callers compute directly and background work waits,
    /// and the store's scripts, which touch keys they do not declare, are
    /// kept off a slot in migration (see `tests/cluster_chaos.rs`).
    pub(crate) async fn ping(&mut self, bases: &[String]) -> RedisResult<()> {
        match self {
            Conn::Cluster(..) => {
                let mut pipe = redis::pipe();
                for base in bases {
                    pipe.cmd("EXISTS")
                        .arg(keys::unwritten(base))
                        .arg(keys::unwritten_too(base));
                }
                let replies: Vec<Value> = pipe.query_async(self).await?;
                replies
                    .into_iter()
                    .try_for_each(|reply| reply.extract_error().map(drop))
            }
            _ => redis::cmd("PING").query_async(self).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(conn) => conn.req_packed_command(cmd),
            Conn::Direct(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn, _) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Direct(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn, masters) => {
                if pipeline.is_transaction() {
                    // One `ASKING` before `MULTI` serves it whole: redis-rs's way.
                    conn.req_packed_commands(pipeline, offset, count)
                } else {
                    Box::pin(super::pipeline::cluster(
                        conn, masters, pipeline, offset, count,
                    ))
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(conn) => conn.get_db(),
            Conn::Direct(conn) => conn.get_db(),
            Conn::Cluster(conn, _) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_urls_are_no_cluster() {
        assert!(cluster_nodes("redis://127.0.0.1:6379/2").is_empty());
        assert!(matches!(
            Endpoint::parse("redis://127.0.0.1/"),
            Ok(Endpoint::Server(_))
        ));
    }

    #[test]
    fn cluster_scheme_lists_seed_nodes_with_the_credentials_and_path() {
        assert_eq!(
            cluster_nodes("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/"),
            ["redis://u:p@10.0.0.1:7000/", "redis://u:p@10.0.0.2:7001/"]
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://h:7000"),
            ["rediss://h:7000"]
        );
        assert!(
            Endpoint::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
                .unwrap()
                .is_cluster()
        );
    }

    #[test]
    fn a_cluster_has_database_0_only_and_schemes_ignore_case() {
        let err = Endpoint::parse("redis+cluster://a:7000/2").unwrap_err();
        assert!(err.contains("database 0 only"), "{err}");
        assert!(Endpoint::parse("REDIS+CLUSTER://a:7000,b:7001")
            .unwrap()
            .is_cluster());
        assert!(
            !Endpoint::parse("redis://a:7000,").unwrap().is_cluster(),
            "one node: a server"
        );
    }

    #[test]
    fn several_urls_are_a_cluster() {
        assert_eq!(
            cluster_nodes("redis://a:1, redis://b:2"),
            ["redis://a:1", "redis://b:2"]
        );
        assert!(Endpoint::parse("redis://a:1,redis://b:2")
            .unwrap()
            .is_cluster());
    }

    #[test]
    fn bad_urls_say_what_is_expected_without_the_password() {
        let err = Endpoint::parse("redis+cluster://user:secret@").unwrap_err();
        assert!(err.contains("redis+cluster://"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = Endpoint::parse("http://user:secret@host").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }
}
