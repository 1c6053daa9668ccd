//! A one-time snapshot source: rows read once at startup (on worker 0), all at the job's
//! start time. For state that a sink must compare with what it is about to write, such as
//! the counters already in a table.

use anyhow::Result;
use dataflows::{Diff, Time};
use differential_dataflow::VecCollection;
use timely::dataflow::Scope;

use crate::control::Lifecycle;
use crate::sources::{Reader, Status, clocked_source};

/// Rows per activation.
const CHUNK: usize = 10_000;

struct SnapshotReader<D> {
    rows: std::vec::IntoIter<(D, Diff)>,
    done: bool,
    /// Unbounded run: stay (empty) and move with the clock, instead of finishing.
    follow: bool,
}

impl<D: Clone + 'static> Reader for SnapshotReader<D> {
    type Data = D;

    fn read(&mut self, give: &mut dyn FnMut(D, Diff)) -> Status {
        for (row, diff) in self.rows.by_ref().take(CHUNK) {
            give(row, diff);
        }
        if self.rows.len() > 0 {
            return Status::More;
        }
        if !self.done {
            self.done = true;
            return Status::More; // the capability leaves the start time
        }
        // A finished source holds its final time until the run ends: in an unbounded run
        // that would hold back everything downstream.
        if self.follow {
            Status::Idle
        } else {
            Status::Finished
        }
    }

    fn holding(&self) -> bool {
        !self.done
    }
}

/// The rows `load` returns with their multiplicities (called once, on worker 0, when the
/// dataflow is built), at time `start`; the other workers' sources are empty. With `follow`
/// (an unbounded run) the source then stays open, empty, advancing with the clock.
pub fn snapshot<'s, D: Clone + 'static>(
    scope: Scope<'s, Time>,
    name: &str,
    follow: bool,
    lifecycle: &Lifecycle,
    load: impl FnOnce() -> Result<Vec<(D, Diff)>> + 'static,
) -> VecCollection<'s, Time, D, Diff> {
    let reads = scope.index() == 0;
    clocked_source(scope, name, lifecycle, move |_| {
        let rows = if reads { load()? } else { Vec::new() };
        Ok(SnapshotReader {
            rows: rows.into_iter(),
            done: false,
            follow,
        })
    })
}
