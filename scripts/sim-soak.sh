#!/usr/bin/env bash
# The simulation soak run: every workload of tests/tests/simulation.rs over many more seeds than
# CI runs (default 1,000 per shard, i.e. 4,000 per workload), in a release build. A failure
# prints its seed; replay it with RINGKV_SIM_SEED=<seed> (see docs/testing.md).
#
#   scripts/sim-soak.sh [seeds-per-shard]
set -euo pipefail
cd "$(dirname "$0")/.."
per_shard="${1:-1000}"
if ! [[ "$per_shard" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/sim-soak.sh [seeds-per-shard]   (a positive number; default 1000)" >&2
  exit 2
fi
echo "simulation soak: $per_shard seeds per shard, 4 shards per workload"
RINGKV_SIM_SEEDS="$per_shard" cargo nextest run --release -p ringkv-tests --test simulation \
  --no-fail-fast
