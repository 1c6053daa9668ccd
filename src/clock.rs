//! The wall clock as dataflow time: every job's logical times are milliseconds since the
//! unix epoch, taken from here.

use dataflows::Time;

/// Milliseconds since the unix epoch, by the wall clock.
pub fn wall_clock_ms() -> Time {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The logical time `time` as a UTC timestamp.
pub fn utc(time: Time) -> chrono::NaiveDateTime {
    let ms = i64::try_from(time).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .naive_utc()
}
