//! `dishflow promos`: Kafka promos ⋈ Postgres subscribers → Kafka drafts + feedback rows.
//!
//! ```text
//!  Kafka restaurant_promos ─► kafka_source ─► promos::decode ─┬─► dead letters ─► Kafka *.dlq
//!                                                             └─► campaigns ─┐
//!  Postgres subscribers_restaurants ─► subscribers (snapshot + changes) ─────┤ promos::drafts
//!                                                                            ▼
//!          drafts ─► Postgres subscribers_feedback (idempotent; the ledger of drafts sent)
//!                        └─ drafts new to the table, retractions ─► Kafka promo_notifications
//!   --envelope upsert, at the start time: − the live drafts as last written
//!                        (dishflow_draft_keys ⋈ subscribers_feedback, when the start
//!                        rebuilds the whole state): those gone meanwhile get tombstones
//! ```
//!
//! A campaign is a dead letter when its message is bad or when its drafts are larger than the
//! notification topic takes (`too_large:draft`); a draft that still is (a very long client
//! id) is refused by the feedback sink before anything of it is written and dead-lettered.
//!
//! Startup checks run before any worker starts, so that a bad URL or an unreachable server
//! ends the program with one line: the schema is created or verified, the promo topic must
//! exist, the output topics are created (with the promo topic's partition count) if missing.

mod args;
mod feedback;
mod subscribers;

pub use feedback::Envelope;

pub use args::PromosArgs;

use std::time::Duration;

use anyhow::Result;
use dataflows::promos;
use tracing::info;

use self::feedback::DraftEncoder;
use super::kafka_job::KafkaJob;
use crate::pg;
use crate::sinks::outbox::{Outbox, payload_room, recover_retired};
use crate::sinks::postgres::TableWriter;
use crate::sinks::{Spread, by_key};

use self::feedback::{FeedbackBatch, live_drafts};
use crate::positions;
use crate::sources::postgres::{FollowConfig, followed_table};

/// The job's name in dishflow's bookkeeping tables (outbox, positions).
pub const JOB: &str = "promos";

/// The outbox writer of connection `lane` of worker `worker` (of `peers`): lane 0 is the
/// worker's index, as when a worker had one connection, so its outbox carries over.
fn outbox_writer(worker: usize, peers: usize, lane: usize) -> usize {
    worker + peers * lane
}

/// Runs the promos job until its input ends (`--stop-at-end`) or a signal asks it to stop.
pub fn run(args: PromosArgs) -> Result<()> {
    let job = KafkaJob {
        name: JOB,
        kafka: args.kafka.clone(),
        postgres_url: args.postgres_url.clone(),
        topic: args.promo_topic.clone(),
        dead_letter_topic: args.dead_letter_topic.clone(),
        from: args.from.clone(),
        stop_at_end: args.stop_at_end,
        tick: Duration::from_millis(args.tick_ms),
        cluster: args.cluster.clone(),
        ops: args.ops.clone(),
    };
    let url = &args.postgres_url;
    let started =
        job.start(|| pg::roles::prepare(url, &pg::roles::PROMOS, || pg::setup_promos(url)))?;
    kafka_topic(&args, started.partitions)?;
    // A campaign whose drafts the notification topic cannot take is a dead letter.
    let room = payload_room(crate::kafka::max_message_bytes(
        &args.kafka,
        &args.notification_topic,
    ));
    let (peers, connections) = (args.cluster.peers(), usize::from(args.feedback_connections));
    recover_retired(&args.kafka, &args.postgres_url, &[JOB], peers * connections)?;
    info!(notification_topic = %args.notification_topic, envelope = ?args.envelope,
        max_draft_bytes = room, "promos outputs");
    let source = job.source(&started, started.run.plan.replay_until.clone());
    // With the upsert envelope, a start that rebuilds every live draft retracts those the
    // notification topic last had as live: what is still there cancels out, and a draft
    // whose campaign ended or whose subscriber left while the job was down gets its
    // tombstone.
    let run = &started.run;
    let reconcile = args.envelope == Envelope::Upsert
        && positions::rebuilds_everything(&args.from, &run.watermarks, &run.committed);
    if args.envelope == Envelope::Upsert && !reconcile {
        info!(
            "this start does not replay every live campaign (--from, or messages deleted by \
             retention): drafts that ended while the job was down get no tombstone"
        );
    }
    let url = args.postgres_url.clone();
    let subscribers_config = FollowConfig {
        url: args.postgres_url.clone(),
        publication: pg::SUBSCRIBERS_PUBLICATION.to_string(),
        follow: !args.stop_at_end,
        poll: Duration::from_millis(args.cdc_poll_ms),
    };
    let spread = Spread::at(args.feedback_backlog);
    let open = move |worker: usize| -> Result<Vec<TableWriter<FeedbackBatch<DraftEncoder>>>> {
        (0..connections)
            .map(|lane| {
                let writer = outbox_writer(worker, peers, lane);
                let outbox = Outbox::new(&args.kafka, JOB, writer, &[&args.notification_topic])?;
                let encoder = DraftEncoder {
                    envelope: args.envelope,
                };
                let upsert = args.envelope == Envelope::Upsert;
                let batch = FeedbackBatch::new(encoder, upsert, args.republish);
                let outbox = Some((outbox, args.notification_topic.as_str()));
                TableWriter::new(&args.postgres_url, batch, outbox, "feedback sink")
            })
            .collect()
    };
    job.run(started, source, open, move |dataflow, records, writers| {
        let subscriptions = followed_table::<promos::Subscription>(
            dataflow.scope,
            subscribers_config.clone(),
            &dataflow.lifecycle,
        );
        let (campaigns, dead_letters) = promos::decode(records, room);
        dataflow.dead_letters(dead_letters);
        let (mut drafts, retention) = promos::drafts_and_retention(campaigns, subscriptions);
        if reconcile {
            let url = url.clone();
            drafts = dataflow.reconciled(drafts, "LiveDrafts", move || live_drafts(&url));
        }
        // One worker writes all changes of a notification key, in time order (a
        // replacement that changes the restaurant would otherwise split across workers).
        let route = promos::Draft::route;
        let drafts = by_key(drafts, route);
        dataflow.sink_spread(drafts, "DraftsSink", writers, Some(route), spread);
        retention
    })
}

/// Creates the notification topic if missing, with the promo topic's partition count.
fn kafka_topic(args: &PromosArgs, partitions: i32) -> Result<()> {
    crate::kafka::ensure_topic(&args.kafka, &args.notification_topic, partitions)
}
