//! The geo job's tables, kept equal to its collections: each batch upserts the rows whose
//! last change is an insertion and deletes those whose last change is a retraction, by the
//! table's primary key, in one transaction (see `sinks::postgres`). Every statement is
//! idempotent: a replay rewrites nothing.
//!
//! * `mart.geo_zones` by (zone_id, week, month), `mart.geo_users` by user_id.
//! * `mart.geo_friend_recommendations` by (user_left, user_right): `processed_dttm` is the
//!   logical time of the insertion (when the pair became a recommendation) and stays while
//!   the pair stays one; `local_time` is it in the time zone of the row's zone.

use anyhow::{Context, Result};
use dataflows::geo::friends::Recommendation;
use dataflows::geo::summary::CitySummary;
use dataflows::geo::user_mart::UserRow;
use dataflows::geo::zone_mart::ZoneRow;
use dataflows::{Diff, Time};
use postgres::Transaction;

use crate::sinks::kafka::KafkaMessage;
use crate::sinks::postgres::{CHUNK, Column, TableBatch, execute, puts_and_deletes, query};

/// `mart.geo_zones`.
pub struct ZoneBatch;

const ZONES_UPSERT: &str = "
INSERT INTO mart.geo_zones AS z (month, week, zone_id, week_message, week_reaction,
    week_subscription, week_user, month_message, month_reaction, month_subscription, month_user)
SELECT * FROM unnest($1::date[], $2::date[], $3::int4[], $4::int8[], $5::int8[], $6::int8[],
    $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[])
ON CONFLICT (zone_id, week, month) DO UPDATE SET
    week_message = excluded.week_message, week_reaction = excluded.week_reaction,
    week_subscription = excluded.week_subscription, week_user = excluded.week_user,
    month_message = excluded.month_message, month_reaction = excluded.month_reaction,
    month_subscription = excluded.month_subscription, month_user = excluded.month_user
WHERE (z.week_message, z.week_reaction, z.week_subscription, z.week_user, z.month_message,
       z.month_reaction, z.month_subscription, z.month_user)
      IS DISTINCT FROM
      (excluded.week_message, excluded.week_reaction, excluded.week_subscription,
       excluded.week_user, excluded.month_message, excluded.month_reaction,
       excluded.month_subscription, excluded.month_user)";

const ZONES_DELETE: &str = "
DELETE FROM mart.geo_zones z USING unnest($1::int4[], $2::date[], $3::date[]) AS d(zone, week, month)
WHERE z.zone_id = d.zone AND z.week = d.week AND z.month = d.month";

impl TableBatch<ZoneRow> for ZoneBatch {
    fn name(&self) -> &'static str {
        "zone mart sink"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(ZoneRow, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let (puts, deletes) = puts_and_deletes(updates, |r| (r.zone, r.week, r.month));
        for chunk in deletes.chunks(CHUNK) {
            let columns = [
                Column::Int(chunk.iter().map(|r| r.zone).collect()),
                Column::Date(chunk.iter().map(|r| r.week).collect()),
                Column::Date(chunk.iter().map(|r| r.month).collect()),
            ];
            execute(tx, ZONES_DELETE, &columns, "mart.geo_zones")?;
        }
        for chunk in puts.chunks(CHUNK) {
            let count = |i: usize, week: bool| {
                Column::BigInt(
                    (chunk.iter())
                        .map(|(r, _)| {
                            if week {
                                r.week_counts[i]
                            } else {
                                r.month_counts[i]
                            }
                        })
                        .collect(),
                )
            };
            let columns = [
                Column::Date(chunk.iter().map(|(r, _)| r.month).collect()),
                Column::Date(chunk.iter().map(|(r, _)| r.week).collect()),
                Column::Int(chunk.iter().map(|(r, _)| r.zone).collect()),
                count(0, true),
                count(1, true),
                count(2, true),
                count(3, true),
                count(0, false),
                count(1, false),
                count(2, false),
                count(3, false),
            ];
            execute(tx, ZONES_UPSERT, &columns, "mart.geo_zones")?;
        }
        Ok(Vec::new())
    }
}

