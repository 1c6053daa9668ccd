//! Job 2, `orders`: order events + Redis dictionaries → STG, Data Vault DDS and CDM counters.
//!
//! ```text
//!  raw Kafka records ─decode─┬─ Err ──────────────────────────────────────► dead letters
//!                            ├─ other object_type ─────────────────────────► ignored (counted)
//!                            └─ OrderMessage ─ exchange by object_id
//!                                  │ CurrentOrders: latest (update_ts, payload) wins
//!                                  ▼
//!                        current versions ─────────────────────────────────► STG rows
//!                                  │
//!   dictionaries (Redis) ──────────┤ enrich: items ⋈ menu (restaurant, product),
//!     restaurants + menus, users   │   ⋈ user, ⋈ restaurant; an order is complete only
//!                                  │   when every id is known (else held, not dropped)
//!                                  ▼
//!                          enriched orders ─┬─ hubs, links (distinct) ─────► DDS
//!                                           ├─ satellites (one value per key) ► DDS
//!                                           └─ CLOSED: distinct orders per
//!                                              (user, product) and (user, category) ► CDM
//! ```
//!
//! The rules, by name:
//! * [`parse_order`]: what a valid order message is; everything else is a [`Reject`].
//! * [`CurrentOrders`]: *latest `update_ts` wins* per `object_id`; re-delivery of the same or
//!   an older version changes nothing (equal `update_ts`: the greater payload text wins, so
//!   every replay order gives the same result).
//! * [`parse_dictionary`]: a Redis value with a `menu` is a restaurant, with a `login` a user.
//! * [`enriched_orders`]: product name and category come from the restaurant's menu, price
//!   and quantity from the order; an order with an unknown restaurant, user or product is
//!   held until the dictionary entry appears, and follows every later dictionary change.
//! * [`vault`]: hub and link keys are UUID v5 of the business ids ([`hub_key`],
//!   [`link_key`]); a satellite's hashdiff is a UUID v5 of its hub key and attribute values.
//! * [`counters`]: `order_cnt` = distinct CLOSED orders of the user containing the product
//!   (or any product of the category); a key whose count drops to 0 leaves the collection.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use chrono::NaiveDateTime;
use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use timely::dataflow::Stream;
use uuid::Uuid;

pub use crate::decode::Reject;
use crate::decode::{amount, datetime, field, integer, nested, object, string};
use crate::{DeadLetter, Diff, RawRecord, Replayable, Retained, Retention, Time, replay_state};

/// The `object_type` of orders; messages of other types are ignored.
pub const ORDER: &str = "order";

/// The status that counts in the CDM.
pub const CLOSED: &str = "CLOSED";

/// One line of an order, as sent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Item {
    /// Product id (a key of the restaurant's menu).
    pub id: String,
    /// Name as sent (the menu's name is what the outputs use).
    pub name: String,
    /// Price, exact JSON number text.
    pub price: String,
    /// Quantity (≥ 1).
    pub quantity: i64,
}

/// The fields of an order the outputs use.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Order {
    /// `object_id`.
    pub id: i64,
    /// `payload.date`.
    pub date: NaiveDateTime,
    /// `payload.restaurant.id`.
    pub restaurant_id: String,
    /// `payload.user.id`.
    pub user_id: String,
    /// `payload.order_items`.
    pub items: Vec<Item>,
    /// `payload.cost`, exact JSON number text.
    pub cost: String,
    /// `payload.payment`, exact JSON number text.
    pub payment: String,
    /// `payload.final_status`.
    pub status: String,
    /// `payload.update_ts`: the version.
    pub update_ts: NaiveDateTime,
}

/// The message as STG keeps it: `stg.order_events`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderEvent {
    /// `object_id`.
    pub object_id: i64,
    /// `object_type` (always [`ORDER`]).
    pub object_type: String,
    /// `sent_dttm`.
    pub sent_dttm: NaiveDateTime,
    /// `payload`, the JSON text exactly as received.
    pub payload: String,
}

impl OrderEvent {
    /// Its identity for writing (`stg.order_events` is keyed by `object_id`), hashed.
    pub fn route(&self) -> u64 {
        self.object_id.hashed()
    }
}

/// One version of an order: its STG row and its decoded fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderVersion {
    /// The raw event (STG).
    pub event: OrderEvent,
    /// The decoded order.
    pub order: Order,
}

impl OrderVersion {
    /// What decides between two versions: the later `update_ts`, then the greater payload.
    fn rank(&self) -> (NaiveDateTime, &str) {
        (self.order.update_ts, &self.event.payload)
    }
}

/// A decoded order message with its position in the topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderMessage {
    /// The version it carries.
    pub version: OrderVersion,
    /// Partition it was read from.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

/// The envelope of the orders topic; `payload` stays raw for STG.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

fn item(value: &Value) -> Result<Item, Reject> {
    let obj = value
        .as_object()
        .ok_or(Reject::WrongType("payload.order_items"))?;
    let quantity = integer(obj, "quantity", "payload.order_items.quantity")?;
    if quantity < 1 {
        return Err(Reject::Invalid("payload.order_items.quantity"));
    }
    Ok(Item {
        id: string(obj, "id", "payload.order_items.id")?,
        name: string(obj, "name", "payload.order_items.name")?,
        price: amount(obj, "price", "payload.order_items.price")?,
        quantity,
    })
}

