//! Retrying a dependency (Postgres, Kafka) that is down: exponential backoff, quiet logs.
//!
//! A sink whose database or broker goes away does not end the job: it waits and tries
//! again, 100 ms, 200 ms, … up to 30 s between attempts, for as long as it takes. The first
//! failure is logged as a warning, then at most one line per [`LOG_EVERY`], and the recovery
//! once, with the number of attempts and the outage's length. The worker is blocked
//! meanwhile (its sources stop reading, so nothing piles up); a second SIGTERM/SIGINT
//! still exits at once.

use std::time::{Duration, Instant};

use tracing::{info, warn};

/// First pause after a failure.
pub const INITIAL: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
pub const MAX: Duration = Duration::from_secs(30);
/// At most one warning per this interval while a dependency stays down.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// Backoff state for one dependency of one worker.
pub struct Backoff {
    what: String,
    delay: Duration,
    attempts: u32,
    since: Option<Instant>,
    last_log: Option<Instant>,
    /// While failing: waiting out an outage is not a stall (`stall`).
    busy: Option<crate::metrics::Busy>,
}

impl Backoff {
    /// Backoff for `what` (named in the logs, e.g. "feedback sink").
    pub fn new(what: impl Into<String>) -> Self {
        Backoff {
            what: what.into(),
            delay: INITIAL,
            attempts: 0,
            since: None,
            last_log: None,
            busy: None,
        }
    }

    /// Records a failed attempt: logs it (rate-limited) and sleeps before the next one.
    pub fn failed(&mut self, error: &anyhow::Error) {
        std::thread::sleep(self.record_failure(error));
    }

    /// Records a failed attempt (logs it, rate-limited) and returns how long to wait
    /// before the next one; the wait after that is doubled, up to [`MAX`].
    fn record_failure(&mut self, error: &anyhow::Error) -> Duration {
        self.attempts += 1;
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.busy.is_none() {
            self.busy = Some(crate::metrics::metrics().busy_guard());
        }
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            self.last_log = Some(Instant::now());
            warn!(
                what = %self.what,
                attempts = self.attempts,
                down_for_s = since.elapsed().as_secs(),
                retry_in_ms = self.delay.as_millis() as u64,
                error = format!("{error:#}"),
                "dependency unavailable, retrying"
            );
        }
        let wait = self.delay;
        self.delay = (self.delay * 2).min(MAX);
        wait
    }

    /// Records a successful attempt: logs the recovery if there were failures, resets.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            info!(
                what = %self.what,
                attempts = self.attempts,
                down_for_ms = since.elapsed().as_millis() as u64,
                "dependency available again"
            );
        }
        self.delay = INITIAL;
        self.attempts = 0;
        self.last_log = None;
        self.busy = None;
    }

    /// Whether the last attempt failed.
    pub fn failing(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_reset_on_success() {
        let mut b = Backoff::new("test");
        b.delay = Duration::from_millis(1);
        let e = anyhow::anyhow!("down");
        b.failed(&e);
        b.failed(&e);
        assert_eq!(b.delay, Duration::from_millis(4));
        assert!(b.failing());
        // Near the cap: the wait doubles once more, then stays at MAX.
        b.delay = MAX - Duration::from_secs(1);
        assert_eq!(b.record_failure(&e), MAX - Duration::from_secs(1));
        assert_eq!(b.record_failure(&e), MAX);
        assert_eq!(b.record_failure(&e), MAX);
        assert_eq!(b.attempts, 5);
        b.succeeded();
        assert_eq!(b.delay, INITIAL);
        assert!(!b.failing());
    }
}
