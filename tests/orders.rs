//! Integration tests of `dishflow orders` against real Kafka, Postgres and Redis: counters
//! against a SQL ground truth, idempotent re-delivery, status changes, late dictionary
//! entries, dead letters, and a 2-process cluster. Every test uses its own database, topics
//! and Redis key prefix. Run via `scripts/test.sh`.

#![cfg(feature = "integration")]

use std::time::Duration;

use dishflow_testkit::*;
use redis::Commands;

const MINUTE: Duration = Duration::from_secs(60);

fn run_bounded(db: &str, prefix: &str, extra: &[&str]) -> String {
    let mut args = orders_args(db, prefix);
    args.push("--stop-at-end".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = dishflow(&args, 3 * MINUTE);
    assert_success(&out);
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Every row of every table as text, sorted; with `exact`, every column, else without the
/// columns that depend on when and in which order rows were written (`id`, `load_dt`, `since`,
/// `changed_at`).
fn dump(db: &str, exact: bool) -> Vec<(String, Vec<String>)> {
    let mut client = pg(db);
    ORDERS_TABLES
        .iter()
        .map(|table| {
            let row = if exact {
                "t::text".to_string()
            } else {
                "(to_jsonb(t) - 'id' - 'load_dt' - 'since' - 'changed_at')::text".to_string()
            };
            let rows = client
                .query(&format!("SELECT {row} FROM {table} t ORDER BY 1"), &[])
                .expect("dump");
            (table.to_string(), rows.iter().map(|r| r.get(0)).collect())
        })
        .collect()
}

#[test]
fn counters_equal_the_sql_ground_truth_and_a_second_delivery_changes_nothing() {
    let db = database("ord_truth");
    let prefix = prefix("ordtruth");
    produce_orders(&prefix, "1500");
    let (stg_topic, dds_topic) = (format!("{prefix}.stg"), format!("{prefix}.dds"));
    let tag_topic = format!("{prefix}.tags");
    let topics = [
        "--stg-topic",
        &stg_topic,
        "--dds-topic",
        &dds_topic,
        "--tag-topic",
        &tag_topic,
    ];
    run_bounded(&db, &prefix, &topics);
    // The example rules of `setup` tag some users; one message per tag.
    let (tags, truth) = tags_and_truth(&db);
    assert!(!tags.is_empty());
    assert_eq!(tags, truth);
    assert_eq!(consume(&tag_topic).len(), tags.len());
    let (summary, truth) = summary_and_truth(&db);
    assert!(summary.len() > 10, "{summary:?}");
    assert_eq!(summary, truth);
    let (products, categories) = cdm_counters(&db);
    let (truth_products, truth_categories) =
        ground_truth(&db, &format!("{prefix}.orders"), &format!("{prefix}*"));
    assert!(truth_products.len() > 500, "{}", truth_products.len());
    assert_eq!(products, truth_products);
    assert_eq!(categories, truth_categories);
    let stg: i64 = pg(&db)
        .query_one("SELECT count(*) FROM stg.order_events", &[])
        .expect("stg")
        .get(0);
    assert_eq!(stg, 1500);
    // STG and the Data Vault as the raw messages and dictionaries imply them.
    assert_eq!(
        layer_differences(&db, &format!("{prefix}.orders"), &format!("{prefix}*")),
        Vec::<String>::new()
    );
    // The compatibility topics: one enriched message per order (every user and product is
    // in Redis), and per-user counter changes that add up to the tables.
    let enriched = consume(&stg_topic);
    assert_eq!(enriched.len(), 1500);
    let sample: serde_json::Value =
        serde_json::from_str(enriched[0].value.as_deref().unwrap_or_default()).expect("json");
    assert!(
        sample["payload"]["products"][0]["category"].is_string(),
        "{sample}"
    );
    assert_eq!(counters_from_topic(&dds_topic), (products, categories));
    let dds_messages = consume(&dds_topic).len();

    // The whole data set again: re-delivered orders and dictionary values change nothing,
    // whether the job resumes (replaying what it retains) or reads everything again.
    let before = dump(&db, true);
    produce_orders(&prefix, "1500");
    run_bounded(&db, &prefix, &topics);
    assert_eq!(dump(&db, true), before);
    let mut again = topics.to_vec();
    again.extend(["--from", "earliest"]);
    run_bounded(&db, &prefix, &again);
    assert_eq!(dump(&db, true), before);
    assert_eq!(consume(&stg_topic).len(), 1500);
    assert_eq!(consume(&dds_topic).len(), dds_messages);
    assert_eq!(consume(&tag_topic).len(), tags.len());

    // A rule deleted while the job is down: on restart, its tags go.
    let rule = &tags[0].1;
    pg(&db)
        .execute("DELETE FROM cdm.tag_rules WHERE tag = $1", &[rule])
        .expect("delete a rule");
    run_bounded(&db, &prefix, &topics);
    let (without_rule, truth) = tags_and_truth(&db);
    assert_eq!(without_rule, truth);
    assert!(without_rule.iter().all(|(_, tag)| tag != rule));
    assert!(without_rule.len() < tags.len());

    // A user disappears from Redis while the job is down: on restart, the rebuilt state
    // holds that user's orders, and their counters are removed from the tables.
    let user = pg(&db)
        .query_one(
            "SELECT u.user_id FROM dds.h_user u JOIN cdm.user_product_counters c \
             ON c.user_id = u.h_user_pk LIMIT 1",
            &[],
        )
        .expect("a user with counters")
        .get::<_, String>(0);
    let _: () = redis().del(&user).expect("del");
    run_bounded(&db, &prefix, &topics);
    let (products, categories) = cdm_counters(&db);
    let gone = dataflows::orders::hub_key(&user);
    assert!(products.iter().all(|c| c.0 != gone));
    assert!(products.len() < truth_products.len());
    assert_eq!(
        (products.clone(), categories.clone()),
        ground_truth(&db, &format!("{prefix}.orders"), &format!("{prefix}*"))
    );
    assert_eq!(counters_from_topic(&dds_topic), (products, categories));
    // The user's tags went with their counters: a tombstone each.
    let (after, truth) = tags_and_truth(&db);
    assert_eq!(after, truth);
    let (summary, truth) = summary_and_truth(&db);
    assert_eq!(summary, truth);
    let tombstones = consume(&tag_topic)
        .iter()
        .filter(|m| m.value.is_none())
        .count();
    assert_eq!(tombstones, tags.len() - after.len());
}

#[test]
fn malformed_orders_go_to_the_dead_letter_topic_and_other_types_are_ignored() {
    let db = database("ord_dlq");
    let prefix = prefix("orddlq");
    produce_orders(&prefix, "20");
    let topic = format!("{prefix}.orders");
    produce_raw(
        &topic,
        4,
        &[
            (Some(b"bad-json"), Some(b"{not json")),
            (
                Some(b"no-user"),
                Some(br#"{"object_id": 1, "object_type": "order", "sent_dttm": "2022-11-19 16:06:36", "payload": {}}"#),
            ),
            (
                Some(b"other-type"),
                Some(br#"{"object_id": 2, "object_type": "delivery", "payload": {}}"#),
            ),
        ],
    );
    let log = run_bounded(&db, &prefix, &[]);
    assert!(log.contains("other_object_types=1"), "{log}");
    let dead = dead_letter_reasons(&format!("{prefix}.dlq"));
    assert_eq!(
        dead,
        [
            ("bad-json".to_string(), "not_json".to_string()),
            (
                "no-user".to_string(),
                "missing_field:payload.restaurant".to_string()
            ),
        ]
    );
    // The good orders went through.
    let stg: i64 = pg(&db)
        .query_one("SELECT count(*) FROM stg.order_events", &[])
        .expect("stg")
        .get(0);
    assert_eq!(stg, 20);
}

/// A CLOSED order for restaurant `r` with one line of product `p`, by user `u`.
fn count(db: &str, sql: &str) -> i64 {
    pg(db).query_one(sql, &[]).expect("count").get(0)
}

#[test]
fn a_late_user_completes_the_order_renames_flow_and_cancelling_decrements() {
    let db = database("ord_live");
    let prefix = prefix("ordlive");
    let (r, u, p) = (
        format!("{prefix}_r"),
        format!("{prefix}_u"),
        format!("{prefix}_p"),
    );
    let menu = |name: &str| {
        format!(
            r#"{{"_id": "{r}", "name": "Coffee", "menu": [{{"_id": "{p}", "name": "{name}",
                "price": 180, "category": "Bakery"}}], "update_ts_utc": "2022-11-19 10:00:00"}}"#
        )
    };
    let mut con = redis();
    let _: () = con.set(&r, menu("Roll")).expect("set");
    let topic = format!("{prefix}.orders");
    dishflow::kafka::ensure_topic(&kafka(), &topic, 2).expect("topic");
    let (stg_topic, dds_topic) = (format!("{prefix}.stg"), format!("{prefix}.dds"));
    let tag_topic = format!("{prefix}.tags");
    let mut args = orders_args(&db, &prefix);
    // Two workers: the ones that read no source must not hold the others back.
    args.extend(
        [
            "--tick-ms",
            "20",
            "--workers",
            "2",
            "--stg-topic",
            &stg_topic,
            "--dds-topic",
            &dds_topic,
            "--tag-topic",
            &tag_topic,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let job = spawn(&args);

    let closed = order_json(1, &r, &u, &p, "CLOSED", "2022-11-19 16:00:00");
    let marks = produce_raw(&topic, 2, &[(Some(b"1"), Some(closed.as_bytes()))]);
    // STG has it once the job is past it; the user is unknown, so the order is held: no
    // counters.
    wait_for_progress(&db, "orders", &topic, &marks, WAIT);
    assert_eq!(count(&db, "SELECT count(*) FROM stg.order_events"), 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM cdm.user_product_counters"),
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM dds.h_order"), 0);

    let user = format!(r#"{{"_id": "{u}", "name": "Olga", "login": "olga"}}"#);
    let _: () = con.set(&u, user).expect("set user");
    wait_until(WAIT, "the counters after the user arrived", || {
        let n = count(
            &db,
            "SELECT count(*) FROM cdm.user_product_counters WHERE order_cnt = 1 AND product_name = 'Roll'",
        );
        (n == 1).then_some(())
    });
    assert_eq!(
        count(&db, "SELECT count(*) FROM cdm.user_category_counters"),
        1
    );

    // Tag rules edited while the job runs re-tag the user at once; the tags always equal
    // what the counters and rules say.
    let rules = |sql: &str| pg(&db).batch_execute(sql).expect("rules");
    let wait_tags = |what: &str, expected: &[&str]| {
        wait_until(WAIT, what, || {
            let (tags, truth) = tags_and_truth(&db);
            let names: Vec<&str> = tags.iter().map(|(_, tag)| tag.as_str()).collect();
            (tags == truth && names == expected).then_some(())
        })
    };
    rules(
        "INSERT INTO cdm.tag_rules VALUES ('bakery', 'Bakery', NULL, 1), ('roll fan', NULL, 'Roll', 1)",
    );
    wait_tags("the new rules' tags", &["bakery", "roll fan"]);
    rules("UPDATE cdm.tag_rules SET min_orders = 2 WHERE tag = 'bakery'");
    wait_tags("the raised rule's tag to go", &["roll fan"]);
    rules(
        "UPDATE cdm.tag_rules SET min_orders = 1 WHERE tag = 'bakery';
         DELETE FROM cdm.tag_rules WHERE tag = 'roll fan'",
    );
    wait_tags(
        "the lowered rule's tag back, the deleted one's gone",
        &["bakery"],
    );
    // A rule must name exactly one of a category and a product.
    assert!(
        pg(&db)
            .batch_execute("INSERT INTO cdm.tag_rules VALUES ('neither', NULL, NULL, 1)")
            .is_err()
    );

    // A renamed product: a new satellite row, and the counter's name follows.
    let _: () = con.set(&r, menu("Big roll")).expect("rename");
    wait_until(WAIT, "the renamed product", || {
        let n = count(
            &db,
            "SELECT count(*) FROM cdm.user_product_counters WHERE product_name = 'Big roll'",
        );
        (n == 1).then_some(())
    });
    wait_until(WAIT, "a second name satellite row", || {
        (count(&db, "SELECT count(*) FROM dds.s_product_names") == 2).then_some(())
    });

    // CLOSED → CANCELLED: the counters go back to 0 (rows deleted); an older version
    // arriving afterwards changes nothing.
    let cancelled = order_json(1, &r, &u, &p, "CANCELLED", "2022-11-19 17:00:00");
    produce_raw(&topic, 2, &[(Some(b"1"), Some(cancelled.as_bytes()))]);
    wait_until(WAIT, "the counters to drop to 0", || {
        let n = count(&db, "SELECT count(*) FROM cdm.user_product_counters")
            + count(&db, "SELECT count(*) FROM cdm.user_category_counters");
        (n == 0).then_some(())
    });
    wait_tags("the cancelled order's tag to go", &[]);
    wait_until(WAIT, "the summary without the cancelled order", || {
        let (summary, truth) = summary_and_truth(&db);
        (summary.is_empty() && truth.is_empty()).then_some(())
    });
    let marks = produce_raw(&topic, 2, &[(Some(b"1"), Some(closed.as_bytes()))]);
    wait_for_progress(&db, "orders", &topic, &marks, WAIT);
    assert_eq!(
        count(&db, "SELECT count(*) FROM cdm.user_product_counters"),
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM dds.s_order_status WHERE status = 'CANCELLED'"
        ),
        1
    );
    assert_eq!(count(&db, "SELECT count(*) FROM dds.s_order_status"), 2);
    terminate(job);
    // The enriched order was published when it completed, renamed and cancelled; the
    // counter changes end at nothing.
    let statuses: Vec<(String, String)> = consume(&stg_topic)
        .into_iter()
        .map(|m| {
            let v: serde_json::Value =
                serde_json::from_str(&m.value.unwrap_or_default()).expect("json");
            let p = &v["payload"];
            (
                p["status"].as_str().unwrap_or_default().to_string(),
                p["products"][0]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let expected = [
        ("CLOSED", "Roll"),
        ("CLOSED", "Big roll"),
        ("CANCELLED", "Big roll"),
    ];
    assert_eq!(
        statuses,
        expected.map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(counters_from_topic(&dds_topic), (Vec::new(), Vec::new()));
    assert_eq!(consume(&dds_topic).len(), 3);
    // Each tag's changes in order (a key's messages share a partition): the row, then a
    // tombstone when it went.
    let changes = |tag: &str| -> Vec<bool> {
        let suffix = format!(":{tag}");
        consume(&tag_topic)
            .into_iter()
            .filter(|m| m.key.as_deref().is_some_and(|k| k.ends_with(&suffix)))
            .map(|m| m.value.is_some())
            .collect()
    };
    assert_eq!(changes("bakery"), [true, false, true, false]);
    assert_eq!(changes("roll fan"), [true, false]);
}

const WAIT: Duration = Duration::from_secs(40);

#[test]
fn two_processes_write_the_same_tables_as_one() {
    let prefix = prefix("ordscale");
    produce_orders(&prefix, "1500");
    let one = database("ord_one");
    run_bounded(&one, &prefix, &[]);

    let two = database("ord_two");
    let children: Vec<_> = two_process_cluster(&prefix)
        .into_iter()
        .map(|cluster| {
            let mut args = orders_args(&two, &prefix);
            args.push("--stop-at-end".to_string());
            args.extend(cluster);
            spawn(&args)
        })
        .collect();
    for child in children {
        assert_success(&wait(child, 3 * MINUTE));
    }
    assert_eq!(dump(&two, false), dump(&one, false));
}

#[test]
fn a_backlog_read_in_small_rounds_ends_equal_to_the_sql_ground_truth() {
    for workers in ["1", "2"] {
        let prefix = prefix(&format!("ordrounds{workers}"));
        produce_orders(&prefix, "1500");
        let db = database(&format!("ord_rounds{workers}"));
        let stg_topic = format!("{prefix}.stg");
        let rounds = ["--round-records", "150", "--workers", workers];
        let mut args = rounds.to_vec();
        args.extend(["--stg-topic", &stg_topic]);
        run_bounded(&db, &prefix, &args);
        // The backlog was read in rounds: orders were completed at many logical times.
        let times = count(&db, "SELECT count(DISTINCT load_dt) FROM dds.h_order");
        assert!(times >= 5, "orders completed at {times} times");
        // Everything ends as one step would have left it.
        let (topic, keys) = (format!("{prefix}.orders"), format!("{prefix}*"));
        assert_eq!(count(&db, "SELECT count(*) FROM stg.order_events"), 1500);
        assert_eq!(layer_differences(&db, &topic, &keys), Vec::<String>::new());
        let (products, categories) = cdm_counters(&db);
        assert_eq!((products, categories), ground_truth(&db, &topic, &keys));
        let (tags, truth) = tags_and_truth(&db);
        assert_eq!(tags, truth);
        let (summary, truth) = summary_and_truth(&db);
        assert_eq!(summary, truth);
        // Every order's last message on the STG topic is its final version.
        let mut last = std::collections::BTreeMap::new();
        for message in consume(&stg_topic) {
            last.insert(message.key, message.value);
        }
        assert_eq!(last.len(), 1500);
        let statuses: Vec<String> = (last.values())
            .map(|value| {
                let value: serde_json::Value =
                    serde_json::from_str(value.as_deref().unwrap_or_default()).expect("json");
                format!("{}:{}", value["object_id"], value["payload"]["status"])
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let stg_statuses: Vec<String> = pg(&db)
            .query(
                "SELECT object_id || ':\"' || (payload::jsonb->>'final_status') || '\"' \
                 FROM stg.order_events ORDER BY 1",
                &[],
            )
            .expect("stg")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(statuses, stg_statuses);

        // The same data delivered again, read in rounds after the replay: nothing changes.
        let before = dump(&db, true);
        produce_orders(&prefix, "1500");
        run_bounded(&db, &prefix, &rounds);
        assert_eq!(dump(&db, true), before);
    }
}