fn order(object_id: i64, payload: &Map<String, Value>) -> Result<Order, Reject> {
    let restaurant = nested(payload, "restaurant", "payload.restaurant")?;
    let user = nested(payload, "user", "payload.user")?;
    let items = field(payload, "order_items", "payload.order_items")?
        .as_array()
        .ok_or(Reject::WrongType("payload.order_items"))?
        .iter()
        .map(item)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Order {
        id: object_id,
        date: datetime(payload, "date", "payload.date")?,
        restaurant_id: string(restaurant, "id", "payload.restaurant.id")?,
        user_id: string(user, "id", "payload.user.id")?,
        items,
        cost: amount(payload, "cost", "payload.cost")?,
        payment: amount(payload, "payment", "payload.payment")?,
        status: string(payload, "final_status", "payload.final_status")?,
        update_ts: datetime(payload, "update_ts", "payload.update_ts")?,
    })
}

/// Decodes one message of the orders topic: `Ok(None)` for another `object_type` (ignored).
/// Unknown extra fields are ignored; the payload is kept byte for byte for STG.
pub fn parse_order(value: Option<&[u8]>) -> Result<Option<OrderVersion>, Reject> {
    let obj = object(value)?;
    let object_type = string(&obj, "object_type", "object_type")?;
    if object_type != ORDER {
        return Ok(None);
    }
    let object_id = integer(&obj, "object_id", "object_id")?;
    if i32::try_from(object_id).is_err() {
        return Err(Reject::OutOfRange("object_id")); // stg.order_events.object_id is an int
    }
    let sent_dttm = datetime(&obj, "sent_dttm", "sent_dttm")?;
    let payload = nested(&obj, "payload", "payload")?;
    let order = order(object_id, payload)?;
    // `object` succeeded, so the value is UTF-8 JSON with an object payload.
    let text = value
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("");
    let raw = serde_json::from_str::<Envelope<'_>>(text)
        .ok()
        .and_then(|e| e.payload)
        .ok_or(Reject::NotJson)?;
    Ok(Some(OrderVersion {
        event: OrderEvent {
            object_id,
            object_type,
            sent_dttm,
            payload: raw.get().to_string(),
        },
        order,
    }))
}

/// Splits raw order records into order messages, dead letters, and the records of other
/// object types (ignored, but counted by the engine).
#[allow(clippy::type_complexity)]
pub fn decode<'s>(
    raw: VecCollection<'s, Time, RawRecord, Diff>,
) -> (
    VecCollection<'s, Time, OrderMessage, Diff>,
    VecCollection<'s, Time, DeadLetter, Diff>,
    VecCollection<'s, Time, RawRecord, Diff>,
) {
    let decoded = raw.map(|record| match parse_order(record.value.as_deref()) {
        Ok(Some(version)) => Ok(Ok(OrderMessage {
            version,
            partition: record.partition,
            offset: record.offset,
        })),
        Ok(None) => Ok(Err(record)),
        Err(reject) => Err(DeadLetter {
            record,
            reason: reject.code(),
        }),
    });
    let orders = decoded.clone().flat_map(|d| d.ok().and_then(Result::ok));
    let ignored = decoded.clone().flat_map(|d| d.ok().and_then(Result::err));
    let dead_letters = decoded.flat_map(Result::err);
    (orders, dead_letters, ignored)
}

/// The current version of every order, keyed by `object_id` (see the module rules), and the
/// positions of those versions in the topic: replaying from the oldest rebuilds the state.
#[derive(Default)]
pub struct CurrentOrders {
    current: HashMap<i64, (OrderVersion, (i32, i64))>,
    positions: Retained,
}

impl Replayable for CurrentOrders {
    type Message = OrderMessage;
    type Output = OrderVersion;

    fn route(message: &OrderMessage) -> u64 {
        message.version.event.object_id.hashed()
    }

    fn apply(
        &mut self,
        time: Time,
        mut messages: Vec<OrderMessage>,
        emit: &mut impl FnMut(OrderVersion, Time, Diff),
    ) {
        messages.sort_by(|a, b| a.version.rank().cmp(&b.version.rank()));
        for message in messages {
            let position = (message.partition, message.offset);
            let id = message.version.event.object_id;
            match self.current.get_mut(&id) {
                None => {
                    emit(message.version.clone(), time, 1);
                    self.positions.insert(position);
                    self.current.insert(id, (message.version, position));
                }
                Some((current, at)) if message.version.rank() > current.rank() => {
                    emit(current.clone(), time, -1);
                    emit(message.version.clone(), time, 1);
                    self.positions.remove(at);
                    self.positions.insert(position);
                    *current = message.version;
                    *at = position;
                }
                Some(_) => {} // the same or an older version: nothing changes
            }
        }
    }

    fn retained(&self) -> Vec<(i32, i64)> {
        self.positions.oldest()
    }
}

/// The current order versions ([`CurrentOrders`]) and the workers' [`Retention`].
pub fn current_orders<'s>(
    messages: VecCollection<'s, Time, OrderMessage, Diff>,
) -> (
    VecCollection<'s, Time, OrderVersion, Diff>,
    Stream<'s, Time, Vec<Retention>>,
) {
    replay_state(messages, "CurrentOrders", CurrentOrders::default())
}

/// One product of a restaurant's menu.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MenuItem {
    /// Product id.
    pub id: String,
    /// Product name.
    pub name: String,
    /// Category name.
    pub category: String,
}

/// A Redis dictionary entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Dictionary {
    /// key = restaurant id: name and menu.
    Restaurant {
        /// Restaurant id (the Redis key).
        id: String,
        /// Restaurant name.
        name: String,
        /// Its products.
        menu: Vec<MenuItem>,
    },
    /// key = user id: name and login.
    User {
        /// User id (the Redis key).
        id: String,
        /// Full name.
        name: String,
        /// Login.
        login: String,
    },
}

