//! CloudEvents as Sluice keeps them, with no storage: every crate that reads or writes an event (the broker's
//! ingress, the dispatcher, the tests, the chaos suite, the benchmarks) uses this one model.
//!
//! What flows through it: HTTP requests' headers and bodies come in ([`from_binary`], [`from_structured`],
//! [`from_batch`]) and become a validated [`CloudEvent`] (attributes typed, data exactly as it arrived), or an
//! [`EventError`] that names the attribute and the rule; [`AttributeLimits`] holds an event's attributes to what
//! its binary-mode delivery may carry. The broker adds Knative's attributes
//! ([`apply_knative_attributes`]), picks the partition ([`partition_of`]) and stores [`CloudEvent::encode`]'s
//! bytes; readers get the event back with [`CloudEvent::decode`] (or [`CloudEvent::decode_shared`], its data a slice of
//! the stored bytes: [`shared_bytes`]), filter it through [`EventView`], and send it
//! on as `ce-` headers ([`encode_header_value`], [`CloudEvent::binary_body`]) or in the JSON format
//! ([`CloudEvent::to_json_string`]). An event without a trace of its own takes its request's W3C Trace
//! Context ([`adopt_trace_context`]). Every function here is pure; [`clock`] is the one wall clock the shells
//! read. [`filter`] compiles Subscriptions API filters (Triggers, EventPolicies) and matches events against them.

mod binding;
pub mod clock;
pub mod filter;
mod knative;
mod limits;
mod media;
mod model;
mod partition;
pub mod shared_bytes;
mod trace;
mod validate;
mod view;

pub use binding::{
    decode_header_value, encode_header_value, from_batch, from_batch_within, from_binary, from_structured,
    from_structured_within,
};
pub use knative::{ARRIVAL_TIME_LEN, DEFAULT_BROKER_TTL, apply_knative_attributes, arrival_time, event_type_label};
pub use limits::{AttributeLimits, DELIVERY_HEADER_BYTES, DELIVERY_HEADERS, check_header_limits};
pub use media::{is_json_media_type, is_media_type, is_text_media_type, media_essence};
pub use model::{AttrValue, CloudEvent, EventData, EventError, StructuredData};
pub use partition::{ordering_key, partition_of, stable_hash};
pub use trace::{MAX_TRACESTATE_BYTES, adopt_trace_context, forget_trace_context, is_traceparent};
pub use validate::{SPEC_VERSIONS, is_absolute_uri, is_uri_reference};
pub use view::EventView;

#[cfg(test)]
mod tests;
