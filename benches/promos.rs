//! The memory benchmark of the promos job on the local services (run through
//! `scripts/bench.sh expiry`, not as a test; the numbers go to stdout as one JSON object).
//! Latency is measured by the suite (`benches/suite/latency.rs`: W3, W4).
//!
//! * `expiry`: a running job gets rounds of short campaigns (valid 2 s, one subscriber
//!   each) with unique ids; after each round has ended, the job's resident memory (VmRSS)
//!   is sampled. Bounded state means RSS stays flat however many campaigns have existed.
//!
//! Usage: `cargo bench --bench promos -- [expiry] [--rounds N]`

use std::time::{Duration, Instant};

use dishflow_testkit::*;

const WAIT: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    expiry(arg_value(&args, "--rounds", 10), 10_000);
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
        produce_values(&input, 2, &campaigns);
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
