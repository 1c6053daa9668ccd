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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use postgres::{Client, Transaction};
use tracing::info;

use super::kafka::{KafkaMessage, Producer};
use crate::cli::KafkaArgs;
use crate::sources::kafka::{Position, read_range};

/// Header carrying a message's outbox sequence number (decimal).
pub const SEQ_HEADER: &str = "dishflow.outbox.seq";

/// How long a recovery may take to read a topic back.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a second instance of a writer waits for the first to go away.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A message committed to the outbox, not yet confirmed delivered.
pub struct Staged {
    seq: i64,
    topic: String,
    message: KafkaMessage,
}

/// One writer's outbox: its Kafka producer and its rows in `dishflow_outbox`.
pub struct Outbox {
    job: String,
    writer: i32,
    kafka: KafkaArgs,
    producer: Producer,
    /// Topics this writer produces to (their marks are set at startup).
    topics: Vec<String>,
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
        })
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
    /// [`Outbox::publish`] once `tx` is committed.
    pub fn stage(
        &self,
        tx: &mut Transaction<'_>,
        topic: &str,
        messages: Vec<KafkaMessage>,
    ) -> Result<Vec<Staged>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let count = i64::try_from(messages.len())?;
        let mut seqs: Vec<i64> = tx
            .query(
                "SELECT nextval('public.dishflow_outbox_seq') FROM generate_series(1::int8, $1::int8)",
                &[&count],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        seqs.sort_unstable();
        let keys: Vec<Option<&[u8]>> = messages.iter().map(|m| m.key.as_deref()).collect();
        let values: Vec<Option<&[u8]>> = messages.iter().map(|m| m.value.as_deref()).collect();
        tx.execute(
            "INSERT INTO public.dishflow_outbox (job, writer, topic, seq, key, value) \
             SELECT $1, $2, $3, * FROM unnest($4::int8[], $5::bytea[], $6::bytea[])",
            &[&self.job, &self.writer, &topic, &seqs, &keys, &values],
        )
        .context("cannot write to public.dishflow_outbox")?;
        Ok(seqs
            .into_iter()
            .zip(messages)
            .map(|(seq, message)| Staged {
                seq,
                topic: topic.to_string(),
                message,
            })
            .collect())
    }

    /// Produces `staged` (committed to the outbox), waits for every delivery, then deletes
    /// the writer's outbox rows up to `upto` (at least the last of `staged`) and moves the
    /// marks past what was delivered.
    pub fn publish(&self, client: &mut Client, staged: &[Staged], upto: i64) -> Result<()> {
        for s in staged {
            let seq = s.seq.to_string();
            self.producer
                .send(&s.topic, &s.message, &[(SEQ_HEADER, seq.as_bytes())])?;
        }
        let delivered = if staged.is_empty() {
            HashMap::new()
        } else {
            self.producer.confirm()?
        };
        let upto = staged.last().map_or(upto, |s| s.seq.max(upto));
        let mut tx = client.transaction()?;
        tx.execute(
            "DELETE FROM public.dishflow_outbox WHERE job = $1 AND writer = $2 AND seq <= $3",
            &[&self.job, &self.writer, &upto],
        )?;
        self.set_marks(&mut tx, delivered.into_iter().collect())?;
        tx.commit()
            .context("cannot confirm deliveries in public.dishflow_outbox")?;
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

    /// Delivers what a previous instance of this writer left in the outbox (see the module
    /// docs), then sets the marks of the writer's topics to their current ends. Run with the
    /// writer's lock held, before the writer stages anything.
    pub fn recover(&self, client: &mut Client) -> Result<()> {
        let rows = client.query(
            "SELECT seq, topic, key, value FROM public.dishflow_outbox \
             WHERE job = $1 AND writer = $2 ORDER BY seq",
            &[&self.job, &self.writer],
        )?;
        if !rows.is_empty() {
            let mut left = Vec::with_capacity(rows.len());
            for row in &rows {
                left.push(Staged {
                    seq: row.try_get(0)?,
                    topic: row.try_get(1)?,
                    message: KafkaMessage {
                        key: row.try_get(2)?,
                        value: row.try_get(3)?,
                        headers: Vec::new(),
                    },
                });
            }
            let upto = left.last().map_or(0, |s| s.seq);
            let delivered = self.delivered(client, &left)?;
            let undelivered: Vec<Staged> = left
                .into_iter()
                .filter(|s| !delivered.contains(&s.seq))
                .collect();
            info!(
                job = %self.job,
                writer = self.writer,
                unconfirmed = rows.len(),
                already_delivered = rows.len() - undelivered.len(),
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
        let topics: BTreeSet<&str> = left.iter().map(|s| s.topic.as_str()).collect();
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
