//! How a draft is written and sent: complete draft changes → `public.subscribers_feedback`
//! and, through the outbox, the Kafka notification topic — each exactly once. The batch of
//! the promos job's [`TableWriter`](crate::sinks::postgres::TableWriter).
//!
//! ```text
//!   SinkWriter::write(updates)  (sorted by time, retractions first)
//!     per (time, key = campaign:client): put (an insertion at that time) or retract
//!     one transaction:
//!       puts → one statement per CHUNK rows (a key at most once per statement):
//!         INSERT INTO subscribers_feedback (...) SELECT * FROM unnest($1, ..., $10)
//!         ON CONFLICT (adv_campaign_id, client_id) DO UPDATE SET <campaign columns>
//!           WHERE <campaign columns differ>
//!         RETURNING adv_campaign_id, client_id, …     ← rows inserted or changed
//!       outbox rows, then the inserted rows counted per campaign and per hour →
//!         mart.promo_campaigns, mart.promo_hours (the dashboard's; locked just before COMMIT)
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
//! Postgres or Kafka unavailable: the batch is retried with backoff on a new connection,
//! which first recovers the outbox (`sinks::postgres`). A row the table refuses (a
//! constraint of its own) is isolated and dead-lettered by the sink (`sinks::isolate`);
//! other errors that a retry cannot fix (a permission error) are fatal.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, Result};
use clap::ValueEnum;
use dataflows::promos::Draft;
use dataflows::{Diff, Schedule, Time, secs_to_time};
use postgres::{Client, Statement, Transaction};

use crate::sinks::kafka::{Encoder, KafkaMessage};
use crate::sinks::postgres::{CHUNK, TableBatch};

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
RETURNING adv_campaign_id, client_id, xmax = 0";

/// Adds the drafts whose rows a batch inserted to `mart.promo_campaigns`, and moves a
/// replaced campaign to its (new) restaurant.
const COUNT_CAMPAIGNS: &str = "
INSERT INTO mart.promo_campaigns AS p (adv_campaign_id, restaurant_id, drafts, feedback, changed_at)
SELECT c, r, n, 0, now() FROM unnest($1::text[], $2::text[], $3::int8[]) AS u(c, r, n)
ON CONFLICT (adv_campaign_id) DO UPDATE SET
    drafts = p.drafts + excluded.drafts,
    restaurant_id = excluded.restaurant_id,
    changed_at = excluded.changed_at
WHERE excluded.drafts > 0 OR p.restaurant_id <> excluded.restaurant_id";

/// Adds the drafts whose rows a batch inserted to `mart.promo_hours`.
const COUNT_HOURS: &str = "
INSERT INTO mart.promo_hours AS p (hour, drafts, feedback, changed_at)
SELECT to_timestamp(h), n, 0, now() FROM unnest($1::int8[], $2::int8[]) AS u(h, n)
ON CONFLICT (hour) DO UPDATE SET
    drafts = p.drafts + excluded.drafts, changed_at = excluded.changed_at";

/// How retractions (campaign ended, client unsubscribed) appear in the notification topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Envelope {
    /// Only insertions are written; a retraction writes nothing.
    Append,
    /// A retraction writes a tombstone (same key, null value), for compacted topics.
    Upsert,
}

/// Notification drafts: the SPEC's JSON, key `<campaign>:<client>`; retractions are dropped
/// (`append`) or written as tombstones (`upsert`).
pub struct DraftEncoder {
    /// How retractions appear.
    pub envelope: Envelope,
}

impl Encoder<Draft> for DraftEncoder {
    fn encode(&self, draft: &Draft, time: Time, diff: Diff) -> Result<Option<KafkaMessage>> {
        let key = Some(draft.key().into_bytes());
        Ok(match (diff > 0, self.envelope) {
            (true, _) => Some(KafkaMessage {
                key,
                value: Some(serde_json::to_vec(&draft.notification(time))?),
                headers: Vec::new(),
            }),
            (false, Envelope::Upsert) => Some(KafkaMessage {
                key,
                value: None,
                headers: Vec::new(),
            }),
            (false, Envelope::Append) => None,
        })
    }
}

/// The feedback rows of drafts and the notifications of what changed: the promos job's
/// [`TableBatch`].
pub struct FeedbackBatch<E> {
    encoder: E,
    /// The upsert and the summary's statements, prepared on the writer's connection.
    statements: Option<Statements>,
    /// Send every draft of this run, even those whose row was already there (--republish).
    republish: bool,
    /// With the upsert envelope: the keys retracted in this run.
    retractions: Option<Retractions>,
    /// What the last written batch changes in `retractions`, once it commits.
    pending: Option<(Option<Time>, RetractionChanges)>,
    /// What the last written batch adds to the summaries, written before it commits.
    summary: Summary,
}

