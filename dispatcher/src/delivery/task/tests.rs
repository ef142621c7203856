//! Tests of the delivery shell's pure decisions: which protocol a destination is sent with, how long a failed
//! append waits before its next try, and what a dead letter says failed and keeps of the last answer.

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

#[test]
fn a_failed_append_waits_100_ms_doubling_up_to_5_s() {
    for (retry, expected_ms) in [
        (0, 100),
        (1, 200),
        (2, 400),
        (3, 800),
        (4, 1_600),
        (5, 3_200),
        (6, 5_000),
        (7, 5_000),
        (63, 5_000),
        (64, 5_000),
        (u32::MAX, 5_000),
    ] {
        assert_eq!(append_retry_wait_ms(retry), expected_ms, "retry {retry}");
    }
}

#[test]
fn a_replys_append_is_retried_within_its_bound_only() {
    let ms = Duration::from_millis;
    assert_eq!(REPLY_APPEND_RETRY_FOR, Duration::from_secs(10), "docs/dispatch.md states it");
    for (retry, elapsed, expected, why) in [
        (0, ms(0), Some(ms(100)), "the first retry"),
        (3, ms(1_500), Some(ms(800)), "doubling"),
        (6, ms(6_300), Some(ms(3_700)), "cut to what is left"),
        (9, ms(9_999), Some(ms(1)), "the last millisecond"),
        (9, ms(10_000), None, "spent exactly"),
        (0, ms(10_001), None, "an append that took longer than the bound"),
        (0, Duration::MAX, None, "whatever the clock says"),
    ] {
        assert_eq!(reply_append_wait(retry, elapsed), expected, "{why}");
    }
    // Whatever the schedule, the waits never add up past the bound.
    let (mut elapsed, mut retry) = (Duration::ZERO, 0);
    while let Some(wait) = reply_append_wait(retry, elapsed) {
        elapsed += wait;
        retry += 1;
    }
    assert_eq!(elapsed, REPLY_APPEND_RETRY_FOR);
    assert_eq!(retry, 7, "100 ms to 3.2 s, then the 3.7 s left");
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

/// Regression: a Trigger's reply that Sluice could not store (no leader, a full queue) dead-lettered the event
/// as if the subscriber had failed it, with `knativeerrorcode: 200`.
#[test]
fn a_dead_letter_names_what_failed_last() {
    let subscriber = "http://subscriber/";
    let last = answered(Some(200), Bytes::new());
    let not_stored = ReplyLegFailure::NotStored {
        stream: "broker/default/b".into(),
        reason: "the reply could not be stored in broker/default/b (tried for 10 s): no leader".into(),
    };
    let failure = final_failure(subscriber, &last, Some(not_stored), "reason".into());
    assert_eq!((failure.destination.as_str(), failure.status), ("broker/default/b", None));
    assert!(failure.data.starts_with(b"the reply could not be stored"), "{:?}", failure.data);
    let dead = with_error_attributes(&event(), &failure, None);
    assert_eq!(dead.get("knativeerrorcode"), None, "no status: the subscriber's 200 was no failure");

    let refused = ReplyLegFailure::NotDelivered {
        uri: "http://reply/".into(),
        result: answered(Some(503), Bytes::from_static(b"busy")),
    };
    let failure = final_failure(subscriber, &last, Some(refused), "reason".into());
    assert_eq!((failure.destination.as_str(), failure.status), ("http://reply/", Some(503)));
    assert_eq!(failure.data.as_ref(), b"busy");

    let failed = answered(Some(500), Bytes::from_static(b"down"));
    let failure = final_failure(subscriber, &failed, None, "reason".into());
    assert_eq!((failure.destination.as_str(), failure.status), (subscriber, Some(500)));
    assert_eq!(failure.data.as_ref(), b"down");
}
