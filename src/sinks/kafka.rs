//! Kafka sink: complete updates → messages, every delivery confirmed.
//!
//! ```text
//!   SinkWriter::write(updates)
//!     for each update: Encoder::encode → Option<KafkaMessage>  (None: nothing to write)
//!     send all (waiting for queue space when full) ─► librdkafka batches per partition
//!     flush ─► every delivery report served ─► any failed delivery = error for the batch
//! ```
//!
//! The producer is idempotent (`enable.idempotence`), so librdkafka's internal retries never
//! duplicate or reorder a message within a partition. A batch returns only when the broker
//! acknowledged every message (`acks=all`). [`KafkaWriter`] (dead letters, test data) retries
//! a failed batch whole with backoff — at least once; exactly-once messages go through the
//! outbox (`sinks::outbox`), which uses [`Producer`] and its delivered offsets.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dataflows::{DeadLetter, Diff, Time};
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::SinkWriter;
use crate::kafka::KafkaArgs;
use crate::kafka::client_config;
use crate::retry::Backoff;

/// How long a batch may wait for its delivery reports before the sink gives up.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// One message to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaMessage {
    /// Message key (`None`: no key).
    pub key: Option<Vec<u8>>,
    /// Message value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers, as (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Bytes a record takes beyond its key, value and headers, at most: in Kafka's v2 record
/// format, its length, attributes, timestamp and offset deltas, key and value lengths and
/// header count (varints), rounded up.
const RECORD_OVERHEAD: usize = 64;

/// Bytes a header takes beyond its name and value, at most (two varint lengths).
const HEADER_OVERHEAD: usize = 10;

/// Header of a dead letter whose value was cut to fit its topic: the original value's size.
pub const TRUNCATED_HEADER: &str = "dishflow.truncated";

impl KafkaMessage {
    /// What the record weighs against `message.max.bytes`, counted generously, with
    /// `extra` headers.
    pub fn size(&self, extra: &[(&str, &[u8])]) -> usize {
        let headers: usize = (self.headers.iter())
            .map(|(k, v)| k.len() + v.len())
            .chain(extra.iter().map(|(k, v)| k.len() + v.len()))
            .map(|n| n + HEADER_OVERHEAD)
            .sum();
        RECORD_OVERHEAD
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + headers
    }

    /// Cuts the value so that the message, with `extra` headers, fits `limit` bytes, and
    /// adds the header [`TRUNCATED_HEADER`] with the original value's size. The value kept
    /// is a prefix, cut on a character boundary when it is text.
    pub fn truncate(&mut self, limit: usize, extra: &[(&str, &[u8])]) {
        let original = self.value.as_ref().map_or(0, Vec::len);
        self.headers.push(header(TRUNCATED_HEADER, original));
        let room = limit.saturating_sub(self.size(extra) - original);
        if let Some(value) = &mut self.value {
            let mut keep = room.min(value.len());
            if let Err(error) = std::str::from_utf8(&value[..keep]) {
                // A cut inside a character: keep what is whole (text stays text).
                if error.error_len().is_none() {
                    keep = error.valid_up_to();
                }
            }
            value.truncate(keep);
        }
    }
}

/// A message larger than its topic takes. A data error — the record's, not the broker's —
/// that no retry can fix: the update that made it is dead-lettered (`sinks::isolate`).
#[derive(Debug, thiserror::Error)]
#[error(
    "a message of {size} bytes is larger than topic {topic} takes ({limit} bytes: the \
     smaller of the producer's message.max.bytes and the topic's max.message.bytes)"
)]
pub struct MessageTooLarge {
    /// The topic.
    pub topic: String,
    /// The message's size ([`KafkaMessage::size`]).
    pub size: usize,
    /// The largest the topic takes.
    pub limit: usize,
}

impl MessageTooLarge {
    /// The error if `message`, with `extra` headers, is larger than `limit` (what `topic`
    /// takes).
    pub fn check(
        topic: &str,
        limit: usize,
        message: &KafkaMessage,
        extra: &[(&str, &[u8])],
    ) -> Result<(), MessageTooLarge> {
        let size = message.size(extra);
        if size > limit {
            return Err(MessageTooLarge {
                topic: topic.to_string(),
                size,
                limit,
            });
        }
        Ok(())
    }
}

