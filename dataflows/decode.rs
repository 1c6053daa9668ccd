//! What every job's decoder shares: the reasons a message is rejected (what the dead-letter
//! topic carries), typed access to JSON fields that turns absence and wrong types into
//! those reasons, and the split of decoded records into messages and dead letters.

use chrono::NaiveDateTime;
use differential_dataflow::{AsCollection, VecCollection};
use serde_json::{Map, Value};
use timely::dataflow::operators::core::OkErr;

use crate::{DeadLetter, Diff, RawRecord, Time};

/// The `Ok`s and the `Err`s of `results`, as two collections.
pub fn split<'s, A, B>(
    results: VecCollection<'s, Time, Result<A, B>, Diff>,
) -> (
    VecCollection<'s, Time, A, Diff>,
    VecCollection<'s, Time, B, Diff>,
)
where
    A: differential_dataflow::Data,
    B: differential_dataflow::Data,
{
    // One operator with two outputs: each record is moved to its side. (Two `flat_map`s
    // over a cloned collection would copy every record, a whole decoded message, once more.)
    let (oks, errs) = results
        .inner
        .ok_err::<Vec<_>, _, Vec<_>, _, _>(|(result, time, diff)| match result {
            Ok(ok) => Ok((ok, time, diff)),
            Err(err) => Err((err, time, diff)),
        });
    (oks.as_collection(), errs.as_collection())
}

/// Decodes every record with `parse`: what it accepts, and a dead letter (the record and the
/// reason) for each record it rejects.
pub fn decode_records<'s, T>(
    raw: VecCollection<'s, Time, RawRecord, Diff>,
    parse: impl Fn(&RawRecord) -> Result<T, Reject> + 'static,
) -> (
    VecCollection<'s, Time, T, Diff>,
    VecCollection<'s, Time, DeadLetter, Diff>,
)
where
    T: differential_dataflow::Data,
{
    split(raw.map(move |record| {
        parse(&record).map_err(|reject| DeadLetter {
            reason: reject.code(),
            record,
        })
    }))
}

