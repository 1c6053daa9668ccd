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
//! | `dishflow_kafka_messages_delivered_total` | counter | topic | messages the brokers acknowledged |
//! | `dishflow_output_frontier_lag_seconds` | gauge | | wall clock − time up to which every sink wrote (since start before the first write, 0 when complete) |
//! | `dishflow_arrangement_updates` | gauge | operator | updates held by an arrangement (differential logging) |
//! | `dishflow_arrangement_batches` | gauge | operator | batches held by an arrangement |
//! | `dishflow_worker_idle_seconds` | gauge | worker | since a worker last ran a source |
//! | `dishflow_ready` | gauge | | 1 when `/readyz` answers 200 |

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tracing::{info, warn};

use crate::cli::OpsArgs;

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
}

impl SinkMetrics {
    /// A batch of `updates` updates was written in `elapsed`.
    pub fn written(&self, updates: usize, elapsed: Duration) {
        self.updates.inc_by(updates as u64);
        self.write.observe(elapsed.as_secs_f64());
    }

    /// A flush took `elapsed`.
    pub fn flushed(&self, elapsed: Duration) {
        self.flush.observe(elapsed.as_secs_f64());
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
            epoch: Instant::now(),
        }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Whether [`serve`] was called: what costs more than an atomic add (librdkafka statistics,
/// timely's operator logging) is only switched on then.
static SERVING: AtomicBool = AtomicBool::new(false);

/// Whether this process serves its metrics.
pub fn serving() -> bool {
    SERVING.load(Ordering::Relaxed)
}

/// Serves the metrics of `job` per `ops` (if an address is given) and expects heartbeats from
/// `workers` worker threads.
pub fn start(job: &str, ops: &OpsArgs, workers: usize) -> Result<()> {
    metrics().expect_workers(workers);
    if let Some(addr) = ops.metrics_addr {
        serve(addr, job, ops.ready_max_lag)?;
    }
    Ok(())
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
        self.frontier
            .fetch_max(time.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Why the process is not healthy, if it is not.
    pub fn unhealthy(&self) -> Option<String> {
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

    /// Brings the gauges computed from the clock up to date.
    fn refresh(&self, max_lag: i64) {
        self.frontier_lag
            .set(self.output_lag(crate::sources::wall_clock_ms()));
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
    fn output_lag(&self, now_ms: u64) -> f64 {
        match self.frontier.load(Ordering::Relaxed) {
            u64::MAX => 0.0,
            0 => self.epoch.elapsed().as_secs_f64(),
            frontier => now_ms.saturating_sub(frontier) as f64 / 1000.0,
        }
    }

    /// The registry of everything, with the job's name as a label.
    fn registry(&self, job: &str) -> Registry {
        let mut registry = Registry::with_prefix_and_labels(
            "dishflow",
            [(
                std::borrow::Cow::Borrowed("job"),
                std::borrow::Cow::Owned(job.to_string()),
            )]
            .into_iter(),
        );
        let r = &mut registry;
        r.register(
            "kafka_records_read",
            "Records read from Kafka by the job's sources",
            self.kafka_records.clone(),
        );
        r.register(
            "kafka_bytes_read",
            "Key and value bytes read from Kafka",
            self.kafka_bytes.clone(),
        );
        r.register(
            "kafka_position",
            "Next offset the source reads",
            self.kafka_position.clone(),
        );
        r.register(
            "kafka_end_offset",
            "Offset after the last readable message (librdkafka statistics, or the startup watermark)",
            self.kafka_end.clone(),
        );
        r.register(
            "kafka_consumer_lag",
            "Records not yet read: end offset minus position",
            self.kafka_lag.clone(),
        );
        r.register(
            "source_records",
            "Records (and changes) emitted by a source operator",
            self.source_records.clone(),
        );
        r.register(
            "snapshot_records",
            "Records a source emitted at the job's start time (table snapshot, Kafka replay)",
            self.snapshot_records.clone(),
        );
        r.register(
            "snapshot_pending",
            "Workers whose source is still loading its snapshot (0: loaded)",
            self.snapshot_pending.clone(),
        );
        r.register(
            "dead_letters",
            "Records sent to the dead-letter topic, by reason",
            self.dead_letters.clone(),
        );
        r.register(
            "sink_updates",
            "Updates a sink wrote (rows upserted, messages sent)",
            self.sink_updates.clone(),
        );
        r.register_with_unit(
            "sink",
            "How long a sink's batch write (step=write) or flush (step=flush) took",
            Unit::Seconds,
            self.sink_seconds.clone(),
        );
        r.register(
            "kafka_messages_delivered",
            "Messages the brokers acknowledged",
            self.delivered.clone(),
        );
        r.register_with_unit(
            "output_frontier_lag",
            "Wall clock minus the time up to which every sink has written",
            Unit::Seconds,
            self.frontier_lag.clone(),
        );
        r.register(
            "arrangement_updates",
            "Updates held by an arrangement (differential logging), summed over workers",
            self.arrangement_updates.clone(),
        );
        r.register(
            "arrangement_batches",
            "Batches held by an arrangement, summed over workers",
            self.arrangement_batches.clone(),
        );
        r.register(
            "worker_idle_seconds",
            "Seconds since a worker last ran a source",
            self.idle.clone(),
        );
        r.register(
            "ready",
            "1 when the job is ready (see /readyz)",
            self.ready.clone(),
        );
        registry
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, job: &str, max_lag: i64) -> String {
        self.refresh(max_lag);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry(job));
        text
    }
}

/// `(labels, value)` of every sample of `name` in a text exposition.
pub fn parse_series(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A worker's view of differential's arrangement events: updates and batches per
/// arrangement operator, added to the process-wide gauges.
#[derive(Default)]
pub struct ArrangementLog {
    names: HashMap<usize, String>,
    handles: HashMap<usize, (Gauge, Gauge)>,
}

impl ArrangementLog {
    /// The operator `id` is called `name` (timely's operator logging).
    pub fn operator(&mut self, id: usize, name: &str) {
        self.names.insert(id, name.to_string());
    }

    fn handles(&mut self, operator: usize) -> &(Gauge, Gauge) {
        let names = &self.names;
        self.handles.entry(operator).or_insert_with(|| {
            let labels = OperatorLabels {
                operator: names.get(&operator).map_or_else(
                    || format!("operator {operator}"),
                    |n| format!("{n} ({operator})"),
                ),
            };
            let m = metrics();
            (
                m.arrangement_updates.get_or_create_owned(&labels),
                m.arrangement_batches.get_or_create_owned(&labels),
            )
        })
    }

    /// Applies one differential event.
    pub fn event(&mut self, event: &differential_dataflow::logging::DifferentialEvent) {
        use differential_dataflow::logging::DifferentialEvent as E;
        let (operator, updates, batches) = match event {
            E::Batch(b) => (b.operator, b.length as i64, 1),
            E::Merge(m) => match m.complete {
                Some(merged) => (
                    m.operator,
                    merged as i64 - m.length1 as i64 - m.length2 as i64,
                    -1,
                ),
                None => return,
            },
            E::Drop(d) => (d.operator, -(d.length as i64), -1),
            _ => return,
        };
        let (u, b) = self.handles(operator);
        u.inc_by(updates);
        b.inc_by(batches);
    }
}

/// Registers, on `worker`, the loggers that feed the arrangement gauges. Call before the
/// worker builds its dataflows (operators take their loggers when they are built).
pub fn log_arrangements(worker: &mut timely::worker::Worker) {
    use differential_dataflow::logging::DifferentialEventBuilder;
    use timely::logging::{TimelyEvent, TimelyEventBuilder};
    let log = Rc::new(RefCell::new(ArrangementLog::default()));
    let Some(mut register) = worker.log_register() else {
        return;
    };
    let names = Rc::clone(&log);
    register.insert::<TimelyEventBuilder, _>("timely", move |_, events| {
        if let Some(events) = events {
            let mut log = names.borrow_mut();
            for (_, event) in events.iter() {
                if let TimelyEvent::Operates(op) = event {
                    log.operator(op.id, &op.name);
                }
            }
        }
    });
    register.insert::<DifferentialEventBuilder, _>("differential/arrange", move |_, events| {
        if let Some(events) = events {
            let mut log = log.borrow_mut();
            for (_, event) in events.iter() {
                log.event(event);
            }
        }
    });
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` from a background thread, for as
/// long as the process runs. `max_lag`: the consumer lag above which the job is not ready.
pub fn serve(addr: SocketAddr, job: &str, max_lag: i64) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("metrics server on {addr} has no IP address"))?;
    let job = job.to_string();
    SERVING.store(true, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = respond(request.url(), &job, max_lag);
                if let Err(error) = request.respond(response) {
                    warn!(%error, "metrics: cannot answer a request");
                }
            }
        })?;
    info!(%bound, "serving /metrics, /healthz, /readyz");
    Ok(bound)
}

fn respond(url: &str, job: &str, max_lag: i64) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let text = |code: u16, body: String, content_type: &str| {
        let header =
            tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
        tiny_http::Response::from_string(body)
            .with_status_code(code)
            .with_header(header)
    };
    let plain = "text/plain; charset=utf-8";
    let m = metrics();
    match url.split('?').next().unwrap_or_default() {
        "/metrics" => text(
            200,
            m.render(job, max_lag),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => match m.unhealthy() {
            None => text(200, "ok\n".into(), plain),
            Some(reason) => text(503, format!("unhealthy: {reason}\n"), plain),
        },
        "/readyz" => match m.unready(max_lag) {
            None => text(200, "ready\n".into(), plain),
            Some(reason) => text(503, format!("not ready: {reason}\n"), plain),
        },
        _ => text(
            404,
            "not found: try /metrics, /healthz or /readyz\n".into(),
            plain,
        ),
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

    #[test]
    fn arrangement_sizes_follow_batches_merges_and_drops() {
        use differential_dataflow::logging::{
            BatchEvent, DifferentialEvent, DropEvent, MergeEvent,
        };
        let mut log = ArrangementLog::default();
        log.operator(7_000_001, "ArrangeTest");
        for length in [10, 5] {
            log.event(&DifferentialEvent::Batch(BatchEvent {
                operator: 7_000_001,
                length,
            }));
        }
        let merge = |complete| {
            DifferentialEvent::Merge(MergeEvent {
                operator: 7_000_001,
                scale: 0,
                length1: 10,
                length2: 5,
                complete,
            })
        };
        log.event(&merge(None));
        log.event(&merge(Some(12))); // 3 updates cancelled out
        let (updates, batches) = log.handles(7_000_001).clone();
        assert_eq!((updates.get(), batches.get()), (12, 1));
        log.event(&DifferentialEvent::Drop(DropEvent {
            operator: 7_000_001,
            length: 12,
        }));
        assert_eq!((updates.get(), batches.get()), (0, 0));
        let text = metrics().render("test", 0);
        assert!(
            text.contains(
                r#"dishflow_arrangement_updates{job="test",operator="ArrangeTest (7000001)"} 0"#
            ),
            "{text}"
        );
    }

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

    #[test]
    fn series_are_parsed_from_the_text_format() {
        let text = "# HELP x y\nlag{topic=\"a\",partition=\"0\"} 5\nlag_total 3\nlag 2\n";
        assert_eq!(
            parse_series(text, "lag"),
            vec![
                ("{topic=\"a\",partition=\"0\"}".to_string(), 5.0),
                (String::new(), 2.0)
            ]
        );
    }
}
