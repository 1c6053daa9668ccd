//! The dashboard's panels: each reads one small aggregate table that a job keeps current
//! (never the millions of rows behind it) with a constant query and bound parameters, and
//! draws it as SVG.
//!
//! | panel | table (kept by) |
//! |---|---|
//! | promos: totals, per restaurant, per campaign | `mart.promo_campaigns` (promos sink + trigger) |
//! | promos: per hour | `mart.promo_hours` (promos sink + trigger) |
//! | orders: top products, top categories, users per tag | `cdm.orders_summary` (orders) |
//! | geo: zone mart per week | `mart.geo_zones` (geo) |
//! | geo: map, home vs actual city, recommendations | `mart.geo_city_summary` ⋈ `geo.cities` (geo) |
//!
//! A panel whose table is missing (that job was never set up) or not readable (the role
//! lacks a grant) shows why instead of numbers; the other panels are unaffected.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use postgres::Client;
use postgres::error::SqlState;
use postgres::types::ToSql;

use super::svg::{self, Place, count, escape};

/// One panel, rendered.
pub struct Panel {
    /// Its element id in the page.
    pub id: &'static str,
    /// Its section: promos, orders or geo.
    pub section: &'static str,
    /// Its heading.
    pub title: &'static str,
    /// The chart (or the reason there is none), HTML.
    pub body: String,
    /// When its data last changed, as its table says; `None`: the table has no such column
    /// (the dashboard then reports when it saw the data change) or no rows.
    pub changed: Option<DateTime<Utc>>,
    /// The table has no `changed_at`: the dashboard watches the body for changes.
    pub watched: bool,
}

/// How many rows a top-N panel shows, and how many hours or weeks a time panel covers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Rows of a top-N panel.
    pub top: i64,
    /// Hours of the drafts-per-hour panel.
    pub hours: i64,
    /// Weeks of the zone-mart panel.
    pub weeks: i64,
}

/// Every panel, in page order.
pub fn all(client: &mut Client, limits: Limits) -> Vec<Panel> {
    let mut reader = Reader {
        client,
        changed: HashMap::new(),
    };
    vec![
        promo_totals(&mut reader),
        promo_hours(&mut reader, limits.hours),
        promo_top(
            &mut reader,
            limits.top,
            "promos-restaurants",
            "Drafts per restaurant",
            "restaurant_id",
        ),
        promo_top(
            &mut reader,
            limits.top,
            "promos-campaigns",
            "Drafts per campaign",
            "adv_campaign_id",
        ),
        orders_top(
            &mut reader,
            limits.top,
            "orders-products",
            "Top products",
            "product",
        ),
        orders_top(
            &mut reader,
            limits.top,
            "orders-categories",
            "Top categories",
            "category",
        ),
        orders_top(
            &mut reader,
            limits.top,
            "orders-tags",
            "Users per tag",
            "tag",
        ),
        geo_weeks(&mut reader, limits.weeks),
        geo_map(&mut reader),
        geo_home(&mut reader, limits.top),
        geo_recommendations(&mut reader, limits.top),
    ]
}

/// Runs the panels' queries; turns a failure into the text a panel shows.
struct Reader<'c> {
    client: &'c mut Client,
    /// `changed` queries without parameters already run for this request (several panels
    /// share a table).
    changed: HashMap<&'static str, Option<DateTime<Utc>>>,
}

impl Reader<'_> {
    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        job: &str,
    ) -> Result<Vec<postgres::Row>, String> {
        self.client.query(sql, params).map_err(|e| {
            let Some(db) = e.as_db_error() else {
                return format!("Cannot read the table: {e}");
            };
            if *db.code() == SqlState::UNDEFINED_TABLE {
                format!(
                    "No data yet: {} (`dishflow setup --job {job}` creates it).",
                    db.message()
                )
            } else if *db.code() == SqlState::INSUFFICIENT_PRIVILEGE {
                format!(
                    "Not readable: {} (the dashboard's role needs SELECT on it).",
                    db.message()
                )
            } else {
                format!("Cannot read the table: {}", db.message())
            }
        })
    }

    /// `max(changed_at)` of the rows `sql` selects.
    fn changed(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Option<DateTime<Utc>> {
        if params.is_empty()
            && let Some(known) = self.changed.get(sql)
        {
            return *known;
        }
        let changed = self
            .client
            .query(sql, params)
            .ok()
            .and_then(|rows| rows.first()?.try_get(0).ok()?);
        if params.is_empty() {
            self.changed.insert(sql, changed);
        }
        changed
    }
}

