//! `dishflow produce events`: a reproducible data set for the geo job, in the legacy RAW
//! layout (`../shared/SPEC.md`, Job 3), to Kafka and/or a JSON-lines file.
//!
//! * Users live around one of the built-in cities (more in the larger ones), a few km from
//!   its centre; some live in groups a few hundred metres apart (recommendations exist).
//! * A fifth of the users travel once, to another city, for 1 to 40 days (some stay 27 days
//!   or more: a new home city).
//! * Channel sizes follow a heavy-tailed law: channel 0 has a large share of all users.
//! * Every user subscribes to one to four channels, and each day writes 0–3 messages (most
//!   to a channel, some directly to a contact) and reacts now and then; 5% of the events
//!   have no coordinates; 1% arrive late (at the end of the stream).

use std::io::Write;

use anyhow::{Context, Result};
use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
use clap::Args;
use dataflows::geo::cities::builtin;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use super::RawEncoder;
use crate::kafka::{KafkaArgs, ensure_topic};
use crate::sinks::SinkWriter;
use crate::sinks::kafka::KafkaWriter;

/// Arguments of `dishflow produce events`.
#[derive(Debug, Args)]
pub struct ProduceEventsArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic the events are written to (created with --partitions if missing).
    #[arg(long, env = "DISHFLOW_TOPIC", default_value = "geo_events")]
    pub topic: String,

    /// Partitions of the topic, if it has to be created.
    #[arg(long, env = "DISHFLOW_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,

    /// Number of users.
    #[arg(long, env = "DISHFLOW_USERS", default_value_t = 1000)]
    pub users: u64,

    /// Number of days of events.
    #[arg(long, env = "DISHFLOW_DAYS", default_value_t = 30)]
    pub days: u32,

    /// Number of channels.
    #[arg(long, env = "DISHFLOW_CHANNELS", default_value_t = 50)]
    pub channels: u64,

    /// Random seed: the same seed gives the same data set.
    #[arg(long, env = "DISHFLOW_SEED", default_value_t = 1)]
    pub seed: u64,

    /// The first day (UTC).
    #[arg(long, env = "DISHFLOW_START", default_value = "2022-05-01")]
    pub start: NaiveDate,

    /// Also write the events to this file, one JSON object per line (for peers and oracles).
    #[arg(long, env = "DISHFLOW_OUT", value_name = "FILE.jsonl")]
    pub out: Option<std::path::PathBuf>,

    /// Only write the file (no Kafka).
    #[arg(long, requires = "out")]
    pub file_only: bool,
}

/// A user of the data set.
struct User {
    id: i64,
    home: (f64, f64),
    /// (first day, days, where) of the user's trip, if any.
    trip: Option<(u32, u32, (f64, f64))>,
    channels: Vec<u64>,
    contacts: Vec<i64>,
}

/// A point `km` away from `at` in a random direction (flat approximation: fine at city scale).
fn around(rng: &mut StdRng, at: (f64, f64), km: f64) -> (f64, f64) {
    let angle = rng.random_range(0.0..std::f64::consts::TAU);
    let distance = km * rng.random_range(0.0..1.0f64).sqrt();
    let dlat = distance / 111.2 * angle.sin();
    let dlon = distance / (111.2 * at.0.to_radians().cos()) * angle.cos();
    (at.0 + dlat, at.1 + dlon)
}

/// An index drawn with probability `weights[i] / total` (cities by size, channels by a
/// heavy-tailed law).
fn weighted(rng: &mut StdRng, weights: &[f64], total: f64) -> u64 {
    let mut x = rng.random_range(0.0..total);
    for (rank, w) in weights.iter().enumerate() {
        if x < *w {
            return rank as u64;
        }
        x -= w;
    }
    (weights.len() - 1) as u64
}

