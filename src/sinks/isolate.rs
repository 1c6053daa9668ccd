//! When Postgres refuses a batch for the data in it, find the updates it refuses, write the
//! rest, and dead-letter exactly those.
//!
//! ```text
//!  write(batch) ── ok ──────────────────────────────────────────────► done
//!       └─ refused (SQLSTATE class 22: a value the column cannot hold; 23: a constraint
//!          │        of the table, e.g. a CHECK or a varchar(n) the job does not know;
//!          │        54000: a value too large for an index entry;
//!          │        or a Kafka message larger than its topic takes, found before COMMIT)
//!          ▼ split, write each half the same way, the first half first:
//!            several keys → by key (each key wholly in one half)
//!            one key, several times → earlier times | later times
//!            one key, one time → the first updates | the last ones
//!          a single update refused ─► dead letter (sink, error, the update as JSON)
//! ```
//!
//! Every update of a key stays in one half and the halves are written in order, so the
//! changes of each key are still written in time order (retractions before insertions),
//! and each half is a batch of its own transaction: exactly once, as any batch. Finding one
//! refused update among n costs about log₂(n) refused attempts and writes every update about
//! twice; a batch with no refusal costs nothing extra. Any other error is returned as is:
//! transient ones were retried by the writer, and a schema or permission problem (class 42,
//! a NOT NULL column the job does not fill) stops the job.

use anyhow::{Error, Result};
use dataflows::{Diff, Time};
use serde::Serialize;
use uuid::Uuid;

use super::kafka::{KafkaMessage, MessageTooLarge, REASON_HEADER, header};
use super::rejects::{Rejection, Rejects};

/// One update of a batch.
pub type Update<D> = (D, Time, Diff);

/// A batch cut in two.
type Halves<D> = (Vec<Update<D>>, Vec<Update<D>>);

/// Writes `batch` with `write`. When the write fails with an error that `refused` says is
/// about the data, splits the batch (see the module docs) until every update that fails
/// alone is found; those go to `dead`, with their errors, and everything else is written.
/// Returns the first error that is not about the data.
pub fn write_isolating<D: Clone>(
    batch: &[Update<D>],
    key: &dyn Fn(&D) -> u64,
    write: &mut dyn FnMut(&[Update<D>]) -> Result<()>,
    refused: fn(&Error) -> bool,
    dead: &mut Vec<(Update<D>, Error)>,
) -> Result<()> {
    match write(batch) {
        Ok(()) => Ok(()),
        Err(error) if refused(&error) => match halves(batch, key) {
            Some((first, second)) => {
                write_isolating(&first, key, write, refused, dead)?;
                write_isolating(&second, key, write, refused, dead)
            }
            None => {
                if let Some(update) = batch.first() {
                    dead.push((update.clone(), error));
                }
                Ok(())
            }
        },
        Err(error) => Err(error),
    }
}

/// Splits a batch (sorted by time) in two, keeping each half in batch order: by key if it
/// has several, else by time if it has several, else by position; `None` for one update.
fn halves<D: Clone>(batch: &[Update<D>], key: &dyn Fn(&D) -> u64) -> Option<Halves<D>> {
    if batch.len() < 2 {
        return None;
    }
    let mut keys: Vec<u64> = batch.iter().map(|(d, _, _)| key(d)).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() > 1 {
        let pivot = keys[keys.len() / 2];
        return Some(batch.iter().cloned().partition(|(d, _, _)| key(d) < pivot));
    }
    let (first, last) = (batch[0].1, batch[batch.len() - 1].1);
    if first != last {
        let middle = batch[batch.len() / 2].1;
        // The first time greater than the earliest: each half gets at least one time.
        let pivot = if middle > first {
            middle
        } else {
            batch.iter().map(|u| u.1).find(|&t| t > first)?
        };
        return Some(batch.iter().cloned().partition(|u| u.1 < pivot));
    }
    let (a, b) = batch.split_at(batch.len() / 2);
    Some((a.to_vec(), b.to_vec()))
}

/// The SQLSTATE of the Postgres error in `error`'s chain, if any.
fn sqlstate(error: &Error) -> Option<String> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<postgres::Error>())
        .and_then(|pg| pg.code())
        .map(|code| code.code().to_string())
}

/// The message too large for its topic in `error`'s chain, if that is the error.
fn too_large(error: &Error) -> Option<&MessageTooLarge> {
    error
        .chain()
        .find_map(|c| c.downcast_ref::<MessageTooLarge>())
}