/// Decodes the value of Redis key `key`: with a `menu`, a restaurant; with a `login`, a user.
pub fn parse_dictionary(key: &str, value: &[u8]) -> Result<Dictionary, Reject> {
    crate::decode::storable(key, "key")?;
    let obj = object(Some(value))?;
    if obj.contains_key("menu") {
        let menu = field(&obj, "menu", "menu")?
            .as_array()
            .ok_or(Reject::WrongType("menu"))?
            .iter()
            .map(|m| {
                let m = m.as_object().ok_or(Reject::WrongType("menu"))?;
                Ok(MenuItem {
                    id: string(m, "_id", "menu._id")?,
                    name: string(m, "name", "menu.name")?,
                    category: string(m, "category", "menu.category")?,
                })
            })
            .collect::<Result<Vec<_>, Reject>>()?;
        Ok(Dictionary::Restaurant {
            id: key.to_string(),
            name: string(&obj, "name", "name")?,
            menu,
        })
    } else if obj.contains_key("login") {
        Ok(Dictionary::User {
            id: key.to_string(),
            name: string(&obj, "name", "name")?,
            login: string(&obj, "login", "login")?,
        })
    } else {
        Err(Reject::MissingField("menu|login"))
    }
}

/// A product of an enriched order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Product {
    /// Product id.
    pub id: String,
    /// Price, from the order.
    pub price: String,
    /// Quantity, from the order.
    pub quantity: i64,
    /// Name, from the menu.
    pub name: String,
    /// Category, from the menu.
    pub category: String,
}

/// An order with every id resolved through the dictionaries.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EnrichedOrder {
    /// `object_id`.
    pub id: i64,
    /// Order date.
    pub date: NaiveDateTime,
    /// Cost.
    pub cost: String,
    /// Payment.
    pub payment: String,
    /// Final status.
    pub status: String,
    /// Restaurant id.
    pub restaurant_id: String,
    /// Restaurant name.
    pub restaurant_name: String,
    /// User id.
    pub user_id: String,
    /// User's name.
    pub user_name: String,
    /// User's login.
    pub user_login: String,
    /// The order's lines, in order.
    pub products: Vec<Product>,
}

/// Orders with every id resolved: an order appears once its restaurant, user and every
/// product are in the dictionaries, and changes with them (see the module rules).
pub fn enriched_orders<'s>(
    orders: VecCollection<'s, Time, OrderVersion, Diff>,
    dictionaries: VecCollection<'s, Time, Dictionary, Diff>,
) -> VecCollection<'s, Time, EnrichedOrder, Diff> {
    let orders = orders.map(|v| (v.order.id, v.order));
    let menu = dictionaries
        .clone()
        .flat_map(|d| match d {
            Dictionary::Restaurant { id, menu, .. } => menu
                .into_iter()
                .map(|m| ((id.clone(), m.id), (m.name, m.category)))
                .collect(),
            Dictionary::User { .. } => Vec::new(),
        })
        // A product listed twice in one menu counts once (the least entry).
        .reduce_named("MenuByProduct", |_key, input, output| {
            output.push((input[0].0.clone(), 1));
        })
        .arrange_by_key_named("Menu");
    let restaurants = dictionaries
        .clone()
        .flat_map(|d| match d {
            Dictionary::Restaurant { id, name, .. } => Some((id, name)),
            Dictionary::User { .. } => None,
        })
        .reduce_named("RestaurantName", |_key, input, output| {
            output.push((input[0].0.clone(), 1));
        })
        .arrange_by_key_named("Restaurants");
    let users = dictionaries
        .flat_map(|d| match d {
            Dictionary::User { id, name, login } => Some((id, (name, login))),
            Dictionary::Restaurant { .. } => None,
        })
        .reduce_named("UserName", |_key, input, output| {
            output.push((input[0].0.clone(), 1));
        })
        .arrange_by_key_named("Users");
    // Each line, resolved through the menu: (order id, (line, product)).
    let lines = orders
        .clone()
        .flat_map(|(id, order)| {
            let restaurant = order.restaurant_id;
            order
                .items
                .into_iter()
                .enumerate()
                .map(move |(line, item)| {
                    (
                        (restaurant.clone(), item.id.clone()),
                        (id, line, item.price, item.quantity),
                    )
                })
        })
        .arrange_by_key_named("OrderLines")
        .join_core(
            menu,
            |(_, product), (id, line, price, quantity), (name, category)| {
                Some((
                    *id,
                    (
                        *line,
                        Product {
                            id: product.clone(),
                            price: price.clone(),
                            quantity: *quantity,
                            name: name.clone(),
                            category: category.clone(),
                        },
                    ),
                ))
            },
        )
        .reduce_named("ResolvedLines", |_id, input, output| {
            let products: Vec<(usize, Product)> =
                input.iter().map(|(line, _)| (*line).clone()).collect();
            output.push((products, 1));
        })
        .arrange_by_key_named("ResolvedLinesByOrder");
    orders
        .arrange_by_key_named("OrdersById")
        .join_core(lines, |_id, order, products| {
            // Complete when every line resolved: lines 0..n, each exactly once.
            let complete = products.len() == order.items.len()
                && products.iter().enumerate().all(|(i, (line, _))| *line == i);
            complete.then(|| {
                let products: Vec<Product> = products.iter().map(|(_, p)| p.clone()).collect();
                (order.user_id.clone(), (order.clone(), products))
            })
        })
        .arrange_by_key_named("ResolvedOrdersByUser")
        .join_core(users, |_user, (order, products), (name, login)| {
            Some((
                order.restaurant_id.clone(),
                (order.clone(), products.clone(), name.clone(), login.clone()),
            ))
        })
        .arrange_by_key_named("ResolvedOrdersByRestaurant")
        .join_core(
            restaurants,
            |_restaurant, (order, products, user_name, user_login), restaurant_name| {
                Some(EnrichedOrder {
                    id: order.id,
                    date: order.date,
                    cost: order.cost.clone(),
                    payment: order.payment.clone(),
                    status: order.status.clone(),
                    restaurant_id: order.restaurant_id.clone(),
                    restaurant_name: restaurant_name.clone(),
                    user_id: order.user_id.clone(),
                    user_name: user_name.clone(),
                    user_login: user_login.clone(),
                    products: Vec::clone(products),
                })
            },
        )
}

