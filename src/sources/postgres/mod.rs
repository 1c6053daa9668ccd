//! Followed tables: a Postgres table → a live collection of its rows (a snapshot, then every
//! committed insert, update, delete and truncate), for any table described by a
//! [`FollowedRow`]: `public.subscribers_restaurants` for the promos job, and the same way
//! any table a job follows (its key column, the columns a row is made of, how its rows are
//! shared among workers).
//!
//! ```text
//!  worker w of W, reader thread, one connection:
//!    1. pg_create_logical_replication_slot('dishflow_…', 'pgoutput', temporary => true)
//!    2. BEGIN ISOLATION LEVEL REPEATABLE READ
//!         pg_current_snapshot(), pg_current_wal_lsn()            -- the hand-over point
//!         COPY (SELECT key, columns… WHERE key mod W = w) (FORMAT binary)
//!       COMMIT
//!    3. every poll: pg_logical_slot_get_binary_changes(slot, …, publication dishflow_…)
//!         → pgoutput messages → rows with key mod W = w → ±1 updates
//!       (rows → SyncActivator → operator: snapshot at the job's start time, changes at the
//!        wall-clock time they were read; see `clocked_source`)
//! ```
//!
//! **Hand-over without loss or double counting.** The slot is created first, so every
//! transaction that commits after it is decoded. The snapshot is taken after, so it sees
//! every transaction committed before the slot. Transactions committed in between are in
//! both; the stream skips them exactly: a decoded transaction is skipped when its commit
//! record precedes the WAL position read with the snapshot *and* its xid is visible in the
//! snapshot (below `xmax`, not among the in-progress `xip`). Later transactions are applied.
//!
//! **Keyed state.** Deletes carry only the primary key (the table's replica identity is
//! the default; dishflow does not alter a table it does not own), so the thread keeps this
//! worker's rows by key and turns each change into retractions and insertions of rows.
//! Applying a change twice is therefore harmless, an update that moves a row is −old +new,
//! and equal rows under different keys stay separate (a subscription listed twice counts
//! twice in the collection; the dataflow counts the pair once).
//!
//! **Sharing.** A large table is split among the workers by its integer key
//! ([`Split::ByKey`]): each worker snapshots and follows its share. A small one (cities, tag
//! rules) is followed by worker 0 alone ([`Split::WorkerZero`]), and the dataflow spreads
//! its rows.
//!
//! **Rows the job cannot use** (a NULL where it needs a value, a NaN latitude, an unknown
//! time zone, inserted by whoever owns the table) are logged once with their key and left
//! out; following goes on, and a fixed row is taken in ([`Rows::set`]).
//!
//! **Reconnects.** If the connection fails after startup (a Postgres restart), the thread
//! retries with backoff; the temporary slot died with the connection, so it creates a new
//! slot, takes a new snapshot and emits the difference between it and the rows it had.
//!
//! **Costs.** One temporary slot per worker for a split table, one in all for a table worker
//! 0 follows: each slot decodes the database's whole WAL (`pgoutput` filters by the
//! publication before sending), so a job with W workers following a split table and a small
//! one decodes the WAL W + 1 times; `max_replication_slots` must allow every slot of every
//! running job (`scripts/services.sh` sets 64). A temporary slot disappears with its
//! connection, so a crashed job leaves nothing that retains WAL; while the job runs, the
//! slot retains WAL only up to what was read a tick ago. The lag is logged every
//! [`LAG_LOG_INTERVAL`] (a warning above [`LAG_WARNING_BYTES`]).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dataflows::{Diff, Time};
use differential_dataflow::VecCollection;
use postgres::binary_copy::BinaryCopyOutIter;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use postgres::{Client, IsolationLevel};
use timely::dataflow::Scope;
use tracing::{debug, info, warn};

mod handover;
pub mod pgoutput;
mod rows;

pub use self::handover::SnapshotPoint;
pub use self::rows::{Decoder, Key, Read, Rows, Snapshot};

use crate::control::{Control, Lifecycle};
use crate::pg;
use crate::sources::{Reader, Status, clocked_source};

/// How a followed table's rows are shared among the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Row `k` belongs to worker `k mod workers`: an integer key, a large table; one slot
    /// per worker.
    ByKey,
    /// Worker 0 follows the whole table (any key type): a small table; one slot.
    WorkerZero,
}

