#!/usr/bin/env bash
# Crash test, long version (scripts/test.sh runs a short one): runs the promos job on real
# services under a 200,000-draft workload, kills it with SIGKILL (during startup before the
# subscribers snapshot is read, between a batch's Postgres commit and its Kafka confirmation,
# at random) and restarts it, then checks that every expected draft is in Kafka exactly once
# and in subscribers_feedback exactly once, and prints the counts.
#
# Usage: scripts/chaos.sh [--processes 1|2] [--runs N] [--kills K] [--campaigns C] [--seed S]
#   --processes 2   the job as a cluster of 2 processes (both are killed and restarted)
#   --runs N        repeat N times (stops at the first failure)
#   --kills K       SIGKILLs per run (default 6)
#   --campaigns C   live campaigns, 20 drafts each (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --processes) export CHAOS_PROCESSES="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --kills) export CHAOS_KILLS="$2"; shift 2 ;;
    --seed) export CHAOS_SEED="$2"; shift 2 ;;
    --campaigns) export CHAOS_CAMPAIGNS="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "chaos: unknown argument $1" >&2; exit 2 ;;
  esac
done
export CHAOS_KILLS="${CHAOS_KILLS:-6}" CHAOS_CAMPAIGNS="${CHAOS_CAMPAIGNS:-10000}"
scripts/services.sh
mkdir -p target/chaos
for run in $(seq 1 "$runs"); do
  echo "chaos: run $run of $runs"
  log="target/chaos/run-$run.log"
  status=0
  cargo test --release --features integration --test chaos -- --nocapture >"$log" 2>&1 || status=$?
  grep -E '^chaos:|panicked|assertion|left:|right:' "$log" || true
  if [ "$status" -ne 0 ]; then
    echo "chaos: run $run FAILED (cargo output: $log)" >&2
    exit 1
  fi
done
echo "chaos: $runs run(s) passed"
