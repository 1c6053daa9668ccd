//! Orders enriched from the dictionaries ([`enriched_orders`]): held until every id is
//! known, following every later dictionary change; and their STG message.

use std::sync::Arc;

use chrono::NaiveDateTime;
use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
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
    /// Name, from the menu (shared with the menu and the counters).
    pub name: Arc<str>,
    /// Category, from the menu (shared with the menu and the counters).
    pub category: Arc<str>,
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

/// A user, as an order meets it (by [`id_key`] of its id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct UserEntry {
    id: String,
    name: String,
    login: String,
}

/// A product of a restaurant's menu, its name and category shared by every order's product
/// and counter that names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct MenuEntry {
    id: String,
    name: Arc<str>,
    category: Arc<str>,
}

/// A restaurant, as an order meets it (by [`id_key`] of its id): its name and its menu,
/// sorted by product id, a product listed twice once (the least entry).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct RestaurantEntry {
    id: String,
    name: String,
    menu: Vec<MenuEntry>,
}

impl RestaurantEntry {
    fn new(id: String, name: String, mut menu: Vec<MenuItem>) -> Self {
        menu.sort();
        menu.dedup_by(|later, first| later.id == first.id);
        let menu = (menu.into_iter())
            .map(|m| MenuEntry {
                id: m.id,
                name: m.name.into(),
                category: m.category.into(),
            })
            .collect();
        RestaurantEntry { id, name, menu }
    }

    /// The menu's entry of product `id`.
    fn item(&self, id: &str) -> Option<&MenuEntry> {
        let at = self.menu.binary_search_by(|m| m.id.as_str().cmp(id)).ok()?;
        self.menu.get(at)
    }

    /// The order's products, when the menu has every one of them: price and quantity from
    /// the order's lines, name and category from the menu.
    fn products(&self, order: &Order) -> Option<Vec<Product>> {
        (order.items.iter())
            .map(|line| {
                let item = self.item(&line.id)?;
                Some(Product {
                    id: line.id.to_string(),
                    price: line.price.to_string(),
                    quantity: line.quantity,
                    name: Arc::clone(&item.name),
                    category: Arc::clone(&item.category),
                })
            })
            .collect()
    }
}

/// The key an order meets its user or restaurant by: a hash of the id. Orders arranged by
/// it hold no text; two ids sharing a hash are told apart by the entry's id in the join.
fn id_key(id: &str) -> u64 {
    id.hashed()
}

/// Orders with every id resolved: an order appears once its restaurant, user and every
/// product are in the dictionaries, and changes with them (see the module rules).
pub fn enriched_orders<'s>(
    orders: VecCollection<'s, Time, Arc<Order>, Diff>,
    dictionaries: VecCollection<'s, Time, Dictionary, Diff>,
) -> VecCollection<'s, Time, EnrichedOrder, Diff> {
    // Two arrangements per order, holding no text: the orders by restaurant, and the orders
    // whose restaurant and products are known by user, each as a hash key and shared values
    // (`Arc`). An order meets its restaurant's whole menu at once, so a change of a menu
    // re-evaluates the restaurant's orders (only those whose products changed change
    // downstream), as a change of its name does; products are assembled only for the output.
    let restaurants = dictionaries.clone().flat_map(|d| match d {
        Dictionary::Restaurant { id, name, menu } => Some((id, (name, menu))),
        Dictionary::User { .. } => None,
    });
    let restaurants = one_per_key("Restaurant", restaurants, Pick::Least)
        .map(|(id, (name, menu))| (id_key(&id), Arc::new(RestaurantEntry::new(id, name, menu))))
        .arrange_by_key_named("Restaurants");
    let users = dictionaries.flat_map(|d| match d {
        Dictionary::User { id, name, login } => Some((id, (name, login))),
        Dictionary::Restaurant { .. } => None,
    });
    let users = one_per_key("UserName", users, Pick::Least)
        .map(|(id, (name, login))| (id_key(&id), Arc::new(UserEntry { id, name, login })))
        .arrange_by_key_named("Users");
    orders
        .map(|order| (id_key(&order.restaurant_id), order))
        .arrange_by_key_named("OrdersByRestaurant")
        .join_core(restaurants, |_restaurant, order, restaurant| {
            // Complete when the menu has every product of the order.
            let known = restaurant.id == order.restaurant_id
                && (order.items.iter()).all(|line| restaurant.item(&line.id).is_some());
            known.then(|| {
                let key = id_key(&order.user_id);
                (key, (Arc::clone(order), Arc::clone(restaurant)))
            })
        })
        .arrange_by_key_named("ResolvedOrdersByUser")
        .join_core(users, |_user, (order, restaurant), user| {
            if user.id != order.user_id {
                return None;
            }
            Some(EnrichedOrder {
                id: order.id,
                date: order.date,
                cost: order.cost.to_string(),
                payment: order.payment.to_string(),
                status: order.status.to_string(),
                restaurant_id: order.restaurant_id.to_string(),
                restaurant_name: restaurant.name.clone(),
                user_id: order.user_id.to_string(),
                user_name: user.name.clone(),
                user_login: user.login.clone(),
                products: restaurant.products(order)?,
            })
        })
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
