//! W5: the orders backlog, its limits and Pathway peer.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use dishflow_testkit::*;
use serde_json::{Value, json};

use super::*;

/// The WAL position of the server behind `client`, in bytes.
pub(crate) fn wal_lsn(client: &mut postgres::Client) -> i64 {
    client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .expect("lsn")
        .get(0)
}

/// The tables the orders job writes, by layer.
const STG_TABLES: &[&str] = ORDERS_TABLES.split_at(1).0;
const DDS_TABLES: &[&str] = ORDERS_TABLES.split_at(15).0.split_at(1).1;
const CDM_TABLES: &[&str] = ORDERS_TABLES.split_at(15).1;

/// Postgres's own cost of the rows a run left: every row of `tables` in database `from`,
/// COPYed (binary) into the same, empty tables of `to`, a table at a time, each its own
/// transaction. The rows are read out before the clock starts, so the seconds are the
/// server's write work alone (constraints, indexes, WAL, commit). Returns (seconds, rows).
pub(crate) fn copy_rows_alone(from: &str, to: &str, tables: &[&str]) -> (f64, u64) {
    use std::io::{Read, Write};
    let (mut from, mut to) = (pg(from), pg(to));
    let (mut seconds, mut rows) = (0.0, 0);
    for table in tables {
        let mut data = Vec::new();
        from.copy_out(&format!("COPY {table} TO STDOUT (FORMAT binary)"))
            .expect("copy out")
            .read_to_end(&mut data)
            .expect("read");
        let started = Instant::now();
        let mut writer = to
            .copy_in(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
            .expect("copy in");
        // The client sends what one write gets as one message: at most 1 GB to Postgres.
        for piece in data.chunks(1 << 20) {
            writer.write_all(piece).expect("write");
        }
        rows += writer.finish().expect("copy in");
        seconds += started.elapsed().as_secs_f64();
    }
    (seconds, rows)
}

/// W5: the orders backlog (`workers` threads for dishflow).
pub(crate) fn w5(n: u64, rounds: usize, workers: usize, pathway: Option<&str>) -> Value {
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
    let mut copy_s = Vec::new();
    let mut copied = 0;
    let mut wal = Vec::new();
    let timeout = RUN_TIMEOUT;
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
        ])
        // As many threads as dishflow's workers; Pathway's default commit interval.
        .env("PATHWAY_THREADS", &workers);
        c
    };
    let pathway_engine = if workers == "1" {
        "pathway (CDM counters only; 1 thread, default commits)"
    } else {
        "pathway (CDM counters only; as many threads as dishflow's workers, default commits)"
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
            let engine = pathway_engine;
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
            // STG and the Data Vault too, from the raw messages and the dictionaries.
            let differences = layer_differences(&db, &topic, &keys);
            if differences.is_empty() {
                Ok(rows)
            } else {
                Err(format!("layers differ from the raw input: {differences:?}"))
            }
        })
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
        // And every row the run left in every table it writes, COPYed alone.
        let name = format!("{prefix}_c{round}");
        let copy = copy_database(&template_name, &name);
        let (seconds, rows) = copy_rows_alone(&db, &copy, &ORDERS_TABLES);
        drop_database(&name).expect("drop the copy");
        eprintln!("w5 round {round}: limit copy of {rows} rows {seconds:.1} s");
        copy_s.push(seconds);
        copied = rows;
        last_db = db;

        if let Some(python) = pathway {
            let db = copy_database(&template_name, &format!("{prefix}_p{round}"));
            let m = measure_peer(
                &mut peer(python, &db, &topic, &keys),
                &mut series,
                pathway_engine,
            );
            eprintln!("w5 round {round}: pathway {m:?}");
            let Some(m) = m else { continue };
            let check = pathway_counters(&db)
                .map_err(|e| format!("reading Pathway's counters: {e}"))
                .and_then(|counters| check_counters(counters, &truth));
            record(&mut series, pathway_engine, m, Some(check));
        }
    }
    // Rows per layer, as the last run wrote them.
    let layer =
        |tables: &[&str]| -> i64 { tables.iter().map(|t| count_rows(&last_db, t, "true")).sum() };
    let cdm_rows = layer(&CDM_TABLES[..2]);
    let rows = json!({
        "stg": layer(STG_TABLES),
        "dds": layer(DDS_TABLES),
        "cdm": cdm_rows,
        "cdm_tags_and_summary": layer(&CDM_TABLES[2..]),
    });
    clean_up(&prefix);
    let mut summaries: BTreeMap<&str, Value> =
        series.iter().map(|(k, s)| (*k, s.summary(n))).collect();
    summaries.insert(
        "limit: batched upsert of the final CDM keys",
        json!({"wall_s": upsert_s, "median_s": median(&upsert_s), "rows": cdm_rows}),
    );
    summaries.insert(
        "limit: binary COPY of every row the run left (STG, DDS, CDM), into empty tables",
        json!({"wall_s": copy_s, "median_s": median(&copy_s), "output_rows": copied}),
    );
    json!({
        "workload": format!("W5, {n} orders"),
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
pub(crate) fn pathway_counters(db: &str) -> Result<(Counters, Counters), postgres::Error> {
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