/// The data set of `args`: (key, JSON value) in sending order.
pub fn event_data(args: &ProduceEventsArgs) -> Vec<(String, String)> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let cities = builtin();
    // Larger cities first in the list: weight 1 / (index + 1).
    let city_weights: Vec<f64> = (0..cities.len()).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let city_total: f64 = city_weights.iter().sum();
    let channels = args.channels.max(1) as usize;
    // Channel rank r has weight 1 / (r + 1)^1.2.
    let channel_weights: Vec<f64> = (0..channels)
        .map(|r| 1.0 / ((r + 1) as f64).powf(1.2))
        .collect();
    let channel_total: f64 = channel_weights.iter().sum();
    let n = args.users.max(2);
    let first_id = 100_000i64;
    let mut users: Vec<User> = Vec::new();
    let mut group_home: Option<((f64, f64), u32)> = None;
    for i in 0..n {
        let home = match group_home {
            // A group: a few users within a few hundred metres of each other.
            Some((at, left)) if left > 0 => {
                group_home = Some((at, left - 1));
                around(&mut rng, at, 0.3)
            }
            _ => {
                let c = weighted(&mut rng, &city_weights, city_total) as usize;
                let centre = cities[c].centre.degrees();
                let at = around(&mut rng, centre, 8.0);
                if rng.random_range(0..10) == 0 {
                    group_home = Some((at, rng.random_range(2..5)));
                }
                at
            }
        };
        let trip = (rng.random_range(0..5) == 0).then(|| {
            let c = rng.random_range(0..cities.len());
            let days = rng.random_range(1..=40u32);
            let first = rng.random_range(0..args.days.max(1));
            (
                first,
                days,
                around(&mut rng, cities[c].centre.degrees(), 5.0),
            )
        });
        let subscriptions = rng.random_range(1..=4);
        let mut own: Vec<u64> = (0..subscriptions)
            .map(|_| weighted(&mut rng, &channel_weights, channel_total))
            .collect();
        own.sort_unstable();
        own.dedup();
        users.push(User {
            id: first_id + i as i64,
            home,
            trip,
            channels: own,
            contacts: Vec::new(),
        });
    }
    for user in users.iter_mut() {
        let own = user.id;
        user.contacts = (0..rng.random_range(0..3))
            .map(|_| first_id + rng.random_range(0..n) as i64)
            .filter(|&c| c != own)
            .collect();
    }
    let start = args.start.and_hms_opt(0, 0, 0).unwrap_or_default();
    let stamp = |t: NaiveDateTime| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let mut events: Vec<(String, String)> = Vec::new();
    let mut late: Vec<(String, String)> = Vec::new();
    for user in &users {
        for channel in &user.channels {
            let t = start + TimeDelta::seconds(rng.random_range(0..86_400));
            // Half of the subscriptions are made at home, the others without coordinates.
            let (lat, lon) = if rng.random_range(0..2) == 0 {
                let (lat, lon) = around(&mut rng, user.home, 0.2);
                (json!(lat), json!(lon))
            } else {
                (Value::Null, Value::Null)
            };
            let value = json!({"event_type": "subscription",
                "event": {"datetime": stamp(t), "subscription_channel": channel,
                          "user": user.id.to_string()},
                "lat": lat, "lon": lon});
            events.push((user.id.to_string(), value.to_string()));
        }
    }
    for day in 0..args.days {
        // Message ids: the day's number since 1970 times 10⁷, plus a counter — data sets of
        // different days (`--start`) never share an id.
        let date = args.start + TimeDelta::days(i64::from(day));
        let mut message_id =
            (date - chrono::DateTime::UNIX_EPOCH.date_naive()).num_days() * 10_000_000;
        for user in &users {
            let at = match user.trip {
                Some((first, days, place)) if day >= first && day < first + days => place,
                _ => user.home,
            };
            let mut emit = |rng: &mut StdRng, value: Value| {
                let record = (user.id.to_string(), value.to_string());
                if rng.random_range(0..100) == 0 {
                    late.push(record);
                } else {
                    events.push(record);
                }
            };
            let coordinates = |rng: &mut StdRng| {
                if rng.random_range(0..20) == 0 {
                    (Value::Null, Value::Null)
                } else {
                    let (lat, lon) = around(rng, at, 0.2);
                    (json!(lat), json!(lon))
                }
            };
            for _ in 0..rng.random_range(0..=3) {
                let t = start
                    + TimeDelta::days(i64::from(day))
                    + TimeDelta::seconds(rng.random_range(0..86_400));
                message_id += 1;
                let direct = !user.contacts.is_empty() && rng.random_range(0..10) < 3;
                let (to, channel_to) = if direct {
                    let c = user.contacts[rng.random_range(0..user.contacts.len())];
                    (json!(c), Value::Null)
                } else {
                    let c = user.channels[rng.random_range(0..user.channels.len())];
                    (Value::Null, json!(c))
                };
                let (lat, lon) = coordinates(&mut rng);
                let fraction: u32 = rng.random_range(0..1_000_000);
                emit(
                    &mut rng,
                    json!({"event_type": "message",
                        "event": {"message_id": message_id, "message_from": user.id,
                                  "message_to": to, "message_channel_to": channel_to,
                                  "message_ts": format!("{}.{fraction:06}", stamp(t)),
                                  "datetime": stamp(t), "message": "…"},
                        "lat": lat, "lon": lon}),
                );
            }
            if rng.random_range(0..2) == 0 {
                let t = start
                    + TimeDelta::days(i64::from(day))
                    + TimeDelta::seconds(rng.random_range(0..86_400));
                let (lat, lon) = coordinates(&mut rng);
                emit(
                    &mut rng,
                    json!({"event_type": "reaction",
                        "event": {"datetime": stamp(t), "message_id": message_id,
                                  "reaction_from": user.id.to_string(), "reaction_type": "like"},
                        "lat": lat, "lon": lon}),
                );
            }
        }
    }
    events.append(&mut late);
    events
}

