//! Running and measuring processes (wall time and CPU seconds through wait4(2), peak RSS
//! from /proc), and the series of runs of one engine on one workload.
//!
//! Why not wait4's `ru_maxrss` for the peak: Linux counts in a child's peak the resident
//! memory of the parent it was spawned from (exec keeps the larger of the old and the new
//! memory's high-water marks), so every engine's peak read at least the suite's own RSS —
//! which holds the ground truths of the checks (a `/bin/true` spawned by a 500 MB process
//! reports 513 MB). Each process's own high-water mark (`VmHWM` in /proc/PID/status, reset
//! by exec) is read instead while it runs, for it and every process under it.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What one process cost.
#[derive(Clone, Debug)]
pub(crate) struct Measured {
    pub(crate) wall_s: f64,
    pub(crate) cpu_s: f64,
    pub(crate) max_rss_mb: f64,
}

/// Runs `command` to completion (at most `timeout`), measuring it with wait4(2).
pub(crate) fn measure(command: &mut Command, timeout: Duration) -> Measured {
    measure_all(&mut [command], timeout)
}

/// Runs `commands` concurrently to completion (at most `timeout`), measuring them with
/// wait4(2) — which also reaps the children (hence no `Child::wait`): wall time until the
/// last ends, CPU seconds summed, peak RSS of the largest.
pub(crate) fn measure_all(commands: &mut [&mut Command], timeout: Duration) -> Measured {
    try_measure_all(commands, timeout).unwrap_or_else(|error| panic!("{error}"))
}

/// How long any engine's run may take: the same limit for dishflow and the peers. A peer's
/// run that takes longer counts as failed (a hung Pathway run once waited with no
/// connection open; the suite goes on without that run); dishflow's stops the suite.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

/// A peer engine's run: measured, or `None` (said on stderr and recorded in `series` under
/// `engine` as an invalid run) if it failed or did not finish within [`RUN_TIMEOUT`].
pub(crate) fn measure_peer(
    command: &mut Command,
    series: &mut BTreeMap<&'static str, Series>,
    engine: &'static str,
) -> Option<Measured> {
    match try_measure_all(&mut [command], RUN_TIMEOUT) {
        Ok(m) => Some(m),
        Err(error) => {
            let first = error.lines().next().unwrap_or_default().to_string();
            eprintln!("{engine}: run failed, going on without it: {error}");
            series.entry(engine).or_default().invalid.push(first);
            None
        }
    }
}

/// [`measure_all`], or an error saying which command failed (with its stderr) or that the
/// runs took longer than `timeout` (then every command is killed).
#[allow(clippy::zombie_processes)]
pub(crate) fn try_measure_all(
    commands: &mut [&mut Command],
    timeout: Duration,
) -> Result<Measured, String> {
    let started = Instant::now();
    let mut running = Vec::new();
    for command in commands.iter_mut() {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take();
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = stderr {
                use std::io::Read;
                let _ = s.read_to_string(&mut text);
            }
            text
        });
        running.push((child, log, format!("{command:?}")));
    }
    let mut cpu_s = 0.0;
    let mut max_rss_mb: f64 = 0.0;
    let mut left: Vec<libc::pid_t> = running
        .iter()
        .map(|(c, _, _)| c.id() as libc::pid_t)
        .collect();
    let mut failed = Vec::new();
    let mut polls = 0u64;
    let mut tree: Vec<u32> = Vec::new();
    while !left.is_empty() {
        // Every 250 ms: the processes under those measured; every 25 ms: the high-water
        // marks of all of them so far (what the last interval before an exit adds is not
        // seen).
        if polls.is_multiple_of(50) {
            tree = descendants(&left);
        }
        if polls.is_multiple_of(5) {
            for pid in left.iter().map(|&p| p as u32).chain(tree.iter().copied()) {
                max_rss_mb = max_rss_mb.max(super::arrivals::usage(pid).1);
            }
        }
        polls += 1;
        let mut ended = Vec::new();
        for &pid in &left {
            let mut status: libc::c_int = 0;
            // SAFETY: rusage is plain data, zero is a valid value.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `pid` is our child; the pointers are to live locals.
            let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if done == pid {
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                cpu_s += secs(usage.ru_utime) + secs(usage.ru_stime);
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    failed.push(pid);
                }
                ended.push(pid);
            } else {
                assert!(done == 0, "wait4 failed");
            }
        }
        left.retain(|p| !ended.contains(p));
        if started.elapsed() > timeout {
            for (child, _, command) in &mut running {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("killed after {timeout:?}: {command}");
            }
            return Err(format!("did not finish within {timeout:?}"));
        }
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    for (child, log, command) in running {
        let log = log.join().unwrap_or_default();
        if failed.contains(&(child.id() as libc::pid_t)) {
            return Err(format!("{command} failed:\n{log}"));
        }
        if std::env::var_os("DISHFLOW_BENCH_LOG").is_some() {
            eprint!("{log}");
        }
    }
    Ok(Measured {
        wall_s,
        cpu_s,
        max_rss_mb,
    })
}

