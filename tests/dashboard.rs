//! `dishflow dashboard` against a real Postgres, in a real browser: Debian's Chromium,
//! headless, driven over the DevTools protocol (installed by `scripts/services.sh`).
//!
//! The page must load with no console error, show the numbers the test wrote into the marts,
//! change when the test changes a row (without a reload), fit 1280×800 and a phone's width,
//! refuse requests without its token, and work under a role that may only SELECT the marts.
//! Screenshots go to `target/dashboard/` for a person to look at.

#![cfg(feature = "integration")]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dishflow_testkit::*;
use headless_chrome::protocol::cdp::Emulation::SetDeviceMetricsOverride;
use headless_chrome::protocol::cdp::Log::LogEntryLevel;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::protocol::cdp::Runtime::ConsoleAPICalledEventTypeOption;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::{Browser, LaunchOptions, Tab};

const MINUTE: Duration = Duration::from_secs(60);

/// Feedback rows the promos job would have written before the dashboard's tables existed
/// (`setup` builds `mart.promo_campaigns` and `mart.promo_hours` from them): campaign a, 120
/// drafts at 10:00 of which 30 have feedback; campaign b, 80 at 11:00, 10 with feedback.
const FEEDBACK: &str = "
INSERT INTO public.subscribers_feedback (restaurant_id, adv_campaign_id, adv_campaign_content,
    adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start,
    adv_campaign_datetime_end, datetime_created, client_id, trigger_datetime_created, feedback)
SELECT r, c, 'content', 'owner', 'owner@example.com', 1764583200, 1764669600, 1764583200,
       'client-' || i, t, CASE WHEN i < f THEN 'liked' END
FROM (VALUES ('restaurant-1', 'campaign-a', 120, 30, 1764583200),
             ('restaurant-2', 'campaign-b', 80, 10, 1764586800)) AS v(r, c, n, f, t),
     generate_series(0, 199) AS i
WHERE i < n";

/// What the orders and geo jobs would have written.
const MARTS: &str = "
INSERT INTO cdm.orders_summary VALUES
    ('product', 'Пицца Маргарита', 40, 77, now()), ('category', 'Пицца', 41, 90, now()),
    ('tag', 'pizza lover', 12, 0, now());
INSERT INTO mart.geo_city_summary VALUES
    ('Sydney', 500, 450, 400, 33, now()), ('Perth', 100, 120, 90, 5, '2026-12-01 11:30+00');
INSERT INTO mart.geo_zones VALUES
    ('2022-05-01', '2022-04-25', 1, 10, 5, 2, 1, 10, 5, 2, 1)";

/// A role that may read only what the dashboard shows: the SQL of docs/operations.md
/// (minus `mart.geo_zones`, to see what a missing grant looks like).
fn reader_role(db: &str, role: &str) -> String {
    let name = db.rsplit('/').next().expect("database name");
    pg(db)
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT CONNECT ON DATABASE {name} TO {role};
             GRANT USAGE ON SCHEMA mart, cdm, geo TO {role};
             GRANT SELECT ON mart.promo_campaigns, mart.promo_hours, cdm.orders_summary,
                             mart.geo_city_summary, geo.cities TO {role};"
        ))
        .expect("role");
    db.replacen("postgres@", &format!("{role}@"), 1)
}

/// Drops the role when the test ends (after its database, which holds its grants).
struct Role(String);

impl Drop for Role {
    fn drop(&mut self) {
        let admin = postgres_base();
        if let Ok(mut client) =
            postgres::Client::connect(&format!("{admin}/postgres"), postgres::NoTls)
        {
            let _ = client.batch_execute(&format!("DROP ROLE IF EXISTS {}", self.0));
        }
    }
}

/// Console errors, uncaught exceptions and failed loads the page reported.
#[derive(Default, Clone)]
struct Problems(Arc<Mutex<Vec<String>>>);