/// Produces the data set of `args` (see the module docs).
pub fn events(args: &ProduceEventsArgs) -> Result<()> {
    let data = event_data(args);
    if let Some(path) = &args.out {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for (_, value) in &data {
            writeln!(out, "{value}")?;
        }
        out.flush()?;
    }
    if !args.file_only {
        ensure_topic(&args.kafka, &args.topic, args.partitions)?;
        let mut writer = KafkaWriter::new(&args.kafka, &args.topic, RawEncoder)?;
        let batch: Vec<((String, String), u64, isize)> =
            data.iter().map(|m| (m.clone(), 0, 1)).collect();
        for chunk in batch.chunks(100_000) {
            writer.write(chunk)?;
        }
    }
    tracing::info!(topic = %args.topic, users = args.users, days = args.days, events = data.len(), "produced");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::geo::events::{Action, parse_event};
    use dataflows::geo::point::distance_km;
    use std::collections::{HashMap, HashSet};

    fn args(users: u64, days: u32) -> ProduceEventsArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Command {
            #[command(flatten)]
            args: ProduceEventsArgs,
        }
        let (users, days) = (users.to_string(), days.to_string());
        Command::parse_from(["produce-events", "--users", &users, "--days", &days]).args
    }

    #[test]
    fn the_event_data_set_is_reproducible_valid_and_has_what_the_marts_need() {
        let a = event_data(&args(300, 40));
        assert_eq!(
            a,
            event_data(&args(300, 40)),
            "the same seed, the same data"
        );
        let events: Vec<_> = (a.iter())
            .map(|(_, v)| parse_event(Some(v.as_bytes())).expect("a valid event"))
            .collect();
        let without = events.iter().filter(|e| e.point.is_none()).count();
        assert!(
            without > events.len() / 100,
            "some events have no coordinates"
        );
        // One channel with a large share of the users.
        let mut members: HashMap<i64, HashSet<i64>> = HashMap::new();
        for e in &events {
            if let Action::Subscription { channel } = e.action {
                members.entry(channel).or_default().insert(e.user);
            }
        }
        let largest = members.values().map(HashSet::len).max().unwrap_or(0);
        assert!(
            largest >= 60,
            "the largest channel has {largest} of 300 users"
        );
        // Users within 1 km of each other (the groups).
        let mut latest: HashMap<i64, dataflows::geo::point::Point> = HashMap::new();
        for e in &events {
            if let (Action::Message { .. }, Some(p)) = (&e.action, e.point) {
                latest.insert(e.user, p);
            }
        }
        let points: Vec<_> = latest.values().copied().collect();
        let close = (0..points.len())
            .flat_map(|i| (i + 1..points.len()).map(move |j| (i, j)))
            .filter(|&(i, j)| distance_km(points[i], points[j]) <= 1.0)
            .count();
        assert!(close > 0, "some users live within 1 km of each other");
        let direct = events
            .iter()
            .filter(|e| matches!(e.action, Action::Message { to: Some(_), .. }))
            .count();
        assert!(direct > 0, "some direct messages");
    }
}
