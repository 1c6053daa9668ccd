#!/usr/bin/env bash
# Benchmarks on the local services (installed and started by scripts/services.sh).
#
#   scripts/bench.sh [--quick] [--rounds N] [--only W1,W5]
#       the suite (benches/suite.rs): every workload interleaved with its hardware limit and
#       the peer engine (Pathway, installed by scripts/bench/peers/setup.sh; skip it with
#       DISHFLOW_NO_PEER=1); writes target/bench/report.md and report.json.
#   scripts/bench.sh latency|expiry [--samples N] [--rounds N]   promos latency / memory
#   scripts/bench.sh orders [--orders N] [--rounds N] [--workers N]  the orders backlog (W5)
#       alone, without the peer
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
mkdir -p target/bench
case "${1:-}" in
  latency|expiry)
    cargo bench --bench promos -- "$@" | tee target/bench/promos.jsonl ;;
  orders)
    shift
    cargo bench --bench suite -- --only W5 "$@" ;;
  *)
    if [ "${DISHFLOW_NO_PEER:-0}" != 1 ]; then
      DISHFLOW_PATHWAY_PYTHON="$(scripts/bench/peers/setup.sh)"
      export DISHFLOW_PATHWAY_PYTHON
    fi
    cargo bench --bench suite -- "$@" ;;
esac
