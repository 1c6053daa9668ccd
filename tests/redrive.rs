//! `dishflow redrive` end to end: records dead-lettered by the promos and geo jobs are
//! re-published — to their source topic, or with `--to` to the topic they were meant for —
//! each once across runs and selections; the drafts they make appear once; a record that
//! is still bad goes back to the dead-letter topic once and stays there. Run via
//! `scripts/test.sh`.

#![cfg(feature = "integration")]

use std::collections::BTreeMap;
use std::time::Duration;

use dishflow::kafka::consumer::ConsumedMessage;
use dishflow_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);
const R0: &str = "123e4567-e89b-12d3-a456-426614174000";
const R1: &str = "123e4567-e89b-12d3-a456-426614174001";

/// `dishflow redrive` of `dlq` with `extra` flags, bounded; its summary line.
fn redrive(db: &str, dlq: &str, extra: &[&str]) -> String {
    let mut argv = vec![
        "redrive",
        "--brokers",
        &brokers(),
        "--postgres-url",
        db,
        "--dead-letter-topic",
        dlq,
        "--stop-at-end",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    argv.extend(extra.iter().map(|s| s.to_string()));
    let out = dishflow(&argv, 2 * MINUTE);
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Header `name` of `message`, if any.
fn header<'m>(message: &'m ConsumedMessage, name: &str) -> Option<&'m str> {
    (message.headers.iter())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Dead letters of `dlq` per reason: how many.
fn reasons(dlq: &str) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for (_, reason) in dead_letter_reasons(dlq) {
        *count.entry(reason).or_default() += 1;
    }
    count
}

/// The draft keys a campaign of `restaurant` must give: one per distinct subscriber, from
/// the table itself.
fn expected_drafts(db: &str, campaign: &str, restaurant: &str) -> Vec<String> {
    pg(db)
        .query(
            "SELECT DISTINCT client_id FROM public.subscribers_restaurants \
             WHERE restaurant_id = $1",
            &[&restaurant],
        )
        .expect("subscribers")
        .iter()
        .map(|r| format!("{campaign}:{}", r.get::<_, String>(0)))
        .collect()
}

#[test]
fn dead_letters_go_back_once_and_a_still_bad_record_only_once() {
    let db = database("redrive");
    seed_subscribers(&db);
    assert_success(&dishflow(["setup", "--postgres-url", &db], MINUTE));
    let prefix = prefix("redrive");
    let (promos_in, events, dlq) = (
        format!("{prefix}.in"),
        format!("{prefix}.events"),
        format!("{prefix}.dlq"),
    );
    let now = now_secs();
    // Two campaigns sent to the geo job's topic by mistake, and on the promos topic one
    // campaign and one record that is not JSON (with a header of its producer's).
    let lost0 = campaign_json("lost0", R0, now - 10, now + 3600);
    let lost1 = campaign_json("lost1", R1, now - 10, now + 3600);
    let good = campaign_json("good", R1, now - 10, now + 3600);
    produce_raw(
        &events,
        2,
        &[
            (Some(b"lost0"), Some(lost0.as_bytes())),
            (Some(b"lost1"), Some(lost1.as_bytes())),
        ],
    );
    produce_raw(&promos_in, 2, &[(Some(b"good"), Some(good.as_bytes()))]);
    produce_with_headers(&promos_in, b"oops", b"{oops", &[("trace", "t-1")]);
    let promos = promos_args(&db, &prefix);
    let geo = geo_topic_args(&db, &events, &dlq, &[] as &[&str]);
    run_to_end(&promos);
    run_to_end(&geo);
    assert_eq!(
        reasons(&dlq),
        BTreeMap::from([
            ("missing_field:event_type".to_string(), 2),
            ("not_json".to_string(), 1)
        ])
    );

    // The record that is not JSON back to its source; the campaigns to the promos topic,
    // selected by their reason; then everything: nothing is re-published twice.
    let first = redrive(&db, &dlq, &["--reason", "not_json"]);
    assert!(
        first.contains(&format!("1 re-published (1 to {promos_in})")),
        "{first}"
    );
    let second = redrive(
        &db,
        &dlq,
        &["--reason", "missing_field:event_type", "--to", &promos_in],
    );
    assert!(
        second.contains(&format!("2 re-published (2 to {promos_in})")),
        "{second}"
    );
    let again = redrive(&db, &dlq, &[]);
    assert!(
        again.contains("0 re-published; 3 re-driven by an earlier run"),
        "{again}"
    );
    let back: Vec<ConsumedMessage> = consume(&promos_in)
        .into_iter()
        .filter(|m| header(m, "dishflow.redrive.attempts").is_some())
        .collect();
    assert_eq!(back.len(), 3, "{back:?}");
    for m in &back {
        assert_eq!(header(m, "dishflow.redrive.attempts"), Some("1"));
        assert_eq!(header(m, "dishflow.error.reason"), None, "{m:?}");
        assert_eq!(header(m, "dishflow.source.topic"), None, "{m:?}");
    }
    let oops = back.iter().find(|m| m.key.as_deref() == Some("oops"));
    let oops = oops.expect("the record that is not JSON");
    assert_eq!(oops.value.as_deref(), Some("{oops"), "its value as it was");
    assert_eq!(
        header(oops, "trace"),
        Some("t-1"),
        "its producer's header kept"
    );

    // The promos job resumes: the two campaigns make their drafts, the bad record is
    // dead-lettered again, with its attempt counted, and left there by the next re-drive.
    run_to_end(&promos);
    let mut expected: Vec<String> = [("good", R1), ("lost0", R0), ("lost1", R1)]
        .iter()
        .flat_map(|(campaign, restaurant)| expected_drafts(&db, campaign, restaurant))
        .collect();
    expected.sort();
    let mut drafts: Vec<String> = consume(&format!("{prefix}.out"))
        .into_iter()
        .map(|m| m.key.expect("draft key"))
        .collect();
    drafts.sort();
    assert_eq!(drafts, expected, "each draft once in Kafka");
    let mut rows: Vec<String> = (feedback_rows(&db).into_iter())
        .map(|(campaign, client, _)| format!("{campaign}:{client}"))
        .collect();
    rows.sort();
    assert_eq!(rows, expected, "each feedback row once");
    let last = redrive(&db, &dlq, &[]);
    assert!(
        last.contains("0 re-published; 3 re-driven by an earlier run")
            && last.contains("1 out of attempts"),
        "{last}"
    );
    let dead = consume(&dlq);
    let oops: Vec<&ConsumedMessage> = (dead.iter())
        .filter(|m| m.key.as_deref() == Some("oops"))
        .collect();
    assert_eq!(
        oops.len(),
        2,
        "the original dead letter and one after the re-drive"
    );
    assert_eq!(header(oops[1], "dishflow.redrive.attempts"), Some("1"));
    assert_eq!(header(oops[1], "trace"), Some("t-1"));
    assert_eq!(
        consume(&promos_in).len(),
        2 + 3,
        "nothing re-published twice"
    );
}
