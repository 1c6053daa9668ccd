//! Crash test of `dishflow orders`: orders arrive in waves while the job is killed with
//! SIGKILL and restarted — during startup before the order topic is read, while its outbox
//! holds committed messages not yet confirmed by Kafka, and at random — while PostgreSQL
//! and Redis restart under it and dictionary entries appear and change while it is down. Redis is the
//! test's own (its own port, persistence on: a restart keeps the dictionaries). At the end
//! STG, the Data Vault, the counters, the tags and the summary equal their SQL ground
//! truth over the raw input, the three optional topics fold to the tables, and no topic
//! carries a message twice.
//!
//! `scripts/test.sh` runs a short version (3,000 orders, 3 kills); `scripts/chaos.sh orders`
//! the long one. Settings (environment): `CHAOS_PROCESSES` (1 or 2 processes × 1 worker,
//! default 1), `CHAOS_KILLS` (default 3), `CHAOS_ORDERS` (default 3,000), `CHAOS_SEED`
//! (random by default; printed, to replay a run's kill timing).

#![cfg(feature = "integration")]

use std::collections::BTreeMap;
use std::time::Duration;

use dishflow_testkit::*;
use redis::Commands;

const RESTAURANTS: &str = "40";
const USERS: &str = "400";
const WAVES: u64 = 10;
/// What the job logs once its startup checks passed and it builds the dataflow.
const STARTING: &str = "starting orders";
/// What the Kafka source logs as it begins reading the order topic.
const READING: &str = "sources::kafka: reading";
/// What the Redis source logs once it has read the dictionaries.
const DICTIONARIES_READ: &str = "Redis dictionaries read";

/// `dishflow produce orders` into the test's Redis and order topic: the dictionaries
/// (`first` = None) or `orders` orders from object id `first`.
fn produce(redis: &str, prefix: &str, first: Option<u64>, orders: u64) {
    let mut args: Vec<String> = [
        "produce",
        "orders",
        "--brokers",
        &brokers(),
        "--redis-url",
        redis,
        "--topic",
        &format!("{prefix}.orders"),
        "--id-prefix",
        &format!("{prefix}_"),
        "--restaurants",
        RESTAURANTS,
        "--users",
        USERS,
        "--seed",
        "7",
    ]
    .map(String::from)
    .to_vec();
    match first {
        None => args.push("--dictionaries-only".into()),
        Some(first) => args.extend([
            "--orders-only".into(),
            "--first-order".into(),
            first.to_string(),
            "--orders".into(),
            orders.to_string(),
        ]),
    }
    assert_success(&dishflow(&args, Duration::from_secs(120)));
}

/// Renames the restaurant or user of Redis key `key` (its `name` gets `suffix`).
fn rename(con: &mut redis::Connection, key: &str, suffix: &str) {
    let value: String = con.get(key).expect("an entry");
    let mut entry: serde_json::Value = serde_json::from_str(&value).expect("json");
    let name = format!("{}{suffix}", entry["name"].as_str().unwrap_or_default());
    entry["name"] = name.into();
    let _: () = con.set(key, entry.to_string()).expect("set");
}

