//! Redis dictionary source: restaurant and user entries (one JSON string per key) → a live
//! collection of [`Dictionary`] entries.
//!
//! ```text
//!  worker 0, reader thread, two connections:
//!    1. CONFIG GET notify-keyspace-events; add K$gx (keyspace events for strings, DEL,
//!       expiry) with CONFIG SET if missing
//!    2. PSUBSCRIBE __keyspace@<db>__:<pattern>        ← first, so no change is missed
//!    3. SCAN MATCH <pattern> + MGET, in chunks       → the snapshot (at the job's start time)
//!    4. each notification: GET <key>                 → −old +new, at the time it is read
//!    on a lost connection: reconnect with backoff, subscribe, rescan, emit the difference
//! ```
//!
//! **Why keyspace notifications.** A change reaches the dataflow within milliseconds and costs
//! one GET; polling would cost a full SCAN of every key per interval. Notifications are
//! fire-and-forget (a message published while the subscriber is disconnected is lost), so
//! every (re)connection subscribes *before* it scans, and a full rescan runs every
//! `rescan` as a safety net. Where `CONFIG SET` is refused (managed Redis with a fixed
//! configuration), the source says so once and falls back to a full rescan every `poll`.
//!
//! **Keyed state.** The thread keeps the parsed entry of every key and emits differences, so
//! a notification for an unchanged value, a repeated rescan or a reconnect emits nothing. A
//! value that is not a valid entry (not JSON, neither `menu` nor `login`, a NUL character,
//! or not a string key) counts as absent; each such value is logged, counted and emitted
//! once on a second collection of [`RejectedValue`]s, which the job sends to its dead-letter
//! topic like every other rejection (`sinks::rejects`). Other workers read nothing: the
//! dictionaries are small, and the dataflow exchanges them by key.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dataflows::orders::{Dictionary, parse_dictionary};
use dataflows::{Diff, RejectedValue, Time};
use differential_dataflow::VecCollection;
use redis::{Commands, Connection};
use timely::dataflow::Scope;
use tracing::{info, warn};

use crate::control::{Control, Lifecycle};
use crate::retry::Backoff;
use crate::sources::{Reader, Status, clocked_source};

/// The default Redis URL: the local server's database 0.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/0";

/// Keys per MGET during a scan.
const CHUNK: usize = 1000;

/// Where and how to read the dictionaries.
#[derive(Clone, Debug)]
pub struct RedisSourceConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Which keys are dictionary entries (a Redis glob, `*` = all).
    pub pattern: String,
    /// Keep following changes (else: read the snapshot and finish).
    pub follow: bool,
    /// Full rescan interval with keyspace notifications on (a safety net).
    pub rescan: Duration,
    /// Full rescan interval when notifications cannot be enabled.
    pub poll: Duration,
}

/// What the source reads: a dictionary entry, or a value that is not one.
type Read = Result<Dictionary, RejectedValue>;

/// The entries of every key, and how a new value changes the collection.
#[derive(Default)]
pub struct Entries {
    known: HashMap<String, Dictionary>,
    /// Keys whose value was rejected, with the value (reported once per value).
    rejected: HashMap<String, Vec<u8>>,
    /// Rejections not yet taken by [`Entries::take_rejected`].
    new_rejections: Vec<RejectedValue>,
}

impl Entries {
    /// Applies the current value of `key` (`None`: absent), pushing the changes.
    pub fn set(&mut self, key: &str, value: Option<&[u8]>, out: &mut Vec<(Dictionary, Diff)>) {
        let parsed = match value.map(|v| parse_dictionary(key, v)) {
            None => {
                self.rejected.remove(key);
                None
            }
            Some(Ok(entry)) => {
                self.rejected.remove(key);
                Some(entry)
            }
            Some(Err(reject)) => {
                let value = value.unwrap_or_default();
                if self.rejected.get(key).map(Vec::as_slice) != Some(value) {
                    let reason = reject.code();
                    warn!(
                        key,
                        reason,
                        "Redis value is not a dictionary entry: treated as absent, dead-lettered"
                    );
                    crate::metrics::metrics().dead_lettered(&reason);
                    self.rejected.insert(key.to_string(), value.to_vec());
                    self.new_rejections.push(RejectedValue {
                        key: key.to_string(),
                        value: value.to_vec(),
                        reason,
                    });
                }
                None
            }
        };
        let old = match parsed {
            Some(entry) => {
                if self.known.get(key) == Some(&entry) {
                    return;
                }
                out.push((entry.clone(), 1));
                self.known.insert(key.to_string(), entry)
            }
            None => self.known.remove(key),
        };
        if let Some(old) = old {
            out.push((old, -1));
        }
    }

