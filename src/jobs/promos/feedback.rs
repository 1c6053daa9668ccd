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
//!       --envelope upsert: the batch's keys in dishflow_draft_keys (live or tombstoned)
//!         → which puts to send again, which retractions to tombstone; their new states
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
//! they go to Kafka, where the envelope decides what they become. With `append`, nothing,
//! and a (campaign, client) pair is notified once. With `upsert`, a tombstone, and a draft
//! that comes back with unchanged content after it (a client who unsubscribed and
//! subscribed again) is sent again. Which keys are live and which tombstoned is kept in
//! `public.dishflow_draft_keys`, in the transaction of the rows (a tombstoned key until its
//! campaign ends): it holds across restarts, and a restart that rebuilds the whole state
//! retracts the live drafts it no longer has (`live_drafts`: their campaign ended or their
//! subscriber left while the job was down), which become tombstones then.
//!
//! Postgres or Kafka unavailable: the batch is retried with backoff on a new connection,
//! which first recovers the outbox (`sinks::postgres`). A row the table refuses (a
//! constraint of its own) is isolated and dead-lettered by the sink (`sinks::isolate`);
//! other errors that a retry cannot fix (a permission error) are fatal.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::ValueEnum;
use dataflows::promos::{Campaign, CampaignFields, Draft};
use dataflows::{Diff, Time, secs_to_time, time_to_secs};
use hashbrown::{HashMap, HashSet};
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

/// The stored states of a batch's keys (see [`KeyState`]), by their (1-based) position.
const SELECT_KEYS: &str = "
SELECT u.i, k.live, k.campaign_end
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(campaign, client, i)
JOIN public.dishflow_draft_keys k ON k.adv_campaign_id = u.campaign AND k.client_id = u.client";

/// Stores the new states of keys (distinct).
const UPSERT_KEYS: &str = "
INSERT INTO public.dishflow_draft_keys (adv_campaign_id, client_id, live, campaign_end)
SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::int8[])
ON CONFLICT (adv_campaign_id, client_id) DO UPDATE SET
    live = excluded.live, campaign_end = excluded.campaign_end";

/// Forgets keys (their campaign ended).
const DELETE_KEYS: &str = "
DELETE FROM public.dishflow_draft_keys
WHERE (adv_campaign_id, client_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))";

/// Forgets tombstoned keys whose campaign ended (no draft of it can come back unchanged),
/// skipping rows another writer has locked: it never waits, so it never deadlocks.
const PRUNE_KEYS: &str = "
DELETE FROM public.dishflow_draft_keys WHERE ctid IN (
    SELECT ctid FROM public.dishflow_draft_keys WHERE NOT live AND campaign_end <= $1
    LIMIT 10000 FOR UPDATE SKIP LOCKED)";

/// The live drafts as last written: feedback rows of live keys.
const LIVE_DRAFTS: &str = "
SELECT f.restaurant_id, f.adv_campaign_id, f.adv_campaign_content, f.adv_campaign_owner,
       f.adv_campaign_owner_contact, f.adv_campaign_datetime_start,
       f.adv_campaign_datetime_end, f.datetime_created, f.client_id
FROM public.dishflow_draft_keys k
JOIN public.subscribers_feedback f USING (adv_campaign_id, client_id)
WHERE k.live
ORDER BY f.adv_campaign_id";

/// How often (logical time) a writer forgets the tombstoned keys of ended campaigns.
const PRUNE_EVERY: Time = 60_000;

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
                value: Some(draft.notification(time).to_json()?),
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
    /// With the upsert envelope: keep the keys' states in `dishflow_draft_keys`.
    upsert_envelope: bool,
    /// The first batch time at which the writer next prunes tombstoned keys.
    next_prune: Time,
    /// What the last written batch adds to the summaries, written before it commits.
    summary: Summary,
}

