//! One value that Postgres cannot store never stops a job: a poison value in each kind of
//! input (a Kafka field, a Redis field) and a value the table's own constraint refuses,
//! each mixed into valid data. Every job run is bounded and must exit 0 with every valid
//! output written and the poison dead-lettered once; a second run writes nothing again.
//! Run via `scripts/test.sh`.

#![cfg(feature = "integration")]

use std::time::Duration;

use dishflow_testkit::*;
use redis::Commands;

const MINUTE: Duration = Duration::from_secs(60);
const R0: &str = "123e4567-e89b-12d3-a456-426614174000";
const R1: &str = "123e4567-e89b-12d3-a456-426614174001";

fn run(args: &[String]) {
    let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
    argv.push("--stop-at-end");
    assert_success(&dishflow(&argv, 2 * MINUTE));
}

/// Header `name` of `message`.
fn header<'m>(message: &'m dishflow::kafka::consumer::ConsumedMessage, name: &str) -> &'m str {
    message
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("header {name} in {message:?}"))
}

/// Drafts of the notification topic as (campaign, client) keys, sorted.
fn draft_keys(topic: &str) -> Vec<String> {
    let mut keys: Vec<String> = consume(topic)
        .into_iter()
        .map(|m| m.key.expect("key"))
        .collect();
    keys.sort();
    keys
}

#[test]
fn a_campaign_with_a_nul_character_is_dead_lettered_and_the_others_are_drafted() {
    let db = database("poison_promos");
    seed_subscribers(&db);
    let prefix = prefix("poisonpromos");
    let now = now_secs();
    let poison = campaign_version_json("poison", R0, (now - 10, now + 3600), now, "bad\\u0000text");
    let good0 = campaign_json("good0", R0, now - 10, now + 3600);
    let good1 = campaign_json("good1", R1, now - 10, now + 3600);
    produce_raw(
        &format!("{prefix}.in"),
        2,
        &[
            (Some(b"a"), Some(good0.as_bytes())),
            (Some(b"poison"), Some(poison.as_bytes())),
            (Some(b"b"), Some(good1.as_bytes())),
        ],
    );
    let args = promos_args(&db, &prefix);
    run(&args);

    // R0 has 8 distinct subscribers, R1 one (a duplicated row).
    let drafts = draft_keys(&format!("{prefix}.out"));
    assert_eq!(drafts.len(), 9, "{drafts:?}");
    assert!(drafts.iter().all(|k| !k.starts_with("poison:")));
    assert_eq!(feedback_rows(&db).len(), 9);
    let dead = consume(&format!("{prefix}.dlq"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].key.as_deref(), Some("poison"));
    assert_eq!(
        header(&dead[0], "dishflow.error.reason"),
        "invalid:nul_character:adv_campaign_content"
    );

    // A second run resumes after what was read: nothing is written again.
    run(&args);
    assert_eq!(draft_keys(&format!("{prefix}.out")), drafts);
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), 1);
    assert_eq!(feedback_rows(&db).len(), 9);
}

#[test]
fn drafts_the_feedback_table_refuses_are_dead_lettered_once_and_the_rest_written() {
    let db = database("poison_refused");
    seed_subscribers(&db);
    let prefix = prefix("poisonrefused");
    // The table belongs to the analysts, who restrict what it may hold: a constraint
    // dishflow does not know, so only Postgres can refuse the value.
    let setup = dishflow(["setup", "--postgres-url", &db], MINUTE);
    assert_success(&setup);
    pg(&db)
        .batch_execute(
            "ALTER TABLE public.subscribers_feedback ADD CONSTRAINT content_not_too_long \
             CHECK (length(adv_campaign_content) <= 20)",
        )
        .expect("constraint");
    let now = now_secs();
    let long = "a promotion text far longer than the analysts allow";
    let refused = campaign_version_json("long", R0, (now - 10, now + 3600), now, long);
    let good0 = campaign_json("good0", R0, now - 10, now + 3600);
    let good1 = campaign_json("good1", R1, now - 10, now + 3600);
    produce_raw(
        &format!("{prefix}.in"),
        1,
        &[
            (Some(b"a"), Some(good0.as_bytes())),
            (Some(b"long"), Some(refused.as_bytes())),
            (Some(b"b"), Some(good1.as_bytes())),
        ],
    );
    let args = promos_args(&db, &prefix);
    run(&args);

    let drafts = draft_keys(&format!("{prefix}.out"));
    assert_eq!(drafts.len(), 9, "{drafts:?}");
    assert!(drafts.iter().all(|k| !k.starts_with("long:")));
    assert_eq!(feedback_rows(&db).len(), 9);
    // One dead letter per refused draft (the campaign's 8 clients), with what and why.
    let dead = consume(&format!("{prefix}.dlq"));
    assert_eq!(dead.len(), 8, "{dead:?}");
    let mut clients = std::collections::BTreeSet::new();
    for message in &dead {
        assert_eq!(
            header(message, "dishflow.error.reason"),
            "sink_refused:23514"
        );
        assert_eq!(header(message, "dishflow.sink"), "DraftsSink");
        let value: serde_json::Value =
            serde_json::from_str(message.value.as_deref().expect("value")).expect("json");
        assert_eq!(value["update"]["campaign"]["adv_campaign_content"], long);
        assert!(
            value["error"]
                .as_str()
                .is_some_and(|e| e.contains("content_not_too_long")),
            "{value}"
        );
        clients.insert(
            value["update"]["client_id"]
                .as_str()
                .expect("client")
                .to_string(),
        );
    }
    assert_eq!(clients.len(), 8);
    let left: i64 = pg(&db)
        .query_one("SELECT count(*) FROM dishflow_outbox", &[])
        .expect("outbox")
        .get(0);
    assert_eq!(left, 0, "outbox rows left after a bounded run");

    // A second run replays the campaigns in force: the refused drafts are found again and
    // not dead-lettered twice.
    run(&args);
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), 8);
    assert_eq!(draft_keys(&format!("{prefix}.out")), drafts);
}

