//! Names unique to a test run, and the topics and Redis keys a test creates under one.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::*;

/// A name unique to this test run: `<name>_<pid>_<nanos>`.
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!(
        "{name}_{}_{:012}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Whether what a test created stays: the test is failing, or `DISHFLOW_TEST_KEEP` is set.
pub(crate) fn keep(what: &str) -> bool {
    let keep = std::thread::panicking() || std::env::var_os("DISHFLOW_TEST_KEEP").is_some();
    if keep {
        eprintln!("kept {what}");
    }
    keep
}

/// A test's unique name prefix (see [`unique`]) for its topics and Redis keys, as `&str`
/// by deref: the topics and keys whose names start with it are deleted when the test
/// passes, kept when it fails or `DISHFLOW_TEST_KEEP` is set.
pub struct Prefix(String);

/// A fresh [`Prefix`] named after `name`.
pub fn prefix(name: &str) -> Prefix {
    Prefix(unique(name))
}

impl std::ops::Deref for Prefix {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        if keep(&format!("the topics and Redis keys {}*", self.0)) {
            return;
        }
        if let Err(e) = delete_topics(&self.0) {
            eprintln!("cannot delete the topics {}*: {e}", self.0);
        }
        if let Err(e) = delete_redis_keys(&self.0) {
            eprintln!("cannot delete the Redis keys {}*: {e}", self.0);
        }
    }
}
