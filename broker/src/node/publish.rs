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
/// `max_event_bytes` (plus room for the added attributes) are refused with 413. More than one event are a
/// batch (see [`publish_events`]).
pub async fn publish(
    node: &Node,
    stream: &str,
    settings: &IngressSettings,
    events: Vec<CloudEvent>,
    max_event_bytes: usize,
) -> Result<Appended, PublishError> {
    let batch = events.len() > 1;
    publish_events(node, stream, settings, events, max_event_bytes, batch).await
}

/// [`publish`], told whether the events came as a batch: a batch's refusals name the `index` of their event, a
/// batch of one included (docs/ingress.md, "Content modes").
pub(crate) async fn publish_events(
    node: &Node,
    stream: &str,
    settings: &IngressSettings,
    mut events: Vec<CloudEvent>,
    max_event_bytes: usize,
    batch: bool,
) -> Result<Appended, PublishError> {
    if events.is_empty() {
        return Err(PublishError::Invalid(EventError::bad("no events").rule("publish at least one event")));
    }
    let now = crate::wall_clock();
    let arrival = cloudevent::arrival_time(now);
    let Prepared { payloads, keys } =
        prepare(&mut events, settings, &arrival, max_event_bytes, batch).map_err(PublishError::Invalid)?;
    // A batch is atomic, so it goes to one partition: its first event's.
    let partition = events.first().map(|e| cloudevent::partition_of(e, node.partitions())).unwrap_or(0);
    let dedupe = settings.dedupe_window.map(|window| Dedupe { window_ms: window.as_millis() as u64, keys });
    let arrival_ms = now.timestamp_millis().max(0) as u64;
    Ok(node.append(stream, partition, payloads, arrival_ms, dedupe).await?)
}

/// What a publication appends: each event's stored encoding, and its dedupe key when the target dedupes.
#[derive(Debug)]
struct Prepared {
    payloads: Vec<Bytes>,
    keys: Vec<Bytes>,
}

/// Adds Knative's attributes (arriving at `arrival`) to each event and encodes it; a refusal names the event's
/// `index` when the events are a `batch`.
fn prepare(
    events: &mut [CloudEvent],
    settings: &IngressSettings,
    arrival: &str,
    max_event_bytes: usize,
    batch: bool,
) -> Result<Prepared, EventError> {
    let mut payloads = Vec::with_capacity(events.len());
    let mut keys = Vec::with_capacity(if settings.dedupe_window.is_some() { events.len() } else { 0 });
    for (i, event) in events.iter_mut().enumerate() {
        let indexed = |e: EventError| if batch { e.at_index(i) } else { e };
        sluice_cloudevent::apply_knative_attributes(event, settings.ttl, arrival).map_err(indexed)?;
        let encoded =
            event.encode().map_err(|e| indexed(EventError::bad("event cannot be stored").rule(e.to_string())))?;
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
    Ok(Prepared { payloads, keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a batch of one event lost its `index` in publish's refusals (only batches of two or more named
    /// it), though docs/ingress.md says a batch's error names the bad event's index.
    #[test]
    fn a_batchs_refusals_name_the_index_even_for_one_event() {
        let settings = IngressSettings { ttl: 255, dedupe_window: None };
        let event = |id: &str, ttl: i64| {
            let body =
                format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t","knativebrokerttl":{ttl}}}"#);
            cloudevent::from_structured(body.as_bytes()).expect("valid")
        };
        // (events' ttls, a batch, the index refused)
        let cases: [(&[i64], bool, Option<usize>); 5] = [
            (&[0], true, Some(0)),
            (&[0], false, None),
            (&[5, 0], true, Some(1)),
            (&[5, 5, 0], true, Some(2)),
            (&[0, 5], true, Some(0)),
        ];
        for (ttls, batch, index) in cases {
            let mut events: Vec<CloudEvent> =
                ttls.iter().enumerate().map(|(i, ttl)| event(&i.to_string(), *ttl)).collect();
            let refused = prepare(&mut events, &settings, "2026-01-01T00:00:00.000000Z", 1 << 20, batch)
                .expect_err("an expired knativebrokerttl");
            assert_eq!((refused.attribute.as_deref(), refused.index), (Some("knativebrokerttl"), index), "{ttls:?}");
        }
        let mut large = vec![event("big", 5)];
        large[0].attributes.insert("x".into(), cloudevent::AttrValue::String("v".repeat(2048)));
        let refused = prepare(&mut large, &settings, "t", 100, true).expect_err("too large");
        assert_eq!((refused.status, refused.index), (413, Some(0)));
    }
}
