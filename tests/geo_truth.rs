//! The geo marts against their ground truth: after a bounded run over a produced data set
//! (1 worker, 2 workers, 2 processes), and in a running job through a second part of the
//! data, late events, a direct message between a recommended pair, a recommended user
//! moving away and a new city — every row of every mart equal to the SQL recomputation of
//! `dishflow_testkit::geo_ground_truth`. Run via `scripts/test.sh`.

#![cfg(feature = "integration")]

use std::time::Duration;

use dishflow_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

/// Produces `users` users × `days` days of events from `start` to `topic`.
fn produce(topic: &str, users: u32, days: u32, start: &str) {
    let (users, days) = (users.to_string(), days.to_string());
    assert_success(&dishflow(
        [
            "produce",
            "events",
            "--brokers",
            &brokers(),
            "--topic",
            topic,
            "--users",
            &users,
            "--days",
            &days,
            "--start",
            start,
        ],
        2 * MINUTE,
    ));
}

fn assert_equal_to_truth(db: &str, topic: &str, what: &str) {
    let differences = geo_check(db, &[topic]);
    assert!(
        differences.is_empty(),
        "{what}: the marts differ from the ground truth: {differences:#?}"
    );
}

#[test]
fn every_mart_equals_the_sql_ground_truth_with_one_worker_two_workers_and_two_processes() {
    let prefix = prefix("geo_truth");
    let topic = format!("{prefix}.events");
    produce(&topic, 300, 35, "2022-05-01");
    let stop = ["--stop-at-end".to_string()];

    let one = database("geo_truth_1");
    assert_success(&dishflow(geo_args(&one, &prefix, &stop), 3 * MINUTE));
    let truth = geo_check(&one, &[&topic]);
    assert!(truth.is_empty(), "1 worker: {truth:#?}");
    let rows: i64 = pg(&one)
        .query_one(
            "SELECT (SELECT count(*) FROM mart.geo_zones) + (SELECT count(*) FROM mart.geo_users)
                  + (SELECT count(*) FROM mart.geo_friend_recommendations)",
            &[],
        )
        .expect("row counts")
        .get(0);
    assert!(rows > 300, "the marts have {rows} rows");

    let two = database("geo_truth_2");
    let mut workers = stop.to_vec();
    workers.extend(["--workers".to_string(), "2".to_string()]);
    assert_success(&dishflow(geo_args(&two, &prefix, &workers), 3 * MINUTE));
    assert_equal_to_truth(&two, &topic, "2 workers");

    let cluster = database("geo_truth_p2");
    let children: Vec<_> = two_process_cluster(&format!("{prefix}.cluster"))
        .into_iter()
        .map(|flags| {
            let mut extra = stop.to_vec();
            extra.extend(flags);
            spawn(geo_args(&cluster, &prefix, &extra))
        })
        .collect();
    for child in children {
        assert_success(&wait(child, 3 * MINUTE));
    }
    assert_equal_to_truth(&cluster, &topic, "2 processes");
}

/// Waits until the marts of `db` equal the ground truth over `topic`.
fn wait_for_truth(db: &str, topic: &str, what: &str) {
    let mut last = None;
    let equal = (0..120).any(|_| {
        let differences = geo_check(db, &[topic]);
        let done = differences.is_empty();
        if !done {
            last = Some(differences);
            std::thread::sleep(Duration::from_millis(500));
        }
        done
    });
    assert!(equal, "{what}: the marts still differ: {last:#?}");
}