/// Whether the data of a batch was refused: by Postgres, SQLSTATE class 22 (data exception:
/// a value the column cannot hold) or 23 (a constraint of the table), except 23502 (a NOT
/// NULL column: the job never writes NULL, so the table has a column the job does not fill
/// — a schema problem, not one of the data), or 54000 (a value too large for a row or an
/// index entry: "index row requires 12624 bytes, maximum size is 8191"); or a message too
/// large for its topic.
pub fn refused_data(error: &Error) -> bool {
    too_large(error).is_some()
        || sqlstate(error).is_some_and(|code| {
            ((code.starts_with("22") || code.starts_with("23")) && code != "23502")
                || code == "54000"
        })
}

/// The dead-letter reason of a refused update: `message_too_large`, or
/// `sink_refused:<SQLSTATE>`.
fn reason(error: &Error) -> String {
    match too_large(error) {
        Some(_) => "message_too_large".to_string(),
        None => format!("sink_refused:{}", sqlstate(error).unwrap_or_default()),
    }
}

/// What to fix when Postgres refuses a sink's writes for a reason no data can cause: the
/// error with that advice in front (one line, by SQLSTATE); other errors as they are.
pub fn explain(error: Error) -> Error {
    let advice = match sqlstate(&error).as_deref() {
        Some("42501") => {
            "the job's Postgres role lacks a privilege: GRANT it INSERT, UPDATE, DELETE and \
             SELECT on dishflow's tables"
        }
        Some("42P01" | "3F000") => "a table or schema is missing: run `dishflow setup`",
        Some("42P10") => "a unique index dishflow writes through is missing: run `dishflow setup`",
        Some("42703" | "42804" | "42846") => {
            "the table's columns differ from what dishflow writes (see the SPEC's DDL)"
        }
        Some("23502") => {
            "the table has a NOT NULL column that dishflow does not fill: give it a default \
             or drop NOT NULL"
        }
        Some("25006") => {
            "the server is read-only (a standby?): point --postgres-url at the primary"
        }
        _ => return error,
    };
    error.context(advice)
}

/// The dead letters of the updates sink `sink` refused: value
/// `{"sink", "error", "sqlstate", "time", "diff", "update"}` (the update as JSON; with
/// `size` and `limit` for a message too large), headers `dishflow.error.reason` =
/// `sink_refused:<SQLSTATE>` or `message_too_large`, and `dishflow.sink`. The same update
/// refused again (a replay after a restart) is the same rejection (see `sinks::rejects`).
pub fn rejections<D: Serialize>(sink: &str, dead: &[(Update<D>, Error)]) -> Result<Vec<Rejection>> {
    let mut rejections = Vec::with_capacity(dead.len());
    for ((data, time, diff), error) in dead {
        let update = serde_json::to_value(data)?;
        let digest = Uuid::new_v5(
            &dataflows::orders::NAMESPACE,
            serde_json::to_vec(&(sink, &update, diff))?.as_slice(),
        );
        let code = sqlstate(error).unwrap_or_default();
        let mut value = serde_json::json!({
            "sink": sink,
            "error": format!("{error:#}"),
            "sqlstate": code,
            "time": time,
            "diff": diff,
            "update": update,
        });
        if let Some(too_large) = too_large(error) {
            value["size"] = too_large.size.into();
            value["limit"] = too_large.limit.into();
        }
        let key = format!("{sink}:{digest}");
        rejections.push(Rejection {
            key: key.clone(),
            digest,
            message: KafkaMessage {
                key: Some(key.into_bytes()),
                value: Some(serde_json::to_vec(&value)?),
                headers: vec![
                    header(REASON_HEADER, reason(error)),
                    header("dishflow.sink", sink),
                ],
            },
        });
    }
    Ok(rejections)
}

/// Where a sink's refused updates go.
#[derive(Clone)]
pub struct Refusals {
    /// The worker's rejections writer.
    pub rejects: Rejects,
}

