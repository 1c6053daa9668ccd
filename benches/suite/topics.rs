//! Kafka helpers of the workloads: producing with back-pressure, reading a topic until it is
//! quiet, the `--pipe` limit, sealing an input topic, cleaning up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dishflow_testkit::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Queues `record`, serving delivery reports while librdkafka's queue is full.
pub(crate) fn send_retrying<K, P>(producer: &BaseProducer, mut record: BaseRecord<'_, K, P>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((_, r)) => {
                producer.poll(Duration::from_millis(1));
                record = r;
            }
        }
    }
    producer.poll(Duration::ZERO);
}

/// Calls `each` with every message of `topic` up to its end as of the call, and then with
/// any that comes until none has for `settle` (an error if the topic does not exist or
/// cannot be read within 10 minutes). An output topic needs a `settle`: Tansu may report a
/// partition's end one produce batch short, and only a sealed input ends with a marker
/// batch that nobody needs (see [`seal_topic`]).
pub(crate) fn read_topic(
    topic: &str,
    settle: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let partitions = dishflow::kafka::topic_partitions(&kafka(), topic)?;
    let marks = dishflow::kafka::watermarks(&kafka(), topic)?;
    let consumer: BaseConsumer = dishflow::kafka::client_config(
        &kafka(),
        &[
            ("group.id", "dishflow-bench-reader"),
            ("enable.auto.commit", "false"),
        ],
    )
    .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut remaining: BTreeMap<i32, i64> = marks.iter().map(|&(p, _, high)| (p, high)).collect();
    remaining.retain(|_, high| *high > 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = Instant::now();
    while !remaining.is_empty() || last.elapsed() < settle {
        anyhow::ensure!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        last = Instant::now();
        each(&message);
        let partition = message.partition();
        if remaining
            .get(&partition)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&partition);
        }
    }
    Ok(())
}

/// How long an output topic must stay quiet for its check to have read all of it.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// `--pipe IN OUT`: the limit of a consume → produce pass-through: every message of IN
/// (to its end as of the start) produced to OUT, acknowledged.
pub(crate) fn pipe(input: &str, output: Option<&str>) {
    let producer: Option<BaseProducer> = output.map(|_| {
        dishflow::kafka::client_config(&kafka(), &[("linger.ms", "5")])
            .create()
            .expect("producer")
    });
    read_topic(input, Duration::ZERO, |message| {
        if let (Some(producer), Some(output)) = (&producer, output) {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            send_retrying(producer, record);
        }
    })
    .expect("pipe");
    if let Some(producer) = producer {
        producer.flush(Duration::from_secs(120)).expect("flush");
    }
}

/// Deletes the topics, databases and Redis keys whose names start with `prefix` — the
/// workload's own (Tansu keeps every topic in memory); kept with `--keep`.
pub(crate) fn clean_up(prefix: &str) {
    if std::env::args().any(|a| a == "--keep") {
        return;
    }
    if let Err(e) = delete_topics(prefix) {
        eprintln!("cannot delete the topics of {prefix}: {e}");
    }
    if let Err(e) = drop_databases(prefix) {
        eprintln!("cannot drop the databases of {prefix}: {e}");
    }
    if let Err(e) = delete_redis_keys(prefix) {
        eprintln!("cannot delete the Redis keys of {prefix}: {e}");
    }
}

/// Appends `marker` to every partition of `topic`, twice, each round flushed: Tansu reports
/// a partition's high watermark up to one produce batch short, and Pathway's static Kafka
/// read stops at the reported watermark — without these, it missed part of the input (up to
/// all of it for topics written in a few large batches). Both engines ignore the marker.
pub(crate) fn seal_topic(topic: &str, marker: &str) {
    let producer: BaseProducer = dishflow::kafka::client_config(&kafka(), &[])
        .create()
        .expect("producer");
    let partitions = dishflow::kafka::topic_partitions(&kafka(), topic).expect("topic");
    for _ in 0..2 {
        for &p in &partitions {
            producer
                .send(
                    BaseRecord::<'_, (), str>::to(topic)
                        .partition(p)
                        .payload(marker),
                )
                .map_err(|(e, _)| e)
                .expect("send marker");
        }
        producer
            .flush(Duration::from_secs(30))
            .expect("flush marker");
    }
}
