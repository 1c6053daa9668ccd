//! The HTTP endpoints (`--metrics-addr`): `/metrics` in Prometheus text format, `/healthz`
//! and `/readyz`, served by a small synchronous server on a background thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, anyhow};
use prometheus_client::registry::{Registry, Unit};
use tracing::{info, warn};

use super::{Metrics, OpsArgs, metrics};

/// Whether [`serve`] was called: what costs more than an atomic add (librdkafka statistics,
/// timely's operator logging) is only switched on then.
static SERVING: AtomicBool = AtomicBool::new(false);

/// Whether this process serves its metrics.
pub fn serving() -> bool {
    SERVING.load(Ordering::Relaxed)
}

/// Serves the metrics of `job` per `ops` (if an address is given) and expects heartbeats from
/// `workers` worker threads.
pub fn start(job: &str, ops: &OpsArgs, workers: usize) -> Result<()> {
    metrics().expect_workers(workers);
    if let Some(addr) = ops.metrics_addr {
        serve(addr, job, ops.ready_max_lag)?;
    }
    Ok(())
}
impl Metrics {
    /// The registry of everything, with the job's name as a label.
    fn registry(&self, job: &str) -> Registry {
        let mut registry = Registry::with_prefix_and_labels(
            "dishflow",
            [(
                std::borrow::Cow::Borrowed("job"),
                std::borrow::Cow::Owned(job.to_string()),
            )]
            .into_iter(),
        );
        let r = &mut registry;
        r.register(
            "kafka_records_read",
            "Records read from Kafka by the job's sources",
            self.kafka_records.clone(),
        );
        r.register(
            "kafka_bytes_read",
            "Key and value bytes read from Kafka",
            self.kafka_bytes.clone(),
        );
        r.register(
            "kafka_position",
            "Next offset the source reads",
            self.kafka_position.clone(),
        );
        r.register(
            "kafka_end_offset",
            "Offset after the last readable message (librdkafka statistics, or the startup watermark)",
            self.kafka_end.clone(),
        );
        r.register(
            "kafka_consumer_lag",
            "Records not yet read: end offset minus position",
            self.kafka_lag.clone(),
        );
        r.register(
            "source_records",
            "Records (and changes) emitted by a source operator",
            self.source_records.clone(),
        );
        r.register(
            "snapshot_records",
            "Records a source emitted at the job's start time (table snapshot, Kafka replay)",
            self.snapshot_records.clone(),
        );
        r.register(
            "snapshot_pending",
            "Workers whose source is still loading its snapshot (0: loaded)",
            self.snapshot_pending.clone(),
        );
        r.register(
            "dead_letters",
            "Records sent to the dead-letter topic, by reason",
            self.dead_letters.clone(),
        );
        r.register(
            "sink_updates",
            "Updates a sink wrote (rows upserted, messages sent)",
            self.sink_updates.clone(),
        );
        r.register_with_unit(
            "sink",
            "How long a sink's batch write (step=write) or flush (step=flush) took",
            Unit::Seconds,
            self.sink_seconds.clone(),
        );
        r.register_with_unit(
            "sink_latency",
            "Wall clock minus the logical time of the changes a sink wrote, once per time per \
             batch: committed (step=written) or acknowledged by the broker (step=delivered)",
            Unit::Seconds,
            self.sink_latency.clone(),
        );
        r.register(
            "kafka_messages_delivered",
            "Messages the brokers acknowledged",
            self.delivered.clone(),
        );
        r.register_with_unit(
            "output_frontier_lag",
            "Wall clock minus the time up to which every sink has written",
            Unit::Seconds,
            self.frontier_lag.clone(),
        );
        r.register(
            "arrangement_updates",
            "Updates held by an arrangement (differential logging), summed over workers",
            self.arrangement_updates.clone(),
        );
        r.register(
            "arrangement_batches",
            "Batches held by an arrangement, summed over workers",
            self.arrangement_batches.clone(),
        );
        r.register(
            "worker_idle_seconds",
            "Seconds since a worker last ran a source",
            self.idle.clone(),
        );
        r.register(
            "ready",
            "1 when the job is ready (see /readyz)",
            self.ready.clone(),
        );
        r.register(
            "stalled",
            "1 once the process found itself stalled (--stall-timeout); it exits shortly after",
            self.stalled_gauge.clone(),
        );
        registry
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, job: &str, max_lag: i64) -> String {
        self.refresh(max_lag);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry(job));
        text
    }
}

/// `(labels, value)` of every sample of `name` in a text exposition.
pub fn parse_series(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}
/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` from a background thread, for as
/// long as the process runs. `max_lag`: the consumer lag above which the job is not ready.
pub fn serve(addr: SocketAddr, job: &str, max_lag: i64) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("metrics server on {addr} has no IP address"))?;
    let job = job.to_string();
    SERVING.store(true, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = respond(request.url(), &job, max_lag);
                if let Err(error) = request.respond(response) {
                    warn!(%error, "metrics: cannot answer a request");
                }
            }
        })?;
    info!(%bound, "serving /metrics, /healthz, /readyz");
    Ok(bound)
}

fn respond(url: &str, job: &str, max_lag: i64) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let text = |code: u16, body: String, content_type: &str| {
        let header =
            tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
        tiny_http::Response::from_string(body)
            .with_status_code(code)
            .with_header(header)
    };
    let plain = "text/plain; charset=utf-8";
    let m = metrics();
    match url.split('?').next().unwrap_or_default() {
        "/metrics" => text(
            200,
            m.render(job, max_lag),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => match m.unhealthy() {
            None => text(200, "ok\n".into(), plain),
            Some(reason) => text(503, format!("unhealthy: {reason}\n"), plain),
        },
        "/readyz" => match m.unready(max_lag) {
            None => text(200, "ready\n".into(), plain),
            Some(reason) => text(503, format!("not ready: {reason}\n"), plain),
        },
        _ => text(
            404,
            "not found: try /metrics, /healthz or /readyz\n".into(),
            plain,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_parsed_from_the_text_format() {
        let text = "# HELP x y\nlag{topic=\"a\",partition=\"0\"} 5\nlag_total 3\nlag 2\n";
        assert_eq!(
            parse_series(text, "lag"),
            vec![
                ("{topic=\"a\",partition=\"0\"}".to_string(), 5.0),
                (String::new(), 2.0)
            ]
        );
    }
}
