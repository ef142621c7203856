//! Publishing: events in (from HTTP ingress, or from inside the node: replies and redriven dead letters), a
//! validated, Knative-attributed, encoded and deduplicated append out, to the partition the first event hashes
//! to. The node's one way to add events to a broker's or channel's stream.

use bytes::Bytes;

use crate::cloudevent::{self, CloudEvent, EventError};
use crate::command::{Appended, Dedupe};
use crate::error::BrokerError;
use crate::node::Node;
use crate::resources::IngressSettings;

/// Why [`publish`] refused events.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// An event is not acceptable (what HTTP ingress answers as a 4xx; the
    /// status is in the error, and `index` names the event of a batch).
    #[error("invalid event: {0}")]
    Invalid(EventError),
    /// The append failed; [`BrokerError::is_retryable`] tells whether to retry.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Appends events to `stream` as HTTP ingress does: HTTP ingress, and producers inside the node (the
/// dispatcher's replies and redriven dead letters): Knative attributes
/// (arrival now), the stored encoding, dedupe keys (`source` NUL `id`) when
/// the target dedupes, and one partition for the whole batch (its first
/// event's), so that a batch stays atomic. Events whose encoding exceeds
/// `max_event_bytes` (plus room for the added attributes) are refused with 413.
pub async fn publish(
    node: &Node,
    stream: &str,
    settings: &IngressSettings,
    mut events: Vec<CloudEvent>,
    max_event_bytes: usize,
) -> Result<Appended, PublishError> {
    if events.is_empty() {
        return Err(PublishError::Invalid(EventError::bad("no events").rule("publish at least one event")));
    }
    let now = crate::wall_clock();
    let arrival = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let batch = events.len() > 1;
    let mut payloads = Vec::with_capacity(events.len());
    let mut keys = Vec::with_capacity(if settings.dedupe_window.is_some() { events.len() } else { 0 });
    for (i, event) in events.iter_mut().enumerate() {
        let indexed = |e: EventError| PublishError::Invalid(if batch { e.at_index(i) } else { e });
        sluice_cloudevent::apply_knative_attributes(event, settings.ttl, &arrival).map_err(indexed)?;
        let encoded = event
            .encode()
            .map_err(|e| PublishError::Invalid(EventError::bad("event cannot be stored").rule(e.to_string())))?;
        if encoded.len() > max_event_bytes + 1024 {
            return Err(indexed(
                EventError::bad("event too large")
                    .rule(format!("at most {max_event_bytes} bytes per event"))
                    .status(413),
            ));
        }
        payloads.push(Bytes::from(encoded));
        if settings.dedupe_window.is_some() {
            let (source, id) = (event.get_str("source").unwrap_or_default(), event.get_str("id").unwrap_or_default());
            let mut key = Vec::with_capacity(source.len() + 1 + id.len());
            key.extend_from_slice(source.as_bytes());
            key.push(0);
            key.extend_from_slice(id.as_bytes());
            keys.push(Bytes::from(key));
        }
    }
    // A batch is atomic, so it goes to one partition: its first event's.
    let partition = events.first().map(|e| cloudevent::partition_of(e, node.partitions())).unwrap_or(0);
    let dedupe = settings.dedupe_window.map(|window| Dedupe { window_ms: window.as_millis() as u64, keys });
    let arrival_ms = now.timestamp_millis().max(0) as u64;
    Ok(node.append(stream, partition, payloads, arrival_ms, dedupe).await?)
}
