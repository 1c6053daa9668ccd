//! W3 and W4: latency of a running promos job at a steady input rate.
//!
//! * **W3**: promos at 10, 100, 1,000 per second (fan-out 10: each for one of 100
//!   restaurants with 10 subscribers) for `--secs` seconds each. Measured per draft: promo
//!   handed to the producer → draft consumable from the notification topic, and → its
//!   feedback row committed (an `AFTER INSERT OR UPDATE` trigger on the feedback table sends
//!   `pg_notify`, which Postgres delivers at commit; a listener records the arrival).
//!   Floors in the same round: the broker's produce → consume round trip at the same rate and
//!   consumer settings, and the commit latency of single-row INSERTs at the same rate.
//! * **W4**: W3 at 100 promos/s while 10 subscriber rows per second are inserted (autocommit)
//!   into tables of 10k, 100k, 1M rows; measured per change: commit → draft consumable and →
//!   feedback row committed, plus the job's CPU over the window (cost per change vs table
//!   size). The Pathway peer runs twice: following the table as dishflow does (changes from
//!   a logical replication slot, every 10 ms) and re-reading the whole table every 100 ms.
//!   In W3 the table does not change and the peer reads it once.
//!
//! A run where an expected draft or row never arrived, arrived twice, or one arrived that the
//! input does not call for, is INVALID: the report shows why instead of its numbers.
//!
//! Every engine runs unbounded in its own database (a copy of one template) and topics; it is
//! warmed up (one draft through) before the window starts, and stopped after the last
//! expected draft arrived (or a deadline). CPU seconds and peak RSS come from /proc before
//! the stop.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::Producer;
use serde_json::{Value, json};

use super::arrivals::*;
use super::{copy_database, dishflow_command};
use dishflow_testkit::*;

/// Restaurants of the promos (each with `FAN_OUT` subscribers).
pub(crate) const RESTAURANTS: u64 = 100;
pub(crate) const FAN_OUT: u64 = 10;
/// How long to wait for the last output after the window.
pub(crate) const DRAIN: Duration = Duration::from_secs(60);
/// The consumers' fetch.wait.max.ms in every latency measurement, as "key:value".
pub(crate) const FETCH_WAIT: &str = "fetch.wait.max.ms:20";
/// The notify channel of the feedback trigger.
pub(crate) const CHANNEL: &str = "dishflow_bench_feedback";

/// A latency template: `subscribers` rows (the first RESTAURANTS × FAN_OUT are the promos'
/// restaurants "lr{r}"; the rest spread over other restaurants), the warm-up pair
/// (warm-r, warm-c), both feedback tables with the notify trigger, dishflow set up.
fn latency_template(prefix: &str, subscribers: u64) -> String {
    let url = database(&format!("{prefix}_tpl")).persist();
    let mut client = subscribers_table(&url);
    let promos_rows = RESTAURANTS * FAN_OUT;
    client
        .execute(
            "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
             SELECT 'lc' || g, 'lr' || (g % $1::int8) FROM generate_series(0, $2::int8 - 1) g",
            &[&(RESTAURANTS as i64), &(promos_rows as i64)],
        )
        .expect("subscribers");
    client
        .execute(
            "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
             SELECT 'oc' || g, 'or' || (g % 100000) FROM generate_series(1, $1::int8) g",
            &[&(subscribers.saturating_sub(promos_rows) as i64)],
        )
        .expect("other subscribers");
    client
        .batch_execute(
            "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
             VALUES ('warm-c', 'warm-r'); ANALYZE subscribers_restaurants",
        )
        .expect("warm-up subscriber");
    drop(client);
    let setup = dishflow_command(["setup", "--job", "promos", "--postgres-url", &url])
        .output()
        .expect("setup");
    assert!(setup.status.success(), "setup failed");
    pg(&url)
        .batch_execute(&format!(
            "CREATE TABLE pathway_feedback (restaurant_id text, adv_campaign_id text, \
               adv_campaign_content text, adv_campaign_owner text, \
               adv_campaign_owner_contact text, adv_campaign_datetime_start bigint, \
               adv_campaign_datetime_end bigint, client_id text, datetime_created bigint, \
               trigger_datetime_created bigint, time bigint, diff bigint);
             CREATE TABLE limit_rows (LIKE subscribers_feedback INCLUDING ALL);
             CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               PERFORM pg_notify('{CHANNEL}', NEW.adv_campaign_id || ':' || NEW.client_id);
               RETURN NULL;
             END $$;
             CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE ON subscribers_feedback
               FOR EACH ROW EXECUTE FUNCTION bench_notify();
             CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE ON pathway_feedback
               FOR EACH ROW EXECUTE FUNCTION bench_notify();"
        ))
        .expect("bench tables");
    url.rsplit('/').next().unwrap_or_default().to_string()
}

