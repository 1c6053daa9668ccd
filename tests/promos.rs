//! Integration tests of `dishflow promos` against real Postgres and a Kafka-API broker.
//! Run with `cargo test --features integration` after `scripts/services.sh` (or via
//! `scripts/test.sh`, which does both).

#![cfg(feature = "integration")]

use std::collections::BTreeSet;
use std::time::Duration;

use dishflow_testkit::*;

const R0: &str = "123e4567-e89b-12d3-a456-426614174000";
const R1: &str = "123e4567-e89b-12d3-a456-426614174001";
const MINUTE: Duration = Duration::from_secs(60);

fn run_bounded(args: &[String], extra: &[&str]) {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.push("--stop-at-end");
    all.extend_from_slice(extra);
    assert_success(&dishflow(&all, MINUTE));
    // Every message is confirmed and its outbox row deleted before the process exits (the
    // last batch's deliveries are settled by the sink's final flush).
    let db = args
        .iter()
        .position(|a| a == "--postgres-url")
        .map(|i| args[i + 1].as_str())
        .expect("--postgres-url");
    let left: i64 = pg(db)
        .query_one("SELECT count(*) FROM dishflow_outbox", &[])
        .expect("outbox")
        .get(0);
    assert_eq!(left, 0, "outbox rows left after a bounded run");
}

/// (key, value) of the notification topic, keys and payloads as strings.
fn drafts_in_kafka(topic: &str) -> Vec<(String, serde_json::Value)> {
    consume(topic)
        .into_iter()
        .map(|m| {
            let value = m.value.expect("draft value");
            (
                m.key.expect("draft key"),
                serde_json::from_str(&value).expect("json"),
            )
        })
        .collect()
}

const FIELDS: [&str; 10] = [
    "restaurant_id",
    "adv_campaign_id",
    "adv_campaign_content",
    "adv_campaign_owner",
    "adv_campaign_owner_contact",
    "adv_campaign_datetime_start",
    "adv_campaign_datetime_end",
    "client_id",
    "datetime_created",
    "trigger_datetime_created",
];

#[test]
fn seed_example_gives_eight_plus_one_drafts_and_a_second_run_adds_nothing() {
    let db = database("seed");
    seed_subscribers(&db);
    let prefix = prefix("seed");
    let topic = format!("{prefix}.in");
    let produce = [
        "produce",
        "promos",
        "--brokers",
        &brokers(),
        "--topic",
        &topic,
        "--count",
        "2",
        "--restaurants",
        "2",
        "--seed-times",
    ];
    assert_success(&dishflow(produce, MINUTE));
    let args = promos_args(&db, &prefix);
    let before = now_secs();
    run_bounded(&args, &[]);

    let messages = consume(&format!("{prefix}.out"));
    assert_eq!(messages.len(), 9, "{messages:?}");
    for m in &messages {
        // Fields present, exactly, in SPEC order.
        let value = m.value.as_deref().expect("value");
        let positions: Vec<usize> = FIELDS
            .iter()
            .map(|f| value.find(&format!("\"{f}\":")).expect(f))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "order: {value}");
        let json: serde_json::Value = serde_json::from_str(value).expect("json");
        assert_eq!(json.as_object().expect("object").len(), 10);
        let key = format!(
            "{}:{}",
            json["adv_campaign_id"].as_str().expect("id"),
            json["client_id"].as_str().expect("client")
        );
        assert_eq!(m.key.as_deref(), Some(key.as_str()));
        let trigger = json["trigger_datetime_created"].as_i64().expect("trigger");
        assert!(
            trigger >= before && trigger <= now_secs(),
            "arrival time: {trigger}"
        );
    }
    let per_restaurant = |r: &str| {
        drafts_in_kafka(&format!("{prefix}.out"))
            .iter()
            .filter(|(_, v)| v["restaurant_id"] == r)
            .count()
    };
    assert_eq!(per_restaurant(R0), 8);
    assert_eq!(
        per_restaurant(R1),
        1,
        "duplicate subscription rows count once"
    );

    let rows = feedback_rows(&db);
    assert_eq!(rows.len(), 9);
    let kafka_keys: BTreeSet<String> = messages.iter().filter_map(|m| m.key.clone()).collect();
    let row_keys: BTreeSet<String> = rows.iter().map(|(c, k, _)| format!("{c}:{k}")).collect();
    assert_eq!(kafka_keys, row_keys);
    let feedback_null: i64 = pg(&db)
        .query_one(
            "SELECT count(*) FROM subscribers_feedback WHERE feedback IS NULL",
            &[],
        )
        .expect("count")
        .get(0);
    assert_eq!(feedback_null, 9);
    let (summary, truth) = promo_summary_and_truth(&db);
    assert_eq!(summary, truth);
    assert_eq!(summary.drafts(), 9);

    // Feedback the app fills (and takes back) is counted by the summary's trigger.
    pg(&db)
        .batch_execute(
            "UPDATE subscribers_feedback SET feedback = 'liked' WHERE id IN
                 (SELECT id FROM subscribers_feedback ORDER BY id LIMIT 3);
             UPDATE subscribers_feedback SET feedback = 'loved' WHERE feedback = 'liked';
             UPDATE subscribers_feedback SET feedback = NULL WHERE id IN
                 (SELECT id FROM subscribers_feedback WHERE feedback IS NOT NULL
                  ORDER BY id LIMIT 1)",
        )
        .expect("feedback");
    let (summary, truth) = promo_summary_and_truth(&db);
    assert_eq!(summary, truth);
    assert_eq!(summary.feedback(), 2);

    // A second bounded run over the same topic writes nothing new anywhere.
    run_bounded(&args, &["--from", "earliest"]);
    assert_eq!(consume(&format!("{prefix}.out")).len(), 9);
    assert_eq!(feedback_rows(&db), rows);
    let (summary, truth) = promo_summary_and_truth(&db);
    assert_eq!(summary, truth, "a replay counts no draft twice");
}

