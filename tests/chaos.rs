//! Crash test of `dishflow promos`: a stream of campaigns while the job is killed with
//! SIGKILL and restarted — during startup before the subscribers snapshot is read, while a
//! batch sits in the outbox between its Postgres commit and its Kafka confirmation, and at
//! random — and PostgreSQL restarts under it. At the end every expected draft must be in
//! Kafka exactly once and in `subscribers_feedback` exactly once, and nothing else. A kill
//! that misses its moment (the snapshot was already read, the outbox was already empty) is
//! tried again, and the test fails if it never hits.
//!
//! `scripts/test.sh` runs a short version (1,000 campaigns, 3 kills); `scripts/chaos.sh`
//! the long one. Settings (environment): `CHAOS_PROCESSES` (1 or 2 processes × 1 worker,
//! default 1), `CHAOS_KILLS` (default 3), `CHAOS_CAMPAIGNS` (default 1,000; 20 subscribers
//! each), `CHAOS_SEED` (random by default; printed, to replay a run's kill timing).

#![cfg(feature = "integration")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dishflow_testkit::*;

const RESTAURANTS: usize = 100;
/// Subscribers per restaurant at the start; as many again are added during an outage.
const FIRST_SUBSCRIBERS: usize = 15;
const LATER_SUBSCRIBERS: usize = 5;
const PARTITIONS: i32 = 4;
/// Campaigns that ended before the test: no drafts.
const ENDED: usize = 2_000;
/// What the job logs once its startup checks passed and it builds the dataflow.
const STARTING: &str = "starting promos";
/// What the Postgres source logs once it has read the subscribers snapshot.
const SNAPSHOT_READ: &str = "subscribers_restaurants snapshot read";

fn count(db: &str, sql: &str) -> i64 {
    pg(db).query_one(sql, &[]).map(|r| r.get(0)).unwrap_or(-1)
}

fn add_subscribers(db: &str, from: usize, to: usize) {
    pg(db)
        .execute(
            "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
             SELECT 'c' || g || '-r' || r, 'r' || r \
             FROM generate_series(0, $1 - 1) r, generate_series($2, $3 - 1) g",
            &[&(RESTAURANTS as i32), &(from as i32), &(to as i32)],
        )
        .expect("subscribers");
}

