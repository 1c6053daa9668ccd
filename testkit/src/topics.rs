//! Producing to and reading from the test broker; a job's committed progress.

use std::time::Duration;

use dishflow::kafka::consumer::{ConsumedMessage, read_to_end};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::*;

/// Deletes the topics whose names start with `prefix` (the broker keeps every topic).
pub fn delete_topics(prefix: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = dishflow::kafka::client_config(&kafka(), &[]).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
    let names: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        dishflow::kafka::client_config(&kafka(), &[]).create()?;
    for result in futures_executor::block_on(admin.delete_topics(&names, &AdminOptions::new()))? {
        result.map_err(|(topic, code)| anyhow::anyhow!("{topic}: {code}"))?;
    }
    Ok(())
}

/// A message to produce: (key, value); `None` is no key / a tombstone.
pub type Raw<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Where produced records went: (partition, offset) of each, in the order given.
pub type Marks = Vec<(i32, i64)>;

/// Collects the (partition, offset) of every delivered record.
#[derive(Default)]
struct Delivered(std::sync::Mutex<Marks>);

impl rdkafka::ClientContext for Delivered {}

impl rdkafka::producer::ProducerContext for Delivered {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, index: Box<usize>) {
        use rdkafka::Message;
        let message = result.as_ref().expect("delivered");
        self.0.lock().expect("marks")[*index] = (message.partition(), message.offset());
    }
}

/// Creates `topic` and produces `messages` (key, value) to it, round robin over partitions;
/// returns where each went.
pub fn produce_raw(topic: &str, partitions: i32, messages: &[Raw<'_>]) -> Marks {
    dishflow::kafka::ensure_topic(&kafka(), topic, partitions).expect("create topic");
    let context = Delivered(std::sync::Mutex::new(vec![(-1, -1); messages.len()]));
    // Up to 10 MB a record: tests send records larger than a job's own producer takes.
    let producer: BaseProducer<Delivered> =
        dishflow::kafka::client_config(&kafka(), &[("message.max.bytes", "10000000")])
            .create_with_context(context)
            .expect("producer");
    for (i, (key, value)) in messages.iter().enumerate() {
        let mut record: BaseRecord<'_, [u8], [u8], Box<usize>> =
            BaseRecord::with_opaque_to(topic, Box::new(i)).partition(i as i32 % partitions);
        if let Some(key) = key {
            record = record.key(*key);
        }
        if let Some(value) = value {
            record = record.payload(*value);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let marks = std::mem::take(&mut *producer.context().0.lock().expect("marks"));
    assert!(
        marks.iter().all(|&(_, offset)| offset >= 0),
        "undelivered: {marks:?}"
    );
    marks
}

/// Produces one record with `key`, `value` and `headers` to `topic` (which exists).
pub fn produce_with_headers(topic: &str, key: &[u8], value: &[u8], headers: &[(&str, &str)]) {
    use rdkafka::message::{Header, OwnedHeaders};
    let producer: BaseProducer = dishflow::kafka::client_config(&kafka(), &[])
        .create()
        .expect("producer");
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    let record = BaseRecord::<'_, [u8], [u8]>::to(topic)
        .key(key)
        .payload(value)
        .headers(owned);
    producer.send(record).map_err(|(e, _)| e).expect("send");
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Creates `topic` and produces messages without key with `values`, round robin.
pub fn produce_values<V: AsRef<str>>(topic: &str, partitions: i32, values: &[V]) -> Marks {
    let raw: Vec<Raw<'_>> = (values.iter())
        .map(|v| (None, Some(v.as_ref().as_bytes())))
        .collect();
    produce_raw(topic, partitions, &raw)
}

/// Waits (at most `timeout`) until the committed progress of `job` (`promos`, `orders`) on
/// `topic` is past every record of `marks`: the job has read them and every sink has
/// written all they caused. Evidence that "nothing changed" means nothing will.
pub fn wait_for_progress(
    db: &str,
    job: &str,
    topic: &str,
    marks: &[(i32, i64)],
    timeout: Duration,
) {
    wait_until(
        timeout,
        &format!("{job}'s progress on {topic} past {marks:?}"),
        || {
            let committed = dishflow::positions::load(&mut pg(db), job, topic).ok()?;
            marks
                .iter()
                .all(|(partition, offset)| {
                    committed.get(partition).is_some_and(|c| c.resume > *offset)
                })
                .then_some(())
        },
    );
}

/// Every message of `topic`.
pub fn consume(topic: &str) -> Vec<ConsumedMessage> {
    read_to_end(&kafka(), topic, Duration::from_secs(60)).expect("consume")
}

/// Every message of `topic` as (key, value), or nothing while the topic does not exist.
pub fn messages(topic: &str) -> Vec<(String, Option<String>)> {
    if dishflow::kafka::topic_partitions(&kafka(), topic).is_err() {
        return Vec::new();
    }
    consume(topic)
        .into_iter()
        .map(|m| (m.key.unwrap_or_default(), m.value))
        .collect()
}

/// The messages of `topic` per key, in order: `Some(value)` or `None` for a tombstone.
pub fn history(topic: &str) -> std::collections::BTreeMap<String, Vec<Option<String>>> {
    let mut per_key = std::collections::BTreeMap::<String, Vec<Option<String>>>::new();
    for (key, value) in messages(topic) {
        per_key.entry(key).or_default().push(value);
    }
    per_key
}

/// The keys of `topic` whose latest message is a value, not a tombstone, sorted: the keys
/// the topic folds to.
pub fn live_keys(topic: &str) -> Vec<String> {
    history(topic)
        .into_iter()
        .filter(|(_, values)| values.last().is_some_and(Option::is_some))
        .map(|(key, _)| key)
        .collect()
}

/// Per key of `topic`, the sequence of its messages as value (`true`) or tombstone.
pub fn shapes(topic: &str) -> std::collections::BTreeMap<String, Vec<bool>> {
    history(topic)
        .into_iter()
        .map(|(k, h)| (k, h.iter().map(Option::is_some).collect()))
        .collect()
}

/// The dead letters of `topic` as (key, `dishflow.error.reason` header), sorted.
pub fn dead_letter_reasons(topic: &str) -> Vec<(String, String)> {
    let mut dead: Vec<(String, String)> = consume(topic)
        .into_iter()
        .map(|m| {
            let reason = (m.headers.iter())
                .find(|(k, _)| k == "dishflow.error.reason")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            (m.key.unwrap_or_default(), reason)
        })
        .collect();
    dead.sort();
    dead
}