#[test]
fn ended_campaign_gives_nothing_and_an_early_one_is_held_until_its_start() {
    let db = database("held");
    seed_subscribers(&db);
    let prefix = prefix("held");
    let now = now_secs();
    // 20 s: an order of magnitude above the job's latency, so that the job has read the
    // campaign well before its start.
    let start = now + 20;
    let ended = campaign_json("ended", R0, now - 100, now - 50);
    let early = campaign_json("early", R1, start, now + 3600);
    let input = format!("{prefix}.in");
    let marks = produce_raw(
        &input,
        1,
        &[
            (None, Some(ended.as_bytes())),
            (None, Some(early.as_bytes())),
        ],
    );
    assert_success(&dishflow(["setup", "--postgres-url", &db], MINUTE));
    let args = promos_args(&db, &prefix);
    let child = spawn(&args);

    // Read and everything it caused written, before the start: nothing.
    wait_for_progress(&db, "promos", &input, &marks, MINUTE);
    let before = feedback_rows(&db);
    assert!(
        now_secs() < start,
        "the campaign was read after its start: no margin left to test the hold"
    );
    assert_eq!(before, vec![], "emitted before its start");
    let rows = wait_until(MINUTE, "the draft at the start", || {
        let rows = feedback_rows(&db);
        (!rows.is_empty()).then_some(rows)
    });
    assert!(now_secs() >= start, "emitted before its start");
    // SIGTERM: finish what is complete, exit 0.
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let out = wait(child, Duration::from_secs(20));
    assert_success(&out);

    assert_eq!(
        rows,
        vec![(
            "early".to_string(),
            "923e4567-e89b-12d3-a456-426614174000".to_string(),
            start as i32
        )]
    );
    let drafts = drafts_in_kafka(&format!("{prefix}.out"));
    assert_eq!(drafts.len(), 1);
    assert_eq!(drafts[0].1["trigger_datetime_created"], start);
    assert_eq!(drafts[0].1["adv_campaign_id"], "early");
}