/// `mart.geo_users`.
pub struct UserBatch;

const USERS_UPSERT: &str = "
INSERT INTO mart.geo_users AS u (user_id, act_city, home_city, travel_count, travel_array,
    local_time)
SELECT id, act, home, stays, ARRAY(SELECT json_array_elements_text(travel::json)), lt
FROM unnest($1::int8[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::timestamp[])
    AS n(id, act, home, stays, travel, lt)
ON CONFLICT (user_id) DO UPDATE SET
    act_city = excluded.act_city, home_city = excluded.home_city,
    travel_count = excluded.travel_count, travel_array = excluded.travel_array,
    local_time = excluded.local_time
WHERE (u.act_city, u.home_city, u.travel_count, u.travel_array, u.local_time)
      IS DISTINCT FROM
      (excluded.act_city, excluded.home_city, excluded.travel_count, excluded.travel_array,
       excluded.local_time)";

impl TableBatch<UserRow> for UserBatch {
    fn name(&self) -> &'static str {
        "user mart sink"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(UserRow, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let (puts, deletes) = puts_and_deletes(updates, |r| r.user);
        if !deletes.is_empty() {
            let ids = Column::BigInt(deletes.iter().map(|r| r.user).collect());
            execute(
                tx,
                "DELETE FROM mart.geo_users WHERE user_id = ANY($1::int8[])",
                &[ids],
                "mart.geo_users",
            )?;
        }
        for chunk in puts.chunks(CHUNK) {
            let travel = (chunk.iter())
                .map(|(r, _)| serde_json::to_string(&r.travel_array))
                .collect::<Result<Vec<_>, _>>()?;
            let columns = [
                Column::BigInt(chunk.iter().map(|(r, _)| r.user).collect()),
                Column::Text(chunk.iter().map(|(r, _)| r.act_city.clone()).collect()),
                Column::OptionalText(chunk.iter().map(|(r, _)| r.home_city.clone()).collect()),
                Column::Int(chunk.iter().map(|(r, _)| r.travel_count).collect()),
                Column::Text(travel),
                Column::OptionalTimestamp(chunk.iter().map(|(r, _)| r.local_time).collect()),
            ];
            execute(tx, USERS_UPSERT, &columns, "mart.geo_users")?;
        }
        Ok(Vec::new())
    }
}

/// `mart.geo_friend_recommendations`; with `publish`, every row inserted or changed is also
/// a message (key `<user_left>:<user_right>`, value the row as JSON) and every row deleted a
/// tombstone, sent through the writer's outbox.
pub struct RecommendationBatch {
    /// Whether the changes go to the recommendation topic.
    pub publish: bool,
}

const RECOMMENDATIONS_UPSERT: &str = "
INSERT INTO mart.geo_friend_recommendations AS r (user_left, user_right, processed_dttm,
    zone_id, local_time)
SELECT n.l, n.r, n.at AT TIME ZONE 'UTC', n.zone, (n.at AT TIME ZONE 'UTC') AT TIME ZONE c.timezone
FROM unnest($1::int8[], $2::int8[], $3::timestamp[], $4::int4[]) AS n(l, r, at, zone)
LEFT JOIN geo.cities c ON c.id = n.zone
ON CONFLICT (user_left, user_right) DO UPDATE SET
    zone_id = excluded.zone_id,
    local_time = r.processed_dttm AT TIME ZONE
        (SELECT timezone FROM geo.cities WHERE id = excluded.zone_id)
WHERE r.zone_id IS DISTINCT FROM excluded.zone_id
RETURNING user_left, user_right, to_char(processed_dttm AT TIME ZONE 'UTC',
    'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), zone_id, local_time::text";

const RECOMMENDATIONS_DELETE: &str = "
DELETE FROM mart.geo_friend_recommendations r
USING unnest($1::int8[], $2::int8[]) AS d(l, rr)
WHERE r.user_left = d.l AND r.user_right = d.rr
RETURNING r.user_left, r.user_right";

impl TableBatch<Recommendation> for RecommendationBatch {
    fn name(&self) -> &'static str {
        "recommendations sink"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(Recommendation, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let (puts, deletes) = puts_and_deletes(updates, |r| (r.left, r.right));
        let mut messages = Vec::new();
        let key = |left: i64, right: i64| Some(format!("{left}:{right}").into_bytes());
        for chunk in deletes.chunks(CHUNK) {
            let columns = [
                Column::BigInt(chunk.iter().map(|r| r.left).collect()),
                Column::BigInt(chunk.iter().map(|r| r.right).collect()),
            ];
            for row in query(tx, RECOMMENDATIONS_DELETE, &columns, RECOMMENDATIONS)? {
                messages.push(KafkaMessage {
                    key: key(row.try_get(0)?, row.try_get(1)?),
                    value: None,
                    headers: Vec::new(),
                });
            }
        }
        for chunk in puts.chunks(CHUNK) {
            let columns = [
                Column::BigInt(chunk.iter().map(|(r, _)| r.left).collect()),
                Column::BigInt(chunk.iter().map(|(r, _)| r.right).collect()),
                Column::Timestamp(chunk.iter().map(|(_, t)| crate::clock::utc(*t)).collect()),
                Column::Int(chunk.iter().map(|(r, _)| r.zone).collect()),
            ];
            for row in query(tx, RECOMMENDATIONS_UPSERT, &columns, RECOMMENDATIONS)? {
                let (left, right): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                let value = serde_json::json!({
                    "user_left": left,
                    "user_right": right,
                    "processed_dttm": row.try_get::<_, String>(2)?,
                    "zone_id": row.try_get::<_, i32>(3)?,
                    "local_time": row.try_get::<_, Option<String>>(4)?,
                });
                messages.push(KafkaMessage {
                    key: key(left, right),
                    value: Some(serde_json::to_vec(&value)?),
                    headers: Vec::new(),
                });
            }
        }
        Ok(if self.publish { messages } else { Vec::new() })
    }
}

/// The table of [`RecommendationBatch`], for errors.
const RECOMMENDATIONS: &str = "mart.geo_friend_recommendations";

/// `mart.geo_city_summary`: the changed rows upserted with `changed_at` = the logical time
/// of the change (an unchanged row is not touched), a city gone deleted.
pub struct CitySummaryBatch;

const CITY_SUMMARY_UPSERT: &str = "
INSERT INTO mart.geo_city_summary AS s (city, users_now, users_home, users_at_home,
    recommendations, changed_at)
SELECT n.city, n.now, n.home, n.at_home, n.recs, n.at AT TIME ZONE 'UTC'
FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::timestamp[])
    AS n(city, now, home, at_home, recs, at)
ON CONFLICT (city) DO UPDATE SET
    users_now = excluded.users_now, users_home = excluded.users_home,
    users_at_home = excluded.users_at_home, recommendations = excluded.recommendations,
    changed_at = excluded.changed_at
WHERE (s.users_now, s.users_home, s.users_at_home, s.recommendations) IS DISTINCT FROM
    (excluded.users_now, excluded.users_home, excluded.users_at_home, excluded.recommendations)";

const CITY_SUMMARY_DELETE: &str = "
DELETE FROM mart.geo_city_summary WHERE city = ANY($1::text[])";

/// The table of [`CitySummaryBatch`], for errors.
const CITY_SUMMARY: &str = "mart.geo_city_summary";

impl TableBatch<CitySummary> for CitySummaryBatch {
    fn name(&self) -> &'static str {
        "city summary sink"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(CitySummary, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let (puts, deletes) = puts_and_deletes(updates, |r| r.city.clone());
        for chunk in deletes.chunks(CHUNK) {
            let columns = [Column::Text(chunk.iter().map(|r| r.city.clone()).collect())];
            execute(tx, CITY_SUMMARY_DELETE, &columns, CITY_SUMMARY)?;
        }
        for chunk in puts.chunks(CHUNK) {
            let column = |f: fn(&CitySummary) -> i64| {
                Column::BigInt(chunk.iter().map(|(r, _)| f(r)).collect())
            };
            let columns = [
                Column::Text(chunk.iter().map(|(r, _)| r.city.clone()).collect()),
                column(|r| r.users_now),
                column(|r| r.users_home),
                column(|r| r.users_at_home),
                column(|r| r.recommendations),
                Column::Timestamp(chunk.iter().map(|(_, t)| crate::clock::utc(*t)).collect()),
            ];
            execute(tx, CITY_SUMMARY_UPSERT, &columns, CITY_SUMMARY)?;
        }
        Ok(Vec::new())
    }
}

/// Every row of `mart.geo_city_summary` (what a run that rebuilds the marts is compared
/// with).
pub fn existing_city_summary(url: &str) -> Result<Vec<CitySummary>> {
    let rows = crate::pg::connect(url)?
        .query(
            "SELECT city, users_now, users_home, users_at_home, recommendations
             FROM mart.geo_city_summary",
            &[],
        )
        .context("cannot read mart.geo_city_summary")?;
    rows.iter()
        .map(|r| {
            Ok(CitySummary {
                city: r.try_get(0)?,
                users_now: r.try_get(1)?,
                users_home: r.try_get(2)?,
                users_at_home: r.try_get(3)?,
                recommendations: r.try_get(4)?,
            })
        })
        .collect()
}

/// Every row of `mart.geo_zones` (what a run that rebuilds the marts is compared with).
pub fn existing_zones(url: &str) -> Result<Vec<ZoneRow>> {
    let rows = crate::pg::connect(url)?
        .query(
            "SELECT zone_id, week, month, ARRAY[week_message, week_reaction, week_subscription,
                    week_user], ARRAY[month_message, month_reaction, month_subscription, month_user]
             FROM mart.geo_zones",
            &[],
        )
        .context("cannot read mart.geo_zones")?;
    let counts = |values: Vec<i64>| -> Result<[i64; 4]> {
        values
            .try_into()
            .map_err(|_| anyhow::anyhow!("four counts"))
    };
    rows.iter()
        .map(|r| {
            Ok(ZoneRow {
                zone: r.try_get(0)?,
                week: r.try_get(1)?,
                month: r.try_get(2)?,
                week_counts: counts(r.try_get(3)?)?,
                month_counts: counts(r.try_get(4)?)?,
            })
        })
        .collect()
}

