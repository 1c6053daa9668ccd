//! Integration tests of `dishflow geo` against real Kafka and Postgres: a small set of
//! events through a bounded run into the three marts, bad input dead-lettered, a second run
//! (which replays the topic) changing nothing; and a running job following new events and
//! edits of geo.cities. Run via `scripts/test.sh`.

#![cfg(feature = "integration")]

use std::time::Duration;

use dishflow_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

fn subscription(user: i64, channel: i64) -> String {
    geo_subscription(user, channel, "2022-05-01 09:00:00")
}

/// (user_id, act_city, home_city, travel_count, travel_array, local_time) of mart.geo_users.
type UserRow = (i64, String, Option<String>, i32, Vec<String>, String);

const SYDNEY: (f64, f64) = (-33.865, 151.2094);
const NEAR_SYDNEY: (f64, f64) = (-33.8695, 151.2094);
const MELBOURNE: (f64, f64) = (-37.8136, 144.9631);

#[test]
fn a_bounded_run_fills_the_three_marts_and_a_second_one_changes_nothing() {
    let db = database("geo");
    let prefix = prefix("geo");
    let (topic, dlq) = (format!("{prefix}.events"), format!("{prefix}.dlq"));
    let published = format!("{prefix}.recommendations");
    let events = [
        geo_message(1, 1, None, "2022-05-02 10:00:00", Some(SYDNEY)),
        // Delivered twice: counted once.
        geo_message(1, 1, None, "2022-05-02 10:00:00", Some(SYDNEY)),
        geo_message(2, 2, None, "2022-05-03 10:00:00", Some(NEAR_SYDNEY)),
        geo_message(3, 3, Some(1), "2022-05-04 10:00:00", Some(MELBOURNE)),
        subscription(1, 10),
        subscription(2, 10),
        r#"{"event_type": "reaction", "event": {"datetime": "2022-05-04 11:00:00",
            "message_id": 2, "reaction_from": 1}, "lat": -33.865, "lon": 151.2094}"#
            .to_string(),
        "not json".to_string(),
    ];
    produce_values(&topic, 2, &events);
    let args = geo_args(
        &db,
        &prefix,
        &["--recommendation-topic", &published, "--stop-at-end"],
    );
    assert_success(&dishflow(&args, 2 * MINUTE));

    let mut client = pg(&db);
    let zones: Vec<(i32, String, String, Vec<i64>)> = client
        .query(
            "SELECT zone_id, week::text, month::text, ARRAY[week_message, week_reaction,
                    week_subscription, week_user, month_message, month_reaction,
                    month_subscription, month_user]
             FROM mart.geo_zones ORDER BY zone_id, week, month",
            &[],
        )
        .expect("zones")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let week = ("2022-05-02".to_string(), "2022-05-01".to_string());
    assert_eq!(
        zones,
        [
            (
                1,
                week.0.clone(),
                week.1.clone(),
                vec![2, 1, 0, 2, 2, 1, 0, 2]
            ),
            (
                2,
                week.0.clone(),
                week.1.clone(),
                vec![1, 0, 0, 1, 1, 0, 0, 1]
            ),
        ]
    );
    let users: Vec<UserRow> = client
        .query(
            "SELECT user_id, act_city, home_city, travel_count, travel_array, local_time::text
             FROM mart.geo_users ORDER BY user_id",
            &[],
        )
        .expect("users")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(users.len(), 3);
    assert_eq!(
        users[0],
        (
            1,
            "Sydney".into(),
            None,
            1,
            vec!["Sydney".to_string()],
            "2022-05-02 20:00:00".into()
        ),
        "UTC+10 in Sydney"
    );
    assert_eq!(users[2].1, "Melbourne");
    let pairs = || -> Vec<(i64, i64, i32, String)> {
        pg(&db)
            .query(
                "SELECT user_left, user_right, zone_id, processed_dttm::text
                 FROM mart.geo_friend_recommendations ORDER BY 1, 2",
                &[],
            )
            .expect("recommendations")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    let first = pairs();
    assert_eq!(
        first.iter().map(|p| (p.0, p.1, p.2)).collect::<Vec<_>>(),
        [(1, 2, 1)],
        "users 1 and 2: 0.5 km apart, channel 10, no direct message"
    );
    let dead = consume(&dlq);
    assert_eq!(dead.len(), 1);

    // A second run replays the topic: the same marts, the pair keeps its processed_dttm,
    // nothing dead-lettered again.
    assert_success(&dishflow(&args, 2 * MINUTE));
    assert_eq!(pairs(), first);
    assert_eq!(consume(&dlq).len(), 1);
    let sent = history(&published);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let value: serde_json::Value =
        serde_json::from_str(sent["1:2"][0].as_deref().expect("a row")).expect("JSON");
    assert_eq!(sent["1:2"].len(), 1, "sent once over two runs");
    assert_eq!(
        (value["user_left"].as_i64(), value["zone_id"].as_i64()),
        (Some(1), Some(1))
    );
    let rows: i64 = pg(&db)
        .query_one("SELECT count(*) FROM mart.geo_zones", &[])
        .expect("count")
        .get(0);
    assert_eq!(rows, 2);
}

