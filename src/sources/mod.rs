//! Sources: external inputs as differential collections, one file per connector.
//!
//! Every source is a [`clocked_source`]: a connector-specific [`Reader`] says what is
//! available, the shared operator decides at which logical time it happens.
//!
//! ```text
//!   connector thread / client ──"data ready"──► SyncActivator ──► operator scheduled
//!   operator: t = wall clock (ms); emit (data, t, diff) for what is ready; capability → t+1
//!   idle:     re-scheduled every tick to move the capability with the wall clock
//! ```
//!
//! * **Time.** Everything read in one activation is stamped with the activation's
//!   wall-clock millisecond `t`; the capability is then downgraded to `t + 1`, so the batch is
//!   complete downstream immediately. Logical time never runs ahead of the wall clock: when a
//!   second activation falls in the same millisecond it waits for the next one.
//! * **Holding.** While a reader [holds](Reader::holding) (a table snapshot being loaded),
//!   its data is stamped with the source's start time and the capability stays there, so the
//!   whole snapshot happens at one logical time, before anything read later.
//! * **Waking.** The connector activates the operator when data arrives. An activation emits
//!   a bounded amount (the reader decides) and re-activates itself if more is ready. Without
//!   data the operator wakes once per tick, which is what moves frontiers and releases
//!   future-dated updates (a campaign's start and end) on time. A source that emitted at t
//!   wakes every source of the process ([`Control::wake_sources`]), so that idle ones move
//!   past t at once and t is complete downstream within the same millisecond or so.
//! * **Flow control.** While the process's sinks hold more than
//!   [`crate::control::SINK_BACKLOG_LIMIT`] complete updates not yet handed to their writers,
//!   sources (other than a snapshot being held) read nothing and look again every 10 ms;
//!   their capabilities still follow the clock, so what the sinks hold drains.
//! * **Finishing.** A source finishes when its reader says so (end of a bounded run) or on
//!   SIGTERM/SIGINT. While another source of its worker still reads, its capability keeps
//!   following the clock; once all have finished it holds at its final time until the
//!   workers agree on the run's horizon ([`crate::control`]), and drops it.

use std::time::{Duration, Instant};

use anyhow::Result;
use dataflows::{Diff, Time};
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use timely::scheduling::SyncActivator;
use tracing::{debug, info};

use crate::clock::wall_clock_ms;
use crate::control::Lifecycle;

pub mod kafka;
pub mod postgres;
pub mod redis;
pub mod snapshot;

/// What a [`Reader`] reports after emitting what was available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Nothing more is ready now; the connector will wake the operator.
    Idle,
    /// More is ready: schedule again at once.
    More,
    /// The input has ended (bounded run): the source finishes.
    Finished,
}

/// A connector, driven by [`clocked_source`] on the worker thread.
pub trait Reader: 'static {
    /// What the source emits.
    type Data: Clone + 'static;

    /// Emits (by `give(data, diff)`) what is available now, a bounded amount at a time.
    fn read(&mut self, give: &mut dyn FnMut(Self::Data, Diff)) -> Status;

    /// Whether the data read now belongs to the source's start time (a snapshot).
    fn holding(&self) -> bool {
        false
    }

    /// While the reader reads a backlog in rounds: how many records a round holds. The
    /// records of a round share one logical time; the next round gets the next.
    fn round(&self) -> Option<usize> {
        None
    }

    /// The next [`Reader::read`] emits at most `most` records (what the round has room for);
    /// only readers that read in rounds need to honour it.
    fn limit(&mut self, _most: usize) {}
}