#[test]
fn bad_input_goes_to_the_dead_letter_topic_and_the_job_goes_on() {
    let db = database("dlq");
    seed_subscribers(&db);
    let prefix = prefix("dlq");
    let now = now_secs();
    let valid = campaign_json("good", R1, now - 10, now + 3600);
    let with = |from: &str, to: &str| valid.replace(from, to);
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xff, 0xfe, b'{'], "not_utf8"),
        (b"{oops".to_vec(), "not_json"),
        (b"[1,2]".to_vec(), "not_object"),
        (
            with(r#""adv_campaign_owner":"o","#, "").into_bytes(),
            "missing_field:adv_campaign_owner",
        ),
        (
            with(
                r#""adv_campaign_content":"c""#,
                r#""adv_campaign_content":null"#,
            )
            .into_bytes(),
            "null_field:adv_campaign_content",
        ),
        (
            with(r#""restaurant_id":"123"#, r#""restaurant_id":123,"x":"123"#).into_bytes(),
            "wrong_type:restaurant_id",
        ),
        (
            campaign_json("backwards", R1, now + 10, now).into_bytes(),
            "end_not_after_start",
        ),
        (Vec::new(), "empty_value"),
    ];
    let mut messages: Vec<Raw<'_>> = bad
        .iter()
        .map(|(v, reason)| (Some(reason.as_bytes()), Some(v.as_slice())))
        .collect();
    messages.push((Some(b"tombstone".as_slice()), None));
    messages.push((Some(b"good".as_slice()), Some(valid.as_bytes())));
    produce_raw(&format!("{prefix}.in"), 2, &messages);

    run_bounded(&promos_args(&db, &prefix), &[]);

    let dead = consume(&format!("{prefix}.dlq"));
    assert_eq!(dead.len(), 9, "{dead:?}");
    for m in &dead {
        let header = |name: &str| {
            m.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("header {name} in {m:?}"))
        };
        let key = m.key.clone().expect("original key kept");
        let expected_reason = if key == "tombstone" {
            "tombstone"
        } else {
            key.as_str()
        };
        assert_eq!(header("dishflow.error.reason"), expected_reason);
        assert_eq!(header("dishflow.source.topic"), format!("{prefix}.in"));
        let (partition, offset) = (
            header("dishflow.source.partition"),
            header("dishflow.source.offset"),
        );
        assert!(partition.parse::<i32>().is_ok() && offset.parse::<i64>().is_ok());
        // The original value, byte for byte (compared as lossy text here).
        let original = bad
            .iter()
            .find(|(_, r)| *r == key)
            .map(|(v, _)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(m.value, if key == "tombstone" { None } else { original });
    }
    // The good record after all the bad ones still made its draft.
    assert_eq!(feedback_rows(&db).len(), 1);
    assert_eq!(consume(&format!("{prefix}.out")).len(), 1);
}

#[test]
fn what_a_retired_writer_left_in_the_outbox_is_delivered_once() {
    // A run with more workers or connections per worker stopped with a message committed
    // to writer 5's outbox and not yet delivered; this run has writers 0 and 1 only.
    let db = database("retired");
    let prefix = prefix("retired");
    produce_raw(&format!("{prefix}.in"), 1, &[]);
    assert_success(&dishflow(["setup", "--postgres-url", &db], MINUTE));
    pg(&db)
        .execute(
            "INSERT INTO dishflow_outbox (job, writer, topic, seq, key, value) \
             VALUES ('promos', 5, $1, 1, 'retired-key', '{\"left\": true}')",
            &[&format!("{prefix}.out")],
        )
        .expect("outbox row");
    let args = promos_args(&db, &prefix);
    for _ in 0..2 {
        run_bounded(&args, &["--feedback-connections", "2"]);
        let messages = messages(&format!("{prefix}.out"));
        assert_eq!(
            messages,
            [(
                "retired-key".to_string(),
                Some("{\"left\": true}".to_string())
            )]
        );
    }
    let marks: i64 = pg(&db)
        .query_one(
            "SELECT count(*) FROM dishflow_outbox_marks WHERE writer >= 2",
            &[],
        )
        .expect("marks")
        .get(0);
    assert_eq!(marks, 0, "the retired writer's marks are removed");
}

/// Subscribers: 300 rows over 6 restaurants, with duplicates; 40 campaigns over 8 restaurants
/// (two without subscribers).
fn scale_input(db: &str, prefix: &str) {
    let mut client = subscribers_table(db);
    client
        .batch_execute(
            "INSERT INTO subscribers_restaurants (client_id, restaurant_id)
             SELECT 'client-' || (i % 250), '123e4567-e89b-12d3-a456-' || lpad((426614174000 + i % 6)::text, 12, '0')
             FROM generate_series(1, 300) AS i",
        )
        .expect("subscribers");
    let now = now_secs();
    let messages: Vec<String> = (0..40)
        .map(|i| {
            campaign_json(
                &format!("campaign-{i}"),
                &format!("123e4567-e89b-12d3-a456-{:012}", 426614174000u64 + i % 8),
                now - 60,
                now + 3600,
            )
        })
        .collect();
    let raw: Vec<Raw<'_>> = messages
        .iter()
        .map(|m| (None, Some(m.as_bytes())))
        .collect();
    produce_raw(&format!("{prefix}.in"), 4, &raw);
}