impl<E> FeedbackBatch<E> {
    /// Notifications encoded by `encoder`. With `resend_after_retraction`, a draft that
    /// comes back after a retraction in this run is sent again even though its row did
    /// not change (the upsert envelope, where the retraction was a tombstone). With
    /// `republish`, every draft of this run is sent (see `--republish`).
    pub fn new(encoder: E, resend_after_retraction: bool, republish: bool) -> Self {
        FeedbackBatch {
            encoder,
            statements: None,
            republish,
            retractions: resend_after_retraction.then(Retractions::default),
            pending: None,
            summary: Summary::default(),
        }
    }
}

impl<E: Encoder<Draft>> TableBatch<Draft> for FeedbackBatch<E> {
    fn name(&self) -> &'static str {
        "feedback sink"
    }

    fn connected(&mut self, client: &mut Client) -> Result<()> {
        let upsert = client
            .prepare(UPSERT)
            .context("cannot prepare the upsert into public.subscribers_feedback")?;
        let campaigns = client
            .prepare(COUNT_CAMPAIGNS)
            .context("cannot prepare the upsert into mart.promo_campaigns")?;
        let hours = client
            .prepare(COUNT_HOURS)
            .context("cannot prepare the upsert into mart.promo_hours")?;
        self.statements = Some(Statements {
            upsert,
            campaigns,
            hours,
        });
        Ok(())
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(Draft, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        let statements = self
            .statements
            .as_ref()
            .context("the upsert is not prepared")?;
        let mut events = events(updates);
        self.summary = upsert_rows(tx, &statements.upsert, &mut events)?;
        if self.republish {
            events.iter_mut().for_each(|e| e.forward |= e.put);
        }
        let (messages, changes) = messages(&self.encoder, self.retractions.as_ref(), &events)?;
        self.pending = Some((events.first().map(|e| e.time), changes));
        Ok(messages)
    }

    fn before_commit(&mut self, tx: &mut Transaction<'_>) -> Result<()> {
        let statements = self
            .statements
            .as_ref()
            .context("the upsert is not prepared")?;
        std::mem::take(&mut self.summary).write(tx, statements)
    }

    fn committed(&mut self) {
        if let (Some(retractions), Some((first, changes))) =
            (self.retractions.as_mut(), self.pending.take())
        {
            retractions.apply(first, changes);
        }
    }
}

/// The keys retracted in this run, until their campaign ends (after which they cannot
/// come back with unchanged content): a draft that comes back after its retraction is sent
/// again although its feedback row did not change.
#[derive(Default)]
pub struct Retractions {
    /// Key → the end of its campaign.
    retracted: HashMap<String, Time>,
    by_end: Schedule<String>,
}

impl Retractions {
    /// Whether `key` is retracted.
    pub fn contains(&self, key: &str) -> bool {
        self.retracted.contains_key(key)
    }

