//! The geo job's ground truth: the three marts recomputed in SQL from the raw events of a
//! topic and `geo.cities` (haversine in SQL, window functions for registrations, positions
//! and stays), and the rows in which the job's tables differ from it.
//!
//! Nothing is taken from the job: which events count is decided here from the SPEC's rules
//! ([`valid_event`], over the raw JSON), every rule of the marts is written again in SQL,
//! and a recommendation's `local_time` is computed with the time zone rules of `chrono-tz`.

use std::io::Write;

use crate::*;

/// The ground truth's schema in the test database.
const SCHEMA: &str = "geo_truth";

const TRUTH: &str = "
SET work_mem = '512MB';
CREATE FUNCTION geo_truth.km(float8, float8, float8, float8) RETURNS float8
LANGUAGE sql IMMUTABLE AS $$
  SELECT 2 * 6371 * asin(sqrt(power(sin(radians($3 - $1) / 2), 2)
       + cos(radians($1)) * cos(radians($3)) * power(sin(radians($4 - $2) / 2), 2)))
$$;
-- Every event once (a record delivered twice is one event).
CREATE TABLE geo_truth.events AS
SELECT row_number() OVER () AS eid, e->>'event_type' AS kind,
       (CASE e->>'event_type'
          WHEN 'message' THEN e->'event'->>'message_from'
          WHEN 'reaction' THEN e->'event'->>'reaction_from'
          ELSE coalesce(e->'event'->>'user', e->'event'->>'subscription_user') END)::int8 AS user_id,
       coalesce(e->'event'->>'message_ts', e->'event'->>'datetime')::timestamp AS ts,
       (e->'event'->>'message_id')::int8 AS message_id,
       (e->'event'->>'message_to')::int8 AS message_to,
       (e->'event'->>'subscription_channel')::int8 AS channel,
       (e->>'lat')::float8 AS lat, (e->>'lon')::float8 AS lon
FROM (SELECT DISTINCT value::jsonb AS e FROM geo_truth.raw) r;
-- Statistics, so that the planner joins millions of events by hash, not by nested loops.
ANALYZE geo_truth.events;
-- Each event with coordinates and its zone: the nearest city, ties to the smaller id.
CREATE TABLE geo_truth.nearest AS
SELECT e.eid, (n.nearest)[2]::int AS zone_id
FROM geo_truth.events e CROSS JOIN LATERAL (
  SELECT min(ARRAY[geo_truth.km(e.lat, e.lon, c.lat, c.lng), c.id]) AS nearest FROM geo.cities c
) n
WHERE e.lat IS NOT NULL;
ANALYZE geo_truth.nearest;
CREATE TABLE geo_truth.zoned AS
SELECT e.*, c.id AS zone_id, c.city, c.timezone
FROM geo_truth.events e JOIN geo_truth.nearest n USING (eid) JOIN geo.cities c ON c.id = n.zone_id;
ANALYZE geo_truth.zoned;

CREATE TABLE geo_truth.zones AS
WITH registrations AS (
  SELECT DISTINCT ON (user_id) user_id, eid FROM geo_truth.events
  WHERE kind = 'message' ORDER BY user_id, ts, message_id
), z AS (
  SELECT zone_id, date_trunc('week', ts)::date AS week, date_trunc('month', ts)::date AS month,
         kind, r.eid IS NOT NULL AS registration
  FROM geo_truth.zoned LEFT JOIN registrations r USING (eid)
), weeks AS (
  SELECT zone_id, week, count(*) FILTER (WHERE kind = 'message') AS m,
         count(*) FILTER (WHERE kind = 'reaction') AS r,
         count(*) FILTER (WHERE kind = 'subscription') AS s,
         count(*) FILTER (WHERE registration) AS u
  FROM z GROUP BY 1, 2
), months AS (
  SELECT zone_id, month, count(*) FILTER (WHERE kind = 'message') AS m,
         count(*) FILTER (WHERE kind = 'reaction') AS r,
         count(*) FILTER (WHERE kind = 'subscription') AS s,
         count(*) FILTER (WHERE registration) AS u
  FROM z GROUP BY 1, 2
)
SELECT k.month, k.week, k.zone_id, w.m AS week_message, w.r AS week_reaction,
       w.s AS week_subscription, w.u AS week_user, m.m AS month_message,
       m.r AS month_reaction, m.s AS month_subscription, m.u AS month_user
