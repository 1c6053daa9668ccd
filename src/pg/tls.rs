//! Postgres over TLS with libpq's settings: `sslmode`, `sslrootcert`, `sslcert`, `sslkey`
//! in the connection URL (`?sslmode=verify-full&sslrootcert=/etc/ssl/pg-ca.pem`) or in the
//! `key=value` form.
//!
//! | sslmode | TLS | server certificate checked against sslrootcert | host name checked |
//! |---|---|---|---|
//! | `disable` | never | | |
//! | `prefer` (default, as libpq) | if the server offers it | no | no |
//! | `require` | always | only if `sslrootcert` is given (as libpq) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes (DNS name or IP address in the certificate) |
//!
//! `sslrootcert=system` trusts the machine's CA store; without `sslrootcert`, verify modes
//! use `~/.postgresql/root.crt` like libpq. `sslcert`/`sslkey` present a client certificate.
//! The driver (`tokio-postgres`) knows only disable/prefer/require and none of the file
//! settings: they are taken out of the URL here and applied to an OpenSSL connector.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use postgres::config::SslMode;
use postgres_openssl::MakeTlsConnector;

/// How much of the server's identity is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, unverified.
    Prefer,
    /// TLS, unverified (verified like `VerifyCa` when a root certificate is given).
    Require,
    /// TLS; the certificate chain must lead to the root certificate.
    VerifyCa,
    /// `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

/// The TLS settings of a connection string, and the string without them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// sslmode.
    pub mode: Mode,
    /// sslrootcert: a PEM file, or `system`.
    pub root_cert: Option<String>,
    /// sslcert: the client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// sslkey: the client certificate's key (PEM).
    pub key: Option<PathBuf>,
}

const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl Tls {
    /// Splits `url` into what the driver understands and the TLS settings.
    pub fn split(url: &str) -> Result<(String, Tls)> {
        let mut settings: Vec<(String, String)> = Vec::new();
        let rest = match url::Url::parse(url) {
            Ok(mut parsed) if parsed.has_host() || url.contains("://") => {
                let (taken, kept): (Vec<_>, Vec<_>) = parsed
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .partition(|(k, _)| KEYS.contains(&k.as_str()));
                settings = taken;
                if kept.is_empty() {
                    parsed.set_query(None);
                } else {
                    parsed.query_pairs_mut().clear().extend_pairs(kept);
                }
                parsed.to_string()
            }
            _ => {
                // key=value form: values of these keys are plain words or 'quoted'.
                let mut kept = Vec::new();
                for word in url.split_whitespace() {
                    match word.split_once('=') {
                        Some((k, v)) if KEYS.contains(&k) => {
                            settings.push((k.to_string(), v.trim_matches('\'').to_string()));
                        }
                        _ => kept.push(word),
                    }
                }
                kept.join(" ")
            }
        };
        let mut tls = Tls {
            mode: Mode::Prefer,
            root_cert: None,
            cert: None,
            key: None,
        };
        for (key, value) in settings {
            match key.as_str() {
                "sslmode" => {
                    tls.mode = match value.as_str() {
                        "disable" => Mode::Disable,
                        // allow: TLS only if the server insists; the driver has no such mode.
                        "allow" | "prefer" => Mode::Prefer,
                        "require" => Mode::Require,
                        "verify-ca" => Mode::VerifyCa,
                        "verify-full" => Mode::VerifyFull,
                        other => bail!(
                            "invalid Postgres URL: sslmode={other} (expected disable, prefer, \
                             require, verify-ca or verify-full)"
                        ),
                    }
                }
                "sslrootcert" => tls.root_cert = Some(value),
                "sslcert" => tls.cert = Some(PathBuf::from(value)),
                _ => tls.key = Some(PathBuf::from(value)),
            }
        }
        if tls.mode == Mode::Require && tls.root_cert.is_some() {
            tls.mode = Mode::VerifyCa; // libpq's rule
        }
        Ok((rest, tls))
    }

    /// The driver's mode.
    pub fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }

    /// An OpenSSL connector doing what the settings say.
    pub fn connector(&self) -> Result<MakeTlsConnector> {
        let mut builder = SslConnector::builder(SslMethod::tls_client())
            .context("cannot set up TLS for Postgres")?;
        let verify = matches!(self.mode, Mode::VerifyCa | Mode::VerifyFull);
        if verify {
            builder.set_verify(SslVerifyMode::PEER);
            match self.root_cert.as_deref() {
                Some("system") => {
                    let probe = openssl_probe::probe();
                    let file = probe.cert_file.as_deref();
                    let dir = probe.cert_dir.first().map(PathBuf::as_path);
                    if file.is_none() && dir.is_none() {
                        bail!("sslrootcert=system: no CA store found on this machine");
                    }
                    builder
                        .load_verify_locations(file, dir)
                        .context("sslrootcert=system: cannot load the machine's CA store")?;
                }
                Some(path) => trust_only(&mut builder, Path::new(path))
                    .with_context(|| format!("cannot read sslrootcert {path}"))?,
                None => {
                    let default = std::env::var_os("HOME")
                        .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
                        .filter(|path| path.exists());
                    let Some(path) = default else {
                        bail!(
                            "sslmode={} needs the certificate authority that signed the \
                             server's certificate: add sslrootcert=PATH (or sslrootcert=system) \
                             to the Postgres URL",
                            if self.mode == Mode::VerifyFull {
                                "verify-full"
                            } else {
                                "verify-ca"
                            }
                        );
                    };
                    trust_only(&mut builder, &path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                }
            }
        } else {
            builder.set_verify(SslVerifyMode::NONE);
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                builder
                    .set_certificate_chain_file(cert)
                    .with_context(|| format!("cannot read sslcert {}", cert.display()))?;
                builder
                    .set_private_key_file(key, SslFiletype::PEM)
                    .with_context(|| format!("cannot read sslkey {}", key.display()))?;
            }
            (None, None) => {}
            _ => bail!("sslcert and sslkey go together: give both or neither"),
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        let check_host = self.mode == Mode::VerifyFull;
        connector.set_callback(move |config, _| {
            config.set_verify_hostname(check_host);
            Ok(())
        });
        Ok(connector)
    }
}

