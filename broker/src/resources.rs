//! What the data plane needs from resource objects (Brokers and Channels in
//! the metadata group), parsed from their JSON. The resources issue owns the
//! full object model; ingress only reads these settings.

use std::time::Duration;

use sluice_controller::validate::parse_duration;

pub use sluice_cloudevent::DEFAULT_BROKER_TTL;
pub(crate) const ANNOTATION_TTL: &str = "sluice.dev/ttl";
pub(crate) const ANNOTATION_DEDUPE_WINDOW: &str = "sluice.dev/dedupe-window";
/// Dedupe is on unless a broker says `sluice.dev/dedupe-window: "off"` (or `0s`).
pub(crate) const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(120);
/// Longest dedupe window (bounds the memory a window holds); validation refuses longer ones, an object stored
/// before it did is cut to it.
pub(crate) const MAX_DEDUPE_WINDOW: Duration = sluice_controller::validate::MAX_DEDUPE_WINDOW;

/// A stored object's `metadata.resourceVersion` (the log index of its last change); one without a readable version
/// (none written by Sluice) reads as 0. The admin API's Apply checks an object at this version and the conditional
/// entry compares with it, so both read it here.
pub(crate) fn resource_version(object: &serde_json::Value) -> u64 {
    object.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The stream of a Broker or Channel (one per partition).
pub fn stream_name(kind: &str, namespace: &str, name: &str) -> String {
    match kind {
        "Broker" => format!("broker/{namespace}/{name}"),
        _ => format!("channel/{namespace}/{name}"),
    }
}

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
        Self { ttl: DEFAULT_BROKER_TTL, dedupe_window: Some(DEFAULT_DEDUPE_WINDOW) }
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
            // An object stored before validation bounded it: kept a CloudEvents Integer.
            settings.ttl = ttl.min(i64::from(i32::MAX));
        }
        if annotation(ANNOTATION_DEDUPE_WINDOW).is_some_and(|w| w.trim() == "off") {
            settings.dedupe_window = None;
        } else if let Some(window) = annotation(ANNOTATION_DEDUPE_WINDOW).and_then(|w| parse_duration(&w).ok()) {
            settings.dedupe_window = (!window.is_zero()).then_some(window.min(MAX_DEDUPE_WINDOW));
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_is_on_by_default_and_can_be_turned_off() {
        assert_eq!(IngressSettings::from_object(r#"{"metadata":{}}"#).dedupe_window, Some(DEFAULT_DEDUPE_WINDOW));
        for off in ["off", "0s"] {
            let json = format!(r#"{{"metadata":{{"annotations":{{"sluice.dev/dedupe-window":"{off}"}}}}}}"#);
            assert_eq!(IngressSettings::from_object(&json).dedupe_window, None, "{off}");
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
