//! Capture-based sinks: write the consolidated changes of a collection, time by time.
//!
//! ```text
//!  collection ──► [sink operator] buffers (data, time, diff) by time
//!                      │ when the input frontier has passed t (and t ≤ the run's horizon,
//!                      │ once one is agreed), the updates of every such t are consolidated
//!                      ▼ one batch in flight at a time; what completes meanwhile waits
//!                 writer thread: SinkWriter::write(&[(data, t, diff)])  — in time order,
//!                      │         returns once durable
//!                      ├──► "written" ──► operator releases the batch's times
//!                      └──► idle 200 ms, or end of run: SinkWriter::flush() (process waits)
//! ```
//!
//! Every worker writes the share of the collection it holds (no exchange). A writer sees only
//! complete times, so an insertion and a retraction of the same record at the same time have
//! cancelled out, and within a time retractions come before insertions (an upsert sink can
//! write a replacement as "delete old, put new"). The write runs on the sink's own thread,
//! so the worker goes on computing (and other sinks write) meanwhile; while a batch is
//! being written, the next one grows, so a busy sink writes fewer, larger batches. A batch
//! that Postgres refuses for the data in it is written without the refused updates, which
//! are dead-lettered (see [`isolate`]); any other write error is fatal: it is reported
//! through [`Control`] and the process exits non-zero instead of silently losing output.
//!
//! **Batch size.** A batch holds at most about [`MAX_BATCH`] updates, so that a large output
//! (a startup backlog: millions of updates at one or a few times) is written as a pipeline
//! — the writer sends one batch's messages while the next batch's transaction runs — and
//! the writer's working set stays bounded. Whole times are never split, except for a sink
//! given a *key* (the writer's identity of a row): then a time with more updates is split by
//! a hash of the key into parts of about that size, each its own batch, every update of a
//! key in the same part, retractions before insertions. The time is released once all its
//! parts are written.
//!
//! **Lanes.** A sink with a key may have several writers, each on its own thread (and, for
//! the Postgres writers, its own connection and transactions): every update goes to the
//! writer its key's hash picks, so all changes of a key are written by one writer, in time
//! order, while the writers work in parallel. A time is released once every lane has
//! written its share. One Postgres connection is bound by one server process; the promos
//! job's 2M-draft backlog took 45 s with one connection and 35 s with two.

pub mod isolate;
pub mod kafka;
pub mod outbox;
pub mod postgres;
pub mod rejects;

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};

use anyhow::Result;
use dataflows::{Diff, Time};
use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{CapabilitySet, Operator};
use timely::scheduling::SyncActivator;
use tracing::info;

use self::isolate::{Refusals, write_isolating};
use crate::control::{Control, Lifecycle};

/// Writes complete, consolidated updates somewhere durable.
pub trait SinkWriter<D>: Send + 'static {
    /// Writes `updates`, sorted by time and within a time by diff (retractions first). Must
    /// return only when the updates are durable, and an error if any of them is not.
    fn write(&mut self, updates: &[(D, Time, Diff)]) -> Result<()>;

    /// Finishes what the writes left in progress (the outbox's writers confirm the last
    /// batch's deliveries and delete its outbox rows). Called when no batch came for
    /// [`IDLE_FLUSH`], and once more at the end of the run, before the process exits.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    /// The sink's metrics, given once before the first write, for a writer that learns of
    /// deliveries after `write` returns (an outbox) to record their latency.
    fn delivery_metrics(&mut self, _metrics: crate::metrics::SinkMetrics) {}
}

/// About the most updates in one batch (see the module docs).
pub const MAX_BATCH: usize = 100_000;

/// How long a writer thread waits for the next batch before flushing its writer.
pub const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

/// A batch handed to the writer thread.
type Batch<D> = Vec<(D, Time, Diff)>;

/// How a writer thread isolates updates Postgres refuses: the sink's key, and where the
/// refused updates go (none: a refusal stops the job).
type Isolation<D> = (Option<fn(&D) -> u64>, Option<Refusals>);

