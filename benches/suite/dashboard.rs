//! D: what a dashboard page costs the server as the data behind it grows.
//!
//! Per size (feedback rows, counter rows): a database whose `subscribers_feedback` holds
//! that many drafts (2,000 campaigns' worth per million, each over 24 hours, a fifth with
//! feedback) and whose counter tables hold that many rows (100,000 users per 3M rows); then
//! `dishflow setup` (which builds `mart.promo_campaigns` and `mart.promo_hours` from the
//! existing rows — timed), the
//! orders summary as the orders job keeps it, and `dishflow dashboard`, asked for `/panels`
//! (what the page polls) and `/` many times. Reported: the server's own time per request
//! (its `Server-Timing`), and for contrast what the same promos and orders numbers cost when
//! scanned from the big tables.

use std::time::{Duration, Instant};

use dishflow_testkit::*;
use serde_json::{Value, json};

use crate::runs::median;

/// Sizes of D: (feedback rows, counter rows).
pub(crate) fn sizes(quick: bool) -> Vec<(u64, u64)> {
    let full = [(0, 0), (1_000_000, 3_000_000)];
    full.iter()
        .map(|&(f, c)| if quick { (f / 20, c / 20) } else { (f, c) })
        .collect()
}

/// Runs D at every size; `requests` per endpoint.
pub(crate) fn d(sizes: &[(u64, u64)], requests: usize) -> Value {
    let rows: Vec<Value> = sizes
        .iter()
        .map(|&(feedback, counters)| one_size(feedback, counters, requests))
        .collect();
    json!({"workload": "D", "sizes": rows})
}

fn one_size(feedback: u64, counters: u64, requests: usize) -> Value {
    let db = database("bench_dash");
    let mut client = pg(&db);
    client
        .batch_execute(dishflow::pg::FEEDBACK_DDL)
        .expect("feedback table");
    let started = Instant::now();
    // 500 clients per campaign, drafts over the campaign's 24 hours, every fifth with feedback.
    client
        .execute(
            "INSERT INTO public.subscribers_feedback (restaurant_id, adv_campaign_id,
                 adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact,
                 adv_campaign_datetime_start, adv_campaign_datetime_end, datetime_created,
                 client_id, trigger_datetime_created, feedback)
             SELECT 'restaurant-' || (i / 500) % 200, 'campaign-' || i / 500, 'content',
                    'owner', 'owner@example.com', 1764547200 + (i / 500) * 600,
                    1764547200 + (i / 500) * 600 + 86400, 1764547200,
                    'client-' || i % 500,
                    1764547200 + (i / 500) * 600 + (i % 24) * 3600,
                    CASE WHEN i % 5 = 0 THEN 'liked' END
             FROM generate_series(0, $1::int8 - 1) AS i",
            &[&(feedback as i64)],
        )
        .expect("feedback rows");
    let fill_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    assert_success(&dishflow(
        ["setup", "--job", "all", "--postgres-url", &db],
        Duration::from_secs(600),
    ));
    let setup_s = started.elapsed().as_secs_f64();
    // Two thirds product counters (20 of 300 products per user), one third category counters
    // (10 per user), and the summary and tags the orders job keeps from them.
    let users = (counters / 30).max(1) as i64;
    client
        .batch_execute(&format!(
            "INSERT INTO cdm.user_product_counters (user_id, product_id, product_name, order_cnt)
             SELECT md5('u' || u)::uuid, md5('p' || (u * 7 + k * 13) % 300)::uuid,
                    'product ' || (u * 7 + k * 13) % 300, 1 + (u + k) % 9
             FROM generate_series(0, {users} - 1) AS u, generate_series(0, 19) AS k
             WHERE {counters} > 0;
             INSERT INTO cdm.user_category_counters (user_id, category_id, category_name, order_cnt)
             SELECT md5('u' || u)::uuid, md5('c' || k)::uuid,
                    (ARRAY['Пицца','Роллы','Супы','Салаты','Выпечка','Десерты','Напитки',
                           'Горячее','Закуски','Соусы'])[k + 1], 1 + (u * k) % 12
             FROM generate_series(0, {users} - 1) AS u, generate_series(0, 9) AS k
             WHERE {counters} > 0;
             INSERT INTO cdm.user_tags (user_id, tag, since)
             SELECT c.user_id, r.tag, now() FROM cdm.user_category_counters AS c
             JOIN cdm.tag_rules AS r ON r.category_name = c.category_name
             WHERE c.order_cnt >= r.min_orders;
             INSERT INTO cdm.orders_summary
             SELECT 'category', category_name, count(*), sum(order_cnt), now()
               FROM cdm.user_category_counters GROUP BY 2
             UNION ALL
             SELECT 'product', product_name, count(*), sum(order_cnt), now()
               FROM cdm.user_product_counters GROUP BY 2
             UNION ALL
             SELECT 'tag', tag, count(*), 0, now() FROM cdm.user_tags GROUP BY 2;
             ANALYZE"
        ))
        .expect("counters");
    let count = |client: &mut postgres::Client, table: &str| -> i64 {
        client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .expect("count")
            .get(0)
    };
    let counter_rows = count(&mut client, "cdm.user_product_counters")
        + count(&mut client, "cdm.user_category_counters");
    let summary_rows =
        count(&mut client, "mart.promo_campaigns") + count(&mut client, "mart.promo_hours");

    // What a page would cost that scanned the big tables for the same numbers.
    let scan = |client: &mut postgres::Client| -> f64 {
        let started = Instant::now();
        for sql in [
            "SELECT adv_campaign_id, count(*), count(feedback) FROM subscribers_feedback GROUP BY 1",
            "SELECT trigger_datetime_created / 3600, count(*) FROM subscribers_feedback GROUP BY 1",
            "SELECT product_name, count(*), sum(order_cnt) FROM cdm.user_product_counters GROUP BY 1",
            "SELECT category_name, count(*), sum(order_cnt) FROM cdm.user_category_counters GROUP BY 1",
        ] {
            client.query(sql, &[]).expect("scan");
        }
        started.elapsed().as_secs_f64() * 1000.0
    };
    let scans: Vec<f64> = (0..3).map(|_| scan(&mut client)).collect();

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dashboard = spawn(["dashboard", "--postgres-url", &db, "--listen", &listen]);
    wait_until(Duration::from_secs(60), "the dashboard answers", || {
        http_get(port, "/healthz").filter(|(status, _)| *status == 200)
    });
    let timings = |path: &str| -> (Vec<f64>, Vec<f64>) {
        let (mut server, mut wall) = (Vec::new(), Vec::new());
        for _ in 0..requests {
            let started = Instant::now();
            let (status, head, _) = http_get_with(port, path, &[]).expect("an answer");
            wall.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "{path}");
            let ms = head
                .lines()
                .find_map(|l| l.strip_prefix("Server-Timing: panels;dur="))
                .and_then(|v| v.trim().parse().ok())
                .expect("Server-Timing");
            server.push(ms);
        }
        (server, wall)
    };
    // The first request connects to Postgres: not part of the steady state. What it shows
    // must be what the feedback table holds (counted here, not from the summaries).
    timings("/panels");
    let (_, body) = http_get(port, "/panels").expect("panels");
    let panels: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let totals = panels["panels"]["promos-totals"]
        .as_str()
        .unwrap_or_default();
    let truth = client
        .query_one(
            "SELECT count(*), count(feedback), count(DISTINCT adv_campaign_id),
                    count(DISTINCT restaurant_id) FROM subscribers_feedback",
            &[],
        )
        .expect("the truth");
    for (i, stat) in ["drafts", "feedback", "campaigns", "restaurants"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            shown(totals, stat),
            Some(truth.get::<_, i64>(i)),
            "D: the dashboard's {stat} tile: {totals}"
        );
    }
    let (panels_server, panels_wall) = timings("/panels");
    let (page_server, page_wall) = timings("/");
    terminate(dashboard);
    let p95 = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * 0.95).ceil() as usize)
            .saturating_sub(1)
            .min(v.len() - 1)]
    };
    println!(
        "D: {feedback} feedback rows, {counter_rows} counter rows: /panels server {:.1} ms \
         (p95 {:.1}), scans {:.0} ms",
        median(&panels_server),
        p95(&panels_server),
        median(&scans)
    );
    json!({
        "feedback_rows": feedback,
        "counter_rows": counter_rows,
        "promo_summary_rows": summary_rows,
        "fill_s": fill_s,
        "setup_s": setup_s,
        "requests": requests,
        "panels_server_ms": median(&panels_server),
        "panels_server_p95_ms": p95(&panels_server),
        "panels_wall_ms": median(&panels_wall),
        "page_server_ms": median(&page_server),
        "page_wall_ms": median(&page_wall),
        "scan_ms": median(&scans),
    })
}

