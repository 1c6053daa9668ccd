//! The cities file parser of `dishflow setup --job geo --cities FILE`
//! (`dataflows::geo::cities::parse_file`).
#![no_main]

use dataflows::geo::cities::parse_file;
use dishflow_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The file is read as UTF-8: other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_file(text) {
        // The error names the line (or says the file has no city).
        Err(error) => assert!(
            error.starts_with("line ") || error.starts_with("no city"),
            "error without its line: {error}"
        ),
        Ok(cities) => {
            assert!(!cities.is_empty());
            for city in &cities {
                // geo.cities: text columns, a position, a time zone the marts can use.
                check_storable(&city.name, "city");
                check_storable(&city.timezone, "timezone");
                assert!(!city.name.is_empty());
                let (lat, lng) = city.centre.degrees();
                assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng));
                assert!(city.timezone.parse::<chrono_tz::Tz>().is_ok());
            }
            // Round trip: the cities written back in the file format parse to themselves.
            let mut file = String::from("id;city;lat;lng;timezone\n");
            for city in &cities {
                let (lat, lng) = city.centre.degrees();
                file += &format!("{};{};{lat};{lng};{}\n", city.id, city.name, city.timezone);
            }
            assert_eq!(parse_file(&file), Ok(cities));
        }
    }
});
