//! Friend recommendations `mart.geo_friend_recommendations` ([`recommendations`]): pairs of
//! users at most 1 km apart who share a channel and never wrote to each other.
//!
//! ```text
//!  (message, zone) ── latest per user ──► position (point, zone)
//!        ├─ its own cell ────────────────────────┐
//!        └─ every cell within 1 km (probes) ─────┴─ join on cell ─► pairs left < right,
//!                                                                   distance ≤ 1 km
//!  subscriptions ── distinct (user, channel) ──► semijoin: a common channel
//!  direct messages ── distinct pairs ──────────► antijoin: never wrote to each other
//!                                                   ▼
//!                                  Recommendation { left, right, zone of left }
//! ```
//!
//! Pairs come from positions first: a user's position is found by every user whose probe
//! cells (a grid of [`CELL_DEG`]° cells covering the 1 km box around them) include it, so
//! the work grows with users per square kilometre, never with a channel's size. A channel of
//! 100,000 subscribers costs nothing until two of them are within 1 km.
//!
//! State: per user, the messages with coordinates are read from the arrangement the user
//! mart's stays keep anyway (`located.rs`); the position keeps only the latest; every
//! distinct subscription and direct-message pair.
//! The grid does not wrap at ±180° of longitude nor handle the poles.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::events::{Action, Event};
use super::located::{LocatedMessages, reduce_located};
use super::point::{EARTH_RADIUS_KM, Point, distance_km};
use crate::{Diff, Time};

/// The greatest distance of a recommended pair.
pub const MAX_KM: f64 = 1.0;

/// The side of a grid cell, in degrees of latitude and of longitude.
pub const CELL_DEG: f64 = 0.01;

/// A grid cell: (row, column) of [`CELL_DEG`]° cells.
pub type Cell = (i64, i64);

/// The cell of `point`.
pub fn cell_of(point: Point) -> Cell {
    let (lat, lon) = point.degrees();
    (
        (lat / CELL_DEG).floor() as i64,
        (lon / CELL_DEG).floor() as i64,
    )
}

/// Every cell that holds a point at most [`MAX_KM`] from `point`: those overlapping the box
/// of ±`MAX_KM` around it.
pub fn probe_cells(point: Point) -> Vec<Cell> {
    let (lat, lon) = point.degrees();
    let dlat = (MAX_KM / EARTH_RADIUS_KM).to_degrees();
    // Longitude degrees shrink with the cosine of the latitude: take the box's widest.
    let widest = (lat.abs() + dlat).min(89.9).to_radians().cos();
    let dlon = dlat / widest;
    let (row0, row1) = (
        ((lat - dlat) / CELL_DEG).floor() as i64,
        ((lat + dlat) / CELL_DEG).floor() as i64,
    );
    let (col0, col1) = (
        ((lon - dlon) / CELL_DEG).floor() as i64,
        ((lon + dlon) / CELL_DEG).floor() as i64,
    );
    (row0..=row1)
        .flat_map(|row| (col0..=col1).map(move |col| (row, col)))
        .collect()
}

/// A recommended pair: `left < right`, and the zone of `left`'s position.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Recommendation {
    /// `user_left`.
    pub left: i64,
    /// `user_right`.
    pub right: i64,
    /// `zone_id`: the zone of `left`'s position.
    pub zone: i32,
}

impl Recommendation {
    /// The identity of its row (and of its Kafka key `<left>:<right>`), hashed.
    pub fn route(&self) -> u64 {
        use differential_dataflow::hashable::Hashable;
        (self.left, self.right).hashed()
    }
}

