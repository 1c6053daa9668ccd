//! The orders job's sinks: one worker's table writers, and which output each one writes.

use std::sync::Arc;

use anyhow::Result;
use dataflows::orders::{
    Counter, EnrichedOrder, OrderEvent, Outputs, SummaryRow, UserTag, VaultRow,
};
use dataflows::{Retention, Time};
use timely::dataflow::Stream;

use super::tables::{
    CounterBatch, PublishedBatch, StgBatch, SummaryBatch, UserTagBatch, VaultBatch,
};
use super::{DDS_PUBLISHER, OrdersArgs, STG_PUBLISHER, TAG_PUBLISHER};
use crate::jobs::kafka_job::Dataflow;
use crate::kafka::KafkaArgs;
use crate::sinks::by_key;
use crate::sinks::outbox::Outbox;
use crate::sinks::postgres::TableWriter;

/// The outbox of writer `worker` of `job` for `topic`, if there is a topic.
fn outbox_for<'t>(
    kafka: &KafkaArgs,
    job: &str,
    worker: usize,
    topic: Option<&'t str>,
) -> Result<Option<(Outbox, &'t str)>> {
    topic
        .map(|topic| Ok((Outbox::new(kafka, job, worker, &[topic])?, topic)))
        .transpose()
}

/// One worker's table writers.
pub(super) struct Writers {
    stg: TableWriter<StgBatch>,
    vault: TableWriter<VaultBatch>,
    counters: TableWriter<CounterBatch>,
    tags: TableWriter<UserTagBatch>,
    summary: TableWriter<SummaryBatch>,
    published: Option<TableWriter<PublishedBatch>>,
}

impl Writers {
    /// Opens worker `worker`'s writers: one Postgres connection each (and an outbox for
    /// each topic the job publishes to).
    pub(super) fn open(args: &OrdersArgs, worker: usize) -> Result<Writers> {
        let url = &args.postgres_url;
        let (stg_topic, dds_topic) = (args.stg_topic.as_deref(), args.dds_topic.as_deref());
        let publish = dds_topic.is_some();
        Ok(Writers {
            stg: TableWriter::new(url, StgBatch, None, "stg sink")?,
            vault: TableWriter::new(url, VaultBatch, None, "dds sink")?,
            counters: TableWriter::new(
                url,
                CounterBatch { publish },
                outbox_for(&args.kafka, DDS_PUBLISHER, worker, dds_topic)?,
                "cdm sink",
            )?,
            tags: TableWriter::new(
                url,
                UserTagBatch {
                    publish: args.tag_topic.is_some(),
                },
                outbox_for(
                    &args.kafka,
                    TAG_PUBLISHER,
                    worker,
                    args.tag_topic.as_deref(),
                )?,
                "tag sink",
            )?,
            summary: TableWriter::new(url, SummaryBatch, None, "orders summary sink")?,
            published: match &args.stg_topic {
                Some(_) => Some(TableWriter::new(
                    url,
                    PublishedBatch {
                        job: STG_PUBLISHER.to_string(),
                    },
                    outbox_for(&args.kafka, STG_PUBLISHER, worker, stg_topic)?,
                    "stg-service-orders sink",
                )?),
                None => None,
            },
        })
    }

    /// Writes the job's outputs: STG events, Data Vault rows, counters, user tags, the
    /// summary, and (with `--stg-topic`) the enriched orders; returns what the state
    /// retains (for progress).
    pub(super) fn attach<'s>(
        self,
        dataflow: &mut Dataflow<'s>,
        out: Outputs<'s>,
    ) -> Stream<'s, Time, Vec<Retention>> {
        let Outputs {
            stg,
            enriched,
            vault,
            counters,
            tags,
            summary,
            retention,
        } = out;
        // One worker owns every row of a hub, link or satellite key, every change of a
        // user's counters (one message per user and batch) and tags, and of an order's
        // version.
        let vault = by_key(vault, VaultRow::route);
        let counters = by_key(counters, Counter::route);
        let tags = by_key(tags, UserTag::route);
        let stg_route = |e: &Arc<OrderEvent>| e.route();
        dataflow.sink(stg, "StgSink", vec![self.stg], Some(stg_route));
        dataflow.sink(vault, "DdsSink", vec![self.vault], Some(VaultRow::route));
        dataflow.sink(
            counters,
            "CdmSink",
            vec![self.counters],
            Some(Counter::route),
        );
        dataflow.sink(tags, "TagSink", vec![self.tags], Some(UserTag::route));
        let summary = by_key(summary, SummaryRow::route);
        dataflow.sink(
            summary,
            "SummarySink",
            vec![self.summary],
            Some(SummaryRow::route),
        );
        if let Some(writer) = self.published {
            let enriched = by_key(enriched, EnrichedOrder::route);
            dataflow.sink(
                enriched,
                "StgTopicSink",
                vec![writer],
                Some(EnrichedOrder::route),
            );
        }
        retention
    }
}
