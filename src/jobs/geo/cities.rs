//! `geo.cities` as a followed table: its rows are the cities events are attributed to,
//! followed by worker 0 (a small table) and spread by the dataflow.

use anyhow::{Context, Result, bail};
use dataflows::geo::cities::City;
use dataflows::geo::point::Point;

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
        Ok(City {
            id: id.parse().context("geo.cities id")?,
            name: name.to_string(),
            centre: Point::from_degrees(number(lat)?, number(lng)?)
                .context("geo.cities position out of range")?,
            timezone: timezone.to_string(),
        })
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
    }
}
