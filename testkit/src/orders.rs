//! Fixtures of the orders job: its counters, and the counters computed in SQL from the
//! raw messages and dictionaries (the ground truth).

use std::io::Write;

use redis::Commands;

use crate::*;

/// The tables the orders job writes: STG, then the Data Vault, then CDM.
pub const ORDERS_TABLES: [&str; 19] = [
    "stg.order_events",
    "dds.h_user",
    "dds.h_product",
    "dds.h_category",
    "dds.h_restaurant",
    "dds.h_order",
    "dds.l_order_product",
    "dds.l_product_restaurant",
    "dds.l_product_category",
    "dds.l_order_user",
    "dds.s_user_names",
    "dds.s_product_names",
    "dds.s_restaurant_names",
    "dds.s_order_cost",
    "dds.s_order_status",
    "cdm.user_product_counters",
    "cdm.user_category_counters",
    "cdm.user_tags",
    "cdm.orders_summary",
];

/// The start of a `dishflow produce orders` command line: the test broker and Redis, ids
/// (and Redis keys) `<prefix>_…`.
pub fn produce_orders_args(prefix: &str) -> Vec<String> {
    [
        "produce",
        "orders",
        "--brokers",
        &brokers(),
        "--redis-url",
        &redis_url(),
        "--id-prefix",
        &format!("{prefix}_"),
    ]
    .map(String::from)
    .to_vec()
}

/// `dishflow produce orders` of a small data set: `orders` orders to `<prefix>.orders`,
/// their 20 restaurants and 200 users in the test Redis (seed 7), ids `<prefix>_…`.
pub fn produce_orders(prefix: &str, orders: &str) {
    let mut args = produce_orders_args(prefix);
    let topic = format!("{prefix}.orders");
    let rest = [
        "--topic",
        &topic,
        "--orders",
        orders,
        "--restaurants",
        "20",
        "--users",
        "200",
        "--seed",
        "7",
    ];
    args.extend(rest.map(String::from));
    assert_success(&dishflow(args, std::time::Duration::from_secs(60)));
}

/// Arguments of an orders run on `db`, topics `<prefix>.orders/.dlq`, Redis keys `<prefix>*`
/// of the test Redis.
pub fn orders_args(db: &str, prefix: &str) -> Vec<String> {
    orders_args_in(db, prefix, &redis_url())
}

/// [`orders_args`] with the dictionaries in the Redis at `server`.
pub fn orders_args_in(db: &str, prefix: &str, server: &str) -> Vec<String> {
    [
        "orders",
        "--brokers",
        &brokers(),
        "--postgres-url",
        db,
        "--redis-url",
        server,
        "--redis-keys",
        &format!("{prefix}*"),
        "--order-topic",
        &format!("{prefix}.orders"),
        "--dead-letter-topic",
        &format!("{prefix}.dlq"),
    ]
    .map(String::from)
    .to_vec()
}

/// An order message of the SPEC's layout: order `id` of user `u` at restaurant `r`, one line
/// of product `p` (price 180), with `status` as of `update_ts`.
pub fn order_json(id: i64, r: &str, u: &str, p: &str, status: &str, update_ts: &str) -> String {
    format!(
        r#"{{"object_id": {id}, "object_type": "order", "sent_dttm": "{update_ts}",
            "payload": {{"restaurant": {{"id": "{r}"}}, "date": "2022-11-19 16:00:00",
            "user": {{"id": "{u}"}}, "order_items": [{{"id": "{p}", "name": "x", "price": 180,
            "quantity": 1}}], "bonus_payment": 0, "cost": 180, "payment": 180,
            "bonus_grant": 0, "statuses": [], "final_status": "{status}",
            "update_ts": "{update_ts}"}}}}"#
    )
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

/// `cdm.user_product_counters` and `cdm.user_category_counters` of `db`, as
/// [`ground_truth`] gives them: (products, categories).
pub fn cdm_counters(db: &str) -> (Counters, Counters) {
    (
        counters(
            db,
            "cdm.user_product_counters",
            "product_id",
            "product_name",
        ),
        counters(
            db,
            "cdm.user_category_counters",
            "category_id",
            "category_name",
        ),
    )
}

