//! The skeleton of every job driven by a Kafka topic: what is the same for promos, orders
//! and any job after them, so that a job's file holds only its own wiring.
//!
//! ```text
//!  startup (before any worker):  signals, timely config, metrics endpoint, the job's schema,
//!                                committed positions → start plan, dead-letter topic
//!  every worker:  open the job's writers ─┐ (a failure is fatal, reported once)
//!                                         ▼
//!   Kafka topic ─► kafka_source ─► tap_positions ─► the job's dataflow ─► the job's sinks
//!                                      │                 │ dead letters (replays dropped)
//!                                      │                 ▼
//!                                      │          dead-letter sink ─► Kafka *.dlq
//!                                      │   refused rows, other sources' rejected values
//!                                      │          ─► rejections ledger + outbox ─► *.dlq
//!                                      ▼                 every sink's frontier
//!                      positions::track ◄───────────────┘ + the state's retention
//!                      completion_barrier (a bounded run ends when every worker is done)
//! ```
//!
//! A job describes itself with a [`KafkaJob`], checks what it needs with [`KafkaJob::start`],
//! and runs with [`KafkaJob::run`], giving a function that opens one worker's writers and
//! one that builds its dataflow on a [`Dataflow`].

use std::time::Duration;

use anyhow::Result;
use dataflows::{DeadLetter, Diff, RawRecord, RejectedValue, Retention, Time};
use differential_dataflow::VecCollection;
use timely::dataflow::{Scope, Stream};
use tracing::info;

use crate::cluster::ClusterArgs;
use crate::control::{Completion, Lifecycle, completion_barrier, install_signal_handlers};
use crate::kafka::KafkaArgs;
use crate::metrics::OpsArgs;
use crate::positions::{self, RunStart, StartFrom};
use crate::sinks::isolate::Refusals;
use crate::sinks::kafka::{DeadLetterEncoder, KafkaWriter};
use crate::sinks::outbox::recover_retired;
use crate::sinks::rejects::{Rejects, ledger_job};
use crate::sinks::{SinkWriter, Spread, sink};
use crate::sources::kafka::{KafkaSourceConfig, kafka_source};
use crate::sources::snapshot::snapshot;
use crate::{cluster, kafka};

/// How a job whose state is rebuilt from its topic (orders) reads the backlog it finds at
/// startup.
#[derive(Debug, Clone, clap::Args)]
pub struct RoundArgs {
    /// The backlog (messages up to each partition's end as of startup that no earlier run
    /// processed) is read in rounds of this many messages per worker, each at its own
    /// logical time and written as it completes: memory follows the state, not the
    /// backlog. While the job catches up, readers see the outputs move round by round
    /// (docs/architecture.md). A replay after a restart (messages an earlier run processed,
    /// read again to rebuild the state) is one step at the start time.
    #[arg(long, env = "DISHFLOW_ROUND_RECORDS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub round_records: u64,
}

/// What every Kafka-driven job is configured with (its own flags aside).
#[derive(Clone, Debug)]
pub struct KafkaJob {
    /// The job's name: in logs, metrics, and dishflow's bookkeeping tables.
    pub name: &'static str,
    /// Kafka connection.
    pub kafka: KafkaArgs,
    /// Postgres: the job's tables, positions, ledgers and outboxes.
    pub postgres_url: String,
    /// The topic the job reads.
    pub topic: String,
    /// Where undecodable records and refused rows go (created if missing).
    pub dead_letter_topic: String,
    /// Where reading starts.
    pub from: StartFrom,
    /// Bounded run: stop once the topic is read to its end as of startup.
    pub stop_at_end: bool,
    /// How often idle sources advance logical time.
    pub tick: Duration,
    /// Timely cluster.
    pub cluster: ClusterArgs,
    /// Metrics and health endpoints, drain timeout.
    pub ops: OpsArgs,
}

