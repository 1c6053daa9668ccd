//! What a person or a log collector sees: `tracing` logs (`RUST_LOG`, `--log-format
//! text|json`) on stderr, a progress bar for bounded runs on a terminal, periodic one-line
//! progress logs otherwise, and one summary line at the end of a run.
//!
//! ```text
//!  tracing events ──► fmt layer (text | json) ──► LogWriter ──► stderr
//!                                                    │ while a bar is shown: printed above it
//!  Progress thread ──(metrics: offsets read / to read per topic, every 200 ms)──► bar
//!                  └─(no terminal, or json logs: every 10 s; unbounded runs: every 60 s)──► info!
//! ```

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::metrics::metrics;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
}

/// The progress bars being shown, if any: log lines are printed above them.
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Whether logs are JSON (no bar then: it would interleave with machine-read lines).
static JSON: AtomicBool = AtomicBool::new(false);

/// Writes one log event to stderr, above the progress bars if they are shown.
pub struct LogWriter(Vec<u8>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        let bars = BARS.lock().unwrap_or_else(|e| e.into_inner());
        let write = || {
            let _ = std::io::stderr().lock().write_all(&line);
        };
        match bars.as_ref() {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }
}

/// Makes a [`LogWriter`] per event.
pub struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter(Vec::with_capacity(256))
    }
}

/// Installs the global logger: `RUST_LOG` filter (default `info`), `format` on stderr.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => {
            JSON.store(true, Ordering::Relaxed);
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .init()
        }
    }
}

/// How often progress is logged as a line: bounded runs without a bar, unbounded runs.
const BOUNDED_EVERY: Duration = Duration::from_secs(10);
const UNBOUNDED_EVERY: Duration = Duration::from_secs(60);

/// Reports a running job's progress until [`Progress::finish`].
pub struct Progress {
    job: String,
    started: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting `job`'s progress: a bounded run on a terminal (text logs) gets bars
    /// (offsets read / to read per topic, rate, ETA); otherwise a line is logged every 10 s
    /// (bounded) or 60 s (unbounded: records read, consumer lag, updates written).
    pub fn start(job: &str, bounded: bool) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let bar = bounded && std::io::stderr().is_terminal() && !JSON.load(Ordering::Relaxed);
        let flag = Arc::clone(&stop);
        let name = job.to_string();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                if bar {
                    bars(&flag);
                } else {
                    lines(&name, &flag, bounded);
                }
            })
            .ok();
        Progress {
            job: job.to_string(),
            started: Instant::now(),
            stop,
            thread,
        }
    }

    /// Stops reporting (clearing the bars) and logs the run's summary.
    pub fn finish(mut self) {
        self.stop_thread();
        let elapsed = self.started.elapsed();
        let (read, dead_lettered, sinks) = metrics().totals();
        let written: Vec<String> = sinks.iter().map(|(s, n)| format!("{s} {n}")).collect();
        info!(
            elapsed_ms = elapsed.as_millis() as u64,
            records_read = read,
            dead_lettered,
            records_per_sec = rate(read, elapsed),
            written = %written.join(", "),
            "{} finished: {read} records read ({dead_lettered} dead-lettered) in {:.1} s",
            self.job,
            elapsed.as_secs_f64()
        );
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn rate(n: u64, elapsed: Duration) -> u64 {
    (n as f64 / elapsed.as_secs_f64().max(1e-3)) as u64
}

/// Sleeps up to `period` in small steps; false once `stop` is set.
fn pause(stop: &AtomicBool, period: Duration) -> bool {
    let until = Instant::now() + period;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(period));
    }
    !stop.load(Ordering::Relaxed)
}

fn bars(stop: &AtomicBool) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
    let style = ProgressStyle::with_template(
        "{prefix:>20} [{bar:30}] {human_pos}/{human_len} offsets {msg} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    *BARS.lock().unwrap_or_else(|e| e.into_inner()) = Some(multi.clone());
    let mut shown: Vec<(String, ProgressBar)> = Vec::new();
    let started = Instant::now();
    while pause(stop, Duration::from_millis(200)) {
        for (topic, done, total) in metrics().progress() {
            let bar = match shown.iter().find(|(t, _)| *t == topic) {
                Some((_, bar)) => bar.clone(),
                None => {
                    let bar = multi.add(ProgressBar::new(total).with_style(style.clone()));
                    bar.set_prefix(topic.clone());
                    shown.push((topic, bar.clone()));
                    bar
                }
            };
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(format!("{}/s", rate(done, started.elapsed())));
        }
    }
    for (_, bar) in &shown {
        bar.finish_and_clear();
    }
    let _ = multi.clear();
    *BARS.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

fn lines(job: &str, stop: &AtomicBool, bounded: bool) {
    let every = if bounded {
        BOUNDED_EVERY
    } else {
        UNBOUNDED_EVERY
    };
    let started = Instant::now();
    while pause(stop, every) {
        let elapsed = started.elapsed();
        if !bounded {
            let (read, dead_lettered, sinks) = metrics().totals();
            let written: u64 = sinks.iter().map(|(_, n)| n).sum();
            info!(
                job,
                records_read = read,
                dead_lettered,
                consumer_lag = metrics().lag(),
                updates_written = written,
                "status"
            );
            continue;
        }
        for (topic, done, total) in metrics().progress() {
            let eta = (done > 0 && total > done).then(|| {
                elapsed
                    .mul_f64((total - done) as f64 / done as f64)
                    .as_secs()
            });
            info!(
                job,
                topic,
                done,
                total,
                percent = format!("{:.1}", 100.0 * done as f64 / total.max(1) as f64),
                offsets_per_sec = rate(done, elapsed),
                eta_secs = eta,
                "progress"
            );
        }
    }
}