/// A row of a followed table: which table, which columns, how they make a row.
pub trait FollowedRow: Clone + PartialEq + Send + 'static {
    /// The table, schema-qualified (`public.subscribers_restaurants`).
    const TABLE: &'static str;
    /// Its primary key column.
    const KEY: &'static str;
    /// The columns a row is made of, in the order [`FollowedRow::from_columns`] gets them.
    const COLUMNS: &'static [&'static str];
    /// How the rows are shared among the workers.
    const SPLIT: Split;
    /// The source operator's name (in metrics).
    const SOURCE: &'static str;

    /// The row from its column values as text (`None`: NULL), in [`FollowedRow::COLUMNS`]
    /// order; an error when the job cannot use it (the row is then logged and left out,
    /// [`Rows::set`]).
    fn from_columns(values: &[Option<&str>]) -> Result<Self>;
}

/// The snapshot of worker `index`'s share of `R`'s table (of `peers` workers): every
/// column as text, the key first.
fn snapshot_query<R: FollowedRow>(index: usize, peers: usize) -> String {
    let columns: Vec<String> = std::iter::once(R::KEY)
        .chain(R::COLUMNS.iter().copied())
        .map(|c| format!("{c}::text"))
        .collect();
    let share = match R::SPLIT {
        Split::ByKey => format!(
            "({key} % {peers} + {peers}) % {peers} = {index}",
            key = R::KEY
        ),
        Split::WorkerZero if index == 0 => "true".to_string(),
        Split::WorkerZero => "false".to_string(),
    };
    format!(
        "COPY (SELECT {} FROM {} WHERE {share}) TO STDOUT (FORMAT binary)",
        columns.join(", "),
        R::TABLE
    )
}

/// Updates per chunk sent from the reader thread to the operator.
pub const CHUNK: usize = 16_384;

/// Most changes asked from the slot per call (whole transactions are always returned).
const CHANGES_PER_CALL: i32 = 50_000;

/// How often the slot's lag is logged.
pub const LAG_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Lag (WAL bytes retained by the slot) above which the lag is logged as a warning.
pub const LAG_WARNING_BYTES: i64 = 256 << 20;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a followed table is read.
#[derive(Clone, Debug)]
pub struct FollowConfig {
    /// Connection URL.
    pub url: String,
    /// The publication that includes the table (created by `dishflow setup`).
    pub publication: String,
    /// Follow changes after the snapshot; `false` reads the snapshot only (bounded runs).
    pub follow: bool,
    /// How often the slot is polled for changes.
    pub poll: Duration,
}

/// A message from the reader thread.
enum Event<R> {
    /// Rows of the snapshot, changes read from the stream, or the difference after a
    /// re-snapshot.
    Updates(Vec<(R, Diff)>),
    /// The initial snapshot is complete: what follows happens at the time it is read.
    SnapshotDone,
}

/// One connection's capture: slot, snapshot, then changes.
struct Session<R> {
    client: Client,
    slot: Option<String>,
    snapshot: SnapshotPoint,
    decoder: Decoder<R>,
}

/// The reader thread of one worker.
struct Capture<R> {
    config: FollowConfig,
    index: usize,
    peers: usize,
    rows: Rows<R>,
    tx: SyncSender<Event<R>>,
    wake: Box<dyn Fn() + Send>,
    control: Control,
}

impl<R: FollowedRow> Capture<R> {
    /// Sends `updates` in chunks; `false` once the operator is gone.
    fn send(&self, updates: Vec<(R, Diff)>) -> bool {
        let mut updates = updates.into_iter().peekable();
        while updates.peek().is_some() {
            let chunk: Vec<_> = updates.by_ref().take(CHUNK).collect();
            if !self.notify(Event::Updates(chunk)) {
                return false;
            }
        }
        true
    }

    /// Sends `event` and wakes the operator; `false` once the operator is gone.
    fn notify(&self, event: Event<R>) -> bool {
        let sent = self.tx.send(event).is_ok();
        (self.wake)();
        sent
    }