/// The operator's ends of a writer thread: batches to write, outcomes of the writes.
type WriterThread<D> = (Sender<Batch<D>>, Receiver<Result<()>>);

/// Starts the writer thread of sink `name`: it writes each batch it receives and reports
/// the outcome, waking the operator; it flushes the writer when idle and when the operator
/// is gone (the end of the run: the process waits for the thread, see
/// [`Control::register_thread`]; a failed final flush is fatal).
fn writer_thread<D, W>(
    name: &str,
    mut writer: W,
    (key, refusals): Isolation<D>,
    wake: SyncActivator,
    control: &Control,
) -> Result<WriterThread<D>>
where
    D: Clone + serde::Serialize + Send + 'static,
    W: SinkWriter<D>,
{
    let (batches, batch_rx) = channel::<Batch<D>>();
    let (done_tx, done) = channel::<Result<()>>();
    let sink = name.to_string();
    let fatal = control.clone();
    let metrics = crate::metrics::metrics().sink(name);
    writer.delivery_metrics(metrics.clone());
    let handle = std::thread::Builder::new()
        .name(format!("sink-{name}"))
        .spawn(move || {
            let mut unflushed = false;
            loop {
                match batch_rx.recv_timeout(IDLE_FLUSH) {
                    Ok(batch) => {
                        let started = std::time::Instant::now();
                        // A write waiting on Postgres or Kafka is not a stall (`stall`).
                        let _busy = crate::metrics::metrics().busy_guard();
                        let outcome = match &refusals {
                            Some(refusals) => {
                                let mut dead = Vec::new();
                                write_isolating(
                                    &batch,
                                    &|d: &D| key.map_or(0, |key| key(d)),
                                    &mut |b| writer.write(b),
                                    isolate::refused_data,
                                    &mut dead,
                                )
                                .and_then(|()| refusals.dead_letter(&sink, &dead))
                            }
                            None => writer.write(&batch),
                        }
                        .map_err(isolate::explain);
                        if outcome.is_ok() {
                            metrics.written(batch.len(), started.elapsed());
                            metrics.written_at(batch.iter().map(|(_, time, _)| *time));
                        }
                        let failed = outcome.is_err();
                        if done_tx.send(outcome).is_err() || failed {
                            let _ = wake.activate();
                            return;
                        }
                        let _ = wake.activate();
                        unflushed = true;
                    }
                    Err(RecvTimeoutError::Timeout) if !unflushed => {}
                    Err(timeout_or_end) => {
                        let started = std::time::Instant::now();
                        let busy = crate::metrics::metrics().busy_guard();
                        let flushed = writer.flush();
                        drop(busy);
                        if let Err(error) = flushed {
                            fatal.fail(error.context(format!("sink {sink}")));
                            return;
                        }
                        metrics.flushed(started.elapsed());
                        unflushed = false;
                        if timeout_or_end == RecvTimeoutError::Disconnected {
                            return;
                        }
                    }
                }
            }
        })?;
    control.register_thread(handle);
    Ok((batches, done))
}

/// A complete time too large for one batch, split by key into parts (each a batch), of
/// which the first have been handed to the writer.
struct Remainder<D> {
    time: Time,
    parts: std::vec::IntoIter<Vec<(D, Diff)>>,
}

