//! Kafka source: one topic → a differential collection of [`RawRecord`]s.
//!
//! ```text
//!   partitions 0 1 2 3 4 5          worker w of W owns every partition p with p % W == w
//!              │ │ │ │ │ │          (manual assignment: no consumer group, no rebalancing)
//!   worker 0 ◄─┘ │ │ │ └─┼──► ...
//!   worker 1 ◄───┘ │ └───┘
//!   worker 2 ◄─────┘
//!
//!   librdkafka fetch thread ──queue non-empty──► SyncActivator ──► operator scheduled
//! ```
//!
//! The operator is a [`clocked_source`] (time stamping, waking, finishing); this module is
//! the Kafka side:
//!
//! * **Waking.** librdkafka calls back when the consumer queue becomes non-empty; the callback
//!   activates the operator from librdkafka's thread. An activation drains at most
//!   [`MAX_BATCH`] messages and re-activates itself if more are queued.
//! * **Bounded runs.** With `stop_at_end`, the high watermark of each owned partition is read
//!   at startup. A partition is done when its next offset is at or past that watermark *and*
//!   librdkafka reported partition EOF afterwards: Tansu's watermark can lag the last offset
//!   by one batch, and EOF is only reported after an empty fetch, so the run neither stops
//!   early nor hangs.
//! * **Errors.** Fetch errors are logged (rate-limited) and retried by librdkafka; the
//!   capability is kept. Undecodable messages are not this operator's concern: it emits raw
//!   keys and values and the dataflow routes bad ones to the dead-letter topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use dataflows::{Diff, RawRecord, Time};
use differential_dataflow::VecCollection;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use timely::dataflow::Scope;
use tracing::{info, warn};

use crate::cli::KafkaArgs;
use crate::control::{Completion, Control};
use crate::kafka::{STARTUP_TIMEOUT, client_config};
use crate::metrics::PartitionMetrics;
use crate::sources::{Reader, Status, clocked_source};

/// Most messages emitted per activation before yielding to other operators.
pub const MAX_BATCH: usize = 8192;

/// What a Kafka source reads.
#[derive(Clone, Debug)]
pub struct KafkaSourceConfig {
    /// Connection settings.
    pub kafka: KafkaArgs,
    /// Topic to read.
    pub topic: String,
    /// All partitions of the topic (known at startup); each worker takes its share.
    pub partitions: Vec<i32>,
    /// Where to start in each partition (a partition not listed: the earliest offset).
    pub start: HashMap<i32, Position>,
    /// Per partition, the offset up to which reading is a replay of what an earlier run
    /// already processed: records before it are stamped with `start_time`, all at once.
    pub replay_until: HashMap<i32, i64>,
    /// The job's start time: the logical time of replayed records.
    pub start_time: Time,
    /// Finish once every owned partition is read to its end as of startup.
    pub stop_at_end: bool,
    /// Idle re-scheduling interval: how far the capability may trail the wall clock.
    pub tick: Duration,
}

/// Where a source starts reading one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// The first retained offset.
    Earliest,
    /// The end as of startup: only new messages.
    Latest,
    /// This offset (clamped to what the partition retains).
    Offset(i64),
}

/// The partitions worker `index` of `peers` owns.
pub fn owned_partitions(partitions: &[i32], index: usize, peers: usize) -> Vec<i32> {
    partitions
        .iter()
        .copied()
        .filter(|p| {
            usize::try_from(*p)
                .map(|p| p % peers == index)
                .unwrap_or(false)
        })
        .collect()
}

/// Whether `error` only says that a partition has been read to its current end.
fn is_eof(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

/// librdkafka callbacks of the source: partition EOF is expected, not an error; statistics
/// (when metrics are served) give each partition's end, for the consumer lag.
pub struct SourceContext {
    topic: String,
    partitions: HashMap<i32, PartitionMetrics>,
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_eof(&error) {
            warn!(%error, reason, "librdkafka");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for partition in topic.partitions.values() {
            // read_committed: what can be read ends at the last stable offset.
            let end = if partition.ls_offset >= 0 {
                partition.ls_offset
            } else {
                partition.hi_offset
            };
            if let (Some(metrics), true) = (self.partitions.get(&partition.partition), end >= 0) {
                metrics.end(end);
            }
        }
    }
}

impl ConsumerContext for SourceContext {}

/// Per-partition reading progress.
struct PartitionState {
    /// Offset of the next message to read.
    next: i64,
    /// High watermark at startup (bounded runs).
    end: i64,
    /// EOF seen since the last message.
    at_eof: bool,
    /// Offsets before this one are a replay (see [`KafkaSourceConfig::replay_until`]).
    replay_until: i64,
    /// Records and bytes read, position and lag.
    metrics: PartitionMetrics,
}

impl PartitionState {
    fn done(&self) -> bool {
        self.at_eof && self.next >= self.end
    }

    /// Whether the replay is still going on: offsets before `replay_until` are left and the
    /// partition was not read to its end (its tail may hold only transaction markers).
    fn replaying(&self) -> bool {
        self.next < self.replay_until && !self.at_eof
    }
}

/// Records in `states` a message of `bytes` bytes read at `partition`/`offset`.
fn observe_message(
    states: &mut HashMap<i32, PartitionState>,
    partition: i32,
    offset: i64,
    bytes: usize,
) {
    if let Some(state) = states.get_mut(&partition) {
        state.next = offset + 1;
        state.at_eof = false;
        state.metrics.read(bytes);
    }
}

/// Key and value bytes of a message.
fn message_bytes(message: &impl Message) -> usize {
    message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len)
}

