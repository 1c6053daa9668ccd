#!/usr/bin/env bash
# The promos job end to end on local services with the SPEC's seed example:
# builds dishflow, starts PostgreSQL/Redis/Tansu if needed, loads the seed subscribers into
# database `de` (only if the table is empty), produces the two seed campaigns, runs the job
# in bounded mode, and prints the drafts from Kafka and the feedback rows from Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo: cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }

scripts/services.sh
echo "demo: building dishflow (release)" >&2
cargo build --release --quiet
BIN=target/release/dishflow
export DISHFLOW_POSTGRES_URL="${DISHFLOW_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/de}"
export DISHFLOW_BROKERS="${DISHFLOW_BROKERS:-127.0.0.1:9092}"
export RUST_LOG="${RUST_LOG:-warn,dishflow=info}"
PSQL=(psql "$DISHFLOW_POSTGRES_URL" -v ON_ERROR_STOP=1 -q)

"$BIN" setup
if [ "$("${PSQL[@]}" -tAc 'SELECT count(*) FROM public.subscribers_restaurants')" = 0 ]; then
  echo "demo: loading the seed subscribers" >&2
  "${PSQL[@]}" <<'SQL'
INSERT INTO public.subscribers_restaurants (id, client_id, restaurant_id) VALUES
 (1, '223e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174000'),
 (2, '323e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174000'),
 (3, '423e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174000'),
 (4, '523e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174000'),
 (5, '623e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174000'),
 (6, '723e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174000'),
 (7, '823e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174000'),
 (8, '923e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174001'),
 (9, '923e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174001'),
 (10, '023e4567-e89b-12d3-a456-426614174000', '123e4567-e89b-12d3-a456-426614174000');
SELECT setval(pg_get_serial_sequence('public.subscribers_restaurants', 'id'), 10);
SQL
else
  echo "demo: public.subscribers_restaurants is not empty; using its rows" >&2
fi

echo "demo: producing the seed campaigns (…4003 for restaurant …4000, …4004 for …4001)" >&2
"$BIN" produce promos --topic restaurant_promos --count 2 --restaurants 2 --seed-times
echo "demo: running the promos job to the end of the topic" >&2
start=$(date +%s.%N)
"$BIN" promos --stop-at-end
echo "demo: job finished in $(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo '?') s" >&2

echo
echo "== drafts in Kafka topic promo_notifications (key  value) =="
"$BIN" consume --topic promo_notifications \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line); print(m["key"], m["value"])'
echo
echo "== rows of public.subscribers_feedback =="
"${PSQL[@]}" -c 'SELECT id, restaurant_id, adv_campaign_id, client_id, trigger_datetime_created, feedback
                 FROM public.subscribers_feedback ORDER BY id'
