//! `dishflow produce`: valid test data for the jobs.

mod geo;

pub use geo::{ProduceEventsArgs, event_data, events};

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use dataflows::promos::{Campaign, CampaignFields};

use clap::{Args, Subcommand};

use crate::kafka::KafkaArgs;
use crate::kafka::ensure_topic;
use crate::sinks::SinkWriter;
use crate::sinks::kafka::{Encoder, KafkaMessage, KafkaWriter};
use crate::sources::redis::DEFAULT_URL as DEFAULT_REDIS_URL;

/// What `dishflow produce` generates.
#[derive(Debug, Subcommand)]
pub enum ProduceCommand {
    /// A reproducible data set of the messaging app's events for the geo job (Kafka and/or
    /// a JSON-lines file).
    Events(ProduceEventsArgs),
    /// Valid campaign messages for the promos job.
    Promos(ProducePromosArgs),
    /// A reproducible order history (Kafka) with its restaurants, menus and users (Redis).
    Orders(ProduceOrdersArgs),
}

/// Arguments of `dishflow produce orders`.
#[derive(Debug, Args)]
pub struct ProduceOrdersArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Redis the dictionaries are written to.
    #[arg(long, env = "DISHFLOW_REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,

    /// Topic the orders are written to (created with --partitions if missing).
    #[arg(long, env = "DISHFLOW_TOPIC", default_value = "order-service_orders")]
    pub topic: String,

    /// Partitions of the topic, if it has to be created.
    #[arg(long, env = "DISHFLOW_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,

    /// Number of orders (each sent once, some also re-sent with a later status).
    #[arg(long, env = "DISHFLOW_ORDERS", default_value_t = 1000)]
    pub orders: u64,

    /// Number of restaurants (menus of 10–30 products in 8 categories).
    #[arg(long, env = "DISHFLOW_RESTAURANTS", default_value_t = 100)]
    pub restaurants: u64,

    /// Number of users.
    #[arg(long, env = "DISHFLOW_USERS", default_value_t = 5000)]
    pub users: u64,

    /// Random seed: the same seed gives the same data set.
    #[arg(long, env = "DISHFLOW_SEED", default_value_t = 1)]
    pub seed: u64,

    /// First `object_id`.
    #[arg(long, env = "DISHFLOW_FIRST_ORDER", default_value_t = 1)]
    pub first_order: u64,

    /// Prefix of every restaurant, product and user id (and so of their Redis keys), to keep
    /// several data sets apart in one Redis.
    #[arg(long, env = "DISHFLOW_ID_PREFIX", default_value = "")]
    pub id_prefix: String,

    /// Write only the dictionaries (no orders).
    #[arg(long, conflicts_with = "orders_only")]
    pub dictionaries_only: bool,

    /// Write only the orders (the dictionaries are already there, or come later).
    #[arg(long)]
    pub orders_only: bool,
}

/// Arguments of `dishflow produce promos`.
#[derive(Debug, Args)]
pub struct ProducePromosArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic to write to (created with --partitions if missing).
    #[arg(long, env = "DISHFLOW_TOPIC", default_value = "restaurant_promos")]
    pub topic: String,

    /// Partitions of the topic, if it has to be created.
    #[arg(long, env = "DISHFLOW_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,

    /// Number of campaigns to produce.
    #[arg(long, env = "DISHFLOW_COUNT", default_value_t = 10)]
    pub count: u64,

    /// Campaigns go to restaurants `<prefix>…<n>` for n in 0..restaurants, round robin. With the
    /// default prefix, restaurant 0 is the seed example's `123e4567-e89b-12d3-a456-426614174000`.
    #[arg(long, env = "DISHFLOW_RESTAURANTS", default_value_t = 1)]
    pub restaurants: u64,

    /// First campaign number: campaign ids are `<campaign-prefix>…<n>`.
    #[arg(long, env = "DISHFLOW_FIRST_CAMPAIGN", default_value_t = 3)]
    pub first_campaign: u64,

    /// Campaign validity start, relative to now, in seconds (negative: already started).
    #[arg(long, env = "DISHFLOW_START_IN", default_value_t = -3600, allow_hyphen_values = true)]
    pub start_in: i64,

    /// Campaign validity, in seconds from the start.
    #[arg(long, env = "DISHFLOW_VALID_FOR", default_value_t = 86_400)]
    pub valid_for: i64,

    /// Use the seed example's fixed datetimes (start 1659203516, end 2659207116) instead of
    /// --start-in / --valid-for.
    #[arg(long, env = "DISHFLOW_SEED_TIMES")]
    pub seed_times: bool,
}

