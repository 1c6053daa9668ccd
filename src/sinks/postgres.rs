//! The transactional Postgres writer of every table sink: one transaction per batch, the
//! batch's Kafka messages staged in it (exactly once, see [`Outbox`]), transient failures
//! retried on a new connection.
//!
//! ```text
//!   SinkWriter::write(updates)  (sorted by time, retractions first within a time)
//!     attempt:
//!       connect, if not connected: lock the outbox, deliver what it holds, batch.connected()
//!       unless this batch committed already:
//!         BEGIN; batch.write(tx, updates) → messages; outbox.stage(tx, messages);
//!         batch.before_commit(tx); COMMIT
//!         batch.committed()
//!       outbox.settle (the previous batch's messages), outbox.send (this batch's)
//!     a transient error: drop the connection, back off, attempt again
//!     a permanent one: returned; the sink operator isolates the rows a table refuses
//! ```
//!
//! Whether an error is transient is decided where it happens ([`WriteError`]): connecting
//! fails transiently unless the server says why (a SQLSTATE: authentication, a missing
//! database); a statement fails transiently when the connection broke or the server is
//! restarting, overloaded or had to abort the transaction (SQLSTATE classes 08, 40, 53, 57,
//! 58), permanently otherwise (the data, the schema, a privilege); delivering to Kafka
//! fails transiently (librdkafka retries; an outage is waited out).

use std::collections::HashMap;

use anyhow::{Context, Result};
use chrono::{NaiveDate, NaiveDateTime};
use dataflows::{Diff, Time};
use postgres::types::ToSql;
use postgres::{Client, Transaction};
use uuid::Uuid;

use super::SinkWriter;
use super::kafka::KafkaMessage;
use super::outbox::{Outbox, Staged};
use crate::pg;
use crate::retry::Backoff;

/// Rows per statement.
pub const CHUNK: usize = 10_000;

/// Why an attempt at a batch failed, as far as retrying goes (see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A retry on a new connection can succeed.
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// A retry cannot: the error is returned to the sink.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

/// SQLSTATE classes a retry can get past: connection exception, transaction rollback
/// (serialization failure, deadlock), insufficient resources, operator intervention (the
/// server shutting down), system error.
const TRANSIENT_CLASSES: [&str; 5] = ["08", "40", "53", "57", "58"];

/// The first Postgres error in `error`'s chain.
fn postgres_error(error: &anyhow::Error) -> Option<&postgres::Error> {
    error
        .chain()
        .find_map(|c| c.downcast_ref::<postgres::Error>())
}

impl WriteError {
    /// An error of a statement or a commit: transient when the connection broke (closed,
    /// an I/O error) or the server gave a SQLSTATE of a transient class; permanent
    /// otherwise (the data, the schema, a privilege, or a check of dishflow's own).
    pub fn statement(error: anyhow::Error) -> WriteError {
        let transient = postgres_error(&error).is_some_and(|pg| match pg.code() {
            Some(code) => TRANSIENT_CLASSES.contains(&&code.code()[..2]),
            None => {
                pg.is_closed()
                    || std::error::Error::source(pg).is_some_and(|s| s.is::<std::io::Error>())
            }
        });
        if transient {
            WriteError::Transient(error)
        } else {
            WriteError::Permanent(error)
        }
    }

    /// An error while connecting: transient (an outage, waited out like one during the
    /// run: the startup checks reached the server already), unless the server answered
    /// with a SQLSTATE of another class (authentication, a missing database).
    pub fn connecting(error: anyhow::Error) -> WriteError {
        match postgres_error(&error).and_then(postgres::Error::code) {
            Some(code) if !TRANSIENT_CLASSES.contains(&&code.code()[..2]) => {
                WriteError::Permanent(error)
            }
            _ => WriteError::Transient(error),
        }
    }

    /// An error of the outbox: its Postgres statements are classified as statements, its
    /// Kafka deliveries are transient (an outage is waited out; librdkafka retries).
    pub fn outbox(error: anyhow::Error) -> WriteError {
        match postgres_error(&error) {
            Some(_) => WriteError::statement(error),
            None => WriteError::Transient(error),
        }
    }

    /// The error itself.
    pub fn into_inner(self) -> anyhow::Error {
        match self {
            WriteError::Transient(e) | WriteError::Permanent(e) => e,
        }
    }
}

/// Runs `attempt` on `writer` until it succeeds or fails permanently; after each transient
/// failure, `reset` drops what broke (the connection) and the writer's `backoff` waits.
pub fn retry_transient<W, T>(
    writer: &mut W,
    backoff: fn(&mut W) -> &mut Backoff,
    reset: fn(&mut W),
    mut attempt: impl FnMut(&mut W) -> Result<T, WriteError>,
) -> Result<T> {
    loop {
        match attempt(writer) {
            Ok(value) => {
                backoff(writer).succeeded();
                return Ok(value);
            }
            Err(WriteError::Transient(error)) => {
                reset(writer);
                backoff(writer).failed(&error);
            }
            Err(WriteError::Permanent(error)) => return Err(error),
        }
    }
}

