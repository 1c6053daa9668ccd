//! Command line of the `dishflow` binary.
//!
//! Every flag can also be given as an environment variable `DISHFLOW_<FLAG>` (upper case,
//! dashes as underscores), e.g. `DISHFLOW_BROKERS`, `DISHFLOW_POSTGRES_URL`. A flag on the
//! command line wins over the environment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Streaming jobs for a food-delivery aggregator, on timely and differential dataflow.
///
/// Inputs (Kafka topics, Postgres tables) become differential collections; outputs are the
/// changes of collections, written to Kafka and Postgres as they happen.
#[derive(Debug, Parser)]
#[command(name = "dishflow", version, long_version = long_version(), about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,

    /// Log lines as text or one JSON object per line (the level filter is `RUST_LOG`, e.g.
    /// `RUST_LOG=info,dishflow::sinks=debug`; default `info`).
    #[arg(long, global = true, env = "DISHFLOW_LOG_FORMAT", value_enum,
          default_value_t = crate::logs::LogFormat::Text)]
    pub log_format: crate::logs::LogFormat,
}

/// `dishflow --version`: dishflow's version, and what it was built with: librdkafka's
/// version and built-in features (ssl, sasl_scram, … for managed clusters) and OpenSSL's.
pub fn long_version() -> &'static str {
    static TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
        let features = rdkafka::ClientConfig::new()
            .create_native_config()
            .and_then(|config| config.get("builtin.features"))
            .unwrap_or_else(|e| format!("unknown ({e})"));
        format!(
            "{}\nlibrdkafka {librdkafka} (builtin.features: {features})\n{} (Kafka and Postgres TLS)",
            env!("CARGO_PKG_VERSION"),
            openssl::version::version()
        )
    });
    &TEXT
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the tables, indexes and publication the jobs need (accepts tables created by
    /// others); `--drop` removes the publication and leftover replication slots.
    Setup(SetupArgs),
    /// Job 1: restaurant promos ⋈ subscribers → notification drafts (Kafka) + feedback rows (Postgres).
    Promos(PromosArgs),
    /// Job 2: orders (Kafka) + dictionaries (Redis) → STG, Data Vault DDS and CDM counters (Postgres).
    Orders(OrdersArgs),
    /// Produce valid test data to Kafka.
    #[command(subcommand)]
    Produce(ProduceCommand),
    /// Print every message of a topic, from the beginning to its current end, as JSON lines
    /// ({"partition", "offset", "key", "value", "headers"}).
    Consume(ConsumeArgs),
}

/// Arguments of `dishflow consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic to read.
    #[arg(long, env = "DISHFLOW_TOPIC")]
    pub topic: String,

    /// Give up after this many seconds.
    #[arg(long, env = "DISHFLOW_TIMEOUT", default_value_t = 60)]
    pub timeout: u64,
}

/// Arguments of `dishflow setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Postgres connection URL.
    #[arg(long, env = "DISHFLOW_POSTGRES_URL", default_value = DEFAULT_POSTGRES_URL, hide_env_values = true)]
    pub postgres_url: String,

    /// Remove what setup created for change capture instead: the publication
    /// `dishflow_subscribers` and inactive `dishflow_*` replication slots. Tables are kept.
    #[arg(long)]
    pub drop: bool,

    /// Which job's schema to create.
    #[arg(long, value_enum, default_value_t = SetupJob::All)]
    pub job: SetupJob,
}

/// The jobs `dishflow setup` prepares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SetupJob {
    /// Both jobs.
    All,
    /// subscribers_restaurants, subscribers_feedback, the publication.
    Promos,
    /// The stg, dds and cdm schemas.
    Orders,
}

/// The default Redis URL: the local server's database 0.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// The default Postgres URL: the local server's database `de`.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/de";

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
        let mut properties = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    properties.push((k.trim().to_string(), v.trim().to_string()));
                }
                _ => return Err(format!("{path} line {}: expected KEY=VALUE", number + 1)),
            }
        }
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

/// Scale-out: worker threads per process, and processes in a cluster.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Worker threads in this process.
    #[arg(long, short = 'w', env = "DISHFLOW_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,

    /// Number of processes in the cluster (all started with the same arguments but --process).
    #[arg(long, env = "DISHFLOW_PROCESSES", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub processes: u16,

    /// Index of this process in the cluster, 0-based.
    #[arg(long, env = "DISHFLOW_PROCESS", default_value_t = 0)]
    pub process: u16,

    /// File with one HOST:PORT per line, line i being process i (needed with --processes > 1).
    #[arg(long, env = "DISHFLOW_HOSTFILE")]
    pub hostfile: Option<PathBuf>,
}

