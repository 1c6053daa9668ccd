//! Postgres over TLS against the local server: the test creates a certificate authority,
//! gives the server a certificate it signed (through SQL, so the server owns the files),
//! and checks every sslmode, then runs the promos job over `verify-full`.
//! Run with `cargo test --features integration` (or `scripts/test.sh`).

#![cfg(feature = "integration")]

use std::time::{Duration, Instant};

use dishflow_testkit::certs::issue;
use dishflow_testkit::*;

/// Writes `pem` as a file of the server at `path`, owned by the server's user and readable
/// by it only (the server refuses a key file others can read), line by line: PEM lines need
/// no escaping in COPY's text format.
fn write_server_file(admin: &mut postgres::Client, path: &str, pem: &[u8]) {
    let text = String::from_utf8(pem.to_vec()).expect("pem");
    let statement = format!(
        "COPY (SELECT unnest(string_to_array(rtrim($pem${text}$pem$, E'\\n'), E'\\n'))) \
         TO PROGRAM 'rm -f \"{path}\" && umask 077 && cat > \"{path}\"'"
    );
    admin.batch_execute(&statement).expect("write server file");
}

/// Points the server at a certificate and key (its data directory's files), or back at its
/// own configuration (`None`), and reloads.
fn use_server_certificate(
    admin: &mut postgres::Client,
    files: Option<(&str, &str)>,
) -> Result<(), postgres::Error> {
    let statements = match files {
        Some((cert, key)) => vec![
            format!("ALTER SYSTEM SET ssl_cert_file = '{cert}'"),
            format!("ALTER SYSTEM SET ssl_key_file = '{key}'"),
            "ALTER SYSTEM SET ssl = on".to_string(),
        ],
        None => ["ssl_cert_file", "ssl_key_file", "ssl"]
            .map(|setting| format!("ALTER SYSTEM RESET {setting}"))
            .to_vec(),
    };
    // ALTER SYSTEM cannot run in a transaction: one statement at a time.
    for statement in statements {
        admin.batch_execute(&statement)?;
    }
    admin.batch_execute("SELECT pg_reload_conf()")
}

/// Puts the server's own certificate back when the test ends, passed or not.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        match postgres::Client::connect(&self.0, postgres::NoTls) {
            Ok(mut admin) => {
                if let Err(error) = use_server_certificate(&mut admin, None) {
                    eprintln!("cannot restore the server's TLS settings: {error}");
                }
            }
            Err(error) => eprintln!("cannot restore the server's TLS settings: {error}"),
        }
    }
}

/// Whether the connection `client` is encrypted.
fn encrypted(client: &mut postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .expect("pg_stat_ssl")
        .get(0)
}

#[test]
fn every_sslmode_does_what_libpq_documents_and_a_job_runs_over_verify_full() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("pg_tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = issue("dishflow test CA", None, true, &[], &[]);
    let other_ca = issue("some other CA", None, true, &[], &[]);
    let server = issue("localhost", Some(&ca), false, &["localhost"], &[]);
    let ca_file = dir.join("ca.pem");
    let other_ca_file = dir.join("other-ca.pem");
    std::fs::write(&ca_file, ca.cert.to_pem().expect("pem")).expect("write");
    std::fs::write(&other_ca_file, other_ca.cert.to_pem().expect("pem")).expect("write");
    let ca_file = ca_file.to_str().expect("utf-8").to_string();
    let other_ca_file = other_ca_file.to_str().expect("utf-8").to_string();

    // The server's files live in its data directory under fixed names, so that a server
    // restarted while the test ran (or after it was killed) still finds them.
    let admin_url = format!("{}/postgres", postgres_base());
    let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls).expect("admin");
    let data: String = admin
        .query_one("SHOW data_directory", &[])
        .expect("data_directory")
        .get(0);
    let cert_path = format!("{data}/dishflow-test-server.crt");
    let key_path = format!("{data}/dishflow-test-server.key");
    write_server_file(&mut admin, &cert_path, &server.cert.to_pem().expect("pem"));
    write_server_file(
        &mut admin,
        &key_path,
        &server.key.private_key_to_pem_pkcs8().expect("pem"),
    );
    let _restore = Restore(admin_url.clone());
    use_server_certificate(
        &mut admin,
        Some(("dishflow-test-server.crt", "dishflow-test-server.key")),
    )
    .expect("configure TLS");

    let db = database("pg_tls");
    let at = |host: &str, query: &str| {
        let url = db.replacen("127.0.0.1", host, 1);
        format!("{url}?{query}")
    };
    let verify_full = at(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    );
    // The reload is asynchronous: wait until new connections get the new certificate.
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(error) = dishflow::pg::connect(&verify_full) {
        assert!(
            Instant::now() < deadline,
            "the server did not take the test certificate (its log says why): {error:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let cases: [(String, Result<bool, &str>); 7] = [
        (at("127.0.0.1", "sslmode=disable"), Ok(false)),
        (at("127.0.0.1", "application_name=x"), Ok(true)), // prefer: the server offers TLS
        (at("127.0.0.1", "sslmode=require"), Ok(true)),
        (
            at(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={ca_file}"),
            ),
            Ok(true),
        ),
        (
            at(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={other_ca_file}"),
            ),
            Err("certificate verify failed"),
        ),
        (verify_full.clone(), Ok(true)),
        (
            // The certificate names localhost, not 127.0.0.1.
            at(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca_file}"),
            ),
            Err("certificate verify failed"),
        ),
    ];
    for (url, expected) in cases {
        match (dishflow::pg::connect(&url), expected) {
            (Ok(mut client), Ok(tls)) => assert_eq!(encrypted(&mut client), tls, "{url}"),
            (Err(error), Err(message)) => {
                let error = format!("{error:#}");
                assert!(error.contains(message), "{url}: {error}");
                assert!(error.contains("cannot connect to Postgres"), "{error}");
            }
            (Ok(_), Err(message)) => panic!("{url} connected; expected {message}"),
            (Err(error), Ok(_)) => panic!("{url} failed: {error:#}"),
        }
    }

    // The whole job over verify-full: setup, snapshot, feedback rows, outbox, progress.
    seed_subscribers(&db);
    let prefix = prefix("pg_tls");
    produce_values(
        &format!("{prefix}.in"),
        1,
        &[&campaign_json(
            "C",
            "123e4567-e89b-12d3-a456-426614174000",
            now_secs() - 10,
            now_secs() + 600,
        )],
    );
    assert_success(&dishflow(
        ["setup", "--postgres-url", &verify_full],
        Duration::from_secs(60),
    ));
    let mut args = promos_args(&verify_full, &prefix);
    args.push("--stop-at-end".into());
    assert_success(&dishflow(&args, Duration::from_secs(60)));
    assert_eq!(feedback_rows(&db).len(), 8);
    assert_eq!(consume(&format!("{prefix}.out")).len(), 8);
    std::fs::remove_dir_all(&dir).ok();
}