impl Problems {
    fn watch(&self, tab: &Tab) {
        tab.enable_log().expect("log");
        tab.enable_runtime().expect("runtime");
        let seen = Arc::clone(&self.0);
        tab.add_event_listener(Arc::new(move |event: &Event| {
            let problem = match event {
                Event::LogEntryAdded(e) if e.params.entry.level == LogEntryLevel::Error => {
                    Some(format!("log: {}", e.params.entry.text))
                }
                Event::RuntimeExceptionThrown(e) => {
                    Some(format!("exception: {:?}", e.params.exception_details.text))
                }
                Event::RuntimeConsoleAPICalled(e)
                    if matches!(
                        e.params.Type,
                        ConsoleAPICalledEventTypeOption::Error
                            | ConsoleAPICalledEventTypeOption::Assert
                    ) =>
                {
                    Some(format!("console: {:?}", e.params.args))
                }
                _ => None,
            };
            if let Some(problem) = problem {
                seen.lock().expect("lock").push(problem);
            }
        }))
        .expect("listener");
    }

    fn assert_none(&self, when: &str) {
        let seen = self.0.lock().expect("lock");
        assert!(seen.is_empty(), "{when}: {seen:?}");
    }
}

fn browser(width: u32, height: u32) -> Browser {
    let options = LaunchOptions::default_builder()
        .path(Some(PathBuf::from("/usr/bin/chromium")))
        .headless(true)
        .sandbox(false)
        .window_size(Some((width, height)))
        .args(vec![
            OsStr::new("--disable-background-networking"),
            OsStr::new("--no-default-browser-check"),
            OsStr::new("--hide-scrollbars"),
        ])
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .expect("launch options");
    Browser::new(options).expect("Chromium (scripts/services.sh installs it)")
}

