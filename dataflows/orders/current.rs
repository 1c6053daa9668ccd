//! The rule *latest `update_ts` wins* per `object_id` ([`CurrentOrders`]).

use std::collections::HashMap;

use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use timely::dataflow::Stream;

use super::*;
use crate::{Diff, Replayable, Retained, Retention, Time, replay_state};

/// The current version of every order, keyed by `object_id` (see the module rules), and the
/// positions of those versions in the topic: replaying from the oldest rebuilds the state.
#[derive(Default)]
pub struct CurrentOrders {
    current: HashMap<i32, (OrderVersion, (i32, i64))>,
    positions: Retained,
}

impl Replayable for CurrentOrders {
    type Message = OrderMessage;
    type Output = OrderVersion;

    fn route(message: &OrderMessage) -> u64 {
        message.version.event.object_id.hashed()
    }

    fn apply(
        &mut self,
        time: Time,
        mut messages: Vec<OrderMessage>,
        emit: &mut impl FnMut(OrderVersion, Time, Diff),
    ) {
        messages.sort_by(|a, b| a.version.rank().cmp(&b.version.rank()));
        for message in messages {
            let position = (message.partition, message.offset);
            let id = message.version.event.object_id;
            match self.current.get_mut(&id) {
                None => {
                    emit(message.version.clone(), time, 1);
                    self.positions.insert(position);
                    self.current.insert(id, (message.version, position));
                }
                Some((current, at)) if message.version.rank() > current.rank() => {
                    emit(current.clone(), time, -1);
                    emit(message.version.clone(), time, 1);
                    self.positions.remove(at);
                    self.positions.insert(position);
                    *current = message.version;
                    *at = position;
                }
                Some(_) => {} // the same or an older version: nothing changes
            }
        }
    }

    fn retained(&self) -> Vec<(i32, i64)> {
        self.positions.oldest()
    }
}

/// The current order versions ([`CurrentOrders`]) and the workers' [`Retention`].
pub fn current_orders<'s>(
    messages: VecCollection<'s, Time, OrderMessage, Diff>,
) -> (
    VecCollection<'s, Time, OrderVersion, Diff>,
    Stream<'s, Time, Vec<Retention>>,
) {
    replay_state(messages, "CurrentOrders", CurrentOrders::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::tests::version;

    #[test]
    fn the_latest_update_ts_wins_and_redelivery_changes_nothing() {
        let mut state = CurrentOrders::default();
        let mut out = Vec::new();
        let open = version(1, "OPEN", "2022-11-19 15:00:00", &[("p1", 1)]);
        let closed = version(1, "CLOSED", "2022-11-19 16:00:00", &[("p1", 1)]);
        let at = |version: &OrderVersion, offset| OrderMessage {
            version: version.clone(),
            partition: 0,
            offset,
        };
        let mut emit = |v: OrderVersion, t, d| out.push((v.order.status, t, d));
        state.apply(10, vec![at(&open, 0)], &mut emit);
        state.apply(20, vec![at(&closed, 1), at(&open, 2)], &mut emit);
        state.apply(30, vec![at(&closed, 3), at(&open, 4)], &mut emit);
        assert_eq!(
            out,
            [
                ("OPEN".to_string(), 10, 1),
                ("OPEN".to_string(), 20, -1),
                ("CLOSED".to_string(), 20, 1)
            ]
        );
        // The state depends on the CLOSED version only (offset 1).
        assert_eq!(state.retained(), [(0, 1)]);
    }
}
