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

/// Header `name` of `message`.
fn header<'m>(message: &'m dishflow::kafka::consumer::ConsumedMessage, name: &str) -> &'m str {
    message
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("header {name} in {message:?}"))
}

/// Asserts that the dead letters of `topic` carry exactly the reasons `expected` (in any
/// order).
fn assert_reasons<'r>(topic: &str, expected: impl Iterator<Item = &'r str>) {
    let mut reasons: Vec<String> = (dead_letter_reasons(topic).into_iter())
        .map(|(_, reason)| reason)
        .collect();
    reasons.sort();
    let mut expected: Vec<&str> = expected.collect();
    expected.sort();
    assert_eq!(reasons, expected);
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

/// Produces the campaign `bad` (its key: `id`) between two good ones of R0 and R1, runs
/// the promos job on `db` and asserts that the 9 good drafts and rows are written and `bad`
/// is dead-lettered once; runs it again (it resumes after what was read) and asserts that
/// nothing is written twice. Returns the dead letter.
fn one_bad_campaign(
    db: &str,
    prefix: &str,
    id: &str,
    bad: &str,
) -> dishflow::kafka::consumer::ConsumedMessage {
    let now = now_secs();
    let good0 = campaign_json("good0", R0, now - 10, now + 3600);
    let good1 = campaign_json("good1", R1, now - 10, now + 3600);
    produce_raw(
        &format!("{prefix}.in"),
        2,
        &[
            (Some(b"a"), Some(good0.as_bytes())),
            (Some(id.as_bytes()), Some(bad.as_bytes())),
            (Some(b"b"), Some(good1.as_bytes())),
        ],
    );
    let args = promos_args(db, prefix);
    run_to_end(&args);
    // R0 has 8 distinct subscribers, R1 one (a duplicated row).
    let drafts = draft_keys(&format!("{prefix}.out"));
    assert_eq!(drafts.len(), 9, "{drafts:?}");
    assert!(drafts.iter().all(|k| !k.starts_with(&format!("{id}:"))));
    assert_eq!(feedback_rows(db).len(), 9);
    let mut dead = consume(&format!("{prefix}.dlq"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].key.as_deref(), Some(id));

    run_to_end(&args);
    assert_eq!(draft_keys(&format!("{prefix}.out")), drafts);
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), 1);
    assert_eq!(feedback_rows(db).len(), 9);
    dead.remove(0)
}

#[test]
fn a_campaign_with_a_nul_character_is_dead_lettered_and_the_others_are_drafted() {
    let db = database("poison_promos");
    seed_subscribers(&db);
    let now = now_secs();
    let poison = campaign_version_json("poison", R0, (now - 10, now + 3600), now, "bad\\u0000text");
    let dead = one_bad_campaign(&db, &prefix("poisonpromos"), "poison", &poison);
    assert_eq!(
        header(&dead, "dishflow.error.reason"),
        "invalid:nul_character:adv_campaign_content"
    );
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
    run_to_end(&args);

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
    run_to_end(&args);
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), 8);
    assert_eq!(draft_keys(&format!("{prefix}.out")), drafts);
}

/// A CLOSED order `id` of user `u` at restaurant `r` with one line of product `p`.
fn closed_order(id: i64, r: &str, u: &str, p: &str) -> String {
    order_json(id, r, u, p, "CLOSED", "2022-11-19 16:06:36")
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
        closed_order(1, &format!("{prefix}_good"), &user, &format!("{prefix}_p1")),
        closed_order(2, &format!("{prefix}_bad"), &user, &format!("{prefix}_p2")),
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
    let nul_order = closed_order(3, &format!("{prefix}_good"), &format!("{prefix}_u"), "p")
        .replace("\"CLOSED\"", "\"CLO\\u0000SED\"");
    produce_raw(
        &format!("{prefix}.orders"),
        2,
        &[(Some(b"nul-order"), Some(nul_order.as_bytes()))],
    );
    let args = orders_args(&db, &prefix);
    run_to_end(&args);

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
    run_to_end(&args);
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), 2);
    assert_eq!(product_counters(&db), [("Roll".to_string(), 1)]);

    // Once the entry is fixed, the waiting order completes.
    let _: () = redis()
        .set(
            &bad,
            restaurant_json(&bad, &format!("{prefix}_p2"), "Fixed"),
        )
        .expect("set");
    run_to_end(&args);
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
    run_to_end(&args);

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

    run_to_end(&args);
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

