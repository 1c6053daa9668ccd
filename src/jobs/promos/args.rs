//! Command line of `dishflow promos`: what to read, where to write, how to run.

use clap::Args;

use super::feedback::Envelope;
use crate::cluster::ClusterArgs;
use crate::kafka::KafkaArgs;
use crate::metrics::OpsArgs;
use crate::pg::DEFAULT_URL as DEFAULT_POSTGRES_URL;
use crate::positions::StartFrom;

/// Arguments of `dishflow promos`.
#[derive(Debug, Args)]
pub struct PromosArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Postgres connection URL (subscribers are read from, feedback rows written to, it).
    #[arg(long, env = "DISHFLOW_POSTGRES_URL", default_value = DEFAULT_POSTGRES_URL, hide_env_values = true)]
    pub postgres_url: String,

    /// Topic with the restaurant campaigns (JSON).
    #[arg(
        long,
        env = "DISHFLOW_PROMO_TOPIC",
        default_value = "restaurant_promos"
    )]
    pub promo_topic: String,

    /// Topic the notification drafts are written to (created if missing).
    #[arg(
        long,
        env = "DISHFLOW_NOTIFICATION_TOPIC",
        default_value = "promo_notifications"
    )]
    pub notification_topic: String,

    /// Topic undecodable promo messages are written to, with the reason in headers, and
    /// drafts the feedback table refuses (created if missing).
    #[arg(
        long,
        env = "DISHFLOW_DEAD_LETTER_TOPIC",
        default_value = "restaurant_promos.dlq"
    )]
    pub dead_letter_topic: String,

    /// Where to start reading the promo topic: `resume` (the job's committed progress:
    /// replay the messages whose campaigns may still be in force to rebuild the state, then
    /// continue after the last message processed; earliest where there is no progress yet),
    /// `earliest`, `latest`, or `TOPIC:PARTITION:OFFSET,...` (unlisted partitions:
    /// earliest). Whatever the start, a draft already in subscribers_feedback is not
    /// written again; see --republish.
    #[arg(long, env = "DISHFLOW_FROM", default_value = "resume")]
    pub from: StartFrom,

    /// Bounded run: read every partition up to its end as of startup, flush every sink, exit 0.
    /// Drafts that would only start existing later (campaigns starting in the future) are not
    /// written by such a run.
    #[arg(long, env = "DISHFLOW_STOP_AT_END")]
    pub stop_at_end: bool,

    /// Send every draft this run produces to the notification topic, also those already in
    /// subscribers_feedback (which are not written twice). For a deliberate re-publication:
    /// `--republish --from earliest --stop-at-end --notification-topic NEW_TOPIC`. Such a run
    /// is not exactly-once for Kafka: if it is interrupted, re-run it into a fresh topic.
    #[arg(long, env = "DISHFLOW_REPUBLISH")]
    pub republish: bool,

    /// How retractions appear in the notification topic. With `upsert`, which drafts are
    /// live is kept in Postgres (`dishflow_draft_keys`): a restart tombstones the drafts
    /// that ended while the job was down, and a draft that comes back after its tombstone
    /// is sent again, across restarts too.
    #[arg(long, env = "DISHFLOW_ENVELOPE", value_enum, default_value_t = Envelope::Append)]
    pub envelope: Envelope,

    /// How often (milliseconds) idle sources advance logical time with the wall clock: the
    /// delay with which time-triggered drafts (campaign start, end) are released.
    #[arg(long, env = "DISHFLOW_TICK_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub tick_ms: u64,

    /// How often (milliseconds) the subscribers' replication slot is polled for changes
    /// (pg_logical_slot_get_binary_changes): the most a subscriber change waits before the
    /// job sees it. Each poll is one query per worker, cheap when nothing changed.
    #[arg(long, env = "DISHFLOW_CDC_POLL_MS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub cdc_poll_ms: u64,

    /// The most Postgres connections per worker writing drafts (feedback rows and their
    /// outbox). While the job keeps up, one writes everything (one transaction per batch:
    /// the least work per draft, the lowest latency); while a backlog of drafts waits (see
    /// --feedback-backlog), all of them, each with its own transactions and its share of
    /// the drafts by key, and one again once the backlog is gone. One connection is bound by
    /// one Postgres server process: 2 write a large backlog ~1.5× faster where Postgres has
    /// a core to spare. 1 writes through one connection always.
    #[arg(long, env = "DISHFLOW_FEEDBACK_CONNECTIONS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub feedback_connections: u16,

    /// Drafts ready to write and waiting for a connection at which a worker writes through
    /// all its --feedback-connections; it goes back to one after fewer than a fifth of this
    /// have waited for 3 s. 0: all connections always.
    #[arg(long, env = "DISHFLOW_FEEDBACK_BACKLOG", default_value_t = 50_000)]
    pub feedback_backlog: usize,

    /// Timely cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Metrics and health endpoints.
    #[command(flatten)]
    pub ops: OpsArgs,
}