fn panel(
    (id, section, title): (&'static str, &'static str, &'static str),
    body: Result<String, String>,
    changed: Option<DateTime<Utc>>,
) -> Panel {
    let body = body.unwrap_or_else(|reason| format!("<p class=\"empty\">{}</p>", escape(&reason)));
    Panel {
        id,
        section,
        title,
        body,
        changed,
        watched: false,
    }
}

fn empty(what: &str) -> String {
    format!("<p class=\"empty\">{}</p>", escape(what))
}

/// A chart's points: (label, one value per series).
type Points = Vec<(String, Vec<i64>)>;

/// `rows` as points (`point` of each row, in order) drawn by `draw`, or `none` when there
/// are no rows; a column of an unexpected type is the panel's error.
fn chart(
    rows: &[postgres::Row],
    none: &str,
    point: impl Fn(&postgres::Row) -> Result<(String, Vec<i64>), postgres::Error>,
    draw: impl FnOnce(&Points) -> String,
) -> Result<String, String> {
    if rows.is_empty() {
        return Ok(empty(none));
    }
    let points = rows.iter().map(point).collect::<Result<_, _>>();
    Ok(draw(&points.map_err(unexpected)?))
}

/// The text a panel shows when a column is not of the type it reads (a table created by
/// someone else, with other types).
fn unexpected(error: postgres::Error) -> String {
    format!("Unexpected data in the table: {error} (see the SPEC's DDL).")
}

/// Columns `from..=to` of `row`, as numbers.
fn numbers(row: &postgres::Row, from: usize, to: usize) -> Result<Vec<i64>, postgres::Error> {
    (from..=to).map(|i| row.try_get(i)).collect()
}

/// When the promos summaries last changed (a count changes both; a campaign that moved to
/// another restaurant, only its row).
const PROMOS_CHANGED: &str = "SELECT greatest((SELECT max(changed_at) FROM mart.promo_campaigns),
                                             (SELECT max(changed_at) FROM mart.promo_hours))";

fn promo_totals(r: &mut Reader<'_>) -> Panel {
    let body = r
        .query(
            "SELECT coalesce(sum(drafts), 0)::int8, coalesce(sum(feedback), 0)::int8,
                    count(*), count(DISTINCT restaurant_id)
             FROM mart.promo_campaigns",
            &[],
            "promos",
        )
        .and_then(|rows| {
            let row = rows.first().ok_or_else(|| "No row.".to_string())?;
            let cells = (|| -> Result<[i64; 4], postgres::Error> {
                Ok([
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ])
            })();
            let [drafts, feedback, campaigns, restaurants] = cells.map_err(unexpected)?;
            let share = if drafts > 0 {
                format!("{:.1} %", feedback as f64 * 100.0 / drafts as f64)
            } else {
                "–".to_string()
            };
            let tile = |label: &str, value: String, id: &str| {
                format!(
                    "<div class=\"tile\"><span class=\"number\" data-stat=\"{id}\">{}</span>\
                     <span class=\"what\">{}</span></div>",
                    escape(&value),
                    escape(label)
                )
            };
            Ok([
                tile("drafts sent", count(drafts), "drafts"),
                tile("with feedback", count(feedback), "feedback"),
                tile("share with feedback", share, "share"),
                tile("campaigns", count(campaigns), "campaigns"),
                tile("restaurants", count(restaurants), "restaurants"),
            ]
            .concat())
        })
        .map(|tiles| format!("<div class=\"tiles\">{tiles}</div>"));
    let changed = r.changed(PROMOS_CHANGED, &[]);
    panel(
        ("promos-totals", "promos", "Drafts and feedback"),
        body,
        changed,
    )
}

fn promo_hours(r: &mut Reader<'_>, hours: i64) -> Panel {
    let body = r
        .query(
            "SELECT hour, drafts, feedback FROM mart.promo_hours ORDER BY hour DESC LIMIT $1",
            &[&hours],
            "promos",
        )
        .and_then(|mut rows| {
            rows.reverse();
            let point = |row: &postgres::Row| {
                let hour: DateTime<Utc> = row.try_get(0)?;
                let label = hour.format("%m-%d %Hh").to_string();
                Ok((label, numbers(row, 1, 2)?))
            };
            chart(&rows, "No drafts yet.", point, |points| {
                svg::columns(&["drafts", "with feedback"], points)
            })
        });
    let changed = r.changed(PROMOS_CHANGED, &[]);
    panel(
        (
            "promos-hours",
            "promos",
            "Drafts per hour (UTC, of the trigger time)",
        ),
        body,
        changed,
    )
}

fn promo_top(
    r: &mut Reader<'_>,
    top: i64,
    id: &'static str,
    title: &'static str,
    column: &str,
) -> Panel {
    // `column` is one of two constants: the statement is fixed text either way.
    let sql = format!(
        "SELECT {column}, sum(drafts)::int8, sum(feedback)::int8 FROM mart.promo_campaigns
         GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $1"
    );
    let body = r.query(&sql, &[&top], "promos").and_then(|rows| {
        let point = |row: &postgres::Row| Ok((row.try_get(0)?, numbers(row, 1, 2)?));
        chart(&rows, "No drafts yet.", point, |points| {
            svg::bars(&["drafts", "with feedback"], points)
        })
    });
    let changed = r.changed(PROMOS_CHANGED, &[]);
    panel((id, "promos", title), body, changed)
}

