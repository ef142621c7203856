//! How many attributes an event may carry, and how many bytes of them: counted as the `ce-` headers of its
//! binary-mode delivery once the broker has added Knative's attributes, so that an event accepted at the limit
//! can be delivered to a server with the same header limits (another Sluice Broker or Channel among them).

use crate::knative::ARRIVAL_TIME_LEN;
use crate::model::{CloudEvent, EventError};

/// Headers a binary-mode delivery sends besides the event's `ce-` headers: `content-type` (when the event has no
/// `datacontenttype`; otherwise it takes that attribute's place), `content-length`, `host`, `prefer`,
/// `traceparent` and `authorization` (with sender identity on).
pub const DELIVERY_HEADERS: usize = 6;

/// The bytes of those headers, counted as the ingress counts headers (name, value and 4): `content-type:
/// application/json` 32, `content-length` at most 28, `host` at most 267 (a 253-byte name and a port),
/// `prefer: reply` 15, `traceparent` 70 and `authorization: Bearer ` 24 are 436; the rest, 2,636 bytes, is
/// for the bearer token (an OIDC token is about 1 KiB).
pub const DELIVERY_HEADER_BYTES: usize = 3 << 10;

/// The bytes one attribute counts for: its `ce-` header, `ce-NAME: VALUE` and CRLF (as the ingress counts a
/// header: name, value and 4).
pub(crate) fn attribute_header_bytes(name: &str, value_len: usize) -> usize {
    "ce-".len() + name.len() + value_len + 4
}

/// Bounds on an event's attributes, those the broker adds on arrival (`knativearrivaltime`, and
/// `knativebrokerttl` when absent) included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttributeLimits {
    /// Most attributes.
    pub max_attributes: usize,
    /// Most bytes of attributes, each counted by [`attribute_header_bytes`].
    pub max_bytes: usize,
}

impl AttributeLimits {
    /// No bounds (events that are not taken from a request: replies, tests).
    pub const UNLIMITED: Self = Self { max_attributes: usize::MAX, max_bytes: usize::MAX };

    /// The bounds that let an event be delivered in binary mode within `max_headers` headers and
    /// `max_header_bytes` bytes of them: those less what a delivery adds ([`DELIVERY_HEADERS`],
    /// [`DELIVERY_HEADER_BYTES`]). The one place where that headroom is taken.
    pub fn within_headers(max_headers: usize, max_header_bytes: usize) -> Self {
        Self {
            max_attributes: max_headers.saturating_sub(DELIVERY_HEADERS),
            max_bytes: max_header_bytes.saturating_sub(DELIVERY_HEADER_BYTES),
        }
    }

    /// The refusal of an event with more than `max_attributes`.
    pub fn too_many(&self) -> EventError {
        EventError::bad("too many attributes")
            .rule(format!(
                "at most {} attributes, those the broker adds (knativearrivaltime, knativebrokerttl) included, \
                 so that a binary-mode delivery fits the header limit",
                self.max_attributes
            ))
            .status(413)
    }

    /// The refusal of an event with more than `max_bytes` of attributes.
    pub fn too_large(&self) -> EventError {
        EventError::bad("attributes too large")
            .rule(format!(
                "at most {} bytes of attributes, each counted as its ce- header (name, value and 4), those the \
                 broker adds included, so that a binary-mode delivery fits the header limit",
                self.max_bytes
            ))
            .status(413)
    }

    /// Checks `event` as it will be stored: with `knativearrivaltime` set (its value always
    /// [`ARRIVAL_TIME_LEN`] bytes) and, when absent, `knativebrokerttl` set to `default_ttl`.
    pub fn check(&self, event: &CloudEvent, default_ttl: i64) -> Result<(), EventError> {
        let adds_ttl = !event.attributes.contains_key("knativebrokerttl");
        let adds_arrival = !event.attributes.contains_key("knativearrivaltime");
        let count = event.attributes.len() + usize::from(adds_ttl) + usize::from(adds_arrival);
        if count > self.max_attributes {
            return Err(self.too_many());
        }
        let sent: usize = event
            .attributes
            .iter()
            .filter(|(name, _)| name.as_str() != "knativearrivaltime")
            .map(|(name, value)| attribute_header_bytes(name, value.canonical().len()))
            .sum();
        let ttl = if adds_ttl { attribute_header_bytes("knativebrokerttl", default_ttl.to_string().len()) } else { 0 };
        if sent + ttl + attribute_header_bytes("knativearrivaltime", ARRIVAL_TIME_LEN) > self.max_bytes {
            return Err(self.too_large());
        }
        Ok(())
    }
}