/// What runs: dishflow (default settings: it streams the subscribers' changes from a
/// logical replication slot, polled every 10 ms) or the Pathway peer (python, how it
/// follows the subscribers).
#[derive(Clone, Copy, PartialEq)]
enum Engine<'a> {
    Dishflow,
    Pathway(&'a str, Capture),
}

/// How the Pathway peer follows the subscribers table.
#[derive(Clone, Copy, PartialEq)]
enum Capture {
    /// A snapshot only (W3: the table does not change).
    Snapshot,
    /// The whole table re-read every 100 ms, the difference applied.
    Poll,
    /// Its changes taken from a logical replication slot every 10 ms, as dishflow does.
    Slot,
}

impl Engine<'_> {
    fn name(self) -> &'static str {
        match self {
            Engine::Dishflow => "dishflow",
            Engine::Pathway(_, Capture::Snapshot) => "pathway (10 ms commits)",
            Engine::Pathway(_, Capture::Poll) => {
                "pathway, full-table re-read every 100 ms (10 ms commits)"
            }
            Engine::Pathway(_, Capture::Slot) => {
                "pathway, replication slot polled every 10 ms (10 ms commits)"
            }
        }
    }

    fn spawn(self, db: &str, input: &str, out: &str, log: &std::path::Path) -> Child {
        let mut command = match self {
            Engine::Dishflow => {
                let mut args = promos_args_from(db, input, out);
                // promos_args_from names the output `<prefix>.out`: use `out` itself.
                let at = args.iter().position(|a| a == "--notification-topic");
                if let Some(at) = at {
                    args[at + 1] = out.to_string();
                }
                // Tansu answers a fetch that finds no data only after fetch.wait.max.ms (500
                // by default; Apache Kafka answers as soon as data arrives): every engine and
                // floor here reads with FETCH_WAIT. DISHFLOW_BENCH_ARGS: extra flags (to try settings).
                args.extend(["--kafka-property".into(), FETCH_WAIT.replace(':', "=")]);
                let extra = std::env::var("DISHFLOW_BENCH_ARGS").unwrap_or_default();
                args.extend(extra.split_whitespace().map(str::to_string));
                let mut c = dishflow_command(std::iter::empty::<&str>());
                c.args(&args).env(
                    "RUST_LOG",
                    std::env::var("DISHFLOW_BENCH_LOG").unwrap_or_else(|_| "info".into()),
                );
                c
            }
            Engine::Pathway(python, capture) => {
                let mut c = super::pathway_promos(python, input, out, db);
                c.args([
                    "--fetch-wait-ms",
                    FETCH_WAIT.split(':').nth(1).unwrap_or("5"),
                    // For latency a Pathway user commits often (its default is 1,500 ms).
                    "--autocommit-ms",
                    "10",
                ]);
                match capture {
                    Capture::Snapshot => {}
                    Capture::Poll => {
                        c.args(["--follow", "--capture", "poll", "--poll-ms", "100"]);
                    }
                    Capture::Slot => {
                        c.args(["--follow", "--capture", "slot", "--poll-ms", "10"]);
                    }
                }
                c
            }
        };
        let log = std::fs::File::create(log).expect("log file");
        command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn engine")
    }
}

/// A measurement window: promos per second, subscriber inserts per second.
#[derive(Clone, Copy)]
struct Window {
    rate: u64,
    changes: u64,
}