/// What the startup checks found, for the job to plan its run with.
pub struct Started {
    /// Where each partition starts, the committed positions, the start time.
    pub run: RunStart,
    /// Partitions of the topic: the partition count of topics the job creates.
    pub partitions: i32,
    config: timely::Config,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl KafkaJob {
    /// Startup checks, before any worker starts, so that a bad URL or an unreachable server
    /// ends the program with one line: signal handlers, the cluster's configuration, the
    /// metrics endpoint, `setup` (the job's schema), the topic and the job's committed
    /// positions on it, the dead-letter topic, and the dead letters of an earlier run that
    /// were committed but not confirmed sent.
    pub fn start(&self, setup: impl FnOnce() -> Result<()>) -> Result<Started> {
        let shutdown = install_signal_handlers(Duration::from_secs(self.ops.drain_timeout))?;
        let config = cluster::timely_config(&self.cluster)?;
        crate::metrics::start(self.name, &self.ops, usize::from(self.cluster.workers))?;
        setup()?;
        let run = RunStart::load(
            &self.kafka,
            &self.postgres_url,
            self.name,
            &self.topic,
            &self.from,
        )?;
        let partitions = i32::try_from(run.partitions.len())?;
        kafka::ensure_topic(&self.kafka, &self.dead_letter_topic, partitions)?;
        recover_retired(
            &self.kafka,
            &self.postgres_url,
            &[&ledger_job(self.name)],
            self.cluster.peers(),
        )?;
        info!(
            postgres = %crate::redact::url(&self.postgres_url),
            brokers = %self.kafka.brokers,
            topic = %self.topic,
            partitions,
            bounded = self.stop_at_end,
            from = ?self.from,
            start = ?run.plan.start,
            replay_until = ?run.plan.replay_until,
            "starting {}",
            self.name
        );
        Ok(Started {
            run,
            partitions,
            config,
            shutdown,
        })
    }

    /// The Kafka source of the run: records before `hold_until` (per partition) are read as
    /// one step at the start time (a replay, or a backlog read like a snapshot).
    pub fn source(
        &self,
        started: &Started,
        hold_until: std::collections::HashMap<i32, i64>,
    ) -> KafkaSourceConfig {
        started
            .run
            .source(&self.kafka, hold_until, self.stop_at_end)
    }

    /// The Kafka source of a run that replays at the start time what an earlier run
    /// processed and reads the rest of the backlog in `rounds`.
    pub fn source_in_rounds(&self, started: &Started, rounds: &RoundArgs) -> KafkaSourceConfig {
        let mut source = self.source(started, started.run.plan.replay_until.clone());
        source.round_records = Some(usize::try_from(rounds.round_records).unwrap_or(usize::MAX));
        source
    }

    /// Runs the job on every worker until its input ends (bounded run) or a signal stops it.
    /// On each worker, `open(worker index)` opens the job's writers (an error is fatal), then
    /// `build` wires the job's dataflow from the topic's records to its sinks and returns
    /// the retention of its state (how far back a restart must replay).
    pub fn run<W, O, B>(
        self,
        started: Started,
        source: KafkaSourceConfig,
        open: O,
        build: B,
    ) -> Result<()>
    where
        O: Fn(usize) -> Result<W> + Send + Sync + 'static,
        B: for<'s> Fn(
                &mut Dataflow<'s>,
                VecCollection<'s, Time, RawRecord, Diff>,
                W,
            ) -> Stream<'s, Time, Vec<Retention>>
            + Send
            + Sync
            + 'static,
    {
        let Started {
            run,
            config,
            shutdown,
            ..
        } = started;
        let progress = run.progress(&self.postgres_url);
        let replay_until = run.plan.replay_until.clone();
        let start = run.start_time;
        let report = crate::logs::Progress::start(self.name, self.stop_at_end);
        // An idle job's frontier moves once per tick: a timeout shorter than a few ticks
        // would call every idle moment a stall.
        let mut timeout = Duration::from_secs(self.ops.stall_timeout);
        if timeout < self.tick * 3 {
            timeout = self.tick * 3;
            tracing::warn!(
                stall_timeout_s = timeout.as_secs_f64(),
                "--stall-timeout raised to three ticks (--tick-ms)"
            );
        }
        let watch = crate::stall::Watch {
            job: self.name.to_string(),
            timeout,
            process: usize::from(self.cluster.process),
            addresses: self.cluster.addresses()?,
        };
        let job = self;
        super::run_workers(config, shutdown, Some(watch), move |worker, control| {
            let index = worker.index();
            let opened = (|| -> Result<_> {
                let dead_letters = KafkaWriter::new(
                    &job.kafka,
                    &job.dead_letter_topic,
                    DeadLetterEncoder::new(&job.topic),
                )?;
                let rejects = Rejects::new(
                    &job.kafka,
                    &job.postgres_url,
                    job.name,
                    index,
                    &job.dead_letter_topic,
                )?;
                Ok((open(index)?, dead_letters, rejects))
            })();
            let (writers, dead_letter_writer, rejects) = match opened {
                Ok(opened) => opened,
                Err(error) => return control.fail(error),
            };
            let lifecycle = Lifecycle {
                control,
                completion: Completion::default(),
                start,
                tick: job.tick,
            };
            worker.dataflow_named::<Time, _, _>(job.name, |scope| {
                let records =
                    kafka_source(scope, &source_name(job.name), source.clone(), &lifecycle);
                let (records, read) = positions::tap_positions(records);
                let mut dataflow = Dataflow {
                    scope,
                    lifecycle: lifecycle.clone(),
                    refusals: Refusals { rejects },
                    replay_until: replay_until.clone(),
                    dead_letter_writer: Some(dead_letter_writer),
                    written: Vec::new(),
                    replay_all: false,
                    follow: !job.stop_at_end,
                };
                let retention = build(&mut dataflow, records, writers);
                let progress = positions::ProgressConfig {
                    replay_all: dataflow.replay_all,
                    ..progress.clone()
                };
                positions::track(read, retention, dataflow.written, progress);
                completion_barrier(scope, &lifecycle);
            });
        })?;
        report.finish();
        Ok(())
    }
}

