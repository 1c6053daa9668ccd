//! `dishflow geo`: a messaging app's events (Kafka) + geo.cities (Postgres) → the zone mart,
//! the user mart and friend recommendations (Postgres), kept current.
//!
//! ```text
//!  Kafka geo_events ─► kafka_source ─► geo::events::decode ─┬─► dead letters ─► Kafka *.dlq
//!                                                           └─► events ─┐
//!  Postgres geo.cities ─► followed table (worker 0) ─► city lists ──────┤ zones::zoned
//!                                                                       ▼
//!        zone_mart ─► mart.geo_zones   user_mart ─► mart.geo_users   recommendations ─►
//!                                                          mart.geo_friend_recommendations
//!        users + recommendations ─► city_summary ─► mart.geo_city_summary (for dashboards)
//! ```
//!
//! The marts depend on every event ever read (a late message can move a registration, split
//! a stay or become a position): a restart replays the topic from its first retained offset.
//! The backlog as of startup is read as one step at the start time, like a snapshot.

mod args;
mod cities;
mod tables;

pub use args::GeoArgs;

use std::time::Duration;

use anyhow::Result;
use dataflows::geo::cities::City;
use dataflows::geo::friends::Recommendation;
use dataflows::geo::summary::{CitySummary, city_summary};
use dataflows::geo::user_mart::UserRow;
use dataflows::geo::zone_mart::ZoneRow;
use dataflows::geo::{events, friends, located, user_mart, zone_mart, zones};
use tracing::info;

use self::tables::{CitySummaryBatch, RecommendationBatch, UserBatch, ZoneBatch};
use super::kafka_job::KafkaJob;
use crate::sinks::by_key;
use crate::sinks::outbox::{Outbox, recover_retired};
use crate::sinks::postgres::TableWriter;
use crate::sources::postgres::{FollowConfig, followed_table};
use crate::{pg, positions};

/// The job's name in dishflow's bookkeeping tables (positions).
pub const JOB: &str = "geo";

/// The outbox name of the `--recommendation-topic` publisher.
pub const RECOMMENDATION_PUBLISHER: &str = "geo/recommendation-topic";

/// One worker's table writers.
struct Writers {
    zones: TableWriter<ZoneBatch>,
    users: TableWriter<UserBatch>,
    recommendations: TableWriter<RecommendationBatch>,
    summary: TableWriter<CitySummaryBatch>,
}

