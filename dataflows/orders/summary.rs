//! The orders numbers a dashboard shows ([`summary`]): per category, product name and tag,
//! the users and the closed orders — a few hundred rows kept current from the counters and
//! the tags, so that a page never aggregates millions of counters per request.
//!
//! ```text
//!  counters ─ key (category | product name) ─┬─ count ───────────────── users  ─┐
//!  user tags ─ key (tag) ────────────────────┘                                  ├─ SummaryRow
//!  counters ─ key, weighted by order_cnt ───── count ───────────────── orders ─┘
//! ```
//!
//! * `users`: the counters of the key — one per user for a category or a tag; for a
//!   product name one per user and product of that name (two restaurants' products of the
//!   same name are two products).
//! * `orders`: the sum of their `order_cnt` — the closed orders with the category or the
//!   product (0 for a tag).
//! * A key without counters (or tags) has no row.
//!
//! State: one count per key (`count_total`), not per counter.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::operators::CountTotal;
use serde::{Deserialize, Serialize};

use super::{Counter, CounterKind, UserTag};
use crate::{Diff, Time};

/// What a summary row counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SummaryKind {
    /// A category (`cdm.user_category_counters`).
    Category,
    /// A product name (`cdm.user_product_counters`).
    Product,
    /// A tag (`cdm.user_tags`).
    Tag,
}

impl SummaryKind {
    /// Its name in `cdm.orders_summary.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            SummaryKind::Category => "category",
            SummaryKind::Product => "product",
            SummaryKind::Tag => "tag",
        }
    }
}

/// One row of `cdm.orders_summary`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SummaryRow {
    /// `kind`.
    pub kind: SummaryKind,
    /// `name`: the category, product or tag.
    pub name: String,
    /// `users` (see the module rules).
    pub users: i64,
    /// `orders` (see the module rules).
    pub orders: i64,
}

impl SummaryRow {
    /// The identity of its row (kind, name), hashed.
    pub fn route(&self) -> u64 {
        (self.kind, &self.name).hashed()
    }
}

/// The summary of `counters` and `tags` (see the module rules).
pub fn summary<'s>(
    counters: VecCollection<'s, Time, Counter, Diff>,
    tags: VecCollection<'s, Time, UserTag, Diff>,
) -> VecCollection<'s, Time, SummaryRow, Diff> {
    let key = |c: &Counter| {
        let kind = match c.kind {
            CounterKind::Category => SummaryKind::Category,
            CounterKind::Product => SummaryKind::Product,
        };
        (kind, c.name.clone())
    };
    let users = counters
        .clone()
        .map(move |c| key(&c))
        .concat(tags.map(|t| (SummaryKind::Tag, Arc::<str>::from(t.tag))))
        .count_total()
        .map(|(key, users)| (key, (users as i64, 0)));
    let orders = counters
        .explode(move |c| Some((key(&c), c.count as Diff)))
        .count_total()
        .map(|(key, orders)| (key, (0, orders as i64)));
    users
        .concat(orders)
        .reduce_named("OrdersSummary", |_key, input, output| {
            let (users, orders) = input.iter().fold((0, 0), |(u, o), ((du, d_o), n)| {
                (u + du * *n as i64, o + d_o * *n as i64)
            });
            output.push(((users, orders), 1));
        })
        .map(|((kind, name), (users, orders))| SummaryRow {
            kind,
            name: name.to_string(),
            users,
            orders,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::{Capture, ToStream};
    use uuid::Uuid;

    fn counter(kind: CounterKind, user: u128, item: u128, name: &str, count: i64) -> Counter {
        Counter {
            kind,
            user: Uuid::from_u128(user),
            item: Uuid::from_u128(item),
            name: name.into(),
            count,
        }
    }

    fn tag(user: u128, tag: &str) -> UserTag {
        UserTag {
            user: Uuid::from_u128(user),
            tag: tag.into(),
        }
    }

    fn row(kind: SummaryKind, name: &str, users: i64, orders: i64) -> SummaryRow {
        SummaryRow {
            kind,
            name: name.into(),
            users,
            orders,
        }
    }

    #[test]
    fn users_and_orders_per_category_product_and_tag_follow_their_changes() {
        use CounterKind::{Category, Product};
        use SummaryKind as K;
        let counters = vec![
            (counter(Category, 1, 10, "Пицца", 3), 0, 1),
            (counter(Category, 2, 10, "Пицца", 1), 0, 1),
            // Two products of one name (two restaurants) for user 1.
            (counter(Product, 1, 20, "Маргарита", 2), 0, 1),
            (counter(Product, 1, 21, "Маргарита", 1), 0, 1),
            // User 2's pizza order is cancelled at 5: the counter goes.
            (counter(Category, 2, 10, "Пицца", 1), 5, -1),
        ];
        let tags = vec![
            (tag(1, "pizza lover"), 0, 1),
            (tag(1, "pizza lover"), 8, -1),
        ];
        let captured = timely::example(move |scope| {
            let counters = counters.into_iter().to_stream(scope).as_collection();
            let tags = tags.into_iter().to_stream(scope).as_collection();
            summary(counters, tags).consolidate().inner.capture()
        });
        assert_eq!(
            crate::sorted_updates(captured),
            [
                (row(K::Category, "Пицца", 1, 3), 5, 1),
                (row(K::Category, "Пицца", 2, 4), 0, 1),
                (row(K::Category, "Пицца", 2, 4), 5, -1),
                (row(K::Product, "Маргарита", 2, 3), 0, 1),
                (row(K::Tag, "pizza lover", 1, 0), 0, 1),
                (row(K::Tag, "pizza lover", 1, 0), 8, -1),
            ]
        );
    }
}
