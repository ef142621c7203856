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
