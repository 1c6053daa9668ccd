//! Liveness (`/healthz`: every worker ran within [`HEARTBEAT_STALE`]) and readiness
//! (`/readyz`: workers started, snapshots loaded, consumer lag at most the threshold),
//! computed from the heartbeats and gauges of [`Metrics`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{HEARTBEAT_STALE, Metrics, WorkerLabels};

impl Metrics {
    /// The process runs `workers` worker threads (health expects a heartbeat from each).
    pub fn expect_workers(&self, workers: usize) {
        self.workers.store(workers as u64, Ordering::Relaxed);
    }

    /// Worker `worker` is running (called on every source activation).
    pub fn beat(&self, worker: usize) {
        let now = self.epoch.elapsed().as_millis() as u64;
        if let Some(beat) = self
            .beats
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&worker)
        {
            beat.store(now, Ordering::Relaxed);
            return;
        }
        self.beats
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(worker, AtomicU64::new(now));
    }

    /// Every sink wrote everything before `time` (`None`: everything, the run is complete).
    pub fn output_frontier(&self, time: Option<dataflows::Time>) {
        let time = time.unwrap_or(u64::MAX);
        if self.frontier.fetch_max(time, Ordering::Relaxed) < time {
            self.note_progress();
        }
    }

    /// Something progressed: the frontier moved, a source emitted, a sink wrote.
    pub fn note_progress(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.progress.fetch_max(now, Ordering::Relaxed);
    }

    /// Since the last progress (or the process's start).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.progress.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// The process is busy (a write in flight, a dependency retried) while the returned
    /// guard lives.
    pub fn busy_guard(&'static self) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self)
    }

    /// Whether a [`Busy`] guard lives.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    /// Whether every worker of the process runs its dataflow (each ran a source).
    pub fn started(&self) -> bool {
        let expected = self.workers.load(Ordering::Relaxed) as usize;
        expected > 0 && self.beats.read().unwrap_or_else(|e| e.into_inner()).len() >= expected
    }

    /// Whether every sink wrote everything (the run is complete).
    pub fn finished(&self) -> bool {
        self.frontier.load(Ordering::Relaxed) == u64::MAX
    }

    /// The time up to which every sink wrote (ms since the unix epoch; 0: nothing yet).
    pub fn written_up_to(&self) -> u64 {
        self.frontier.load(Ordering::Relaxed)
    }

    /// The process found itself stalled for `reason`: health and readiness fail with it.
    pub fn set_stalled(&self, reason: &str) {
        *self.stalled.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        self.stalled_gauge.set(1);
    }

    /// Why the process is not healthy, if it is not.
    pub fn unhealthy(&self) -> Option<String> {
        if let Some(reason) = &*self.stalled.lock().unwrap_or_else(|e| e.into_inner()) {
            return Some(format!("stalled: {reason}"));
        }
        let now = self.epoch.elapsed();
        let beats = self.beats.read().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<String> = beats
            .iter()
            .filter_map(|(worker, beat)| {
                let idle = now.saturating_sub(Duration::from_millis(beat.load(Ordering::Relaxed)));
                (idle > HEARTBEAT_STALE).then(|| format!("worker {worker} idle for {idle:.0?}"))
            })
            .collect();
        if !stale.is_empty() {
            return Some(stale.join(", "));
        }
        let expected = self.workers.load(Ordering::Relaxed) as usize;
        if beats.len() < expected && now > HEARTBEAT_STALE {
            return Some(format!(
                "{} of {expected} workers started after {now:.0?}",
                beats.len()
            ));
        }
        None
    }

    /// Why the job is not ready, if it is not: workers not started, snapshots loading, or a
    /// partition lagging by more than `max_lag` records.
    pub fn unready(&self, max_lag: i64) -> Option<String> {
        if let Some(reason) = self.unhealthy() {
            return Some(reason);
        }
        let expected = self.workers.load(Ordering::Relaxed) as usize;
        let started = self.beats.read().unwrap_or_else(|e| e.into_inner()).len();
        if expected == 0 || started < expected {
            return Some(format!("{started} of {expected} workers started"));
        }
        let loading = self.loading.get();
        if loading > 0 {
            return Some(format!("{loading} source(s) loading their snapshot"));
        }
        let mut lagging: Vec<String> = self
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, m)| m.lag.get() > max_lag)
            .map(|(p, m)| format!("{}/{} {}", p.topic, p.partition, m.lag.get()))
            .collect();
        lagging.sort();
        if !lagging.is_empty() {
            return Some(format!(
                "consumer lag above {max_lag}: {}",
                lagging.join(", ")
            ));
        }
        None
    }

    /// Brings the gauges computed from the clock up to date.
    pub(super) fn refresh(&self, max_lag: i64) {
        self.frontier_lag
            .set(self.output_lag(crate::clock::wall_clock_ms()));
        let now = self.epoch.elapsed();
        for (worker, beat) in self.beats.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let idle = now.saturating_sub(Duration::from_millis(beat.load(Ordering::Relaxed)));
            self.idle
                .get_or_create(&WorkerLabels { worker: *worker })
                .set(idle.as_secs_f64());
        }
        self.ready.set(i64::from(self.unready(max_lag).is_none()));
    }

    /// Seconds between `now_ms` (wall clock) and the time up to which every sink wrote:
    /// since the process started while nothing is written yet (a job stuck before its
    /// first output shows a growing lag, not 0), 0 once the run is complete.
    pub(super) fn output_lag(&self, now_ms: u64) -> f64 {
        match self.frontier.load(Ordering::Relaxed) {
            u64::MAX => 0.0,
            0 => self.epoch.elapsed().as_secs_f64(),
            frontier => now_ms.saturating_sub(frontier) as f64 / 1000.0,
        }
    }
}