/// The fewest attributes header limits must leave an event: the four required ones, the two the broker adds
/// and four optional ones (`time`, `datacontenttype`, `subject`, an extension).
pub(crate) const MIN_EVENT_ATTRIBUTES: usize = 10;

/// The fewest bytes of attributes header limits must leave an event (a UUID `id`, a URL `source`, a reverse-DNS
/// `type`, a `time`, the broker's two take about 300).
pub(crate) const MIN_EVENT_ATTRIBUTE_BYTES: usize = 1 << 10;

/// Refuses header limits that leave events no room: below [`MIN_EVENT_ATTRIBUTES`] or
/// [`MIN_EVENT_ATTRIBUTE_BYTES`] after a delivery's own headers are kept back, nearly every event would be
/// refused (413) by a node that started as if nothing were wrong. Answers the flag and why, for the node's
/// start-up.
pub fn check_header_limits(max_headers: usize, max_header_bytes: usize) -> Result<(), String> {
    let room = AttributeLimits::within_headers(max_headers, max_header_bytes);
    if room.max_attributes < MIN_EVENT_ATTRIBUTES {
        return Err(format!(
            "--max-headers {max_headers} leaves {} attributes per event once a delivery's own {DELIVERY_HEADERS} \
             headers are kept back: at least {} (an event's required four, the broker's two and a few optional ones)",
            room.max_attributes,
            MIN_EVENT_ATTRIBUTES + DELIVERY_HEADERS
        ));
    }
    if room.max_bytes < MIN_EVENT_ATTRIBUTE_BYTES {
        return Err(format!(
            "--max-header-bytes {max_header_bytes} leaves {} bytes of attributes per event once a delivery's own \
             {DELIVERY_HEADER_BYTES} bytes of headers are kept back: at least {}",
            room.max_bytes,
            MIN_EVENT_ATTRIBUTE_BYTES + DELIVERY_HEADER_BYTES
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_limits_that_leave_events_no_room_are_refused_naming_the_flag() {
        let cases: [(usize, usize, Option<&str>); 6] = [
            (100, 16 << 10, None),
            (16, 4 << 10, None),
            (15, 4 << 10, Some("--max-headers 15 leaves 9 attributes")),
            (0, 4 << 10, Some("--max-headers 0 leaves 0 attributes")),
            (16, (4 << 10) - 1, Some("--max-header-bytes 4095 leaves 1023 bytes")),
            (16, 0, Some("--max-header-bytes 0 leaves 0 bytes")),
        ];
        for (max_headers, max_header_bytes, refused) in cases {
            match (check_header_limits(max_headers, max_header_bytes), refused) {
                (Ok(()), None) => {}
                (Err(message), Some(start)) => assert!(message.starts_with(start), "{message}"),
                (outcome, _) => panic!("{max_headers}, {max_header_bytes}: {outcome:?}"),
            }
        }
    }

    #[test]
    fn the_smallest_limits_allowed_take_an_ordinary_event() {
        let event = crate::from_structured(
            br#"{"specversion":"1.0","id":"4f8c1c53-5b0e-4e5e-9a3a-1a0d2f6b3c7e","type":"dev.knative.samples.helloworld",
               "source":"https://github.com/knative/docs/code-samples/serving/cloudevents","time":"2026-12-03T06:00:00Z",
               "datacontenttype":"application/json","subject":"order-1234","partitionkey":"customer-42","data":{}}"#,
        )
        .expect("an event");
        let limits = AttributeLimits::within_headers(MIN_EVENT_ATTRIBUTES + DELIVERY_HEADERS, 4 << 10);
        assert!(limits.check(&event, 255).is_ok(), "an ordinary event fits the smallest limits allowed");
    }
}
