//! The `traceparent` header of a delivery: in, the event; out, its own W3C `traceparent`, or one derived from
//! its `source` and `id`.

use sluice_cloudevent::{self as cloudevent, AttrValue, CloudEvent};

/// The event's own `traceparent` (distributed tracing extension), or one derived from its `source` and `id`,
/// so that every attempt of one event shares a trace.
pub(crate) fn traceparent(event: &CloudEvent) -> String {
    if let Some(AttrValue::String(existing)) = event.get("traceparent")
        && cloudevent::is_traceparent(existing)
    {
        return existing.clone();
    }
    let source = event.get_str("source").unwrap_or_default();
    let id = event.get_str("id").unwrap_or_default();
    let high = cloudevent::stable_hash(&[source.as_bytes(), b"\0", id.as_bytes()]);
    let low = cloudevent::stable_hash(&[id.as_bytes(), b"\0", source.as_bytes()]);
    let span = cloudevent::stable_hash(&[b"span", source.as_bytes(), id.as_bytes()]);
    // `00-{high:016x}{low:016x}-{span:016x}-01`, written without the formatting machinery (once per delivery).
    let mut value = String::with_capacity(TRACEPARENT_LEN);
    value.push_str("00-");
    push_hex_u64(&mut value, high);
    push_hex_u64(&mut value, low);
    value.push('-');
    push_hex_u64(&mut value, span.max(1));
    value.push_str("-01");
    value
}

/// A W3C `traceparent`: version, trace id, parent id and flags, 2, 32, 16 and 2 hex digits apart by dashes.
const TRACEPARENT_LEN: usize = 55;

pub(super) fn push_hex_u64(out: &mut String, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(char::from(DIGITS[((value >> (shift * 4)) & 0xf) as usize]));
    }
}
