//! Arrangement sizes from differential's logging: updates and batches held per arrange
//! operator, as the `dishflow_arrangement_*` gauges.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use prometheus_client::metrics::gauge::Gauge;

use super::{OperatorLabels, metrics};

/// A worker's view of differential's arrangement events: updates and batches per
/// arrangement operator, added to the process-wide gauges.
#[derive(Default)]
pub struct ArrangementLog {
    names: HashMap<usize, String>,
    handles: HashMap<usize, (Gauge, Gauge)>,
}

impl ArrangementLog {
    /// The operator `id` is called `name` (timely's operator logging).
    pub fn operator(&mut self, id: usize, name: &str) {
        self.names.insert(id, name.to_string());
    }

    fn handles(&mut self, operator: usize) -> &(Gauge, Gauge) {
        let names = &self.names;
        self.handles.entry(operator).or_insert_with(|| {
            let labels = OperatorLabels {
                operator: names.get(&operator).map_or_else(
                    || format!("operator {operator}"),
                    |n| format!("{n} ({operator})"),
                ),
            };
            let m = metrics();
            (
                m.arrangement_updates.get_or_create_owned(&labels),
                m.arrangement_batches.get_or_create_owned(&labels),
            )
        })
    }

    /// Applies one differential event.
    pub fn event(&mut self, event: &differential_dataflow::logging::DifferentialEvent) {
        use differential_dataflow::logging::DifferentialEvent as E;
        let (operator, updates, batches) = match event {
            E::Batch(b) => (b.operator, b.length as i64, 1),
            E::Merge(m) => match m.complete {
                Some(merged) => (
                    m.operator,
                    merged as i64 - m.length1 as i64 - m.length2 as i64,
                    -1,
                ),
                None => return,
            },
            E::Drop(d) => (d.operator, -(d.length as i64), -1),
            _ => return,
        };
        let (u, b) = self.handles(operator);
        u.inc_by(updates);
        b.inc_by(batches);
    }
}

/// Registers, on `worker`, the loggers that feed the arrangement gauges. Call before the
/// worker builds its dataflows (operators take their loggers when they are built).
pub fn log_arrangements(worker: &mut timely::worker::Worker) {
    use differential_dataflow::logging::DifferentialEventBuilder;
    use timely::logging::{TimelyEvent, TimelyEventBuilder};
    let log = Rc::new(RefCell::new(ArrangementLog::default()));
    let Some(mut register) = worker.log_register() else {
        return;
    };
    let names = Rc::clone(&log);
    register.insert::<TimelyEventBuilder, _>("timely", move |_, events| {
        if let Some(events) = events {
            let mut log = names.borrow_mut();
            for (_, event) in events.iter() {
                if let TimelyEvent::Operates(op) = event {
                    log.operator(op.id, &op.name);
                }
            }
        }
    });
    register.insert::<DifferentialEventBuilder, _>("differential/arrange", move |_, events| {
        if let Some(events) = events {
            let mut log = log.borrow_mut();
            for (_, event) in events.iter() {
                log.event(event);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrangement_sizes_follow_batches_merges_and_drops() {
        use differential_dataflow::logging::{
            BatchEvent, DifferentialEvent, DropEvent, MergeEvent,
        };
        let mut log = ArrangementLog::default();
        log.operator(7_000_001, "ArrangeTest");
        for length in [10, 5] {
            log.event(&DifferentialEvent::Batch(BatchEvent {
                operator: 7_000_001,
                length,
            }));
        }
        let merge = |complete| {
            DifferentialEvent::Merge(MergeEvent {
                operator: 7_000_001,
                scale: 0,
                length1: 10,
                length2: 5,
                complete,
            })
        };
        log.event(&merge(None));
        log.event(&merge(Some(12))); // 3 updates cancelled out
        let (updates, batches) = log.handles(7_000_001).clone();
        assert_eq!((updates.get(), batches.get()), (12, 1));
        log.event(&DifferentialEvent::Drop(DropEvent {
            operator: 7_000_001,
            length: 12,
        }));
        assert_eq!((updates.get(), batches.get()), (0, 0));
        let text = metrics().render("test", 0);
        assert!(
            text.contains(
                r#"dishflow_arrangement_updates{job="test",operator="ArrangeTest (7000001)"} 0"#
            ),
            "{text}"
        );
    }
}
