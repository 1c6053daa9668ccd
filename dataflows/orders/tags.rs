//! User tags ([`user_tags`]): a user has a rule's tag while their counter for the rule's
//! category — or for a product of the rule's name — is at least the rule's `min_orders`.
//!
//! ```text
//!  counters ── keyed by (kind, name) ──┐
//!  tag rules ── keyed by (kind, name) ─┴─ join: order_cnt ≥ min_orders ─ distinct ─► UserTag
//! ```
//!
//! * A rule names exactly one of a category and a product (`cdm.tag_rules` refuses others
//!   with a CHECK); a rule that names neither or both tags nobody.
//! * A product is named, not identified: products of the same name in different restaurants
//!   are different counters, and any of them reaching the threshold gives the tag (once).
//! * A rule naming a category or product nobody ordered simply tags nobody.
//! * The tag goes when the counter falls below the threshold (a CLOSED order cancelled), when
//!   the rule is raised above it, or when the rule is deleted; editing a rule re-tags every
//!   affected user at once.
//!
//! State: the counters keyed by name (one entry per counter), and the rules.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Counter, CounterKind};
use crate::{Diff, Time};

/// One row of `cdm.tag_rules`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TagRule {
    /// `tag`, the key.
    pub tag: String,
    /// `category_name`: the rule counts the user's orders of this category.
    pub category: Option<String>,
    /// `product_name`: the rule counts the user's orders of a product of this name.
    pub product: Option<String>,
    /// `min_orders`: the tag holds while the counter is at least this.
    pub min_orders: i64,
}

impl TagRule {
    /// The counter the rule reads: (which table, name); none unless exactly one of category
    /// and product is set.
    pub fn counter(&self) -> Option<(CounterKind, String)> {
        match (&self.category, &self.product) {
            (Some(category), None) => Some((CounterKind::Category, category.clone())),
            (None, Some(product)) => Some((CounterKind::Product, product.clone())),
            _ => None,
        }
    }
}

/// One row of `cdm.user_tags` (its `since` is the time the sink first writes it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserTag {
    /// `user_id`: the user's `h_user_pk`, as in the counters.
    pub user: Uuid,
    /// `tag`.
    pub tag: String,
}

impl UserTag {
    /// Its user, hashed: one writer owns all of a user's tags.
    pub fn route(&self) -> u64 {
        self.user.hashed()
    }
}

/// The tags the `rules` give the users of `counters` (see the module rules).
pub fn user_tags<'s>(
    counters: VecCollection<'s, Time, Counter, Diff>,
    rules: VecCollection<'s, Time, TagRule, Diff>,
) -> VecCollection<'s, Time, UserTag, Diff> {
    let thresholds = rules.flat_map(|rule| {
        let counter = rule.counter();
        counter.map(|(kind, name)| ((kind, Arc::<str>::from(name)), (rule.tag, rule.min_orders)))
    });
    counters
        .map(|c| ((c.kind, c.name), (c.user, c.count)))
        .join_map(thresholds, |_key, &(user, count), (tag, min_orders)| {
            (count >= *min_orders).then(|| UserTag {
                user,
                tag: tag.clone(),
            })
        })
        .flat_map(|tag| tag)
        .distinct()
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::{Capture, ToStream};

    fn user(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn counter(kind: CounterKind, who: u128, item: u128, name: &str, count: i64) -> Counter {
        Counter {
            kind,
            user: user(who),
            item: Uuid::from_u128(1000 + item),
            name: name.into(),
            count,
        }
    }

    fn rule(tag: &str, category: Option<&str>, product: Option<&str>, min: i64) -> TagRule {
        TagRule {
            tag: tag.into(),
            category: category.map(Into::into),
            product: product.map(Into::into),
            min_orders: min,
        }
    }

    /// Runs [`user_tags`] over timed counters and rules: (user, tag, time, diff), sorted.
    fn run(
        counters: Vec<(Counter, Time, Diff)>,
        rules: Vec<(TagRule, Time, Diff)>,
    ) -> Vec<(u128, String, Time, Diff)> {
        let captured = timely::example(move |scope| {
            let counters = counters.into_iter().to_stream(scope).as_collection();
            let rules = rules.into_iter().to_stream(scope).as_collection();
            user_tags(counters, rules).consolidate().inner.capture()
        });
        let mut out: Vec<_> = (crate::sorted_updates(captured).into_iter())
            .map(|(t, time, diff)| (t.user.as_u128(), t.tag, time, diff))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_user_has_the_tag_while_the_counter_reaches_the_threshold() {
        use CounterKind::{Category, Product};
        let pizza = rule("pizza lover", Some("Пицца"), None, 3);
        let counters = vec![
            // User 1: 2 pizzas, then a third at 5, then one cancelled at 9.
            (counter(Category, 1, 1, "Пицца", 2), 0, 1),
            (counter(Category, 1, 1, "Пицца", 2), 5, -1),
            (counter(Category, 1, 1, "Пицца", 3), 5, 1),
            (counter(Category, 1, 1, "Пицца", 3), 9, -1),
            (counter(Category, 1, 1, "Пицца", 2), 9, 1),
            // User 2: 4 pizzas from the start; a product counter of the same name counts
            // only for product rules.
            (counter(Category, 2, 1, "Пицца", 4), 0, 1),
            (counter(Product, 3, 2, "Пицца", 9), 0, 1),
        ];
        assert_eq!(
            run(counters, vec![(pizza, 0, 1)]),
            [
                (1, "pizza lover".into(), 5, 1),
                (1, "pizza lover".into(), 9, -1),
                (2, "pizza lover".into(), 0, 1),
            ]
        );
    }

    #[test]
    fn editing_or_deleting_a_rule_re_tags_at_once() {
        use CounterKind::Product;
        let counters = vec![
            (counter(Product, 1, 1, "Маргарита", 2), 0, 1),
            // Two products of the same name (two restaurants): the tag counts once.
            (counter(Product, 2, 1, "Маргарита", 5), 0, 1),
            (counter(Product, 2, 2, "Маргарита", 6), 0, 1),
        ];
        let rules = vec![
            (rule("margherita", None, Some("Маргарита"), 2), 0, 1),
            // Raised at 4: user 1 loses it; deleted at 7: user 2 loses it.
            (rule("margherita", None, Some("Маргарита"), 2), 4, -1),
            (rule("margherita", None, Some("Маргарита"), 5), 4, 1),
            (rule("margherita", None, Some("Маргарита"), 5), 7, -1),
            // Names neither or both: tags nobody.
            (rule("broken", None, None, 1), 0, 1),
            (rule("both", Some("Пицца"), Some("Маргарита"), 1), 0, 1),
        ];
        assert_eq!(
            run(counters, rules),
            [
                (1, "margherita".into(), 0, 1),
                (1, "margherita".into(), 4, -1),
                (2, "margherita".into(), 0, 1),
                (2, "margherita".into(), 7, -1),
            ]
        );
    }
}
