//! The benchmark suite: each workload run several times, interleaved with the limit the
//! hardware allows for it and with a peer engine (Pathway), every process measured (wall
//! time, CPU seconds, peak RSS), every engine's output checked against what the input must
//! give ([`check_promos`], [`check_counters`]; a run that fails is INVALID, never a number,
//! and the suite exits 1), and every engine also run on an empty input (its fixed cost).
//! Writes `target/bench/report.md` and `report.json`.
//!
//! Workloads:
//! * **W1** pass-through: N promos for N restaurants with one subscriber each → N drafts to
//!   Kafka and Postgres (`dishflow promos --stop-at-end`). Limit: a plain rdkafka
//!   consume → produce pipe of the same messages (this binary, `--pipe`); and, since the job
//!   also writes a row per draft, that pipe while N rows are binary-COPYed into a copy of the
//!   feedback table with its indexes (`--copy`). Peer: the promos job for Pathway
//!   (`scripts/bench/peers/promos.py`).
//! * **W2** fan-out: 20k promos over 2k restaurants with 100 subscribers each → 2M drafts.
//!   Limit: producing 2M draft-sized messages while binary-COPYing 2M rows into a copy of
//!   the feedback table with its indexes (`--produce-copy`).
//!   With **S** (`--only S`), also 2 workers and 2 processes × 1 worker. **W2skew**: W2
//!   with 50k of the 200k subscribers on one restaurant (always with the scaling runs).
//! * **W3**, **W4**: latency of a running job at steady rates, with their floors (see
//!   [`latency`]).
//! * **W5** orders backlog: the orders job on N orders (`dishflow orders --stop-at-end`).
//!   Limit: consuming the same messages from Kafka (`--consume`), and a batched upsert of the
//!   final CDM keys into empty tables. Also reports Postgres write volume (rows per layer, WAL
//!   bytes per run).
//!
//! Usage: `cargo bench --bench suite -- [--quick] [--rounds N] [--only W1,W2,W2skew,S,W3,W4,W5]
//! [--secs N] [--orders N] [--workers N]` (`--secs`: W3/W4's window per rate or size, default
//! 60; `--orders`, `--workers`: W5's size and dishflow's workers there)
//! (`--quick`: every size ÷ 20, 3 s windows, one round)
//! (through `scripts/bench.sh`, which starts the services and installs the peer).

#[path = "suite/latency.rs"]
mod latency;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dishflow_testkit::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

/// What one process cost.
#[derive(Clone, Debug)]
struct Measured {
    wall_s: f64,
    cpu_s: f64,
    max_rss_mb: f64,
}

/// Runs `command` to completion (at most `timeout`), measuring it with wait4(2).
fn measure(command: &mut Command, timeout: Duration) -> Measured {
    measure_all(&mut [command], timeout)
}

/// Runs `commands` concurrently to completion (at most `timeout`), measuring them with
/// wait4(2) — which also reaps the children (hence no `Child::wait`): wall time until the
/// last ends, CPU seconds summed, peak RSS of the largest.
fn measure_all(commands: &mut [&mut Command], timeout: Duration) -> Measured {
    try_measure_all(commands, timeout).unwrap_or_else(|error| panic!("{error}"))
}

/// How long a peer's run may take before it counts as failed (a hung Pathway run once
/// waited with no connection open; the suite goes on without that run).
const PEER_TIMEOUT: Duration = Duration::from_secs(600);

/// A peer engine's run: measured, or `None` (said on stderr and recorded in `series` under
/// `engine` as an invalid run) if it failed or did not finish within [`PEER_TIMEOUT`].
fn measure_peer(
    command: &mut Command,
    series: &mut BTreeMap<&'static str, Series>,
    engine: &'static str,
) -> Option<Measured> {
    match try_measure_all(&mut [command], PEER_TIMEOUT) {
        Ok(m) => Some(m),
        Err(error) => {
            let first = error.lines().next().unwrap_or_default().to_string();
            eprintln!("{engine}: run failed, going on without it: {error}");
            series.entry(engine).or_default().invalid.push(first);
            None
        }
    }
}

/// [`measure_all`], or an error saying which command failed (with its stderr) or that the
/// runs took longer than `timeout` (then every command is killed).
#[allow(clippy::zombie_processes)]
fn try_measure_all(commands: &mut [&mut Command], timeout: Duration) -> Result<Measured, String> {
    let started = Instant::now();
    let mut running = Vec::new();
    for command in commands.iter_mut() {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take();
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = stderr {
                use std::io::Read;
                let _ = s.read_to_string(&mut text);
            }
            text
        });
        running.push((child, log, format!("{command:?}")));
    }
    let mut cpu_s = 0.0;
    let mut max_rss_mb: f64 = 0.0;
    let mut left: Vec<libc::pid_t> = running
        .iter()
        .map(|(c, _, _)| c.id() as libc::pid_t)
        .collect();
    let mut failed = Vec::new();
    while !left.is_empty() {
        let mut ended = Vec::new();
        for &pid in &left {
            let mut status: libc::c_int = 0;
            // SAFETY: rusage is plain data, zero is a valid value.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `pid` is our child; the pointers are to live locals.
            let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if done == pid {
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                cpu_s += secs(usage.ru_utime) + secs(usage.ru_stime);
                max_rss_mb = max_rss_mb.max(usage.ru_maxrss as f64 / 1024.0);
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    failed.push(pid);
                }
                ended.push(pid);
            } else {
                assert!(done == 0, "wait4 failed");
            }
        }
        left.retain(|p| !ended.contains(p));
        if started.elapsed() > timeout {
            for (child, _, command) in &mut running {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("killed after {timeout:?}: {command}");
            }
            return Err(format!("did not finish within {timeout:?}"));
        }
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    for (child, log, command) in running {
        let log = log.join().unwrap_or_default();
        if failed.contains(&(child.id() as libc::pid_t)) {
            return Err(format!("{command} failed:\n{log}"));
        }
        if std::env::var_os("DISHFLOW_BENCH_LOG").is_some() {
            eprint!("{log}");
        }
    }
    Ok(Measured {
        wall_s,
        cpu_s,
        max_rss_mb,
    })
}

