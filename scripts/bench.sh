#!/usr/bin/env bash
# Benchmarks on the local services (installed and started by scripts/services.sh).
#
#   scripts/bench.sh [--quick] [--rounds N] [--only W1,W2,W2skew,S,W3,W4,W5,W6,D] [--secs N]
#       the suite (benches/suite.rs): every workload interleaved with its hardware limit and
#       the peer engines (Pathway, and PySpark for W6, installed by
#       scripts/bench/peers/setup.sh; skip them with DISHFLOW_NO_PEER=1); writes
#       target/bench/report.md and report.json.
#   scripts/bench.sh latency [--rounds N] [--secs N]   the suite's W3 and W4 alone
#   scripts/bench.sh expiry [--rounds N]               promos memory with expiring campaigns
#   scripts/bench.sh orders [--orders N[,N…]] [--rounds N] [--workers N]  the orders backlog
#       (W5) alone, with the peer's order counters; several sizes give a row each (how time
#       and peak memory grow with the backlog)
#   scripts/bench.sh geo [--quick] [--rounds N] [--geo-users N] [--geo-days D] [--geo-rate R]
#       the geo job (W6) alone, against the legacy PySpark batch
#   scripts/bench.sh dashboard [--quick] [--requests N]
#       the dashboard's server time (D) at 0 and at 1M feedback + 3M counter rows
#   scripts/bench.sh soak [--minutes N]
#       the three jobs at once at steady rates for N minutes (default 30): per minute each
#       job's RSS, CPU and p99 input -> output latency; every output checked at the end
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
mkdir -p target/bench
if [ "${1:-}" = expiry ]; then
  cargo bench --bench promos -- "$@" | tee target/bench/promos.jsonl
  exit
fi
if [ "${DISHFLOW_NO_PEER:-0}" != 1 ]; then
  if [ "${1:-}" != geo ] && [ "${1:-}" != dashboard ] && [ "${1:-}" != soak ]; then
    DISHFLOW_PATHWAY_PYTHON="$(scripts/bench/peers/setup.sh pathway)"
    export DISHFLOW_PATHWAY_PYTHON
  fi
  case "${1:-}" in latency|orders|dashboard|soak) ;; *)
    DISHFLOW_SPARK_PYTHON="$(scripts/bench/peers/setup.sh spark)"
    export DISHFLOW_SPARK_PYTHON ;;
  esac
fi
case "${1:-}" in
  latency)
    shift
    cargo bench --bench suite -- --only W3,W4 "$@" ;;
  orders)
    shift
    cargo bench --bench suite -- --only W5 "$@" ;;
  geo)
    shift
    cargo bench --bench suite -- --only W6 "$@" ;;
  dashboard)
    shift
    cargo bench --bench suite -- --only D "$@" ;;
  soak)
    shift
    cargo bench --bench suite -- --only SOAK "$@" ;;
  *)
    cargo bench --bench suite -- "$@" ;;
esac