/// Every row of `mart.geo_users`.
pub fn existing_users(url: &str) -> Result<Vec<UserRow>> {
    let rows = crate::pg::connect(url)?
        .query(
            "SELECT user_id, act_city, home_city, travel_count, travel_array, local_time
             FROM mart.geo_users",
            &[],
        )
        .context("cannot read mart.geo_users")?;
    rows.iter()
        .map(|r| {
            Ok(UserRow {
                user: r.try_get(0)?,
                act_city: r.try_get(1)?,
                home_city: r.try_get(2)?,
                travel_count: r.try_get(3)?,
                travel_array: r.try_get(4)?,
                local_time: r.try_get(5)?,
            })
        })
        .collect()
}

/// Every row of `mart.geo_friend_recommendations`.
pub fn existing_recommendations(url: &str) -> Result<Vec<Recommendation>> {
    let rows = crate::pg::connect(url)?
        .query(
            "SELECT user_left, user_right, zone_id FROM mart.geo_friend_recommendations",
            &[],
        )
        .context("cannot read mart.geo_friend_recommendations")?;
    rows.iter()
        .map(|r| {
            Ok(Recommendation {
                left: r.try_get(0)?,
                right: r.try_get(1)?,
                zone: r.try_get(2)?,
            })
        })
        .collect()
}