#[test]
fn a_running_job_keeps_every_mart_equal_to_the_sql_ground_truth() {
    let db = database("geo_truth_live");
    let prefix = prefix("geo_truth_live");
    let topic = format!("{prefix}.events");
    let published = format!("{prefix}.recommendations");
    produce(&topic, 200, 20, "2022-05-01");
    let extra = ["--cdc-poll-ms", "20", "--recommendation-topic", &published].map(String::from);
    let job = spawn(geo_args(&db, &prefix, &extra));
    wait_for_truth(&db, &topic, "the first part");

    // Two recommended pairs without a common user: one will write to each other, in the
    // other the left user moves to Melbourne.
    let pairs = geo_recommendations(&db);
    let (a, b) = pairs[0];
    let (c, d) = *pairs
        .iter()
        .find(|(l, r)| ![a, b].contains(l) && ![a, b].contains(r))
        .expect("two recommended pairs without a common user");
    let mut client = pg(&db);
    let (late_user, home): (i64, String) = {
        let row = client
            .query_one(
                "SELECT user_id, act_city FROM mart.geo_users ORDER BY user_id LIMIT 1",
                &[],
            )
            .expect("a user");
        (row.get(0), row.get(1))
    };
    // The second part of the data (the same users, ten more days), and after it: a direct
    // message, a move, and a message from before the first day (a new registration week).
    produce(&topic, 200, 10, "2022-05-21");
    let melbourne = (-37.8136, 144.9631);
    produce_values(
        &topic,
        4,
        &[
            geo_message(1, a, Some(b), "2022-06-15 10:00:00", None),
            geo_message(2, c, None, "2022-06-15 11:00:00", Some(melbourne)),
            geo_message(
                3,
                late_user,
                None,
                "2022-04-28 09:00:00",
                Some((-31.95, 115.86)),
            ),
        ],
    );
    wait_for_truth(
        &db,
        &topic,
        "the second part, a message, a move and a late message",
    );
    let now = geo_recommendations(&db);
    assert!(!now.contains(&(a, b)), "a direct message ends ({a}, {b})");
    assert!(!now.contains(&(c, d)), "moving away ends ({c}, {d})");
    let april: i64 = client
        .query_one(
            "SELECT coalesce(sum(month_user), 0)::int8 FROM mart.geo_zones
             WHERE week = '2022-04-25' AND month = '2022-04-01'",
            &[],
        )
        .expect("the late week")
        .get(0);
    assert_eq!(april, 1, "the late message is {late_user}'s registration");

    // A new city where the late user lives (they wrote from {home}): their events and their
    // neighbours' move to it.
    let (lat, lon): (f64, f64) = {
        let row = client
            .query_one(
                "SELECT lat, lon FROM geo_truth.zoned WHERE user_id = $1 AND kind = 'message'
                 ORDER BY ts DESC LIMIT 1",
                &[&late_user],
            )
            .expect("the late user's position");
        (row.get(0), row.get(1))
    };
    client
        .execute(
            "INSERT INTO geo.cities VALUES (99, 'Newtown', $1, $2, 'Australia/Sydney')",
            &[&lat, &lon],
        )
        .expect("a new city");
    wait_for_truth(&db, &topic, "a new city");
    let act: String = client
        .query_one(
            "SELECT act_city FROM mart.geo_users WHERE user_id = $1",
            &[&late_user],
        )
        .expect("the late user")
        .get(0);
    assert_eq!(act, "Newtown", "{late_user} wrote from {home}, now Newtown");
    terminate(job);

    // The recommendation topic folds to the table.
    assert_eq!(
        recommendations_from_topic(&published),
        geo_recommendations(&db)
    );
}

#[test]
fn a_restart_removes_the_rows_that_cities_edited_while_the_job_was_down_no_longer_give() {
    let db = database("geo_truth_restart");
    let prefix = prefix("geo_truth_restart");
    let topic = format!("{prefix}.events");
    produce(&topic, 150, 10, "2022-05-01");
    let stop = ["--stop-at-end".to_string()];
    assert_success(&dishflow(geo_args(&db, &prefix, &stop), 3 * MINUTE));
    assert_equal_to_truth(&db, &topic, "the first run");
    // While the job is down: Sydney goes (its events move to the nearest other city) and
    // Melbourne moves 50 km.
    let mut client = pg(&db);
    let sydney: i32 = client
        .query_one(
            "DELETE FROM geo.cities WHERE city = 'Sydney' RETURNING id",
            &[],
        )
        .expect("Sydney")
        .get(0);
    client
        .execute(
            "UPDATE geo.cities SET lat = lat + 0.45 WHERE city = 'Melbourne'",
            &[],
        )
        .expect("Melbourne");
    assert_success(&dishflow(geo_args(&db, &prefix, &stop), 3 * MINUTE));
    assert_equal_to_truth(&db, &topic, "after the restart");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM mart.geo_zones WHERE zone_id = $1",
            &[&sydney],
        )
        .expect("Sydney's rows")
        .get(0);
    assert_eq!(left, 0, "no row of a deleted city");
}
