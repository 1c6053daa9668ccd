//! dishflow's jobs as pure differential-dataflow functions.
//!
//! Nothing in this crate performs I/O: every function takes differential collections and
//! returns collections, so the business rules can be tested in-process with exact
//! `(data, time, diff)` expectations. The engine (`dishflow` crate, `src/`) feeds these
//! functions from Kafka and Postgres and writes their outputs back.
//!
//! # Logical time
//!
//! A logical time ([`Time`]) is a count of **milliseconds since the unix epoch**. Sources stamp
//! each input change with the wall-clock time at which the job read it (never earlier than the
//! source's current capability), and advance their capabilities with the wall clock even when
//! no input arrives. Consequently:
//!
//! * the frontier of every collection trails the wall clock by at most one source tick;
//! * an update stamped in the future (a campaign that starts at 14:00) is held by
//!   differential dataflow and released when the frontier passes 14:00;
//! * a sink writes the updates of time `t` once the frontier has passed `t`, so the output is
//!   the sequence of consolidated changes, in time order.

#![forbid(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::ExchangeData;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::CapabilitySet;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

#[cfg(test)]
mod arbitrary;
pub mod decode;
pub mod geo;
pub mod orders;
pub mod paced;
pub mod promos;

/// Logical time of every dishflow dataflow: milliseconds since the unix epoch.
pub type Time = u64;

/// Difference type of every collection: how many copies of a record are added (+) or removed (-).
pub type Diff = isize;

/// Which of a key's values [`one_per_key`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The least (a deterministic choice among equals, e.g. a product listed twice).
    Least,
    /// The greatest (e.g. the latest state, when values order by time).
    Greatest,
}

/// One value per key of `pairs`: the least or the greatest of the key's values, so a key
/// present several times still has one value downstream.
pub fn one_per_key<'s, K, V>(
    name: &str,
    pairs: VecCollection<'s, Time, (K, V), Diff>,
    pick: Pick,
) -> VecCollection<'s, Time, (K, V), Diff>
where
    K: differential_dataflow::ExchangeData + differential_dataflow::hashable::Hashable,
    V: differential_dataflow::ExchangeData,
{
    pairs.reduce_named(name, move |_key, input, output| {
        let chosen = match pick {
            Pick::Least => input.first(),
            Pick::Greatest => input.last(),
        };
        if let Some((value, _)) = chosen {
            output.push(((*value).clone(), 1));
        }
    })
}

/// Converts unix seconds (possibly negative or absurdly large) to a logical time.
pub fn secs_to_time(secs: i64) -> Time {
    u64::try_from(secs).unwrap_or(0).saturating_mul(1000)
}

/// Converts a logical time to whole unix seconds (rounding down).
pub fn time_to_secs(time: Time) -> i64 {
    i64::try_from(time / 1000).unwrap_or(i64::MAX)
}

/// One message as read from a Kafka partition, before decoding.
///
/// The source topic is not stored per record: every source reads one topic, and whoever
/// writes a record back (the dead-letter sink) knows which.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RawRecord {
    /// Partition the message was read from.
    pub partition: i32,
    /// Offset of the message in its partition.
    pub offset: i64,
    /// Message key, as sent (`None`: no key).
    pub key: Option<Vec<u8>>,
    /// Message value, as sent (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Message headers, as sent, in order (a header without a value has an empty one);
    /// empty for most records, and then without an allocation.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A record that could not be decoded, with the reason, bound for the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The record exactly as it was read.
    pub record: RawRecord,
    /// Why it was rejected: a stable, machine-readable reason (see [`promos::Reject`]).
    pub reason: String,
}

/// A value read by key from a store that has no offsets (a Redis dictionary entry) that is
/// not a valid input: the job treats the key as absent and dead-letters the value once per
/// (key, value, reason).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RejectedValue {
    /// The store's key.
    pub key: String,
    /// The value, as read.
    pub value: Vec<u8>,
    /// Why it was rejected (a [`decode::Reject`] code).
    pub reason: String,
}

/// Keys scheduled for a logical time: what bounded state uses to find what it may forget.
///
/// The owner keeps the authoritative time per key in its own map; a key may be scheduled
/// several times (its time moved later), and the owner checks its map for each due key.
#[derive(Clone, Debug)]
pub struct Schedule<K> {
    by_time: BTreeMap<Time, Vec<K>>,
}

