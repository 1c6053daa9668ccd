//! Command line of the `dishflow` binary.
//!
//! Every flag can also be given as an environment variable `DISHFLOW_<FLAG>` (upper case,
//! dashes as underscores), e.g. `DISHFLOW_BROKERS`, `DISHFLOW_POSTGRES_URL`. A flag on the
//! command line wins over the environment.

use clap::{Args, Parser, Subcommand, ValueEnum};
use dataflows::geo::cities::{City, parse_file};

use crate::dashboard::DashboardArgs;
use crate::jobs::geo::GeoArgs;
use crate::jobs::orders::OrdersArgs;
use crate::jobs::promos::PromosArgs;
use crate::kafka::KafkaArgs;
use crate::logs::LogFormat;
use crate::pg::DEFAULT_URL as DEFAULT_POSTGRES_URL;
use crate::produce::ProduceCommand;
use crate::redrive::RedriveArgs;

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
          default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    /// Job 3: a messaging app's events (Kafka) + geo.cities → zone and user marts and friend
    /// recommendations (Postgres).
    Geo(GeoArgs),
    /// Serve one web page over the marts the jobs keep (promos, orders, geo), updating itself
    /// while they run.
    Dashboard(DashboardArgs),
    /// Produce valid test data to Kafka.
    #[command(subcommand)]
    Produce(ProduceCommand),
    /// Print every message of a topic, from the beginning to its current end, as JSON lines
    /// ({"partition", "offset", "key", "value", "headers"}).
    Consume(ConsumeArgs),
    /// Re-publish dead letters to the topic they came from (each once, across runs and
    /// crashes), e.g. after the producer or a rule was fixed; prints what it did.
    Redrive(RedriveArgs),
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

    /// Remove what setup created for change capture instead: the publications
    /// `dishflow_subscribers` and `dishflow_cities` and inactive `dishflow_*` replication
    /// slots. Tables are kept.
    #[arg(long)]
    pub drop: bool,

    /// Print the SQL that creates a role per job (promos, orders, geo, dashboard) with only
    /// what it needs, instead of setting anything up: run it as a superuser in the jobs'
    /// database after `dishflow setup`, then give each role a password. A job run as such
    /// a role leaves the schema to its owner and checks its grants at startup (a missing
    /// one ends it with the SQL that gives it). See docs/operations.md.
    #[arg(long, conflicts_with = "drop")]
    pub print_roles: bool,

    /// The prefix of the roles `--print-roles` creates: `<prefix>promos`, … (lower-case
    /// letters, digits and `_`, starting with a letter or `_`).
    #[arg(long, default_value = "dishflow_", requires = "print_roles",
          value_parser = crate::pg::roles::role_prefix)]
    pub role_prefix: String,

    /// Which job's schema to create.
    #[arg(long, value_enum, default_value_t = SetupJob::All)]
    pub job: SetupJob,

    /// Load geo.cities from this file (the legacy geo.csv format: a header line, then
    /// `id;city;lat;lng[;timezone]`, decimal comma or point; a city without a time zone gets
    /// the nearest built-in city's). Rows are upserted by id. Without it, an empty
    /// geo.cities gets the 24 built-in Australian cities. A bad line is an error naming it,
    /// and nothing is loaded.
    #[arg(long, value_name = "FILE", value_parser = CitiesFile::read)]
    pub cities: Option<CitiesFile>,
}

/// The cities of a `--cities` file, read and checked when the command line is parsed.
#[derive(Clone, Debug)]
pub struct CitiesFile {
    /// The cities, in file order.
    pub cities: Vec<City>,
}

impl CitiesFile {
    /// Reads and parses `path` (see [`dataflows::geo::cities::parse_file`]).
    pub fn read(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let cities = parse_file(&text).map_err(|e| format!("{path}: {e}"))?;
        Ok(CitiesFile { cities })
    }
}

/// The jobs `dishflow setup` prepares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SetupJob {
    /// Every job.
    All,
    /// subscribers_restaurants, subscribers_feedback, the publication.
    Promos,
    /// The stg, dds and cdm schemas.
    Orders,
    /// The geo and mart schemas, geo.cities (with its cities) and its publication.
    Geo,
}

impl SetupJob {
    /// Whether setting up this selection includes `job`.
    pub fn includes(self, job: SetupJob) -> bool {
        self == SetupJob::All || self == job
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::promos::Envelope;
    use crate::positions::StartFrom;
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
