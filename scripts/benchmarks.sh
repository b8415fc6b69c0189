#!/usr/bin/env bash
# Regenerates the measurements behind BENCHMARKS.md in one session: release binaries, a
# three-member etcd on loopback (../shared/peers/etcd-cluster.sh, or ETCD_SCRIPT), then every
# load-generator workload against a fresh local ringkv cluster and the same workload against
# etcd, the client sweep and its plot, and the criterion component benches. Every run is saved
# as JSON under bench-results/<UTC time>/ and rendered as Markdown tables into tables.md there
# (`ringkv-bench report`). Takes about 25 minutes on 2 cores.
#
#   scripts/benchmarks.sh            # everything
#   SECONDS_PER_RUN=5 scripts/benchmarks.sh   # a quick pass
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_RUN:-20}
out="bench-results/$(date -u +%Y-%m-%dT%H%M%SZ)"
mkdir -p "$out"
cargo build --release --workspace --bins
bench=target/release/ringkv-bench

etcd_script=${ETCD_SCRIPT:-../shared/peers/etcd-cluster.sh}
etcd=()
if [ -x "$etcd_script" ]; then
  "$etcd_script" start
  trap '"$etcd_script" stop || true' EXIT
  etcd=(--etcd 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793)
else
  echo "no etcd script at $etcd_script: measuring ringkv alone" >&2
fi

run() {
  local name=$1
  shift
  echo "== $name" >&2
  "$bench" run --seconds "$secs" --json "$@" >"$out/$name.json" 2>"$out/$name.log"
}

run 01-put --workload put --clients 64 "${etcd[@]}"
run 02-get --workload get --clients 64 "${etcd[@]}"
run 03-mixed --workload mixed --clients 64 "${etcd[@]}"
for w in a b c d f; do
  run "04-ycsb-$w" --workload "ycsb-$w" --clients 64 "${etcd[@]}"
done
run 05-ycsb-e --workload ycsb-e --keyspace range --clients 64 "${etcd[@]}"
run 06-txn-2 --workload txn-2 --records 100000 --clients 64 "${etcd[@]}"
run 07-txn-2-two-pc --workload txn-2 --records 100000 --clients 64 --txn-commit two-pc
run 08-txn-10 --workload txn-10 --records 100000 --clients 64 "${etcd[@]}"
run 09-txn-10-two-pc --workload txn-10 --records 100000 --clients 64 --txn-commit two-pc
run 10-get-read-index --workload get --clients 64 --read-mode read-index
run 11-get-follower --workload get --clients 64 --read-mode follower
run 12-get-stale --workload get --clients 64 --read-mode stale

echo "== placement scheduling simulation" >&2
"$bench" placement-sim --stores 100 --initial-stores 50 --regions 100000 --schedule-limit 1024 \
  >"$out/placement-sim.txt"

echo "== sweep" >&2
"$bench" sweep --workload ycsb-a --seconds $((secs / 2 > 0 ? secs / 2 : 1)) \
  --plot "$out/throughput-vs-clients.svg" "${etcd[@]}" >"$out/sweep.txt" 2>"$out/sweep.log"

echo "== component benches" >&2
cargo bench -p ringkv-bench --bench components 2>&1 | grep -E "^[a-z_/0-9]+ +time:|thrpt:" \
  >"$out/components.txt" || true

"$bench" report "$out" >"$out/tables.md"
echo "results in $out: tables.md (runs), sweep.txt and throughput-vs-clients.svg, placement-sim.txt, components.txt" >&2
