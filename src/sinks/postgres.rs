//! Postgres sink for the promos job: complete draft changes → `public.subscribers_feedback`
//! and, through the outbox, the Kafka notification topic — each exactly once.
//!
//! ```text
//!   SinkWriter::write(updates)  (sorted by time, retractions first)
//!     per (time, key = campaign:client): put (an insertion at that time) or retract
//!     one transaction:
//!       puts → one statement per CHUNK rows (a key at most once per statement):
//!         INSERT INTO subscribers_feedback (...) SELECT * FROM unnest($1, ..., $10)
//!         ON CONFLICT (adv_campaign_id, client_id) DO UPDATE SET <campaign columns>
//!           WHERE <campaign columns differ>
//!         RETURNING adv_campaign_id, client_id        ← rows inserted or changed
//!       messages for the puts returned (+ retractions, by the envelope) → dishflow_outbox
//!     COMMIT, then the outbox produces them and confirms (see `sinks::outbox`)
//! ```
//!
//! Rows are written in bulk (ten array parameters, not a round trip per row) and
//! idempotently: the unique index on `(adv_campaign_id, client_id)` that `setup` adds turns a
//! re-delivered draft into a no-op. The feedback table is thereby also the ledger of drafts
//! already notified: a replayed topic, a restarted job or a second run over the same topic
//! writes no row and no Kafka message. A replaced campaign updates the campaign columns of
//! its rows in place (`feedback` and `trigger_datetime_created`, the draft's first existence,
//! are kept) and re-sends the draft with the new content.
//!
//! Retractions write no row: feedback rows are never deleted (analysts fill `feedback`);
//! they go to Kafka, where the envelope decides what they become. A draft that comes back
//! with unchanged content (a client who unsubscribed and subscribed again) is re-sent only
//! with `--envelope upsert`, where its tombstone was written in this run: the sink remembers
//! the keys it retracted until their campaign ends. With `append`, a (campaign, client)
//! pair is notified once.
//!
//! Postgres or Kafka unavailable: the batch is retried with backoff (`crate::retry`) on a new
//! connection, which first recovers the outbox. A row the table refuses (a constraint of its
//! own) is isolated and dead-lettered by the sink (`sinks::isolate`); other errors that a
//! retry cannot fix (a permission error) are fatal.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use dataflows::promos::Draft;
use dataflows::{Diff, Schedule, Time, secs_to_time};
use postgres::Client;

use super::SinkWriter;
use super::kafka::{Encoder, KafkaMessage};
use super::outbox::{Outbox, Staged};
use crate::pg;
use crate::retry::Backoff;
use tracing::debug;

/// Rows per statement.
pub const CHUNK: usize = 10_000;

const UPSERT: &str = "
INSERT INTO public.subscribers_feedback AS f (
    restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner,
    adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end,
    datetime_created, client_id, trigger_datetime_created)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::int8[], $7::int8[], $8::int8[], $9::text[], $10::int4[])
ON CONFLICT (adv_campaign_id, client_id) DO UPDATE SET
    restaurant_id = excluded.restaurant_id,
    adv_campaign_content = excluded.adv_campaign_content,
    adv_campaign_owner = excluded.adv_campaign_owner,
    adv_campaign_owner_contact = excluded.adv_campaign_owner_contact,
    adv_campaign_datetime_start = excluded.adv_campaign_datetime_start,
    adv_campaign_datetime_end = excluded.adv_campaign_datetime_end,
    datetime_created = excluded.datetime_created
WHERE (f.restaurant_id, f.adv_campaign_content, f.adv_campaign_owner,
       f.adv_campaign_owner_contact, f.adv_campaign_datetime_start,
       f.adv_campaign_datetime_end, f.datetime_created)
      IS DISTINCT FROM
      (excluded.restaurant_id, excluded.adv_campaign_content, excluded.adv_campaign_owner,
       excluded.adv_campaign_owner_contact, excluded.adv_campaign_datetime_start,
       excluded.adv_campaign_datetime_end, excluded.datetime_created)
RETURNING adv_campaign_id, client_id";

/// Writes feedback rows for drafts, and the notifications of what changed through the
/// outbox.
pub struct FeedbackWriter<E> {
    url: String,
    /// The connection (writer lock held, outbox recovered) and the prepared upsert; `None`
    /// after a failure, until the next attempt reconnects.
    connection: Option<(Client, postgres::Statement)>,
    outbox: Outbox,
    topic: String,
    encoder: E,
    /// Re-send an unchanged draft after its retraction (upsert envelope).
    resend_after_retraction: bool,
    /// Send every draft of this run, even those whose row was already there (--republish).
    republish: bool,
    /// Keys retracted in this run, with the end of their campaign (when they can no longer
    /// come back with unchanged content).
    retracted: HashMap<String, Time>,
    retracted_by_end: Schedule<String>,
    backoff: Backoff,
}

