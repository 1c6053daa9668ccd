//! `dishflow redrive`: dead letters back to the topic they came from, each once.
//!
//! ```text
//!  T.dlq ──read (every partition, from --from)──► per dead letter, in order:
//!     no dishflow.source.topic header  (a Redis value, a followed table's row, a refused
//!                                       update: not a Kafka record) ─────► skipped, counted
//!     reason not starting with --reason ─────────────────────────────────► passed over
//!     dishflow.truncated (cut to fit the dead-letter topic) ─────────────► skipped, counted
//!     dishflow.redrive.attempts ≥ --max-attempts ────────────────────────► exhausted, counted
//!     otherwise: key, value, headers minus the dead letter's own, attempts + 1
//!                ──► its source topic (or --to)
//!  each batch, one Postgres transaction:
//!     INSERT dishflow_published (job 'redrive/T.dlq', key 'partition:offset')   ON CONFLICT
//!       → only dead letters never re-driven before go on
//!     their messages ──► dishflow_outbox       COMMIT, then the outbox delivers and confirms
//! ```
//!
//! **Each dead letter once.** Which dead letters were re-driven is kept in Postgres, in the
//! ledger `dishflow_published`, in the same transaction as the outbox rows that carry them;
//! the outbox (`sinks::outbox`) delivers each committed message exactly once across crashes.
//! So a second run, a run with another `--reason`, or a run killed anywhere, re-publishes
//! nothing twice. A run reads the dead-letter topic from `--from` (default: its beginning)
//! and passes over what the ledger already has.
//!
//! **No loops.** A re-driven record carries `dishflow.redrive.attempts`; when the job rejects
//! it again, its new dead letter keeps that header (a dead letter keeps the record's
//! headers), and the re-drive leaves it alone once the count reaches `--max-attempts`. A
//! re-drive that keeps running therefore never moves a bad record back and forth.
//!
//! One re-drive per dead-letter topic at a time: the outbox's writer lock (a second waits a
//! minute for the first, then fails).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tracing::{info, warn};
use uuid::Uuid;

use crate::kafka::KafkaArgs;
use crate::kafka::consumer::{
    Assignment, Position, assigned_consumer, message_bytes, message_headers, observe_eof,
    observe_message,
};
use crate::pg::DEFAULT_URL as DEFAULT_POSTGRES_URL;
use crate::positions::StartFrom;
use crate::sinks::kafka::{
    KafkaMessage, REASON_HEADER, SOURCE_TOPIC_HEADER, TRUNCATED_HEADER, header,
    is_dead_letter_header,
};
use crate::sinks::outbox::Outbox;
use crate::sinks::postgres::ledger_changed;

/// Header counting how often a record was re-driven.
pub const ATTEMPTS_HEADER: &str = "dishflow.redrive.attempts";

/// Dead letters read before each transaction (at most).
const BATCH: usize = 1_000;

/// How long a poll waits for a dead letter before the batch so far is written.
const POLL: Duration = Duration::from_millis(200);

/// Dead letters logged one by one per kind of skip before only the totals are.
const LOGGED_SKIPS: u64 = 20;

/// Arguments of `dishflow redrive`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Postgres connection URL: where the ledger of re-driven dead letters and the outbox
    /// are (`dishflow setup` creates them).
    #[arg(long, env = "DISHFLOW_POSTGRES_URL", default_value = DEFAULT_POSTGRES_URL,
          hide_env_values = true)]
    pub postgres_url: String,

    /// The dead-letter topic to re-drive.
    #[arg(long, env = "DISHFLOW_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: String,

    /// Re-publish to this topic instead of each dead letter's source topic (its
    /// `dishflow.source.topic` header).
    #[arg(long, env = "DISHFLOW_TO")]
    pub to: Option<String>,

    /// Only dead letters whose reason (`dishflow.error.reason`) starts with this, e.g.
    /// `invalid:nul_character` or `not_json`.
    #[arg(long, env = "DISHFLOW_REASON")]
    pub reason: Option<String>,

    /// Where reading the dead-letter topic starts: `earliest`, `latest` or
    /// `TOPIC:PARTITION:OFFSET,...` (unlisted partitions: earliest). `resume` is `earliest`:
    /// dead letters re-driven before are passed over whatever the start.
    #[arg(long, env = "DISHFLOW_FROM", default_value = "earliest")]
    pub from: StartFrom,

    /// How often one record may be re-driven: a dead letter whose record was re-driven this
    /// many times already (`dishflow.redrive.attempts`) is left where it is.
    #[arg(long, env = "DISHFLOW_MAX_ATTEMPTS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Stop once the topic is read to its end as of startup (otherwise keep re-driving new
    /// dead letters until SIGTERM/SIGINT).
    #[arg(long, env = "DISHFLOW_STOP_AT_END")]
    pub stop_at_end: bool,
}

