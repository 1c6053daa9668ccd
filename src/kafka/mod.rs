//! Kafka client configuration and topic administration shared by sources, sinks and tools.

pub mod consumer;
pub mod property_lines;

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use std::path::PathBuf;

use clap::Args;

/// How to reach Kafka (shared by every command that talks to it).
#[derive(Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated (HOST:PORT,...).
    #[arg(long, env = "DISHFLOW_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Any librdkafka setting, like `kcat -X` (repeatable): e.g. `security.protocol=SASL_SSL`,
    /// `sasl.mechanism=SCRAM-SHA-512`, `ssl.ca.location=/etc/kafka/ca.pem`. In the environment,
    /// separate several with `;`. Wins over --kafka-property-file.
    #[arg(long = "kafka-property", env = "DISHFLOW_KAFKA_PROPERTY", value_name = "KEY=VALUE",
          value_parser = KeyValueParser, value_delimiter = ';', hide_env_values = true)]
    pub properties: Vec<(String, String)>,

    /// librdkafka settings from a file, one `KEY=VALUE` per line (`#` comments, blank lines
    /// ignored), e.g. `sasl.username` and `sasl.password` from a mounted secret, so that no
    /// secret is on the command line.
    #[arg(long = "kafka-property-file", env = "DISHFLOW_KAFKA_PROPERTY_FILE", value_name = "PATH",
          value_parser = PropertyFile::read)]
    pub property_file: Option<PropertyFile>,
}

impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("properties", &crate::redact::Settings(&self.properties))
            .field("property_file", &self.property_file)
            .finish()
    }
}

impl KafkaArgs {
    /// Every librdkafka setting given: the file's, then the command line's (which win).
    pub fn settings(&self) -> impl Iterator<Item = &(String, String)> {
        self.property_file
            .iter()
            .flat_map(|file| file.properties.iter())
            .chain(self.properties.iter())
    }
}

/// The librdkafka settings of a `--kafka-property-file`.
#[derive(Clone)]
pub struct PropertyFile {
    /// Where they were read from.
    pub path: PathBuf,
    /// KEY=VALUE pairs, in file order.
    pub properties: Vec<(String, String)>,
}

impl std::fmt::Debug for PropertyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PropertyFile")
            .field("path", &self.path)
            .field("properties", &crate::redact::Settings(&self.properties))
            .finish()
    }
}

impl PropertyFile {
    /// Reads and parses `path`. Errors name the line, never its content (it may be a secret).
    pub fn read(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Self::parse(path, &text)
    }

    fn parse(path: &str, text: &str) -> Result<Self, String> {
        let properties = property_lines::parse(text)
            .map_err(|line| format!("{path} line {line}: expected KEY=VALUE"))?;
        Ok(PropertyFile {
            path: PathBuf::from(path),
            properties,
        })
    }
}

/// Parses `--kafka-property KEY=VALUE`. Its error never repeats the argument (clap's errors
/// for a plain parser function would: the value may be a secret).
#[derive(Clone, Copy, Debug)]
pub struct KeyValueParser;

impl clap::builder::TypedValueParser for KeyValueParser {
    type Value = (String, String);

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let invalid = || {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                "--kafka-property expects KEY=VALUE with a non-empty KEY \
                 (the argument is not shown: it may hold a secret)\n",
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(invalid)?;
        match text.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(invalid()),
        }
    }
}

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

/// librdkafka's default `message.max.bytes`: the largest record a producer sends.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The largest record that can be produced to `topic`: the smaller of the producer's
/// `message.max.bytes` (a `--kafka-property`, else librdkafka's default) and the topic's
/// `max.message.bytes`, when the broker describes its configuration (a broker that does not
/// — Tansu — leaves the producer's limit).
pub fn max_message_bytes(args: &KafkaArgs, topic: &str) -> usize {
    let producer = (args.settings())
        .filter(|(key, _)| key == "message.max.bytes")
        .filter_map(|(_, value)| value.trim().parse().ok())
        .last()
        .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
    match topic_max_message_bytes(args, topic) {
        Ok(Some(limit)) => producer.min(limit),
        Ok(None) => producer,
        Err(error) => {
            tracing::debug!(
                topic,
                error = format!("{error:#}"),
                "no topic configuration: the producer's limit applies"
            );
            producer
        }
    }
}

/// The topic's `max.message.bytes`, if the broker says.
fn topic_max_message_bytes(args: &KafkaArgs, topic: &str) -> Result<Option<usize>> {
    let admin: AdminClient<DefaultClientContext> = client_config(args, &[])
        .create()
        .context("invalid Kafka configuration")?;
    let options = AdminOptions::new().request_timeout(Some(STARTUP_TIMEOUT));
    let resources = futures_executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options),
    )?;
    for resource in resources {
        let resource = resource.map_err(|code| anyhow!("describe {topic}: {code}"))?;
        if let Some(value) = resource
            .get("max.message.bytes")
            .and_then(|e| e.value.as_deref())
        {
            return Ok(value.trim().parse().ok());
        }
    }
    Ok(None)
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