impl<E> FeedbackWriter<E> {
    /// Connects (taking the outbox writer's lock and delivering what a previous run left in
    /// its outbox). Notifications go to `topic`, encoded by `encoder`. With
    /// `resend_after_retraction`, a draft that comes back after a retraction in this run is
    /// sent again even though its row did not change.
    pub fn new(
        url: &str,
        outbox: Outbox,
        topic: &str,
        encoder: E,
        resend_after_retraction: bool,
    ) -> Result<Self> {
        let mut writer = FeedbackWriter {
            url: url.to_string(),
            connection: None,
            outbox,
            topic: topic.to_string(),
            encoder,
            resend_after_retraction,
            republish: false,
            retracted: HashMap::new(),
            retracted_by_end: Schedule::default(),
            backoff: Backoff::new("feedback sink"),
        };
        // The startup checks have reached Postgres already: a failure now is an outage
        // (a server restarting), waited out like one during the run.
        retry_transient(
            &mut writer,
            |w| &mut w.backoff,
            Self::disconnect,
            Self::connect,
        )?;
        Ok(writer)
    }

    /// Sends every draft of this run to Kafka, also those the table already holds: for
    /// deliberately re-publishing to a new topic (`--republish`).
    pub fn republish(mut self, republish: bool) -> Self {
        self.republish = republish;
        self
    }

    /// Drops the connection (after a failure).
    fn disconnect(&mut self) {
        self.connection = None;
    }

    /// Makes sure there is a connection; returns whether a new one was made (the outbox
    /// recovered, i.e. everything committed so far is delivered).
    fn connect(&mut self) -> Result<bool> {
        if self.connection.is_some() {
            return Ok(false);
        }
        let mut client = pg::connect(&self.url)?;
        self.outbox.lock(&mut client)?;
        self.outbox.recover(&mut client)?;
        let upsert = client
            .prepare(UPSERT)
            .context("cannot prepare the upsert into public.subscribers_feedback")?;
        self.connection = Some((client, upsert));
        Ok(true)
    }
}

/// Whether a retry can fix `error`: connection problems, a server shutting down or out of
/// resources, serialization failures, and anything from Kafka. SQL errors such as a
/// constraint or permission violation are permanent.
pub fn transient(error: &anyhow::Error) -> bool {
    for cause in error.chain() {
        if let Some(pg) = cause.downcast_ref::<postgres::Error>() {
            if let Some(code) = pg.code() {
                return matches!(&code.code()[..2], "08" | "57" | "53" | "40" | "58");
            }
            // No SQLSTATE: a connection problem, or a client-side (de)serialization bug.
            let text = pg.to_string();
            return pg.is_closed()
                || text.starts_with("error connecting")
                || text.starts_with("error communicating")
                || text.starts_with("timeout");
        }
    }
    true
}

/// Runs `attempt` on `writer` until it succeeds or fails with an error a retry cannot fix
/// (see [`transient`]); after each transient failure, `reset` drops what broke (the
/// connection) and the writer's `backoff` waits.
pub fn retry_transient<W, T>(
    writer: &mut W,
    backoff: fn(&mut W) -> &mut Backoff,
    reset: fn(&mut W),
    mut attempt: impl FnMut(&mut W) -> Result<T>,
) -> Result<T> {
    loop {
        match attempt(writer) {
            Ok(value) => {
                backoff(writer).succeeded();
                return Ok(value);
            }
            Err(error) if transient(&error) => {
                reset(writer);
                backoff(writer).failed(&error);
            }
            Err(error) => return Err(error),
        }
    }
}

/// What happened to one key at one time.
struct Event<'a> {
    draft: &'a Draft,
    time: Time,
    /// An insertion at `time` (else a retraction).
    put: bool,
    /// A put whose row was inserted or changed (set by the upsert).
    forward: bool,
}

/// Collapses consolidated updates (sorted by time) into one event per (time, key): a put
/// if the key has an insertion at that time, else a retraction.
fn events(updates: &[(Draft, Time, Diff)]) -> Vec<Event<'_>> {
    let mut events: Vec<Event<'_>> = Vec::with_capacity(updates.len());
    let mut at_time: HashMap<(&str, &str), usize> = HashMap::new();
    let mut current = None;
    for (draft, time, diff) in updates {
        if current != Some(*time) {
            current = Some(*time);
            at_time.clear();
        }
        let key = (
            draft.campaign.adv_campaign_id.as_str(),
            draft.client_id.as_str(),
        );
        let event = Event {
            draft,
            time: *time,
            put: *diff > 0,
            forward: false,
        };
        match at_time.get(&key) {
            // Retractions come first within a time: an insertion of the key replaces it.
            Some(&i) if event.put => events[i] = event,
            Some(_) => {}
            None => {
                at_time.insert(key, events.len());
                events.push(event);
            }
        }
    }
    events
}

