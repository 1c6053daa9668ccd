//! What the latency workloads measure with: arrival instants of drafts (Kafka) and rows
//! (Postgres notifications), paced producers, percentiles, a process's CPU and memory.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use super::latency::*;
use dishflow_testkit::*;

/// Arrival instants by key (the first), filled by a background thread until `stop`.
#[derive(Clone, Default)]
pub(crate) struct Arrivals {
    pub(crate) seen: Arc<Mutex<HashMap<String, Instant>>>,
    /// Arrivals of a key already seen: a draft sent twice, a row written twice.
    pub(crate) repeats: Arc<AtomicUsize>,
    pub(crate) stop: Arc<AtomicBool>,
}

impl Arrivals {
    pub(crate) fn insert(&self, key: String) {
        match self.seen.lock().expect("lock").entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.repeats.fetch_add(1, Ordering::Relaxed);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Instant::now());
            }
        }
    }

    pub(crate) fn repeats(&self) -> usize {
        self.repeats.load(Ordering::Relaxed)
    }

    /// Keys that arrived and are not in `allowed`.
    pub(crate) fn unexpected(&self, allowed: &std::collections::HashSet<String>) -> usize {
        let seen = self.seen.lock().expect("lock");
        seen.keys().filter(|key| !allowed.contains(*key)).count()
    }

    pub(crate) fn get(&self, key: &str) -> Option<Instant> {
        self.seen.lock().expect("lock").get(key).copied()
    }

    /// Ends the background thread.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The consumer settings of every latency measurement (floor and engines alike).
pub(crate) fn latency_consumer(topic: &str) -> BaseConsumer {
    let partitions = dishflow::kafka::topic_partitions(&kafka(), topic).expect("topic");
    let consumer: BaseConsumer = dishflow::kafka::client_config(
        &kafka(),
        &[
            ("group.id", "dishflow-bench-latency"),
            ("enable.auto.commit", "false"),
            FETCH_WAIT.split_once(':').unwrap_or_default(),
        ],
    )
    .create()
    .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// A producer that sends each message at once, as the latency runs' arrivals need.
pub(crate) fn latency_producer() -> BaseProducer {
    producer_lingering("0")
}

/// A producer that waits up to `linger_ms` to batch messages (librdkafka's default is 5).
/// It is idempotent, as the jobs' own are, which also bounds its requests in flight to 5:
/// with librdkafka's default (unbounded) a producer at 100/s and more kept dozens of
/// produce requests in flight, and the local broker (Tansu 0.6) now and then left one
/// unanswered — librdkafka then waits `socket.timeout.ms` (60 s) and resends everything
/// behind it, which put a 60 s p99 on every stream that shared the producer (the soak).
pub(crate) fn producer_lingering(linger_ms: &str) -> BaseProducer {
    dishflow::kafka::client_config(
        &kafka(),
        &[("linger.ms", linger_ms), ("enable.idempotence", "true")],
    )
    .create()
    .expect("producer")
}

/// Sends `payload` with `key` to `topic`, retrying while the local queue is full.
pub(crate) fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &str) {
    super::send_retrying(
        producer,
        BaseRecord::<'_, str, str>::to(topic)
            .key(key)
            .payload(payload),
    );
}

/// Records the arrival of every message of `topic` under `key_of(key, payload)`.
pub(crate) fn kafka_arrivals(
    topic: &str,
    key_of: impl Fn(Option<&[u8]>, &[u8]) -> Option<String> + Send + 'static,
) -> Arrivals {
    let consumer = latency_consumer(topic);
    let arrivals = Arrivals::default();
    let sink = arrivals.clone();
    std::thread::spawn(move || {
        while !sink.stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50))
                && let Some(payload) = m.payload()
                && let Some(key) = key_of(m.key(), payload)
            {
                sink.insert(key);
            }
        }
    });
    arrivals
}

/// Records the commit of every feedback row (payload "campaign:client" of the trigger).
pub(crate) fn feedback_arrivals(db: &str) -> Arrivals {
    notify_arrivals(db, CHANNEL)
}