/// The processes under `roots` (children, theirs, …), from every process's parent in
/// /proc/PID/stat.
fn descendants(roots: &[libc::pid_t]) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // After the command name (which may contain spaces): state, then the parent.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if let Some(parent) = parent {
            parents.push((pid, parent));
        }
    }
    let mut found: Vec<u32> = roots.iter().map(|&p| p as u32).collect();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.split_off(roots.len())
}

/// Runs one workload, recording how long it took (`suite_s` in its result) and saying so.
pub(crate) fn push_timed(results: &mut Vec<Value>, workload: impl FnOnce() -> Value) {
    let started = Instant::now();
    let mut result = workload();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("suite: {} took {secs:.0} s", result["workload"]);
    result["suite_s"] = json!(secs);
    results.push(result);
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The runs of one engine on one workload.
#[derive(Default)]
pub(crate) struct Series {
    pub(crate) runs: Vec<Measured>,
    /// Rows the engine's last valid run wrote.
    pub(crate) rows: Option<i64>,
    /// Runs that failed, hung or wrote a wrong or incomplete output: why. They are not in
    /// `runs`: an invalid run is never a number in the report.
    pub(crate) invalid: Vec<String>,
    /// Wall seconds of runs on an empty input: the engine's fixed cost (start, connect,
    /// stop), part of every bounded run's time.
    pub(crate) empty: Vec<f64>,
}

impl Series {
    fn wall(&self) -> Vec<f64> {
        self.runs.iter().map(|m| m.wall_s).collect()
    }

    pub(crate) fn summary(&self, records: u64) -> Value {
        let wall = self.wall();
        if wall.is_empty() {
            return json!({ "invalid_runs": self.invalid });
        }
        let cpu: Vec<f64> = self.runs.iter().map(|m| m.cpu_s).collect();
        let rss: Vec<f64> = self.runs.iter().map(|m| m.max_rss_mb).collect();
        let empty = (!self.empty.is_empty()).then(|| median(&self.empty));
        // Throughput once running: records over the time beyond the empty run's.
        let net = empty
            .map(|e| median(&wall) - e)
            .filter(|s| *s > 0.0)
            .map(|s| records as f64 / s);
        json!({
            "empty_run_s": empty,
            "empty_runs_s": self.empty,
            "records_per_s_beyond_empty_run": net,
            "wall_s": wall,
            "median_s": median(&wall),
            "min_s": wall.iter().copied().fold(f64::INFINITY, f64::min),
            "max_s": wall.iter().copied().fold(0.0, f64::max),
            "records_per_s": records as f64 / median(&wall),
            "cpu_s": cpu,
            "cpu_us_per_record": median(&cpu) * 1e6 / records as f64,
            "max_rss_mb": rss.iter().copied().fold(0.0, f64::max),
            "output_rows": self.rows,
            "invalid_runs": self.invalid,
        })
    }
}

pub(crate) fn dishflow_command<A: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = A>,
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dishflow"));
    // DISHFLOW_BENCH_LOG (a RUST_LOG filter) shows the job's timings, e.g.
    // `dishflow::sinks=debug`; the default keeps its output out of the measurement.
    let log = std::env::var("DISHFLOW_BENCH_LOG").unwrap_or_else(|_| "warn".to_string());
    c.args(args).env("RUST_LOG", log);
    c
}

pub(crate) fn self_command(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current exe"));
    c.args(args);
    c
}

/// Adds run `m` of `engine` to `series`, with what its output check said: the rows it
/// wrote, or what is wrong with its output (then the run is invalid: said on stderr and
/// kept out of the numbers); `None` for a limit, which has no output to check.
pub(crate) fn record(
    series: &mut BTreeMap<&'static str, Series>,
    engine: &'static str,
    m: Measured,
    check: Option<Result<i64, String>>,
) {
    let entry = series.entry(engine).or_default();
    match check {
        Some(Err(why)) => {
            eprintln!("{engine}: INVALID run, its output is wrong: {why}");
            entry.invalid.push(why);
        }
        Some(Ok(rows)) => {
            entry.runs.push(m);
            entry.rows = Some(rows);
        }
        None => entry.runs.push(m),
    }
}