/// The seed example's UUID with its last group replaced by `n` (12 decimal digits):
/// `uuid_like(426614174000)` is `123e4567-e89b-12d3-a456-426614174000`.
pub fn uuid_like(n: u64) -> String {
    format!("123e4567-e89b-12d3-a456-{:012}", n % 1_000_000_000_000)
}

/// The SPEC's example fields for campaign number `n` of restaurant number `r`.
fn campaign(n: u64, r: u64, start: i64, end: i64, created: i64) -> Campaign {
    let content = if n == 3 {
        "first campaign".to_string()
    } else {
        format!("campaign {n}")
    };
    Campaign::from(CampaignFields {
        restaurant_id: &uuid_like(426_614_174_000 + r),
        adv_campaign_id: &uuid_like(426_614_174_000 + n),
        adv_campaign_content: &content,
        adv_campaign_owner: "Ivanov Ivan Ivanovich",
        adv_campaign_owner_contact: "iiivanov@restaurant.ru",
        adv_campaign_datetime_start: start,
        adv_campaign_datetime_end: end,
        datetime_created: created,
    })
}

/// Campaigns as JSON values, keyed by campaign id.
struct CampaignEncoder;

impl Encoder<Campaign> for CampaignEncoder {
    fn encode(&self, c: &Campaign, _: u64, _: isize) -> Result<Option<KafkaMessage>> {
        Ok(Some(KafkaMessage {
            key: Some(c.adv_campaign_id().as_bytes().to_vec()),
            value: Some(serde_json::to_vec(c)?),
            headers: Vec::new(),
        }))
    }
}

/// Produces `args.count` valid campaigns, confirming every delivery.
pub fn promos(args: &ProducePromosArgs) -> Result<()> {
    ensure_topic(&args.kafka, &args.topic, args.partitions)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs() as i64;
    let (start, end, created) = if args.seed_times {
        (1_659_203_516, 2_659_207_116, 1_659_131_516)
    } else {
        let start = now + args.start_in;
        (start, start + args.valid_for, now)
    };
    let mut writer = KafkaWriter::new(&args.kafka, &args.topic, CampaignEncoder)?;
    let restaurants = args.restaurants.max(1);
    let batch: Vec<(Campaign, u64, isize)> = (0..args.count)
        .map(|i| {
            let c = campaign(
                args.first_campaign + i,
                i % restaurants,
                start,
                end,
                created,
            );
            (c, 0, 1)
        })
        .collect();
    for chunk in batch.chunks(100_000) {
        writer.write(chunk)?;
    }
    tracing::info!(brokers = %args.kafka.brokers, topic = %args.topic, count = args.count, "produced");
    Ok(())
}

/// Raw (key, value) messages.
struct RawEncoder;

impl Encoder<(String, String)> for RawEncoder {
    fn encode(&self, m: &(String, String), _: u64, _: isize) -> Result<Option<KafkaMessage>> {
        Ok(Some(KafkaMessage {
            key: Some(m.0.clone().into_bytes()),
            value: Some(m.1.clone().into_bytes()),
            headers: Vec::new(),
        }))
    }
}

/// A generated order data set: Redis entries and Kafka messages, in sending order.
pub struct OrderData {
    /// (Redis key, JSON value) of every restaurant and user.
    pub dictionaries: Vec<(String, String)>,
    /// (Kafka key = object_id, JSON value) of every order message.
    pub messages: Vec<(String, String)>,
}

const CATEGORIES: [&str; 8] = [
    "Выпечка",
    "Пицца",
    "Роллы",
    "Супы",
    "Салаты",
    "Напитки",
    "Десерты",
    "Горячее",
];
const DISHES: [&str; 8] = [
    "КРУАССАН",
    "ПИЦЦА",
    "РОЛЛ",
    "СУП",
    "САЛАТ",
    "МОРС",
    "ЧИЗКЕЙК",
    "ПЛОВ",
];
const PLACES: [&str; 6] = [
    "Кофейня",
    "Пиццерия",
    "Суши-бар",
    "Гриль",
    "Пекарня",
    "Столовая",
];
/// (first name, is female).
const FIRST: [(&str, bool); 8] = [
    ("Ольга", true),
    ("Иван", false),
    ("Мария", true),
    ("Пётр", false),
    ("Анна", true),
    ("Сергей", false),
    ("Елена", true),
    ("Дмитрий", false),
];
/// Surnames, male form (the female form adds "а").
const LAST: [&str; 8] = [
    "Котов",
    "Петров",
    "Смирнов",
    "Иванов",
    "Кузнецов",
    "Соколов",
    "Попов",
    "Лебедев",
];

