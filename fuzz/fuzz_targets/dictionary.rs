//! The orders job's Redis dictionary decoder (`dataflows::orders::parse_dictionary`): a
//! restaurant with its menu, or a user. The input is `key NUL value`: the Redis key, then
//! the value (without a NUL, the key is empty).
#![no_main]

use dataflows::orders::{Dictionary, parse_dictionary};
use dishflow_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b""[..], data),
    };
    // Redis keys reach the job as text (the source skips keys that are not UTF-8).
    let Ok(key) = std::str::from_utf8(key) else {
        return;
    };
    match parse_dictionary(key, value) {
        Err(reject) => check_reject(&reject),
        Ok(entry) => {
            let json = match &entry {
                Dictionary::Restaurant { id, name, menu } => {
                    assert_eq!(id, key);
                    check_storable(name, "name");
                    let items: Vec<_> = menu
                        .iter()
                        .map(|m| {
                            check_storable(&m.id, "menu._id");
                            check_storable(&m.name, "menu.name");
                            check_storable(&m.category, "menu.category");
                            serde_json::json!({"_id": m.id, "name": m.name, "category": m.category})
                        })
                        .collect();
                    serde_json::json!({"name": name, "menu": items})
                }
                Dictionary::User { id, name, login } => {
                    assert_eq!(id, key);
                    check_storable(name, "name");
                    check_storable(login, "login");
                    serde_json::json!({"name": name, "login": login})
                }
            };
            check_storable(key, "key");
            // Round trip: the entry written back as its JSON decodes to itself.
            let json = serde_json::to_vec(&json).expect("JSON");
            assert_eq!(parse_dictionary(key, &json), Ok(entry));
        }
    }
});