/// Builds a source operator for this worker around the reader made by `build`, which gets
/// the activator that wakes the operator. A `build` error is fatal (reported to the
/// lifecycle's control). The source starts at the lifecycle's start time and, idle, wakes
/// every tick.
pub fn clocked_source<'s, R: Reader>(
    scope: Scope<'s, Time>,
    name: &str,
    lifecycle: &Lifecycle,
    build: impl FnOnce(SyncActivator) -> Result<R> + 'static,
) -> VecCollection<'s, Time, R::Data, Diff> {
    let Lifecycle {
        control,
        completion,
        start,
        tick,
    } = lifecycle.clone();
    completion.register_source();
    let name = name.to_string();
    source(scope, &name.clone(), move |mut capability, info| {
        let activator = scope.activator_for(info.address.clone());
        let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
        control.register_source(scope.worker().sync_activator_for(info.address.to_vec()));
        let mut reader = match build(sync_activator) {
            Ok(reader) => Some(reader),
            Err(error) => {
                control.fail(error.context(format!("source {name}")));
                None
            }
        };
        capability.downgrade(&start.max(*capability.time()));
        let mut capability = Some(capability);
        let worker = scope.index();
        let mut metrics = crate::metrics::metrics().source(&name);
        let mut finished = false;
        let mut next_tick = Instant::now();
        // Records emitted at the time of the round being read (see [`Reader::round`]).
        let mut round_emitted = 0usize;

        move |output| {
            crate::metrics::metrics().beat(worker);
            let Some(cap) = capability.as_mut() else {
                return;
            };
            if finished {
                if completion.horizon().is_some() {
                    capability = None; // lets every frontier run to the end
                } else {
                    if !completion.all_sources_finished() {
                        // Another source still reads: do not hold back what it reads.
                        let now = wall_clock_ms();
                        if now > *cap.time() {
                            cap.downgrade(&now);
                        }
                    }
                    activator.activate_after(tick);
                }
                return;
            }
            let holding = reader.as_ref().is_some_and(R::holding);
            let now = wall_clock_ms();
            // A round that is not full yet keeps its time.
            if !holding && round_emitted == 0 {
                if now < *cap.time() {
                    // Same millisecond as the previous batch: never stamp ahead of the clock.
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
                cap.downgrade(&now);
            }
            let time = *cap.time();

            let mut emitted = 0usize;
            let mut status = Status::Idle;
            // Flow control: while the sinks are behind, read nothing (the capability still
            // moves with the clock, so what they hold becomes complete and is written). Not
            // while holding: the held time must be read whole before anything is written.
            let paused = !holding && control.sinks_behind();
            if let Some(reader) = reader.as_mut().filter(|_| !paused) {
                if let Some(records) = reader.round() {
                    reader.limit(records.saturating_sub(round_emitted).max(1));
                }
                let mut session = output.session(&*cap);
                status = reader.read(&mut |data, diff| {
                    session.give((data, time, diff));
                    emitted += 1;
                });
            }
            // What was read while holding belongs to the start time: the snapshot.
            metrics.emitted(emitted, holding);
            let holding = reader.as_ref().is_some_and(R::holding);
            let ending = status == Status::Finished || control.shutdown_requested();
            let round_open = match reader.as_ref().and_then(R::round) {
                Some(records) if !holding && !ending => {
                    round_emitted += emitted;
                    round_emitted < records
                }
                _ => false,
            };
            if !holding && !round_open {
                cap.downgrade(&(time + 1));
                round_emitted = 0;
                metrics.loaded();
            }
            if emitted > 0 {
                debug!(source = %name, emitted, time, "batch");
                if !holding {
                    // The other sources move past `time` now, not at their next tick.
                    control.wake_sources();
                }
            }

            if !holding && ending {
                info!(source = %name, final_time = time + 1, "finished reading");
                finished = true;
                completion.source_finished(time + 1);
                activator.activate_after(tick);
            } else if paused {
                activator.activate_after(PAUSE);
            } else if status == Status::More {
                activator.activate();
            } else if Instant::now() >= next_tick {
                next_tick = Instant::now() + tick;
                activator.activate_after(tick);
            }
        }
    })
    .as_collection()
}

/// How long a source paused by flow control waits before it looks again.
const PAUSE: Duration = Duration::from_millis(10);
