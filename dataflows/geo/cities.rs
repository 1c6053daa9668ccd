//! The cities events are attributed to (`geo.cities`): the built-in list, the legacy file
//! format, and the distance that decides an event's zone.
//!
//! * [`BUILTIN`]: the 24 Australian cities of the legacy `geo.csv`, with their IANA time
//!   zones — what `dishflow setup --job geo` loads into an empty table.
//! * [`parse_file`]: the legacy format — a header line, then `id;city;lat;lng[;timezone]`,
//!   decimal comma or point. A line without a time zone gets the zone of the nearest
//!   built-in city. A bad line is an error naming it; nothing of a bad file is used.
//! * [`nearest`]: the city whose centre is nearest to a point by great-circle distance
//!   (ties: the smaller id) — an event's zone.

use serde::{Deserialize, Serialize};

use super::point::{Point, distance_km};

/// One row of `geo.cities`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct City {
    /// `id`: the zone id of the events nearest to it.
    pub id: i32,
    /// `city`.
    pub name: String,
    /// `lat`, `lng`: its centre.
    pub centre: Point,
    /// `timezone`, an IANA name (`Australia/Sydney`).
    pub timezone: String,
}

impl City {
    /// A city from the values of its columns, if the job can use them: a name, a centre
    /// within [−90°, 90°] × [−180°, 180°] (not NaN), and an IANA time zone name this build
    /// knows. The error says which value is wrong.
    pub fn checked(
        id: i32,
        name: &str,
        lat: f64,
        lng: f64,
        timezone: &str,
    ) -> Result<City, String> {
        if name.is_empty() {
            return Err("the city has no name".into());
        }
        // geo.cities.city is text, which cannot hold a NUL character.
        if name.contains('\0') {
            return Err("the city name holds a NUL character".into());
        }
        let centre = Point::from_degrees(lat, lng)
            .ok_or_else(|| format!("position ({lat}, {lng}) is not in [-90, 90] × [-180, 180]"))?;
        if timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(format!("time zone {timezone:?} is not an IANA name"));
        }
        Ok(City {
            id,
            name: name.to_string(),
            centre,
            timezone: timezone.to_string(),
        })
    }
}

/// The 24 cities of the legacy `geo.csv`: (id, city, lat, lng, time zone).
pub const BUILTIN: [(i32, &str, f64, f64, &str); 24] = [
    (1, "Sydney", -33.865, 151.2094, "Australia/Sydney"),
    (2, "Melbourne", -37.8136, 144.9631, "Australia/Melbourne"),
    (3, "Brisbane", -27.4678, 153.0281, "Australia/Brisbane"),
    (4, "Perth", -31.9522, 115.8589, "Australia/Perth"),
    (5, "Adelaide", -34.9289, 138.6011, "Australia/Adelaide"),
    (6, "Gold Coast", -28.0167, 153.4, "Australia/Brisbane"),
    (7, "Cranbourne", -38.0996, 145.2834, "Australia/Melbourne"),
    (8, "Canberra", -35.2931, 149.1269, "Australia/Sydney"),
    (9, "Newcastle", -32.9167, 151.75, "Australia/Sydney"),
    (10, "Wollongong", -34.4331, 150.8831, "Australia/Sydney"),
    (11, "Geelong", -38.15, 144.35, "Australia/Melbourne"),
    (12, "Hobart", -42.8806, 147.325, "Australia/Hobart"),
    (13, "Townsville", -19.2564, 146.8183, "Australia/Brisbane"),
    (14, "Ipswich", -27.6167, 152.7667, "Australia/Brisbane"),
    (15, "Cairns", -16.9303, 145.7703, "Australia/Brisbane"),
    (16, "Toowoomba", -27.5667, 151.95, "Australia/Brisbane"),
    (17, "Darwin", -12.4381, 130.8411, "Australia/Darwin"),
    (18, "Ballarat", -37.55, 143.85, "Australia/Melbourne"),
    (19, "Bendigo", -36.75, 144.2667, "Australia/Melbourne"),
    (20, "Launceston", -41.4419, 147.145, "Australia/Hobart"),
    (21, "Mackay", -21.1411, 149.1861, "Australia/Brisbane"),
    (22, "Rockhampton", -23.375, 150.5117, "Australia/Brisbane"),
    (23, "Maitland", -32.7167, 151.55, "Australia/Sydney"),
    (24, "Bunbury", -33.3333, 115.6333, "Australia/Perth"),
];

/// The built-in cities.
pub fn builtin() -> Vec<City> {
    BUILTIN
        .iter()
        .filter_map(|&(id, name, lat, lng, timezone)| {
            Some(City {
                id,
                name: name.to_string(),
                centre: Point::from_degrees(lat, lng)?,
                timezone: timezone.to_string(),
            })
        })
        .collect()
}

/// The city nearest to `point` among `cities` (ties: the smaller id), if there is one.
pub fn nearest<'c>(cities: impl IntoIterator<Item = &'c City>, point: Point) -> Option<&'c City> {
    cities
        .into_iter()
        .map(|c| (distance_km(point, c.centre), c))
        .min_by(|(da, a), (db, b)| da.total_cmp(db).then(a.id.cmp(&b.id)))
        .map(|(_, c)| c)
}

/// A number of the legacy format: decimal point or comma.
fn number(text: &str) -> Option<f64> {
    text.trim().replace(',', ".").parse().ok()
}

