//! The benchmark suite (issue 6): each workload run several times, interleaved with the limit
//! the hardware allows for it and with a peer engine (Pathway), every process measured (wall
//! time, CPU seconds, peak RSS). Writes `target/bench/report.md` and `report.json`.
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

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "suite/latency.rs"]
mod latency;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
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
/// `engine`) if it failed or did not finish within [`PEER_TIMEOUT`].
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
            series.entry(engine).or_default().failed.push(first);
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
    /// Rows the engine's last run wrote (to check that it did the whole job).
    rows: Option<i64>,
    /// Runs that failed or hung (peers only), first line of why.
    failed: Vec<String>,
}

impl Series {
    fn wall(&self) -> Vec<f64> {
        self.runs.iter().map(|m| m.wall_s).collect()
    }

    fn summary(&self, records: u64) -> Value {
        let wall = self.wall();
        if wall.is_empty() {
            return json!({ "failed_runs": self.failed });
        }
        let cpu: Vec<f64> = self.runs.iter().map(|m| m.cpu_s).collect();
        let rss: Vec<f64> = self.runs.iter().map(|m| m.max_rss_mb).collect();
        json!({
            "wall_s": wall,
            "median_s": median(&wall),
            "min_s": wall.iter().copied().fold(f64::INFINITY, f64::min),
            "max_s": wall.iter().copied().fold(0.0, f64::max),
            "records_per_s": records as f64 / median(&wall),
            "cpu_s": cpu,
            "cpu_us_per_record": median(&cpu) * 1e6 / records as f64,
            "max_rss_mb": rss.iter().copied().fold(0.0, f64::max),
            "output_rows": self.rows,
            "failed_runs": self.failed,
        })
    }
}