/// One engine process, warmed up, then each of `windows` for `secs` seconds in turn (one
/// result per window).
fn engine_run(
    engine: Engine<'_>,
    template: &str,
    tag: &str,
    windows: &[Window],
    secs: u64,
) -> Vec<Value> {
    let db = copy_database(template, tag);
    fresh_broker();
    let input = format!("{tag}.in");
    let out = format!("{tag}.out");
    for topic in [&input, &out] {
        dishflow::kafka::ensure_topic(&kafka(), topic, 4).expect("topic");
    }
    let drafts = kafka_arrivals(&out, |_, payload| super::draft_key(payload));
    let rows = feedback_arrivals(&db);
    let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench")
        .join(format!("{tag}.log"));
    let mut child = engine.spawn(&db, &input, &out, &log);
    let producer = latency_producer();
    let now = now_secs();
    let valid = (now - 3600, now + 24 * 3600);
    // Warm-up: the job is running, the subscribers are loaded, the consumer positioned. The
    // campaign of the subscriber changes (W4) starts with it.
    send(
        &producer,
        &input,
        "warm-r",
        &campaign_json("warm", "warm-r", valid.0, valid.1),
    );
    send(
        &producer,
        &input,
        "chg-r",
        &campaign_json("chg", "chg-r", valid.0, valid.1),
    );
    producer.flush(Duration::from_secs(10)).expect("flush");
    wait_until(Duration::from_secs(300), "the warm-up draft", || {
        drafts.get("warm:warm-c")
    });

    let mut results = Vec::new();
    // Every draft the input calls for: one arriving under any other key is a wrong output.
    let mut allowed: std::collections::HashSet<String> = ["warm:warm-c".to_string()].into();
    for (w, window) in windows.iter().enumerate() {
        let (cpu_before, _) = usage(child.id());
        let started = Instant::now();
        let change_thread = (window.changes > 0).then(|| {
            let db = db.clone();
            let changes = window.changes;
            std::thread::spawn(move || {
                let mut client = pg(&db);
                let insert = client
                    .prepare(
                        "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
                         VALUES ($1, 'chg-r')",
                    )
                    .expect("prepare");
                let mut committed = Vec::new();
                paced(changes, secs, |i| {
                    client
                        .execute(&insert, &[&format!("n{w}_{i}")])
                        .expect("insert");
                    committed.push(Instant::now());
                });
                committed
            })
        });
        let sent = paced(window.rate, secs, |i| {
            let restaurant = format!("lr{}", i as u64 % RESTAURANTS);
            let campaign = format!("p{w}_{i}");
            send(
                &producer,
                &input,
                &restaurant,
                &campaign_json(&campaign, &restaurant, valid.0, valid.1),
            );
        });
        let window_s = started.elapsed().as_secs_f64();
        let expected: Vec<(String, usize)> = (0..sent.len())
            .flat_map(|i| {
                (0..FAN_OUT).map(move |k| {
                    let client = (i as u64 % RESTAURANTS) + k * RESTAURANTS;
                    (format!("p{w}_{i}:lc{client}"), i)
                })
            })
            .collect();
        allowed.extend(expected.iter().map(|(key, _)| key.clone()));
        let mut result = json!({
            "promo_to_draft": latencies(&sent, &expected, &drafts),
            "promo_to_row": latencies(&sent, &expected, &rows),
        });
        if let Some(thread) = change_thread {
            let committed = thread.join().expect("changes");
            let expected: Vec<(String, usize)> = (0..committed.len())
                .map(|i| (format!("chg:n{w}_{i}"), i))
                .collect();
            allowed.extend(expected.iter().map(|(key, _)| key.clone()));
            result["change_to_draft"] = latencies(&committed, &expected, &drafts);
            result["change_to_row"] = latencies(&committed, &expected, &rows);
        }
        // Cumulative over the run: a draft or row written twice, or one the input does not
        // call for, makes the run invalid.
        result["repeated"] = json!(drafts.repeats() + rows.repeats());
        result["unexpected"] = json!(drafts.unexpected(&allowed) + rows.unexpected(&allowed));
        let (cpu_after, rss) = usage(child.id());
        result["cpu_s_per_window_s"] = json!((cpu_after - cpu_before) / window_s);
        result["max_rss_mb"] = json!(rss);
        eprintln!("{tag} {} window {w}: {result}", engine.name());
        results.push(result);
    }
    drafts.stop();
    rows.stop();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    results
}

/// The broker's round trip at `rate` messages/s for `secs` s (draft-sized payloads).
fn round_trip_floor(tag: &str, rate: u64, secs: u64) -> Value {
    fresh_broker();
    let topic = format!("{tag}.rt");
    dishflow::kafka::ensure_topic(&kafka(), &topic, 4).expect("topic");
    let arrivals = kafka_arrivals(&topic, |key, _| {
        key.map(|k| String::from_utf8_lossy(k).into_owned())
    });
    let producer = latency_producer();
    let payload = campaign_json("x", "y", 0, 0);
    // The consumer is positioned once a first message is seen.
    send(&producer, &topic, "warm", &payload);
    wait_until(Duration::from_secs(60), "the warm-up message", || {
        arrivals.get("warm")
    });
    let sent = paced(rate, secs, |i| {
        send(&producer, &topic, &i.to_string(), &payload)
    });
    let expected: Vec<(String, usize)> = (0..sent.len()).map(|i| (i.to_string(), i)).collect();
    let result = latencies(&sent, &expected, &arrivals);
    arrivals.stop();
    result
}

