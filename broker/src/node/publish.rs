//! Publishing: events in (from HTTP ingress, or from inside the node: replies and redriven dead letters),
//! validated, Knative-attributed, encoded and deduplicated appends out, one per partition the events hash to
//! (each event to its own: [`partition_groups`]). The node's one way to add events to a broker's or channel's
//! stream.

use bytes::Bytes;
use futures::future::join_all;

use crate::cloudevent::{self, CloudEvent, EventError};
use crate::command::Dedupe;
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

/// What a publication stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Events stored; the rest were duplicates within the dedupe window.
    pub stored: u64,
}

/// Appends events to `stream` as HTTP ingress does: HTTP ingress, and producers inside the node (the
/// dispatcher's replies and redriven dead letters): Knative attributes (arrival now), the stored encoding,
/// dedupe keys (`source` NUL `id`) when the target dedupes, and each event to its own partition
/// (`partitionkey`, else `source` and `id`), so that a retried event meets its dedupe window and a key's
/// events keep their order whichever batch carries them. A batch's events of one partition are one append
/// (atomic); a batch spanning partitions is one append per partition, all at once, and is acknowledged when
/// all are: if one fails, the error says so (a retryable one asks for a retry, which dedupe makes safe for
/// the parts already stored). Events whose encoding exceeds `max_event_bytes` (plus room for the added
/// attributes) are refused with 413, before anything is appended. More than one event are a batch (see
/// [`publish_events`]).
pub async fn publish(
    node: &Node,
    stream: &str,
    settings: &IngressSettings,
    events: Vec<CloudEvent>,
    max_event_bytes: usize,
) -> Result<Published, PublishError> {
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
) -> Result<Published, PublishError> {
    if events.is_empty() {
        return Err(PublishError::Invalid(EventError::bad("no events").rule("publish at least one event")));
    }
    let now = crate::wall_clock();
    let arrival = cloudevent::arrival_time(now);
    let Prepared { payloads, keys } =
        prepare(&mut events, settings, &arrival, max_event_bytes, batch).map_err(PublishError::Invalid)?;
    let partitions = node.partitions();
    let partition_of: Vec<u32> = events.iter().map(|e| cloudevent::partition_of(e, partitions)).collect();
    let window_ms = settings.dedupe_window.map(|window| window.as_millis() as u64);
    let arrival_ms = now.timestamp_millis().max(0) as u64;
    let groups = partition_groups(&partition_of);
    if let [(partition, _)] = groups.as_slice() {
        // The common case, and every single event: one append, as it came.
        let dedupe = window_ms.map(|window_ms| Dedupe { window_ms, keys });
        let appended = node.append(stream, *partition, payloads, arrival_ms, dedupe).await?;
        return Ok(Published { stored: u64::from(appended.stored) });
    }
    let appends = groups.into_iter().map(|(partition, indices)| {
        let group_payloads = indices.iter().map(|&i| payloads[i].clone()).collect();
        let dedupe = window_ms.map(|window_ms| Dedupe {
            window_ms,
            keys: indices.iter().filter_map(|&i| keys.get(i).cloned()).collect(),
        });
        node.append(stream, partition, group_payloads, arrival_ms, dedupe)
    });
    let outcomes: Vec<Result<u64, BrokerError>> =
        join_all(appends).await.into_iter().map(|outcome| outcome.map(|a| u64::from(a.stored))).collect();
    Ok(Published { stored: combined(outcomes)? })
}

/// The events of each partition, by index, in the order they came; partitions in the order their first event
/// came.
pub(crate) fn partition_groups(partition_of: &[u32]) -> Vec<(u32, Vec<usize>)> {
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for (index, partition) in partition_of.iter().enumerate() {
        match groups.iter_mut().find(|(p, _)| p == partition) {
            Some((_, indices)) => indices.push(index),
            None => groups.push((*partition, vec![index])),
        }
    }
    groups
}

/// One answer for a batch's appends: the events stored when every append succeeded; else an error that is
/// never retryable when one of them is not (a bug is not reported as something a retry fixes), else the
/// first retryable one.
pub(crate) fn combined(outcomes: Vec<Result<u64, BrokerError>>) -> Result<u64, BrokerError> {
    let mut stored = 0u64;
    let mut retryable = None;
    for outcome in outcomes {
        match outcome {
            Ok(count) => stored += count,
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                retryable.get_or_insert(e);
            }
        }
    }
    match retryable {
        Some(e) => Err(e),
        None => Ok(stored),
    }
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
        // An event that validated and cannot be encoded is the node's fault (a bug), not the client's: 500.
        let encoded = event
            .encode()
            .map_err(|e| indexed(EventError::bad("event cannot be stored").rule(e.to_string()).status(500)))?;
        if encoded.len() > max_event_bytes + 1024 {
            return Err(indexed(
                EventError::bad("event too large")
                    .rule(format!("at most {max_event_bytes} bytes per event"))
                    .status(413),
            ));
        }
        payloads.push(Bytes::from(encoded));
        if settings.dedupe_window.is_some() {
            keys.push(dedupe_key(event));
        }
    }
    Ok(Prepared { payloads, keys })
}

