//! Command line of `dishflow orders`: what to read, where to write, how to run.

use clap::Args;

use crate::cluster::ClusterArgs;
use crate::jobs::kafka_job::RoundArgs;
use crate::kafka::KafkaArgs;
use crate::metrics::OpsArgs;
use crate::pg::DEFAULT_URL as DEFAULT_POSTGRES_URL;
use crate::positions::StartFrom;
use crate::sources::redis::DEFAULT_URL as DEFAULT_REDIS_URL;

/// Arguments of `dishflow orders`.
#[derive(Debug, Args)]
pub struct OrdersArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Postgres connection URL (the stg, dds and cdm schemas are written there).
    #[arg(long, env = "DISHFLOW_POSTGRES_URL", default_value = DEFAULT_POSTGRES_URL, hide_env_values = true)]
    pub postgres_url: String,

    /// Redis with the dictionaries: one JSON string per key, key = restaurant id (with a
    /// `menu`) or user id (with a `login`). `redis://[user:password@]host:port/db`.
    #[arg(long, env = "DISHFLOW_REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,

    /// Which Redis keys are dictionary entries (a glob; other keys are not read).
    #[arg(long, env = "DISHFLOW_REDIS_KEYS", default_value = "*")]
    pub redis_keys: String,

    /// Seconds between full rescans of the dictionaries, a safety net behind keyspace
    /// notifications (which dishflow enables with CONFIG SET if it may; where it may not,
    /// the dictionaries are rescanned every --tick-ms × 10 instead).
    #[arg(long, env = "DISHFLOW_REDIS_RESCAN_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_rescan_secs: u64,

    /// Topic with the order events (JSON).
    #[arg(
        long,
        env = "DISHFLOW_ORDER_TOPIC",
        default_value = "order-service_orders"
    )]
    pub order_topic: String,

    /// Topic undecodable order messages are written to, with the reason in headers, and
    /// invalid Redis values and rows the tables refuse (created if missing).
    #[arg(
        long,
        env = "DISHFLOW_DEAD_LETTER_TOPIC",
        default_value = "order-service_orders.dlq"
    )]
    pub dead_letter_topic: String,

    /// Also publish the enriched orders (the legacy STG service's output, one message per
    /// order version, key = object_id) to this topic, e.g. `stg-service-orders`. Exactly
    /// once; created if missing.
    #[arg(long, env = "DISHFLOW_STG_TOPIC")]
    pub stg_topic: Option<String>,

    /// Also publish, per user, the counters that changed (the legacy DDS service's output,
    /// key = h_user_pk) to this topic, e.g. `dds-service-orders`. Exactly once; created if
    /// missing.
    #[arg(long, env = "DISHFLOW_DDS_TOPIC")]
    pub dds_topic: Option<String>,

    /// Also publish the changes of cdm.user_tags to this topic (key `<user_id>:<tag>`, the
    /// row as JSON, a tombstone when the user loses the tag). Exactly once; created if
    /// missing.
    #[arg(long, env = "DISHFLOW_TAG_TOPIC")]
    pub tag_topic: Option<String>,

    /// How often (milliseconds) cdm.tag_rules' replication slot is polled for changes: the
    /// most an edited rule waits before users are re-tagged.
    #[arg(long, env = "DISHFLOW_CDC_POLL_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub cdc_poll_ms: u64,

    /// Where to start reading the order topic: `resume` (the job's committed progress:
    /// replay the current version of every order to rebuild the state, then continue after
    /// the last message processed; earliest where there is no progress yet), `earliest`,
    /// `latest`, or `TOPIC:PARTITION:OFFSET,...`. Rows already written are not changed by a
    /// replay.
    #[arg(long, env = "DISHFLOW_FROM", default_value = "resume")]
    pub from: StartFrom,

    /// Bounded run: read the dictionaries once and every partition up to its end as of
    /// startup, write every table, exit 0. Orders whose dictionary entries are missing stay
    /// held (a later run completes them).
    #[arg(long, env = "DISHFLOW_STOP_AT_END")]
    pub stop_at_end: bool,

    /// How the backlog is read.
    #[command(flatten)]
    pub rounds: RoundArgs,

    /// How often (milliseconds) idle sources advance logical time with the wall clock.
    #[arg(long, env = "DISHFLOW_TICK_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub tick_ms: u64,

    /// Timely cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Metrics and health endpoints.
    #[command(flatten)]
    pub ops: OpsArgs,
}
