//! Exactly-once Kafka messages decided in a Postgres transaction: a transactional outbox,
//! confirmed by deletion, recovered by reading the topic back.
//!
//! ```text
//!  Postgres transaction (the sink's rows)         Kafka                      Postgres
//!   + INSERT dishflow_outbox (writer, seq, msg) ─► produce msg + header  ─► DELETE outbox ≤ seq
//!   COMMIT                                         dishflow.outbox.seq     marks := offsets
//!                                                  confirm all deliveries  after delivered
//! ```
//!
//! A message exists in the outbox exactly when the sink's rows that decided it were
//! committed (same transaction). It is deleted only after the broker acknowledged it, in the
//! same transaction that records, per output partition, the offset after the writer's last
//! delivered message (a *mark*). After a crash anywhere in between, [`Outbox::recover`]
//! finds the messages still in the outbox, reads every partition of their topic from its
//! mark to its end, and produces only those whose sequence number is not found there: no
//! message is lost and none is written twice. Messages are produced in sequence order and a
//! key always goes through one writer, so the order per key is kept across restarts.
//!
//! Why not Kafka transactions: the local broker (Tansu 0.6) does not abort a transaction
//! whose producer died — the next commit of the same `transactional.id` makes the dead
//! producer's records visible — so a crash would duplicate. The outbox needs nothing
//! from the broker beyond idempotent, acknowledged produce and fetch.
//!
//! One process at a time per (job, writer): [`Outbox::lock`] takes a Postgres advisory lock
//! on the writer's connection; a second instance of the same writer waits for it. A killed
//! process's connection closes and its lock goes with it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use postgres::{Client, Transaction};
use tracing::info;

use super::kafka::{KafkaMessage, MessageTooLarge, Oversize, Producer};
use crate::kafka::KafkaArgs;
use crate::kafka::consumer::{Position, read_range};

pub use super::kafka::SEQ_HEADER;

/// The sequence number header at its longest (an i64 in decimal), for size checks.
const SEQ_AT_MOST: &[(&str, &[u8])] = &[(SEQ_HEADER, b"-9223372036854775808")];

/// How long a recovery may take to read a topic back.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a second instance of a writer waits for the first to go away.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Messages per outbox row.
pub const CHUNK: usize = 10_000;

/// Row sequence numbers are shifted by this many bits: room for [`CHUNK`] messages.
const CHUNK_BITS: u32 = 14;
const _: () = assert!(CHUNK < 1 << CHUNK_BITS);

/// Marks a framed outbox row whose messages carry headers (dead letters do).
const FRAME_MAGIC: &[u8] = b"dishflow-outbox-v3\n";

/// Marks a framed row of an earlier version: keys and values only.
const FRAME_MAGIC_V2: &[u8] = b"dishflow-outbox-v2\n";

/// The most bytes of key and value an outbox message to a topic that takes records of up to
/// `limit` bytes may have (the rest is the record's overhead and its sequence header).
pub fn payload_room(limit: usize) -> usize {
    let empty = KafkaMessage {
        key: None,
        value: None,
        headers: Vec::new(),
    };
    limit.saturating_sub(empty.size(SEQ_AT_MOST))
}

/// Appends `bytes` as a u32 length (big-endian; `u32::MAX` = absent) and the bytes.
fn put_part(payload: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            payload.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            payload.extend_from_slice(bytes);
        }
        None => payload.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
}

/// Takes one part written by [`put_part`] off the front of `rest`.
fn take_part(rest: &mut &[u8]) -> Option<Option<Vec<u8>>> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len);
    if len == u32::MAX {
        *rest = tail;
        return Some(None);
    }
    let len = len as usize;
    let bytes = tail.get(..len)?.to_vec();
    *rest = &tail[len..];
    Some(Some(bytes))
}