/// How one kind of batch is written inside a transaction.
pub trait TableBatch<D>: Send + 'static {
    /// Names the sink in logs ("stg sink").
    fn name(&self) -> &'static str;
    /// Prepares what a new connection needs (statements), before its first batch.
    fn connected(&mut self, _client: &mut Client) -> Result<()> {
        Ok(())
    }
    /// Writes `updates` (sorted by time, retractions first within a time) inside `tx`;
    /// returns the Kafka messages that what changed calls for (sent through the writer's
    /// outbox, if it has one).
    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(D, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>>;
    /// Last statements of the batch's transaction, after the outbox rows, right before
    /// COMMIT: where rows that every writer updates (counts) are locked for the shortest
    /// time.
    fn before_commit(&mut self, _tx: &mut Transaction<'_>) -> Result<()> {
        Ok(())
    }
    /// The transaction of the last [`write`](TableBatch::write) committed (a write whose
    /// transaction failed is written again, from the same state).
    fn committed(&mut self) {}
}

/// A sink writer that runs a [`TableBatch`] in one transaction per batch (see the module
/// docs). With an outbox, the batch's messages are staged in the same transaction and
/// delivered after it commits, exactly once (see [`Outbox`]).
pub struct TableWriter<B> {
    url: String,
    client: Option<Client>,
    batch: B,
    outbox: Option<(Outbox, String)>,
    backoff: Backoff,
    /// Where deliveries' latencies go (see [`SinkWriter::delivery_metrics`]).
    metrics: Option<crate::metrics::SinkMetrics>,
    /// The times of the changes whose messages are sent and not yet settled.
    unsettled_times: Vec<Time>,
}

impl<B> TableWriter<B> {
    /// A writer of `batch` to the database at `url`; with `outbox`, messages go to its
    /// topic. Connects at once (taking the outbox's lock and delivering what a previous run
    /// left in it), waiting out a Postgres outage. `name` names the sink in logs.
    pub fn new<D>(url: &str, batch: B, outbox: Option<(Outbox, &str)>, name: &str) -> Result<Self>
    where
        B: TableBatch<D>,
    {
        let mut writer = TableWriter {
            url: url.to_string(),
            client: None,
            batch,
            outbox: outbox.map(|(o, topic)| (o, topic.to_string())),
            backoff: Backoff::new(name),
            metrics: None,
            unsettled_times: Vec::new(),
        };
        retry_transient(
            &mut writer,
            |w| &mut w.backoff,
            Self::disconnect,
            Self::connect::<D>,
        )?;
        Ok(writer)
    }

    /// Drops the connection (after a failure).
    fn disconnect(&mut self) {
        self.client = None;
    }

    /// Makes sure there is a connection; returns whether a new one was made (the outbox
    /// recovered: everything committed so far is delivered).
    fn connect<D>(&mut self) -> Result<bool, WriteError>
    where
        B: TableBatch<D>,
    {
        if self.client.is_some() {
            return Ok(false);
        }
        let mut client = pg::connect(&self.url).map_err(WriteError::connecting)?;
        if let Some((outbox, _)) = &mut self.outbox {
            outbox.lock(&mut client).map_err(WriteError::statement)?;
            outbox.recover(&mut client).map_err(WriteError::outbox)?;
        }
        self.batch
            .connected(&mut client)
            .map_err(WriteError::statement)?;
        self.client = Some(client);
        Ok(true)
    }