FROM (SELECT DISTINCT zone_id, week, month FROM z) k
JOIN weeks w USING (zone_id, week) JOIN months m USING (zone_id, month);

CREATE TABLE geo_truth.users AS
WITH m AS (
  SELECT user_id, ts, message_id, zone_id, city, timezone,
         lag(zone_id) OVER w IS DISTINCT FROM zone_id AS starts,
         max(ts) OVER (PARTITION BY user_id) AS last_ts,
         row_number() OVER (PARTITION BY user_id ORDER BY ts DESC, message_id DESC) AS from_end
  FROM geo_truth.zoned WHERE kind = 'message'
  WINDOW w AS (PARTITION BY user_id ORDER BY ts, message_id)
), numbered AS (
  SELECT *, sum(starts::int) OVER (PARTITION BY user_id ORDER BY ts, message_id) AS stay FROM m
), stays AS (
  SELECT user_id, stay, min(city) AS city, min(ts) AS since, max(last_ts) AS last_ts
  FROM numbered GROUP BY user_id, stay
), lasting AS (
  SELECT user_id, stay, city,
         coalesce(lead(since) OVER (PARTITION BY user_id ORDER BY stay), last_ts) - since
           >= interval '27 days' AS home
  FROM stays
), travels AS (
  SELECT user_id, (array_agg(city ORDER BY stay DESC) FILTER (WHERE home))[1] AS home_city,
         count(*)::int AS travel_count, array_agg(city ORDER BY stay) AS travel_array
  FROM lasting GROUP BY user_id
)
SELECT a.user_id, a.city AS act_city, t.home_city, t.travel_count, t.travel_array,
       (a.ts AT TIME ZONE 'UTC') AT TIME ZONE a.timezone AS local_time
FROM numbered a JOIN travels t USING (user_id) WHERE a.from_end = 1;

-- Pairs within 1 km are looked for among positions in the same or a neighbouring band of
-- 0.01° of latitude (1 km is 0.009°) and 0.02° of longitude (1 km is less than that within
-- 60° of the equator): a prefilter that keeps the self-join small, the distance decides.
CREATE TABLE geo_truth.recommendations AS
WITH positions AS (
  SELECT DISTINCT ON (user_id) user_id, lat, lon, zone_id,
         floor(lat / 0.01)::int8 AS lat_band, floor(lon / 0.02)::int8 AS lon_band
  FROM geo_truth.zoned
  WHERE kind = 'message' ORDER BY user_id, ts DESC, message_id DESC
), subscriptions AS (
  SELECT DISTINCT user_id, channel FROM geo_truth.events WHERE kind = 'subscription'
), direct AS (
  SELECT DISTINCT least(user_id, message_to) AS a, greatest(user_id, message_to) AS b
  FROM geo_truth.events WHERE kind = 'message' AND message_to IS NOT NULL
), near AS MATERIALIZED (
  SELECT l.user_id AS user_left, r.user_id AS user_right, l.zone_id
  FROM positions l CROSS JOIN generate_series(-1, 1) AS dlat(d)
  CROSS JOIN generate_series(-1, 1) AS dlon(d)
  JOIN positions r ON r.lat_band = l.lat_band + dlat.d AND r.lon_band = l.lon_band + dlon.d
  WHERE l.user_id < r.user_id AND geo_truth.km(l.lat, l.lon, r.lat, r.lon) <= 1
), common AS MATERIALIZED (
  -- Each near pair with a channel of both (never every pair of a channel's subscribers).
  SELECT DISTINCT n.* FROM near n
  JOIN subscriptions a ON a.user_id = n.user_left
  JOIN subscriptions b ON b.user_id = n.user_right AND b.channel = a.channel
)
SELECT * FROM common c
WHERE NOT EXISTS (SELECT 1 FROM direct d WHERE d.a = c.user_left AND d.b = c.user_right);
";

/// Each mart's rows in the job's table but not in the ground truth, or the other way round,
/// as text (`+` only in the table, `-` only in the truth).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MartDifferences {
    pub zones: Vec<String>,
    pub users: Vec<String>,
    pub recommendations: Vec<String>,
    /// dishflow's `mart.geo_city_summary` against the same counts over its marts.
    pub city_summary: Vec<String>,
}

