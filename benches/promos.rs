//! Benchmarks of the promos job on the local services (run through `scripts/bench.sh`, not
//! as tests; the numbers go to stdout as one JSON object per benchmark).
//!
//! * `latency`: a running job with default settings (1 worker, 100 ms tick, append);
//!   subscriber rows are inserted one by one (autocommit) at a steady rate; for each, the
//!   time from the commit returning to the draft being read from the notification topic.
//! * `expiry`: a running job gets rounds of short campaigns (valid 2 s, one subscriber
//!   each) with unique ids; after each round has ended, the job's resident memory (VmRSS)
//!   is sampled. Bounded state means RSS stays flat however many campaigns have existed.
//!
//! Usage: `cargo bench --bench promos -- [latency] [expiry] [--samples N] [--rounds N]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = !args.iter().any(|a| a == "latency" || a == "expiry");
    if all || args.iter().any(|a| a == "latency") {
        latency(arg_value(&args, "--samples", 300));
    }
    if all || args.iter().any(|a| a == "expiry") {
        expiry(arg_value(&args, "--rounds", 10), 10_000);
    }
}

/// Receive time of every message of `topic` by key, from a consumer started now at the end.
fn receiver(topic: &str) -> Arc<Mutex<HashMap<String, Instant>>> {
    let partitions = dishflow::kafka::topic_partitions(&kafka(), topic).expect("topic");
    let consumer: BaseConsumer = dishflow::kafka::client_config(
        &kafka(),
        &[
            ("group.id", "dishflow-bench"),
            ("enable.auto.commit", "false"),
            // Measure the job, not the fetch wait of this consumer.
            ("fetch.wait.max.ms", "5"),
        ],
    )
    .create()
    .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment
            .add_partition_offset(topic, p, Offset::End)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        loop {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                sink.lock().expect("lock").insert(key, Instant::now());
            }
        }
    });
    seen
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency(samples: usize) {
    let (db, prefix) = live_fixture("bench_latency");
    let now = now_secs();
    let campaign = campaign_json("C", "R", now - 10, now + 3600);
    produce_values(&format!("{prefix}.in"), 1, &[&campaign]);
    let child = spawn_promos(&db, &prefix, &[]);
    let out = format!("{prefix}.out");
    wait_until(WAIT, "the output topic", || {
        dishflow::kafka::topic_partitions(&kafka(), &out).ok()
    });
    let seen = receiver(&out);
    let mut client = pg(&db);
    let insert = |client: &mut postgres::Client, id: &str| {
        client
            .execute(
                "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ($1, 'R')",
                &[&id],
            )
            .expect("insert");
        Instant::now()
    };
    // Warm-up: the job is running and the consumer is positioned.
    insert(&mut client, "warmup");
    wait_until(WAIT, "the warm-up draft", || {
        seen.lock().expect("lock").get("C:warmup").copied()
    });

    let interval = Duration::from_millis(100);
    let mut committed = Vec::with_capacity(samples);
    let started = Instant::now();
    for i in 0..samples {
        let due = started + interval * i as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        committed.push((format!("C:s{i}"), insert(&mut client, &format!("s{i}"))));
    }
    let last = committed.last().expect("samples").0.clone();
    let _ = wait_until(WAIT, "the last draft", || {
        seen.lock().expect("lock").get(&last).copied()
    });
    std::thread::sleep(Duration::from_millis(500));
    let seen = seen.lock().expect("lock").clone();
    let mut ms: Vec<f64> = committed
        .iter()
        .map(|(key, t)| {
            let received = seen
                .get(key)
                .unwrap_or_else(|| panic!("{key} never arrived"));
            received.saturating_duration_since(*t).as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    terminate(child);
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "promos.subscriber_insert_to_draft_latency",
            "settings": "defaults: 1 worker, --tick-ms 100, append envelope",
            "samples": ms.len(),
            "rate_per_s": 10,
            "p50_ms": percentile(&ms, 50.0),
            "p95_ms": percentile(&ms, 95.0),
            "p99_ms": percentile(&ms, 99.0),
            "max_ms": ms.last(),
        })
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn expiry(rounds: usize, per_round: usize) {
    let (db, prefix) = live_fixture("bench_expiry");
    let restaurants = 100;
    {
        let mut client = pg(&db);
        client
            .batch_execute(&format!(
                "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
                 SELECT 'client-' || r, 'r' || r FROM generate_series(0, {}) r",
                restaurants - 1
            ))
            .expect("subscribers");
    }
    let input = format!("{prefix}.in");
    let now = now_secs();
    let marker = campaign_json("warmup", "r0", now - 10, now + 5);
    produce_values(&input, 2, &[&marker]);
    let child = spawn_promos(&db, &prefix, &["--envelope", "upsert"]);
    let count_rows = |db: &str| -> i64 {
        pg(db)
            .query_one("SELECT count(*) FROM subscribers_feedback", &[])
            .expect("count")
            .get(0)
    };
    wait_until(WAIT, "the warm-up draft", || {
        (count_rows(&db) == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let baseline = rss_kib(child.id());
    let mut samples = Vec::new();
    let started = Instant::now();
    for round in 0..rounds {
        let now = now_secs();
        let campaigns: Vec<String> = (0..per_round)
            .map(|i| {
                let id = format!("c{round}-{i}");
                campaign_json(&id, &format!("r{}", i % restaurants), now - 1, now + 2)
            })
            .collect();
        let values: Vec<&str> = campaigns.iter().map(String::as_str).collect();
        produce_values(&input, 2, &values);
        let expected = 1 + ((round + 1) * per_round) as i64;
        wait_until(WAIT, "the round's feedback rows", || {
            (count_rows(&db) >= expected).then_some(())
        });
        // Every campaign of the round has ended (and its state can go) after 2 s.
        std::thread::sleep(Duration::from_secs(4));
        samples.push(((round + 1) * per_round, rss_kib(child.id())));
    }
    terminate(child);
    let tombstones = messages(&format!("{prefix}.out"))
        .iter()
        .filter(|(_, v)| v.is_none())
        .count();
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "promos.expiry_memory",
            "campaigns_per_round": per_round,
            "campaign_validity_s": 3,
            "baseline_rss_kib": baseline,
            "rss_kib_after_campaigns": samples,
            "tombstones_written": tombstones,
            "elapsed_s": started.elapsed().as_secs_f64(),
        })
    );
}