/// Records every notification on `channel` of `db` under its payload (a trigger's
/// `pg_notify` is delivered when its transaction commits).
pub(crate) fn notify_arrivals(db: &str, channel: &str) -> Arrivals {
    let mut client = pg(db);
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .expect("listen");
    let arrivals = Arrivals::default();
    let sink = arrivals.clone();
    std::thread::spawn(move || {
        while !sink.stop.load(Ordering::Relaxed) {
            let mut notifications = client.notifications();
            let mut batch = notifications.timeout_iter(Duration::from_millis(50));
            while let Ok(Some(n)) = batch.next() {
                sink.insert(n.payload().to_string());
            }
        }
    });
    arrivals
}

/// Restarts the local broker (Tansu, memory storage) so that every latency measurement
/// starts on an empty one: Tansu's cost per request grows with the data it holds (at 1,000
/// promos/s both engines fell seconds behind once ~100k messages had accumulated). Skipped
/// when DISHFLOW_TEST_BROKERS points elsewhere.
pub(crate) fn fresh_broker() {
    if std::env::var("DISHFLOW_TEST_BROKERS").is_ok() {
        return;
    }
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
        .args(["restart", "kafka"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("scripts/services.sh");
    assert!(status.success(), "cannot restart the local broker");
}

/// Latency percentiles in milliseconds of `samples` (in ms), plus how many never arrived.
pub(crate) fn percentiles(mut samples: Vec<f64>, missing: usize) -> Value {
    samples.sort_by(f64::total_cmp);
    let p = |q: f64| -> Option<f64> {
        if samples.is_empty() {
            return None;
        }
        let rank = ((q / 100.0) * samples.len() as f64).ceil() as usize;
        Some(samples[rank.clamp(1, samples.len()) - 1])
    };
    json!({
        "samples": samples.len(),
        "missing": missing,
        "p50_ms": p(50.0), "p95_ms": p(95.0), "p99_ms": p(99.0), "max_ms": samples.last(),
    })
}

/// Latencies (ms) from `sent` to the arrivals of `expected` (key → index into `sent`),
/// waiting up to `DRAIN` for stragglers.
pub(crate) fn latencies(
    sent: &[Instant],
    expected: &[(String, usize)],
    arrivals: &Arrivals,
) -> Value {
    let deadline = Instant::now() + DRAIN;
    while Instant::now() < deadline && expected.iter().any(|(key, _)| arrivals.get(key).is_none()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut samples = Vec::with_capacity(expected.len());
    let mut missing = 0;
    for (key, i) in expected {
        match arrivals.get(key) {
            Some(at) => samples.push(at.saturating_duration_since(sent[*i]).as_secs_f64() * 1e3),
            None => missing += 1,
        }
    }
    percentiles(samples, missing)
}

/// Calls `act(i)` at `rate` per second for `secs` seconds, returning when each call started.
pub(crate) fn paced(rate: u64, secs: u64, mut act: impl FnMut(usize)) -> Vec<Instant> {
    let n = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut at = Vec::with_capacity(n);
    for i in 0..n {
        let due = started + interval.mul_f64(i as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        at.push(Instant::now());
        act(i);
    }
    at
}

/// The local broker's process (a `tansu` listening on the test brokers' address), if it runs
/// on this machine: its CPU is part of what a latency costs.
pub(crate) fn broker_pid() -> Option<u32> {
    let listener = format!("tcp://{}", dishflow_testkit::brokers());
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_tansu = args.first()?.ends_with(b"tansu");
            let listens = args.contains(&listener.as_bytes());
            (is_tansu && listens).then_some(pid)
        })
}

/// CPU seconds used so far by the running PostgreSQL server processes (every process named
/// `postgres`: the server and its backends; a backend that has exited no longer counts).
pub(crate) fn postgres_cpu() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim_end() == "postgres").then(|| usage(pid).0)
        })
        .sum()
}

/// CPU seconds and peak RSS (MB) of a running process, from /proc.
pub(crate) fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 12th, stime 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    ((cpu(11) + cpu(12)) / ticks, hwm_kib / 1024.0)
}

/// Resident memory (VmRSS) of process `pid` in MB.
pub(crate) fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}
