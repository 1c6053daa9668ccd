//! Stall detection (`--stall-timeout`): a process that stops making progress — its workers
//! idle while nothing moves, or a peer process of its cluster silent — turns unhealthy and
//! exits, so that a supervisor restarts the cluster (the restart is exact).
//!
//! ```text
//!  progress, noted in metrics(): the output frontier moved, a source emitted, a sink wrote;
//!    and, checked every second here: a sink write in flight or a dependency being retried
//!    (waiting out an outage is not a stall), or the worker threads using CPU (a long step)
//!  watchdog thread, every second:
//!    ──► each peer, UDP to its hostfile address: "dishflow/1 <job> <process> <progressing>"
//!    ◄── each peer's datagrams: when it was last heard, whether it progresses
//!    stalled when, for --stall-timeout:
//!      a peer was not heard (stopped, frozen, dead or cut off), or
//!      nothing progressed here and no peer reports progress either
//!    then: /healthz and /readyz answer 503 with the reason, dishflow_stalled is 1, the
//!          reason is logged; EXIT_GRACE later the process exits with status 1
//! ```
//!
//! A process whose frontier waits for a *busy* peer is not stalled: the peer's heartbeats
//! say it progresses. A process whose frontier waits for a stopped peer (SIGSTOP, a frozen
//! VM) or one cut off by a network partition is: timely has no timeouts and does not expose
//! its TCP connections (no keepalive can be set on them), so such a peer is never noticed by
//! timely itself — its connection just stays open and silent. The heartbeats use UDP on the
//! port number of each process's timely address (UDP and TCP ports are separate), so a
//! cluster needs that port open for UDP too. A killed peer closes its connections: timely's
//! communication threads then fail at once, which `jobs::run_workers` reports; its
//! heartbeats stop as well, so the bound holds either way.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tracing::{error, info, warn};

use crate::control::Control;
use crate::metrics::metrics;

/// How often heartbeats are sent and the state is checked.
const BEAT: Duration = Duration::from_secs(1);

/// Between turning unhealthy and exiting: long enough for a probe or a scrape to see it.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Share of one core the worker threads must have used over the last second to count as
/// busy (a long step): an idle worker wakes once per tick for well under 1 %.
const BUSY_CPU_SHARE: f64 = 0.2;

/// What the watchdog needs to know about the cluster.
#[derive(Clone, Debug)]
pub struct Watch {
    /// The job's name (heartbeats of another job on the same ports are ignored).
    pub job: String,
    /// No progress for this long is a stall.
    pub timeout: Duration,
    /// This process's index.
    pub process: usize,
    /// Every process's address (the hostfile), this one's included; empty for one process.
    pub addresses: Vec<String>,
}

/// What one peer said last.
struct Peer {
    address: SocketAddr,
    heard: Instant,
    progressing: bool,
}

/// Starts the watchdog thread of `watch`: it reports a stall through `control` (see the
/// module docs). Call once the cluster is connected.
pub fn start(watch: Watch, control: Control) -> Result<()> {
    let socket = match watch.addresses.get(watch.process) {
        Some(own) if watch.addresses.len() > 1 => {
            let socket = UdpSocket::bind(own.as_str())
                .with_context(|| format!("cannot bind the heartbeat socket (UDP {own})"))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            Some(socket)
        }
        _ => None,
    };
    let mut peers = HashMap::new();
    for (index, address) in watch.addresses.iter().enumerate() {
        if index == watch.process {
            continue;
        }
        let resolved = (address.to_socket_addrs())
            .with_context(|| format!("cannot resolve peer {index} ({address})"))?
            .next()
            .ok_or_else(|| anyhow!("peer {index} ({address}) has no address"))?;
        let peer = Peer {
            address: resolved,
            heard: Instant::now(),
            progressing: true,
        };
        peers.insert(index, peer);
    }
    // Progress is counted from now on: the startup checks took their time.
    metrics().note_progress();
    info!(
        timeout_s = watch.timeout.as_secs(),
        peers = peers.len(),
        "stall detection on"
    );
    std::thread::Builder::new()
        .name("stall-watchdog".into())
        .spawn(move || Watchdog::new(watch, socket, peers).run(&control))?;
    Ok(())
}

