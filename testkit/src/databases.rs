//! A database per test, dropped when the test passes.

use std::time::Duration;

use crate::*;

/// Creates a fresh database named after `name` (see [`unique`]).
pub fn database(name: &str) -> Db {
    let db = unique(name);
    admin()
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create database");
    Db(format!("{}/{db}", postgres_base()))
}

fn admin() -> postgres::Client {
    postgres::Client::connect(&format!("{}/postgres", postgres_base()), postgres::NoTls)
        .expect("connect to Postgres (is scripts/services.sh running?)")
}

/// A test's database: its URL (as `&str`, by deref). Dropped when the test passes, kept
/// for inspection when it fails; set `DISHFLOW_TEST_KEEP=1` to keep it anyway.
pub struct Db(String);

impl Db {
    /// The URL, the database no longer dropped with this value (the benchmarks drop theirs
    /// by name prefix when a workload ends).
    pub fn persist(self) -> String {
        std::mem::ManuallyDrop::new(self).0.clone()
    }
}

impl std::ops::Deref for Db {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if keep(&self.0) {
            return;
        }
        let name = self.0.rsplit('/').next().unwrap_or_default();
        if let Err(e) = drop_database(name) {
            eprintln!("cannot drop database {name}: {e}");
        }
    }
}

/// Drops database `name` with its replication slots (a slot keeps a database from being
/// dropped), ending the sessions still connected to it.
pub fn drop_database(name: &str) -> Result<(), postgres::Error> {
    let mut admin = admin();
    let mut attempt = 0;
    loop {
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )?;
        let dropped = admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = $1",
                &[&name],
            )
            .and_then(|_| {
                admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            });
        match dropped {
            // A replication connection ends a moment after it was told to.
            Err(_) if attempt < 50 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Drops the databases whose names start with `prefix`.
pub fn drop_databases(prefix: &str) -> Result<(), postgres::Error> {
    let names: Vec<String> = admin()
        .query(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)",
            &[&prefix],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in names {
        drop_database(&name)?;
    }
    Ok(())
}

/// A client on `url`.
pub fn pg(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect")
}
