//! W6: the geo job against the legacy engine (a PySpark batch,
//! `scripts/bench/peers/geo_spark.py`) on the same events.
//!
//! * **backlog**: `dishflow produce events` (USERS users × DAYS days) to Kafka and to a file;
//!   `dishflow geo --stop-at-end` from Kafka to complete marts, and Spark from the file to
//!   its tables (process start → tables written), each also on an empty input. Both engines'
//!   marts are compared row by row with the SQL recomputation of `dishflow_testkit::geo`
//!   (computed once from the file, in the template database): a difference makes the run
//!   INVALID — so two valid engines have equal marts.
//! * **incremental**: a running job with the backlog loaded gets one more day of the same
//!   users at `--geo-rate` events/s, with a probe every 100 ms — a message of a new user,
//!   whose `mart.geo_users` row's commit a trigger reports (`pg_notify`): p50/p99 from
//!   handing the probe to the producer to that commit. Spark's answer to the same change is
//!   a re-run over the window (backlog + the day), timed in every round and checked against
//!   the SQL recomputation over both files. The job's marts are then checked against the SQL
//!   recomputation over everything in the topic.
//! * Spark writes its marts with the DataFrame JDBC writer, as its users would; its backlog
//!   run is also reported in parts (JVM start, session, compute, JDBC write).
//! * **memory**: the running job's resident memory (VmRSS) once caught up with DAYS days,
//!   after the further day, and after DAYS more days (2 × DAYS in all).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate};
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::{Value, json};

use super::arrivals::*;
use super::*;
use dishflow_testkit::*;

/// The first day of the data set (`produce events`' default).
const START: &str = "2022-05-01";
/// User ids of the probes (above any user of the data set).
const PROBE_USER: i64 = 2_000_000_000;
/// The notify channel of the probes' trigger.
const PROBE_CHANNEL: &str = "dishflow_bench_geo";
/// Spark's tables (`geo_spark.py --schema spark`).
const SPARK_MARTS: [&str; 3] = ["spark.zones", "spark.users", "spark.recommendations"];
const SPARK: &str = "spark (legacy batch)";
const SPARK_RERUN: &str = "spark (legacy batch), re-run with one more day";
/// The PostgreSQL JDBC driver `scripts/bench/peers/setup.sh spark` installs.
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// Spark's phases of one run (`geo_spark.py --timings`): session, compute, write seconds.
fn spark_phases(timings: &Path) -> Option<[f64; 3]> {
    let text = std::fs::read_to_string(timings).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Some([
        v["session_s"].as_f64()?,
        v["compute_s"].as_f64()?,
        v["write_s"].as_f64()?,
    ])
}

/// What W6 runs: the data set's size, the rate of the further day, and the Spark peer's
/// virtualenv python (`scripts/bench/peers/setup.sh spark`), if any.
pub(crate) struct GeoWorkload<'a> {
    pub(crate) users: u64,
    pub(crate) days: u64,
    pub(crate) rate: u64,
    pub(crate) rounds: usize,
    pub(crate) spark: Option<&'a str>,
}

/// `dishflow produce events` of `users` for `days` days from `start` days after START, with
/// `extra` arguments (`--topic …`, `--out …`).
fn produce_events(users: u64, days: u64, start: u64, extra: &[&str]) {
    let first = day(start).to_string();
    let (users, days) = (users.to_string(), days.to_string());
    let out = dishflow_command(
        [
            "produce",
            "events",
            "--brokers",
            &brokers(),
            "--users",
            &users,
            "--days",
            &days,
            "--start",
            &first,
            "--seed",
            "1",
        ]
        .iter()
        .chain(extra),
    )
    .output()
    .expect("produce events");
    assert!(
        out.status.success(),
        "produce events failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn day(n: u64) -> NaiveDate {
    NaiveDate::parse_from_str(START, "%Y-%m-%d").expect("date") + Days::new(n)
}

fn lines(files: &[&Path]) -> impl Iterator<Item = String> {
    files.iter().flat_map(|f| {
        std::io::BufReader::new(std::fs::File::open(f).expect("events file"))
            .lines()
            .map(|l| l.expect("a line"))
    })
}

/// The Spark peer on `files` into `db` (schema `spark`), through spark-submit, so that the
/// measured process is the JVM with the Python driver as its child (wait4 sums their CPU and
/// takes the larger peak RSS).
fn spark_command(python: &str, db: &str, files: &[&Path], timings: &Path) -> Command {
    let bin = Path::new(python).parent().expect("venv bin");
    let mut c = Command::new(bin.join("spark-submit"));
    c.args(["--master", "local[2]", "--driver-memory", "4g"])
        // The DataFrame JDBC writer's driver (Debian libpostgresql-jdbc-java).
        .args(["--jars", JDBC_JAR])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/bench/peers/geo_spark.py"
        ))
        .args(["--dsn", &dsn(db), "--schema", "spark"])
        .arg("--timings")
        .arg(timings)
        .arg("--events")
        .args(files)
        .env("PYSPARK_PYTHON", python)
        .env("PYSPARK_DRIVER_PYTHON", python)
        .env("SPARK_LOCAL_IP", "127.0.0.1");
    c
}

