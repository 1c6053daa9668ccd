//! The crash tests' machinery: a job run as 1 or 2 processes of one worker, killed with
//! SIGKILL at chosen moments (during startup, while its outbox holds committed messages, at
//! random) and started again; PostgreSQL restarted under it; a Redis of the test's own
//! (persistent, on its own port) restarted under it; and what a crash that sent a message
//! twice would leave in a topic.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::*;

/// How many times a kill that missed its moment is tried again.
const ATTEMPTS: usize = 20;

/// The setting `name` from the environment, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: reproducible kill timing from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration from `low` to `high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.draw() % (high - low).max(1))
    }
}

/// The arguments of one start of the job (without the cluster flags), which may vary from
/// start to start with the test's random numbers.
type Argv = Box<dyn FnMut(&mut Rng) -> Vec<String>>;

/// The job under test, and what its starts logged.
pub struct Chaos {
    argv: Argv,
    /// Names the cluster's hostfile.
    name: String,
    processes: usize,
    pub rng: Rng,
    /// The stderr of every ended start so far, in order.
    pub log: String,
    /// What happened to the job, in order ("startup", "in flush", "PostgreSQL restart", …).
    pub events: Vec<String>,
    started: Instant,
}

/// Where a job's kills land: its database (whose `dishflow_outbox` shows a batch between its
/// Postgres commit and its Kafka confirmation) and the log lines around its startup.
pub struct Moments {
    /// The job's database.
    pub db: String,
    /// What the job logs once its startup checks passed.
    pub starting: &'static str,
    /// What it logs once startup is over: a kill after it missed "during startup".
    pub started: &'static str,
    /// How a kill during startup is reported, e.g. "kill (startup, before the snapshot)".
    pub startup_kill: &'static str,
}

/// One start of the job: `processes` processes of one worker each.
pub struct Cluster {
    pub processes: Vec<Job>,
}

