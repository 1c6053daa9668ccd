//! A worker's rows of a followed table, by key, and how `pgoutput` changes update them.

use std::collections::HashMap;

use anyhow::{Result, anyhow};
use dataflows::Diff;
use tracing::{info, warn};

use super::handover::SnapshotPoint;
use super::pgoutput::{self, Message};
use super::{FollowedRow, Split};

/// A row's primary key: an integer for a table split by key, its text otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// The key of a [`Split::ByKey`] table.
    Int(i64),
    /// The key of a [`Split::WorkerZero`] table, as text.
    Text(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Int(k) => write!(f, "{k}"),
            Key::Text(k) => f.write_str(k),
        }
    }
}

impl Key {
    /// Parses the text of `R`'s key column.
    pub fn parse<R: FollowedRow>(text: &str) -> Result<Key> {
        Ok(match R::SPLIT {
            Split::ByKey => {
                Key::Int(text.parse().map_err(|e| {
                    anyhow!("{}.{} {text:?} is not an integer: {e}", R::TABLE, R::KEY)
                })?)
            }
            Split::WorkerZero => Key::Text(text.to_string()),
        })
    }
}

/// A row as read: the row, or why the job cannot use it (a NaN latitude, an unknown time
/// zone).
pub type Read<R> = std::result::Result<R, String>;

/// A snapshot of a worker's rows: each key's row as read.
pub type Snapshot<R> = HashMap<Key, Read<R>>;

/// This worker's rows of the table, by key, and how changes update them.
///
/// A row the job cannot use ([`FollowedRow::from_columns`] refuses it) is left out — the row
/// it replaces is retracted, as if deleted — and logged once with its key and reason; the
/// table is still followed, and a later usable version of the row is taken in.
pub struct Rows<R> {
    index: usize,
    peers: usize,
    rows: HashMap<Key, R>,
    /// Keys whose current row is unusable, with the reason logged for it.
    unusable: HashMap<Key, String>,
}

impl<R: FollowedRow> Rows<R> {
    /// The rows of worker `index` of `peers`.
    pub fn new(index: usize, peers: usize) -> Self {
        Rows {
            index,
            peers,
            rows: HashMap::new(),
            unusable: HashMap::new(),
        }
    }

    /// Whether the row `key` belongs to this worker (the same split as the snapshot query).
    pub fn owns(&self, key: &Key) -> bool {
        match key {
            Key::Int(k) => {
                let peers = i64::try_from(self.peers).unwrap_or(i64::MAX);
                usize::try_from(k.rem_euclid(peers)).is_ok_and(|owner| owner == self.index)
            }
            Key::Text(_) => self.index == 0,
        }
    }

    /// Sets row `key` to `read`: a usable row replaces the one held; an unusable one removes
    /// it and is logged (once per key and reason). Pushes the resulting updates.
    pub fn set(&mut self, key: Key, read: Read<R>, out: &mut Vec<(R, Diff)>) {
        if !self.owns(&key) {
            return;
        }
        match read {
            Ok(row) => {
                if self.unusable.remove(&key).is_some() {
                    info!(table = R::TABLE, key = %key, "row usable again: taken in");
                }
                match self.rows.insert(key, row.clone()) {
                    Some(old) if old == row => {}
                    Some(old) => out.extend([(old, -1), (row, 1)]),
                    None => out.push((row, 1)),
                }
            }
            Err(reason) => {
                if let Some(old) = self.rows.remove(&key) {
                    out.push((old, -1));
                }
                if self.unusable.get(&key) != Some(&reason) {
                    warn!(
                        table = R::TABLE,
                        key = %key,
                        reason = %reason,
                        "row left out: the job cannot use it (fix the row to take it in)"
                    );
                    self.unusable.insert(key, reason);
                }
            }
        }
    }

    /// Sets row `key` to a usable `row`; pushes the resulting updates.
    pub fn upsert(&mut self, key: Key, row: R, out: &mut Vec<(R, Diff)>) {
        self.set(key, Ok(row), out);
    }

    /// Removes row `key`; pushes the resulting update.
    pub fn delete(&mut self, key: &Key, out: &mut Vec<(R, Diff)>) {
        self.unusable.remove(key);
        if let Some(old) = self.rows.remove(key) {
            out.push((old, -1));
        }
    }

    /// Replaces all rows by `snapshot`; pushes the difference.
    pub fn replace(&mut self, snapshot: Snapshot<R>, out: &mut Vec<(R, Diff)>) {
        let gone: Vec<Key> = (self.rows.keys().chain(self.unusable.keys()))
            .filter(|key| !snapshot.contains_key(key))
            .cloned()
            .collect();
        for key in gone {
            self.delete(&key, out);
        }
        for (key, read) in snapshot {
            self.set(key, read, out);
        }
    }