/// Each user's act_city in mart.geo_users (nothing while the job has not created it).
fn act_cities(db: &str) -> Vec<(i64, String)> {
    (pg(db).query(
        "SELECT user_id, act_city FROM mart.geo_users ORDER BY 1",
        &[],
    ))
    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    .unwrap_or_default()
}

#[test]
fn a_running_job_follows_new_events_and_edits_of_the_cities() {
    let db = database("geo_live");
    let prefix = prefix("geo_live");
    let topic = format!("{prefix}.events");
    let published = format!("{prefix}.recommendations");
    produce_values(
        &topic,
        2,
        &[
            geo_message(1, 1, None, "2022-05-02 10:00:00", Some(SYDNEY)),
            geo_message(2, 2, None, "2022-05-03 10:00:00", Some(NEAR_SYDNEY)),
            subscription(1, 10),
            subscription(2, 10),
        ],
    );
    let job = spawn(geo_args(
        &db,
        &prefix,
        &["--cdc-poll-ms", "20", "--recommendation-topic", &published],
    ));
    wait_until(MINUTE, "the first recommendation", || {
        (geo_recommendations(&db) == [(1, 2)]).then_some(())
    });
    // A new city nearer to user 2 (0.28 km) than Sydney's centre (0.5 km): user 2's events
    // are re-attributed to it; user 1 writes at Sydney's centre and stays there.
    pg(&db)
        .execute(
            "INSERT INTO geo.cities VALUES (99, 'Harbour', -33.867, 151.2094, 'Australia/Sydney')",
            &[],
        )
        .expect("a new city");
    wait_until(MINUTE, "re-attribution to the new city", || {
        (act_cities(&db) == [(1, "Sydney".to_string()), (2, "Harbour".to_string())]).then_some(())
    });
    // User 2 writes to user 1: no longer a recommendation.
    produce_values(
        &topic,
        2,
        &[geo_message(
            3,
            2,
            Some(1),
            "2022-05-05 10:00:00",
            Some(NEAR_SYDNEY),
        )],
    );
    wait_until(MINUTE, "the recommendation to go", || {
        geo_recommendations(&db).is_empty().then_some(())
    });
    terminate(job);
    // The topic saw the pair appear and go (the new city did not change user 1's zone).
    assert_eq!(shapes(&published)["1:2"], [true, false]);
}

/// A message event, as its JSON says.
struct Message {
    user: i64,
    id: i64,
    time: chrono::NaiveDateTime,
    located: bool,
}

/// The message event of a line of `produce events --out`; `None` for other events.
fn message(line: &str) -> Option<Message> {
    let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
    if value["event_type"] != "message" {
        return None;
    }
    let event = &value["event"];
    let number = |v: &serde_json::Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .expect("an id")
    };
    let time = (event["message_ts"].as_str())
        .or_else(|| event["datetime"].as_str())
        .expect("a time");
    Some(Message {
        user: number(&event["message_from"]),
        id: number(&event["message_id"]),
        time: chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S%.f").expect("a time"),
        located: value["lat"].is_number(),
    })
}

