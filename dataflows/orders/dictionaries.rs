//! What a Redis dictionary value is: a restaurant with its menu, or a user
//! ([`parse_dictionary`]).

use serde::{Deserialize, Serialize};

use super::*;
use crate::decode::{field, object, string};

/// One product of a restaurant's menu.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MenuItem {
    /// Product id.
    pub id: String,
    /// Product name.
    pub name: String,
    /// Category name.
    pub category: String,
}

/// A Redis dictionary entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Dictionary {
    /// key = restaurant id: name and menu.
    Restaurant {
        /// Restaurant id (the Redis key).
        id: String,
        /// Restaurant name.
        name: String,
        /// Its products.
        menu: Vec<MenuItem>,
    },
    /// key = user id: name and login.
    User {
        /// User id (the Redis key).
        id: String,
        /// Full name.
        name: String,
        /// Login.
        login: String,
    },
}

/// Decodes the value of Redis key `key`: with a `menu`, a restaurant; with a `login`, a user.
pub fn parse_dictionary(key: &str, value: &[u8]) -> Result<Dictionary, Reject> {
    crate::decode::storable(key, "key")?;
    let obj = object(Some(value))?;
    if obj.contains_key("menu") {
        let menu = field(&obj, "menu", "menu")?
            .as_array()
            .ok_or(Reject::WrongType("menu"))?
            .iter()
            .map(|m| {
                let m = m.as_object().ok_or(Reject::WrongType("menu"))?;
                Ok(MenuItem {
                    id: string(m, "_id", "menu._id")?,
                    name: string(m, "name", "menu.name")?,
                    category: string(m, "category", "menu.category")?,
                })
            })
            .collect::<Result<Vec<_>, Reject>>()?;
        Ok(Dictionary::Restaurant {
            id: key.to_string(),
            name: string(&obj, "name", "name")?,
            menu,
        })
    } else if obj.contains_key("login") {
        Ok(Dictionary::User {
            id: key.to_string(),
            name: string(&obj, "name", "name")?,
            login: string(&obj, "login", "login")?,
        })
    } else {
        Err(Reject::MissingField("menu|login"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary::field_text;
    use crate::orders::tests::{restaurant, user};

    proptest! {
        #[test]
        fn any_field_value_gives_an_entry_or_a_dead_letter(
            id in field_text(),
            name in field_text(),
            price in field_text(),
            update in field_text(),
        ) {
            let restaurant = format!(
                r#"{{"_id": {id}, "name": {name}, "menu": [{{"_id": {id}, "name": {name},
                    "price": {price}, "category": {name}}}], "update_ts_utc": {update}}}"#
            );
            let user = format!(r#"{{"_id": {id}, "name": {name}, "login": {name}, "update_ts_utc": {update}}}"#);
            for value in [restaurant, user] {
                if let Ok(entry) = parse_dictionary("k", value.as_bytes()) {
                    // No string Postgres cannot store (a NUL is escaped as \u0000).
                    let text = serde_json::to_string(&entry).unwrap_or_default();
                    prop_assert!(!text.contains("\\u0000"));
                }
            }
        }
    }

    #[test]
    fn dictionary_entries_are_restaurants_or_users() {
        let r = br#"{"_id": "r1", "name": "Coffee", "menu": [{"_id": "p1", "name": "Roll",
                    "price": 180, "category": "Bakery"}], "update_ts_utc": "2022-11-19 10:00:00"}"#;
        assert_eq!(
            parse_dictionary("r1", r),
            Ok(restaurant("Coffee", &[("p1", "Roll", "Bakery")]))
        );
        let u = br#"{"_id": "u1", "name": "Olga", "login": "olga", "update_ts_utc": "x"}"#;
        assert_eq!(parse_dictionary("u1", u), Ok(user("Olga")));
        assert!(parse_dictionary("x", br#"{"name": "?"}"#).is_err());
        let nul = br#"{"name": "Coffee", "menu": [{"_id": "p1", "name": "bad\u0000name",
                      "category": "Bakery"}]}"#;
        assert_eq!(
            parse_dictionary("r1", nul).map_err(|r| r.code()),
            Err("invalid:nul_character:menu.name".to_string())
        );
        assert_eq!(
            parse_dictionary("u\0", u).map_err(|r| r.code()),
            Err("invalid:nul_character:key".to_string())
        );
    }
}