    /// Applies a committed batch's changes, in order; `first` is the batch's first time:
    /// keys of campaigns that ended before it are forgotten.
    pub fn apply(&mut self, first: Option<Time>, changes: RetractionChanges) {
        if let Some(first) = first {
            let retracted = &mut self.retracted;
            self.by_end.take_until(first.saturating_sub(1), |end, key| {
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
                        self.by_end.add(end, key);
                    }
                }
            }
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
    fn push(&mut self, draft: &'a Draft, time: Time) -> Result<()> {
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
        // The later of the start (decode checked it fits) and the second the draft began
        // to exist: beyond int4 only after 2038, when the column has to widen.
        let trigger = i32::try_from(n.trigger_datetime_created)
            .context("trigger_datetime_created does not fit the int4 column")?;
        self.trigger.push(trigger);
        Ok(())
    }
}

/// How a batch changes the keys retracted in this run: (key, `Some(campaign end)` when
/// retracted, `None` when back), in event order.
type RetractionChanges = Vec<(String, Option<Time>)>;

/// The notifications for the events: puts whose row changed (or, with `retractions`,
/// that come back after a retraction in this run — possibly
/// earlier in the same batch), and retractions (which the encoder may drop).
fn messages<E: Encoder<Draft>>(
    encoder: &E,
    retractions: Option<&Retractions>,
    events: &[Event<'_>],
) -> Result<(Vec<KafkaMessage>, RetractionChanges)> {
    let mut messages = Vec::new();
    let mut changes = Vec::new();
    let mut now_retracted: HashMap<String, bool> = HashMap::new();
    for event in events {
        let send = if event.put {
            let mut send = event.forward;
            if let Some(retractions) = retractions {
                let key = event.draft.key();
                let was = now_retracted
                    .get(&key)
                    .copied()
                    .unwrap_or_else(|| retractions.contains(&key));
                send |= was;
                now_retracted.insert(key.clone(), false);
                changes.push((key, None));
            }
            send
        } else {
            if retractions.is_some() {
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

/// The statements of a writer's connection.
struct Statements {
    upsert: Statement,
    campaigns: Statement,
    hours: Statement,
}

/// What a batch's upserts add to `mart.promo_campaigns` and `mart.promo_hours`.
#[derive(Default)]
struct Summary {
    /// Campaign → (its restaurant, drafts whose rows were inserted); a campaign whose rows
    /// only changed (a replacement) is here with 0, to follow a change of restaurant.
    campaigns: BTreeMap<String, (String, i64)>,
    /// Hour (unix seconds) → drafts whose rows were inserted.
    hours: BTreeMap<i64, i64>,
}

impl Summary {
    /// Counts a row the upsert inserted or changed: the draft's campaign, restaurant and
    /// `trigger_datetime_created`.
    fn add(&mut self, campaign: &str, restaurant: &str, trigger: i64, inserted: bool) {
        let drafts = i64::from(inserted);
        match self.campaigns.get_mut(campaign) {
            Some(entry) => {
                if entry.0 != restaurant {
                    entry.0 = restaurant.to_string();
                }
                entry.1 += drafts;
            }
            None => {
                self.campaigns
                    .insert(campaign.to_string(), (restaurant.to_string(), drafts));
            }
        }
        if inserted {
            *self
                .hours
                .entry(trigger - trigger.rem_euclid(3600))
                .or_default() += 1;
        }
    }

    /// Writes the counts, in key order (every writer locks the rows it updates in one
    /// order: campaigns, then hours, each sorted).
    fn write(self, tx: &mut Transaction<'_>, statements: &Statements) -> Result<()> {
        if !self.campaigns.is_empty() {
            let mut columns = (Vec::new(), Vec::new(), Vec::new());
            for (campaign, (restaurant, drafts)) in self.campaigns {
                columns.0.push(campaign);
                columns.1.push(restaurant);
                columns.2.push(drafts);
            }
            tx.execute(&statements.campaigns, &[&columns.0, &columns.1, &columns.2])
                .context("cannot count drafts in mart.promo_campaigns")?;
        }
        if !self.hours.is_empty() {
            let (hours, drafts): (Vec<i64>, Vec<i64>) = self.hours.into_iter().unzip();
            tx.execute(&statements.hours, &[&hours, &drafts])
                .context("cannot count drafts in mart.promo_hours")?;
        }
        Ok(())
    }
}

/// Writes the rows of the put events inside `tx`, a key at most once per statement; marks
/// the events whose row was inserted or changed as to be forwarded. Returns what the rows
/// inserted or changed mean for the summary.
fn upsert_rows(
    tx: &mut postgres::Transaction<'_>,
    upsert: &postgres::Statement,
    events: &mut [Event<'_>],
) -> Result<Summary> {
    let mut summary = Summary::default();
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
            write_chunk(tx, upsert, events, &chunk, &mut summary)?;
            chunk.clear();
            keys.clear();
        }
        keys.insert(key);
        chunk.push(i);
    }
    if !chunk.is_empty() {
        write_chunk(tx, upsert, events, &chunk, &mut summary)?;
    }
    Ok(summary)
}

/// Runs the upsert for the put events `chunk` (distinct keys); sets their `forward` and
/// adds the returned rows to `summary`.
fn write_chunk(
    tx: &mut postgres::Transaction<'_>,
    upsert: &postgres::Statement,
    events: &mut [Event<'_>],
    chunk: &[usize],
    summary: &mut Summary,
) -> Result<()> {
    let mut c = Columns::default();
    for &i in chunk {
        c.push(events[i].draft, events[i].time)?;
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
    // Rows inserted or changed → whether inserted (a new draft, counted in the summary).
    let mut changed: HashMap<(&str, &str), bool> = HashMap::with_capacity(rows.len());
    for row in &rows {
        changed.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
    }
    for (&i, trigger) in chunk.iter().zip(&c.trigger) {
        let d = events[i].draft;
        let campaign = d.campaign.adv_campaign_id.as_str();
        let inserted = changed.get(&(campaign, d.client_id.as_str())).copied();
        events[i].forward = inserted.is_some();
        if let Some(inserted) = inserted {
            let restaurant = d.campaign.restaurant_id.as_str();
            summary.add(campaign, restaurant, i64::from(*trigger), inserted);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retraction_is_remembered_until_the_key_comes_back_or_its_campaign_ends() {
        let mut r = Retractions::default();
        r.apply(
            Some(10),
            vec![("a".into(), Some(100)), ("b".into(), Some(50))],
        );
        assert!(r.contains("a") && r.contains("b"));
        // "a" comes back: forgotten; "b" is still retracted.
        r.apply(Some(20), vec![("a".into(), None)]);
        assert!(!r.contains("a") && r.contains("b"));
        // A batch after the end of "b"'s campaign: "b" can no longer come back unchanged.
        r.apply(Some(51), Vec::new());
        assert!(!r.contains("b"));
        // Retracted again with a later end: the earlier end does not forget it.
        r.apply(Some(60), vec![("a".into(), Some(70))]);
        r.apply(Some(65), vec![("a".into(), None), ("a".into(), Some(300))]);
        r.apply(Some(80), Vec::new());
        assert!(r.contains("a"), "its campaign now ends at 300");
        r.apply(Some(301), Vec::new());
        assert!(!r.contains("a"));
    }
}