/// A JSON number from its exact text (the amounts kept as text).
fn number(text: &str) -> Value {
    serde_json::from_str::<serde_json::Number>(text).map_or(Value::Null, Value::Number)
}

impl EnrichedOrder {
    /// Its order id, hashed: one writer owns every version of an order.
    pub fn route(&self) -> u64 {
        self.id.hashed()
    }

    /// The `stg-service-orders` message (SPEC, Job 2, compatibility outputs).
    pub fn stg_message(&self) -> Value {
        let products: Vec<Value> = self
            .products
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id, "price": number(&p.price), "quantity": p.quantity,
                    "name": p.name, "category": p.category,
                })
            })
            .collect();
        serde_json::json!({
            "object_id": self.id,
            "object_type": ORDER,
            "payload": {
                "id": self.id,
                "date": self.date.format("%Y-%m-%d %H:%M:%S").to_string(),
                "cost": number(&self.cost),
                "payment": number(&self.payment),
                "status": self.status,
                "restaurant": {"id": self.restaurant_id, "name": self.restaurant_name},
                "user": {"id": self.user_id, "name": self.user_name},
                "products": products,
            }
        })
    }
}

/// The `dds-service-orders` message of one user: the counters that changed, with their new
/// `order_cnt` (0 for a counter that was removed).
pub fn dds_message<'c>(user: Uuid, changed: impl IntoIterator<Item = &'c Counter>) -> Value {
    let mut categories = Map::new();
    let mut products = Map::new();
    for c in changed {
        let (map, name) = match c.kind {
            CounterKind::Product => (&mut products, "product_name"),
            CounterKind::Category => (&mut categories, "category_name"),
        };
        map.insert(
            c.item.to_string(),
            serde_json::json!({ name: c.name, "order_cnt": c.count }),
        );
    }
    serde_json::json!({
        "user_id": user.to_string(),
        "categories": categories,
        "products": products,
    })
}

/// The namespace of every dishflow Data Vault key: UUID v5 of the URL
/// `https://dishflow.dev/dds` in the URL namespace (fixed forever: keys must be stable).
pub static NAMESPACE: LazyLock<Uuid> =
    LazyLock::new(|| Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://dishflow.dev/dds"));

/// A hub key: UUID v5 (SHA-1) of the business id.
pub fn hub_key(business_id: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, business_id.as_bytes())
}

/// A link key: UUID v5 of the two hub keys' bytes.
pub fn link_key(a: Uuid, b: Uuid) -> Uuid {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(a.as_bytes());
    bytes[16..].copy_from_slice(b.as_bytes());
    Uuid::new_v5(&NAMESPACE, &bytes)
}

/// A satellite hashdiff: UUID v5 of the hub key and every attribute value (as a JSON
/// array, so that no two value lists share a text).
pub fn hashdiff(hub: Uuid, values: &[String]) -> Uuid {
    let text = serde_json::to_string(&(hub, values)).unwrap_or_default();
    Uuid::new_v5(&NAMESPACE, text.as_bytes())
}

/// The hubs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HubKind {
    /// `dds.h_user(user_id)`.
    User,
    /// `dds.h_product(product_id)`.
    Product,
    /// `dds.h_category(category_name)`.
    Category,
    /// `dds.h_restaurant(restaurant_id)`.
    Restaurant,
    /// `dds.h_order(order_id, order_dt)`.
    Order,
}

/// The links, each between two hubs (in the order of the table's columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LinkKind {
    /// `dds.l_order_product(h_order_pk, h_product_pk)`.
    OrderProduct,
    /// `dds.l_product_restaurant(h_product_pk, h_restaurant_pk)`.
    ProductRestaurant,
    /// `dds.l_product_category(h_product_pk, h_category_pk)`.
    ProductCategory,
    /// `dds.l_order_user(h_order_pk, h_user_pk)`.
    OrderUser,
}

/// The satellites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SatelliteKind {
    /// `dds.s_user_names(h_user_pk, username, userlogin)`.
    UserNames,
    /// `dds.s_product_names(h_product_pk, name)`.
    ProductNames,
    /// `dds.s_restaurant_names(h_restaurant_pk, name)`.
    RestaurantNames,
    /// `dds.s_order_cost(h_order_pk, cost, payment)`.
    OrderCost,
    /// `dds.s_order_status(h_order_pk, status)`.
    OrderStatus,
}

