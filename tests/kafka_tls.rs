//! Kafka over TLS: a private broker reached only over TLS (`scripts/services.sh kafka-tls`:
//! Tansu behind socat, with a certificate signed by a CA this test creates), the promos job
//! reading and writing through it with settings from `--kafka-property-file`, and what
//! librdkafka does with a wrong CA and with SASL/SCRAM settings.
//!
//! What is not tested here: SASL authentication itself. Tansu 0.6 does not implement SASL
//! (the connection is closed after the TLS handshake), so SCRAM-SHA-512 is only shown to be
//! accepted by librdkafka (a misspelt mechanism is rejected before any connection).

#![cfg(feature = "integration")]

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dishflow_testkit::certs::issue;
use dishflow_testkit::*;

/// The TLS broker; its process group is killed when the test ends.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let group = self.0.id() as i32;
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-group, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn dishflow_err(args: &[&str]) -> String {
    let out = dishflow(args, Duration::from_secs(90));
    assert!(!out.status.success(), "{args:?} must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_promos_job_runs_over_tls_and_librdkafka_takes_sasl_settings() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("kafka_tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = issue("dishflow Kafka test CA", None, true, &[], &[]);
    let other_ca = issue("some other CA", None, true, &[], &[]);
    let server = issue(
        "127.0.0.1",
        Some(&ca),
        false,
        &["localhost"],
        &["127.0.0.1"],
    );
    let write = |name: &str, pem: Vec<u8>| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write");
        path.to_str().expect("utf-8").to_string()
    };
    let ca_file = write("ca.pem", ca.cert.to_pem().expect("pem"));
    let other_ca_file = write("other-ca.pem", other_ca.cert.to_pem().expect("pem"));
    let mut combined = server.cert.to_pem().expect("pem");
    combined.extend(server.key.private_key_to_pem_pkcs8().expect("pem"));
    let server_pem = write("server.pem", combined);

    let port = two_free_ports();
    let _broker = Broker(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
            .args(["kafka-tls", &port.to_string(), &server_pem])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start the TLS broker"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the TLS broker did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let brokers = format!("127.0.0.1:{port}");
    // The settings a managed cluster needs come from a file, not the command line.
    let properties = write(
        "kafka.properties",
        format!("# TLS only\nsecurity.protocol=SSL\nssl.ca.location={ca_file}\n").into_bytes(),
    );
    let tls = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--brokers", &brokers, "--kafka-property-file", &properties].map(String::from));
        all
    };

    let db = database("kafka_tls");
    seed_subscribers(&db);
    let prefix = prefix("kafka_tls");
    let input = format!("{prefix}.in");
    let out = format!("{prefix}.out");
    let run = |args: Vec<String>| {
        let result = dishflow(&args, Duration::from_secs(90));
        assert_success(&result);
        result
    };
    run(tls(&[
        "produce",
        "promos",
        "--topic",
        &input,
        "--count",
        "1",
        "--seed-times",
    ]));
    let mut job = promos_args(&db, &prefix);
    // promos_args names the default test broker: take it out.
    let at = job
        .iter()
        .position(|a| a == "--brokers")
        .expect("--brokers");
    job.drain(at..at + 2);
    job.push("--stop-at-end".into());
    job.extend(["--brokers", &brokers, "--kafka-property-file", &properties].map(String::from));
    run(job);
    let consumed = run(tls(&["consume", "--topic", &out, "--timeout", "30"]));
    let drafts = String::from_utf8_lossy(&consumed.stdout).lines().count();
    assert_eq!(drafts, 8, "the seed campaign's drafts, read back over TLS");
    assert_eq!(feedback_rows(&db).len(), 8);

    // A CA that did not sign the broker's certificate: no connection.
    let fast = "socket.connection.setup.timeout.ms=3000";
    let err = dishflow_err(&[
        "consume",
        "--brokers",
        &brokers,
        "--kafka-property",
        "security.protocol=SSL",
        "--kafka-property",
        &format!("ssl.ca.location={other_ca_file}"),
        "--kafka-property",
        fast,
        "--topic",
        &out,
    ]);
    assert!(err.contains("cannot reach Kafka"), "{err}");
    // Plaintext to the TLS port: no connection either.
    let err = dishflow_err(&[
        "consume",
        "--brokers",
        &brokers,
        "--kafka-property",
        fast,
        "--topic",
        &out,
    ]);
    assert!(err.contains("cannot reach Kafka"), "{err}");

    // SASL_SSL with SCRAM-SHA-512: librdkafka (built with SASL/SCRAM) takes the settings and
    // connects over TLS; the broker has no SASL, so no further. A mechanism librdkafka does
    // not know is refused before connecting: the settings are really checked by it.
    let sasl = |mechanism: &str| {
        dishflow_err(&[
            "consume",
            "--brokers",
            &brokers,
            "--kafka-property",
            &format!("ssl.ca.location={ca_file}"),
            "--kafka-property",
            &format!(
                "security.protocol=SASL_SSL;sasl.mechanism={mechanism};sasl.username=svc;sasl.password=not-shown;{fast}"
            ),
            "--topic",
            &out,
        ])
    };
    let err = sasl("SCRAM-SHA-512");
    assert!(err.contains("cannot reach Kafka"), "{err}");
    assert!(!err.contains("not-shown"), "{err}");
    let err = sasl("SCRAM-SHA-999");
    assert!(err.contains("invalid Kafka configuration"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
