//! Tests of the delivery shell's pure decisions: which protocol a destination is sent with, and what a dead
//! letter keeps of the last answer.

use super::*;

#[test]
fn the_subscriber_protocol_applies_to_the_subscriber_url_only() {
    let subscriber = "http://subscriber.default.svc/";
    for (url, subscriber_protocol, expected, why) in [
        (subscriber, Protocol::H2c, Protocol::H2c, "the subscriber speaks h2c"),
        (subscriber, Protocol::Http1, Protocol::Http1, "the subscriber speaks HTTP/1.1"),
        ("http://sink.default.svc/", Protocol::H2c, Protocol::Http1, "a dead-letter sink is another server"),
        ("http://reply.default.svc/", Protocol::H2c, Protocol::Http1, "a reply address is another server"),
        ("http://sink.default.svc/", Protocol::Http1, Protocol::Http1, "HTTP/1.1 everywhere"),
        ("http://subscriber.default.svc/other", Protocol::H2c, Protocol::Http1, "another path is another URL"),
    ] {
        assert_eq!(protocol_towards(url, subscriber, subscriber_protocol), expected, "{why}: {url}");
    }
}

fn event() -> CloudEvent {
    sluice_cloudevent::from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"n":1}}"#)
        .expect("valid event")
}

fn answered(status: Option<u16>, body: Bytes) -> AttemptResult {
    AttemptResult { status, body, ..AttemptResult::default() }
}

/// Regression: the failure shared the last response's body (up to 4 MiB), which the dead letter then held
/// through the sink's whole retry schedule, though `knativeerrordata` keeps 1 KiB of it.
#[test]
fn a_failure_keeps_a_copy_of_the_kib_knativeerrordata_keeps_and_not_the_body() {
    let body = Bytes::from(vec![b'e'; 8 * MAX_ERROR_DATA_BYTES]);
    let result = answered(Some(503), body);
    let failure = failure_from("http://subscriber/", &result, "retries exhausted".into());
    assert_eq!(failure.data.len(), MAX_ERROR_DATA_BYTES);
    let body_bytes = result.body.as_ptr_range();
    assert!(!body_bytes.contains(&failure.data.as_ptr()), "a copy, not a view of the body's allocation");
    drop(result);
    assert!(failure.data.iter().all(|b| *b == b'e'), "the copy outlives the response");

    let dead = with_error_attributes(&event(), &failure, Some(7));
    let data = dead.get_str("knativeerrordata").expect("knativeerrordata");
    let decoded = base64::engine::general_purpose::STANDARD.decode(data).expect("base64");
    assert_eq!(decoded, vec![b'e'; MAX_ERROR_DATA_BYTES], "exactly the first KiB, before base64");
    assert_eq!(dead.get("knativeerrorcode"), Some(&AttrValue::Integer(503)));
}

#[test]
fn a_failure_without_a_body_carries_the_error_or_the_reason() {
    let short = failure_from("d", &answered(Some(500), Bytes::from_static(b"oops")), "r".into());
    assert_eq!(short.data.as_ref(), b"oops");
    let timed_out = AttemptResult { error: Some("no response within 500 ms".into()), ..AttemptResult::default() };
    let failure = failure_from("d", &timed_out, "r".into());
    assert_eq!((failure.status, failure.data.as_ref()), (None, b"no response within 500 ms".as_slice()));
    let nothing = failure_from("d", &answered(Some(400), Bytes::new()), "non-retryable response 400".into());
    assert_eq!(nothing.data.as_ref(), b"non-retryable response 400");
}
