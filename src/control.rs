//! Job control: fatal errors, shutdown on signals, and the agreed end of bounded runs.
//!
//! # How a job ends
//!
//! A job ends when its sources *finish*: in a bounded run (`--stop-at-end`) when every owned
//! partition has been read to its end, and in any run on SIGTERM/SIGINT. A finished source
//! stops reading; while another source of its worker still reads, its capability keeps
//! following the clock (so that what has been read so far completes and is written — the
//! unfinished source holds the frontier at or before its own final time), and once all
//! have finished it holds at its *final time* (the wall-clock time at which it finished).
//! Then the workers agree on the **horizon**: the largest final time of all sources of all
//! workers, computed by the small completion dataflow built by [`completion_barrier`]:
//!
//! ```text
//!  every worker: local sources all finished at t_w ──(w, t_w)──► worker 0
//!  worker 0: once all peers reported, horizon = max t_w ──(w, horizon)──► every worker
//!  every worker: sources drop their capabilities; sinks write every update < horizon + 1
//! ```
//!
//! Once the sources drop their capabilities, every frontier becomes empty. Sinks then write
//! what is complete — updates at times up to the horizon — and discard the updates that the
//! temporal logic had scheduled for later (a campaign that starts tomorrow): those belong to
//! a later run. A second SIGTERM/SIGINT exits at once.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataflows::Time;
use timely::dataflow::Scope;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::{Exchange, Operator};
use timely::scheduling::SyncActivator;

/// What every operator of one worker's dataflow shares: where fatal errors go
/// ([`Control`]), when a bounded run is complete ([`Completion`]), the run's start time (the
/// logical time of snapshots and replays) and how often idle sources advance logical time.
#[derive(Clone)]
pub struct Lifecycle {
    /// The process's control.
    pub control: Control,
    /// The worker's completion state.
    pub completion: Completion,
    /// The run's start time.
    pub start: Time,
    /// Idle re-scheduling interval of sources (how far time may trail the wall clock).
    pub tick: Duration,
}

impl Lifecycle {
    /// The same, for a source that looks for input every `tick` instead.
    pub fn with_tick(&self, tick: Duration) -> Lifecycle {
        Lifecycle {
            tick,
            ..self.clone()
        }
    }
}

/// How a process ends: `Ok` once every worker finished, or the first fatal error.
pub type Outcome = anyhow::Result<()>;

/// Process-wide control shared by all workers of a process: report fatal errors, observe
/// shutdown requests, wake every source, and hold back reading while the sinks are behind.
#[derive(Clone)]
pub struct Control {
    fatal: Sender<Outcome>,
    shutdown: Arc<AtomicBool>,
    sources: Arc<Mutex<Vec<SyncActivator>>>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    /// Complete updates buffered in this process's sinks, not yet handed to their writers.
    sink_backlog: Arc<AtomicUsize>,
}

/// How many updates the sinks of a process may buffer before its sources pause (see
/// [`Control::sinks_behind`]). A source batch can add more than this at once (a promo batch
/// times its fan-out); the bound is on when reading resumes, not a hard cap.
pub const SINK_BACKLOG_LIMIT: usize = 500_000;

impl Control {
    /// Creates the control handle; fatal errors are sent to `fatal`, signals set `shutdown`.
    pub fn new(fatal: Sender<Outcome>, shutdown: Arc<AtomicBool>) -> Self {
        Control {
            fatal,
            shutdown,
            sources: Arc::default(),
            threads: Arc::default(),
            sink_backlog: Arc::default(),
        }
    }

    /// A sink's buffered updates went from `before` to `after`.
    pub fn sink_buffered(&self, before: usize, after: usize) {
        if after > before {
            self.sink_backlog
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.sink_backlog
                .fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Whether the sinks hold more than [`SINK_BACKLOG_LIMIT`] complete updates they have not
    /// handed to their writers yet. Sources then pause reading (flow control): the dataflow would
    /// otherwise turn a whole backlog into output faster than Postgres takes it, and hold all
    /// of it in memory.
    pub fn sinks_behind(&self) -> bool {
        self.sink_backlog.load(Ordering::Relaxed) > SINK_BACKLOG_LIMIT
    }

    /// Registers a helper thread (a sink's writer) that finishes on its own once the
    /// workers are done; [`Control::join_threads`] waits for it.
    pub fn register_thread(&self, handle: std::thread::JoinHandle<()>) {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
    }

    /// Waits for every registered thread (called once the workers have ended).
    pub fn join_threads(&self) {
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            if handle.join().is_err() {
                self.fail(anyhow::anyhow!("a sink writer thread panicked"));
            }
        }
    }

    /// Registers the activator of a source operator (of any worker of this process), to be
    /// woken by [`Control::wake_sources`].
    pub fn register_source(&self, activator: SyncActivator) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(activator);
    }

    /// Schedules every registered source of this process now. A source that has just
    /// emitted data at time t calls it: each other source then moves its capability to the
    /// wall clock (past t) at once, instead of holding the frontier at t until its next idle
    /// tick — the difference between a draft written within milliseconds of its promo and
    /// one written up to `--tick-ms` later. (Sources of other processes still move on their
    /// own tick.)
    pub fn wake_sources(&self) {
        for activator in self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            // Fails only when that worker is gone, i.e. the job is ending.
            let _ = activator.activate();
        }
    }

    /// Reports an error that must end the process (the main thread exits non-zero).
    pub fn fail(&self, error: anyhow::Error) {
        // The receiver only disappears when the process is exiting anyway.
        let _ = self.fatal.send(Err(error));
    }

    /// Whether SIGTERM/SIGINT asked the job to finish (in this process, or in another
    /// process of the cluster: see [`completion_barrier`]).
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Asks this process's sources to finish, as a signal would.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }
}

