//! `dishflow orders`: Kafka orders + Redis dictionaries → STG, Data Vault DDS, CDM counters.
//!
//! ```text
//!  Kafka order-service_orders ─► kafka_source ─► orders::decode ─┬─► dead letters ─► Kafka *.dlq
//!                                                                ├─► other types (counted)
//!                                                                └─► order messages ─┐
//!  Redis restaurants/users ─► dictionaries (snapshot + keyspace notifications) ──────┤
//!                                                                  orders::orders    ▼
//!     stg ─► stg.order_events    vault ─► dds.h_* / l_* / s_*    counters ─► cdm.*_counters
//!     enriched ─► (--stg-topic) ledger + outbox              (--dds-topic) outbox of changed
//! ```
//!
//! Startup checks run before any worker starts, so that a bad URL or an unreachable server
//! ends the program with one line: the schemas are created or verified, the order topic
//! must exist, the dead-letter topic is created if missing, Redis must answer.
//!
//! The backlog (every message before the end offsets as of startup) is one step at the start
//! time, like a snapshot; messages that arrive later get their own arrival times.

mod args;

pub use args::OrdersArgs;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use dataflows::orders;
use differential_dataflow::AsCollection;
use timely::dataflow::operators::Exchange;
use tracing::info;

use crate::control::{Completion, completion_barrier, install_signal_handlers};
use crate::positions::{self, RunStart};
use crate::sinks::isolate::Refusals;
use crate::sinks::kafka::{DeadLetterEncoder, KafkaWriter};
use crate::sinks::outbox::{Outbox, recover_retired};
use crate::sinks::rejects::{Rejects, ledger_job};
use crate::sinks::sink;
use crate::sinks::tables::{
    CounterBatch, PublishedBatch, StgBatch, TableWriter, VaultBatch, existing_counters,
};
use crate::sources::kafka::kafka_source;
use crate::sources::redis::{RedisSourceConfig, dictionaries};
use crate::sources::snapshot::snapshot;
use crate::{cluster, kafka, pg};

/// The job's name in dishflow's bookkeeping tables (progress).
pub const JOB: &str = "orders";

/// The outbox and ledger name of the `--stg-topic` publisher.
pub const STG_PUBLISHER: &str = "orders/stg-topic";

/// The outbox name of the `--dds-topic` publisher.
pub const DDS_PUBLISHER: &str = "orders/dds-topic";

/// The outbox of writer `worker` of `job` for `topic`, if there is a topic.
fn outbox_for<'t>(
    kafka: &crate::kafka::KafkaArgs,
    job: &str,
    worker: usize,
    topic: Option<&'t str>,
) -> Result<Option<(Outbox, &'t str)>> {
    topic
        .map(|topic| Ok((Outbox::new(kafka, job, worker, &[topic])?, topic)))
        .transpose()
}

