//! The Redis Cluster that `scripts/with-servers.sh` starts with
//! `SMACHE_TEST_CLUSTER=1`, for tests that break it on purpose: kill a
//! master (and start it again), move slots between masters.
//!
//! | variable | what |
//! |---|---|
//! | `SMACHE_TEST_REDIS_CLUSTER_URL` | `redis+cluster://host:port,…`, every node |
//! | `SMACHE_TEST_REDIS_CLUSTER_NODES` | the nodes, `host:port` separated by spaces |
//! | `SMACHE_TEST_REDIS_CLUSTER_DIR` | one directory per node, named by its port: `redis.conf`, `redis.pid` |
//! | `SMACHE_TEST_REDIS_CLUSTER_NODE_TIMEOUT_MS` | the nodes' `cluster-node-timeout` |
//! | `SMACHE_TEST_REDIS_SERVER` | the `redis-server` binary, to start a killed node again |
//!
//! Every node is asked directly (a plain connection to its address, with
//! short timeouts), never through a cluster client: a test sees what each
//! node says, even while the cluster disagrees with itself.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

/// How long a test waits for one node to answer one command.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

fn required(var: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{var} is not set: this test needs the Redis Cluster that scripts/with-servers.sh \
             starts (it kills and restarts its nodes), e.g. \
             `SMACHE_TEST_CLUSTER=1 ./scripts/with-servers.sh cargo test --test <name> -- --ignored`, \
             or `./scripts/test.sh`, whose cluster pass runs it"
        ),
    }
}

/// The test cluster: its nodes, and where each one's files are.
#[derive(Debug, Clone)]
pub struct TestCluster {
    url: String,
    nodes: Vec<String>,
    dir: PathBuf,
    node_timeout: Duration,
    server: String,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, …
    pub flags: Vec<String>,
    /// The id of its master, for a replica.
    pub master: Option<String>,
    /// Its cluster bus link is `connected`.
    pub connected: bool,
    /// The slot ranges it serves (inclusive), migration entries left out.
    pub slots: Vec<(u16, u16)>,
    /// Its slots in migration, as only the node itself lists them:
    /// `[slot->-id]` (migrating to `id`), `[slot-<-id]` (importing from it).
    pub open: Vec<String>,
}

impl NodeInfo {
    fn flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A master (not known to have failed).
    pub fn is_master(&self) -> bool {
        self.flag("master") && !self.is_failed()
    }

    /// A replica.
    pub fn is_replica(&self) -> bool {
        self.flag("slave")
    }

    /// Flagged as failing (`fail`, or suspected: `fail?`).
    pub fn is_failed(&self) -> bool {
        self.flag("fail") || self.flag("fail?")
    }

    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("host:port")
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus[,hostname]> <flags> <master>
/// <ping> <pong> <epoch> <link> <slot>…`, where a slot is `n`, `a-b`, or a
/// migration entry `[n->-id]` / `[n-<-id]` (left out).
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let addr = fields[1].split(['@', ',']).next()?.to_owned();
            let slots = fields[8..]
                .iter()
                .filter(|slot| !slot.starts_with('['))
                .filter_map(|slot| match slot.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => {
                        let n = slot.parse().ok()?;
                        Some((n, n))
                    }
                })
                .collect();
            let open = fields[8..]
                .iter()
                .filter(|slot| slot.starts_with('['))
                .map(|slot| (*slot).to_owned())
                .collect();
            Some(NodeInfo {
                open,
                id: fields[0].to_owned(),
                addr,
                flags: fields[2].split(',').map(str::to_owned).collect(),
                master: (fields[3] != "-").then(|| fields[3].to_owned()),
                connected: fields[7] == "connected",
                slots,
            })
        })
        .collect()
}

/// What moving one slot took.
#[derive(Debug, Clone, Default)]
pub struct SlotMove {
    /// Keys moved with `MIGRATE`.
    pub keys: usize,
    /// `MIGRATE` commands sent.
    pub batches: usize,
    /// Keys that existed on both nodes at once (`BUSYKEY`: created on the
    /// importing node while the migrating one still held them), then
    /// moved with `REPLACE`.
    pub busy: Vec<String>,
}

