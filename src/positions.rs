//! Source progress: how far a job got, durably, so that a restart resumes there and
//! rebuilds its state by replaying only what it needs.
//!
//! ```text
//!  kafka source ─► tap ─(partition, next offset) at t──────────┐ exchange to worker 0
//!  lifecycle ─────────(worker, oldest offset retained) at t ───┤
//!  every sink ────────frontier: times < F durably written ─────┤
//!                                                              ▼
//!                          progress (worker 0): once all inputs passed F, apply what
//!                          happened before F; upsert dishflow_progress (≤ 1/s, and at the end)
//!        per partition: resume_offset = after the last message stamped before F
//!                       replay_offset = min(resume, oldest message the state retains)
//! ```
//!
//! Sinks hold a capability for every time they have not yet written, so "every input passed
//! F" means every update at a time before F is committed by every worker's sinks. The
//! record is written after the rows it covers, not with them: if the process dies in
//! between, the next run resumes from an older record and re-processes a little more,
//! which the sinks' ledgers turn into no-ops. Progress can lag; it never runs ahead.
//!
//! On restart (`--from resume`), each partition is read from `replay_offset`; the records
//! before `resume_offset` are a replay: stamped with the start time, all at once (so the
//! state they rebuild appears in one step, without intermediate versions), and not
//! dead-lettered again.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dataflows::Retention;
use dataflows::{Diff, RawRecord, Time};
use differential_dataflow::{AsCollection, VecCollection};
use postgres::Client;
use timely::communication::Pull;
use timely::dataflow::Stream;
use timely::dataflow::channels::Message;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{InputHandleCore, OutputBuilder};
use tracing::{debug, info, warn};

use crate::pg;

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

/// Committed progress of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The first offset not yet processed.
    pub resume: i64,
    /// Where a restart must start reading to rebuild the state (≤ `resume`).
    pub replay: i64,
}

/// Reads the committed progress of `job` on `topic`.
pub fn load(client: &mut Client, job: &str, topic: &str) -> Result<HashMap<i32, Committed>> {
    let rows = client
        .query(
            "SELECT partition, resume_offset, replay_offset FROM public.dishflow_progress \
             WHERE job = $1 AND topic = $2",
            &[&job, &topic],
        )
        .context("cannot read public.dishflow_progress")?;
    let mut progress = HashMap::new();
    for row in rows {
        progress.insert(
            row.try_get(0)?,
            Committed {
                resume: row.try_get(1)?,
                replay: row.try_get(2)?,
            },
        );
    }
    Ok(progress)
}

/// Where each partition starts, and up to where its reading is a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartPlan {
    /// Partition → first offset to read.
    pub start: HashMap<i32, i64>,
    /// Partition → offsets before this are a replay of what a previous run processed.
    pub replay_until: HashMap<i32, i64>,
}

/// Resolves `--from` for `topic`: `watermarks` are the (partition, low, high) of every
/// partition, `committed` the job's progress.
pub fn plan(
    from: &StartFrom,
    topic: &str,
    watermarks: &[(i32, i64, i64)],
    committed: &HashMap<i32, Committed>,
) -> Result<StartPlan> {
    let mut plan = StartPlan::default();
    if let StartFrom::Offsets(offsets) = from {
        for (t, p, _) in offsets {
            if t != topic {
                bail!("--from names topic {t}, but this job reads {topic}");
            }
            if !watermarks.iter().any(|(q, _, _)| q == p) {
                bail!("--from names partition {p} of {topic}, which does not exist");
            }
        }
    }
    for &(partition, low, high) in watermarks {
        let start = match from {
            StartFrom::Earliest => low,
            StartFrom::Latest => high,
            StartFrom::Offsets(offsets) => offsets
                .iter()
                .find(|(_, p, _)| *p == partition)
                .map_or(low, |(_, _, o)| *o),
            StartFrom::Resume => match committed.get(&partition) {
                None => low,
                Some(c) => {
                    plan.replay_until.insert(partition, c.resume);
                    c.replay
                }
            },
        };
        plan.start.insert(partition, start);
    }
    Ok(plan)
}

