#!/usr/bin/env bash
# Runs every test: unit and dataflow tests (no services needed) and the integration tests
# against real PostgreSQL, Redis and a Kafka-API broker, which scripts/services.sh installs
# and starts if needed. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "test: cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
scripts/services.sh
cargo test --workspace --features integration "$@"