/// Which dead letters are re-driven, and where to.
#[derive(Clone, Debug)]
pub struct Selection {
    /// A destination for every re-driven record instead of its source topic.
    pub to: Option<String>,
    /// A prefix the reason must have.
    pub reason: Option<String>,
    /// Re-drives one record may have had.
    pub max_attempts: u32,
}

/// What becomes of one dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Re-publish `message` to `topic`.
    Redrive {
        /// Destination.
        topic: String,
        /// The record as it was, its attempts counted.
        message: KafkaMessage,
    },
    /// Not from a Kafka topic (no `dishflow.source.topic`): nothing to re-publish to.
    NoSource,
    /// Its reason does not start with `--reason`.
    NotSelected,
    /// Cut to fit the dead-letter topic: the original value is gone.
    Truncated,
    /// Re-driven `--max-attempts` times already.
    Exhausted,
}

/// The first header `name` of `headers`, as text.
fn header_text<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h str> {
    (headers.iter())
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Decides what becomes of a dead letter with `key`, `value` and `headers`.
pub fn judge(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
    selection: &Selection,
) -> Verdict {
    let reason = header_text(headers, REASON_HEADER).unwrap_or_default();
    if (selection.reason.as_deref()).is_some_and(|prefix| !reason.starts_with(prefix)) {
        return Verdict::NotSelected;
    }
    let Some(source) = header_text(headers, SOURCE_TOPIC_HEADER) else {
        return Verdict::NoSource;
    };
    if headers.iter().any(|(n, _)| n == TRUNCATED_HEADER) {
        return Verdict::Truncated;
    }
    let attempts: u32 = header_text(headers, ATTEMPTS_HEADER)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    if attempts >= selection.max_attempts {
        return Verdict::Exhausted;
    }
    let mut kept: Vec<(String, Vec<u8>)> = (headers.iter())
        .filter(|(n, _)| !is_dead_letter_header(n) && n != ATTEMPTS_HEADER)
        .cloned()
        .collect();
    kept.push(header(ATTEMPTS_HEADER, attempts + 1));
    Verdict::Redrive {
        topic: selection.to.clone().unwrap_or_else(|| source.to_string()),
        message: KafkaMessage {
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: kept,
        },
    }
}

/// What a re-drive did, by kind.
#[derive(Debug, Default)]
pub struct Totals {
    /// Re-published, per destination topic.
    pub redriven: BTreeMap<String, u64>,
    /// Re-driven by an earlier run (in the ledger): not again.
    pub done_before: u64,
    /// Without a source topic.
    pub no_source: u64,
    /// Not matching `--reason`.
    pub not_selected: u64,
    /// Cut to fit.
    pub truncated: u64,
    /// Out of attempts.
    pub exhausted: u64,
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redriven: u64 = self.redriven.values().sum();
        let to: Vec<String> = (self.redriven.iter())
            .map(|(topic, n)| format!("{n} to {topic}"))
            .collect();
        write!(
            f,
            "{redriven} re-published{}; {} re-driven by an earlier run; skipped: {} without a \
             source topic, {} cut to fit, {} out of attempts; {} not matching --reason",
            if to.is_empty() {
                String::new()
            } else {
                format!(" ({})", to.join(", "))
            },
            self.done_before,
            self.no_source,
            self.truncated,
            self.exhausted,
            self.not_selected
        )
    }
}

/// One dead letter read: where it is in the dead-letter topic and its verdict.
struct Read {
    partition: i32,
    offset: i64,
    verdict: Verdict,
}

