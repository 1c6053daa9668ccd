//! Job 2, `orders`: order events + Redis dictionaries → STG, Data Vault DDS and CDM counters.
//!
//! ```text
//!  raw Kafka records ─decode─┬─ Err ──────────────────────────────────────► dead letters
//!                            ├─ other object_type ─────────────────────────► ignored (counted)
//!                            └─ OrderMessage ─ exchange by object_id
//!                                  │ CurrentOrders: latest (update_ts, md5(payload)) wins
//!                                  ├─ each version that becomes current ───────► STG upserts
//!                                  ▼
//!                        current versions (decoded)
//!                                  │
//!   dictionaries (Redis) ──────────┤ enrich: ⋈ restaurant (name and whole menu),
//!     restaurants + menus, users   │   ⋈ user; an order is complete only when every id
//!                                  │   is known (else held, not dropped)
//!                                  ▼
//!                          enriched orders ─┬─ hubs, links (distinct) ─────► DDS
//!                                           ├─ satellites (one value per key) ► DDS
//!                                           └─ CLOSED: distinct orders per
//!                                              (user, product) and (user, category) ► CDM
//!                                                  │ ⋈ tag rules (Postgres): count ≥ min
//!                                                  ▼
//!                                              user tags ──────────────────────► CDM
//! ```
//!
//! The rules, by file and name:
//! * `messages.rs`, [`parse_order`]: what a valid order message is; everything else is a [`Reject`].
//! * `current.rs`, [`CurrentOrders`]: *latest `update_ts` wins* per `object_id`; re-delivery of the same or
//!   an older version changes nothing (equal `update_ts`: the greater MD5 of the payload text
//!   wins, so every replay order gives the same result). Only the decoded fields are kept; STG
//!   gets the raw payload once, when its version becomes current.
//! * `dictionaries.rs`, [`parse_dictionary`]: a Redis value with a `menu` is a restaurant, with a `login` a user.
//! * `enrich.rs`, [`enriched_orders`]: product name and category come from the restaurant's menu, price
//!   and quantity from the order; an order with an unknown restaurant, user or product is
//!   held until the dictionary entry appears, and follows every later dictionary change.
//! * `vault.rs`, [`vault`]: hub and link keys are UUID v5 of the business ids ([`hub_key`],
//!   [`link_key`]); a satellite's hashdiff is a UUID v5 of its hub key and attribute values.
//! * `counters.rs`, [`counters`]: `order_cnt` = distinct CLOSED orders of the user containing the product
//!   (or any product of the category); a key whose count drops to 0 leaves the collection.
//! * `tags.rs`, [`user_tags`]: a user has a rule's tag while their counter for the rule's category
//!   (or a product of its name) is at least `min_orders`.
//! * `summary.rs`, [`summary`]: users and closed orders per category, product name and tag, for
//!   dashboards.

mod counters;
mod current;
mod dictionaries;
mod enrich;
mod messages;
mod summary;
mod tags;
#[cfg(test)]
mod tests;
mod vault;

pub use self::counters::*;
pub use self::current::*;
pub use self::dictionaries::*;
pub use self::enrich::*;
pub use self::messages::*;
pub use self::summary::*;
pub use self::tags::*;
pub use self::vault::*;
pub use crate::decode::Reject;

use std::sync::Arc;

use differential_dataflow::VecCollection;
use timely::dataflow::Stream;

use crate::{Diff, Retention, Time};

/// The `object_type` of orders; messages of other types are ignored.
pub const ORDER: &str = "order";

/// The status that counts in the CDM.
pub const CLOSED: &str = "CLOSED";

/// The orders job's outputs.
pub struct Outputs<'s> {
    /// `stg.order_events` upserts: each version that became current, at the time it did
    /// (insertions only; the latest per `object_id` is the table's row).
    pub stg: VecCollection<'s, Time, Arc<OrderEvent>, Diff>,
    /// The enriched current orders (the `stg-service-orders` messages).
    pub enriched: VecCollection<'s, Time, EnrichedOrder, Diff>,
    /// The Data Vault rows.
    pub vault: VecCollection<'s, Time, VaultRow, Diff>,
    /// The CDM counters.
    pub counters: VecCollection<'s, Time, Counter, Diff>,
    /// `cdm.user_tags`: the tags the rules give the users.
    pub tags: VecCollection<'s, Time, UserTag, Diff>,
    /// `cdm.orders_summary`: users and orders per category, product name and tag.
    pub summary: VecCollection<'s, Time, SummaryRow, Diff>,
    /// What the state retains (for progress).
    pub retention: Stream<'s, Time, Vec<Retention>>,
}

/// The whole job: decoded order messages, dictionary entries and tag rules → every output.
pub fn orders<'s>(
    messages: VecCollection<'s, Time, OrderMessage, Diff>,
    dictionaries: VecCollection<'s, Time, Dictionary, Diff>,
    rules: VecCollection<'s, Time, TagRule, Diff>,
) -> Outputs<'s> {
    let CurrentOutputs {
        orders,
        stg,
        retention,
    } = current_orders(messages);
    let enriched = enriched_orders(orders, dictionaries);
    let counters = counters(enriched.clone());
    let tags = user_tags(counters.clone(), rules);
    Outputs {
        stg,
        vault: vault(enriched.clone()),
        summary: summary(counters.clone(), tags.clone()),
        tags,
        counters,
        enriched,
        retention,
    }
}
