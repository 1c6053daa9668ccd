//! The `dishflow` binary as a child process: run, spawn, signal, wait; its metrics
//! endpoint; a two-process cluster's flags.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::*;

/// The `dishflow` binary cargo built for the tests and benchmarks of this workspace
/// (`CARGO_BIN_EXE_dishflow`, which cargo sets when it runs them).
pub fn binary() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_dishflow")
        .map(PathBuf::from)
        .expect("CARGO_BIN_EXE_dishflow: run the tests and benchmarks with cargo")
}

/// `dishflow` with `args`, run to completion (at most `timeout`).
pub fn dishflow<A: AsRef<OsStr>>(args: impl IntoIterator<Item = A>, timeout: Duration) -> Output {
    wait(spawn(args), timeout)
}

/// A `dishflow` process a test started. Its stdout and stderr go to files under the
/// target's temporary directory (a pipe nobody reads would block a job that logs more than
/// 64 KiB); the files are removed with the job unless the test is failing. A job still
/// running when its `Job` is dropped (a failed assertion) is killed.
pub struct Job {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Job {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    fn output(&mut self, status: ExitStatus) -> Output {
        Output {
            status,
            stdout: std::fs::read(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read(&self.stderr).unwrap_or_default(),
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
        if std::thread::panicking() {
            eprintln!("dishflow's output kept in {}", self.stderr.display());
        } else {
            std::fs::remove_file(&self.stdout).ok();
            std::fs::remove_file(&self.stderr).ok();
        }
    }
}

/// `dishflow` with `args`, in the background, its output written to files.
pub fn spawn<A: AsRef<OsStr>>(args: impl IntoIterator<Item = A>) -> Job {
    spawn_env(args, &[])
}

/// [`spawn`] with environment variables `env` set (after `RUST_LOG=info`).
pub fn spawn_env<A: AsRef<OsStr>>(args: impl IntoIterator<Item = A>, env: &[(&str, &str)]) -> Job {
    spawn_wrapped(&[], args, env)
}

/// [`spawn_env`] through a command that runs the binary (`["ip", "netns", "exec", "a"]`).
pub fn spawn_wrapped<A: AsRef<OsStr>>(
    wrapper: &[&str],
    args: impl IntoIterator<Item = A>,
    env: &[(&str, &str)],
) -> Job {
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let binary = binary();
    let dir = binary
        .parent()
        .unwrap_or(Path::new("."))
        .join("dishflow-test-logs");
    std::fs::create_dir_all(&dir).expect("log directory");
    let command = args.first().and_then(|a| a.to_str()).unwrap_or("dishflow");
    let name = unique(command);
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(&binary);
            command
        }
        None => Command::new(&binary),
    };
    let child = command
        .args(&args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn dishflow");
    Job {
        child,
        stdout,
        stderr,
    }
}

/// Waits for `job`, killing it (and failing) after `timeout`.
pub fn wait(mut job: Job, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = job.try_wait() {
            return job.output(status);
        }
        if Instant::now() > deadline {
            job.kill();
            panic!(
                "dishflow did not finish within {timeout:?}; stderr:\n{}",
                job.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `dishflow` with `args` and `--stop-at-end` (a bounded run), asserting that it
/// succeeds within two minutes.
pub fn run_to_end(args: &[String]) {
    let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
    argv.push("--stop-at-end");
    assert_success(&dishflow(&argv, Duration::from_secs(120)));
}

/// Asserts that `out` is a successful run, showing its stderr otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "dishflow failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends SIGTERM to `child` and asserts that it finishes cleanly within 30 s.
pub fn terminate(child: Job) -> Output {
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let out = wait(child, Duration::from_secs(30));
    assert_success(&out);
    out
}

/// Polls `check` every 200 ms until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The text after `name` in benchmark arguments.
fn arg_text<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The number after `name` in benchmark arguments, or `default`.
pub fn arg_value(args: &[String], name: &str, default: usize) -> usize {
    arg_text(args, name).map_or(default, |v| v.parse().expect("a number"))
}

/// The comma-separated list after `name` in benchmark arguments (items that do not parse
/// left out), if given.
pub fn arg_list<T: std::str::FromStr>(args: &[String], name: &str) -> Option<Vec<T>> {
    arg_text(args, name).map(|v| v.split(',').filter_map(|item| item.parse().ok()).collect())
}

/// A free TCP port on 127.0.0.1 (for a job's `--metrics-addr`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// `GET path` on 127.0.0.1:`port`: (status, body); `None` while nothing listens there.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, &[]).map(|(status, _, body)| (status, body))
}

/// `GET path` on 127.0.0.1:`port` with extra header lines (`"Name: value"`; `Host:
/// 127.0.0.1` unless one of them is a `Host`): (status, the response's header lines, body);
/// `None` while nothing listens there.
pub fn http_get_with(port: u16, path: &str, headers: &[&str]) -> Option<(u16, String, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        extra.push_str("Host: 127.0.0.1\r\n");
    }
    write!(stream, "GET {path} HTTP/1.0\r\n{extra}\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head.to_string(), body.to_string()))
}

/// Sum of the samples of metric `name` in a Prometheus text exposition whose labels
/// contain every `label="value"` of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    dishflow::metrics::parse_series(text, name)
        .iter()
        .filter(|(series, _)| labels.iter().all(|l| series.contains(l)))
        .map(|(_, value)| value)
        .sum()
}

/// A port p with p and p + 1 free for TCP and UDP (two processes of a cluster: timely's
/// connections and their heartbeats; a broker behind a proxy). Taken below Linux's
/// ephemeral range (32768 and up): a port from that range can be handed to any outgoing
/// connection of a test running in parallel before the cluster binds it.
pub fn two_free_ports() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Processes running tests at once start at different places.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 6_000) as u16 * 2;
    loop {
        let port = 20_000 + (start - 20_000 + NEXT.fetch_add(2, Ordering::Relaxed)) % 12_000;
        let free = |p: u16| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        };
        if free(port) && free(port + 1) {
            return port;
        }
    }
}

/// Sends `signal` (e.g. "TERM", "KILL", "STOP") to `child`.
pub fn signal(child: &Job, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal}");
}

/// The flags of the two processes of a cluster named `name` (`--processes 2 --process i
/// --hostfile F`), with a fresh hostfile on two free loopback ports.
pub fn two_process_cluster(name: &str) -> [Vec<String>; 2] {
    let port = two_free_ports();
    let hostfile = std::env::temp_dir().join(format!("{name}.hosts"));
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{port}\n127.0.0.1:{}\n", port + 1),
    )
    .expect("hostfile");
    cluster_flags(&hostfile)
}

/// The cluster flags of processes 0 and 1 of a two-process cluster described by `hostfile`.
pub fn cluster_flags(hostfile: &Path) -> [Vec<String>; 2] {
    let hostfile = hostfile.to_string_lossy().to_string();
    [0, 1].map(|i: usize| {
        [
            "--processes",
            "2",
            "--process",
            &i.to_string(),
            "--hostfile",
            &hostfile,
        ]
        .map(String::from)
        .to_vec()
    })
}