/// Arguments of an orders run on `db`, topics `<prefix>.orders/.dlq`, Redis keys `<prefix>*`.
fn orders_args(db: &str, prefix: &str) -> Vec<String> {
    [
        "orders",
        "--brokers",
        &brokers(),
        "--postgres-url",
        db,
        "--redis-url",
        &redis_url(),
        "--redis-keys",
        &format!("{prefix}*"),
        "--order-topic",
        &format!("{prefix}.orders"),
        "--dead-letter-topic",
        &format!("{prefix}.dlq"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A CLOSED order `id` of user `u` at restaurant `r` with one line of product `p`.
fn order_json(id: i64, r: &str, u: &str, p: &str) -> String {
    format!(
        r#"{{"object_id": {id}, "object_type": "order", "sent_dttm": "2022-11-19 16:06:36",
            "payload": {{"restaurant": {{"id": "{r}"}}, "date": "2022-11-19 16:00:00",
            "user": {{"id": "{u}"}}, "order_items": [{{"id": "{p}", "name": "x", "price": 180,
            "quantity": 1}}], "bonus_payment": 0, "cost": 180, "payment": 180,
            "bonus_grant": 0, "statuses": [], "final_status": "CLOSED",
            "update_ts": "2022-11-19 16:06:36"}}}}"#
    )
}

/// A restaurant entry `r` whose menu has product `p` named `name` (JSON-escaped).
fn restaurant_json(r: &str, p: &str, name: &str) -> String {
    format!(
        r#"{{"_id": "{r}", "name": "Coffee", "menu": [{{"_id": "{p}", "name": "{name}",
            "price": 180, "category": "Bakery"}}], "update_ts_utc": "2022-11-19 10:00:00"}}"#
    )
}