#[test]
fn a_campaign_too_large_for_the_notification_topic_is_dead_lettered_once() {
    let db = database("poison_large");
    seed_subscribers(&db);
    let now = now_secs();
    // 1.5 MB of content: the promo topic takes it, a draft of it is larger than the
    // producer's message.max.bytes (1 MB).
    let content = "x".repeat(1_500_000);
    let big = campaign_version_json("big", R0, (now - 10, now + 3600), now, &content);
    let dead = one_bad_campaign(&db, &prefix("poisonlarge"), "big", &big);
    assert_eq!(header(&dead, "dishflow.error.reason"), "too_large:draft");
    // The dead letter itself did not fit: a cut copy, and the original size.
    assert_eq!(header(&dead, "dishflow.truncated"), big.len().to_string());
    let kept = dead.value.as_deref().expect("value");
    assert!(kept.len() < 1_000_000 && big.starts_with(kept));
}

#[test]
fn a_draft_too_large_for_its_topic_is_dead_lettered_and_the_rest_of_its_batch_delivered() {
    let db = database("poison_bigdraft");
    seed_subscribers(&db);
    let prefix = prefix("poisonbigdraft");
    // A campaign whose drafts just fit a 200 kB limit with the usual 36-character client
    // ids (about 100 bytes to spare), and two more subscribers of its restaurant: a client
    // id of 1,000 characters (its draft does not fit the topic) and one of 1.1 MB (its
    // feedback row does not fit the table's unique index).
    let limit = 200_000;
    let now = now_secs();
    let skeleton = campaign_version_json("big", R0, (now - 10, now + 3600), now, "");
    let room = limit
        - 113
        - "big:".len()
        - skeleton.len()
        - r#","client_id":"","trigger_datetime_created":1234567890"#.len();
    let content = "x".repeat(room - 100);
    let big = campaign_version_json("big", R0, (now - 10, now + 3600), now, &content);
    pg(&db)
        .batch_execute(&format!(
            "INSERT INTO public.subscribers_restaurants (client_id, restaurant_id) \
             VALUES (repeat('l', 1000), '{R0}'), (repeat('h', 1100000), '{R0}')"
        ))
        .expect("two subscribers");
    let good1 = campaign_json("good1", R1, now - 10, now + 3600);
    produce_values(&format!("{prefix}.in"), 1, &[big.as_str(), good1.as_str()]);
    let mut args = promos_args(&db, &prefix);
    args.extend([
        "--kafka-property".into(),
        format!("message.max.bytes={limit}"),
    ]);
    run_to_end(&args);

    let drafts = draft_keys(&format!("{prefix}.out"));
    assert_eq!(drafts.len(), 9, "8 clients of R0 and 1 of R1: {drafts:?}");
    assert_eq!(
        feedback_rows(&db).len(),
        9,
        "nothing written for the refused drafts"
    );
    let mut dead = consume(&format!("{prefix}.dlq"));
    assert_eq!(dead.len(), 2, "{dead:?}");
    dead.sort_by_key(|m| header(m, "dishflow.error.reason").to_string());
    assert_eq!(
        header(&dead[0], "dishflow.error.reason"),
        "message_too_large"
    );
    assert_eq!(
        header(&dead[1], "dishflow.error.reason"),
        "sink_refused:54000"
    );
    for message in &dead {
        assert_eq!(header(message, "dishflow.sink"), "DraftsSink");
        // Each holds the whole campaign: cut to fit the dead-letter topic.
        assert!(
            header(message, "dishflow.truncated")
                .parse::<usize>()
                .expect("a size")
                > limit
        );
        assert!(message.value.as_deref().expect("a value").len() < limit);
    }

    run_to_end(&args);
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), 2);
    assert_eq!(draft_keys(&format!("{prefix}.out")), drafts);
}