/// Runs one workload, recording how long it took (`suite_s` in its result) and saying so.
fn push_timed(results: &mut Vec<Value>, workload: impl FnOnce() -> Value) {
    let started = Instant::now();
    let mut result = workload();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("suite: {} took {secs:.0} s", result["workload"]);
    result["suite_s"] = json!(secs);
    results.push(result);
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The runs of one engine on one workload.
#[derive(Default)]
struct Series {
    runs: Vec<Measured>,
    /// Rows the engine's last valid run wrote.
    rows: Option<i64>,
    /// Runs that failed, hung or wrote a wrong or incomplete output: why. They are not in
    /// `runs`: an invalid run is never a number in the report.
    invalid: Vec<String>,
    /// Wall seconds of runs on an empty input: the engine's fixed cost (start, connect,
    /// stop), part of every bounded run's time.
    empty: Vec<f64>,
}

impl Series {
    fn wall(&self) -> Vec<f64> {
        self.runs.iter().map(|m| m.wall_s).collect()
    }

    fn summary(&self, records: u64) -> Value {
        let wall = self.wall();
        if wall.is_empty() {
            return json!({ "invalid_runs": self.invalid });
        }
        let cpu: Vec<f64> = self.runs.iter().map(|m| m.cpu_s).collect();
        let rss: Vec<f64> = self.runs.iter().map(|m| m.max_rss_mb).collect();
        let empty = (!self.empty.is_empty()).then(|| median(&self.empty));
        // Throughput once running: records over the time beyond the empty run's.
        let net = empty
            .map(|e| median(&wall) - e)
            .filter(|s| *s > 0.0)
            .map(|s| records as f64 / s);
        json!({
            "empty_run_s": empty,
            "empty_runs_s": self.empty,
            "records_per_s_beyond_empty_run": net,
            "wall_s": wall,
            "median_s": median(&wall),
            "min_s": wall.iter().copied().fold(f64::INFINITY, f64::min),
            "max_s": wall.iter().copied().fold(0.0, f64::max),
            "records_per_s": records as f64 / median(&wall),
            "cpu_s": cpu,
            "cpu_us_per_record": median(&cpu) * 1e6 / records as f64,
            "max_rss_mb": rss.iter().copied().fold(0.0, f64::max),
            "output_rows": self.rows,
            "invalid_runs": self.invalid,
        })
    }
}

fn dishflow_command<A: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = A>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dishflow"));
    // DISHFLOW_BENCH_LOG (a RUST_LOG filter) shows the job's timings, e.g.
    // `dishflow::sinks=debug`; the default keeps its output out of the measurement.
    let log = std::env::var("DISHFLOW_BENCH_LOG").unwrap_or_else(|_| "warn".to_string());
    c.args(args).env("RUST_LOG", log);
    c
}

fn self_command(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current exe"));
    c.args(args);
    c
}

/// Queues `record`, serving delivery reports while librdkafka's queue is full.
fn send_retrying<K, P>(producer: &BaseProducer, mut record: BaseRecord<'_, K, P>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((_, r)) => {
                producer.poll(Duration::from_millis(1));
                record = r;
            }
        }
    }
    producer.poll(Duration::ZERO);
}

/// Calls `each` with every message of `topic` up to its end as of the call, and then with
/// any that comes until none has for `settle` (an error if the topic does not exist or
/// cannot be read within 10 minutes). An output topic needs a `settle`: Tansu may report a
/// partition's end one produce batch short, and only a sealed input ends with a marker
/// batch that nobody needs (see [`seal_topic`]).
fn read_topic(
    topic: &str,
    settle: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let partitions = dishflow::kafka::topic_partitions(&kafka(), topic)?;
    let marks = dishflow::kafka::watermarks(&kafka(), topic)?;
    let consumer: BaseConsumer = dishflow::kafka::client_config(
        &kafka(),
        &[
            ("group.id", "dishflow-bench-reader"),
            ("enable.auto.commit", "false"),
        ],
    )
    .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut remaining: BTreeMap<i32, i64> = marks.iter().map(|&(p, _, high)| (p, high)).collect();
    remaining.retain(|_, high| *high > 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = Instant::now();
    while !remaining.is_empty() || last.elapsed() < settle {
        anyhow::ensure!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        last = Instant::now();
        each(&message);
        let partition = message.partition();
        if remaining
            .get(&partition)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&partition);
        }
    }
    Ok(())
}

/// The Pathway peer of the promos job (`scripts/bench/peers/promos.py`) reading `input`,
/// writing the topic `out` and the table `pathway_feedback` of `db`.
fn pathway_promos(python: &str, input: &str, out: &str, db: &str) -> Command {
    let mut c = Command::new(python);
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/bench/peers/promos.py"
    ))
    .args([
        "--brokers",
        &brokers(),
        "--topic",
        input,
        "--out-topic",
        out,
        "--dsn",
        &dsn(db),
        "--feedback-table",
        "pathway_feedback",
    ]);
    c
}

/// How long an output topic must stay quiet for its check to have read all of it.
const SETTLE: Duration = Duration::from_secs(2);

/// `--pipe IN OUT`: the limit of a consume → produce pass-through: every message of IN
/// (to its end as of the start) produced to OUT, acknowledged.
fn pipe(input: &str, output: Option<&str>) {
    let producer: Option<BaseProducer> = output.map(|_| {
        dishflow::kafka::client_config(&kafka(), &[("linger.ms", "5")])
            .create()
            .expect("producer")
    });
    read_topic(input, Duration::ZERO, |message| {
        if let (Some(producer), Some(output)) = (&producer, output) {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            send_retrying(producer, record);
        }
    })
    .expect("pipe");
    if let Some(producer) = producer {
        producer.flush(Duration::from_secs(120)).expect("flush");
    }
}

/// "campaign:client" of a draft (dishflow's or Pathway's: both are JSON with these fields).
fn draft_key(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    Some(format!(
        "{}:{}",
        v["adv_campaign_id"].as_str()?,
        v["client_id"].as_str()?
    ))
}

