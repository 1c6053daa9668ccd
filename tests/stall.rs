//! A process of a cluster that stops making progress reports unhealthy and exits within
//! `--stall-timeout`: its peer stopped with SIGSTOP (a hung process, a frozen VM), or
//! killed. A slow but live peer (a write waiting on a lock of the feedback table) does not
//! trip it. After a restart of both processes, every draft is in Kafka and Postgres once.
//! And two processes in separate network namespaces, cut apart (`ip link set … down`): both
//! exit within the bound (skipped, saying why, where the machine refuses namespaces).
//! Run via `scripts/test.sh`.

#![cfg(feature = "integration")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dishflow_testkit::*;

const MINUTE: Duration = Duration::from_secs(60);
const R: &str = "123e4567-e89b-12d3-a456-426614174000";
/// `--stall-timeout` of these tests, in seconds.
const STALL: u64 = 5;

/// The two processes of an unbounded promos cluster on `db`/`prefix` with `--stall-timeout
/// STALL`, each serving its metrics: (the jobs, their metrics ports), once both are ready.
fn spawn_cluster(db: &str, prefix: &str) -> ([Job; 2], [u16; 2]) {
    let [zero, one] = two_process_cluster(prefix);
    let ports = [free_port(), free_port()];
    let process = |cluster: Vec<String>, port: u16| {
        let mut args = promos_args(db, prefix);
        args.extend(cluster);
        args.extend(
            [
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--stall-timeout",
                &STALL.to_string(),
            ]
            .map(String::from),
        );
        spawn(&args)
    };
    let jobs = [process(zero, ports[0]), process(one, ports[1])];
    for port in ports {
        wait_until(MINUTE, "the cluster to be ready", || {
            (http_get(port, "/readyz")?.0 == 200).then_some(())
        });
    }
    (jobs, ports)
}

/// Produces campaign `campaign` of restaurant R, valid from now for 10 minutes.
fn promo(prefix: &str, campaign: &str) {
    let now = now_secs();
    produce_values(
        &format!("{prefix}.in"),
        2,
        &[&campaign_json(campaign, R, now - 10, now + 600)],
    );
}

/// Waits until `job` exits; asserts it failed within the stall bound (counted from `since`)
/// and that its last line names `what`.
fn assert_stall_exit(job: Job, since: Instant, what: &str) {
    let out = wait(job, MINUTE);
    let elapsed = since.elapsed();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        elapsed < Duration::from_secs(STALL + 6),
        "exited after {elapsed:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("dishflow: error: stalled for 5 s: ") && last.contains(what),
        "{stderr}"
    );
}

/// Restarts the cluster as a bounded run and checks that every subscriber has exactly one
/// draft of each campaign in Kafka and one feedback row.
fn restart_and_check_exactly_once(db: &str, prefix: &str, campaigns: &[&str], clients: usize) {
    let children: Vec<_> = two_process_cluster(&format!("{prefix}.again"))
        .into_iter()
        .map(|cluster| {
            let mut args = promos_args(db, prefix);
            args.extend(cluster);
            args.push("--stop-at-end".into());
            spawn(&args)
        })
        .collect();
    for child in children {
        assert_success(&wait(child, MINUTE));
    }
    let history = history(&format!("{prefix}.out"));
    assert_eq!(history.len(), campaigns.len() * clients, "{history:?}");
    assert!(
        history.values().all(|h| h.len() == 1),
        "a draft twice: {history:?}"
    );
    assert_eq!(feedback_rows(db).len(), campaigns.len() * clients);
}

#[test]
fn a_stopped_peer_makes_the_other_process_unhealthy_and_exit_within_the_timeout() {
    let (db, prefix) = live_fixture("stall_stop");
    for client in ["a", "b"] {
        insert_subscriber(&db, client);
    }
    promo(&prefix, "C");
    let ([first, second], [port, _]) = spawn_cluster(&db, &prefix);
    wait_until(MINUTE, "C's drafts", || {
        (history(&format!("{prefix}.out")).len() == 2).then_some(())
    });
    signal(&second, "STOP");
    let stopped = Instant::now();
    promo(&prefix, "D");
    // Unhealthy, with the reason, before it exits.
    let (status, body) = wait_until(MINUTE, "/healthz to fail", || {
        http_get(port, "/healthz").filter(|(status, _)| *status == 503)
    });
    assert_eq!(status, 503);
    assert!(body.contains("process 1"), "{body}");
    // Not before the timeout, counted from the peer's last heartbeat (sent every second,
    // so up to a second before the stop).
    assert!(
        stopped.elapsed() >= Duration::from_secs(STALL - 1),
        "not before the timeout: {:?}",
        stopped.elapsed()
    );
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(503));
    assert_stall_exit(first, stopped, "process 1 (127.0.0.1:");
    signal(&second, "KILL");
    let _ = wait(second, MINUTE);

    restart_and_check_exactly_once(&db, &prefix, &["C", "D"], 2);
}