impl TestCluster {
    /// The cluster `scripts/with-servers.sh` started; panics saying how to
    /// run the test without it.
    pub fn from_env() -> TestCluster {
        let url = required("SMACHE_TEST_REDIS_CLUSTER_URL");
        let nodes = required("SMACHE_TEST_REDIS_CLUSTER_NODES")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let dir = PathBuf::from(required("SMACHE_TEST_REDIS_CLUSTER_DIR"));
        let node_timeout = Duration::from_millis(
            required("SMACHE_TEST_REDIS_CLUSTER_NODE_TIMEOUT_MS")
                .parse()
                .expect("SMACHE_TEST_REDIS_CLUSTER_NODE_TIMEOUT_MS in ms"),
        );
        let server =
            std::env::var("SMACHE_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        TestCluster {
            url,
            nodes,
            dir,
            node_timeout,
            server,
        }
    }

    /// `redis+cluster://…`, every node.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every node, `host:port`.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The nodes' `cluster-node-timeout`.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// A plain connection to one node, or its error.
    pub async fn node(&self, addr: &str) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(NODE_TIMEOUT))
            .set_response_timeout(Some(NODE_TIMEOUT));
        redis::Client::open(format!("redis://{addr}/"))?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Runs `cmd` on the node at `addr`.
    pub async fn on<T: redis::FromRedisValue>(
        &self,
        addr: &str,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let mut conn = self.node(addr).await?;
        cmd.query_async(&mut conn).await
    }

    /// The slot of a key (`CLUSTER KEYSLOT`, asked of any node that answers).
    pub async fn keyslot(&self, key: &str) -> u16 {
        let cmd = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).clone();
        for addr in &self.nodes {
            if let Ok(slot) = self.on::<u16>(addr, &cmd).await {
                return slot;
            }
        }
        panic!("no cluster node answers CLUSTER KEYSLOT");
    }

    /// `CLUSTER NODES` as `addr` sees it.
    pub async fn view_of(&self, addr: &str) -> redis::RedisResult<Vec<NodeInfo>> {
        let text: String = self.on(addr, redis::cmd("CLUSTER").arg("NODES")).await?;
        Ok(parse_cluster_nodes(&text))
    }

    /// `CLUSTER NODES` as the first node that answers sees it, leaving out
    /// `except` (a node known to be down, or known to be behind).
    pub async fn view(&self, except: &[&str]) -> Vec<NodeInfo> {
        for addr in &self.nodes {
            if except.contains(&addr.as_str()) {
                continue;
            }
            if let Ok(view) = self.view_of(addr).await {
                return view;
            }
        }
        panic!("no cluster node answers CLUSTER NODES");
    }

    /// The master serving `slot`, as the first node that answers (but
    /// `except`) sees it.
    pub async fn master_of(&self, slot: u16, except: &[&str]) -> NodeInfo {
        self.view(except)
            .await
            .into_iter()
            .find(|node| node.is_master() && node.serves(slot))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    fn pid_of(&self, port: u16) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // A node's process title is "redis-server 127.0.0.1:PORT [cluster]".
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(&format!(":{port} "))
            .then_some(pid)
    }

    /// SIGKILLs the node at `addr` (no goodbye to anyone) and waits until
    /// its port refuses connections.
    pub async fn kill(&self, addr: &str) {
        let port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
        let pid = port
            .and_then(|port| self.pid_of(port))
            .unwrap_or_else(|| panic!("no running redis-server for {addr}"));
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid} ({addr}) failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "{addr} still accepts after its kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the node at `addr` again from its `redis.conf` (same id,
    /// same ports), and waits until it answers. It is stopped by
    /// `scripts/with-servers.sh` at the end like the others (by its pid
    /// file), not by the test.
    pub async fn restart(&self, addr: &str) {
        let port = addr.rsplit_once(':').map(|(_, p)| p).expect("host:port");
        let conf = self.dir.join(port).join("redis.conf");
        // Through a shell that starts it in the background and exits: the
        // node is nobody's child then (no zombie of this process when it
        // stops), and outlives the test, as the others do.
        let status = Command::new("sh")
            .args(["-c", "\"$0\" \"$1\" </dev/null >/dev/null 2>&1 &"])
            .arg(&self.server)
            .arg(&conf)
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|err| panic!("cannot run sh to start {}: {err}", self.server));
        assert!(
            status.success(),
            "cannot start {} {}",
            self.server,
            conf.display()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self
                .on::<String>(addr, &redis::cmd("PING"))
                .await
                .is_ok_and(|pong| pong == "PONG")
            {
                return;
            }
            assert!(Instant::now() < deadline, "{addr} did not start again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What is not healthy yet, or `None`: every node answers and says
    /// `cluster_state:ok` with all 16384 slots served, sees as many
    /// masters as replicas, all connected, each replica in sync with its
    /// master.
    pub async fn unhealthy(&self) -> Option<String> {
        for addr in &self.nodes {
            let info: String = match self.on(addr, redis::cmd("CLUSTER").arg("INFO")).await {
                Ok(info) => info,
                Err(err) => return Some(format!("{addr}: {err}")),
            };
            for needed in [
                "cluster_state:ok",
                "cluster_slots_ok:16384",
                &format!("cluster_known_nodes:{}", self.nodes.len()),
            ] {
                if !info.lines().any(|line| line.trim() == needed) {
                    return Some(format!("{addr}: not {needed}"));
                }
            }
            let view = match self.view_of(addr).await {
                Ok(view) => view,
                Err(err) => return Some(format!("{addr}: {err}")),
            };
            if let Some(open) = view.iter().find(|n| !n.open.is_empty()) {
                return Some(format!(
                    "{addr}: slots in migration {:?} (left by a test that stopped midway? \
                     `redis-cli --cluster fix {addr}` closes them)",
                    open.open
                ));
            }
            let masters = view
                .iter()
                .filter(|n| n.is_master() && n.connected && !n.slots.is_empty())
                .count();
            let replicas = view
                .iter()
                .filter(|n| n.is_replica() && !n.is_failed() && n.connected && n.master.is_some())
                .count();
            if masters * 2 != self.nodes.len() || replicas * 2 != self.nodes.len() {
                return Some(format!(
                    "{addr}: sees {masters} masters and {replicas} replicas connected"
                ));
            }
            let replication: String =
                match self.on(addr, redis::cmd("INFO").arg("replication")).await {
                    Ok(info) => info,
                    Err(err) => return Some(format!("{addr}: {err}")),
                };
            let lines: Vec<&str> = replication.lines().map(str::trim).collect();
            if lines.contains(&"role:slave") && !lines.contains(&"master_link_status:up") {
                return Some(format!("{addr}: a replica not in sync with its master"));
            }
        }
        None
    }

    /// Waits until the cluster is [healthy](Self::unhealthy); panics with
    /// what is not after `timeout`.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(why) = self.unhealthy().await else {
                return;
            };
            assert!(
                Instant::now() < deadline,
                "the cluster is not healthy after {timeout:?}: {why}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Moves `slot` from the master `from` to the master `to` as `redis-cli
    /// --cluster reshard` does, by hand, so that a test can do it slowly
    /// while traffic runs (and clients meet `ASK` and `TRYAGAIN`):
    /// [`open_move`](Self::open_move); then `batch` keys at a time, `pause`
    /// between batches, [`migrate`](Self::migrate)d; then
    /// [`close_move`](Self::close_move).
    pub async fn move_slot(
        &self,
        slot: u16,
        from: &NodeInfo,
        to: &NodeInfo,
        batch: usize,
        pause: Duration,
    ) -> SlotMove {
        self.open_move(slot, from, to).await;
        let moved = self.migrate_slot(slot, from, to, batch, pause).await;
        self.close_move(slot, from, to).await;
        moved
    }

    /// `MIGRATE`s every key of `slot` that `from` still holds to `to`,
    /// `batch` keys at a time, `pause` between batches, once
    /// [`open_move`](Self::open_move) has begun the move.
    pub async fn migrate_slot(
        &self,
        slot: u16,
        from: &NodeInfo,
        to: &NodeInfo,
        batch: usize,
        pause: Duration,
    ) -> SlotMove {
        let mut moved = SlotMove::default();
        loop {
            let keys: Vec<String> = self
                .on(
                    &from.addr,
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(batch),
                )
                .await
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            moved.batches += 1;
            moved.keys += keys.len();
            moved.busy.extend(self.migrate(from, to, &keys).await);
            tokio::time::sleep(pause).await;
        }
        moved
    }

    /// Starts moving `slot` from `from` to `to`: `to` IMPORTING, `from`
    /// MIGRATING. Until [`close_move`](Self::close_move), `from` answers
    /// `ASK` for the keys it no longer holds.
    pub async fn open_move(&self, slot: u16, from: &NodeInfo, to: &NodeInfo) {
        let () = self
            .on(&to.addr, &setslot(slot, "IMPORTING", &from.id))
            .await
            .expect("SETSLOT IMPORTING");
        let () = self
            .on(&from.addr, &setslot(slot, "MIGRATING", &to.id))
            .await
            .expect("SETSLOT MIGRATING");
    }

    /// `MIGRATE`s `keys` from `from` to `to`; after a `BUSYKEY` (a key both
    /// hold: created on the importing node while the migrating one still
    /// held it), again with `REPLACE`, as `redis-cli --cluster fix
    /// --cluster-replace` would. Returns the keys both held, each with
    /// what each node held.
    pub async fn migrate(&self, from: &NodeInfo, to: &NodeInfo, keys: &[String]) -> Vec<String> {
        let (host, port) = to.addr.rsplit_once(':').expect("host:port");
        let migrate = |replace: bool| {
            let mut cmd = redis::cmd("MIGRATE");
            cmd.arg(host).arg(port).arg("").arg(0).arg(5000);
            if replace {
                cmd.arg("REPLACE");
            }
            cmd.arg("KEYS").arg(keys);
            cmd
        };
        let mut busy = Vec::new();
        match self.on::<String>(&from.addr, &migrate(false)).await {
            Ok(_) => {}
            // (the target's error, wrapped: "Target instance replied with
            // error: BUSYKEY …")
            Err(err) if err.to_string().contains("BUSYKEY") => {
                // Which of them: those both hold (the others of the batch
                // may have moved).
                for key in keys {
                    let (Some(here), Some(there)) = (
                        self.describe(&from.addr, key, false).await,
                        self.describe(&to.addr, key, true).await,
                    ) else {
                        continue;
                    };
                    busy.push(format!("{key} (migrating: {here}; importing: {there})"));
                }
                let _: String = self
                    .on(&from.addr, &migrate(true))
                    .await
                    .expect("MIGRATE … REPLACE");
            }
            Err(err) => panic!("MIGRATE to {}: {err}", to.addr),
        }
        busy
    }

    /// Ends moving `slot`: `SETSLOT … NODE` on `to`, `from`, and every
    /// other master.
    pub async fn close_move(&self, slot: u16, from: &NodeInfo, to: &NodeInfo) {
        let () = self
            .on(&to.addr, &setslot(slot, "NODE", &to.id))
            .await
            .expect("SETSLOT NODE on the target");
        let () = self
            .on(&from.addr, &setslot(slot, "NODE", &to.id))
            .await
            .expect("SETSLOT NODE on the source");
        for node in self.view(&[]).await {
            if node.is_master() && node.id != to.id && node.id != from.id {
                let _ = self
                    .on::<()>(&node.addr, &setslot(slot, "NODE", &to.id))
                    .await;
            }
        }
    }

    /// What `key` holds on the node at `addr` (after `ASKING` on an
    /// importing node): its type and size; `None` when the node does not
    /// hold it (or redirects).
    async fn describe(&self, addr: &str, key: &str, asking: bool) -> Option<String> {
        let mut conn = self.node(addr).await.ok()?;
        let asked = |pipe: &mut redis::Pipeline| {
            if asking {
                pipe.cmd("ASKING").ignore();
            }
        };
        let mut pipe = redis::pipe();
        asked(&mut pipe);
        pipe.cmd("TYPE").arg(key);
        let (kind,): (String,) = pipe.query_async(&mut conn).await.ok()?;
        let size = match kind.as_str() {
            "none" => return None,
            "hash" => "HLEN",
            "set" => "SCARD",
            "stream" => "XLEN",
            "zset" => "ZCARD",
            "list" => "LLEN",
            _ => return Some(kind),
        };
        let mut pipe = redis::pipe();
        asked(&mut pipe);
        pipe.cmd(size).arg(key);
        Some(match pipe.query_async::<(u64,)>(&mut conn).await {
            Ok((n,)) => format!("{kind} of {n}"),
            Err(err) => format!("{kind} ({err})"),
        })
    }
}

/// `CLUSTER SETSLOT <slot> <state> <id>`.
fn setslot(slot: u16, state: &str, id: &str) -> redis::Cmd {
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(id)
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-c3]
b2 127.0.0.1:7003@17003 slave a1 0 0 1 connected
c3 127.0.0.1:7001@17001,host-1 master - 0 0 2 connected 5461-10922 16000
d4 127.0.0.1:7002@17002 master,fail - 0 0 3 disconnected
";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].slots, [(0, 5460)]);
        assert_eq!(nodes[0].open, ["[5461->-c3]"]);
        assert!(nodes[0].is_master() && nodes[0].serves(5460) && !nodes[0].serves(5461));
        assert_eq!(nodes[1].master.as_deref(), Some("a1"));
        assert!(nodes[1].is_replica());
        assert_eq!(nodes[2].addr, "127.0.0.1:7001");
        assert_eq!(nodes[2].port(), 7001);
        assert!(nodes[2].serves(16000));
        assert!(nodes[3].is_failed() && !nodes[3].is_master() && !nodes[3].connected);
    }
}