fn outputs(db: &str, prefix: &str) -> (BTreeSet<String>, BTreeSet<(String, String)>) {
    let keys: Vec<String> = consume(&format!("{prefix}.out"))
        .into_iter()
        .filter_map(|m| m.key)
        .collect();
    let unique: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(keys.len(), unique.len(), "no duplicate drafts");
    let rows = feedback_rows(db)
        .into_iter()
        .map(|(c, k, _)| (c, k))
        .collect();
    let (summary, truth) = promo_summary_and_truth(db);
    assert_eq!(
        summary, truth,
        "the promos summaries count every draft once"
    );
    (unique, rows)
}

#[test]
fn two_workers_and_two_processes_give_the_same_output_as_one() {
    let input = prefix("scale");
    let db1 = database("scale1");
    scale_input(&db1, &input);
    // The same topic feeds all three runs; each run writes to its own outputs and database.
    let run = |db: &str, out: &str, extra: &[&str]| {
        run_bounded(&promos_args_from(db, &format!("{input}.in"), out), extra);
    };
    let out1 = prefix("scale_one");
    run(&db1, &out1, &[]);
    let one = outputs(&db1, &out1);
    // Restaurants 0..5 of the 8 campaign restaurants have subscribers (50 rows each, some
    // of them duplicate pairs); restaurants 6 and 7 have none.
    assert!(!one.0.is_empty());
    assert_eq!(one.0.len(), one.1.len());

    let db2 = database("scale2");
    copy_subscribers(&db1, &db2);
    let out2 = prefix("scale_two");
    // Two workers, each writing through three connections (sink lanes), all in use.
    let lanes = ["--feedback-connections", "3", "--feedback-backlog", "0"];
    run(&db2, &out2, &[&["--workers", "2"][..], &lanes].concat());
    assert_eq!(outputs(&db2, &out2), one);

    let db3 = database("scale3");
    copy_subscribers(&db1, &db3);
    let out3 = prefix("scale_procs");
    let args = promos_args_from(&db3, &format!("{input}.in"), &out3);
    let children: Vec<_> = two_process_cluster(&out3)
        .into_iter()
        .map(|cluster| {
            let mut argv: Vec<String> = args.clone();
            argv.push("--stop-at-end".to_string());
            argv.extend(cluster);
            spawn(&argv)
        })
        .collect();
    for child in children {
        assert_success(&wait(child, MINUTE));
    }
    assert_eq!(outputs(&db3, &out3), one);
}

/// Copies the subscriber rows of `from` into the fresh database `to`, in one statement.
fn copy_subscribers(from: &str, to: &str) {
    let rows = pg(from)
        .query(
            "SELECT client_id, restaurant_id FROM subscribers_restaurants ORDER BY id",
            &[],
        )
        .expect("read");
    let mut client = subscribers_table(to);
    for row in rows {
        let (c, r): (String, String) = (row.get(0), row.get(1));
        client
            .execute(
                "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ($1, $2)",
                &[&c, &r],
            )
            .expect("insert");
    }
}

#[test]
fn startup_problems_end_with_one_clear_line_and_a_non_zero_status() {
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "promos",
                "--postgres-url",
                "postgres://postgres@127.0.0.1:1/de",
            ],
            "cannot connect to Postgres",
        ),
        (
            &["promos", "--postgres-url", "not a url"],
            "invalid Postgres URL",
        ),
        (
            &[
                "setup",
                "--postgres-url",
                "postgres://postgres@127.0.0.1:1/de",
            ],
            "cannot connect to Postgres",
        ),
    ];
    for (args, expected) in cases {
        let out = dishflow(args, MINUTE);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("dishflow: error:"))
            .collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(expected), "{stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
    // Unreachable broker (Postgres fine).
    let db = database("nobroker");
    let out = dishflow(
        [
            "promos",
            "--brokers",
            "127.0.0.1:1",
            "--postgres-url",
            &db,
            "--kafka-property",
            "socket.connection.setup.timeout.ms=1000",
        ],
        MINUTE,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dishflow: error: cannot reach Kafka at 127.0.0.1:1"),
        "{stderr}"
    );
}

