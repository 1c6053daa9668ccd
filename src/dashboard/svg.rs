//! Charts as SVG, drawn on the server: the page needs no chart library and no asset from
//! the internet. Each chart scales to its container's width (a `viewBox`); colours come
//! from the page's stylesheet (classes `s0`, `s1`, …), so no inline style is needed.

use std::fmt::Write;

/// Escapes text for HTML and SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A count with thousands separators: 1234567 → "1 234 567" (thin spaces).
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    if n < 0 {
        out.push('-');
    }
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{2009}');
        }
        out.push(d);
    }
    out
}

/// Shortens `text` to at most `max` characters with an ellipsis in the middle, keeping the
/// start and the end (ids that share a prefix stay apart: "123e4567…426614174003").
fn clip(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_string();
    }
    let head = (max / 2).max(1);
    let tail = max.saturating_sub(head + 1);
    let mut short: String = chars[..head].iter().collect();
    short.push('…');
    short.extend(&chars[chars.len() - tail..]);
    short
}

/// The legend of `series` (nothing for a single series).
fn legend(series: &[&str]) -> String {
    if series.len() < 2 {
        return String::new();
    }
    let mut out = String::from("<p class=\"legend\">");
    for (i, name) in series.iter().enumerate() {
        let _ = write!(out, "<span class=\"key k{i}\"></span>{} ", escape(name));
    }
    out.push_str("</p>");
    out
}