/// Takes the next batch of complete updates, in time order: whole times while the batch has
/// room; with a `key`, a time with more than [`MAX_BATCH`] updates is split into parts of
/// about that size by key, and each part is a batch (the rest wait in `remainder`).
/// `complete(t)`: whether time t may be written.
fn next_batch<D: differential_dataflow::Data>(
    pending: &mut BTreeMap<Time, Vec<(D, Diff)>>,
    remainder: &mut Option<Remainder<D>>,
    key: Option<fn(&D) -> u64>,
    complete: impl Fn(Time) -> bool,
) -> Batch<D> {
    let mut batch: Batch<D> = Vec::new();
    loop {
        if let Some(rest) = remainder.as_mut() {
            if let Some(part) = rest.parts.next() {
                let time = rest.time;
                batch.extend(part.into_iter().map(|(d, r)| (d, time, r)));
                return batch;
            }
            *remainder = None;
        }
        if batch.len() >= MAX_BATCH {
            return batch;
        }
        let Some(entry) = pending.first_entry() else {
            return batch;
        };
        let time = *entry.key();
        if !complete(time) {
            return batch;
        }
        let mut updates = entry.remove();
        consolidate(&mut updates);
        match key {
            Some(key) if updates.len() > MAX_BATCH => {
                *remainder = Some(Remainder {
                    time,
                    parts: split_by_key(updates, key).into_iter(),
                });
                if !batch.is_empty() {
                    return batch; // its parts are the next batches
                }
            }
            _ => {
                updates.sort_by_key(|(_, diff)| *diff);
                batch.extend(updates.into_iter().map(|(d, r)| (d, time, r)));
            }
        }
    }
}

/// Splits one time's consolidated `updates` into parts of about [`MAX_BATCH`] by a hash of
/// their `key`: every update of a key in the same part, retractions first in each part.
/// Within a part the updates keep their (sorted) order: walking them in hash order instead
/// would read the records' heap data at random (measured: the writer's CPU time doubled at
/// 2M drafts).
fn split_by_key<D>(updates: Vec<(D, Diff)>, key: fn(&D) -> u64) -> Vec<Vec<(D, Diff)>> {
    let count = updates.len().div_ceil(MAX_BATCH);
    let mut parts: Vec<Vec<(D, Diff)>> = (0..count)
        .map(|_| Vec::with_capacity(updates.len() / count + 1))
        .collect();
    for (d, r) in updates {
        let part = share(key(&d), count, PART_SALT);
        parts[part].push((d, r));
    }
    for part in &mut parts {
        part.sort_by_key(|(_, diff)| *diff);
    }
    parts
}

/// Which of `n` shares `key` falls in, for `salt` (different salts give independent
/// shares: the lanes of a sink and the parts of a split time must not correlate with each
/// other, nor with the workers, which Timely picks by the key's value modulo their number).
fn share(key: u64, n: usize, salt: u64) -> usize {
    // splitmix64's finalizer: every bit of the key moves every bit of the result.
    let mut z = key ^ salt;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % n as u64) as usize
}

const LANE_SALT: u64 = 0x6c61_6e65;
const PART_SALT: u64 = 0x7061_7274;

/// One writer of a sink and the updates waiting for it.
struct Lane<D> {
    pending: BTreeMap<Time, Vec<(D, Diff)>>,
    remainder: Option<Remainder<D>>,
    /// The least time of the batch being written, if one is.
    in_flight: Option<Time>,
    batches: Sender<Batch<D>>,
    done: Receiver<Result<()>>,
}

impl<D> Lane<D> {
    /// Updates at `complete` times, not yet handed to the writer.
    fn backlog(&self, complete: impl Fn(Time) -> bool) -> usize {
        self.pending
            .iter()
            .take_while(|(t, _)| complete(**t))
            .map(|(_, u)| u.len())
            .sum::<usize>()
            + self
                .remainder
                .as_ref()
                .map_or(0, |r| r.parts.as_slice().iter().map(Vec::len).sum())
    }

