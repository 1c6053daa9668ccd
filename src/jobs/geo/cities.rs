//! `geo.cities` as a followed table: its rows are the cities events are attributed to,
//! followed by worker 0 (a small table) and spread by the dataflow.

use anyhow::{Context, Result, anyhow, bail};
use dataflows::geo::cities::City;

use crate::sources::postgres::{FollowedRow, Split};

impl FollowedRow for City {
    const TABLE: &'static str = "geo.cities";
    const KEY: &'static str = "id";
    const COLUMNS: &'static [&'static str] = &["id", "city", "lat", "lng", "timezone"];
    const SPLIT: Split = Split::WorkerZero;
    const SOURCE: &'static str = "CitiesSource";

    fn from_columns(values: &[Option<&str>]) -> Result<Self> {
        let [Some(id), Some(name), Some(lat), Some(lng), Some(timezone)] = values else {
            bail!("{} row with a NULL column", Self::TABLE);
        };
        let number = |text: &str| -> Result<f64> {
            text.parse()
                .with_context(|| format!("{} coordinate {text:?}", Self::TABLE))
        };
        let id = id.parse().context("geo.cities id")?;
        City::checked(id, name, number(lat)?, number(lng)?, timezone).map_err(|e| anyhow!(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_a_city() {
        let city = City::from_columns(&[
            Some("1"),
            Some("Sydney"),
            Some("-33.865"),
            Some("151.2094"),
            Some("Australia/Sydney"),
        ])
        .expect("a city");
        assert_eq!((city.id, city.centre.degrees()), (1, (-33.865, 151.2094)));
        assert!(City::from_columns(&[Some("1"), None, None, None, None]).is_err());
        let unusable = |lat: &str, timezone: &str| {
            let row = [Some("2"), Some("X"), Some(lat), Some("151"), Some(timezone)];
            City::from_columns(&row).map_err(|e| e.to_string())
        };
        assert!(unusable("NaN", "Australia/Sydney").is_err_and(|e| e.contains("position")));
        assert!(unusable("91", "Australia/Sydney").is_err_and(|e| e.contains("position")));
        assert!(unusable("-33", "Mars/Olympus_Mons").is_err_and(|e| e.contains("time zone")));
    }
}
