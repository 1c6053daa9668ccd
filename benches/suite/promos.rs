//! W1, W2, W2skew and S: the promos workloads, their fixtures, limits and Pathway peer.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use dishflow_testkit::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};

use super::*;

/// The Pathway peer of the promos job (`scripts/bench/peers/promos.py`) reading `input`,
/// writing the topic `out` and the table `pathway_feedback` of `db`.
pub(crate) fn pathway_promos(python: &str, input: &str, out: &str, db: &str) -> Command {
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

/// The Pathway rows of the backlog workloads: its default commit interval
/// (`autocommit_duration_ms`, 1,500 ms), one thread or two (`PATHWAY_THREADS`).
pub(crate) const PATHWAY_1: &str = "pathway (1 thread, default commits)";
/// See [`PATHWAY_1`].
pub(crate) const PATHWAY_2: &str = "pathway (2 threads, default commits)";

/// Creates database `name` as a copy of `template` (which must have no connections).
pub(crate) fn copy_database(template: &str, name: &str) -> String {
    let mut admin = pg(&format!("{}/postgres", postgres_base()));
    admin
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
        .expect("copy database");
    format!("{}/{name}", postgres_base())
}

pub(crate) fn dsn(db_url: &str) -> String {
    let name = db_url.rsplit('/').next().unwrap_or("postgres");
    let base = postgres_base();
    let rest = base.trim_start_matches("postgres://");
    let (user, host) = rest.split_once('@').unwrap_or(("postgres", rest));
    let (host, port) = host.split_once(':').unwrap_or((host, "5432"));
    format!("host={host} port={port} dbname={name} user={user}")
}

/// A promos workload: `promos` campaigns round robin over `restaurants`, `subscribers`
/// clients round robin over the same restaurants → promos × subscribers / restaurants drafts.
pub(crate) struct PromosWorkload {
    pub(crate) name: &'static str,
    pub(crate) promos: u64,
    pub(crate) restaurants: u64,
    pub(crate) subscribers: u64,
    /// Subscribers of the first restaurant (the skewed case; the rest round robin).
    pub(crate) hot: u64,
    /// W1's limit (the pipe) or W2's (2M produce + binary COPY, concurrently).
    pub(crate) pipe_limit: bool,
    /// Also run 2 workers and 2 processes × 1 worker (the scaling workload S).
    pub(crate) scaling: bool,
}

impl PromosWorkload {
    /// Every restaurant gets promos / restaurants campaigns, each for all its subscribers.
    fn drafts(&self) -> u64 {
        (self.promos / self.restaurants.max(1)) * self.subscribers
    }
}

/// The input topic and a template database (subscribers + schema) of workload `w`.
pub(crate) fn promos_fixture(w: &PromosWorkload, prefix: &str) -> (String, String) {
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
pub(crate) fn empty_promos_fixture(prefix: &str, template: &str) -> (String, String) {
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
pub(crate) fn produce_copy(n: u64, fanout: u64, topic: &str, db: &str) {
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
pub(crate) fn copy_rows(n: u64, fanout: u64, db: &str) {
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

/// W1, W2 and S: promos workloads.
pub(crate) fn promos_workload(w: &PromosWorkload, rounds: usize, pathway: Option<&str>) -> Value {
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
    let timeout = RUN_TIMEOUT;
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
    // Pathway as its users run a backlog: its default commit interval, and as many threads
    // as the dishflow rows beside it use cores (dishflow's default writes a backlog through
    // two Postgres connections).
    let peer = |python: &str, input: &str, out: &str, db: &str, threads: usize| -> Command {
        let mut c = pathway_promos(python, input, out, db);
        c.arg("--static")
            .env("PATHWAY_THREADS", threads.to_string());
        c
    };
    let pathways: &[(usize, &'static str)] = &[(1, PATHWAY_1), (2, PATHWAY_2)];
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
                &mut peer(python, &empty_input, &out, &db, 1),
                &mut series,
                PATHWAY_1,
            ) {
                series.entry(PATHWAY_1).or_default().empty.push(m.wall_s);
            }
        }

        single(&mut series, "dishflow", &format!("d{round}"), &[]);
        if !w.pipe_limit {
            // A backlog of fan-out through one Postgres connection (the default writes it
            // through two).
            single(
                &mut series,
                "dishflow, --feedback-connections 1",
                &format!("f{round}"),
                &["--feedback-connections", "1"],
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

        for &(threads, engine) in pathway.map_or(&[][..], |_| pathways) {
            let Some(python) = pathway else { break };
            let db = copy_database(&template, &format!("{prefix}_p{threads}_{round}"));
            let out = format!("{prefix}.pw{threads}_{round}");
            let m = measure_peer(
                &mut peer(python, &input, &out, &db, threads),
                &mut series,
                engine,
            );
            eprintln!("{} round {round}: {engine} {m:?}", w.name);
            let Some(m) = m else { continue };
            // Pathway writes its changes: a row is a draft where `diff = 1` (a retraction
            // would be a row with `diff = -1`, and its Kafka message a duplicate key).
            let check = check_promos(&expected, &db, "pathway_feedback", "diff = 1", &out);
            record(&mut series, engine, m, Some(check));
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