/// Why a message was rejected. [`Reject::code`] is what the dead-letter topic carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// The message has no value at all (a Kafka tombstone).
    Tombstone,
    /// The value is zero bytes long.
    EmptyValue,
    /// The value is not valid UTF-8.
    NotUtf8,
    /// The value is UTF-8 but not JSON.
    NotJson,
    /// The value is JSON but not an object.
    NotObject,
    /// A required field is absent.
    MissingField(&'static str),
    /// A required field is `null`.
    NullField(&'static str),
    /// A field has the wrong JSON type (strings must be strings, datetimes integers).
    WrongType(&'static str),
    /// A value does not fit the output (`trigger_datetime_created` is an `int4`).
    OutOfRange(&'static str),
    /// A value is impossible (a negative amount, a zero quantity, a malformed datetime).
    Invalid(&'static str),
    /// A string holds a NUL character (`\u0000`), which no Postgres text column can store.
    NulCharacter(&'static str),
    /// `adv_campaign_datetime_end <= adv_campaign_datetime_start`: the campaign is never valid.
    EndNotAfterStart,
    /// What the record makes (a draft) is larger than its output topic takes.
    TooLarge(&'static str),
}

impl Reject {
    /// Stable, machine-readable reason, e.g. `missing_field:restaurant_id`.
    pub fn code(&self) -> String {
        match self {
            Reject::Tombstone => "tombstone".into(),
            Reject::EmptyValue => "empty_value".into(),
            Reject::NotUtf8 => "not_utf8".into(),
            Reject::NotJson => "not_json".into(),
            Reject::NotObject => "not_object".into(),
            Reject::MissingField(f) => format!("missing_field:{f}"),
            Reject::NullField(f) => format!("null_field:{f}"),
            Reject::WrongType(f) => format!("wrong_type:{f}"),
            Reject::OutOfRange(f) => format!("out_of_range:{f}"),
            Reject::Invalid(f) => format!("invalid:{f}"),
            Reject::NulCharacter(f) => format!("invalid:nul_character:{f}"),
            Reject::EndNotAfterStart => "end_not_after_start".into(),
            Reject::TooLarge(f) => format!("too_large:{f}"),
        }
    }
}

/// Parses a message value that must be a JSON object.
pub fn object(value: Option<&[u8]>) -> Result<Map<String, Value>, Reject> {
    let bytes = value.ok_or(Reject::Tombstone)?;
    if bytes.is_empty() {
        return Err(Reject::EmptyValue);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Reject::NotUtf8)?;
    match serde_json::from_str(text).map_err(|_| Reject::NotJson)? {
        Value::Object(map) => Ok(map),
        _ => Err(Reject::NotObject),
    }
}

/// The field `key` of `obj`, present and not null; `name` is how a rejection names it.
pub fn field<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    name: &'static str,
) -> Result<&'v Value, Reject> {
    match obj.get(key) {
        None => Err(Reject::MissingField(name)),
        Some(Value::Null) => Err(Reject::NullField(name)),
        Some(v) => Ok(v),
    }
}

/// A required string field. Every string a job decodes ends up in a Postgres text column,
/// which cannot hold a NUL character: such a string is rejected here, not by the sink.
pub fn string(obj: &Map<String, Value>, key: &str, name: &'static str) -> Result<String, Reject> {
    let text = field(obj, key, name)?
        .as_str()
        .ok_or(Reject::WrongType(name))?;
    storable(text, name)?;
    Ok(text.to_owned())
}

/// Checks that `text` can be stored in a Postgres text column (no NUL character).
pub fn storable(text: &str, name: &'static str) -> Result<(), Reject> {
    if text.contains('\0') {
        return Err(Reject::NulCharacter(name));
    }
    Ok(())
}

/// A required integer field.
pub fn integer(obj: &Map<String, Value>, key: &str, name: &'static str) -> Result<i64, Reject> {
    field(obj, key, name)?
        .as_i64()
        .ok_or(Reject::WrongType(name))
}

/// A required JSON object field.
pub fn nested<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    name: &'static str,
) -> Result<&'v Map<String, Value>, Reject> {
    field(obj, key, name)?
        .as_object()
        .ok_or(Reject::WrongType(name))
}

/// The bound of an amount: the Data Vault's columns are `numeric(19, 5)`, 14 digits before
/// the decimal point.
pub const AMOUNT_LIMIT: f64 = 1e14;

/// A required non-negative number below [`AMOUNT_LIMIT`], kept as its JSON text (exact:
/// `300`, `180.5`). A negative one is invalid, a larger one out of range.
pub fn amount(obj: &Map<String, Value>, key: &str, name: &'static str) -> Result<String, Reject> {
    match field(obj, key, name)? {
        Value::Number(n) => match n.as_f64() {
            Some(f) if (0.0..AMOUNT_LIMIT).contains(&f) => Ok(n.to_string()),
            Some(f) if f >= AMOUNT_LIMIT => Err(Reject::OutOfRange(name)),
            _ => Err(Reject::Invalid(name)),
        },
        _ => Err(Reject::WrongType(name)),
    }
}

/// The datetime format of the orders topic and the Redis dictionaries.
pub const DATETIME: &str = "%Y-%m-%d %H:%M:%S%.f";

/// A required datetime string, `YYYY-MM-DD HH:MM:SS[.fraction]`.
pub fn datetime(
    obj: &Map<String, Value>,
    key: &str,
    name: &'static str,
) -> Result<NaiveDateTime, Reject> {
    timestamp(&string(obj, key, name)?, name)
}

/// `text` as a datetime (`YYYY-MM-DD HH:MM:SS[.fraction]`) that a Postgres `timestamp` can
/// hold; `name` is how a rejection names the field. A year beyond chrono's ±262,143 does
/// not parse (invalid); one before [`EARLIEST_TIMESTAMP`] is out of range.
pub fn timestamp(text: &str, name: &'static str) -> Result<NaiveDateTime, Reject> {
    let parsed =
        NaiveDateTime::parse_from_str(text, DATETIME).map_err(|_| Reject::Invalid(name))?;
    if parsed < *EARLIEST_TIMESTAMP {
        return Err(Reject::OutOfRange(name));
    }
    Ok(parsed)
}

/// The earliest datetime the jobs accept: 4713-11-24 BC (proleptic year −4712), within a
/// Postgres `timestamp` and `date` (whose first day is a year earlier). The latest a
/// `timestamp` holds (294276 AD) is beyond what chrono parses, so only this bound is checked.
pub static EARLIEST_TIMESTAMP: std::sync::LazyLock<NaiveDateTime> =
    std::sync::LazyLock::new(|| {
        chrono::NaiveDate::from_ymd_opt(-4712, 11, 24)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap_or(NaiveDateTime::MIN)
    });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_reject_by_name() {
        let obj = object(Some(
            br#"{"a": 1, "b": null, "c": "x", "d": -2.5, "t": "2022-11-19 16:06:36"}"#,
        ))
        .unwrap_or_default();
        assert_eq!(integer(&obj, "a", "a"), Ok(1));
        assert_eq!(integer(&obj, "b", "b"), Err(Reject::NullField("b")));
        assert_eq!(string(&obj, "a", "p.a"), Err(Reject::WrongType("p.a")));
        assert_eq!(string(&obj, "z", "z"), Err(Reject::MissingField("z")));
        assert_eq!(amount(&obj, "a", "a"), Ok("1".to_string()));
        assert_eq!(amount(&obj, "d", "d"), Err(Reject::Invalid("d")));
        let big = object(Some(br#"{"max": 99999999999999.98, "over": 1e14}"#)).unwrap_or_default();
        assert!(amount(&big, "max", "cost").is_ok());
        assert_eq!(
            amount(&big, "over", "cost"),
            Err(Reject::OutOfRange("cost"))
        );
        assert!(datetime(&obj, "t", "t").is_ok());
        assert_eq!(datetime(&obj, "c", "c"), Err(Reject::Invalid("c")));
        assert_eq!(object(Some(b"[1]")), Err(Reject::NotObject));
        assert_eq!(object(Some(b"\xff")), Err(Reject::NotUtf8));
        assert_eq!(object(None), Err(Reject::Tombstone));
    }

    #[test]
    fn values_postgres_cannot_store_are_rejected() {
        let obj = object(Some(
            br#"{"s": "bad\u0000name", "ok": "caf\u00e9", "old": "-4713-01-01 00:00:00",
                 "first": "-4712-11-24 00:00:00", "late": "+200000-01-01 00:00:00"}"#,
        ))
        .unwrap_or_default();
        let nul = string(&obj, "s", "menu.name");
        assert_eq!(nul, Err(Reject::NulCharacter("menu.name")));
        assert_eq!(
            nul.map_err(|r| r.code()),
            Err("invalid:nul_character:menu.name".to_string())
        );
        assert_eq!(string(&obj, "ok", "ok"), Ok("café".to_string()));
        assert_eq!(datetime(&obj, "old", "d"), Err(Reject::OutOfRange("d")));
        assert!(datetime(&obj, "first", "d").is_ok());
        assert!(
            datetime(&obj, "late", "d").is_ok(),
            "within Postgres's range"
        );
    }
}
