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
//! * **SOAK** (only with `--only SOAK`, `--minutes N`, default 30): the three jobs at once at
//!   steady rates; per minute each job's memory, CPU and p99 latency, every output checked
//!   at the end (see [`soak`]).
//! * **W6** geo: N users × D days of social-app events → the three geo marts, against the
//!   legacy engine (PySpark, `scripts/bench/peers/geo_spark.py`, installed by
//!   `scripts/bench/peers/setup.sh spark`; skipped without DISHFLOW_SPARK_PYTHON); then one
//!   more day to a running job (probe latency) and its memory after D, D + 1 and 2 × D days
//!   (see [`geo`]).
//!
//! Usage: `cargo bench --bench suite -- [--quick] [--rounds N]
//! [--only W1,W2,W2skew,S,W3,W4,W5,W6] [--secs N] [--orders N[,N…]] [--workers N] [--geo-users N]
//! [--geo-days D] [--geo-rate R]` (`--secs`: W3/W4's window per rate or size, default 60;
//! `--orders`: W5's backlog sizes, a row each (default 50,000); `--workers`: dishflow's
//! workers there; `--geo-users` (40,000),
//! `--geo-days` (30), `--geo-rate` (1,000 events/s of the further day): W6)
//! (`--quick`: every size ÷ 20, 3 s windows, one round)
//! (through `scripts/bench.sh`, which starts the services and installs the peer).

#[path = "suite/arrivals.rs"]
mod arrivals;
#[path = "suite/checks.rs"]
mod checks;
#[path = "suite/dashboard.rs"]
mod dashboard;
#[path = "suite/geo.rs"]
mod geo;
#[path = "suite/latency.rs"]
mod latency;
#[path = "suite/orders.rs"]
mod orders;
#[path = "suite/promos.rs"]
mod promos;
#[path = "suite/report.rs"]
mod report;
#[path = "suite/runs.rs"]
mod runs;
#[path = "suite/soak.rs"]
mod soak;
#[path = "suite/topics.rs"]
mod topics;

use std::time::Instant;

use dishflow_testkit::*;
use serde_json::json;

use checks::*;
use orders::*;
use promos::*;
use report::*;
use runs::*;
use topics::*;

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
    let only: Vec<String> = arg_list(&args, "--only").unwrap_or_default();
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
        let rates: Vec<u64> = arg_list(&args, "--rates").unwrap_or_else(|| vec![10, 100, 1000]);
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
        // `--orders N[,N…]`: one W5 row per backlog size (how time and memory grow with it).
        let sizes: Vec<u64> = arg_list(&args, "--orders").unwrap_or_else(|| vec![50_000]);
        for orders in sizes {
            push_timed(&mut results, || {
                w5(
                    scale(orders),
                    rounds,
                    arg_value(&args, "--workers", 1),
                    pathway.as_deref(),
                )
            });
        }
    }
    if wanted("W6") {
        let spark = std::env::var("DISHFLOW_SPARK_PYTHON").ok();
        let w = geo::GeoWorkload {
            users: scale(arg_value(&args, "--geo-users", 40_000) as u64),
            days: arg_value(&args, "--geo-days", 30) as u64,
            rate: arg_value(&args, "--geo-rate", 1_000) as u64,
            rounds,
            spark: spark.as_deref(),
        };
        push_timed(&mut results, || geo::w6(&w));
    }
    if wanted("D") {
        push_timed(&mut results, || {
            dashboard::d(&dashboard::sizes(quick), arg_value(&args, "--requests", 50))
        });
    }
    // The soak runs only when asked for by name (it takes `--minutes`, default 30).
    if only.iter().any(|o| o == "SOAK") {
        let minutes = arg_value(&args, "--minutes", 30) as u64;
        push_timed(&mut results, || soak::soak(minutes));
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