/// `dishflow redrive`: see the module docs. Prints the totals when it ends.
pub fn run(args: RedriveArgs) -> Result<()> {
    let topic = &args.dead_letter_topic;
    let job = format!("redrive/{topic}");
    let selection = Selection {
        to: args.to.clone(),
        reason: args.reason.clone(),
        max_attempts: args.max_attempts,
    };
    let stop = crate::control::install_signal_handlers(Duration::from_secs(60))?;
    let mut client = crate::pg::connect(&args.postgres_url)?;
    let ready: bool = client
        .query_one(
            "SELECT to_regclass('public.dishflow_published') IS NOT NULL \
                AND to_regclass('public.dishflow_outbox') IS NOT NULL",
            &[],
        )?
        .try_get(0)?;
    if !ready {
        bail!(
            "dishflow's bookkeeping tables (dishflow_published, dishflow_outbox) are missing \
             in this database: run `dishflow setup` first"
        );
    }
    let mut outbox = Outbox::new(&args.kafka, &job, 0, &[])?;
    outbox.lock(&mut client)?;
    outbox.recover(&mut client)?;

    let partitions = crate::kafka::topic_partitions(&args.kafka, topic)?;
    let start: HashMap<i32, Position> = match &args.from {
        StartFrom::Resume | StartFrom::Earliest => HashMap::new(),
        StartFrom::Latest => partitions.iter().map(|&p| (p, Position::Latest)).collect(),
        StartFrom::Offsets(offsets) => (offsets.iter())
            .filter(|(t, ..)| t == topic)
            .map(|&(_, p, o)| (p, Position::Offset(o)))
            .collect(),
    };
    let (consumer, mut states) = assigned_consumer(&Assignment {
        kafka: &args.kafka,
        topic,
        partitions: &partitions,
        start: &start,
        replay_until: &HashMap::new(),
    })?;
    info!(topic, to = ?args.to, reason = ?args.reason, max_attempts = args.max_attempts,
          "redrive: reading the dead-letter topic");

    let mut totals = Totals::default();
    loop {
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            match consumer.poll(if batch.is_empty() {
                POLL
            } else {
                Duration::ZERO
            }) {
                None => break,
                Some(Ok(m)) => {
                    observe_message(&mut states, m.partition(), m.offset(), message_bytes(&m));
                    let headers = message_headers(&m);
                    let verdict = judge(m.key(), m.payload(), &headers, &selection);
                    batch.push(Read {
                        partition: m.partition(),
                        offset: m.offset(),
                        verdict,
                    });
                }
                Some(Err(KafkaError::PartitionEOF(p))) => observe_eof(&mut states, p),
                Some(Err(error)) => {
                    warn!(topic, %error, "Kafka error (retrying)");
                    break;
                }
            }
        }
        write_batch(&mut client, &mut outbox, &job, batch, &mut totals)
            .with_context(|| format!("cannot re-drive dead letters of {topic}"))?;
        let done = args.stop_at_end && states.values().all(|s| s.done());
        if done || stop.load(Ordering::Relaxed) {
            break;
        }
    }
    info!(topic, %totals, "redrive: done");
    println!("redrive {topic}: {totals}");
    Ok(())
}

/// Counts and logs a dead letter that is not re-driven.
fn skipped(read: &Read, totals: &mut Totals) {
    let (count, why) = match read.verdict {
        Verdict::NoSource => (&mut totals.no_source, "not from a Kafka topic"),
        Verdict::Truncated => (&mut totals.truncated, "cut to fit the dead-letter topic"),
        Verdict::Exhausted => (&mut totals.exhausted, "out of attempts (--max-attempts)"),
        Verdict::NotSelected => {
            totals.not_selected += 1;
            return;
        }
        Verdict::Redrive { .. } => return,
    };
    *count += 1;
    if *count <= LOGGED_SKIPS {
        info!(
            partition = read.partition,
            offset = read.offset,
            why,
            "redrive: dead letter skipped"
        );
    }
}

