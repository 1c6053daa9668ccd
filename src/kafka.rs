//! Kafka client configuration and topic administration shared by sources, sinks and tools.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::cli::KafkaArgs;

/// How long startup checks wait for the brokers before reporting them unreachable.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// A librdkafka configuration: bootstrap servers, `defaults`, then the user's settings
/// (`--kafka-property-file`, then `--kafka-property`), which therefore override dishflow's.
pub fn client_config(args: &KafkaArgs, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.brokers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in args.settings() {
        config.set(key, value);
    }
    config
}

/// Partitions of `topic`, failing clearly when the brokers are unreachable or the topic is
/// missing.
pub fn topic_partitions(args: &KafkaArgs, topic: &str) -> Result<Vec<i32>> {
    let consumer: BaseConsumer = client_config(args, &[])
        .create()
        .context("invalid Kafka configuration")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), STARTUP_TIMEOUT)
        .map_err(|e| anyhow!("cannot reach Kafka at {}: {e}", args.brokers))?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic {topic} not found on {}", args.brokers)
    };
    if let Some(err) = meta.error() {
        let code = RDKafkaErrorCode::from(err);
        if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            bail!(
                "topic {topic} does not exist on {} (create it, or check the topic flag)",
                args.brokers
            );
        }
        bail!("topic {topic} on {}: {code}", args.brokers);
    }
    let mut partitions: Vec<i32> = meta.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        bail!("topic {topic} on {} has no partitions", args.brokers);
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// Creates `topic` with `partitions` partitions unless it exists already.
pub fn ensure_topic(args: &KafkaArgs, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(args, &[])
        .create()
        .context("invalid Kafka configuration")?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().operation_timeout(Some(STARTUP_TIMEOUT));
    let results =
        futures_executor::block_on(admin.create_topics([&new], &options)).map_err(|e| {
            anyhow!(
                "cannot reach Kafka at {} to create {topic}: {e}",
                args.brokers
            )
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// (partition, low watermark, high watermark) of every partition of `topic`.
pub fn watermarks(args: &KafkaArgs, topic: &str) -> Result<Vec<(i32, i64, i64)>> {
    let consumer: BaseConsumer = client_config(args, &[])
        .create()
        .context("invalid Kafka configuration")?;
    let mut marks = Vec::new();
    for partition in topic_partitions(args, topic)? {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, STARTUP_TIMEOUT)
            .map_err(|e| anyhow!("watermarks of {topic}/{partition}: {e}"))?;
        marks.push((partition, low, high));
    }
    Ok(marks)
}