/// Generates the data set of `args` (deterministic for a seed): restaurants with menus of
/// 10–30 products, users, and orders of 1–5 lines over one week from 2022-11-12. About 75%
/// end CLOSED, 15% CANCELLED, 10% stay open; 20% are first sent with an intermediate
/// status, 5% are sent twice identically, and 2% of the closed ones are cancelled later.
pub fn order_data(args: &ProduceOrdersArgs) -> OrderData {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use serde_json::json;

    let mut rng = StdRng::seed_from_u64(args.seed);
    let p = &args.id_prefix;
    let id = |rng: &mut StdRng, tag: u8| format!("{p}{tag:02x}{:022x}", rng.random::<u128>() >> 40);
    let stamp = "2022-11-19 10:00:00";
    let mut dictionaries = Vec::new();
    let mut restaurants = Vec::new();
    for r in 0..args.restaurants.max(1) {
        let rid = id(&mut rng, 1);
        let items: Vec<(String, String, u64, usize)> = (0..rng.random_range(10..=30))
            .map(|n| {
                let c = rng.random_range(0..CATEGORIES.len());
                let price = rng.random_range(5..=150) * 10;
                (
                    id(&mut rng, 2),
                    format!("{} №{}", DISHES[c], n + 1),
                    price,
                    c,
                )
            })
            .collect();
        let menu: Vec<_> = items
            .iter()
            .map(|(pid, name, price, c)| {
                json!({"_id": pid, "name": name, "price": price, "category": CATEGORIES[*c]})
            })
            .collect();
        let name = format!("{} №{}", PLACES[(r as usize) % PLACES.len()], r + 1);
        let value = json!({"_id": rid, "name": name, "menu": menu, "update_ts_utc": stamp});
        dictionaries.push((rid.clone(), value.to_string()));
        restaurants.push((rid, items));
    }
    let mut users = Vec::new();
    for u in 0..args.users.max(1) {
        let uid = id(&mut rng, 3);
        let (first, female) = FIRST[rng.random_range(0..FIRST.len())];
        let last = LAST[rng.random_range(0..LAST.len())];
        let last = if female {
            format!("{last}а")
        } else {
            last.to_string()
        };
        let value = json!({"_id": uid, "name": format!("{last} {first}"),
                           "login": format!("user_{u}"), "update_ts_utc": stamp});
        dictionaries.push((uid.clone(), value.to_string()));
        users.push(uid);
    }

    let base = chrono::NaiveDate::from_ymd_opt(2022, 11, 12)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default();
    let fmt = |t: chrono::NaiveDateTime| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let step = (7 * 86_400 / args.orders.max(1)).max(1) as i64;
    // (sent second, sequence, key, value): sorted by when they are sent.
    let mut sends: Vec<(i64, usize, String, String)> = Vec::new();
    for n in 0..args.orders {
        let object_id = args.first_order + n;
        let placed = n as i64 * step + rng.random_range(0..step.max(1));
        let (rid, items) = &restaurants[rng.random_range(0..restaurants.len())];
        let uid = &users[rng.random_range(0..users.len())];
        let lines: Vec<_> = (0..rng.random_range(1..=5))
            .map(|_| {
                let (pid, name, price, _) = &items[rng.random_range(0..items.len())];
                (pid, name, *price, rng.random_range(1..=3u64))
            })
            .collect();
        let cost: u64 = lines.iter().map(|(_, _, price, q)| price * q).sum();
        let bonus = if rng.random_bool(0.2) { cost / 10 } else { 0 };
        let roll = rng.random_range(0..100);
        let final_status = match roll {
            0..75 => "CLOSED",
            75..90 => "CANCELLED",
            _ => "OPEN",
        };
        let history: &[&str] = match final_status {
            "CLOSED" => &["OPEN", "COOKING", "DELIVERING", "CLOSED"],
            "CANCELLED" => &["OPEN", "COOKING", "CANCELLED"],
            _ => &["OPEN"],
        };
        let at = |k: usize| base + chrono::Duration::seconds(placed + 600 * k as i64);
        let version = |upto: usize, status: &str, ts: chrono::NaiveDateTime| {
            let mut statuses: Vec<_> = history[..upto]
                .iter()
                .enumerate()
                .map(|(k, s)| json!({"status": s, "dttm": fmt(at(k))}))
                .collect();
            statuses.reverse();
            let payload = json!({
                "restaurant": {"id": rid},
                "date": fmt(at(0)),
                "user": {"id": uid},
                "order_items": lines.iter().map(|(pid, name, price, q)| {
                    json!({"id": pid, "name": name, "price": price, "quantity": q})
                }).collect::<Vec<_>>(),
                "bonus_payment": bonus, "cost": cost, "payment": cost - bonus,
                "bonus_grant": 0,
                "statuses": statuses,
                "final_status": status,
                "update_ts": fmt(ts),
            });
            json!({"object_id": object_id, "object_type": "order",
                   "sent_dttm": fmt(ts), "payload": payload})
            .to_string()
        };
        let key = object_id.to_string();
        let last = history.len();
        let last_at = at(last - 1);
        let mut send = |ts: chrono::NaiveDateTime, value: String| {
            let second = (ts - base).num_seconds();
            sends.push((second, sends.len(), key.clone(), value));
        };
        if last > 1 && rng.random_bool(0.2) {
            let k = rng.random_range(1..last);
            send(at(k - 1), version(k, history[k - 1], at(k - 1)));
        }
        let final_version = version(last, final_status, last_at);
        if rng.random_bool(0.05) {
            send(last_at, final_version.clone());
        }
        send(last_at, final_version);
        if final_status == "CLOSED" && rng.random_bool(0.02) {
            let later = last_at + chrono::Duration::seconds(3600);
            let mut cancelled: serde_json::Value =
                serde_json::from_str(&version(last, "CANCELLED", later)).unwrap_or_default();
            cancelled["payload"]["statuses"][0] =
                json!({"status": "CANCELLED", "dttm": fmt(later)});
            send(later, cancelled.to_string());
        }
    }
    sends.sort_by_key(|(second, seq, _, _)| (*second, *seq));
    OrderData {
        dictionaries,
        messages: sends.into_iter().map(|(_, _, k, v)| (k, v)).collect(),
    }
}