/// What a writer does with a message larger than its topic takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oversize {
    /// Refuses it with [`MessageTooLarge`] before anything of its batch is written: the
    /// update that made it is dead-lettered, the rest of the batch written.
    Refuse,
    /// Cuts its value to fit ([`KafkaMessage::truncate`]): a dead letter is kept, cut.
    Truncate,
}

/// Turns an update into the message to write, if any.
pub trait Encoder<D>: Send + 'static {
    /// The message for `data` changing by `diff` at logical time `time`, or `None`.
    fn encode(&self, data: &D, time: Time, diff: Diff) -> Result<Option<KafkaMessage>>;

    /// What to do with a message larger than the topic takes.
    fn oversize(&self) -> Oversize {
        Oversize::Refuse
    }
}

/// What the delivery reports of a batch said: the first failure, and per partition the
/// offset after the last message delivered; and how many messages await their report.
#[derive(Default)]
struct DeliveryLog {
    first_error: Option<String>,
    /// Records the broker refused for what they are (too large, invalid): data errors.
    refused: Vec<Refused>,
    /// Per topic, per partition.
    next_offsets: HashMap<String, HashMap<i32, i64>>,
    pending: usize,
    /// Per topic, the metrics counter of acknowledged messages.
    delivered: HashMap<String, prometheus_client::metrics::counter::Counter>,
}

/// A record the broker refused for what it is.
#[derive(Debug)]
pub struct Refused {
    /// Its topic.
    pub topic: String,
    /// Its key, as text.
    pub key: Option<String>,
    /// Its key and value's size in bytes.
    pub size: usize,
    /// What the broker said.
    pub error: String,
}

/// Whether a delivery failed for the record itself (too large, invalid, corrupt): no retry
/// can deliver it, and the other records of its batch are not affected.
fn refused_record(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

/// librdkafka callbacks of a producer: records delivery reports (first failure, offsets
/// delivered) and wakes [`Producer::confirm`] when the last pending one arrived.
#[derive(Default, Clone)]
pub struct Deliveries(Arc<(Mutex<DeliveryLog>, Condvar)>);

impl Deliveries {
    fn log(&self) -> std::sync::MutexGuard<'_, DeliveryLog> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut log = self.log();
        match result {
            Ok(message) => {
                let topic = message.topic();
                if !log.delivered.contains_key(topic) {
                    let counter = crate::metrics::metrics().delivered(topic);
                    log.delivered.insert(topic.to_string(), counter);
                }
                if let Some(counter) = log.delivered.get(topic) {
                    counter.inc();
                }
                let next = message.offset() + 1;
                // Found by the topic's name: a name is copied once, not per report.
                let partition = message.partition();
                match log.next_offsets.get_mut(topic) {
                    Some(partitions) => {
                        let slot = partitions.entry(partition).or_insert(next);
                        *slot = (*slot).max(next);
                    }
                    None => {
                        let partitions = HashMap::from([(partition, next)]);
                        log.next_offsets.insert(topic.to_string(), partitions);
                    }
                }
            }
            Err((error, message)) if refused_record(error) => {
                log.refused.push(Refused {
                    topic: message.topic().to_string(),
                    // Enough of the key to find the record (a key may be large too).
                    key: (message.key())
                        .map(|k| String::from_utf8_lossy(&k[..k.len().min(200)]).into_owned()),
                    size: message.payload_len() + message.key().map_or(0, <[u8]>::len),
                    error: error.to_string(),
                });
            }
            Err((error, _)) => {
                log.first_error.get_or_insert_with(|| error.to_string());
            }
        }
        log.pending = log.pending.saturating_sub(1);
        if log.pending == 0 {
            self.0.1.notify_all();
        }
    }
}

/// An idempotent producer whose batches are confirmed: [`Producer::send`] queues,
/// [`Producer::confirm`] waits for every delivery report of what was queued. librdkafka's
/// events are served by the producer's own polling thread, so a confirmation returns as soon
/// as the last report arrives (`rdkafka`'s `flush` polls in slices of 100 ms that do not end
/// early: every confirmation took ≥ 100 ms, the bulk of a draft's latency in a running job).
pub struct Producer {
    producer: ThreadedProducer<Deliveries>,
    deliveries: Deliveries,
    kafka: KafkaArgs,
    /// Per topic, the largest record it takes (asked once).
    limits: Mutex<HashMap<String, usize>>,
}