/// Installs SIGTERM/SIGINT handlers: the first sets the returned flag (graceful finish:
/// the sources stop, the sinks write what was read, progress is committed), the second
/// exits immediately with status 130. If the graceful finish takes longer than `drain`
/// (Postgres unreachable, say), the process exits with status 1: nothing is lost, the next
/// run resumes from the last committed progress and the sinks' ledgers skip what was
/// already written.
pub fn install_signal_handlers(drain: Duration) -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let requested = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        flag::register_conditional_shutdown(signal, 130, Arc::clone(&requested))?;
        flag::register(signal, Arc::clone(&requested))?;
    }
    let watched = Arc::clone(&requested);
    std::thread::Builder::new()
        .name("drain-deadline".into())
        .spawn(move || {
            while !watched.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            tracing::info!(
                deadline_secs = drain.as_secs(),
                "stopping: draining the sinks"
            );
            std::thread::sleep(drain);
            tracing::error!(
                "did not drain within {} s (see --drain-timeout); exiting: the next run \
                 resumes from the last committed progress",
                drain.as_secs()
            );
            std::process::exit(1);
        })?;
    Ok(requested)
}

#[derive(Default)]
struct State {
    registered: usize,
    finished: usize,
    final_time: Time,
    horizon: Option<Time>,
}

/// Per-worker completion state shared by the worker's sources, sinks and the barrier.
#[derive(Clone, Default)]
pub struct Completion {
    state: Rc<RefCell<State>>,
}

impl Completion {
    /// Registers one more source that must finish before the worker is finished.
    pub fn register_source(&self) {
        self.state.borrow_mut().registered += 1;
    }

    /// Records that one registered source finished at logical time `time`.
    pub fn source_finished(&self, time: Time) {
        let mut state = self.state.borrow_mut();
        state.finished += 1;
        state.final_time = state.final_time.max(time);
    }

    /// The worker's final time, once all its registered sources finished.
    fn local_final(&self) -> Option<Time> {
        let state = self.state.borrow();
        (state.finished >= state.registered).then_some(state.final_time)
    }

    /// Whether every registered source of this worker has finished.
    pub fn all_sources_finished(&self) -> bool {
        self.local_final().is_some()
    }

    /// The horizon agreed by all workers: the last logical time of the run, if decided.
    pub fn horizon(&self) -> Option<Time> {
        self.state.borrow().horizon
    }

    fn set_horizon(&self, horizon: Time) {
        self.state.borrow_mut().horizon = Some(horizon);
    }
}

/// Builds the completion dataflow (see the module docs). Call it after all sources of the
/// worker have registered with its completion; it looks for local completion every tick.
///
/// It also spreads a shutdown across the cluster: a worker whose process was asked to stop
/// tells every worker, whose processes then stop too. A cluster drains as a whole (the
/// horizon needs every worker's sources finished), so a SIGTERM to one process of a
/// cluster stops the cluster cleanly.
pub fn completion_barrier(scope: Scope<'_, Time>, lifecycle: &Lifecycle) {
    let (completion, control, poll) = (&lifecycle.completion, &lifecycle.control, lifecycle.tick);
    let peers = scope.peers();
    let index = scope.index();
    let local = completion.clone();
    let asked = control.clone();
    let stopping = completion.clone();
    source(scope, "ShutdownAnnounce", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut capability = Some(capability);
        move |output| {
            if capability.is_none() {
                return;
            }
            if asked.shutdown_requested() {
                if let Some(cap) = capability.take() {
                    output.session(&cap).give_iterator(0..peers);
                }
            } else if stopping.all_sources_finished() {
                capability = None; // the run ends without a shutdown to spread
            } else {
                activator.activate_after(poll);
            }
        }
    })
    .container::<Vec<usize>>()
    .exchange(|worker| *worker as u64)
    .sink(Pipeline, "ShutdownApply", {
        let control = control.clone();
        move |(input, _frontier)| {
            input.for_each(|_, data| {
                if !data.is_empty() && !control.shutdown_requested() {
                    tracing::info!("another process of the cluster is stopping: stopping too");
                    control.request_shutdown();
                }
                data.clear();
            });
        }
    });
    let finals = source(scope, "CompletionAnnounce", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut capability = Some(capability);
        move |output| {
            if let Some(final_time) = local.local_final() {
                if let Some(cap) = capability.take() {
                    output.session(&cap).give((index, final_time));
                }
            } else {
                activator.activate_after(poll);
            }
        }
    })
    .container::<Vec<(usize, Time)>>();

    let decided = finals
        .exchange(|_| 0)
        .unary(Pipeline, "CompletionDecide", |_, _| {
            let mut reported: Vec<Time> = Vec::new();
            move |input, output| {
                input.for_each(|cap, data| {
                    reported.extend(data.drain(..).map(|(_, t)| t));
                    if reported.len() == peers {
                        let horizon = reported.iter().copied().max().unwrap_or_default();
                        output
                            .session(&cap)
                            .give_iterator((0..peers).map(|w| (w, horizon)));
                    }
                });
            }
        });

    let local = completion.clone();
    decided
        .container::<Vec<(usize, Time)>>()
        .exchange(|(w, _)| *w as u64)
        .sink(Pipeline, "CompletionApply", move |(input, _frontier)| {
            input.for_each(|_, data| {
                for (_, horizon) in data.drain(..) {
                    local.set_horizon(horizon);
                }
            });
        });
}