/// Writes the dictionaries to Redis and the orders to Kafka (confirming every delivery).
pub fn orders(args: &ProduceOrdersArgs) -> Result<()> {
    let data = order_data(args);
    if !args.orders_only {
        let client = redis::Client::open(args.redis_url.as_str()).context("invalid --redis-url")?;
        let mut con = client
            .get_connection_with_timeout(std::time::Duration::from_secs(5))
            .context("cannot connect to Redis")?;
        for chunk in data.dictionaries.chunks(1000) {
            let mut pipe = redis::pipe();
            for (key, value) in chunk {
                pipe.set(key, value).ignore();
            }
            pipe.query::<()>(&mut con)
                .context("cannot write to Redis")?;
        }
    }
    if !args.dictionaries_only {
        ensure_topic(&args.kafka, &args.topic, args.partitions)?;
        let mut writer = KafkaWriter::new(&args.kafka, &args.topic, RawEncoder)?;
        let batch: Vec<((String, String), u64, isize)> =
            data.messages.iter().map(|m| (m.clone(), 0, 1)).collect();
        for chunk in batch.chunks(100_000) {
            writer.write(chunk)?;
        }
    }
    tracing::info!(
        topic = %args.topic,
        orders = args.orders,
        messages = if args.dictionaries_only { 0 } else { data.messages.len() },
        dictionary_entries = if args.orders_only { 0 } else { data.dictionaries.len() },
        "produced"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_seed_example() {
        assert_eq!(
            uuid_like(426_614_174_000),
            "123e4567-e89b-12d3-a456-426614174000"
        );
        let c = campaign(3, 0, 1, 2, 0);
        assert_eq!(c.adv_campaign_id(), "123e4567-e89b-12d3-a456-426614174003");
        assert_eq!(&*c.restaurant_id, "123e4567-e89b-12d3-a456-426614174000");
        assert_eq!(c.adv_campaign_content(), "first campaign");
    }

    #[test]
    fn the_order_data_set_is_reproducible_and_valid() {
        use clap::Parser;
        #[derive(Parser)]
        struct Command {
            #[command(flatten)]
            args: ProduceOrdersArgs,
        }
        let args = Command::parse_from([
            "produce-orders",
            "--orders",
            "300",
            "--restaurants",
            "5",
            "--users",
            "50",
            "--seed",
            "3",
            "--id-prefix",
            "t_",
        ])
        .args;
        let a = order_data(&args);
        let b = order_data(&args);
        assert_eq!(a.messages, b.messages);
        assert_eq!(a.dictionaries.len(), 55);
        assert!(a.messages.len() > 300, "some orders are re-sent");
        let mut closed = 0;
        for (_, value) in &a.messages {
            let order = dataflows::orders::parse_order(Some(value.as_bytes()))
                .ok()
                .flatten()
                .expect("a valid order");
            closed += usize::from(order.order.status == "CLOSED");
        }
        assert!(closed > 150, "{closed}");
        for (key, value) in &a.dictionaries {
            assert!(key.starts_with("t_"));
            assert!(dataflows::orders::parse_dictionary(key, value.as_bytes()).is_ok());
        }
    }
}
