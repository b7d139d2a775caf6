#!/usr/bin/env bash
# The README's test command, three passes against real servers:
#   1. the whole suite, one Redis;
#   2. its integration tests again with the other setting of each knob
#      the whole suite must pass under: the in-process layer off (every
#      hit read from Redis) and the keys spread over 4 shards
#      (SMACHE_REDIS_SHARDS=4, README "Shards");
#   3. the suites that exercise the store protocol (store, refresh, single
#      flight, tasks, graph, aliases, inspect, chaos, spread, crash points) against a
#      Redis Cluster of 3 masters + 3 replicas (issue #16), the keys over
#      48 shards (16 on each master); then, alone and last,
#      the cluster chaos run (tests/cluster_chaos.rs, at the cluster default
#      of 48 shards: it kills a master and moves a slot, so it is
#      #[ignore]d in the other passes).
#
#   ./scripts/test.sh [extra `cargo test` arguments]
#
# scripts/with-servers.sh installs and starts redis-server, the cluster and
# the Mongo test server on free loopback ports (or uses
# SMACHE_TEST_REDIS_URL / SMACHE_TEST_REDIS_CLUSTER_URL /
# SMACHE_TEST_MONGODB_URI if set), runs the tests, and stops them after.
# SMACHE_TEST_CLUSTER=0 leaves the cluster pass out.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# The end-to-end tests run the smache-worker binary: build it first.
cargo build -q -p smache-worker
export SMACHE_TEST_WORKER_BIN="$root/target/debug/smache-worker"
export SMACHE_TEST_CLUSTER="${SMACHE_TEST_CLUSTER:-1}"
# The later passes skip the macro's compile-fail suite (`ui`), which no
# store setting touches, and the doc tests; `--workspace` as in the first,
# so that nothing is built again with other features. (`ui` is skipped by
# its exact name: as a substring it skipped every test named *suite* or
# *build*, the whole store suite among them.)
exec "$root/scripts/with-servers.sh" bash -c '
  set -e
  cargo test --workspace "$@"
  # (after the test arguments given, if any: one `--` only)
  sep=(--); for arg in "$@"; do [ "$arg" != "--" ] || sep=(); done
  echo "[test.sh] again with the in-process layer off and 4 shards (SMACHE_LOCAL_CACHE_CAPACITY=0 SMACHE_REDIS_SHARDS=4)" >&2
  SMACHE_LOCAL_CACHE_CAPACITY=0 SMACHE_REDIS_SHARDS=4 cargo test --workspace --tests "$@" "${sep[@]}" --exact --skip ui
  if [ -n "${SMACHE_TEST_REDIS_CLUSTER_URL:-}" ]; then
    echo "[test.sh] the store protocol suites against Redis Cluster, 48 shards" >&2
    # Left out there: tests that put a proxy between smache and one
    # server, which a cluster client (redirected to the real nodes)
    # cannot go through.
    SMACHE_TEST_REDIS_URL="$SMACHE_TEST_REDIS_CLUSTER_URL" \
    SMACHE_REDIS_URL="$SMACHE_TEST_REDIS_CLUSTER_URL" SMACHE_REDIS_SHARDS=48 \
      cargo test --workspace --test redis_store --test refresh --test single_flight \
        --test tasks --test graph --test aliases --test inspect --test inspect_graph \
        --test configuration --test chaos --test spread --test spread_jobs \
        --test crash_points "$@" "${sep[@]}" \
        --skip a_waiter_that_read_just_before_the_value_was_stored_does_not_compute_it_again
    # Only on a cluster started here: one given by URL is not ours to break.
    # (No SMACHE_REDIS_SHARDS: a cluster URL gets the default, 48.)
    if [ -n "${SMACHE_TEST_REDIS_CLUSTER_DIR:-}" ]; then
      echo "[test.sh] the cluster chaos run: a master killed, a slot moved (alone, last)" >&2
      cargo test --workspace --test cluster_chaos "$@" "${sep[@]}" --ignored
    else
      echo "[test.sh] no cluster chaos run: the cluster was given by SMACHE_TEST_REDIS_CLUSTER_URL" >&2
    fi
  fi
' test.sh "$@"
