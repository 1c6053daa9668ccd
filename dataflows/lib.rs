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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod promos;

/// Logical time of every dishflow dataflow: milliseconds since the unix epoch.
pub type Time = u64;

/// Difference type of every collection: how many copies of a record are added (+) or removed (-).
pub type Diff = isize;

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
}

/// A record that could not be decoded, with the reason, bound for the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The record exactly as it was read.
    pub record: RawRecord,
    /// Why it was rejected: a stable, machine-readable reason (see [`promos::Reject`]).
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
