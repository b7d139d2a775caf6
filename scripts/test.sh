#!/usr/bin/env bash
# The README's test command: the whole suite against real servers, then
# its integration tests again with the in-process layer off (every hit
# read from Redis), so both ways of serving a hit pass the same suite.
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
# The second pass skips the macro's compile-fail suite (`ui`), which no
# store setting touches, and the doc tests; `--workspace` as in the first,
# so that nothing is built again with other features.
exec "$root/scripts/with-servers.sh" bash -c '
  set -e
  cargo test --workspace "$@"
  echo "[test.sh] again with the in-process layer off (SMACHE_LOCAL_CACHE_CAPACITY=0)" >&2
  # (after the test arguments given, if any: one `--` only)
  sep=(--); for arg in "$@"; do [ "$arg" != "--" ] || sep=(); done
  SMACHE_LOCAL_CACHE_CAPACITY=0 cargo test --workspace --tests "$@" "${sep[@]}" --skip ui
' test.sh "$@"