/// Records in `states` that `partition` was read to its current end.
fn observe_eof(states: &mut HashMap<i32, PartitionState>, partition: i32) {
    if let Some(state) = states.get_mut(&partition) {
        state.at_eof = true;
    }
}

/// A consumer assigned to this worker's partitions, positioned per `config.from`.
fn assigned_consumer(
    config: &KafkaSourceConfig,
    owned: &[i32],
) -> Result<(BaseConsumer<SourceContext>, HashMap<i32, PartitionState>)> {
    let metrics = crate::metrics::metrics();
    let partition_metrics: HashMap<i32, PartitionMetrics> = owned
        .iter()
        .map(|&p| (p, metrics.partition(&config.topic, p)))
        .collect();
    let context = SourceContext {
        topic: config.topic.clone(),
        partitions: partition_metrics.clone(),
    };
    let mut settings = client_config(
        &config.kafka,
        &[
            // Required by librdkafka for assign(); no group membership is used.
            ("group.id", "dishflow"),
            // Progress is dishflow's business, not the broker's.
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            // Needed to know that a bounded run has read a partition to its end.
            ("enable.partition.eof", "true"),
            // Read only committed transactional data.
            ("isolation.level", "read_committed"),
            // A position past the end (the topic was re-created, e.g. by a broker that lost
            // its storage) restarts from the beginning rather than skipping what is there.
            ("auto.offset.reset", "earliest"),
        ],
    );
    if crate::metrics::serving() && settings.get("statistics.interval.ms").is_none() {
        // Each partition's end, for the consumer lag.
        settings.set("statistics.interval.ms", "1000");
    }
    let consumer: BaseConsumer<SourceContext> = settings
        .create_with_context(context)
        .context("invalid Kafka consumer configuration")?;
    let mut assignment = TopicPartitionList::new();
    let mut states = HashMap::new();
    for &partition in owned {
        let (low, high) = consumer
            .fetch_watermarks(&config.topic, partition, STARTUP_TIMEOUT)
            .map_err(|e| anyhow!("watermarks of {}/{partition}: {e}", config.topic))?;
        let next = match config.start.get(&partition) {
            None | Some(Position::Earliest) => low,
            Some(Position::Latest) => high,
            Some(&Position::Offset(offset)) => {
                if offset < low || offset > high {
                    warn!(
                        topic = %config.topic,
                        partition,
                        offset,
                        low,
                        high,
                        "start offset outside what the partition holds; clamped"
                    );
                }
                offset.clamp(low, high)
            }
        };
        assignment.add_partition_offset(&config.topic, partition, Offset::Offset(next))?;
        let metrics = partition_metrics[&partition].clone();
        metrics.starts(next, high);
        states.insert(
            partition,
            PartitionState {
                next,
                end: high,
                at_eof: false,
                replay_until: config.replay_until.get(&partition).copied().unwrap_or(0),
                metrics,
            },
        );
    }
    consumer.assign(&assignment)?;
    Ok((consumer, states))
}

/// The Kafka side of a source: this worker's assigned consumer and partition progress.
struct KafkaReader {
    name: String,
    consumer: BaseConsumer<SourceContext>,
    states: HashMap<i32, PartitionState>,
    stop_at_end: bool,
    last_warning: Option<Instant>,
}

impl Reader for KafkaReader {
    type Data = RawRecord;

    fn holding(&self) -> bool {
        self.states.values().any(PartitionState::replaying)
    }

    fn read(&mut self, give: &mut dyn FnMut(RawRecord, Diff)) -> Status {
        let mut emitted = 0;
        loop {
            if emitted >= MAX_BATCH {
                return Status::More;
            }
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => {
                    observe_message(
                        &mut self.states,
                        message.partition(),
                        message.offset(),
                        message_bytes(&message),
                    );
                    let record = RawRecord {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().map(<[u8]>::to_vec),
                    };
                    give(record, 1);
                    emitted += 1;
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    observe_eof(&mut self.states, partition);
                }
                Some(Err(error)) => {
                    if self
                        .last_warning
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        warn!(source = %self.name, %error, "Kafka error (retrying)");
                        self.last_warning = Some(Instant::now());
                    }
                    break;
                }
            }
        }
        for state in self.states.values() {
            state.metrics.position(state.next);
        }
        if self.stop_at_end && self.states.values().all(PartitionState::done) {
            Status::Finished
        } else {
            Status::Idle
        }
    }
}