    /// Takes the outcome of the batch in flight if it came (a failed write is an error), and
    /// hands the writer its next batch (`complete(t)`: whether time t may be written) when
    /// it is free.
    fn advance(&mut self, key: Option<fn(&D) -> u64>, complete: impl Fn(Time) -> bool) -> Result<()>
    where
        D: differential_dataflow::Data,
    {
        match self.done.try_recv() {
            Ok(outcome) => {
                outcome?;
                self.in_flight = None;
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => anyhow::bail!("writer thread ended"),
        }
        if self.in_flight.is_none() {
            let batch = next_batch(&mut self.pending, &mut self.remainder, key, complete);
            if let Some(&(_, least, _)) = batch.first() {
                if self.batches.send(batch).is_err() {
                    anyhow::bail!("writer thread ended");
                }
                self.in_flight = Some(least);
            }
        }
        Ok(())
    }

    /// The least time this lane has not written.
    fn least(&self) -> Option<Time> {
        let least_pending = self.pending.first_key_value().map(|(&t, _)| t);
        let held = self.remainder.as_ref().map(|r| r.time);
        self.in_flight
            .into_iter()
            .chain(held)
            .chain(least_pending)
            .min()
    }
}

/// `collection`, each update sent to the worker that owns its key: one worker then writes
/// every change of a key, in time order.
pub fn by_key<'s, D>(
    collection: VecCollection<'s, Time, D, Diff>,
    key: fn(&D) -> u64,
) -> VecCollection<'s, Time, D, Diff>
where
    D: differential_dataflow::ExchangeData,
{
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::Exchange;
    collection
        .inner
        .exchange(move |(data, _, _): &(D, Time, Diff)| key(data))
        .as_collection()
}

