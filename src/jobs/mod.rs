//! The jobs: wiring of sources, dataflows and sinks, and how a job's processes run and end.

pub mod geo;
pub mod kafka_job;
pub mod orders;
pub mod promos;

use std::sync::mpsc::channel;

use anyhow::{Result, anyhow};
use timely::worker::Worker;

use crate::control::{Control, Outcome};

/// Runs `build` on every worker of the cluster described by `config` and waits until all
/// workers finished, or until any of them reports a fatal error through the [`Control`]
/// passed to `build` (then the error is returned at once, without waiting for the others).
pub fn run_workers<F>(
    config: timely::Config,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
    build: F,
) -> Result<()>
where
    F: Fn(&mut Worker, Control) + Send + Sync + 'static,
{
    let (tx, rx) = channel::<Outcome>();
    let control = Control::new(tx.clone(), shutdown);
    let threads = control.clone();
    let guards = timely::execute(config, move |worker| {
        if crate::metrics::serving() {
            crate::metrics::log_arrangements(worker);
        }
        build(worker, control.clone())
    })
    .map_err(|e| anyhow!("cannot start the timely cluster: {e}"))?;
    std::thread::spawn(move || {
        // A lost peer process makes timely's communication threads panic, and joining the
        // guards re-raises that panic: catch it, so the process reports and exits (and its
        // supervisor restarts the cluster) instead of waiting forever.
        let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| guards.join()));
        let failures: Vec<String> = match joined {
            Ok(results) => results.into_iter().filter_map(|r| r.err()).collect(),
            Err(_) => vec![
                "the cluster's communication failed (a peer process is gone?); restart every \
                 process of the cluster"
                    .to_string(),
            ],
        };
        // The sinks' writer threads flush once their operators are gone.
        threads.join_threads();
        let outcome = if failures.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("worker failed: {}", failures.join("; ")))
        };
        let _ = tx.send(outcome);
    });
    rx.recv()
        .map_err(|_| anyhow!("workers ended without reporting"))?
}
