//! Jobs under the roles `dishflow setup --print-roles` creates: each runs end to end with
//! only its grants, and a missing grant ends it at startup with one line naming the grant
//! and the SQL that gives it.
//! Run with `cargo test --features integration` after `scripts/services.sh` (or via
//! `scripts/test.sh`, which does both).

#![cfg(feature = "integration")]

use std::collections::BTreeMap;
use std::time::Duration;

use dishflow_testkit::*;

const WAIT: Duration = Duration::from_secs(60);

/// The roles `--print-roles --role-prefix <prefix>` created in `db`; dropped (with their
/// grants) at the end, since roles outlive the test's database.
struct Roles {
    db: String,
    prefix: String,
}

impl Roles {
    /// Creates the roles in `db` from `dishflow setup --print-roles`.
    fn create(db: &str, name: &str) -> Roles {
        let prefix = format!("{}_", unique(name));
        let out = dishflow(["setup", "--print-roles", "--role-prefix", &prefix], WAIT);
        assert_success(&out);
        let sql = String::from_utf8(out.stdout).expect("utf-8");
        let roles = Roles {
            db: db.to_string(),
            prefix,
        };
        pg(db).batch_execute(&sql).expect("the printed roles apply");
        roles
    }

    /// The role of `job`.
    fn role(&self, job: &str) -> String {
        format!("{}{job}", self.prefix)
    }

    /// `url` (the superuser's) with the role of `job` instead.
    fn url(&self, job: &str) -> String {
        self.db
            .replacen("//postgres@", &format!("//{}@", self.role(job)), 1)
    }

    fn sql(&self, statement: &str) {
        pg(&self.db).batch_execute(statement).expect(statement);
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let mut client = pg(&self.db);
        for job in ["promos", "orders", "geo", "dashboard"] {
            let role = self.role(job);
            let _ = client.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"));
        }
    }
}

/// `args` with `--postgres-url` set to the role of `job`.
fn as_role(roles: &Roles, job: &str, mut args: Vec<String>) -> Vec<String> {
    let at = args
        .iter()
        .position(|a| a == "--postgres-url")
        .expect("flag")
        + 1;
    args[at] = roles.url(job);
    args
}

/// The line of `out`'s stderr that says what the role lacks.
fn lacks_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find(|l| l.contains("lacks what the"))
        .unwrap_or_else(|| panic!("no line saying what the role lacks:\n{stderr}"))
        .to_string()
}

#[test]
fn promos_runs_under_its_role_and_a_missing_grant_stops_it_at_startup_with_the_sql() {
    let (db, prefix) = live_fixture("roles_promos");
    let roles = Roles::create(&db, "rp");
    let now = now_secs();
    roles.sql(
        "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES \
         ('a', 'r1'), ('b', 'r1'), ('c', 'r2')",
    );
    produce_values(
        &format!("{prefix}.in"),
        2,
        &[
            &campaign_json("C", "r1", now - 10, now + 3600),
            &campaign_json("D", "r2", now - 10, now + 3600),
            &campaign_json("E", "r1", now - 7200, now - 3600),
        ],
    );
    let mut args = as_role(&roles, "promos", promos_args(&db, &prefix));
    args.extend(["--stop-at-end", "--envelope", "upsert"].map(String::from));
    assert_success(&dishflow(&args, WAIT));
    // The truth: each valid campaign × the subscribers of its restaurant.
    let truth: BTreeMap<String, Vec<bool>> = pg(&db)
        .query(
            "SELECT c || ':' || s.client_id FROM subscribers_restaurants s \
             JOIN (VALUES ('C', 'r1'), ('D', 'r2')) AS v(c, r) ON v.r = s.restaurant_id",
            &[],
        )
        .expect("truth")
        .iter()
        .map(|r| (r.get(0), vec![true]))
        .collect();
    assert_eq!(shapes(&format!("{prefix}.out")), truth);
    assert_eq!(feedback_rows(&db).len(), truth.len());

    // A grant taken away: the job stops at startup and says which and how to give it back.
    let role = roles.role("promos");
    roles.sql(&format!(
        "REVOKE INSERT ON public.subscribers_feedback FROM {role}"
    ));
    let out = dishflow(&args, WAIT);
    assert!(
        !out.status.success(),
        "a job missing a grant must not start"
    );
    let line = lacks_line(&out);
    assert!(
        line.contains(&format!(
            "INSERT on public.subscribers_feedback: GRANT INSERT ON public.subscribers_feedback \
             TO {role}"
        )),
        "{line}"
    );
    roles.sql(&format!(
        "GRANT INSERT ON public.subscribers_feedback TO {role}; ALTER ROLE {role} NOREPLICATION"
    ));
    let line = lacks_line(&dishflow(&args, WAIT));
    assert!(
        line.contains(&format!("ALTER ROLE {role} REPLICATION")),
        "{line}"
    );
    // A schema and a sequence: every missing grant in the one line.
    roles.sql(&format!(
        "ALTER ROLE {role} REPLICATION; REVOKE USAGE ON SCHEMA mart FROM {role}; \
         REVOKE USAGE ON SEQUENCE public.subscribers_feedback_id_seq FROM {role}"
    ));
    let line = lacks_line(&dishflow(&args, WAIT));
    for grant in [
        format!("GRANT USAGE ON SCHEMA mart TO {role}"),
        format!("GRANT USAGE ON SEQUENCE public.subscribers_feedback_id_seq TO {role}"),
    ] {
        assert!(line.contains(&grant), "{grant}: {line}");
    }
}