/// Parses a cities file (see the module docs): every city, or the first bad line's error
/// (1-based line number and what is wrong).
pub fn parse_file(text: &str) -> Result<Vec<City>, String> {
    let builtin = builtin();
    let mut cities: Vec<City> = Vec::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        let at = index + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(';').map(str::trim).collect();
        let [id, name, lat, lng, rest @ ..] = fields.as_slice() else {
            return Err(format!("line {at}: expected id;city;lat;lng[;timezone]"));
        };
        let id: i32 = id
            .parse()
            .map_err(|_| format!("line {at}: id {id:?} is not an integer"))?;
        let lat = number(lat)
            .filter(|v| (-90.0..=90.0).contains(v))
            .ok_or_else(|| format!("line {at}: latitude {lat:?} is not a number in [-90, 90]"))?;
        let lng = number(lng)
            .filter(|v| (-180.0..=180.0).contains(v))
            .ok_or_else(|| {
                format!("line {at}: longitude {lng:?} is not a number in [-180, 180]")
            })?;
        let timezone = match rest {
            [] | [""] => Point::from_degrees(lat, lng)
                .and_then(|centre| nearest(&builtin, centre))
                .map(|c| c.timezone.clone())
                .unwrap_or_default(),
            [zone] => zone.to_string(),
            _ => return Err(format!("line {at}: expected id;city;lat;lng[;timezone]")),
        };
        let city =
            City::checked(id, name, lat, lng, &timezone).map_err(|e| format!("line {at}: {e}"))?;
        if cities.iter().any(|c| c.id == id) {
            return Err(format!("line {at}: id {id} appears twice"));
        }
        cities.push(city);
    }
    if cities.is_empty() {
        return Err("no city in the file (a header line, then id;city;lat;lng[;timezone])".into());
    }
    Ok(cities)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary::number_text;

    /// Found by `scripts/fuzz.sh` (target `cities`): a name with a NUL was accepted, and
    /// loading it into `geo.cities` would have failed in Postgres.
    #[test]
    fn a_name_with_a_nul_character_is_refused_with_its_line() {
        let file = b"id;city;lat;lng\n1;Sydney;-33.865;151.2094\n2;a\0b;0;0;Etc/UTC\n";
        let text = std::str::from_utf8(file).expect("UTF-8");
        assert_eq!(
            parse_file(text),
            Err("line 3: the city name holds a NUL character".to_string())
        );
    }

    proptest! {
        #[test]
        fn any_line_gives_cities_or_an_error(
            id in number_text(),
            lat in number_text(),
            lng in number_text(),
            zone in prop_oneof![Just(""), Just("Australia/Perth"), Just("Etc/GMT+12"), Just("x/y")],
        ) {
            let text = format!("id;city;lat;lng;timezone\n{id};A;{lat};{lng};{zone}\n");
            for city in parse_file(&text).unwrap_or_default() {
                let (lat, lng) = city.centre.degrees();
                assert!(lat.abs() <= 90.0 && lng.abs() <= 180.0);
                assert!(city.timezone.parse::<chrono_tz::Tz>().is_ok());
            }
        }
    }

    #[test]
    fn the_legacy_format_with_commas_and_without_time_zones_is_read() {
        let cities = parse_file(
            "id;city;lat;lng\n1;Sydney;-33,865;151,2094\n\n4;Perth;-31.9522;115.8589;Australia/Perth\r\n",
        )
        .expect("a valid file");
        assert_eq!(cities.len(), 2);
        assert_eq!(cities[0].centre.degrees(), (-33.865, 151.2094));
        assert_eq!(
            cities[0].timezone, "Australia/Sydney",
            "the nearest built-in city's"
        );
        assert_eq!(cities[1].timezone, "Australia/Perth");
    }

    #[test]
    fn a_bad_line_is_named_and_nothing_is_read() {
        let error = |text: &str| parse_file(text).expect_err("a bad file");
        assert!(
            error("id;city;lat;lng\n1;Sydney;-33,8;151\n2;Nowhere;x;1\n").starts_with("line 3:")
        );
        assert!(error("h\n1;A;91;0\n").contains("latitude"));
        assert!(error("h\nx;A;1;1\n").contains("id"));
        assert!(error("h\n1;A;1;1\n1;B;2;2\n").contains("twice"));
        assert!(error("h\n1;A;1;1;Sydney\n").contains("IANA"));
        assert!(error("h\n1;A;1;1;Mars/Olympus_Mons\n").contains("IANA"));
        assert!(error("h\n1;A;NaN;1\n").contains("latitude"));
        assert!(error("h\n1;A;1;inf\n").contains("longitude"));
        assert!(error("h\n99999999999;A;1;1\n").contains("id"));
        assert!(error("h\n1;A;1\n").starts_with("line 2:"));
        assert!(error("id;city;lat;lng\n").contains("no city"));
    }

    #[test]
    fn the_nearest_city_wins_and_ties_go_to_the_smaller_id() {
        let at = |lat, lng| Point::from_degrees(lat, lng).expect("a point");
        let cities = builtin();
        assert_eq!(cities.len(), 24);
        assert!(cities.iter().all(|c| c.timezone.starts_with("Australia/")));
        assert_eq!(nearest(&cities, at(-33.87, 151.21)).map(|c| c.id), Some(1));
        assert_eq!(
            nearest(&cities, at(-38.08, 145.27)).map(|c| c.id),
            Some(7),
            "Cranbourne"
        );
        let city = |id, lng| City {
            id,
            name: format!("c{id}"),
            centre: at(0.0, lng),
            timezone: "Etc/UTC".into(),
        };
        let twins = [city(7, 1.0), city(3, -1.0)];
        assert_eq!(
            nearest(&twins, at(0.0, 0.0)).map(|c| c.id),
            Some(3),
            "a tie: the smaller id"
        );
        assert_eq!(nearest(&[], at(0.0, 0.0)), None);
    }
}
