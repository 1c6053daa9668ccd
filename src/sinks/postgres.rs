//! Postgres sink for the promos job: complete draft insertions → `public.subscribers_feedback`.
//!
//! ```text
//!   SinkWriter::write(updates)
//!     insertions (diff > 0) → column arrays ─► one statement per CHUNK rows:
//!       INSERT INTO subscribers_feedback (...) SELECT * FROM unnest($1, ..., $10)
//!       ON CONFLICT (adv_campaign_id, client_id) DO NOTHING
//!     all chunks of a batch in one transaction
//! ```
//!
//! Rows are written in bulk (ten array parameters, not a round trip per row) and
//! idempotently: the unique index on `(adv_campaign_id, client_id)` that `setup` adds turns a
//! re-delivered draft into a no-op, so a replayed topic or a second run adds no row.
//! Retractions write nothing: feedback rows are never deleted (analysts fill `feedback`).

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
ON CONFLICT (adv_campaign_id, client_id) DO NOTHING";

/// Writes feedback rows for new drafts.
pub struct FeedbackWriter {
    client: Client,
    insert: postgres::Statement,
}

impl FeedbackWriter {
    /// Connects and prepares the insert statement.
    pub fn new(url: &str) -> Result<Self> {
        let mut client = pg::connect(url)?;
        let insert = client
            .prepare(INSERT)
            .context("cannot prepare the insert into public.subscribers_feedback")?;
        Ok(FeedbackWriter { client, insert })
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

impl SinkWriter<Draft> for FeedbackWriter {
    fn write(&mut self, updates: &[(Draft, Time, Diff)]) -> Result<()> {
        let inserts: Vec<_> = updates.iter().filter(|(_, _, diff)| *diff > 0).collect();
        if inserts.is_empty() {
            return Ok(());
        }
        let mut tx = self.client.transaction()?;
        for chunk in inserts.chunks(CHUNK) {
            let mut c = Columns::default();
            for (draft, time, _) in chunk {
                c.push(draft, *time);
            }
            tx.execute(
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
        }
        tx.commit()
            .context("cannot commit to public.subscribers_feedback")?;
        Ok(())
    }
}
