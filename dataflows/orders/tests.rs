//! Helpers for the rules' tests, and tests of the whole job over timed inputs.

use std::collections::BTreeSet;

use differential_dataflow::AsCollection;
use serde_json::{Map, Value};
use timely::dataflow::operators::capture::Extract;
use timely::dataflow::operators::{Capture, ToStream};

use super::*;
use crate::{Diff, Time};

/// The example message of the spec, with `object_id`, status and update_ts as given.
pub(super) fn message(id: i64, status: &str, update_ts: &str, items: &[(&str, i64)]) -> String {
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

pub(super) fn version(
    id: i64,
    status: &str,
    update_ts: &str,
    items: &[(&str, i64)],
) -> OrderVersion {
    let text = message(id, status, update_ts, items);
    match parse_order(Some(text.as_bytes())) {
        Ok(Some(v)) => v,
        other => panic!("not an order: {other:?}"),
    }
}

pub(super) fn restaurant(name: &str, menu: &[(&str, &str, &str)]) -> Dictionary {
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

pub(super) fn user(name: &str) -> Dictionary {
    Dictionary::User {
        id: "u1".into(),
        name: name.into(),
        login: "olga".into(),
    }
}

type Captured = (Vec<(Counter, Time, Diff)>, Vec<(VaultRow, Time, Diff)>);

/// Runs the whole job over timed order messages and dictionary entries.
fn run(orders: Vec<(OrderVersion, Time)>, dictionaries: Vec<(Dictionary, Time, Diff)>) -> Captured {
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
        let rules = Vec::<(TagRule, Time, Diff)>::new();
        let out = super::orders(m, d, rules.into_iter().to_stream(scope).as_collection());
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
fn an_order_at_the_ends_of_what_the_decoder_accepts_flows_through_every_layer() {
    let text = message(
        i64::from(i32::MAX),
        "CLOSED",
        "+262142-12-31 23:59:59",
        &[("p1", 1)],
    )
    .replace(
        r#""date": "2022-11-19 16:06:36""#,
        r#""date": "-4712-11-24 00:00:00""#,
    )
    .replace(r#""quantity": 1"#, &format!(r#""quantity": {}"#, i64::MAX))
    .replace(r#""cost": 300"#, r#""cost": 99999999999999.98"#)
    .replace(r#""price": 180"#, r#""price": 99999999999999.98"#);
    let extreme = match parse_order(Some(text.as_bytes())) {
        Ok(Some(v)) => v,
        other => panic!("accepted: {other:?}"),
    };
    let enriched_total = extreme.order.items.iter().map(|i| i.quantity).max();
    assert_eq!(enriched_total, Some(i64::MAX));
    let dictionaries = vec![
        (restaurant("Coffee", &[("p1", "Roll", "Bakery")]), 0, 1),
        (user("Olga"), 0, 1),
    ];
    let (counters, vault) = run(vec![(extreme, 10)], dictionaries);
    assert!(counters.contains(&(counter(CounterKind::Product, "p1", "Roll", 1), 10, 1)));
    assert!(
        vault
            .iter()
            .any(|(row, _, _)| matches!(row, VaultRow::Hub { .. }))
    );
}

#[test]
fn a_menu_change_changes_only_the_orders_of_the_changed_product_and_a_product_listed_twice_counts_once()
 {
    let menu = [("p1", "Roll", "Bakery"), ("p2", "Bun", "Bakery")];
    let renamed = [("p2", "Big bun", "Bakery"), ("p1", "Roll", "Bakery")];
    let twice = [
        ("p1", "Roll", "Bakery"),
        ("p1", "A roll", "Bakery"),
        ("p2", "Big bun", "Bakery"),
    ];
    let dictionaries = vec![
        (restaurant("Coffee", &menu), 0, 1),
        (user("Olga"), 0, 1),
        (restaurant("Coffee", &menu), 40, -1),
        (restaurant("Coffee", &renamed), 40, 1),
        (restaurant("Coffee", &renamed), 50, -1),
        (restaurant("Coffee", &twice), 50, 1),
    ];
    let orders = vec![
        (
            version(1, "CLOSED", "2022-11-19 16:00:00", &[("p1", 1)]),
            10,
        ),
        (
            version(2, "CLOSED", "2022-11-19 16:00:00", &[("p2", 1)]),
            10,
        ),
    ];
    let (counters, vault) = run(orders, dictionaries);
    use CounterKind::*;
    // Order 1's counter and satellites do not move when p2 is renamed; at 50 p1 is listed
    // twice and the least entry ("A roll") names it.
    assert_eq!(
        counters,
        [
            (counter(Product, "p1", "A roll", 1), 50, 1),
            (counter(Product, "p1", "Roll", 1), 10, 1),
            (counter(Product, "p1", "Roll", 1), 50, -1),
            (counter(Product, "p2", "Big bun", 1), 40, 1),
            (counter(Product, "p2", "Bun", 1), 10, 1),
            (counter(Product, "p2", "Bun", 1), 40, -1),
            (counter(Category, "Bakery", "Bakery", 2), 10, 1),
        ]
    );
    let at_40: Vec<_> = vault.iter().filter(|(_, t, _)| *t == 40).collect();
    assert!(
        at_40.iter().all(|(row, _, _)| matches!(
            row,
            VaultRow::Satellite { kind: SatelliteKind::ProductNames, hub, .. } if *hub == hub_key("p2")
        )),
        "{at_40:?}"
    );
}
