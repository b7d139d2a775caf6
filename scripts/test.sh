#!/usr/bin/env bash
# The README's test command: the whole suite against real servers.
#
#   ./scripts/test.sh [extra `cargo test` arguments]
#
# scripts/with-servers.sh installs and starts redis-server and the Mongo
# test server on free loopback ports (or uses SMACHE_TEST_REDIS_URL /
# SMACHE_TEST_MONGODB_URI if set), runs the tests, and stops them after.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# The end-to-end tests run the smache-worker binary: build it first.
cargo build -q -p smache-worker
export SMACHE_TEST_WORKER_BIN="$root/target/debug/smache-worker"
exec "$root/scripts/with-servers.sh" cargo test --workspace "$@"