impl Producer {
    /// A producer for the brokers of `kafka`.
    pub fn new(kafka: &KafkaArgs) -> Result<Self> {
        let deliveries = Deliveries::default();
        let producer = client_config(
            kafka,
            &[
                // No duplicates or reordering from librdkafka's own retries.
                ("enable.idempotence", "true"),
                ("acks", "all"),
                // Small batching delay: the messages of one time are sent together anyway
                // (and `confirm` sends at once what is still lingering).
                ("linger.ms", "5"),
            ],
        )
        .create_with_context(deliveries.clone())
        .context("invalid Kafka producer configuration")?;
        Ok(Producer {
            producer,
            deliveries,
            kafka: kafka.clone(),
            limits: Mutex::default(),
        })
    }

    /// The largest record `topic` takes (`kafka::max_message_bytes`, asked once per topic).
    pub fn limit(&self, topic: &str) -> usize {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&limit) = limits.get(topic) {
            return limit;
        }
        let limit = crate::kafka::max_message_bytes(&self.kafka, topic);
        limits.insert(topic.to_string(), limit);
        limit
    }

    /// Queues `message` for `topic` (waiting while librdkafka's queue is full), with the
    /// message's headers and then `extra` headers.
    /// A message larger than the topic takes is refused with [`MessageTooLarge`] (nothing
    /// queued).
    pub fn send(&self, topic: &str, message: &KafkaMessage, extra: &[(&str, &[u8])]) -> Result<()> {
        MessageTooLarge::check(topic, self.limit(topic), message, extra)?;
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + extra.len());
        let fixed = message
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()));
        for (key, value) in fixed.chain(extra.iter().copied()) {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &message.value {
            record = record.payload(value.as_slice());
        }
        // Counted before it is queued: its report may come before `send` returns.
        self.deliveries.log().pending += 1;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => {
                    self.deliveries.log().pending -= 1;
                    bail!("cannot produce to {topic}: {error}")
                }
            }
        }
    }

    /// Waits until every queued message is delivered; returns, per (topic, partition), the
    /// offset after the last message delivered since the previous call. Any failed delivery
    /// is an error (the messages of the batch may then be partly delivered), except a
    /// record the broker refused for what it is: that one is logged and counted as a dead
    /// letter (`message_refused`), and the rest of the batch counts as delivered.
    pub fn confirm(&self) -> Result<HashMap<(String, i32), i64>> {
        let log = self.reports()?;
        if let Some(error) = log.first_error {
            bail!(
                "delivery to Kafka at {} failed: {error}",
                self.kafka.brokers
            );
        }
        for refused in &log.refused {
            crate::metrics::metrics().dead_lettered("message_refused");
            tracing::error!(
                topic = %refused.topic,
                key = refused.key.as_deref().unwrap_or(""),
                size = refused.size,
                error = %refused.error,
                "the broker refused a record for what it is: dropped, the rest of its batch \
                 delivered (raise the topic's max.message.bytes to take such records)"
            );
        }
        let mut next_offsets = HashMap::new();
        for (topic, partitions) in log.next_offsets {
            for (partition, next) in partitions {
                next_offsets.insert((topic.clone(), partition), next);
            }
        }
        Ok(next_offsets)
    }

    /// Waits until every queued message has its delivery report, whatever it says.
    pub fn drain(&self) -> Result<()> {
        self.reports().map(drop)
    }

    /// Waits (at most [`FLUSH_TIMEOUT`]) for the delivery reports of everything queued and
    /// takes what they said.
    fn reports(&self) -> Result<DeliveryLog> {
        // No wait: tells librdkafka to send what is lingering now.
        let _ = self.producer.flush(Duration::ZERO);
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        let mut log = self.deliveries.log();
        while log.pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "delivery to Kafka at {} not confirmed within {FLUSH_TIMEOUT:?} ({} \
                     messages pending)",
                    self.kafka.brokers,
                    log.pending
                );
            }
            log = self
                .deliveries
                .0
                .1
                .wait_timeout(log, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(DeliveryLog {
            first_error: log.first_error.take(),
            refused: std::mem::take(&mut log.refused),
            next_offsets: std::mem::take(&mut log.next_offsets),
            pending: 0,
            delivered: HashMap::new(),
        })
    }
}