/// Frames messages into one blob: the magic, then, LZ4-compressed (size prepended), per
/// message its key, its value and its headers (a count, then name and value of each), each
/// part as a u32 length (big-endian; `u32::MAX` = absent) and the bytes. Draft JSON
/// compresses several times over: less to send, write and log.
fn frame(messages: &[KafkaMessage]) -> Vec<u8> {
    let size: usize = messages
        .iter()
        .map(|m| 12 + m.key.as_ref().map_or(0, Vec::len) + m.value.as_ref().map_or(0, Vec::len))
        .sum();
    let mut payload = Vec::with_capacity(size);
    for m in messages {
        put_part(&mut payload, m.key.as_deref());
        put_part(&mut payload, m.value.as_deref());
        payload.extend_from_slice(&(m.headers.len() as u32).to_be_bytes());
        for (name, value) in &m.headers {
            put_part(&mut payload, Some(name.as_bytes()));
            put_part(&mut payload, Some(value));
        }
    }
    let mut blob = FRAME_MAGIC.to_vec();
    blob.extend_from_slice(&lz4_flex::compress_prepend_size(&payload));
    blob
}

/// The messages of a framed blob (this version's or the previous one's); `None` if it is
/// not one.
fn unframe(blob: &[u8]) -> Option<Vec<KafkaMessage>> {
    let (compressed, with_headers) = match blob.strip_prefix(FRAME_MAGIC) {
        Some(rest) => (rest, true),
        None => (blob.strip_prefix(FRAME_MAGIC_V2)?, false),
    };
    let payload = lz4_flex::decompress_size_prepended(compressed).ok()?;
    let mut rest = payload.as_slice();
    let mut messages = Vec::new();
    while !rest.is_empty() {
        let key = take_part(&mut rest)?;
        let value = take_part(&mut rest)?;
        let mut headers = Vec::new();
        if with_headers {
            let (count, tail) = rest.split_first_chunk::<4>()?;
            rest = tail;
            for _ in 0..u32::from_be_bytes(*count) {
                let name = String::from_utf8(take_part(&mut rest)??).ok()?;
                headers.push((name, take_part(&mut rest)??));
            }
        }
        messages.push(KafkaMessage {
            key,
            value,
            headers,
        });
    }
    Some(messages)
}

/// A message committed to the outbox, not yet confirmed delivered.
pub struct Staged {
    seq: i64,
    /// Shared by the messages staged together (one allocation, not one per message).
    topic: Arc<str>,
    message: KafkaMessage,
}

impl Staged {
    /// The message's sequence number in the outbox.
    pub fn seq(&self) -> i64 {
        self.seq
    }
}

/// One writer's outbox: its Kafka producer and its rows in `dishflow_outbox`.
pub struct Outbox {
    job: String,
    writer: i32,
    kafka: KafkaArgs,
    producer: Producer,
    /// Topics this writer produces to (their marks are set at startup).
    topics: Vec<String>,
    /// The last sequence number sent and not yet settled.
    unsettled: Option<i64>,
    /// What [`Outbox::stage`] does with a message larger than its topic takes.
    oversize: Oversize,
}

impl Outbox {
    /// The outbox of writer `writer` of `job`, producing to `topics`.
    pub fn new(kafka: &KafkaArgs, job: &str, writer: usize, topics: &[&str]) -> Result<Self> {
        Ok(Outbox {
            job: job.to_string(),
            writer: i32::try_from(writer)?,
            kafka: kafka.clone(),
            producer: Producer::new(kafka)?,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            unsettled: None,
            oversize: Oversize::Refuse,
        })
    }

    /// The same outbox, cutting a message larger than its topic takes to fit instead of
    /// refusing it (a dead letter is kept, cut: see [`KafkaMessage::truncate`]).
    pub fn truncating(mut self) -> Self {
        self.oversize = Oversize::Truncate;
        self
    }

