//! Reading a topic with a plain consumer: assigned partitions (no consumer group), each
//! started at a chosen position, read until its end as of the start. The Kafka source
//! (`sources::kafka`) reads this way, and so do tools (`dishflow consume`) and the outbox's
//! check of what was delivered.
//!
//! The end of a partition is reached when its next offset is at or past the high watermark
//! read at startup *and* librdkafka reported partition EOF afterwards: Tansu's watermark can
//! lag the last offset by one batch, and EOF is only reported after an empty fetch.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::warn;

use super::{KafkaArgs, STARTUP_TIMEOUT, client_config};
use crate::metrics::PartitionMetrics;

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

/// Whether `error` only says that a partition has been read to its current end.
pub fn is_eof(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

/// librdkafka callbacks of a reading consumer: partition EOF is expected, not an error; statistics
/// (when metrics are served) give each partition's end, for the consumer lag.
pub struct ReadContext {
    topic: String,
    partitions: HashMap<i32, PartitionMetrics>,
}

impl ClientContext for ReadContext {
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

impl ConsumerContext for ReadContext {}

/// Per-partition reading progress.
pub struct PartitionState {
    /// Offset of the next message to read.
    pub next: i64,
    /// High watermark at startup (bounded runs).
    pub end: i64,
    /// EOF seen since the last message.
    pub at_eof: bool,
    /// Offsets before this one are a replay (see [`Assignment::replay_until`]).
    pub replay_until: i64,
    /// Records and bytes read, position and lag.
    pub metrics: PartitionMetrics,
}

impl PartitionState {
    /// Whether the partition was read to its end as of startup.
    pub fn done(&self) -> bool {
        self.at_eof && self.next >= self.end
    }

    /// Whether records before the partition's end as of startup are left (the backlog).
    pub fn behind(&self) -> bool {
        self.next < self.end && !self.at_eof
    }

    /// Whether the replay is still going on: offsets before `replay_until` are left and the
    /// partition was not read to its end (its tail may hold only transaction markers).
    pub fn replaying(&self) -> bool {
        self.next < self.replay_until && !self.at_eof
    }
}

/// Records in `states` a message of `bytes` bytes read at `partition`/`offset`.
pub fn observe_message(
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
pub fn message_bytes(message: &impl Message) -> usize {
    message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len)
}

/// Records in `states` that `partition` was read to its current end.
pub fn observe_eof(states: &mut HashMap<i32, PartitionState>, partition: i32) {
    if let Some(state) = states.get_mut(&partition) {
        state.at_eof = true;
    }
}

/// What a consumer reads: which partitions of which topic, from where.
pub struct Assignment<'a> {
    /// Connection settings.
    pub kafka: &'a KafkaArgs,
    /// The topic.
    pub topic: &'a str,
    /// The partitions to read.
    pub partitions: &'a [i32],
    /// Where to start in each partition (a partition not listed: the earliest offset).
    pub start: &'a HashMap<i32, Position>,
    /// Per partition, the offset before which reading is a replay.
    pub replay_until: &'a HashMap<i32, i64>,
}

/// A consumer assigned to `assignment`'s partitions (no consumer group), positioned at their
/// start, and each partition's reading state.
pub fn assigned_consumer(
    assignment: &Assignment,
) -> Result<(BaseConsumer<ReadContext>, HashMap<i32, PartitionState>)> {
    let config = assignment;
    let owned = assignment.partitions;
    let metrics = crate::metrics::metrics();
    let partition_metrics: HashMap<i32, PartitionMetrics> = owned
        .iter()
        .map(|&p| (p, metrics.partition(config.topic, p)))
        .collect();
    let context = ReadContext {
        topic: config.topic.to_string(),
        partitions: partition_metrics.clone(),
    };
    let mut settings = client_config(
        config.kafka,
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
            // Prefetch at most 16 MB (librdkafka's default: 64 MB, plus a fetch of up to
            // 50 MB beyond it): while a backlog is read faster than the dataflow takes it,
            // the queue stays full, and that memory only adds to the peak.
            ("queued.max.messages.kbytes", "16384"),
            ("fetch.max.bytes", "16777216"),
        ],
    );
    if crate::metrics::serving() && settings.get("statistics.interval.ms").is_none() {
        // Each partition's end, for the consumer lag.
        settings.set("statistics.interval.ms", "1000");
    }
    let consumer: BaseConsumer<ReadContext> = settings
        .create_with_context(context)
        .context("invalid Kafka consumer configuration")?;
    let mut assignment = TopicPartitionList::new();
    let mut states = HashMap::new();
    for &partition in owned {
        let (low, high) = consumer
            .fetch_watermarks(config.topic, partition, STARTUP_TIMEOUT)
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
        assignment.add_partition_offset(config.topic, partition, Offset::Offset(next))?;
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

/// A message's headers as (name, value) pairs, in order (no value: an empty one).
pub fn message_headers(message: &impl Message) -> Vec<(String, Vec<u8>)> {
    use rdkafka::message::Headers;
    message.headers().map_or_else(Vec::new, |headers| {
        headers
            .iter()
            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
            .collect()
    })
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
    let partitions = super::topic_partitions(kafka, topic)?;
    let (consumer, mut states) = assigned_consumer(&Assignment {
        kafka,
        topic,
        partitions: &partitions,
        start: &start,
        replay_until: &HashMap::new(),
    })?;
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
