//! `dishflow dashboard`: one web page over the marts the jobs keep in Postgres, for people
//! who would rather look than read.
//!
//! ```text
//!  browser ── GET / ──────────► page: every panel rendered (HTML + SVG), dashboard.js/.css
//!          ── GET /panels ────► JSON {panels: {id: html}, changed: {id: text}}, every
//!             (every --refresh-ms)  --refresh-ms; the script swaps the panels that changed
//!  request threads (each with its own read-only Postgres session) ── panels::all ──► marts
//! ```
//!
//! * Every number comes from a small aggregate table a job keeps current (`panels`), so a
//!   page costs the same at any data size; the time it took is in the `Server-Timing`
//!   header and the page's footer.
//! * Safe by default: it listens on loopback unless `--listen` says otherwise; with
//!   `--auth-token-file` every request but `/healthz` needs the token (`Authorization: Bearer …`, or once
//!   `/?token=…`, which sets a cookie), else 401. Sessions are read-only
//!   (`default_transaction_read_only`), statements are constants with bound parameters, and
//!   a role with only SELECT on the marts is enough (docs/operations.md).
//! * Everything the page loads is served by dishflow itself: it works offline.

mod panels;
mod svg;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use tiny_http::{Header, Method, Request, Response, Server};
use tracing::{debug, info, warn};

use crate::pg::DEFAULT_URL as DEFAULT_POSTGRES_URL;
use panels::{Limits, Panel};

/// Arguments of `dishflow dashboard`.
#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    /// Postgres connection URL. The role needs only SELECT on the marts it shows (see
    /// docs/operations.md); panels of a job that was never set up say so.
    #[arg(long, env = "DISHFLOW_POSTGRES_URL", default_value = DEFAULT_POSTGRES_URL, hide_env_values = true)]
    pub postgres_url: String,

    /// Address to serve the page on. Loopback by default: to reach it from other machines,
    /// listen on 0.0.0.0:PORT and set --auth-token-file.
    #[arg(long, env = "DISHFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// File holding a token every request must present (`Authorization: Bearer TOKEN`, or
    /// open `/?token=TOKEN` once in a browser, which keeps it in a cookie); 401 without it.
    #[arg(long, env = "DISHFLOW_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// How often the page asks for new numbers, in milliseconds.
    #[arg(long, env = "DISHFLOW_REFRESH_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(200..=60_000))]
    pub refresh_ms: u64,

    /// Rows of a top-N panel (restaurants, campaigns, products, categories, tags, cities).
    #[arg(long, env = "DISHFLOW_TOP", default_value_t = 10,
          value_parser = clap::value_parser!(i64).range(1..=100))]
    pub top: i64,

    /// Host names the page may be requested by (repeatable, or comma separated), besides
    /// IP addresses and, when listening on loopback, `localhost`: e.g. the name a reverse
    /// proxy forwards. A request naming another host gets 421, so that a web page the user
    /// visits cannot read the dashboard through DNS rebinding.
    #[arg(
        long = "allowed-host",
        env = "DISHFLOW_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub allowed_hosts: Vec<String>,

    /// Threads answering requests (each with its own Postgres session).
    #[arg(long, env = "DISHFLOW_DASHBOARD_THREADS", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
}

/// Serves the dashboard until SIGTERM or SIGINT (then exits 0 once the requests in flight
/// are answered; a second signal exits at once).
pub fn run(args: DashboardArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let token = args
        .auth_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    // Fail at startup, with one line, when the database cannot be reached.
    drop(connect(&args.postgres_url)?);
    let server = Server::http(args.listen)
        .map_err(|e| anyhow!("cannot serve the dashboard on {}: {e}", args.listen))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("the dashboard on {} has no IP address", args.listen))?;
    if token.is_none() && !bound.ip().is_loopback() {
        warn!(%bound, "the dashboard listens beyond loopback without --auth-token-file");
    }
    let mut allowed_hosts: Vec<String> = (args.allowed_hosts.iter())
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if bound.ip().is_loopback() {
        allowed_hosts.push("localhost".to_string());
    }
    let shared = Arc::new(Shared {
        server,
        token,
        allowed_hosts,
        url: args.postgres_url.clone(),
        limits: Limits {
            top: args.top,
            hours: 48,
            weeks: 12,
        },
        refresh_ms: args.refresh_ms,
        started: Utc::now(),
        watched: Mutex::new(HashMap::new()),
        stop,
    });
    info!(address = %format!("http://{bound}/"), auth = shared.token.is_some(), "dashboard ready");
    let threads: Vec<_> = (0..args.threads)
        .map(|i| {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("dashboard-{i}"))
                .spawn(move || shared.serve())
        })
        .collect::<std::io::Result<_>>()?;
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow!("a dashboard thread panicked"))?;
    }
    info!("dashboard stopped");
    Ok(())
}