/// Runs the geo job until its input ends (`--stop-at-end`) or a signal asks it to stop.
pub fn run(args: GeoArgs) -> Result<()> {
    let job = KafkaJob {
        name: JOB,
        kafka: args.kafka.clone(),
        postgres_url: args.postgres_url.clone(),
        topic: args.event_topic.clone(),
        dead_letter_topic: args.dead_letter_topic.clone(),
        from: args.from.clone(),
        stop_at_end: args.stop_at_end,
        tick: Duration::from_millis(args.tick_ms),
        cluster: args.cluster.clone(),
        ops: args.ops.clone(),
    };
    let url = &args.postgres_url;
    let started =
        job.start(|| pg::roles::prepare(url, &pg::roles::GEO, || pg::setup_geo(url, None)))?;
    if let Some(topic) = &args.recommendation_topic {
        crate::kafka::ensure_topic(&args.kafka, topic, started.partitions)?;
    }
    let publishers = [RECOMMENDATION_PUBLISHER];
    recover_retired(
        &args.kafka,
        &args.postgres_url,
        &publishers,
        args.cluster.peers(),
    )?;
    info!(event_topic = %args.event_topic, recommendation_topic = ?args.recommendation_topic, "geo inputs and outputs");
    // The whole backlog is one step at the start time: the marts are recomputed for every
    // user a round touches, and a day of events touches most users, so rounds would redo
    // nearly all the work once per round (docs/performance.md, W6).
    let source = job.source(&started, started.run.backlog());
    let cities_config = FollowConfig {
        url: args.postgres_url.clone(),
        publication: pg::CITIES_PUBLICATION.to_string(),
        follow: !args.stop_at_end,
        poll: Duration::from_millis(args.cdc_poll_ms),
    };
    // Whether the replay rebuilds the marts from every event (none deleted by retention).
    let reconcile =
        positions::rebuilds_everything(&args.from, &started.run.watermarks, &started.run.committed);
    if !reconcile {
        info!(
            "this start does not replay every event (--from, or events deleted by retention): \
             mart rows are updated, none is removed for events not read"
        );
    }
    let mart_url = args.postgres_url.clone();
    let (url, kafka, topic) = (
        args.postgres_url.clone(),
        args.kafka.clone(),
        args.recommendation_topic.clone(),
    );
    let open = move |worker: usize| -> Result<Writers> {
        let outbox = match topic.as_deref() {
            Some(topic) => Some((
                Outbox::new(&kafka, RECOMMENDATION_PUBLISHER, worker, &[topic])?,
                topic,
            )),
            None => None,
        };
        let publish = outbox.is_some();
        Ok(Writers {
            zones: TableWriter::new(&url, ZoneBatch, None, "zone mart sink")?,
            users: TableWriter::new(&url, UserBatch, None, "user mart sink")?,
            recommendations: TableWriter::new(
                &url,
                RecommendationBatch { publish },
                outbox,
                "recommendations sink",
            )?,
            summary: TableWriter::new(&url, CitySummaryBatch, None, "city summary sink")?,
        })
    };
    job.run(started, source, open, move |dataflow, records, writers| {
        let cities =
            followed_table::<City>(dataflow.scope, cities_config.clone(), &dataflow.lifecycle);
        let (events, dead_letters) = events::decode(records);
        dataflow.dead_letters(dead_letters);
        // An event delivered twice (a producer's retry, a topic written twice) counts once.
        // Handed on a slice at a time: the backlog's events are one batch, and its three
        // consumers would otherwise each get a copy of all of it at once.
        let events = dataflows::paced::distinct(events, "DistinctEvents");
        let lists = zones::city_lists(cities.clone());
        let zoned = zones::zoned(events.clone(), lists.clone());
        let located = located::located(zoned.clone());
        let mut zone_rows = zone_mart::zone_mart(events.clone(), zoned, located.clone());
        let mut user_rows = user_mart::user_mart(located.clone(), lists);
        let mut pairs = friends::recommendations(events, located);
        let mut summary = city_summary(user_rows.clone(), pairs.clone(), cities);
        if reconcile {
            // The marts as the tables hold them, subtracted: unchanged rows cost nothing, and
            // a row the events no longer give (a city edited while the job was down) goes.
            let (a, b, c, d) = (
                mart_url.clone(),
                mart_url.clone(),
                mart_url.clone(),
                mart_url.clone(),
            );
            summary = dataflow.reconciled(summary, "ExistingCitySummary", move || {
                tables::existing_city_summary(&d)
            });
            zone_rows = dataflow.reconciled(zone_rows, "ExistingZones", move || {
                tables::existing_zones(&a)
            });
            user_rows = dataflow.reconciled(user_rows, "ExistingUsers", move || {
                tables::existing_users(&b)
            });
            pairs = dataflow.reconciled(pairs, "ExistingRecommendations", move || {
                tables::existing_recommendations(&c)
            });
        }
        // One worker writes every change of a row's key, in time order.
        let zone_rows = by_key(zone_rows, ZoneRow::route);
        let user_rows = by_key(user_rows, UserRow::route);
        let pairs = by_key(pairs, Recommendation::route);
        dataflow.sink(
            zone_rows,
            "ZoneMartSink",
            vec![writers.zones],
            Some(ZoneRow::route),
        );
        dataflow.sink(
            user_rows,
            "UserMartSink",
            vec![writers.users],
            Some(UserRow::route),
        );
        dataflow.sink(
            pairs,
            "RecommendationsSink",
            vec![writers.recommendations],
            Some(Recommendation::route),
        );
        let summary = by_key(summary, CitySummary::route);
        dataflow.sink(
            summary,
            "CitySummarySink",
            vec![writers.summary],
            Some(CitySummary::route),
        );
        dataflow.replays_everything()
    })
}