/// Commit latency of single-row INSERTs (autocommit) at `rate` per second for `secs` s.
fn insert_floor(template: &str, tag: &str, rate: u64, secs: u64) -> Value {
    let db = copy_database(template, tag);
    let mut client = pg(&db);
    let insert = client
        .prepare(
            "INSERT INTO limit_rows (restaurant_id, adv_campaign_id, adv_campaign_content, \
             adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, \
             adv_campaign_datetime_end, datetime_created, client_id, trigger_datetime_created) \
             VALUES ('r', $1, 'c', 'o', 'e', 0, 0, 0, 'c', 0)",
        )
        .expect("prepare");
    let mut samples = Vec::new();
    paced(rate, secs, |i| {
        let started = Instant::now();
        client.execute(&insert, &[&i.to_string()]).expect("insert");
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    });
    percentiles(samples, 0)
}

/// Collects `runs` of one engine or floor: every percentile's median (and min–max) over
/// rounds, and `invalid_runs`: why a run's output was incomplete (an expected draft or row
/// that never arrived) or wrong (one that arrived twice).
fn over_rounds(runs: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    let Some(first) = runs.first().and_then(Value::as_object) else {
        return Value::Null;
    };
    let mut invalid = Vec::new();
    for run in runs {
        for (metric, v) in run.as_object().into_iter().flatten() {
            if let Some(n) = v["missing"].as_u64().filter(|n| *n > 0) {
                invalid.push(format!("{metric}: {n} never arrived"));
            }
        }
        if let Some(n) = run["repeated"].as_u64().filter(|n| *n > 0) {
            invalid.push(format!("{n} drafts or rows arrived twice"));
        }
        if let Some(n) = run["unexpected"].as_u64().filter(|n| *n > 0) {
            invalid.push(format!("{n} drafts or rows the input does not call for"));
        }
    }
    out.insert("invalid_runs".into(), json!(invalid));
    for (metric, v) in first {
        if v.is_object() {
            let mut m = serde_json::Map::new();
            for field in ["p50_ms", "p95_ms", "p99_ms", "max_ms"] {
                let values: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r[metric][field].as_f64())
                    .collect();
                if !values.is_empty() {
                    m.insert(field.to_string(), json!(super::median(&values)));
                    m.insert(format!("{field}_all"), json!(values));
                }
            }
            let missing: u64 = runs
                .iter()
                .filter_map(|r| r[metric]["missing"].as_u64())
                .sum();
            m.insert("missing".into(), json!(missing));
            out.insert(metric.clone(), Value::Object(m));
        } else if v.is_number() {
            let values: Vec<f64> = runs.iter().filter_map(|r| r[metric].as_f64()).collect();
            out.insert(metric.clone(), json!(super::median(&values)));
        }
    }
    Value::Object(out)
}

/// W3: `rounds` rounds, each: per rate both floors, dishflow and Pathway (if installed),
/// each engine in its own process on a freshly started broker.
pub fn w3(rates: &[u64], secs: u64, rounds: usize, pathway: Option<&str>) -> Value {
    let prefix = unique("w3");
    let template = latency_template(&prefix, RESTAURANTS * FAN_OUT);
    let mut per_rate = Vec::new();
    let mut runs: Vec<HashMap<&str, Vec<Value>>> = vec![HashMap::new(); rates.len()];
    for round in 0..rounds {
        for (r, &rate) in rates.iter().enumerate() {
            let tag = format!("{prefix}_r{rate}_{round}");
            runs[r]
                .entry("limit: Kafka round trip")
                .or_default()
                .push(json!({"promo_to_draft": round_trip_floor(&tag, rate, secs)}));
            runs[r]
                .entry("limit: single-row INSERT commit")
                .or_default()
                .push(json!({"promo_to_row": insert_floor(&template, &format!("{tag}_i"), rate, secs)}));
            let mut engines = vec![Engine::Dishflow];
            // The subscribers do not change here: the peer reads them once.
            engines.extend(pathway.map(|p| Engine::Pathway(p, Capture::Snapshot)));
            for (e, engine) in engines.into_iter().enumerate() {
                let window = Window { rate, changes: 0 };
                let run = engine_run(
                    engine,
                    &template,
                    // A name Postgres and Kafka take (engine names have spaces).
                    &format!("{tag}_e{e}"),
                    &[window],
                    secs,
                );
                runs[r].entry(engine.name()).or_default().extend(run);
            }
        }
    }
    super::clean_up(&prefix);
    for (rate, runs) in rates.iter().zip(&runs) {
        let engines: serde_json::Map<String, Value> = runs
            .iter()
            .map(|(k, v)| (k.to_string(), over_rounds(v)))
            .collect();
        per_rate.push(json!({"promos_per_s": rate, "engines": engines}));
    }
    json!({
        "workload": "W3",
        "what": format!(
            "promos at {rates:?}/s, fan-out {FAN_OUT}, {secs} s each, every engine process and \
             floor on a freshly started broker; latency from the promo handed to the producer \
             to the draft consumable (read_committed consumer) and to its feedback row \
             committed (pg_notify trigger); every Kafka reader with {FETCH_WAIT}"
        ),
        "rates": per_rate,
    })
}

