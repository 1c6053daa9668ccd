#!/usr/bin/env bash
# Crash tests, long versions (scripts/test.sh runs short ones): runs a job on real services,
# kills it with SIGKILL (during startup before its input is read, between a Postgres commit
# and the Kafka confirmation of its outbox, at random) and restarts it, restarts PostgreSQL
# (and, for orders, the test's own persistent Redis) under it, then checks every output
# against its ground truth and that no message was published twice.
#   promos  200,000 drafts: each in Kafka and in subscribers_feedback exactly once
#   orders  200,000 orders: STG, the Data Vault, counters, tags and summary equal the SQL
#           truth; --stg-topic, --dds-topic and --tag-topic fold to the tables
#   geo     40,000 users x 30 days: every mart equals the SQL truth; --recommendation-topic
#           folds to the recommendations
#
# Usage: scripts/chaos.sh [promos|orders|geo] [--processes 1|2] [--runs N] [--kills K]
#                         [--seed S] [--campaigns C] [--orders N] [--users U] [--days D]
#   --processes 2   the job as a cluster of 2 processes (both are killed and restarted)
#   --runs N        repeat N times (stops at the first failure)
#   --kills K       SIGKILLs per run (default 6)
#   --campaigns C   promos: live campaigns, 20 drafts each (default 10000)
#   --orders N      orders: orders (default 200000)
#   --users U, --days D   geo: the data set (default 40000 users, 30 days)
set -euo pipefail
cd "$(dirname "$0")/.."
job=promos
case "${1:-}" in promos|orders|geo) job="$1"; shift ;; esac
runs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --processes) export CHAOS_PROCESSES="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --kills) export CHAOS_KILLS="$2"; shift 2 ;;
    --seed) export CHAOS_SEED="$2"; shift 2 ;;
    --campaigns) export CHAOS_CAMPAIGNS="$2"; shift 2 ;;
    --orders) export CHAOS_ORDERS="$2"; shift 2 ;;
    --users) export CHAOS_USERS="$2"; shift 2 ;;
    --days) export CHAOS_DAYS="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "chaos: unknown argument $1" >&2; exit 2 ;;
  esac
done
export CHAOS_KILLS="${CHAOS_KILLS:-6}"
case "$job" in
  promos) test=chaos; export CHAOS_CAMPAIGNS="${CHAOS_CAMPAIGNS:-10000}" ;;
  orders) test=chaos_orders; export CHAOS_ORDERS="${CHAOS_ORDERS:-200000}" ;;
  geo) test=chaos_geo; export CHAOS_USERS="${CHAOS_USERS:-40000}" CHAOS_DAYS="${CHAOS_DAYS:-30}" ;;
esac
scripts/services.sh
mkdir -p target/chaos
for run in $(seq 1 "$runs"); do
  echo "chaos: $job, run $run of $runs"
  log="target/chaos/$job-run-$run.log"
  status=0
  cargo test --release --features integration --test "$test" -- --nocapture >"$log" 2>&1 || status=$?
  grep -E '^chaos:|panicked|assertion|left:|right:' "$log" || true
  if [ "$status" -ne 0 ]; then
    echo "chaos: $job, run $run FAILED (cargo output: $log)" >&2
    exit 1
  fi
done
echo "chaos: $job, $runs run(s) passed"