/// Builds the source operator for this worker (see [`clocked_source`]): this worker's share
/// of the topic's partitions as raw records. The source registers with `completion` and
/// reports fatal startup errors (broker gone between checks and startup) to `control`.
pub fn kafka_source<'s>(
    scope: Scope<'s, Time>,
    name: &str,
    config: KafkaSourceConfig,
    control: Control,
    completion: Completion,
) -> VecCollection<'s, Time, RawRecord, Diff> {
    let owned = owned_partitions(&config.partitions, scope.index(), scope.peers());
    let source_name = name.to_string();
    let tick = config.tick;
    let start_time = config.start_time;
    clocked_source(
        scope,
        name,
        start_time,
        tick,
        control,
        completion,
        move |activator| {
            let (mut consumer, states) = assigned_consumer(&config, &owned)?;
            consumer.set_nonempty_callback(move || {
                // Fails only when the worker is gone, i.e. the job is ending.
                let _ = activator.activate();
            });
            let replay: Vec<(i32, i64, i64)> = states
                .iter()
                .filter(|(_, s)| s.next < s.replay_until)
                .map(|(p, s)| (*p, s.next, s.replay_until))
                .collect();
            info!(source = %source_name, topic = %config.topic, partitions = ?owned, ?replay, "reading");
            Ok(KafkaReader {
                name: source_name,
                consumer,
                states,
                stop_at_end: config.stop_at_end,
                last_warning: None,
            })
        },
    )
}

/// A message read by [`read_to_end`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConsumedMessage {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key, as UTF-8 (lossy), if any.
    pub key: Option<String>,
    /// Value, as UTF-8 (lossy); `None` for a tombstone.
    pub value: Option<String>,
    /// Headers, as (name, UTF-8 value).
    pub headers: Vec<(String, String)>,
}

/// Reads every partition of `topic` from the beginning to its end as of the call (same end
/// detection as a bounded source), for tools and tests. Fails after `timeout`.
pub fn read_to_end(
    kafka: &KafkaArgs,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<ConsumedMessage>> {
    read_range(kafka, topic, HashMap::new(), timeout)
}

/// Reads every partition of `topic` from `start` (a partition not listed: its beginning) to
/// its end as of the call. Fails after `timeout`.
pub fn read_range(
    kafka: &KafkaArgs,
    topic: &str,
    start: HashMap<i32, Position>,
    timeout: Duration,
) -> Result<Vec<ConsumedMessage>> {
    use rdkafka::message::Headers;
    let config = KafkaSourceConfig {
        kafka: kafka.clone(),
        topic: topic.to_string(),
        partitions: crate::kafka::topic_partitions(kafka, topic)?,
        start,
        replay_until: HashMap::new(),
        start_time: 0,
        stop_at_end: true,
        tick: Duration::ZERO,
    };
    let (consumer, mut states) = assigned_consumer(&config, &config.partitions)?;
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    while !states.values().all(PartitionState::done) {
        if Instant::now() > deadline {
            anyhow::bail!("timed out reading {topic} to its end");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                observe_message(&mut states, m.partition(), m.offset(), message_bytes(&m));
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(text).unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                messages.push(ConsumedMessage {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(text),
                    value: m.payload().map(text),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => observe_eof(&mut states, p),
            Some(Err(error)) => return Err(anyhow!("reading {topic}: {error}")),
        }
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_split_deterministically_and_completely() {
        let all: Vec<i32> = (0..7).collect();
        let mut seen = Vec::new();
        for w in 0..3 {
            let mine = owned_partitions(&all, w, 3);
            assert!(mine.iter().all(|p| (*p as usize) % 3 == w));
            seen.extend(mine);
        }
        seen.sort();
        assert_eq!(seen, all);
        assert_eq!(owned_partitions(&[0], 1, 2), Vec::<i32>::new());
    }

    #[test]
    fn a_replay_lasts_until_the_resume_offset_or_the_end_of_the_partition() {
        let mut s = PartitionState {
            next: 3,
            end: 10,
            at_eof: false,
            replay_until: 6,
            metrics: PartitionMetrics::default(),
        };
        assert!(s.replaying());
        s.next = 6;
        assert!(!s.replaying(), "offset 6 is new");
        // Only transaction markers after offset 4: EOF ends the replay.
        s.next = 5;
        s.at_eof = true;
        assert!(!s.replaying());
    }

    #[test]
    fn a_partition_is_done_only_after_eof_past_the_startup_end() {
        let mut s = PartitionState {
            next: 5,
            end: 10,
            at_eof: true,
            replay_until: 0,
            metrics: PartitionMetrics::default(),
        };
        assert!(!s.done(), "EOF before the startup end is not the end");
        s.next = 10;
        s.at_eof = false;
        assert!(!s.done(), "the watermark may lag: wait for EOF");
        s.at_eof = true;
        assert!(s.done());
    }
}
