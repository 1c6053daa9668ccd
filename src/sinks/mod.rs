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
//! **Batch size.** A batch holds at most about [`MAX_BATCH`] updates (divided among the
//! lanes in use, below), so that a large output (a startup backlog: millions of updates at
//! one or a few times) is written as a pipeline — the writer sends one batch's messages
//! while the next batch's transaction runs — and the writers' working set stays bounded.
//! Whole times are never split, except for a sink given a *key* (the writer's identity of a
//! row): then a time with more updates is split by a hash of the key into parts of about
//! that size, each its own batch, every update of a key in the same part, retractions
//! before insertions. The time is released once all its parts are written.
//!
//! **Lanes.** A sink with a key may have several writers, each on its own thread (and, for
//! the Postgres writers, its own connection and transactions). While the sink keeps up, the
//! first writer writes everything: one transaction per batch. Once a backlog waits (at
//! least [`Spread::wide_at`] complete updates not yet handed to a writer), every update goes
//! to the writer its key's hash picks and the writers work in parallel; after the backlog
//! has stayed small for [`Spread::narrow_after`], the first one takes everything again. Each
//! change of the lanes in use waits until every writer has finished its batch and flushed
//! (its messages delivered and confirmed), then routes the waiting updates anew: all changes
//! of a key are written in time order, and what one writer sent of a key is delivered before
//! another writes it. A time is released once every lane has written its share. One
//! Postgres connection is bound by one server process: the promos job's 2M-draft backlog
//! took 34.5 s with one connection and 22.2 s with two (2026-12-07).

pub mod isolate;
pub mod kafka;
pub mod outbox;
pub mod postgres;
pub mod rejects;

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::time::Instant;

use anyhow::Result;
use dataflows::{Diff, Time};
use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{CapabilitySet, Operator};
use timely::scheduling::SyncActivator;
use tracing::{debug, info};

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

/// What the operator hands a writer thread.
enum Job<D> {
    /// Write these updates.
    Write(Batch<D>),
    /// Finish what the writes left in progress now ([`SinkWriter::flush`]): before the
    /// sink changes how many lanes it writes through.
    Flush,
}

/// How a writer thread isolates updates Postgres refuses: the sink's key, and where the
/// refused updates go (none: a refusal stops the job).
type Isolation<D> = (Option<fn(&D) -> u64>, Option<Refusals>);

/// The operator's ends of a writer thread: jobs to do, outcomes of the jobs.
type WriterThread<D> = (Sender<Job<D>>, Receiver<Result<()>>);

/// Starts the writer thread of lane `lane` of sink `name`: it does each job it receives (a
/// write or a flush) and reports the outcome, waking the operator; it flushes the writer
/// when idle and when the operator is gone (the end of the run: the process waits for the
/// thread, see [`Control::register_thread`]; a failed final flush is fatal). The lanes of a
/// sink share its metrics and its dead letters' identity (a refused update is dead-lettered
/// once, whichever lane writes it).
fn writer_thread<D, W>(
    name: &str,
    lane: Option<usize>,
    mut writer: W,
    (key, refusals): Isolation<D>,
    wake: SyncActivator,
    control: &Control,
) -> Result<WriterThread<D>>
where
    D: Clone + serde::Serialize + Send + 'static,
    W: SinkWriter<D>,
{
    let (jobs, job_rx) = channel::<Job<D>>();
    let (done_tx, done) = channel::<Result<()>>();
    let sink = name.to_string();
    let fatal = control.clone();
    let metrics = crate::metrics::metrics().sink(name);
    writer.delivery_metrics(metrics.clone());
    let flush = {
        let metrics = metrics.clone();
        move |writer: &mut W| -> Result<()> {
            let started = std::time::Instant::now();
            let _busy = crate::metrics::metrics().busy_guard();
            writer.flush()?;
            metrics.flushed(started.elapsed());
            Ok(())
        }
    };
    let handle = std::thread::Builder::new()
        .name(match lane {
            Some(lane) => format!("sink-{name}-{lane}"),
            None => format!("sink-{name}"),
        })
        .spawn(move || {
            let mut unflushed = false;
            loop {
                let outcome = match job_rx.recv_timeout(IDLE_FLUSH) {
                    Ok(Job::Write(batch)) => {
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
                        unflushed = true;
                        outcome
                    }
                    Ok(Job::Flush) => {
                        unflushed = false;
                        flush(&mut writer)
                    }
                    Err(RecvTimeoutError::Timeout) if !unflushed => continue,
                    Err(timeout_or_end) => {
                        if let Err(error) = flush(&mut writer) {
                            fatal.fail(error.context(format!("sink {sink}")));
                            return;
                        }
                        unflushed = false;
                        if timeout_or_end == RecvTimeoutError::Disconnected {
                            return;
                        }
                        continue;
                    }
                };
                let failed = outcome.is_err();
                if done_tx.send(outcome).is_err() || failed {
                    let _ = wake.activate();
                    return;
                }
                let _ = wake.activate();
            }
        })?;
    control.register_thread(handle);
    Ok((jobs, done))
}

