//! Integration tests of `dishflow promos` while it runs: subscriber changes captured from
//! Postgres, campaign replacement and expiry, and the snapshot → stream hand-over.
//! Run with `cargo test --features integration` after `scripts/services.sh` (or via
//! `scripts/test.sh`, which does both).

#![cfg(feature = "integration")]

use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use dishflow_testkit::*;

const WAIT: Duration = Duration::from_secs(40);
const R: &str = "rest-a";
const R2: &str = "rest-b";

fn subscribe(db: &str, client: &str, restaurant: &str) -> i32 {
    pg(db)
        .query_one(
            "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ($1, $2) \
             RETURNING id",
            &[&client, &restaurant],
        )
        .expect("insert")
        .get(0)
}

fn sql(db: &str, statement: &str) {
    pg(db).batch_execute(statement).expect(statement);
}

/// Waits until the notification topic's history of `key` is `expected`.
fn wait_for_history(topic: &str, key: &str, expected: &[bool]) -> Vec<Option<String>> {
    wait_until(WAIT, &format!("{key} to be {expected:?}"), || {
        let h = history(topic).remove(key).unwrap_or_default();
        let shape: Vec<bool> = h.iter().map(Option::is_some).collect();
        (shape == expected).then_some(h)
    })
}

/// A running job (with `extra` flags) whose campaign C of restaurant R was notified to
/// client `a`: (database, topics, notification topic, a's row id, the job). The topics
/// live as long as the returned [`Prefix`].
fn campaign_c_notified_to_a(name: &str, extra: &[&str]) -> (Db, Prefix, String, i32, Job) {
    let (db, prefix) = live_fixture(name);
    let out = format!("{prefix}.out");
    let now = now_secs();
    let a = subscribe(&db, "a", R);
    produce_values(
        &format!("{prefix}.in"),
        1,
        &[&campaign_json("C", R, now - 10, now + 600)],
    );
    let child = spawn_promos(&db, &prefix, extra);
    wait_for_history(&out, "C:a", &[true]);
    (db, prefix, out, a, child)
}

#[test]
fn subscribe_unsubscribe_move_and_duplicate_rows_flow_through_the_running_job() {
    let (db, prefix) = live_fixture("live");
    let out = format!("{prefix}.out");
    let now = now_secs();
    subscribe(&db, "a", R);
    subscribe(&db, "c", R);
    produce_values(
        &format!("{prefix}.in"),
        2,
        &[
            &campaign_json("C", R, now - 10, now + 600),
            &campaign_json("D", R2, now - 10, now + 600),
        ],
    );
    let child = spawn_promos(&db, &prefix, &["--envelope", "upsert"]);
    wait_for_history(&out, "C:a", &[true]);
    wait_for_history(&out, "C:c", &[true]);

    // A client who subscribes while the campaign is valid gets its draft.
    let b = subscribe(&db, "b", R);
    wait_for_history(&out, "C:b", &[true]);
    // Removing one of two duplicate rows changes nothing.
    let dup = subscribe(&db, "a", R);
    sql(
        &db,
        &format!("DELETE FROM subscribers_restaurants WHERE id = {dup}"),
    );
    // An unsubscribe retracts: a tombstone with the upsert envelope.
    sql(
        &db,
        &format!("DELETE FROM subscribers_restaurants WHERE id = {b}"),
    );
    wait_for_history(&out, "C:b", &[true, false]);
    // Moving a row to another restaurant is unsubscribe + subscribe, in one transaction.
    sql(
        &db,
        &format!("UPDATE subscribers_restaurants SET restaurant_id = '{R2}' WHERE client_id = 'c'"),
    );
    wait_for_history(&out, "C:c", &[true, false]);
    wait_for_history(&out, "D:c", &[true]);
    terminate(child);

    let final_history = shapes(&out);
    let expected: BTreeMap<String, Vec<bool>> = [
        ("C:a", vec![true]),
        ("C:b", vec![true, false]),
        ("C:c", vec![true, false]),
        ("D:c", vec![true]),
    ]
    .into_iter()
    .map(|(k, h)| (k.to_string(), h))
    .collect();
    assert_eq!(
        final_history, expected,
        "duplicate-row removal must change nothing"
    );
    let rows: Vec<String> = feedback_rows(&db)
        .into_iter()
        .map(|(c, k, _)| format!("{c}:{k}"))
        .collect();
    assert_eq!(
        rows,
        ["C:a", "C:b", "C:c", "D:c"],
        "feedback rows are never deleted"
    );
}

