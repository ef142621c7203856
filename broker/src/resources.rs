//! What the data plane needs from resource objects (Brokers and Channels in
//! the metadata group), parsed from their JSON. The resources issue owns the
//! full object model; ingress only reads these settings.

use std::time::Duration;

/// Knative's default for `knativebrokerttl`.
pub const DEFAULT_BROKER_TTL: i64 = 255;
pub const ANNOTATION_TTL: &str = "sluice.dev/ttl";
pub const ANNOTATION_DEDUPE_WINDOW: &str = "sluice.dev/dedupe-window";
/// Longest dedupe window (bounds the memory a window holds).
pub const MAX_DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Ingress settings of one Broker (or Channel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressSettings {
    /// `knativebrokerttl` given to events that arrive without one.
    pub ttl: i64,
    /// Events whose (`source`, `id`) was accepted within this window are acknowledged but not stored again.
    pub dedupe_window: Option<Duration>,
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self { ttl: DEFAULT_BROKER_TTL, dedupe_window: None }
    }
}

impl IngressSettings {
    /// Reads the `sluice.dev/` annotations of a resource object; a malformed
    /// annotation falls back to the default (the resources issue rejects it at apply).
    pub fn from_object(json: &str) -> Self {
        let object: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let annotation = |name: &str| {
            object
                .pointer(&format!("/metadata/annotations/{}", name.replace('/', "~1")))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let mut settings = Self::default();
        if let Some(ttl) = annotation(ANNOTATION_TTL).and_then(|t| t.trim().parse::<i64>().ok()).filter(|t| *t > 0) {
            settings.ttl = ttl;
        }
        if let Some(window) = annotation(ANNOTATION_DEDUPE_WINDOW).and_then(|w| parse_duration(&w).ok()) {
            settings.dedupe_window = (!window.is_zero()).then_some(window.min(MAX_DEDUPE_WINDOW));
        }
        settings
    }
}

/// Durations as people write them: `500ms`, `30s`, `2m`, `1h`, `1h30m`, or
/// ISO 8601 (`PT2M`, `PT0.5S`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Some(iso) = text.strip_prefix("PT").or_else(|| text.strip_prefix("pt")) {
        return parse_units(iso, &[("H", 3600.0), ("M", 60.0), ("S", 1.0)])
            .ok_or_else(|| format!("{text:?} is not an ISO 8601 duration like PT0.5S"));
    }
    parse_units(text, &[("ms", 0.001), ("h", 3600.0), ("m", 60.0), ("s", 1.0)])
        .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 30s, 2m or PT2M"))
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
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("PT0.5S"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("PT2M"), Ok(Duration::from_secs(120)));
        for bad in ["", "2", "2x", "m", "PT", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_come_from_annotations() {
        assert_eq!(IngressSettings::from_object(r#"{"metadata":{"name":"b"}}"#), IngressSettings::default());
        let json = r#"{"metadata":{"annotations":{"sluice.dev/ttl":"10","sluice.dev/dedupe-window":"2m"}}}"#;
        let settings = IngressSettings::from_object(json);
        assert_eq!(settings.ttl, 10);
        assert_eq!(settings.dedupe_window, Some(Duration::from_secs(120)));
        let capped =
            IngressSettings::from_object(r#"{"metadata":{"annotations":{"sluice.dev/dedupe-window":"100h"}}}"#);
        assert_eq!(capped.dedupe_window, Some(MAX_DEDUPE_WINDOW));
    }
}