/// Evaluates `expression` in the page: its value as a string.
fn eval(tab: &Tab, expression: &str) -> String {
    let value = tab
        .evaluate(expression, false)
        .expect("evaluate")
        .value
        .unwrap_or_default();
    match value {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// The text of `selector`, once the page has it.
fn text(tab: &Tab, selector: &str) -> String {
    tab.wait_for_element(selector)
        .and_then(|e| e.get_inner_text())
        .unwrap_or_else(|e| panic!("{selector}: {e}"))
}

fn screenshot(tab: &Tab, name: &str) {
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard");
    std::fs::create_dir_all(&dir).expect("target/dashboard");
    std::fs::write(dir.join(name), png).expect("write screenshot");
}

#[test]
fn the_page_shows_the_marts_updates_itself_and_needs_its_token() {
    let role = Role(unique("dash"));
    let db = database("dash");
    pg(&db)
        .batch_execute(dishflow::pg::FEEDBACK_DDL)
        .and_then(|()| pg(&db).batch_execute(FEEDBACK))
        .expect("feedback rows");
    assert_success(&dishflow(
        ["setup", "--job", "all", "--postgres-url", &db],
        MINUTE,
    ));
    pg(&db).batch_execute(MARTS).expect("marts");
    let url = reader_role(&db, &role.0);

    let token = "dashboard-token-0123456789abcdef";
    let token_file = std::env::temp_dir().join(format!("{}.token", role.0));
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let token_path = token_file.to_string_lossy().to_string();
    let dashboard = spawn([
        "dashboard",
        "--postgres-url",
        &url,
        "--listen",
        &listen,
        "--auth-token-file",
        &token_path,
        "--refresh-ms",
        "300",
    ]);
    let bearer = format!("Authorization: Bearer {token}");
    wait_until(MINUTE, "the dashboard answers", || {
        http_get_with(port, "/healthz", &[&bearer]).filter(|(status, ..)| *status == 200)
    });

    // Without the token: 401 everywhere but the health check; a wrong token sets no cookie.
    assert_eq!(
        http_get(port, "/healthz").map(|(status, _)| status),
        Some(200)
    );
    for path in [
        "/",
        "/panels",
        "/dashboard.js",
        "/?token=wrong-token-0123456789",
    ] {
        let (status, ..) = http_get(port, path).expect("an answer");
        assert_eq!(status, 401, "{path}");
    }
    let (status, head, body) = http_get_with(port, "/panels", &[&bearer]).expect("panels");
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("Server-Timing: panels;dur="), "{head}");
    assert!(
        head.contains("Content-Security-Policy: default-src 'self'"),
        "{head}"
    );

    // Desktop: the numbers written, then a change seen without a reload.
    let desktop = browser(1280, 800);
    let tab = desktop.new_tab().expect("tab");
    tab.set_default_timeout(Duration::from_secs(20));
    let problems = Problems::default();
    problems.watch(&tab);
    tab.navigate_to(&format!("http://{listen}/?token={token}"))
        .and_then(|t| t.wait_until_navigated())
        .expect("page");
    assert_eq!(eval(&tab, "location.pathname + location.search"), "/");
    assert_eq!(text(&tab, "[data-stat=drafts]"), "200");
    assert_eq!(text(&tab, "[data-stat=feedback]"), "40");
    assert_eq!(text(&tab, "[data-stat=share]"), "20.0 %");
    let orders = text(&tab, "#orders-products");
    assert!(
        orders.contains("Пицца Маргарита") && orders.contains("77"),
        "{orders}"
    );
    assert!(text(&tab, "#orders-tags").contains("pizza lover"));
    assert!(text(&tab, "#geo-home").contains("Sydney"));
    assert!(text(&tab, "#geo-recommendations").contains("33"));
    assert!(text(&tab, "#geo-map").contains("Sydney 500"));
    let hours = text(&tab, "#promos-hours");
    assert!(
        hours.contains("12-01 10h") && hours.contains("12-01 11h"),
        "{hours}"
    );
    assert!(text(&tab, "#promos-restaurants").contains("restaurant-2"));
    // Each panel says when its data last changed (the summaries were written just now).
    let today = chrono::Utc::now()
        .format("Last changed %Y-%m-%d")
        .to_string();
    for panel in [
        "promos-totals",
        "promos-hours",
        "orders-products",
        "geo-home",
    ] {
        let changed = text(&tab, &format!("#{panel}-changed"));
        assert!(changed.starts_with(&today), "{panel}: {changed}");
    }
    // The role has no SELECT on mart.geo_zones: that panel says so, the others work.
    let weeks = text(&tab, "#geo-weeks");
    assert!(weeks.contains("Not readable"), "{weeks}");
    assert_eq!(
        eval(
            &tab,
            "document.documentElement.scrollWidth <= window.innerWidth"
        ),
        "true",
        "no horizontal scrolling at 1280 px"
    );
    screenshot(&tab, "desktop-1280x800.png");

    tab.evaluate("window.notReloaded = true", false)
        .expect("mark");
    pg(&db)
        .batch_execute(
            // The app fills feedback (the trigger counts it); the orders job updates a count.
            "UPDATE subscribers_feedback SET feedback = 'loved'
             WHERE adv_campaign_id = 'campaign-b' AND feedback IS NULL;
             UPDATE cdm.orders_summary SET orders = 4321 WHERE kind = 'product'",
        )
        .expect("change");
    wait_until(MINUTE, "the page shows the changed rows", || {
        let feedback = text(&tab, "[data-stat=feedback]");
        let products = text(&tab, "#orders-products");
        (feedback == "110" && products.contains("4\u{2009}321")).then_some(())
    });
    assert_eq!(
        eval(&tab, "window.notReloaded === true"),
        "true",
        "no reload"
    );
    assert!(text(&tab, "#status").starts_with("Updated"));
    problems.assert_none("desktop");

    // A phone's width: everything stacks into one column, nothing scrolls sideways.
    // (A headless window is at least 500 px wide: the phone's viewport is emulated.)
    let phone = browser(800, 900);
    let tab = phone.new_tab().expect("tab");
    tab.set_default_timeout(Duration::from_secs(20));
    tab.call_method(SetDeviceMetricsOverride {
        width: 390,
        height: 844,
        device_scale_factor: 2.0,
        mobile: true,
        scale: None,
        screen_width: None,
        screen_height: None,
        position_x: None,
        position_y: None,
        dont_set_visible_size: None,
        screen_orientation: None,
        viewport: None,
        display_feature: None,
        device_posture: None,
    })
    .expect("phone viewport");
    let problems = Problems::default();
    problems.watch(&tab);
    tab.navigate_to(&format!("http://{listen}/?token={token}"))
        .and_then(|t| t.wait_until_navigated())
        .expect("page");
    assert_eq!(text(&tab, "[data-stat=share]"), "55.0 %");
    assert_eq!(eval(&tab, "window.innerWidth"), "390");
    assert_eq!(
        eval(
            &tab,
            "document.documentElement.scrollWidth <= window.innerWidth"
        ),
        "true",
        "no horizontal scrolling on a phone"
    );
    screenshot(&tab, "phone-390x844.png");
    problems.assert_none("phone");

    terminate(dashboard);
    let _ = std::fs::remove_file(token_file);
}

#[test]
fn a_missing_mart_is_explained_and_a_bad_database_is_one_line() {
    let help = dishflow(["dashboard", "--help"], MINUTE);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("[default: 127.0.0.1:8080]"),
        "loopback by default: {help}"
    );

    let db = database("dash_empty");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dashboard = spawn(["dashboard", "--postgres-url", &db, "--listen", &listen]);
    let (_, body) = wait_until(MINUTE, "the dashboard answers", || {
        http_get(port, "/panels").filter(|(status, _)| *status == 200)
    });
    // No job was set up in this database: every panel says what creates its table.
    let panels: serde_json::Value = serde_json::from_str(&body).expect("json");
    let promos = panels["panels"]["promos-totals"].as_str().expect("panel");
    assert!(promos.contains("dishflow setup --job promos"), "{promos}");
    let geo = panels["panels"]["geo-map"].as_str().expect("panel");
    assert!(geo.contains("dishflow setup --job geo"), "{geo}");
    assert_eq!(panels["changed"]["orders-tags"], "No data yet.");

    // Without a token on loopback, only requests naming this host are answered: a page
    // elsewhere cannot read it through DNS rebinding.
    let host = |name: &str| {
        let line = format!("Host: {name}");
        http_get_with(port, "/panels", &[&line]).map(|(status, ..)| status)
    };
    assert_eq!(host(&format!("attacker.example:{port}")), Some(421));
    assert_eq!(host(&format!("localhost:{port}")), Some(200));
    assert_eq!(host(&format!("127.0.0.1:{port}")), Some(200));
    terminate(dashboard);

    // A mart created by someone else with other column types: that panel says so, the
    // others are drawn.
    pg(&db)
        .batch_execute(
            "CREATE SCHEMA geo; CREATE TABLE geo.cities (id int PRIMARY KEY, city text,
                 lat numeric, lng numeric, timezone text);
             INSERT INTO geo.cities VALUES (1, 'Sydney', -33.865, 151.2094, 'Australia/Sydney');
             CREATE SCHEMA mart; CREATE TABLE mart.geo_city_summary (city text PRIMARY KEY,
                 users_now bigint, users_home bigint, users_at_home bigint,
                 recommendations bigint, changed_at timestamptz);",
        )
        .expect("tables of other types");
    let dashboard = spawn(["dashboard", "--postgres-url", &db, "--listen", &listen]);
    let (_, body) = wait_until(MINUTE, "the dashboard answers again", || {
        http_get(port, "/panels").filter(|(status, _)| *status == 200)
    });
    let panels: serde_json::Value = serde_json::from_str(&body).expect("json");
    let map = panels["panels"]["geo-map"].as_str().expect("panel");
    assert!(map.contains("Unexpected data in the table"), "{map}");
    // The same thread answers the next request.
    assert_eq!(http_get(port, "/panels").map(|(s, _)| s), Some(200));
    terminate(dashboard);

    // A database that cannot be reached ends the program with one line.
    let out = dishflow(
        [
            "dashboard",
            "--postgres-url",
            "postgres://postgres@127.0.0.1:1/none",
            "--listen",
            "127.0.0.1:0",
        ],
        MINUTE,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dishflow: error: cannot connect to Postgres"),
        "{stderr}"
    );
}