    /// Number of keys whose row is left out as unusable.
    pub fn unusable(&self) -> usize {
        self.unusable.len()
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

/// Positions of the followed table's key and row columns in a Relation message.
#[derive(Clone, Debug)]
struct Columns {
    key: usize,
    row: Vec<usize>,
}

/// Decodes `pgoutput` messages of the followed table into row changes.
pub struct Decoder<R> {
    relations: HashMap<u32, Option<Columns>>,
    skipping: bool,
    row: std::marker::PhantomData<R>,
}

impl<R> Default for Decoder<R> {
    fn default() -> Self {
        Decoder {
            relations: HashMap::new(),
            skipping: false,
            row: std::marker::PhantomData,
        }
    }
}

impl<R: FollowedRow> Decoder<R> {
    /// Applies one message to `rows`, pushing the resulting updates; transactions contained
    /// in `snapshot` are skipped.
    pub fn apply(
        &mut self,
        message: Message,
        snapshot: Option<&SnapshotPoint>,
        rows: &mut Rows<R>,
        out: &mut Vec<(R, Diff)>,
    ) -> Result<()> {
        let columns = |relations: &HashMap<u32, Option<Columns>>, id: u32| match relations.get(&id)
        {
            Some(columns) => Ok(columns.clone()),
            None => Err(anyhow!("pgoutput change for unknown relation {id}")),
        };
        match message {
            Message::Begin { final_lsn, xid } => {
                self.skipping = snapshot.is_some_and(|s| s.contains(xid, final_lsn));
            }
            Message::Commit => self.skipping = false,
            Message::Relation(relation) => {
                let ours = format!("{}.{}", relation.namespace, relation.name) == R::TABLE;
                let columns = if ours {
                    Some(Columns {
                        key: relation.column(R::KEY)?,
                        row: (R::COLUMNS.iter())
                            .map(|c| relation.column(c))
                            .collect::<Result<_>>()?,
                    })
                } else {
                    None
                };
                self.relations.insert(relation.id, columns);
            }
            _ if self.skipping => {}
            Message::Insert { relation, new } => {
                if let Some(c) = columns(&self.relations, relation)? {
                    rows.set(key::<R>(&new, &c)?, row(&new, &c)?, out);
                }
            }
            Message::Update { relation, old, new } => {
                if let Some(c) = columns(&self.relations, relation)? {
                    let new_key = key::<R>(&new, &c)?;
                    if let Some(old) = old {
                        let old_key = key::<R>(&old, &c)?;
                        if old_key != new_key {
                            rows.delete(&old_key, out);
                        }
                    }
                    rows.set(new_key, row(&new, &c)?, out);
                }
            }
            Message::Delete { relation, old } => {
                if let Some(c) = columns(&self.relations, relation)? {
                    rows.delete(&key::<R>(&old, &c)?, out);
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

fn key<R: FollowedRow>(tuple: &pgoutput::Tuple, c: &Columns) -> Result<Key> {
    Key::parse::<R>(tuple.text(c.key)?)
}

/// The row of `tuple`: an error when the message is malformed, an unusable [`Read`] when the
/// row's values are not what the job can use.
fn row<R: FollowedRow>(tuple: &pgoutput::Tuple, c: &Columns) -> Result<Read<R>> {
    let values: Vec<Option<&str>> = (c.row.iter())
        .map(|&i| tuple.value(i))
        .collect::<Result<_>>()?;
    Ok(R::from_columns(&values).map_err(|e| format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::postgres::pgoutput::{Relation, Tuple, Value};

    /// A row of a table split by key, like `public.subscribers_restaurants`.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Subscription {
        client_id: String,
        restaurant_id: String,
    }

    impl FollowedRow for Subscription {
        const TABLE: &'static str = "public.subscribers_restaurants";
        const KEY: &'static str = "id";
        const COLUMNS: &'static [&'static str] = &["client_id", "restaurant_id"];
        const SPLIT: Split = Split::ByKey;
        const SOURCE: &'static str = "TestSource";

        fn from_columns(values: &[Option<&str>]) -> Result<Self> {
            match values {
                [Some(client), Some(restaurant)] => Ok(sub(client, restaurant)),
                _ => Err(anyhow!("NULL client or restaurant")),
            }
        }
    }

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
    fn changes_become_updates_of_this_workers_rows() -> Result<()> {
        let mut rows = Rows::<Subscription>::new(0, 1);
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
        let mut rows = Rows::<Subscription>::new(0, 1);
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
        let mut w1 = Rows::<Subscription>::new(1, 3);
        assert!(w1.owns(&Key::Int(4)) && w1.owns(&Key::Int(-2)) && !w1.owns(&Key::Int(3)));
        assert!(
            !w1.owns(&Key::Text("4".into())),
            "worker 0 follows an unsplit table"
        );
        let mut out = Vec::new();
        w1.upsert(Key::Int(3), sub("x", "r"), &mut out);
        assert!(out.is_empty() && w1.is_empty(), "row 3 belongs to worker 0");
        w1.upsert(Key::Int(1), sub("a", "r"), &mut out);
        w1.upsert(Key::Int(4), sub("b", "r"), &mut out);
        out.clear();
        let snapshot = HashMap::from([
            (Key::Int(4), Ok(sub("b", "r2"))),
            (Key::Int(7), Ok(sub("c", "r"))),
        ]);
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

    #[test]
    fn an_unusable_row_is_left_out_and_a_later_usable_version_taken_in() {
        let mut w0 = Rows::<Subscription>::new(0, 1);
        let mut out = Vec::new();
        w0.set(Key::Int(1), Ok(sub("a", "r")), &mut out);
        w0.set(Key::Int(1), Err("bad".into()), &mut out);
        assert_eq!(out, [(sub("a", "r"), 1), (sub("a", "r"), -1)], "retracted");
        assert_eq!((w0.len(), w0.unusable()), (0, 1));
        out.clear();
        w0.set(Key::Int(1), Err("bad".into()), &mut out);
        w0.set(Key::Int(2), Ok(sub("b", "r")), &mut out);
        w0.set(Key::Int(1), Ok(sub("a", "r2")), &mut out);
        assert_eq!(out, [(sub("b", "r"), 1), (sub("a", "r2"), 1)]);
        assert_eq!((w0.len(), w0.unusable()), (2, 0));
        w0.set(Key::Int(3), Err("bad".into()), &mut out);
        out.clear();
        w0.replace(HashMap::from([(Key::Int(2), Ok(sub("b", "r")))]), &mut out);
        assert_eq!(out, [(sub("a", "r2"), -1)]);
        assert_eq!(
            (w0.len(), w0.unusable()),
            (1, 0),
            "row 3 is gone from the table"
        );
    }
}