/// How a job's run starts on its input topic: the topic's partitions and watermarks, the
/// job's committed progress, the resolved `--from`, and the run's start time.
pub struct RunStart {
    /// Job name (key of the progress rows).
    pub job: String,
    /// Input topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: Vec<i32>,
    /// (partition, low, high) at startup.
    pub watermarks: Vec<(i32, i64, i64)>,
    /// The job's committed progress on the topic.
    pub committed: HashMap<i32, Committed>,
    /// Where each partition starts, and up to where reading is a replay.
    pub plan: StartPlan,
    /// The run's start time (the logical time of replayed records and snapshots).
    pub start_time: Time,
}

impl RunStart {
    /// Reads what a run of `job` on `topic` needs to know before it starts (the topic must
    /// exist), resolving `from`.
    pub fn load(
        kafka: &crate::kafka::KafkaArgs,
        url: &str,
        job: &str,
        topic: &str,
        from: &StartFrom,
    ) -> Result<Self> {
        let partitions = crate::kafka::topic_partitions(kafka, topic)?;
        let watermarks = crate::kafka::watermarks(kafka, topic)?;
        let committed = load(&mut pg::connect(url)?, job, topic)?;
        let plan = plan(from, topic, &watermarks, &committed)?;
        Ok(RunStart {
            job: job.to_string(),
            topic: topic.to_string(),
            partitions,
            watermarks,
            committed,
            plan,
            start_time: crate::clock::wall_clock_ms(),
        })
    }

    /// The Kafka source of the run; records before `hold_until` (per partition) are read as
    /// one step at the start time.
    pub fn source(
        &self,
        kafka: &crate::kafka::KafkaArgs,
        hold_until: HashMap<i32, i64>,
        stop_at_end: bool,
    ) -> crate::sources::kafka::KafkaSourceConfig {
        use crate::kafka::consumer::Position;
        crate::sources::kafka::KafkaSourceConfig {
            kafka: kafka.clone(),
            topic: self.topic.clone(),
            partitions: self.partitions.clone(),
            start: self
                .plan
                .start
                .iter()
                .map(|(&p, &o)| (p, Position::Offset(o)))
                .collect(),
            replay_until: hold_until,
            stop_at_end,
            round_records: None,
        }
    }

    /// Per partition, the end of the backlog as of startup: the high watermark, or where
    /// the replay ends if that is later.
    pub fn backlog(&self) -> HashMap<i32, i64> {
        let replay_until = &self.plan.replay_until;
        (self.watermarks.iter())
            .map(|&(p, _, high)| (p, high.max(replay_until.get(&p).copied().unwrap_or(0))))
            .collect()
    }

    /// Where the run records its progress.
    pub fn progress(&self, url: &str) -> ProgressConfig {
        ProgressConfig {
            url: url.to_string(),
            job: self.job.clone(),
            topic: self.topic.clone(),
            start: self.plan.start.clone(),
            start_time: self.start_time,
            replay_all: false,
        }
    }
}

/// Whether a start with `from` reads every message the job's state depends on: from the
/// beginning of a topic that retention has not shortened, or resumed with every partition's
/// replay offset still in the topic. Only then is the state at the start time complete (and
/// an output row that it lacks really gone).
pub fn rebuilds_everything(
    from: &StartFrom,
    watermarks: &[(i32, i64, i64)],
    committed: &HashMap<i32, Committed>,
) -> bool {
    watermarks.iter().all(|(partition, low, _)| match from {
        StartFrom::Earliest => *low == 0,
        StartFrom::Resume => committed
            .get(partition)
            .map_or(*low == 0, |c| c.replay >= *low),
        StartFrom::Latest | StartFrom::Offsets(_) => false,
    })
}

/// A stream of (partition, offset after the last record read) facts.
pub type Positions<'s> = Stream<'s, Time, Vec<(i32, i64)>>;