/// Makes the certificates of the PEM file `path` the only trusted roots: OpenSSL's default
/// store (which `SSL_CERT_DIR` may fill with anything, a self-signed "snakeoil" certificate
/// included) must not vouch for a server libpq would reject.
fn trust_only(builder: &mut SslConnectorBuilder, path: &Path) -> Result<()> {
    let pem = std::fs::read(path)?;
    let mut store = X509StoreBuilder::new()?;
    let certs = X509::stack_from_pem(&pem)?;
    if certs.is_empty() {
        bail!("no certificate in it");
    }
    for cert in certs {
        store.add_cert(cert)?;
    }
    builder.set_cert_store(store.build());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_both_url_forms() {
        let (rest, tls) = Tls::split(
            "postgres://u:pw@db:6432/de?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=5",
        )
        .expect("split");
        assert_eq!(rest, "postgres://u:pw@db:6432/de?connect_timeout=5");
        assert_eq!(tls.mode, Mode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(tls.ssl_mode(), SslMode::Require);

        let (rest, tls) = Tls::split("postgres://u@db/de?sslmode=require").expect("split");
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("postgres://u@db/de", Mode::Require)
        );

        let (rest, tls) =
            Tls::split("host=db sslmode=require sslrootcert='/ca.pem' dbname=de").expect("split");
        assert_eq!(rest, "host=db dbname=de");
        assert_eq!(
            tls.mode,
            Mode::VerifyCa,
            "require + a root certificate verifies"
        );

        let (_, tls) = Tls::split("postgres://u@db/de").expect("split");
        assert_eq!(tls.mode, Mode::Prefer, "libpq's default");
        assert_eq!(tls.ssl_mode(), SslMode::Prefer);

        let err = Tls::split("postgres://u@db/de?sslmode=strict").expect_err("bad mode");
        assert!(err.to_string().contains("sslmode=strict"), "{err}");
    }

    #[test]
    fn verification_needs_a_root_certificate_and_readable_files() {
        let tls = |mode, root: Option<&str>| Tls {
            mode,
            root_cert: root.map(String::from),
            cert: None,
            key: None,
        };
        // Without sslrootcert, libpq's default file is used where it exists.
        let has_default = std::env::var_os("HOME")
            .is_some_and(|h| PathBuf::from(h).join(".postgresql/root.crt").exists());
        if !has_default {
            let err = tls(Mode::VerifyFull, None)
                .connector()
                .err()
                .expect("no CA");
            assert!(err.to_string().contains("sslrootcert"), "{err}");
        }
        let err = tls(Mode::VerifyCa, Some("/nonexistent/ca.pem"))
            .connector()
            .err()
            .expect("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(tls(Mode::Require, None).connector().is_ok());
        let half = Tls {
            cert: Some(PathBuf::from("/client.pem")),
            ..tls(Mode::Require, None)
        };
        assert!(half.connector().is_err(), "sslcert without sslkey");
    }
}
