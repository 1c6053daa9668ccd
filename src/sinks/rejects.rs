//! Dead letters that are not Kafka records — an update a sink's table refused, a Redis
//! value that is not a dictionary entry — written to the job's dead-letter topic exactly
//! once.
//!
//! ```text
//!  Rejects::send([Rejection { key, digest, message }])   (one writer per worker, shared
//!    one transaction:                                       by the worker's sink threads
//!                                                           and its rejected-values sink)
//!      INSERT INTO dishflow_published (job = '<job>/rejected', key, digest)
//!      ON CONFLICT (job, key) DO UPDATE … WHERE the digest differs  RETURNING key
//!      the messages of the keys returned ─► dishflow_outbox
//!    COMMIT, then the outbox delivers them and confirms (see `sinks::outbox`)
//! ```
//!
//! A Kafka record's dead letter is decided by its offset (a replay after a restart skips
//! what was read before). These have no offset: the ledger row is what makes the same
//! rejection, found again after a restart (the sink re-derives the refused update, the
//! source re-reads the Redis value), a no-op. A rejection whose digest changed (another bad
//! value under the same Redis key) is sent again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use dataflows::{Diff, RejectedValue, Time};
use postgres::Transaction;
use uuid::Uuid;

use super::SinkWriter;
use super::kafka::{KafkaMessage, REASON_HEADER, header};
use super::outbox::Outbox;
use super::postgres::{TableBatch, TableWriter, ledger_changed};
use crate::kafka::KafkaArgs;

/// One dead letter and its identity in the ledger.
pub struct Rejection {
    /// What is rejected, e.g. `redis:<key>` or `<sink>:<digest of the update>`.
    pub key: String,
    /// The rejected content: a rejection with the same key and digest is sent once.
    pub digest: Uuid,
    /// The message for the dead-letter topic.
    pub message: KafkaMessage,
}

impl Rejection {
    /// The dead letter of a Redis value that is not a dictionary entry: key and value as
    /// read, headers `dishflow.error.reason` and `dishflow.source.redis_key`; sent once per
    /// (key, value, reason).
    pub fn of_redis_value(rejected: &RejectedValue) -> Rejection {
        let mut content = rejected.reason.clone().into_bytes();
        content.push(0);
        content.extend_from_slice(&rejected.value);
        Rejection {
            key: format!("redis:{}", rejected.key),
            digest: Uuid::new_v5(&dataflows::orders::NAMESPACE, &content),
            message: KafkaMessage {
                key: Some(rejected.key.clone().into_bytes()),
                value: Some(rejected.value.clone()),
                headers: vec![
                    header(REASON_HEADER, &rejected.reason),
                    header(REDIS_KEY_HEADER, &rejected.key),
                ],
            },
        }
    }
}

/// The header of a Redis value's dead letter naming its key.
pub const REDIS_KEY_HEADER: &str = "dishflow.source.redis_key";

/// The ledger name of a job's rejections, also its outbox's job name.
pub fn ledger_job(job: &str) -> String {
    format!("{job}/rejected")
}

/// Writes rejections through the ledger (see the module docs).
struct RejectionBatch {
    job: String,
}

impl TableBatch<Rejection> for RejectionBatch {
    fn name(&self) -> &'static str {
        "dead-letter ledger"
    }

    fn write(
        &mut self,
        tx: &mut Transaction<'_>,
        updates: &[(Rejection, Time, Diff)],
    ) -> Result<Vec<KafkaMessage>> {
        // The last rejection of a key in the batch counts.
        let mut seen = HashSet::new();
        let mut last: Vec<&Rejection> = Vec::new();
        for (rejection, _, _) in updates.iter().rev() {
            if seen.insert(rejection.key.as_str()) {
                last.push(rejection);
            }
        }
        last.reverse();
        let keys: Vec<&str> = last.iter().map(|r| r.key.as_str()).collect();
        let digests: Vec<Uuid> = last.iter().map(|r| r.digest).collect();
        let new = ledger_changed(tx, &self.job, &keys, &digests)?;
        Ok(last
            .into_iter()
            .filter(|r| new.contains(&r.key))
            .map(|r| KafkaMessage {
                key: r.message.key.clone(),
                value: r.message.value.clone(),
                headers: r.message.headers.clone(),
            })
            .collect())
    }
}

/// A worker's writer of rejections, shared by its sinks' threads.
#[derive(Clone)]
pub struct Rejects(Arc<Mutex<TableWriter<RejectionBatch>>>);

impl Rejects {
    /// The rejections writer of worker `worker` of `job`, to `topic`: connects at once,
    /// taking its outbox's lock and delivering what a previous run left there.
    pub fn new(
        kafka: &KafkaArgs,
        url: &str,
        job: &str,
        worker: usize,
        topic: &str,
    ) -> Result<Self> {
        let ledger = ledger_job(job);
        // A dead letter larger than the topic takes is kept, cut (a refused draft's
        // update holds the whole campaign).
        let outbox = Outbox::new(kafka, &ledger, worker, &[topic])?.truncating();
        let writer = TableWriter::new(
            url,
            RejectionBatch {
                job: ledger.clone(),
            },
            Some((outbox, topic)),
            "dead-letter ledger",
        )?;
        Ok(Rejects(Arc::new(Mutex::new(writer))))
    }

    /// Sends `rejections` not sent before, and returns once the broker has them.
    pub fn send(&self, rejections: Vec<Rejection>) -> Result<()> {
        if rejections.is_empty() {
            return Ok(());
        }
        let updates: Vec<(Rejection, Time, Diff)> =
            rejections.into_iter().map(|r| (r, 0, 1)).collect();
        let mut writer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        writer.write(&updates)?;
        writer.flush()
    }
}

/// The sink of a source's rejected values: each value found (a positive update) is sent
/// once; a value's retraction means nothing for a dead letter.
impl SinkWriter<RejectedValue> for Rejects {
    fn write(&mut self, updates: &[(RejectedValue, Time, Diff)]) -> Result<()> {
        self.send(
            updates
                .iter()
                .filter(|(_, _, diff)| *diff > 0)
                .map(|(value, _, _)| Rejection::of_redis_value(value))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_values_dead_letter_names_its_key_and_reason_and_changes_with_the_value() {
        let value = |value: &[u8]| RejectedValue {
            key: "u1".into(),
            value: value.to_vec(),
            reason: "not_json".into(),
        };
        let letter = Rejection::of_redis_value(&value(b"not json"));
        assert_eq!(letter.key, "redis:u1");
        assert_eq!(letter.message.key.as_deref(), Some(&b"u1"[..]));
        assert_eq!(letter.message.value.as_deref(), Some(&b"not json"[..]));
        assert!(
            letter
                .message
                .headers
                .contains(&header(REDIS_KEY_HEADER, "u1"))
        );
        assert!(
            letter
                .message
                .headers
                .contains(&header(REASON_HEADER, "not_json"))
        );
        let again = Rejection::of_redis_value(&value(b"not json"));
        assert_eq!(
            letter.digest, again.digest,
            "the same value: the same rejection"
        );
        let other = Rejection::of_redis_value(&value(b"{still not json"));
        assert_ne!(letter.digest, other.digest, "another value: sent again");
    }
}
