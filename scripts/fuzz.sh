#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS (default 30) one after another and prints,
# per target, the executions, executions per second and corpus size. A crash, a hang
# (> 1 s per input) or an allocation over 256 MB per input fails the script with the
# reproducer's path. Needs the nightly toolchain (`rustup toolchain install nightly`);
# installs cargo-fuzz if it is missing.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
printf '%-18s %14s %10s %8s\n' target executions exec/s corpus
for target in "${targets[@]}"; do
  case "$target" in
    pgoutput) dict=dicts/pgoutput.dict ;;
    kafka_properties|cities) dict= ;;
    *) dict=dicts/json.dict ;;
  esac
  mkdir -p "corpus/$target"
  log="$(mktemp)"
  if ! cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -timeout=1 -malloc_limit_mb=256 -rss_limit_mb=2048 \
      -print_final_stats=1 ${dict:+-dict=$dict} >"$log" 2>&1; then
    tail -40 "$log" >&2
    artifact="$(grep -o 'fuzz/artifacts/[^ ]*\|artifacts/[^ ]*' "$log" | tail -1 || true)"
    echo "fuzz: $target failed; reproducer: fuzz/${artifact#fuzz/}" >&2
    echo "  reproduce with: cd fuzz && cargo +nightly fuzz run $target ${artifact#fuzz/}" >&2
    exit 1
  fi
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')"
  rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$')"
  printf '%-18s %14s %10s %8s\n' "$target" "$runs" "$rate" "$(ls "corpus/$target" | wc -l)"
  rm -f "$log"
done
