#!/usr/bin/env bash
# Runs a command with Redis and a MongoDB at hand, on a fresh Debian machine:
#
#   ./scripts/with-servers.sh COMMAND [ARGS...]
#
# 1. installs redis-server (Debian package; it depends on redis-tools, which
#    has redis-cli) if it is missing;
# 2. makes a Python 3.13 venv with mongoeco for the Mongo test server
#    (tests/mongo-test-server, test-only) unless SMACHE_TEST_MONGODB_URI
#    already names a MongoDB (a real replica set, say);
# 3. starts redis-server and the Mongo test server on free loopback ports
#    (unless SMACHE_TEST_REDIS_URL / SMACHE_TEST_MONGODB_URI name servers),
#    and, with SMACHE_TEST_CLUSTER=1, a Redis Cluster (below);
# 4. runs COMMAND with their addresses in SMACHE_TEST_REDIS_URL /
#    SMACHE_TEST_MONGODB_URI (for the tests) and SMACHE_REDIS_URL /
#    SMACHE_MONGODB_URI (for smache itself, the examples), and the
#    redis-server binary in SMACHE_TEST_REDIS_SERVER (for tests that start
#    and kill their own);
# 5. stops the servers, whatever happened.
#
# Redis Cluster, opt-in (3-4 s more): SMACHE_TEST_CLUSTER=1 starts
# 3 masters + 3 replicas on loopback (cluster-node-timeout 2000 ms; Redis 7
# or later, for cluster-port: Debian 12 has 7.0), unless
# SMACHE_TEST_REDIS_CLUSTER_URL already names a cluster (then it is used as
# is, and nothing is started). COMMAND then has
#   SMACHE_TEST_REDIS_CLUSTER_URL    redis+cluster://127.0.0.1:P1,...,127.0.0.1:P6
#                                    (every node, the three masters first)
#   SMACHE_TEST_REDIS_CLUSTER_NODES  "127.0.0.1:P1 ... 127.0.0.1:P6", same order
#   SMACHE_TEST_REDIS_CLUSTER_DIR    a directory with one directory per node,
#                                    named by its port: redis.conf (every
#                                    setting of the node), nodes.conf,
#                                    redis.log, redis.pid. A killed node comes
#                                    back as it was with
#                                    "$SMACHE_TEST_REDIS_SERVER" "$SMACHE_TEST_REDIS_CLUSTER_DIR/P/redis.conf"
#                                    (and is stopped at the end like the rest)
#   SMACHE_TEST_REDIS_CLUSTER_NODE_TIMEOUT_MS  2000 (for failover waits)
# (the last three only for a cluster started here). The tests against it:
#   ./scripts/test.sh (which sets SMACHE_TEST_CLUSTER=1 unless told 0)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv="$root/.venv-test"
# Each run's logs and data in a directory of its own: two runs side by side
# (a CI job beside a developer's) never read each other's startup lines.
mkdir -p "$root/.test-servers"
state=$(mktemp -d "$root/.test-servers/run.XXXXXX")

log() { printf '[with-servers] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then return; fi
  log "installing redis-server from Debian"
  as_root apt-get update -qq
  # redis-tools (redis-cli) is a dependency of redis-server: named anyway,
  # for a machine with a redis-server of its own but no redis-cli.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server redis-tools >/dev/null
}

find_python313() {
  local candidate
  for candidate in "${SMACHE_TEST_PYTHON:-}" python3.13 \
      "$HOME"/.pyenv/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 /usr/bin/python3.13; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1; then
      command -v "$candidate" 2>/dev/null || echo "$candidate"
      return 0
    fi
  done
  return 1
}

ensure_venv() {
  local requirements="$root/tests/mongo-test-server/requirements.txt"
  local stamp="$venv/.requirements"
  if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp"; then return; fi
  local python
  python=$(find_python313) || { log "Python 3.13 not found (set SMACHE_TEST_PYTHON)"; exit 1; }
  log "making $venv with $python"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
}

