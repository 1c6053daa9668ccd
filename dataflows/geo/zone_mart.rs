//! The zone mart `mart.geo_zones` ([`zone_mart`]): per zone, ISO week and month, the
//! events of each type and the registrations.
//!
//! ```text
//!  (event, zone) ──┬─ count per (zone, week, kind) ──► week counts ─┐
//!                  ├─ count per (zone, month, kind) ─► month counts ┤ join on the row keys
//!                  └─ distinct (zone, week, month) ── row keys ─────┘ ──► ZoneRow
//!  located messages (shared arrangement) ── earliest per user ─┐
//!  messages without coordinates ───────────── earliest per user ─┴─ the earlier of the two
//!                                                                 ──► registrations (kind "user")
//! ```
//!
//! * `week` is the Monday of the event's ISO week, `month` the first day of its month (UTC).
//! * A row exists for each (zone, week, month) in which the zone has at least one event;
//!   `week_*` count the zone's events of the whole week (whatever the month), `month_*` of
//!   the whole month, so a week across two months gives two rows with the same `week_*`.
//! * A registration is a user's earliest message (event time, then `message_id`), counted in
//!   that message's zone, week and month; one without coordinates counts nowhere. A late,
//!   earlier message moves it. State for it, per user: the earliest message with coordinates
//!   is read from the arrangement the user mart and the positions share (`located.rs`); of
//!   the messages without coordinates, their (time, message_id) only.

use chrono::{Datelike, Days, NaiveDate, NaiveDateTime};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::events::{Action, Event};
use super::located::{LocatedMessages, reduce_located};
use crate::{Diff, Time};

/// What a count counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A message with coordinates.
    Message,
    /// A reaction with coordinates.
    Reaction,
    /// A subscription with coordinates.
    Subscription,
    /// A registration (the user's first message) in the zone.
    User,
}

/// Counts of each [`Kind`], in the order message, reaction, subscription, user.
pub type Counts = [i64; 4];

/// One row of `mart.geo_zones`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ZoneRow {
    /// `zone_id`.
    pub zone: i32,
    /// `week`: the Monday of the ISO week.
    pub week: NaiveDate,
    /// `month`: its first day.
    pub month: NaiveDate,
    /// `week_message`, `week_reaction`, `week_subscription`, `week_user`.
    pub week_counts: Counts,
    /// `month_message`, `month_reaction`, `month_subscription`, `month_user`.
    pub month_counts: Counts,
}

impl ZoneRow {
    /// The identity of its row (zone, week, month), hashed.
    pub fn route(&self) -> u64 {
        use differential_dataflow::hashable::Hashable;
        (self.zone, self.week, self.month).hashed()
    }
}

/// The Monday of `time`'s ISO week; none before chrono's first day (the decoder accepts no
/// such time: `events::EARLIEST_EVENT`).
pub fn week_of(time: NaiveDateTime) -> Option<NaiveDate> {
    let date = time.date();
    date.checked_sub_days(Days::new(u64::from(date.weekday().num_days_from_monday())))
}

/// The first day of `time`'s month.
pub fn month_of(time: NaiveDateTime) -> NaiveDate {
    let date = time.date();
    date.with_day(1).unwrap_or(date)
}

