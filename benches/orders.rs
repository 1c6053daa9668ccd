//! Benchmark of the orders job on the local services (run through `scripts/bench.sh orders`,
//! not as a test; the result goes to stdout as one JSON object).
//!
//! `backlog`: the initial load — N orders (default 50,000; ≈3 lines each, 100
//! restaurants, 5,000 users, some orders re-sent) produced once to a fresh topic, then
//! `dishflow orders --stop-at-end --from earliest` into a fresh database, `--runs` times
//! (default 3). Each run is timed from process start to exit (STG, DDS and CDM complete),
//! and the Postgres write volume is measured: rows per layer and WAL bytes generated.
//!
//! Usage: `cargo bench --bench orders -- [--orders N] [--runs N] [--workers N]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::*;
use serde_json::json;

fn wal_lsn(client: &mut postgres::Client) -> i64 {
    client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .expect("lsn")
        .get(0)
}

fn rows(db: &str, tables: &[&str]) -> i64 {
    let mut client = pg(db);
    tables
        .iter()
        .map(|t| {
            client
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .expect("count")
                .get::<_, i64>(0)
        })
        .sum()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let orders = arg_value(&args, "--orders", 50_000);
    let runs = arg_value(&args, "--runs", 3);
    let workers = arg_value(&args, "--workers", 1);
    let redis_url =
        std::env::var("DISHFLOW_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let prefix = unique("bench_orders");
    let topic = format!("{prefix}.orders");
    let started = Instant::now();
    let orders_arg = orders.to_string();
    let produce = [
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
        &orders_arg,
        "--restaurants",
        "100",
        "--users",
        "5000",
        "--seed",
        "1",
    ];
    assert_success(&dishflow(&produce, std::time::Duration::from_secs(600)));
    let produce_s = started.elapsed().as_secs_f64();
    let messages = consume(&topic).len();

    let mut seconds = Vec::new();
    let mut wal = Vec::new();
    let mut layers = json!(null);
    let workers_arg = workers.to_string();
    for _ in 0..runs {
        let db = database("bench_orders");
        // The schema exists before the clock starts (a first run creates it once).
        assert_success(&dishflow(
            &["setup", "--job", "orders", "--postgres-url", &db],
            std::time::Duration::from_secs(60),
        ));
        let mut admin = pg(&db);
        let lsn = wal_lsn(&mut admin);
        let argv = [
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
            "--from",
            "earliest",
            "--workers",
            &workers_arg,
        ];
        let start = Instant::now();
        assert_success(&dishflow(&argv, std::time::Duration::from_secs(600)));
        seconds.push(start.elapsed().as_secs_f64());
        wal.push((wal_lsn(&mut admin) - lsn) as f64);
        layers = json!({
            "stg_rows": rows(&db, &["stg.order_events"]),
            "dds_rows": rows(&db, &[
                "dds.h_user", "dds.h_product", "dds.h_category", "dds.h_restaurant",
                "dds.h_order", "dds.l_order_product", "dds.l_product_restaurant",
                "dds.l_product_category", "dds.l_order_user", "dds.s_user_names",
                "dds.s_product_names", "dds.s_restaurant_names", "dds.s_order_cost",
                "dds.s_order_status"]),
            "cdm_rows": rows(&db, &["cdm.user_product_counters", "cdm.user_category_counters"]),
        });
    }
    let report = json!({
        "benchmark": "orders_backlog",
        "orders": orders,
        "messages": messages,
        "workers": workers,
        "produce_s": produce_s,
        "runs_s": seconds,
        "median_s": median(&mut seconds.clone()),
        "min_s": seconds.iter().copied().fold(f64::INFINITY, f64::min),
        "max_s": seconds.iter().copied().fold(0.0, f64::max),
        "median_orders_per_s": orders as f64 / median(&mut seconds.clone()),
        "wal_bytes_median": median(&mut wal),
        "rows_written": layers,
    });
    println!("{report}");
}
