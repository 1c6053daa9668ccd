//! Postgres sink for the promos job: complete draft insertions → `public.subscribers_feedback`,
//! then the drafts that are new to the table → the Kafka notification topic.
//!
//! ```text
//!   SinkWriter::write(updates)
//!     insertions (diff > 0) → column arrays ─► one statement per CHUNK rows:
//!       INSERT INTO subscribers_feedback (...) SELECT * FROM unnest($1, ..., $10)
//!       ON CONFLICT (adv_campaign_id, client_id) DO NOTHING
//!       RETURNING adv_campaign_id, client_id          ← the drafts not recorded before
//!     all chunks of a batch in one transaction, committed
//!     new insertions (+ retractions) ─► Kafka writer (every delivery confirmed)
//! ```
//!
//! Rows are written in bulk (ten array parameters, not a round trip per row) and
//! idempotently: the unique index on `(adv_campaign_id, client_id)` that `setup` adds turns a
//! re-delivered draft into a no-op. The feedback table is thereby also the ledger of drafts
//! already notified: a replayed topic or a second run over the same topic writes no row and
//! no Kafka message. Retractions write no row: feedback rows are never deleted (analysts
//! fill `feedback`); they go to Kafka, where the envelope decides what they become.
//!
//! Delivery: the row is committed before the Kafka message is sent, so a crash between the
//! two loses that Kafka message (at most once for Kafka, exactly once for the table).

use std::collections::HashSet;

use anyhow::{Context, Result};
use dataflows::promos::Draft;
use dataflows::{Diff, Time};
use postgres::Client;

use super::SinkWriter;
use crate::pg;

/// Rows per statement.
pub const CHUNK: usize = 10_000;

const INSERT: &str = "
INSERT INTO public.subscribers_feedback (
    restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner,
    adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end,
    datetime_created, client_id, trigger_datetime_created)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::int8[], $7::int8[], $8::int8[], $9::text[], $10::int4[])
ON CONFLICT (adv_campaign_id, client_id) DO NOTHING
RETURNING adv_campaign_id, client_id";

/// Writes feedback rows for new drafts, then passes the new drafts on to `next`.
pub struct FeedbackWriter<N> {
    client: Client,
    insert: postgres::Statement,
    next: N,
}

impl<N> FeedbackWriter<N> {
    /// Connects and prepares the insert statement.
    pub fn new(url: &str, next: N) -> Result<Self> {
        let mut client = pg::connect(url)?;
        let insert = client
            .prepare(INSERT)
            .context("cannot prepare the insert into public.subscribers_feedback")?;
        Ok(FeedbackWriter {
            client,
            insert,
            next,
        })
    }
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
        let inserts: Vec<_> = updates.iter().filter(|(_, _, diff)| *diff > 0).collect();
        let mut new: HashSet<(String, String)> = HashSet::new();
        if !inserts.is_empty() {
            new = self.insert(&inserts)?;
        }
        let forward: Vec<(Draft, Time, Diff)> = updates
            .iter()
            .filter(|(draft, _, diff)| {
                *diff < 0
                    || new.contains(&(
                        draft.campaign.adv_campaign_id.clone(),
                        draft.client_id.clone(),
                    ))
            })
            .cloned()
            .collect();
        self.next.write(&forward)
    }
}

impl<N> FeedbackWriter<N> {
    /// Inserts the rows of `inserts`; returns the (campaign, client) pairs that were new.
    fn insert(&mut self, inserts: &[&(Draft, Time, Diff)]) -> Result<HashSet<(String, String)>> {
        let mut new = HashSet::new();
        let mut tx = self.client.transaction()?;
        for chunk in inserts.chunks(CHUNK) {
            let mut c = Columns::default();
            for (draft, time, _) in chunk {
                c.push(draft, *time);
            }
            let rows = tx
                .query(
                    &self.insert,
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
                .context("cannot insert into public.subscribers_feedback")?;
            for row in rows {
                new.insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
        tx.commit()
            .context("cannot commit to public.subscribers_feedback")?;
        Ok(new)
    }
}