impl<E> FeedbackBatch<E> {
    /// Notifications encoded by `encoder`. With `upsert_envelope`, the keys' states are kept
    /// (see the module docs): a retraction of a live draft is sent (a tombstone), and a draft
    /// that comes back after its tombstone is sent again even though its row did not
    /// change. With `republish`, every draft of this run is sent (see `--republish`).
    pub fn new(encoder: E, upsert_envelope: bool, republish: bool) -> Self {
        FeedbackBatch {
            encoder,
            statements: None,
            republish,
            upsert_envelope,
            next_prune: 0,
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
        let keys = if self.upsert_envelope {
            let mut prepare = |sql: &str| {
                client
                    .prepare(sql)
                    .context("cannot prepare a statement on public.dishflow_draft_keys")
            };
            Some(KeyStatements {
                select: prepare(SELECT_KEYS)?,
                upsert: prepare(UPSERT_KEYS)?,
                delete: prepare(DELETE_KEYS)?,
                prune: prepare(PRUNE_KEYS)?,
            })
        } else {
            None
        };
        self.statements = Some(Statements {
            upsert,
            campaigns,
            hours,
            keys,
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
        let Some(keys) = &statements.keys else {
            return messages(&self.encoder, None, &events);
        };
        if let Some(first) = events.first().map(|e| e.time)
            && first >= self.next_prune
        {
            tx.execute(&keys.prune, &[&time_to_secs(first)])
                .context("cannot prune public.dishflow_draft_keys")?;
            self.next_prune = first + PRUNE_EVERY;
        }
        let before = keys.read(tx, &events)?;
        let mut states = before.clone();
        let messages = messages(&self.encoder, Some(&mut states), &events)?;
        keys.write(tx, &before, &states)?;
        Ok(messages)
    }

    fn before_commit(&mut self, tx: &mut Transaction<'_>) -> Result<()> {
        let statements = self
            .statements
            .as_ref()
            .context("the upsert is not prepared")?;
        std::mem::take(&mut self.summary).write(tx, statements)
    }
}

/// What the notification topic last says of a draft key: a draft (`live`) or a tombstone,
/// with the campaign's end (unix seconds); `None`: nothing kept (never sent with the upsert
/// envelope, or its campaign ended).
type KeyState = Option<(bool, i64)>;

/// A draft key: (campaign, client).
type Key<'a> = (&'a str, &'a str);

/// The statements on `public.dishflow_draft_keys` of a writer's connection.
struct KeyStatements {
    select: Statement,
    upsert: Statement,
    delete: Statement,
    prune: Statement,
}

impl KeyStatements {
    /// The stored state of every key of `events`.
    fn read<'a>(
        &self,
        tx: &mut Transaction<'_>,
        events: &[Event<'a>],
    ) -> Result<HashMap<Key<'a>, KeyState>> {
        let mut states: HashMap<Key<'a>, KeyState> = HashMap::with_capacity(events.len());
        let (mut campaigns, mut clients) = (Vec::new(), Vec::new());
        for event in events {
            let key = event.key();
            if states.insert(key, None).is_none() {
                campaigns.push(key.0);
                clients.push(key.1);
            }
        }
        let rows = tx
            .query(&self.select, &[&campaigns, &clients])
            .context("cannot read public.dishflow_draft_keys")?;
        for row in &rows {
            let position: i64 = row.try_get(0)?;
            let i = usize::try_from(position - 1)?;
            states.insert(
                (campaigns[i], clients[i]),
                Some((row.try_get(1)?, row.try_get(2)?)),
            );
        }
        Ok(states)
    }

    /// Stores the states that differ from `before`.
    fn write(
        &self,
        tx: &mut Transaction<'_>,
        before: &HashMap<Key<'_>, KeyState>,
        after: &HashMap<Key<'_>, KeyState>,
    ) -> Result<()> {
        let (mut put, mut gone) = ((vec![], vec![], vec![], vec![]), (vec![], vec![]));
        for (key, state) in after {
            if before.get(key) == Some(state) {
                continue;
            }
            match state {
                Some((live, end)) => {
                    put.0.push(key.0);
                    put.1.push(key.1);
                    put.2.push(*live);
                    put.3.push(*end);
                }
                None => {
                    gone.0.push(key.0);
                    gone.1.push(key.1);
                }
            }
        }
        if !put.0.is_empty() {
            tx.execute(&self.upsert, &[&put.0, &put.1, &put.2, &put.3])
                .context("cannot write public.dishflow_draft_keys")?;
        }
        if !gone.0.is_empty() {
            tx.execute(&self.delete, &[&gone.0, &gone.1])
                .context("cannot delete from public.dishflow_draft_keys")?;
        }
        Ok(())
    }
}

/// The live drafts as last written (the upsert envelope's keys that are live, with their
/// feedback rows), for a start that rebuilds the whole state: retracted at the start time,
/// they cancel the drafts that are still there and retract (tombstone) those that are not.
pub fn live_drafts(url: &str) -> Result<Vec<Draft>> {
    let mut client = crate::pg::connect(url)?;
    let rows = client
        .query(LIVE_DRAFTS, &[])
        .context("cannot read the live drafts (public.dishflow_draft_keys)")?;
    let mut drafts = Vec::with_capacity(rows.len());
    let mut campaign: Option<Arc<Campaign>> = None;
    for row in rows {
        let read = CampaignFields {
            restaurant_id: row.try_get(0)?,
            adv_campaign_id: row.try_get(1)?,
            adv_campaign_content: row.try_get(2)?,
            adv_campaign_owner: row.try_get(3)?,
            adv_campaign_owner_contact: row.try_get(4)?,
            adv_campaign_datetime_start: row.try_get(5)?,
            adv_campaign_datetime_end: row.try_get(6)?,
            datetime_created: row.try_get(7)?,
        };
        // Rows come by campaign: the drafts of one campaign share it, as the job's do.
        let shared = match campaign.take() {
            Some(last) if last.fields() == read => last,
            _ => Arc::new(Campaign::from(read)),
        };
        drafts.push(Draft {
            campaign: shared.clone(),
            client_id: Arc::from(row.try_get::<_, &str>(8)?),
        });
        campaign = Some(shared);
    }
    Ok(drafts)
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

impl<'a> Event<'a> {
    fn key(&self) -> Key<'a> {
        (self.draft.campaign.adv_campaign_id(), &self.draft.client_id)
    }
}

/// Collapses consolidated updates (sorted by time) into one event per (time, key): a put
/// if the key has an insertion at that time, else a retraction.
fn events(updates: &[(Draft, Time, Diff)]) -> Vec<Event<'_>> {
    let mut events: Vec<Event<'_>> = Vec::with_capacity(updates.len());
    let mut at_time: HashMap<Key<'_>, usize> = HashMap::new();
    let mut current = None;
    for (draft, time, diff) in updates {
        if current != Some(*time) {
            current = Some(*time);
            at_time.clear();
        }
        let event = Event {
            draft,
            time: *time,
            put: *diff > 0,
            forward: false,
        };
        let key = event.key();
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

/// The notifications for the events: puts whose row changed and retractions (which the
/// encoder may drop). With `states` (the upsert envelope), a put is also sent when its key
/// was tombstoned (a draft that comes back unchanged), a retraction only when its key is not
/// tombstoned already, and `states` follows the events: live after a put, tombstoned after a
/// retraction until the campaign's end, forgotten from then on.
fn messages<'a, E: Encoder<Draft>>(
    encoder: &E,
    mut states: Option<&mut HashMap<Key<'a>, KeyState>>,
    events: &[Event<'a>],
) -> Result<Vec<KafkaMessage>> {
    let mut messages = Vec::new();
    for event in events {
        let end = event.draft.campaign.adv_campaign_datetime_end;
        let state = states
            .as_deref_mut()
            .map(|states| states.entry(event.key()).or_default());
        let send = match state {
            None => event.forward || !event.put,
            Some(state) => {
                let tombstoned = matches!(state, Some((false, _)));
                let send = if event.put {
                    event.forward || tombstoned
                } else {
                    !tombstoned
                };
                *state = if event.put {
                    Some((true, end))
                } else if event.time >= secs_to_time(end) {
                    None
                } else {
                    Some((false, end))
                };
                send
            }
        };
        if send {
            let diff = if event.put { 1 } else { -1 };
            messages.extend(encoder.encode(event.draft, event.time, diff)?);
        }
    }
    Ok(messages)
}

/// The statements of a writer's connection.
struct Statements {
    upsert: Statement,
    campaigns: Statement,
    hours: Statement,
    /// With the upsert envelope.
    keys: Option<KeyStatements>,
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
    let mut keys: HashSet<Key<'_>> = HashSet::new();
    for i in puts {
        let key = events[i].key();
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
    let mut changed: HashMap<Key<'_>, bool> = HashMap::with_capacity(rows.len());
    for row in &rows {
        changed.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
    }
    for (&i, trigger) in chunk.iter().zip(&c.trigger) {
        let key = events[i].key();
        let inserted = changed.get(&key).copied();
        events[i].forward = inserted.is_some();
        if let Some(inserted) = inserted {
            let restaurant = &*events[i].draft.campaign.restaurant_id;
            summary.add(key.0, restaurant, i64::from(*trigger), inserted);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(campaign: &str, client: &str, end: i64) -> Draft {
        Draft {
            campaign: Arc::new(Campaign::from(CampaignFields {
                restaurant_id: "r",
                adv_campaign_id: campaign,
                adv_campaign_content: "c",
                adv_campaign_owner: "o",
                adv_campaign_owner_contact: "o@x",
                adv_campaign_datetime_start: 0,
                adv_campaign_datetime_end: end,
                datetime_created: 0,
            })),
            client_id: client.into(),
        }
    }

    fn event(draft: &Draft, secs: i64, put: bool, forward: bool) -> Event<'_> {
        Event {
            draft,
            time: secs_to_time(secs),
            put,
            forward,
        }
    }

    /// (key, value present) of each message.
    fn sent(messages: &[KafkaMessage]) -> Vec<(String, bool)> {
        messages
            .iter()
            .map(|m| {
                let key = String::from_utf8(m.key.clone().unwrap_or_default()).unwrap();
                (key, m.value.is_some())
            })
            .collect()
    }

    #[test]
    fn the_upsert_envelope_tombstones_live_keys_and_resends_tombstoned_ones() {
        let upsert = DraftEncoder {
            envelope: Envelope::Upsert,
        };
        let (a, b, c) = (
            draft("C", "a", 100),
            draft("C", "b", 100),
            draft("C", "c", 100),
        );
        // Stored: a live, b tombstoned, c unknown (sent before the table existed).
        let mut states: HashMap<Key<'_>, KeyState> = [
            (("C", "a"), Some((true, 100))),
            (("C", "b"), Some((false, 100))),
            (("C", "c"), None),
        ]
        .into();
        let events = [
            // b comes back unchanged: sent again although its row did not change.
            event(&b, 10, true, false),
            // a leaves: a tombstone; c leaves: a tombstone too (unknown: the safe side).
            event(&a, 11, false, false),
            event(&c, 11, false, false),
            // a comes back unchanged: sent again.
            event(&a, 12, true, false),
        ];
        let written = messages(&upsert, Some(&mut states), &events).unwrap();
        assert_eq!(
            sent(&written),
            [
                ("C:b".into(), true),
                ("C:a".into(), false),
                ("C:c".into(), false),
                ("C:a".into(), true),
            ]
        );
        assert_eq!(states[&("C", "a")], Some((true, 100)));
        assert_eq!(states[&("C", "b")], Some((true, 100)));
        assert_eq!(states[&("C", "c")], Some((false, 100)));
        // At the campaign's end: tombstones, and the keys forgotten.
        let events = [event(&a, 100, false, false), event(&b, 100, false, false)];
        let written = messages(&upsert, Some(&mut states), &events).unwrap();
        assert_eq!(
            sent(&written),
            [("C:a".into(), false), ("C:b".into(), false)]
        );
        assert_eq!(states[&("C", "a")], None);
        assert_eq!(states[&("C", "b")], None);
        // A tombstoned key is not tombstoned twice.
        let events = [event(&c, 50, false, false)];
        assert!(
            messages(&upsert, Some(&mut states), &events)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_append_envelope_sends_changed_rows_only() {
        let append = DraftEncoder {
            envelope: Envelope::Append,
        };
        let a = draft("C", "a", 100);
        let events = [
            Event {
                draft: &a,
                time: 10,
                put: true,
                forward: false,
            },
            Event {
                draft: &a,
                time: 11,
                put: false,
                forward: false,
            },
            Event {
                draft: &a,
                time: 12,
                put: true,
                forward: true,
            },
        ];
        let written = messages(&append, None, &events).unwrap();
        assert_eq!(sent(&written), [("C:a".into(), true)]);
    }
}