#[test]
fn unsubscribe_writes_nothing_with_append_and_a_return_is_not_notified_twice() {
    let (db, _topics, out, a, child) = campaign_c_notified_to_a("append", &[]);
    sql(
        &db,
        &format!("DELETE FROM subscribers_restaurants WHERE id = {a}"),
    );
    subscribe(&db, "a", R);
    // A later change as a marker: once it is out, the earlier ones were processed.
    subscribe(&db, "m", R);
    wait_for_history(&out, "C:m", &[true]);
    terminate(child);
    assert_eq!(history(&out).remove("C:a").unwrap_or_default().len(), 1);
}

#[test]
fn a_newer_version_replaces_the_campaign_and_older_or_identical_ones_change_nothing() {
    let (db, prefix) = live_fixture("replace");
    let input = format!("{prefix}.in");
    let out = format!("{prefix}.out");
    let now = now_secs();
    subscribe(&db, "a", R);
    subscribe(&db, "b", R);
    let window = (now - 10, now + 600);
    let v1 = campaign_version_json("C", R, window, 1000, "first");
    produce_values(&input, 2, &[&v1]);
    let child = spawn_promos(&db, &prefix, &[]);
    wait_for_history(&out, "C:a", &[true]);
    wait_for_history(&out, "C:b", &[true]);
    sql(
        &db,
        "UPDATE subscribers_feedback SET feedback = 'liked' WHERE client_id = 'a'",
    );

    // Newer: re-emitted with the new content, rows updated in place, feedback kept.
    let v2 = campaign_version_json("C", R, (now - 10, now + 900), 2000, "second");
    produce_values(&input, 2, &[&v2]);
    let h = wait_for_history(&out, "C:a", &[true, true]);
    let second: serde_json::Value = serde_json::from_str(h[1].as_deref().unwrap()).unwrap();
    assert_eq!(second["adv_campaign_content"], "second");
    assert_eq!(second["adv_campaign_datetime_end"], now + 900);
    wait_for_history(&out, "C:b", &[true, true]);
    let rows = pg(&db)
        .query(
            "SELECT client_id, adv_campaign_content, adv_campaign_datetime_end, datetime_created, \
             feedback FROM subscribers_feedback ORDER BY client_id",
            &[],
        )
        .expect("rows");
    let rows: Vec<(String, String, i64, i64, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "a".into(),
                "second".into(),
                now + 900,
                2000,
                Some("liked".into())
            ),
            ("b".into(), "second".into(), now + 900, 2000, None),
        ]
    );

    // Older, and identical re-delivery (on both partitions): nothing anywhere.
    let v0 = campaign_version_json("C", R, window, 500, "older");
    let marks = produce_values(&input, 2, &[&v0, &v2, &v2, &v1]);
    wait_for_progress(&db, "promos", &input, &marks, WAIT);
    terminate(child);
    for key in ["C:a", "C:b"] {
        assert_eq!(
            history(&out)[key].len(),
            2,
            "{key}: {:?}",
            history(&out)[key]
        );
    }
    let contents: Vec<String> = pg(&db)
        .query(
            "SELECT adv_campaign_content FROM subscribers_feedback WHERE adv_campaign_id = 'C'",
            &[],
        )
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(contents, ["second", "second"]);
    // Two drafts sent (a replacement is not a new draft), one with feedback.
    let (summary, truth) = promo_summary_and_truth(&db);
    assert_eq!(summary, truth);
    assert_eq!((summary.drafts(), summary.feedback()), (2, 1));
}