/// The friend recommendations of each user's `located` messages (with coordinates and their
/// zones, `located::located`) and all `events` (subscriptions and direct messages need no
/// coordinates).
pub fn recommendations<'s>(
    events: VecCollection<'s, Time, Event, Diff>,
    located: LocatedMessages<'s>,
) -> VecCollection<'s, Time, Recommendation, Diff> {
    // Each user's position: the latest message with coordinates, by (time, message_id).
    let positions = reduce_located(located, "Position", |_user, input, output| {
        let &(_, _, zone, point) = input[input.len() - 1].0;
        output.push(((point, zone), 1 as Diff));
    });
    let homes = positions
        .clone()
        .map(|(user, (point, _))| (cell_of(point), (user, point)));
    let probes = positions.flat_map(|(user, (point, zone))| {
        probe_cells(point)
            .into_iter()
            .map(move |cell| (cell, (user, point, zone)))
    });
    let near = probes
        .join_map(homes, |_cell, &(left, a, zone), &(right, b)| {
            (left, right, a, b, zone)
        })
        .flat_map(|(left, right, a, b, zone)| {
            (left < right && distance_km(a, b) <= MAX_KM).then_some(((left, right), zone))
        });
    let subscriptions = events
        .clone()
        .flat_map(|e| match e.action {
            Action::Subscription { channel } => Some((e.user, channel)),
            _ => None,
        })
        .distinct();
    // Pairs with a common channel: (left, channel) of left's, then (right, channel).
    let shared = near
        .clone()
        .map(|((left, right), _)| (left, right))
        .join_map(subscriptions.clone(), |&left, &right, &channel| {
            ((right, channel), left)
        })
        .semijoin(subscriptions)
        .map(|((right, _channel), left)| (left, right))
        .distinct();
    let wrote = events
        .flat_map(|e| match e.action {
            Action::Message { to: Some(to), .. } if to != e.user => {
                Some((e.user.min(to), e.user.max(to)))
            }
            _ => None,
        })
        .distinct();
    near.semijoin(shared)
        .antijoin(wrote)
        .map(|((left, right), zone)| Recommendation { left, right, zone })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::located::located;
    use chrono::NaiveDateTime;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::{Capture, ToStream};

    fn at(minute: u32) -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2022, 5, 21)
            .and_then(|d| d.and_hms_opt(10, minute, 0))
            .expect("a time")
    }

    fn point(lat: f64, lon: f64) -> Point {
        Point::from_degrees(lat, lon).expect("a point")
    }

    #[test]
    fn the_probe_cells_cover_every_point_within_a_kilometre() {
        // Points on a 0.5 km spiral around a centre, some just inside 1 km, some outside:
        // every one within 1 km lies in one of the centre's probe cells.
        for &(lat, lon) in &[(-33.865, 151.2094), (-12.4381, 130.8411), (0.0049, 0.0049)] {
            let centre = point(lat, lon);
            let probes = probe_cells(centre);
            assert!(probes.len() <= 16, "{} cells", probes.len());
            for step in 0..720 {
                let angle = f64::from(step).to_radians();
                for km in [0.2, 0.7, 0.99] {
                    let d = km / EARTH_RADIUS_KM;
                    let p = point(
                        lat + (d * angle.sin()).to_degrees(),
                        lon + (d * angle.cos()).to_degrees() / lat.to_radians().cos(),
                    );
                    if distance_km(centre, p) <= MAX_KM {
                        assert!(probes.contains(&cell_of(p)), "{p:?} near {centre:?}");
                    }
                }
            }
        }
    }

    fn message(user: i64, minute: u32, p: Point, to: Option<i64>) -> Event {
        Event {
            user,
            time: at(minute),
            point: Some(p),
            action: Action::Message {
                id: i64::from(minute),
                to,
                channel: None,
            },
        }
    }

    fn subscription(user: i64, channel: i64) -> Event {
        Event {
            user,
            time: at(0),
            point: None,
            action: Action::Subscription { channel },
        }
    }

    fn run(events: Vec<(Event, Time, Diff)>) -> Vec<((i64, i64, i32), Time, Diff)> {
        let captured = timely::example(move |scope| {
            let events = events.into_iter().to_stream(scope).as_collection();
            // Zone: 1 north of −33.87°, 2 south of it.
            let zoned = events.clone().flat_map(|e: Event| {
                let zone = e.point.map(|p| if p.degrees().0 > -33.87 { 1 } else { 2 });
                zone.map(|z| (e, z))
            });
            recommendations(events, located(zoned))
                .consolidate()
                .inner
                .capture()
        });
        let mut out: Vec<_> = (crate::sorted_updates(captured).into_iter())
            .map(|(r, t, d)| ((r.left, r.right, r.zone), t, d))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn near_users_of_a_common_channel_who_never_wrote_are_recommended_until_they_do() {
        let here = point(-33.865, 151.2094);
        let close = point(-33.8695, 151.2094); // 0.5 km south
        let far = point(-33.880, 151.2094); // 1.67 km south
        let events = vec![
            (message(1, 1, here, None), 0, 1),
            (message(2, 1, close, None), 0, 1),
            (message(3, 1, far, None), 0, 1),
            (subscription(1, 100), 0, 1),
            (subscription(2, 100), 0, 1),
            (subscription(2, 100), 0, 1), // twice: once
            (subscription(3, 100), 0, 1),
            // At 5: user 3 moves next to user 1 (a later message).
            (message(3, 2, close, None), 5, 1),
            // At 9: user 2 writes to user 1.
            (message(2, 3, close, Some(1)), 9, 1),
            // At 12: user 3 moves away again.
            (message(3, 4, far, None), 12, 1),
        ];
        assert_eq!(
            run(events),
            [
                ((1, 2, 1), 0, 1),
                ((1, 2, 1), 9, -1),
                ((1, 3, 1), 5, 1),
                ((1, 3, 1), 12, -1),
                ((2, 3, 1), 5, 1),
                ((2, 3, 1), 12, -1),
            ]
        );
    }

    #[test]
    fn without_a_common_channel_there_is_no_recommendation() {
        let events = vec![
            (message(1, 1, point(-33.865, 151.2094), None), 0, 1),
            (message(2, 1, point(-33.866, 151.2094), None), 0, 1),
            (subscription(1, 100), 0, 1),
            (subscription(2, 200), 0, 1),
        ];
        assert!(run(events).is_empty());
    }
}