#[test]
fn a_produced_data_set_gives_marts_that_agree_with_the_events() {
    let db = database("geo_produced");
    let prefix = prefix("geo_produced");
    let topic = format!("{prefix}.events");
    let file = std::env::temp_dir().join(format!("{}.jsonl", unique("geo_events")));
    let file_arg = file.to_string_lossy().into_owned();
    assert_success(&dishflow(
        [
            "produce",
            "events",
            "--brokers",
            &brokers(),
            "--topic",
            &topic,
            "--users",
            "300",
            "--days",
            "35",
            "--out",
            &file_arg,
        ],
        2 * MINUTE,
    ));
    assert_success(&dishflow(
        geo_args(&db, &prefix, &["--stop-at-end"]),
        3 * MINUTE,
    ));
    // What the events say, read here from their JSON (not with the job's decoder).
    let text = std::fs::read_to_string(&file).expect("the events file");
    std::fs::remove_file(&file).ok();
    assert!(
        text.lines().all(valid_event),
        "the producer writes valid events"
    );
    let messages: Vec<Message> = text.lines().filter_map(message).collect();
    let located_messages = messages.iter().filter(|m| m.located).count() as i64;
    let mut first: std::collections::HashMap<i64, (chrono::NaiveDateTime, i64, bool)> =
        Default::default();
    for m in &messages {
        let candidate = (m.time, m.id, m.located);
        let entry = first.entry(m.user).or_insert(candidate);
        if (candidate.0, candidate.1) < (entry.0, entry.1) {
            *entry = candidate;
        }
    }
    let registrations = first.values().filter(|f| f.2).count() as i64;
    let users_with_position = (messages.iter())
        .filter(|m| m.located)
        .map(|m| m.user)
        .collect::<std::collections::HashSet<_>>()
        .len() as i64;

    let mut client = pg(&db);
    let sums = client
        .query_one(
            "SELECT sum(week_message)::int8, sum(week_user)::int8
             FROM (SELECT DISTINCT zone_id, week, week_message, week_user FROM mart.geo_zones) w",
            &[],
        )
        .expect("week sums");
    assert_eq!(
        sums.get::<_, i64>(0),
        located_messages,
        "messages with coordinates"
    );
    assert_eq!(sums.get::<_, i64>(1), registrations, "registrations");
    let users: i64 = client
        .query_one("SELECT count(*) FROM mart.geo_users", &[])
        .expect("users")
        .get(0);
    assert_eq!(users, users_with_position);
    let pairs: i64 = client
        .query_one("SELECT count(*) FROM mart.geo_friend_recommendations", &[])
        .expect("pairs")
        .get(0);
    assert!(pairs > 0, "the data set's groups give recommendations");
}

#[test]
fn every_class_of_bad_event_goes_to_the_dead_letter_topic_with_its_reason() {
    let db = database("geo_dlq");
    let prefix = prefix("geo_dlq");
    let (topic, dlq) = (format!("{prefix}.events"), format!("{prefix}.dlq"));
    let event = |kind: &str, body: &str, at: &str| {
        format!(r#"{{"event_type": "{kind}", "event": {{{body}}}, {at}}}"#)
    };
    let time = r#""datetime": "2022-05-02 10:00:00""#;
    let here = r#""lat": -33.865, "lon": 151.2094"#;
    let message = |extra: &str| format!(r#""message_id": 1, "message_from": 1, {extra}"#);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-utf8", b"\xff\xfe".to_vec(), "not_utf8"),
        ("not-json", b"{\"event_type\":".to_vec(), "not_json"),
        ("not-object", b"[1, 2]".to_vec(), "not_object"),
        (
            "other-type",
            event("call", &message(time), here).into_bytes(),
            "invalid:event_type",
        ),
        (
            "no-user",
            event("message", &format!(r#""message_id": 1, {time}"#), here).into_bytes(),
            "missing_field:event.message_from",
        ),
        (
            "bad-user",
            event(
                "reaction",
                &format!(r#""reaction_from": "12a", {time}"#),
                here,
            )
            .into_bytes(),
            "invalid:event.reaction_from",
        ),
        (
            "no-time",
            event("message", &message(r#""message": "hi""#), here).into_bytes(),
            "missing_field:event.datetime",
        ),
        (
            "bad-time",
            event("message", &message(r#""datetime": "21/05/2022""#), here).into_bytes(),
            "invalid:event.datetime",
        ),
        (
            "far-north",
            event("message", &message(time), r#""lat": 91.0, "lon": 0.0"#).into_bytes(),
            "out_of_range:lat/lon",
        ),
        (
            "no-lon",
            event("message", &message(time), r#""lat": -33.8, "lon": null"#).into_bytes(),
            "missing_field:lon",
        ),
        (
            "no-channel",
            event("subscription", &format!(r#""user": "5", {time}"#), here).into_bytes(),
            "missing_field:event.subscription_channel",
        ),
    ];
    let good = event("message", &message(time), here);
    let mut records: Vec<Raw<'_>> = (cases.iter())
        .map(|(key, value, _)| (Some(key.as_bytes()), Some(value.as_slice())))
        .collect();
    records.push((Some(b"good".as_slice()), Some(good.as_bytes())));
    produce_raw(&topic, 2, &records);
    assert_success(&dishflow(
        geo_args(&db, &prefix, &["--stop-at-end"]),
        2 * MINUTE,
    ));
    let dead = dead_letter_reasons(&dlq);
    let mut expected: Vec<(String, String)> = (cases.iter())
        .map(|(key, _, reason)| (key.to_string(), reason.to_string()))
        .collect();
    expected.sort();
    assert_eq!(dead, expected);
    let messages: i64 = pg(&db)
        .query_one(
            "SELECT coalesce(sum(month_message), 0)::int8 FROM mart.geo_zones",
            &[],
        )
        .expect("zones")
        .get(0);
    assert_eq!(messages, 1, "the good event went through");
}