#[test]
fn drafts_expire_at_the_end_with_a_tombstone_and_a_replacement_moves_the_end() {
    let (db, prefix) = live_fixture("expiry");
    let input = format!("{prefix}.in");
    let out = format!("{prefix}.out");
    let produce = |json: &str| produce_values(&input, 1, &[json]);
    // Every window below is 10 s or more: an order of magnitude above the job's latency.
    let t0 = now_secs();
    subscribe(&db, "a", R);
    produce(&campaign_version_json(
        "S",
        R,
        (t0 - 10, t0 + 20),
        1000,
        "short",
    ));
    let child = spawn_promos(&db, &prefix, &["--envelope", "upsert"]);
    wait_for_history(&out, "S:a", &[true]);

    // E is replaced by a version that ends sooner, L by one that ends later; both
    // replacements must be read while the versions they replace are in force.
    let t1 = now_secs();
    produce(&campaign_version_json(
        "E",
        R,
        (t1 - 10, t1 + 600),
        1000,
        "v1",
    ));
    produce(&campaign_version_json(
        "L",
        R,
        (t1 - 10, t1 + 20),
        1000,
        "v1",
    ));
    wait_for_history(&out, "E:a", &[true]);
    wait_for_history(&out, "L:a", &[true]);
    let t2 = now_secs();
    let mut marks = produce(&campaign_version_json(
        "E",
        R,
        (t1 - 10, t2 + 10),
        2000,
        "earlier",
    ));
    marks.extend(produce(&campaign_version_json(
        "L",
        R,
        (t1 - 10, t1 + 30),
        2000,
        "later",
    )));
    wait_for_progress(&db, "promos", &input, &marks, WAIT);
    assert!(
        now_secs() < t1 + 20,
        "the replacements were read after L's first end: no margin left to test the move"
    );

    wait_for_history(&out, "S:a", &[true, false]);
    assert!(now_secs() >= t0 + 20, "retracted before the end");
    wait_for_history(&out, "E:a", &[true, true, false]);
    let moved_earlier = now_secs();
    assert!(moved_earlier >= t2 + 10 && moved_earlier < t1 + 600);
    wait_for_history(&out, "L:a", &[true, true, false]);
    assert!(now_secs() >= t1 + 30, "the replacement moved the end later");
    terminate(child);
}

#[test]
fn snapshot_and_stream_hand_over_exactly_under_concurrent_writes() {
    let (db, prefix) = live_fixture("handover");
    let out = format!("{prefix}.out");
    let now = now_secs();
    let restaurants: Vec<String> = (0..8).map(|r| format!("r{r}")).collect();
    {
        let mut client = pg(&db);
        for i in 0..400 {
            client
                .execute(
                    "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
                     VALUES ($1, $2)",
                    &[&format!("k{}", i % 150), &restaurants[i % 8]],
                )
                .expect("insert");
        }
    }
    let campaigns: Vec<String> = restaurants
        .iter()
        .map(|r| campaign_json(&format!("camp-{r}"), r, now - 10, now + 600))
        .collect();
    produce_values(&format!("{prefix}.in"), 2, &campaigns);

    // Writers: inserts, deletes, moves and multi-row transactions, before, during and after
    // the job's start (slot creation and snapshot).
    let writer_db = db.to_string();
    let writer = std::thread::spawn(move || {
        let mut client = pg(&writer_db);
        for i in 0..600u32 {
            let client_id = format!("k{}", (i * 7) % 170);
            let restaurant = format!("r{}", (i * 3) % 8);
            let statement = match i % 5 {
                0 | 1 => format!(
                    "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
                     VALUES ('{client_id}', '{restaurant}')"
                ),
                2 => format!(
                    "DELETE FROM subscribers_restaurants WHERE id = \
                     (SELECT min(id) FROM subscribers_restaurants WHERE client_id = '{client_id}')"
                ),
                3 => format!(
                    "UPDATE subscribers_restaurants SET restaurant_id = '{restaurant}' \
                     WHERE id = (SELECT max(id) FROM subscribers_restaurants \
                                 WHERE client_id = '{client_id}')"
                ),
                _ => format!(
                    "BEGIN; \
                     INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
                       VALUES ('{client_id}', '{restaurant}'); \
                     DELETE FROM subscribers_restaurants WHERE id = \
                       (SELECT min(id) FROM subscribers_restaurants WHERE restaurant_id = '{restaurant}'); \
                     COMMIT"
                ),
            };
            client.batch_execute(&statement).expect("write");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let child = spawn_promos(&db, &prefix, &["--envelope", "upsert", "--workers", "2"]);
    writer.join().expect("writer");
    subscribe(&db, "zz-marker", "r0");
    wait_for_history(&out, "camp-r0:zz-marker", &[true]);
    terminate(child);

    // Fold the topic: the live drafts are the keys whose last message is a value.
    let mut live = BTreeSet::new();
    for (key, h) in history(&out) {
        for pair in h.windows(2) {
            assert!(
                pair[0].is_some() != pair[1].is_some(),
                "{key}: two consecutive {} ({h:?})",
                if pair[0].is_some() {
                    "values"
                } else {
                    "tombstones"
                }
            );
        }
        assert!(h[0].is_some(), "{key} starts with a tombstone");
        if h.last().is_some_and(Option::is_some) {
            live.insert(key);
        }
    }
    let expected: BTreeSet<String> = pg(&db)
        .query(
            "SELECT DISTINCT 'camp-' || restaurant_id || ':' || client_id \
             FROM subscribers_restaurants",
            &[],
        )
        .expect("expected")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        expected.len() > 100,
        "a meaningful data set: {}",
        expected.len()
    );
    assert_eq!(live, expected);
}

#[test]
fn setup_creates_the_publication_and_drop_removes_it_and_stale_slots() {
    let db = database("slots");
    let count = |sql: &str| -> i64 { pg(&db).query_one(sql, &[]).expect(sql).get(0) };
    let publications = "SELECT count(*) FROM pg_publication WHERE pubname = 'dishflow_subscribers'";
    assert_success(&dishflow(["setup", "--postgres-url", &db], WAIT));
    assert_eq!(count(publications), 1);
    // A slot left behind (persistent, inactive) is reported by setup and removed by --drop.
    let slot = unique("dishflow_stale");
    pg(&db)
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .expect("slot");
    let out = dishflow(["setup", "--postgres-url", &db], WAIT);
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&slot),
        "setup names the stale slot"
    );
    assert_success(&dishflow(["setup", "--postgres-url", &db, "--drop"], WAIT));
    assert_eq!(count(publications), 0);
    let slots = format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'");
    assert_eq!(count(&slots), 0);
}

