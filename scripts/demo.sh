#!/usr/bin/env bash
# Usage: scripts/demo.sh [promos|orders|geo]   (default: promos)
#
# promos: the promos job end to end on local services with the SPEC's seed example:
# builds dishflow, starts PostgreSQL/Redis/Tansu if needed, loads the seed subscribers into
# database `de` (only if the table is empty), produces the two seed campaigns, runs the job
# in bounded mode, and prints the drafts from Kafka and the feedback rows from Postgres.
#
# orders: the orders job on a generated data set (2,000 orders of 100 restaurants and 1,000
# users, seed 1; dictionaries in Redis under keys demo_*, orders in Kafka topic
# order-service_orders), in bounded mode into database `de`; prints the rows per layer, the
# top counters, and the users per tag of the example rules (cdm.tag_rules). Running it again
# re-delivers the same data: no table changes.
#
# geo: the geo job on a generated data set (500 users, 35 days, seed 1; Kafka topic
# geo_events), in bounded mode into database `de`; prints a few rows of each mart. Running it
# again re-delivers the same events: the marts do not change.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo: cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
JOB="${1:-promos}"
case "$JOB" in promos|orders|geo) ;; *) echo "usage: scripts/demo.sh [promos|orders|geo]" >&2; exit 2;; esac

scripts/services.sh
echo "demo: building dishflow (release)" >&2
cargo build --release --quiet
BIN=target/release/dishflow
export DISHFLOW_POSTGRES_URL="${DISHFLOW_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/de}"
export DISHFLOW_BROKERS="${DISHFLOW_BROKERS:-127.0.0.1:9092}"
export RUST_LOG="${RUST_LOG:-warn,dishflow=info}"
PSQL=(psql "$DISHFLOW_POSTGRES_URL" -v ON_ERROR_STOP=1 -q)

if [ "$JOB" = geo ]; then
  "$BIN" setup --job geo
  echo "demo: producing 35 days of events of 500 users (Kafka geo_events)" >&2
  "$BIN" produce events --users 500 --days 35 --seed 1
  echo "demo: running the geo job to the end of the topic" >&2
  "$BIN" geo --stop-at-end
  echo
  echo "== mart.geo_zones: the busiest zone-weeks =="
  "${PSQL[@]}" -c "
    SELECT c.city, z.week, z.month, z.week_message, z.week_reaction, z.week_subscription,
           z.week_user, z.month_message
    FROM mart.geo_zones z JOIN geo.cities c ON c.id = z.zone_id
    ORDER BY z.week_message DESC, c.city LIMIT 5"
  echo "== mart.geo_users: travellers =="
  "${PSQL[@]}" -c "
    SELECT user_id, act_city, home_city, travel_count, travel_array, local_time
    FROM mart.geo_users ORDER BY travel_count DESC, user_id LIMIT 5"
  echo "== mart.geo_friend_recommendations =="
  "${PSQL[@]}" -c "
    SELECT r.user_left, r.user_right, c.city, r.processed_dttm, r.local_time
    FROM mart.geo_friend_recommendations r JOIN geo.cities c ON c.id = r.zone_id
    ORDER BY 1, 2 LIMIT 5"
  exit 0
fi

if [ "$JOB" = orders ]; then
  "$BIN" setup --job orders
  echo "demo: producing 2000 orders (Kafka order-service_orders) and their dictionaries (Redis demo_*)" >&2
  "$BIN" produce orders --orders 2000 --restaurants 100 --users 1000 --seed 1 --id-prefix demo_
  echo "demo: running the orders job to the end of the topic" >&2
  start=$(date +%s.%N)
  "$BIN" orders --redis-keys 'demo_*' --stop-at-end
  echo "demo: job finished in $(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo '?') s" >&2
  echo
  echo "== rows per table =="
  "${PSQL[@]}" -c "
    SELECT 'stg.order_events' AS table_name, count(*) AS rows FROM stg.order_events
    UNION ALL SELECT 'dds.h_order', count(*) FROM dds.h_order
    UNION ALL SELECT 'dds.h_user', count(*) FROM dds.h_user
    UNION ALL SELECT 'dds.h_product', count(*) FROM dds.h_product
    UNION ALL SELECT 'dds.l_order_product', count(*) FROM dds.l_order_product
    UNION ALL SELECT 'dds.s_order_status', count(*) FROM dds.s_order_status
    UNION ALL SELECT 'cdm.user_product_counters', count(*) FROM cdm.user_product_counters
    UNION ALL SELECT 'cdm.user_category_counters', count(*) FROM cdm.user_category_counters"
  echo "== the five biggest category counters (a user who ordered a category N times) =="
  "${PSQL[@]}" -c "
    SELECT n.username, c.category_name, c.order_cnt
    FROM cdm.user_category_counters c
    JOIN LATERAL (SELECT username FROM dds.s_user_names s WHERE s.h_user_pk = c.user_id
                  ORDER BY load_dt DESC LIMIT 1) n ON true
    ORDER BY c.order_cnt DESC, n.username, c.category_name LIMIT 5"
  echo "== user tags: the rules of cdm.tag_rules and the users who have each tag =="
  "${PSQL[@]}" -c "
    SELECT r.tag, coalesce(r.category_name, r.product_name) AS counts, r.min_orders,
           coalesce(s.users, 0) AS users
    FROM cdm.tag_rules r
    LEFT JOIN cdm.orders_summary s ON s.kind = 'tag' AND s.name = r.tag
    ORDER BY users DESC, r.tag"
  exit 0
fi

"$BIN" setup --job promos
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
