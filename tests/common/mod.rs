//! Helpers for integration tests against real Postgres and a Kafka-API broker.
//!
//! Addresses come from `DISHFLOW_TEST_BROKERS` and `DISHFLOW_TEST_POSTGRES` (defaults: the
//! local services that `scripts/services.sh` starts). Every test works in its own database
//! and topics, named after the test and a unique suffix, so tests run in parallel and repeat.

#![allow(dead_code)]

pub mod certs;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dishflow::cli::KafkaArgs;
use dishflow::sources::kafka::{ConsumedMessage, read_to_end};
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
        "{name}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Creates a fresh database and returns its URL.
pub fn database(name: &str) -> String {
    let db = unique(name);
    let mut admin =
        postgres::Client::connect(&format!("{}/postgres", postgres_base()), postgres::NoTls)
            .expect("connect to Postgres (is scripts/services.sh running?)");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create database");
    format!("{}/{db}", postgres_base())
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
pub fn live_fixture(name: &str) -> (String, String) {
    let db = database(name);
    subscribers_table(&db);
    assert_success(&dishflow(
        &["setup", "--postgres-url", &db],
        Duration::from_secs(60),
    ));
    (db, unique(name))
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

/// Creates `topic` and produces `messages` (key, value) to it, round robin over partitions.
pub fn produce_raw(topic: &str, partitions: i32, messages: &[Raw<'_>]) {
    dishflow::kafka::ensure_topic(&kafka(), topic, partitions).expect("create topic");
    let producer: BaseProducer = dishflow::kafka::client_config(&kafka(), &[])
        .create()
        .expect("producer");
    for (i, (key, value)) in messages.iter().enumerate() {
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).partition(i as i32 % partitions);
        if let Some(key) = key {
            record = record.key(*key);
        }
        if let Some(value) = value {
            record = record.payload(*value);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Creates `topic` and produces messages without key with `values`, round robin.
pub fn produce_values(topic: &str, partitions: i32, values: &[&str]) {
    let raw: Vec<Raw<'_>> = values.iter().map(|v| (None, Some(v.as_bytes()))).collect();
    produce_raw(topic, partitions, &raw);
}

/// Every message of `topic`.
pub fn consume(topic: &str) -> Vec<ConsumedMessage> {
    read_to_end(&kafka(), topic, Duration::from_secs(60)).expect("consume")
}

/// `dishflow` with `args`, run to completion (at most `timeout`).
pub fn dishflow(args: &[&str], timeout: Duration) -> Output {
    let child = spawn(args);
    wait(child, timeout)
}

/// `dishflow` with `args`, in the background, its output captured.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dishflow"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dishflow")
}

/// Waits for `child`, killing it (and failing) after `timeout`.
pub fn wait(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            let out = child.wait_with_output().expect("output");
            panic!(
                "dishflow did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
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
pub fn spawn_promos(db: &str, prefix: &str, extra: &[&str]) -> Child {
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
pub fn terminate(child: Child) -> Output {
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
pub fn signal(child: &Child, signal: &str) {
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