/// Reads the token: one line of at least 16 visible ASCII characters (it travels in a
/// header and a cookie).
fn read_token(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --auth-token-file {}", path.display()))?;
    let token = text.trim();
    if token.len() < 16
        || !token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
    {
        bail!(
            "--auth-token-file {}: the token must be at least 16 visible ASCII characters \
             without ';' or ',' (e.g. `openssl rand -hex 32`)",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// Whether a request whose `Host` header is `host` may be answered: an IP address (DNS
/// rebinding needs a name), or a name in `allowed` (any port).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.parse::<std::net::IpAddr>().is_ok() || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// A read-only session for the panels' queries.
fn connect(url: &str) -> Result<postgres::Client> {
    let mut client = crate::pg::connect(url)?;
    client
        .batch_execute(
            "SET default_transaction_read_only = on; SET statement_timeout = '5s';
             SET application_name = 'dishflow dashboard'",
        )
        .context("cannot configure the dashboard's Postgres session")?;
    Ok(client)
}

/// What the request threads share.
struct Shared {
    server: Server,
    token: Option<String>,
    /// Host names requests may name besides IP addresses (lower case).
    allowed_hosts: Vec<String>,
    url: String,
    limits: Limits,
    refresh_ms: u64,
    started: DateTime<Utc>,
    /// Panels without a `changed_at`: (their body, when the dashboard saw it first).
    watched: Mutex<HashMap<&'static str, (String, DateTime<Utc>)>>,
    /// Set by SIGTERM or SIGINT.
    stop: Arc<AtomicBool>,
}

/// A response with a body in memory.
type Reply = Response<std::io::Cursor<Vec<u8>>>;

const PAGE_CSS: &str = include_str!("assets/dashboard.css");
const PAGE_JS: &str = include_str!("assets/dashboard.js");
const COOKIE: &str = "dishflow_token";

impl Shared {
    /// Answers requests until asked to stop; reconnects to Postgres after an error.
    fn serve(&self) {
        let mut client: Option<postgres::Client> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let request = match self.server.recv_timeout(Duration::from_millis(200)) {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(error) => {
                    warn!(%error, "dashboard: cannot receive a request");
                    continue;
                }
            };
            // A panic answers this request with 500 and starts a new session; the thread
            // goes on serving.
            let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.answer(&request, &mut client)
            }));
            let reply = answered.unwrap_or_else(|_| {
                client = None;
                text(
                    500,
                    "dashboard: internal error (logged)\n",
                    "text/plain; charset=utf-8",
                )
            });
            if let Err(error) = request.respond(reply) {
                debug!(%error, "dashboard: cannot answer a request");
            }
        }
    }

    fn answer(&self, request: &Request, client: &mut Option<postgres::Client>) -> Reply {
        let (path, query) = request.url().split_once('?').unwrap_or((request.url(), ""));
        if *request.method() != Method::Get && *request.method() != Method::Head {
            return text(405, "only GET\n", "text/plain; charset=utf-8");
        }
        let host = (request.headers().iter())
            .find(|h| h.field.equiv("Host"))
            .map(|h| h.value.as_str());
        if let Some(host) = host.filter(|h| !host_allowed(h, &self.allowed_hosts)) {
            debug!(host, "dashboard: request for another host refused");
            return text(
                421,
                "dashboard: this host name is not served here (see --allowed-host)\n",
                "text/plain; charset=utf-8",
            );
        }
        // Health checks need no token (the answer says nothing).
        if let Some(token) = self.token.as_ref().filter(|_| path != "/healthz") {
            let offered = url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned());
            if path == "/"
                && let Some(offered) = offered
            {
                // A browser's first visit: keep the token in a cookie, drop it from the URL.
                return if same(&offered, token) {
                    text(303, "", "text/plain; charset=utf-8")
                        .with_header(header("Location", "/"))
                        .with_header(header(
                            "Set-Cookie",
                            &format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
                        ))
                } else {
                    unauthorized()
                };
            }
            if !authorized(request, token) {
                return unauthorized();
            }
        }
        match path {
            "/" => self.with_panels(client, |panels, elapsed| {
                html(200, self.page(&panels, elapsed))
            }),
            "/panels" => self.with_panels(client, |panels, elapsed| {
                let body = serde_json::json!({
                    "panels": panels.iter().map(|p| (p.id, &p.body)).collect::<HashMap<_, _>>(),
                    "changed": panels.iter().map(|p| (p.id, self.changed_text(p))).collect::<HashMap<_, _>>(),
                    "server_ms": elapsed.as_secs_f64() * 1000.0,
                });
                text(200, &body.to_string(), "application/json")
            }),
            "/dashboard.css" => text(200, PAGE_CSS, "text/css; charset=utf-8"),
            "/dashboard.js" => text(200, PAGE_JS, "text/javascript; charset=utf-8"),
            "/healthz" => text(200, "ok\n", "text/plain; charset=utf-8"),
            _ => text(404, "not found\n", "text/plain; charset=utf-8"),
        }
    }

    /// Reads every panel (connecting first if needed) and answers with `reply`; a database
    /// that cannot be reached is a 503 that says why.
    fn with_panels(
        &self,
        client: &mut Option<postgres::Client>,
        reply: impl FnOnce(Vec<Panel>, Duration) -> Reply,
    ) -> Reply {
        let started = Instant::now();
        if client.as_ref().is_some_and(|c| c.is_closed()) {
            *client = None;
        }
        let c = match client {
            Some(c) => c,
            None => match connect(&self.url) {
                Ok(c) => client.insert(c),
                Err(error) => {
                    warn!(error = format!("{error:#}"), "dashboard: no database");
                    return text(
                        503,
                        &format!("dashboard: {error:#}\n"),
                        "text/plain; charset=utf-8",
                    );
                }
            },
        };
        let mut panels = panels::all(c, self.limits);
        self.watch(&mut panels);
        let elapsed = started.elapsed();
        debug!(
            ms = elapsed.as_secs_f64() * 1000.0,
            "dashboard: panels read"
        );
        reply(panels, elapsed).with_header(header(
            "Server-Timing",
            &format!("panels;dur={:.2}", elapsed.as_secs_f64() * 1000.0),
        ))
    }

    /// For panels whose table has no `changed_at`: the time this dashboard first saw their
    /// current body (or its start, if unchanged since).
    fn watch(&self, panels: &mut [Panel]) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        for panel in panels.iter_mut().filter(|p| p.watched) {
            let now = Utc::now();
            let entry = watched
                .entry(panel.id)
                .or_insert_with(|| (panel.body.clone(), self.started));
            if entry.0 != panel.body {
                *entry = (panel.body.clone(), now);
            }
            panel.changed = Some(entry.1);
        }
    }

    /// "Last changed …" of a panel.
    fn changed_text(&self, panel: &Panel) -> String {
        let format = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        match panel.changed {
            None => "No data yet.".to_string(),
            Some(t) if panel.watched && t == self.started => {
                format!("Unchanged since the dashboard started ({}).", format(t))
            }
            Some(t) if panel.watched => {
                format!("Last changed {} (seen by the dashboard).", format(t))
            }
            Some(t) => format!("Last changed {}.", format(t)),
        }
    }

    /// The whole page, with every panel as it is now.
    fn page(&self, panels: &[Panel], elapsed: Duration) -> String {
        let mut sections = String::new();
        for (section, heading) in [("promos", "Promos"), ("orders", "Orders"), ("geo", "Geo")] {
            sections.push_str(&format!(
                "<section class=\"group\" id=\"{section}\"><h2>{heading}</h2><div class=\"grid\">"
            ));
            for p in panels.iter().filter(|p| p.section == section) {
                sections.push_str(&format!(
                    "<article class=\"panel\"><h3>{}</h3><div class=\"body\" id=\"{}\">{}</div>\
                     <p class=\"changed\" id=\"{}-changed\">{}</p></article>",
                    svg::escape(p.title),
                    p.id,
                    p.body,
                    p.id,
                    svg::escape(&self.changed_text(p))
                ));
            }
            sections.push_str("</div></section>");
        }
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>dishflow</title><link rel=\"stylesheet\" href=\"/dashboard.css\">\
             <link rel=\"icon\" href=\"data:,\"></head>\
             <body data-refresh-ms=\"{}\"><header><h1>dishflow</h1>\
             <p id=\"status\">Read in {:.1} ms.</p></header><main>{sections}</main>\
             <script src=\"/dashboard.js\"></script></body></html>\n",
            self.refresh_ms,
            elapsed.as_secs_f64() * 1000.0
        )
    }
}