impl MartDifferences {
    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
            && self.users.is_empty()
            && self.recommendations.is_empty()
            && self.city_summary.is_empty()
    }
}

/// Where `mart.geo_city_summary` differs from its recomputation over `mart.geo_users` and
/// `mart.geo_friend_recommendations` (at most 20 rows).
fn city_summary_differences(db: &str) -> Vec<String> {
    let sql = "
        WITH truth AS (
          SELECT city, sum(now)::int8 AS users_now, sum(home)::int8 AS users_home,
                 sum(at_home)::int8 AS users_at_home, sum(recs)::int8 AS recommendations
          FROM (SELECT act_city AS city, 1 AS now, 0 AS home, 0 AS at_home, 0 AS recs
                FROM mart.geo_users
                UNION ALL
                SELECT home_city, 0, 1, (home_city = act_city)::int, 0
                FROM mart.geo_users WHERE home_city IS NOT NULL
                UNION ALL
                SELECT c.city, 0, 0, 0, 1
                FROM mart.geo_friend_recommendations r JOIN geo.cities c ON c.id = r.zone_id) m
          GROUP BY city),
        summary AS (
          SELECT city, users_now, users_home, users_at_home, recommendations
          FROM mart.geo_city_summary)
        SELECT d::text FROM (
          (SELECT '+' AS side, * FROM summary EXCEPT SELECT '+', * FROM truth)
          UNION ALL
          (SELECT '-', * FROM truth EXCEPT SELECT '-', * FROM summary)) d
        ORDER BY 1 LIMIT 20";
    pg(db)
        .query(sql, &[])
        .expect("the city summary")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Recomputes the three marts of `db` in SQL from every valid event of `topics` (and the
/// cities in `db`), into schema `geo_truth`, replacing an earlier recomputation.
pub fn geo_ground_truth(db: &str, topics: &[&str]) {
    let values = topics
        .iter()
        .flat_map(|topic| consume(topic))
        .map(|message| message.value.unwrap_or_default());
    geo_ground_truth_of(db, values);
}

/// [`geo_ground_truth`] of the events `values` (JSON texts, e.g. the lines of
/// `dishflow produce events --out`).
pub fn geo_ground_truth_of(db: &str, values: impl IntoIterator<Item = String>) {
    let mut client = pg(db);
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};
             CREATE TABLE {SCHEMA}.raw (value text);"
        ))
        .expect("ground truth schema");
    {
        // CSV: the JSON text quoted, quotes doubled.
        let mut copy = client
            .copy_in(&format!(
                "COPY {SCHEMA}.raw (value) FROM STDIN (FORMAT csv)"
            ))
            .expect("copy");
        for value in values {
            if valid_event(&value) {
                let line = format!("\"{}\"\n", value.replace('"', "\"\""));
                copy.write_all(line.as_bytes()).expect("an event");
            }
        }
        copy.finish().expect("copy the events");
    }
    client.batch_execute(TRUTH).expect("the ground truth");
}