fn orders_top(
    r: &mut Reader<'_>,
    top: i64,
    id: &'static str,
    title: &'static str,
    kind: &str,
) -> Panel {
    let tags = kind == "tag";
    let sql = if tags {
        "SELECT name, users, orders FROM cdm.orders_summary WHERE kind = $1
         ORDER BY users DESC, name LIMIT $2"
    } else {
        "SELECT name, orders, users FROM cdm.orders_summary WHERE kind = $1
         ORDER BY orders DESC, name LIMIT $2"
    };
    let (none, series): (&str, &[&str]) = if tags {
        ("No user has a tag yet.", &["users"])
    } else {
        ("No closed orders yet.", &["orders", "users"])
    };
    let body = r.query(sql, &[&kind, &top], "orders").and_then(|rows| {
        let point = |row: &postgres::Row| Ok((row.try_get(0)?, numbers(row, 1, series.len())?));
        chart(&rows, none, point, |points| svg::bars(series, points))
    });
    let changed = r.changed(
        "SELECT max(changed_at) FROM cdm.orders_summary WHERE kind = $1",
        &[&kind],
    );
    panel((id, "orders", title), body, changed)
}

fn geo_weeks(r: &mut Reader<'_>, weeks: i64) -> Panel {
    // A week across two months has a row per month with the same week counts: one per
    // (zone, week) is summed.
    let body = r
        .query(
            "SELECT week, sum(m)::int8, sum(r)::int8, sum(s)::int8, sum(u)::int8
             FROM (SELECT DISTINCT ON (zone_id, week) week,
                          coalesce(week_message, 0) AS m, coalesce(week_reaction, 0) AS r,
                          coalesce(week_subscription, 0) AS s, coalesce(week_user, 0) AS u
                   FROM mart.geo_zones ORDER BY zone_id, week) AS z
             GROUP BY week ORDER BY week DESC LIMIT $1",
            &[&weeks],
            "geo",
        )
        .and_then(|mut rows| {
            rows.reverse();
            let point = |row: &postgres::Row| {
                let week: NaiveDate = row.try_get(0)?;
                let label = week.format("%Y-%m-%d").to_string();
                Ok((label, numbers(row, 1, 4)?))
            };
            chart(&rows, "No events yet.", point, |points| {
                svg::columns(
                    &["messages", "reactions", "subscriptions", "registrations"],
                    points,
                )
            })
        });
    let mut panel = panel(
        ("geo-weeks", "geo", "Zone mart per week (all zones)"),
        body,
        None,
    );
    panel.watched = true;
    panel
}

const CITY_CHANGED: &str = "SELECT max(changed_at) FROM mart.geo_city_summary";

fn geo_map(r: &mut Reader<'_>) -> Panel {
    let body = r
        .query(
            "SELECT c.city, c.lat, c.lng, coalesce(s.users_now, 0)
             FROM geo.cities AS c LEFT JOIN mart.geo_city_summary AS s ON s.city = c.city
             ORDER BY c.id",
            &[],
            "geo",
        )
        .and_then(|rows| {
            if rows.is_empty() {
                return Ok(empty("No cities yet."));
            }
            let places = (rows.iter())
                .map(|row| {
                    Ok(Place {
                        name: row.try_get(0)?,
                        lat: row.try_get(1)?,
                        lng: row.try_get(2)?,
                        value: row.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<Place>, postgres::Error>>();
            Ok(svg::map(&places.map_err(unexpected)?))
        });
    let changed = r.changed(CITY_CHANGED, &[]);
    panel(
        ("geo-map", "geo", "Cities by users there now"),
        body,
        changed,
    )
}

fn geo_home(r: &mut Reader<'_>, top: i64) -> Panel {
    let body = r
        .query(
            "SELECT city, users_now, users_home, users_at_home FROM mart.geo_city_summary
             WHERE users_now > 0 OR users_home > 0
             ORDER BY users_now + users_home DESC, city LIMIT $1",
            &[&top],
            "geo",
        )
        .and_then(|rows| {
            let point = |row: &postgres::Row| Ok((row.try_get(0)?, numbers(row, 1, 3)?));
            chart(&rows, "No users yet.", point, |points| {
                svg::bars(&["there now", "home city", "at home now"], points)
            })
        });
    let changed = r.changed(CITY_CHANGED, &[]);
    panel(("geo-home", "geo", "Home vs actual city"), body, changed)
}

fn geo_recommendations(r: &mut Reader<'_>, top: i64) -> Panel {
    let body = r
        .query(
            "SELECT city, recommendations FROM mart.geo_city_summary WHERE recommendations > 0
             ORDER BY recommendations DESC, city LIMIT $1",
            &[&top],
            "geo",
        )
        .and_then(|rows| {
            let point = |row: &postgres::Row| Ok((row.try_get(0)?, numbers(row, 1, 1)?));
            chart(&rows, "No recommendations yet.", point, |points| {
                svg::bars(&["recommendations"], points)
            })
        });
    let changed = r.changed(CITY_CHANGED, &[]);
    panel(
        (
            "geo-recommendations",
            "geo",
            "Friend recommendations per city",
        ),
        body,
        changed,
    )
}