#[test]
fn sigkill_at_any_moment_leaves_every_table_and_topic_equal_to_the_truth() {
    let processes: usize = env_or("CHAOS_PROCESSES", 1);
    let kills: usize = env_or("CHAOS_KILLS", 3);
    let orders: u64 = env_or("CHAOS_ORDERS", 3_000);
    let seed: u64 = env_or("CHAOS_SEED", now_secs() as u64 | 1);
    let db = database("chaos_orders");
    let prefix = prefix("chaos_orders");
    let mut redis = OwnRedis::start(&prefix);
    let topic = format!("{prefix}.orders");
    let [stg, dds, tags] = ["stg", "dds", "tags"].map(|t| format!("{prefix}.{t}"));
    let keys = format!("{prefix}*");
    println!(
        "chaos: seed {seed}, {processes} process(es), {kills} kills, {orders} orders in \
         {WAVES} waves"
    );
    produce(&redis.url(), &prefix, None, 0);
    let mut dictionaries = redis.connection();
    let restaurants: Vec<String> = dictionaries
        .keys(format!("{prefix}_01*"))
        .expect("restaurants");
    let users: Vec<String> = dictionaries.keys(format!("{prefix}_03*")).expect("users");
    assert!(restaurants.len() >= 3 && users.len() >= 2);
    // A user who appears only while the job is down: their orders wait for them, through
    // the kills, and are completed by the restarted job.
    let late_user: String = dictionaries.get(&users[0]).expect("a user");
    let _: () = dictionaries.del(&users[0]).expect("del");
    // The first wave makes the topic; the job starts once it exists.
    let wave = orders / WAVES;
    produce(&redis.url(), &prefix, Some(1), wave);

    let mut args = orders_args_in(&db, &prefix, &redis.url());
    args.extend(
        [
            "--stg-topic",
            &stg,
            "--dds-topic",
            &dds,
            "--tag-topic",
            &tags,
            "--tick-ms",
            "50",
            "--round-records",
            "1000",
        ]
        .map(String::from),
    );
    let mut chaos = Chaos::new(&prefix, processes, seed, move |_| args.clone());
    let moments = Moments {
        db: db.to_string(),
        starting: STARTING,
        started: READING,
        startup_kill: "kill (startup, before the topic is read)",
    };

    // The other waves arrive while the job is being killed.
    let producer = {
        let (url, prefix) = (redis.url(), prefix.to_string());
        std::thread::spawn(move || {
            for w in 1..WAVES {
                let size = if w == WAVES - 1 {
                    orders - w * wave
                } else {
                    wave
                };
                produce(&url, &prefix, Some(1 + w * wave), size);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    let mut job = chaos.start();
    for k in 0..kills {
        chaos.kill_in_turn(job, k, &moments);
        if k == 1 {
            // While the job is down: the late user appears, a restaurant and a user are
            // renamed. The restarted job must complete the late user's orders and carry the
            // new names. (A user who leaves is not tried here: the Data Vault is insert-only
            // and keeps their rows, which the SQL truth of the layers does not model.)
            let _: () = dictionaries.set(&users[0], &late_user).expect("set");
            rename(&mut dictionaries, &restaurants[0], " (renamed while down)");
            rename(&mut dictionaries, &users[1], " (renamed while down)");
        }
        std::thread::sleep(chaos.rng.millis(0, 500));
        job = chaos.start();
        if k == 0 {
            // Redis restarts under the running job: it reconnects, subscribes again and
            // rescans; a change right after the restart must still reach it.
            wait_until(Duration::from_secs(60), "the dictionaries are read", || {
                job.logged_by_any(DICTIONARIES_READ).then_some(())
            });
            std::thread::sleep(chaos.rng.millis(200, 1500));
            let down = chaos.rng.millis(200, 2000);
            redis.restart(down);
            dictionaries = redis.connection();
            rename(
                &mut dictionaries,
                &restaurants[1],
                " (renamed after a restart)",
            );
            chaos.record("Redis restart", 0);
        }
        if k == 2 {
            chaos.restart_postgres_under(&job, READING);
        }
    }
    producer.join().expect("producer");
    // A change of a running job's dictionaries, after all the kills.
    rename(&mut dictionaries, &restaurants[2], " (renamed at the end)");

    wait_caught_up(&db, "orders", &topic, Duration::from_secs(600));
    // The last dictionary change, and anything still to come (a duplicate), come now.
    wait_until(Duration::from_secs(60), "the last rename", || {
        pg(&db)
            .query_one(
                "SELECT count(*) FROM dds.s_restaurant_names WHERE name LIKE '%at the end)'",
                &[],
            )
            .map(|r| r.get::<_, i64>(0))
            .ok()
            .filter(|n| *n > 0)
    });
    std::thread::sleep(Duration::from_secs(3));
    job.assert_running();
    chaos.finish(job);
    println!("chaos: {}", chaos.summary());
    chaos.print_recoveries();

    // Every table against the SQL ground truth over the raw orders and dictionaries.
    let (products, categories) = cdm_counters(&db);
    let truth = ground_truth_in(&db, &topic, &redis.url(), &keys);
    println!(
        "chaos: {} product and {} category counters; truth {} and {}",
        products.len(),
        categories.len(),
        truth.0.len(),
        truth.1.len()
    );
    assert!(!products.is_empty());
    assert_eq!((products.clone(), categories.clone()), truth, "counters");
    let differences = layer_differences_in(&db, &topic, &redis.url(), &keys);
    assert_eq!(differences, Vec::<String>::new(), "STG and the Data Vault");
    let (user_tags, truth) = tags_and_truth(&db);
    assert_eq!(user_tags, truth, "tags");
    let (summary, truth) = summary_and_truth(&db);
    assert_eq!(summary, truth, "summary");

    // The topics: no message twice, and each folds to its table.
    for topic in [&stg, &dds, &tags] {
        let repeated = repeated_publications(topic);
        println!(
            "chaos: {topic}: {} messages, {} keys published twice in a row",
            consume(topic).len(),
            repeated.len()
        );
        assert_eq!(repeated, Vec::<String>::new(), "{topic}");
    }
    assert_eq!(
        counters_from_topic(&dds),
        (products, categories),
        "the counter topic"
    );
    let mut table: Vec<String> = user_tags.iter().map(|(u, t)| format!("{u}:{t}")).collect();
    table.sort();
    assert_eq!(live_keys(&tags), table, "the tag topic");
    // The enriched orders' latest versions: as STG has them, for every order of the vault
    // (an order whose user left stays in the topic as it was).
    let mut enriched: BTreeMap<i64, String> = BTreeMap::new();
    for (key, value) in messages(&stg) {
        let value: serde_json::Value =
            serde_json::from_str(&value.unwrap_or_default()).expect("json");
        let status = value["payload"]["status"].as_str().expect("status");
        enriched.insert(key.parse().expect("an order id"), status.to_string());
    }
    let vault: BTreeMap<i64, String> = pg(&db)
        .query(
            "SELECT object_id::int8, payload->>'final_status' FROM stg.order_events
              WHERE object_id::text IN (SELECT order_id::text FROM dds.h_order)",
            &[],
        )
        .expect("stg")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!vault.is_empty());
    let topic_view: BTreeMap<i64, String> = enriched
        .into_iter()
        .filter(|(id, _)| vault.contains_key(id))
        .collect();
    assert_eq!(topic_view, vault, "the enriched order topic");
}
