//! The jobs: wiring of sources, dataflows and sinks, and how a job's processes run and end.

pub mod geo;
pub mod kafka_job;
pub mod orders;
pub mod promos;

use std::sync::mpsc::channel;
use std::sync::{Mutex, Once};

use anyhow::{Result, anyhow};
use timely::worker::Worker;

use crate::control::{Control, Outcome};

/// Runs `build` on every worker of the cluster described by `config` and waits until all
/// workers finished, or until any of them reports a fatal error through the [`Control`]
/// passed to `build` (then the error is returned at once, without waiting for the others).
/// With `watch`, a stall is such an error (`stall`).
pub fn run_workers<F>(
    config: timely::Config,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
    watch: Option<crate::stall::Watch>,
    build: F,
) -> Result<()>
where
    F: Fn(&mut Worker, Control) + Send + Sync + 'static,
{
    record_panics();
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
    // The cluster is connected: from now on, a silent peer or no progress is a stall.
    if let Some(watch) = watch {
        crate::stall::start(watch, threads.clone())?;
    }
    std::thread::spawn(move || {
        // A lost peer process makes timely's communication threads panic, and joining the
        // guards re-raises that panic: catch it, so the process reports and exits (and its
        // supervisor restarts the cluster) instead of waiting forever.
        let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| guards.join()));
        let failures: Vec<String> = match joined {
            Ok(results) => {
                let failed: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
                // timely reports a worker's panic as `Any { .. }`: say what and where.
                let panics = std::mem::take(&mut *PANICS.lock().unwrap_or_else(|e| e.into_inner()));
                if failed.is_empty() || panics.is_empty() {
                    failed
                } else {
                    panics
                }
            }
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

/// The panics of this process's threads since the cluster started, each as "thread 'name'
/// panicked at file:line: message".
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs (once) a panic hook that records each panic's message and location in
/// [`PANICS`] before the usual report on stderr.
fn record_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(panic_line(info));
            report(info);
        }));
    });
}

/// One line for a panic: the thread, where, and the message.
fn panic_line(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = (payload.downcast_ref::<&str>().copied())
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let thread = std::thread::current();
    let at = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    format!(
        "thread '{}' panicked{at}: {message}",
        thread.name().unwrap_or("unnamed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_panic_is_reported_with_its_message_and_location() {
        let config = timely::Config::thread();
        let shutdown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let error = run_workers(config, shutdown, None, |worker, _control| {
            let week = chrono::NaiveDate::MIN
                .checked_sub_days(chrono::Days::new(worker.index() as u64 + 1));
            week.expect("no Monday before the calendar's first day");
        })
        .expect_err("the worker panicked");
        let line = format!("{error:#}");
        assert!(
            line.contains("no Monday before the calendar's first day")
                && line.contains("src/jobs/mod.rs:"),
            "{line}"
        );
    }
}