    /// Takes the writer's advisory lock on `client`'s session (held until it disconnects),
    /// waiting up to a minute for another instance of the same writer to go away.
    pub fn lock(&self, client: &mut Client) -> Result<()> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let (job, writer) = (&self.job, self.writer);
        let mut logged = false;
        loop {
            let row = client.query_one(
                "SELECT pg_try_advisory_lock(hashtext('dishflow/' || $1::text), $2::int4)",
                &[job, &writer],
            )?;
            if row.try_get::<_, bool>(0)? {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "writer {writer} of job {job} is held by another dishflow process \
                     (same --process and worker running elsewhere?)"
                );
            }
            if !logged {
                info!(
                    job,
                    writer, "waiting for another instance of this writer to end"
                );
                logged = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Adds `messages` for `topic` to the outbox inside `tx`; they are sent by
    /// [`Outbox::publish`] once `tx` is committed. A message larger than the topic takes
    /// is refused with [`MessageTooLarge`] before anything is staged (the caller's
    /// transaction then writes nothing; the sink isolates the update that made it), or cut
    /// to fit by a [`truncating`](Outbox::truncating) outbox.
    ///
    /// Messages are stored [`CHUNK`] to a row (one framed blob): a row costs far more than
    /// its bytes, and a batch's messages are always confirmed and deleted together. Row
    /// `seq` is `nextval(dishflow_outbox_seq) << CHUNK_BITS`; message `i` of the row has
    /// sequence number `seq + i` (the header [`SEQ_HEADER`]), so sequence numbers grow
    /// across rows and batches, and `DELETE … WHERE seq <= last` removes whole rows.
    pub fn stage(
        &self,
        tx: &mut Transaction<'_>,
        topic: &str,
        mut messages: Vec<KafkaMessage>,
    ) -> Result<Vec<Staged>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let limit = self.producer.limit(topic);
        for message in &mut messages {
            if let Err(too_large) = MessageTooLarge::check(topic, limit, message, SEQ_AT_MOST) {
                match self.oversize {
                    Oversize::Refuse => return Err(too_large.into()),
                    Oversize::Truncate => message.truncate(too_large.limit, SEQ_AT_MOST),
                }
            }
        }
        let chunks = i64::try_from(messages.len().div_ceil(CHUNK))?;
        let mut firsts: Vec<i64> = tx
            .query(
                "SELECT nextval('public.dishflow_outbox_seq') FROM generate_series(1::int8, $1::int8)",
                &[&chunks],
            )?
            .iter()
            .map(|r| r.try_get::<_, i64>(0).map(|n| n << CHUNK_BITS))
            .collect::<Result<_, _>>()?;
        firsts.sort_unstable();
        let blobs: Vec<Vec<u8>> = messages.chunks(CHUNK).map(frame).collect();
        tx.execute(
            "INSERT INTO public.dishflow_outbox (job, writer, topic, seq, key, value) \
             SELECT $1, $2, $3, seq, NULL, blob FROM unnest($4::int8[], $5::bytea[]) AS b(seq, blob)",
            &[&self.job, &self.writer, &topic, &firsts, &blobs],
        )
        .context("cannot write to public.dishflow_outbox")?;
        let mut staged = Vec::with_capacity(messages.len());
        let topic: Arc<str> = Arc::from(topic);
        for (i, message) in messages.into_iter().enumerate() {
            staged.push(Staged {
                seq: firsts[i / CHUNK] + (i % CHUNK) as i64,
                topic: Arc::clone(&topic),
                message,
            });
        }
        Ok(staged)
    }

    /// Produces `staged` (committed to the outbox), waits for every delivery, then deletes
    /// the writer's outbox rows up to `upto` (at least the last of `staged`) and moves the
    /// marks past what was delivered.
    pub fn publish(&mut self, client: &mut Client, staged: &[Staged], upto: i64) -> Result<()> {
        self.send(staged)?;
        self.unsettled = self.unsettled.max(Some(upto));
        self.settle(client)
    }