#[test]
fn events_at_the_ends_of_the_calendar_and_of_their_types_are_dead_lettered_and_replayed() {
    let db = database("poison_geo");
    let prefix = prefix("poisongeo");
    let at = "\"lat\":-33.87,\"lon\":151.21";
    let reaction = |time: &str| {
        format!(
            r#"{{"event_type":"reaction","event":{{"reaction_from":7,"datetime":"{time}"}},{at}}}"#
        )
    };
    let message = |user: &str, id: &str, time: &str, coordinates: &str| {
        format!(
            r#"{{"event_type":"message","event":{{"message_id":{id},"message_from":{user},
                "message_ts":"{time}","message_channel_to":3}},{coordinates}}}"#
        )
    };
    let poison = [
        (
            message("7", "2", "-262143-01-01 00:00:00", at),
            "out_of_range:event.message_ts",
        ),
        (
            reaction("-262143-01-01 00:00:00"),
            "out_of_range:event.datetime",
        ),
        (
            reaction("+262142-12-31 12:00:00"),
            "out_of_range:event.datetime",
        ),
        (reaction("+262143-12-31 23:59:59"), "invalid:event.datetime"),
        (
            reaction("-4713-06-01 00:00:00"),
            "out_of_range:event.datetime",
        ),
        (reaction("2022-02-30 00:00:00"), "invalid:event.datetime"),
        (
            message("7", "9223372036854775808", "2022-05-02 10:00:00", at),
            "invalid:event.message_id",
        ),
        (
            message("\"99999999999999999999\"", "3", "2022-05-02 10:00:00", at),
            "out_of_range:event.message_from",
        ),
        (
            message("7", "4", "2022-05-02 10:00:00", "\"lat\":1e300,\"lon\":0"),
            "out_of_range:lat/lon",
        ),
    ];
    // Accepted: one good event, and two at the ends of what the marts can hold.
    let good = [
        message("7", "1", "2022-05-02 10:00:00", at),
        message("8", "5", "+262142-12-30 12:00:00", at),
        message(
            "9223372036854775807",
            "-9223372036854775808",
            "-4712-12-02 00:00:00",
            at,
        ),
    ];
    let values: Vec<&str> = (good.iter().map(String::as_str))
        .chain(poison.iter().map(|(value, _)| value.as_str()))
        .collect();
    produce_values(&format!("{prefix}.events"), 2, &values);
    let args = geo_args(&db, &prefix, &[] as &[&str]);
    run_to_end(&args);

    let users: Vec<i64> = pg(&db)
        .query("SELECT user_id FROM mart.geo_users ORDER BY 1", &[])
        .expect("users")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(users, [7, 8, i64::MAX]);
    let weeks: i64 = pg(&db)
        .query_one("SELECT count(DISTINCT week) FROM mart.geo_zones", &[])
        .expect("zones")
        .get(0);
    assert_eq!(weeks, 3);
    assert_reasons(
        &format!("{prefix}.dlq"),
        poison.iter().map(|(_, reason)| *reason),
    );

    // The geo job replays its topic at every start: the replay exits 0 too.
    run_to_end(&args);
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), poison.len());
}

#[test]
fn a_city_the_job_cannot_use_is_left_out_and_later_cities_still_applied() {
    let db = database("poison_cities");
    let prefix = prefix("poisoncities");
    assert_success(&dishflow(
        ["setup", "--job", "geo", "--postgres-url", &db],
        MINUTE,
    ));
    // The table's owner may not have setup's CHECKs: only the job stands between a bad row
    // and the marts.
    pg(&db)
        .batch_execute(
            "ALTER TABLE geo.cities DROP CONSTRAINT cities_lat_check, \
             DROP CONSTRAINT cities_lng_check",
        )
        .expect("drop the checks");
    let near_sydney = (-33.8695, 151.2094);
    produce_values(
        &format!("{prefix}.events"),
        1,
        &[geo_message(
            1,
            2,
            None,
            "2022-05-03 10:00:00",
            Some(near_sydney),
        )],
    );
    let job = spawn(geo_args(&db, &prefix, &["--cdc-poll-ms", "20"]));
    let act_city = |db: &str| -> Option<String> {
        let rows = pg(db)
            .query("SELECT act_city FROM mart.geo_users WHERE user_id = 2", &[])
            .ok()?;
        rows.first().map(|r| r.get(0))
    };
    wait_until(MINUTE, "the user in Sydney", || {
        (act_city(&db).as_deref() == Some("Sydney")).then_some(())
    });
    let mut client = pg(&db);
    client
        .execute(
            "INSERT INTO geo.cities VALUES (97, 'Nowhere', 'NaN', 151.2094, 'Australia/Sydney')",
            &[],
        )
        .expect("a NaN city");
    client
        .execute(
            "INSERT INTO geo.cities VALUES (98, 'Olympus', -33.8695, 151.2094, 'Mars/Olympus_Mons')",
            &[],
        )
        .expect("a city in no time zone");
    client
        .execute(
            "INSERT INTO geo.cities VALUES (99, 'Harbour', -33.867, 151.2094, 'Australia/Sydney')",
            &[],
        )
        .expect("a good city");
    wait_until(MINUTE, "the good city to be applied", || {
        (act_city(&db).as_deref() == Some("Harbour")).then_some(())
    });
    let out = terminate(job);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left_out: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("row left out"))
        .collect();
    assert_eq!(left_out.len(), 2, "{stderr}");
    assert!(
        left_out[0].contains("97") && left_out[1].contains("98"),
        "{left_out:?}"
    );
}