/// Runs the orders job until its input ends (`--stop-at-end`) or a signal asks it to stop.
pub fn run(args: OrdersArgs) -> Result<()> {
    let shutdown = install_signal_handlers(Duration::from_secs(args.ops.drain_timeout))?;
    let config = cluster::timely_config(&args.cluster)?;
    crate::metrics::start(JOB, &args.ops, usize::from(args.cluster.workers))?;
    pg::setup_orders(&args.postgres_url)?;
    crate::sources::redis::check(&args.redis_url)?;
    let run = RunStart::load(
        &args.kafka,
        &args.postgres_url,
        JOB,
        &args.order_topic,
        &args.from,
    )?;
    let outputs = i32::try_from(run.partitions.len())?;
    kafka::ensure_topic(&args.kafka, &args.dead_letter_topic, outputs)?;
    for topic in [&args.stg_topic, &args.dds_topic].into_iter().flatten() {
        kafka::ensure_topic(&args.kafka, topic, outputs)?;
    }
    recover_retired(
        &args.kafka,
        &args.postgres_url,
        &[STG_PUBLISHER, DDS_PUBLISHER, &ledger_job(JOB)],
        args.cluster.peers(),
    )?;
    let plan = &run.plan;
    info!(
        postgres = %crate::redact::url(&args.postgres_url),
        redis = %crate::redact::url(&args.redis_url),
        brokers = %args.kafka.brokers,
        order_topic = %args.order_topic,
        partitions = run.partitions.len(),
        bounded = args.stop_at_end,
        from = ?args.from,
        start = ?plan.start,
        replay_until = ?plan.replay_until,
        "starting orders"
    );

    let t0 = run.start_time;
    let tick = Duration::from_millis(args.tick_ms);
    // The backlog as of startup (a replay, or a week of history on a first start) is read
    // as one snapshot at the start time: intermediate versions collapse, and the state and
    // tables are built in one step instead of once per arrival millisecond.
    let backlog = run
        .watermarks
        .iter()
        .map(|&(p, _, high)| (p, high.max(plan.replay_until.get(&p).copied().unwrap_or(0))))
        .collect();
    let source = run.source(&args.kafka, backlog, args.stop_at_end, tick);
    let redis_config = RedisSourceConfig {
        url: args.redis_url.clone(),
        pattern: args.redis_keys.clone(),
        follow: !args.stop_at_end,
        rescan: Duration::from_secs(args.redis_rescan_secs),
        poll: tick * 10,
    };
    let progress_config = run.progress(&args.postgres_url);
    let replay_until = run.plan.replay_until.clone();
    // Whether the start time rebuilds the whole state (every current order version).
    let reconcile = positions::rebuilds_everything(&args.from, &run.watermarks, &run.committed);
    if !reconcile {
        info!(
            "this start does not replay every current order (--from, or messages deleted by \
             retention): counters are updated, none is removed for orders not read"
        );
    }
    let ignored = Arc::new(AtomicU64::new(0));
    let ignored_total = ignored.clone();
    let report = crate::logs::Progress::start(JOB, args.stop_at_end);
    super::run_workers(config, shutdown, move |worker, control| {
        let writers = (|| -> Result<_> {
            let url = &args.postgres_url;
            let index = worker.index();
            let published = match &args.stg_topic {
                Some(_) => Some(TableWriter::new(
                    url,
                    PublishedBatch {
                        job: STG_PUBLISHER.to_string(),
                    },
                    outbox_for(&args.kafka, STG_PUBLISHER, index, args.stg_topic.as_deref())?,
                    "stg-service-orders sink",
                )?),
                None => None,
            };
            Ok((
                KafkaWriter::new(
                    &args.kafka,
                    &args.dead_letter_topic,
                    DeadLetterEncoder::new(&args.order_topic),
                )?,
                TableWriter::new(url, StgBatch, None, "stg sink")?,
                TableWriter::new(url, VaultBatch, None, "dds sink")?,
                TableWriter::new(
                    url,
                    CounterBatch {
                        publish: args.dds_topic.is_some(),
                    },
                    outbox_for(&args.kafka, DDS_PUBLISHER, index, args.dds_topic.as_deref())?,
                    "cdm sink",
                )?,
                published,
                Rejects::new(&args.kafka, url, JOB, index, &args.dead_letter_topic)?,
            ))
        })();
        let (
            dead_letter_writer,
            stg_writer,
            vault_writer,
            counter_writer,
            published_writer,
            rejects,
        ) = match writers {
            Ok(writers) => writers,
            Err(error) => return control.fail(error),
        };
        let refusals = Refusals {
            rejects: rejects.clone(),
        };
        let completion = Completion::default();
        let replay_until = replay_until.clone();
        let ignored = ignored.clone();
        worker.dataflow_named::<dataflows::Time, _, _>("orders", |scope| {
            let raw = kafka_source(
                scope,
                "OrdersSource",
                source.clone(),
                control.clone(),
                completion.clone(),
            );
            let (raw, positions) = positions::tap_positions(raw);
            let entries = dictionaries(
                scope,
                (redis_config.clone(), Some(rejects.clone())),
                t0,
                tick,
                control.clone(),
                completion.clone(),
            );
            let (messages, dead_letters, other_types) = orders::decode(raw);
            other_types.inspect(move |_| {
                ignored.fetch_add(1, Ordering::Relaxed);
            });
            // A replayed record was dead-lettered (if bad) by the run that first read it.
            let dead_letters = dead_letters.filter(move |dead| {
                replay_until
                    .get(&dead.record.partition)
                    .is_none_or(|&until| dead.record.offset >= until)
            });
            let out = orders::orders(messages, entries);
            // One worker owns every row of a hub, link or satellite key.
            let vault = out
                .vault
                .inner
                .exchange(|(row, _, _): &(orders::VaultRow, _, _)| row.route())
                .as_collection();
            // A run that rebuilds the whole state at its start time writes the difference
            // between the counters it computes and those in the tables: unchanged counters
            // cost nothing, and a counter that should no longer exist (its order's
            // dictionary entry vanished while the job was down) is deleted.
            let counters = if reconcile {
                let url = args.postgres_url.clone();
                let existing = snapshot(
                    scope,
                    "ExistingCounters",
                    (t0, tick, !args.stop_at_end),
                    control.clone(),
                    completion.clone(),
                    move || {
                        Ok(existing_counters(&url)?
                            .into_iter()
                            .map(|c| (c, -1))
                            .collect())
                    },
                );
                out.counters.concat(existing)
            } else {
                out.counters
            };
            // One worker writes every change of a user's counters (one message per user)
            // and of an order's enriched version.
            let counters = counters
                .inner
                .exchange(|(c, _, _): &(orders::Counter, _, _)| c.route())
                .as_collection();
            let mut written = vec![
                sink(
                    dead_letters,
                    "DeadLetterSink",
                    vec![dead_letter_writer],
                    None,
                    None,
                    control.clone(),
                    completion.clone(),
                ),
                sink(
                    out.stg,
                    "StgSink",
                    vec![stg_writer],
                    Some(orders::OrderEvent::route),
                    Some(refusals.clone()),
                    control.clone(),
                    completion.clone(),
                ),
                sink(
                    vault,
                    "DdsSink",
                    vec![vault_writer],
                    Some(orders::VaultRow::route),
                    Some(refusals.clone()),
                    control.clone(),
                    completion.clone(),
                ),
                sink(
                    counters,
                    "CdmSink",
                    vec![counter_writer],
                    // A user's counters in one batch: one message per user and batch.
                    Some(orders::Counter::route),
                    Some(refusals.clone()),
                    control.clone(),
                    completion.clone(),
                ),
            ];
            if let Some(writer) = published_writer {
                let enriched = out
                    .enriched
                    .inner
                    .exchange(|(o, _, _): &(orders::EnrichedOrder, _, _)| o.route())
                    .as_collection();
                written.push(sink(
                    enriched,
                    "StgTopicSink",
                    vec![writer],
                    Some(orders::EnrichedOrder::route),
                    Some(refusals.clone()),
                    control.clone(),
                    completion.clone(),
                ));
            }
            positions::track(positions, out.retention, written, progress_config.clone());
            completion_barrier(scope, &completion, &control, tick);
        });
    })?;
    let ignored = ignored_total.load(Ordering::Relaxed);
    if ignored > 0 {
        info!(
            other_object_types = ignored,
            "ignored messages of other object types"
        );
    }
    report.finish();
    Ok(())
}
