//! Postgres snapshot source: `public.subscribers_restaurants` → a collection of
//! [`Subscription`]s.
//!
//! ```text
//!   worker w of W: reader thread ── COPY (SELECT client_id, restaurant_id
//!                                        FROM subscribers_restaurants
//!                                        WHERE id % W = w) TO STDOUT (FORMAT binary)
//!                        │ chunks of CHUNK rows (bounded channel), SyncActivator
//!                        ▼
//!                 operator: emits (subscription, t0, +1) at the job's start time t0
//! ```
//!
//! Each worker reads a disjoint share of the table (split on the primary key), on its own
//! connection, in a thread of its own so that a large table never blocks the worker: the
//! operator drains whatever chunks have arrived and is woken when more do. When the snapshot
//! is complete the operator releases its capability. Connection and query errors are fatal
//! (reported through [`Control`]) with the table name in the message.

use std::sync::mpsc::{Receiver, TryRecvError, sync_channel};

use anyhow::{Context, Result};
use dataflows::promos::Subscription;
use dataflows::{Diff, Time};
use differential_dataflow::{AsCollection, VecCollection};
use postgres::binary_copy::BinaryCopyOutIter;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use tracing::info;

use crate::control::Control;
use crate::pg;

/// Rows per chunk sent from the reader thread to the operator.
pub const CHUNK: usize = 16_384;

/// Reads this worker's share of the subscriptions into `tx`, in chunks.
fn read_share(
    url: &str,
    index: usize,
    peers: usize,
    tx: &std::sync::mpsc::SyncSender<Vec<Subscription>>,
    wake: &dyn Fn(),
) -> Result<usize> {
    let mut client = pg::connect(url)?;
    let query = format!(
        "COPY (SELECT client_id, restaurant_id FROM public.subscribers_restaurants \
         WHERE id % {peers} = {index}) TO STDOUT (FORMAT binary)"
    );
    let reader = client
        .copy_out(query.as_str())
        .context("cannot read public.subscribers_restaurants")?;
    let mut rows = BinaryCopyOutIter::new(reader, &[Type::VARCHAR, Type::VARCHAR]);
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut total = 0;
    while let Some(row) = rows
        .next()
        .context("reading public.subscribers_restaurants")?
    {
        chunk.push(Subscription {
            client_id: row.try_get(0)?,
            restaurant_id: row.try_get(1)?,
        });
        if chunk.len() == CHUNK {
            total += chunk.len();
            if tx.send(std::mem::take(&mut chunk)).is_err() {
                return Ok(total); // the job is ending
            }
            wake();
        }
    }
    total += chunk.len();
    let _ = tx.send(chunk);
    wake();
    Ok(total)
}

/// Builds the snapshot source for this worker: every subscription row at logical time `t0`.
pub fn subscribers_snapshot<'s>(
    scope: Scope<'s, Time>,
    postgres_url: String,
    t0: Time,
    control: Control,
) -> VecCollection<'s, Time, Subscription, Diff> {
    source(scope, "SubscribersSnapshot", move |capability, info| {
        let (index, peers) = (scope.index(), scope.peers());
        let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
        let (tx, rx): (_, Receiver<Vec<Subscription>>) = sync_channel(4);
        let thread_control = control.clone();
        std::thread::Builder::new()
            .name(format!("snapshot-{index}"))
            .spawn(move || {
                let wake = || {
                    let _ = sync_activator.activate();
                };
                match read_share(&postgres_url, index, peers, &tx, &wake) {
                    Ok(rows) => info!(worker = index, rows, "subscribers snapshot read"),
                    Err(error) => thread_control.fail(error),
                }
                drop(tx);
                wake();
            })
            .map_err(|e| control.fail(e.into()))
            .ok();

        let mut capability = Some(capability);
        if let Some(cap) = capability.as_mut() {
            cap.downgrade(&t0);
        }
        move |output| {
            let Some(cap) = capability.as_ref() else {
                return;
            };
            loop {
                match rx.try_recv() {
                    Ok(chunk) => {
                        let time = *cap.time();
                        output
                            .session(cap)
                            .give_iterator(chunk.into_iter().map(|s| (s, time, 1)));
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        capability = None;
                        break;
                    }
                }
            }
        }
    })
    .as_collection()
}