fn dishflow_command(args: &[&str]) -> Command {
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

/// `--pipe IN OUT`: the limit of a consume → produce pass-through: every message of IN
/// (to its end as of the start) produced to OUT, acknowledged.
fn pipe(input: &str, output: Option<&str>) {
    let partitions = dishflow::kafka::topic_partitions(&kafka(), input).expect("topic");
    let marks = dishflow::kafka::watermarks(&kafka(), input).expect("watermarks");
    let consumer: BaseConsumer = dishflow::kafka::client_config(
        &kafka(),
        &[
            ("group.id", "dishflow-bench-pipe"),
            ("enable.auto.commit", "false"),
        ],
    )
    .create()
    .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment
            .add_partition_offset(input, *p, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let producer: Option<BaseProducer> = output.map(|_| {
        dishflow::kafka::client_config(&kafka(), &[("linger.ms", "5")])
            .create()
            .expect("producer")
    });
    let mut remaining: BTreeMap<i32, i64> = marks.iter().map(|&(p, _, high)| (p, high)).collect();
    remaining.retain(|_, high| *high > 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !remaining.is_empty() {
        assert!(Instant::now() < deadline, "pipe timed out");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.expect("consume");
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
        let partition = message.partition();
        if remaining
            .get(&partition)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&partition);
        }
    }
    if let Some(producer) = producer {
        producer.flush(Duration::from_secs(120)).expect("flush");
    }
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
    let produce = dishflow_command(&[
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
    let template = database(&format!("{prefix}_tpl"));
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
    let setup = dishflow_command(&["setup", "--job", "promos", "--postgres-url", &template])
        .output()
        .expect("setup");
    assert!(setup.status.success());
    (
        input,
        template.rsplit('/').next().unwrap_or_default().to_string(),
    )
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

/// Adds run `m` of `engine` (which wrote `rows`, if counted) to `series`.
fn record(
    series: &mut BTreeMap<&'static str, Series>,
    engine: &'static str,
    m: Measured,
    rows: Option<i64>,
) {
    let entry = series.entry(engine).or_default();
    entry.runs.push(m);
    if rows.is_some() {
        entry.rows = rows;
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
    let mut series: BTreeMap<&'static str, Series> = BTreeMap::new();
    let timeout = Duration::from_secs(1800);
    // `out`.out is the run's notification topic.
    let job = |db: &str, out: &str, extra: &[&str]| -> Vec<String> {
        let mut args = promos_args_from(db, &input, out);
        args.push("--stop-at-end".to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |args: &[String]| -> Command {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        dishflow_command(&argv)
    };
    // One bounded dishflow run with `extra` flags into its own database and topic (`tag`),
    // recorded as `engine`.
    let single = |series: &mut BTreeMap<&'static str, Series>,
                  engine: &'static str,
                  tag: &str,
                  extra: &[&str]| {
        let db = copy_database(&template, &format!("{prefix}_{tag}"));
        let m = measure(
            &mut run(&job(&db, &format!("{prefix}.{tag}"), extra)),
            timeout,
        );
        eprintln!("{}: {engine} {m:?}", w.name);
        record(
            series,
            engine,
            m,
            Some(count_rows(&db, "subscribers_feedback", "true")),
        );
    };
    for round in 0..rounds {
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
            let mut a = run(&job(&db, &out, &zero));
            let one: Vec<&str> = one.iter().map(String::as_str).collect();
            let mut b = run(&job(&db, &out, &one));
            let m = measure_all(&mut [&mut a, &mut b], timeout);
            eprintln!("{} round {round}: dishflow 2 processes {m:?}", w.name);
            record(
                &mut series,
                "dishflow, 2 processes × 1 worker",
                m,
                Some(count_rows(&db, "subscribers_feedback", "true")),
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
            let m = measure_peer(
                Command::new(python)
                    .arg(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/scripts/bench/peers/promos.py"
                    ))
                    .args([
                        "--brokers",
                        &brokers(),
                        "--topic",
                        &input,
                        "--out-topic",
                        &format!("{prefix}.pw{round}"),
                        "--dsn",
                        &dsn(&db),
                        "--feedback-table",
                        "pathway_feedback",
                        "--static",
                    ]),
                &mut series,
                "pathway",
            );
            eprintln!("{} round {round}: pathway {m:?}", w.name);
            let Some(m) = m else { continue };
            record(
                &mut series,
                "pathway",
                m,
                Some(count_rows(&db, "pathway_feedback", "diff = 1")),
            );
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
    let produce = dishflow_command(&[
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
    seal_topic(
        &topic,
        r#"{"object_id": 0, "object_type": "marker", "sent_dttm": "2022-01-01 00:00:00", "payload": {}}"#,
    );
    let template = database(&format!("{prefix}_tpl"));
    let setup = dishflow_command(&["setup", "--job", "orders", "--postgres-url", &template])
        .output()
        .expect("setup");
    assert!(setup.status.success());
    let template_name = template.rsplit('/').next().unwrap_or_default().to_string();

    let mut series: BTreeMap<&'static str, Series> = BTreeMap::new();
    let mut upsert_s = Vec::new();
    let mut wal = Vec::new();
    let timeout = Duration::from_secs(1200);
    let mut last_db = String::new();
    let mut pathway_db: Option<String> = None;
    let workers = workers.to_string();
    for round in 0..rounds {
        let db = copy_database(&template_name, &format!("{prefix}_d{round}"));
        let lsn = wal_lsn(&mut pg(&db));
        let m = measure(
            &mut dishflow_command(&[
                "orders",
                "--brokers",
                &brokers(),
                "--postgres-url",
                &db,
                "--redis-url",
                &redis_url,
                "--redis-keys",
                &format!("{prefix}*"),
                "--order-topic",
                &topic,
                "--dead-letter-topic",
                &format!("{prefix}.dlq"),
                "--stop-at-end",
                "--workers",
                &workers,
            ]),
            timeout,
        );
        wal.push((wal_lsn(&mut pg(&db)) - lsn) as f64);
        eprintln!("w5 round {round}: dishflow {m:?}");
        record(
            &mut series,
            "dishflow",
            m,
            Some(
                count_rows(&db, "cdm.user_product_counters", "true")
                    + count_rows(&db, "cdm.user_category_counters", "true"),
            ),
        );
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
                Command::new(python)
                    .arg(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/scripts/bench/peers/orders.py"
                    ))
                    .args([
                        "--brokers",
                        &brokers(),
                        "--topic",
                        &topic,
                        "--redis-url",
                        &redis_url,
                        "--redis-keys",
                        &format!("{prefix}*"),
                        "--dsn",
                        &dsn(&db),
                        "--table-prefix",
                        "pathway",
                        "--static",
                    ]),
                &mut series,
                "pathway (CDM counters only)",
            );
            eprintln!("w5 round {round}: pathway {m:?}");
            let Some(m) = m else { continue };
            let (products, categories) = pathway_counters(&db);
            record(
                &mut series,
                "pathway (CDM counters only)",
                m,
                Some((products.len() + categories.len()) as i64),
            );
            pathway_db = Some(db);
        }
    }
    // CDM = SQL GROUP BY over the raw messages and the dictionaries (and Pathway's too).
    let (truth_products, truth_categories) = ground_truth(&last_db, &topic, &format!("{prefix}*"));
    let ours = (
        counters(
            &last_db,
            "cdm.user_product_counters",
            "product_id",
            "product_name",
        ),
        counters(
            &last_db,
            "cdm.user_category_counters",
            "category_id",
            "category_name",
        ),
    );
    let truth = (truth_products, truth_categories);
    let equal = json!({
        "dishflow": ours == truth,
        "pathway": pathway_db.as_deref().map(|db| pathway_counters(db) == truth),
    });
    eprintln!("w5: CDM equals the SQL GROUP BY: {equal}");
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
        "cdm_equals_sql_group_by": equal,
    })
}

/// The final counters of the Pathway peer (its tables hold the change stream: a row is
/// current when its changes sum to a positive count), like [`counters`].
fn pathway_counters(db: &str) -> (Counters, Counters) {
    let mut client = pg(db);
    let mut read = |table: &str, item: &str, name: &str| -> Counters {
        client
            .query(
                &format!(
                    "SELECT user_id::uuid, {item}::uuid, {name}, order_cnt::int4 FROM {table} \
                     GROUP BY 1, 2, 3, 4 HAVING sum(diff) > 0 ORDER BY 1, 2"
                ),
                &[],
            )
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect()
            })
            .unwrap_or_default()
    };
    (
        read(
            "pathway_user_product_counters",
            "product_id",
            "product_name",
        ),
        read(
            "pathway_user_category_counters",
            "category_id",
            "category_name",
        ),
    )
}

/// The markdown table of the report.
fn markdown(results: &[Value], machine: &str) -> String {
    let mut md = String::from("# dishflow benchmark report\n\n");
    md.push_str(machine);
    md.push_str("\n\n| workload | engine | median s (min–max) | records/s | CPU µs/record | peak RSS MB | rows written | vs dishflow |\n|---|---|---|---|---|---|---|---|\n");
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
            if let Some(failed) = s["failed_runs"].as_array().filter(|f| !f.is_empty()) {
                range.push_str(&format!(", {} run(s) failed or hung", failed.len()));
            }
            md.push_str(&format!(
                "| {w} | {engine} | {median:.2}{range} | {} | {} | {} | {} | {:.2}× |\n",
                cell("records_per_s", 0),
                cell("cpu_us_per_record", 1),
                cell("max_rss_mb", 0),
                s["output_rows"]
                    .as_i64()
                    .map_or_else(|| "—".to_string(), |r| r.to_string()),
                median / ours,
            ));
        }
    }
    md.push_str("\n`vs dishflow` = the engine's median time ÷ dishflow's (below 1: faster than dishflow).\n");
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
}