/// One Data Vault row, without `load_dt`/`load_src` (the sink adds them).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum VaultRow {
    /// A hub row: key, business id, and for orders the order date.
    Hub {
        /// Which hub.
        kind: HubKind,
        /// `h_*_pk` = [`hub_key`] of `id`.
        key: Uuid,
        /// The business id.
        id: String,
        /// `h_order.order_dt`.
        date: Option<NaiveDateTime>,
    },
    /// A link row.
    Link {
        /// Which link.
        kind: LinkKind,
        /// `hk_*_pk` = [`link_key`] of the two hub keys.
        key: Uuid,
        /// The two hub keys, in column order.
        hubs: (Uuid, Uuid),
    },
    /// The current attributes of one satellite key.
    Satellite {
        /// Which satellite.
        kind: SatelliteKind,
        /// The hub key it describes.
        hub: Uuid,
        /// Attribute values, in column order.
        values: Vec<String>,
    },
}

impl VaultRow {
    /// The row's identity for writing: one worker must own every version of a satellite.
    pub fn route(&self) -> u64 {
        match self {
            VaultRow::Hub { key, .. } | VaultRow::Link { key, .. } => key.hashed(),
            VaultRow::Satellite { kind, hub, .. } => (kind, hub).hashed(),
        }
    }

    fn hub(kind: HubKind, id: &str, date: Option<NaiveDateTime>) -> (Uuid, VaultRow) {
        let key = hub_key(id);
        let row = VaultRow::Hub {
            kind,
            key,
            id: id.to_string(),
            date,
        };
        (key, row)
    }

    fn link(kind: LinkKind, a: Uuid, b: Uuid) -> VaultRow {
        VaultRow::Link {
            kind,
            key: link_key(a, b),
            hubs: (a, b),
        }
    }

    fn satellite(kind: SatelliteKind, hub: Uuid, values: Vec<String>) -> VaultRow {
        VaultRow::Satellite { kind, hub, values }
    }
}

/// Every Data Vault row one enriched order implies.
pub fn vault_rows(order: &EnrichedOrder) -> Vec<VaultRow> {
    use SatelliteKind as S;
    let mut rows = Vec::new();
    let (order_pk, hub) = VaultRow::hub(HubKind::Order, &order.id.to_string(), Some(order.date));
    rows.push(hub);
    let (user_pk, hub) = VaultRow::hub(HubKind::User, &order.user_id, None);
    rows.push(hub);
    let (restaurant_pk, hub) = VaultRow::hub(HubKind::Restaurant, &order.restaurant_id, None);
    rows.push(hub);
    rows.push(VaultRow::link(LinkKind::OrderUser, order_pk, user_pk));
    rows.push(VaultRow::satellite(
        S::UserNames,
        user_pk,
        vec![order.user_name.clone(), order.user_login.clone()],
    ));
    rows.push(VaultRow::satellite(
        S::RestaurantNames,
        restaurant_pk,
        vec![order.restaurant_name.clone()],
    ));
    rows.push(VaultRow::satellite(
        S::OrderCost,
        order_pk,
        vec![order.cost.clone(), order.payment.clone()],
    ));
    rows.push(VaultRow::satellite(
        S::OrderStatus,
        order_pk,
        vec![order.status.clone()],
    ));
    for product in &order.products {
        let (product_pk, hub) = VaultRow::hub(HubKind::Product, &product.id, None);
        rows.push(hub);
        let (category_pk, hub) = VaultRow::hub(HubKind::Category, &product.category, None);
        rows.push(hub);
        rows.push(VaultRow::link(LinkKind::OrderProduct, order_pk, product_pk));
        rows.push(VaultRow::link(
            LinkKind::ProductRestaurant,
            product_pk,
            restaurant_pk,
        ));
        rows.push(VaultRow::link(
            LinkKind::ProductCategory,
            product_pk,
            category_pk,
        ));
        rows.push(VaultRow::satellite(
            S::ProductNames,
            product_pk,
            vec![product.name.clone()],
        ));
    }
    rows.sort();
    rows.dedup();
    rows
}

/// The Data Vault as a set: hubs and links that any current order implies, and for each
/// satellite key one current value (the greatest, should two orders disagree).
pub fn vault<'s>(
    orders: VecCollection<'s, Time, EnrichedOrder, Diff>,
) -> VecCollection<'s, Time, VaultRow, Diff> {
    let rows = orders.flat_map(|order| vault_rows(&order));
    let keys = rows
        .clone()
        .filter(|row| !matches!(row, VaultRow::Satellite { .. }))
        .distinct();
    let satellites = rows
        .flat_map(|row| match row {
            VaultRow::Satellite { kind, hub, values } => Some(((kind, hub), values)),
            _ => None,
        })
        .reduce_named("SatelliteValue", |_key, input, output| {
            if let Some((values, _)) = input.last() {
                output.push((Vec::clone(values), 1));
            }
        })
        .map(|((kind, hub), values)| VaultRow::Satellite { kind, hub, values });
    keys.concat(satellites)
}

/// Which counter table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CounterKind {
    /// `cdm.user_product_counters`.
    Product,
    /// `cdm.user_category_counters`.
    Category,
}

/// One counter: (`user_id`, `product_id`/`category_id`) → name and `order_cnt`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Counter {
    /// Which table.
    pub kind: CounterKind,
    /// `h_user_pk`.
    pub user: Uuid,
    /// `h_product_pk` or `h_category_pk`.
    pub item: Uuid,
    /// Product or category name.
    pub name: String,
    /// Distinct CLOSED orders (≥ 1; a key at 0 is absent).
    pub count: i64,
}

impl Counter {
    /// Its user, hashed: one writer owns all of a user's counters (one message per user).
    pub fn route(&self) -> u64 {
        self.user.hashed()
    }
}