/// The drafts a promos workload must give, as "campaign:client": every campaign of `input`
/// valid now, for each distinct subscriber of its restaurant in database `db` — computed
/// from the inputs, independently of any engine.
fn expected_drafts(input: &str, db: &str) -> HashSet<String> {
    let mut clients: HashMap<String, Vec<String>> = HashMap::new();
    for row in pg(db)
        .query(
            "SELECT DISTINCT restaurant_id, client_id FROM subscribers_restaurants",
            &[],
        )
        .expect("subscribers")
    {
        clients.entry(row.get(0)).or_default().push(row.get(1));
    }
    let now = now_secs();
    let mut campaigns: HashMap<String, String> = HashMap::new();
    read_topic(input, Duration::ZERO, |m| {
        let Some(v) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            return;
        };
        let valid = v["adv_campaign_datetime_start"].as_i64() <= Some(now)
            && v["adv_campaign_datetime_end"].as_i64() > Some(now);
        if let (true, Some(id), Some(restaurant)) = (
            valid,
            v["adv_campaign_id"].as_str(),
            v["restaurant_id"].as_str(),
        ) {
            campaigns.insert(id.to_string(), restaurant.to_string());
        }
    })
    .expect("input topic");
    campaigns
        .iter()
        .flat_map(|(id, restaurant)| {
            clients
                .get(restaurant)
                .into_iter()
                .flatten()
                .map(move |client| format!("{id}:{client}"))
        })
        .collect()
}