/// D's section of the report.
pub(crate) fn markdown(result: &Value) -> String {
    if result["workload"] != "D" {
        return String::new();
    }
    let mut md = String::from(
        "\n## D: the dashboard's server time\n\n| feedback rows | counter rows | promos summary rows | setup s (builds it) | /panels server ms median (p95) | /panels wall ms | / server ms | scanning the big tables instead, ms |\n|---|---|---|---|---|---|---|---|\n",
    );
    for s in result["sizes"].as_array().into_iter().flatten() {
        let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} ({:.1}) | {:.1} | {:.1} | {:.0} |\n",
            s["feedback_rows"],
            s["counter_rows"],
            s["promo_summary_rows"],
            f("setup_s"),
            f("panels_server_ms"),
            f("panels_server_p95_ms"),
            f("panels_wall_ms"),
            f("page_server_ms"),
            f("scan_ms"),
        ));
    }
    md.push_str(
        "\nServer ms: the dashboard's own time to read every panel (its `Server-Timing` header), \
         median of the requests; the page reads only the small tables the jobs keep \
         (`mart.promo_campaigns`, `mart.promo_hours`, `cdm.orders_summary`, \
         `mart.geo_city_summary`, `mart.geo_zones`). \
         The last column runs the GROUP BYs a page would need without them.\n",
    );
    md
}

/// The number a dashboard tile `data-stat="stat"` shows in `html` (digits only: the page
/// groups them with thin spaces).
fn shown(html: &str, stat: &str) -> Option<i64> {
    let start = html.find(&format!("data-stat=\"{stat}\">"))?;
    let text = &html[start..];
    let text = &text[text.find('>')? + 1..];
    let text = &text[..text.find('<')?];
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    digits.parse().ok()
}