/// W4: 100 promos/s with 10 subscriber inserts/s, over tables of `sizes` rows.
pub fn w4(sizes: &[u64], secs: u64, rounds: usize, pathway: Option<&str>) -> Value {
    let mut per_size = Vec::new();
    let window = Window {
        rate: 100,
        changes: 10,
    };
    for &size in sizes {
        let prefix = unique(&format!("w4_{size}"));
        let template = latency_template(&prefix, size);
        let mut runs: HashMap<&str, Vec<Value>> = HashMap::new();
        for round in 0..rounds {
            let mut engines = vec![Engine::Dishflow];
            for capture in [Capture::Slot, Capture::Poll] {
                engines.extend(pathway.map(|p| Engine::Pathway(p, capture)));
            }
            for (e, engine) in engines.into_iter().enumerate() {
                let tag = format!("{prefix}_{round}_e{e}");
                let run = engine_run(engine, &template, &tag, &[window], secs);
                runs.entry(engine.name()).or_default().extend(run);
            }
        }
        let engines: serde_json::Map<String, Value> = runs
            .iter()
            .map(|(k, v)| (k.to_string(), over_rounds(v)))
            .collect();
        per_size.push(json!({"subscribers": size, "engines": engines}));
        super::clean_up(&prefix);
    }
    json!({
        "workload": "W4",
        "what": format!(
            "100 promos/s (fan-out {FAN_OUT}) while 10 subscriber rows/s are inserted, {secs} s \
             each; change latency from the INSERT's commit to the draft consumable and to its \
             feedback row committed; job CPU seconds per second of window"
        ),
        "sizes": per_size,
    })
}

/// The markdown of W3 / W4 results.
pub fn markdown(result: &Value) -> String {
    let mut md = String::new();
    let (rows, label, metrics): (&str, &str, &[&str]) = match result["workload"].as_str() {
        Some("W3") => ("rates", "promos_per_s", &["promo_to_draft", "promo_to_row"]),
        Some("W4") => (
            "sizes",
            "subscribers",
            &["change_to_draft", "change_to_row", "promo_to_draft"],
        ),
        _ => return md,
    };
    let w = result["workload"].as_str().unwrap_or_default();
    md.push_str(&format!(
        "\n### {w}\n\n{}\n\n| {label} | engine | measured | p50 ms | p95 ms | p99 ms | max ms | missing | CPU s/s | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|\n",
        result["what"].as_str().unwrap_or_default()
    ));
    let ms = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "—".to_string(), |x| format!("{x:.1}"))
    };
    for row in result[rows].as_array().into_iter().flatten() {
        let mut engines: Vec<(&String, &Value)> = row["engines"]
            .as_object()
            .map(|o| o.iter().collect())
            .unwrap_or_default();
        engines.sort_by_key(|(name, _)| (!name.starts_with("dishflow"), name.to_string()));
        for (engine, e) in engines {
            if let Some(why) = e["invalid_runs"].as_array().and_then(|i| i.first()) {
                md.push_str(&format!(
                    "| {} | {engine} | INVALID: {} | — | — | — | — | — | — | — |\n",
                    row[label],
                    why.as_str().unwrap_or_default()
                ));
                continue;
            }
            for metric in metrics {
                let m = &e[metric];
                if m.is_null() {
                    continue;
                }
                md.push_str(&format!(
                    "| {} | {engine} | {metric} | {} | {} | {} | {} | {} | {} | {} |\n",
                    row[label],
                    ms(&m["p50_ms"]),
                    ms(&m["p95_ms"]),
                    ms(&m["p99_ms"]),
                    ms(&m["max_ms"]),
                    m["missing"],
                    e["cpu_s_per_window_s"]
                        .as_f64()
                        .map_or_else(|| "—".to_string(), |x| format!("{x:.2}")),
                    e["max_rss_mb"]
                        .as_f64()
                        .map_or_else(|| "—".to_string(), |x| format!("{x:.0}")),
                ));
            }
        }
    }
    md
}
