//! The HTTP requests of a delivery: one event in binary or structured mode, or a batch, with the headers every
//! delivery carries (`traceparent`, `Prefer: reply`, the sender's token), and what a subscriber is not sent.

use bytes::Bytes;
use sluice_cloudevent::{self as cloudevent, CloudEvent, EventData};

use super::{ReplyUse, traceparent};
use crate::consumer::Format;

/// A Broker's count of the hops an event has left (its replies go back into a Broker one hop further). It is the
/// Broker's, not the subscriber's: Knative's broker deletes it from an event before sending it to a Trigger's
/// subscriber (`broker.DeleteTTL`), and so do Sluice's deliveries to subscribers (a dead-letter sink gets it, so
/// that a sink that is a Broker goes on counting). Regression: every subscriber got `ce-knativebrokerttl`.
pub(crate) const BROKER_TTL: &str = "knativebrokerttl";

/// The POST of one attempt: binary or structured, with the event's `traceparent` and `Prefer: reply` when the reply
/// is used, without the attribute `withheld`.
pub(super) fn build_request(
    uri: &http::Uri,
    format: Format,
    event: &CloudEvent,
    token: Option<&str>,
    withheld: Option<&str>,
    reply_use: ReplyUse,
) -> http::Request<Bytes> {
    use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
    // An event whose data is itself in a CloudEvents format (`datacontenttype: application/cloudevents+json`, a
    // batch) goes in structured mode: in binary mode that type becomes the `Content-Type`, which makes any
    // receiver read the body as the event (HTTP binding §3). Regression: a subscriber got the inner event, or
    // refused the delivery, and the outer one was lost.
    let format = match format {
        Format::Binary if data_is_an_event_format(event) => Format::Structured,
        format => format,
    };
    let mut headers = http::HeaderMap::with_capacity(event.attributes.len() + 4);
    // "If a sender will process a reply event it MUST include the `Prefer: reply` header" (Knative's data plane);
    // one that will not (a dead-letter sink, a Subscription without `spec.reply`) does not ask for one.
    if reply_use == ReplyUse::Wanted {
        headers.insert(HeaderName::from_static("prefer"), HeaderValue::from_static("reply"));
    }
    if let Ok(traceparent) = HeaderValue::try_from(traceparent(event)) {
        headers.insert(HeaderName::from_static("traceparent"), traceparent);
    }
    if let Some(token) = token
        && let Ok(mut bearer) = HeaderValue::try_from(format!("Bearer {token}"))
    {
        bearer.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, bearer);
    }
    let body = match format {
        Format::Binary => {
            for (name, value) in &event.attributes {
                // The body is the data's bytes as they are: 0.3's `datacontentencoding` (base64 in the JSON
                // format) does not apply to it, and a receiver that decoded the body by it would corrupt it.
                if name == "datacontenttype" || name == "datacontentencoding" || withheld == Some(name.as_str()) {
                    continue;
                }
                let value = value.canonical();
                match (ce_header_name(name), HeaderValue::from_bytes(cloudevent::encode_header_value(&value))) {
                    (Some(header_name), Ok(header)) => {
                        headers.insert(header_name, header);
                    }
                    // Validation keeps control characters out of attribute names and values, so this cannot happen.
                    _ => tracing::warn!(attribute = %name, "attribute cannot be a header; not sent"),
                }
            }
            let content_type = match (event.get_str("datacontenttype"), &event.data) {
                // As the `ce-` headers are written: bytes past ASCII (a quoted parameter's `obs-text`) go as they
                // are. Regression: `HeaderValue::from_str` refused them and the header was left out, silently.
                (Some(content_type), _) => match HeaderValue::from_bytes(content_type.as_bytes()) {
                    Ok(header) => Some(header),
                    Err(_) => {
                        tracing::warn!(%content_type, "datacontenttype cannot be a header; not sent");
                        None
                    }
                },
                (None, Some(EventData::Json(_))) => Some(HeaderValue::from_static("application/json")),
                (None, _) => None,
            };
            if let Some(content_type) = content_type {
                headers.insert(CONTENT_TYPE, content_type);
            }
            event.binary_body()
        }
        Format::Structured => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/cloudevents+json"));
            let mut json = String::with_capacity(event.json_len_bound());
            event.write_json_without(&mut json, withheld);
            Bytes::from(json)
        }
    };
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers;
    request
}

/// The most bytes `event` takes in a batch's body ([`batch_body`]): its JSON format, and the comma before the next.
pub(crate) fn batch_member_bound(event: &CloudEvent) -> usize {
    event.json_len_bound() + 1
}

/// CloudEvents' batched content mode: a JSON array of the events in the JSON format (without [`BROKER_TTL`]: a
/// batch goes to a subscriber), written into one buffer
/// sized by `json_bytes_bound`, the events' [`batch_member_bound`]s summed (as the dispatcher filled the batch: not
/// computed again here), so that it is never grown and copied while the batch is written.
pub(crate) fn batch_body<'a>(events: impl Iterator<Item = &'a CloudEvent>, json_bytes_bound: usize) -> Bytes {
    let mut body = String::with_capacity(json_bytes_bound + 2);
    body.push('[');
    for (i, event) in events.enumerate() {
        if i > 0 {
            body.push(',');
        }
        event.write_json_without(&mut body, Some(BROKER_TTL));
    }
    body.push(']');
    Bytes::from(body)
}

/// The POST of one batch: `application/cloudevents-batch+json`, the first event's `traceparent` (each event keeps
/// its own in the body), no `Prefer: reply`.
pub(super) fn build_batch_request(
    uri: &http::Uri,
    body: Bytes,
    first: Option<&CloudEvent>,
    token: Option<&str>,
) -> http::Request<Bytes> {
    use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/cloudevents-batch+json"));
    if let Some(traceparent) = first.and_then(|event| HeaderValue::try_from(traceparent(event)).ok()) {
        headers.insert(HeaderName::from_static("traceparent"), traceparent);
    }
    if let Some(token) = token
        && let Ok(mut bearer) = HeaderValue::try_from(format!("Bearer {token}"))
    {
        bearer.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, bearer);
    }
    request
}

/// The `ce-` header of an attribute. The spec's attributes (and those every Sluice delivery carries) are
/// static names, neither allocated nor parsed per delivery; an extension's name is built.
pub(super) fn ce_header_name(attribute: &str) -> Option<http::header::HeaderName> {
    let known = match attribute {
        "id" => "ce-id",
        "source" => "ce-source",
        "type" => "ce-type",
        "specversion" => "ce-specversion",
        "time" => "ce-time",
        "subject" => "ce-subject",
        "dataschema" => "ce-dataschema",
        "knativearrivaltime" => "ce-knativearrivaltime",
        "traceparent" => "ce-traceparent",
        "tracestate" => "ce-tracestate",
        "partitionkey" => "ce-partitionkey",
        _ => return http::header::HeaderName::try_from(format!("ce-{attribute}")).ok(),
    };
    Some(http::header::HeaderName::from_static(known))
}

/// Whether an event's `datacontenttype` is one of the CloudEvents formats' media types.
fn data_is_an_event_format(event: &CloudEvent) -> bool {
    event.get_str("datacontenttype").is_some_and(|content_type| {
        let essence = cloudevent::media_essence(content_type).0;
        essence == "application/cloudevents"
            || essence.starts_with("application/cloudevents+")
            || essence.starts_with("application/cloudevents-batch")
    })
}