/// The zone mart of `zoned` events (each event with coordinates and its zone), all `events`
/// (for registrations: a user's earliest message, with or without coordinates) and the
/// `located` messages (each user's messages with coordinates, arranged once).
pub fn zone_mart<'s>(
    events: VecCollection<'s, Time, Event, Diff>,
    zoned: VecCollection<'s, Time, (Event, i32), Diff>,
    located: LocatedMessages<'s>,
) -> VecCollection<'s, Time, ZoneRow, Diff> {
    // A registration: the user's earliest message, by (time, message_id) — the earlier of
    // their earliest message with coordinates (zone known) and their earliest without.
    let earliest_located = reduce_located(located, "EarliestLocated", |_user, input, output| {
        // Sorted by (time, message_id, …): the first is the earliest.
        let (time, id, zone, _) = *input[0].0;
        output.push(((time, id, Some(zone)), 1));
    });
    let earliest_unlocated = events
        .flat_map(|e| match (e.action, e.point) {
            (Action::Message { id, .. }, None) => Some((e.user, (e.time, id, None))),
            _ => None,
        })
        .reduce_named("EarliestUnlocated", |_user, input, output| {
            output.push((*input[0].0, 1));
        });
    let registrations = earliest_located
        .concat(earliest_unlocated)
        .reduce_named("Registration", |_user, input, output| {
            output.push((*input[0].0, 1));
        })
        .flat_map(
            |(_user, (time, _id, zone)): (i64, (NaiveDateTime, i64, Option<i32>))| {
                zone.map(|zone| (zone, time, Kind::User))
            },
        );
    let kinds = zoned
        .clone()
        .map(|(event, zone)| {
            let kind = match event.action {
                Action::Message { .. } => Kind::Message,
                Action::Reaction => Kind::Reaction,
                Action::Subscription { .. } => Kind::Subscription,
            };
            (zone, event.time, kind)
        })
        .concat(registrations);
    let per_week = totals(
        "WeekCounts",
        kinds
            .clone()
            .flat_map(|(zone, time, kind)| week_of(time).map(|week| ((zone, week), kind))),
    );
    let per_month = totals(
        "MonthCounts",
        kinds.map(|(zone, time, kind)| ((zone, month_of(time)), kind)),
    );
    let keys = zoned
        .flat_map(|(event, zone)| {
            week_of(event.time).map(|week| (zone, week, month_of(event.time)))
        })
        .distinct();
    keys.map(|(zone, week, month)| ((zone, week), month))
        .join_map(per_week, |&(zone, week), &month, &week_counts| {
            ((zone, month), (week, week_counts))
        })
        .join_map(
            per_month,
            |&(zone, month), &(week, week_counts), &month_counts| ZoneRow {
                zone,
                week,
                month,
                week_counts,
                month_counts,
            },
        )
}