/// Attaches `writers` to `collection` (see the module docs). With `refusals`, updates that
/// Postgres refuses for their data are dead-lettered there and the rest of their batch is
/// written (see [`isolate`]); without, such an error stops the job. With `key` (the writers'
/// identity of a row, hashed), a time with more than [`MAX_BATCH`] updates is written in
/// several batches, split by key; with several writers (*lanes*, each on its own thread and
/// connection), every key always goes to the same one, and they write in parallel. The
/// returned stream carries no data; its frontier says which times are written by every
/// lane (the sink holds a capability for every time it has not written yet), for progress
/// tracking.
///
/// # Panics
/// With no writer, or several writers and no key.
pub fn sink<'s, D, W>(
    collection: VecCollection<'s, Time, D, Diff>,
    name: &str,
    writers: Vec<W>,
    key: Option<fn(&D) -> u64>,
    refusals: Option<Refusals>,
    lifecycle: &Lifecycle,
) -> Stream<'s, Time, Vec<()>>
where
    D: differential_dataflow::Data + serde::Serialize + Send,
    W: SinkWriter<D>,
{
    assert!(
        !writers.is_empty() && (writers.len() == 1 || key.is_some()),
        "sink {name}: one writer, or several with a key to split by"
    );
    let (control, completion) = (lifecycle.control.clone(), lifecycle.completion.clone());
    let lanes_count = writers.len();
    let name = name.to_string();
    // What this sink counts in the process's sink backlog (see `Control::sinks_behind`).
    let mut buffered = 0usize;
    let mut failed = false;
    let mut capabilities: CapabilitySet<Time> = CapabilitySet::new();
    let scope = collection.inner.scope();
    collection
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            &name.clone(),
            move |_, info| {
                let wake = scope.worker().sync_activator_for(info.address.to_vec());
                let mut lanes: Vec<Lane<D>> = Vec::with_capacity(lanes_count);
                for (i, writer) in writers.into_iter().enumerate() {
                    let thread = if lanes_count == 1 {
                        name.clone()
                    } else {
                        format!("{name}-{i}")
                    };
                    let isolation = (key, refusals.clone());
                    match writer_thread(&thread, writer, isolation, wake.clone(), &control) {
                        Ok((batches, done)) => lanes.push(Lane {
                            pending: BTreeMap::new(),
                            remainder: None,
                            in_flight: None,
                            batches,
                            done,
                        }),
                        Err(error) => {
                            control.fail(error.context(format!("sink {name}")));
                            failed = true;
                            break;
                        }
                    }
                }
                move |(input, frontier), _output| {
                    input.for_each(|capability, data| {
                        for (d, t, r) in data.drain(..) {
                            let lane = match key {
                                Some(key) if lanes.len() > 1 => {
                                    share(key(&d), lanes.len(), LANE_SALT)
                                }
                                _ => 0,
                            };
                            let Some(lane) = lanes.get_mut(lane) else {
                                continue; // no writer started: the run is failing
                            };
                            if !lane.pending.contains_key(&t) {
                                capabilities.insert(capability.delayed(&t, 0));
                            }
                            lane.pending.entry(t).or_default().push((d, r));
                        }
                    });
                    if failed {
                        return;
                    }
                    let horizon = completion.horizon();
                    for lane in &mut lanes {
                        let advanced = lane.advance(key, |time| {
                            !frontier.less_equal(&time) && horizon.is_none_or(|h| time <= h)
                        });
                        if let Err(error) = advanced {
                            failed = true;
                            control.fail(error.context(format!("sink {name}")));
                            return;
                        }
                    }
                    let idle = lanes.iter().all(|l| l.in_flight.is_none());
                    if idle && frontier.is_empty() {
                        let held: usize = lanes
                            .iter_mut()
                            .map(|l| {
                                std::mem::take(&mut l.pending)
                                    .values()
                                    .map(Vec::len)
                                    .sum::<usize>()
                            })
                            .sum();
                        if held > 0 {
                            info!(
                                sink = %name,
                                updates = held,
                                "not written: scheduled after the end of this run"
                            );
                        }
                    }
                    // Only complete updates count: those the writers are behind on. (Others
                    // wait for the dataflow or the clock; counting them could pause the
                    // very sources whose progress completes them.)
                    let backlog = lanes
                        .iter()
                        .map(|l| l.backlog(|t| !frontier.less_equal(&t)))
                        .sum();
                    control.sink_buffered(buffered, backlog);
                    buffered = backlog;
                    match lanes.iter().filter_map(Lane::least).min() {
                        Some(time) => capabilities.downgrade([time]),
                        None => capabilities = CapabilitySet::new(),
                    }
                }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Completion;

    /// A record: (key, version).
    type Rec = (u64, u64);
    type Pending = BTreeMap<Time, Vec<(Rec, Diff)>>;

    /// Every batch `next_batch` makes of `pending` (times below `until` complete), and what
    /// is left.
    fn batches(
        mut pending: Pending,
        key: Option<fn(&Rec) -> u64>,
        until: Time,
    ) -> (Vec<Batch<Rec>>, Pending) {
        let mut remainder = None;
        let mut out = Vec::new();
        loop {
            let batch = next_batch(&mut pending, &mut remainder, key, |t| t < until);
            if batch.is_empty() {
                assert!(remainder.is_none());
                return (out, pending);
            }
            out.push(batch);
        }
    }

    /// Updates of record (key, version): `n` keys at time 5, each replaced (version 0
    /// retracted, 1 inserted), in no particular order.
    fn replacements(n: u64) -> Vec<(Rec, Diff)> {
        let mut updates = Vec::new();
        for k in (0..n).rev() {
            updates.push(((k, 1), 1));
            updates.push(((k, 0), -1));
        }
        updates
    }

    #[test]
    fn small_times_share_a_batch_and_incomplete_ones_wait() {
        let pending = BTreeMap::from([
            (1, vec![((1, 0), 1), ((1, 0), 1), ((2, 0), 1), ((2, 0), -1)]),
            (2, vec![((3, 0), 1), ((4, 0), -1)]),
            (9, vec![((5, 0), 1)]),
        ]);
        let (out, left) = batches(pending, Some(|r| r.0), 5);
        assert_eq!(out, [vec![((1, 0), 1, 2), ((4, 0), 2, -1), ((3, 0), 2, 1)]]);
        assert_eq!(left.keys().copied().collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn without_a_key_a_large_time_is_one_batch() {
        let pending = BTreeMap::from([(5, replacements(MAX_BATCH as u64))]);
        let (out, _) = batches(pending, None, 10);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 2 * MAX_BATCH);
        // Retractions first.
        assert!(out[0][..MAX_BATCH].iter().all(|(_, _, r)| *r == -1));
    }

    #[test]
    fn with_a_key_a_large_time_is_split_by_key() {
        let n = MAX_BATCH as u64 + MAX_BATCH as u64 / 2 + 1;
        let pending = BTreeMap::from([(3, vec![((7, 0), 1)]), (5, replacements(n))]);
        let (out, _) = batches(pending, Some(|r| r.0 % 1000), 10);
        // The small time alone, then the large one in parts.
        assert_eq!(out[0], [((7, 0), 3, 1)]);
        assert_eq!(out.len(), 1 + (2 * n as usize).div_ceil(MAX_BATCH));
        let mut part_of = std::collections::HashMap::new();
        for (b, batch) in out.iter().enumerate().skip(1) {
            assert!(batch.len() <= MAX_BATCH, "{} updates", batch.len());
            let retractions = batch.iter().take_while(|(_, _, r)| *r == -1).count();
            assert_eq!(retractions * 2, batch.len(), "retractions first");
            for ((k, v), t, r) in batch {
                assert_eq!(*t, 5);
                assert_eq!(*v, if *r == 1 { 1 } else { 0 });
                assert_eq!(*part_of.entry(k % 1000).or_insert(b), b, "key {k} split");
            }
        }
        let total: usize = out.iter().map(Vec::len).sum();
        assert_eq!(total, 2 * n as usize + 1);
    }

    /// A writer that records the batches it is given.
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<Batch<Rec>>>>);

    impl SinkWriter<Rec> for Recorder {
        fn write(&mut self, updates: &[(Rec, Time, Diff)]) -> Result<()> {
            self.0.lock().expect("recorder").push(updates.to_vec());
            Ok(())
        }
    }

    #[test]
    fn lanes_write_all_changes_of_a_key_through_one_writer_in_time_order() {
        use differential_dataflow::input::Input;
        use timely::dataflow::operators::Probe;

        let (fatal, _outcomes) = channel();
        let control = Control::new(fatal, Default::default());
        let logs: Vec<std::sync::Arc<std::sync::Mutex<Vec<Batch<Rec>>>>> =
            (0..3).map(|_| Default::default()).collect();
        let (keys, times) = (500u64, 4u64);
        timely::execute_directly({
            let (logs, control) = (logs.clone(), control.clone());
            move |worker| {
                let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                    let (input, records) = scope.new_collection::<Rec, Diff>();
                    let writers = logs.iter().map(|log| Recorder(log.clone())).collect();
                    let written = sink(
                        records,
                        "test",
                        writers,
                        Some(|r: &Rec| r.0),
                        None,
                        &Lifecycle {
                            control: control.clone(),
                            completion: Completion::default(),
                            start: 0,
                            tick: std::time::Duration::from_millis(10),
                        },
                    );
                    (input, written.probe().0)
                });
                // Every key gets a new version at every time: (k, t) replaces (k, t - 1).
                for t in 0..times {
                    for k in 0..keys {
                        input.update((k, t), 1);
                        if t > 0 {
                            input.update((k, t - 1), -1);
                        }
                    }
                    input.advance_to(t + 1);
                }
                input.close();
                while !probe.done() {
                    worker.step();
                }
            }
        });
        control.join_threads();
        let mut lane_of = std::collections::HashMap::new();
        let mut last = std::collections::HashMap::new();
        let mut total = 0;
        for (lane, log) in logs.iter().enumerate() {
            let batches = log.lock().expect("log");
            assert!(!batches.is_empty(), "lane {lane} wrote nothing");
            for ((k, v), t, r) in batches.iter().flatten() {
                total += 1;
                assert_eq!(
                    *lane_of.entry(*k).or_insert(lane),
                    lane,
                    "key {k} in two lanes"
                );
                assert_eq!(*v, if *r > 0 { *t } else { *t - 1 }, "consolidated");
                let previous = last.insert((*k, *r), *t);
                assert!(previous.is_none_or(|p| p < *t), "key {k} out of time order");
            }
        }
        assert_eq!(lane_of.len(), keys as usize);
        assert_eq!(total, keys * (2 * times - 1));
    }
}
