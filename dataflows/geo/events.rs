//! What a valid event of the messaging app is ([`parse_event`]), and the split of raw
//! records into events and dead letters ([`decode`]).
//!
//! * The acting user: `message_from` (message), `reaction_from` (reaction), `user`, else
//!   `subscription_user` (subscription): an integer, or a string of decimal digits.
//! * The event time (UTC): `message_ts`, else `datetime`, `YYYY-MM-DD HH:MM:SS[.fraction]`,
//!   within [`EARLIEST_EVENT`, `LATEST_EVENT`]: what the marts derive from it (the week's
//!   Monday, the local time in the city's time zone) must fit chrono and Postgres too.
//! * A message needs its `message_id`; `message_to` set makes it a direct message,
//!   `message_channel_to` a channel post. A subscription needs its `subscription_channel`.
//! * `lat`/`lon`: both numbers in range, or both null/absent (no position: no zone). One of
//!   them alone, or a value out of range, is a dead letter.

use chrono::{Days, NaiveDateTime};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::point::Point;
use crate::decode::{
    EARLIEST_TIMESTAMP, Reject, decode_records, field, nested, object, string, timestamp,
};
use crate::{DeadLetter, Diff, RawRecord, Time};

/// What a user did.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    /// A message: a direct one (`to`: the other user) or a channel post (`channel`).
    Message {
        /// `message_id`: orders messages of equal time.
        id: i64,
        /// `message_to`: the other user of a direct message.
        to: Option<i64>,
        /// `message_channel_to`: the channel of a post.
        channel: Option<i64>,
    },
    /// A reaction to a message.
    Reaction,
    /// A subscription to a channel.
    Subscription {
        /// `subscription_channel`.
        channel: i64,
    },
}

/// One event of the messaging app.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// The acting user.
    pub user: i64,
    /// When it happened (UTC).
    pub time: NaiveDateTime,
    /// Where, if the event has coordinates.
    pub point: Option<Point>,
    /// What.
    pub action: Action,
}

/// A user id: an integer, or a string of decimal digits.
fn user_id(value: &Value, name: &'static str) -> Result<i64, Reject> {
    match value {
        Value::Number(n) => n.as_i64().ok_or(Reject::Invalid(name)),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| Reject::OutOfRange(name))
        }
        Value::String(_) => Err(Reject::Invalid(name)),
        _ => Err(Reject::WrongType(name)),
    }
}

/// An optional id field: absent or null is `None`.
fn optional_id(
    obj: &Map<String, Value>,
    key: &str,
    name: &'static str,
) -> Result<Option<i64>, Reject> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => user_id(value, name).map(Some),
    }
}

/// The event time: `message_ts`, else `datetime`.
fn event_time(event: &Map<String, Value>) -> Result<NaiveDateTime, Reject> {
    let (key, name) = match event.get("message_ts") {
        Some(v) if !v.is_null() => ("message_ts", "event.message_ts"),
        _ => ("datetime", "event.datetime"),
    };
    let time = timestamp(&string(event, key, name)?, name)?;
    if time < *EARLIEST_EVENT || time > *LATEST_EVENT {
        return Err(Reject::OutOfRange(name));
    }
    Ok(time)
}

/// The earliest event time: a week after [`EARLIEST_TIMESTAMP`], so that the Monday of its
/// week (zone mart) and its local time west of UTC (user mart) are Postgres values too.
pub static EARLIEST_EVENT: std::sync::LazyLock<NaiveDateTime> = std::sync::LazyLock::new(|| {
    EARLIEST_TIMESTAMP
        .checked_add_days(Days::new(7))
        .unwrap_or(NaiveDateTime::MAX)
});

/// The latest event time: a day before chrono's last, so that its local time east of UTC
/// (at most +14 h) is a datetime too. Postgres holds later ones.
pub static LATEST_EVENT: std::sync::LazyLock<NaiveDateTime> = std::sync::LazyLock::new(|| {
    NaiveDateTime::MAX
        .checked_sub_days(Days::new(1))
        .unwrap_or(NaiveDateTime::MIN)
});

/// The coordinates: both or neither.
fn point(obj: &Map<String, Value>) -> Result<Option<Point>, Reject> {
    let coordinate = |key: &str, name: &'static str| match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(Reject::Invalid(name)),
        Some(_) => Err(Reject::WrongType(name)),
    };
    match (coordinate("lat", "lat")?, coordinate("lon", "lon")?) {
        (None, None) => Ok(None),
        (Some(lat), Some(lon)) => Point::from_degrees(lat, lon)
            .map(Some)
            .ok_or(Reject::OutOfRange("lat/lon")),
        (None, Some(_)) => Err(Reject::MissingField("lat")),
        (Some(_), None) => Err(Reject::MissingField("lon")),
    }
}

