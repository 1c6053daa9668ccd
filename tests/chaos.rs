//! Crash test of `dishflow promos` (run by `scripts/chaos.sh`, not by `scripts/test.sh`):
//! a workload of 200,000 drafts while the job is killed with SIGKILL at random moments —
//! during startup, while a batch is between its Postgres commit and its Kafka confirmation,
//! and at random — and restarted each time. At the end every expected draft must be in
//! Kafka exactly once and in `subscribers_feedback` exactly once, and nothing else.
//!
//! Settings (environment): `CHAOS_PROCESSES` (1 or 2 processes × 1 worker, default 1),
//! `CHAOS_KILLS` (default 6), `CHAOS_CAMPAIGNS` (default 10,000; 20 subscribers each),
//! `CHAOS_SEED` (random by default; printed, to replay a run's kill timing).

#![cfg(feature = "chaos")]

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const RESTAURANTS: usize = 100;
/// Subscribers per restaurant at the start; as many again are added during an outage.
const FIRST_SUBSCRIBERS: usize = 15;
const LATER_SUBSCRIBERS: usize = 5;
const PARTITIONS: i32 = 4;
/// Campaigns that ended before the test: no drafts.
const ENDED: usize = 2_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: reproducible kill timing from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low))
    }
}

/// The job: `processes` processes of one worker each, stderr appended to `log`. Each start
/// picks 1 to 3 Postgres connections per worker (the same in every process): a start with
/// fewer than the last leaves outbox writers behind that it must deliver first.
struct Job {
    children: Vec<Child>,
}

fn start(db: &str, prefix: &str, input: &str, processes: usize, log: &str, rng: &mut Rng) -> Job {
    let mut args = promos_args_from(db, input, prefix);
    let connections = 1 + rng.next() % 3;
    args.extend([
        "--tick-ms".to_string(),
        "50".to_string(),
        "--feedback-connections".to_string(),
        connections.to_string(),
    ]);
    let hostfile = std::env::temp_dir().join(format!("{prefix}.hosts"));
    if processes > 1 {
        let base = 20_000 + (rng.next() % 20_000) as usize;
        let hosts: Vec<String> = (0..processes)
            .map(|i| format!("127.0.0.1:{}", base + i))
            .collect();
        std::fs::write(&hostfile, hosts.join("\n") + "\n").expect("hostfile");
    }
    let children = (0..processes)
        .map(|i| {
            let mut argv = args.clone();
            if processes > 1 {
                argv.extend([
                    "--processes".to_string(),
                    processes.to_string(),
                    "--process".to_string(),
                    i.to_string(),
                    "--hostfile".to_string(),
                    hostfile.to_string_lossy().to_string(),
                ]);
            }
            let log = File::options()
                .create(true)
                .append(true)
                .open(log)
                .expect("log");
            Command::new(env!("CARGO_BIN_EXE_dishflow"))
                .args(&argv)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn dishflow")
        })
        .collect();
    Job { children }
}

/// A failed test leaves no process behind.
impl Drop for Job {
    fn drop(&mut self) {
        for child in &mut self.children {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Job {
    /// SIGKILL: one random process first, then the rest (a cluster is restarted whole).
    fn kill(mut self, rng: &mut Rng) {
        let mut children = std::mem::take(&mut self.children);
        let first = (rng.next() % children.len() as u64) as usize;
        let mut order: Vec<usize> = (0..children.len()).collect();
        order.swap(0, first);
        for (n, i) in order.into_iter().enumerate() {
            if n > 0 {
                std::thread::sleep(rng.millis(10, 300));
            }
            children[i].kill().ok();
            children[i].wait().ok();
        }
    }

    /// Whether a process has exited (it must not: the job never gives up by itself).
    fn exited(&mut self) -> Option<String> {
        for child in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status.to_string());
            }
        }
        None
    }

