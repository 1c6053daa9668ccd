//! Operators that hand a large batch downstream a slice at a time.
//!
//! Differential's `as_collection` (and `distinct`, which ends with it) emits every update of a
//! batch in one activation. A backlog read at one logical time becomes one batch, so all of
//! it is queued in the channels at once — once per consumer, since a stream with several
//! consumers gives each its own copy — before any consumer runs. Here the batch is emitted
//! [`SLICE`] updates per activation: the operator keeps its capability and the batch's
//! cursor and activates itself again, so each consumer takes in a slice (and folds it into
//! its own state) before the next one is emitted.
//!
//! ```text
//!   batch of N updates ──► [ PacedAsCollection ] ──► SLICE updates, re-activate, SLICE, …
//! ```

use std::collections::VecDeque;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::trace::implementations::{KeyBuilder, KeySpine};
use differential_dataflow::trace::{Cursor, Navigable};
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::{Diff, Time};

/// Updates emitted per activation.
pub const SLICE: usize = 64 * 1024;

/// `collection.distinct()`, whose output is emitted [`SLICE`] updates at a time (see the
/// module docs): the same updates at the same times.
pub fn distinct<'s, D>(
    collection: VecCollection<'s, Time, D, Diff>,
    name: &str,
) -> VecCollection<'s, Time, D, Diff>
where
    D: differential_dataflow::ExchangeData + Hashable,
{
    distinct_in_slices(collection, name, SLICE)
}

/// [`distinct`], `slice` updates per activation.
fn distinct_in_slices<'s, D>(
    collection: VecCollection<'s, Time, D, Diff>,
    name: &str,
    slice: usize,
) -> VecCollection<'s, Time, D, Diff>
where
    D: differential_dataflow::ExchangeData + Hashable,
{
    let arranged = collection
        .arrange_by_self_named(&format!("Arrange: {name}"))
        .reduce_abelian::<_, KeyBuilder<D, Time, Diff>, KeySpine<D, Time, Diff>, _, _>(
            name,
            |_key, _input, output| output.push(((), 1)),
            |vec, key, updates| {
                vec.clear();
                vec.extend(updates.drain(..).map(|(v, t, r)| ((key.clone(), v), t, r)));
            },
        );
    let scope = arranged.stream.scope();
    arranged
        .stream
        .unary(
            Pipeline,
            &format!("PacedAsCollection: {name}"),
            move |_, info| {
                let activator = scope.activator_for(info.address);
                // Batches not fully emitted yet: the capability of their time, the batch, where
                // its cursor stands.
                let mut pending = VecDeque::new();
                move |input, output| {
                    input.for_each(|time, spans| {
                        let Some(capability) = time.retain_least(0) else {
                            return;
                        };
                        for span in spans.drain(..) {
                            if let Some(batch) = span.inner {
                                let cursor = batch.cursor();
                                pending.push_back((capability.clone(), batch, cursor));
                            }
                        }
                    });
                    let mut budget = slice;
                    while budget > 0 {
                        let Some((capability, batch, cursor)) = pending.front_mut() else {
                            break;
                        };
                        let mut session = output.session(capability);
                        while budget > 0 {
                            let Some(key) = cursor.get_key(batch) else {
                                break;
                            };
                            while cursor.get_val(batch).is_some() {
                                cursor.map_times(batch, |time, diff| {
                                    session.give((key.clone(), *time, *diff));
                                    budget = budget.saturating_sub(1);
                                });
                                cursor.step_val(batch);
                            }
                            cursor.step_key(batch);
                        }
                        drop(session);
                        if !cursor.key_valid(batch) {
                            pending.pop_front();
                        }
                    }
                    if !pending.is_empty() {
                        activator.activate();
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::operators::{Capture, ToStream};

    /// `distinct` and the paced one over the same updates, consolidated.
    fn both(updates: Vec<(u32, Time, Diff)>, slice: usize) -> [Vec<(u32, Time, Diff)>; 2] {
        let (plain, paced) = timely::example(move |scope| {
            let input = updates.into_iter().to_stream(scope).as_collection();
            let plain = input.clone().distinct().consolidate().inner.capture();
            let paced = distinct_in_slices(input, "Test", slice)
                .consolidate()
                .inner
                .capture();
            (plain, paced)
        });
        [crate::sorted_updates(plain), crate::sorted_updates(paced)]
    }

    #[test]
    fn the_paced_distinct_emits_what_distinct_does_a_slice_at_a_time() {
        // 1,000 values, each twice at time 0; some retracted or added again later.
        let mut updates: Vec<(u32, Time, Diff)> =
            (0..1000).flat_map(|v| [(v, 0, 1), (v, 0, 1)]).collect();
        updates.extend((0..1000).step_by(7).map(|v| (v, 3, -2)));
        updates.extend((0..1000).step_by(14).map(|v| (v, 5, 1)));
        updates.extend((1000..1010).map(|v| (v, 5, 3)));
        for slice in [1, 3, 64, SLICE] {
            let [plain, paced] = both(updates.clone(), slice);
            assert_eq!(plain.len(), 1000 + 143 + 72 + 10, "slice {slice}");
            assert_eq!(paced, plain, "slice {slice}");
        }
    }
}
