//! What every fuzz target asserts about a decoder's answer, beyond "no panic": a rejection
//! names its field, and what is accepted is inside what the dataflow and Postgres take.
//! The targets (`fuzz_targets/`) call the same functions the jobs call; see README.md.

use chrono::NaiveDateTime;
use dataflows::decode::{AMOUNT_LIMIT, DATETIME, EARLIEST_TIMESTAMP, Reject};

/// `src/sources/postgres/pgoutput.rs`, compiled here as it is (it needs only `anyhow`), so
/// that the target fuzzes the parser the followed tables use without building the engine.
#[path = "../../src/sources/postgres/pgoutput.rs"]
pub mod pgoutput;

/// `src/kafka/property_lines.rs`, compiled here as it is (only `std`).
#[path = "../../src/kafka/property_lines.rs"]
pub mod property_lines;

/// A rejection's reason is a stable code: `kind` or `kind:field`, the field a lowercase
/// dotted path of the format (`payload.order_items.price`; `a|b`: one of them; `lat/lon`:
/// the pair), never empty.
pub fn check_reject(reject: &Reject) {
    let code = reject.code();
    let field = match reject {
        Reject::MissingField(f)
        | Reject::NullField(f)
        | Reject::WrongType(f)
        | Reject::OutOfRange(f)
        | Reject::Invalid(f)
        | Reject::NulCharacter(f)
        | Reject::TooLarge(f) => Some(*f),
        _ => None,
    };
    if let Some(field) = field {
        assert!(
            !field.is_empty()
                && field
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b"._/|".contains(&b)),
            "reason {code:?} does not name a field"
        );
        assert!(code.ends_with(field), "reason {code:?} without its field");
    }
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_graphic()),
        "reason {code:?}"
    );
}

/// A string bound for a Postgres text column: no NUL character.
pub fn check_storable(text: &str, what: &str) {
    assert!(!text.contains('\0'), "{what} holds a NUL: {text:?}");
}

/// A datetime bound for a Postgres `timestamp`: not before 4713 BC.
pub fn check_timestamp(time: NaiveDateTime, what: &str) {
    assert!(time >= *EARLIEST_TIMESTAMP, "{what} {time} before 4713 BC");
}

/// An amount bound for `numeric(19, 5)`: JSON number text in [0, 10¹⁴).
pub fn check_amount(text: &str, what: &str) {
    let value: f64 = text
        .parse()
        .unwrap_or_else(|_| panic!("{what} {text:?} is not a number"));
    assert!(
        (0.0..AMOUNT_LIMIT).contains(&value),
        "{what} {text} out of range"
    );
}

/// A datetime as the inputs write it (`YYYY-MM-DD HH:MM:SS[.fraction]`), for re-encoding.
pub fn datetime_text(time: NaiveDateTime) -> String {
    time.format(DATETIME).to_string()
}

/// The message values to try for one input: the input itself, and for the empty input
/// also a tombstone (no value), so that seeds stay plain message values.
pub fn values(data: &[u8]) -> Vec<Option<&[u8]>> {
    if data.is_empty() {
        vec![Some(data), None]
    } else {
        vec![Some(data)]
    }
}