#[test]
fn orders_runs_under_its_role_to_the_sql_ground_truth() {
    let (db, prefix) = live_fixture("roles_orders");
    let roles = Roles::create(&db, "ro");
    produce_orders(&prefix, "300");
    let mut args = as_role(&roles, "orders", orders_args(&db, &prefix));
    args.extend(["--stop-at-end", "--stg-topic", &format!("{prefix}.stg")].map(String::from));
    assert_success(&dishflow(&args, WAIT));
    let (topic, keys) = (format!("{prefix}.orders"), format!("{prefix}*"));
    let (products, categories) = cdm_counters(&db);
    assert!(!products.is_empty(), "the run counted nothing");
    assert_eq!((products, categories), ground_truth(&db, &topic, &keys));
    assert_eq!(layer_differences(&db, &topic, &keys), Vec::<String>::new());
    let (tags, truth) = tags_and_truth(&db);
    assert_eq!(tags, truth);
}

#[test]
fn geo_runs_under_its_role_to_the_sql_ground_truth() {
    let (db, prefix) = live_fixture("roles_geo");
    let roles = Roles::create(&db, "rg");
    let topic = format!("{prefix}.events");
    let (sydney, melbourne) = (Some((-33.865, 151.2094)), Some((-37.8136, 144.9631)));
    produce_values(
        &topic,
        2,
        &[
            geo_message(1, 1, None, "2022-05-02 10:00:00", sydney),
            geo_message(2, 2, Some(1), "2022-05-03 10:00:00", sydney),
            geo_message(3, 1, Some(2), "2022-05-04 10:00:00", melbourne),
            geo_subscription(1, 10, "2022-05-04 11:00:00"),
            geo_subscription(2, 10, "2022-05-04 11:00:00"),
        ],
    );
    let args = as_role(&roles, "geo", geo_args(&db, &prefix, &["--stop-at-end"]));
    assert_success(&dishflow(&args, WAIT));
    let users: i64 = pg(&db)
        .query_one("SELECT count(*) FROM mart.geo_users", &[])
        .expect("users")
        .get(0);
    assert_eq!(users, 2);
    assert!(geo_check(&db, &[&topic]).is_empty());
}

#[test]
fn the_dashboards_role_reads_the_marts_and_writes_nothing() {
    let (db, _prefix) = live_fixture("roles_dashboard");
    let roles = Roles::create(&db, "rd");
    let mut reader = pg(&roles.url("dashboard"));
    for table in [
        "mart.promo_campaigns",
        "mart.promo_hours",
        "cdm.orders_summary",
        "geo.cities",
        "mart.geo_zones",
        "mart.geo_city_summary",
    ] {
        reader
            .query(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap_or_else(|e| panic!("the dashboard's role cannot read {table}: {e}"));
    }
    let denied = reader
        .batch_execute("DELETE FROM mart.promo_hours")
        .expect_err("the dashboard's role must not write");
    let message = denied.as_db_error().map(|e| e.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("permission denied")),
        "{denied:?}"
    );
}