/// Per key, the counts of each kind.
fn totals<'s, K>(
    name: &str,
    kinds: VecCollection<'s, Time, (K, Kind), Diff>,
) -> VecCollection<'s, Time, (K, Counts), Diff>
where
    K: differential_dataflow::ExchangeData + differential_dataflow::hashable::Hashable,
{
    kinds.reduce_named(name, |_key, input, output| {
        let mut counts = [0i64; 4];
        for (kind, n) in input {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            counts[**kind as usize] += n;
        }
        output.push((counts, 1));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::located::located;
    use crate::geo::point::Point;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, ToStream};

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").expect("a time")
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("a date")
    }

    fn message(user: i64, id: i64, time: &str, point: bool) -> Event {
        Event {
            user,
            time: at(time),
            point: point.then(|| Point::from_degrees(-33.9, 151.2).expect("a point")),
            action: Action::Message {
                id,
                to: None,
                channel: Some(1),
            },
        }
    }

    fn with(event: Event, action: Action) -> Event {
        Event { action, ..event }
    }

    /// Runs the mart over timed events, all with zone `zone_of(user)` when they have a point.
    fn run(events: Vec<(Event, Time, Diff)>) -> Vec<(ZoneRow, Time, Diff)> {
        let captured = timely::example(move |scope| {
            let events = events.into_iter().to_stream(scope).as_collection();
            let zoned = events
                .clone()
                .flat_map(|e: Event| e.point.map(|_| (e.clone(), (e.user % 10) as i32)));
            zone_mart(events, zoned.clone(), located(zoned))
                .consolidate()
                .inner
                .capture()
        });
        let mut out: Vec<_> = captured
            .extract()
            .into_iter()
            .flat_map(|(_, b)| b)
            .collect();
        out.sort();
        out
    }

    fn row(zone: i32, week: &str, month: &str, w: Counts, m: Counts) -> ZoneRow {
        ZoneRow {
            zone,
            week: day(week),
            month: day(month),
            week_counts: w,
            month_counts: m,
        }
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        assert_eq!(week_of(at("2022-05-21 02:15:09")), Some(day("2022-05-16")));
        assert_eq!(week_of(at("2022-05-16 00:00:00")), Some(day("2022-05-16")));
        assert_eq!(week_of(at("2022-01-01 12:00:00")), Some(day("2021-12-27")));
        assert_eq!(
            week_of(NaiveDateTime::MIN),
            None,
            "before chrono's first day"
        );
        assert_eq!(month_of(at("2022-05-21 02:15:09")), day("2022-05-01"));
    }

    #[test]
    fn events_count_per_week_and_month_and_the_first_message_registers() {
        // User 1 (zone 1): messages on Sat 2022-04-30 and Mon 2022-05-02, reactions on Sun
        // 2022-05-01 and Mon 2022-05-02. The week of Mon 2022-04-25 spans April and May.
        let m1 = message(1, 10, "2022-04-30 10:00:00", true);
        let m2 = message(1, 11, "2022-05-02 10:00:00", true);
        let sunday = with(message(1, 0, "2022-05-01 12:00:00", true), Action::Reaction);
        let monday = with(m2.clone(), Action::Reaction);
        // User 11 (zone 1): a subscription without coordinates (not counted), a first
        // message without coordinates (registers nowhere), a later message.
        let s = with(
            message(11, 0, "2022-04-28 09:00:00", false),
            Action::Subscription { channel: 1 },
        );
        let n1 = message(11, 20, "2022-04-27 09:00:00", false);
        let n2 = message(11, 21, "2022-05-03 09:00:00", true);
        let events = [m1, m2, sunday, monday, s, n1, n2];
        let rows: Vec<ZoneRow> = run(events.into_iter().map(|e| (e, 0, 1)).collect())
            .into_iter()
            .map(|(row, _, _)| row)
            .collect();
        assert_eq!(
            rows,
            [
                row(1, "2022-04-25", "2022-04-01", [1, 1, 0, 1], [1, 0, 0, 1]),
                row(1, "2022-04-25", "2022-05-01", [1, 1, 0, 1], [2, 2, 0, 0]),
                row(1, "2022-05-02", "2022-05-01", [2, 1, 0, 0], [2, 2, 0, 0]),
            ]
        );
    }

    #[test]
    fn a_late_earlier_message_moves_the_registration() {
        let later = message(3, 5, "2022-05-20 10:00:00", true);
        let earlier = message(3, 9, "2022-05-02 10:00:00", true);
        let rows = run(vec![(later, 0, 1), (earlier, 7, 1)]);
        let week20 = |w: Counts, m: Counts| row(3, "2022-05-16", "2022-05-01", w, m);
        let week2 = |w: Counts, m: Counts| row(3, "2022-05-02", "2022-05-01", w, m);
        assert_eq!(
            rows,
            [
                (week2([1, 0, 0, 1], [2, 0, 0, 1]), 7, 1),
                (week20([1, 0, 0, 0], [2, 0, 0, 1]), 7, 1),
                (week20([1, 0, 0, 1], [1, 0, 0, 1]), 0, 1),
                (week20([1, 0, 0, 1], [1, 0, 0, 1]), 7, -1),
            ]
        );
    }

    #[test]
    fn a_late_earlier_message_without_coordinates_takes_the_registration_away() {
        let located = message(4, 5, "2022-05-20 10:00:00", true);
        let unlocated = message(4, 9, "2022-05-19 10:00:00", false);
        let week = |w: Counts, m: Counts| row(4, "2022-05-16", "2022-05-01", w, m);
        assert_eq!(
            run(vec![(located, 0, 1), (unlocated, 7, 1)]),
            [
                (week([1, 0, 0, 0], [1, 0, 0, 0]), 7, 1),
                (week([1, 0, 0, 1], [1, 0, 0, 1]), 0, 1),
                (week([1, 0, 0, 1], [1, 0, 0, 1]), 7, -1),
            ]
        );
    }
}
