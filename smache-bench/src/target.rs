//! Where a scenario's instance stores: the run's Redis server or, with
//! `--cluster-url`, a Redis Cluster; and the bench's own connections to
//! either (for baselines, inspection and cleaning up).
//!
//! On a cluster, keyed commands and single-slot pipelines go where their
//! slot lives (redis-rs's async cluster connection routes them); commands
//! about a server rather than a key (`INFO`, `SLOWLOG`, `PING`) are aimed
//! at the master of one instance's hash tag through [`Node`]; `SCAN` walks
//! every master.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};

use crate::ctx::Result;

/// A Redis deployment a scenario runs against.
#[derive(Clone)]
pub(crate) struct Target {
    /// Whether it is a cluster (rows get `·cluster` after their id).
    pub(crate) cluster: bool,
    /// The URL smache is given (`redis://…` or `redis+cluster://…`).
    pub(crate) url: String,
    /// The bench's shared connection to it (60 s response timeout).
    pub(crate) raw: Raw,
}

impl Target {
    /// A row id for this target: `P3` or `P3·cluster`.
    pub(crate) fn id(&self, id: &str) -> String {
        if self.cluster {
            format!("{id}·cluster")
        } else {
            id.to_owned()
        }
    }

    /// The node holding the keys of the hash tag `{tag}`, for server
    /// commands (`INFO`, `SLOWLOG`, `PING`) about it.
    pub(crate) fn node(&self, tag: &str) -> Node {
        match &self.raw {
            Raw::Server(conn) => Node::Server(conn.clone()),
            Raw::Cluster(conn) => Node::Cluster(
                conn.clone(),
                Route::with_key(format!("{{{tag}}}"), SlotAddr::Master),
            ),
        }
    }

    /// `n` sequential `PING` round trips to the node holding the keys of
    /// `{tag}` (on a cluster, through the cluster connection to the master
    /// of their slot).
    pub(crate) async fn rtt(&self, tag: &str, n: usize) -> Result<Vec<Duration>> {
        let mut node = self.node(tag);
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            samples.push(ping(&mut node).await?);
        }
        Ok(samples)
    }

    /// A new connection of its own, of the kind the bench's baselines use:
    /// a `ConnectionManager` to a server, an async `ClusterConnection` to a
    /// cluster (redis-rs defaults, as smache's own connections).
    pub(crate) async fn connect(&self) -> Result<Raw> {
        Ok(if self.cluster {
            Raw::Cluster(
                ClusterClientBuilder::new(cluster_nodes(&self.url))
                    .build()?
                    .get_async_connection()
                    .await?,
            )
        } else {
            Raw::Server(ConnectionManager::new(redis::Client::open(self.url.as_str())?).await?)
        })
    }

    /// The bench's shared connection to the cluster at `url` (a
    /// `redis+cluster://host:port,…` URL or comma-separated `redis://`
    /// URLs).
    pub(crate) async fn cluster(url: &str) -> Result<Target> {
        let nodes = cluster_nodes(url);
        if nodes.is_empty() {
            return Err(format!(
                "--cluster-url: expected redis+cluster://host:port[,host:port…] or several redis:// URLs separated by commas, not {url:?}"
            )
            .into());
        }
        // Patient, as the server connection: P3's change with 100k
        // dependants runs long scripts.
        let conn = ClusterClientBuilder::new(nodes)
            .response_timeout(Duration::from_secs(60))
            .build()?
            .get_async_connection()
            .await?;
        Ok(Target {
            cluster: true,
            url: url.to_owned(),
            raw: Raw::Cluster(conn),
        })
    }
}