/// The watchdog thread's state.
struct Watchdog {
    watch: Watch,
    socket: Option<UdpSocket>,
    peers: HashMap<usize, Peer>,
    cpu: WorkerCpu,
}

impl Watchdog {
    fn new(watch: Watch, socket: Option<UdpSocket>, peers: HashMap<usize, Peer>) -> Self {
        Watchdog {
            watch,
            socket,
            peers,
            cpu: WorkerCpu::default(),
        }
    }

    fn run(mut self, control: &Control) {
        let mut next_beat = Instant::now();
        loop {
            self.receive();
            if Instant::now() < next_beat {
                if self.socket.is_none() {
                    std::thread::sleep(next_beat - Instant::now());
                }
                continue;
            }
            next_beat += BEAT;
            if self.cpu.busy() || metrics().busy() {
                metrics().note_progress();
            }
            // Until every worker runs its dataflow (writers opened, outboxes recovered),
            // the process is starting, not stalled.
            let progressing = metrics().idle_for() <= self.watch.timeout || !metrics().started();
            self.send(progressing);
            if metrics().finished() || control.shutdown_requested() {
                continue;
            }
            if let Some(reason) = self.stalled(progressing) {
                error!(reason = %reason, "stalled: no progress; exiting so that the cluster is restarted");
                metrics().set_stalled(&reason);
                std::thread::sleep(EXIT_GRACE);
                control.fail(anyhow!(
                    "stalled for {} s: {reason}; restart every process of the cluster",
                    self.watch.timeout.as_secs()
                ));
                return;
            }
        }
    }

    /// Why the process is stalled, if it is (see the module docs).
    fn stalled(&self, progressing: bool) -> Option<String> {
        let timeout = self.watch.timeout;
        let mut silent: Vec<String> = (self.peers.iter())
            .filter(|(_, p)| p.heard.elapsed() > timeout)
            .map(|(index, p)| {
                format!(
                    "process {index} ({}) sent no heartbeat for {} s: stopped, frozen, dead \
                     or unreachable",
                    p.address,
                    p.heard.elapsed().as_secs()
                )
            })
            .collect();
        silent.sort();
        if !silent.is_empty() {
            return Some(silent.join("; "));
        }
        let peer_progressing = self.peers.values().any(|p| p.progressing);
        if !progressing && !peer_progressing {
            let idle = metrics().idle_for().as_secs();
            let frontier = metrics().written_up_to();
            let where_ = if self.peers.is_empty() {
                "in this process"
            } else {
                "anywhere in the cluster"
            };
            return Some(format!(
                "no progress {where_} for {idle} s: the output frontier stays at \
                 {frontier} ms and no worker is working"
            ));
        }
        None
    }

    /// Sends this process's heartbeat to every peer.
    fn send(&self, progressing: bool) {
        let Some(socket) = &self.socket else { return };
        let beat = format!(
            "dishflow/1 {} {} {}",
            self.watch.job,
            self.watch.process,
            u8::from(progressing)
        );
        for peer in self.peers.values() {
            // A peer that is gone refuses the datagram: its silence is what counts.
            let _ = socket.send_to(beat.as_bytes(), peer.address);
        }
    }

    /// Reads the heartbeats that arrived (waiting at most the socket's read timeout).
    fn receive(&mut self) {
        let Some(socket) = &self.socket else { return };
        let mut buffer = [0u8; 256];
        while let Ok((n, _from)) = socket.recv_from(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..n]);
            match parse_beat(&text, &self.watch.job) {
                Some((index, progressing)) => {
                    if let Some(peer) = self.peers.get_mut(&index) {
                        peer.heard = Instant::now();
                        peer.progressing = progressing;
                    }
                }
                None => warn!(datagram = %text, "heartbeat socket: not a heartbeat of this job"),
            }
        }
    }
}