impl<K> Default for Schedule<K> {
    fn default() -> Self {
        Schedule {
            by_time: BTreeMap::new(),
        }
    }
}

impl<K> Schedule<K> {
    /// Schedules `key` for `time`.
    pub fn add(&mut self, time: Time, key: K) {
        self.by_time.entry(time).or_default().push(key);
    }

    /// Removes and passes to `due` every key scheduled at or before `time`, with its time.
    pub fn take_until(&mut self, time: Time, mut due: impl FnMut(Time, K)) {
        while let Some(entry) = self.by_time.first_entry() {
            if *entry.key() > time {
                break;
            }
            let at = *entry.key();
            for key in entry.remove() {
                due(at, key);
            }
        }
    }
}

/// What one worker's state depends on: (worker index, per partition the oldest offset it
/// retains; partitions not listed: none). Reported at a time once everything up to that
/// time was applied, and whenever it changed.
pub type Retention = (usize, Vec<(i32, i64)>);

/// The input positions (partition, offset) a state depends on: replaying each partition
/// from its oldest retained offset rebuilds the state.
#[derive(Clone, Debug, Default)]
pub struct Retained {
    positions: BTreeSet<(i32, i64)>,
}

impl Retained {
    /// The state now depends on the message at `position`.
    pub fn insert(&mut self, position: (i32, i64)) {
        self.positions.insert(position);
    }

    /// The state no longer depends on the message at `position`.
    pub fn remove(&mut self, position: &(i32, i64)) {
        self.positions.remove(position);
    }

    /// Per partition, the offset of the oldest message the state depends on.
    pub fn oldest(&self) -> Vec<(i32, i64)> {
        let mut oldest = Vec::new();
        let mut next = self.positions.first().copied();
        while let Some((partition, offset)) = next {
            oldest.push((partition, offset));
            next = partition
                .checked_add(1)
                .and_then(|p| self.positions.range((p, i64::MIN)..).next().copied());
        }
        oldest
    }
}

/// A collection and the [`Retention`] reports of the state that produces it.
pub type WithRetention<'s, D> = (
    VecCollection<'s, Time, D, Diff>,
    Stream<'s, Time, Vec<Retention>>,
);

/// A keyed state machine fed by input messages in logical-time order, whose state a restart
/// rebuilds by replaying the messages it [retains](Replayable::retained).
pub trait Replayable: 'static {
    /// What arrives (decoded input messages, with their positions).
    type Message: ExchangeData;
    /// What the state's collection holds.
    type Output: differential_dataflow::Data;

    /// Which worker a message goes to (by hash): all messages of one key must meet.
    fn route(message: &Self::Message) -> u64;

    /// Applies the messages of logical time `time` (all earlier ones were applied), emitting
    /// the changes of the output collection as `(record, at, diff)` with `at >= time`.
    fn apply(
        &mut self,
        time: Time,
        messages: Vec<Self::Message>,
        emit: &mut impl FnMut(Self::Output, Time, Diff),
    );

    /// Every message up to `time` was applied: state that ended by then may be forgotten.
    fn expire(&mut self, _time: Time) {}

    /// Per partition, the oldest offset the state depends on (see [`Retained`]).
    fn retained(&self) -> Vec<(i32, i64)>;
}

