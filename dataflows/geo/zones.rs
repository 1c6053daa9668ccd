//! An event's zone ([`zoned`]): the city whose centre is nearest to the event's position
//! (great-circle distance; ties go to the smaller id). Events without coordinates have no
//! zone.
//!
//! ```text
//!  cities ── reduce to one list ── copied to each of SHARDS shards ─┐
//!  events with coordinates ── keyed by user mod SHARDS ─────────────┴─ join ─► (event, zone)
//! ```
//!
//! The whole list of cities meets every event: a change of any city (a new one, a moved
//! centre) can re-attribute any event, and the join re-evaluates the events of every shard
//! — editing `geo.cities` is rare, attributing events is constant. Sharding keeps the events
//! spread over the workers (a single key would put them all on one).

use differential_dataflow::VecCollection;

use super::cities::{City, nearest};
use super::events::Event;
use crate::{Diff, Time};

/// How many shards events are spread over for the join with the list of cities.
pub const SHARDS: u64 = 64;

/// The list of all cities, copied to each of [`SHARDS`] shards: `(shard, cities)`.
pub fn city_lists<'s>(
    cities: VecCollection<'s, Time, City, Diff>,
) -> VecCollection<'s, Time, (u64, Vec<City>), Diff> {
    cities
        .map(|city| ((), city))
        .reduce_named("CityList", |_key, input, output| {
            let all: Vec<City> = input.iter().map(|(city, _)| (*city).clone()).collect();
            output.push((all, 1));
        })
        .flat_map(|((), all)| (0..SHARDS).map(move |shard| (shard, all.clone())))
}

/// The shard of `user`'s records in joins with [`city_lists`].
pub fn shard(user: i64) -> u64 {
    user.unsigned_abs() % SHARDS
}

/// Every event that has coordinates, with its zone (the nearest city's id), as long as there
/// is a city.
pub fn zoned<'s>(
    events: VecCollection<'s, Time, Event, Diff>,
    lists: VecCollection<'s, Time, (u64, Vec<City>), Diff>,
) -> VecCollection<'s, Time, (Event, i32), Diff> {
    events
        .flat_map(|event| event.point.map(|_| (shard(event.user), event)))
        .join_map(lists, |_shard, event, all| {
            let zone = event
                .point
                .and_then(|point| nearest(all, point))
                .map(|c| c.id);
            (event.clone(), zone)
        })
        .flat_map(|(event, zone)| zone.map(|zone| (event, zone)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::events::Action;
    use crate::geo::point::Point;
    use chrono::NaiveDateTime;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::{Capture, ToStream};

    fn city(id: i32, lat: f64, lng: f64) -> City {
        City {
            id,
            name: format!("city {id}"),
            centre: Point::from_degrees(lat, lng).expect("a point"),
            timezone: "Australia/Sydney".into(),
        }
    }

    fn event(user: i64, point: Option<(f64, f64)>) -> Event {
        Event {
            user,
            time: NaiveDateTime::parse_from_str("2022-05-21 02:15:09", "%Y-%m-%d %H:%M:%S")
                .expect("a time"),
            point: point.and_then(|(lat, lon)| Point::from_degrees(lat, lon)),
            action: Action::Reaction,
        }
    }

    /// Runs [`zoned`] over timed events and cities: (user, zone, time, diff), consolidated.
    fn run(
        events: Vec<(Event, Time, Diff)>,
        cities: Vec<(City, Time, Diff)>,
    ) -> Vec<(i64, i32, Time, Diff)> {
        let captured = timely::example(move |scope| {
            let events = events.into_iter().to_stream(scope).as_collection();
            let cities = cities.into_iter().to_stream(scope).as_collection();
            zoned(events, city_lists(cities))
                .consolidate()
                .inner
                .capture()
        });
        let mut out: Vec<_> = (crate::sorted_updates(captured).into_iter())
            .map(|((event, zone), time, diff)| (event.user, zone, time, diff))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn each_event_gets_the_nearest_city_and_a_city_change_re_attributes_it() {
        let (sydney, newcastle) = (city(1, -33.865, 151.2094), city(9, -32.9167, 151.75));
        let events = vec![
            (event(1, Some((-33.9, 151.2))), 0, 1),  // near Sydney
            (event(2, Some((-32.9, 151.7))), 0, 1),  // near Newcastle
            (event(3, None), 0, 1),                  // no coordinates: no zone
            (event(4, Some((-33.2, 151.48))), 5, 1), // between: nearer Newcastle
        ];
        let mut moved = newcastle.clone();
        moved.centre = Point::from_degrees(-30.0, 153.0).expect("a point");
        let cities = vec![
            (sydney, 0, 1),
            (newcastle.clone(), 0, 1),
            // Newcastle's centre moves far north at 10: its events go to Sydney.
            (newcastle, 10, -1),
            (moved, 10, 1),
        ];
        assert_eq!(
            run(events, cities),
            [
                (1, 1, 0, 1),
                (2, 1, 10, 1),
                (2, 9, 0, 1),
                (2, 9, 10, -1),
                (4, 1, 10, 1),
                (4, 9, 5, 1),
                (4, 9, 10, -1),
            ]
        );
    }

    #[test]
    fn without_cities_no_event_has_a_zone() {
        assert!(run(vec![(event(1, Some((0.0, 0.0))), 0, 1)], Vec::new()).is_empty());
    }
}
