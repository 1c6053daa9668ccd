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

/// Orders with every id resolved: an order appears once its restaurant, user and every
/// product are in the dictionaries, and changes with them (see the module rules).
pub fn enriched_orders<'s>(
    orders: VecCollection<'s, Time, Arc<OrderVersion>, Diff>,
    dictionaries: VecCollection<'s, Time, Dictionary, Diff>,
) -> VecCollection<'s, Time, EnrichedOrder, Diff> {
    // The version and its resolved lines are shared (`Arc`) by the arrangements below: an
    // order's payload, items and products are not copied into each of them.
    let orders = orders.map(|v| (v.order.id, v));
    let menu = dictionaries.clone().flat_map(|d| match d {
        Dictionary::Restaurant { id, menu, .. } => menu
            .into_iter()
            .map(|m| ((id.clone(), m.id), (m.name, m.category)))
            .collect(),
        Dictionary::User { .. } => Vec::new(),
    });
    // A product listed twice in one menu counts once (the least entry).
    let menu = one_per_key("MenuByProduct", menu, Pick::Least).arrange_by_key_named("Menu");
    let restaurants = dictionaries.clone().flat_map(|d| match d {
        Dictionary::Restaurant { id, name, .. } => Some((id, name)),
        Dictionary::User { .. } => None,
    });
    let restaurants =
        one_per_key("RestaurantName", restaurants, Pick::Least).arrange_by_key_named("Restaurants");
    let users = dictionaries.flat_map(|d| match d {
        Dictionary::User { id, name, login } => Some((id, (name, login))),
        Dictionary::Restaurant { .. } => None,
    });
    let users = one_per_key("UserName", users, Pick::Least).arrange_by_key_named("Users");
    // Each line, resolved through the menu: (order id, (line, product)).
    let lines = orders
        .clone()
        .flat_map(|(id, version)| {
            let order = &version.order;
            (order.items.iter().enumerate())
                .map(|(line, item)| {
                    (
                        (order.restaurant_id.clone(), item.id.clone()),
                        (id, line, item.price.clone(), item.quantity),
                    )
                })
                .collect::<Vec<_>>()
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
            // In line order, behind one `Arc` that every arrangement below shares.
            let products: Arc<[(usize, Product)]> =
                input.iter().map(|(line, _)| (*line).clone()).collect();
            output.push((products, 1));
        })
        .arrange_by_key_named("ResolvedLinesByOrder");
    orders
        .arrange_by_key_named("OrdersById")
        .join_core(lines, |_id, version, products| {
            // Complete when every line resolved: lines 0..n, each exactly once.
            let complete = products.len() == version.order.items.len()
                && products.iter().enumerate().all(|(i, (line, _))| *line == i);
            complete.then(|| {
                (
                    version.order.user_id.clone(),
                    (Arc::clone(version), Arc::clone(products)),
                )
            })
        })
        .arrange_by_key_named("ResolvedOrdersByUser")
        .join_core(users, |_user, (version, products), (name, login)| {
            Some((
                version.order.restaurant_id.clone(),
                (
                    Arc::clone(version),
                    Arc::clone(products),
                    name.clone(),
                    login.clone(),
                ),
            ))
        })
        .arrange_by_key_named("ResolvedOrdersByRestaurant")
        .join_core(
            restaurants,
            |_restaurant, (version, products, user_name, user_login), restaurant_name| {
                let order = &version.order;
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
                    products: products.iter().map(|(_, p)| p.clone()).collect(),
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