/// Whether the raw event `text` counts, by the SPEC's rules: a JSON object whose
/// `event_type` is message, reaction or subscription, with its acting user (an integer or a
/// string of digits), a message its `message_id` (and `message_to` / `message_channel_to`
/// ids or null), a subscription its `subscription_channel`; an event time (`message_ts`, else
/// `datetime`, `YYYY-MM-DD HH:MM:SS[.fraction]`) within what the marts hold (from 4712-12-01
/// BC, proleptic -4712, to 262142-12-30 AD); both coordinates in range, or neither.
pub fn valid_event(text: &str) -> bool {
    use serde_json::Value;
    let Ok(Value::Object(e)) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let Some(Value::Object(event)) = e.get("event") else {
        return false;
    };
    let get = |key: &str| event.get(key).filter(|v| !v.is_null());
    let id = |v: &Value| match v {
        Value::Number(n) => n.as_i64().is_some(),
        Value::String(s) => {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<i64>().is_ok()
        }
        _ => false,
    };
    let optional_id = |key: &str| get(key).is_none_or(id);
    let action = match e.get("event_type").and_then(Value::as_str) {
        Some("message") => {
            get("message_from").is_some_and(id)
                && get("message_id").is_some_and(id)
                && optional_id("message_to")
                && optional_id("message_channel_to")
        }
        Some("reaction") => get("reaction_from").is_some_and(id),
        Some("subscription") => {
            let user = match get("user") {
                Some(user) => id(user),
                None => get("subscription_user").is_some_and(id),
            };
            user && get("subscription_channel").is_some_and(id)
        }
        _ => false,
    };
    let time = get("message_ts")
        .or_else(|| get("datetime"))
        .and_then(Value::as_str)
        .filter(|t| !t.contains('\0'))
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").ok());
    let first = chrono::NaiveDate::from_ymd_opt(-4712, 12, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
    let last =
        chrono::NaiveDate::from_ymd_opt(262_142, 12, 31).and_then(|d| d.and_hms_opt(0, 0, 0));
    let in_range = matches!((time, first, last), (Some(t), Some(a), Some(b)) if a <= t && t < b);
    let coordinate = |key: &str, bound: f64| match e.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(Value::Number(n)) => n.as_f64().filter(|v| v.abs() <= bound).map(Some),
        Some(_) => None,
    };
    let place = match (coordinate("lat", 90.0), coordinate("lon", 180.0)) {
        (Some(lat), Some(lon)) => lat.is_some() == lon.is_some(),
        _ => false,
    };
    action && in_range && place
}

/// The geo job's three mart tables.
pub const GEO_MARTS: [&str; 3] = [
    "mart.geo_zones",
    "mart.geo_users",
    "mart.geo_friend_recommendations",
];

/// The rows in which the marts of `db` differ from the last [`geo_ground_truth`] (at most
/// 20 per mart). `processed_dttm` is the job's own time: only `local_time` = it in the
/// zone's time zone is checked.
pub fn geo_differences(db: &str) -> MartDifferences {
    use chrono::TimeZone;
    let mut differences = geo_differences_of(db, GEO_MARTS);
    // `local_time` = `processed_dttm` in the zone's time zone, by chrono-tz's rules (not
    // by the SQL the sink writes it with).
    let rows = pg(db)
        .query(
            "SELECT r::text, r.processed_dttm, r.local_time, c.timezone
             FROM mart.geo_friend_recommendations r JOIN geo.cities c ON c.id = r.zone_id",
            &[],
        )
        .expect("recommendations' local times");
    let wrong_local_time = rows.iter().filter_map(|r| {
        let processed: chrono::DateTime<chrono::Utc> = r.get(1);
        let local: Option<chrono::NaiveDateTime> = r.get(2);
        let zone: String = r.get(3);
        let expected = zone
            .parse::<chrono_tz::Tz>()
            .ok()
            .map(|tz| tz.from_utc_datetime(&processed.naive_utc()).naive_local());
        (local != expected).then(|| {
            format!(
                "local_time: {} (expected {expected:?})",
                r.get::<_, String>(0)
            )
        })
    });
    differences
        .recommendations
        .extend(wrong_local_time.take(20));
    differences.city_summary = city_summary_differences(db);
    differences
}

