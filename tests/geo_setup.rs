//! `dishflow setup --job geo [--cities FILE]` against a real Postgres: the schemas and tables
//! of the geo job, the built-in cities in an empty table, a legacy cities file upserted, and
//! a bad file refused whole with the line named. Run via `scripts/test.sh`.

#![cfg(feature = "integration")]

use std::time::Duration;

use dishflow_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);

/// (id, city, lat, timezone) of every city, by id.
fn cities(db: &str) -> Vec<(i32, String, f64, String)> {
    pg(db)
        .query(
            "SELECT id, city, lat, timezone FROM geo.cities ORDER BY id",
            &[],
        )
        .expect("cities")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// A cities file under the target directory named after `name`.
fn file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}.csv", unique(name)));
    std::fs::write(&path, text).expect("write the cities file");
    path.to_string_lossy().into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn setup_creates_the_marts_and_loads_the_builtin_cities_once() {
    let db = database("geo_setup");
    assert_success(&dishflow(
        ["setup", "--job", "geo", "--postgres-url", &db],
        MINUTE,
    ));
    let loaded = cities(&db);
    assert_eq!(loaded.len(), 24);
    assert_eq!(loaded[0].1, "Sydney");
    assert_eq!(loaded[0].3, "Australia/Sydney");
    let mut client = pg(&db);
    for table in [
        "mart.geo_zones",
        "mart.geo_users",
        "mart.geo_friend_recommendations",
    ] {
        client
            .query(&format!("SELECT * FROM {table} LIMIT 1"), &[])
            .unwrap_or_else(|e| panic!("{table}: {e}"));
    }
    let publication = client
        .query_one(
            "SELECT count(*) FROM pg_publication_tables \
             WHERE pubname = 'dishflow_cities' AND schemaname = 'geo' AND tablename = 'cities'",
            &[],
        )
        .expect("publication");
    assert_eq!(publication.get::<_, i64>(0), 1);
    // Edited cities stay: the built-in list only fills an empty table.
    client
        .execute(
            "UPDATE geo.cities SET city = 'Sydney CBD' WHERE id = 1",
            &[],
        )
        .expect("edit");
    assert_success(&dishflow(
        ["setup", "--job", "geo", "--postgres-url", &db],
        MINUTE,
    ));
    assert_eq!(cities(&db)[0].1, "Sydney CBD");
    assert_eq!(cities(&db).len(), 24);
}

#[test]
fn a_legacy_cities_file_is_upserted_and_a_bad_one_changes_nothing() {
    let db = database("geo_cities");
    let good = file(
        "geo_cities_good",
        "id;city;lat;lng\n1;Sydney;-33,9;151,2\n100;Alice Springs;-23,698;133,8807;Australia/Darwin\n",
    );
    let setup = |path: &str| {
        dishflow(
            [
                "setup",
                "--job",
                "geo",
                "--postgres-url",
                &db,
                "--cities",
                path,
            ],
            MINUTE,
        )
    };
    assert_success(&setup(&good));
    let loaded = cities(&db);
    assert_eq!(
        loaded.len(),
        2,
        "a file fills the table instead of the built-in list"
    );
    assert_eq!(
        (loaded[0].2, loaded[0].3.as_str()),
        (-33.9, "Australia/Sydney")
    );
    assert_eq!(loaded[1].1, "Alice Springs");

    let bad_line = file(
        "geo_cities_bad",
        "id;city;lat;lng\n2;Melbourne;-37,8;144,9\n3;Nowhere;north;1\n",
    );
    let out = setup(&bad_line);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses the argument: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));
    let bad_zone = file(
        "geo_cities_zone",
        "id;city;lat;lng;timezone\n2;Melbourne;-37,8;144,9;Australia/Melbourne\n5;Olympus;1;1;Mars/Olympus\n",
    );
    let out = setup(&bad_zone);
    assert_eq!(out.status.code(), Some(2), "a bad line, like any other");
    assert!(
        stderr(&out).contains("line 3: time zone \"Mars/Olympus\" is not an IANA name"),
        "{}",
        stderr(&out)
    );
    assert_eq!(cities(&db), loaded, "nothing of a bad file is written");

    let out = dishflow(
        [
            "setup",
            "--job",
            "promos",
            "--postgres-url",
            &db,
            "--cities",
            &good,
        ],
        MINUTE,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--job geo"), "{}", stderr(&out));
    for path in [good, bad_line, bad_zone] {
        std::fs::remove_file(path).ok();
    }
}
