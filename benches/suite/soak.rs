//! SOAK: the three jobs at once, for `--minutes`, against one broker and one database, each
//! fed at a steady rate:
//! * promos: 100 promos/s (fan-out 2; each campaign valid for two minutes, so the live set
//!   is steady) while 10 subscriber rows/s are inserted for a restaurant whose campaign runs
//!   throughout;
//! * orders: 10 new CLOSED orders/s, and one dictionary change per second (a restaurant or a
//!   user renamed, in turn), with `--stg-topic`;
//! * geo: 200 events/s: messages from 5,000 users, each from their home within 8 km of a
//!   city, one in ten from a new user, one in twenty a channel subscription.
//!
//! Every minute: each job's resident memory (VmRSS) and CPU seconds per second (and the
//! broker's and PostgreSQL's, whose work the jobs cause too), and the p99
//! latency of the inputs sent that minute — promo → draft consumable, subscriber insert →
//! draft consumable, order → its enriched message consumable, a new user's first message →
//! their `mart.geo_users` row committed (a trigger's `pg_notify`) — and the floor under them:
//! the p99 of a probe the bench produces (with a producer of its own) and consumes itself
//! through the same broker, 10/s, no job in between. At the end every output
//! is checked against its truth: each draft exactly once in Kafka and in
//! `subscribers_feedback`, the orders' counters, layers, tags and summary against the SQL
//! recomputation, every geo mart against its SQL recomputation. A failed check makes the
//! run INVALID (and the suite exit 1).

use std::collections::HashSet;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, Producer};
use redis::Commands;
use serde_json::{Value, json};

use super::arrivals::*;
use super::checks::*;
use super::latency::{FETCH_WAIT, RESTAURANTS};
use super::{clean_up, dishflow_command};
use dishflow_testkit::*;

const PROMOS_PER_S: u64 = 100;
const CHANGES_PER_S: u64 = 10;
const ORDERS_PER_S: u64 = 10;
const EVENTS_PER_S: u64 = 200;
/// Probe messages per second: produced and consumed by the bench alone, with a producer of
/// their own, beside the jobs — the broker's own round trip under the soak's load.
const PROBES_PER_S: u64 = 10;
/// Subscribers of each soak restaurant: 100 promos/s make 200 drafts/s. The latency
/// workloads' 10 (1,000 drafts/s) measure the high-rate tail already; in a 30-minute soak
/// they pushed the local broker (Tansu, memory storage, answering more slowly the more it
/// holds) minutes behind, so that drafts of campaigns that had ended meanwhile were never
/// written — the soak then measured the broker, and its exactly-once check failed for a
/// reason that is the SPEC's (a draft of an ended campaign is no draft), not the job's.
const FAN_OUT: u64 = 2;
/// How long each soak campaign is valid from when it is sent: the live set is steady
/// (12,000 campaigns, 24,000 drafts) once the first ones end.
const CAMPAIGN_SECS: i64 = 120;
/// Users of the geo events (besides the new ones).
const GEO_USERS: u64 = 5_000;
/// The channel of the trigger on `mart.geo_users`.
const GEO_CHANNEL: &str = "dishflow_soak_geo";
/// Minutes left out of the flatness figures (state and caches filling).
const WARM_UP_MINUTES: usize = 5;

/// When each input of one stream was sent, with the key of the output it must give.
type Sent = Arc<Mutex<Vec<(Instant, String)>>>;

/// The three jobs' processes.
struct Jobs {
    processes: Vec<(&'static str, Child)>,
}

impl Jobs {
    fn assert_running(&mut self) {
        for (name, child) in &mut self.processes {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("soak: the {name} job exited ({status}); its log is in target/bench");
            }
        }
    }

