//! A followed table other than the subscribers: a small table with a text key, followed by
//! worker 0 of two (`Split::WorkerZero`), against a real Postgres: the snapshot, then
//! inserts, updates (also of the key), deletes and a truncate, each becoming exactly the
//! changes of the collection. Run via `scripts/test.sh`.

#![cfg(feature = "integration")]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use dishflow::control::{Completion, Control, Lifecycle, completion_barrier};
use dishflow::sources::postgres::{FollowConfig, FollowedRow, Split, followed_table};
use dishflow_testkit::*;
use timely::dataflow::operators::Inspect;

/// A row of `public.rules(tag text PRIMARY KEY, threshold int)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rule {
    tag: String,
    threshold: Option<i32>,
}

impl FollowedRow for Rule {
    const TABLE: &'static str = "public.rules";
    const KEY: &'static str = "tag";
    const COLUMNS: &'static [&'static str] = &["tag", "threshold"];
    const SPLIT: Split = Split::WorkerZero;
    const SOURCE: &'static str = "RulesSource";

    fn from_columns(values: &[Option<&str>]) -> Result<Self> {
        match values {
            [Some(tag), threshold] => Ok(Rule {
                tag: tag.to_string(),
                threshold: threshold.map(str::parse).transpose()?,
            }),
            _ => Err(anyhow!("a rule without a tag")),
        }
    }
}

/// The collection so far: every row with its count (consolidated), as `tag → (threshold,
/// count)`.
type Seen = Arc<Mutex<BTreeMap<Rule, dataflows::Diff>>>;

fn current(seen: &Seen) -> Vec<(String, Option<i32>)> {
    let seen = seen.lock().expect("seen");
    assert!(seen.values().all(|&c| c == 0 || c == 1), "{seen:?}");
    (seen.iter())
        .filter(|(_, c)| **c == 1)
        .map(|(r, _)| (r.tag.clone(), r.threshold))
        .collect()
}

fn rules(rows: &[(&str, Option<i32>)]) -> Vec<(String, Option<i32>)> {
    rows.iter().map(|(t, n)| (t.to_string(), *n)).collect()
}

#[test]
fn a_small_table_with_a_text_key_is_followed_by_worker_zero() {
    let db = database("followed");
    let mut client = pg(&db);
    let publication = "dishflow_test_rules";
    client
        .batch_execute(&format!(
            "CREATE TABLE public.rules (tag text PRIMARY KEY, threshold int);
             INSERT INTO public.rules VALUES ('gold', 10), ('silver', NULL);
             CREATE PUBLICATION {publication} FOR TABLE public.rules;"
        ))
        .expect("table");

    let seen: Seen = Arc::default();
    let shutdown = Arc::new(AtomicBool::new(false));
    let (fatal, outcomes) = std::sync::mpsc::channel();
    let control = Control::new(fatal, shutdown.clone());
    let config = FollowConfig {
        url: db.to_string(),
        publication: publication.to_string(),
        follow: true,
        poll: Duration::from_millis(10),
    };
    let workers = {
        let (seen, control) = (seen.clone(), control.clone());
        std::thread::spawn(move || {
            timely::execute(timely::Config::process(2), move |worker| {
                let lifecycle = Lifecycle {
                    control: control.clone(),
                    completion: Completion::default(),
                    start: dishflow::clock::wall_clock_ms(),
                    tick: Duration::from_millis(10),
                };
                let (seen, config) = (seen.clone(), config.clone());
                worker.dataflow::<dataflows::Time, _, _>(|scope| {
                    followed_table::<Rule>(scope, config, &lifecycle)
                        .inner
                        .inspect(move |(rule, _, diff)| {
                            *seen.lock().expect("seen").entry(rule.clone()).or_default() += *diff;
                        });
                    completion_barrier(scope, &lifecycle);
                });
            })
            .expect("timely")
            .join()
        })
    };
    let minute = Duration::from_secs(60);
    let expect = |rows: Vec<(String, Option<i32>)>, what: &str| {
        wait_until(minute, what, || (current(&seen) == rows).then_some(()));
    };

    expect(
        rules(&[("gold", 10.into()), ("silver", None)]),
        "the snapshot",
    );
    client
        .batch_execute(
            "INSERT INTO public.rules VALUES ('bronze', 1);
             UPDATE public.rules SET threshold = 20 WHERE tag = 'gold';
             DELETE FROM public.rules WHERE tag = 'silver';",
        )
        .expect("changes");
    expect(
        rules(&[("bronze", 1.into()), ("gold", 20.into())]),
        "insert, update, delete",
    );
    client
        .batch_execute("UPDATE public.rules SET tag = 'platinum' WHERE tag = 'gold'")
        .expect("key update");
    expect(
        rules(&[("bronze", 1.into()), ("platinum", 20.into())]),
        "a key update",
    );
    client
        .batch_execute("TRUNCATE public.rules")
        .expect("truncate");
    expect(Vec::new(), "a truncate");

    control.request_shutdown();
    let results = workers.join().expect("the workers' thread");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    control.join_threads();
    assert!(outcomes.try_recv().is_err(), "no fatal error");
    // Only worker 0 held a slot; the test's database is dropped with it gone.
    drop(client);
}