    /// SIGTERM to every process (a cluster finishes together), then each must exit 0.
    fn terminate(mut self) {
        let children = std::mem::take(&mut self.children);
        for child in &children {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill");
        }
        for child in children {
            let out = wait(child, Duration::from_secs(60));
            assert!(out.status.success(), "exit status {}", out.status);
        }
    }
}

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
    let kills: usize = env_or("CHAOS_KILLS", 6);
    let campaigns: usize = env_or("CHAOS_CAMPAIGNS", 10_000);
    let seed: u64 = env_or("CHAOS_SEED", now_secs() as u64 | 1);
    let mut rng = Rng(seed);
    let (db, prefix) = live_fixture("chaos");
    let input = format!("{prefix}.in");
    let log = std::env::temp_dir()
        .join(format!("{prefix}.log"))
        .to_string_lossy()
        .to_string();
    println!(
        "chaos: seed {seed}, {processes} process(es), {kills} kills, {campaigns} campaigns x {} \
         subscribers = {} drafts; job log {log}",
        FIRST_SUBSCRIBERS + LATER_SUBSCRIBERS,
        campaigns * (FIRST_SUBSCRIBERS + LATER_SUBSCRIBERS)
    );
    add_subscribers(&db, 0, FIRST_SUBSCRIBERS);
    dishflow::kafka::ensure_topic(&kafka(), &input, PARTITIONS).expect("topic");

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
            let refs: Vec<&str> = ended.iter().map(String::as_str).collect();
            produce_values(&input, PARTITIONS, &refs);
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
                let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                produce_values(&input, PARTITIONS, &refs);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    let started = Instant::now();
    let mut job = start(&db, &prefix, &input, processes, &log, &mut rng);
    let mut kinds: Vec<&str> = Vec::new();
    for k in 0..kills {
        let kind = match k % 3 {
            0 => {
                // During startup: snapshot, outbox recovery, replay.
                std::thread::sleep(rng.millis(50, 1500));
                "startup"
            }
            1 => {
                // Between a batch's Postgres commit and its Kafka confirmation.
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut caught = false;
                while Instant::now() < deadline {
                    if count(&db, "SELECT count(*) FROM dishflow_outbox") > 0 {
                        caught = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                if caught {
                    "in flush"
                } else {
                    "flush (not caught)"
                }
            }
            _ => {
                std::thread::sleep(rng.millis(300, 4000));
                "random"
            }
        };
        if let Some(status) = job.exited() {
            panic!("the job exited by itself ({status}); see {log}");
        }
        job.kill(&mut rng);
        kinds.push(kind);
        println!(
            "chaos: {:>5.1} s kill ({kind})",
            started.elapsed().as_secs_f64()
        );
        if k == 1 {
            // Subscribers who arrive while the job is down: they must get the campaigns
            // that arrived before the crash (rebuilt state).
            add_subscribers(
                &db,
                FIRST_SUBSCRIBERS,
                FIRST_SUBSCRIBERS + LATER_SUBSCRIBERS,
            );
        }
        std::thread::sleep(rng.millis(0, 500));
        job = start(&db, &prefix, &input, processes, &log, &mut rng);
        if k == 2 {
            // PostgreSQL restarts under the running job (past its startup checks, which
            // report an unreachable server and exit): it must wait and carry on.
            std::thread::sleep(rng.millis(2000, 4000));
            let restarted =
                Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
                    .args(["restart", "postgres"])
                    .stdout(Stdio::null())
                    .status()
                    .expect("services.sh");
            assert!(restarted.success(), "PostgreSQL restart failed");
            kinds.push("PostgreSQL restart");
            std::thread::sleep(rng.millis(1000, 3000));
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
        if let Some(status) = job.exited() {
            panic!("the job exited by itself ({status}); see {log}");
        }
        assert!(
            Instant::now() < deadline,
            "only {rows} of {expected} rows after 10 minutes; see {log}"
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
    job.terminate();
    let elapsed = started.elapsed();

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
        "chaos: {} events ({}) in {:.0} s; committed progress: resume at {resume} of {} \
         messages, a restart would replay {replay}",
        kinds.len(),
        kinds.join(", "),
        elapsed.as_secs_f64(),
        campaigns + ENDED
    );
    let restarts = std::fs::read_to_string(&log).unwrap_or_default();
    for line in restarts
        .lines()
        .filter(|l| l.contains("outbox: delivering"))
    {
        let tail = line.split("writer=").nth(1).unwrap_or(line);
        if line.contains("retired") {
            println!("chaos: outbox of a retired writer (fewer connections now): writer={tail}");
        } else {
            println!("chaos: outbox recovery: writer={tail}");
        }
    }
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
        "Kafka; see {log}"
    );
    assert_eq!(
        (rows.len(), rows_once, rows_duplicated, rows_unexpected),
        (expected, expected, 0, 0),
        "subscribers_feedback; see {log}"
    );
}
