//! Command line of `dishflow geo`: what to read, where to write, how to run.

use clap::Args;

use crate::cluster::ClusterArgs;
use crate::kafka::KafkaArgs;
use crate::metrics::OpsArgs;
use crate::pg::DEFAULT_URL as DEFAULT_POSTGRES_URL;
use crate::positions::StartFrom;

/// Arguments of `dishflow geo`.
#[derive(Debug, Args)]
pub struct GeoArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Postgres connection URL (geo.cities is followed there; the mart schema is written).
    #[arg(long, env = "DISHFLOW_POSTGRES_URL", default_value = DEFAULT_POSTGRES_URL, hide_env_values = true)]
    pub postgres_url: String,

    /// Topic with the messaging app's events (JSON).
    #[arg(long, env = "DISHFLOW_EVENT_TOPIC", default_value = "geo_events")]
    pub event_topic: String,

    /// Topic undecodable events are written to, with the reason in headers, and rows the
    /// marts refuse (created if missing).
    #[arg(
        long,
        env = "DISHFLOW_DEAD_LETTER_TOPIC",
        default_value = "geo_events.dlq"
    )]
    pub dead_letter_topic: String,

    /// Also publish the friend recommendations' changes to this topic (created if missing):
    /// key `<user_left>:<user_right>`, value the row as JSON, a tombstone when the row is
    /// deleted. Exactly once, like the tables.
    #[arg(long, env = "DISHFLOW_RECOMMENDATION_TOPIC")]
    pub recommendation_topic: Option<String>,

    /// Where to start reading the event topic: `resume` (the marts depend on every event:
    /// replay the topic from its first retained offset to rebuild them, then continue after
    /// the last event processed), `earliest`, `latest`, or `TOPIC:PARTITION:OFFSET,...`.
    #[arg(long, env = "DISHFLOW_FROM", default_value = "resume")]
    pub from: StartFrom,

    /// Bounded run: read geo.cities once and every partition up to its end as of startup,
    /// write the marts, exit 0.
    #[arg(long, env = "DISHFLOW_STOP_AT_END")]
    pub stop_at_end: bool,

    /// How often (milliseconds) idle sources advance logical time with the wall clock.
    #[arg(long, env = "DISHFLOW_TICK_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub tick_ms: u64,

    /// How often (milliseconds) geo.cities' replication slot is polled for changes.
    #[arg(long, env = "DISHFLOW_CDC_POLL_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub cdc_poll_ms: u64,

    /// Timely cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Metrics and health endpoints.
    #[command(flatten)]
    pub ops: OpsArgs,
}
