//! Postgres change-capture source: `public.subscribers_restaurants` → a live collection of
//! [`Subscription`]s (a snapshot, then every committed insert, update, delete and truncate).
//!
//! ```text
//!  worker w of W, reader thread, one connection:
//!    1. pg_create_logical_replication_slot('dishflow_…', 'pgoutput', temporary => true)
//!    2. BEGIN ISOLATION LEVEL REPEATABLE READ
//!         pg_current_snapshot(), pg_current_wal_lsn()            -- the hand-over point
//!         COPY (SELECT id, client_id, restaurant_id … WHERE id mod W = w) (FORMAT binary)
//!       COMMIT
//!    3. every tick: pg_logical_slot_get_binary_changes(slot, …, publication dishflow_…)
//!         → pgoutput messages → rows with id mod W = w → ±1 updates
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
//! worker's rows by `id` and turns each change into retractions and insertions of
//! (client_id, restaurant_id). Applying a change twice is therefore harmless, an update
//! that moves a row is −old +new, and duplicates of a pair stay separate rows (the dataflow
//! counts the pair once).
//!
//! **Reconnects.** If the connection fails after startup (a Postgres restart), the thread
//! retries with backoff; the temporary slot died with the connection, so it creates a new
//! slot, takes a new snapshot and emits the difference between it and the rows it had.
//!
//! **Costs.** One temporary slot per worker: each decodes the database's WAL (`pgoutput`
//! filters by the publication before sending). A temporary slot disappears with its
//! connection, so a crashed job leaves nothing that retains WAL; while the job runs, the
//! slot retains WAL only up to what was read a tick ago. The lag is logged every
//! [`LAG_LOG_INTERVAL`] (a warning above [`LAG_WARNING_BYTES`]).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use dataflows::promos::Subscription;
use dataflows::{Diff, Time};
use differential_dataflow::VecCollection;
use postgres::binary_copy::BinaryCopyOutIter;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use postgres::{Client, IsolationLevel};
use timely::dataflow::Scope;
use tracing::{debug, info, warn};

use crate::control::{Control, Lifecycle};
use crate::pg;
use crate::sources::pgoutput::{self, Message};
use crate::sources::{Reader, Status, clocked_source};

/// The captured table.
pub const TABLE: &str = "public.subscribers_restaurants";

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

/// What the subscribers source reads.
#[derive(Clone, Debug)]
pub struct SubscribersConfig {
    /// Connection URL.
    pub url: String,
    /// Publication of the table (created by `dishflow setup`).
    pub publication: String,
    /// Follow changes after the snapshot; `false` reads the snapshot only (bounded runs).
    pub follow: bool,
    /// How often the slot is polled for changes.
    pub poll: Duration,
}

/// A message from the reader thread.
enum Event {
    /// Rows of the snapshot, changes read from the stream, or the difference after a
    /// re-snapshot.
    Updates(Vec<(Subscription, Diff)>),
    /// The initial snapshot is complete: what follows happens at the time it is read.
    SnapshotDone,
}

/// The transactions a snapshot already contains, for the hand-over to the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPoint {
    /// WAL insert position read right after the snapshot was taken.
    pub lsn: u64,
    /// First xid the snapshot does not see (low 32 bits).
    pub xmax: u32,
    /// Xids in progress when the snapshot was taken (low 32 bits).
    pub xip: HashSet<u32>,
}

impl SnapshotPoint {
    /// Parses `pg_current_snapshot()` text (`xmin:xmax:xip,...`) and the WAL position.
    pub fn parse(snapshot: &str, lsn: u64) -> Result<Self> {
        let mut parts = snapshot.split(':');
        let (Some(_xmin), Some(xmax), Some(xip)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("unexpected snapshot {snapshot:?}");
        };
        // Full (64-bit) xids; decoding reports the low 32 bits.
        let low = |x: &str| -> Result<u32> { Ok(x.parse::<u64>()? as u32) };
        Ok(SnapshotPoint {
            lsn,
            xmax: low(xmax)?,
            xip: xip
                .split(',')
                .filter(|x| !x.is_empty())
                .map(low)
                .collect::<Result<_>>()?,
        })
    }

    /// Whether the transaction `xid`, committed at `commit_lsn`, is already in the snapshot.
    pub fn contains(&self, xid: u32, commit_lsn: u64) -> bool {
        // Past the snapshot's WAL position no transaction can be in it; this also keeps the
        // 32-bit comparison below from ever meeting xid wrap-around.
        commit_lsn < self.lsn
            && (xid.wrapping_sub(self.xmax) as i32) < 0
            && !self.xip.contains(&xid)
    }
}