impl Chaos {
    /// A job of `processes` processes (1 or 2) started with `argv`'s arguments, its timing
    /// drawn from `seed`.
    pub fn new(
        name: &str,
        processes: usize,
        seed: u64,
        argv: impl FnMut(&mut Rng) -> Vec<String> + 'static,
    ) -> Chaos {
        assert!(matches!(processes, 1 | 2), "1 or 2 processes");
        Chaos {
            argv: Box::new(argv),
            name: name.to_string(),
            processes,
            rng: Rng(seed),
            log: String::new(),
            events: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Starts the job.
    pub fn start(&mut self) -> Cluster {
        let args = (self.argv)(&mut self.rng);
        let flags = two_process_cluster(&self.name);
        let processes = (0..self.processes)
            .map(|i| {
                let mut argv = args.clone();
                if self.processes > 1 {
                    argv.extend(flags[i].iter().cloned());
                }
                spawn(&argv)
            })
            .collect();
        Cluster { processes }
    }

    /// SIGKILL: one random process first, then the rest after `stagger` (a cluster is
    /// restarted whole). Returns what this start logged.
    pub fn kill(&mut self, mut cluster: Cluster, stagger: bool) -> String {
        let n = cluster.processes.len();
        let first = (self.rng.draw() % n as u64) as usize;
        let mut order: Vec<usize> = (0..n).collect();
        order.swap(0, first);
        for (k, i) in order.into_iter().enumerate() {
            if k > 0 && stagger {
                std::thread::sleep(self.rng.millis(10, 300));
            }
            cluster.processes[i].kill();
        }
        let logged: String = cluster.processes.iter().map(Job::stderr).collect();
        self.log.push_str(&logged);
        logged
    }

    /// Records `event` with the time since the test began, and prints it.
    pub fn record(&mut self, event: &str, misses: usize) {
        println!(
            "chaos: {:>5.1} s {event}{}",
            self.started.elapsed().as_secs_f64(),
            match misses {
                0 => String::new(),
                n => format!(" ({n} earlier kill(s) missed the moment)"),
            }
        );
        self.events.push(event.to_string());
    }

    /// Kill number `k`, in turn: during startup, in flush, at random (see the methods below),
    /// recorded.
    pub fn kill_in_turn(&mut self, job: Cluster, k: usize, moments: &Moments) {
        match k % 3 {
            0 => {
                let misses = self.kill_in_startup(job, moments.starting, moments.started);
                self.record(moments.startup_kill, misses);
            }
            1 => {
                let misses = self.kill_in_flush(job, &moments.db);
                self.record("kill (in flush)", misses);
            }
            _ => {
                self.kill_at_random(job, 300, 4000);
                self.record("kill (random)", 0);
            }
        }
    }

    /// Restarts PostgreSQL under the running job once every process logged `after` (past
    /// its startup checks, which report an unreachable server and exit): it must wait and
    /// carry on.
    pub fn restart_postgres_under(&mut self, job: &Cluster, after: &str) {
        wait_until(Duration::from_secs(60), after, || {
            job.logged_by_all(after).then_some(())
        });
        std::thread::sleep(self.rng.millis(500, 2000));
        restart_postgres();
        self.record("PostgreSQL restart", 0);
        std::thread::sleep(self.rng.millis(1000, 3000));
    }

    /// "N events (what, …) in S s": what happened to the job since the test began.
    pub fn summary(&self) -> String {
        format!(
            "{} events ({}) in {:.0} s",
            self.events.len(),
            self.events.join(", "),
            self.started.elapsed().as_secs_f64()
        )
    }

    /// Kills the job while it starts: after its startup checks (a process logged
    /// `starting`) and before any process logged `too_late`. A start that logged it already
    /// is killed, started again, and killed sooner the next time. Returns the misses.
    pub fn kill_in_startup(&mut self, mut job: Cluster, starting: &str, too_late: &str) -> usize {
        let mut delay = self.rng.millis(0, 200);
        for misses in 0..ATTEMPTS {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !job.logged_by_any(starting) {
                job.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "the job did not start in a minute"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(delay);
            if !self.kill(job, false).contains(too_late) {
                return misses;
            }
            delay /= 2;
            job = self.start();
        }
        panic!("{ATTEMPTS} kills during startup all came after {too_late:?} was logged");
    }

    /// Kills the job while the outbox of `db` holds messages: committed to Postgres, not yet
    /// confirmed by Kafka. A kill after the outbox emptied again is a miss: the job is
    /// started again. Returns the misses.
    pub fn kill_in_flush(&mut self, mut job: Cluster, db: &str) -> usize {
        let mut watch = pg(db);
        let mut outbox = || outbox_rows(&mut watch).unwrap_or(0);
        for misses in 0..ATTEMPTS {
            let deadline = Instant::now() + Duration::from_secs(60);
            while outbox() == 0 {
                job.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "the outbox stayed empty for a minute"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            self.kill(job, true);
            if outbox() > 0 {
                return misses;
            }
            job = self.start();
        }
        panic!("{ATTEMPTS} kills in flush all came after the outbox was emptied");
    }

    /// Kills the job after `low` to `high` milliseconds of running.
    pub fn kill_at_random(&mut self, mut job: Cluster, low: u64, high: u64) {
        let sleep = self.rng.millis(low, high);
        std::thread::sleep(sleep);
        job.assert_running();
        self.kill(job, true);
    }

    /// Stops the job's last start (SIGTERM; every process must exit 0), keeping its log.
    pub fn finish(&mut self, job: Cluster) {
        let logged: String = job.processes.iter().map(Job::stderr).collect();
        self.log.push_str(&logged);
        job.terminate();
    }

    /// Prints the outbox recoveries the starts logged (what a kill in flush left).
    pub fn print_recoveries(&self) {
        for line in self
            .log
            .lines()
            .filter(|l| l.contains("outbox: delivering"))
        {
            let tail = line.split("writer=").nth(1).unwrap_or(line);
            if line.contains("retired") {
                println!(
                    "chaos: outbox of a retired writer (fewer connections now): writer={tail}"
                );
            } else {
                println!("chaos: outbox recovery: writer={tail}");
            }
        }
    }
}

impl Cluster {
    /// Panics if a process has exited (the job never gives up by itself), with its log.
    pub fn assert_running(&mut self) {
        if let Some(exited) = self.processes.iter_mut().find_map(|job| {
            job.try_wait()
                .map(|status| format!("{status}: {}", job.stderr()))
        }) {
            panic!("the job exited by itself ({exited})");
        }
    }

    /// Whether any process logged `text`.
    pub fn logged_by_any(&self, text: &str) -> bool {
        self.processes.iter().any(|p| p.stderr().contains(text))
    }

    /// Whether every process logged `text`.
    pub fn logged_by_all(&self, text: &str) -> bool {
        self.processes.iter().all(|p| p.stderr().contains(text))
    }

    /// SIGTERM to every process (a cluster finishes together), then each must exit 0.
    pub fn terminate(self) {
        for job in &self.processes {
            signal(job, "TERM");
        }
        for job in self.processes {
            assert_success(&wait(job, Duration::from_secs(60)));
        }
    }
}

/// The messages in the outbox of the database `client` is connected to (`None` while it
/// cannot be read).
pub fn outbox_rows(client: &mut postgres::Client) -> Option<i64> {
    client
        .query_one("SELECT count(*) FROM dishflow_outbox", &[])
        .map(|r| r.get(0))
        .ok()
}

/// Waits until `job` on `db` has caught up with `topic` as it is now: its committed
/// progress past every message, and its outbox delivered.
pub fn wait_caught_up(db: &str, job: &str, topic: &str, timeout: Duration) {
    let marks: Vec<(i32, i64)> = dishflow::kafka::watermarks(&kafka(), topic)
        .expect("watermarks")
        .into_iter()
        .filter(|(_, _, high)| *high > 0)
        .map(|(partition, _, high)| (partition, high - 1))
        .collect();
    wait_for_progress(db, job, topic, &marks, timeout);
    let mut client = pg(db);
    wait_until(Duration::from_secs(120), "an empty outbox", || {
        (outbox_rows(&mut client) == Some(0)).then_some(())
    });
}

/// Restarts the machine's PostgreSQL (`scripts/services.sh restart postgres`).
pub fn restart_postgres() {
    let restarted = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/services.sh"
    ))
    .args(["restart", "postgres"])
    .stdout(Stdio::null())
    .status()
    .expect("services.sh");
    assert!(restarted.success(), "PostgreSQL restart failed");
}

/// The keys of `topic` published twice in a row with the same value, or two tombstones in a
/// row: what a message sent again after a crash leaves (one key's messages stay in order in
/// its partition).
pub fn repeated_publications(topic: &str) -> Vec<String> {
    history(topic)
        .into_iter()
        .filter(|(_, values)| values.windows(2).any(|w| w[0] == w[1]))
        .map(|(key, _)| key)
        .collect()
}

/// A Redis server of the test's own, on its own port, with persistence on (append-only file,
/// fsync'd at every write), so that a restart keeps every key — the machine's Redis keeps
/// nothing on disk. Stopped, and its files removed, when dropped (kept if the test fails).
pub struct OwnRedis {
    port: u16,
    dir: PathBuf,
    server: Option<Child>,
}

impl OwnRedis {
    /// Starts a server named after `name`.
    pub fn start(name: &str) -> OwnRedis {
        let dir = std::env::temp_dir().join(unique(name));
        std::fs::create_dir_all(&dir).expect("Redis directory");
        let mut redis = OwnRedis {
            port: two_free_ports(),
            dir,
            server: None,
        };
        redis.run();
        redis
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to the test's Redis")
    }

    fn run(&mut self) {
        let server = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
            ])
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                "redis.log",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh installs it)");
        self.server = Some(server);
        wait_until(Duration::from_secs(30), "the test's Redis", || {
            let client = redis::Client::open(self.url().as_str()).ok()?;
            let mut con = client.get_connection().ok()?;
            redis::cmd("PING").query::<String>(&mut con).ok()
        });
    }

    /// Stops the server (SIGTERM: it syncs its file and exits), waits `down`, and starts it
    /// again on the same port and files.
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.run();
    }

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            Command::new("kill")
                .args(["-TERM", &server.id().to_string()])
                .status()
                .expect("kill");
            server.wait().expect("redis-server");
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        if !keep(&format!("the test's Redis files in {}", self.dir.display())) {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}