    /// SIGTERM to each job, then its exit (killed after 60 s).
    fn stop(mut self) {
        for (_, child) in &self.processes {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for (name, child) in &mut self.processes {
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if child.try_wait().ok().flatten().is_none() {
                eprintln!("soak: the {name} job did not stop within 60 s: killed");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// `act(i)` at `rate` per second until `stop`, each call's start recorded by `act` itself.
fn steady(rate: u64, stop: &AtomicBool, mut act: impl FnMut(u64)) {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = started + interval.mul_f64(i as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        act(i);
        i += 1;
    }
}

/// [`steady`] with a producer of its own ([`latency_producer`]: idempotent, no linger),
/// flushed when `stop` is set.
fn steady_sends(rate: u64, stop: &AtomicBool, mut act: impl FnMut(u64, &BaseProducer)) {
    let producer = latency_producer();
    steady(rate, stop, |i| act(i, &producer));
    producer.flush(Duration::from_secs(30)).ok();
}

/// Where `user` lives: within 8 km of one of `cities` (a uniform disc, as `dishflow produce
/// events` places its users), the same every time.
fn home(user: i64, cities: &[(f64, f64)]) -> (f64, f64) {
    let mut rng = Rng((user as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut unit = || (rng.draw() >> 11) as f64 / (1u64 << 53) as f64;
    let (lat, lon) = cities[user as usize % cities.len()];
    let angle = unit() * std::f64::consts::TAU;
    let km = 8.0 * unit().sqrt();
    (
        lat + km / 111.2 * angle.sin(),
        lon + km / (111.2 * lat.to_radians().cos()) * angle.cos(),
    )
}

/// The drafts sink's seconds so far writing batches (its Postgres transactions) and
/// flushing (waiting for the broker's acknowledgements), its batches, and the sum and count
/// of its delivered latencies (the job's own: its logical time of a change → the broker's
/// acknowledgement), from the promos job's `/metrics` on `port` (zeros while it does not
/// answer).
fn drafts_sink_seconds(port: u16) -> [f64; 5] {
    let Some((200, text)) = http_get(port, "/metrics") else {
        return [0.0; 5];
    };
    let sink = "sink=\"DraftsSink\"";
    [
        metric(
            &text,
            "dishflow_sink_seconds_sum",
            &[sink, "step=\"write\""],
        ),
        metric(
            &text,
            "dishflow_sink_seconds_sum",
            &[sink, "step=\"flush\""],
        ),
        metric(
            &text,
            "dishflow_sink_seconds_count",
            &[sink, "step=\"write\""],
        ),
        metric(
            &text,
            "dishflow_sink_latency_seconds_sum",
            &[sink, "step=\"delivered\""],
        ),
        metric(
            &text,
            "dishflow_sink_latency_seconds_count",
            &[sink, "step=\"delivered\""],
        ),
    ]
}

/// Jiffies the machine's CPUs spent idle (idle + iowait) and in all, from `/proc/stat`.
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (idle, fields.iter().sum())
}

/// The UTC wall clock as `YYYY-MM-DD HH:MM:SS`.
fn utc_now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The p99 (ms) per minute since `start` of the inputs of `sent`, and how many never arrived
/// per minute they were sent in (1-based; minute 0: before the start).
fn p99_per_minute(
    sent: &Sent,
    arrivals: &Arrivals,
    start: Instant,
    minutes: usize,
) -> (Vec<Option<f64>>, std::collections::BTreeMap<u64, usize>) {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); minutes];
    let mut missing = std::collections::BTreeMap::new();
    for (at, key) in sent.lock().expect("sent").iter() {
        let minute = (at.saturating_duration_since(start).as_secs() / 60) as usize;
        match arrivals.get(key) {
            Some(arrived) if minute < minutes => {
                samples[minute].push(arrived.saturating_duration_since(*at).as_secs_f64() * 1e3)
            }
            Some(_) => {}
            None => *missing.entry(minute as u64 + 1).or_default() += 1,
        }
    }
    let p99 = samples
        .into_iter()
        .map(|s| percentiles(s, 0)["p99_ms"].as_f64())
        .collect();
    (p99, missing)
}

/// The soak: see the module's documentation.
pub fn soak(minutes: u64) -> Value {
    // On an empty broker, as every latency measurement of the suite.
    fresh_broker();
    let prefix = unique("soak");
    let db = database(&prefix).persist();
    let mut client = subscribers_table(&db);
    client
        .execute(
            "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
             SELECT 'lc' || g, 'lr' || (g % $1::int8) FROM generate_series(0, $2::int8 - 1) g",
            &[&(RESTAURANTS as i64), &((RESTAURANTS * FAN_OUT) as i64)],
        )
        .expect("subscribers");
    for job in ["promos", "orders", "geo"] {
        let out = dishflow_command(["setup", "--job", job, "--postgres-url", &db])
            .output()
            .expect("setup");
        assert!(out.status.success(), "setup --job {job} failed");
    }
    client
        .batch_execute(&format!(
            "CREATE FUNCTION soak_geo_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_notify('{GEO_CHANNEL}', NEW.user_id::text); RETURN NULL; END $$;
             CREATE TRIGGER soak_geo_notify AFTER INSERT ON mart.geo_users
               FOR EACH ROW EXECUTE FUNCTION soak_geo_notify();"
        ))
        .expect("geo trigger");
    let cities: Vec<(f64, f64)> = client
        .query("SELECT lat, lng FROM geo.cities ORDER BY id", &[])
        .expect("cities")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    // The orders' dictionaries (restaurants with menus, users) under `<prefix>_…` keys.
    let mut args = produce_orders_args(&prefix);
    args.extend(
        [
            "--restaurants",
            "100",
            "--users",
            "2000",
            "--dictionaries-only",
        ]
        .map(String::from),
    );
    let produced = dishflow_command(args)
        .output()
        .expect("produce dictionaries");
    assert!(
        produced.status.success(),
        "produce orders --dictionaries-only"
    );
    let mut redis_con = redis();
    let restaurant_keys: Vec<String> = redis_con.keys(format!("{prefix}_01*")).expect("keys");
    let user_keys: Vec<String> = redis_con.keys(format!("{prefix}_03*")).expect("keys");
    let menus: Vec<(String, String)> = restaurant_keys
        .iter()
        .map(|key| {
            let value: String = redis_con.get(key).expect("restaurant");
            let entry: Value = serde_json::from_str(&value).expect("json");
            let product = entry["menu"][0]["_id"].as_str().expect("a product");
            (key.clone(), product.to_string())
        })
        .collect();

    let promo_topic = format!("{prefix}.promos");
    let draft_topic = format!("{prefix}.out");
    let order_topic = format!("{prefix}.orders");
    let stg_topic = format!("{prefix}.stg");
    let event_topic = format!("{prefix}.events");
    let probe_topic = format!("{prefix}.probe");
    for topic in [
        &probe_topic,
        &promo_topic,
        &draft_topic,
        &order_topic,
        &stg_topic,
        &event_topic,
    ] {
        dishflow::kafka::ensure_topic(&kafka(), topic, 4).expect("topic");
    }
    let drafts = kafka_arrivals(&draft_topic, |_, payload| draft_key(payload));
    let enriched = kafka_arrivals(&stg_topic, |key, _| {
        key.map(|k| String::from_utf8_lossy(k).into_owned())
    });
    let geo_rows = notify_arrivals(&db, GEO_CHANNEL);
    let probes = kafka_arrivals(&probe_topic, |key, _| {
        key.map(|k| String::from_utf8_lossy(k).into_owned())
    });

    let logs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let spawn = |name: &'static str, args: Vec<String>| -> (&'static str, Child) {
        let log = std::fs::File::create(logs.join(format!("{prefix}.{name}.log"))).expect("log");
        let child = dishflow_command(&args)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn a job");
        (name, child)
    };
    let mut promos_args = promos_args_from(&db, &promo_topic, &prefix);
    promos_args.extend(["--kafka-property".into(), FETCH_WAIT.replace(':', "=")]);
    // Where the drafts' sink spends its time (its Postgres transactions, its waits for the
    // broker's acknowledgements), from the job's own metrics.
    let promos_port = free_port();
    promos_args.extend([
        "--metrics-addr".to_string(),
        format!("127.0.0.1:{promos_port}"),
    ]);
    let mut orders_args = orders_args(&db, &prefix);
    orders_args.extend(["--stg-topic".to_string(), stg_topic.clone()]);
    let geo_args = geo_topic_args(
        &db,
        &event_topic,
        &format!("{prefix}.geo.dlq"),
        &[] as &[&str],
    );
    let mut jobs = Jobs {
        processes: vec![
            spawn("promos", promos_args),
            spawn("orders", orders_args),
            spawn("geo", geo_args),
        ],
    };

    let producer = latency_producer();
    let now = now_secs();
    // The campaign of the subscriber inserts: valid through the whole soak.
    let changes_end = now + minutes as i64 * 60 + 3600;
    send(
        &producer,
        &promo_topic,
        "chg-r",
        &campaign_json("chg", "chg-r", now - 60, changes_end),
    );
    producer.flush(Duration::from_secs(30)).ok();
    wait_until(Duration::from_secs(300), "the jobs to start", || {
        jobs.assert_running();
        let started = jobs.processes.iter().all(|(name, _)| {
            std::fs::read_to_string(logs.join(format!("{prefix}.{name}.log")))
                .is_ok_and(|log| log.contains("reading"))
        });
        started.then_some(())
    });

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let streams: [Sent; 5] = Default::default();
    let [
        promos_sent,
        changes_sent,
        orders_sent,
        geo_sent,
        probes_sent,
    ] = streams.clone();
    let mut threads = Vec::new();
    {
        let (stop, topic) = (stop.clone(), probe_topic.clone());
        threads.push(std::thread::spawn(move || {
            steady_sends(PROBES_PER_S, &stop, |i, producer| {
                let at = Instant::now();
                send(producer, &topic, &format!("probe{i}"), "{}");
                probes_sent
                    .lock()
                    .expect("sent")
                    .push((at, format!("probe{i}")));
            })
        }));
    }
    {
        let (stop, topic) = (stop.clone(), promo_topic.clone());
        threads.push(std::thread::spawn(move || {
            steady_sends(PROMOS_PER_S, &stop, |i, producer| {
                let restaurant = i % RESTAURANTS;
                let campaign = format!("p{i}");
                let at = Instant::now();
                let now = now_secs();
                send(
                    producer,
                    &topic,
                    &format!("lr{restaurant}"),
                    &campaign_json(
                        &campaign,
                        &format!("lr{restaurant}"),
                        now - 60,
                        now + CAMPAIGN_SECS,
                    ),
                );
                let mut sent = promos_sent.lock().expect("sent");
                for k in 0..FAN_OUT {
                    sent.push((at, format!("{campaign}:lc{}", restaurant + k * RESTAURANTS)));
                }
            })
        }));
    }
    {
        let (stop, db) = (stop.clone(), db.clone());
        threads.push(std::thread::spawn(move || {
            let mut client = pg(&db);
            let insert = client
                .prepare(
                    "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
                     VALUES ($1, 'chg-r')",
                )
                .expect("prepare");
            steady(CHANGES_PER_S, &stop, |i| {
                let at = Instant::now();
                client
                    .execute(&insert, &[&format!("n{i}")])
                    .expect("insert");
                changes_sent
                    .lock()
                    .expect("sent")
                    .push((at, format!("chg:n{i}")));
            })
        }));
    }
    {
        let (stop, topic) = (stop.clone(), order_topic.clone());
        let (menus, users) = (menus.clone(), user_keys.clone());
        threads.push(std::thread::spawn(move || {
            steady_sends(ORDERS_PER_S, &stop, |i, producer| {
                let (restaurant, product) = &menus[i as usize % menus.len()];
                let user = &users[(i as usize * 7) % users.len()];
                let id = i as i64 + 1;
                let at = Instant::now();
                let order = order_json(id, restaurant, user, product, "CLOSED", &utc_now());
                send(producer, &topic, &id.to_string(), &order);
                orders_sent.lock().expect("sent").push((at, id.to_string()));
            })
        }));
    }
    {
        // One dictionary change per second: a restaurant, then a user, renamed.
        let stop = stop.clone();
        let (restaurants, users) = (restaurant_keys.clone(), user_keys.clone());
        threads.push(std::thread::spawn(move || {
            let mut con = redis();
            steady(1, &stop, |i| {
                let n = i as usize / 2;
                let key = if i % 2 == 0 {
                    &restaurants[n % restaurants.len()]
                } else {
                    &users[n % users.len()]
                };
                let value: String = con.get(key).expect("an entry");
                let mut entry: Value = serde_json::from_str(&value).expect("json");
                let name = entry["name"].as_str().unwrap_or_default();
                let base = name.split(" #").next().unwrap_or(name).to_string();
                entry["name"] = format!("{base} #{i}").into();
                let _: () = con.set(key, entry.to_string()).expect("set");
            })
        }));
    }
    {
        let (stop, topic) = (stop.clone(), event_topic.clone());
        let cities = cities.clone();
        threads.push(std::thread::spawn(move || {
            steady_sends(EVENTS_PER_S, &stop, |i, producer| {
                let at = Instant::now();
                let time = utc_now();
                let new_user = i % 10 == 0;
                let user = if new_user {
                    10_000_000 + (i / 10) as i64
                } else {
                    1 + (i % GEO_USERS) as i64
                };
                let at_home = home(user, &cities);
                let event = if !new_user && i % 20 == 1 {
                    geo_subscription(user, (i % 50) as i64, &time)
                } else {
                    geo_message(i as i64, user, None, &time, Some(at_home))
                };
                send(producer, &topic, &user.to_string(), &event);
                if new_user {
                    geo_sent.lock().expect("sent").push((at, user.to_string()));
                }
            })
        }));
    }

    // Every minute: each job's memory and CPU (and the broker's CPU).
    let broker = broker_pid();
    let mut samples = Vec::new();
    let mut cpu_before: Vec<f64> = jobs
        .processes
        .iter()
        .map(|(_, c)| usage(c.id()).0)
        .collect();
    let mut broker_before = broker.map_or(0.0, |pid| usage(pid).0);
    let mut postgres_before = postgres_cpu();
    let mut drafts_sink_before = drafts_sink_seconds(promos_port);
    let mut bench_before = usage(std::process::id()).0;
    let mut machine_before = machine_jiffies();
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    for minute in 0..minutes {
        let due = start + Duration::from_secs(60 * (minute + 1));
        while Instant::now() < due {
            jobs.assert_running();
            std::thread::sleep(
                Duration::from_secs(1).min(due.saturating_duration_since(Instant::now())),
            );
        }
        let mut sample = json!({"minute": minute + 1});
        for (k, (name, child)) in jobs.processes.iter().enumerate() {
            let cpu = usage(child.id()).0;
            sample[*name] =
                json!({"rss_mb": rss_mb(child.id()), "cpu_s_per_s": (cpu - cpu_before[k]) / 60.0});
            cpu_before[k] = cpu;
        }
        if let Some(pid) = broker {
            let cpu = usage(pid).0;
            sample["broker_cpu_s_per_s"] = json!((cpu - broker_before) / 60.0);
            broker_before = cpu;
        }
        let drafts_sink = drafts_sink_seconds(promos_port);
        sample["promos"]["sink_write_s"] = json!(drafts_sink[0] - drafts_sink_before[0]);
        sample["promos"]["sink_flush_s"] = json!(drafts_sink[1] - drafts_sink_before[1]);
        sample["promos"]["sink_batches"] = json!(drafts_sink[2] - drafts_sink_before[2]);
        let delivered = drafts_sink[4] - drafts_sink_before[4];
        if delivered > 0.0 {
            sample["promos"]["delivered_mean_ms"] =
                json!((drafts_sink[3] - drafts_sink_before[3]) / delivered * 1e3);
        }
        drafts_sink_before = drafts_sink;
        // The bench's own producers, consumers and bookkeeping, and what the machine had
        // left: the jobs, the broker and PostgreSQL share its cores with them.
        let bench = usage(std::process::id()).0;
        sample["bench_cpu_s_per_s"] = json!((bench - bench_before) / 60.0);
        bench_before = bench;
        let machine = machine_jiffies();
        let (idle, total) = (machine.0 - machine_before.0, machine.1 - machine_before.1);
        if total > 0.0 {
            sample["idle_cores"] = json!(idle / total * cores);
        }
        machine_before = machine;
        // A backend that exited during the minute takes its CPU with it: at least zero.
        let postgres = postgres_cpu();
        sample["postgres_cpu_s_per_s"] = json!(((postgres - postgres_before) / 60.0).max(0.0));
        postgres_before = postgres;
        eprintln!("soak: {sample}");
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("an input thread");
    }

    // Stragglers (up to DRAIN), then the latencies per minute.
    let deadline = Instant::now() + super::latency::DRAIN;
    let pending = |sent: &Sent, arrivals: &Arrivals| {
        sent.lock()
            .expect("sent")
            .iter()
            .any(|(_, key)| arrivals.get(key).is_none())
    };
    while Instant::now() < deadline
        && (pending(&streams[0], &drafts)
            || pending(&streams[1], &drafts)
            || pending(&streams[2], &enriched)
            || pending(&streams[3], &geo_rows)
            || pending(&streams[4], &probes))
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let n = minutes as usize;
    let mut invalid = Vec::new();
    for (what, sent, arrivals, key) in [
        ("promo → draft", &streams[0], &drafts, "promos_p99_ms"),
        (
            "subscriber insert → draft",
            &streams[1],
            &drafts,
            "changes_p99_ms",
        ),
        (
            "order → enriched message",
            &streams[2],
            &enriched,
            "orders_p99_ms",
        ),
        (
            "new user's message → mart.geo_users row",
            &streams[3],
            &geo_rows,
            "geo_p99_ms",
        ),
        (
            "probe → probe (no job)",
            &streams[4],
            &probes,
            "probe_p99_ms",
        ),
    ] {
        let (p99, missing) = p99_per_minute(sent, arrivals, start, n);
        if !missing.is_empty() {
            invalid.push(format!(
                "{what}: {} outputs never arrived (per minute of their input: {missing:?})",
                missing.values().sum::<usize>()
            ));
        }
        for (sample, p) in samples.iter_mut().zip(p99) {
            sample[key] = json!(p);
        }
    }
    drafts.stop();
    enriched.stop();
    geo_rows.stop();
    probes.stop();
    jobs.stop();

    // Every output against its truth.
    let mut expected: HashSet<String> = streams[0]
        .lock()
        .expect("sent")
        .iter()
        .chain(streams[1].lock().expect("sent").iter())
        .map(|(_, key)| key.clone())
        .collect();
    expected.shrink_to_fit();
    if let Err(why) = check_promos(&expected, &db, "subscribers_feedback", "true", &draft_topic) {
        invalid.push(format!("promos: {why}"));
    }
    let keys = format!("{prefix}*");
    if let Err(why) = check_counters(cdm_counters(&db), &ground_truth(&db, &order_topic, &keys)) {
        invalid.push(format!("orders: {why}"));
    }
    let layers = layer_differences(&db, &order_topic, &keys);
    if !layers.is_empty() {
        invalid.push(format!("orders: {}", layers.join("; ")));
    }
    let (tags, truth) = tags_and_truth(&db);
    if tags != truth {
        invalid.push(format!(
            "orders: {} tags, {} in the truth",
            tags.len(),
            truth.len()
        ));
    }
    let (summary, truth) = summary_and_truth(&db);
    if summary != truth {
        invalid.push("orders: the summary differs from its truth".to_string());
    }
    let differences = geo_check(&db, &[&event_topic]);
    if !differences.is_empty() {
        invalid.push(format!(
            "geo: the marts differ from the SQL truth: {differences:?}"
        ));
    }
    for why in &invalid {
        eprintln!("soak: INVALID: {why}");
    }
    delete_redis_keys(&prefix).ok();
    clean_up(&prefix);
    json!({
        "workload": "SOAK",
        "what": format!(
            "promos {PROMOS_PER_S}/s (fan-out {FAN_OUT}, campaigns valid {CAMPAIGN_SECS} s) with \
             {CHANGES_PER_S} subscriber inserts/s, orders {ORDERS_PER_S}/s with a dictionary \
             change per second, geo {EVENTS_PER_S} events/s (one in ten from a new user), all \
             at once for {minutes} minutes on one broker and database; per minute each job's \
             VmRSS and CPU s/s, the broker's and PostgreSQL's CPU s/s, and the p99 latency \
             of the inputs sent that minute, beside a probe produced and consumed by the \
             bench alone ({PROBES_PER_S}/s: the broker's floor); the promos job's own mean \
             latency to the broker's acknowledgement of its drafts, the bench's CPU and the \
             machine's idle cores"
        ),
        "minutes": samples,
        "invalid_runs": invalid,
    })
}

/// Least-squares slope of `ys` over their index (per minute).
fn slope(ys: &[f64]) -> f64 {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return 0.0;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in ys.iter().enumerate() {
        num += (x as f64 - mean_x) * (y - mean_y);
        den += (x as f64 - mean_x).powi(2);
    }
    num / den
}

/// The markdown of a SOAK result: a row per minute, then per job the growth of RSS and p99
/// after the warm-up.
pub fn markdown(result: &Value) -> String {
    if result["workload"] != "SOAK" {
        return String::new();
    }
    let mut md = format!(
        "\n### SOAK\n\n{}\n\n| minute | promos RSS MB | promos CPU s/s | promo p99 ms | insert p99 ms | orders RSS MB | orders CPU s/s | order p99 ms | geo RSS MB | geo CPU s/s | new user p99 ms | probe p99 ms | broker CPU s/s | Postgres CPU s/s | drafts sink write / flush s, batches | drafts delivered mean ms (job) | bench CPU s/s | idle cores |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        result["what"].as_str().unwrap_or_default()
    );
    let cell = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "—".to_string(), |x| format!("{x:.digits$}"))
    };
    let minutes: Vec<&Value> = result["minutes"].as_array().into_iter().flatten().collect();
    for m in &minutes {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {}, {} | {} | {} | {} |\n",
            m["minute"],
            cell(&m["promos"]["rss_mb"], 0),
            cell(&m["promos"]["cpu_s_per_s"], 2),
            cell(&m["promos_p99_ms"], 0),
            cell(&m["changes_p99_ms"], 0),
            cell(&m["orders"]["rss_mb"], 0),
            cell(&m["orders"]["cpu_s_per_s"], 2),
            cell(&m["orders_p99_ms"], 0),
            cell(&m["geo"]["rss_mb"], 0),
            cell(&m["geo"]["cpu_s_per_s"], 2),
            cell(&m["geo_p99_ms"], 0),
            cell(&m["probe_p99_ms"], 0),
            cell(&m["broker_cpu_s_per_s"], 2),
            cell(&m["postgres_cpu_s_per_s"], 2),
            cell(&m["promos"]["sink_write_s"], 1),
            cell(&m["promos"]["sink_flush_s"], 1),
            cell(&m["promos"]["sink_batches"], 0),
            cell(&m["promos"]["delivered_mean_ms"], 0),
            cell(&m["bench_cpu_s_per_s"], 2),
            cell(&m["idle_cores"], 2),
        ));
    }
    let after: Vec<&&Value> = minutes.iter().skip(WARM_UP_MINUTES).collect();
    if after.len() >= 2 {
        md.push_str(&format!(
            "\nAfter the first {WARM_UP_MINUTES} minutes (least-squares slope per hour):"
        ));
        for (job, p99) in [
            ("promos", "promos_p99_ms"),
            ("orders", "orders_p99_ms"),
            ("geo", "geo_p99_ms"),
        ] {
            let rss: Vec<f64> = after
                .iter()
                .filter_map(|m| m[job]["rss_mb"].as_f64())
                .collect();
            let lat: Vec<f64> = after.iter().filter_map(|m| m[p99].as_f64()).collect();
            md.push_str(&format!(
                " {job} RSS {:+.0} MB/h ({:.0} → {:.0} MB), p99 {:+.0} ms/h;",
                slope(&rss) * 60.0,
                rss.first().copied().unwrap_or(0.0),
                rss.last().copied().unwrap_or(0.0),
                slope(&lat) * 60.0
            ));
        }
        let probe: Vec<f64> = after
            .iter()
            .filter_map(|m| m["probe_p99_ms"].as_f64())
            .collect();
        md.push_str(&format!(
            " the probe (the broker alone) p99 {:+.0} ms/h.\n",
            slope(&probe) * 60.0
        ));
    }
    if let Some(why) = result["invalid_runs"].as_array().and_then(|i| i.first()) {
        md.push_str(&format!(
            "\n**INVALID**: {}\n",
            why.as_str().unwrap_or_default()
        ));
    }
    md
}