/// The CDM counters of the CLOSED enriched orders (see the module rules).
pub fn counters<'s>(
    orders: VecCollection<'s, Time, EnrichedOrder, Diff>,
) -> VecCollection<'s, Time, Counter, Diff> {
    orders
        .filter(|order| order.status == CLOSED)
        .flat_map(|order| {
            let user = hub_key(&order.user_id);
            // Distinct per order: an order with two lines of a product counts once.
            let mut keys = BTreeSet::new();
            for product in &order.products {
                keys.insert((
                    (CounterKind::Product, user, hub_key(&product.id)),
                    product.name.clone(),
                ));
                keys.insert((
                    (CounterKind::Category, user, hub_key(&product.category)),
                    product.category.clone(),
                ));
            }
            keys
        })
        .reduce_named("Counters", |_key, input, output| {
            let count: Diff = input.iter().map(|(_, diff)| *diff).sum();
            if let Some((name, _)) = input.last()
                && count > 0
            {
                output.push(((String::clone(name), count as i64), 1));
            }
        })
        .map(|((kind, user, item), (name, count))| Counter {
            kind,
            user,
            item,
            name,
            count,
        })
}

/// The orders job's outputs.
pub struct Outputs<'s> {
    /// `stg.order_events`: the current version of every order.
    pub stg: VecCollection<'s, Time, OrderEvent, Diff>,
    /// The enriched current orders (the `stg-service-orders` messages).
    pub enriched: VecCollection<'s, Time, EnrichedOrder, Diff>,
    /// The Data Vault rows.
    pub vault: VecCollection<'s, Time, VaultRow, Diff>,
    /// The CDM counters.
    pub counters: VecCollection<'s, Time, Counter, Diff>,
    /// What the state retains (for progress).
    pub retention: Stream<'s, Time, Vec<Retention>>,
}