/// Passwords in URLs and secret Kafka settings appear nowhere: not in the logs of a
/// successful run at debug level (librdkafka's configuration dump included), not in the
/// errors of failing runs, not in `--help` (which shows other flags' environment values).
#[test]
fn secrets_never_reach_logs_errors_or_help() {
    const PG_SECRET: &str = "Pg5ecretPw";
    const KAFKA_SECRET: &str = "Kafk4Secret";
    const REDIS_SECRET: &str = "R3disSecret";
    let assert_hidden = |what: &str, out: &std::process::Output| {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in [PG_SECRET, KAFKA_SECRET, REDIS_SECRET] {
            assert!(!all.contains(secret), "{what} shows {secret}:\n{all}");
        }
        all
    };
    // A successful bounded run; the local server trusts, so the password is not checked.
    let db = database("secrets");
    seed_subscribers(&db);
    let with_password = db.replacen("postgres@", &format!("postgres:{PG_SECRET}@"), 1);
    assert_ne!(
        with_password,
        db.to_string(),
        "the test URL has a user to add a password to"
    );
    let prefix = prefix("secrets");
    produce_values(
        &format!("{prefix}.in"),
        1,
        &[&campaign_json("C", R0, now_secs() - 10, now_secs() + 600)],
    );
    let mut args = promos_args(&with_password, &prefix);
    args.extend(
        [
            "--stop-at-end",
            "--log-format",
            "json",
            "--kafka-property",
            &format!("sasl.password={KAFKA_SECRET}"),
            "--kafka-property",
            "debug=conf",
        ]
        .map(String::from),
    );
    let out = wait(spawn_env(&args, &[("RUST_LOG", "debug")]), MINUTE);
    assert_success(&out);
    let all = assert_hidden("a run at debug level", &out);
    assert!(
        all.contains("sasl.password"),
        "librdkafka dumped its configuration"
    );
    assert_eq!(feedback_rows(&db).len(), 8, "the run did its work");

    // Failing runs: unreachable Postgres and Redis, with passwords.
    let pg = format!("postgres://postgres:{PG_SECRET}@127.0.0.1:1/de");
    let redis = format!("redis://:{REDIS_SECRET}@127.0.0.1:1/0");
    for args in [
        vec!["promos", "--postgres-url", &pg],
        vec!["setup", "--postgres-url", &pg],
        vec!["orders", "--postgres-url", &db, "--redis-url", &redis],
        vec!["promos", "--kafka-property", &format!("={KAFKA_SECRET}")],
    ] {
        let out = dishflow(&args, MINUTE);
        assert!(!out.status.success(), "{args:?} must fail");
        assert_hidden(&format!("{args:?}"), &out);
    }

    // --help shows environment values of other flags, but not of these.
    for command in ["promos", "orders", "setup"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dishflow"))
            .args([command, "--help"])
            .env("DISHFLOW_POSTGRES_URL", &pg)
            .env("DISHFLOW_REDIS_URL", &redis)
            .env(
                "DISHFLOW_KAFKA_PROPERTY",
                format!("sasl.password={KAFKA_SECRET}"),
            )
            .env("DISHFLOW_TICK_MS", "250")
            .output()
            .expect("help");
        assert!(out.status.success());
        let all = assert_hidden(&format!("{command} --help"), &out);
        if command == "promos" {
            assert!(all.contains("DISHFLOW_TICK_MS=250"), "{all}");
        }
    }
}

/// On a terminal a bounded run draws a progress bar per input topic; without one it does
/// not; either way it ends with one summary line.
#[test]
fn a_bounded_run_shows_progress_bars_on_a_terminal_and_ends_with_a_summary() {
    let db = database("progress");
    subscribers_table(&db);
    let prefix = prefix("progress");
    let input = format!("{prefix}.in");
    assert_success(&dishflow(
        [
            "produce",
            "promos",
            "--brokers",
            &brokers(),
            "--topic",
            &input,
            "--count",
            "50000",
            "--partitions",
            "2",
        ],
        MINUTE,
    ));
    let summary = "promos finished: 50000 records read (0 dead-lettered)";
    let mut args = promos_args(&db, &prefix);
    args.push("--stop-at-end".into());
    // `script` runs the job on a pseudo-terminal (the arguments hold no spaces or quotes).
    let command = format!("{} {}", env!("CARGO_BIN_EXE_dishflow"), args.join(" "));
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("RUST_LOG", "info")
        .output()
        .expect("script (util-linux) runs the job on a terminal");
    assert!(out.status.success(), "{out:?}");
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert!(terminal.contains(summary), "{terminal}");
    assert!(
        terminal.contains(&format!("{input} [")) && terminal.contains("offsets"),
        "no progress bar: {terminal}"
    );

    let db = database("progress_plain");
    subscribers_table(&db);
    let plain = dishflow_testkit::prefix("progress_plain");
    let mut args = promos_args_from(&db, &input, &plain);
    args.push("--stop-at-end".into());
    let out = dishflow(&args, MINUTE);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(summary), "{stderr}");
    assert!(
        !stderr.contains("offsets"),
        "a bar without a terminal: {stderr}"
    );
}