#[test]
fn orders_at_the_ends_of_their_types_are_written_or_dead_lettered_and_replayed() {
    let db = database("poison_extreme_orders");
    let prefix = prefix("poisonextreme");
    orders_fixture(&prefix, "Bun");
    let (r, u, p) = (
        format!("{prefix}_good"),
        format!("{prefix}_u"),
        format!("{prefix}_p1"),
    );
    let base = closed_order(10, &r, &u, &p);
    let with = |from: &str, to: &str| base.replace(from, to);
    // Accepted: the ends of what each column holds.
    let accepted = [
        with("\"object_id\": 10", "\"object_id\": 2147483647").replace(
            "\"date\": \"2022-11-19 16:00:00\"",
            "\"date\": \"-4712-11-24 00:00:00\"",
        ),
        with("\"object_id\": 10", "\"object_id\": 11")
            .replace(
                "\"update_ts\": \"2022-11-19 16:06:36\"",
                "\"update_ts\": \"+262142-12-31 23:59:59\"",
            )
            .replace("\"cost\": 180", "\"cost\": 99999999999999.98")
            .replace("\"quantity\": 1", "\"quantity\": 9223372036854775807"),
    ];
    let poison = [
        (
            with("\"object_id\": 10", "\"object_id\": 2147483648"),
            "out_of_range:object_id",
        ),
        (
            with("\"object_id\": 10", "\"object_id\": -9223372036854775809"),
            "wrong_type:object_id",
        ),
        (
            with(
                "\"date\": \"2022-11-19 16:00:00\"",
                "\"date\": \"-262143-01-01 00:00:00\"",
            ),
            "out_of_range:payload.date",
        ),
        (
            with(
                "\"date\": \"2022-11-19 16:00:00\"",
                "\"date\": \"+262143-12-31 23:59:59\"",
            ),
            "invalid:payload.date",
        ),
        (
            with("\"quantity\": 1", "\"quantity\": -9223372036854775808"),
            "invalid:payload.order_items.quantity",
        ),
        (
            with("\"cost\": 180", "\"cost\": -1e300"),
            "invalid:payload.cost",
        ),
        (
            with("\"cost\": 180", "\"cost\": 1e300"),
            "out_of_range:payload.cost",
        ),
        (
            with("\"price\": 180", "\"price\": 1e14"),
            "out_of_range:payload.order_items.price",
        ),
    ];
    let values: Vec<&str> = (accepted.iter().map(String::as_str))
        .chain(poison.iter().map(|(v, _)| v.as_str()))
        .collect();
    produce_values(&format!("{prefix}.orders"), 2, &values);
    let args = orders_args(&db, &prefix);
    run_to_end(&args);

    let stg: i64 = pg(&db)
        .query_one("SELECT count(*) FROM stg.order_events", &[])
        .expect("stg")
        .get(0);
    assert_eq!(
        stg, 4,
        "the fixture's two orders and the two accepted extremes"
    );
    assert_reasons(
        &format!("{prefix}.dlq"),
        poison.iter().map(|(_, reason)| *reason),
    );

    run_to_end(&args);
    assert_eq!(consume(&format!("{prefix}.dlq")).len(), poison.len());
}