/// Runs `state` (one per worker) over `messages`: each worker applies the messages routed to
/// it in logical-time order once the input frontier has passed their time. A change emitted
/// for a later time (a campaign's end) is held here until the input frontier reaches that
/// time (all of them once the input has ended), not sent ahead: downstream it would be held
/// once per derived record — every draft of the campaign, in the sink — until then. Returns
/// the output collection and the workers' [`Retention`] reports.
pub fn replay_state<'s, S: Replayable>(
    messages: VecCollection<'s, Time, S::Message, Diff>,
    name: &str,
    mut state: S,
) -> WithRetention<'s, S::Output> {
    let exchange = Exchange::new(|(m, _, _): &(S::Message, Time, Diff)| S::route(m));
    let scope = messages.inner.scope();
    let worker = scope.index();
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let mut input = builder.new_input(messages.inner, exchange);
    let (records_output, records) = builder.new_output::<Vec<(S::Output, Time, Diff)>>();
    let (retention_output, retention) = builder.new_output::<Vec<Retention>>();
    let mut records_output = OutputBuilder::from(records_output);
    let mut retention_output = OutputBuilder::from(retention_output);
    builder.build(move |_capabilities| {
        let mut pending: BTreeMap<Time, Vec<S::Message>> = BTreeMap::new();
        // Changes the state scheduled for later times (a campaign's end), held here until
        // the input frontier reaches their time: downstream, a future change would be held
        // once per derived record (every draft of the campaign, in the sink) until then.
        let mut deferred: BTreeMap<Time, Vec<(S::Output, Diff)>> = BTreeMap::new();
        let mut capabilities = [CapabilitySet::new(), CapabilitySet::new()];
        let mut reported: Vec<(i32, i64)> = Vec::new();
        move |frontiers| {
            let frontier = frontiers[0].frontier();
            let mut records_handle = records_output.activate();
            let mut retention_handle = retention_output.activate();
            input.for_each(|capability, data| {
                for (port, set) in capabilities.iter_mut().enumerate() {
                    if let Some(capability) = capability.retain_least(port) {
                        set.insert(capability);
                    }
                }
                for (message, time, diff) in data.drain(..) {
                    // Messages are only ever added; a retraction would be a bug upstream.
                    if diff > 0 {
                        pending.entry(time).or_default().push(message);
                    }
                }
            });
            while let Some(entry) = pending.first_entry() {
                let time = *entry.key();
                if frontier.less_equal(&time) {
                    break;
                }
                state.expire(time.saturating_sub(1));
                let capability = capabilities[0].delayed(&time);
                let mut session = records_handle.session(&capability);
                state.apply(time, entry.remove(), &mut |record, at, diff| {
                    if at > time {
                        deferred.entry(at).or_default().push((record, diff));
                    } else {
                        session.give((record, at, diff));
                    }
                });
                let retained = state.retained();
                if retained != reported {
                    let capability = capabilities[1].delayed(&time);
                    retention_handle
                        .session(&capability)
                        .give((worker, retained.clone()));
                    reported = retained;
                }
            }
            match frontier.first() {
                Some(&time) => state.expire(time.saturating_sub(1)),
                None => state.expire(Time::MAX),
            }
            // Release what is due (everything, once the input has ended).
            while let Some(entry) = deferred.first_entry() {
                let at = *entry.key();
                if frontier.less_than(&at) {
                    break;
                }
                let mut changes = entry.remove();
                consolidate(&mut changes);
                let capability = capabilities[0].delayed(&at);
                records_handle
                    .session(&capability)
                    .give_iterator(changes.into_iter().map(|(record, diff)| (record, at, diff)));
            }
            let next_input = pending.first_key_value().map(|(&time, _)| time);
            let next_output = next_input
                .into_iter()
                .chain(deferred.first_key_value().map(|(&t, _)| t))
                .min();
            match next_output {
                Some(time) => capabilities[0].downgrade([time]),
                None => capabilities[0] = CapabilitySet::new(),
            }
            match next_input {
                Some(time) => capabilities[1].downgrade([time]),
                None => capabilities[1] = CapabilitySet::new(),
            }
        }
    });
    (records.as_collection(), retention)
}

/// The updates a test captured from a dataflow (`.consolidate().inner.capture()`), sorted:
/// what the rules' tests compare with exact `(data, time, diff)`.
#[cfg(test)]
pub(crate) fn sorted_updates<D: Ord>(
    captured: impl timely::dataflow::operators::capture::Extract<Time, Vec<(D, Time, Diff)>>,
) -> Vec<(D, Time, Diff)> {
    let mut updates: Vec<_> = (captured.extract().into_iter())
        .flat_map(|(_, batch)| batch)
        .collect();
    updates.sort();
    updates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_milliseconds_convert_both_ways() {
        assert_eq!(secs_to_time(1_659_203_516), 1_659_203_516_000);
        assert_eq!(secs_to_time(-5), 0);
        assert_eq!(time_to_secs(1_659_203_516_999), 1_659_203_516);
    }

    #[test]
    fn a_schedule_hands_out_due_keys_in_time_order() {
        let mut s = Schedule::default();
        s.add(30, "c");
        s.add(10, "a");
        s.add(20, "b");
        let mut due = Vec::new();
        s.take_until(20, |t, k| due.push((t, k)));
        assert_eq!(due, [(10, "a"), (20, "b")]);
        s.take_until(25, |t, k| due.push((t, k)));
        assert_eq!(due.len(), 2);
        s.take_until(30, |t, k| due.push((t, k)));
        assert_eq!(due[2], (30, "c"));
    }
}
