//! Crash test of `dishflow geo`: days of events arrive in waves while the job is killed
//! with SIGKILL and restarted — during startup before the event topic is read, while its
//! outbox holds committed recommendations not yet confirmed by Kafka, and at random — while
//! PostgreSQL restarts under it and a city is added while it is down. At the end every
//! mart equals the SQL ground truth over the raw events, the recommendation topic folds to
//! the recommendations table, and it carries no message twice.
//!
//! `scripts/test.sh` runs a short version (300 users × 10 days, 3 kills); `scripts/chaos.sh
//! geo` the long one. Settings (environment): `CHAOS_PROCESSES` (1 or 2 processes × 1
//! worker, default 1), `CHAOS_KILLS` (default 3), `CHAOS_USERS` (default 300), `CHAOS_DAYS`
//! (default 10; in 5 waves), `CHAOS_SEED` (random by default; printed, to replay a run's
//! kill timing).

#![cfg(feature = "integration")]

use std::time::Duration;

use dishflow_testkit::*;

const WAVES: u32 = 5;
const FIRST_DAY: &str = "2022-05-01";
/// What the job logs once its startup checks passed and it builds the dataflow.
const STARTING: &str = "starting geo";
/// What the Kafka source logs as it begins reading the event topic.
const READING: &str = "sources::kafka: reading";

/// `dishflow produce events`: `users` users × `days` days from `FIRST_DAY` + `from` days.
fn produce(topic: &str, users: u32, from: u32, days: u32) {
    let start = chrono::NaiveDate::parse_from_str(FIRST_DAY, "%Y-%m-%d").expect("date")
        + chrono::Days::new(from.into());
    let args = [
        "produce".to_string(),
        "events".into(),
        "--brokers".into(),
        brokers(),
        "--topic".into(),
        topic.into(),
        "--users".into(),
        users.to_string(),
        "--days".into(),
        days.to_string(),
        "--start".into(),
        start.to_string(),
    ];
    assert_success(&dishflow(&args, Duration::from_secs(300)));
}

#[test]
fn sigkill_at_any_moment_leaves_every_mart_and_the_topic_equal_to_the_truth() {
    let processes: usize = env_or("CHAOS_PROCESSES", 1);
    let kills: usize = env_or("CHAOS_KILLS", 3);
    let users: u32 = env_or("CHAOS_USERS", 300);
    let days: u32 = env_or("CHAOS_DAYS", 10).max(WAVES);
    let seed: u64 = env_or("CHAOS_SEED", now_secs() as u64 | 1);
    let db = database("chaos_geo");
    let prefix = prefix("chaos_geo");
    let topic = format!("{prefix}.events");
    let published = format!("{prefix}.recommendations");
    println!(
        "chaos: seed {seed}, {processes} process(es), {kills} kills, {users} users x {days} \
         days in {WAVES} waves"
    );
    let wave = days / WAVES;
    produce(&topic, users, 0, wave);
    let args = geo_args(
        &db,
        &prefix,
        &[
            "--recommendation-topic",
            &published,
            "--tick-ms",
            "50",
            "--cdc-poll-ms",
            "100",
        ],
    );
    let mut chaos = Chaos::new(&prefix, processes, seed, move |_| args.clone());
    let moments = Moments {
        db: db.to_string(),
        starting: STARTING,
        started: READING,
        startup_kill: "kill (startup, before the topic is read)",
    };

    // The other days arrive while the job is being killed.
    let producer = {
        let topic = topic.clone();
        std::thread::spawn(move || {
            for w in 1..WAVES {
                let size = if w == WAVES - 1 {
                    days - w * wave
                } else {
                    wave
                };
                produce(&topic, users, w * wave, size);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    let mut job = chaos.start();
    for k in 0..kills {
        chaos.kill_in_turn(job, k, &moments);
        if k == 1 {
            // A city added while the job is down, where some users write from: the rebuilt
            // state must place their events in it.
            pg(&db)
                .execute(
                    "INSERT INTO geo.cities (id, city, lat, lng, timezone)
                     SELECT 990, 'Chaostown', lat + 0.01, lng + 0.01, timezone
                     FROM geo.cities ORDER BY id LIMIT 1",
                    &[],
                )
                .expect("a new city");
        }
        std::thread::sleep(chaos.rng.millis(0, 500));
        job = chaos.start();
        if k == 2 {
            chaos.restart_postgres_under(&job, READING);
        }
    }
    producer.join().expect("producer");

    wait_caught_up(&db, "geo", &topic, Duration::from_secs(900));
    // Anything still to come (a duplicate) would come now.
    std::thread::sleep(Duration::from_secs(3));
    job.assert_running();
    chaos.finish(job);
    println!("chaos: {}", chaos.summary());
    chaos.print_recoveries();

    let differences = geo_check(&db, &[&topic]);
    assert!(
        differences.is_empty(),
        "the marts differ from the ground truth: {differences:#?}"
    );
    let recommendations = geo_recommendations(&db);
    let repeated = repeated_publications(&published);
    println!(
        "chaos: {} recommendations; {published}: {} messages, {} keys published twice in a row",
        recommendations.len(),
        consume(&published).len(),
        repeated.len()
    );
    assert!(!recommendations.is_empty());
    assert_eq!(repeated, Vec::<String>::new(), "{published}");
    assert_eq!(
        recommendations_from_topic(&published),
        recommendations,
        "the recommendation topic"
    );
}
