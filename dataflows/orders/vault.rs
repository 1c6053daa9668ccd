//! The Data Vault ([`vault`]): hubs, links and satellites of the enriched orders, keyed by
//! UUID v5 of the business ids.

use std::sync::LazyLock;

use chrono::NaiveDateTime;
use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::*;
use crate::decode::split;
use crate::{Diff, Pick, Time, one_per_key};

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

/// The business id of a hub row, typed as its table's column.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BusinessId {
    /// An order: `h_order.order_id` (int4, checked where the message is decoded) and
    /// `h_order.order_dt`.
    Order {
        /// `object_id`.
        id: i32,
        /// `payload.date`.
        date: NaiveDateTime,
    },
    /// The text id of any other hub.
    Text(String),
}

impl BusinessId {
    /// The id as text: what its hub key is computed from.
    pub fn text(&self) -> String {
        match self {
            BusinessId::Order { id, .. } => id.to_string(),
            BusinessId::Text(id) => id.clone(),
        }
    }
}

/// One Data Vault row, without `load_dt`/`load_src` (the sink adds them).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum VaultRow {
    /// A hub row: key and business id.
    Hub {
        /// Which hub.
        kind: HubKind,
        /// `h_*_pk` = [`hub_key`] of the business id's text.
        key: Uuid,
        /// The business id.
        id: BusinessId,
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

    /// Whether the row is keyed by an order's hub (`h_order`, its links and satellites):
    /// then exactly one order implies it.
    pub fn of_one_order(&self) -> bool {
        match self {
            VaultRow::Hub { kind, .. } => *kind == HubKind::Order,
            VaultRow::Link { kind, .. } => {
                matches!(kind, LinkKind::OrderProduct | LinkKind::OrderUser)
            }
            VaultRow::Satellite { kind, .. } => {
                matches!(kind, SatelliteKind::OrderCost | SatelliteKind::OrderStatus)
            }
        }
    }

    fn hub(kind: HubKind, id: BusinessId) -> (Uuid, VaultRow) {
        let key = hub_key(&id.text());
        (key, VaultRow::Hub { kind, key, id })
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
    let (order_pk, hub) = VaultRow::hub(
        HubKind::Order,
        BusinessId::Order {
            id: order.id,
            date: order.date,
        },
    );
    rows.push(hub);
    let (user_pk, hub) = VaultRow::hub(HubKind::User, BusinessId::Text(order.user_id.clone()));
    rows.push(hub);
    let (restaurant_pk, hub) = VaultRow::hub(
        HubKind::Restaurant,
        BusinessId::Text(order.restaurant_id.clone()),
    );
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
        let (product_pk, hub) =
            VaultRow::hub(HubKind::Product, BusinessId::Text(product.id.clone()));
        rows.push(hub);
        let (category_pk, hub) = VaultRow::hub(
            HubKind::Category,
            BusinessId::Text(product.category.to_string()),
        );
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
            vec![product.name.to_string()],
        ));
    }
    rows.sort();
    rows.dedup();
    rows
}

/// The Data Vault as a set: hubs and links that any current order implies, and for each
/// satellite key one current value (the greatest, should two orders disagree).
///
/// Rows keyed by an order's hub ([`VaultRow::of_one_order`]) pass straight through: every
/// order has one current version, so they form a set already, and arranging them would keep
/// a copy of each per order (about half of the job's arranged state). Only rows that orders
/// share — the users', restaurants', products' and categories' — are made distinct.
pub fn vault<'s>(
    orders: VecCollection<'s, Time, EnrichedOrder, Diff>,
) -> VecCollection<'s, Time, VaultRow, Diff> {
    // Each row goes to one side without a copy of the whole set for each: a backlog of
    // orders derives millions of rows at once.
    let (own, shared) = split(orders.flat_map(|order| {
        vault_rows(&order).into_iter().map(|row| {
            if row.of_one_order() {
                Ok(row)
            } else if let VaultRow::Satellite { kind, hub, values } = row {
                Err(Err(((kind, hub), values)))
            } else {
                Err(Ok(row))
            }
        })
    }));
    let (keys, satellites) = split(shared);
    let keys = keys.distinct();
    // A satellite key's current values: the greatest of those present at a time (versions
    // that arrive together collapse deterministically).
    let satellites = one_per_key("SatelliteValue", satellites, Pick::Greatest)
        .map(|((kind, hub), values)| VaultRow::Satellite { kind, hub, values });
    own.concat(keys).concat(satellites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_hub_keeps_its_int_id_and_date_and_is_keyed_by_the_id_text() {
        let date = NaiveDateTime::parse_from_str("2022-11-19 16:06:36", "%Y-%m-%d %H:%M:%S")
            .expect("a date");
        let id = BusinessId::Order { id: 322519, date };
        let (key, row) = VaultRow::hub(HubKind::Order, id.clone());
        assert_eq!(key, hub_key("322519"));
        assert_eq!(
            row,
            VaultRow::Hub {
                kind: HubKind::Order,
                key,
                id
            }
        );
        let (key, _) = VaultRow::hub(HubKind::User, BusinessId::Text("u1".into()));
        assert_eq!(key, hub_key("u1"));
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