/// The rows in which `tables` (zones, users and recommendations, with at least the columns
/// of the marts; the recommendations' `user_left, user_right, zone_id`) differ from the last
/// [`geo_ground_truth`] in `db` (at most 20 per mart).
pub fn geo_differences_of(db: &str, tables: [&str; 3]) -> MartDifferences {
    let mut client = pg(db);
    let mut differ = |table: &str, truth: &str, columns: &str| -> Vec<String> {
        let sql = format!(
            "SELECT * FROM (
               (SELECT '+' AS side, {columns} FROM {table} EXCEPT ALL SELECT '+', {columns} FROM {truth})
               UNION ALL
               (SELECT '-', {columns} FROM {truth} EXCEPT ALL SELECT '-', {columns} FROM {table})
             ) d ORDER BY 2, 3, 1 LIMIT 20"
        );
        let text = format!("SELECT d::text FROM ({sql}) d");
        client
            .query(&text, &[])
            .unwrap_or_else(|e| panic!("compare {table}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let [zones, users, recommendations] = tables;
    MartDifferences {
        zones: differ(
            zones,
            "geo_truth.zones",
            "zone_id, week, month, week_message, week_reaction, week_subscription, week_user, \
             month_message, month_reaction, month_subscription, month_user",
        ),
        users: differ(
            users,
            "geo_truth.users",
            "user_id, act_city, home_city, travel_count, travel_array, local_time",
        ),
        recommendations: differ(
            recommendations,
            "geo_truth.recommendations",
            "user_left, user_right, zone_id",
        ),
        city_summary: Vec::new(),
    }
}

/// Recomputes the ground truth of `db` from `topics` and returns where the marts differ.
pub fn geo_check(db: &str, topics: &[&str]) -> MartDifferences {
    geo_ground_truth(db, topics);
    geo_differences(db)
}

/// A geo run on `db` reading `<prefix>.events`, dead letters to `<prefix>.dlq`, plus `extra`.
pub fn geo_args(db: &str, prefix: &str, extra: &[impl AsRef<str>]) -> Vec<String> {
    let (topic, dlq) = (format!("{prefix}.events"), format!("{prefix}.dlq"));
    geo_topic_args(db, &topic, &dlq, extra)
}

/// A geo run on `db` reading `topic`, dead letters to `dlq`, plus `extra`.
pub fn geo_topic_args(db: &str, topic: &str, dlq: &str, extra: &[impl AsRef<str>]) -> Vec<String> {
    let mut args: Vec<String> = [
        "geo",
        "--brokers",
        &brokers(),
        "--postgres-url",
        db,
        "--event-topic",
        topic,
        "--dead-letter-topic",
        dlq,
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.as_ref().to_string()));
    args
}

/// A message event of the SPEC's layout: a channel post (channel 10), or a direct message to
/// `to`; coordinates `at` (lat, lon) or none.
pub fn geo_message(
    id: i64,
    from: i64,
    to: Option<i64>,
    time: &str,
    at: Option<(f64, f64)>,
) -> String {
    let to = to.map_or("null".to_string(), |t| t.to_string());
    let (lat, lon) = at.map_or(("null".into(), "null".into()), |(a, b)| {
        (a.to_string(), b.to_string())
    });
    format!(
        r#"{{"event_type": "message", "event": {{"message_id": {id}, "message_from": {from},
            "message_to": {to}, "message_channel_to": 10, "datetime": "{time}"}},
            "lat": {lat}, "lon": {lon}}}"#
    )
}

/// A subscription event of the SPEC's layout: `user` subscribes to `channel` at `time`.
pub fn geo_subscription(user: i64, channel: i64, time: &str) -> String {
    format!(
        r#"{{"event_type": "subscription", "event": {{"datetime": "{time}",
            "subscription_channel": {channel}, "user": "{user}"}}, "lat": null, "lon": null}}"#
    )
}

/// The recommended pairs of `db`, sorted (nothing while the job has not created the table).
pub fn geo_recommendations(db: &str) -> Vec<(i64, i64)> {
    let sql = "SELECT user_left, user_right FROM mart.geo_friend_recommendations ORDER BY 1, 2";
    (pg(db).query(sql, &[]))
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}

/// The recommended pairs the recommendation topic `topic` folds to (keys `left:right`),
/// sorted like [`geo_recommendations`].
pub fn recommendations_from_topic(topic: &str) -> Vec<(i64, i64)> {
    let mut pairs: Vec<(i64, i64)> = live_keys(topic)
        .iter()
        .map(|key| {
            let (l, r) = key.split_once(':').expect("left:right");
            (l.parse().expect("left"), r.parse().expect("right"))
        })
        .collect();
    pairs.sort();
    pairs
}