/// Re-publishes the dead letters of `batch` not re-driven before (one transaction: the
/// ledger and the outbox), then waits for their delivery.
fn write_batch(
    client: &mut postgres::Client,
    outbox: &mut Outbox,
    job: &str,
    batch: Vec<Read>,
    totals: &mut Totals,
) -> Result<()> {
    let mut keys = Vec::new();
    let mut chosen = Vec::new();
    for read in batch {
        if let Verdict::Redrive { topic, message } = read.verdict {
            keys.push(format!("{}:{}", read.partition, read.offset));
            chosen.push((topic, message));
        } else {
            skipped(&read, totals);
        }
    }
    if chosen.is_empty() {
        return Ok(());
    }
    let topics: std::collections::BTreeSet<&str> =
        chosen.iter().map(|(topic, _)| topic.as_str()).collect();
    for topic in topics {
        outbox.add_topic(client, topic)?;
    }
    let mut tx = client.transaction()?;
    let digests = vec![Uuid::nil(); keys.len()];
    let new = ledger_changed(&mut tx, job, &keys, &digests)?;
    let mut by_topic: BTreeMap<String, Vec<KafkaMessage>> = BTreeMap::new();
    for (key, (topic, message)) in keys.iter().zip(chosen) {
        if new.contains(key) {
            by_topic.entry(topic).or_default().push(message);
        } else {
            totals.done_before += 1;
        }
    }
    let mut staged = Vec::new();
    for (topic, messages) in by_topic {
        *totals.redriven.entry(topic.clone()).or_default() += messages.len() as u64;
        staged.extend(outbox.stage(&mut tx, &topic, messages)?);
    }
    tx.commit()?;
    if let Some(upto) = staged.iter().map(|s| s.seq()).max() {
        outbox.publish(client, &staged, upto)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter(extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        let mut headers = vec![
            header("trace", "t-1"),
            header(REASON_HEADER, "invalid:nul_character"),
            header(SOURCE_TOPIC_HEADER, "orders"),
            header("dishflow.source.partition", 2),
            header("dishflow.source.offset", 40),
            header("dishflow.outbox.seq", 16_384),
        ];
        headers.extend(extra.iter().map(|(n, v)| header(n, v)));
        headers
    }

    fn selection(reason: Option<&str>, to: Option<&str>) -> Selection {
        Selection {
            to: to.map(str::to_string),
            reason: reason.map(str::to_string),
            max_attempts: 1,
        }
    }

    #[test]
    fn a_dead_letter_goes_back_to_its_source_with_its_own_headers_and_one_attempt() {
        let verdict = judge(
            Some(b"k"),
            Some(b"{\"a\":1}"),
            &dead_letter(&[]),
            &selection(Some("invalid:"), None),
        );
        assert_eq!(
            verdict,
            Verdict::Redrive {
                topic: "orders".into(),
                message: KafkaMessage {
                    key: Some(b"k".to_vec()),
                    value: Some(b"{\"a\":1}".to_vec()),
                    headers: vec![header("trace", "t-1"), header(ATTEMPTS_HEADER, 1)],
                },
            }
        );
        let Verdict::Redrive { topic, .. } = judge(
            None,
            None,
            &dead_letter(&[]),
            &selection(None, Some("orders.fixed")),
        ) else {
            panic!("re-driven")
        };
        assert_eq!(topic, "orders.fixed", "--to wins over the source");
    }

    #[test]
    fn what_cannot_or_must_not_go_back_is_left() {
        let any = selection(None, None);
        assert_eq!(
            judge(
                None,
                None,
                &dead_letter(&[]),
                &selection(Some("not_json"), None)
            ),
            Verdict::NotSelected
        );
        let from_redis = vec![header(REASON_HEADER, "invalid:dictionary")];
        assert_eq!(judge(None, None, &from_redis, &any), Verdict::NoSource);
        assert_eq!(
            judge(None, None, &from_redis, &selection(None, Some("orders"))),
            Verdict::NoSource,
            "--to does not make a Redis value a record"
        );
        assert_eq!(
            judge(
                None,
                None,
                &dead_letter(&[(TRUNCATED_HEADER, "9000")]),
                &any
            ),
            Verdict::Truncated
        );
        assert_eq!(
            judge(None, None, &dead_letter(&[(ATTEMPTS_HEADER, "1")]), &any),
            Verdict::Exhausted
        );
        let twice = Selection {
            max_attempts: 2,
            ..any
        };
        let Verdict::Redrive { message, .. } =
            judge(None, None, &dead_letter(&[(ATTEMPTS_HEADER, "1")]), &twice)
        else {
            panic!("a second attempt is allowed")
        };
        assert_eq!(
            message.headers,
            vec![header("trace", "t-1"), header(ATTEMPTS_HEADER, 2)]
        );
    }
}
