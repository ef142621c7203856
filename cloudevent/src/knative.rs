//! Knative's attributes: what a broker adds on arrival (`knativearrivaltime`, `knativebrokerttl`), and the
//! bounded `event_type` metric label.

use crate::model::{AttrValue, CloudEvent, EventError};

/// Knative's default for `knativebrokerttl`.
pub const DEFAULT_BROKER_TTL: i64 = 255;

/// `knativearrivaltime`'s value for `now`: RFC 3339, UTC, microseconds, always [`ARRIVAL_TIME_LEN`] bytes
/// (what the attribute limits count for it, [`crate::AttributeLimits::check`]).
pub fn arrival_time(now: chrono::DateTime<chrono::Utc>) -> String {
    now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The length of every [`arrival_time`] (years 0 to 9999).
pub const ARRIVAL_TIME_LEN: usize = "2026-01-01T00:00:00.000000Z".len();

/// Knative's attributes: `knativearrivaltime` set to `arrival`, `knativebrokerttl` kept if positive, else
/// `default_ttl` (the broker's) when absent.
pub fn apply_knative_attributes(event: &mut CloudEvent, default_ttl: i64, arrival: &str) -> Result<(), EventError> {
    match event.attributes.get("knativebrokerttl") {
        None => {
            event.attributes.insert("knativebrokerttl".into(), AttrValue::Integer(default_ttl));
        }
        Some(value) => {
            let ttl: i64 = value.to_canonical_string().trim().parse().map_err(|_| {
                EventError::bad("knativebrokerttl is not an integer")
                    .attribute("knativebrokerttl")
                    .rule("a positive integer")
            })?;
            if ttl <= 0 {
                return Err(EventError::bad("knativebrokerttl has expired")
                    .attribute("knativebrokerttl")
                    .rule("must be greater than 0: the event has passed through too many brokers"));
            }
            // A CloudEvents Integer: a larger one (sent as a string) would be written into the replies as an
            // Integer that every downstream reader refuses.
            if ttl > i64::from(i32::MAX) {
                return Err(EventError::bad("knativebrokerttl is too large")
                    .attribute("knativebrokerttl")
                    .rule("at most 2147483647 (a CloudEvents Integer)"));
            }
        }
    }
    event.attributes.insert("knativearrivaltime".into(), AttrValue::String(arrival.to_string()));
    Ok(())
}

/// Most distinct `event_type` label values; later types are counted as `_other`, so producers cannot grow
/// the metrics without bound.
const MAX_EVENT_TYPE_LABELS: usize = 1000;

/// The `event_type` label for a metric: the type itself while fewer than [`MAX_EVENT_TYPE_LABELS`] distinct
/// types have been seen in this process (ingress and dispatcher share the count), else `_other`.
pub fn event_type_label(event_type: &str) -> String {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = std::sync::OnceLock::new();
    let Ok(mut seen) = SEEN.get_or_init(Default::default).lock() else { return "_other".into() };
    if seen.contains(event_type) {
        return event_type.to_string();
    }
    if seen.len() < MAX_EVENT_TYPE_LABELS && event_type.len() <= 128 {
        seen.insert(event_type.to_string());
        return event_type.to_string();
    }
    "_other".into()
}