/// Passes `raw` through unchanged and reports, per batch, (partition, offset after the last
/// record) for every partition in it.
pub fn tap_positions<'s>(
    raw: VecCollection<'s, Time, RawRecord, Diff>,
) -> (VecCollection<'s, Time, RawRecord, Diff>, Positions<'s>) {
    let mut builder = OperatorBuilder::new("Positions".to_owned(), raw.inner.scope());
    let mut input = builder.new_input(raw.inner, Pipeline);
    let (records_output, records) = builder.new_output::<Vec<(RawRecord, Time, Diff)>>();
    let (positions_output, positions) = builder.new_output::<Vec<(i32, i64)>>();
    let mut records_output = OutputBuilder::from(records_output);
    let mut positions_output = OutputBuilder::from(positions_output);
    builder.build(move |_| {
        move |_frontiers| {
            let mut records_handle = records_output.activate();
            let mut positions_handle = positions_output.activate();
            input.for_each_stamp(|capability, data| {
                let mut next: BTreeMap<i32, i64> = BTreeMap::new();
                let mut records = records_handle.session(&capability);
                for record in data.flat_map(|d| d.drain(..)) {
                    let slot = next.entry(record.0.partition).or_insert(0);
                    *slot = (*slot).max(record.0.offset + 1);
                    records.give(record);
                }
                drop(records);
                positions_handle
                    .session(&capability)
                    .give_iterator(next.into_iter());
            });
        }
    });
    (records.as_collection(), positions)
}

/// Where the progress record goes.
#[derive(Clone, Debug)]
pub struct ProgressConfig {
    /// Postgres URL.
    pub url: String,
    /// Job name (key of the rows).
    pub job: String,
    /// Source topic.
    pub topic: String,
    /// Resume offsets at startup (every partition).
    pub start: HashMap<i32, i64>,
    /// The job's start time: records replayed are stamped with it.
    pub start_time: Time,
    /// The job's state depends on every record ever read (it reports no retention): a
    /// restart replays every partition from its first retained offset.
    pub replay_all: bool,
}

/// The progress state of worker 0.
struct Tracker {
    resume: HashMap<i32, i64>,
    retained: HashMap<usize, Vec<(i32, i64)>>,
    written: HashMap<i32, Committed>,
    replay_all: bool,
}

impl Tracker {
    /// The record as of the facts applied so far.
    fn record(&self) -> HashMap<i32, Committed> {
        let mut record: HashMap<i32, Committed> = self
            .resume
            .iter()
            .map(|(&p, &resume)| {
                (
                    p,
                    Committed {
                        resume,
                        replay: resume,
                    },
                )
            })
            .collect();
        for (partition, offset) in self.retained.values().flatten() {
            if let Some(c) = record.get_mut(partition) {
                c.replay = c.replay.min(*offset);
            }
        }
        if self.replay_all {
            // Offset 0, clamped by the source to what the partition still holds.
            record.values_mut().for_each(|c| c.replay = 0);
        }
        record
    }
}

