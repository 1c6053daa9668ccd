#!/usr/bin/env bash
# What Postgres alone needs to write W2's feedback rows (20k campaigns x 100 subscribers =
# 2M rows) the way the promos job writes them: statements of 10,000 rows from arrays
# (unnest), a commit every 50,000, through SESSIONS (default 2) sessions at once, into the
# table `dishflow setup` makes — and nothing else (no outbox, summaries, Kafka or dataflow).
# Prints the time of the job's upsert, of a plain INSERT and of one binary COPY of the rows.
#
#   scripts/bench/promos_pg_floor.sh [postgres base URL, default postgres://postgres@127.0.0.1:5432]
#
# Uses (and drops) the database dishflow_pg_floor; needs `cargo build --release` first.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:-postgres://postgres@127.0.0.1:5432}
SESSIONS=${SESSIONS:-2}
DB=dishflow_pg_floor
BIN=target/release/dishflow
[ -x "$BIN" ] || { echo "promos_pg_floor: run cargo build --release first" >&2; exit 1; }
psql -q "$BASE/postgres" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
trap 'psql -q "$BASE/postgres" -c "DROP DATABASE IF EXISTS $DB (FORCE)"' EXIT
"$BIN" setup --job promos --postgres-url "$BASE/$DB" >/dev/null 2>&1
PG=(psql -q -v ON_ERROR_STOP=1 "$BASE/$DB")
"${PG[@]}" <<'SQL'
-- The rows of W2's shape as the job makes them: campaign g/100 at restaurant (g/100) % 500,
-- its 100 subscribers; then, per 10,000 rows, one array per column.
CREATE UNLOGGED TABLE chunks AS
SELECT i / 10000 AS chunk,
  array_agg(restaurant_id ORDER BY i) a1, array_agg(campaign ORDER BY i) a2,
  array_agg(content ORDER BY i) a3, array_agg(owner ORDER BY i) a4,
  array_agg(contact ORDER BY i) a5, array_agg(1764547200::int8) a6,
  array_agg(1767225600::int8) a7, array_agg(1764547200::int8) a8,
  array_agg(client ORDER BY i) a9, array_agg(1764547200::int4) a10
FROM (SELECT g AS i,
        '123e4567-e89b-12d3-a456-' || lpad((426614174000 + (g / 100) % 500)::text, 12, '0') AS restaurant_id,
        md5('c' || (g / 100))::uuid::text AS campaign,
        'Скидка 20% на всё меню до конца недели! Промокод PROMO' || (g / 100) AS content,
        'owner-' || (g / 100) AS owner, 'owner' || (g / 100) || '@example.com' AS contact,
        'client-' || ((g % 100) * 500 + (g / 100) % 500) AS client
      FROM generate_series(0, 1999999) g) rows
GROUP BY 1;
CREATE UNIQUE INDEX ON chunks (chunk);
-- One session's share (every lanes-th statement from lane), committing every 5 statements.
CREATE PROCEDURE load(lane int, lanes int, upsert bool) LANGUAGE plpgsql AS $$
DECLARE written int;
BEGIN
  FOR n IN 0..199 LOOP
    CONTINUE WHEN n % lanes <> lane;
    IF upsert THEN
      WITH w AS (
        INSERT INTO public.subscribers_feedback AS f (restaurant_id, adv_campaign_id,
          adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact,
          adv_campaign_datetime_start, adv_campaign_datetime_end, datetime_created, client_id,
          trigger_datetime_created)
        SELECT u.* FROM chunks, unnest(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10) u WHERE chunk = n
        ON CONFLICT (adv_campaign_id, client_id) DO UPDATE
          SET adv_campaign_content = excluded.adv_campaign_content
          WHERE f.adv_campaign_content IS DISTINCT FROM excluded.adv_campaign_content
        RETURNING adv_campaign_id, client_id, xmax = 0)
      SELECT count(*) INTO written FROM w;
    ELSE
      INSERT INTO public.subscribers_feedback (restaurant_id, adv_campaign_id,
        adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact,
        adv_campaign_datetime_start, adv_campaign_datetime_end, datetime_created, client_id,
        trigger_datetime_created)
      SELECT u.* FROM chunks, unnest(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10) u WHERE chunk = n;
    END IF;
    IF n % (5 * lanes) = lane THEN COMMIT; END IF;
  END LOOP;
  COMMIT;
END $$;
SQL

now() { date +%s.%N; }
timed() { # label, upsert: the rows written through SESSIONS sessions at once
  "${PG[@]}" -c "TRUNCATE public.subscribers_feedback" -c CHECKPOINT
  local start; start=$(now)
  for lane in $(seq 0 $((SESSIONS - 1))); do
    "${PG[@]}" -c "CALL load($lane, $SESSIONS, $2)" &
  done
  wait
  printf '%-48s %6.1f s\n' "$1 ($SESSIONS sessions)" "$(echo "$(now) - $start" | bc)"
}
timed "the job's upsert, written keys returned" true
timed "a plain INSERT" false
COLUMNS="restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner, \
adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end, \
datetime_created, client_id, trigger_datetime_created"
rows=$(mktemp)
trap 'rm -f "$rows"; psql -q "$BASE/postgres" -c "DROP DATABASE IF EXISTS $DB (FORCE)"' EXIT
"${PG[@]}" -c "\\copy (SELECT u.* FROM chunks, unnest(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10) u ORDER BY chunk) TO '$rows' (FORMAT binary)"
"${PG[@]}" -c "TRUNCATE public.subscribers_feedback" -c CHECKPOINT
start=$(now)
"${PG[@]}" -c "\\copy public.subscribers_feedback ($COLUMNS) FROM '$rows' (FORMAT binary)"
printf '%-48s %6.1f s\n' "one binary COPY (1 session)" "$(echo "$(now) - $start" | bc)"
echo "rows: $("${PG[@]}" -Atc 'SELECT count(*) FROM public.subscribers_feedback')"
