//! The test Redis.

use redis::Commands;

/// Deletes the Redis keys that start with `prefix`.
pub fn delete_redis_keys(prefix: &str) -> redis::RedisResult<()> {
    let mut con = redis::Client::open(redis_url().as_str())?.get_connection()?;
    let keys: Vec<String> = con.keys(format!("{prefix}*"))?;
    if !keys.is_empty() {
        con.del::<_, ()>(keys)?;
    }
    Ok(())
}

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("DISHFLOW_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

pub fn redis() -> redis::Connection {
    redis::Client::open(redis_url().as_str())
        .and_then(|c| c.get_connection())
        .expect("connect to Redis (is scripts/services.sh running?)")
}
