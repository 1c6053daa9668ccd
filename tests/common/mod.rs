//! Helpers for integration tests against real Postgres and a Kafka-API broker.
//!
//! Addresses come from `DISHFLOW_TEST_BROKERS` and `DISHFLOW_TEST_POSTGRES` (defaults: the
//! local services that `scripts/services.sh` starts). Every test works in its own database
//! and topics, named after the test and a unique suffix, so tests run in parallel and repeat.

#![allow(dead_code)]

pub mod certs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dishflow::kafka::KafkaArgs;
use dishflow::kafka::consumer::{ConsumedMessage, read_to_end};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use redis::Commands;
use std::io::Write;

/// Kafka bootstrap servers of the test broker.
pub fn brokers() -> String {
    std::env::var("DISHFLOW_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Base URL (no database) of the test Postgres server.
pub fn postgres_base() -> String {
    std::env::var("DISHFLOW_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Kafka arguments for the test broker.
pub fn kafka() -> KafkaArgs {
    KafkaArgs {
        brokers: brokers(),
        properties: Vec::new(),
        property_file: None,
    }
}

/// A name unique to this test run: `<name>_<pid>_<nanos>`.
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!(
        "{name}_{}_{:012}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Creates a fresh database named after `name` (see [`unique`]).
pub fn database(name: &str) -> Db {
    let db = unique(name);
    admin()
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create database");
    Db(format!("{}/{db}", postgres_base()))
}

fn admin() -> postgres::Client {
    postgres::Client::connect(&format!("{}/postgres", postgres_base()), postgres::NoTls)
        .expect("connect to Postgres (is scripts/services.sh running?)")
}

/// A test's database: its URL (as `&str`, by deref). Dropped when the test passes, kept
/// for inspection when it fails; set `DISHFLOW_TEST_KEEP=1` to keep it anyway.
pub struct Db(String);

impl Db {
    /// The URL, the database no longer dropped with this value (the benchmarks drop theirs
    /// by name prefix when a workload ends).
    pub fn persist(self) -> String {
        std::mem::ManuallyDrop::new(self).0.clone()
    }
}

impl std::ops::Deref for Db {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if keep(&self.0) {
            return;
        }
        let name = self.0.rsplit('/').next().unwrap_or_default();
        if let Err(e) = drop_database(name) {
            eprintln!("cannot drop database {name}: {e}");
        }
    }
}

/// Whether what a test created stays: the test is failing, or `DISHFLOW_TEST_KEEP` is set.
fn keep(what: &str) -> bool {
    let keep = std::thread::panicking() || std::env::var_os("DISHFLOW_TEST_KEEP").is_some();
    if keep {
        eprintln!("kept {what}");
    }
    keep
}

/// Drops database `name` with its replication slots (a slot keeps a database from being
/// dropped), ending the sessions still connected to it.
pub fn drop_database(name: &str) -> Result<(), postgres::Error> {
    let mut admin = admin();
    let mut attempt = 0;
    loop {
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )?;
        let dropped = admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = $1",
                &[&name],
            )
            .and_then(|_| {
                admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            });
        match dropped {
            // A replication connection ends a moment after it was told to.
            Err(_) if attempt < 50 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// A test's unique name prefix (see [`unique`]) for its topics and Redis keys, as `&str`
/// by deref: the topics and keys whose names start with it are deleted when the test
/// passes, kept when it fails or `DISHFLOW_TEST_KEEP` is set.
pub struct Prefix(String);

/// A fresh [`Prefix`] named after `name`.
pub fn prefix(name: &str) -> Prefix {
    Prefix(unique(name))
}

impl std::ops::Deref for Prefix {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        if keep(&format!("the topics and Redis keys {}*", self.0)) {
            return;
        }
        if let Err(e) = delete_topics(&self.0) {
            eprintln!("cannot delete the topics {}*: {e}", self.0);
        }
        if let Err(e) = delete_redis_keys(&self.0) {
            eprintln!("cannot delete the Redis keys {}*: {e}", self.0);
        }
    }
}

/// Deletes the topics whose names start with `prefix` (the broker keeps every topic).
pub fn delete_topics(prefix: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = dishflow::kafka::client_config(&kafka(), &[]).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
    let names: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        dishflow::kafka::client_config(&kafka(), &[]).create()?;
    for result in futures_executor::block_on(admin.delete_topics(&names, &AdminOptions::new()))? {
        result.map_err(|(topic, code)| anyhow::anyhow!("{topic}: {code}"))?;
    }
    Ok(())
}

/// Deletes the Redis keys that start with `prefix`.
pub fn delete_redis_keys(prefix: &str) -> redis::RedisResult<()> {
    let mut con = redis::Client::open(redis_url().as_str())?.get_connection()?;
    let keys: Vec<String> = con.keys(format!("{prefix}*"))?;
    if !keys.is_empty() {
        con.del::<_, ()>(keys)?;
    }
    Ok(())
}

/// Drops the databases whose names start with `prefix`.
pub fn drop_databases(prefix: &str) -> Result<(), postgres::Error> {
    let names: Vec<String> = admin()
        .query(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)",
            &[&prefix],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in names {
        drop_database(&name)?;
    }
    Ok(())
}

/// A client on `url`.
pub fn pg(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect")
}

/// Creates `public.subscribers_restaurants` with the exact seed DDL, as its owner would;
/// returns the client.
pub fn subscribers_table(url: &str) -> postgres::Client {
    let mut client = pg(url);
    client
        .batch_execute(dishflow::pg::SUBSCRIBERS_DDL)
        .expect("ddl");
    client
}

/// A fresh database with the subscribers table and `dishflow setup` done, and a unique topic
/// prefix, both named after `name`.
pub fn live_fixture(name: &str) -> (Db, Prefix) {
    let db = database(name);
    subscribers_table(&db);
    assert_success(&dishflow(
        &["setup", "--postgres-url", &db],
        Duration::from_secs(60),
    ));
    (db, prefix(name))
}

/// The seed example's subscribers (SPEC), in a table created with the exact seed DDL.
pub fn seed_subscribers(url: &str) {
    let mut client = subscribers_table(url);
    let rows = [
        (
            "223e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "323e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "423e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "523e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "623e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "723e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "823e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "923e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174001",
        ),
        (
            "923e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174001",
        ),
        (
            "023e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000",
        ),
    ];
    for (client_id, restaurant_id) in rows {
        client
            .execute(
                "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ($1, $2)",
                &[&client_id, &restaurant_id],
            )
            .expect("insert");
    }
}

/// A message to produce: (key, value); `None` is no key / a tombstone.
pub type Raw<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Where produced records went: (partition, offset) of each, in the order given.
pub type Marks = Vec<(i32, i64)>;

/// Collects the (partition, offset) of every delivered record.
#[derive(Default)]
struct Delivered(std::sync::Mutex<Marks>);

impl rdkafka::ClientContext for Delivered {}

impl rdkafka::producer::ProducerContext for Delivered {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, index: Box<usize>) {
        use rdkafka::Message;
        let message = result.as_ref().expect("delivered");
        self.0.lock().expect("marks")[*index] = (message.partition(), message.offset());
    }
}

/// Creates `topic` and produces `messages` (key, value) to it, round robin over partitions;
/// returns where each went.
pub fn produce_raw(topic: &str, partitions: i32, messages: &[Raw<'_>]) -> Marks {
    dishflow::kafka::ensure_topic(&kafka(), topic, partitions).expect("create topic");
    let context = Delivered(std::sync::Mutex::new(vec![(-1, -1); messages.len()]));
    let producer: BaseProducer<Delivered> = dishflow::kafka::client_config(&kafka(), &[])
        .create_with_context(context)
        .expect("producer");
    for (i, (key, value)) in messages.iter().enumerate() {
        let mut record: BaseRecord<'_, [u8], [u8], Box<usize>> =
            BaseRecord::with_opaque_to(topic, Box::new(i)).partition(i as i32 % partitions);
        if let Some(key) = key {
            record = record.key(*key);
        }
        if let Some(value) = value {
            record = record.payload(*value);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let marks = std::mem::take(&mut *producer.context().0.lock().expect("marks"));
    assert!(
        marks.iter().all(|&(_, offset)| offset >= 0),
        "undelivered: {marks:?}"
    );
    marks
}

/// Creates `topic` and produces messages without key with `values`, round robin.
pub fn produce_values(topic: &str, partitions: i32, values: &[&str]) -> Marks {
    let raw: Vec<Raw<'_>> = values.iter().map(|v| (None, Some(v.as_bytes()))).collect();
    produce_raw(topic, partitions, &raw)
}

/// Waits (at most `timeout`) until the committed progress of `job` (`promos`, `orders`) on
/// `topic` is past every record of `marks`: the job has read them and every sink has
/// written all they caused. Evidence that "nothing changed" means nothing will.
pub fn wait_for_progress(
    db: &str,
    job: &str,
    topic: &str,
    marks: &[(i32, i64)],
    timeout: Duration,
) {
    wait_until(
        timeout,
        &format!("{job}'s progress on {topic} past {marks:?}"),
        || {
            let committed = dishflow::positions::load(&mut pg(db), job, topic).ok()?;
            marks
                .iter()
                .all(|(partition, offset)| {
                    committed.get(partition).is_some_and(|c| c.resume > *offset)
                })
                .then_some(())
        },
    );
}

/// Every message of `topic`.
pub fn consume(topic: &str) -> Vec<ConsumedMessage> {
    read_to_end(&kafka(), topic, Duration::from_secs(60)).expect("consume")
}

/// `dishflow` with `args`, run to completion (at most `timeout`).
pub fn dishflow(args: &[&str], timeout: Duration) -> Output {
    wait(spawn(args), timeout)
}

/// A `dishflow` process a test started. Its stdout and stderr go to files under the
/// target's temporary directory (a pipe nobody reads would block a job that logs more than
/// 64 KiB); the files are removed with the job unless the test is failing. A job still
/// running when its `Job` is dropped (a failed assertion) is killed.
pub struct Job {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Job {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    fn output(&mut self, status: ExitStatus) -> Output {
        Output {
            status,
            stdout: std::fs::read(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read(&self.stderr).unwrap_or_default(),
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
        if std::thread::panicking() {
            eprintln!("dishflow's output kept in {}", self.stderr.display());
        } else {
            std::fs::remove_file(&self.stdout).ok();
            std::fs::remove_file(&self.stderr).ok();
        }
    }
}

/// `dishflow` with `args`, in the background, its output written to files.
pub fn spawn(args: &[&str]) -> Job {
    spawn_env(args, &[])
}

/// [`spawn`] with environment variables `env` set (after `RUST_LOG=info`).
pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Job {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dishflow-logs");
    std::fs::create_dir_all(&dir).expect("log directory");
    let name = unique(args.first().copied().unwrap_or("dishflow"));
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    let child = Command::new(env!("CARGO_BIN_EXE_dishflow"))
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn dishflow");
    Job {
        child,
        stdout,
        stderr,
    }
}

/// Waits for `job`, killing it (and failing) after `timeout`.
pub fn wait(mut job: Job, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = job.try_wait() {
            return job.output(status);
        }
        if Instant::now() > deadline {
            job.kill();
            panic!(
                "dishflow did not finish within {timeout:?}; stderr:\n{}",
                job.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that `out` is a successful run, showing its stderr otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "dishflow failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Arguments of a promos run on `db` and the topics `<prefix>.in/.out/.dlq`.
pub fn promos_args(db: &str, prefix: &str) -> Vec<String> {
    promos_args_from(db, &format!("{prefix}.in"), prefix)
}

/// Arguments of a promos run on `db` reading `input`, writing `<prefix>.out/.dlq`.
pub fn promos_args_from(db: &str, input: &str, prefix: &str) -> Vec<String> {
    [
        "promos",
        "--brokers",
        &brokers(),
        "--postgres-url",
        db,
        "--promo-topic",
        input,
        "--notification-topic",
        &format!("{prefix}.out"),
        "--dead-letter-topic",
        &format!("{prefix}.dlq"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// An unbounded promos job on `db` and the topics `<prefix>.in/.out/.dlq`, plus `extra` flags.
pub fn spawn_promos(db: &str, prefix: &str, extra: &[&str]) -> Job {
    let mut args = promos_args(db, prefix);
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(&argv)
}

/// (adv_campaign_id, client_id, trigger_datetime_created) of every feedback row, sorted.
pub fn feedback_rows(db: &str) -> Vec<(String, String, i32)> {
    let mut rows: Vec<_> = pg(db)
        .query(
            "SELECT adv_campaign_id, client_id, trigger_datetime_created FROM subscribers_feedback",
            &[],
        )
        .expect("query")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    rows.sort();
    rows
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A valid campaign message.
pub fn campaign_json(campaign: &str, restaurant: &str, start: i64, end: i64) -> String {
    format!(
        r#"{{"restaurant_id":"{restaurant}","adv_campaign_id":"{campaign}","adv_campaign_content":"c","adv_campaign_owner":"o","adv_campaign_owner_contact":"e","adv_campaign_datetime_start":{start},"adv_campaign_datetime_end":{end},"datetime_created":{start}}}"#
    )
}

/// A campaign message with every field that matters for versions.
pub fn campaign_version_json(
    campaign: &str,
    restaurant: &str,
    (start, end): (i64, i64),
    created: i64,
    content: &str,
) -> String {
    format!(
        r#"{{"restaurant_id":"{restaurant}","adv_campaign_id":"{campaign}","adv_campaign_content":"{content}","adv_campaign_owner":"o","adv_campaign_owner_contact":"e","adv_campaign_datetime_start":{start},"adv_campaign_datetime_end":{end},"datetime_created":{created}}}"#
    )
}

/// Sends SIGTERM to `child` and asserts that it finishes cleanly within 30 s.
pub fn terminate(child: Job) -> Output {
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let out = wait(child, Duration::from_secs(30));
    assert_success(&out);
    out
}

/// Polls `check` every 200 ms until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every message of `topic` as (key, value), or nothing while the topic does not exist.
pub fn messages(topic: &str) -> Vec<(String, Option<String>)> {
    if dishflow::kafka::topic_partitions(&kafka(), topic).is_err() {
        return Vec::new();
    }
    consume(topic)
        .into_iter()
        .map(|m| (m.key.unwrap_or_default(), m.value))
        .collect()
}

/// The messages of `topic` per key, in order: `Some(value)` or `None` for a tombstone.
pub fn history(topic: &str) -> std::collections::BTreeMap<String, Vec<Option<String>>> {
    let mut per_key = std::collections::BTreeMap::<String, Vec<Option<String>>>::new();
    for (key, value) in messages(topic) {
        per_key.entry(key).or_default().push(value);
    }
    per_key
}

/// Per key of `topic`, the sequence of its messages as value (`true`) or tombstone.
pub fn shapes(topic: &str) -> std::collections::BTreeMap<String, Vec<bool>> {
    history(topic)
        .into_iter()
        .map(|(k, h)| (k, h.iter().map(Option::is_some).collect()))
        .collect()
}

/// The number after `name` in benchmark arguments, or `default`.
pub fn arg_value(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("DISHFLOW_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

pub fn redis() -> redis::Connection {
    redis::Client::open(redis_url().as_str())
        .and_then(|c| c.get_connection())
        .expect("connect to Redis (is scripts/services.sh running?)")
}

/// The counters as (user, item, name, count), sorted.
pub type Counters = Vec<(uuid::Uuid, uuid::Uuid, String, i32)>;

pub fn counters(db: &str, table: &str, item: &str, name: &str) -> Counters {
    let sql = format!("SELECT user_id, {item}, {name}, order_cnt FROM {table} ORDER BY 1, 2");
    pg(db)
        .query(&sql, &[])
        .expect("counters")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// The counters computed in SQL from the raw messages of `topic` and the Redis entries of
/// the keys matching `keys`: latest update_ts per object_id, CLOSED, distinct orders per
/// (user, product / category) — what the CDM tables must equal.
pub fn ground_truth(db: &str, topic: &str, keys: &str) -> (Counters, Counters) {
    let mut client = pg(db);
    client
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\";
             CREATE TABLE truth_raw (value json); CREATE TABLE truth_dict (key text, value json);",
        )
        .expect("truth tables");
    // Loaded with COPY (CSV: the JSON text quoted, quotes doubled).
    let csv = |value: &str| format!("\"{}\"\n", value.replace('"', "\"\""));
    {
        let mut copy = client
            .copy_in("COPY truth_raw (value) FROM STDIN (FORMAT csv)")
            .expect("copy");
        for message in consume(topic) {
            let value = message.value.unwrap_or_default();
            if serde_json::from_str::<serde_json::Value>(&value).is_ok() {
                copy.write_all(csv(&value).as_bytes()).expect("raw");
            }
        }
        copy.finish().expect("copy raw");
    }
    let mut con = redis();
    let keys: Vec<String> = con.keys(keys).expect("keys");
    let mut copy = client
        .copy_in("COPY truth_dict (key, value) FROM STDIN (FORMAT csv)")
        .expect("copy");
    for key in keys {
        let value: String = con.get(&key).expect("get");
        let line = format!("\"{}\",{}", key.replace('"', "\"\""), csv(&value));
        copy.write_all(line.as_bytes()).expect("dict");
    }
    copy.finish().expect("copy dict");
    let query = |key: &str, name: &str| {
        format!(
            "WITH latest AS (
               SELECT DISTINCT ON ((value->>'object_id')::int)
                      (value->>'object_id')::int AS id, value->'payload' AS p
               FROM truth_raw WHERE value->>'object_type' = 'order'
               ORDER BY (value->>'object_id')::int,
                        (value->'payload'->>'update_ts')::timestamp DESC,
                        (value->'payload')::text DESC),
             lines AS (
               SELECT l.id, l.p->'user'->>'id' AS user_id, l.p->'restaurant'->>'id' AS rid,
                      i->>'id' AS pid
               FROM latest l, json_array_elements(l.p->'order_items') i
               WHERE l.p->>'final_status' = 'CLOSED'),
             menu AS (
               SELECT d.key AS rid, m->>'_id' AS pid, m->>'name' AS product,
                      m->>'category' AS category
               FROM truth_dict d, json_array_elements(d.value->'menu') m
               WHERE d.value->'menu' IS NOT NULL)
             SELECT uuid_generate_v5($1, user_id), uuid_generate_v5($1, {key}), {name},
                    count(DISTINCT id)::int
             FROM lines JOIN menu USING (rid, pid)
             WHERE user_id IN (SELECT key FROM truth_dict WHERE value->'login' IS NOT NULL)
             GROUP BY 1, 2, 3 ORDER BY 1, 2"
        )
    };
    let ns: uuid::Uuid = *dataflows::orders::NAMESPACE;
    let run = |client: &mut postgres::Client, sql: String| -> Counters {
        client
            .query(&sql, &[&ns])
            .expect("truth")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    let products = run(&mut client, query("pid", "product"));
    let categories = run(&mut client, query("category", "category"));
    client
        .batch_execute("DROP TABLE truth_raw; DROP TABLE truth_dict;")
        .expect("drop truth");
    (products, categories)
}

/// A free TCP port on 127.0.0.1 (for a job's `--metrics-addr`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// `GET path` on 127.0.0.1:`port`: (status, body); `None` while nothing listens there.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Sum of the samples of metric `name` in a Prometheus text exposition whose labels
/// contain every `label="value"` of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    dishflow::metrics::parse_series(text, name)
        .iter()
        .filter(|(series, _)| labels.iter().all(|l| series.contains(l)))
        .map(|(_, value)| value)
        .sum()
}

/// A port p with p and p + 1 free (two processes of a cluster, a broker behind a proxy).
pub fn two_free_ports() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Sends `signal` (e.g. "TERM", "KILL", "STOP") to `child`.
pub fn signal(child: &Job, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal}");
}

/// The flags of the two processes of a cluster named `name` (`--processes 2 --process i
/// --hostfile F`), with a fresh hostfile on two free loopback ports.
pub fn two_process_cluster(name: &str) -> [Vec<String>; 2] {
    let port = two_free_ports();
    let hostfile = std::env::temp_dir().join(format!("{name}.hosts"));
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{port}\n127.0.0.1:{}\n", port + 1),
    )
    .expect("hostfile");
    let hostfile = hostfile.to_string_lossy().to_string();
    [0, 1].map(|i: usize| {
        [
            "--processes",
            "2",
            "--process",
            &i.to_string(),
            "--hostfile",
            &hostfile,
        ]
        .map(String::from)
        .to_vec()
    })
}
