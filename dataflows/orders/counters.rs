//! The CDM counters ([`counters`]): distinct CLOSED orders per (user, product) and
//! (user, category), and the per-user `dds-service-orders` message.

use std::collections::BTreeSet;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::*;
use crate::{Diff, Time};

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
    /// Product or category name (shared with the menu).
    pub name: Arc<str>,
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
                    Arc::clone(&product.name),
                ));
                keys.insert((
                    (CounterKind::Category, user, hub_key(&product.category)),
                    Arc::clone(&product.category),
                ));
            }
            keys
        })
        .reduce_named("Counters", |_key, input, output| {
            let count: Diff = input.iter().map(|(_, diff)| *diff).sum();
            if let Some((name, _)) = input.last()
                && count > 0
            {
                output.push(((Arc::clone(name), count as i64), 1));
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
