//! The rule *latest `update_ts` wins* per `object_id` ([`CurrentOrders`]).

use std::collections::HashMap;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::*;
use crate::{Diff, Replayable, Retained, Time, replay_state};

/// What decides between two versions of an order: the later `update_ts`, then the greater
/// MD5 of the payload text (so that every replay order gives the same result; Postgres
/// computes the same digest, `md5(payload::text)`, for a ground truth).
type Rank = (chrono::NaiveDateTime, [u8; 16]);

fn rank(version: &OrderVersion) -> Rank {
    let digest = Md5::digest(version.event.payload.as_bytes());
    (version.order.update_ts, digest.into())
}

/// What [`CurrentOrders`] emits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Current {
    /// The decoded current version of an order, as a collection: the old version is
    /// retracted when a newer one replaces it.
    Order(Arc<Order>),
    /// The raw event of a version that became current (an upsert by `object_id`, never
    /// retracted): what STG writes. At most one per order and time.
    Stg(Arc<OrderEvent>),
}

/// One order's current version as the state keeps it: its decoded fields (shared with the
/// arrangements downstream, with its `update_ts`), the MD5 of its payload and its position in
/// the topic. The payload text is not kept: STG receives it once, when the version becomes
/// current.
struct Kept {
    order: Arc<Order>,
    digest: [u8; 16],
    at: (i32, i64),
}

/// The current version of every order, keyed by `object_id` (see the module rules), and the
/// positions of those versions in the topic: replaying from the oldest rebuilds the state.
#[derive(Default)]
pub struct CurrentOrders {
    current: HashMap<i32, Kept>,
    positions: Retained,
}

impl Replayable for CurrentOrders {
    type Message = OrderMessage;
    type Output = Current;

    fn route(message: &OrderMessage) -> u64 {
        message.version.event.object_id.hashed()
    }

    fn apply(
        &mut self,
        time: Time,
        messages: Vec<OrderMessage>,
        emit: &mut impl FnMut(Current, Time, Diff),
    ) {
        let mut messages: Vec<(Rank, OrderMessage)> = messages
            .into_iter()
            .map(|m| (rank(&m.version), m))
            .collect();
        messages.sort_by_key(|(rank, _)| *rank);
        // The raw event of each order whose current version changed at `time`.
        let mut stg: HashMap<i32, OrderEvent> = HashMap::new();
        for ((update_ts, digest), message) in messages {
            let position = (message.partition, message.offset);
            let OrderVersion { event, order } = message.version;
            let id = event.object_id;
            let newer = (self.current.get(&id))
                .is_none_or(|kept| (update_ts, digest) > (kept.order.update_ts, kept.digest));
            if !newer {
                continue; // the same or an older version: nothing changes
            }
            let order = Arc::new(order);
            emit(Current::Order(Arc::clone(&order)), time, 1);
            let kept = Kept {
                order,
                digest,
                at: position,
            };
            if let Some(old) = self.current.insert(id, kept) {
                emit(Current::Order(old.order), time, -1);
                self.positions.remove(&old.at);
            }
            self.positions.insert(position);
            stg.insert(id, event);
        }
        for event in stg.into_values() {
            emit(Current::Stg(Arc::new(event)), time, 1);
        }
    }

    fn retained(&self) -> Vec<(i32, i64)> {
        self.positions.oldest()
    }
}

/// The current orders ([`CurrentOrders`]): their decoded versions as a collection, the STG
/// upserts, and the workers' [`crate::Retention`].
pub struct CurrentOutputs<'s> {
    /// The current version of every order.
    pub orders: VecCollection<'s, Time, Arc<Order>, Diff>,
    /// Each version that became current, once, at the time it did (see [`Current::Stg`]).
    pub stg: VecCollection<'s, Time, Arc<OrderEvent>, Diff>,
    /// What the state retains (for progress).
    pub retention: timely::dataflow::Stream<'s, Time, Vec<crate::Retention>>,
}

/// The current orders of the order messages (see [`CurrentOrders`]).
pub fn current_orders<'s>(
    messages: VecCollection<'s, Time, OrderMessage, Diff>,
) -> CurrentOutputs<'s> {
    let (current, retention) = replay_state(messages, "CurrentOrders", CurrentOrders::default());
    CurrentOutputs {
        stg: current.clone().flat_map(|c| match c {
            Current::Stg(event) => Some(event),
            Current::Order(_) => None,
        }),
        orders: current.flat_map(|c| match c {
            Current::Order(order) => Some(order),
            Current::Stg(_) => None,
        }),
        retention,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::tests::version;

    fn at(version: &OrderVersion, offset: i64) -> OrderMessage {
        OrderMessage {
            version: version.clone(),
            partition: 0,
            offset,
        }
    }

    fn status(c: &Current) -> String {
        match c {
            Current::Order(o) => o.status.to_string(),
            Current::Stg(e) => format!("stg {}", e.payload.contains("CLOSED")),
        }
    }

    #[test]
    fn the_latest_update_ts_wins_and_redelivery_changes_nothing() {
        let mut state = CurrentOrders::default();
        let mut out = Vec::new();
        let open = version(1, "OPEN", "2022-11-19 15:00:00", &[("p1", 1)]);
        let closed = version(1, "CLOSED", "2022-11-19 16:00:00", &[("p1", 1)]);
        let mut emit = |c: Current, t, d| out.push((status(&c), t, d));
        state.apply(10, vec![at(&open, 0)], &mut emit);
        state.apply(20, vec![at(&closed, 1), at(&open, 2)], &mut emit);
        state.apply(30, vec![at(&closed, 3), at(&open, 4)], &mut emit);
        assert_eq!(
            out,
            [
                ("OPEN".to_string(), 10, 1),
                ("stg false".to_string(), 10, 1),
                ("CLOSED".to_string(), 20, 1),
                ("OPEN".to_string(), 20, -1),
                ("stg true".to_string(), 20, 1),
            ]
        );
        // The state depends on the CLOSED version only (offset 1).
        assert_eq!(state.retained(), [(0, 1)]);
    }

    #[test]
    fn equal_update_ts_goes_to_the_greater_payload_digest_in_any_order() {
        let a = version(1, "OPEN", "2022-11-19 15:00:00", &[("p1", 1)]);
        let b = version(1, "CLOSED", "2022-11-19 15:00:00", &[("p1", 1)]);
        let winner = if rank(&a) > rank(&b) {
            "OPEN"
        } else {
            "CLOSED"
        };
        for (first, second) in [(&a, &b), (&b, &a)] {
            // Together in one batch, and one after the other.
            for split in [false, true] {
                let mut state = CurrentOrders::default();
                let mut stg = Vec::new();
                let mut emit = |c: Current, _, d| {
                    if let Current::Stg(e) = c {
                        stg.push((e.payload.contains(winner), d));
                    }
                };
                if split {
                    state.apply(1, vec![at(first, 0)], &mut emit);
                    state.apply(2, vec![at(second, 1)], &mut emit);
                } else {
                    state.apply(1, vec![at(first, 0), at(second, 1)], &mut emit);
                }
                assert_eq!(state.current[&1].order.status, winner);
                assert_eq!(stg.last(), Some(&(true, 1)));
            }
        }
    }
}