/// Writes to one topic through `encoder`, at least once: a failed batch is retried whole.
pub struct KafkaWriter<E> {
    producer: Producer,
    topic: String,
    encoder: E,
    backoff: Backoff,
}

impl<E> KafkaWriter<E> {
    /// A writer producing to `topic`.
    pub fn new(kafka: &KafkaArgs, topic: &str, encoder: E) -> Result<Self> {
        Ok(KafkaWriter {
            producer: Producer::new(kafka)?,
            topic: topic.to_string(),
            encoder,
            backoff: Backoff::new(format!("Kafka sink {topic}")),
        })
    }
}

impl<D, E: Encoder<D>> SinkWriter<D> for KafkaWriter<E> {
    fn write(&mut self, updates: &[(D, Time, Diff)]) -> Result<()> {
        let mut messages = Vec::new();
        for (data, time, diff) in updates {
            messages.extend(self.encoder.encode(data, *time, *diff)?);
        }
        if messages.is_empty() {
            return Ok(());
        }
        // A message too large is the data's problem: cut (dead letters) or an error, never
        // a retry.
        let limit = self.producer.limit(&self.topic);
        for message in &mut messages {
            if let Err(too_large) = MessageTooLarge::check(&self.topic, limit, message, &[]) {
                match self.encoder.oversize() {
                    Oversize::Truncate => message.truncate(too_large.limit, &[]),
                    Oversize::Refuse => return Err(too_large.into()),
                }
            }
        }
        loop {
            let sent = messages
                .iter()
                .try_for_each(|m| self.producer.send(&self.topic, m, &[]))
                .and_then(|()| self.producer.confirm());
            match sent {
                Ok(_) => {
                    self.backoff.succeeded();
                    return Ok(());
                }
                Err(error) => self.backoff.failed(&error),
            }
        }
    }
}

/// A message header `name` with `value`'s text.
pub fn header(name: &str, value: impl std::fmt::Display) -> (String, Vec<u8>) {
    (name.to_string(), value.to_string().into_bytes())
}

/// Header carrying a message's outbox sequence number (decimal; see `sinks::outbox`).
pub const SEQ_HEADER: &str = "dishflow.outbox.seq";

/// Header of a dead letter: why it was rejected (a stable reason, e.g. `not_json`).
pub const REASON_HEADER: &str = "dishflow.error.reason";
/// Header of a dead letter from a Kafka record: the topic it was read from.
pub const SOURCE_TOPIC_HEADER: &str = "dishflow.source.topic";
/// Header of a dead letter from a Kafka record: its partition.
pub const SOURCE_PARTITION_HEADER: &str = "dishflow.source.partition";
/// Header of a dead letter from a Kafka record: its offset.
pub const SOURCE_OFFSET_HEADER: &str = "dishflow.source.offset";

/// Whether `name` is one of the headers a dead letter adds (see [`DeadLetterEncoder`]), or
/// the outbox's sequence number (the dead letter's own is added when it is sent; a record
/// keeping another's would confuse the outbox's recovery).
pub fn is_dead_letter_header(name: &str) -> bool {
    [
        SEQ_HEADER,
        REASON_HEADER,
        SOURCE_TOPIC_HEADER,
        SOURCE_PARTITION_HEADER,
        SOURCE_OFFSET_HEADER,
        TRUNCATED_HEADER,
    ]
    .contains(&name)
}

/// Dead letters: the original key, value and headers, then where they came from and why in
/// headers of their own: `dishflow.error.reason`, `dishflow.source.topic`,
/// `dishflow.source.partition`, `dishflow.source.offset`. A record that was a dead letter
/// before (re-driven, then rejected again) loses its old ones: a dead letter carries one
/// reason and one origin.
pub struct DeadLetterEncoder {
    source_topic: String,
    counts: RefCell<(BTreeMap<String, u64>, Option<Instant>)>,
}

