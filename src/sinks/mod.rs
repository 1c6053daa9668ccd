//! Capture-based sinks: write the consolidated changes of a collection, time by time.
//!
//! ```text
//!  collection ──► [sink operator] buffers (data, time, diff) by time
//!                      │ when the input frontier has passed t (and t ≤ the run's horizon,
//!                      │ once one is agreed), the updates of every such t are consolidated
//!                      ▼
//!                 SinkWriter::write(&[(data, t, diff)])  — one batch, in time order,
//!                                                         returns once durable
//! ```
//!
//! Every worker writes the share of the collection it holds (no exchange). A writer sees only
//! complete times, so an insertion and a retraction of the same record at the same time have
//! cancelled out, and within a time retractions come before insertions (an upsert sink can
//! write a replacement as "delete old, put new"). A write error is fatal: it is reported
//! through [`Control`] and the process exits non-zero instead of silently losing output.

pub mod kafka;
pub mod outbox;
pub mod postgres;
pub mod tables;

use std::collections::BTreeMap;

use anyhow::Result;
use dataflows::{Diff, Time};
use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{CapabilitySet, Operator};
use tracing::info;

use crate::control::{Completion, Control};

/// Writes complete, consolidated updates somewhere durable.
pub trait SinkWriter<D>: 'static {
    /// Writes `updates`, sorted by time and within a time by diff (retractions first). Must
    /// return only when the updates are durable, and an error if any of them is not.
    fn write(&mut self, updates: &[(D, Time, Diff)]) -> Result<()>;
}

/// Attaches `writer` to `collection` (see the module docs). The returned stream carries no
/// data; its frontier says which times are written (the sink holds a capability for every
/// time it has not written yet), for progress tracking.
pub fn sink<'s, D, W>(
    collection: VecCollection<'s, Time, D, Diff>,
    name: &str,
    mut writer: W,
    control: Control,
    completion: Completion,
) -> Stream<'s, Time, Vec<()>>
where
    D: differential_dataflow::Data,
    W: SinkWriter<D>,
{
    let name = name.to_string();
    let mut pending: BTreeMap<Time, Vec<(D, Diff)>> = BTreeMap::new();
    let mut batch: Vec<(D, Time, Diff)> = Vec::new();
    let mut failed = false;
    let mut capabilities: CapabilitySet<Time> = CapabilitySet::new();
    collection
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            &name.clone(),
            move |_, _| {
                move |(input, frontier), _output| {
                    input.for_each(|capability, data| {
                        for (d, t, r) in data.drain(..) {
                            if !pending.contains_key(&t) {
                                capabilities.insert(capability.delayed(&t, 0));
                            }
                            pending.entry(t).or_default().push((d, r));
                        }
                    });
                    if failed {
                        return;
                    }
                    let horizon = completion.horizon();
                    while let Some(entry) = pending.first_entry() {
                        let time = *entry.key();
                        if frontier.less_equal(&time) || horizon.is_some_and(|h| time > h) {
                            break;
                        }
                        let mut updates = entry.remove();
                        consolidate(&mut updates);
                        updates.sort_by_key(|(_, diff)| *diff);
                        batch.extend(updates.into_iter().map(|(d, r)| (d, time, r)));
                    }
                    if !batch.is_empty() {
                        if let Err(error) = writer.write(&batch) {
                            failed = true;
                            control.fail(error.context(format!("sink {name}")));
                            return;
                        }
                        batch.clear();
                    }
                    if frontier.is_empty() && !pending.is_empty() {
                        let held: usize = pending.values().map(Vec::len).sum();
                        info!(
                            sink = %name,
                            updates = held,
                            "not written: scheduled after the end of this run"
                        );
                        pending.clear();
                    }
                    match pending.first_key_value() {
                        Some((&time, _)) => capabilities.downgrade([time]),
                        None => capabilities = CapabilitySet::new(),
                    }
                }
            },
        )
}