    /// Applies a full scan: every key in `scan` with its value; known keys not in it are gone.
    pub fn replace(
        &mut self,
        scan: Vec<(String, Option<Vec<u8>>)>,
        out: &mut Vec<(Dictionary, Diff)>,
    ) {
        let seen: HashSet<&str> = scan.iter().map(|(k, _)| k.as_str()).collect();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !seen.contains(k.as_str()))
            .cloned()
            .collect();
        for key in gone {
            self.set(&key, None, out);
        }
        for (key, value) in &scan {
            self.set(key, value.as_deref(), out);
        }
    }

    /// The values rejected since the last call (each new bad value once).
    pub fn take_rejected(&mut self) -> Vec<RejectedValue> {
        std::mem::take(&mut self.new_rejections)
    }

    /// Number of valid entries.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether there is no valid entry.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

enum Event {
    Updates(Vec<(Read, Diff)>),
    SnapshotDone,
}

/// Opens a connection to `url` with a timeout.
fn connect(client: &redis::Client) -> Result<Connection> {
    client
        .get_connection_with_timeout(Duration::from_secs(5))
        .context("cannot connect to Redis")
}

/// Makes sure keyspace notifications for string writes, deletes and expiry are on; returns
/// whether they are.
fn enable_notifications(con: &mut Connection) -> bool {
    let current: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query(con);
    let flags = match current {
        Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
        Err(error) => {
            warn!(%error, "cannot read Redis notify-keyspace-events");
            return false;
        }
    };
    let has = |c: char| flags.contains(c);
    let all = has('A');
    if has('K') && (all || (has('$') && has('g') && has('x'))) {
        return true;
    }
    let mut wanted = flags.clone();
    for c in ['K', '$', 'g', 'x'] {
        let covered = wanted.contains(c) || (all && c != 'K');
        if !covered {
            wanted.push(c);
        }
    }
    match redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query::<()>(con)
    {
        Ok(()) => {
            info!(from = %flags, to = %wanted, "enabled Redis keyspace notifications");
            true
        }
        Err(error) => {
            warn!(%error, "cannot enable Redis keyspace notifications; polling with full scans instead");
            false
        }
    }
}

/// Every key matching `pattern`, with its value (`None`: not a string, or gone meanwhile).
fn scan(con: &mut Connection, pattern: &str) -> Result<Vec<(String, Option<Vec<u8>>)>> {
    let keys: Vec<String> = con
        .scan_match::<_, String>(pattern)
        .context("SCAN failed")?
        .collect::<Result<HashSet<_>, _>>()
        .context("SCAN failed")?
        .into_iter()
        .collect();
    let mut entries = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(chunk)
            .query(con)
            .context("MGET failed")?;
        entries.extend(chunk.iter().cloned().zip(values));
    }
    Ok(entries)
}

/// The reader thread.
struct Follower {
    config: RedisSourceConfig,
    client: redis::Client,
    db: i64,
    entries: Entries,
    tx: SyncSender<Event>,
    wake: Box<dyn Fn() + Send>,
    control: Control,
}

impl Follower {
    /// Sends `event` and wakes the operator; `false` once the operator is gone.
    fn notify(&self, event: Event) -> bool {
        let sent = self.tx.send(event).is_ok();
        (self.wake)();
        sent
    }

    /// Sends `updates` and the values just rejected; `false` once the operator is gone.
    fn send(&mut self, updates: Vec<(Dictionary, Diff)>) -> bool {
        let rejected = self.entries.take_rejected();
        if updates.is_empty() && rejected.is_empty() {
            return true;
        }
        let reads = updates
            .into_iter()
            .map(|(entry, diff)| (Ok(entry), diff))
            .chain(rejected.into_iter().map(|value| (Err(value), 1)))
            .collect();
        self.notify(Event::Updates(reads))
    }