    /// One attempt at a batch: unless already committed (`staged`), write it and stage its
    /// messages in one transaction; then settle the previous batch's messages and send
    /// this batch's.
    fn attempt<D>(
        &mut self,
        updates: &[(D, Time, Diff)],
        staged: &mut Option<Vec<Staged>>,
    ) -> Result<(), WriteError>
    where
        B: TableBatch<D>,
    {
        let recovered = self.connect()?;
        let Some(client) = self.client.as_mut() else {
            return Err(WriteError::Transient(anyhow::anyhow!("not connected")));
        };
        let staged = match staged {
            // The recovery delivered the committed batch.
            Some(_) if recovered => {
                self.delivered(updates);
                return Ok(());
            }
            Some(staged) => staged,
            None => {
                let name = self.batch.name();
                let mut tx = client
                    .transaction()
                    .map_err(|e| WriteError::statement(e.into()))?;
                let messages = (self.batch)
                    .write(&mut tx, updates)
                    .map_err(WriteError::statement)?;
                let s = match &self.outbox {
                    Some((outbox, topic)) => outbox
                        .stage(&mut tx, topic, messages)
                        .map_err(WriteError::statement)?,
                    None => Vec::new(),
                };
                (self.batch)
                    .before_commit(&mut tx)
                    .map_err(WriteError::statement)?;
                tx.commit()
                    .with_context(|| format!("cannot commit the {name}"))
                    .map_err(WriteError::statement)?;
                self.batch.committed();
                staged.insert(s)
            }
        };
        match &mut self.outbox {
            // The previous batch's messages were delivered meanwhile; this batch's go now.
            Some((outbox, _)) => {
                outbox.settle(client).map_err(WriteError::outbox)?;
                let sent = !staged.is_empty();
                outbox.send(staged).map_err(WriteError::outbox)?;
                self.delivered::<D>(&[]);
                if sent && self.metrics.is_some() {
                    self.unsettled_times = distinct_times(updates);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records the latency of what was sent before, and of `updates`, as delivered.
    fn delivered<D>(&mut self, updates: &[(D, Time, Diff)]) {
        let sent = std::mem::take(&mut self.unsettled_times);
        if let Some(metrics) = &self.metrics {
            let now = updates.iter().map(|(_, time, _)| *time);
            metrics.delivered_at(sent.into_iter().chain(now));
        }
    }

    /// Settles what was sent (see [`Outbox::settle`]), unless a new connection's recovery
    /// did.
    fn settle<D>(&mut self) -> Result<(), WriteError>
    where
        B: TableBatch<D>,
    {
        if !self.outbox.as_ref().is_some_and(|(o, _)| o.unsettled()) {
            return Ok(());
        }
        if !self.connect()?
            && let (Some((outbox, _)), Some(client)) = (&mut self.outbox, self.client.as_mut())
        {
            outbox.settle(client).map_err(WriteError::outbox)?;
        }
        self.delivered::<D>(&[]);
        Ok(())
    }
}

/// The distinct times of `updates` (sorted by time): a few, however many the updates.
fn distinct_times<D>(updates: &[(D, Time, Diff)]) -> Vec<Time> {
    let mut times: Vec<Time> = Vec::new();
    for (_, time, _) in updates {
        if times.last() != Some(time) {
            times.push(*time);
        }
    }
    times
}

impl<D, B: TableBatch<D>> SinkWriter<D> for TableWriter<B> {
    fn delivery_metrics(&mut self, metrics: crate::metrics::SinkMetrics) {
        if self.outbox.is_some() {
            self.metrics = Some(metrics);
        }
    }

    fn flush(&mut self) -> Result<()> {
        retry_transient(
            self,
            |w| &mut w.backoff,
            Self::disconnect,
            Self::settle::<D>,
        )
    }

    fn write(&mut self, updates: &[(D, Time, Diff)]) -> Result<()> {
        let mut staged = None;
        let started = std::time::Instant::now();
        retry_transient(
            self,
            |w| &mut w.backoff,
            Self::disconnect,
            |w| w.attempt(updates, &mut staged),
        )?;
        tracing::debug!(
            sink = self.batch.name(),
            updates = updates.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch written"
        );
        Ok(())
    }
}

/// One array parameter of a bulk statement.
pub enum Column {
    /// `uuid[]`.
    Uuid(Vec<Uuid>),
    /// `text[]`.
    Text(Vec<String>),
    /// `timestamp[]`.
    Timestamp(Vec<NaiveDateTime>),
    /// `int4[]`.
    Int(Vec<i32>),
    /// `int8[]`.
    BigInt(Vec<i64>),
    /// `date[]`.
    Date(Vec<NaiveDate>),
    /// `text[]` with NULLs.
    OptionalText(Vec<Option<String>>),
    /// `timestamp[]` with NULLs.
    OptionalTimestamp(Vec<Option<NaiveDateTime>>),
}

impl Column {
    /// The column as a statement parameter.
    pub fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Uuid(v) => v,
            Column::Text(v) => v,
            Column::Timestamp(v) => v,
            Column::Int(v) => v,
            Column::BigInt(v) => v,
            Column::Date(v) => v,
            Column::OptionalText(v) => v,
            Column::OptionalTimestamp(v) => v,
        }
    }
}

/// Runs `sql` with `columns` as its array parameters; `what` names the table in errors.
pub fn execute(tx: &mut Transaction<'_>, sql: &str, columns: &[Column], what: &str) -> Result<u64> {
    let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(Column::param).collect();
    tx.execute(sql, &params)
        .with_context(|| format!("cannot write {what}"))
}

/// [`execute`] for a statement with `RETURNING`: the rows it returns.
pub fn query(
    tx: &mut Transaction<'_>,
    sql: &str,
    columns: &[Column],
    what: &str,
) -> Result<Vec<postgres::Row>> {
    let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(Column::param).collect();
    tx.query(sql, &params)
        .with_context(|| format!("cannot write {what}"))
}

const LEDGER_UPSERT: &str = "
INSERT INTO public.dishflow_published AS p (job, key, digest)
SELECT $1, * FROM unnest($2::text[], $3::uuid[])
ON CONFLICT (job, key) DO UPDATE SET digest = excluded.digest
WHERE p.digest IS DISTINCT FROM excluded.digest
RETURNING key";

/// Records `(key, digest)` pairs in the ledger `public.dishflow_published` under `job`
/// (keys distinct); returns the keys whose digest is new or changed — what is to be sent.
/// A replay or re-delivery of the same content therefore sends nothing twice.
pub fn ledger_changed<K: AsRef<str>>(
    tx: &mut Transaction<'_>,
    job: &str,
    keys: &[K],
    digests: &[Uuid],
) -> Result<std::collections::HashSet<String>> {
    let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    let rows = tx
        .query(LEDGER_UPSERT, &[&job, &keys, &digests])
        .context("cannot write public.dishflow_published")?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(Into::into))
        .collect()
}

/// The last change of every key in `updates`, in first-seen order: `(record, put)`, where
/// `put` is false when the key's last change at its last time was only a retraction.
pub fn last_per_key<D, K: std::hash::Hash + Eq>(
    updates: &[(D, Time, Diff)],
    key: impl Fn(&D) -> K,
) -> Vec<(&D, bool)> {
    (last_per_key_at(updates, key).into_iter())
        .map(|(d, _, put)| (d, put))
        .collect()
}

/// Splits `updates` into the rows to upsert, with the time of their last change, and the
/// rows whose key is to be deleted (the last change of each key decides).
pub fn puts_and_deletes<D, K: std::hash::Hash + Eq>(
    updates: &[(D, Time, Diff)],
    key: impl Fn(&D) -> K,
) -> (Vec<(&D, Time)>, Vec<&D>) {
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    for (row, time, put) in last_per_key_at(updates, key) {
        if put {
            puts.push((row, time));
        } else {
            deletes.push(row);
        }
    }
    (puts, deletes)
}

/// [`last_per_key`] with the time of each key's last change: `(record, time, put)`.
pub fn last_per_key_at<'a, D, K: std::hash::Hash + Eq>(
    updates: &'a [(D, Time, Diff)],
    key: impl Fn(&D) -> K,
) -> Vec<(&'a D, Time, bool)> {
    let mut at: HashMap<K, usize> = HashMap::new();
    let mut last: Vec<(&'a D, Time, bool)> = Vec::new();
    for (record, time, diff) in updates {
        let put = *diff > 0;
        match at.get(&key(record)) {
            // Within a time, retractions come first: an insertion replaces them.
            Some(&i) if last[i].1 < *time || put => last[i] = (record, *time, put),
            Some(_) => {}
            None => {
                at.insert(key(record), last.len());
                last.push((record, *time, put));
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_transient_when_the_connection_broke_and_permanent_otherwise() {
        // Nothing listens on port 1: an I/O error while connecting, and as a statement's.
        let refused = postgres::Client::connect(
            "host=127.0.0.1 port=1 user=dishflow connect_timeout=2",
            postgres::NoTls,
        )
        .err()
        .expect("nothing listens on port 1");
        let refused = anyhow::Error::from(refused).context("cannot write a table");
        assert!(matches!(
            WriteError::connecting(anyhow::anyhow!("{refused:#}")),
            WriteError::Transient(_)
        ));
        assert!(matches!(
            WriteError::statement(refused),
            WriteError::Transient(_)
        ));
        // dishflow's own checks are permanent for a statement, transient for Kafka.
        let own = || anyhow::anyhow!("order hub row without an order id");
        assert!(matches!(
            WriteError::statement(own()),
            WriteError::Permanent(_)
        ));
        assert!(matches!(
            WriteError::outbox(own()),
            WriteError::Transient(_)
        ));
    }

    #[test]
    fn the_last_change_of_each_key_wins() {
        let updates = [
            (("a", 1), 10, -1),
            (("a", 2), 10, 1),
            (("b", 1), 10, 1),
            (("b", 1), 20, -1),
            (("c", 1), 20, -1),
            (("c", 2), 20, 1),
            (("a", 2), 30, -1),
        ];
        let last: Vec<_> = last_per_key(&updates, |(k, _)| *k)
            .into_iter()
            .map(|(d, put)| (*d, put))
            .collect();
        assert_eq!(
            last,
            [(("a", 2), false), (("b", 1), false), (("c", 2), true)]
        );
    }
}