impl Refusals {
    /// Counts, logs and dead-letters the updates sink `sink` refused.
    pub fn dead_letter<D: Serialize>(&self, sink: &str, dead: &[(Update<D>, Error)]) -> Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let rejections = rejections(sink, dead)?;
        for (rejection, (_, error)) in rejections.iter().zip(dead) {
            crate::metrics::metrics().dead_lettered(&reason(error));
            tracing::warn!(sink, key = %rejection.key, error = %format!("{error:#}"),
                "update refused: dead-lettered, the rest of its batch written");
        }
        self.rejects.send(rejections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record: (key, value); the test writer refuses every value ≥ 100.
    type Rec = (u64, u64);

    #[derive(Debug)]
    struct Refused;

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("refused")
        }
    }

    impl std::error::Error for Refused {}

    fn is_refused(error: &Error) -> bool {
        error.downcast_ref::<Refused>().is_some()
    }

    /// Runs `write_isolating` with a writer that refuses a batch holding a value ≥ 100 and
    /// fails for good on a value 999; returns (what was written, batch by batch, in order;
    /// what was refused; the outcome).
    type Outcome = (Vec<Vec<Update<Rec>>>, Vec<Update<Rec>>, Result<()>);

    fn run(batch: &[Update<Rec>]) -> Outcome {
        let mut written = Vec::new();
        let mut dead = Vec::new();
        let outcome = write_isolating(
            batch,
            &|r: &Rec| r.0,
            &mut |b: &[Update<Rec>]| {
                if b.iter().any(|((_, v), _, _)| *v == 999) {
                    anyhow::bail!("permission denied");
                }
                if b.iter().any(|((_, v), _, _)| *v >= 100) {
                    return Err(Error::new(Refused));
                }
                written.push(b.to_vec());
                Ok(())
            },
            is_refused,
            &mut dead,
        );
        (written, dead.into_iter().map(|(u, _)| u).collect(), outcome)
    }

    #[test]
    fn a_batch_without_refusals_is_written_once_whole() {
        let batch: Vec<Update<Rec>> = (0..10).map(|k| ((k, 1), 5, 1)).collect();
        let (written, dead, outcome) = run(&batch);
        assert!(outcome.is_ok());
        assert_eq!(written, [batch]);
        assert!(dead.is_empty());
    }

    #[test]
    fn exactly_the_refused_updates_are_isolated_and_the_rest_written_in_order_per_key() {
        // 40 keys over three times: each key's value changes (retract old, insert new).
        let mut batch: Vec<Update<Rec>> = Vec::new();
        for t in 1..=3u64 {
            for k in 0..40u64 {
                if t > 1 {
                    batch.push(((k, t - 1), t, -1));
                }
            }
            for k in 0..40u64 {
                // Key 7's version at time 2, and key 30's at time 3, are refused.
                let v = match (k, t) {
                    (7, 2) | (30, 3) => 100 + t,
                    _ => t,
                };
                batch.push(((k, v), t, 1));
            }
        }
        let (written, dead, outcome) = run(&batch);
        assert!(outcome.is_ok());
        assert_eq!(dead, [((7, 102), 2, 1), ((30, 103), 3, 1)]);
        // Everything else written exactly once.
        let mut all: Vec<Update<Rec>> = written.iter().flatten().cloned().collect();
        assert_eq!(all.len(), batch.len() - 2);
        all.sort();
        let mut expected: Vec<Update<Rec>> = batch
            .iter()
            .filter(|u| !dead.contains(u))
            .cloned()
            .collect();
        expected.sort();
        assert_eq!(all, expected);
        // Per key, the written updates keep the batch's order.
        for k in 0..40u64 {
            let order: Vec<&Update<Rec>> =
                written.iter().flatten().filter(|u| u.0.0 == k).collect();
            let original: Vec<&Update<Rec>> = batch
                .iter()
                .filter(|u| u.0.0 == k && !dead.contains(u))
                .collect();
            assert_eq!(order, original, "key {k}");
        }
    }

    #[test]
    fn one_key_is_split_by_time_then_by_position() {
        let batch: Vec<Update<Rec>> = vec![
            ((1, 1), 1, 1),
            ((1, 1), 2, -1),
            ((1, 2), 2, 1),
            ((1, 2), 3, -1),
            ((1, 150), 3, 1),
        ];
        let (written, dead, outcome) = run(&batch);
        assert!(outcome.is_ok());
        assert_eq!(dead, [((1, 150), 3, 1)]);
        let order: Vec<Update<Rec>> = written.into_iter().flatten().collect();
        assert_eq!(order, batch[..4]);
    }

    #[test]
    fn an_error_that_is_not_about_the_data_stops_the_isolation() {
        let batch: Vec<Update<Rec>> = vec![((1, 150), 1, 1), ((2, 999), 1, 1), ((3, 1), 1, 1)];
        let (_, _, outcome) = run(&batch);
        assert!(outcome.is_err_and(|e| e.to_string() == "permission denied"));
    }

    #[test]
    fn a_refused_update_becomes_a_dead_letter_with_its_sink_error_and_json() {
        let dead = vec![(
            ((7u64, 102u64), 2_000u64, 1isize),
            anyhow::anyhow!("value too long"),
        )];
        let first = rejections("DraftsSink", &dead).expect("rejections");
        let again = rejections("DraftsSink", &dead).expect("rejections");
        assert_eq!(
            first[0].key, again[0].key,
            "the same update: the same rejection"
        );
        assert_eq!(first[0].digest, again[0].digest);
        let value: serde_json::Value =
            serde_json::from_slice(first[0].message.value.as_deref().unwrap_or_default())
                .expect("json");
        assert_eq!(value["sink"], "DraftsSink");
        assert_eq!(value["update"], serde_json::json!([7, 102]));
        assert_eq!(value["diff"], 1);
        assert_eq!(value["error"], "value too long");
        assert!(first[0].key.starts_with("DraftsSink:"));
    }
}