    /// Scans and emits the difference to what is known.
    fn rescan(&mut self, con: &mut Connection) -> Result<bool> {
        let scanned = scan(con, &self.config.pattern)?;
        let mut updates = Vec::new();
        self.entries.replace(scanned, &mut updates);
        Ok(self.send(updates))
    }

    fn run(mut self) {
        let mut first = true;
        let mut backoff = Backoff::new("Redis dictionary source");
        while !self.control.shutdown_requested() {
            match self.session(&mut first, &mut backoff) {
                Ok(()) => return,
                Err(error) if first => {
                    self.control.fail(error);
                    return;
                }
                Err(error) => backoff.failed(&error),
            }
        }
    }

    /// One connection's life: subscribe, scan, follow. `Ok` at the end (operator gone,
    /// shutdown, or a bounded run's snapshot read).
    fn session(&mut self, first: &mut bool, backoff: &mut Backoff) -> Result<()> {
        let mut con = connect(&self.client)?;
        let notifications = self.config.follow && enable_notifications(&mut con);
        // The subscription lives as long as its PubSub handle (dropping it unsubscribes).
        let mut sub_connection = if notifications {
            Some(connect(&self.client)?)
        } else {
            None
        };
        let mut events = match sub_connection.as_mut() {
            Some(sub) => {
                let mut pubsub = sub.as_pubsub();
                let pattern = format!("__keyspace@{}__:{}", self.db, self.config.pattern);
                pubsub.psubscribe(&pattern).context("PSUBSCRIBE failed")?;
                Some(pubsub)
            }
            None => None,
        };
        if !self.rescan(&mut con)? {
            return Ok(());
        }
        info!(
            entries = self.entries.len(),
            notifications, "Redis dictionaries read"
        );
        if *first && !self.notify(Event::SnapshotDone) {
            return Ok(());
        }
        *first = false;
        backoff.succeeded();
        if !self.config.follow {
            return Ok(());
        }
        let interval = if notifications {
            self.config.rescan
        } else {
            self.config.poll
        };
        let mut next_rescan = Instant::now() + interval;
        let prefix = format!("__keyspace@{}__:", self.db);
        while !self.control.shutdown_requested() {
            if Instant::now() >= next_rescan {
                if !self.rescan(&mut con)? {
                    return Ok(());
                }
                next_rescan = Instant::now() + interval;
            }
            let Some(pubsub) = events.as_mut() else {
                std::thread::sleep(interval.min(Duration::from_millis(200)));
                continue;
            };
            pubsub.set_read_timeout(Some(Duration::from_millis(200)))?;
            // Drain what arrived, then GET each changed key once.
            let mut changed: Vec<String> = Vec::new();
            let mut seen: HashSet<String> = HashSet::new();
            loop {
                match pubsub.get_message() {
                    Ok(message) => {
                        if let Some(key) = message.get_channel_name().strip_prefix(&prefix)
                            && seen.insert(key.to_string())
                        {
                            changed.push(key.to_string());
                        }
                        if changed.len() >= CHUNK {
                            break;
                        }
                        pubsub.set_read_timeout(Some(Duration::from_millis(1)))?;
                    }
                    Err(error) if error.is_timeout() => break,
                    Err(error) => return Err(error).context("Redis notifications lost"),
                }
            }
            if changed.is_empty() {
                continue;
            }
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&changed)
                .query(&mut con)
                .context("MGET failed")?;
            let mut updates = Vec::new();
            for (key, value) in changed.iter().zip(values) {
                self.entries.set(key, value.as_deref(), &mut updates);
            }
            if !self.send(updates) {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The operator side: forwards the thread's updates.
struct DictionaryReader {
    rx: Option<Receiver<Event>>,
    snapshot_done: bool,
    follow: bool,
}

impl Reader for DictionaryReader {
    type Data = Read;

    fn read(&mut self, give: &mut dyn FnMut(Read, Diff)) -> Status {
        let Some(rx) = self.rx.as_ref() else {
            // Not the reading worker: nothing to read, but in an unbounded run the source must
            // move with the clock (a finished source holds its final time until the end).
            return if self.follow {
                Status::Idle
            } else {
                Status::Finished
            };
        };
        loop {
            match rx.try_recv() {
                Ok(Event::Updates(updates)) => {
                    for (entry, diff) in updates {
                        give(entry, diff);
                    }
                }
                Ok(Event::SnapshotDone) => {
                    self.snapshot_done = true;
                    return Status::More; // the rest belongs to a later time
                }
                Err(TryRecvError::Empty) => return Status::Idle,
                Err(TryRecvError::Disconnected) => return Status::Finished,
            }
        }
    }

    fn holding(&self) -> bool {
        self.rx.is_some() && !self.snapshot_done
    }
}

/// Checks that Redis answers at `url` (a startup check with one clear error).
pub fn check(url: &str) -> Result<()> {
    let client = redis::Client::open(url).context("invalid --redis-url")?;
    let mut con = connect(&client)?;
    redis::cmd("PING")
        .query::<String>(&mut con)
        .context("Redis does not answer PING")?;
    Ok(())
}

/// The dictionary source's two collections: the valid entries, and each value that is not
/// one (at the time it was read, once per key and value; its key counts as absent).
pub struct Dictionaries<'s> {
    /// The valid entries.
    pub entries: VecCollection<'s, Time, Dictionary, Diff>,
    /// The values that are not entries, bound for the job's dead-letter topic.
    pub rejected: VecCollection<'s, Time, RejectedValue, Diff>,
}

/// Builds the dictionary source: worker 0 reads (snapshot at `start`, then changes at the
/// times they are read); the other workers' sources finish at once.
pub fn dictionaries<'s>(
    scope: Scope<'s, Time>,
    config: RedisSourceConfig,
    lifecycle: &Lifecycle,
) -> Dictionaries<'s> {
    let reads = scope.index() == 0;
    let thread_control = lifecycle.control.clone();
    let read = clocked_source(scope, "RedisDictionaries", lifecycle, move |activator| {
        if !reads {
            return Ok(DictionaryReader {
                rx: None,
                snapshot_done: true,
                follow: config.follow,
            });
        }
        let follow = config.follow;
        let client = redis::Client::open(config.url.as_str()).context("invalid --redis-url")?;
        let db = client.get_connection_info().redis_settings().db();
        let (tx, rx) = sync_channel(16);
        let follower = Follower {
            config,
            client,
            db,
            entries: Entries::default(),
            tx,
            wake: Box::new(move || {
                let _ = activator.activate();
            }),
            control: thread_control,
        };
        std::thread::Builder::new()
            .name("redis-dictionaries".into())
            .spawn(move || follower.run())?;
        Ok(DictionaryReader {
            rx: Some(rx),
            snapshot_done: false,
            follow,
        })
    });
    Dictionaries {
        entries: read.clone().flat_map(Result::ok),
        rejected: read.flat_map(Result::err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &[u8] = br#"{"_id": "u1", "name": "Olga", "login": "olga"}"#;
    const RENAMED: &[u8] = br#"{"_id": "u1", "name": "Olga K.", "login": "olga"}"#;

    fn user(name: &str) -> Dictionary {
        Dictionary::User {
            id: "u1".into(),
            name: name.into(),
            login: "olga".into(),
        }
    }

    #[test]
    fn values_become_differences_and_rescans_emit_only_what_changed() {
        let mut entries = Entries::default();
        let mut out = Vec::new();
        entries.set("u1", Some(USER), &mut out);
        entries.set("u1", Some(USER), &mut out);
        assert_eq!(out, [(user("Olga"), 1)]);
        out.clear();
        entries.set("u1", Some(RENAMED), &mut out);
        assert_eq!(out, [(user("Olga K."), 1), (user("Olga"), -1)]);
        out.clear();
        entries.set("u1", Some(b"not json"), &mut out);
        assert_eq!(out, [(user("Olga K."), -1)]);
        out.clear();
        entries.set("u1", Some(b"not json"), &mut out);
        let rejected = entries.take_rejected();
        assert_eq!(rejected.len(), 1, "each bad value once");
        assert_eq!(rejected[0].reason, "not_json");
        assert_eq!(rejected[0].value, b"not json");
        entries.replace(vec![("u1".into(), Some(USER.to_vec()))], &mut out);
        assert_eq!(out, [(user("Olga"), 1)]);
        out.clear();
        entries.replace(vec![("u1".into(), Some(USER.to_vec()))], &mut out);
        assert!(out.is_empty());
        entries.replace(vec![], &mut out);
        assert_eq!(out, [(user("Olga"), -1)]);
        assert!(entries.is_empty());
    }
}
