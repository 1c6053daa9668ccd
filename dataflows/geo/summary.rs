//! The geo numbers a dashboard shows per city ([`city_summary`]): users there now, users
//! whose home it is, of whom there now, and friend recommendations there — one row per city,
//! kept current from the user mart and the recommendations, so that a page never scans
//! millions of user or recommendation rows.
//!
//! ```text
//!  user rows ── act city, home city, both ──────────────────────┐
//!  recommendations ── count per zone ⋈ cities (id → name) ──────┴─ count per (city, measure)
//!                                                                  ──► CitySummary
//! ```
//!
//! * `users_now`: users whose `act_city` it is; `users_home`: whose `home_city` it is;
//!   `users_at_home`: both; `recommendations`: pairs whose `zone_id` is the city.
//! * A city with none of these has no row.
//!
//! State: one count per (city, measure), and one per zone for the recommendations.

use differential_dataflow::VecCollection;
use differential_dataflow::operators::CountTotal;
use serde::{Deserialize, Serialize};

use super::cities::City;
use super::friends::Recommendation;
use super::user_mart::UserRow;
use crate::{Diff, Time};

/// What a count of [`city_summary`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Measure {
    Now,
    Home,
    AtHome,
    Recommendations,
}

/// One row of `mart.geo_city_summary`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CitySummary {
    /// `city`: the city's name, as in the user mart.
    pub city: String,
    /// `users_now`.
    pub users_now: i64,
    /// `users_home`.
    pub users_home: i64,
    /// `users_at_home`.
    pub users_at_home: i64,
    /// `recommendations`.
    pub recommendations: i64,
}

impl CitySummary {
    /// The identity of its row (the city), hashed.
    pub fn route(&self) -> u64 {
        use differential_dataflow::hashable::Hashable;
        self.city.hashed()
    }
}

/// The per-city summary of the user mart's `users`, the `recommendations` and the `cities`
/// (see the module rules).
pub fn city_summary<'s>(
    users: VecCollection<'s, Time, UserRow, Diff>,
    recommendations: VecCollection<'s, Time, Recommendation, Diff>,
    cities: VecCollection<'s, Time, City, Diff>,
) -> VecCollection<'s, Time, CitySummary, Diff> {
    let user_counts = users.flat_map(|u| {
        let mut keys = vec![(u.act_city.clone(), Measure::Now)];
        if let Some(home) = u.home_city {
            if home == u.act_city {
                keys.push((home.clone(), Measure::AtHome));
            }
            keys.push((home, Measure::Home));
        }
        keys
    });
    // Counted per zone first: the join with the cities then holds one row per zone.
    let recommendation_counts = recommendations
        .map(|r| r.zone)
        .count_total()
        .join_map(cities.map(|c| (c.id, c.name)), |_zone, &n, name| {
            (name.clone(), n)
        })
        .explode(|(name, n)| Some(((name, Measure::Recommendations), n)));
    user_counts
        .concat(recommendation_counts)
        .count_total()
        .map(|((city, measure), n)| (city, (measure, n as i64)))
        .reduce_named("CitySummary", |_city, input, output| {
            let mut counts = [0i64; 4];
            for ((measure, n), diff) in input {
                counts[*measure as usize] += n * *diff as i64;
            }
            output.push((counts, 1));
        })
        .map(
            |(city, [now, home, at_home, recommendations])| CitySummary {
                city,
                users_now: now,
                users_home: home,
                users_at_home: at_home,
                recommendations,
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::point::Point;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::{Capture, ToStream};

    fn user(id: i64, act: &str, home: Option<&str>) -> UserRow {
        UserRow {
            user: id,
            act_city: act.into(),
            home_city: home.map(Into::into),
            travel_count: 1,
            travel_array: vec![act.into()],
            local_time: None,
        }
    }

    fn city(id: i32, name: &str) -> City {
        City {
            id,
            name: name.into(),
            centre: Point::from_degrees(-33.865, 151.2094).expect("a point"),
            timezone: "Australia/Sydney".into(),
        }
    }

    fn summary(city: &str, counts: [i64; 4]) -> CitySummary {
        let [users_now, users_home, users_at_home, recommendations] = counts;
        CitySummary {
            city: city.into(),
            users_now,
            users_home,
            users_at_home,
            recommendations,
        }
    }

    #[test]
    fn each_city_counts_its_users_now_at_home_and_its_recommendations() {
        let users = vec![
            (user(1, "Sydney", Some("Sydney")), 0, 1),
            (user(2, "Sydney", Some("Perth")), 0, 1),
            (user(3, "Perth", None), 0, 1),
            // User 3 travels to Sydney at 5.
            (user(3, "Perth", None), 5, -1),
            (user(3, "Sydney", None), 5, 1),
        ];
        let pair = |left, right, zone| Recommendation { left, right, zone };
        let recommendations = vec![(pair(1, 2, 1), 0, 1), (pair(2, 3, 1), 5, 1)];
        let cities = vec![(city(1, "Sydney"), 0, 1), (city(2, "Perth"), 0, 1)];
        let captured = timely::example(move |scope| {
            let users = users.into_iter().to_stream(scope).as_collection();
            let recommendations = recommendations.into_iter().to_stream(scope).as_collection();
            let cities = cities.into_iter().to_stream(scope).as_collection();
            city_summary(users, recommendations, cities)
                .consolidate()
                .inner
                .capture()
        });
        assert_eq!(
            crate::sorted_updates(captured),
            [
                (summary("Perth", [0, 1, 0, 0]), 5, 1),
                (summary("Perth", [1, 1, 0, 0]), 0, 1),
                (summary("Perth", [1, 1, 0, 0]), 5, -1),
                (summary("Sydney", [2, 1, 1, 1]), 0, 1),
                (summary("Sydney", [2, 1, 1, 1]), 5, -1),
                (summary("Sydney", [3, 1, 1, 2]), 5, 1),
            ]
        );
    }
}
