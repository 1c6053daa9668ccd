//! Postgres sink for the promos job: complete draft changes → `public.subscribers_feedback`,
//! then the changes that the table did not already hold → the Kafka notification topic.
//!
//! ```text
//!   SinkWriter::write(updates)  (sorted by time, retractions first)
//!     per (time, key = campaign:client): put (an insertion at that time) or retract
//!     puts → column arrays ─► one statement per CHUNK rows (a key at most once per statement):
//!       INSERT INTO subscribers_feedback (...) SELECT * FROM unnest($1, ..., $10)
//!       ON CONFLICT (adv_campaign_id, client_id) DO UPDATE SET <campaign columns>
//!         WHERE <campaign columns differ>
//!       RETURNING adv_campaign_id, client_id        ← rows inserted or changed
//!     all statements of a batch in one transaction, committed
//!     puts returned (+ retractions) ─► Kafka writer (every delivery confirmed)
//! ```
//!
//! Rows are written in bulk (ten array parameters, not a round trip per row) and
//! idempotently: the unique index on `(adv_campaign_id, client_id)` that `setup` adds turns a
//! re-delivered draft into a no-op. The feedback table is thereby also the ledger of drafts
//! already notified: a replayed topic or a second run over the same topic writes no row and
//! no Kafka message. A replaced campaign updates the campaign columns of its rows in place
//! (`feedback` and `trigger_datetime_created`, the draft's first existence, are kept) and
//! re-sends the draft with the new content.
//!
//! Retractions write no row: feedback rows are never deleted (analysts fill `feedback`);
//! they go to Kafka, where the envelope decides what they become. A draft that comes back
//! with unchanged content (a client who unsubscribed and subscribed again) is re-sent only
//! with `--envelope upsert`, where its tombstone was written in this run: the sink remembers
//! the keys it retracted until their campaign ends. With `append`, a (campaign, client)
//! pair is notified once.
//!
//! Delivery: the row is committed before the Kafka message is sent, so a crash between the
//! two loses that Kafka message (at most once for Kafka, exactly once for the table).

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use dataflows::promos::Draft;
use dataflows::{Diff, Schedule, Time, secs_to_time};
use postgres::Client;

use super::SinkWriter;
use crate::pg;

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

/// Writes feedback rows for drafts, then passes what changed on to `next`.
pub struct FeedbackWriter<N> {
    client: Client,
    upsert: postgres::Statement,
    next: N,
    /// Re-send an unchanged draft after its retraction (upsert envelope).
    resend_after_retraction: bool,
    /// Keys retracted in this run, with the end of their campaign (when they can no longer
    /// come back with unchanged content).
    retracted: HashMap<String, Time>,
    retracted_by_end: Schedule<String>,
}

impl<N> FeedbackWriter<N> {
    /// Connects and prepares the upsert statement. With `resend_after_retraction`, a draft
    /// that comes back after a retraction in this run is passed on even though its row did
    /// not change.
    pub fn new(url: &str, resend_after_retraction: bool, next: N) -> Result<Self> {
        let mut client = pg::connect(url)?;
        let upsert = client
            .prepare(UPSERT)
            .context("cannot prepare the upsert into public.subscribers_feedback")?;
        Ok(FeedbackWriter {
            client,
            upsert,
            next,
            resend_after_retraction,
            retracted: HashMap::new(),
            retracted_by_end: Schedule::default(),
        })
    }
}

/// What happened to one key at one time.
struct Event<'a> {
    draft: &'a Draft,
    time: Time,
    put: bool,
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
            forward: *diff < 0,
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

impl<N: SinkWriter<Draft>> SinkWriter<Draft> for FeedbackWriter<N> {
    fn write(&mut self, updates: &[(Draft, Time, Diff)]) -> Result<()> {
        let mut events = events(updates);
        self.upsert(&mut events)?;
        if let Some(first) = events.first() {
            // Drafts of campaigns that ended before this batch cannot come back unchanged.
            let retracted = &mut self.retracted;
            self.retracted_by_end
                .take_until(first.time.saturating_sub(1), |end, key| {
                    if retracted.get(&key) == Some(&end) {
                        retracted.remove(&key);
                    }
                });
        }
        let mut forward = Vec::new();
        for event in &events {
            if event.put {
                let resend = self.resend_after_retraction
                    && self.retracted.remove(&event.draft.key()).is_some();
                if event.forward || resend {
                    forward.push((event.draft.clone(), event.time, 1));
                }
            } else {
                if self.resend_after_retraction {
                    let end = secs_to_time(event.draft.campaign.adv_campaign_datetime_end);
                    let key = event.draft.key();
                    if self.retracted.insert(key.clone(), end).is_none() {
                        self.retracted_by_end.add(end, key);
                    }
                }
                forward.push((event.draft.clone(), event.time, -1));
            }
        }
        self.next.write(&forward)
    }
}

impl<N> FeedbackWriter<N> {
    /// Writes the rows of the put events in one transaction, a key at most once per
    /// statement; marks the events whose row was inserted or changed as to be forwarded.
    fn upsert(&mut self, events: &mut [Event<'_>]) -> Result<()> {
        let puts: Vec<usize> = (0..events.len()).filter(|&i| events[i].put).collect();
        if puts.is_empty() {
            return Ok(());
        }
        let mut tx = self.client.transaction()?;
        let mut chunk: Vec<usize> = Vec::new();
        let mut keys: HashSet<(&str, &str)> = HashSet::new();
        for i in puts {
            let draft = events[i].draft;
            let key = (
                draft.campaign.adv_campaign_id.as_str(),
                draft.client_id.as_str(),
            );
            if chunk.len() == CHUNK || keys.contains(&key) {
                write_chunk(&mut tx, &self.upsert, events, &chunk)?;
                chunk.clear();
                keys.clear();
            }
            keys.insert(key);
            chunk.push(i);
        }
        write_chunk(&mut tx, &self.upsert, events, &chunk)?;
        tx.commit()
            .context("cannot commit to public.subscribers_feedback")?;
        Ok(())
    }
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
    let mut changed: HashSet<(String, String)> = HashSet::with_capacity(rows.len());
    for row in rows {
        changed.insert((row.try_get(0)?, row.try_get(1)?));
    }
    for &i in chunk {
        let d = events[i].draft;
        events[i].forward =
            changed.contains(&(d.campaign.adv_campaign_id.clone(), d.client_id.clone()));
    }
    Ok(())
}