#[test]
fn a_lost_capture_connection_reconnects_and_catches_up_with_a_fresh_snapshot() {
    let (db, _topics, out, a, child) =
        campaign_c_notified_to_a("reconnect", &["--envelope", "upsert"]);
    // Kill the change-capture connection (its temporary slot goes with it), then change
    // the table while the job has no slot: the fresh snapshot must bring both changes.
    let killed: i64 = wait_until(WAIT, "the capture connection", || {
        let killed: i64 = pg(&db)
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() \
                   AND query LIKE '%pg_logical_slot_get_binary_changes%' \
                   AND pid <> pg_backend_pid()) t",
                &[],
            )
            .expect("terminate")
            .get(0);
        (killed > 0).then_some(killed)
    });
    assert_eq!(killed, 1, "one capture connection per worker");
    sql(
        &db,
        &format!("DELETE FROM subscribers_restaurants WHERE id = {a}"),
    );
    subscribe(&db, "b", R);
    wait_for_history(&out, "C:a", &[true, false]);
    wait_for_history(&out, "C:b", &[true]);
    let out_log = terminate(child);
    assert!(
        String::from_utf8_lossy(&out_log.stderr).contains("reconnecting"),
        "the reconnect is logged"
    );
}

#[test]
fn a_killed_job_resumes_rebuilds_its_state_and_writes_nothing_twice() {
    let (db, prefix) = live_fixture("resume");
    let input = format!("{prefix}.in");
    let out = format!("{prefix}.out");
    let dlq = format!("{prefix}.dlq");
    let now = now_secs();
    subscribe(&db, "s1", R);
    produce_values(
        &input,
        2,
        &[
            &campaign_json("ended", R, now - 7200, now - 3600),
            &campaign_json("A", R, now - 10, now + 3600),
            "not json",
        ],
    );
    let child = spawn_promos(&db, &prefix, &[]);
    wait_for_history(&out, "A:s1", &[true]);
    let progressed = || -> Option<(i64, i64)> {
        let row = pg(&db)
            .query_one(
                "SELECT coalesce(sum(resume_offset), 0)::int8, \
                        coalesce(sum(replay_offset), 0)::int8 FROM dishflow_progress",
                &[],
            )
            .ok()?;
        let (resume, replay): (i64, i64) = (row.get(0), row.get(1));
        (resume == 3).then_some((resume, replay))
    };
    let (_, replay) = wait_until(WAIT, "progress to cover the 3 messages", progressed);
    assert!(
        (1..3).contains(&replay),
        "the replay starts after the ended campaign, at A: {replay}"
    );
    let mut child = child;
    child.kill();

    // While the job is down: a new subscriber of A's restaurant, and a new campaign.
    subscribe(&db, "s2", R);
    let marks = produce_values(&input, 2, &[&campaign_json("C", R, now - 10, now + 3600)]);
    let child = spawn_promos(&db, &prefix, &[]);
    for key in ["A:s2", "C:s1", "C:s2"] {
        wait_for_history(&out, key, &[true]);
    }
    // Past C, the replay (stamped before it) has written all it would.
    wait_for_progress(&db, "promos", &input, &marks, WAIT);
    terminate(child);
    let once: BTreeMap<String, Vec<bool>> = ["A:s1", "A:s2", "C:s1", "C:s2"]
        .into_iter()
        .map(|k| (k.to_string(), vec![true]))
        .collect();
    assert_eq!(shapes(&out), once, "each draft once, none from the replay");
    assert_eq!(
        consume(&dlq).len(),
        1,
        "the bad message is dead-lettered once"
    );
    assert_eq!(feedback_rows(&db).len(), 4);

    // A replay of the whole topic on purpose writes nothing new...
    let mut args = promos_args(&db, &prefix);
    args.extend(["--from", "earliest", "--stop-at-end"].map(String::from));
    assert_success(&dishflow(&args, WAIT));
    assert_eq!(shapes(&out), once, "--from earliest is idempotent");
    assert_eq!(feedback_rows(&db).len(), 4);

    // ...unless asked to re-publish, into a new topic.
    let republished = format!("{prefix}.again");
    let mut args = promos_args_from(&db, &input, &prefix);
    let topic_at = args
        .iter()
        .position(|a| a == "--notification-topic")
        .expect("flag")
        + 1;
    args[topic_at] = republished.clone();
    args.extend(["--from", "earliest", "--stop-at-end", "--republish"].map(String::from));
    assert_success(&dishflow(&args, WAIT));
    assert_eq!(
        shapes(&republished),
        once,
        "--republish sends every draft once"
    );
    assert_eq!(feedback_rows(&db).len(), 4, "and writes no row twice");
}