/// Where `differences` says the marts differ from the SQL recomputation, or the rows of the
/// three marts of `db` when they do not.
fn verdict(db: &str, differences: MartDifferences, tables: [&str; 3]) -> Result<i64, String> {
    if differences.is_empty() {
        Ok(tables.iter().map(|t| count_rows(db, t, "true")).sum())
    } else {
        Err(format!(
            "marts differ from the SQL recomputation: {differences:?}"
        ))
    }
}

/// A probe: a message with coordinates (Sydney) of a user of its own, at `time`.
fn probe(k: usize, time: &str) -> (String, String) {
    let user = PROBE_USER + k as i64;
    let at = (-33.87 + k as f64 * 1e-3, 151.21);
    let id = 9_000_000_000_000_000 + k as i64;
    (
        user.to_string(),
        geo_message(id, user, None, time, Some(at)),
    )
}

/// W6 (see the module docs).
pub(crate) fn w6(w: &GeoWorkload<'_>) -> Value {
    fresh_broker();
    let prefix = unique("w6");
    let topic = format!("{prefix}.events");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let file = |name: &str| -> PathBuf { dir.join(format!("{prefix}.{name}.jsonl")) };
    let (backlog, next, empty) = (file("backlog"), file("next"), file("empty"));
    produce_events(
        w.users,
        w.days,
        0,
        &["--topic", &topic, "--out", backlog.to_str().expect("path")],
    );
    produce_events(
        w.users,
        1,
        w.days,
        &["--file-only", "--out", next.to_str().expect("path")],
    );
    std::fs::write(&empty, "").expect("empty file");
    let empty_topic = format!("{prefix}.empty");
    dishflow::kafka::ensure_topic(&kafka(), &empty_topic, 4).expect("topic");
    let events = lines(&[&backlog]).count() as u64;

    let template = database(&format!("{prefix}_tpl")).persist();
    let setup = dishflow_command(["setup", "--job", "geo", "--postgres-url", &template])
        .output()
        .expect("setup");
    assert!(setup.status.success(), "setup --job geo failed");
    let started = Instant::now();
    geo_ground_truth_of(&template, lines(&[&backlog]));
    eprintln!(
        "w6: {events} events; SQL recomputation {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let template_name = template.rsplit('/').next().unwrap_or_default().to_string();
    // Spark's re-run over the backlog and the further day is checked like every run: against
    // the SQL recomputation over both files.
    let next_template = database(&format!("{prefix}_tplnext")).persist();
    let setup = dishflow_command(["setup", "--job", "geo", "--postgres-url", &next_template])
        .output()
        .expect("setup");
    assert!(setup.status.success(), "setup --job geo failed");
    geo_ground_truth_of(&next_template, lines(&[&backlog, &next]));
    let next_template_name = next_template
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let timings = dir.join(format!("{prefix}.spark-timings.json"));
    // Spark's phases per run: the script's start → session, compute, JDBC write; the rest of
    // the wall time is the JVM's start before the script.
    let mut phases: Vec<[f64; 4]> = Vec::new();

    let mut series: BTreeMap<&'static str, Series> = BTreeMap::new();
    let mut rerun_s = Vec::new();
    let timeout = RUN_TIMEOUT;
    let dishflow = |db: &str, topic: &str, dlq: &str, workers: &str| -> Command {
        dishflow_command(geo_topic_args(
            db,
            topic,
            dlq,
            &["--stop-at-end", "--workers", workers],
        ))
    };
    for round in 0..w.rounds {
        // The default (1 worker), and 2 workers: the two cores Spark's local[2] uses.
        for (engine, workers) in [("dishflow", "1"), ("dishflow --workers 2", "2")] {
            let tag = format!("{prefix}_d{workers}e{round}");
            let db = copy_database(&template_name, &tag);
            let dlq = format!("{tag}.dlq");
            let m = measure(&mut dishflow(&db, &empty_topic, &dlq, workers), timeout);
            series.entry(engine).or_default().empty.push(m.wall_s);
            let tag = format!("{prefix}_d{workers}r{round}");
            let db = copy_database(&template_name, &tag);
            let dlq = format!("{tag}.dlq");
            let m = measure(&mut dishflow(&db, &topic, &dlq, workers), timeout);
            eprintln!("w6 round {round}: {engine} {m:?}");
            let check = verdict(&db, geo_differences(&db), GEO_MARTS);
            record(&mut series, engine, m, Some(check));
        }

        let Some(python) = w.spark else { continue };
        let db = copy_database(&template_name, &format!("{prefix}_se{round}"));
        if let Some(m) = measure_peer(
            &mut spark_command(python, &db, &[&empty], &timings),
            &mut series,
            SPARK,
        ) {
            series.entry(SPARK).or_default().empty.push(m.wall_s);
        }
        let db = copy_database(&template_name, &format!("{prefix}_s{round}"));
        std::fs::remove_file(&timings).ok();
        let m = measure_peer(
            &mut spark_command(python, &db, &[&backlog], &timings),
            &mut series,
            SPARK,
        );
        eprintln!("w6 round {round}: spark {m:?}");
        if let Some(m) = m {
            if let Some([session, compute, write]) = spark_phases(&timings) {
                let jvm = m.wall_s - session - compute - write;
                phases.push([jvm, session, compute, write]);
            }
            let check = verdict(&db, geo_differences_of(&db, SPARK_MARTS), SPARK_MARTS);
            record(&mut series, SPARK, m, Some(check));
        }
        let db = copy_database(&next_template_name, &format!("{prefix}_sr{round}"));
        let rerun = measure_peer(
            &mut spark_command(python, &db, &[&backlog, &next], &timings),
            &mut series,
            SPARK_RERUN,
        );
        eprintln!("w6 round {round}: spark re-run with one more day {rerun:?}");
        if let Some(m) = rerun {
            rerun_s.push(m.wall_s);
            let check = verdict(&db, geo_differences_of(&db, SPARK_MARTS), SPARK_MARTS);
            record(&mut series, SPARK_RERUN, m, Some(check));
        }
    }
    let incremental = incremental(w, &template_name, &prefix, &topic, &next);
    clean_up(&prefix);
    for f in [&backlog, &next, &empty] {
        std::fs::remove_file(f).ok();
    }
    let mut engines: BTreeMap<&str, Value> = series
        .iter()
        .map(|(k, s)| (*k, s.summary(events)))
        .collect();
    if let Some(spark) = engines.get_mut(SPARK) {
        spark["rerun_with_one_more_day_s"] = json!(rerun_s);
        spark["rerun_median_s"] = json!((!rerun_s.is_empty()).then(|| median(&rerun_s)));
        let phase = |i: usize| median(&phases.iter().map(|p| p[i]).collect::<Vec<_>>());
        spark["phases_median_s"] = json!((!phases.is_empty()).then(|| json!({
            "jvm_start": phase(0),
            "session": phase(1),
            "compute": phase(2),
            "write_jdbc": phase(3),
        })));
    }
    json!({
        "workload": "W6",
        "what": format!(
            "geo: {} users × {} days = {events} events → zone mart, user mart, friend \
             recommendations (dishflow from Kafka with 1 and 2 workers; Spark local[2] from the same \
             events in a file); every run's marts equal to the SQL recomputation",
            w.users, w.days
        ),
        "records": events,
        "engines": engines,
        "incremental": incremental,
    })
}

/// The incremental part of W6: a running job, the further day at `w.rate` with probes, and
/// its memory after DAYS, DAYS + 1 and 2 × DAYS days.
fn incremental(
    w: &GeoWorkload<'_>,
    template: &str,
    prefix: &str,
    topic: &str,
    next: &Path,
) -> Value {
    let db = copy_database(template, &format!("{prefix}_live"));
    pg(&db)
        .batch_execute(&format!(
            "CREATE FUNCTION probe_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_notify('{PROBE_CHANNEL}', NEW.user_id::text); RETURN NULL; END $$;
             CREATE TRIGGER probe_notify AFTER INSERT ON mart.geo_users
             FOR EACH ROW WHEN (NEW.user_id >= {PROBE_USER}) EXECUTE FUNCTION probe_notify();"
        ))
        .expect("probe trigger");
    let arrivals = notify_arrivals(&db, PROBE_CHANNEL);
    let started = Instant::now();
    // The job reads with librdkafka's default fetch wait (500 ms), not the 20 ms of W3/W4:
    // Tansu's cost per fetch grows with the batches a partition holds, and with millions of
    // events in the topic a 20 ms wait left the job starved (measured 2026-12-02: about 7
    // fetches/s, each ~150 ms of broker CPU, the day's probes stopped arriving). The day is
    // produced as an application would, with librdkafka's default linger (5 ms), not one
    // batch per event.
    let mut job = spawn_env(
        geo_args(&db, prefix, &[] as &[&str]),
        &[("RUST_LOG", "warn")],
    );
    let producer = producer_lingering("5");
    let partitions = dishflow::kafka::topic_partitions(&kafka(), topic).expect("topic");
    let probes = std::cell::Cell::new(0);
    // Caught up: a probe in every partition, after everything produced so far, is committed
    // (the job commits in the order of its input's logical times).
    let catch_up = |job: &mut Job, time: &str| -> f64 {
        let keys: Vec<String> = partitions
            .iter()
            .map(|&p| {
                let (key, value) = probe(probes.get(), time);
                probes.set(probes.get() + 1);
                super::send_retrying(
                    &producer,
                    BaseRecord::to(topic).partition(p).key(&key).payload(&value),
                );
                key
            })
            .collect();
        producer.flush(Duration::from_secs(30)).expect("flush");
        let waited = Instant::now();
        wait_until(Duration::from_secs(1800), "the geo job to catch up", || {
            assert!(
                job.try_wait().is_none(),
                "the geo job ended: {}",
                job.stderr()
            );
            keys.iter().all(|k| arrivals.get(k).is_some()).then_some(())
        });
        waited.elapsed().as_secs_f64()
    };
    let stamp = |d: u64| format!("{} 12:00:00", day(d));
    catch_up(&mut job, &stamp(w.days - 1));
    let backlog_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let rss_days = rss_mb(job.id());

    // The further day, at the rate, a probe every 100 ms.
    let day_events: Vec<(String, String)> = lines(&[next])
        .map(|line| {
            let value: Value = serde_json::from_str(&line).expect("an event");
            let event = &value["event"];
            let user = ["message_from", "reaction_from", "user"]
                .iter()
                .find_map(|k| {
                    event[k]
                        .as_i64()
                        .or_else(|| event[k].as_str()?.parse().ok())
                })
                .unwrap_or_default();
            (user.to_string(), line)
        })
        .collect();
    let secs = (day_events.len() as u64).div_ceil(w.rate).max(1);
    let every = (w.rate / 10).max(1) as usize;
    let mut expected = Vec::new();
    let broker = broker_pid();
    let broker_cpu = || broker.map_or(f64::NAN, |pid| usage(pid).0);
    let (cpu_before, broker_before) = (usage(job.id()).0, broker_cpu());
    let window = Instant::now();
    let sent = paced(w.rate, secs, |i| {
        if let Some((key, value)) = day_events.get(i) {
            send(&producer, topic, key, value);
        }
        if i % every == 0 {
            let (key, value) = probe(probes.get(), &stamp(w.days));
            probes.set(probes.get() + 1);
            send(&producer, topic, &key, &value);
            expected.push((key, i));
        }
    });
    let window_s = window.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(30)).expect("flush");
    let probe_to_row = latencies(&sent, &expected, &arrivals);
    let (cpu_after, broker_after) = (usage(job.id()).0, broker_cpu());
    let rss_next = rss_mb(job.id());
    // Everything of the day committed (the last probe may precede a few events), then checked.
    catch_up(&mut job, &stamp(w.days));
    let differences = geo_check(&db, &[topic]);
    let check = verdict(&db, differences, GEO_MARTS).err();

    // DAYS more days (2 × DAYS in all), in bulk.
    produce_events(w.users, w.days - 1, w.days + 1, &["--topic", topic]);
    let more_s = catch_up(&mut job, &stamp(2 * w.days));
    std::thread::sleep(Duration::from_secs(2));
    let rss_twice = rss_mb(job.id());
    arrivals.stop();
    let _ = terminate(job);
    json!({
        "live_start_to_caught_up_s": backlog_s,
        "day_events": day_events.len(),
        "rate_per_s": w.rate,
        "probe_to_row": probe_to_row,
        "cpu_s_per_window_s": (cpu_after - cpu_before) / window_s,
        "broker_cpu_s_per_window_s": (broker_after - broker_before) / window_s,
        "rss_mb": {
            format!("after {} days", w.days): rss_days,
            format!("after {} days", w.days + 1): rss_next,
            format!("after {} days", 2 * w.days): rss_twice,
        },
        "days_more_caught_up_s": more_s,
        "invalid_runs": check.into_iter().collect::<Vec<_>>(),
    })
}