#[derive(Default)]
struct Columns<'a> {
    restaurant_id: Vec<&'a str>,
    adv_campaign_id: Vec<&'a str>,
    content: Vec<&'a str>,
    owner: Vec<&'a str>,
    owner_contact: Vec<&'a str>,
    start: Vec<i64>,
    end: Vec<i64>,
    created: Vec<i64>,
    client_id: Vec<&'a str>,
    trigger: Vec<i32>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, draft: &'a Draft, time: Time) {
        let n = draft.notification(time);
        self.restaurant_id.push(n.restaurant_id);
        self.adv_campaign_id.push(n.adv_campaign_id);
        self.content.push(n.adv_campaign_content);
        self.owner.push(n.adv_campaign_owner);
        self.owner_contact.push(n.adv_campaign_owner_contact);
        self.start.push(n.adv_campaign_datetime_start);
        self.end.push(n.adv_campaign_datetime_end);
        self.created.push(n.datetime_created);
        self.client_id.push(n.client_id);
        // Fits: it is the max of the arrival second and the start, which decode checked.
        self.trigger
            .push(i32::try_from(n.trigger_datetime_created).unwrap_or(i32::MAX));
    }
}

impl<E: Encoder<Draft>> SinkWriter<Draft> for FeedbackWriter<E> {
    fn flush(&mut self) -> Result<()> {
        retry_transient(self, |w| &mut w.backoff, Self::disconnect, Self::settle)
    }

    fn write(&mut self, updates: &[(Draft, Time, Diff)]) -> Result<()> {
        let mut events = events(updates);
        let mut staged: Option<Vec<Staged>> = None;
        retry_transient(
            self,
            |w| &mut w.backoff,
            Self::disconnect,
            |w| w.attempt(&mut events, &mut staged),
        )
    }
}

