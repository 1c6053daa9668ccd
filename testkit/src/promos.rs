//! Fixtures of the promos job: the subscribers table, campaign messages, feedback rows,
//! the arguments of a run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::*;

/// Creates `public.subscribers_restaurants` with the exact seed DDL, as its owner would;
/// returns the client.
pub fn subscribers_table(url: &str) -> postgres::Client {
    let mut client = pg(url);
    client
        .batch_execute(dishflow::pg::SUBSCRIBERS_DDL)
        .expect("ddl");
    client
}

/// A fresh database with the subscribers table and `dishflow setup` done, and a unique topic
/// prefix, both named after `name`.
pub fn live_fixture(name: &str) -> (Db, Prefix) {
    let db = database(name);
    subscribers_table(&db);
    assert_success(&dishflow(
        ["setup", "--postgres-url", &db],
        Duration::from_secs(60),
    ));
    (db, prefix(name))
}

/// The seed example's subscribers (SPEC), in a table created with the exact seed DDL.
pub fn seed_subscribers(url: &str) {
    let mut client = subscribers_table(url);
    let rows = [
        (
            "223e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "323e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "423e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "523e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "623e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "723e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "823e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "923e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174001",
        ),
        (
            "923e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174001",
        ),
        (
            "023e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
    ];
    for (client_id, restaurant_id) in rows {
        client
            .execute(
                "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ($1, $2)",
                &[&client_id, &restaurant_id],
            )
            .expect("insert");
    }
}

/// Arguments of a promos run on `db` and the topics `<prefix>.in/.out/.dlq`.
pub fn promos_args(db: &str, prefix: &str) -> Vec<String> {
    promos_args_from(db, &format!("{prefix}.in"), prefix)
}

/// Arguments of a promos run on `db` reading `input`, writing `<prefix>.out/.dlq`.
pub fn promos_args_from(db: &str, input: &str, prefix: &str) -> Vec<String> {
    [
        "promos",
        "--brokers",
        &brokers(),
        "--postgres-url",
        db,
        "--promo-topic",
        input,
        "--notification-topic",
        &format!("{prefix}.out"),
        "--dead-letter-topic",
        &format!("{prefix}.dlq"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// An unbounded promos job on `db` and the topics `<prefix>.in/.out/.dlq`, plus `extra` flags.
pub fn spawn_promos(db: &str, prefix: &str, extra: &[&str]) -> Job {
    let mut args = promos_args(db, prefix);
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn(&args)
}

/// (adv_campaign_id, client_id, trigger_datetime_created) of every feedback row, sorted.
pub fn feedback_rows(db: &str) -> Vec<(String, String, i32)> {
    let mut rows: Vec<_> = pg(db)
        .query(
            "SELECT adv_campaign_id, client_id, trigger_datetime_created FROM subscribers_feedback",
            &[],
        )
        .expect("query")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    rows.sort();
    rows
}

/// The promos summaries: `mart.promo_campaigns` (campaign, restaurant, drafts, feedback)
/// and `mart.promo_hours` (hour as unix seconds, drafts, feedback), sorted.
#[derive(Debug, PartialEq)]
pub struct PromoSummary {
    pub campaigns: Vec<(String, String, i64, i64)>,
    pub hours: Vec<(i64, i64, i64)>,
}

impl PromoSummary {
    /// Drafts counted, over all hours.
    pub fn drafts(&self) -> i64 {
        self.hours.iter().map(|h| h.1).sum()
    }

    /// Rows with feedback counted, over all hours.
    pub fn feedback(&self) -> i64 {
        self.hours.iter().map(|h| h.2).sum()
    }
}

/// The promos summaries as the job keeps them, and as `subscribers_feedback` says they
/// should be: the two must be equal.
pub fn promo_summary_and_truth(db: &str) -> (PromoSummary, PromoSummary) {
    let mut client = pg(db);
    let mut read = |campaigns: &str, hours: &str| PromoSummary {
        campaigns: client
            .query(campaigns, &[])
            .expect("campaigns")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect(),
        hours: client
            .query(hours, &[])
            .expect("hours")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    };
    let summary = read(
        "SELECT adv_campaign_id, restaurant_id, drafts, feedback FROM mart.promo_campaigns
         ORDER BY 1",
        "SELECT extract(epoch FROM hour)::int8, drafts, feedback FROM mart.promo_hours
         ORDER BY 1",
    );
    let truth = read(
        // The restaurant of the campaign's latest version.
        "SELECT adv_campaign_id,
                (array_agg(restaurant_id ORDER BY datetime_created DESC, id DESC))[1],
                count(*), count(feedback)
         FROM subscribers_feedback GROUP BY 1 ORDER BY 1",
        "SELECT (trigger_datetime_created - trigger_datetime_created % 3600)::int8, count(*),
                count(feedback)
         FROM subscribers_feedback GROUP BY 1 ORDER BY 1",
    );
    (summary, truth)
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A valid campaign message.
pub fn campaign_json(campaign: &str, restaurant: &str, start: i64, end: i64) -> String {
    format!(
        r#"{{"restaurant_id":"{restaurant}","adv_campaign_id":"{campaign}","adv_campaign_content":"c","adv_campaign_owner":"o","adv_campaign_owner_contact":"e","adv_campaign_datetime_start":{start},"adv_campaign_datetime_end":{end},"datetime_created":{start}}}"#
    )
}

/// A campaign message with every field that matters for versions.
pub fn campaign_version_json(
    campaign: &str,
    restaurant: &str,
    (start, end): (i64, i64),
    created: i64,
    content: &str,
) -> String {
    format!(
        r#"{{"restaurant_id":"{restaurant}","adv_campaign_id":"{campaign}","adv_campaign_content":"{content}","adv_campaign_owner":"o","adv_campaign_owner_contact":"e","adv_campaign_datetime_start":{start},"adv_campaign_datetime_end":{end},"datetime_created":{created}}}"#
    )
}
