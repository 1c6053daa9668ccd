//! What each engine's output must be, computed from the inputs independently of any
//! engine, and the checks that make a run valid or INVALID.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dishflow_testkit::*;
use rdkafka::message::Message;
use serde_json::Value;

use super::*;

/// "campaign:client" of a draft (dishflow's or Pathway's: both are JSON with these fields).
pub(crate) fn draft_key(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    Some(format!(
        "{}:{}",
        v["adv_campaign_id"].as_str()?,
        v["client_id"].as_str()?
    ))
}

/// The drafts a promos workload must give, as "campaign:client": every campaign of `input`
/// valid now, for each distinct subscriber of its restaurant in database `db` — computed
/// from the inputs, independently of any engine.
pub(crate) fn expected_drafts(input: &str, db: &str) -> HashSet<String> {
    let mut clients: HashMap<String, Vec<String>> = HashMap::new();
    for row in pg(db)
        .query(
            "SELECT DISTINCT restaurant_id, client_id FROM subscribers_restaurants",
            &[],
        )
        .expect("subscribers")
    {
        clients.entry(row.get(0)).or_default().push(row.get(1));
    }
    let now = now_secs();
    let mut campaigns: HashMap<String, String> = HashMap::new();
    read_topic(input, Duration::ZERO, |m| {
        let Some(v) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            return;
        };
        let valid = v["adv_campaign_datetime_start"].as_i64() <= Some(now)
            && v["adv_campaign_datetime_end"].as_i64() > Some(now);
        if let (true, Some(id), Some(restaurant)) = (
            valid,
            v["adv_campaign_id"].as_str(),
            v["restaurant_id"].as_str(),
        ) {
            campaigns.insert(id.to_string(), restaurant.to_string());
        }
    })
    .expect("input topic");
    campaigns
        .iter()
        .flat_map(|(id, restaurant)| {
            clients
                .get(restaurant)
                .into_iter()
                .flatten()
                .map(move |client| format!("{id}:{client}"))
        })
        .collect()
}

/// Checks that `found` holds every key of `expected` exactly once and nothing else.
pub(crate) fn exactly_once(
    what: &str,
    found: impl IntoIterator<Item = String>,
    expected: &HashSet<String>,
) -> Result<(), String> {
    let mut seen = HashSet::with_capacity(expected.len());
    let (mut duplicated, mut unexpected) = (0, 0);
    for key in found {
        if !expected.contains(&key) {
            unexpected += 1;
        } else if !seen.insert(key) {
            duplicated += 1;
        }
    }
    let missing = expected.len() - seen.len();
    if missing + duplicated + unexpected > 0 {
        return Err(format!(
            "{what}: {} of {} expected keys, {missing} missing, {duplicated} duplicated, \
             {unexpected} unexpected",
            seen.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// What a promos run wrote, checked: every expected draft exactly once in the notification
/// topic `topic` and among the rows of `table` in `db` that match `condition`. The number
/// of rows, or what is wrong.
pub(crate) fn check_promos(
    expected: &HashSet<String>,
    db: &str,
    table: &str,
    condition: &str,
    topic: &str,
) -> Result<i64, String> {
    let rows: Vec<String> = pg(db)
        .query(
            &format!("SELECT adv_campaign_id || ':' || client_id FROM {table} WHERE {condition}"),
            &[],
        )
        .map_err(|e| format!("reading {table}: {e}"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let count = rows.len() as i64;
    exactly_once(&format!("Postgres {table}"), rows, expected)?;
    let mut keys = Vec::with_capacity(expected.len());
    read_topic(topic, SETTLE, |m| {
        keys.push(
            m.payload()
                .and_then(draft_key)
                .unwrap_or_else(|| "(not a draft)".into()),
        )
    })
    .map_err(|e| format!("reading {topic}: {e:#}"))?;
    exactly_once(&format!("Kafka {topic}"), keys, expected)?;
    Ok(count)
}

/// Rows in `table` of `db` (`where`: a condition, or "true").
pub(crate) fn count_rows(db: &str, table: &str, condition: &str) -> i64 {
    pg(db)
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE {condition}"),
            &[],
        )
        .expect("count")
        .get(0)
}

/// Checks an engine's (product, category) counters against the SQL ground truth: the
/// number of counter rows, or how many differ.
pub(crate) fn check_counters(
    got: (Counters, Counters),
    truth: &(Counters, Counters),
) -> Result<i64, String> {
    let differ = |got: &Counters, want: &Counters, what: &str| -> Option<String> {
        if got == want {
            return None;
        }
        let got_set: HashSet<_> = got.iter().collect();
        let want_set: HashSet<_> = want.iter().collect();
        Some(format!(
            "{what}: {} rows, {} of the {} expected missing or different, {} not expected",
            got.len(),
            want_set.difference(&got_set).count(),
            want.len(),
            got_set.difference(&want_set).count()
        ))
    };
    let problems: Vec<String> = [
        differ(&got.0, &truth.0, "user_product_counters"),
        differ(&got.1, &truth.1, "user_category_counters"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if problems.is_empty() {
        Ok((got.0.len() + got.1.len()) as i64)
    } else {
        Err(format!(
            "counters differ from the SQL GROUP BY: {}",
            problems.join("; ")
        ))
    }
}
