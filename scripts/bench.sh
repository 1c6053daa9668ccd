#!/usr/bin/env bash
# Benchmarks on the local services (installed and started by scripts/services.sh).
# Usage: scripts/bench.sh [latency] [expiry] [--samples N] [--rounds N]   (promos; default: all)
#        scripts/bench.sh orders [--orders N] [--runs N] [--workers N]  (the orders backlog)
# Prints one JSON object per benchmark and keeps them in target/bench/<job>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
mkdir -p target/bench
if [ "${1:-}" = orders ]; then
  shift
  cargo bench --bench orders -- "$@" | tee target/bench/orders.jsonl
else
  cargo bench --bench promos -- "$@" | tee target/bench/promos.jsonl
fi
