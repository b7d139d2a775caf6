//! `SCAN` over the whole keyspace of the store's Redis: one server's, or
//! every master's of a cluster.

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisResult, Value};

use super::Conn;

/// A `SCAN … MATCH pattern` over the whole keyspace, a page at a time: on
/// one server its one cursor; on a cluster each master's in turn (found by
/// `CLUSTER NODES` when the scan starts). A key that moves between
/// masters while the scan runs (a slot migration) may be seen twice or not
/// at all, as `SCAN`'s own guarantee is per node.
pub(crate) struct Scan {
    pattern: String,
    kind: Option<&'static str>,
    /// The masters still to scan, the current one last (`None` for a
    /// server); empty when done.
    nodes: Vec<Option<(String, u16)>>,
    cursor: u64,
    started: bool,
}

impl Scan {
    /// A scan of the keys matching `pattern`, of Redis type `kind` if
    /// given.
    pub(crate) fn new(pattern: impl Into<String>, kind: Option<&'static str>) -> Self {
        Scan {
            pattern: pattern.into(),
            kind,
            nodes: Vec::new(),
            cursor: 0,
            started: false,
        }
    }

    /// Whether every node has been scanned to its end.
    pub(crate) fn is_done(&self) -> bool {
        self.started && self.nodes.is_empty()
    }

    /// The next page (possibly empty), or `None` once every node is done.
    pub(crate) async fn next_page(&mut self, conn: &mut Conn) -> RedisResult<Option<Vec<String>>> {
        if !self.started {
            // Started once the masters are known: a failure to list them
            // leaves the scan to start again, not done with no node.
            self.nodes = match conn {
                Conn::Cluster(cluster, _) => {
                    masters(cluster).await?.into_iter().map(Some).collect()
                }
                _ => vec![None],
            };
            self.started = true;
        }
        let Some(node) = self.nodes.last().cloned() else {
            return Ok(None);
        };
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(self.cursor)
            .arg("MATCH")
            .arg(&self.pattern)
            .arg("COUNT")
            .arg(1000);
        if let Some(kind) = self.kind {
            cmd.arg("TYPE").arg(kind);
        }
        let (next, page): (u64, Vec<String>) = match (node, &mut *conn) {
            (Some((host, port)), Conn::Cluster(cluster, _)) => {
                let routing =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                redis::from_redis_value(cluster.route_command(cmd, routing).await?)?
            }
            _ => cmd.query_async(conn).await?,
        };
        self.cursor = next;
        if next == 0 {
            self.nodes.pop();
        }
        Ok(Some(page))
    }
}

/// The addresses of a cluster's masters (see [`SlotMap`]).
async fn masters(cluster: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    Ok(SlotMap::read(cluster).await?.masters)
}

/// Which master serves each slot, from `CLUSTER SLOTS` (each range:
/// start, end, then its master's `[host, port, id, …]` and its
/// replicas'): the addresses the client itself knows the nodes by.
#[derive(Debug, Default, PartialEq)]
pub(super) struct SlotMap {
    /// Each master once, in the order first met.
    pub(super) masters: Vec<(String, u16)>,
    /// `(first slot, last slot, index in masters)`, in the reply's order.
    ranges: Vec<(u16, u16, usize)>,
}

impl SlotMap {
    /// The map as a node (any) tells it now.
    pub(super) async fn read(cluster: &mut ClusterConnection) -> RedisResult<SlotMap> {
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let slots = cluster
            .route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), routing)
            .await?;
        Ok(SlotMap::parse(slots))
    }

    /// The index in [`masters`](Self::masters) of `slot`'s master, if the
    /// map has it.
    pub(super) fn master_of(&self, slot: u16) -> Option<usize> {
        self.ranges
            .iter()
            .find(|&&(first, last, _)| (first..=last).contains(&slot))
            .map(|&(_, _, master)| master)
    }

    fn parse(slots: Value) -> SlotMap {
        let mut map = SlotMap::default();
        let Value::Array(ranges) = slots else {
            return map;
        };
        for range in ranges {
            let Value::Array(range) = range else { continue };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (range.first(), range.get(1), range.get(2))
            else {
                continue;
            };
            let host = match master.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => continue,
            };
            let (Some(Value::Int(port)), Ok(first), Ok(last)) =
                (master.get(1), u16::try_from(*first), u16::try_from(*last))
            else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            let at = match map
                .masters
                .iter()
                .position(|(h, p)| *h == host && *p == port)
            {
                Some(at) => at,
                None => {
                    map.masters.push((host, port));
                    map.masters.len() - 1
                }
            };
            // A master announcing no usable address is named by the client
            // after the address it answered on, which this map cannot
            // know: its slots are left out (pipelines go per slot there).
            if !matches!(map.masters[at].0.as_str(), "" | "?" | "0.0.0.0" | "::") {
                map.ranges.push((first, last, at));
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_and_their_slots_are_read_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(5470),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![
                Value::Int(5471),
                Value::Int(10922),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16382),
                node("node-3.internal", 7002),
            ]),
            // A master announcing no usable address: its slots left out.
            Value::Array(vec![Value::Int(16383), Value::Int(16383), node("", 7005)]),
        ]);
        let map = SlotMap::parse(slots);
        assert_eq!(
            map.masters,
            [
                ("10.0.0.1".to_owned(), 7000),
                ("10.0.0.2".to_owned(), 7001),
                ("node-3.internal".to_owned(), 7002),
                (String::new(), 7005)
            ]
        );
        let masters: Vec<Option<usize>> = [0, 5460, 5461, 5470, 5471, 16383]
            .into_iter()
            .map(|slot| map.master_of(slot))
            .collect();
        assert_eq!(masters, [Some(0), Some(0), Some(1), Some(1), Some(1), None]);
        assert_eq!(map.master_of(16382), Some(2));
        assert_eq!(SlotMap::parse(Value::Nil), SlotMap::default());
        assert_eq!(SlotMap::default().master_of(0), None);
    }
}