/// Checks that `found` holds every key of `expected` exactly once and nothing else.
fn exactly_once(
    what: &str,
    found: impl IntoIterator<Item = String>,
    expected: &HashSet<String>,
) -> Result<(), String> {
    let mut seen = HashSet::with_capacity(expected.len());
    let (mut duplicated, mut unexpected) = (0, 0);
    for key in found {
        if !expected.contains(&key) {
            unexpected += 1;
        } else if !seen.insert(key) {
            duplicated += 1;
        }
    }
    let missing = expected.len() - seen.len();
    if missing + duplicated + unexpected > 0 {
        return Err(format!(
            "{what}: {} of {} expected keys, {missing} missing, {duplicated} duplicated, \
             {unexpected} unexpected",
            seen.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// What a promos run wrote, checked: every expected draft exactly once in the notification
/// topic `topic` and among the rows of `table` in `db` that match `condition`. The number
/// of rows, or what is wrong.
fn check_promos(
    expected: &HashSet<String>,
    db: &str,
    table: &str,
    condition: &str,
    topic: &str,
) -> Result<i64, String> {
    let rows: Vec<String> = pg(db)
        .query(
            &format!("SELECT adv_campaign_id || ':' || client_id FROM {table} WHERE {condition}"),
            &[],
        )
        .map_err(|e| format!("reading {table}: {e}"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let count = rows.len() as i64;
    exactly_once(&format!("Postgres {table}"), rows, expected)?;
    let mut keys = Vec::with_capacity(expected.len());
    read_topic(topic, SETTLE, |m| {
        keys.push(
            m.payload()
                .and_then(draft_key)
                .unwrap_or_else(|| "(not a draft)".into()),
        )
    })
    .map_err(|e| format!("reading {topic}: {e:#}"))?;
    exactly_once(&format!("Kafka {topic}"), keys, expected)?;
    Ok(count)
}

/// Deletes the topics and databases whose names start with `prefix` — the workload's own
/// (Tansu keeps every topic in memory); kept with `--keep`.
fn clean_up(prefix: &str) {
    if std::env::args().any(|a| a == "--keep") {
        return;
    }
    if let Err(e) = delete_topics(prefix) {
        eprintln!("cannot delete the topics of {prefix}: {e}");
    }
    if let Err(e) = drop_databases(prefix) {
        eprintln!("cannot drop the databases of {prefix}: {e}");
    }
}

/// Appends `marker` to every partition of `topic`, twice, each round flushed: Tansu reports
/// a partition's high watermark up to one produce batch short, and Pathway's static Kafka
/// read stops at the reported watermark — without these, it missed part of the input (up to
/// all of it for topics written in a few large batches). Both engines ignore the marker.
fn seal_topic(topic: &str, marker: &str) {
    let producer: BaseProducer = dishflow::kafka::client_config(&kafka(), &[])
        .create()
        .expect("producer");
    let partitions = dishflow::kafka::topic_partitions(&kafka(), topic).expect("topic");
    for _ in 0..2 {
        for &p in &partitions {
            producer
                .send(
                    BaseRecord::<'_, (), str>::to(topic)
                        .partition(p)
                        .payload(marker),
                )
                .map_err(|(e, _)| e)
                .expect("send marker");
        }
        producer
            .flush(Duration::from_secs(30))
            .expect("flush marker");
    }
}

/// Creates database `name` as a copy of `template` (which must have no connections).
fn copy_database(template: &str, name: &str) -> String {
    let mut admin = pg(&format!("{}/postgres", postgres_base()));
    admin
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
        .expect("copy database");
    format!("{}/{name}", postgres_base())
}

fn dsn(db_url: &str) -> String {
    let name = db_url.rsplit('/').next().unwrap_or("postgres");
    let base = postgres_base();
    let rest = base.trim_start_matches("postgres://");
    let (user, host) = rest.split_once('@').unwrap_or(("postgres", rest));
    let (host, port) = host.split_once(':').unwrap_or((host, "5432"));
    format!("host={host} port={port} dbname={name} user={user}")
}

/// A promos workload: `promos` campaigns round robin over `restaurants`, `subscribers`
/// clients round robin over the same restaurants → promos × subscribers / restaurants drafts.
struct PromosWorkload {
    name: &'static str,
    promos: u64,
    restaurants: u64,
    subscribers: u64,
    /// Subscribers of the first restaurant (the skewed case; the rest round robin).
    hot: u64,
    /// W1's limit (the pipe) or W2's (2M produce + binary COPY, concurrently).
    pipe_limit: bool,
    /// Also run 2 workers and 2 processes × 1 worker (the scaling workload S).
    scaling: bool,
}

impl PromosWorkload {
    /// Every restaurant gets promos / restaurants campaigns, each for all its subscribers.
    fn drafts(&self) -> u64 {
        (self.promos / self.restaurants.max(1)) * self.subscribers
    }
}

/// The input topic and a template database (subscribers + schema) of workload `w`.
fn promos_fixture(w: &PromosWorkload, prefix: &str) -> (String, String) {
    let input = format!("{prefix}.in");
    let produce = dishflow_command([
        "produce",
        "promos",
        "--brokers",
        &brokers(),
        "--topic",
        &input,
        "--count",
        &w.promos.to_string(),
        "--restaurants",
        &w.restaurants.to_string(),
        "--partitions",
        "4",
    ])
    .output()
    .expect("produce");
    assert!(produce.status.success(), "produce failed");
    // A campaign for a restaurant without subscribers: no draft.
    let now = now_secs();
    seal_topic(
        &input,
        &campaign_json("marker", "marker", now - 10, now + 3600),
    );
    let template = database(&format!("{prefix}_tpl")).persist();
    let mut client = subscribers_table(&template);
    client
        .execute(
            "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
             SELECT 'client-' || g, '123e4567-e89b-12d3-a456-' || \
                    lpad((426614174000 + CASE WHEN g < $3::int8 THEN 0 ELSE g % $2::int8 END)::text, \
                         12, '0') \
             FROM generate_series(0, $1::int8 - 1) g",
            &[
                &(w.subscribers as i64),
                &(w.restaurants as i64),
                &(w.hot as i64),
            ],
        )
        .expect("subscribers");
    drop(client);
    let setup = dishflow_command(["setup", "--job", "promos", "--postgres-url", &template])
        .output()
        .expect("setup");
    assert!(setup.status.success());
    (
        input,
        template.rsplit('/').next().unwrap_or_default().to_string(),
    )
}

/// An empty input for the same job: a topic holding only the marker (every engine ignores
/// it) and a template database with no subscribers. Its runs measure an engine's fixed cost.
fn empty_promos_fixture(prefix: &str, template: &str) -> (String, String) {
    let input = format!("{prefix}.empty");
    dishflow::kafka::ensure_topic(&kafka(), &input, 4).expect("topic");
    let now = now_secs();
    seal_topic(
        &input,
        &campaign_json("marker", "marker", now - 10, now + 3600),
    );
    let name = format!("{prefix}_etpl");
    pg(&copy_database(template, &name))
        .batch_execute("TRUNCATE subscribers_restaurants")
        .expect("truncate");
    (input, name)
}

/// `--produce-copy N FANOUT TOPIC DB`: the limit of writing N drafts: N draft-sized
/// messages produced to TOPIC (acknowledged) while N feedback rows (FANOUT per campaign) are
/// binary-COPYed into DB.
fn produce_copy(n: u64, fanout: u64, topic: &str, db: &str) {
    let sample = serde_json::json!({
        "restaurant_id": "123e4567-e89b-12d3-a456-426614174000",
        "adv_campaign_id": "123e4567-e89b-12d3-a456-426614174003",
        "adv_campaign_content": "first campaign", "adv_campaign_owner": "Ivanov Ivan Ivanovich",
        "adv_campaign_owner_contact": "iiivanov@restaurant.ru",
        "adv_campaign_datetime_start": 1659203516, "adv_campaign_datetime_end": 2_659_207_116_i64,
        "client_id": "023e4567-e89b-12d3-a456-426614174000", "datetime_created": 1659131516,
        "trigger_datetime_created": 1659304828,
    })
    .to_string();
    let topic = topic.to_string();
    let producer_thread = std::thread::spawn(move || {
        dishflow::kafka::ensure_topic(&kafka(), &topic, 4).expect("topic");
        let producer: BaseProducer =
            dishflow::kafka::client_config(&kafka(), &[("linger.ms", "5")])
                .create()
                .expect("producer");
        for i in 0..n {
            let key = format!("c{i}");
            send_retrying(
                &producer,
                BaseRecord::<'_, String, String>::to(&topic)
                    .key(&key)
                    .payload(&sample),
            );
        }
        producer.flush(Duration::from_secs(300)).expect("flush");
    });
    copy_rows(n, fanout, db);
    producer_thread.join().expect("producer");
}

/// `--copy N FANOUT DB`: N feedback rows (FANOUT per campaign) binary-COPYed into a new
/// table of DB with the feedback table's indexes.
fn copy_rows(n: u64, fanout: u64, db: &str) {
    let mut client = pg(db);
    client
        .batch_execute(
            // With the table's indexes (its primary key, and the unique key that makes the
            // job's writes idempotent): maintaining them is most of the cost of writing
            // these rows (server-side COPY of 2M rows: 3 s without, 11 s with them).
            "CREATE TABLE limit_feedback \
             (LIKE public.subscribers_feedback INCLUDING DEFAULTS INCLUDING INDEXES)",
        )
        .expect("table");
    use postgres::binary_copy::BinaryCopyInWriter;
    use postgres::types::Type;
    let sink = client
        .copy_in(
            "COPY limit_feedback (restaurant_id, adv_campaign_id, adv_campaign_content, \
             adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, \
             adv_campaign_datetime_end, datetime_created, client_id, trigger_datetime_created) \
             FROM STDIN (FORMAT binary)",
        )
        .expect("copy");
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT4,
    ];
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    for i in 0..n {
        // Keys like the job's: a campaign per `fanout` rows, a client per row.
        let campaign = format!(
            "123e4567-e89b-12d3-a456-{:012}",
            426_614_174_000 + i / fanout
        );
        let client_id = format!("client-{i}");
        writer
            .write(&[
                &"123e4567-e89b-12d3-a456-426614174000",
                &campaign,
                &"first campaign",
                &"Ivanov Ivan Ivanovich",
                &"iiivanov@restaurant.ru",
                &1_659_203_516_i64,
                &2_659_207_116_i64,
                &1_659_131_516_i64,
                &client_id,
                &1_659_304_828_i32,
            ])
            .expect("row");
    }
    writer.finish().expect("finish copy");
}

/// Adds run `m` of `engine` to `series`, with what its output check said: the rows it
/// wrote, or what is wrong with its output (then the run is invalid: said on stderr and
/// kept out of the numbers); `None` for a limit, which has no output to check.
fn record(
    series: &mut BTreeMap<&'static str, Series>,
    engine: &'static str,
    m: Measured,
    check: Option<Result<i64, String>>,
) {
    let entry = series.entry(engine).or_default();
    match check {
        Some(Err(why)) => {
            eprintln!("{engine}: INVALID run, its output is wrong: {why}");
            entry.invalid.push(why);
        }
        Some(Ok(rows)) => {
            entry.runs.push(m);
            entry.rows = Some(rows);
        }
        None => entry.runs.push(m),
    }
}

/// Rows in `table` of `db` (`where`: a condition, or "true").
fn count_rows(db: &str, table: &str, condition: &str) -> i64 {
    pg(db)
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE {condition}"),
            &[],
        )
        .expect("count")
        .get(0)
}

/// W1, W2 and S: promos workloads.
fn promos_workload(w: &PromosWorkload, rounds: usize, pathway: Option<&str>) -> Value {
    let prefix = unique(&w.name.to_lowercase());
    let (input, template) = promos_fixture(w, &prefix);
    let drafts = w.drafts();
    let expected = expected_drafts(&input, &format!("{}/{template}", postgres_base()));
    assert_eq!(
        expected.len() as u64,
        drafts,
        "{}: the fixture gives {} drafts, not {drafts}",
        w.name,
        expected.len()
    );
    let (empty_input, empty_template) = empty_promos_fixture(&prefix, &template);
    let mut series: BTreeMap<&'static str, Series> = BTreeMap::new();
    let timeout = Duration::from_secs(1800);
    // `out`.out is the run's notification topic.
    let job = |db: &str, input: &str, out: &str, extra: &[&str]| -> Vec<String> {
        let mut args = promos_args_from(db, input, out);
        args.push("--stop-at-end".to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |args: &[String]| -> Command { dishflow_command(args) };
    // One bounded dishflow run with `extra` flags into its own database and topic (`tag`),
    // recorded as `engine`.
    let single = |series: &mut BTreeMap<&'static str, Series>,
                  engine: &'static str,
                  tag: &str,
                  extra: &[&str]| {
        let db = copy_database(&template, &format!("{prefix}_{tag}"));
        let out = format!("{prefix}.{tag}");
        let m = measure(&mut run(&job(&db, &input, &out, extra)), timeout);
        eprintln!("{}: {engine} {m:?}", w.name);
        let check = check_promos(
            &expected,
            &db,
            "subscribers_feedback",
            "true",
            &format!("{out}.out"),
        );
        record(series, engine, m, Some(check));
    };
    let peer = |python: &str, input: &str, out: &str, db: &str| -> Command {
        let mut c = pathway_promos(python, input, out, db);
        c.arg("--static");
        c
    };
    for round in 0..rounds {
        // The fixed cost of a run (start, connect, stop): each engine on an empty topic and
        // an empty subscribers table.
        let db = copy_database(&empty_template, &format!("{prefix}_de{round}"));
        let m = measure(
            &mut run(&job(&db, &empty_input, &format!("{prefix}.de{round}"), &[])),
            timeout,
        );
        series.entry("dishflow").or_default().empty.push(m.wall_s);
        if let Some(python) = pathway {
            let db = copy_database(&empty_template, &format!("{prefix}_pe{round}"));
            let out = format!("{prefix}.pe{round}");
            if let Some(m) = measure_peer(
                &mut peer(python, &empty_input, &out, &db),
                &mut series,
                "pathway",
            ) {
                series.entry("pathway").or_default().empty.push(m.wall_s);
            }
        }

        single(&mut series, "dishflow", &format!("d{round}"), &[]);
        if !w.pipe_limit {
            // A backlog of fan-out: Postgres inserts in parallel over two connections.
            single(
                &mut series,
                "dishflow, --feedback-connections 2",
                &format!("f{round}"),
                &["--feedback-connections", "2"],
            );
        }

        if w.scaling {
            single(
                &mut series,
                "dishflow, 2 workers",
                &format!("w{round}"),
                &["--workers", "2"],
            );
            let db = copy_database(&template, &format!("{prefix}_c{round}"));
            let [zero, one] = two_process_cluster(&prefix);
            let out = format!("{prefix}.c{round}");
            let zero: Vec<&str> = zero.iter().map(String::as_str).collect();
            let mut a = run(&job(&db, &input, &out, &zero));
            let one: Vec<&str> = one.iter().map(String::as_str).collect();
            let mut b = run(&job(&db, &input, &out, &one));
            let m = measure_all(&mut [&mut a, &mut b], timeout);
            eprintln!("{} round {round}: dishflow 2 processes {m:?}", w.name);
            let check = check_promos(
                &expected,
                &db,
                "subscribers_feedback",
                "true",
                &format!("{out}.out"),
            );
            record(
                &mut series,
                "dishflow, 2 processes × 1 worker",
                m,
                Some(check),
            );
        }

        let fanout = (w.subscribers / w.restaurants).max(1).to_string();
        let limit_db = copy_database(&template, &format!("{prefix}_l{round}"));
        let m = if w.pipe_limit {
            measure(
                &mut self_command(&["--pipe", &input, &format!("{prefix}.pipe{round}")]),
                timeout,
            )
        } else {
            measure(
                &mut self_command(&[
                    "--produce-copy",
                    &drafts.to_string(),
                    &fanout,
                    &format!("{prefix}.limit{round}"),
                    &limit_db,
                ]),
                timeout,
            )
        };
        eprintln!("{} round {round}: limit {m:?}", w.name);
        let limit = if w.pipe_limit {
            "limit: rdkafka pipe"
        } else {
            "limit: produce drafts + binary COPY rows (indexed)"
        };
        record(&mut series, limit, m, None);
        if w.pipe_limit {
            // The pipe writes no row; the job must also write one per draft.
            let m = measure_all(
                &mut [
                    &mut self_command(&["--pipe", &input, &format!("{prefix}.pipecopy{round}")]),
                    &mut self_command(&["--copy", &drafts.to_string(), &fanout, &limit_db]),
                ],
                timeout,
            );
            eprintln!("{} round {round}: limit with rows {m:?}", w.name);
            record(
                &mut series,
                "limit: rdkafka pipe + binary COPY rows (indexed), concurrently",
                m,
                None,
            );
        }

        if let Some(python) = pathway {
            let db = copy_database(&template, &format!("{prefix}_p{round}"));
            let out = format!("{prefix}.pw{round}");
            let m = measure_peer(&mut peer(python, &input, &out, &db), &mut series, "pathway");
            eprintln!("{} round {round}: pathway {m:?}", w.name);
            let Some(m) = m else { continue };
            // Pathway writes its changes: a row is a draft where `diff = 1` (a retraction
            // would be a row with `diff = -1`, and its Kafka message a duplicate key).
            let check = check_promos(&expected, &db, "pathway_feedback", "diff = 1", &out);
            record(&mut series, "pathway", m, Some(check));
        }
    }
    clean_up(&prefix);
    let summaries: BTreeMap<&str, Value> = series
        .iter()
        .map(|(k, s)| (*k, s.summary(drafts)))
        .collect();
    json!({
        "workload": w.name,
        "what": format!(
            "{} promos over {} restaurants, {} subscribers{} → {drafts} drafts to Kafka and \
             Postgres",
            w.promos,
            w.restaurants,
            w.subscribers,
            if w.hot > 0 {
                format!(" ({} of them on one restaurant)", w.hot)
            } else {
                String::new()
            }
        ),
        "records": drafts,
        "engines": summaries,
    })
}

/// The WAL position of the server behind `client`, in bytes.
fn wal_lsn(client: &mut postgres::Client) -> i64 {
    client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .expect("lsn")
        .get(0)
}

/// W5: the orders backlog (`workers` threads for dishflow).
fn w5(n: u64, rounds: usize, workers: usize, pathway: Option<&str>) -> Value {
    let prefix = unique("w5");
    let topic = format!("{prefix}.orders");
    let redis_url = redis_url();
    let count = n.to_string();
    let produce = dishflow_command([
        "produce",
        "orders",
        "--brokers",
        &brokers(),
        "--redis-url",
        &redis_url,
        "--topic",
        &topic,
        "--id-prefix",
        &format!("{prefix}_"),
        "--orders",
        &count,
        "--restaurants",
        "100",
        "--users",
        "5000",
        "--seed",
        "1",
    ])
    .output()
    .expect("produce");
    assert!(produce.status.success(), "produce failed");
    // Another object type: ignored by both engines.
    let marker = r#"{"object_id": 0, "object_type": "marker", "sent_dttm": "2022-01-01 00:00:00", "payload": {}}"#;
    seal_topic(&topic, marker);
    // An empty input (the marker only, no dictionaries): each engine's fixed cost.
    let empty_topic = format!("{prefix}.empty");
    dishflow::kafka::ensure_topic(&kafka(), &empty_topic, 4).expect("topic");
    seal_topic(&empty_topic, marker);
    let template = database(&format!("{prefix}_tpl")).persist();
    let setup = dishflow_command(["setup", "--job", "orders", "--postgres-url", &template])
        .output()
        .expect("setup");
    assert!(setup.status.success());
    let template_name = template.rsplit('/').next().unwrap_or_default().to_string();
    // CDM = SQL GROUP BY over the raw messages and the dictionaries: what every engine's
    // counters must equal, computed once, independently of any engine.
    let truth = {
        let db = copy_database(&template_name, &format!("{prefix}_truth"));
        ground_truth(&db, &topic, &format!("{prefix}*"))
    };
    assert!(
        !truth.0.is_empty() && !truth.1.is_empty(),
        "W5: the ground truth is empty"
    );

    let mut series: BTreeMap<&'static str, Series> = BTreeMap::new();
    let mut upsert_s = Vec::new();
    let mut wal = Vec::new();
    let timeout = Duration::from_secs(1200);
    let mut last_db = String::new();
    let workers = workers.to_string();
    // The engines' runs on `topic` with the Redis keys matching `keys`, into `db`.
    let dishflow = |db: &str, topic: &str, keys: &str, dlq: &str| -> Command {
        dishflow_command([
            "orders",
            "--brokers",
            &brokers(),
            "--postgres-url",
            db,
            "--redis-url",
            &redis_url,
            "--redis-keys",
            keys,
            "--order-topic",
            topic,
            "--dead-letter-topic",
            dlq,
            "--stop-at-end",
            "--workers",
            &workers,
        ])
    };
    let peer = |python: &str, db: &str, topic: &str, keys: &str| -> Command {
        let mut c = Command::new(python);
        c.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/bench/peers/orders.py"
        ))
        .args([
            "--brokers",
            &brokers(),
            "--topic",
            topic,
            "--redis-url",
            &redis_url,
            "--redis-keys",
            keys,
            "--dsn",
            &dsn(db),
            "--table-prefix",
            "pathway",
            "--static",
        ]);
        c
    };
    let keys = format!("{prefix}*");
    let no_keys = format!("{prefix}.none*");
    for round in 0..rounds {
        let db = copy_database(&template_name, &format!("{prefix}_de{round}"));
        let dlq = format!("{prefix}.de{round}.dlq");
        let m = measure(&mut dishflow(&db, &empty_topic, &no_keys, &dlq), timeout);
        series.entry("dishflow").or_default().empty.push(m.wall_s);
        if let Some(python) = pathway {
            let db = copy_database(&template_name, &format!("{prefix}_pe{round}"));
            let engine = "pathway (CDM counters only)";
            let run = &mut peer(python, &db, &empty_topic, &no_keys);
            if let Some(m) = measure_peer(run, &mut series, engine) {
                series.entry(engine).or_default().empty.push(m.wall_s);
            }
        }

        let db = copy_database(&template_name, &format!("{prefix}_d{round}"));
        let lsn = wal_lsn(&mut pg(&db));
        let dlq = format!("{prefix}.d{round}.dlq");
        let m = measure(&mut dishflow(&db, &topic, &keys, &dlq), timeout);
        wal.push((wal_lsn(&mut pg(&db)) - lsn) as f64);
        eprintln!("w5 round {round}: dishflow {m:?}");
        let check = check_counters(
            (
                counters(
                    &db,
                    "cdm.user_product_counters",
                    "product_id",
                    "product_name",
                ),
                counters(
                    &db,
                    "cdm.user_category_counters",
                    "category_id",
                    "category_name",
                ),
            ),
            &truth,
        )
        .and_then(|rows| {
            // Every order is valid: nothing may be dead-lettered.
            let mut dead = 0;
            read_topic(&dlq, SETTLE, |_| dead += 1).ok();
            match dead {
                0 => Ok(rows),
                n => Err(format!("{n} orders dead-lettered")),
            }
        });
        record(&mut series, "dishflow", m, Some(check));
        let m = measure(&mut self_command(&["--consume", &topic]), timeout);
        eprintln!("w5 round {round}: limit consume {m:?}");
        series
            .entry("limit: Kafka consume")
            .or_default()
            .runs
            .push(m);
        // The other limit: the final CDM keys, upserted in one batch into empty tables.
        let fresh = copy_database(&template_name, &format!("{prefix}_u{round}"));
        let mut from = pg(&db);
        let mut to = pg(&fresh);
        let started = Instant::now();
        for (table, item, name) in [
            ("cdm.user_product_counters", "product_id", "product_name"),
            ("cdm.user_category_counters", "category_id", "category_name"),
        ] {
            let rows = from
                .query(
                    &format!("SELECT user_id, {item}, {name}, order_cnt FROM {table}"),
                    &[],
                )
                .expect("read");
            let users: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
            let items: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(1)).collect();
            let names: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
            let counts: Vec<i32> = rows.iter().map(|r| r.get(3)).collect();
            to.execute(
                &format!(
                    "INSERT INTO {table} (user_id, {item}, {name}, order_cnt) \
                     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int4[]) \
                     ON CONFLICT (user_id, {item}) DO UPDATE SET order_cnt = excluded.order_cnt"
                ),
                &[&users, &items, &names, &counts],
            )
            .expect("upsert");
        }
        upsert_s.push(started.elapsed().as_secs_f64());
        last_db = db;

        if let Some(python) = pathway {
            let db = copy_database(&template_name, &format!("{prefix}_p{round}"));
            let m = measure_peer(
                &mut peer(python, &db, &topic, &keys),
                &mut series,
                "pathway (CDM counters only)",
            );
            eprintln!("w5 round {round}: pathway {m:?}");
            let Some(m) = m else { continue };
            let check = pathway_counters(&db)
                .map_err(|e| format!("reading Pathway's counters: {e}"))
                .and_then(|counters| check_counters(counters, &truth));
            record(&mut series, "pathway (CDM counters only)", m, Some(check));
        }
    }
    // Rows per layer, as the last run wrote them.
    let layer =
        |tables: &[&str]| -> i64 { tables.iter().map(|t| count_rows(&last_db, t, "true")).sum() };
    let cdm_rows = layer(&["cdm.user_product_counters", "cdm.user_category_counters"]);
    let rows = json!({
        "stg": layer(&["stg.order_events"]),
        "dds": layer(&[
            "dds.h_user", "dds.h_product", "dds.h_category", "dds.h_restaurant", "dds.h_order",
            "dds.l_order_product", "dds.l_product_restaurant", "dds.l_product_category",
            "dds.l_order_user", "dds.s_user_names", "dds.s_product_names",
            "dds.s_restaurant_names", "dds.s_order_cost", "dds.s_order_status",
        ]),
        "cdm": cdm_rows,
    });
    clean_up(&prefix);
    let mut summaries: BTreeMap<&str, Value> =
        series.iter().map(|(k, s)| (*k, s.summary(n))).collect();
    summaries.insert(
        "limit: batched upsert of the final CDM keys",
        json!({"wall_s": upsert_s, "median_s": median(&upsert_s), "rows": cdm_rows}),
    );
    json!({
        "workload": "W5",
        "what": format!(
            "{n} orders (≈3 lines, 100 restaurants, 5,000 users) → STG, DDS, CDM; dishflow with \
             {workers} worker(s)"
        ),
        "records": n,
        "engines": summaries,
        "postgres_write_volume": {"rows": rows, "wal_bytes": wal, "wal_bytes_median": median(&wal)},
    })
}

/// The final counters of the Pathway peer (its tables hold the change stream: a row is
/// current when its changes sum to a positive count), like [`counters`].
fn pathway_counters(db: &str) -> Result<(Counters, Counters), postgres::Error> {
    let mut client = pg(db);
    let mut read = |table: &str, item: &str, name: &str| -> Result<Counters, postgres::Error> {
        Ok(client
            .query(
                &format!(
                    "SELECT user_id::uuid, {item}::uuid, {name}, order_cnt::int4 FROM {table} \
                     GROUP BY 1, 2, 3, 4 HAVING sum(diff) > 0 ORDER BY 1, 2"
                ),
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    };
    Ok((
        read(
            "pathway_user_product_counters",
            "product_id",
            "product_name",
        )?,
        read(
            "pathway_user_category_counters",
            "category_id",
            "category_name",
        )?,
    ))
}

/// Checks an engine's (product, category) counters against the SQL ground truth: the
/// number of counter rows, or how many differ.
fn check_counters(got: (Counters, Counters), truth: &(Counters, Counters)) -> Result<i64, String> {
    let differ = |got: &Counters, want: &Counters, what: &str| -> Option<String> {
        if got == want {
            return None;
        }
        let got_set: HashSet<_> = got.iter().collect();
        let want_set: HashSet<_> = want.iter().collect();
        Some(format!(
            "{what}: {} rows, {} of the {} expected missing or different, {} not expected",
            got.len(),
            want_set.difference(&got_set).count(),
            want.len(),
            got_set.difference(&want_set).count()
        ))
    };
    let problems: Vec<String> = [
        differ(&got.0, &truth.0, "user_product_counters"),
        differ(&got.1, &truth.1, "user_category_counters"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if problems.is_empty() {
        Ok((got.0.len() + got.1.len()) as i64)
    } else {
        Err(format!(
            "counters differ from the SQL GROUP BY: {}",
            problems.join("; ")
        ))
    }
}

/// The markdown table of the report.
fn markdown(results: &[Value], machine: &str) -> String {
    let mut md = String::from("# dishflow benchmark report\n\n");
    md.push_str(machine);
    md.push_str("\n\n| workload | engine | median s (min–max) | records/s | empty run s | records/s beyond the empty run | CPU µs/record | peak RSS MB | rows written | vs dishflow |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let w = r["workload"].as_str().unwrap_or("?");
        let Some(engines) = r["engines"].as_object().cloned() else {
            continue;
        };
        let ours = engines["dishflow"]["median_s"].as_f64().unwrap_or(f64::NAN);
        for (engine, s) in &engines {
            let median = s["median_s"].as_f64().unwrap_or(f64::NAN);
            let cell = |k: &str, digits: usize| {
                s[k].as_f64()
                    .map(|v| format!("{v:.digits$}"))
                    .unwrap_or_else(|| "—".into())
            };
            let mut range = match (s["min_s"].as_f64(), s["max_s"].as_f64()) {
                (Some(a), Some(b)) => format!(" ({a:.2}–{b:.2})"),
                _ => String::new(),
            };
            if let Some(invalid) = s["invalid_runs"].as_array().filter(|f| !f.is_empty()) {
                let why = invalid[0].as_str().unwrap_or_default();
                if s["median_s"].is_null() {
                    md.push_str(&format!(
                        "| {w} | {engine} | INVALID ({} run(s)): {why} | — | — | — | — | — | — | — |\n",
                        invalid.len()
                    ));
                    continue;
                }
                range.push_str(&format!("; {} more run(s) INVALID: {why}", invalid.len()));
            }
            md.push_str(&format!(
                "| {w} | {engine} | {median:.2}{range} | {} | {} | {} | {} | {} | {} | {} |\n",
                cell("records_per_s", 0),
                cell("empty_run_s", 2),
                cell("records_per_s_beyond_empty_run", 0),
                cell("cpu_us_per_record", 1),
                cell("max_rss_mb", 0),
                s["output_rows"]
                    .as_i64()
                    .map_or_else(|| "—".to_string(), |r| r.to_string()),
                // No ratio without a valid dishflow run.
                Some(median / ours)
                    .filter(|r| r.is_finite())
                    .map_or_else(|| "—".to_string(), |r| format!("{r:.2}×")),
            ));
        }
    }
    md.push_str("\n`vs dishflow` = the engine's median time ÷ dishflow's (below 1: faster than dishflow). `empty run s`: the same engine on an empty input (start, connect, stop), part of every run's time; `records/s beyond the empty run` = records ÷ (median − empty run). Every run's output is checked (each expected draft exactly once in Kafka and in Postgres; W5: the counters equal a SQL GROUP BY of the input); a run that fails the check is INVALID and not in the numbers.\n");
    for r in results {
        md.push_str(&latency::markdown(r));
    }
    md
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--pipe") {
        return pipe(&args[1], args.get(2).map(String::as_str));
    }
    if args.first().map(String::as_str) == Some("--consume") {
        return pipe(&args[1], None);
    }
    if args.first().map(String::as_str) == Some("--produce-copy") {
        let n = args[1].parse().expect("a count");
        let fanout = args[2].parse().expect("a fan-out");
        return produce_copy(n, fanout, &args[3], &args[4]);
    }
    if args.first().map(String::as_str) == Some("--copy") {
        let n = args[1].parse().expect("a count");
        let fanout = args[2].parse().expect("a fan-out");
        return copy_rows(n, fanout, &args[3]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    // --quick: one round of everything unless --rounds says otherwise.
    let rounds = arg_value(&args, "--rounds", if quick { 1 } else { 3 });
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let wanted = |w: &str| only.is_empty() || only.iter().any(|o| o == w);
    let pathway = std::env::var("DISHFLOW_PATHWAY_PYTHON").ok();
    let started = Instant::now();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    let mut results = Vec::new();
    let scale = |full: u64| if quick { full / 20 } else { full };
    if wanted("W1") {
        let n = scale(1_000_000);
        let w = PromosWorkload {
            name: "W1",
            promos: n,
            restaurants: n,
            subscribers: n,
            hot: 0,
            pipe_limit: true,
            scaling: false,
        };
        push_timed(&mut results, || {
            promos_workload(&w, rounds, pathway.as_deref())
        });
    }
    if wanted("W2") || wanted("S") {
        let w = PromosWorkload {
            name: "W2",
            promos: scale(20_000),
            restaurants: scale(2_000),
            subscribers: scale(200_000),
            hot: 0,
            pipe_limit: false,
            scaling: wanted("S"),
        };
        push_timed(&mut results, || {
            promos_workload(&w, rounds, pathway.as_deref())
        });
    }
    if wanted("W2skew") {
        // W2 with a quarter of the subscribers (50k at full size) on one restaurant.
        let w = PromosWorkload {
            name: "W2skew",
            promos: scale(20_000),
            restaurants: scale(2_000),
            subscribers: scale(200_000),
            hot: scale(50_000),
            pipe_limit: false,
            scaling: true,
        };
        push_timed(&mut results, || {
            promos_workload(&w, rounds, pathway.as_deref())
        });
    }
    let secs = arg_value(&args, "--secs", if quick { 3 } else { 60 }) as u64;
    // The latency workloads run in real time: one round in --quick.
    let latency_rounds = if quick { 1 } else { rounds };
    if wanted("W3") {
        let rates: Vec<u64> = args
            .iter()
            .position(|a| a == "--rates")
            .and_then(|i| args.get(i + 1))
            .map(|s| s.split(',').filter_map(|r| r.parse().ok()).collect())
            .unwrap_or_else(|| vec![10, 100, 1000]);
        push_timed(&mut results, || {
            latency::w3(&rates, secs, latency_rounds, pathway.as_deref())
        });
    }
    if wanted("W4") {
        push_timed(&mut results, || {
            latency::w4(
                &[scale(10_000), scale(100_000), scale(1_000_000)],
                secs,
                latency_rounds,
                pathway.as_deref(),
            )
        });
    }
    if wanted("W5") {
        push_timed(&mut results, || {
            w5(
                scale(arg_value(&args, "--orders", 50_000) as u64),
                rounds,
                arg_value(&args, "--workers", 1),
                pathway.as_deref(),
            )
        });
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let machine = format!(
        "{cpus} CPUs; local PostgreSQL, Redis and Tansu (memory storage); {rounds} rounds, \
         engines interleaved within each round; {}; total {:.0} s.",
        if quick { "--quick sizes" } else { "full sizes" },
        started.elapsed().as_secs_f64()
    );
    let report = json!({"machine": machine, "results": results});
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .expect("report.json");
    let md = markdown(&results, &machine);
    std::fs::write(dir.join("report.md"), &md).expect("report.md");
    println!("{md}");
    let invalid = invalid_runs(&report);
    if !invalid.is_empty() {
        eprintln!(
            "suite: {} INVALID run(s) — an engine wrote a wrong or incomplete output:",
            invalid.len()
        );
        for why in &invalid {
            eprintln!("  {why}");
        }
        std::process::exit(1);
    }
}

/// Every invalid run of the report, as "workload engine: why" (any `invalid_runs` list in
/// the results, at any depth: the throughput and the latency workloads alike).
fn invalid_runs(report: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "invalid_runs" {
                        for why in v.as_array().into_iter().flatten() {
                            out.push(format!(
                                "{}: {}",
                                path.join(" "),
                                why.as_str().unwrap_or("?")
                            ));
                        }
                    } else {
                        path.push(k.clone());
                        walk(v, path, out);
                        path.pop();
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    let name = item["workload"].as_str().map(str::to_string);
                    if let Some(name) = &name {
                        path.push(name.clone());
                    }
                    walk(item, path, out);
                    if name.is_some() {
                        path.pop();
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&report["results"], &mut Vec::new(), &mut out);
    out
}
