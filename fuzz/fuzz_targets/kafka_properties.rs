//! The `--kafka-property-file` parser (`src/kafka/property_lines.rs`).
#![no_main]

use dishflow_fuzz::property_lines::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The file is read as UTF-8 (`read_to_string`): other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        // The error is the number of a line of the file, which is neither blank, a
        // comment nor KEY=VALUE.
        Err(line) => {
            let bad = text.lines().nth(line - 1).expect("the line exists").trim();
            assert!(!bad.is_empty() && !bad.starts_with('#'));
            assert!(!matches!(bad.split_once('='), Some((k, _)) if !k.trim().is_empty()));
        }
        Ok(properties) => {
            for (key, value) in &properties {
                assert!(!key.is_empty() && key.trim() == key && !key.contains('='));
                assert!(!key.starts_with('#') && !key.contains('\n'));
                assert!(value.trim() == value && !value.contains('\n'));
            }
            // Round trip: the pairs written as KEY=VALUE lines parse to themselves.
            let text: String = properties
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect();
            assert_eq!(parse(&text), Ok(properties));
        }
    }
});
