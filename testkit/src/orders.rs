//! Fixtures of the orders job: its counters, and the counters computed in SQL from the
//! raw messages and dictionaries (the ground truth).

use std::io::Write;

use redis::Commands;

use crate::*;

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