/// The counters as the `dds-service-orders` topic tells them: every message applied in
/// order, counters at 0 removed; (products, categories) like [`counters`].
pub fn counters_from_topic(topic: &str) -> (Counters, Counters) {
    let mut products = std::collections::BTreeMap::new();
    let mut categories = std::collections::BTreeMap::new();
    for message in consume(topic) {
        let value: serde_json::Value =
            serde_json::from_str(&message.value.unwrap_or_default()).expect("json");
        let user: uuid::Uuid = value["user_id"]
            .as_str()
            .expect("user")
            .parse()
            .expect("uuid");
        for (field, name, map) in [
            ("products", "product_name", &mut products),
            ("categories", "category_name", &mut categories),
        ] {
            for (item, counter) in value[field].as_object().expect("object") {
                let item: uuid::Uuid = item.parse().expect("uuid");
                let name = counter[name].as_str().expect("name").to_string();
                let count = counter["order_cnt"].as_i64().expect("count") as i32;
                map.insert((user, item), (name, count));
            }
        }
    }
    let flatten = |map: std::collections::BTreeMap<(uuid::Uuid, uuid::Uuid), (String, i32)>| {
        map.into_iter()
            .filter(|(_, (_, count))| *count > 0)
            .map(|((u, i), (n, c))| (u, i, n, c))
            .collect()
    };
    (flatten(products), flatten(categories))
}

/// The user tags as (user, tag), sorted.
pub type Tags = Vec<(uuid::Uuid, String)>;