/// The name of a job's Kafka source operator (in metrics): `promos` → `PromosSource`.
fn source_name(job: &str) -> String {
    let mut chars = job.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase());
    first
        .into_iter()
        .chain(chars)
        .chain("Source".chars())
        .collect()
}

/// One worker's dataflow under construction: the job adds its sources and sinks here.
pub struct Dataflow<'s> {
    /// The worker's dataflow scope.
    pub scope: Scope<'s, Time>,
    /// Control, completion, start time and tick, for the job's other sources.
    pub lifecycle: Lifecycle,
    /// Where the job's sinks send the updates their tables refuse.
    pub refusals: Refusals,
    replay_until: std::collections::HashMap<i32, i64>,
    dead_letter_writer: Option<KafkaWriter<DeadLetterEncoder>>,
    written: Vec<Stream<'s, Time, Vec<()>>>,
    replay_all: bool,
    /// An unbounded run: one-time sources stay open (empty) instead of finishing.
    follow: bool,
}

impl<'s> Dataflow<'s> {
    /// Writes `collection`'s changes with `writers` (several: split by `key`; every change
    /// of a key goes through the same one, in time order). Updates a table refuses are
    /// dead-lettered. The run's positions wait for what this sink has not written yet.
    pub fn sink<D, W>(
        &mut self,
        collection: VecCollection<'s, Time, D, Diff>,
        name: &str,
        writers: Vec<W>,
        key: Option<fn(&D) -> u64>,
    ) where
        D: differential_dataflow::Data + serde::Serialize + Send,
        W: SinkWriter<D>,
    {
        self.sink_spread(collection, name, writers, key, Spread::default());
    }

    /// [`Self::sink`], with several `writers` all in use when `spread` says (see
    /// [`Spread`]).
    pub fn sink_spread<D, W>(
        &mut self,
        collection: VecCollection<'s, Time, D, Diff>,
        name: &str,
        writers: Vec<W>,
        key: Option<fn(&D) -> u64>,
        spread: Spread,
    ) where
        D: differential_dataflow::Data + serde::Serialize + Send,
        W: SinkWriter<D>,
    {
        let written = sink(
            collection,
            name,
            writers,
            key,
            spread,
            Some(self.refusals.clone()),
            &self.lifecycle,
        );
        self.written.push(written);
    }

    /// The job's state depends on every record it ever read: a restart replays every
    /// partition from its first retained offset. Returns the (empty) retention stream the
    /// job's `build` then returns.
    pub fn replays_everything(&mut self) -> Stream<'s, Time, Vec<Retention>> {
        self.replay_all = true;
        timely::dataflow::operators::generic::operator::empty(self.scope)
    }

    /// `collection` minus the rows its table holds when the run starts (`existing`, read
    /// once, by worker 0, at the start time), for a run that rebuilds the job's whole state
    /// at its start time (see [`positions::rebuilds_everything`]): the sink then writes the
    /// difference — an unchanged row costs nothing, and a row the state no longer produces
    /// (its input changed while the job was down) is deleted.
    pub fn reconciled<D>(
        &self,
        collection: VecCollection<'s, Time, D, Diff>,
        name: &str,
        existing: impl FnOnce() -> Result<Vec<D>> + 'static,
    ) -> VecCollection<'s, Time, D, Diff>
    where
        D: Clone + 'static,
    {
        let rows = snapshot(self.scope, name, self.follow, &self.lifecycle, move || {
            Ok(existing()?.into_iter().map(|row| (row, -1)).collect())
        });
        collection.concat(rows)
    }

    /// Sends the values another source of the job rejected (a Redis value that is not a
    /// dictionary entry) to the dead-letter topic, each once across restarts (the ledger of
    /// `sinks::rejects`: a restart reads the same value again).
    pub fn rejected_values(&mut self, rejected: VecCollection<'s, Time, RejectedValue, Diff>) {
        let written = sink(
            rejected,
            "RejectedValuesSink",
            vec![self.refusals.rejects.clone()],
            None,
            Spread::default(),
            None,
            &self.lifecycle,
        );
        self.written.push(written);
    }

    /// Sends the records the job could not decode to the dead-letter topic, except those of
    /// a replay (the run that first read them sent them).
    ///
    /// # Panics
    /// When called twice: a job has one stream of dead letters.
    pub fn dead_letters(&mut self, dead_letters: VecCollection<'s, Time, DeadLetter, Diff>) {
        let replay_until = self.replay_until.clone();
        let fresh = dead_letters.filter(move |dead| {
            replay_until
                .get(&dead.record.partition)
                .is_none_or(|&until| dead.record.offset >= until)
        });
        let writer = self
            .dead_letter_writer
            .take()
            .expect("one stream of dead letters per job");
        let written = sink(
            fresh,
            "DeadLetterSink",
            vec![writer],
            None,
            Spread::default(),
            None,
            &self.lifecycle,
        );
        self.written.push(written);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn source_names_are_the_job_in_camel_case() {
        assert_eq!(super::source_name("promos"), "PromosSource");
        assert_eq!(super::source_name("orders"), "OrdersSource");
    }
}
