//! What the validation rules share, with no dependency of its own: the error that names a field, and the
//! syntaxes of names, durations and sizes that eventing and serving objects both use.

use std::time::Duration;

/// One rule an object breaks, at one field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Kubernetes DNS-1123 label.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// DNS-1035 label (Knative's revision names and traffic tags): like a DNS-1123 label, starting with a letter.
pub fn is_dns_1035_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// Durations as people write them: `500ms`, `30s`, `2m`, `1h`, `1h30m`, or
/// ISO 8601 (`PT2M`, `PT0.5S`, `P1DT2H`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Some(iso) = text.strip_prefix('P') {
        let (days, time) = match iso.split_once('T') {
            Some((days, time)) => (days, Some(time)),
            None => (iso, None),
        };
        let mut seconds = 0.0;
        if !days.is_empty() {
            seconds +=
                parse_units(days, &[("D", 86400.0), ("W", 604800.0)]).ok_or_else(|| iso_error(text))?.as_secs_f64();
        }
        if let Some(time) = time {
            seconds += parse_units(time, &[("H", 3600.0), ("M", 60.0), ("S", 1.0)])
                .ok_or_else(|| iso_error(text))?
                .as_secs_f64();
        }
        if days.is_empty() && time.is_none_or(str::is_empty) {
            return Err(iso_error(text));
        }
        return Duration::try_from_secs_f64(seconds).map_err(|_| iso_error(text));
    }
    parse_units(text, &[("ms", 0.001), ("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)])
        .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 30s, 2m or PT2M"))
}

fn iso_error(text: &str) -> String {
    format!("{text:?} is not an ISO 8601 duration like PT0.5S")
}

fn parse_units(mut text: &str, units: &[(&str, f64)]) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut seconds = 0.0f64;
    while !text.is_empty() {
        let number_len = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = text[..number_len].parse().ok()?;
        let rest = &text[number_len..];
        let (unit, factor) = units.iter().find(|(u, _)| rest.starts_with(u))?;
        seconds += number * factor;
        text = &rest[unit.len()..];
    }
    // `try_`: a duration past what `Duration` holds (PT99999999999999999999S) is refused, not a panic.
    Duration::try_from_secs_f64(seconds).ok()
}

/// Sizes like `10GiB`, `500MB`, `1024` (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let factor: u64 = match &text[digits..] {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "TiB" | "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}