/// With `--envelope upsert`, which drafts are live survives SIGKILLs: a draft whose
/// subscriber left or whose campaign ended while the job was down gets its tombstone after
/// the restart, a draft that comes back after its tombstone is sent again across a restart,
/// and a restart with nothing changed sends nothing.
#[test]
fn the_upsert_envelope_keeps_live_drafts_across_kills() {
    let (db, prefix) = live_fixture("upsert_kill");
    let input = format!("{prefix}.in");
    let out = format!("{prefix}.out");
    let t0 = now_secs();
    subscribe(&db, "a", R);
    let b = subscribe(&db, "b", R);
    produce_values(
        &input,
        1,
        &[
            &campaign_json("C", R, t0 - 10, t0 + 3600),
            &campaign_json("S", R, t0 - 10, t0 + 15),
        ],
    );
    let upsert = ["--envelope", "upsert"];
    let mut child = spawn_promos(&db, &prefix, &upsert);
    for key in ["C:a", "C:b", "S:a", "S:b"] {
        wait_for_history(&out, key, &[true]);
    }
    child.kill();
    assert!(
        now_secs() < t0 + 15,
        "S ended before its drafts were written"
    );

    // Down: b leaves, and S ends.
    sql(
        &db,
        &format!("DELETE FROM subscribers_restaurants WHERE id = {b}"),
    );
    while now_secs() < t0 + 16 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut child = spawn_promos(&db, &prefix, &upsert);
    for key in ["C:b", "S:a", "S:b"] {
        wait_for_history(&out, key, &[true, false]);
    }
    child.kill();

    // Down: b comes back to C's restaurant.
    subscribe(&db, "b", R);
    let mut child = spawn_promos(&db, &prefix, &upsert);
    wait_for_history(&out, "C:b", &[true, false, true]);
    child.kill();

    // Nothing changed: a restart sends nothing (its marker comes after anything it would).
    let child = spawn_promos(&db, &prefix, &upsert);
    let marks = produce_values(&input, 1, &[&campaign_json("M", R, t0 - 10, t0 + 3600)]);
    wait_for_progress(&db, "promos", &input, &marks, WAIT);
    wait_for_history(&out, "M:b", &[true]);
    terminate(child);
    let expected: BTreeMap<String, Vec<bool>> = [
        ("C:a", vec![true]),
        ("C:b", vec![true, false, true]),
        ("S:a", vec![true, false]),
        ("S:b", vec![true, false]),
        ("M:a", vec![true]),
        ("M:b", vec![true]),
    ]
    .into_iter()
    .map(|(k, h)| (k.to_string(), h))
    .collect();
    assert_eq!(shapes(&out), expected);
    // The kept states: the live drafts; S's keys forgotten with its end.
    let kept: BTreeSet<(String, String, bool)> = pg(&db)
        .query(
            "SELECT adv_campaign_id, client_id, live FROM dishflow_draft_keys",
            &[],
        )
        .expect("draft keys")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let live = |c: &str, k: &str| (c.to_string(), k.to_string(), true);
    assert_eq!(
        kept,
        [
            live("C", "a"),
            live("C", "b"),
            live("M", "a"),
            live("M", "b")
        ]
        .into()
    );
    assert_eq!(
        feedback_rows(&db).len(),
        6,
        "feedback rows are never deleted"
    );
}