/// The whole job: decoded order messages and dictionary entries → every output.
pub fn orders<'s>(
    messages: VecCollection<'s, Time, OrderMessage, Diff>,
    dictionaries: VecCollection<'s, Time, Dictionary, Diff>,
) -> Outputs<'s> {
    let (versions, retention) = current_orders(messages);
    let stg = versions.clone().map(|v| v.event);
    let enriched = enriched_orders(versions, dictionaries);
    Outputs {
        stg,
        vault: vault(enriched.clone()),
        counters: counters(enriched.clone()),
        enriched,
        retention,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, ToStream};

    /// The example message of the spec, with `object_id`, status and update_ts as given.
    fn message(id: i64, status: &str, update_ts: &str, items: &[(&str, i64)]) -> String {
        let items: Vec<String> = items
            .iter()
            .map(|(p, q)| {
                format!(r#"{{"id": "{p}", "name": "as sent", "price": 180, "quantity": {q}}}"#)
            })
            .collect();
        format!(
            r#"{{"object_id": {id}, "object_type": "order", "sent_dttm": "2022-11-19 16:06:36",
             "payload": {{"restaurant": {{"id": "r1"}}, "date": "2022-11-19 16:06:36",
               "user": {{"id": "u1"}}, "order_items": [{}],
               "bonus_payment": 0, "cost": 300, "payment": 300.5, "bonus_grant": 0,
               "statuses": [{{"status": "{status}", "dttm": "2022-11-19 16:06:36"}}],
               "final_status": "{status}", "update_ts": "{update_ts}"}}}}"#,
            items.join(", ")
        )
    }

    fn version(id: i64, status: &str, update_ts: &str, items: &[(&str, i64)]) -> OrderVersion {
        let text = message(id, status, update_ts, items);
        match parse_order(Some(text.as_bytes())) {
            Ok(Some(v)) => v,
            other => panic!("not an order: {other:?}"),
        }
    }

    fn restaurant(name: &str, menu: &[(&str, &str, &str)]) -> Dictionary {
        Dictionary::Restaurant {
            id: "r1".into(),
            name: name.into(),
            menu: menu
                .iter()
                .map(|(id, name, category)| MenuItem {
                    id: (*id).into(),
                    name: (*name).into(),
                    category: (*category).into(),
                })
                .collect(),
        }
    }

    fn user(name: &str) -> Dictionary {
        Dictionary::User {
            id: "u1".into(),
            name: name.into(),
            login: "olga".into(),
        }
    }

    #[test]
    fn parses_the_spec_example_and_keeps_the_payload_text() {
        let v = version(322519, "CLOSED", "2022-11-19 16:06:36", &[("p1", 1)]);
        assert_eq!(v.order.restaurant_id, "r1");
        assert_eq!(v.order.payment, "300.5");
        assert_eq!(v.order.items[0].quantity, 1);
        assert!(
            v.event
                .payload
                .starts_with(r#"{"restaurant": {"id": "r1"}"#)
        );
        assert!(
            v.event
                .payload
                .ends_with(r#""update_ts": "2022-11-19 16:06:36"}"#)
        );
        let other = r#"{"object_id": 1, "object_type": "delivery", "payload": {}}"#;
        assert_eq!(parse_order(Some(other.as_bytes())), Ok(None));
    }

    #[test]
    fn rejects_malformed_orders_with_their_reason() {
        let good = message(1, "CLOSED", "2022-11-19 16:06:36", &[("p1", 1)]);
        let with = |from: &str, to: &str| good.replacen(from, to, 1);
        let cases = [
            ("{".to_string(), "not_json"),
            (
                with(r#""object_id": 1"#, r#""object_id": "1""#),
                "wrong_type:object_id",
            ),
            (
                with(r#""object_id": 1"#, r#""object_id": 9999999999"#),
                "out_of_range:object_id",
            ),
            (
                with(r#""user": {"id": "u1"}"#, r#""user": {}"#),
                "missing_field:payload.user.id",
            ),
            (
                with(r#""cost": 300"#, r#""cost": -1"#),
                "invalid:payload.cost",
            ),
            (
                with(r#""quantity": 1"#, r#""quantity": 0"#),
                "invalid:payload.order_items.quantity",
            ),
            (
                with(
                    "\"date\": \"2022-11-19 16:06:36\"",
                    r#""date": "yesterday""#,
                ),
                "invalid:payload.date",
            ),
            (
                with(r#""final_status": "CLOSED""#, r#""final_status": null"#),
                "null_field:payload.final_status",
            ),
            (
                with(
                    r#""final_status": "CLOSED""#,
                    r#""final_status": "CLO\u0000SED""#,
                ),
                "invalid:nul_character:payload.final_status",
            ),
            (
                with(
                    "\"date\": \"2022-11-19 16:06:36\"",
                    r#""date": "-5000-01-01 00:00:00""#,
                ),
                "out_of_range:payload.date",
            ),
        ];
        for (value, reason) in cases {
            let got = parse_order(Some(value.as_bytes())).map(|_| ());
            assert_eq!(
                got.map_err(|r| r.code()),
                Err(reason.to_string()),
                "{value}"
            );
        }
    }

    #[test]
    fn dictionary_entries_are_restaurants_or_users() {
        let r = br#"{"_id": "r1", "name": "Coffee", "menu": [{"_id": "p1", "name": "Roll",
                    "price": 180, "category": "Bakery"}], "update_ts_utc": "2022-11-19 10:00:00"}"#;
        assert_eq!(
            parse_dictionary("r1", r),
            Ok(restaurant("Coffee", &[("p1", "Roll", "Bakery")]))
        );
        let u = br#"{"_id": "u1", "name": "Olga", "login": "olga", "update_ts_utc": "x"}"#;
        assert_eq!(parse_dictionary("u1", u), Ok(user("Olga")));
        assert!(parse_dictionary("x", br#"{"name": "?"}"#).is_err());
        let nul = br#"{"name": "Coffee", "menu": [{"_id": "p1", "name": "bad\u0000name",
                      "category": "Bakery"}]}"#;
        assert_eq!(
            parse_dictionary("r1", nul).map_err(|r| r.code()),
            Err("invalid:nul_character:menu.name".to_string())
        );
        assert_eq!(
            parse_dictionary("u\0", u).map_err(|r| r.code()),
            Err("invalid:nul_character:key".to_string())
        );
    }

    #[test]
    fn the_latest_update_ts_wins_and_redelivery_changes_nothing() {
        let mut state = CurrentOrders::default();
        let mut out = Vec::new();
        let open = version(1, "OPEN", "2022-11-19 15:00:00", &[("p1", 1)]);
        let closed = version(1, "CLOSED", "2022-11-19 16:00:00", &[("p1", 1)]);
        let at = |version: &OrderVersion, offset| OrderMessage {
            version: version.clone(),
            partition: 0,
            offset,
        };
        let mut emit = |v: OrderVersion, t, d| out.push((v.order.status, t, d));
        state.apply(10, vec![at(&open, 0)], &mut emit);
        state.apply(20, vec![at(&closed, 1), at(&open, 2)], &mut emit);
        state.apply(30, vec![at(&closed, 3), at(&open, 4)], &mut emit);
        assert_eq!(
            out,
            [
                ("OPEN".to_string(), 10, 1),
                ("OPEN".to_string(), 20, -1),
                ("CLOSED".to_string(), 20, 1)
            ]
        );
        // The state depends on the CLOSED version only (offset 1).
        assert_eq!(state.retained(), [(0, 1)]);
    }

    type Captured = (Vec<(Counter, Time, Diff)>, Vec<(VaultRow, Time, Diff)>);

    /// Runs the whole job over timed order messages and dictionary entries.
    fn run(
        orders: Vec<(OrderVersion, Time)>,
        dictionaries: Vec<(Dictionary, Time, Diff)>,
    ) -> Captured {
        let messages: Vec<_> = orders
            .into_iter()
            .enumerate()
            .map(|(offset, (version, t))| {
                let offset = offset as i64;
                let m = OrderMessage {
                    version,
                    partition: 0,
                    offset,
                };
                (m, t, 1)
            })
            .collect();
        let (counters, vault) = timely::example(move |scope| {
            let m = messages.into_iter().to_stream(scope).as_collection();
            let d = dictionaries.into_iter().to_stream(scope).as_collection();
            let out = super::orders(m, d);
            (
                out.counters.consolidate().inner.capture(),
                out.vault.consolidate().inner.capture(),
            )
        });
        let mut counters: Vec<_> = counters
            .extract()
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect();
        let mut vault: Vec<_> = vault.extract().into_iter().flat_map(|(_, v)| v).collect();
        counters.sort();
        vault.sort();
        (counters, vault)
    }

    fn counter(kind: CounterKind, item: &str, name: &str, count: i64) -> Counter {
        Counter {
            kind,
            user: hub_key("u1"),
            item: hub_key(item),
            name: name.into(),
            count,
        }
    }

    #[test]
    fn closed_orders_count_once_per_order_and_cancelling_decrements() {
        let menu = [("p1", "Roll", "Bakery"), ("p2", "Bun", "Bakery")];
        let dictionaries = vec![(restaurant("Coffee", &menu), 0, 1), (user("Olga"), 0, 1)];
        let orders = vec![
            // Two lines of p1 in one order: p1 counts 1, Bakery 2 (orders 1 and 2).
            (
                version(1, "CLOSED", "2022-11-19 16:00:00", &[("p1", 1), ("p1", 2)]),
                10,
            ),
            (
                version(2, "CLOSED", "2022-11-19 16:00:00", &[("p2", 1)]),
                10,
            ),
            (version(3, "OPEN", "2022-11-19 16:00:00", &[("p2", 1)]), 10),
            (
                version(2, "CANCELLED", "2022-11-19 17:00:00", &[("p2", 1)]),
                20,
            ),
        ];
        let (counters, _) = run(orders, dictionaries);
        use CounterKind::*;
        assert_eq!(
            counters,
            [
                (counter(Product, "p1", "Roll", 1), 10, 1),
                (counter(Product, "p2", "Bun", 1), 10, 1),
                (counter(Product, "p2", "Bun", 1), 20, -1),
                (counter(Category, "Bakery", "Bakery", 2), 10, 1),
                (counter(Category, "Bakery", "Bakery", 2), 20, -1),
                (counter(Category, "Bakery", "Bakery", 1), 20, 1),
            ]
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_order_waits_for_its_dictionary_entries_and_follows_renames() {
        let dictionaries = vec![
            (restaurant("Coffee", &[("p1", "Roll", "Bakery")]), 0, 1),
            // The user arrives late.
            (user("Olga"), 30, 1),
            // The product is renamed.
            (restaurant("Coffee", &[("p1", "Roll", "Bakery")]), 40, -1),
            (restaurant("Coffee", &[("p1", "Big roll", "Bakery")]), 40, 1),
        ];
        let orders = vec![(
            version(1, "CLOSED", "2022-11-19 16:00:00", &[("p1", 1)]),
            10,
        )];
        let (counters, vault) = run(orders, dictionaries);
        use CounterKind::*;
        assert!(counters.iter().all(|(_, t, _)| *t >= 30), "{counters:?}");
        assert!(counters.contains(&(counter(Product, "p1", "Roll", 1), 30, 1)));
        assert!(counters.contains(&(counter(Product, "p1", "Roll", 1), 40, -1)));
        assert!(counters.contains(&(counter(Product, "p1", "Big roll", 1), 40, 1)));
        assert!(counters.contains(&(counter(Category, "Bakery", "Bakery", 1), 30, 1)));
        // The product name satellite changes value; hubs appear once, at 30.
        let names = VaultRow::Satellite {
            kind: SatelliteKind::ProductNames,
            hub: hub_key("p1"),
            values: vec!["Big roll".into()],
        };
        assert!(vault.contains(&(names, 40, 1)));
        let hubs: Vec<_> = vault
            .iter()
            .filter(|(r, _, _)| matches!(r, VaultRow::Hub { .. }))
            .collect();
        // order, user, restaurant, product, category
        assert_eq!(hubs.len(), 5);
        assert!(hubs.iter().all(|(_, t, d)| *t == 30 && *d == 1));
    }

    #[test]
    fn compatibility_messages_have_the_spec_shape() {
        let order = EnrichedOrder {
            id: 322519,
            date: version(1, "CLOSED", "2022-11-19 16:06:36", &[]).order.date,
            cost: "300".into(),
            payment: "300.5".into(),
            status: "CLOSED".into(),
            restaurant_id: "r1".into(),
            restaurant_name: "Кофейня №1".into(),
            user_id: "u1".into(),
            user_name: "Olga".into(),
            user_login: "olga".into(),
            products: vec![Product {
                id: "p1".into(),
                price: "180".into(),
                quantity: 1,
                name: "Roll".into(),
                category: "Выпечка".into(),
            }],
        };
        let expected: Value = serde_json::from_str(
            r#"{"object_id": 322519, "object_type": "order",
                "payload": {"id": 322519, "date": "2022-11-19 16:06:36", "cost": 300,
                  "payment": 300.5, "status": "CLOSED",
                  "restaurant": {"id": "r1", "name": "Кофейня №1"},
                  "user": {"id": "u1", "name": "Olga"},
                  "products": [{"id": "p1", "price": 180, "quantity": 1, "name": "Roll",
                                "category": "Выпечка"}]}}"#,
        )
        .unwrap_or_default();
        assert_eq!(order.stg_message(), expected);
        let c = counter(CounterKind::Category, "Bakery", "Bakery", 2);
        let message = dds_message(c.user, [&c]);
        assert_eq!(message["user_id"], Value::String(hub_key("u1").to_string()));
        assert_eq!(
            message["categories"][hub_key("Bakery").to_string()]["order_cnt"],
            Value::from(2)
        );
        assert_eq!(message["products"], Value::Object(Map::new()));
    }

    #[test]
    fn keys_are_uuid_v5_and_stable() {
        let key = hub_key("626a81ce9a8cd1920641e296");
        assert_eq!(key.get_version_num(), 5);
        // The value every existing table holds for this id (computed independently:
        // Python's uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "https://dishflow.dev/dds"), id)).
        assert_eq!(key.to_string(), "13f78da9-19a0-56db-b3b6-e82ccd0c48c6");
        assert_ne!(link_key(key, hub_key("x")), link_key(hub_key("x"), key));
        assert_ne!(
            hashdiff(key, &["a b".into(), "c".into()]),
            hashdiff(key, &["a".into(), "b c".into()])
        );
        // Fixed forever: changing the namespace would change every key in every table.
        assert_eq!(
            NAMESPACE.to_string(),
            "fc82c7f4-792f-5901-8b75-3cf69e41b944"
        );
    }
}