/// Marks the process busy until dropped ([`Metrics::busy_guard`]).
pub struct Busy(&'static Metrics);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn readiness_waits_for_workers_snapshots_and_lag_and_health_for_heartbeats() {
        let m = Metrics::new();
        assert!(m.unready(10).is_some_and(|r| r.contains("0 of 0 workers")));
        m.expect_workers(2);
        m.beat(0);
        assert_eq!(m.unready(10).as_deref(), Some("1 of 2 workers started"));
        m.beat(1);
        let mut source = m.source("Subscribers");
        assert_eq!(
            m.unready(10).as_deref(),
            Some("1 source(s) loading their snapshot")
        );
        source.emitted(5, true);
        source.loaded();
        source.loaded(); // idempotent
        let partition = m.partition("promos", 3);
        partition.starts(0, 100);
        assert_eq!(
            m.unready(10).as_deref(),
            Some("consumer lag above 10: promos/3 100")
        );
        partition.position(95);
        assert_eq!(m.unready(10), None);
        assert_eq!(m.unhealthy(), None);
        assert!(m.render("t", 10).contains("dishflow_ready{job=\"t\"} 1"));
        // A worker that has not run for longer than HEARTBEAT_STALE.
        m.beats
            .write()
            .expect("lock")
            .get(&1)
            .expect("worker 1")
            .store(0, Ordering::Relaxed);
        let m = Metrics {
            epoch: Instant::now() - HEARTBEAT_STALE * 2,
            ..m
        };
        m.beat(0);
        let reason = m.unhealthy().expect("worker 1 is stale");
        assert!(reason.starts_with("worker 1 idle for 12"), "{reason}");
        assert!(m.unready(10).is_some());
        drop(source);
    }

    #[test]
    fn output_lag_grows_until_the_first_write_and_is_zero_when_complete() {
        let mut m = Metrics::new();
        m.epoch = Instant::now() - Duration::from_secs(7);
        let before = m.output_lag(1_000_000);
        assert!((7.0..8.0).contains(&before), "{before}");
        m.output_frontier(Some(990_000));
        assert_eq!(m.output_lag(1_000_000), 10.0);
        m.output_frontier(None);
        assert_eq!(m.output_lag(1_000_000), 0.0);
    }
}