    /// Produces `staged` (committed to the outbox) without waiting: the messages are on
    /// their way; [`Outbox::settle`] confirms them and deletes their rows. A writer sends
    /// batch N right after committing it and settles it after committing batch N + 1, so
    /// the deliveries of one batch overlap the next batch's transaction.
    pub fn send(&mut self, staged: &[Staged]) -> Result<()> {
        let mut seq = itoa::Buffer::new();
        for s in staged {
            let seq = seq.format(s.seq).as_bytes();
            let sent = self
                .producer
                .send(&s.topic, &s.message, &[(SEQ_HEADER, seq)]);
            match sent {
                Ok(()) => {}
                // Staged before its topic's limit shrank (`stage` refuses such messages):
                // no retry can send it; the rest go on.
                Err(error) if error.is::<MessageTooLarge>() => {
                    crate::metrics::metrics().dead_lettered("message_too_large");
                    tracing::error!(job = %self.job, writer = self.writer, seq = s.seq,
                        error = %format!("{error:#}"), "outbox message too large for its topic: dropped");
                }
                Err(error) => return Err(error),
            }
        }
        if let Some(last) = staged.last() {
            self.unsettled = self.unsettled.max(Some(last.seq));
        }
        Ok(())
    }

    /// Whether messages were sent and not yet settled.
    pub fn unsettled(&self) -> bool {
        self.unsettled.is_some()
    }

    /// Waits until everything sent is delivered, then deletes the writer's outbox rows up to
    /// the last sent and moves the marks past what was delivered (one transaction). A
    /// failed delivery is an error: the rows stay, and the recovery of the next connection
    /// delivers them.
    pub fn settle(&mut self, client: &mut Client) -> Result<()> {
        let Some(upto) = self.unsettled else {
            return Ok(());
        };
        let delivered = self.producer.confirm()?;
        let mut tx = client.transaction()?;
        tx.execute(
            "DELETE FROM public.dishflow_outbox WHERE job = $1 AND writer = $2 AND seq <= $3",
            &[&self.job, &self.writer, &upto],
        )?;
        self.set_marks(&mut tx, delivered.into_iter().collect())?;
        tx.commit()
            .context("cannot confirm deliveries in public.dishflow_outbox")?;
        self.unsettled = None;
        Ok(())
    }

    /// Before a recovery on a new connection: waits for the delivery reports of whatever
    /// is still in flight (so that reading the topic back sees every message that will
    /// ever arrive) and forgets it — the recovery settles the outbox from its rows.
    fn quiesce(&mut self) -> Result<()> {
        if self.unsettled.take().is_some() {
            // Delivered or failed for good: either way the read-back decides.
            self.producer
                .drain()
                .context("messages still in flight before the recovery")?;
        }
        Ok(())
    }

    /// Stores marks (topic, partition, next offset); `GREATEST` keeps them monotone.
    fn set_marks(&self, tx: &mut Transaction<'_>, marks: Vec<((String, i32), i64)>) -> Result<()> {
        if marks.is_empty() {
            return Ok(());
        }
        let topics: Vec<&str> = marks.iter().map(|((t, _), _)| t.as_str()).collect();
        let partitions: Vec<i32> = marks.iter().map(|((_, p), _)| *p).collect();
        let offsets: Vec<i64> = marks.iter().map(|(_, o)| *o).collect();
        tx.execute(
            "INSERT INTO public.dishflow_outbox_marks AS m (job, writer, topic, partition, next_offset) \
             SELECT $1, $2, * FROM unnest($3::text[], $4::int4[], $5::int8[]) \
             ON CONFLICT (job, writer, topic, partition) \
             DO UPDATE SET next_offset = GREATEST(m.next_offset, excluded.next_offset)",
            &[&self.job, &self.writer, &topics, &partitions, &offsets],
        )?;
        Ok(())
    }

