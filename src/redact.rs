//! Secrets never reach a log line or an error message: connection URLs and librdkafka
//! settings are shown through these functions.
//!
//! Also, clap never shows the environment values of the flags that can carry secrets
//! (`hide_env_values` on the URL and Kafka property flags), and `dishflow::pg::connect`
//! names only hosts and database in its errors.

use std::fmt;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Whether a librdkafka setting holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `ssl.key.pem`, `sasl.jaas.config`, …).
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "jaas", "oauthbearer.config"]
        .iter()
        .any(|word| key.contains(word))
        || key.ends_with(".key")
        || key.ends_with(".key.pem")
}

/// A setting's value as it may be shown.
pub fn setting<'v>(key: &str, value: &'v str) -> &'v str {
    if is_secret(key) { MASK } else { value }
}

/// A connection string with its password masked: the URL form
/// (`postgres://user:pw@host/db`, `redis://:pw@host`, `?password=pw`) and libpq's
/// `key=value` form (`host=h password=pw`).
pub fn url(text: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(text)
        && parsed.has_host()
    {
        if parsed.password().is_some() {
            let _ = parsed.set_password(Some(MASK));
        }
        let query: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = setting(&k, &v).to_string();
                (k.into_owned(), v)
            })
            .collect();
        if !query.is_empty() {
            parsed.query_pairs_mut().clear().extend_pairs(query);
        }
        return parsed.to_string();
    }
    // key=value words (libpq); a quoted value may hold spaces.
    let mut out = String::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].rsplit(char::is_whitespace).next().unwrap_or("");
        out.push_str(&rest[..=eq]);
        rest = &rest[eq + 1..];
        let end = if let Some(quoted) = rest.strip_prefix('\'') {
            quoted.find('\'').map_or(rest.len(), |i| i + 2)
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        out.push_str(if is_secret(key.trim()) {
            MASK
        } else {
            &rest[..end]
        });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// librdkafka settings for `Debug` output and logs, secrets masked.
pub struct Settings<'a>(pub &'a [(String, String)]);

impl fmt::Debug for Settings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, v)| format!("{k}={}", setting(k, v))))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(
            url("postgres://dishflow:s3cret@db.internal:6432/de?sslmode=verify-full"),
            "postgres://dishflow:***@db.internal:6432/de?sslmode=verify-full"
        );
        assert_eq!(
            url("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            url("postgresql://u@h/db?password=s3cret&application_name=x"),
            "postgresql://u@h/db?password=***&application_name=x"
        );
        assert_eq!(
            url("host=db port=6432 password='s3 cret' user=u"),
            "host=db port=6432 password=*** user=u"
        );
        assert_eq!(url("host=db password=s3cret"), "host=db password=***");
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/de"),
            "postgres://postgres@127.0.0.1:5432/de"
        );
    }

    #[test]
    fn secret_kafka_settings_are_masked() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "sasl.jaas.config",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in [
            "sasl.username",
            "security.protocol",
            "ssl.ca.location",
            "sasl.mechanism",
        ] {
            assert!(!is_secret(key), "{key}");
        }
        let settings = vec![
            ("sasl.username".to_string(), "svc".to_string()),
            ("sasl.password".to_string(), "s3cret".to_string()),
        ];
        let shown = format!("{:?}", Settings(&settings));
        assert_eq!(shown, r#"["sasl.username=svc", "sasl.password=***"]"#);
    }
}