/// The metrics endpoint of a running 2-worker job counts exactly what it read (7 records,
/// 3 of them bad), dead-lettered (by reason), loaded (3 subscribers) and wrote (12 drafts),
/// and the job is healthy and ready once it caught up.
#[test]
fn metrics_count_what_a_running_job_read_dead_lettered_and_wrote() {
    let (db, prefix) = live_fixture("metrics");
    for client in ["a", "b", "c"] {
        subscribe(&db, client, R);
    }
    let now = now_secs();
    let campaigns: Vec<String> = (0..4)
        .map(|i| campaign_json(&format!("C{i}"), R, now - 10, now + 600))
        .collect();
    let mut values: Vec<&str> = campaigns.iter().map(String::as_str).collect();
    values.extend(["not json", "[1, 2]", "\"text\""]);
    produce_values(&format!("{prefix}.in"), 2, &values);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let job = spawn_promos(&db, &prefix, &["--workers", "2", "--metrics-addr", &addr]);
    let out = format!("{prefix}.out");
    let dlq = format!("{prefix}.dlq");
    let complete = |text: &str| {
        metric(
            text,
            "dishflow_sink_updates_total",
            &["sink=\"DraftsSink\""],
        ) >= 12.0
            && metric(text, "dishflow_dead_letters_total", &[]) >= 3.0
            && metric(text, "dishflow_kafka_messages_delivered_total", &[]) >= 15.0
    };
    wait_until(
        WAIT,
        "the job to be ready and to have written everything",
        || {
            let (ready, _) = http_get(port, "/readyz")?;
            let (_, text) = http_get(port, "/metrics")?;
            (ready == 200 && complete(&text)).then_some(())
        },
    );
    // Counters must not run past the input: look again a moment later.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, text) = http_get(port, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let m = |name: &str, labels: &[&str]| metric(&text, name, labels);
    let input = format!("topic=\"{prefix}.in\"");
    assert_eq!(
        m("dishflow_kafka_records_read_total", &[&input]),
        7.0,
        "{text}"
    );
    assert!(m("dishflow_kafka_bytes_read_total", &[&input]) > 0.0);
    assert_eq!(m("dishflow_kafka_consumer_lag", &[&input]), 0.0, "{text}");
    assert_eq!(
        m("dishflow_kafka_position", &[&input]),
        7.0,
        "4 + 3 offsets"
    );
    assert_eq!(m("dishflow_dead_letters_total", &[]), 3.0, "{text}");
    assert_eq!(
        m("dishflow_dead_letters_total", &["reason=\"not_json\""]),
        1.0
    );
    assert_eq!(
        m("dishflow_dead_letters_total", &["reason=\"not_object\""]),
        2.0
    );
    assert_eq!(
        m("dishflow_sink_updates_total", &["sink=\"DraftsSink\""]),
        12.0
    );
    assert_eq!(
        m("dishflow_sink_updates_total", &["sink=\"DeadLetterSink\""]),
        3.0
    );
    let delivered = |topic: &str| format!("topic=\"{topic}\"");
    assert_eq!(
        m(
            "dishflow_kafka_messages_delivered_total",
            &[&delivered(&out)]
        ),
        12.0
    );
    assert_eq!(
        m(
            "dishflow_kafka_messages_delivered_total",
            &[&delivered(&dlq)]
        ),
        3.0
    );
    assert_eq!(
        m(
            "dishflow_snapshot_records_total",
            &["source=\"SubscribersSource\""]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(m("dishflow_snapshot_pending", &[]), 0.0);
    assert!(
        m(
            "dishflow_sink_seconds_count",
            &["sink=\"DraftsSink\"", "step=\"write\""]
        ) >= 1.0
    );
    // Each batch's changes: committed, then (through the outbox) acknowledged, with their
    // time since the job's logical time of them.
    for step in ["written", "delivered"] {
        let step = format!("step=\"{step}\"");
        let labels = ["sink=\"DraftsSink\"", step.as_str()];
        let count = m("dishflow_sink_latency_seconds_count", &labels);
        let sum = m("dishflow_sink_latency_seconds_sum", &labels);
        assert!(count >= 1.0 && sum / count < 30.0, "{step}: {text}");
    }
    assert!(
        m("dishflow_arrangement_updates", &["CampaignsByRestaurant"]) >= 4.0,
        "the 4 valid campaigns are arranged: {text}"
    );
    assert!(m("dishflow_output_frontier_lag_seconds", &[]) < 30.0);
    assert_eq!(m("dishflow_ready", &[]), 1.0);
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/nope").map(|r| r.0), Some(404));
    assert_eq!(feedback_rows(&db).len(), 12);
    terminate(job);
}

/// The two processes of an unbounded promos cluster on `db`/`prefix`, plus `extra` flags;
/// process 0 serves its metrics on the returned port.
fn spawn_cluster(db: &str, prefix: &str, extra: &[&str]) -> (Job, Job, u16) {
    let metrics = free_port();
    let [zero, one] = two_process_cluster(prefix);
    let process = |cluster: Vec<String>, serves_metrics: bool| {
        let mut args = promos_args(db, prefix);
        args.extend(cluster);
        if serves_metrics {
            args.extend(["--metrics-addr".to_string(), format!("127.0.0.1:{metrics}")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        spawn(&args)
    };
    let (first, second) = (process(zero, true), process(one, false));
    wait_until(WAIT, "the cluster to be ready", || {
        (http_get(metrics, "/readyz")?.0 == 200).then_some(())
    });
    (first, second, metrics)
}

/// A SIGTERM to one process of a cluster stops both cleanly (exit 0, everything written);
/// a killed process makes its peer exit non-zero at once (so that a supervisor restarts the
/// cluster) instead of hanging; a drain that cannot finish ends at --drain-timeout.
#[test]
fn one_process_stopping_or_dying_ends_the_whole_cluster_promptly() {
    let (db, prefix) = live_fixture("cluster_stop");
    subscribe(&db, "a", R);
    let now = now_secs();
    produce_values(
        &format!("{prefix}.in"),
        2,
        &[&campaign_json("C", R, now - 10, now + 600)],
    );
    let out = format!("{prefix}.out");

    let (first, second, _) = spawn_cluster(&db, &prefix, &[]);
    wait_for_history(&out, "C:a", &[true]);
    signal(&second, "TERM");
    for child in [second, first] {
        assert_success(&wait(child, WAIT));
    }
    assert_eq!(feedback_rows(&db).len(), 1);

    let (first, second, _) = spawn_cluster(&db, &prefix, &[]);
    signal(&second, "KILL");
    let out0 = wait(first, WAIT);
    assert_eq!(out0.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out0.stderr);
    assert!(
        stderr.contains("restart every process of the cluster"),
        "{stderr}"
    );
    let _ = wait(second, WAIT);

    // A frozen peer: process 0 cannot agree on the end of the run with it.
    let (first, second, _) = spawn_cluster(&db, &prefix, &["--drain-timeout", "2"]);
    signal(&second, "STOP");
    let stopped = std::time::Instant::now();
    signal(&first, "TERM");
    let out0 = wait(first, WAIT);
    assert_eq!(out0.status.code(), Some(1));
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopped.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out0.stderr);
    assert!(stderr.contains("did not drain within 2 s"), "{stderr}");
    signal(&second, "KILL");
    let _ = wait(second, WAIT);
    // Nothing was written twice by all this.
    assert_eq!(shapes(&out).remove("C:a"), Some(vec![true]));
    assert_eq!(feedback_rows(&db).len(), 1);
}
