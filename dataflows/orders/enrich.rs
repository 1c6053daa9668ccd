//! Orders enriched from the dictionaries ([`enriched_orders`]): held until every id is
//! known, following every later dictionary change; and their STG message.

use std::sync::Arc;

use chrono::NaiveDateTime;
use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;
use crate::{Diff, Pick, Time, one_per_key};

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
    pub id: i32,
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

/// A menu entry, as an order line resolves it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct MenuEntry {
    restaurant: String,
    product: String,
    name: String,
    category: String,
}

/// A user, as an order meets it (by [`id_key`] of its id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct UserEntry {
    id: String,
    name: String,
    login: String,
}

/// A restaurant's name, as an order meets it (by [`id_key`] of its id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct RestaurantEntry {
    id: String,
    name: String,
}

/// The key an order meets its user or restaurant by: a hash of the id. Orders arranged by
/// it hold no text; two ids sharing a hash are told apart by the entry's id in the join.
fn id_key(id: &str) -> u64 {
    id.hashed()
}

/// The key an order line meets its menu entry by: a hash of (restaurant id, product id).
/// Lines arranged by it hold no text; two pairs sharing a hash are told apart by their ids
/// when the order is completed ([`resolve`]).
fn menu_key(restaurant: &str, product: &str) -> u64 {
    (restaurant, product).hashed()
}

/// An order's candidate menu entries, `(line, entry)` in line order.
type ResolvedLines = Arc<[(u32, Arc<MenuEntry>)]>;

/// The menu entry of each of the order's lines, in line order, when every line has its
/// entry among `entries` (`(line, entry)`, sorted).
fn resolve(order: &Order, entries: &[(u32, Arc<MenuEntry>)]) -> Option<Arc<[Arc<MenuEntry>]>> {
    (order.items.iter().enumerate())
        .map(|(line, item)| {
            let line = u32::try_from(line).ok()?;
            let from = entries.partition_point(|(l, _)| *l < line);
            entries[from..]
                .iter()
                .take_while(|(l, _)| *l == line)
                .map(|(_, entry)| entry)
                .find(|e| e.restaurant == order.restaurant_id && e.product == item.id)
                .cloned()
        })
        .collect()
}

/// The order's products: price and quantity from its lines, name and category from the
/// lines' menu entries (as [`resolve`] found them).
fn products(order: &Order, entries: &[Arc<MenuEntry>]) -> Vec<Product> {
    (order.items.iter().zip(entries))
        .map(|(item, entry)| Product {
            id: item.id.clone(),
            price: item.price.clone(),
            quantity: item.quantity,
            name: entry.name.clone(),
            category: entry.category.clone(),
        })
        .collect()
}

/// Orders with every id resolved: an order appears once its restaurant, user and every
/// product are in the dictionaries, and changes with them (see the module rules).
pub fn enriched_orders<'s>(
    orders: VecCollection<'s, Time, Arc<Order>, Diff>,
    dictionaries: VecCollection<'s, Time, Dictionary, Diff>,
) -> VecCollection<'s, Time, EnrichedOrder, Diff> {
    // What is arranged per order stays small: the order and its lines' menu entries are
    // shared (`Arc`) by the arrangements below, a line waits for its entry as three numbers
    // (menu key, order id, line), orders meet users and restaurants by a hash of the id, and
    // products are assembled only for the output.
    let orders = orders.map(|order| (order.id, order));
    let menu = dictionaries.clone().flat_map(|d| match d {
        Dictionary::Restaurant { id, menu, .. } => menu
            .into_iter()
            .map(|m| ((id.clone(), m.id), (m.name, m.category)))
            .collect(),
        Dictionary::User { .. } => Vec::new(),
    });
    // A product listed twice in one menu counts once (the least entry).
    let menu = one_per_key("MenuByProduct", menu, Pick::Least)
        .map(|((restaurant, product), (name, category))| {
            let key = menu_key(&restaurant, &product);
            let entry = MenuEntry {
                restaurant,
                product,
                name,
                category,
            };
            (key, Arc::new(entry))
        })
        .arrange_by_key_named("Menu");
    let restaurants = dictionaries.clone().flat_map(|d| match d {
        Dictionary::Restaurant { id, name, .. } => Some((id, name)),
        Dictionary::User { .. } => None,
    });
    let restaurants = one_per_key("RestaurantName", restaurants, Pick::Least)
        .map(|(id, name)| (id_key(&id), Arc::new(RestaurantEntry { id, name })))
        .arrange_by_key_named("Restaurants");
    let users = dictionaries.flat_map(|d| match d {
        Dictionary::User { id, name, login } => Some((id, (name, login))),
        Dictionary::Restaurant { .. } => None,
    });
    let users = one_per_key("UserName", users, Pick::Least)
        .map(|(id, (name, login))| (id_key(&id), Arc::new(UserEntry { id, name, login })))
        .arrange_by_key_named("Users");
    // Each line's candidate menu entries, per order: (order id, [(line, entry)]).
    let lines = orders
        .clone()
        .flat_map(|(id, order)| {
            (order.items.iter().enumerate())
                .filter_map(|(line, item)| {
                    let line = u32::try_from(line).ok()?;
                    Some((menu_key(&order.restaurant_id, &item.id), (id, line)))
                })
                .collect::<Vec<_>>()
        })
        .arrange_by_key_named("OrderLines")
        .join_core(menu, |_key, (id, line), entry| {
            Some((*id, (*line, Arc::clone(entry))))
        })
        .arrange_by_key_named("Arrange: ResolvedLines")
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<i32, ResolvedLines, Time, Diff>, _, _>(
            "ResolvedLines",
            |_id, input, output| {
                // In line order, behind one `Arc`.
                let entries: ResolvedLines = input.iter().map(|(entry, _)| (*entry).clone()).collect();
                output.push((entries, 1));
            },
            // Arranged by order as the reduce leaves them: the join below reads them there.
            |vec, id, updates| {
                vec.clear();
                vec.extend(updates.drain(..).map(|(v, t, r)| ((*id, v), t, r)));
            },
        );
    orders
        .arrange_by_key_named("OrdersById")
        .join_core(lines, |_id, order, entries| {
            // Complete when every line has its menu entry.
            let entries = resolve(order, entries)?;
            Some((id_key(&order.user_id), (Arc::clone(order), entries)))
        })
        .arrange_by_key_named("ResolvedOrdersByUser")
        .join_core(users, |_user, (order, entries), user| {
            (user.id == order.user_id).then(|| {
                let key = id_key(&order.restaurant_id);
                (
                    key,
                    (Arc::clone(order), Arc::clone(entries), Arc::clone(user)),
                )
            })
        })
        .arrange_by_key_named("ResolvedOrdersByRestaurant")
        .join_core(
            restaurants,
            |_restaurant, (order, entries, user), restaurant| {
                if restaurant.id != order.restaurant_id {
                    return None;
                }
                Some(EnrichedOrder {
                    id: order.id,
                    date: order.date,
                    cost: order.cost.clone(),
                    payment: order.payment.clone(),
                    status: order.status.clone(),
                    restaurant_id: order.restaurant_id.clone(),
                    restaurant_name: restaurant.name.clone(),
                    user_id: order.user_id.clone(),
                    user_name: user.name.clone(),
                    user_login: user.login.clone(),
                    products: products(order, entries),
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