/// A complete time too large for one batch, split by key into parts (each a batch), of
/// which the first have been handed to the writer.
struct Remainder<D> {
    time: Time,
    parts: std::vec::IntoIter<Vec<(D, Diff)>>,
}

/// Takes the next batch of complete updates, in time order: whole times while the batch has
/// fewer than `limit` updates; with a `key`, a time with more than `limit` updates is split
/// into parts of about that size by key, and each part is a batch (the rest wait in
/// `remainder`). `complete(t)`: whether time t may be written.
fn next_batch<D: differential_dataflow::Data>(
    pending: &mut BTreeMap<Time, Vec<(D, Diff)>>,
    remainder: &mut Option<Remainder<D>>,
    key: Option<fn(&D) -> u64>,
    limit: usize,
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
        if batch.len() >= limit {
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
            Some(key) if updates.len() > limit => {
                *remainder = Some(Remainder {
                    time,
                    parts: split_by_key(updates, key, limit).into_iter(),
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

/// Splits one time's consolidated `updates` into parts of about `limit` by a hash of their
/// `key`: every update of a key in the same part, retractions first in each part.
/// Within a part the updates keep their (sorted) order: walking them in hash order instead
/// would read the records' heap data at random (measured: the writer's CPU time doubled at
/// 2M drafts).
fn split_by_key<D>(
    updates: Vec<(D, Diff)>,
    key: fn(&D) -> u64,
    limit: usize,
) -> Vec<Vec<(D, Diff)>> {
    let count = updates.len().div_ceil(limit);
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

/// When a sink with several writers (lanes) writes through all of them, and when through
/// one (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    /// Complete updates waiting for the writers (not yet handed to one) at which every lane
    /// starts writing.
    pub wide_at: usize,
    /// Fewer waiting than this for `narrow_after`, and one lane writes everything again.
    pub narrow_below: usize,
    /// See `narrow_below`.
    pub narrow_after: std::time::Duration,
}

impl Spread {
    /// All lanes once `wide_at` complete updates wait (0: always all), one again after
    /// fewer than a fifth of that have waited for 3 s. A backlog's updates come in bursts
    /// (as sources pause and resume, see `Control::sinks_behind`): after 1 s, a bounded
    /// 250k-draft run went back to one lane and to all again a quarter of a second later.
    pub fn at(wide_at: usize) -> Spread {
        Spread {
            wide_at,
            narrow_below: wide_at / 5,
            narrow_after: std::time::Duration::from_secs(3),
        }
    }
}

impl Default for Spread {
    /// All lanes while half a batch waits (the one writer is behind: a backlog), one once
    /// caught up (one transaction per batch, not one per lane).
    fn default() -> Self {
        Spread::at(MAX_BATCH / 2)
    }
}

/// A change of the number of lanes in use, to the number it holds: first every lane
/// finishes its batch (`Draining`), then every lane flushes (`Flushing`: the messages it
/// sent are confirmed), then the waiting updates are routed anew. A key that moves to
/// another lane is thereby written there only after everything written of it before is
/// durable and delivered: its changes stay in order, in the tables and in Kafka, and a
/// restart's recovery finds them in one writer's outbox at most.
#[derive(Clone, Copy, Debug)]
enum Switch {
    Draining(usize),
    Flushing(usize),
}

/// The lane that writes `d` while `spread` lanes are in use.
fn lane_of<D>(key: Option<fn(&D) -> u64>, d: &D, spread: usize) -> usize {
    match key {
        Some(key) if spread > 1 => share(key(d), spread, LANE_SALT),
        _ => 0,
    }
}

/// One writer of a sink and the updates waiting for it.
struct Lane<D> {
    pending: BTreeMap<Time, Vec<(D, Diff)>>,
    remainder: Option<Remainder<D>>,
    /// The least time of the batch being written, if one is.
    in_flight: Option<Time>,
    /// Whether the writer is flushing (see [`Job::Flush`]).
    flushing: bool,
    jobs: Sender<Job<D>>,
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

    /// Whether the writer is doing a job.
    fn busy(&self) -> bool {
        self.in_flight.is_some() || self.flushing
    }

    /// Takes the outcome of the job in progress if it came (a failed one is an error).
    fn collect(&mut self) -> Result<()> {
        match self.done.try_recv() {
            Ok(outcome) => {
                outcome?;
                self.in_flight = None;
                self.flushing = false;
                Ok(())
            }
            Err(TryRecvError::Empty) => Ok(()),
            Err(TryRecvError::Disconnected) => anyhow::bail!("writer thread ended"),
        }
    }

    /// Hands the writer its next batch of about `limit` updates (`complete(t)`: whether time
    /// t may be written) when it is free.
    fn advance(
        &mut self,
        key: Option<fn(&D) -> u64>,
        limit: usize,
        complete: impl Fn(Time) -> bool,
    ) -> Result<()>
    where
        D: differential_dataflow::Data,
    {
        if !self.busy() {
            let batch = next_batch(&mut self.pending, &mut self.remainder, key, limit, complete);
            if let Some(&(_, least, _)) = batch.first() {
                self.send(Job::Write(batch))?;
                self.in_flight = Some(least);
            }
        }
        Ok(())
    }

    /// Asks the (free) writer to flush.
    fn flush(&mut self) -> Result<()> {
        self.send(Job::Flush)?;
        self.flushing = true;
        Ok(())
    }

    fn send(&self, job: Job<D>) -> Result<()> {
        if self.jobs.send(job).is_err() {
            anyhow::bail!("writer thread ended");
        }
        Ok(())
    }

    /// Takes every update waiting for this lane, with its time.
    fn take_waiting(&mut self) -> Vec<(Time, Vec<(D, Diff)>)> {
        let mut waiting: Vec<_> = std::mem::take(&mut self.pending).into_iter().collect();
        if let Some(rest) = self.remainder.take() {
            waiting.extend(rest.parts.map(|part| (rest.time, part)));
        }
        waiting
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

/// Routes every update waiting for `lanes` anew, for `spread` lanes in use.
fn reroute<D>(lanes: &mut [Lane<D>], key: Option<fn(&D) -> u64>, spread: usize) {
    let waiting: Vec<_> = lanes.iter_mut().flat_map(Lane::take_waiting).collect();
    for (time, updates) in waiting {
        for (d, r) in updates {
            let lane = &mut lanes[lane_of(key, &d, spread)];
            lane.pending.entry(time).or_default().push((d, r));
        }
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
/// connection), the first writes everything until a backlog waits, then all write in
/// parallel, each key through one of them (`spread` says when). The returned stream carries
/// no data; its frontier says which times are written by every lane (the sink holds a
/// capability for every time it has not written yet), for progress tracking.
///
/// # Panics
/// With no writer, or several writers and no key.
pub fn sink<'s, D, W>(
    collection: VecCollection<'s, Time, D, Diff>,
    name: &str,
    writers: Vec<W>,
    key: Option<fn(&D) -> u64>,
    spread: Spread,
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
    // Lanes in use, a change of that under way, and since when few updates have waited.
    let (mut in_use, mut switch, mut quiet_since) = (1usize, None::<Switch>, None::<Instant>);
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
                    let lane = (lanes_count > 1).then_some(i);
                    let isolation = (key, refusals.clone());
                    match writer_thread(&name, lane, writer, isolation, wake.clone(), &control) {
                        Ok((jobs, done)) => lanes.push(Lane {
                            pending: BTreeMap::new(),
                            remainder: None,
                            in_flight: None,
                            flushing: false,
                            jobs,
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
                            let Some(lane) = lanes.get_mut(lane_of(key, &d, in_use)) else {
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
                    // Only complete updates count as waiting: those the writers are behind
                    // on. (Others wait for the dataflow or the clock; counting them in the
                    // process's backlog could pause the very sources whose progress
                    // completes them.)
                    let complete = |t: Time| !frontier.less_equal(&t);
                    let stepped = (|| -> Result<()> {
                        for lane in &mut lanes {
                            lane.collect()?;
                        }
                        if switch.is_none() && lanes.len() > 1 {
                            let waiting = lanes.iter().map(|l| l.backlog(complete)).sum();
                            switch = next_switch(
                                &spread,
                                in_use,
                                lanes.len(),
                                waiting,
                                &mut quiet_since,
                            );
                        }
                        let free = lanes.iter().all(|l| !l.busy());
                        match switch {
                            Some(Switch::Draining(to)) if free => {
                                for lane in &mut lanes {
                                    lane.flush()?;
                                }
                                switch = Some(Switch::Flushing(to));
                            }
                            Some(Switch::Flushing(to)) if free => {
                                reroute(&mut lanes, key, to);
                                debug!(sink = %name, lanes = to, "lanes in use");
                                (in_use, switch) = (to, None);
                            }
                            _ => {}
                        }
                        if switch.is_none() {
                            let horizon = completion.horizon();
                            // The lanes in use share a batch's worth: as much in flight (and
                            // in memory) as with one.
                            let limit = MAX_BATCH / in_use;
                            for lane in &mut lanes {
                                lane.advance(key, limit, |time| {
                                    complete(time) && horizon.is_none_or(|h| time <= h)
                                })?;
                            }
                        }
                        Ok(())
                    })();
                    if let Err(error) = stepped {
                        failed = true;
                        control.fail(error.context(format!("sink {name}")));
                        return;
                    }
                    let idle = switch.is_none() && lanes.iter().all(|l| !l.busy());
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
                    let backlog = lanes.iter().map(|l| l.backlog(complete)).sum();
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

/// Whether to change the number of lanes in use (`in_use` of `lanes`), with `waiting`
/// complete updates not yet handed to a writer; `quiet_since`: since when fewer than
/// `spread.narrow_below` have waited.
fn next_switch(
    spread: &Spread,
    in_use: usize,
    lanes: usize,
    waiting: usize,
    quiet_since: &mut Option<Instant>,
) -> Option<Switch> {
    if waiting >= spread.narrow_below {
        *quiet_since = None;
    }
    if in_use < lanes && waiting >= spread.wide_at {
        return Some(Switch::Draining(lanes));
    }
    if in_use > 1 && waiting < spread.narrow_below {
        let since = *quiet_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= spread.narrow_after {
            *quiet_since = None;
            return Some(Switch::Draining(1));
        }
    }
    None
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
            let batch = next_batch(&mut pending, &mut remainder, key, MAX_BATCH, |t| t < until);
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

    /// What a writer of lane `.0` was asked to do, in the order the writers did it.
    #[derive(Clone, Debug)]
    enum Event {
        Write(Batch<Rec>),
        Flush,
    }

    type Log = std::sync::Arc<std::sync::Mutex<Vec<(usize, Event)>>>;

    /// A writer that records what it is asked to do in a log shared by the lanes.
    struct Recorder(usize, Log);

    impl SinkWriter<Rec> for Recorder {
        fn write(&mut self, updates: &[(Rec, Time, Diff)]) -> Result<()> {
            let event = Event::Write(updates.to_vec());
            self.1.lock().expect("recorder").push((self.0, event));
            Ok(())
        }

        fn flush(&mut self) -> Result<()> {
            self.1
                .lock()
                .expect("recorder")
                .push((self.0, Event::Flush));
            Ok(())
        }
    }

    #[test]
    fn lanes_write_all_changes_of_a_key_in_time_order_through_one_lane_until_a_backlog() {
        use differential_dataflow::input::Input;
        use timely::dataflow::operators::Probe;

        let (fatal, _outcomes) = channel();
        let control = Control::new(fatal, Default::default());
        let log: Log = Default::default();
        // Keys per time: a few (one lane), a backlog (all lanes), a few again (one lane once
        // caught up), a backlog. Every key gets a new version at every time it is in.
        let sizes = [50u64, 3000, 50, 3000];
        let mut version: std::collections::HashMap<u64, Time> = Default::default();
        let times: Vec<Vec<(Rec, Diff)>> = (0..)
            .zip(sizes)
            .map(|(t, size)| {
                // (k, t) replaces the key's version of the time before, if it had one.
                let mut updates = Vec::new();
                for k in 0..size {
                    updates.push(((k, t), 1));
                    if let Some(before) = version.insert(k, t) {
                        updates.push(((k, before), -1));
                    }
                }
                updates
            })
            .collect();
        let expected: usize = times.iter().map(Vec::len).sum();
        let spread = Spread {
            wide_at: 1000,
            narrow_below: 100,
            narrow_after: std::time::Duration::ZERO,
        };
        timely::execute_directly({
            let (log, control) = (log.clone(), control.clone());
            move |worker| {
                let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                    let (input, records) = scope.new_collection::<Rec, Diff>();
                    let writers = (0..3).map(|lane| Recorder(lane, log.clone())).collect();
                    let written = sink(
                        records,
                        "test",
                        writers,
                        Some(|r: &Rec| r.0),
                        spread,
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
                for (t, updates) in (0..).zip(times) {
                    for (record, diff) in updates {
                        input.update(record, diff);
                    }
                    input.advance_to(t + 1);
                    input.flush();
                    while probe.less_than(&(t + 1)) {
                        worker.step();
                    }
                }
                input.close();
                while !probe.done() {
                    worker.step();
                }
            }
        });
        control.join_threads();
        let log = log.lock().expect("log");
        // Per key: the lane and time of its last write, and whether that lane flushed since.
        let mut last: std::collections::HashMap<u64, (usize, Time, bool)> = Default::default();
        let mut lanes_of_time: BTreeMap<Time, std::collections::BTreeSet<usize>> = BTreeMap::new();
        let mut total = 0;
        for (lane, event) in log.iter() {
            let Event::Write(batch) = event else {
                for (l, _, flushed) in last.values_mut() {
                    *flushed |= l == lane;
                }
                continue;
            };
            for ((k, v), t, r) in batch {
                total += 1;
                lanes_of_time.entry(*t).or_default().insert(*lane);
                if *r > 0 {
                    assert_eq!(v, t, "consolidated");
                }
                if let Some((was, before, flushed)) = last.insert(*k, (*lane, *t, false)) {
                    assert!(before <= *t, "key {k} out of time order");
                    assert!(
                        was == *lane || flushed,
                        "key {k} moved from lane {was} to {lane} before {was} flushed"
                    );
                }
            }
        }
        let narrow: Vec<usize> = lanes_of_time.values().map(|lanes| lanes.len()).collect();
        assert_eq!(narrow, [1, 3, 1, 3], "lanes that wrote each time");
        for t in [0, 2] {
            let first = std::collections::BTreeSet::from([0]);
            assert_eq!(lanes_of_time[&t], first, "one lane while caught up");
        }
        assert_eq!(total, expected);
    }
}