/// This worker's rows of the table, by primary key, and how changes update them.
#[derive(Default)]
pub struct Rows {
    index: u32,
    peers: u32,
    rows: HashMap<i32, Subscription>,
}

impl Rows {
    /// The rows of worker `index` of `peers`.
    pub fn new(index: usize, peers: usize) -> Self {
        Rows {
            index: index as u32,
            peers: peers as u32,
            rows: HashMap::new(),
        }
    }

    /// Whether row `id` belongs to this worker (same split as the snapshot query).
    pub fn owns(&self, id: i32) -> bool {
        id.rem_euclid(self.peers as i32) as u32 == self.index
    }

    /// Sets row `id`; pushes the resulting updates.
    pub fn upsert(&mut self, id: i32, row: Subscription, out: &mut Vec<(Subscription, Diff)>) {
        if !self.owns(id) {
            return;
        }
        match self.rows.insert(id, row.clone()) {
            Some(old) if old == row => {}
            Some(old) => out.extend([(old, -1), (row, 1)]),
            None => out.push((row, 1)),
        }
    }

    /// Removes row `id`; pushes the resulting update.
    pub fn delete(&mut self, id: i32, out: &mut Vec<(Subscription, Diff)>) {
        if let Some(old) = self.rows.remove(&id) {
            out.push((old, -1));
        }
    }

    /// Replaces all rows by `snapshot`; pushes the difference.
    pub fn replace(
        &mut self,
        snapshot: HashMap<i32, Subscription>,
        out: &mut Vec<(Subscription, Diff)>,
    ) {
        let gone: Vec<i32> = self
            .rows
            .keys()
            .filter(|id| !snapshot.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.delete(id, out);
        }
        for (id, row) in snapshot {
            self.upsert(id, row, out);
        }
    }

    /// Number of rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no rows are held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Columns of the captured table in a Relation message.
#[derive(Clone, Copy, Debug)]
struct Columns {
    id: usize,
    client_id: usize,
    restaurant_id: usize,
}

/// Decodes `pgoutput` messages of the captured table into row changes.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Option<Columns>>,
    skipping: bool,
}

impl Decoder {
    /// Applies one message to `rows`, pushing the resulting updates; transactions contained
    /// in `snapshot` are skipped.
    pub fn apply(
        &mut self,
        message: Message,
        snapshot: Option<&SnapshotPoint>,
        rows: &mut Rows,
        out: &mut Vec<(Subscription, Diff)>,
    ) -> Result<()> {
        let columns = |relations: &HashMap<u32, Option<Columns>>, id: u32| match relations.get(&id)
        {
            Some(columns) => Ok(*columns),
            None => Err(anyhow!("pgoutput change for unknown relation {id}")),
        };
        match message {
            Message::Begin { final_lsn, xid } => {
                self.skipping = snapshot.is_some_and(|s| s.contains(xid, final_lsn));
            }
            Message::Commit => self.skipping = false,
            Message::Relation(relation) => {
                let ours = format!("{}.{}", relation.namespace, relation.name) == TABLE;
                let columns = if ours {
                    Some(Columns {
                        id: relation.column("id")?,
                        client_id: relation.column("client_id")?,
                        restaurant_id: relation.column("restaurant_id")?,
                    })
                } else {
                    None
                };
                self.relations.insert(relation.id, columns);
            }
            _ if self.skipping => {}
            Message::Insert { relation, new } => {
                if let Some(c) = columns(&self.relations, relation)? {
                    rows.upsert(id(&new, c)?, subscription(&new, c)?, out);
                }
            }
            Message::Update { relation, old, new } => {
                if let Some(c) = columns(&self.relations, relation)? {
                    let new_id = id(&new, c)?;
                    if let Some(old) = old {
                        let old_id = id(&old, c)?;
                        if old_id != new_id {
                            rows.delete(old_id, out);
                        }
                    }
                    rows.upsert(new_id, subscription(&new, c)?, out);
                }
            }
            Message::Delete { relation, old } => {
                if let Some(c) = columns(&self.relations, relation)? {
                    rows.delete(id(&old, c)?, out);
                }
            }
            Message::Truncate { relations } => {
                if relations
                    .iter()
                    .any(|r| matches!(self.relations.get(r), Some(Some(_))))
                {
                    rows.replace(HashMap::new(), out);
                }
            }
            Message::Other(_) => {}
        }
        Ok(())
    }
}

fn id(tuple: &pgoutput::Tuple, c: Columns) -> Result<i32> {
    Ok(tuple.text(c.id)?.parse()?)
}

