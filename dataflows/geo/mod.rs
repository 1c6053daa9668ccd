//! Job 3, `geo`: a messaging app's events → marts by city and friend recommendations
//! (`../shared/SPEC.md`, "Job 3"). So far: the cities events are attributed to
//! ([`cities`]).

pub mod cities;
