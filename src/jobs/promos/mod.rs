//! `dishflow promos`: Kafka promos ⋈ Postgres subscribers → Kafka drafts + feedback rows.
//!
//! ```text
//!  Kafka restaurant_promos ─► kafka_source ─► promos::decode ─┬─► dead letters ─► Kafka *.dlq
//!                                                             └─► campaigns ─┐
//!  Postgres subscribers_restaurants ─► subscribers (snapshot + changes) ─────┤ promos::drafts
//!                                                                            ▼
//!          drafts ─► Postgres subscribers_feedback (idempotent; the ledger of drafts sent)
//!                        └─ drafts new to the table, retractions ─► Kafka promo_notifications
//! ```
//!
//! Startup checks run before any worker starts, so that a bad URL or an unreachable server
//! ends the program with one line: the schema is created or verified, the promo topic must
//! exist, the output topics are created (with the promo topic's partition count) if missing.

mod args;

pub use args::PromosArgs;

use std::time::Duration;

use anyhow::Result;
use dataflows::promos;
use differential_dataflow::AsCollection;
use timely::dataflow::operators::Exchange;
use tracing::info;

use crate::control::{Completion, completion_barrier, install_signal_handlers};
use crate::positions::{self, RunStart};
use crate::sinks::isolate::Refusals;
use crate::sinks::kafka::Envelope;
use crate::sinks::kafka::{DeadLetterEncoder, DraftEncoder, KafkaWriter};
use crate::sinks::outbox::{Outbox, recover_retired};
use crate::sinks::postgres::FeedbackWriter;
use crate::sinks::rejects::{Rejects, ledger_job};
use crate::sinks::sink;
use crate::sources::kafka::kafka_source;
use crate::sources::postgres::{SubscribersConfig, subscribers};
use crate::{cluster, kafka, pg};

/// The job's name in dishflow's bookkeeping tables (outbox, progress).
pub const JOB: &str = "promos";

/// The outbox writer of connection `lane` of worker `worker` (of `peers`): lane 0 is the
/// worker's index, as when a worker had one connection, so its outbox carries over.
fn outbox_writer(worker: usize, peers: usize, lane: usize) -> usize {
    worker + peers * lane
}

/// Runs the promos job until its input ends (`--stop-at-end`) or a signal asks it to stop.
pub fn run(args: PromosArgs) -> Result<()> {
    let shutdown = install_signal_handlers(Duration::from_secs(args.ops.drain_timeout))?;
    let config = cluster::timely_config(&args.cluster)?;
    crate::metrics::start(JOB, &args.ops, usize::from(args.cluster.workers))?;
    pg::setup_promos(&args.postgres_url)?;
    let run = RunStart::load(
        &args.kafka,
        &args.postgres_url,
        JOB,
        &args.promo_topic,
        &args.from,
    )?;
    let outputs = i32::try_from(run.partitions.len())?;
    kafka::ensure_topic(&args.kafka, &args.notification_topic, outputs)?;
    kafka::ensure_topic(&args.kafka, &args.dead_letter_topic, outputs)?;
    let connections = usize::from(args.feedback_connections);
    recover_retired(
        &args.kafka,
        &args.postgres_url,
        &[JOB],
        args.cluster.peers() * connections,
    )?;
    recover_retired(
        &args.kafka,
        &args.postgres_url,
        &[&ledger_job(JOB)],
        args.cluster.peers(),
    )?;
    let plan = &run.plan;
    info!(
        postgres = %crate::redact::url(&args.postgres_url),
        brokers = %args.kafka.brokers,
        promo_topic = %args.promo_topic,
        partitions = run.partitions.len(),
        notification_topic = %args.notification_topic,
        envelope = ?args.envelope,
        bounded = args.stop_at_end,
        from = ?args.from,
        start = ?plan.start,
        replay_until = ?plan.replay_until,
        "starting promos"
    );

    let t0 = run.start_time;
    let tick = Duration::from_millis(args.tick_ms);
    let source = run.source(
        &args.kafka,
        plan.replay_until.clone(),
        args.stop_at_end,
        tick,
    );
    let progress_config = run.progress(&args.postgres_url);
    let replay_until = run.plan.replay_until;
    let subscribers_config = SubscribersConfig {
        url: args.postgres_url.clone(),
        publication: pg::SUBSCRIBERS_PUBLICATION.to_string(),
        follow: !args.stop_at_end,
        poll: Duration::from_millis(args.cdc_poll_ms),
    };
    let report = crate::logs::Progress::start(JOB, args.stop_at_end);
    super::run_workers(config, shutdown, move |worker, control| {
        let writers = (|| -> Result<_> {
            let mut feedback = Vec::new();
            for lane in 0..connections {
                let outbox = Outbox::new(
                    &args.kafka,
                    JOB,
                    outbox_writer(worker.index(), worker.peers(), lane),
                    &[&args.notification_topic],
                )?;
                feedback.push(
                    FeedbackWriter::new(
                        &args.postgres_url,
                        outbox,
                        &args.notification_topic,
                        DraftEncoder {
                            envelope: args.envelope,
                        },
                        args.envelope == Envelope::Upsert,
                    )?
                    .republish(args.republish),
                );
            }
            Ok((
                feedback,
                KafkaWriter::new(
                    &args.kafka,
                    &args.dead_letter_topic,
                    DeadLetterEncoder::new(&args.promo_topic),
                )?,
                Refusals {
                    rejects: Rejects::new(
                        &args.kafka,
                        &args.postgres_url,
                        JOB,
                        worker.index(),
                        &args.dead_letter_topic,
                    )?,
                },
            ))
        })();
        let (drafts_writers, dead_letter_writer, refusals) = match writers {
            Ok(writers) => writers,
            Err(error) => return control.fail(error),
        };
        let completion = Completion::default();
        let replay_until = replay_until.clone();
        worker.dataflow_named::<dataflows::Time, _, _>("promos", |scope| {
            let raw = kafka_source(
                scope,
                "PromosSource",
                source.clone(),
                control.clone(),
                completion.clone(),
            );
            let (raw, positions) = positions::tap_positions(raw);
            let subscriptions = subscribers(
                scope,
                subscribers_config.clone(),
                t0,
                control.clone(),
                completion.clone(),
            );
            let (campaigns, dead_letters) = promos::decode(raw);
            // A replayed record was dead-lettered (if bad) by the run that first read it.
            let dead_letters = dead_letters.filter(move |dead| {
                replay_until
                    .get(&dead.record.partition)
                    .is_none_or(|&until| dead.record.offset >= until)
            });
            let (drafts, retention) = promos::drafts_and_retention(campaigns, subscriptions);
            // One worker writes all changes of a notification key, in time order (a
            // replacement that changes the restaurant would otherwise split across workers).
            let drafts = drafts
                .inner
                .exchange(|(draft, _, _): &(promos::Draft, _, _)| draft.route())
                .as_collection();
            let dead_letters_written = sink(
                dead_letters,
                "DeadLetterSink",
                vec![dead_letter_writer],
                None,
                None,
                control.clone(),
                completion.clone(),
            );
            let drafts_written = sink(
                drafts,
                "DraftsSink",
                drafts_writers,
                Some(promos::Draft::route),
                Some(refusals),
                control.clone(),
                completion.clone(),
            );
            positions::track(
                positions,
                retention,
                vec![dead_letters_written, drafts_written],
                progress_config.clone(),
            );
            completion_barrier(scope, &completion, &control, tick);
        });
    })?;
    report.finish();
    Ok(())
}