fn subscription(tuple: &pgoutput::Tuple, c: Columns) -> Result<Subscription> {
    Ok(Subscription {
        client_id: tuple.text(c.client_id)?.to_string(),
        restaurant_id: tuple.text(c.restaurant_id)?.to_string(),
    })
}

/// One connection's capture: slot, snapshot, then changes.
struct Session {
    client: Client,
    slot: Option<String>,
    snapshot: SnapshotPoint,
    decoder: Decoder,
}

/// The reader thread of one worker.
struct Capture {
    config: SubscribersConfig,
    index: usize,
    peers: usize,
    rows: Rows,
    tx: SyncSender<Event>,
    wake: Box<dyn Fn() + Send>,
    control: Control,
}

impl Capture {
    /// Sends `updates` in chunks; `false` once the operator is gone.
    fn send(&self, updates: Vec<(Subscription, Diff)>) -> bool {
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
    fn notify(&self, event: Event) -> bool {
        let sent = self.tx.send(event).is_ok();
        (self.wake)();
        sent
    }

    /// Connects, creates the slot (when following) and reads the snapshot of this worker's
    /// rows. Returns the session and the rows by id.
    fn open(&self) -> Result<(Session, HashMap<i32, Subscription>)> {
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
                        "cannot create a logical replication slot for {TABLE} \
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
        let query = format!(
            "COPY (SELECT id, client_id, restaurant_id FROM {TABLE} \
             WHERE (id % {peers} + {peers}) % {peers} = {index}) TO STDOUT (FORMAT binary)",
            peers = self.peers,
            index = self.index
        );
        let mut rows = HashMap::new();
        {
            let reader = tx
                .copy_out(query.as_str())
                .with_context(|| format!("cannot read {TABLE}"))?;
            let mut copy =
                BinaryCopyOutIter::new(reader, &[Type::INT4, Type::VARCHAR, Type::VARCHAR]);
            while let Some(row) = copy.next().with_context(|| format!("reading {TABLE}"))? {
                rows.insert(
                    row.try_get(0)?,
                    Subscription {
                        client_id: row.try_get(1)?,
                        restaurant_id: row.try_get(2)?,
                    },
                );
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
    fn poll(&mut self, session: &mut Session) -> Result<Vec<(Subscription, Diff)>> {
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
    fn log_lag(session: &mut Session) -> Result<()> {
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
                        "{TABLE} snapshot read"
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
                            "change capture of {TABLE} failed; reconnecting"
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
    fn follow(&mut self, session: &mut Session) -> Result<()> {
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
struct SubscribersReader {
    rx: Receiver<Event>,
    snapshot_done: bool,
}

impl Reader for SubscribersReader {
    type Data = Subscription;

    fn read(&mut self, give: &mut dyn FnMut(Subscription, Diff)) -> Status {
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

/// Builds the subscribers source for this worker: the snapshot of its rows at `start`, then
/// (when `config.follow`) their changes at the times they are read.
pub fn subscribers<'s>(
    scope: Scope<'s, Time>,
    config: SubscribersConfig,
    lifecycle: &Lifecycle,
) -> VecCollection<'s, Time, Subscription, Diff> {
    let (index, peers) = (scope.index(), scope.peers());
    let thread_control = lifecycle.control.clone();
    clocked_source(
        scope,
        "SubscribersSource",
        &lifecycle.with_tick(config.poll),
        move |activator| {
            let (tx, rx) = sync_channel(4);
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
                .name(format!("subscribers-{index}"))
                .spawn(move || capture.run())?;
            Ok(SubscribersReader {
                rx,
                snapshot_done: false,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::pgoutput::{Relation, Tuple, Value};

    fn sub(client: &str, restaurant: &str) -> Subscription {
        Subscription {
            client_id: client.into(),
            restaurant_id: restaurant.into(),
        }
    }

    fn row(id: i32, client: &str, restaurant: &str) -> Tuple {
        Tuple(vec![
            Value::Text(id.to_string()),
            Value::Text(client.into()),
            Value::Text(restaurant.into()),
        ])
    }

    fn key(id: i32) -> Tuple {
        Tuple(vec![Value::Text(id.to_string()), Value::Null, Value::Null])
    }

    // Changes of relation 7, the captured table (see `relation`).
    fn insert(id: i32, client: &str, restaurant: &str) -> Message {
        Message::Insert {
            relation: 7,
            new: row(id, client, restaurant),
        }
    }

    fn update(old_id: Option<i32>, id: i32, client: &str, restaurant: &str) -> Message {
        Message::Update {
            relation: 7,
            old: old_id.map(key),
            new: row(id, client, restaurant),
        }
    }

    fn delete(id: i32) -> Message {
        Message::Delete {
            relation: 7,
            old: key(id),
        }
    }

    fn relation() -> Message {
        Message::Relation(Relation {
            id: 7,
            namespace: "public".into(),
            name: "subscribers_restaurants".into(),
            columns: vec!["id".into(), "client_id".into(), "restaurant_id".into()],
        })
    }

    #[test]
    fn snapshot_point_knows_which_transactions_it_contains() -> Result<()> {
        let s = SnapshotPoint::parse("100:105:101,103", 5000)?;
        assert_eq!(s.xmax, 105);
        assert!(s.contains(99, 4000), "committed before xmin");
        assert!(s.contains(102, 4000), "between, not in progress");
        assert!(!s.contains(101, 4000), "in progress at the snapshot");
        assert!(!s.contains(105, 4000), "at or after xmax");
        assert!(
            !s.contains(99, 5000),
            "commit after the snapshot's WAL position"
        );
        let wrapped = SnapshotPoint::parse(&format!("{0}:{0}:", (1u64 << 32) + 3), 10)?;
        assert!(
            wrapped.contains(u32::MAX, 5),
            "xid just before the wrap is older"
        );
        assert!(!wrapped.contains(3, 5));
        assert!(SnapshotPoint::parse("nonsense", 0).is_err());
        Ok(())
    }

    #[test]
    fn changes_become_updates_of_this_workers_rows() -> Result<()> {
        let mut rows = Rows::new(0, 1);
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        let mut apply = |m: Message, out: &mut Vec<_>| decoder.apply(m, None, &mut rows, out);
        apply(relation(), &mut out)?;
        apply(insert(1, "c", "r1"), &mut out)?;
        apply(insert(2, "c", "r1"), &mut out)?;
        assert_eq!(
            out,
            [(sub("c", "r1"), 1), (sub("c", "r1"), 1)],
            "duplicates are rows"
        );
        out.clear();
        apply(update(None, 1, "c", "r2"), &mut out)?;
        assert_eq!(out, [(sub("c", "r1"), -1), (sub("c", "r2"), 1)], "a move");
        out.clear();
        apply(update(None, 1, "c", "r2"), &mut out)?;
        assert!(out.is_empty(), "an update that changes nothing");
        apply(update(Some(1), 9, "c", "r2"), &mut out)?;
        differential_dataflow::consolidation::consolidate(&mut out);
        assert!(
            out.is_empty(),
            "a new key for the same pair nets to nothing"
        );
        apply(delete(9), &mut out)?;
        apply(delete(9), &mut out)?;
        assert_eq!(out, [(sub("c", "r2"), -1)], "deleting twice retracts once");
        out.clear();
        apply(Message::Truncate { relations: vec![7] }, &mut out)?;
        assert_eq!(out, [(sub("c", "r1"), -1)]);
        Ok(())
    }

    #[test]
    fn transactions_in_the_snapshot_are_skipped() -> Result<()> {
        let snapshot = SnapshotPoint::parse("10:12:11", 1000)?;
        let mut rows = Rows::new(0, 1);
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for (xid, lsn, id) in [(10, 900, 1), (11, 950, 2), (12, 990, 3), (10, 1000, 4)] {
            let messages = [
                Message::Begin {
                    final_lsn: lsn,
                    xid,
                },
                relation(),
                insert(id, &format!("c{id}"), "r"),
                Message::Commit,
            ];
            for m in messages {
                decoder.apply(m, Some(&snapshot), &mut rows, &mut out)?;
            }
        }
        let clients: Vec<_> = out.iter().map(|(s, _)| s.client_id.as_str()).collect();
        assert_eq!(
            clients,
            ["c2", "c3", "c4"],
            "xid 10 before the WAL point was in it"
        );
        Ok(())
    }

    #[test]
    fn rows_are_split_like_the_snapshot_query_and_resync_emits_the_difference() {
        let mut w1 = Rows::new(1, 3);
        assert!(w1.owns(4) && w1.owns(-2) && !w1.owns(3));
        let mut out = Vec::new();
        w1.upsert(3, sub("x", "r"), &mut out);
        assert!(out.is_empty() && w1.is_empty(), "row 3 belongs to worker 0");
        w1.upsert(1, sub("a", "r"), &mut out);
        w1.upsert(4, sub("b", "r"), &mut out);
        out.clear();
        let snapshot = HashMap::from([(4, sub("b", "r2")), (7, sub("c", "r"))]);
        w1.replace(snapshot, &mut out);
        out.sort();
        assert_eq!(
            out,
            [
                (sub("a", "r"), -1),
                (sub("b", "r"), -1),
                (sub("b", "r2"), 1),
                (sub("c", "r"), 1)
            ]
        );
        assert_eq!(w1.len(), 2);
    }
}