/// Decodes one record of the events topic (see the module docs).
pub fn parse_event(value: Option<&[u8]>) -> Result<Event, Reject> {
    let obj = object(value)?;
    let kind = string(&obj, "event_type", "event_type")?;
    let event = nested(&obj, "event", "event")?;
    let (user, action) = match kind.as_str() {
        "message" => {
            let user = user_id(
                field(event, "message_from", "event.message_from")?,
                "event.message_from",
            )?;
            let id = user_id(
                field(event, "message_id", "event.message_id")?,
                "event.message_id",
            )?;
            let to = optional_id(event, "message_to", "event.message_to")?;
            let channel = optional_id(event, "message_channel_to", "event.message_channel_to")?;
            (user, Action::Message { id, to, channel })
        }
        "reaction" => {
            let user = user_id(
                field(event, "reaction_from", "event.reaction_from")?,
                "event.reaction_from",
            )?;
            (user, Action::Reaction)
        }
        "subscription" => {
            let user = match event.get("user") {
                Some(v) if !v.is_null() => user_id(v, "event.user")?,
                _ => user_id(
                    field(event, "subscription_user", "event.user")?,
                    "event.subscription_user",
                )?,
            };
            let channel = user_id(
                field(event, "subscription_channel", "event.subscription_channel")?,
                "event.subscription_channel",
            )?;
            (user, Action::Subscription { channel })
        }
        _ => return Err(Reject::Invalid("event_type")),
    };
    Ok(Event {
        user,
        time: event_time(event)?,
        point: point(&obj)?,
        action,
    })
}

