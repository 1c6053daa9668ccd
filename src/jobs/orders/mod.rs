//! `dishflow orders`: Kafka orders + Redis dictionaries → STG, Data Vault DDS, CDM counters.
//!
//! ```text
//!  Kafka order-service_orders ─► kafka_source ─► orders::decode ─┬─► dead letters ─► Kafka *.dlq
//!                                                                ├─► other types (counted)
//!                                                                └─► order messages ─┐
//!  Redis restaurants/users ─► dictionaries (snapshot + keyspace notifications) ──────┤
//!                                  └─► values that are not entries ─► Kafka *.dlq     │
//!  Postgres cdm.tag_rules ─► followed table (worker 0) ──────────────────────────────┤
//!                                                                  orders::orders    ▼
//!     stg ─► stg.order_events    vault ─► dds.h_* / l_* / s_*    counters ─► cdm.*_counters
//!     enriched ─► (--stg-topic) ledger + outbox              (--dds-topic) outbox of changed
//!     tags ─► cdm.user_tags (--tag-topic: outbox, tombstones)
//!     summary ─► cdm.orders_summary (users and orders per category, product, tag)
//! ```
//!
//! Startup checks run before any worker starts, so that a bad URL or an unreachable server
//! ends the program with one line: the schemas are created or verified, the order topic
//! must exist, the dead-letter topic is created if missing, Redis must answer.
//!
//! A replay after a restart (messages an earlier run processed) is one step at the start time,
//! like a snapshot. The rest of the backlog (up to the end offsets as of startup) is read in
//! rounds of `--round-records` messages per worker, each at its own logical time and written
//! when it completes; messages that arrive later get their own arrival times.

mod args;
mod rules;
mod sinks;
mod tables;

pub use args::OrdersArgs;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use dataflows::orders::{self, TagRule};
use tracing::info;

use self::sinks::Writers;
use super::kafka_job::KafkaJob;
use crate::positions;
use crate::sinks::outbox::recover_retired;
use crate::sources::postgres::{FollowConfig, followed_table};
use crate::sources::redis::{RedisSourceConfig, dictionaries};
use crate::{kafka, pg};

/// The job's name in dishflow's bookkeeping tables (positions).
pub const JOB: &str = "orders";

/// The outbox and ledger name of the `--stg-topic` publisher.
pub const STG_PUBLISHER: &str = "orders/stg-topic";

/// The outbox name of the `--dds-topic` publisher.
pub const DDS_PUBLISHER: &str = "orders/dds-topic";

/// The outbox name of the `--tag-topic` publisher.
pub const TAG_PUBLISHER: &str = "orders/tag-topic";

/// Runs the orders job until its input ends (`--stop-at-end`) or a signal asks it to stop.
pub fn run(args: OrdersArgs) -> Result<()> {
    let job = KafkaJob {
        name: JOB,
        kafka: args.kafka.clone(),
        postgres_url: args.postgres_url.clone(),
        topic: args.order_topic.clone(),
        dead_letter_topic: args.dead_letter_topic.clone(),
        from: args.from.clone(),
        stop_at_end: args.stop_at_end,
        tick: Duration::from_millis(args.tick_ms),
        cluster: args.cluster.clone(),
        ops: args.ops.clone(),
    };
    let started = job.start(|| {
        let url = &args.postgres_url;
        pg::roles::prepare(url, &pg::roles::ORDERS, || pg::setup_orders(url))?;
        crate::sources::redis::check(&args.redis_url)
    })?;
    for topic in [&args.stg_topic, &args.dds_topic, &args.tag_topic]
        .into_iter()
        .flatten()
    {
        kafka::ensure_topic(&args.kafka, topic, started.partitions)?;
    }
    let publishers = [STG_PUBLISHER, DDS_PUBLISHER, TAG_PUBLISHER];
    recover_retired(
        &args.kafka,
        &args.postgres_url,
        &publishers,
        args.cluster.peers(),
    )?;
    info!(redis = %crate::redact::url(&args.redis_url), stg_topic = ?args.stg_topic, dds_topic = ?args.dds_topic, "orders inputs and outputs");
    let (run, tick) = (&started.run, job.tick);
    // A replay (messages an earlier run processed, read again to rebuild the state) is one
    // step at the start time: its outputs are in the tables already. The rest of the
    // backlog as of startup is read in rounds (`--round-records`), each at its own time and
    // written as it completes, so that memory follows the state and not the backlog.
    let source = job.source_in_rounds(&started, &args.rounds);
    let redis_config = RedisSourceConfig {
        url: args.redis_url.clone(),
        pattern: args.redis_keys.clone(),
        follow: !args.stop_at_end,
        rescan: Duration::from_secs(args.redis_rescan_secs),
        poll: tick * 10,
    };
    let rules_config = FollowConfig {
        url: args.postgres_url.clone(),
        publication: pg::TAG_RULES_PUBLICATION.to_string(),
        follow: !args.stop_at_end,
        poll: Duration::from_millis(args.cdc_poll_ms),
    };
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
    let url = args.postgres_url.clone();
    let open = move |worker: usize| Writers::open(&args, worker);
    job.run(started, source, open, move |dataflow, records, writers| {
        let redis = dictionaries(dataflow.scope, redis_config.clone(), &dataflow.lifecycle);
        dataflow.rejected_values(redis.rejected);
        let (messages, dead_letters, other_types) = orders::decode(records);
        let ignored = ignored.clone();
        other_types.inspect(move |_| {
            ignored.fetch_add(1, Ordering::Relaxed);
        });
        dataflow.dead_letters(dead_letters);
        let rules =
            followed_table::<TagRule>(dataflow.scope, rules_config.clone(), &dataflow.lifecycle);
        let mut out = orders::orders(messages, redis.entries, rules);
        if reconcile {
            // Unchanged counters, tags and summary rows cost nothing; a counter whose
            // order's dictionary entry vanished, or a tag whose rule was deleted, while the
            // job was down is deleted.
            let (a, b, c) = (url.clone(), url.clone(), url.clone());
            out.counters = dataflow.reconciled(out.counters, "ExistingCounters", move || {
                tables::existing_counters(&a)
            });
            out.tags =
                dataflow.reconciled(out.tags, "ExistingTags", move || tables::existing_tags(&b));
            out.summary = dataflow.reconciled(out.summary, "ExistingSummary", move || {
                tables::existing_summary(&c)
            });
        }
        writers.attach(dataflow, out)
    })?;
    let ignored = ignored_total.load(Ordering::Relaxed);
    if ignored > 0 {
        info!(
            other_object_types = ignored,
            "ignored messages of other object types"
        );
    }
    Ok(())
}