impl DeadLetterEncoder {
    /// Dead letters of records read from `source_topic`.
    pub fn new(source_topic: &str) -> Self {
        DeadLetterEncoder {
            source_topic: source_topic.to_string(),
            counts: RefCell::default(),
        }
    }

    /// Counts a dead letter; logs the totals by reason at most once a second.
    fn count(&self, dead: &DeadLetter) {
        crate::metrics::metrics().dead_lettered(&dead.reason);
        let mut counts = self.counts.borrow_mut();
        let (by_reason, last_log) = &mut *counts;
        *by_reason.entry(dead.reason.clone()).or_default() += 1;
        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last_log = Some(Instant::now());
            tracing::warn!(
                topic = %self.source_topic,
                partition = dead.record.partition,
                offset = dead.record.offset,
                reason = %dead.reason,
                totals = ?by_reason,
                "dead-lettered"
            );
        }
    }
}

impl Encoder<DeadLetter> for DeadLetterEncoder {
    fn oversize(&self) -> Oversize {
        Oversize::Truncate
    }

    fn encode(&self, dead: &DeadLetter, _: Time, diff: Diff) -> Result<Option<KafkaMessage>> {
        if diff <= 0 {
            return Ok(None);
        }
        self.count(dead);
        let mut headers: Vec<(String, Vec<u8>)> = (dead.record.headers.iter())
            .filter(|(name, _)| !is_dead_letter_header(name))
            .cloned()
            .collect();
        headers.extend([
            header(REASON_HEADER, &dead.reason),
            header(SOURCE_TOPIC_HEADER, &self.source_topic),
            header(SOURCE_PARTITION_HEADER, dead.record.partition),
            header(SOURCE_OFFSET_HEADER, dead.record.offset),
        ]);
        Ok(Some(KafkaMessage {
            key: dead.record.key.clone(),
            value: dead.record.value.clone(),
            headers,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::RawRecord;

    #[test]
    fn a_dead_letter_keeps_the_records_headers_and_replaces_an_earlier_reason() {
        let record = RawRecord {
            partition: 3,
            offset: 42,
            key: Some(b"k".to_vec()),
            value: Some(b"nope".to_vec()),
            headers: vec![
                header("trace", "t-1"),
                header(REASON_HEADER, "not_json"),
                header(SOURCE_TOPIC_HEADER, "older"),
                header(SEQ_HEADER, 7),
                header("dishflow.redrive.attempts", 1),
            ],
        };
        let dead = DeadLetter {
            record,
            reason: "invalid:missing_field".into(),
        };
        let message = DeadLetterEncoder::new("orders")
            .encode(&dead, 0, 1)
            .expect("encoded")
            .expect("a message");
        assert_eq!(message.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(message.value.as_deref(), Some(&b"nope"[..]));
        assert_eq!(
            message.headers,
            vec![
                header("trace", "t-1"),
                header("dishflow.redrive.attempts", 1),
                header(REASON_HEADER, "invalid:missing_field"),
                header(SOURCE_TOPIC_HEADER, "orders"),
                header(SOURCE_PARTITION_HEADER, 3),
                header(SOURCE_OFFSET_HEADER, 42),
            ]
        );
    }

    #[test]
    fn a_message_cut_to_fit_keeps_whole_characters_and_says_how_large_it_was() {
        let mut message = KafkaMessage {
            key: Some(b"k".to_vec()),
            value: Some("é".repeat(1_000).into_bytes()),
            headers: vec![header(REASON_HEADER, "too_large:draft")],
        };
        let extra: &[(&str, &[u8])] = &[("seq", b"12")];
        let size = message.size(extra);
        assert_eq!(size, RECORD_OVERHEAD + 1 + 2_000 + (36 + 10) + (5 + 10));
        message.truncate(1_001, extra);
        assert!(message.size(extra) <= 1_001);
        let value = String::from_utf8(message.value.clone().unwrap_or_default());
        assert!(value.is_ok_and(|v| v.len() > 800 && v.chars().all(|c| c == 'é')));
        assert_eq!(
            message.headers.last(),
            Some(&header(TRUNCATED_HEADER, 2_000))
        );
    }
}
