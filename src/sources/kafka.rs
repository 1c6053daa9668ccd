//! Kafka source: one topic → a differential collection of [`RawRecord`]s.
//!
//! ```text
//!   partitions 0 1 2 3 4 5          worker w of W owns every partition p with p % W == w
//!              │ │ │ │ │ │          (manual assignment: no consumer group, no rebalancing)
//!   worker 0 ◄─┘ │ │ │ └─┼──► ...
//!   worker 1 ◄───┘ │ └───┘
//!   worker 2 ◄─────┘
//!
//!   librdkafka fetch thread ──queue non-empty──► SyncActivator ──► operator scheduled
//! ```
//!
//! The operator is a [`clocked_source`] (time stamping, waking, finishing); this module is
//! the Kafka side:
//!
//! * **Waking.** librdkafka calls back when the consumer queue becomes non-empty; the callback
//!   activates the operator from librdkafka's thread. An activation drains at most
//!   [`MAX_BATCH`] messages and re-activates itself if more are queued.
//! * **Bounded runs.** With `stop_at_end`, the high watermark of each owned partition is read
//!   at startup. A partition is done when its next offset is at or past that watermark *and*
//!   librdkafka reported partition EOF afterwards: Tansu's watermark can lag the last offset
//!   by one batch, and EOF is only reported after an empty fetch, so the run neither stops
//!   early nor hangs.
//! * **Errors.** Fetch errors are logged (rate-limited) and retried by librdkafka; the
//!   capability is kept. Undecodable messages are not this operator's concern: it emits raw
//!   keys and values and the dataflow routes bad ones to the dead-letter topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dataflows::{Diff, RawRecord, Time};
use differential_dataflow::VecCollection;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use timely::dataflow::Scope;
use tracing::{info, warn};

use crate::control::Lifecycle;
use crate::kafka::KafkaArgs;
use crate::kafka::consumer::{
    Assignment, PartitionState, Position, ReadContext, assigned_consumer, message_bytes,
    message_headers, observe_eof, observe_message,
};
use crate::sources::{Reader, Status, clocked_source};

/// Most messages emitted per activation before yielding to other operators.
pub const MAX_BATCH: usize = 8192;

/// What a Kafka source reads.
#[derive(Clone, Debug)]
pub struct KafkaSourceConfig {
    /// Connection settings.
    pub kafka: KafkaArgs,
    /// Topic to read.
    pub topic: String,
    /// All partitions of the topic (known at startup); each worker takes its share.
    pub partitions: Vec<i32>,
    /// Where to start in each partition (a partition not listed: the earliest offset).
    pub start: HashMap<i32, Position>,
    /// Per partition, the offset up to which reading is a replay of what an earlier run
    /// already processed: records before it are stamped with the start time, all at once.
    pub replay_until: HashMap<i32, i64>,
    /// Finish once every owned partition is read to its end as of startup.
    pub stop_at_end: bool,
    /// Read the backlog (records before each partition's end as of startup, after the
    /// replay) in rounds of this many records per worker, each at its own logical time.
    pub round_records: Option<usize>,
}

/// The partitions worker `index` of `peers` owns.
pub fn owned_partitions(partitions: &[i32], index: usize, peers: usize) -> Vec<i32> {
    partitions
        .iter()
        .copied()
        .filter(|p| {
            usize::try_from(*p)
                .map(|p| p % peers == index)
                .unwrap_or(false)
        })
        .collect()
}

/// The Kafka side of a source: this worker's assigned consumer and partition progress.
struct KafkaReader {
    name: String,
    consumer: BaseConsumer<ReadContext>,
    states: HashMap<i32, PartitionState>,
    stop_at_end: bool,
    round_records: Option<usize>,
    /// At most this many records in the next read (the room left in the round).
    most: usize,
    last_warning: Option<Instant>,
}

impl Reader for KafkaReader {
    type Data = RawRecord;

    fn holding(&self) -> bool {
        self.states.values().any(PartitionState::replaying)
    }

    fn round(&self) -> Option<usize> {
        self.round_records
            .filter(|_| self.states.values().any(PartitionState::behind))
    }

    fn limit(&mut self, most: usize) {
        self.most = most.min(MAX_BATCH);
    }

    fn read(&mut self, give: &mut dyn FnMut(RawRecord, Diff)) -> Status {
        let most = std::mem::replace(&mut self.most, MAX_BATCH);
        let mut emitted = 0;
        loop {
            if emitted >= most {
                return Status::More;
            }
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => {
                    observe_message(
                        &mut self.states,
                        message.partition(),
                        message.offset(),
                        message_bytes(&message),
                    );
                    let record = RawRecord {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().map(<[u8]>::to_vec),
                        headers: message_headers(&message),
                    };
                    give(record, 1);
                    emitted += 1;
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    observe_eof(&mut self.states, partition);
                }
                Some(Err(error)) => {
                    if self
                        .last_warning
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        warn!(source = %self.name, %error, "Kafka error (retrying)");
                        self.last_warning = Some(Instant::now());
                    }
                    break;
                }
            }
        }
        for state in self.states.values() {
            state.metrics.position(state.next);
        }
        if self.stop_at_end && self.states.values().all(PartitionState::done) {
            Status::Finished
        } else {
            Status::Idle
        }
    }
}

/// Builds the source operator for this worker (see [`clocked_source`]): this worker's share
/// of the topic's partitions as raw records. The source registers with the lifecycle's
/// completion and reports fatal startup errors (broker gone between checks and startup) to
/// its control.
pub fn kafka_source<'s>(
    scope: Scope<'s, Time>,
    name: &str,
    config: KafkaSourceConfig,
    lifecycle: &Lifecycle,
) -> VecCollection<'s, Time, RawRecord, Diff> {
    let owned = owned_partitions(&config.partitions, scope.index(), scope.peers());
    let source_name = name.to_string();
    clocked_source(scope, name, lifecycle, move |activator| {
        let (mut consumer, states) = assigned_consumer(&Assignment {
            kafka: &config.kafka,
            topic: &config.topic,
            partitions: &owned,
            start: &config.start,
            replay_until: &config.replay_until,
        })?;
        consumer.set_nonempty_callback(move || {
            // Fails only when the worker is gone, i.e. the job is ending.
            let _ = activator.activate();
        });
        let replay: Vec<(i32, i64, i64)> = states
            .iter()
            .filter(|(_, s)| s.next < s.replay_until)
            .map(|(p, s)| (*p, s.next, s.replay_until))
            .collect();
        info!(source = %source_name, topic = %config.topic, partitions = ?owned, ?replay, "reading");
        Ok(KafkaReader {
            name: source_name,
            consumer,
            states,
            stop_at_end: config.stop_at_end,
            round_records: config.round_records,
            most: MAX_BATCH,
            last_warning: None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_split_deterministically_and_completely() {
        let all: Vec<i32> = (0..7).collect();
        let mut seen = Vec::new();
        for w in 0..3 {
            let mine = owned_partitions(&all, w, 3);
            assert!(mine.iter().all(|p| (*p as usize) % 3 == w));
            seen.extend(mine);
        }
        seen.sort();
        assert_eq!(seen, all);
        assert_eq!(owned_partitions(&[0], 1, 2), Vec::<i32>::new());
    }
}