/// An event's dedupe key: `source` NUL `id`, and for a dead letter NUL the destination that failed
/// (`knativeerrordest`). Each Trigger that fails an event dead-letters it with its own destination, so a
/// dead-letter sink that is a Broker keeps one letter per failure, and a retried delivery of one letter is
/// still a duplicate. Regression: two Triggers' dead letters of one event were one key, and the second was
/// acknowledged and dropped.
fn dedupe_key(event: &CloudEvent) -> Bytes {
    let (source, id) = (event.get_str("source").unwrap_or_default(), event.get_str("id").unwrap_or_default());
    let failed_destination = event.get_str("knativeerrordest");
    let mut key = Vec::with_capacity(source.len() + 1 + id.len() + failed_destination.map_or(0, |d| d.len() + 1));
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    if let Some(destination) = failed_destination {
        key.push(0);
        key.extend_from_slice(destination.as_bytes());
    }
    Bytes::from(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letters_dedupe_key_names_the_destination_that_failed() {
        let event = |extra: &str| {
            sluice_cloudevent::from_structured(
                format!(r#"{{"specversion":"1.0","id":"e1","source":"/s","type":"t"{extra}}}"#).as_bytes(),
            )
            .expect("a valid event")
        };
        let plain = dedupe_key(&event(""));
        assert_eq!(&plain[..], b"/s\0e1");
        let to_a = dedupe_key(&event(r#","knativeerrordest":"http://a/","knativeerrorcode":500"#));
        let to_b = dedupe_key(&event(r#","knativeerrordest":"http://b/","knativeerrorcode":500"#));
        assert_eq!(&to_a[..], b"/s\0e1\0http://a/");
        assert_ne!(to_a, to_b, "two Triggers' failures of one event are two letters");
        assert_ne!(to_a, plain, "a dead letter is not the event it came from");
        let again = dedupe_key(&event(r#","knativeerrordest":"http://a/","knativeerrorcode":503"#));
        assert_eq!(to_a, again, "a letter sent again is a duplicate");
    }

    /// Regression: a batch went whole to its first event's partition, so an event retried inside a batch led by
    /// another missed the dedupe window of the partition it was first stored in (stored twice, both answered
    /// 202), and a `partitionkey`'s events carried by such a batch left their partition's order.
    #[test]
    fn each_event_goes_to_its_own_partition_in_the_order_it_came() {
        // (each event's partition, the groups)
        type Groups = &'static [(u32, &'static [usize])];
        let cases: [(&[u32], Groups); 5] = [
            (&[], &[]),
            (&[3], &[(3, &[0])]),
            (&[1, 1, 1], &[(1, &[0, 1, 2])]),
            (&[1, 0, 1, 2, 0], &[(1, &[0, 2]), (0, &[1, 4]), (2, &[3])]),
            (&[0, 1], &[(0, &[0]), (1, &[1])]),
        ];
        for (partition_of, expected) in cases {
            let expected: Vec<(u32, Vec<usize>)> = expected.iter().map(|(p, i)| (*p, i.to_vec())).collect();
            assert_eq!(partition_groups(partition_of), expected, "{partition_of:?}");
        }
        // The same event hashes to the same partition alone and inside any batch.
        let event = |id: &str| {
            cloudevent::from_structured(
                format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t"}}"#).as_bytes(),
            )
            .expect("valid")
        };
        let alone = cloudevent::partition_of(&event("e"), 8);
        let batch: Vec<CloudEvent> = ["a", "b", "e", "c"].iter().map(|id| event(id)).collect();
        let partition_of: Vec<u32> = batch.iter().map(|e| cloudevent::partition_of(e, 8)).collect();
        let groups = partition_groups(&partition_of);
        assert!(groups.iter().any(|(p, indices)| *p == alone && indices.contains(&2)), "{groups:?}");
    }

    #[test]
    fn a_batch_across_partitions_answers_its_worst_outcome() {
        let group = 1;
        let retryable = || Err(BrokerError::NoLeader { group });
        let bug = || Err(BrokerError::Bug { group, reason: "x".into() });
        assert_eq!(combined(vec![Ok(2), Ok(3)]).ok(), Some(5));
        assert!(matches!(combined(vec![Ok(2), retryable()]), Err(BrokerError::NoLeader { .. })), "a retry");
        assert!(matches!(combined(vec![retryable(), bug(), Ok(1)]), Err(BrokerError::Bug { .. })), "never retried");
        assert_eq!(combined(Vec::new()).ok(), Some(0));
    }

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
