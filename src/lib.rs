//! dishflow's engine: command line, cluster configuration, sources, sinks and job wiring.
//!
//! The business logic of every job lives in the `dataflows` crate (pure differential
//! dataflow, no I/O); this crate connects it to Kafka and Postgres. See `README.md` and `docs/architecture.md`.

#![forbid(missing_docs)]

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod control;
pub mod dashboard;
pub mod jobs;
pub mod kafka;
pub mod logs;
pub mod metrics;
pub mod pg;
pub mod positions;
pub mod produce;
pub mod redact;
pub mod redrive;
pub mod retry;
pub mod sinks;
pub mod sources;
pub mod stall;