    /// Adds `topic` to the writer's topics, its marks at the topic's current ends, unless
    /// it is one already: for a writer whose topics are known only as messages come (the
    /// re-drive's source topics). Run before staging anything for `topic`.
    pub fn add_topic(&mut self, client: &mut Client, topic: &str) -> Result<()> {
        if self.topics.iter().any(|t| t == topic) {
            return Ok(());
        }
        let marks = (crate::kafka::watermarks(&self.kafka, topic)?.into_iter())
            .map(|(partition, _, high)| ((topic.to_string(), partition), high))
            .collect();
        let mut tx = client.transaction()?;
        self.set_marks(&mut tx, marks)?;
        tx.commit()?;
        self.topics.push(topic.to_string());
        Ok(())
    }

    /// Delivers what a previous instance of this writer left in the outbox (see the module
    /// docs), then sets the marks of the writer's topics to their current ends. Run with the
    /// writer's lock held, before the writer stages anything.
    pub fn recover(&mut self, client: &mut Client) -> Result<()> {
        self.quiesce()?;
        let rows = client.query(
            "SELECT seq, topic, key, value FROM public.dishflow_outbox \
             WHERE job = $1 AND writer = $2 ORDER BY seq",
            &[&self.job, &self.writer],
        )?;
        if !rows.is_empty() {
            let mut left = Vec::new();
            for row in &rows {
                let seq: i64 = row.try_get(0)?;
                let topic: Arc<str> = Arc::from(row.try_get::<_, &str>(1)?);
                let value: Option<Vec<u8>> = row.try_get(3)?;
                let messages = match value.as_deref().and_then(unframe) {
                    Some(messages) => messages,
                    // A row of one message, as versions before the chunked rows wrote.
                    None => vec![KafkaMessage {
                        key: row.try_get(2)?,
                        value,
                        headers: Vec::new(),
                    }],
                };
                for (i, message) in messages.into_iter().enumerate() {
                    left.push(Staged {
                        seq: seq + i as i64,
                        topic: Arc::clone(&topic),
                        message,
                    });
                }
            }
            let upto = left.last().map_or(0, |s| s.seq);
            let left_count = left.len();
            let delivered = self.delivered(client, &left)?;
            let undelivered: Vec<Staged> = left
                .into_iter()
                .filter(|s| !delivered.contains(&s.seq))
                .collect();
            info!(
                job = %self.job,
                writer = self.writer,
                unconfirmed = left_count,
                already_delivered = left_count - undelivered.len(),
                sending = undelivered.len(),
                "outbox: delivering what the previous run left"
            );
            self.publish(client, &undelivered, upto)?;
        }
        let mut marks = Vec::new();
        for topic in &self.topics {
            for (partition, _, high) in crate::kafka::watermarks(&self.kafka, topic)? {
                marks.push(((topic.clone(), partition), high));
            }
        }
        let mut tx = client.transaction()?;
        // After recovery nothing of this writer is in flight: plain assignment (a topic
        // that was re-created starts again at 0).
        tx.execute(
            "DELETE FROM public.dishflow_outbox_marks WHERE job = $1 AND writer = $2",
            &[&self.job, &self.writer],
        )?;
        self.set_marks(&mut tx, marks)?;
        tx.commit()?;
        Ok(())
    }

    /// The sequence numbers among `left` found in their topics after the writer's marks.
    fn delivered(&self, client: &mut Client, left: &[Staged]) -> Result<HashSet<i64>> {
        let wanted: HashSet<i64> = left.iter().map(|s| s.seq).collect();
        let topics: BTreeSet<&str> = left.iter().map(|s| &*s.topic).collect();
        let mut found = HashSet::new();
        for topic in topics {
            let marks = client.query(
                "SELECT partition, next_offset FROM public.dishflow_outbox_marks \
                 WHERE job = $1 AND writer = $2 AND topic = $3",
                &[&self.job, &self.writer, &topic],
            )?;
            let mut start = HashMap::new();
            for row in marks {
                start.insert(row.try_get(0)?, Position::Offset(row.try_get(1)?));
            }
            for message in read_range(&self.kafka, topic, start, READ_BACK_TIMEOUT)? {
                let seq = message
                    .headers
                    .iter()
                    .find(|(k, _)| k == SEQ_HEADER)
                    .and_then(|(_, v)| v.parse::<i64>().ok());
                if let Some(seq) = seq.filter(|s| wanted.contains(s)) {
                    found.insert(seq);
                }
            }
        }
        Ok(found)
    }
}

