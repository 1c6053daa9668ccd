//! Test and benchmark helpers for dishflow, against the real services (`scripts/services.sh`
//! starts them): every test works in its own database, topics and Redis keys, named after
//! the test and a unique suffix, so tests run in parallel and repeat; the `dishflow` binary
//! runs as a child process. Dev-only: the engine never depends on it.
//!
//! | module | what |
//! |---|---|
//! | `services` | where the test broker and Postgres are |
//! | `names` | unique names; a prefix whose topics and Redis keys go with it |
//! | `databases` | a database per test |
//! | `topics` | produce, consume, a job's committed progress |
//! | `redis_data` | the test Redis |
//! | `process` | the binary as a child process: run, spawn, signal, metrics, clusters |
//! | `chaos` | crash tests: kills at chosen moments, restarts of Postgres and of a Redis of a test's own |
//! | `promos`, `orders` | each job's fixtures |
//! | `geo` | the geo marts recomputed in SQL (ground truth), and the differences |
//! | `certs` | certificates for the TLS tests |

pub mod certs;
mod chaos;
mod databases;
mod geo;
mod names;
mod orders;
mod process;
mod promos;
mod redis_data;
mod services;
mod topics;

pub use self::chaos::*;
pub use self::databases::*;
pub use self::geo::*;
pub use self::names::*;
pub use self::orders::*;
pub use self::process::*;
pub use self::promos::*;
pub use self::redis_data::*;
pub use self::services::*;
pub use self::topics::*;