/// (product name, order count) of every product counter.
fn product_counters(db: &str) -> Vec<(String, i32)> {
    let mut client = pg(db);
    client
        .query(
            "SELECT product_name, order_cnt FROM cdm.user_product_counters ORDER BY 1",
            &[],
        )
        .expect("counters")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Sets up one user, restaurants `<prefix>_good` (product "Roll") and `<prefix>_bad`
/// (product named `bad_name`), and one CLOSED order at each.
fn orders_fixture(prefix: &str, bad_name: &str) {
    let mut con = redis();
    let user = format!("{prefix}_u");
    let _: () = con
        .set(
            &user,
            format!(r#"{{"_id": "{user}", "name": "Olga", "login": "olga"}}"#),
        )
        .expect("set");
    for (r, p, name) in [("good", "p1", "Roll"), ("bad", "p2", bad_name)] {
        let r = format!("{prefix}_{r}");
        let _: () = con
            .set(&r, restaurant_json(&r, &format!("{prefix}_{p}"), name))
            .expect("set");
    }
    let orders = [
        order_json(1, &format!("{prefix}_good"), &user, &format!("{prefix}_p1")),
        order_json(2, &format!("{prefix}_bad"), &user, &format!("{prefix}_p2")),
    ];
    produce_values(
        &format!("{prefix}.orders"),
        2,
        &[orders[0].as_str(), orders[1].as_str()],
    );
}

#[test]
fn a_redis_entry_with_a_nul_character_is_absent_and_dead_lettered_once() {
    let db = database("poison_redis");
    let prefix = prefix("poisonredis");
    orders_fixture(&prefix, "bad\\u0000name");
    // And an order message with a NUL character: a Kafka record's dead letter.
    let nul_order = order_json(3, &format!("{prefix}_good"), &format!("{prefix}_u"), "p")
        .replace("\"CLOSED\"", "\"CLO\\u0000SED\"");
    produce_raw(
        &format!("{prefix}.orders"),
        2,
        &[(Some(b"nul-order"), Some(nul_order.as_bytes()))],
    );
    let args = orders_args(&db, &prefix);
    run(&args);

    // The order at the good restaurant counts; the one at the bad restaurant waits for a
    // valid entry (it is in STG, not in the counters).
    assert_eq!(product_counters(&db), [("Roll".to_string(), 1)]);
    let stg: i64 = pg(&db)
        .query_one("SELECT count(*) FROM stg.order_events", &[])
        .expect("stg")
        .get(0);
    assert_eq!(stg, 2);
    let mut dead = consume(&format!("{prefix}.dlq"));
    assert_eq!(dead.len(), 2, "{dead:?}");
    // Sorted by key: "nul-order" comes before "<prefix>_bad".
    dead.sort_by_key(|m| m.key.clone());
    let bad = format!("{prefix}_bad");
    assert_eq!(dead[0].key.as_deref(), Some("nul-order"));
    assert_eq!(
        header(&dead[0], "dishflow.error.reason"),
        "invalid:nul_character:payload.final_status"
    );
    assert_eq!(
        header(&dead[0], "dishflow.source.topic"),
        format!("{prefix}.orders")
    );
    assert_eq!(dead[1].key.as_deref(), Some(bad.as_str()));
    assert_eq!(header(&dead[1], "dishflow.source.redis_key"), bad);
    assert_eq!(
        header(&dead[1], "dishflow.error.reason"),
        "invalid:nul_character:menu.name"
    );

    // A second run reads Redis again: the same bad value is not dead-lettered twice.
    run(&args);
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), 2);
    assert_eq!(product_counters(&db), [("Roll".to_string(), 1)]);

    // Once the entry is fixed, the waiting order completes.
    let _: () = redis()
        .set(
            &bad,
            restaurant_json(&bad, &format!("{prefix}_p2"), "Fixed"),
        )
        .expect("set");
    run(&args);
    assert_eq!(
        product_counters(&db),
        [("Fixed".to_string(), 1), ("Roll".to_string(), 1)]
    );
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), 2);
}

#[test]
fn a_counter_the_table_refuses_is_dead_lettered_and_every_other_row_written() {
    let db = database("poison_cdm");
    let prefix = prefix("poisoncdm");
    orders_fixture(&prefix, "Forbidden");
    let setup = dishflow(["setup", "--job", "orders", "--postgres-url", &db], MINUTE);
    assert_success(&setup);
    pg(&db)
        .batch_execute(
            "ALTER TABLE cdm.user_product_counters ADD CONSTRAINT no_forbidden \
             CHECK (product_name <> 'Forbidden')",
        )
        .expect("constraint");
    let args = orders_args(&db, &prefix);
    run(&args);

    assert_eq!(product_counters(&db), [("Roll".to_string(), 1)]);
    // The same user's category counter was in the refused counter's batch: written.
    let categories: i64 = pg(&db)
        .query_one(
            "SELECT order_cnt::int8 FROM cdm.user_category_counters",
            &[],
        )
        .expect("one category counter")
        .get(0);
    assert_eq!(categories, 2);
    let dead = consume(&format!("{prefix}.dlq"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(header(&dead[0], "dishflow.sink"), "CdmSink");
    assert_eq!(
        header(&dead[0], "dishflow.error.reason"),
        "sink_refused:23514"
    );
    let value: serde_json::Value =
        serde_json::from_str(dead[0].value.as_deref().expect("value")).expect("json");
    assert_eq!(value["update"]["name"], "Forbidden");

    run(&args);
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), 1);
    assert_eq!(product_counters(&db), [("Roll".to_string(), 1)]);
}

#[test]
fn a_table_no_row_can_be_written_to_stops_the_job_with_what_to_fix() {
    let db = database("poison_schema");
    seed_subscribers(&db);
    let prefix = prefix("poisonschema");
    assert_success(&dishflow(["setup", "--postgres-url", &db], MINUTE));
    pg(&db)
        .batch_execute("ALTER TABLE public.subscribers_feedback ADD COLUMN channel text NOT NULL")
        .expect("column");
    let now = now_secs();
    let campaign = campaign_json("c", R1, now - 10, now + 3600);
    produce_values(&format!("{prefix}.in"), 1, &[campaign.as_str()]);
    let mut argv = promos_args(&db, &prefix);
    argv.push("--stop-at-end".into());
    let out = dishflow(&argv, MINUTE);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "dishflow: error: sink DraftsSink: the table has a NOT NULL column \
                          that dishflow does not fill"
        ) && last.contains("channel"),
        "{stderr}"
    );
    // Nothing was dead-lettered: the data was not the problem.
    assert!(consume(&format!("{prefix}.dlq")).is_empty());
}