/// Metrics and health endpoints of a running job.
#[derive(Debug, Clone, Args)]
pub struct OpsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics, liveness on /healthz (every worker
    /// ran within the last minute) and readiness on /readyz (snapshots loaded, consumer lag
    /// at most --ready-max-lag). E.g. `127.0.0.1:9464`; port 0 picks a free port (logged).
    /// Each process of a cluster serves its own. Off by default.
    #[arg(long, env = "DISHFLOW_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Records a Kafka partition may lag behind its end for /readyz to answer 200.
    #[arg(long, env = "DISHFLOW_READY_MAX_LAG", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub ready_max_lag: i64,

    /// After SIGTERM/SIGINT, seconds to finish writing what was read and commit progress
    /// before exiting anyway with status 1 (nothing is lost: the next run resumes from the
    /// committed progress). Keep it below the orchestrator's grace period (docker-compose
    /// stop_grace_period, Kubernetes terminationGracePeriodSeconds). A second signal exits
    /// at once.
    #[arg(long, env = "DISHFLOW_DRAIN_TIMEOUT", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub drain_timeout: u64,
}

impl ClusterArgs {
    /// Worker threads in the whole cluster.
    pub fn peers(&self) -> usize {
        usize::from(self.workers) * usize::from(self.processes)
    }
}

/// Where a job starts reading its Kafka topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    /// From the job's committed progress: replay what rebuilds its state, then go on where
    /// it stopped; partitions without progress start at the earliest offset.
    Resume,
    /// The first retained offset of every partition.
    Earliest,
    /// The end of every partition as of startup: only new messages.
    Latest,
    /// Explicit offsets, (topic, partition, offset); partitions not listed: earliest.
    Offsets(Vec<(String, i32, i64)>),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "resume" => return Ok(StartFrom::Resume),
            "earliest" => return Ok(StartFrom::Earliest),
            "latest" => return Ok(StartFrom::Latest),
            _ => {}
        }
        let mut offsets = Vec::new();
        for item in text.split(',') {
            let parsed = item.rsplitn(3, ':').collect::<Vec<_>>();
            let [offset, partition, topic] = parsed[..] else {
                return Err(format!(
                    "expected resume, earliest, latest or TOPIC:PARTITION:OFFSET,..., got {item:?}"
                ));
            };
            let partition = partition
                .parse::<i32>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| format!("bad partition {partition:?} in {item:?}"))?;
            let offset = offset
                .parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .ok_or_else(|| format!("bad offset {offset:?} in {item:?}"))?;
            if topic.is_empty() {
                return Err(format!("missing topic in {item:?}"));
            }
            offsets.push((topic.to_string(), partition, offset));
        }
        Ok(StartFrom::Offsets(offsets))
    }
}

/// How retractions (campaign ended, client unsubscribed) appear in the notification topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Envelope {
    /// Only insertions are written; a retraction writes nothing.
    Append,
    /// A retraction writes a tombstone (same key, null value), for compacted topics.
    Upsert,
}

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

    /// How retractions appear in the notification topic.
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

    /// Postgres connections per worker writing drafts (feedback rows and their outbox), each
    /// with its own transactions and its share of the drafts (by key); every draft key always
    /// goes through the same one, so its changes stay in order. One connection is bound by
    /// one Postgres server process: 2 writes a large backlog of drafts about 1.3× faster
    /// where Postgres has a core to spare, but costs more per draft (twice the commits),
    /// which at a high steady rate on a small machine adds latency.
    #[arg(long, env = "DISHFLOW_FEEDBACK_CONNECTIONS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub feedback_connections: u16,

    /// Timely cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Metrics and health endpoints.
    #[command(flatten)]
    pub ops: OpsArgs,
}

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

/// What `dishflow produce` generates.
#[derive(Debug, Subcommand)]
pub enum ProduceCommand {
    /// Valid campaign messages for the promos job.
    Promos(ProducePromosArgs),
    /// A reproducible order history (Kafka) with its restaurants, menus and users (Redis).
    Orders(ProduceOrdersArgs),
}

/// Arguments of `dishflow produce orders`.
#[derive(Debug, Args)]
pub struct ProduceOrdersArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Redis the dictionaries are written to.
    #[arg(long, env = "DISHFLOW_REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,

    /// Topic the orders are written to (created with --partitions if missing).
    #[arg(long, env = "DISHFLOW_TOPIC", default_value = "order-service_orders")]
    pub topic: String,

    /// Partitions of the topic, if it has to be created.
    #[arg(long, env = "DISHFLOW_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,

    /// Number of orders (each sent once, some also re-sent with a later status).
    #[arg(long, env = "DISHFLOW_ORDERS", default_value_t = 1000)]
    pub orders: u64,

    /// Number of restaurants (menus of 10–30 products in 8 categories).
    #[arg(long, env = "DISHFLOW_RESTAURANTS", default_value_t = 100)]
    pub restaurants: u64,

    /// Number of users.
    #[arg(long, env = "DISHFLOW_USERS", default_value_t = 5000)]
    pub users: u64,

    /// Random seed: the same seed gives the same data set.
    #[arg(long, env = "DISHFLOW_SEED", default_value_t = 1)]
    pub seed: u64,

    /// First `object_id`.
    #[arg(long, env = "DISHFLOW_FIRST_ORDER", default_value_t = 1)]
    pub first_order: u64,

    /// Prefix of every restaurant, product and user id (and so of their Redis keys), to keep
    /// several data sets apart in one Redis.
    #[arg(long, env = "DISHFLOW_ID_PREFIX", default_value = "")]
    pub id_prefix: String,

    /// Write only the dictionaries (no orders).
    #[arg(long, conflicts_with = "orders_only")]
    pub dictionaries_only: bool,

    /// Write only the orders (the dictionaries are already there, or come later).
    #[arg(long)]
    pub orders_only: bool,
}

