#!/usr/bin/env bash
# Runs a command with Redis and a MongoDB at hand, on a fresh Debian machine:
#
#   ./scripts/with-servers.sh COMMAND [ARGS...]
#
# 1. installs redis-server (Debian package) if it is missing;
# 2. makes a Python 3.13 venv with mongoeco for the Mongo test server
#    (tests/mongo-test-server, test-only) unless SMACHE_TEST_MONGODB_URI
#    already names a MongoDB (a real replica set, say);
# 3. starts redis-server and the Mongo test server on free loopback ports
#    (unless SMACHE_TEST_REDIS_URL / SMACHE_TEST_MONGODB_URI name servers);
# 4. runs COMMAND with their addresses in SMACHE_TEST_REDIS_URL /
#    SMACHE_TEST_MONGODB_URI (for the tests) and SMACHE_REDIS_URL /
#    SMACHE_MONGODB_URI (for smache itself, the examples);
# 5. stops the servers, whatever happened.
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
  if command -v redis-server >/dev/null 2>&1; then return; fi
  log "installing redis-server from Debian"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
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

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT INT TERM

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
