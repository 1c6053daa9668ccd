#!/usr/bin/env bash
# Benchmarks on the local services (installed and started by scripts/services.sh).
# Usage: scripts/bench.sh [latency] [expiry] [--samples N] [--rounds N]   (default: all)
# Prints one JSON object per benchmark and keeps them in target/bench/promos.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
mkdir -p target/bench
cargo bench --bench promos -- "$@" | tee target/bench/promos.jsonl
