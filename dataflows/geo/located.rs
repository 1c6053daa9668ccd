//! Each user's messages with coordinates, arranged once by user ([`located`]): the user
//! mart's stays, the recommendations' positions and the zone mart's registrations all read
//! this one arrangement ([`reduce_located`]), so a message is kept once per user, not once
//! per rule.
//!
//! ```text
//!  (event, zone) ── messages with a point ── arrange by user ─┬─► Travels (user_mart.rs)
//!                                                             ├─► Position (friends.rs)
//!                                                             └─► EarliestLocated
//!                                                                 (zone_mart.rs)
//! ```

use chrono::NaiveDateTime;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::{ExchangeData, VecCollection};

use super::events::{Action, Event};
use super::point::Point;
use crate::{Diff, Time};

/// A message with coordinates: `(time, message_id, zone, point)`; a user's messages sort in
/// the SPEC's order, (time, message_id).
pub type Located = (NaiveDateTime, i64, i32, Point);

/// The messages with coordinates of every user, arranged by user.
pub type LocatedMessages<'s> = Arranged<'s, TraceAgent<ValSpine<i64, Located, Time, Diff>>>;

/// The messages with coordinates among `zoned` events (each with its zone), by user.
pub fn located<'s>(zoned: VecCollection<'s, Time, (Event, i32), Diff>) -> LocatedMessages<'s> {
    zoned
        .flat_map(|(event, zone)| match (event.action, event.point) {
            (Action::Message { id, .. }, Some(point)) => {
                Some((event.user, (event.time, id, zone, point)))
            }
            _ => None,
        })
        .arrange_by_key_named("Arrange: LocatedMessages")
}

/// `logic` over each user's located messages (sorted, each with its count), as a reduce of
/// the shared arrangement: `(user, output)`.
pub fn reduce_located<'s, V, L>(
    messages: LocatedMessages<'s>,
    name: &str,
    mut logic: L,
) -> VecCollection<'s, Time, (i64, V), Diff>
where
    V: ExchangeData,
    L: FnMut(&i64, &[(&Located, Diff)], &mut Vec<(V, Diff)>) + 'static,
{
    messages
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<i64, V, Time, Diff>, _, _>(
            name,
            move |user, input, output| logic(user, input, output),
            |vec, user, updates| {
                vec.clear();
                vec.extend(updates.drain(..).map(|(v, t, r)| ((*user, v), t, r)));
            },
        )
        .as_collection(|user, v| (*user, v.clone()))
}