/// Delivers what writers that no longer exist left in the outboxes of `jobs`: writers
/// numbered `writers` and above, from a run with more workers or connections per worker
/// that stopped with messages committed and not yet confirmed. Their keys now go through
/// other writers; run before any writer stages, so that a key's older messages go first.
/// Each is recovered under its lock (another process doing the same waits, then finds
/// nothing), and its marks are removed.
pub fn recover_retired(kafka: &KafkaArgs, url: &str, jobs: &[&str], writers: usize) -> Result<()> {
    let first_retired = i32::try_from(writers)?;
    let mut client = crate::pg::connect(url)?;
    let retired = client
        .query(
            "SELECT DISTINCT job, writer, topic FROM public.dishflow_outbox \
             WHERE job = ANY($1) AND writer >= $2 ORDER BY job, writer",
            &[&jobs, &first_retired],
        )
        .context("cannot read public.dishflow_outbox")?;
    let mut topics: BTreeMap<(String, i32), Vec<String>> = BTreeMap::new();
    for row in retired {
        topics
            .entry((row.try_get(0)?, row.try_get(1)?))
            .or_default()
            .push(row.try_get(2)?);
    }
    for ((job, writer), topics) in topics {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let mut outbox = Outbox::new(kafka, &job, usize::try_from(writer)?, &topics)?;
        // Its own session: the lock is held until it closes.
        let mut session = crate::pg::connect(url)?;
        outbox.lock(&mut session)?;
        info!(job, writer, "outbox: delivering what a retired writer left");
        outbox.recover(&mut session)?;
    }
    client.execute(
        "DELETE FROM public.dishflow_outbox_marks m WHERE job = ANY($1) AND writer >= $2 \
         AND NOT EXISTS (SELECT FROM public.dishflow_outbox o \
                         WHERE o.job = m.job AND o.writer = m.writer)",
        &[&jobs, &first_retired],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_rows_hold_keys_values_and_their_absence() {
        let messages = vec![
            KafkaMessage {
                key: Some(b"k".to_vec()),
                value: Some(b"{\"a\": 1}".to_vec()),
                headers: Vec::new(),
            },
            KafkaMessage {
                key: Some(b"tombstone".to_vec()),
                value: None,
                headers: Vec::new(),
            },
            KafkaMessage {
                key: None,
                value: Some(Vec::new()),
                headers: vec![
                    (
                        "dishflow.error.reason".to_string(),
                        b"sink_refused".to_vec(),
                    ),
                    ("empty".to_string(), Vec::new()),
                ],
            },
        ];
        let back = unframe(&frame(&messages)).expect("framed");
        let parts = |m: &[KafkaMessage]| -> Vec<_> {
            m.iter()
                .map(|m| (m.key.clone(), m.value.clone(), m.headers.clone()))
                .collect()
        };
        assert_eq!(parts(&back), parts(&messages));
        // A row framed by the previous version: keys and values, no headers.
        let mut v2 = Vec::new();
        put_part(&mut v2, Some(b"k"));
        put_part(&mut v2, None);
        let mut blob = FRAME_MAGIC_V2.to_vec();
        blob.extend_from_slice(&lz4_flex::compress_prepend_size(&v2));
        let old = unframe(&blob).expect("a v2 row");
        assert_eq!(parts(&old), [(Some(b"k".to_vec()), None, Vec::new())]);
        assert!(
            unframe(b"{\"a\": 1}").is_none(),
            "an old single-message row"
        );
        assert!(
            unframe(&frame(&messages)[..30]).is_none(),
            "a truncated blob"
        );
    }
}