impl<E: Encoder<Draft>> FeedbackWriter<E> {
    /// One attempt at a batch: unless already committed (`staged`), upsert the rows and
    /// stage the messages in one transaction; then settle the previous batch's messages
    /// and send this batch's.
    fn attempt(
        &mut self,
        events: &mut [Event<'_>],
        staged: &mut Option<Vec<Staged>>,
    ) -> Result<()> {
        let recovered = self.connect()?;
        let Some((client, upsert)) = self.connection.as_mut() else {
            anyhow::bail!("not connected");
        };
        let staged = match staged {
            // The recovery delivered the committed batch.
            Some(_) if recovered => return Ok(()),
            Some(staged) => staged,
            None => {
                let started = std::time::Instant::now();
                let mut tx = client.transaction()?;
                upsert_rows(&mut tx, upsert, events)?;
                let rows_ms = started.elapsed().as_millis() as u64;
                if self.republish {
                    events.iter_mut().for_each(|e| e.forward |= e.put);
                }
                let (messages, changes) = messages(
                    &self.encoder,
                    self.resend_after_retraction,
                    &self.retracted,
                    events,
                )?;
                let s = self.outbox.stage(&mut tx, &self.topic, messages)?;
                let staged_ms = started.elapsed().as_millis() as u64;
                tx.commit()
                    .context("cannot commit to public.subscribers_feedback")?;
                debug!(
                    events = events.len(),
                    messages = s.len(),
                    rows_ms,
                    staged_ms,
                    committed_ms = started.elapsed().as_millis() as u64,
                    "feedback batch committed"
                );
                self.remember_retractions(events.first().map(|e| e.time), changes);
                staged.insert(s)
            }
        };
        let Some((client, _)) = self.connection.as_mut() else {
            anyhow::bail!("not connected");
        };
        // The previous batch's messages were delivered meanwhile; this batch's go now.
        let started = std::time::Instant::now();
        self.outbox.settle(client)?;
        self.outbox.send(staged)?;
        debug!(
            messages = staged.len(),
            settled_ms = started.elapsed().as_millis() as u64,
            "feedback batch sent, previous one settled"
        );
        Ok(())
    }

    /// Settles what was sent (see [`Outbox::settle`]), unless a new connection's recovery
    /// did.
    fn settle(&mut self) -> Result<()> {
        if !self.outbox.unsettled() || self.connect()? {
            return Ok(());
        }
        match self.connection.as_mut() {
            Some((client, _)) => self.outbox.settle(client),
            None => Ok(()),
        }
    }

    /// Applies a committed batch's changes (first time `first`) to the keys retracted in
    /// this run.
    fn remember_retractions(&mut self, first: Option<Time>, changes: RetractionChanges) {
        if let Some(first) = first {
            // Drafts of campaigns that ended before this batch cannot come back unchanged.
            let retracted = &mut self.retracted;
            self.retracted_by_end
                .take_until(first.saturating_sub(1), |end, key| {
                    if retracted.get(&key) == Some(&end) {
                        retracted.remove(&key);
                    }
                });
        }
        for (key, change) in changes {
            match change {
                None => {
                    self.retracted.remove(&key);
                }
                Some(end) => {
                    if self.retracted.insert(key.clone(), end).is_none() {
                        self.retracted_by_end.add(end, key);
                    }
                }
            }
        }
    }
}

/// How a batch changes the keys retracted in this run: (key, `Some(campaign end)` when
/// retracted, `None` when back), in event order.
type RetractionChanges = Vec<(String, Option<Time>)>;

/// The notifications for the events: puts whose row changed (or, with
/// `resend_after_retraction`, that come back after a retraction in this run — possibly
/// earlier in the same batch), and retractions (which the encoder may drop).
fn messages<E: Encoder<Draft>>(
    encoder: &E,
    resend_after_retraction: bool,
    retracted: &HashMap<String, Time>,
    events: &[Event<'_>],
) -> Result<(Vec<KafkaMessage>, RetractionChanges)> {
    let mut messages = Vec::new();
    let mut changes = Vec::new();
    let mut now_retracted: HashMap<String, bool> = HashMap::new();
    for event in events {
        let send = if event.put {
            let mut send = event.forward;
            if resend_after_retraction {
                let key = event.draft.key();
                let was = now_retracted
                    .get(&key)
                    .copied()
                    .unwrap_or_else(|| retracted.contains_key(&key));
                send |= was;
                now_retracted.insert(key.clone(), false);
                changes.push((key, None));
            }
            send
        } else {
            if resend_after_retraction {
                let key = event.draft.key();
                let end = secs_to_time(event.draft.campaign.adv_campaign_datetime_end);
                now_retracted.insert(key.clone(), true);
                changes.push((key, Some(end)));
            }
            true
        };
        if send {
            let diff = if event.put { 1 } else { -1 };
            messages.extend(encoder.encode(event.draft, event.time, diff)?);
        }
    }
    Ok((messages, changes))
}

/// Writes the rows of the put events inside `tx`, a key at most once per statement; marks
/// the events whose row was inserted or changed as to be forwarded.
fn upsert_rows(
    tx: &mut postgres::Transaction<'_>,
    upsert: &postgres::Statement,
    events: &mut [Event<'_>],
) -> Result<()> {
    let puts: Vec<usize> = (0..events.len()).filter(|&i| events[i].put).collect();
    let mut chunk: Vec<usize> = Vec::new();
    let mut keys: HashSet<(&str, &str)> = HashSet::new();
    for i in puts {
        let draft = events[i].draft;
        let key = (
            draft.campaign.adv_campaign_id.as_str(),
            draft.client_id.as_str(),
        );
        if chunk.len() == CHUNK || keys.contains(&key) {
            write_chunk(tx, upsert, events, &chunk)?;
            chunk.clear();
            keys.clear();
        }
        keys.insert(key);
        chunk.push(i);
    }
    if !chunk.is_empty() {
        write_chunk(tx, upsert, events, &chunk)?;
    }
    Ok(())
}

/// Runs the upsert for the put events `chunk` (distinct keys); sets their `forward`.
fn write_chunk(
    tx: &mut postgres::Transaction<'_>,
    upsert: &postgres::Statement,
    events: &mut [Event<'_>],
    chunk: &[usize],
) -> Result<()> {
    let mut c = Columns::default();
    for &i in chunk {
        c.push(events[i].draft, events[i].time);
    }
    let rows = tx
        .query(
            upsert,
            &[
                &c.restaurant_id,
                &c.adv_campaign_id,
                &c.content,
                &c.owner,
                &c.owner_contact,
                &c.start,
                &c.end,
                &c.created,
                &c.client_id,
                &c.trigger,
            ],
        )
        .context("cannot write to public.subscribers_feedback")?;
    let mut changed: HashSet<(&str, &str)> = HashSet::with_capacity(rows.len());
    for row in &rows {
        changed.insert((row.try_get(0)?, row.try_get(1)?));
    }
    for &i in chunk {
        let d = events[i].draft;
        events[i].forward =
            changed.contains(&(d.campaign.adv_campaign_id.as_str(), d.client_id.as_str()));
    }
    Ok(())
}
