//! Job 3, `geo`: a messaging app's events → marts by city and friend recommendations
//! (`../shared/SPEC.md`, "Job 3"). So far, by file:
//! * `cities.rs`: the cities events are attributed to — the built-in list, the legacy file
//!   format, haversine distance, the nearest city.
//! * `point.rs`: positions as exact nanodegrees, great-circle distance (haversine).
//! * `events.rs`: what a valid event is ([`events::parse_event`]), and the split of raw
//!   records into events and dead letters ([`events::decode`]).
//! * `zones.rs`: an event's zone, the nearest city ([`zones::zoned`]).
//! * `located.rs`: each user's messages with coordinates, arranged once for the stays, the
//!   positions and the registrations ([`located::located`]).
//! * `zone_mart.rs`: `mart.geo_zones`, events and registrations per zone, week and month
//!   ([`zone_mart::zone_mart`]).
//! * `user_mart.rs`: `mart.geo_users`, each user's current city, home and travels
//!   ([`user_mart::user_mart`]).
//! * `friends.rs`: `mart.geo_friend_recommendations`, pairs within 1 km found through a grid
//!   of cells, then a common channel and no direct message ([`friends::recommendations`]).
//! * `summary.rs`: `mart.geo_city_summary`, per city the users there now, at home, and the
//!   recommendations, for dashboards ([`summary::city_summary`]).

pub mod cities;
pub mod events;
pub mod friends;
pub mod located;
pub mod point;
pub mod summary;
pub mod user_mart;
pub mod zone_mart;
pub mod zones;
