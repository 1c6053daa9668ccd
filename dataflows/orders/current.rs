//! The rule *latest `update_ts` wins* per `object_id` ([`CurrentOrders`]).

use std::collections::HashMap;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;

use super::*;
use crate::{Diff, Replayable, Retained, Time, replay_state};

/// The current version of every order, keyed by `object_id` (see the module rules), and the
/// positions of those versions in the topic: replaying from the oldest rebuilds the state.
/// A version is kept and emitted behind one `Arc`: the state, the collection and what is
/// derived from it share its payload instead of copying it.
#[derive(Default)]
pub struct CurrentOrders {
    current: HashMap<i32, (Arc<OrderVersion>, (i32, i64))>,
    positions: Retained,
}

impl Replayable for CurrentOrders {
    type Message = OrderMessage;
    type Output = Arc<OrderVersion>;

    fn route(message: &OrderMessage) -> u64 {
        message.version.event.object_id.hashed()
    }

    fn apply(
        &mut self,
        time: Time,
        mut messages: Vec<OrderMessage>,
        emit: &mut impl FnMut(Arc<OrderVersion>, Time, Diff),
    ) {
        messages.sort_by(|a, b| a.version.rank().cmp(&b.version.rank()));
        for message in messages {
            let position = (message.partition, message.offset);
            let id = message.version.event.object_id;
            match self.current.get_mut(&id) {
                None => {
                    let version = Arc::new(message.version);
                    emit(Arc::clone(&version), time, 1);
                    self.positions.insert(position);
                    self.current.insert(id, (version, position));
                }
                Some((current, at)) if message.version.rank() > current.rank() => {
                    let version = Arc::new(message.version);
                    emit(Arc::clone(current), time, -1);
                    emit(Arc::clone(&version), time, 1);
                    self.positions.remove(at);
                    self.positions.insert(position);
                    *current = version;
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

/// The current order versions ([`CurrentOrders`]) and the workers' [`crate::Retention`].
pub fn current_orders<'s>(
    messages: VecCollection<'s, Time, OrderMessage, Diff>,
) -> crate::WithRetention<'s, Arc<OrderVersion>> {
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
        let mut emit = |v: Arc<OrderVersion>, t, d| out.push((v.order.status.clone(), t, d));
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