/// (process, progressing) of a heartbeat of `job`.
fn parse_beat(text: &str, job: &str) -> Option<(usize, bool)> {
    let mut parts = text.split(' ');
    if parts.next()? != "dishflow/1" || parts.next()? != job {
        return None;
    }
    let index = parts.next()?.parse().ok()?;
    let progressing = parts.next()? == "1";
    Some((index, progressing))
}

/// CPU time of this process's timely worker threads (Linux: `/proc/self/task/*/stat`).
#[derive(Default)]
struct WorkerCpu {
    last: Option<(Instant, u64)>,
}

impl WorkerCpu {
    /// Whether the worker threads used at least [`BUSY_CPU_SHARE`] of a core since the last
    /// call (false where it cannot be read).
    fn busy(&mut self) -> bool {
        let Some(ticks) = worker_cpu_ticks() else {
            return false;
        };
        let now = Instant::now();
        let busy = self.last.is_some_and(|(then, before)| {
            let used = ticks.saturating_sub(before) as f64 / CLOCK_TICKS_PER_SECOND;
            used >= BUSY_CPU_SHARE * now.duration_since(then).as_secs_f64()
        });
        self.last = Some((now, ticks));
        busy
    }
}

/// The kernel's `USER_HZ` (the unit of `/proc/*/stat` times): 100 on every Linux ABI.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU ticks of the threads named `timely:work-*`.
fn worker_cpu_ticks() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(task) = task else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some(ticks) = worker_ticks(&stat) {
            total += ticks;
        }
    }
    Some(total)
}

/// utime + stime of a `/proc/<pid>/task/<tid>/stat` line, if its thread is a timely worker.
fn worker_ticks(stat: &str) -> Option<u64> {
    let (head, tail) = stat.rsplit_once(')')?;
    if !head.contains("(timely:work-") {
        return None;
    }
    // After the name: state (field 3), …, utime (field 14), stime (field 15).
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_of_this_job_are_read_and_others_ignored() {
        assert_eq!(
            parse_beat("dishflow/1 promos 1 1", "promos"),
            Some((1, true))
        );
        assert_eq!(
            parse_beat("dishflow/1 promos 0 0", "promos"),
            Some((0, false))
        );
        assert_eq!(parse_beat("dishflow/1 orders 1 1", "promos"), None);
        assert_eq!(parse_beat("hello", "promos"), None);
    }

    #[test]
    fn worker_cpu_is_read_from_the_workers_stat_lines() {
        let stat = "4242 (timely:work-0) S 1 4242 4242 0 -1 4194560 10 0 0 0 75 25 0 0 20 0 9 0";
        assert_eq!(worker_ticks(stat), Some(100));
        let other = "4243 (sink-Drafts) S 1 4242 4242 0 -1 4194560 10 0 0 0 75 25 0 0 20 0 9 0";
        assert_eq!(worker_ticks(other), None);
        assert!(worker_cpu_ticks().is_some(), "readable on Linux");
    }

    #[test]
    fn a_silent_peer_is_named_and_a_progressing_one_keeps_an_idle_process_alive() {
        let watch = Watch {
            job: "t".into(),
            timeout: Duration::from_secs(5),
            process: 0,
            addresses: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
        };
        let peer = |heard: Duration, progressing| Peer {
            address: "127.0.0.1:2".parse().expect("an address"),
            heard: Instant::now() - heard,
            progressing,
        };
        let mut dog = Watchdog::new(
            watch,
            None,
            HashMap::from([(1, peer(Duration::ZERO, true))]),
        );
        assert_eq!(dog.stalled(false), None, "waiting for a busy peer");
        dog.peers.insert(1, peer(Duration::ZERO, false));
        let idle = dog.stalled(false).expect("nothing progresses anywhere");
        assert!(
            idle.starts_with("no progress anywhere in the cluster"),
            "{idle}"
        );
        assert_eq!(dog.stalled(true), None);
        dog.peers.insert(1, peer(Duration::from_secs(6), true));
        let silent = dog.stalled(true).expect("a silent peer");
        assert!(
            silent.starts_with("process 1 (127.0.0.1:2) sent no heartbeat for 6 s"),
            "{silent}"
        );
    }
}
