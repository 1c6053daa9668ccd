//! The geo job's event decoder (`dataflows::geo::events::parse_event`).
#![no_main]

use dataflows::geo::events::{Action, EARLIEST_EVENT, LATEST_EVENT, parse_event};
use dishflow_fuzz::*;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    for value in values(data) {
        match parse_event(value) {
            Err(reject) => check_reject(&reject),
            Ok(event) => {
                // The week's Monday and the local time in any zone stay chrono and
                // Postgres values.
                assert!(event.time >= *EARLIEST_EVENT && event.time <= *LATEST_EVENT);
                check_timestamp(event.time, "event time");
                if let Some(point) = event.point {
                    let (lat, lon) = point.degrees();
                    assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
                }
                // Round trip: the event written back in the topic's layout decodes to itself.
                let time = datetime_text(event.time);
                let body = match event.action {
                    Action::Message { id, to, channel } => json!({
                        "message_id": id, "message_from": event.user, "message_to": to,
                        "message_channel_to": channel, "message_ts": time,
                    }),
                    Action::Reaction => json!({"reaction_from": event.user, "datetime": time}),
                    Action::Subscription { channel } => json!({
                        "user": event.user, "subscription_channel": channel, "datetime": time,
                    }),
                };
                let kind = match event.action {
                    Action::Message { .. } => "message",
                    Action::Reaction => "reaction",
                    Action::Subscription { .. } => "subscription",
                };
                let (lat, lon) = event.point.map(|p| p.degrees()).unzip();
                let json = json!({"event_type": kind, "event": body, "lat": lat, "lon": lon});
                let json = serde_json::to_vec(&json).expect("JSON");
                assert_eq!(parse_event(Some(&json)), Ok(event));
            }
        }
    }
});