/// Splits raw event records into events and dead letters.
pub fn decode<'s>(
    raw: VecCollection<'s, Time, RawRecord, Diff>,
) -> (
    VecCollection<'s, Time, Event, Diff>,
    VecCollection<'s, Time, DeadLetter, Diff>,
) {
    decode_records(raw, |record| parse_event(record.value.as_deref()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary::{datetime_text, field_text, number_text};
    use crate::decode::DATETIME;
    use crate::geo::cities::City;
    use crate::geo::user_mart::{Travels, user_row};
    use crate::geo::zone_mart::{month_of, week_of};

    fn parse(text: &str) -> Result<Event, String> {
        parse_event(Some(text.as_bytes())).map_err(|r| r.code())
    }

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, DATETIME).expect("a datetime")
    }

    #[test]
    fn the_spec_examples_are_events() {
        let message = parse(
            r#"{"event_type": "message",
                "event": {"message_id": 8592912, "message_from": 103235, "message_to": null,
                          "message_channel_to": 859291, "message_ts": "2022-05-21 02:15:09.123456",
                          "datetime": "2022-05-21 02:15:09", "message": "hi", "admins": [103235],
                          "media": {"media_type": null, "src": null}, "tags": []},
                "lat": -33.94742527623598, "lon": 151.32387878072961}"#,
        )
        .expect("a message");
        assert_eq!(message.user, 103235);
        assert_eq!(
            message.time,
            at("2022-05-21 02:15:09.123456"),
            "message_ts first"
        );
        assert_eq!(
            message.action,
            Action::Message {
                id: 8592912,
                to: None,
                channel: Some(859291)
            }
        );
        let (lat, lon) = message.point.expect("a position").degrees();
        assert!((lat + 33.947425276).abs() < 1e-9 && (lon - 151.323878781).abs() < 1e-9);

        let reaction = parse(
            r#"{"event_type": "reaction",
                "event": {"datetime": "2022-05-21 12:04:11", "message_id": 8592912,
                          "reaction_from": "107808", "reaction_type": "like"},
                "lat": -37.12220179510437, "lon": 144.28231815733022}"#,
        )
        .expect("a reaction");
        assert_eq!((reaction.user, reaction.action), (107808, Action::Reaction));

        let subscription = parse(
            r#"{"event_type": "subscription",
                "event": {"datetime": "2022-05-21 17:30:00", "subscription_channel": 859291,
                          "user": "865707"},
                "lat": null, "lon": null}"#,
        )
        .expect("a subscription");
        assert_eq!(subscription.user, 865707);
        assert_eq!(subscription.point, None);
        assert_eq!(
            subscription.action,
            Action::Subscription { channel: 859291 }
        );
        let by_subscription_user = parse(
            r#"{"event_type": "subscription", "event": {"datetime": "2022-05-21 17:30:00",
                "subscription_channel": 1, "subscription_user": 7}}"#,
        )
        .expect("subscription_user when user is absent");
        assert_eq!(by_subscription_user.user, 7);
    }

    #[test]
    fn bad_events_are_rejected_with_their_reason() {
        let reject = |text: &str| parse(text).expect_err("a dead letter");
        let message = |event: &str, coordinates: &str| {
            format!(r#"{{"event_type": "message", "event": {event}{coordinates}}}"#)
        };
        let ok = r#"{"message_id": 1, "message_from": 2, "datetime": "2022-05-21 02:15:09"}"#;
        assert!(parse(&message(ok, "")).is_ok());
        assert_eq!(
            reject(r#"{"event_type": "like", "event": {}}"#),
            "invalid:event_type"
        );
        assert_eq!(reject(r#"{"event": {}}"#), "missing_field:event_type");
        assert_eq!(
            reject(&message(
                r#"{"message_id": 1, "datetime": "2022-05-21 02:15:09"}"#,
                ""
            )),
            "missing_field:event.message_from"
        );
        assert_eq!(
            reject(&message(
                r#"{"message_id": 1, "message_from": "12a", "datetime": "2022-05-21 02:15:09"}"#,
                ""
            )),
            "invalid:event.message_from"
        );
        assert_eq!(
            reject(&message(r#"{"message_id": 1, "message_from": 2}"#, "")),
            "missing_field:event.datetime"
        );
        assert_eq!(
            reject(&message(
                r#"{"message_id": 1, "message_from": 2, "datetime": "21.05.2022"}"#,
                ""
            )),
            "invalid:event.datetime"
        );
        assert_eq!(
            reject(&message(
                r#"{"message_from": 2, "datetime": "2022-05-21 02:15:09"}"#,
                ""
            )),
            "missing_field:event.message_id"
        );
        assert_eq!(
            reject(&message(ok, r#", "lat": 91, "lon": 0"#)),
            "out_of_range:lat/lon"
        );
        assert_eq!(
            reject(&message(ok, r#", "lat": 10, "lon": null"#)),
            "missing_field:lon"
        );
        assert_eq!(
            reject(&message(ok, r#", "lat": "10", "lon": 1"#)),
            "wrong_type:lat"
        );
        assert_eq!(
            reject(
                r#"{"event_type": "subscription", "event": {"datetime": "2022-05-21 17:30:00", "user": 1}}"#
            ),
            "missing_field:event.subscription_channel"
        );
        assert_eq!(reject("[1]"), "not_object");
        assert_eq!(
            parse_event(None).map_err(|r| r.code()),
            Err("tombstone".into())
        );
    }

    /// What the marts derive from an accepted event's time fits chrono and Postgres: its
    /// week's Monday and month (zone mart), its local time at both ends of the world's time
    /// zones (user mart).
    fn marts_hold(time: NaiveDateTime) {
        let week = week_of(time).expect("a Monday");
        assert!(
            week >= EARLIEST_TIMESTAMP.date(),
            "{week} before Postgres's first day"
        );
        assert!(month_of(time) <= time.date());
        for (zone, timezone) in [(1, "Pacific/Kiritimati"), (2, "Etc/GMT+12")] {
            let city = City {
                id: zone,
                name: timezone.into(),
                centre: Point::from_degrees(0.0, 0.0).expect("a point"),
                timezone: timezone.into(),
            };
            let travels = Travels::of(&[(time, 1, zone)]).expect("travels");
            let row = user_row(7, &travels, &[city]).expect("a row");
            let local = row.local_time.expect("a local time");
            assert!(
                local >= *EARLIEST_TIMESTAMP,
                "{local} before Postgres's first"
            );
        }
    }

    #[test]
    fn times_at_the_ends_of_the_calendar_are_dead_letters_not_panics() {
        let reject = |text: &str| parse(text).expect_err("a dead letter");
        assert_eq!(
            reject(
                r#"{"event_type":"message","event":{"message_id":2,"message_from":7,
                    "message_ts":"-262143-01-01 00:00:00","message_channel_to":3},
                    "lat":-33.87,"lon":151.21}"#
            ),
            "out_of_range:event.message_ts"
        );
        assert_eq!(
            reject(
                r#"{"event_type":"reaction","event":{"reaction_from":7,
                    "datetime":"-262143-01-01 00:00:00"},"lat":-33.8,"lon":151.2}"#
            ),
            "out_of_range:event.datetime"
        );
        assert_eq!(
            reject(
                r#"{"event_type":"reaction","event":{"reaction_from":7,
                    "datetime":"+262142-12-31 12:00:00"}}"#
            ),
            "out_of_range:event.datetime"
        );
        for bound in [*EARLIEST_EVENT, *LATEST_EVENT] {
            let text = format!(
                r#"{{"event_type":"reaction","event":{{"reaction_from":7,"datetime":"{}"}}}}"#,
                bound.format(DATETIME)
            );
            let event = parse(&text).expect("the bounds are accepted");
            marts_hold(event.time);
        }
    }

    proptest! {
        #[test]
        fn any_value_gives_an_event_or_a_dead_letter(
            time in datetime_text(),
            user in field_text(),
            id in field_text(),
            lat in number_text(),
            lon in number_text(),
            kind in 0..3usize,
        ) {
            let text = match kind {
                0 => format!(
                    r#"{{"event_type":"message","event":{{"message_id":{id},"message_from":{user},
                        "message_ts":"{time}","message_to":{id}}},"lat":{lat},"lon":{lon}}}"#
                ),
                1 => format!(
                    r#"{{"event_type":"reaction","event":{{"reaction_from":{user},
                        "datetime":"{time}"}},"lat":{lat},"lon":{lon}}}"#
                ),
                _ => format!(
                    r#"{{"event_type":"subscription","event":{{"user":{user},
                        "subscription_channel":{id},"datetime":"{time}"}}}}"#
                ),
            };
            if let Ok(event) = parse_event(Some(text.as_bytes())) {
                marts_hold(event.time);
            }
        }
    }
}
