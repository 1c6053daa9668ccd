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
//! being written, the next one grows, so a busy sink writes fewer, larger batches. A write
//! error is fatal: it is reported through [`Control`] and the process exits non-zero
//! instead of silently losing output.

pub mod kafka;
pub mod outbox;
pub mod postgres;
pub mod tables;

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

use crate::control::{Completion, Control};

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
}

/// How long a writer thread waits for the next batch before flushing its writer.
pub const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

/// A batch handed to the writer thread.
type Batch<D> = Vec<(D, Time, Diff)>;

/// The operator's ends of a writer thread: batches to write, outcomes of the writes.
type WriterThread<D> = (Sender<Batch<D>>, Receiver<Result<()>>);

/// Starts the writer thread of sink `name`: it writes each batch it receives and reports
/// the outcome, waking the operator; it flushes the writer when idle and when the operator
/// is gone (the end of the run: the process waits for the thread, see
/// [`Control::register_thread`]; a failed final flush is fatal).
fn writer_thread<D, W>(
    name: &str,
    mut writer: W,
    wake: SyncActivator,
    control: &Control,
) -> Result<WriterThread<D>>
where
    D: Send + 'static,
    W: SinkWriter<D>,
{
    let (batches, batch_rx) = channel::<Batch<D>>();
    let (done_tx, done) = channel::<Result<()>>();
    let sink = name.to_string();
    let fatal = control.clone();
    let handle = std::thread::Builder::new()
        .name(format!("sink-{name}"))
        .spawn(move || {
            let mut unflushed = false;
            loop {
                match batch_rx.recv_timeout(IDLE_FLUSH) {
                    Ok(batch) => {
                        let outcome = writer.write(&batch);
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
                        if let Err(error) = writer.flush() {
                            fatal.fail(error.context(format!("sink {sink}")));
                            return;
                        }
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

/// Attaches `writer` to `collection` (see the module docs). The returned stream carries no
/// data; its frontier says which times are written (the sink holds a capability for every
/// time it has not written yet), for progress tracking.
pub fn sink<'s, D, W>(
    collection: VecCollection<'s, Time, D, Diff>,
    name: &str,
    writer: W,
    control: Control,
    completion: Completion,
) -> Stream<'s, Time, Vec<()>>
where
    D: differential_dataflow::Data + Send,
    W: SinkWriter<D>,
{
    let name = name.to_string();
    let mut pending: BTreeMap<Time, Vec<(D, Diff)>> = BTreeMap::new();
    let mut failed = false;
    let mut capabilities: CapabilitySet<Time> = CapabilitySet::new();
    // The least time of the batch being written, if one is.
    let mut in_flight: Option<Time> = None;
    let scope = collection.inner.scope();
    collection
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            &name.clone(),
            move |_, info| {
                let wake = scope.worker().sync_activator_for(info.address.to_vec());
                let thread = match writer_thread(&name, writer, wake, &control) {
                    Ok(thread) => Some(thread),
                    Err(error) => {
                        control.fail(error.context(format!("sink {name}")));
                        None
                    }
                };
                move |(input, frontier), _output| {
                    input.for_each(|capability, data| {
                        for (d, t, r) in data.drain(..) {
                            if !pending.contains_key(&t) {
                                capabilities.insert(capability.delayed(&t, 0));
                            }
                            pending.entry(t).or_default().push((d, r));
                        }
                    });
                    let Some((batches, done)) = thread.as_ref() else {
                        return;
                    };
                    if failed {
                        return;
                    }
                    match done.try_recv() {
                        Ok(Ok(())) => in_flight = None,
                        Ok(Err(error)) => {
                            failed = true;
                            control.fail(error.context(format!("sink {name}")));
                            return;
                        }
                        Err(TryRecvError::Empty) => {}
                        Err(TryRecvError::Disconnected) => {
                            failed = true;
                            control.fail(anyhow::anyhow!("sink {name}: writer thread ended"));
                            return;
                        }
                    }
                    if in_flight.is_none() {
                        let horizon = completion.horizon();
                        let mut batch: Batch<D> = Vec::new();
                        let mut least = None;
                        while let Some(entry) = pending.first_entry() {
                            let time = *entry.key();
                            if frontier.less_equal(&time) || horizon.is_some_and(|h| time > h) {
                                break;
                            }
                            let mut updates = entry.remove();
                            consolidate(&mut updates);
                            updates.sort_by_key(|(_, diff)| *diff);
                            if !updates.is_empty() {
                                least.get_or_insert(time);
                            }
                            batch.extend(updates.into_iter().map(|(d, r)| (d, time, r)));
                        }
                        if let Some(least) = least {
                            if batches.send(batch).is_err() {
                                failed = true;
                                control.fail(anyhow::anyhow!("sink {name}: writer thread ended"));
                                return;
                            }
                            in_flight = Some(least);
                        }
                    }
                    if in_flight.is_none() && frontier.is_empty() && !pending.is_empty() {
                        let held: usize = pending.values().map(Vec::len).sum();
                        info!(
                            sink = %name,
                            updates = held,
                            "not written: scheduled after the end of this run"
                        );
                        pending.clear();
                    }
                    let least_pending = pending.first_key_value().map(|(&t, _)| t);
                    match in_flight.into_iter().chain(least_pending).min() {
                        Some(time) => capabilities.downgrade([time]),
                        None => capabilities = CapabilitySet::new(),
                    }
                }
            },
        )
}