/// Whether the request carries the token, as a bearer token or in the cookie.
fn authorized(request: &Request, token: &str) -> bool {
    request.headers().iter().any(|h| {
        let value = h.value.as_str();
        if h.field.equiv("Authorization") {
            value
                .strip_prefix("Bearer ")
                .is_some_and(|v| same(v.trim(), token))
        } else if h.field.equiv("Cookie") {
            value
                .split(';')
                .filter_map(|c| c.trim().split_once('='))
                .any(|(name, v)| name == COOKIE && same(v, token))
        } else {
            false
        }
    })
}

/// Compares secrets in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name, value).expect("a valid header")
}

/// A response with the headers every answer carries: no caching, no framing, no sniffing,
/// and nothing loaded from anywhere but dishflow itself.
fn text(code: u16, body: &str, content_type: &str) -> Reply {
    Response::from_string(body)
        .with_status_code(code)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header("X-Frame-Options", "DENY"))
        .with_header(header("Referrer-Policy", "no-referrer"))
        .with_header(header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ))
}

fn html(code: u16, body: String) -> Reply {
    text(code, &body, "text/html; charset=utf-8")
}

fn unauthorized() -> Reply {
    text(
        401,
        "401: this dashboard needs its token (Authorization: Bearer TOKEN, or open /?token=TOKEN)\n",
        "text/plain; charset=utf-8",
    )
    .with_header(header("WWW-Authenticate", "Bearer realm=\"dishflow\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_allowed_names_are_served() {
        let allowed = ["localhost".to_string(), "dash.example.com".to_string()];
        for host in [
            "127.0.0.1:8080",
            "10.0.0.7",
            "[::1]:8080",
            "localhost:8080",
            "DASH.example.com",
        ] {
            assert!(host_allowed(host, &allowed), "{host}");
        }
        for host in [
            "attacker.example:8080",
            "localhost.attacker.example",
            "[evil]:1",
            "",
        ] {
            assert!(!host_allowed(host, &allowed), "{host}");
        }
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same("0123456789abcdef", "0123456789abcdef"));
        assert!(!same("0123456789abcdef", "0123456789abcdeF"));
        assert!(!same("0123456789abcdef", "0123456789abcde"));
    }

    #[test]
    fn a_short_or_unsafe_token_is_refused() {
        let dir = std::env::temp_dir().join(format!("dishflow-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "short\n").expect("write");
        assert!(read_token(&file).is_err());
        std::fs::write(&file, "0123456789abcdef;x\n").expect("write");
        assert!(read_token(&file).is_err());
        std::fs::write(&file, "  0123456789abcdef0123\n").expect("write");
        assert_eq!(read_token(&file).expect("token"), "0123456789abcdef0123");
        assert!(read_token(&dir.join("missing")).is_err());
    }
}
