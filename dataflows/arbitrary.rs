//! What the decoders' property tests feed them: datetimes from both ends of the calendar and
//! numbers at the ends of their types, as the JSON text a message would carry.

use proptest::prelude::*;

/// A datetime as a producer might send it, valid or not: years −300,000…+300,000 (with and
/// without a sign), month, day and hour out of range, leap seconds, fractions, missing parts.
pub fn datetime_text() -> impl Strategy<Value = String> {
    let year = prop_oneof![
        -300_000i64..=300_000,
        Just(0),
        Just(-4713),
        Just(-4712),
        Just(262_143),
        Just(262_144),
        Just(294_277),
    ];
    let parts = (
        year,
        any::<bool>(),
        0u32..=13,
        0u32..=32,
        0u32..=25,
        0u32..=60,
        0u32..=61,
        prop::option::of(0u32..1_000_000_000),
        0usize..4,
    );
    parts.prop_map(|(y, plus, mo, d, h, mi, s, fraction, cut)| {
        let sign = if plus && y >= 0 { "+" } else { "" };
        let mut text = format!("{sign}{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}");
        if let Some(f) = fraction {
            text.push_str(&format!(".{f}"));
        }
        let keep = match cut {
            0 => text.len(),
            1 => text.len().saturating_sub(3),
            2 => text.find(' ').unwrap_or(text.len()),
            _ => text.find('-').unwrap_or(0) + 3,
        };
        text.truncate(keep.min(text.len()));
        text
    })
}

/// A JSON number as text: integers across and beyond `i64`, floats up to ±1e300, zero.
pub fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<i32>().prop_map(|n| n.to_string()),
        Just("9223372036854775807".to_string()),
        Just("9223372036854775808".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("-9223372036854775809".to_string()),
        Just("18446744073709551616".to_string()),
        Just("1e300".to_string()),
        Just("-1e300".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        (-1e300f64..1e300).prop_map(|f| format!("{f:e}")),
    ]
}

/// Any JSON value a field might carry: a number, a datetime string, a string of digits, a
/// literal.
pub fn field_text() -> impl Strategy<Value = String> {
    prop_oneof![
        number_text(),
        datetime_text().prop_map(|d| format!("{d:?}")),
        number_text().prop_map(|n| format!("{n:?}")),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ]
}