    /// Connects, creates the slot (when following) and reads the snapshot of this worker's
    /// rows. Returns the session and the rows by key.
    fn open(&self) -> Result<(Session<R>, Snapshot<R>)> {
        let table = R::TABLE;
        let mut client = pg::connect(&self.config.url)?;
        let slot = if self.config.follow {
            let name = format!(
                "dishflow_{}_{}_{}",
                std::process::id(),
                self.index,
                crate::clock::wall_clock_ms() % 1_000_000_000
            );
            debug!(slot = %name, "creating temporary replication slot");
            client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput', true)",
                    &[&name],
                )
                .with_context(|| {
                    format!(
                        "cannot create a logical replication slot for {table} \
                         (wal_level=logical and a free slot are required; see docs/architecture.md)"
                    )
                })?;
            Some(name)
        } else {
            None
        };
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        // First statement: fixes the snapshot; the WAL position is read after it.
        let point = tx.query_one(
            "SELECT pg_current_snapshot()::text, (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8",
            &[],
        )?;
        let snapshot = SnapshotPoint::parse(point.get(0), point.get::<_, i64>(1) as u64)?;
        let query = snapshot_query::<R>(self.index, self.peers);
        let mut rows = HashMap::new();
        {
            let reader = tx
                .copy_out(query.as_str())
                .with_context(|| format!("cannot read {table}"))?;
            let types = vec![Type::TEXT; 1 + R::COLUMNS.len()];
            let mut copy = BinaryCopyOutIter::new(reader, &types);
            while let Some(row) = copy.next().with_context(|| format!("reading {table}"))? {
                let key = Key::parse::<R>(row.try_get(0)?)?;
                let values = (1..types.len())
                    .map(|i| row.try_get::<Option<&str>>(i))
                    .collect::<Result<Vec<_>, _>>()?;
                let read = R::from_columns(&values).map_err(|e| format!("{e:#}"));
                rows.insert(key, read);
            }
        }
        tx.commit()?;
        Ok((
            Session {
                client,
                slot,
                snapshot,
                decoder: Decoder::default(),
            },
            rows,
        ))
    }

    /// Reads what the slot has and applies it; the updates it caused.
    fn poll(&mut self, session: &mut Session<R>) -> Result<Vec<(R, Diff)>> {
        let Some(slot) = session.slot.as_deref() else {
            return Ok(Vec::new());
        };
        let messages = session.client.query(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, $2, \
             'proto_version', '1', 'publication_names', $3)",
            &[&slot, &CHANGES_PER_CALL, &self.config.publication],
        )?;
        let mut out = Vec::new();
        for row in messages {
            let message = pgoutput::parse(row.get::<_, &[u8]>(0))?;
            session
                .decoder
                .apply(message, Some(&session.snapshot), &mut self.rows, &mut out)?;
        }
        Ok(out)
    }

    /// Logs the WAL retained by the slot.
    fn log_lag(session: &mut Session<R>) -> Result<()> {
        let Some(slot) = session.slot.as_deref() else {
            return Ok(());
        };
        let row = session.client.query_one(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )?;
        let lag: Option<i64> = row.get(0);
        let lag = lag.unwrap_or_default();
        if lag > LAG_WARNING_BYTES {
            warn!(
                slot,
                lag_bytes = lag,
                "replication slot lags behind the WAL"
            );
        } else {
            info!(slot, lag_bytes = lag, "replication slot lag");
        }
        Ok(())
    }

    fn run(mut self) {
        let mut first = true;
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.open() {
                Ok((mut session, snapshot)) => {
                    let mut updates = Vec::new();
                    self.rows.replace(snapshot, &mut updates);
                    info!(
                        worker = self.index,
                        rows = self.rows.len(),
                        slot = session.slot.as_deref().unwrap_or("-"),
                        "{} snapshot read",
                        R::TABLE
                    );
                    if !self.send(updates) || (first && !self.notify(Event::SnapshotDone)) {
                        return;
                    }
                    first = false;
                    if !self.config.follow {
                        return;
                    }
                    backoff = Duration::from_millis(500);
                    match self.follow(&mut session) {
                        Ok(()) => return,
                        Err(error) => warn!(
                            worker = self.index,
                            error = format!("{error:#}"),
                            "change capture of {} failed; reconnecting",
                            R::TABLE
                        ),
                    }
                }
                Err(error) if first => {
                    self.control.fail(error);
                    return;
                }
                Err(error) => warn!(
                    worker = self.index,
                    error = format!("{error:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot reconnect to Postgres"
                ),
            }
            if self.control.shutdown_requested() {
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Polls the slot until shutdown (`Ok`) or an error.
    fn follow(&mut self, session: &mut Session<R>) -> Result<()> {
        let mut next_lag_log = Instant::now() + LAG_LOG_INTERVAL;
        while !self.control.shutdown_requested() {
            let started = Instant::now();
            let updates = self.poll(session)?;
            if !updates.is_empty() {
                debug!(worker = self.index, updates = updates.len(), "changes");
            }
            if !self.send(updates) {
                return Ok(());
            }
            if Instant::now() >= next_lag_log {
                Self::log_lag(session)?;
                next_lag_log = Instant::now() + LAG_LOG_INTERVAL;
            }
            std::thread::sleep(self.config.poll.saturating_sub(started.elapsed()));
        }
        Ok(())
    }
}

/// The operator side: drains the thread's events.
struct TableReader<R> {
    rx: Receiver<Event<R>>,
    snapshot_done: bool,
}

impl<R: FollowedRow> Reader for TableReader<R> {
    type Data = R;

    fn read(&mut self, give: &mut dyn FnMut(R, Diff)) -> Status {
        let mut emitted = 0;
        while emitted < CHUNK {
            match self.rx.try_recv() {
                Ok(Event::Updates(updates)) => {
                    emitted += updates.len();
                    for (row, diff) in updates {
                        give(row, diff);
                    }
                }
                Ok(Event::SnapshotDone) => {
                    self.snapshot_done = true;
                    // The rest belongs to a later time.
                    return Status::More;
                }
                Err(TryRecvError::Empty) => return Status::Idle,
                Err(TryRecvError::Disconnected) => return Status::Finished,
            }
        }
        Status::More
    }

    fn holding(&self) -> bool {
        !self.snapshot_done
    }
}

/// Builds the source of table `R` for this worker: the snapshot of its rows at the start
/// time, then (when `config.follow`) their changes at the times they are read.
pub fn followed_table<'s, R: FollowedRow>(
    scope: Scope<'s, Time>,
    config: FollowConfig,
    lifecycle: &Lifecycle,
) -> VecCollection<'s, Time, R, Diff> {
    let (index, peers) = (scope.index(), scope.peers());
    let thread_control = lifecycle.control.clone();
    let reads = R::SPLIT == Split::ByKey || index == 0;
    clocked_source(
        scope,
        R::SOURCE,
        &lifecycle.with_tick(config.poll),
        move |activator| {
            let (tx, rx) = sync_channel(4);
            if !reads {
                // Worker 0 follows the table: this source is finished, with nothing.
                return Ok(TableReader {
                    rx,
                    snapshot_done: true,
                });
            }
            let capture = Capture {
                config,
                index,
                peers,
                rows: Rows::new(index, peers),
                tx,
                wake: Box::new(move || {
                    let _ = activator.activate();
                }),
                control: thread_control,
            };
            std::thread::Builder::new()
                .name(format!("follow-{}-{index}", R::TABLE))
                .spawn(move || capture.run())?;
            Ok(TableReader {
                rx,
                snapshot_done: false,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq)]
    struct Rule;

    impl FollowedRow for Rule {
        const TABLE: &'static str = "cdm.tag_rules";
        const KEY: &'static str = "tag";
        const COLUMNS: &'static [&'static str] = &["category_name", "min_orders"];
        const SPLIT: Split = Split::WorkerZero;
        const SOURCE: &'static str = "TagRules";

        fn from_columns(_: &[Option<&str>]) -> Result<Self> {
            Ok(Rule)
        }
    }

    #[derive(Clone, PartialEq)]
    struct Subscriber;

    impl FollowedRow for Subscriber {
        const TABLE: &'static str = "public.subscribers_restaurants";
        const KEY: &'static str = "id";
        const COLUMNS: &'static [&'static str] = &["client_id"];
        const SPLIT: Split = Split::ByKey;
        const SOURCE: &'static str = "Subscribers";

        fn from_columns(_: &[Option<&str>]) -> Result<Self> {
            Ok(Subscriber)
        }
    }

    #[test]
    fn snapshots_read_every_column_as_text_and_each_worker_its_share() {
        assert_eq!(
            snapshot_query::<Subscriber>(1, 3),
            "COPY (SELECT id::text, client_id::text FROM public.subscribers_restaurants \
             WHERE (id % 3 + 3) % 3 = 1) TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            snapshot_query::<Rule>(0, 3),
            "COPY (SELECT tag::text, category_name::text, min_orders::text FROM cdm.tag_rules \
             WHERE true) TO STDOUT (FORMAT binary)"
        );
        assert!(snapshot_query::<Rule>(2, 3).contains("WHERE false"));
    }
}