/// `cdm.user_tags` of `db`, and what the counters and rules of `db` say it must be: a
/// counter of the rule's category (or a product of its name) with `order_cnt >= min_orders`.
pub fn tags_and_truth(db: &str) -> (Tags, Tags) {
    let mut client = pg(db);
    let mut rows = |sql: &str| -> Tags {
        client
            .query(sql, &[])
            .expect("tags")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let tags = rows("SELECT user_id, tag FROM cdm.user_tags ORDER BY 1, 2");
    let truth = rows(
        "SELECT c.user_id, r.tag FROM cdm.user_category_counters c
           JOIN cdm.tag_rules r ON r.category_name = c.category_name AND r.product_name IS NULL
          WHERE c.order_cnt >= r.min_orders
         UNION
         SELECT c.user_id, r.tag FROM cdm.user_product_counters c
           JOIN cdm.tag_rules r ON r.product_name = c.product_name AND r.category_name IS NULL
          WHERE c.order_cnt >= r.min_orders
         ORDER BY 1, 2",
    );
    (tags, truth)
}

/// The rows of the orders summary as (kind, name, users, orders), sorted.
pub type Summary = Vec<(String, String, i64, i64)>;

/// `cdm.orders_summary` of `db`, and what its counters and tags say it must be: per
/// category, product name and tag, the number of counters (tags) and the sum of `order_cnt`.
pub fn summary_and_truth(db: &str) -> (Summary, Summary) {
    let mut client = pg(db);
    let mut rows = |sql: &str| -> Summary {
        client
            .query(sql, &[])
            .expect("summary")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    let summary = rows("SELECT kind, name, users, orders FROM cdm.orders_summary ORDER BY 1, 2");
    let truth = rows(
        "SELECT 'category', category_name::text, count(*), sum(order_cnt)::int8
           FROM cdm.user_category_counters GROUP BY 2
         UNION ALL
         SELECT 'product', product_name::text, count(*), sum(order_cnt)::int8
           FROM cdm.user_product_counters GROUP BY 2
         UNION ALL
         SELECT 'tag', tag, count(*), 0 FROM cdm.user_tags GROUP BY 2
         ORDER BY 1, 2",
    );
    (summary, truth)
}

/// The counters computed in SQL from the raw messages of `topic` and the Redis entries of
/// the keys matching `keys`: latest update_ts per object_id, CLOSED, distinct orders per
/// (user, product / category) — what the CDM tables must equal.
pub fn ground_truth(db: &str, topic: &str, keys: &str) -> (Counters, Counters) {
    ground_truth_in(db, topic, &redis_url(), keys)
}

/// [`ground_truth`] with the dictionaries in the Redis at `server`.
pub fn ground_truth_in(db: &str, topic: &str, server: &str, keys: &str) -> (Counters, Counters) {
    let mut client = pg(db);
    load_input(&mut client, topic, server, keys);
    // The closed orders' lines, materialized and analyzed: the planner cannot estimate
    // expressions over JSON, and planned the user filter as a nested loop over every line
    // (minutes at 50k orders).
    client
        .batch_execute(
            "CREATE TEMP TABLE c_lines AS
             SELECT l.id, l.p->'user'->>'id' AS user_id, l.p->'restaurant'->>'id' AS rid,
                    i->>'id' AS pid
             FROM truth_latest l, json_array_elements(l.p->'order_items') i
             WHERE l.p->>'final_status' = 'CLOSED';
             ANALYZE c_lines;",
        )
        .expect("closed lines");
    let query = |key: &str, name: &str| {
        format!(
            "WITH menu AS (SELECT rid, pid, name AS product, category FROM truth_menu)
             SELECT uuid_generate_v5($1, user_id), uuid_generate_v5($1, {key}), {name},
                    count(DISTINCT id)::int
             FROM c_lines JOIN menu USING (rid, pid)
             WHERE user_id IN (SELECT uid FROM truth_users)
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
        .batch_execute(&format!("{TRUTH_DROP}; DROP TABLE c_lines"))
        .expect("drop truth");
    (products, categories)
}

/// Loads the raw messages of `topic` (those that are JSON) into `truth_raw (value json)` and
/// the entries of the keys matching `keys` of the Redis at `server` into `truth_dict (key text, value json)`,
/// and derives from them `truth_latest (id, sent, p)`, `truth_users (uid, name, login)` and
/// `truth_menu (rid, pid, name, category)`; [`TRUTH_DROP`] drops them all.
fn load_input(client: &mut postgres::Client, topic: &str, server: &str, keys: &str) {
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
    let mut con = redis::Client::open(server)
        .and_then(|c| c.get_connection())
        .expect("connect to Redis");
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
    // Each order's latest version (by `update_ts`; equal ones: the greater MD5 of the payload
    // text, as the job decides), the users with a login, and every menu
    // line once, indexed: joining orders' lines to menus read from JSON on the fly was
    // planned as a nested loop (minutes at 50k orders).
    client
        .batch_execute(
            "CREATE TABLE truth_latest AS
             SELECT DISTINCT ON (id) id, sent, p FROM (
               SELECT (value->>'object_id')::int AS id, (value->>'sent_dttm')::timestamp AS sent,
                      value->'payload' AS p
               FROM truth_raw WHERE value->>'object_type' = 'order') v
             ORDER BY id, (p->>'update_ts')::timestamp DESC, md5(p::text) COLLATE \"C\" DESC;
             CREATE TABLE truth_users AS
             SELECT key AS uid, value->>'name' AS name, value->>'login' AS login
             FROM truth_dict WHERE value->'login' IS NOT NULL;
             CREATE TABLE truth_menu AS
             SELECT d.key AS rid, m->>'_id' AS pid, m->>'name' AS name,
                    m->>'category' AS category
             FROM truth_dict d CROSS JOIN LATERAL json_array_elements(d.value->'menu') m
             WHERE d.value->'menu' IS NOT NULL;
             CREATE INDEX ON truth_menu (rid, pid);
             ANALYZE truth_raw, truth_dict, truth_latest, truth_users, truth_menu;",
        )
        .expect("truth tables");
}

/// Drops what [`load_input`] created.
const TRUTH_DROP: &str = "DROP TABLE truth_raw, truth_dict, truth_latest, truth_users, truth_menu";

/// STG and the Data Vault recomputed in SQL from the raw messages and the dictionaries:
/// each order's latest version (by `update_ts`) in STG; for the orders whose restaurant,
/// user and products are all known, every hub and link they imply, and each satellite's
/// latest value equal to the latest version's or the dictionary's.
const LAYERS_TRUTH: &str = "
CREATE TEMP TABLE t_restaurants AS
SELECT key AS rid, value->>'name' AS name FROM truth_dict WHERE value->'menu' IS NOT NULL;
ANALYZE t_restaurants;
CREATE TEMP TABLE t_orders AS
SELECT l.id, l.p->'user'->>'id' AS uid, l.p->'restaurant'->>'id' AS rid,
       l.p->>'final_status' AS status, (l.p->>'cost')::numeric AS cost,
       (l.p->>'payment')::numeric AS payment, l.p
FROM truth_latest l
WHERE l.p->'user'->>'id' IN (SELECT uid FROM truth_users)
  AND l.p->'restaurant'->>'id' IN (SELECT rid FROM t_restaurants)
  AND NOT EXISTS (
    SELECT FROM json_array_elements(l.p->'order_items') i
    WHERE NOT EXISTS (SELECT FROM truth_menu m
                      WHERE m.rid = l.p->'restaurant'->>'id' AND m.pid = i->>'id'));
ANALYZE t_orders;
CREATE TEMP TABLE t_lines AS
SELECT DISTINCT o.id, o.rid, m.pid, m.name, m.category
FROM t_orders o CROSS JOIN LATERAL json_array_elements(o.p->'order_items') i
JOIN truth_menu m ON m.rid = o.rid AND m.pid = i->>'id';
ANALYZE t_lines;
";

/// Where STG and the Data Vault of `db` differ from what the raw messages of `topic` and the
/// Redis entries of `keys` imply (see [`LAYERS_TRUTH`]): one line per table that differs,
/// with the number of rows missing or extra. Empty when every layer agrees.
pub fn layer_differences(db: &str, topic: &str, keys: &str) -> Vec<String> {
    layer_differences_in(db, topic, &redis_url(), keys)
}

/// [`layer_differences`] with the dictionaries in the Redis at `server`.
pub fn layer_differences_in(db: &str, topic: &str, server: &str, keys: &str) -> Vec<String> {
    let mut client = pg(db);
    load_input(&mut client, topic, server, keys);
    client
        .batch_execute(LAYERS_TRUTH)
        .expect("the layers' truth");
    // (what, the job's rows, the truth's rows), compared as sets.
    let checks: [(&str, &str, &str); 15] = [
        ("stg.order_events", "SELECT object_id, sent_dttm FROM stg.order_events",
         "SELECT id, sent FROM truth_latest"),
        ("dds.h_order", "SELECT order_id FROM dds.h_order", "SELECT id FROM t_orders"),
        ("dds.h_user", "SELECT user_id FROM dds.h_user", "SELECT DISTINCT uid FROM t_orders"),
        ("dds.h_restaurant", "SELECT restaurant_id FROM dds.h_restaurant",
         "SELECT DISTINCT rid FROM t_orders"),
        ("dds.h_product", "SELECT product_id FROM dds.h_product", "SELECT DISTINCT pid FROM t_lines"),
        ("dds.h_category", "SELECT category_name FROM dds.h_category",
         "SELECT DISTINCT category FROM t_lines"),
        ("dds.l_order_product",
         "SELECT o.order_id, p.product_id FROM dds.l_order_product l
          JOIN dds.h_order o USING (h_order_pk) JOIN dds.h_product p USING (h_product_pk)",
         "SELECT id, pid FROM t_lines"),
        ("dds.l_order_user",
         "SELECT o.order_id, u.user_id FROM dds.l_order_user l
          JOIN dds.h_order o USING (h_order_pk) JOIN dds.h_user u USING (h_user_pk)",
         "SELECT id, uid FROM t_orders"),
        ("dds.l_product_restaurant",
         "SELECT p.product_id, r.restaurant_id FROM dds.l_product_restaurant l
          JOIN dds.h_product p USING (h_product_pk) JOIN dds.h_restaurant r USING (h_restaurant_pk)",
         "SELECT pid, rid FROM t_lines"),
        ("dds.l_product_category",
         "SELECT p.product_id, c.category_name FROM dds.l_product_category l
          JOIN dds.h_product p USING (h_product_pk) JOIN dds.h_category c USING (h_category_pk)",
         "SELECT pid, category FROM t_lines"),
        ("dds.s_order_status (latest)",
         "SELECT DISTINCT ON (h_order_pk) o.order_id, s.status FROM dds.s_order_status s
          JOIN dds.h_order o USING (h_order_pk) ORDER BY h_order_pk, s.load_dt DESC",
         "SELECT id, status FROM t_orders"),
        ("dds.s_order_cost (latest)",
         "SELECT DISTINCT ON (h_order_pk) o.order_id, s.cost, s.payment FROM dds.s_order_cost s
          JOIN dds.h_order o USING (h_order_pk) ORDER BY h_order_pk, s.load_dt DESC",
         "SELECT id, cost::numeric(19, 5), payment::numeric(19, 5) FROM t_orders"),
        ("dds.s_user_names (latest)",
         "SELECT DISTINCT ON (h_user_pk) u.user_id, s.username, s.userlogin
          FROM dds.s_user_names s JOIN dds.h_user u USING (h_user_pk)
          ORDER BY h_user_pk, s.load_dt DESC",
         "SELECT uid, name, login FROM truth_users WHERE uid IN (SELECT uid FROM t_orders)"),
        ("dds.s_restaurant_names (latest)",
         "SELECT DISTINCT ON (h_restaurant_pk) r.restaurant_id, s.name
          FROM dds.s_restaurant_names s JOIN dds.h_restaurant r USING (h_restaurant_pk)
          ORDER BY h_restaurant_pk, s.load_dt DESC",
         "SELECT rid, name FROM t_restaurants WHERE rid IN (SELECT rid FROM t_orders)"),
        // A product on two menus under two names: the greatest (the job's one value per key).
        ("dds.s_product_names (latest)",
         "SELECT DISTINCT ON (h_product_pk) p.product_id, s.name
          FROM dds.s_product_names s JOIN dds.h_product p USING (h_product_pk)
          ORDER BY h_product_pk, s.load_dt DESC",
         "SELECT pid, max(name) FROM t_lines GROUP BY pid"),
    ];
    let mut differences = Vec::new();
    for (what, job, truth) in checks {
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM (({truth}) EXCEPT ({job})) m),
                            (SELECT count(*) FROM (({job}) EXCEPT ({truth})) e)"
                ),
                &[],
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (missing, extra): (i64, i64) = (row.get(0), row.get(1));
        if missing + extra > 0 {
            differences.push(format!("{what}: {missing} rows missing, {extra} extra"));
        }
    }
    client
        .batch_execute(&format!(
            "{TRUTH_DROP}; DROP TABLE t_restaurants, t_orders, t_lines"
        ))
        .expect("drop truth");
    differences
}