/// The W6 sections of the report: the incremental latency and the memory.
pub(crate) fn markdown(result: &Value) -> String {
    if result["workload"] != "W6" {
        return String::new();
    }
    let i = &result["incremental"];
    let p = &i["probe_to_row"];
    let ms = |v: &Value| v.as_f64().map_or_else(|| "—".into(), |x| format!("{x:.0}"));
    let mut md = format!(
        "\n### W6 incremental\n\n{}\n\nOne more day ({} events) to a running dishflow job at {} \
         events/s, a probe (a new user's message) every 100 ms: probe handed to the producer → \
         its `mart.geo_users` row committed. p50 {} ms, p95 {} ms, p99 {} ms, max {} ms, {} of \
         {} missing; CPU of the job {:.2} s/s, of the broker (Tansu) {:.2} s/s. Spark's answer to the same day: a re-run of the \
         window, median {} s. Live start (replaying the backlog) to caught up: {:.0} s.\n\n\
         | resident memory of the running job | MB |\n|---|---|\n",
        result["what"].as_str().unwrap_or_default(),
        i["day_events"],
        i["rate_per_s"],
        ms(&p["p50_ms"]),
        ms(&p["p95_ms"]),
        ms(&p["p99_ms"]),
        ms(&p["max_ms"]),
        p["missing"],
        p["samples"].as_u64().unwrap_or(0) + p["missing"].as_u64().unwrap_or(0),
        i["cpu_s_per_window_s"].as_f64().unwrap_or(f64::NAN),
        i["broker_cpu_s_per_window_s"].as_f64().unwrap_or(f64::NAN),
        result["engines"][SPARK]["rerun_median_s"]
            .as_f64()
            .map_or_else(|| "—".into(), |x| format!("{x:.1}")),
        i["live_start_to_caught_up_s"].as_f64().unwrap_or(f64::NAN),
    );
    for (k, v) in i["rss_mb"].as_object().into_iter().flatten() {
        md.push_str(&format!("| {k} | {} |\n", ms(v)));
    }
    let p = &result["engines"][SPARK]["phases_median_s"];
    if p.is_object() {
        let s = |k: &str| {
            p[k].as_f64()
                .map_or_else(|| "—".into(), |x| format!("{x:.1}"))
        };
        md.push_str(&format!(
            "\nSpark's backlog run in parts (medians, s): JVM start {}, session {}, compute {}, \
             JDBC write {}. dishflow's start is its empty run (in the table); it computes and \
             writes at once (its sinks write while the dataflow runs).\n",
            s("jvm_start"),
            s("session"),
            s("compute"),
            s("write_jdbc"),
        ));
    }
    if let Some(why) = i["invalid_runs"].as_array().and_then(|a| a.first()) {
        md.push_str(&format!("\nINVALID: {why}\n"));
    }
    md
}
