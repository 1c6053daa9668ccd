//! The user mart `mart.geo_users` ([`user_mart`]): per user with at least one message with
//! coordinates, where they write now, their home city and their travels.
//!
//! ```text
//!  (message, zone) ── per user, in (time, message_id) order ── stays ──► Travels (zone ids)
//!                                                                          │ ⋈ city list (names, zones)
//!                                                                          ▼
//!                                                                       UserRow
//! ```
//!
//! * [`stays`]: a stay is a maximal run of consecutive messages in one city; it lasts from
//!   its first message to the first message of the next stay (the last one: to the latest
//!   message).
//! * `act_city`: the zone of the latest message; `local_time`: that message's time in the
//!   time zone of `act_city`.
//! * `home_city`: the city of the latest stay lasting at least [`HOME_DAYS`] days; none
//!   when no stay is that long.
//! * `travel_count`, `travel_array`: the stays and their cities, in order.
//!
//! State: every message with coordinates of every user (a late message can split any stay),
//! in the arrangement the positions of `friends.rs` share (`located.rs`).

use chrono::{NaiveDateTime, Offset, TimeDelta, TimeZone};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::cities::City;
use super::located::{LocatedMessages, reduce_located};
use super::zones::shard;
use crate::{Diff, Time};

/// How long a stay must last for its city to be the user's home.
pub const HOME_DAYS: i64 = 27;

/// A stay: a city and the time of its first message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stay {
    /// The zone.
    pub zone: i32,
    /// When the stay began (its first message).
    pub from: NaiveDateTime,
    /// When it ended: the next stay's first message, or the latest message.
    pub until: NaiveDateTime,
}

/// The stays of a user's messages `(time, message_id, zone)`, given in (time, message_id)
/// order.
pub fn stays(messages: &[(NaiveDateTime, i64, i32)]) -> Vec<Stay> {
    let mut stays: Vec<Stay> = Vec::new();
    for &(time, _, zone) in messages {
        match stays.last_mut() {
            Some(stay) if stay.zone == zone => stay.until = time,
            _ => {
                if let Some(stay) = stays.last_mut() {
                    stay.until = time;
                }
                stays.push(Stay {
                    zone,
                    from: time,
                    until: time,
                });
            }
        }
    }
    stays
}

/// A user's travels, by zone id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Travels {
    /// The zone of the latest message.
    pub act_zone: i32,
    /// The time of the latest message.
    pub act_time: NaiveDateTime,
    /// The zone of the latest stay of at least [`HOME_DAYS`] days.
    pub home_zone: Option<i32>,
    /// The zones of the stays, in order.
    pub travel: Vec<i32>,
}

impl Travels {
    /// The travels of messages `(time, message_id, zone)` in (time, message_id) order.
    pub fn of(messages: &[(NaiveDateTime, i64, i32)]) -> Option<Travels> {
        let &(act_time, _, act_zone) = messages.last()?;
        let stays = stays(messages);
        let home_zone = (stays.iter().rev())
            .find(|s| s.until - s.from >= TimeDelta::days(HOME_DAYS))
            .map(|s| s.zone);
        Some(Travels {
            act_zone,
            act_time,
            home_zone,
            travel: stays.iter().map(|s| s.zone).collect(),
        })
    }
}

/// One row of `mart.geo_users`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserRow {
    /// `user_id`.
    pub user: i64,
    /// `act_city`.
    pub act_city: String,
    /// `home_city`.
    pub home_city: Option<String>,
    /// `travel_count`.
    pub travel_count: i32,
    /// `travel_array`.
    pub travel_array: Vec<String>,
    /// `local_time`: the latest message's time in `act_city`'s time zone (none when the
    /// zone's name is not an IANA name this build knows).
    pub local_time: Option<NaiveDateTime>,
}

impl UserRow {
    /// The identity of its row (the user), hashed.
    pub fn route(&self) -> u64 {
        use differential_dataflow::hashable::Hashable;
        self.user.hashed()
    }
}

/// The row of `user` with `travels`, the zones named from `cities`; none while a zone is not
/// among them.
pub fn user_row(user: i64, travels: &Travels, cities: &[City]) -> Option<UserRow> {
    let city = |zone: i32| cities.iter().find(|c| c.id == zone);
    let act = city(travels.act_zone)?;
    let home_city = match travels.home_zone {
        Some(zone) => Some(city(zone)?.name.clone()),
        None => None,
    };
    let travel_array = (travels.travel.iter())
        .map(|&zone| city(zone).map(|c| c.name.clone()))
        .collect::<Option<Vec<_>>>()?;
    // Checked: a time at chrono's last day has no local time east of UTC (the decoder
    // accepts none: `events::LATEST_EVENT`).
    let local_time = act.timezone.parse::<chrono_tz::Tz>().ok().and_then(|tz| {
        let offset = tz.offset_from_utc_datetime(&travels.act_time).fix();
        travels.act_time.checked_add_offset(offset)
    });
    Some(UserRow {
        user,
        act_city: act.name.clone(),
        home_city,
        travel_count: i32::try_from(travel_array.len()).unwrap_or(i32::MAX),
        travel_array,
        local_time,
    })
}

