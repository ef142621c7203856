//! W3C Trace Context and the distributed tracing extension: an event produced without a `traceparent` of its own
//! takes the one of the HTTP request that carried it ("Middleware ... could eventually add a Distributed Tracing
//! Extension if the source didn't include any", the extension's spec), so the producer's trace reaches the
//! subscribers instead of ending at the broker. Pure.

use crate::model::{AttrValue, CloudEvent};

/// A W3C `traceparent` is 55 characters: version, trace id, parent id and flags, 2, 32, 16 and 2 hex digits,
/// dashes between.
const TRACEPARENT_LEN: usize = 55;
const TRACEPARENT_DASHES: [usize; 3] = [2, 35, 52];
/// The most of a `tracestate` taken from a request (W3C: propagators keep at least 512 characters).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// A valid W3C `traceparent`: its shape, lowercase hex, a version other than `ff`, and neither id all zeros.
pub fn is_traceparent(value: &str) -> bool {
    let bytes = value.as_bytes();
    let shaped = bytes.len() == TRACEPARENT_LEN
        && bytes.iter().enumerate().all(|(i, b)| match TRACEPARENT_DASHES.contains(&i) {
            true => *b == b'-',
            false => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        });
    let all_zeros = |text: &str| text.bytes().all(|b| b == b'0');
    shaped && &value[..2] != "ff" && !all_zeros(&value[3..35]) && !all_zeros(&value[36..52])
}

/// A `tracestate` as an attribute: its list members without the optional whitespace (spaces, tabs) around them
/// and without empty ones, joined by commas; `None` when the header is not visible ASCII with spaces and tabs,
/// is longer than [`MAX_TRACESTATE_BYTES`], or has a tab inside a member. Regression: a tab W3C allows around a
/// comma was kept, and the event's own validation (no control characters) made every downstream Sluice refuse it.
fn tracestate_attribute(value: &[u8]) -> Option<String> {
    if value.len() > MAX_TRACESTATE_BYTES || !value.iter().all(|b| matches!(b, b'\t' | b' '..=b'~')) {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let members: Vec<&str> =
        text.split(',').map(|member| member.trim_matches([' ', '\t'])).filter(|member| !member.is_empty()).collect();
    let joined = members.join(",");
    (!joined.is_empty() && !joined.contains('\t')).then_some(joined)
}

/// Gives `event` the request's trace context (its `traceparent` and `tracestate` headers) as its `traceparent` and
/// `tracestate` attributes when it has neither of its own and the `traceparent` is valid (an invalid
/// `tracestate` is left out alone). Says whether it did: the caller takes them back off when the event no longer
/// fits its limits with them ([`forget_trace_context`]); what the producer did not send as the event's must not
/// refuse it.
pub fn adopt_trace_context(event: &mut CloudEvent, traceparent: &[u8], tracestate: Option<&[u8]>) -> bool {
    if event.attributes.contains_key("traceparent") || event.attributes.contains_key("tracestate") {
        return false;
    }
    let Some(traceparent) = std::str::from_utf8(traceparent).ok().filter(|t| is_traceparent(t)) else {
        return false;
    };
    event.attributes.insert("traceparent".into(), AttrValue::String(traceparent.to_string()));
    if let Some(tracestate) = tracestate.and_then(tracestate_attribute) {
        event.attributes.insert("tracestate".into(), AttrValue::String(tracestate));
    }
    true
}

/// Takes an adopted trace context back off (see [`adopt_trace_context`]).
pub fn forget_trace_context(event: &mut CloudEvent) {
    event.attributes.remove("traceparent");
    event.attributes.remove("tracestate");
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn event() -> CloudEvent {
        let mut event = CloudEvent { attributes: std::collections::BTreeMap::new(), data: None };
        for (name, value) in [("specversion", "1.0"), ("id", "1"), ("source", "/s"), ("type", "t")] {
            event.attributes.insert(name.into(), AttrValue::String(value.into()));
        }
        event
    }

    #[test]
    fn only_a_valid_traceparent_is_one() {
        assert!(is_traceparent(PARENT));
        for invalid in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(!is_traceparent(invalid), "{invalid}");
        }
    }

    #[test]
    fn an_event_without_a_trace_takes_the_requests_and_keeps_its_own_otherwise() {
        let mut adopted = event();
        assert!(adopt_trace_context(&mut adopted, PARENT.as_bytes(), Some(b"rojo=00f067aa0ba902b7")));
        assert_eq!(adopted.get_str("traceparent"), Some(PARENT));
        assert_eq!(adopted.get_str("tracestate"), Some("rojo=00f067aa0ba902b7"));
        forget_trace_context(&mut adopted);
        assert_eq!(adopted, event(), "taken back off whole");

        let own = "00-11111111111111111111111111111111-2222222222222222-00";
        let mut traced = event();
        traced.attributes.insert("traceparent".into(), AttrValue::String(own.into()));
        assert!(!adopt_trace_context(&mut traced, PARENT.as_bytes(), None), "its own stands");
        assert_eq!(traced.get_str("traceparent"), Some(own));

        let mut stated = event();
        stated.attributes.insert("tracestate".into(), AttrValue::String("a=b".into()));
        assert!(!adopt_trace_context(&mut stated, PARENT.as_bytes(), None), "never half of one and half of another");

        let mut untraced = event();
        assert!(!adopt_trace_context(&mut untraced, b"00-not-a-traceparent", None));
        assert_eq!(untraced, event());

        let too_long = vec![b'a'; MAX_TRACESTATE_BYTES + 1];
        for bad_state in [&too_long[..], b"a=\x01", b"\xff", b"a=1\t2", b" , \t"] {
            let mut parent_only = event();
            assert!(adopt_trace_context(&mut parent_only, PARENT.as_bytes(), Some(bad_state)));
            assert_eq!((parent_only.get_str("traceparent"), parent_only.get("tracestate")), (Some(PARENT), None));
        }
        // Whitespace around the members (W3C's OWS, tabs included) and empty members go; the members stay.
        let mut spaced = event();
        assert!(adopt_trace_context(&mut spaced, PARENT.as_bytes(), Some(b" a=1 ,\tb=2\t,, c=3")));
        assert_eq!(spaced.get_str("tracestate"), Some("a=1,b=2,c=3"));
        assert!(spaced.validate().is_ok(), "no control character left");
    }
}
