//! The lines of a `--kafka-property-file`: `KEY=VALUE`, `#` comments and blank lines.
//!
//! Only `std`: `fuzz/` compiles this file as it is and fuzzes [`parse`].

/// The `KEY=VALUE` pairs of `text`, in order, each side trimmed; or the 1-based number of
/// the first line that is neither a pair with a non-empty key, a comment nor blank. The
/// error is a number only: a line may hold a secret.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut properties = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                properties.push((k.trim().to_string(), v.trim().to_string()));
            }
            _ => return Err(number + 1),
        }
    }
    Ok(properties)
}