/// The largest value of any series (at least 1: the scale of a chart).
fn largest(rows: &[(String, Vec<i64>)]) -> f64 {
    rows.iter()
        .flat_map(|(_, values)| values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64
}

/// Horizontal bars, one group per row: `rows` are (label, one value per series). Each bar
/// is labelled with its value; the longest bar spans the chart.
pub fn bars(series: &[&str], rows: &[(String, Vec<i64>)]) -> String {
    const WIDTH: f64 = 600.0;
    const LABEL: f64 = 190.0;
    const BAR: f64 = 14.0;
    let per_row = BAR * series.len() as f64 + 10.0;
    let height = per_row * rows.len() as f64 + 4.0;
    let max = largest(rows);
    let span = WIDTH - LABEL - 70.0;
    let mut out = legend(series);
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\">"
    );
    for (r, (label, values)) in rows.iter().enumerate() {
        let top = 2.0 + per_row * r as f64;
        let middle = top + BAR * series.len() as f64 / 2.0 + 4.0;
        let _ = write!(
            out,
            "<text class=\"label\" x=\"{:.0}\" y=\"{middle:.1}\" text-anchor=\"end\">{}<title>{}</title></text>",
            LABEL - 8.0,
            escape(&clip(label, 26)),
            escape(label)
        );
        for (s, value) in values.iter().enumerate() {
            let y = top + BAR * s as f64;
            let w = (*value as f64 / max * span).max(if *value > 0 { 1.0 } else { 0.0 });
            let _ = write!(
                out,
                "<rect class=\"s{s}\" x=\"{LABEL}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\"><title>{}: {}</title></rect>\
                 <text class=\"value\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                BAR - 2.0,
                escape(series.get(s).copied().unwrap_or_default()),
                count(*value),
                LABEL + w + 4.0,
                y + BAR - 4.0,
                count(*value)
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// Columns over time (or any ordered labels), one group per point: `points` are (label,
/// one value per series), oldest first. The y axis shows the largest value; every column
/// has its exact value as a tooltip, and at most about 12 labels are written under them.
pub fn columns(series: &[&str], points: &[(String, Vec<i64>)]) -> String {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 220.0;
    const LEFT: f64 = 56.0;
    const BOTTOM: f64 = 28.0;
    let max = largest(points);
    let plot = HEIGHT - BOTTOM - 8.0;
    let slot = (WIDTH - LEFT - 4.0) / points.len().max(1) as f64;
    let column = (slot * 0.8 / series.len().max(1) as f64).max(1.0);
    let every = points.len().div_ceil(12).max(1);
    let mut out = legend(series);
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"8\" x2=\"{LEFT}\" y2=\"{:.0}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{:.0}\" x2=\"{WIDTH}\" y2=\"{:.0}\"/>\
         <text class=\"value\" x=\"{:.0}\" y=\"16\" text-anchor=\"end\">{}</text>\
         <text class=\"value\" x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">0</text>",
        8.0 + plot,
        8.0 + plot,
        8.0 + plot,
        LEFT - 4.0,
        count(max as i64),
        LEFT - 4.0,
        8.0 + plot
    );
    for (p, (label, values)) in points.iter().enumerate() {
        let left = LEFT + 2.0 + slot * p as f64 + slot * 0.1;
        for (s, value) in values.iter().enumerate() {
            let h = *value as f64 / max * plot;
            let _ = write!(
                out,
                "<rect class=\"s{s}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{column:.1}\" height=\"{h:.1}\"><title>{} {}: {}</title></rect>",
                left + column * s as f64,
                8.0 + plot - h,
                escape(label),
                escape(series.get(s).copied().unwrap_or_default()),
                count(*value)
            );
        }
        if p.is_multiple_of(every) {
            let _ = write!(
                out,
                "<text class=\"tick\" x=\"{:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>",
                left + column * series.len() as f64 / 2.0,
                HEIGHT - 10.0,
                escape(&clip(label, 11))
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// A point on the map: a city, its position and its activity.
pub struct Place {
    /// Its name.
    pub name: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lng: f64,
    /// What the circle's area shows.
    pub value: i64,
}

/// The places on a plain equirectangular map of their own bounding box (no tiles): a
/// circle per place, its area proportional to its value, with a graticule every 5°.
pub fn map(places: &[Place]) -> String {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 360.0;
    const PAD: f64 = 40.0;
    let (mut south, mut north, mut west, mut east) = (90.0f64, -90.0f64, 180.0f64, -180.0f64);
    for p in places {
        south = south.min(p.lat);
        north = north.max(p.lat);
        west = west.min(p.lng);
        east = east.max(p.lng);
    }
    if places.is_empty() {
        (south, north, west, east) = (-10.0, 10.0, -10.0, 10.0);
    }
    // Longitude degrees shrink with the cosine of the latitude.
    let squeeze = ((south + north) / 2.0).to_radians().cos().max(0.2);
    let (lat_span, lng_span) = ((north - south).max(1.0), ((east - west) * squeeze).max(1.0));
    let scale = ((WIDTH - 2.0 * PAD) / lng_span).min((HEIGHT - 2.0 * PAD) / lat_span);
    let (mid_lat, mid_lng) = ((south + north) / 2.0, (west + east) / 2.0);
    let x = |lng: f64| WIDTH / 2.0 + (lng - mid_lng) * squeeze * scale;
    let y = |lat: f64| HEIGHT / 2.0 - (lat - mid_lat) * scale;
    let mut out = format!(
        "<svg class=\"chart map\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">\
         <rect class=\"sea\" x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{HEIGHT}\"/>"
    );
    let grid = |from: f64, to: f64| {
        let first = (from / 5.0).floor() as i64 - 2;
        let last = (to / 5.0).ceil() as i64 + 2;
        (first..=last).map(|d| d as f64 * 5.0)
    };
    for lat in grid(south, north) {
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"0\" x2=\"{WIDTH}\" y1=\"{0:.1}\" y2=\"{0:.1}\"/>",
            y(lat)
        );
    }
    for lng in grid(west, east) {
        let _ = write!(
            out,
            "<line class=\"grid\" y1=\"0\" y2=\"{HEIGHT}\" x1=\"{0:.1}\" x2=\"{0:.1}\"/>",
            x(lng)
        );
    }
    let max = places.iter().map(|p| p.value).max().unwrap_or(0).max(1) as f64;
    // Largest first, so that small circles stay on top and visible.
    let mut order: Vec<&Place> = places.iter().collect();
    order.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.name.cmp(&b.name)));
    // Labels of the larger places first; one that would overlap a label already placed is
    // left out (its circle keeps the name and value as a tooltip).
    let mut placed: Vec<(f64, f64, f64, f64)> = Vec::new();
    let mut labels = String::new();
    for p in order {
        let r = 3.0 + 27.0 * (p.value.max(0) as f64 / max).sqrt();
        let (cx, cy) = (x(p.lng), y(p.lat));
        let _ = write!(
            out,
            "<circle class=\"city\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{r:.1}\"><title>{}: {}</title></circle>",
            escape(&p.name),
            count(p.value),
        );
        let text = format!("{} {}", clip(&p.name, 18), count(p.value));
        let (left, top) = (cx + r.min(8.0) + 3.0, cy - 6.0);
        let right = left + 7.0 * text.chars().count() as f64;
        let free = placed
            .iter()
            .all(|&(l, t, r, b)| right < l || left > r || top + 14.0 < t || top > b);
        if free {
            placed.push((left, top, right, top + 14.0));
            let _ = write!(
                labels,
                "<text class=\"label\" x=\"{left:.1}\" y=\"{:.1}\">{}</text>",
                cy + 4.0,
                escape(&text)
            );
        }
    }
    out.push_str(&labels);
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_database_is_escaped() {
        assert_eq!(
            escape("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        let svg = bars(&["drafts"], &[("<b>".into(), vec![3])]);
        assert!(!svg.contains("<b>") && svg.contains("&lt;b&gt;"));
    }

    #[test]
    fn long_labels_keep_their_start_and_end() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(
            clip("123e4567-e89b-12d3-a456-426614174003", 21),
            "123e4567-e…6614174003"
        );
        assert_eq!(clip("Пицца Маргарита большая", 9), "Пицц…ьшая");
    }

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1\u{2009}234\u{2009}567");
        assert_eq!(count(-1000), "-1\u{2009}000");
    }

    #[test]
    fn the_longest_bar_spans_the_chart_and_every_value_is_written() {
        let svg = bars(
            &["drafts", "feedback"],
            &[("r1".into(), vec![10, 5]), ("r2".into(), vec![0, 0])],
        );
        assert!(svg.contains("width=\"340.0\""), "{svg}");
        assert!(svg.contains(">10</text>") && svg.contains(">5</text>"));
        assert_eq!(svg.matches("<rect").count(), 4);
        assert!(svg.contains("class=\"legend\""));
    }

    #[test]
    fn columns_label_at_most_about_twelve_points() {
        let points: Vec<(String, Vec<i64>)> =
            (0..48).map(|h| (format!("{h:02}:00"), vec![h])).collect();
        let svg = columns(&["drafts"], &points);
        assert_eq!(svg.matches("<rect").count(), 48);
        assert_eq!(svg.matches("class=\"tick\"").count(), 12);
        assert!(
            svg.contains(">47</text>"),
            "the axis shows the largest value"
        );
    }

    #[test]
    fn the_map_places_cities_by_their_coordinates_and_sizes_them_by_value() {
        let city = |name: &str, lat: f64, lng: f64, value: i64| Place {
            name: name.into(),
            lat,
            lng,
            value,
        };
        let svg = map(&[
            city("Sydney", -33.87, 151.21, 100),
            city("Perth", -31.95, 115.86, 25),
            city("Darwin", -12.46, 130.84, 0),
        ]);
        let circle = |name: &str| {
            let at = svg.find(&format!("<title>{name}:")).expect(name);
            let start = svg[..at].rfind("<circle").expect("circle");
            let attr = |a: &str| -> f64 {
                let from = svg[start..].find(&format!("{a}=\"")).expect(a) + start + a.len() + 2;
                let to = svg[from..].find('"').expect("end") + from;
                svg[from..to].parse().expect("number")
            };
            (attr("cx"), attr("cy"), attr("r"))
        };
        let (sydney, perth, darwin) = (circle("Sydney"), circle("Perth"), circle("Darwin"));
        assert!(perth.0 < darwin.0 && darwin.0 < sydney.0, "west to east");
        assert!(darwin.1 < sydney.1, "north is up");
        assert_eq!(sydney.2, 30.0);
        assert_eq!(perth.2, 16.5, "area, not radius, proportional to the value");
        assert_eq!(darwin.2, 3.0);
    }
}
