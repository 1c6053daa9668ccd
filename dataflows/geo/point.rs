//! Positions and distances: a point as whole nanodegrees ([`Point`]: exact integers that
//! order, hash and compare like any key; a nanodegree is about 0.1 mm), and the great-circle
//! distance between two points ([`distance_km`], haversine, Earth radius [`EARTH_RADIUS_KM`]).

use serde::{Deserialize, Serialize};

/// Earth radius of every distance (SPEC: 6,371 km).
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// A position, in nanodegrees of latitude and longitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Point {
    /// Latitude × 10⁹, in [−90°, 90°].
    pub lat: i64,
    /// Longitude × 10⁹, in [−180°, 180°].
    pub lon: i64,
}

/// Nanodegrees per degree.
const NANO: f64 = 1e9;

impl Point {
    /// The point at `lat`, `lon` degrees, if both are finite and in range.
    pub fn from_degrees(lat: f64, lon: f64) -> Option<Point> {
        let ok = lat.is_finite()
            && lon.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lon);
        // In range, so the products fit an i64 (at most 1.8 × 10¹¹).
        ok.then(|| Point {
            lat: (lat * NANO).round() as i64,
            lon: (lon * NANO).round() as i64,
        })
    }

    /// (latitude, longitude) in degrees.
    pub fn degrees(self) -> (f64, f64) {
        (self.lat as f64 / NANO, self.lon as f64 / NANO)
    }
}

/// Great-circle distance in km between two points given in degrees (haversine).
pub fn distance_km(a: Point, b: Point) -> f64 {
    let ((lat1, lng1), (lat2, lng2)) = (a.degrees(), b.degrees());
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let half_dphi = (lat2 - lat1).to_radians() / 2.0;
    let half_dlambda = (lng2 - lng1).to_radians() / 2.0;
    let a = half_dphi.sin().powi(2) + phi1.cos() * phi2.cos() * half_dlambda.sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_exact_nanodegrees() {
        let p = Point::from_degrees(-33.865, 151.2094).expect("in range");
        assert_eq!(
            p,
            Point {
                lat: -33_865_000_000,
                lon: 151_209_400_000
            }
        );
        assert_eq!(Point::from_degrees(f64::NAN, 0.0), None);
        assert_eq!(Point::from_degrees(0.0, 180.5), None);
    }

    #[test]
    fn distances_are_great_circle() {
        let sydney = Point::from_degrees(-33.865, 151.2094).expect("Sydney");
        let melbourne = Point::from_degrees(-37.8136, 144.9631).expect("Melbourne");
        let d = distance_km(sydney, melbourne);
        assert!(
            (d - 713.0).abs() < 3.0,
            "Sydney–Melbourne ≈ 713 km, got {d}"
        );
        assert!(distance_km(sydney, sydney) < 1e-9);
        // 0.009° of latitude is 1.0008 km.
        let north = Point::from_degrees(-33.856, 151.2094).expect("north");
        assert!((distance_km(sydney, north) - 1.0008).abs() < 1e-3);
    }
}
