//! What a valid order message is ([`parse_order`]), and the split of raw records into
//! order messages, dead letters and other object types ([`decode`]).

use chrono::NaiveDateTime;
use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::*;
use crate::decode::{
    amount, datetime, decode_records, field, integer, nested, object, split, string,
};
use crate::{DeadLetter, Diff, RawRecord, Time};

/// A text field of an order kept in the state: ids, statuses and amounts repeat across
/// orders, so each distinct value is kept once (interned), shared by every order carrying it
/// and freed with the last of them.
pub type Shared = internment::ArcIntern<str>;

/// One line of an order, as sent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Item {
    /// Product id (a key of the restaurant's menu). (The name sent with it must be a
    /// string, but the outputs use the menu's, so it is not kept.)
    pub id: Shared,
    /// Price, exact JSON number text.
    pub price: Shared,
    /// Quantity (≥ 1).
    pub quantity: i64,
}

/// The fields of an order the outputs use.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Order {
    /// `object_id`.
    pub id: i32,
    /// `payload.date`.
    pub date: NaiveDateTime,
    /// `payload.restaurant.id`.
    pub restaurant_id: Shared,
    /// `payload.user.id`.
    pub user_id: Shared,
    /// `payload.order_items`.
    pub items: Box<[Item]>,
    /// `payload.cost`, exact JSON number text.
    pub cost: Shared,
    /// `payload.payment`, exact JSON number text.
    pub payment: Shared,
    /// `payload.final_status`.
    pub status: Shared,
    /// `payload.update_ts`: the version.
    pub update_ts: NaiveDateTime,
}

/// The message as STG keeps it: `stg.order_events`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderEvent {
    /// `object_id`.
    pub object_id: i32,
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
    let id = string(obj, "id", "payload.order_items.id")?;
    string(obj, "name", "payload.order_items.name")?;
    Ok(Item {
        id: id.into(),
        price: amount(obj, "price", "payload.order_items.price")?.into(),
        quantity,
    })
}

fn order(object_id: i32, payload: &Map<String, Value>) -> Result<Order, Reject> {
    let restaurant = nested(payload, "restaurant", "payload.restaurant")?;
    let user = nested(payload, "user", "payload.user")?;
    let items = field(payload, "order_items", "payload.order_items")?
        .as_array()
        .ok_or(Reject::WrongType("payload.order_items"))?
        .iter()
        .map(item)
        .collect::<Result<Box<[_]>, _>>()?;
    Ok(Order {
        id: object_id,
        date: datetime(payload, "date", "payload.date")?,
        restaurant_id: string(restaurant, "id", "payload.restaurant.id")?.into(),
        user_id: string(user, "id", "payload.user.id")?.into(),
        items,
        cost: amount(payload, "cost", "payload.cost")?.into(),
        payment: amount(payload, "payment", "payload.payment")?.into(),
        status: string(payload, "final_status", "payload.final_status")?.into(),
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
    // stg.order_events.object_id and dds.h_order.order_id are int4.
    let object_id = i32::try_from(integer(&obj, "object_id", "object_id")?)
        .map_err(|_| Reject::OutOfRange("object_id"))?;
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
    // A message of another object type is not an order, nor a dead letter.
    let (decoded, dead_letters) = decode_records(raw, |record| {
        Ok(match parse_order(record.value.as_deref())? {
            Some(version) => Ok(OrderMessage {
                version,
                partition: record.partition,
                offset: record.offset,
            }),
            None => Err(record.clone()),
        })
    });
    let (orders, ignored) = split(decoded);
    (orders, dead_letters, ignored)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary::{datetime_text, field_text, number_text};
    use crate::orders::tests::{message, version};

    proptest! {
        #[test]
        fn any_date_or_number_gives_an_order_or_a_dead_letter(
            date in datetime_text(),
            update in datetime_text(),
            id in number_text(),
            quantity in number_text(),
            price in field_text(),
            cost in number_text(),
        ) {
            let text = message(1, "CLOSED", &update, &[("p1", 1)])
                .replace(r#""object_id": 1"#, &format!(r#""object_id": {id}"#))
                .replace(r#""date": "2022-11-19 16:06:36""#, &format!(r#""date": "{date}""#))
                .replace(r#""quantity": 1"#, &format!(r#""quantity": {quantity}"#))
                .replace(r#""price": 180"#, &format!(r#""price": {price}"#))
                .replace(r#""cost": 300"#, &format!(r#""cost": {cost}"#));
            if let Ok(Some(v)) = parse_order(Some(text.as_bytes())) {
                // What Postgres holds: an int4 id, timestamps from 4713 BC, amounts as numeric.
                let earliest = *crate::decode::EARLIEST_TIMESTAMP;
                prop_assert!(v.order.date >= earliest && v.order.update_ts >= earliest);
                prop_assert!(v.order.items.iter().all(|i| i.quantity >= 1));
                let fits = |amount: &str| amount.parse::<f64>().is_ok_and(|a| (0.0..1e14).contains(&a));
                prop_assert!(fits(&v.order.cost) && v.order.items.iter().all(|i| fits(&i.price)));
            }
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
}