/// Attaches the progress tracker: `positions` from [`tap_positions`], `retention` from the
/// job's state, `written` the sinks' frontier streams.
pub fn track<'s>(
    positions: Positions<'s>,
    retention: Stream<'s, Time, Vec<Retention>>,
    written: Vec<Stream<'s, Time, Vec<()>>>,
    config: ProgressConfig,
) {
    let scope = positions.scope();
    let active = scope.index() == 0;
    let mut builder = OperatorBuilder::new("Progress".to_owned(), scope);
    let mut positions_input = builder.new_input(positions, Exchange::new(|_: &(i32, i64)| 0));
    let mut retention_input = builder.new_input(retention, Exchange::new(|_: &Retention| 0));
    for stream in written {
        builder.new_input(stream, Pipeline);
    }
    builder.build(move |_| {
        let mut tracker = Tracker {
            resume: config.start.clone(),
            retained: HashMap::new(),
            written: HashMap::new(),
            replay_all: config.replay_all,
        };
        let mut pending_positions: BTreeMap<Time, Vec<(i32, i64)>> = BTreeMap::new();
        let mut pending_retention: BTreeMap<Time, Vec<Retention>> = BTreeMap::new();
        let mut client: Option<Client> = None;
        let mut last_write: Option<Instant> = None;
        let mut last_warning: Option<Instant> = None;
        let mut applied_past_start = false;
        move |frontiers| {
            stash(&mut positions_input, &mut pending_positions);
            stash(&mut retention_input, &mut pending_retention);
            // What every sink wrote: the least time of the sinks' frontiers (every worker
            // sees the cluster's frontiers; each process reports its own metrics).
            let written = frontiers[2..]
                .iter()
                .filter_map(|f| f.frontier().iter().min().copied())
                .min();
            crate::metrics::metrics().output_frontier(written);
            if !active {
                return;
            }
            // Every input (sources' facts and sinks' writes) has passed the frontier.
            let done = frontiers.iter().all(|f| f.is_empty());
            let complete = |t: &Time| frontiers.iter().all(|f| !f.less_equal(t));
            for (partition, next) in take_complete(&mut pending_positions, complete) {
                let slot = tracker.resume.entry(partition).or_insert(next);
                *slot = (*slot).max(next);
            }
            for (worker, retained) in take_complete(&mut pending_retention, complete) {
                tracker.retained.insert(worker, retained);
            }
            // Nothing is recorded before the replay (stamped at the start time) is through
            // the state: until then the retention reports are incomplete.
            applied_past_start |= complete(&config.start_time);
            if !applied_past_start {
                return;
            }
            let due = done || last_write.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if !due {
                return;
            }
            let record = tracker.record();
            let changed: Vec<(i32, Committed)> = record
                .iter()
                .filter(|(p, c)| tracker.written.get(p) != Some(c))
                .map(|(p, c)| (*p, *c))
                .collect();
            if changed.is_empty() {
                return;
            }
            match write(&mut client, &config, &changed) {
                Ok(()) => {
                    last_write = Some(Instant::now());
                    tracker.written.extend(changed.iter().copied());
                    debug!(job = %config.job, ?changed, "progress committed");
                    if done {
                        info!(job = %config.job, topic = %config.topic, "progress committed at the end of the run");
                    }
                }
                Err(error) => {
                    client = None;
                    if last_warning.is_none_or(|t| t.elapsed() >= crate::retry::LOG_EVERY) {
                        last_warning = Some(Instant::now());
                        warn!(job = %config.job, error = format!("{error:#}"), "cannot commit progress (will retry; a restart now replays more)");
                    }
                }
            }
        }
    });
}

/// Moves what `input` received into `pending`, by time.
fn stash<D, P>(input: &mut InputHandleCore<Time, Vec<D>, P>, pending: &mut BTreeMap<Time, Vec<D>>)
where
    P: Pull<Message<Time, Vec<D>>>,
{
    input.for_each(|capability, data| {
        let time = capability.least().copied().unwrap_or_default();
        pending.entry(time).or_default().append(data);
    });
}

/// Removes and returns, in time order, the data of every time `complete` says is complete.
fn take_complete<D>(
    pending: &mut BTreeMap<Time, Vec<D>>,
    complete: impl Fn(&Time) -> bool,
) -> Vec<D> {
    let mut taken = Vec::new();
    while let Some(entry) = pending.first_entry() {
        if !complete(entry.key()) {
            break;
        }
        taken.append(&mut entry.remove());
    }
    taken
}

