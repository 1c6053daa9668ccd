//! Metrics and health: what a job does, in Prometheus text format, and whether it is alive
//! and ready (`--metrics-addr HOST:PORT`).
//!
//! ```text
//!  sources, sinks, Kafka clients, differential logging ──► metrics() (process-wide, atomics)
//!                                                              │
//!  GET /metrics  ◄── HTTP thread (tiny_http) ──────────────────┤ Prometheus text, job label
//!  GET /healthz  ◄── every worker ran within HEARTBEAT_STALE ──┤ 200 / 503 + reason
//!  GET /readyz   ◄── workers started, snapshots loaded, lag ≤ threshold ─┘
//! ```
//!
//! Counters are process-wide and summed over the process's workers; a cluster's processes
//! each serve their own endpoint (Prometheus tells them apart by instance). Recording is a
//! relaxed atomic add on a handle the hot paths keep (no lookup per record); metrics are
//! recorded whether or not they are served.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `dishflow_kafka_records_read_total` | counter | topic, partition | records read by sources |
//! | `dishflow_kafka_bytes_read_total` | counter | topic, partition | key + value bytes read |
//! | `dishflow_kafka_position` | gauge | topic, partition | next offset the source reads |
//! | `dishflow_kafka_end_offset` | gauge | topic, partition | last stable offset (librdkafka statistics) |
//! | `dishflow_kafka_consumer_lag` | gauge | topic, partition | end offset − position |
//! | `dishflow_source_records_total` | counter | source | records emitted by a source operator |
//! | `dishflow_snapshot_records_total` | counter | source | of which loaded at the start time (snapshot, replay) |
//! | `dishflow_snapshot_pending` | gauge | source | workers whose source is still loading its snapshot |
//! | `dishflow_dead_letters_total` | counter | reason | records sent to the dead-letter topic |
//! | `dishflow_sink_updates_total` | counter | sink | updates written (rows, messages) |
//! | `dishflow_sink_seconds` | histogram | sink, step | duration of a batch's write / of a flush |
//! | `dishflow_sink_latency_seconds` | histogram | sink, step | wall clock − logical time of the changes a sink wrote (step=written: committed; step=delivered: acknowledged by the broker, sinks with an outbox), once per logical time per batch |
//! | `dishflow_kafka_messages_delivered_total` | counter | topic | messages the brokers acknowledged |
//! | `dishflow_output_frontier_lag_seconds` | gauge | | wall clock − time up to which every sink wrote (since start before the first write, 0 when complete) |
//! | `dishflow_arrangement_updates` | gauge | operator | updates held by an arrangement (differential logging) |
//! | `dishflow_arrangement_batches` | gauge | operator | batches held by an arrangement |
//! | `dishflow_worker_idle_seconds` | gauge | worker | since a worker last ran a source |
//! | `dishflow_ready` | gauge | | 1 when `/readyz` answers 200 |
//! | `dishflow_stalled` | gauge | | 1 once the process found itself stalled (`stall`): it exits 2 s later |

mod arrangements;
mod health;
mod http;

pub use arrangements::{ArrangementLog, log_arrangements};
pub use health::Busy;
pub use http::{parse_series, serve, serving, start};

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use clap::Args;

/// Metrics and health endpoints of a running job.
#[derive(Debug, Clone, Args)]
pub struct OpsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics, liveness on /healthz (every worker
    /// ran within the last minute) and readiness on /readyz (snapshots loaded, consumer lag
    /// at most --ready-max-lag). E.g. `127.0.0.1:9464`; port 0 picks a free port (logged).
    /// Each process of a cluster serves its own. Off by default.
    #[arg(long, env = "DISHFLOW_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Records a Kafka partition may lag behind its end for /readyz to answer 200.
    #[arg(long, env = "DISHFLOW_READY_MAX_LAG", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub ready_max_lag: i64,

    /// Seconds without progress after which a process of a running job reports itself
    /// stalled (/healthz and /readyz 503, `dishflow_stalled` 1) and exits with status 1, so
    /// that a supervisor restarts the cluster: a peer process silent that long (stopped,
    /// frozen, dead or cut off), or nothing moving anywhere while no worker works. A busy
    /// process (a long step, a write waiting on Postgres, an outage being retried) is not
    /// stalled. Keep it above the longest step a backlog takes. Heartbeats between the
    /// processes of a cluster use UDP on each hostfile port.
    #[arg(long, env = "DISHFLOW_STALL_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub stall_timeout: u64,

    /// After SIGTERM/SIGINT, seconds to finish writing what was read and commit progress
    /// before exiting anyway with status 1 (nothing is lost: the next run resumes from the
    /// committed progress). Keep it below the orchestrator's grace period (docker-compose
    /// stop_grace_period, Kubernetes terminationGracePeriodSeconds). A second signal exits
    /// at once.
    #[arg(long, env = "DISHFLOW_DRAIN_TIMEOUT", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub drain_timeout: u64,
}