/// The bench's connection to a server or a cluster. Cloning shares it.
#[derive(Clone)]
pub(crate) enum Raw {
    /// One server.
    Server(ConnectionManager),
    /// A cluster: keyed commands and single-slot pipelines are routed by
    /// their keys' slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Raw {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Raw::Server(conn) => conn.req_packed_command(cmd),
            Raw::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Raw::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Raw::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Raw::Server(conn) => conn.get_db(),
            Raw::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Raw {
    /// Every key matching `pattern`: one server's `SCAN`, or each
    /// master's of a cluster (from `CLUSTER NODES`).
    pub(crate) async fn scan(&mut self, pattern: &str) -> Result<Vec<String>> {
        let cluster = match self {
            Raw::Server(conn) => return scan(conn, pattern).await,
            Raw::Cluster(conn) => conn,
        };
        let mut keys = Vec::new();
        for (_, mut master) in master_nodes(cluster).await? {
            keys.extend(scan(&mut master, pattern).await?);
        }
        Ok(keys)
    }
}

/// The masters serving slots of a cluster (from `CLUSTER NODES`), each as
/// its address and the cluster connection aimed at it.
pub(crate) async fn master_nodes(
    cluster: &ClusterConnection,
) -> Result<Vec<(String, (ClusterConnection, RoutingInfo))>> {
    let any = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    let nodes: String = (cluster.clone(), any)
        .query(redis::cmd("CLUSTER").arg("NODES"))
        .await?;
    Ok(masters(&nodes)
        .into_iter()
        .map(|(host, port)| {
            let address = format!("{host}:{port}");
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            (address, (cluster.clone(), routing))
        })
        .collect())
}

/// Sends commands about a Redis server itself (`INFO`, `SLOWLOG`, `PING`)
/// to one server: a server connection, or a cluster connection aimed at
/// one node.
pub(crate) trait ServerCommands {
    /// Runs `cmd` on the server.
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T>;
}

impl ServerCommands for ConnectionManager {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T> {
        Ok(cmd.query_async(self).await?)
    }
}

impl ServerCommands for (ClusterConnection, RoutingInfo) {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T> {
        let value = self.0.route_command(cmd.clone(), self.1.clone()).await?;
        Ok(redis::from_redis_value(value)?)
    }
}

/// The one node holding an instance's keys: the server, or the master of
/// their slot.
#[derive(Clone)]
pub(crate) enum Node {
    /// One server.
    Server(ConnectionManager),
    /// A cluster's master of a slot.
    Cluster(ClusterConnection, Route),
}

impl ServerCommands for Node {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T> {
        match self {
            Node::Server(conn) => conn.query(cmd).await,
            Node::Cluster(conn, route) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(*route));
                (conn.clone(), routing).query(cmd).await
            }
        }
    }
}

/// One timed `PING`.
pub(crate) async fn ping(conn: &mut impl ServerCommands) -> Result<Duration> {
    let start = Instant::now();
    let _: String = conn.query(&redis::cmd("PING")).await?;
    Ok(start.elapsed())
}

/// Every key of one server matching `pattern`.
pub(crate) async fn scan(conn: &mut impl ServerCommands, pattern: &str) -> Result<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = conn
            .query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000),
            )
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The node URLs of a cluster URL (`redis+cluster://[credentials@]host:port,…`,
/// `rediss+cluster://` for TLS, or comma-separated `redis://` URLs), each
/// with the scheme, credentials and path of the whole; empty for a
/// one-server URL. (smache parses its URL the same way.)
pub(crate) fn cluster_nodes(url: &str) -> Vec<String> {
    let url = url.trim();
    let scheme = [
        ("redis+cluster://", "redis://"),
        ("rediss+cluster://", "rediss://"),
    ]
    .into_iter()
    .find_map(|(cluster, plain)| Some((url.strip_prefix(cluster)?, plain)));
    if let Some((rest, scheme)) = scheme {
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
    if url.contains(',') {
        return url
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(str::to_owned)
            .collect();
    }
    Vec::new()
}

/// The addresses of the masters serving slots, from `CLUSTER NODES`
/// (`<id> <ip:port@bus[,hostname]> <flags> <master> … <slots…>`).
fn masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?.split(',').collect::<Vec<_>>();
            if !flags.contains(&"master") || flags.contains(&"fail") || fields.len() <= 8 {
                return None;
            }
            let address = fields[1].split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_list_their_nodes() {
        assert!(cluster_nodes("redis://127.0.0.1:6379").is_empty());
        assert_eq!(
            cluster_nodes("redis+cluster://u:p@127.0.0.1:7000,127.0.0.1:7001/"),
            ["redis://u:p@127.0.0.1:7000/", "redis://u:p@127.0.0.1:7001/"]
        );
        assert_eq!(
            cluster_nodes("redis://a:1, redis://b:2"),
            ["redis://a:1", "redis://b:2"]
        );
    }

    #[test]
    fn masters_serving_slots() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7003@17003 slave a1 0 0 1 connected
c3 127.0.0.1:7001@17001,host-1 master - 0 0 2 connected 5461-10922
d4 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383
e5 127.0.0.1:7004@17004 master - 0 0 4 connected
";
        assert_eq!(
            masters(nodes),
            [
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001)
            ]
        );
    }
}