#[test]
fn sigkill_at_any_moment_loses_and_duplicates_nothing() {
    let processes: usize = env_or("CHAOS_PROCESSES", 1);
    assert!(matches!(processes, 1 | 2), "CHAOS_PROCESSES is 1 or 2");
    let kills: usize = env_or("CHAOS_KILLS", 3);
    let campaigns: usize = env_or("CHAOS_CAMPAIGNS", 1_000);
    let seed: u64 = env_or("CHAOS_SEED", now_secs() as u64 | 1);
    let (db, prefix) = live_fixture("chaos");
    let input = format!("{prefix}.in");
    println!(
        "chaos: seed {seed}, {processes} process(es), {kills} kills, {campaigns} campaigns x {} \
         subscribers = {} drafts",
        FIRST_SUBSCRIBERS + LATER_SUBSCRIBERS,
        campaigns * (FIRST_SUBSCRIBERS + LATER_SUBSCRIBERS)
    );
    add_subscribers(&db, 0, FIRST_SUBSCRIBERS);
    dishflow::kafka::ensure_topic(&kafka(), &input, PARTITIONS).expect("topic");
    // Each start picks 1 to 3 Postgres connections per worker (the same in every
    // process): a start with fewer than the last leaves outbox writers behind that it must
    // deliver first. And the backlog at which a worker writes through all of them: always
    // (0), whenever a wave of campaigns is being written (500: keys move between
    // connections while the job is killed), or only for a backlog this test never has.
    let args = promos_args_from(&db, &input, &prefix);
    let mut chaos = Chaos::new(&prefix, processes, seed, move |rng| {
        let mut args = args.clone();
        let connections = 1 + rng.draw() % 3;
        let backlog = [0, 500, 50_000][rng.draw() as usize % 3];
        args.extend(["--tick-ms", "50", "--feedback-connections"].map(String::from));
        args.push(connections.to_string());
        args.push("--feedback-backlog".to_string());
        args.push(backlog.to_string());
        args
    });
    let moments = Moments {
        db: db.to_string(),
        starting: STARTING,
        started: SNAPSHOT_READ,
        startup_kill: "kill (startup, before the snapshot)",
    };

    // Campaigns arrive in waves while the job is being killed.
    let producer = {
        let input = input.clone();
        std::thread::spawn(move || {
            let now = now_secs();
            // First, campaigns that have already ended: they give nothing, and the state
            // does not depend on them, so a restart's replay starts after them.
            let ended: Vec<String> = (0..ENDED)
                .map(|i| campaign_json(&format!("old{i}"), "r0", now - 7200, now - 3600))
                .collect();
            produce_values(&input, PARTITIONS, &ended);
            let waves = 40;
            for wave in 0..waves {
                let values: Vec<String> = (wave * campaigns / waves
                    ..(wave + 1) * campaigns / waves)
                    .map(|i| {
                        campaign_json(
                            &format!("camp{i}"),
                            &format!("r{}", i % RESTAURANTS),
                            now - 60,
                            now + 7200,
                        )
                    })
                    .collect();
                produce_values(&input, PARTITIONS, &values);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    let mut job = chaos.start();
    for k in 0..kills {
        chaos.kill_in_turn(job, k, &moments);
        if k == 1 {
            // Subscribers who arrive while the job is down: they must get the campaigns
            // that arrived before the crash (rebuilt state).
            add_subscribers(
                &db,
                FIRST_SUBSCRIBERS,
                FIRST_SUBSCRIBERS + LATER_SUBSCRIBERS,
            );
        }
        std::thread::sleep(chaos.rng.millis(0, 500));
        job = chaos.start();
        if k == 2 {
            chaos.restart_postgres_under(&job, SNAPSHOT_READ);
        }
    }
    producer.join().expect("producer");

    let out = format!("{prefix}.out");
    let expected = campaigns * (FIRST_SUBSCRIBERS + LATER_SUBSCRIBERS);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let rows = count(&db, "SELECT count(*) FROM subscribers_feedback") as usize;
        let outbox = count(&db, "SELECT count(*) FROM dishflow_outbox");
        if rows >= expected && outbox == 0 {
            break;
        }
        job.assert_running();
        assert!(
            Instant::now() < deadline,
            "only {rows} of {expected} rows after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Anything still to come (a duplicate) would come now.
    std::thread::sleep(Duration::from_secs(3));
    let replay: i64 = count(
        &db,
        "SELECT coalesce(sum(resume_offset - replay_offset), -1)::int8 FROM dishflow_progress",
    );
    let resume: i64 = count(
        &db,
        "SELECT coalesce(sum(resume_offset), -1)::int8 FROM dishflow_progress",
    );
    chaos.finish(job);

    let mut want: HashMap<String, usize> = HashMap::with_capacity(expected);
    for i in 0..campaigns {
        for g in 0..FIRST_SUBSCRIBERS + LATER_SUBSCRIBERS {
            want.insert(format!("camp{i}:c{g}-r{}", i % RESTAURANTS), 0);
        }
    }
    let messages = consume(&out);
    let mut unexpected = 0;
    for m in &messages {
        match m.key.as_deref().and_then(|k| want.get_mut(k)) {
            Some(n) => *n += 1,
            None => unexpected += 1,
        }
    }
    let once = want.values().filter(|n| **n == 1).count();
    let duplicated = want.values().filter(|n| **n > 1).count();
    let missing = want.values().filter(|n| **n == 0).count();
    let rows: Vec<(String, String, i32)> = feedback_rows(&db);
    let mut row_counts: HashMap<String, usize> = HashMap::new();
    for (campaign, client, _) in &rows {
        *row_counts
            .entry(format!("{campaign}:{client}"))
            .or_default() += 1;
    }
    let rows_once = want
        .keys()
        .filter(|k| row_counts.get(*k) == Some(&1))
        .count();
    let rows_unexpected = row_counts.keys().filter(|k| !want.contains_key(*k)).count();
    let rows_duplicated = row_counts.values().filter(|n| **n > 1).count();
    println!(
        "chaos: {}; committed progress: resume at {resume} of {} messages, a restart would \
         replay {replay}",
        chaos.summary(),
        campaigns + ENDED
    );
    chaos.print_recoveries();
    println!(
        "chaos: expected {expected} drafts; Kafka: {} messages, {once} keys exactly once, \
         {duplicated} duplicated, {missing} missing, {unexpected} unexpected",
        messages.len()
    );
    println!(
        "chaos: subscribers_feedback: {} rows, {rows_once} keys exactly once, \
         {rows_duplicated} duplicated, {} missing, {rows_unexpected} unexpected",
        rows.len(),
        expected - rows_once - rows_duplicated
    );
    assert_eq!(
        (messages.len(), once, duplicated, missing, unexpected),
        (expected, expected, 0, 0, 0),
        "Kafka"
    );
    assert_eq!(
        (rows.len(), rows_once, rows_duplicated, rows_unexpected),
        (expected, expected, 0, 0),
        "subscribers_feedback"
    );
    let (summary, truth) = promo_summary_and_truth(&db);
    println!("chaos: mart.promo_hours counts {} drafts", summary.drafts());
    assert_eq!(
        summary, truth,
        "the promos summaries count every draft once"
    );
}