/// A worker that has not run any source for this long makes `/healthz` fail. Sources run at
/// least once per tick, so only a worker stuck in one step (or dead) gets there.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(60);

/// Labels of a Kafka partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkStepLabels {
    sink: String,
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperatorLabels {
    operator: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: usize,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn sink_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// One Kafka partition's handles, kept by the source that reads it.
#[derive(Clone, Debug, Default)]
pub struct PartitionMetrics {
    records: Counter,
    bytes: Counter,
    position: Gauge,
    end: Gauge,
    lag: Gauge,
    /// Where this run started reading, and the end as of startup (progress of bounded runs).
    start: Gauge,
    target: Gauge,
}

impl PartitionMetrics {
    /// A record of `bytes` bytes was read (the reader reports its position once per batch,
    /// with [`PartitionMetrics::position`]).
    pub fn read(&self, bytes: usize) {
        self.records.inc();
        self.bytes.inc_by(bytes as u64);
    }

    /// This run reads from `start`; at startup the partition ended at `target`.
    pub fn starts(&self, start: i64, target: i64) {
        self.start.set(start);
        self.target.set(target);
        self.end(target);
        self.position(start);
    }

    /// The source's position moved to `next` (also after reading: updates the lag).
    pub fn position(&self, next: i64) {
        self.position.set(next);
        self.update_lag();
    }

    /// The partition's end (the offset after the last readable message) is `end`.
    pub fn end(&self, end: i64) {
        self.end.set(end);
        self.update_lag();
    }

    fn update_lag(&self) {
        self.lag.set((self.end.get() - self.position.get()).max(0));
    }
}

/// A source operator's handles.
#[derive(Clone, Debug)]
pub struct SourceMetrics {
    records: Counter,
    snapshot: Counter,
    pending: Gauge,
    /// The process's count of loading sources (`Metrics::loading`).
    all_pending: Gauge,
    loading: bool,
}

impl SourceMetrics {
    /// `n` records emitted; `holding`: at the start time (snapshot or replay).
    pub fn emitted(&self, n: usize, holding: bool) {
        if n > 0 {
            metrics().note_progress();
        }
        self.records.inc_by(n as u64);
        if holding {
            self.snapshot.inc_by(n as u64);
        }
    }

    /// The source no longer loads its snapshot (idempotent).
    pub fn loaded(&mut self) {
        if std::mem::take(&mut self.loading) {
            self.pending.dec();
            self.all_pending.dec();
        }
    }
}

impl Drop for SourceMetrics {
    fn drop(&mut self) {
        self.loaded();
    }
}

/// A sink's handles.
#[derive(Clone, Debug)]
pub struct SinkMetrics {
    updates: Counter,
    write: Histogram,
    flush: Histogram,
    written_latency: Histogram,
    delivered_latency: Histogram,
}

impl SinkMetrics {
    /// A batch of `updates` updates was written in `elapsed`.
    pub fn written(&self, updates: usize, elapsed: Duration) {
        metrics().note_progress();
        self.updates.inc_by(updates as u64);
        self.write.observe(elapsed.as_secs_f64());
    }

    /// A flush took `elapsed`.
    pub fn flushed(&self, elapsed: Duration) {
        self.flush.observe(elapsed.as_secs_f64());
    }

    /// The changes at `times` (sorted) are committed: their latency, once per time.
    pub fn written_at(&self, times: impl IntoIterator<Item = dataflows::Time>) {
        observe_latency(&self.written_latency, times);
    }

    /// The changes at `times` (sorted) are acknowledged by the broker.
    pub fn delivered_at(&self, times: impl IntoIterator<Item = dataflows::Time>) {
        observe_latency(&self.delivered_latency, times);
    }
}

/// Observes wall clock − each distinct time of `times` (sorted; milliseconds since the unix
/// epoch, the logical time of the changes).
fn observe_latency(histogram: &Histogram, times: impl IntoIterator<Item = dataflows::Time>) {
    let now = crate::clock::wall_clock_ms();
    let mut last = None;
    for time in times {
        if last != Some(time) {
            last = Some(time);
            histogram.observe(now.saturating_sub(time) as f64 / 1000.0);
        }
    }
}

/// Everything a process records. One per process: [`metrics`].
pub struct Metrics {
    kafka_records: Family<PartitionLabels, Counter>,
    kafka_bytes: Family<PartitionLabels, Counter>,
    kafka_position: Family<PartitionLabels, Gauge>,
    kafka_end: Family<PartitionLabels, Gauge>,
    kafka_lag: Family<PartitionLabels, Gauge>,
    source_records: Family<SourceLabels, Counter>,
    snapshot_records: Family<SourceLabels, Counter>,
    snapshot_pending: Family<SourceLabels, Gauge>,
    dead_letters: Family<ReasonLabels, Counter>,
    sink_updates: Family<SinkLabels, Counter>,
    sink_seconds: Family<SinkStepLabels, Histogram, fn() -> Histogram>,
    sink_latency: Family<SinkStepLabels, Histogram, fn() -> Histogram>,
    delivered: Family<TopicLabels, Counter>,
    arrangement_updates: Family<OperatorLabels, Gauge>,
    arrangement_batches: Family<OperatorLabels, Gauge>,
    frontier_lag: FloatGauge,
    idle: Family<WorkerLabels, FloatGauge>,
    ready: Gauge,
    /// Every partition's handles: lag for readiness, start/target for progress.
    partitions: Mutex<HashMap<PartitionLabels, PartitionMetrics>>,
    /// Every sink's update counter, for the summary at the end of a run.
    sinks: Mutex<std::collections::BTreeMap<String, Counter>>,
    dead_letters_total: Counter,
    /// Source instances still loading a snapshot (sum of `snapshot_pending`).
    loading: Gauge,
    /// Milliseconds since `epoch` of each worker's last source activation.
    beats: RwLock<HashMap<usize, AtomicU64>>,
    /// Workers this process runs (0 until a job says).
    workers: AtomicU64,
    /// The time up to which every sink wrote (ms since the unix epoch; `u64::MAX`: all).
    frontier: AtomicU64,
    /// Milliseconds since `epoch` of the last progress (`stall`).
    progress: AtomicU64,
    /// Writes in flight and dependencies being retried: the process is busy.
    busy: AtomicI64,
    /// Why the process is stalled, once it is.
    stalled: Mutex<Option<String>>,
    stalled_gauge: Gauge,
    epoch: Instant,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            kafka_records: Family::default(),
            kafka_bytes: Family::default(),
            kafka_position: Family::default(),
            kafka_end: Family::default(),
            kafka_lag: Family::default(),
            source_records: Family::default(),
            snapshot_records: Family::default(),
            snapshot_pending: Family::default(),
            dead_letters: Family::default(),
            sink_updates: Family::default(),
            sink_seconds: Family::new_with_constructor(sink_histogram),
            sink_latency: Family::new_with_constructor(sink_histogram),
            delivered: Family::default(),
            arrangement_updates: Family::default(),
            arrangement_batches: Family::default(),
            frontier_lag: FloatGauge::default(),
            idle: Family::default(),
            ready: Gauge::default(),
            partitions: Mutex::default(),
            sinks: Mutex::default(),
            dead_letters_total: Counter::default(),
            loading: Gauge::default(),
            beats: RwLock::default(),
            workers: AtomicU64::new(0),
            frontier: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            busy: AtomicI64::new(0),
            stalled: Mutex::new(None),
            stalled_gauge: Gauge::default(),
            epoch: Instant::now(),
        }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Handles for one Kafka partition a source reads.
    pub fn partition(&self, topic: &str, partition: i32) -> PartitionMetrics {
        let labels = PartitionLabels {
            topic: topic.to_string(),
            partition,
        };
        let handles = PartitionMetrics {
            records: self.kafka_records.get_or_create_owned(&labels),
            bytes: self.kafka_bytes.get_or_create_owned(&labels),
            position: self.kafka_position.get_or_create_owned(&labels),
            end: self.kafka_end.get_or_create_owned(&labels),
            lag: self.kafka_lag.get_or_create_owned(&labels),
            start: Gauge::default(),
            target: Gauge::default(),
        };
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(labels, handles.clone());
        handles
    }

    /// Handles for a source operator, loading a snapshot until [`SourceMetrics::loaded`].
    pub fn source(&self, name: &str) -> SourceMetrics {
        let labels = SourceLabels {
            source: name.to_string(),
        };
        let pending = self.snapshot_pending.get_or_create_owned(&labels);
        pending.inc();
        self.loading.inc();
        SourceMetrics {
            all_pending: self.loading.clone(),
            records: self.source_records.get_or_create_owned(&labels),
            snapshot: self.snapshot_records.get_or_create_owned(&labels),
            pending,
            loading: true,
        }
    }

    /// Handles for a sink.
    pub fn sink(&self, name: &str) -> SinkMetrics {
        let step = |step| SinkStepLabels {
            sink: name.to_string(),
            step,
        };
        let updates = self.sink_updates.get_or_create_owned(&SinkLabels {
            sink: name.to_string(),
        });
        self.sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), updates.clone());
        SinkMetrics {
            updates,
            write: self.sink_seconds.get_or_create_owned(&step("write")),
            flush: self.sink_seconds.get_or_create_owned(&step("flush")),
            written_latency: self.sink_latency.get_or_create_owned(&step("written")),
            delivered_latency: self.sink_latency.get_or_create_owned(&step("delivered")),
        }
    }

    /// A record was dead-lettered for `reason`.
    pub fn dead_lettered(&self, reason: &str) {
        self.dead_letters_total.inc();
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The counter of messages the brokers acknowledged to `topic` (a producer keeps one
    /// per topic: no lookup per message).
    pub fn delivered(&self, topic: &str) -> Counter {
        self.delivered.get_or_create_owned(&TopicLabels {
            topic: topic.to_string(),
        })
    }

    /// Per topic read by this process: (topic, offsets read, offsets to read) since this run
    /// started, up to each partition's end as of startup.
    pub fn progress(&self) -> Vec<(String, u64, u64)> {
        let mut topics: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for (labels, m) in self
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let (start, target) = (m.start.get(), m.target.get());
            let done = m.position.get().clamp(start, target.max(start)) - start;
            let entry = topics.entry(labels.topic.clone()).or_default();
            entry.0 += done as u64;
            entry.1 += (target - start).max(0) as u64;
        }
        topics.into_iter().map(|(t, (d, n))| (t, d, n)).collect()
    }

    /// Totals for the line that ends a run: records read from Kafka, dead-lettered, and
    /// updates written per sink.
    pub fn totals(&self) -> (u64, u64, Vec<(String, u64)>) {
        let read = self
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|m| m.records.get())
            .sum();
        let sinks = self
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, c)| (name.clone(), c.get()))
            .collect();
        (read, self.dead_letters_total.get(), sinks)
    }

    /// Records not yet read, summed over the partitions this process reads.
    pub fn lag(&self) -> i64 {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|m| m.lag.get())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_end_minus_position_never_negative() {
        let p = PartitionMetrics::default();
        p.end(100);
        p.position(40);
        assert_eq!(p.lag.get(), 60);
        p.read(10);
        assert_eq!(p.lag.get(), 60, "read() alone does not move the lag");
        p.position(100);
        assert_eq!(p.lag.get(), 0);
        p.position(120);
        assert_eq!(p.lag.get(), 0, "the end estimate may trail the position");
        assert_eq!((p.records.get(), p.bytes.get()), (1, 10));
    }
}