/// Arguments of `dishflow produce promos`.
#[derive(Debug, Args)]
pub struct ProducePromosArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic to write to (created with --partitions if missing).
    #[arg(long, env = "DISHFLOW_TOPIC", default_value = "restaurant_promos")]
    pub topic: String,

    /// Partitions of the topic, if it has to be created.
    #[arg(long, env = "DISHFLOW_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,

    /// Number of campaigns to produce.
    #[arg(long, env = "DISHFLOW_COUNT", default_value_t = 10)]
    pub count: u64,

    /// Campaigns go to restaurants `<prefix>…<n>` for n in 0..restaurants, round robin. With the
    /// default prefix, restaurant 0 is the seed example's `123e4567-e89b-12d3-a456-426614174000`.
    #[arg(long, env = "DISHFLOW_RESTAURANTS", default_value_t = 1)]
    pub restaurants: u64,

    /// First campaign number: campaign ids are `<campaign-prefix>…<n>`.
    #[arg(long, env = "DISHFLOW_FIRST_CAMPAIGN", default_value_t = 3)]
    pub first_campaign: u64,

    /// Campaign validity start, relative to now, in seconds (negative: already started).
    #[arg(long, env = "DISHFLOW_START_IN", default_value_t = -3600, allow_hyphen_values = true)]
    pub start_in: i64,

    /// Campaign validity, in seconds from the start.
    #[arg(long, env = "DISHFLOW_VALID_FOR", default_value_t = 86_400)]
    pub valid_for: i64,

    /// Use the seed example's fixed datetimes (start 1659203516, end 2659207116) instead of
    /// --start-in / --valid-for.
    #[arg(long, env = "DISHFLOW_SEED_TIMES")]
    pub seed_times: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn contract_flags_parse() {
        let cli = Cli::try_parse_from([
            "dishflow",
            "promos",
            "--brokers",
            "h:1",
            "--postgres-url",
            "postgres://x/de",
            "--promo-topic",
            "p",
            "--notification-topic",
            "n",
            "--dead-letter-topic",
            "d",
            "--from",
            "latest",
            "--stop-at-end",
            "--envelope",
            "upsert",
            "--workers",
            "2",
            "--processes",
            "2",
            "--process",
            "1",
            "--hostfile",
            "/tmp/h",
            "--kafka-property",
            "linger.ms=1",
            "--kafka-property",
            "acks=all",
        ])
        .expect("contract flags");
        let Command::Promos(args) = cli.command else {
            panic!("not promos")
        };
        assert_eq!(args.from, StartFrom::Latest);
        assert_eq!(args.envelope, Envelope::Upsert);
        assert!(args.stop_at_end);
        assert_eq!(args.cluster.workers, 2);
        assert_eq!(
            args.kafka.properties,
            vec![
                ("linger.ms".to_string(), "1".to_string()),
                ("acks".to_string(), "all".to_string())
            ]
        );
    }

    #[test]
    fn bad_property_is_rejected() {
        let err = Cli::try_parse_from(["dishflow", "promos", "--kafka-property", "nokey"])
            .expect_err("must fail");
        assert!(err.to_string().contains("KEY=VALUE"));
        let err = Cli::try_parse_from(["dishflow", "promos", "--kafka-property", "=s3cret"])
            .expect_err("must fail");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn property_files_are_read_before_the_command_line_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("dishflow-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("kafka.properties");
        std::fs::write(
            &path,
            "# managed cluster\nsecurity.protocol=SASL_SSL\n\nsasl.password = s3cret\nsasl.username=svc\n",
        )
        .expect("write");
        let path = path.to_str().expect("utf-8");
        let cli = Cli::try_parse_from([
            "dishflow",
            "promos",
            "--kafka-property-file",
            path,
            "--kafka-property",
            "sasl.username=override",
        ])
        .expect("parse");
        let Command::Promos(args) = cli.command else {
            panic!("promos")
        };
        let settings: Vec<(String, String)> = args.kafka.settings().cloned().collect();
        assert_eq!(
            settings,
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.password", "s3cret"),
                ("sasl.username", "svc"),
                ("sasl.username", "override"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let config = crate::kafka::client_config(&args.kafka, &[]);
        assert_eq!(
            config.get("sasl.username"),
            Some("override"),
            "the command line wins"
        );
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert!(
            !format!("{args:?}").contains("s3cret"),
            "Debug masks secrets"
        );

        std::fs::write(dir.join("bad.properties"), "sasl.password s3cret\n").expect("write");
        let bad = dir.join("bad.properties");
        let err = Cli::try_parse_from([
            "dishflow",
            "promos",
            "--kafka-property-file",
            bad.to_str().expect("utf-8"),
        ])
        .expect_err("must fail");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