#[test]
fn a_killed_peer_makes_the_other_process_exit_within_the_timeout() {
    let (db, prefix) = live_fixture("stall_kill");
    insert_subscriber(&db, "a");
    promo(&prefix, "C");
    let ([first, second], _) = spawn_cluster(&db, &prefix);
    wait_until(MINUTE, "C's draft", || {
        (history(&format!("{prefix}.out")).len() == 1).then_some(())
    });
    signal(&second, "KILL");
    let killed = Instant::now();
    let out = wait(first, MINUTE);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        killed.elapsed() < Duration::from_secs(STALL + 6),
        "{:?}",
        killed.elapsed()
    );
    // Whichever noticed first — timely's connection or the heartbeats — the line says to
    // restart the cluster.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.contains("restart every process of the cluster")),
        "{stderr}"
    );
    let _ = wait(second, MINUTE);
    promo(&prefix, "D");
    restart_and_check_exactly_once(&db, &prefix, &["C", "D"], 1);
}

#[test]
fn a_peer_slowed_by_a_locked_table_for_less_than_the_timeout_is_not_a_stall() {
    let (db, prefix) = live_fixture("stall_slow");
    insert_subscriber(&db, "a");
    // The promo topic exists before the job starts: a campaign nobody subscribes to.
    let now = now_secs();
    produce_values(
        &format!("{prefix}.in"),
        2,
        &[&campaign_json("Z", "nobody", now - 10, now + 600)],
    );
    let ([mut first, mut second], ports) = spawn_cluster(&db, &prefix);
    // The analysts lock the feedback table for most of the timeout: the writers wait.
    let mut analyst = pg(&db);
    let mut lock = analyst.transaction().expect("a transaction");
    lock.batch_execute("LOCK TABLE public.subscribers_feedback IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    promo(&prefix, "C");
    std::thread::sleep(Duration::from_secs(STALL - 1));
    lock.commit().expect("unlock");
    wait_until(MINUTE, "C's draft", || {
        (history(&format!("{prefix}.out")).len() == 1).then_some(())
    });
    // Idle again for longer than the timeout: the clock moves the frontier every tick.
    std::thread::sleep(Duration::from_secs(STALL + 3));
    for port in ports {
        assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    }
    for job in [&mut first, &mut second] {
        assert!(job.try_wait().is_none(), "still running: {}", job.stderr());
    }
    let metrics = http_get(ports[0], "/metrics").expect("metrics").1;
    assert_eq!(metric(&metrics, "dishflow_stalled", &[]), 0.0);
    terminate(second);
    let _ = wait(first, MINUTE);
    assert_eq!(feedback_rows(&db).len(), 1);
}

/// Subscribes `client` to restaurant R.
fn insert_subscriber(db: &str, client: &str) {
    pg(db)
        .execute(
            "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ($1, $2)",
            &[&client, &R],
        )
        .expect("insert");
}

/// Two network namespaces joined by a veth pair (10.213.0.1 ↔ 10.213.0.2), each reaching
/// the local Postgres and Kafka on its own 127.0.0.1 through socat (unix sockets cross
/// namespaces: Postgres's own, and one bridged to Kafka in the root namespace). Removed on
/// drop.
struct Namespaces {
    names: [String; 2],
    link: String,
    bridges: Vec<Child>,
    dir: std::path::PathBuf,
}

/// Runs `program` with `args`; whether it succeeded.
fn run_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Namespaces {
    /// The namespaces, or why they cannot be made here.
    fn create() -> Result<Namespaces, String> {
        let id = std::process::id() % 100_000;
        let names = [format!("dfa{id}"), format!("dfb{id}")];
        let link = format!("dfv{id}");
        let dir = std::env::temp_dir().join(format!("dishflow-netns-{id}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut made = Namespaces {
            names: names.clone(),
            link: link.clone(),
            bridges: Vec::new(),
            dir: dir.clone(),
        };
        for name in &names {
            if !run_ok("ip", &["netns", "add", name]) {
                return Err(format!(
                    "`ip netns add {name}` failed (not root, or no namespaces)"
                ));
            }
            run_ok("ip", &["-n", name, "link", "set", "lo", "up"]);
        }
        let peer = format!("{link}p");
        let commands: [&[&str]; 8] = [
            &["link", "add", &link, "type", "veth", "peer", "name", &peer],
            &["link", "set", &link, "netns", &names[0]],
            &["link", "set", &peer, "netns", &names[1]],
            &[
                "-n",
                &names[0],
                "addr",
                "add",
                "10.213.0.1/24",
                "dev",
                &link,
            ],
            &[
                "-n",
                &names[1],
                "addr",
                "add",
                "10.213.0.2/24",
                "dev",
                &peer,
            ],
            &["-n", &names[0], "link", "set", &link, "up"],
            &["-n", &names[1], "link", "set", &peer, "up"],
            &["-n", &names[0], "addr", "show"],
        ];
        for args in commands {
            if !run_ok("ip", args) {
                return Err(format!("`ip {}` failed", args.join(" ")));
            }
        }
        let kafka = dir.join("kafka.sock");
        let kafka = kafka.to_string_lossy();
        let socat = |prefix: &[&str], listen: String, connect: String| {
            Command::new(prefix.first().copied().unwrap_or("socat"))
                .args(prefix.iter().skip(1))
                .args(if prefix.is_empty() {
                    vec![]
                } else {
                    vec!["socat"]
                })
                .args([listen, connect])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("socat: {e}"))
        };
        made.bridges.push(socat(
            &[],
            format!("UNIX-LISTEN:{kafka},fork,unlink-early"),
            "TCP:127.0.0.1:9092".into(),
        )?);
        for name in &names {
            let inside = ["ip", "netns", "exec", name.as_str()];
            made.bridges.push(socat(
                &inside,
                "TCP-LISTEN:9092,bind=127.0.0.1,fork,reuseaddr".into(),
                format!("UNIX-CONNECT:{kafka}"),
            )?);
            made.bridges.push(socat(
                &inside,
                "TCP-LISTEN:5432,bind=127.0.0.1,fork,reuseaddr".into(),
                "UNIX-CONNECT:/var/run/postgresql/.s.PGSQL.5432".into(),
            )?);
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(made)
    }

    /// Cuts (or joins again) the link between the namespaces.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        assert!(run_ok(
            "ip",
            &["-n", &self.names[0], "link", "set", &self.link, state]
        ));
    }

    /// The processes of a promos cluster on `db`/`prefix`, one per namespace, plus `extra`.
    fn cluster(&self, db: &str, prefix: &str, extra: &[&str]) -> Vec<Job> {
        let hostfile = self.dir.join("hosts");
        std::fs::write(&hostfile, "10.213.0.1:2101\n10.213.0.2:2101\n").expect("hostfile");
        (cluster_flags(&hostfile).into_iter().enumerate())
            .map(|(i, cluster)| {
                let mut args = promos_args(db, prefix);
                args.extend(cluster);
                args.extend(extra.iter().map(|s| s.to_string()));
                spawn_wrapped(&["ip", "netns", "exec", &self.names[i]], &args, &[])
            })
            .collect()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for bridge in &mut self.bridges {
            bridge.kill().ok();
            bridge.wait().ok();
        }
        for name in &self.names {
            run_ok("ip", &["netns", "del", name]);
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[test]
fn a_network_partition_between_two_namespaces_makes_both_processes_exit_within_the_timeout() {
    let namespaces = match Namespaces::create() {
        Ok(namespaces) => namespaces,
        Err(why) => {
            eprintln!("skipped: the partition test needs network namespaces: {why}");
            return;
        }
    };
    let (db, prefix) = live_fixture("stall_partition");
    insert_subscriber(&db, "a");
    promo(&prefix, "C");
    let stall = STALL.to_string();
    let jobs = namespaces.cluster(&db, &prefix, &["--stall-timeout", &stall]);
    wait_until(MINUTE, "C's draft through the namespaces", || {
        (history(&format!("{prefix}.out")).len() == 1).then_some(())
    });
    namespaces.link(false);
    let cut = Instant::now();
    promo(&prefix, "D");
    for (job, other) in jobs
        .into_iter()
        .zip(["process 1 (10.213.0.2:2101)", "process 0 (10.213.0.1:2101)"])
    {
        assert_stall_exit(job, cut, other);
    }
    namespaces.link(true);
    let again: Vec<Job> = namespaces.cluster(&db, &prefix, &["--stop-at-end"]);
    for job in again {
        assert_success(&wait(job, MINUTE));
    }
    let history = history(&format!("{prefix}.out"));
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history.values().all(|h| h.len() == 1), "{history:?}");
    assert_eq!(feedback_rows(&db).len(), 2);
}
