//! The orders job's message decoder (`dataflows::orders::messages::parse_order`).
#![no_main]

use dataflows::orders::{ORDER, parse_order};
use dishflow_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for value in values(data) {
        match parse_order(value) {
            Err(reject) => check_reject(&reject),
            Ok(None) => {}
            Ok(Some(version)) => {
                let (event, order) = (&version.event, &version.order);
                assert_eq!(event.object_type, ORDER);
                assert_eq!(event.object_id, order.id);
                check_timestamp(event.sent_dttm, "sent_dttm");
                check_timestamp(order.date, "payload.date");
                check_timestamp(order.update_ts, "payload.update_ts");
                check_storable(&event.payload, "payload");
                for (text, what) in [
                    (&order.restaurant_id, "payload.restaurant.id"),
                    (&order.user_id, "payload.user.id"),
                    (&order.status, "payload.final_status"),
                ] {
                    check_storable(text, what);
                }
                check_amount(&order.cost, "payload.cost");
                check_amount(&order.payment, "payload.payment");
                for item in &order.items {
                    check_storable(&item.id, "payload.order_items.id");
                    check_amount(&item.price, "payload.order_items.price");
                    assert!(item.quantity >= 1);
                }
                // STG keeps the payload byte for byte: it is JSON, an object.
                let payload: serde_json::Value =
                    serde_json::from_str(&event.payload).expect("the payload is JSON");
                assert!(payload.is_object());
                // Round trip: the envelope rebuilt around the kept payload decodes to the same.
                let json = format!(
                    r#"{{"object_id":{},"object_type":{},"sent_dttm":"{}","payload":{}}}"#,
                    event.object_id,
                    serde_json::to_string(&event.object_type).expect("a string"),
                    datetime_text(event.sent_dttm),
                    event.payload
                );
                assert_eq!(parse_order(Some(json.as_bytes())), Ok(Some(version)));
            }
        }
    }
});