/// Upserts the changed partitions' progress.
fn write(
    client: &mut Option<Client>,
    config: &ProgressConfig,
    changed: &[(i32, Committed)],
) -> Result<()> {
    if client.is_none() {
        *client = Some(pg::connect(&config.url)?);
    }
    let Some(client) = client.as_mut() else {
        bail!("not connected");
    };
    let partitions: Vec<i32> = changed.iter().map(|(p, _)| *p).collect();
    let resume: Vec<i64> = changed.iter().map(|(_, c)| c.resume).collect();
    let replay: Vec<i64> = changed.iter().map(|(_, c)| c.replay).collect();
    client.execute(
        "INSERT INTO public.dishflow_progress AS p \
             (job, topic, partition, resume_offset, replay_offset) \
         SELECT $1, $2, * FROM unnest($3::int4[], $4::int8[], $5::int8[]) \
         ON CONFLICT (job, topic, partition) DO UPDATE SET \
             resume_offset = excluded.resume_offset, \
             replay_offset = excluded.replay_offset, updated_at = now()",
        &[&config.job, &config.topic, &partitions, &resume, &replay],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_replays_from_the_committed_replay_offset() -> Result<()> {
        let marks = [(0, 0, 100), (1, 5, 50), (2, 0, 0)];
        let committed = HashMap::from([(
            0,
            Committed {
                resume: 80,
                replay: 30,
            },
        )]);
        let plan = plan(&StartFrom::Resume, "t", &marks, &committed)?;
        assert_eq!(plan.start, HashMap::from([(0, 30), (1, 5), (2, 0)]));
        assert_eq!(plan.replay_until, HashMap::from([(0, 80)]));
        let plan = plan_for("latest", &marks, &committed)?;
        assert_eq!(plan.start, HashMap::from([(0, 100), (1, 50), (2, 0)]));
        assert!(plan.replay_until.is_empty());
        let plan = plan_for("t:1:7", &marks, &committed)?;
        assert_eq!(plan.start, HashMap::from([(0, 0), (1, 7), (2, 0)]));
        assert!(plan_for("other:1:7", &marks, &committed).is_err());
        assert!(plan_for("t:9:7", &marks, &committed).is_err());
        Ok(())
    }

    fn plan_for(
        from: &str,
        marks: &[(i32, i64, i64)],
        committed: &HashMap<i32, Committed>,
    ) -> Result<StartPlan> {
        let from: StartFrom = from.parse().map_err(anyhow::Error::msg)?;
        plan(&from, "t", marks, committed)
    }

    #[test]
    fn only_a_full_replay_rebuilds_everything() {
        let committed = HashMap::from([(
            0,
            Committed {
                resume: 80,
                replay: 30,
            },
        )]);
        let marks = [(0, 0, 100), (1, 0, 50)];
        assert!(rebuilds_everything(&StartFrom::Resume, &marks, &committed));
        assert!(rebuilds_everything(
            &StartFrom::Earliest,
            &marks,
            &committed
        ));
        assert!(!rebuilds_everything(&StartFrom::Latest, &marks, &committed));
        // Retention deleted messages the state depends on (partition 0 starts at 40 now).
        let shortened = [(0, 40, 100), (1, 0, 50)];
        assert!(!rebuilds_everything(
            &StartFrom::Resume,
            &shortened,
            &committed
        ));
        assert!(!rebuilds_everything(
            &StartFrom::Earliest,
            &shortened,
            &committed
        ));
        // Partition 1 has no progress and lost its first messages.
        let lost = [(0, 0, 100), (1, 5, 50)];
        assert!(!rebuilds_everything(&StartFrom::Resume, &lost, &committed));
    }

    #[test]
    fn the_record_replays_from_the_oldest_retained_message() {
        let mut tracker = Tracker {
            resume: HashMap::from([(0, 100), (1, 40)]),
            retained: HashMap::from([(0, vec![(0, 70), (1, 39)]), (1, vec![(0, 60)])]),
            written: HashMap::new(),
            replay_all: false,
        };
        let record = tracker.record();
        assert_eq!(
            record[&0],
            Committed {
                resume: 100,
                replay: 60
            }
        );
        assert_eq!(
            record[&1],
            Committed {
                resume: 40,
                replay: 39
            }
        );
        // A state that depends on every record: replay from the start.
        tracker.replay_all = true;
        assert_eq!(tracker.record()[&0].replay, 0);
        assert_eq!(tracker.record()[&1].resume, 40);
    }
}