/// The user mart of each user's `located` messages (with coordinates and their zones,
/// `located::located`); `lists` is the sharded list of cities (`zones::city_lists`).
pub fn user_mart<'s>(
    located: LocatedMessages<'s>,
    lists: VecCollection<'s, Time, (u64, Vec<City>), Diff>,
) -> VecCollection<'s, Time, UserRow, Diff> {
    reduce_located(located, "Travels", |_user, input, output| {
        // Sorted by (time, message_id); a message delivered twice counts once.
        let messages: Vec<(NaiveDateTime, i64, i32)> = (input.iter())
            .map(|&(&(time, id, zone, _), _)| (time, id, zone))
            .collect();
        if let Some(travels) = Travels::of(&messages) {
            output.push((travels, 1));
        }
    })
    .map(|(user, travels)| (shard(user), (user, travels)))
    .join_map(lists, |_shard, (user, travels), cities| {
        user_row(*user, travels, cities)
    })
    .flat_map(|row| row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::events::{Action, Event};
    use crate::geo::located::located;
    use crate::geo::point::Point;
    use crate::geo::zones::city_lists;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, ToStream};

    fn at(day: u32, hour: u32) -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2022, 5, day)
            .and_then(|d| d.and_hms_opt(hour, 0, 0))
            .expect("a time")
    }

    fn city(id: i32, name: &str, timezone: &str) -> City {
        City {
            id,
            name: name.into(),
            centre: Point::from_degrees(0.0, 0.0).expect("a point"),
            timezone: timezone.into(),
        }
    }

    #[test]
    fn stays_run_until_the_next_stay_begins() {
        let messages = [
            (at(1, 0), 1, 1),
            (at(2, 0), 2, 1),
            (at(5, 0), 3, 2),
            (at(6, 0), 4, 1),
        ];
        assert_eq!(
            stays(&messages),
            [
                Stay {
                    zone: 1,
                    from: at(1, 0),
                    until: at(5, 0)
                },
                Stay {
                    zone: 2,
                    from: at(5, 0),
                    until: at(6, 0)
                },
                Stay {
                    zone: 1,
                    from: at(6, 0),
                    until: at(6, 0)
                },
            ]
        );
        assert!(stays(&[]).is_empty());
    }

    #[test]
    fn home_is_the_latest_stay_of_27_days_and_travels_list_every_stay() {
        // Zone 1 from May 1 to May 28 (27 days: home), zone 2 from May 28 to 30 (2 days),
        // back to zone 1 on May 30.
        let messages = [
            (at(1, 0), 1, 1),
            (at(10, 0), 2, 1),
            (at(28, 0), 3, 2),
            (at(30, 0), 4, 1),
        ];
        let travels = Travels::of(&messages).expect("travels");
        assert_eq!(travels.home_zone, Some(1));
        assert_eq!(travels.travel, [1, 2, 1]);
        assert_eq!((travels.act_zone, travels.act_time), (1, at(30, 0)));
        // One hour short of 27 days: no home.
        let short = [(at(1, 1), 1, 1), (at(28, 0), 2, 2)];
        assert_eq!(Travels::of(&short).expect("travels").home_zone, None);
    }

    #[test]
    fn rows_name_the_zones_and_give_the_local_time() {
        let cities = [
            city(1, "Sydney", "Australia/Sydney"),
            city(4, "Perth", "Australia/Perth"),
        ];
        let travels = Travels {
            act_zone: 4,
            act_time: at(21, 2),
            home_zone: Some(1),
            travel: vec![1, 4],
        };
        let row = user_row(7, &travels, &cities).expect("a row");
        assert_eq!(row.act_city, "Perth");
        assert_eq!(row.home_city.as_deref(), Some("Sydney"));
        assert_eq!(
            (row.travel_count, row.travel_array.clone()),
            (2, vec!["Sydney".into(), "Perth".into()])
        );
        assert_eq!(row.local_time, Some(at(21, 10)), "UTC+8 in Perth");
        assert_eq!(user_row(7, &travels, &cities[..1]), None, "zone 4 unknown");
    }

    #[test]
    fn a_late_message_splits_a_stay_and_the_row_changes_at_its_arrival() {
        let message = |id: i64, day: u32, zone: i32| {
            let event = Event {
                user: 5,
                time: at(day, 0),
                point: Point::from_degrees(0.0, 0.0),
                action: Action::Message {
                    id,
                    to: None,
                    channel: None,
                },
            };
            (event, zone)
        };
        let zoned = vec![
            (message(1, 1, 1), 0, 1),
            (message(2, 29, 1), 0, 1),
            // Arrives at 10: a message in zone 4 on May 15 splits the stay in zone 1.
            (message(3, 15, 4), 10, 1),
        ];
        let cities = vec![
            (city(1, "Sydney", "Australia/Sydney"), 0, 1),
            (city(4, "Perth", "Australia/Perth"), 0, 1),
        ];
        let captured = timely::example(move |scope| {
            let zoned = zoned.into_iter().to_stream(scope).as_collection();
            let cities = cities.into_iter().to_stream(scope).as_collection();
            user_mart(located(zoned), city_lists(cities))
                .consolidate()
                .inner
                .capture()
        });
        let mut rows: Vec<_> = captured
            .extract()
            .into_iter()
            .flat_map(|(_, b)| b)
            .collect();
        rows.sort_by_key(|(row, time, diff)| (*time, *diff, row.travel_count));
        let summary: Vec<_> = (rows.iter())
            .map(|(r, t, d)| (r.home_city.clone(), r.travel_array.len(), *t, *d))
            .collect();
        assert_eq!(
            summary,
            [
                (Some("Sydney".to_string()), 1, 0, 1),
                (Some("Sydney".to_string()), 1, 10, -1),
                (None, 3, 10, 1),
            ],
            "28 days in Sydney were home; split in two 14-day stays, no home"
        );
    }
}