free_port() {
  "${venv}/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
    || python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Distinct ports free on loopback, as many as asked: all bound at once, so
# that none is given twice.
free_ports() {
  local code='import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
  "${venv}/bin/python" -c "$code" "$1" 2>/dev/null || python3 -c "$code" "$1"
}

# The cluster's nodes, if any: their pid files name them, whoever started
# them (this script, or a test that killed one and started it again).
cluster_dir="$state/cluster"
cluster_node_pids() {
  local file port pid
  for file in "$cluster_dir"/*/redis.pid; do
    [ -f "$file" ] || continue
    port=$(basename "$(dirname "$file")")
    pid=$(cat "$file" 2>/dev/null) || continue
    # A pid file left by a killed node may name another process by now: a
    # node's process title is "redis-server 127.0.0.1:PORT [cluster]".
    case "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" in
      *redis-server*":$port "*) echo "$pid" ;;
    esac
  done
}

pids=()
cleanup() {
  local pid nodes
  nodes=$(cluster_node_pids)
  for pid in "${pids[@]}" $nodes; do kill "$pid" 2>/dev/null || true; done
  # (a node a test has paused with SIGSTOP would never act on the SIGTERM)
  for pid in $nodes; do kill -CONT "$pid" 2>/dev/null || true; done
  # Cluster nodes, this shell's or a test's: 5 s to stop, then SIGKILL.
  # (Still running: a command line; this shell's exited, unreaped children
  # have none, but `kill -0` would find them.)
  for _ in $(seq 1 50); do
    nodes=$(for pid in $nodes; do [ -z "$(tr -d '\0' 2>/dev/null <"/proc/$pid/cmdline")" ] || echo "$pid"; done)
    [ -n "$nodes" ] || break
    sleep 0.1
  done
  for pid in $nodes; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT
# Stopped by a signal: the servers stopped (by the EXIT trap), and nothing
# after, not the rest of a start-up (with a cluster it takes a few seconds).
trap 'exit 130' INT
trap 'exit 143' TERM

# redis-server cannot pick a free port itself: a port found free may be
# taken before it binds, so a start that fails is tried again on another.
start_redis() {
  local port pid attempt
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$state" >"$state/redis.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      if ! kill -0 "$pid" 2>/dev/null; then break; fi  # exited: port taken?
      if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then
        pids+=("$pid")
        export SMACHE_TEST_REDIS_URL="redis://127.0.0.1:$port/"
        log "redis-server on $SMACHE_TEST_REDIS_URL"
        return
      fi
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    log "redis-server did not start on port $port (attempt $attempt):"; cat "$state/redis.log" >&2
  done
  exit 1
}

# Redis Cluster: 3 masters + 3 replicas. A node's failure is noticed after
# cluster-node-timeout, and a replica takes over a second or two after that:
# with 2000 ms, a replica is master 3.4-4.3 s after its master's kill -9 (on
# a 2-core machine), and a node slowed down by a busy machine (cargo
# building, tests in parallel) is still not taken for a failed one.
cluster_node_timeout_ms=2000
cluster_ports=()
# redis-cli waits for an answer as long as it takes: bounded here, so that
# neither a port taken by something that accepts and never answers nor a
# stuck node holds up the start (coreutils' timeout).
cluster_cli() { timeout 2 redis-cli "$@"; }

# One node, started from a redis.conf of its own so that a test can start it
# again just as it was. Two free ports: the node's and its cluster bus's
# (--cluster-port, Redis 7; by default the bus is port + 10000, which may be
# taken, or above 65535). Tried again on other ports if it does not start.
start_cluster_node() {
  local port bus dir pid attempt ports
  for attempt in 1 2 3 4 5; do
    ports=$(free_ports 2)
    port=${ports% *}
    bus=${ports#* }
    dir="$cluster_dir/$port"
    mkdir -p "$dir"
    cat >"$dir/redis.conf" <<CONF
port $port
bind 127.0.0.1
cluster-enabled yes
cluster-port $bus
cluster-config-file $dir/nodes.conf
cluster-node-timeout $cluster_node_timeout_ms
# a replica takes over however long it has been cut off from its master
cluster-replica-validity-factor 0
save ""
appendonly no
# a replica's first full sync at once, not after 5 s (the default)
repl-diskless-sync-delay 0
dir $dir
logfile $dir/redis.log
pidfile $dir/redis.pid
CONF
    redis-server "$dir/redis.conf" >>"$dir/redis.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      if ! kill -0 "$pid" 2>/dev/null; then break; fi  # exited: port taken?
      # (the node itself answering, not whatever else may hold the port)
      if cluster_cli -p "$port" info server 2>/dev/null | tr -d '\r' | grep -qx "process_id:$pid"; then
        pids+=("$pid")
        cluster_ports+=("$port")
        return
      fi
      sleep 0.05
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    log "cluster node did not start on ports $port/$bus (attempt $attempt):"; cat "$dir/redis.log" >&2
    rm -rf "$dir"
  done
  exit 1
}

# What is not ready yet in the cluster, or nothing: every node sees the
# cluster ok, all 16384 slots served, all six nodes connected, three of them
# masters and three replicas (a node learns by gossip, a moment after
# --cluster create, which of the others are replicas); every replica is in
# sync with its master.
cluster_not_ready() {
  local port info view
  for port in "${cluster_ports[@]}"; do
    info=$(cluster_cli -p "$port" cluster info 2>&1 | tr -d '\r') || true
    case "$info" in
      *cluster_state:ok*) ;;
      *) echo "127.0.0.1:$port: not cluster_state:ok"; return ;;
    esac
    if ! grep -qx 'cluster_slots_assigned:16384' <<<"$info" || ! grep -qx 'cluster_slots_ok:16384' <<<"$info"; then
      echo "127.0.0.1:$port: not all 16384 slots assigned and ok"; return
    fi
    if ! grep -qx 'cluster_known_nodes:6' <<<"$info"; then
      echo "127.0.0.1:$port: does not know all 6 nodes yet"; return
    fi
    # CLUSTER NODES: id address flags master ping pong epoch link slots...
    view=$(cluster_cli -p "$port" cluster nodes 2>&1 | awk '
      { flags = $3; sub(/^myself,/, "", flags) }
      flags == "master" && $8 == "connected" && NF > 8 { masters++ }
      flags == "slave" && $8 == "connected" && $4 != "-" { replicas++ }
      END { printf "%d masters and %d replicas", masters, replicas }')
    if [ "$view" != "3 masters and 3 replicas" ]; then
      echo "127.0.0.1:$port: sees $view connected"; return
    fi
    info=$(cluster_cli -p "$port" info replication 2>&1 | tr -d '\r') || true
    if grep -qx 'role:slave' <<<"$info" && ! grep -qx 'master_link_status:up' <<<"$info"; then
      echo "127.0.0.1:$port: replica not in sync with its master yet"; return
    fi
  done
}

cluster_failed() {
  local port
  log "the Redis Cluster did not start: $*"
  for port in "${cluster_ports[@]}"; do
    log "--- 127.0.0.1:$port (tail of $cluster_dir/$port/redis.log)"
    tail -n 15 "$cluster_dir/$port/redis.log" >&2 || true
  done
  if [ -f "$cluster_dir/create.log" ]; then
    log "--- redis-cli --cluster create"
    tail -n 30 "$cluster_dir/create.log" | sed 's/\x1b\[[0-9;]*m//g' >&2  # (no colours)
  fi
  exit 1
}

start_cluster() {
  local started port masters=() replicas=() waiting deadline nodes
  started=$(date +%s%N)
  mkdir -p "$cluster_dir"
  for _ in 1 2 3 4 5 6; do start_cluster_node; done
  timeout 60 redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-replicas 1 --cluster-yes \
    >"$cluster_dir/create.log" 2>&1 || cluster_failed "redis-cli --cluster create failed"
  waiting="not checked yet"
  deadline=$((SECONDS + 30))
  while [ "$SECONDS" -lt "$deadline" ]; do
    waiting=$(cluster_not_ready)
    [ -n "$waiting" ] || break
    sleep 0.1
  done
  [ -z "$waiting" ] || cluster_failed "still, after 30 s: $waiting"
  timeout 60 redis-cli --cluster check "127.0.0.1:${cluster_ports[0]}" >"$cluster_dir/check.log" 2>&1 \
    || { sed 's/\x1b\[[0-9;]*m//g' "$cluster_dir/check.log" >&2; cluster_failed "redis-cli --cluster check failed"; }
  # Masters first (who is which is redis-cli's choice).
  for port in "${cluster_ports[@]}"; do
    if cluster_cli -p "$port" info replication | tr -d '\r' | grep -qx 'role:master'; then
      masters+=("127.0.0.1:$port")
    else
      replicas+=("127.0.0.1:$port")
    fi
  done
  nodes="${masters[*]} ${replicas[*]}"
  export SMACHE_TEST_REDIS_CLUSTER_NODES="$nodes"
  export SMACHE_TEST_REDIS_CLUSTER_URL="redis+cluster://${nodes// /,}"
  export SMACHE_TEST_REDIS_CLUSTER_DIR="$cluster_dir"
  export SMACHE_TEST_REDIS_CLUSTER_NODE_TIMEOUT_MS="$cluster_node_timeout_ms"
  log "Redis Cluster (masters ${masters[*]}; replicas ${replicas[*]}) ready in $(( ($(date +%s%N) - started) / 1000000 )) ms"
}

# The test server binds port 0 (the kernel picks a free one, no race) and
# prints the port it got; it is used once a connection to it succeeds.
start_mongo() {
  local out="$state/mongo.log" pid ready address
  "$venv/bin/python" -u "$root/tests/mongo-test-server/server.py" --host 127.0.0.1 --port 0 >"$out" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    ready=$(grep -m1 '^SMACHE-MONGO-TEST-SERVER READY ' "$out" 2>/dev/null || true)
    address=${ready##* }
    if [ -n "$ready" ] && "$venv/bin/python" -c 'import socket, sys; host, port = sys.argv[1].rsplit(":", 1); socket.create_connection((host, int(port)), timeout=1).close()' "$address" 2>/dev/null; then
      export SMACHE_TEST_MONGODB_URI="mongodb://$address/"
      log "Mongo test server on $SMACHE_TEST_MONGODB_URI"
      return
    fi
    sleep 0.1
  done
  log "the Mongo test server did not start:"; cat "$out" >&2; exit 1
}

ensure_redis
export SMACHE_TEST_REDIS_SERVER
SMACHE_TEST_REDIS_SERVER=$(command -v redis-server)
if [ -z "${SMACHE_TEST_REDIS_URL:-}" ]; then start_redis; fi
if [ -n "${SMACHE_TEST_REDIS_CLUSTER_URL:-}" ]; then
  log "using the Redis Cluster at SMACHE_TEST_REDIS_CLUSTER_URL"
else
  case "${SMACHE_TEST_CLUSTER:-}" in
    1) start_cluster ;;
    ""|0) ;;
    *) log "SMACHE_TEST_CLUSTER is 1 (start a Redis Cluster) or 0/unset, not '$SMACHE_TEST_CLUSTER'"; exit 2 ;;
  esac
fi
if [ -z "${SMACHE_TEST_MONGODB_URI:-}" ]; then
  ensure_venv
  start_mongo
else
  log "using the MongoDB at SMACHE_TEST_MONGODB_URI"
fi

export SMACHE_REDIS_URL="$SMACHE_TEST_REDIS_URL"
export SMACHE_MONGODB_URI="$SMACHE_TEST_MONGODB_URI"
[ "$#" -gt 0 ] || { log "usage: $0 COMMAND [ARGS...]"; exit 2; }
"$@"
