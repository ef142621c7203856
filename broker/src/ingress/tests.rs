use super::*;
use crate::cloudevent::AttrValue;

fn event_with(extensions: usize, value_len: usize) -> cloudevent::CloudEvent {
    let mut body = serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
    for i in 0..extensions {
        body[format!("x{i}")] = "v".repeat(value_len).into();
    }
    cloudevent::from_structured(body.to_string().as_bytes()).expect("valid")
}

/// Regression: a structured or batched event could carry any number of attributes (150,000 extensions in
/// 1 MiB), stored and then refused by every subscriber it was delivered to in binary mode.
#[test]
fn json_format_events_must_fit_the_headers_they_will_be_delivered_with() {
    let limits = attribute_limits(&IngressLimits::default());
    assert!(check_attributes(&[event_with(80, 10)], &limits, 255, false).is_ok());
    let many = check_attributes(&[event_with(200, 1)], &limits, 255, false).expect_err("200 attributes");
    assert_eq!((many.status, many.index), (413, None));
    assert!(many.rule.as_deref().is_some_and(|r| r.contains("at most 94 attributes")), "{many:?}");
    let large = check_attributes(&[event_with(1, 10), event_with(1, 20_000)], &limits, 255, true).expect_err("20 KB");
    assert_eq!((large.status, large.index), (413, Some(1)), "the batch's event is named");
}

/// Regression: attributes were counted as sent, so an event accepted at the limit (100 attributes) was
/// stored with `knativearrivaltime` and `knativebrokerttl` on top and delivered with six more headers, and
/// another Sluice Broker or Channel (the same limits) refused it with 431.
#[test]
fn an_event_at_the_limit_is_delivered_within_the_header_limits() {
    let ingress = IngressLimits::default();
    let limits = attribute_limits(&ingress);
    assert_eq!(
        (limits.max_attributes, limits.max_bytes),
        (ingress.max_headers - cloudevent::DELIVERY_HEADERS, ingress.max_header_bytes - 3072)
    );
    // (extensions besides the 4 required attributes, accepted): the node adds 2 attributes.
    for (extensions, accepted) in [(88, true), (89, false), (90, false)] {
        let event = event_with(extensions, 1);
        let checked = check_attributes(std::slice::from_ref(&event), &limits, 255, false);
        assert_eq!(checked.is_ok(), accepted, "{extensions} extensions: {checked:?}");
        if accepted {
            // Stored, then delivered: the event's attributes and what a delivery adds fit the header limit.
            let mut stored = event;
            cloudevent::apply_knative_attributes(&mut stored, 255, &"0".repeat(cloudevent::ARRIVAL_TIME_LEN))
                .expect("ttl");
            assert!(stored.attributes.len() + cloudevent::DELIVERY_HEADERS <= ingress.max_headers);
        }
    }
    // An event that already carries knativebrokerttl and knativearrivaltime (from another broker) has them
    // counted once.
    let mut forwarded = event_with(88, 1);
    forwarded.attributes.insert("knativebrokerttl".into(), AttrValue::Integer(254));
    assert!(check_attributes(std::slice::from_ref(&forwarded), &limits, 255, false).is_ok(), "93 + arrival time");
    forwarded.attributes.insert("knativearrivaltime".into(), AttrValue::String("2026-01-01T00:00:00Z".into()));
    assert!(check_attributes(&[forwarded], &limits, 255, false).is_ok(), "94: the node adds none");
}

/// Regression: errors of check_attributes named the `index` only in a batch of two or more events.
#[test]
fn a_batch_of_one_names_the_index() {
    let limits = attribute_limits(&IngressLimits::default());
    for (batch, index) in [(true, Some(0)), (false, None)] {
        let refused = check_attributes(&[event_with(200, 1)], &limits, 255, batch).expect_err("200");
        assert_eq!(refused.index, index, "batch: {batch}");
    }
}

/// Regression: `Content-Encoding` was ignored, and a gzipped body was stored as the event's data.
#[test]
fn a_content_coding_is_refused_with_415_naming_the_header() {
    let cases: [(&[&str], bool); 9] = [
        (&[], true),
        (&["identity"], true),
        (&["Identity"], true),
        (&[""], true),
        (&["gzip"], false),
        (&["br"], false),
        (&["identity, gzip"], false),
        (&["identity", "deflate"], false),
        (&["x-gzip"], false),
    ];
    for (codings, accepted) in cases {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/cloudevents+json"));
        for coding in codings {
            headers.append(header::CONTENT_ENCODING, HeaderValue::from_str(coding).expect("header"));
        }
        match check_head(&headers, &IngressLimits::default()) {
            Ok(_) => assert!(accepted, "{codings:?} accepted"),
            Err(response) => {
                assert!(!accepted, "{codings:?} refused");
                assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
                let offered = response.headers().get(header::ACCEPT_ENCODING);
                assert_eq!(offered, Some(&HeaderValue::from_static("identity")), "RFC 9110 §15.5.16");
                let e = check_content_encoding(&headers).expect_err("refused");
                assert_eq!(e.attribute.as_deref(), Some("content-encoding"));
                assert!(e.rule.as_deref().is_some_and(|r| r.contains("does not decode")), "{e:?}");
            }
        }
    }
}

/// Regression: a request refused before its body was read (401, 404, 503, 431, 415) left the body unread, and
/// closing an HTTP/1.1 connection on unread data resets it: the client could lose the answer.
#[tokio::test]
async fn a_refusal_before_the_body_reads_it_first() {
    let limits = IngressLimits { body_read_timeout: Duration::from_millis(200), ..IngressLimits::default() };
    let refusal = || error_response(&EventError::bad("refused").status(404));
    let closes = |response: &Response| response.headers().get(header::CONNECTION).is_some();
    let small = Body::from(vec![b'x'; 64 << 10]);
    assert!(!closes(&refuse_unread(refusal(), small, &HeaderMap::new(), &limits).await), "read whole: kept open");
    let endless = Body::from_stream(futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>());
    assert!(closes(&refuse_unread(refusal(), endless, &HeaderMap::new(), &limits).await), "cut by the timeout");
    let mut continuing = HeaderMap::new();
    continuing.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    let waiting = Body::from_stream(futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>());
    // A read timeout far above any pause of a loaded machine: had it waited for the body, it would take 60 s.
    let patient = IngressLimits { body_read_timeout: Duration::from_secs(60), ..IngressLimits::default() };
    let started = Instant::now();
    assert!(closes(&refuse_unread(refusal(), waiting, &continuing, &patient).await), "no body asked for");
    assert!(started.elapsed() < Duration::from_secs(30), "answered without waiting for a body");
}

#[test]
fn a_requests_events_are_counted_by_type_in_first_seen_order() {
    let batch = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"b"},
        {"specversion":"1.0","id":"2","source":"/s","type":"a"},
        {"specversion":"1.0","id":"3","source":"/s","type":"b"}]"#;
    let events = cloudevent::from_batch(batch, 10).expect("valid");
    assert_eq!(count_types(&events), vec![("b".to_string(), 2), ("a".to_string(), 1)]);
    assert_eq!(count_types(&[]), Vec::<(String, u64)>::new());
}

/// Regression: a `ce-specversion` header made any request binary, so a structured event carrying a stray one
/// was refused for a missing `ce-id`, or stored with its whole JSON envelope as data.
#[test]
fn the_content_type_decides_the_mode_before_the_ce_headers() {
    let mode = |content_type: Option<&str>, ce_specversion: bool| {
        let mut headers = HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).expect("header"));
        }
        if ce_specversion {
            headers.insert("ce-specversion", HeaderValue::from_static("1.0"));
        }
        match mode_of(&headers) {
            Ok(Mode::Binary) => "binary",
            Ok(Mode::Structured) => "structured",
            Ok(Mode::Batch) => "batch",
            Err(e) => {
                if e.status == 415 {
                    "415"
                } else {
                    "400"
                }
            }
        }
    };
    let cases = [
        (Some("application/cloudevents+json"), true, "structured"),
        (Some("application/cloudevents+json; charset=utf-8"), false, "structured"),
        (Some("application/cloudevents-batch+json"), true, "batch"),
        (Some("application/json"), true, "binary"),
        (Some("application/json"), false, "binary"),
        (None, true, "binary"),
        (None, false, "binary"),
        (Some("application/cloudevents+xml"), false, "415"),
        (Some("application/cloudevents+xml"), true, "binary"),
        (Some("application/cloudevents+json; charset=utf-16"), false, "415"),
        // Regression: a malformed parameter hid the charset, and the body was read as UTF-8.
        (Some("application/cloudevents+json; charset=utf-16; x"), false, "415"),
        (Some("application/cloudevents-batch+json; x"), false, "415"),
    ];
    for (content_type, ce_specversion, expected) in cases {
        assert_eq!(
            mode(content_type, ce_specversion),
            expected,
            "{content_type:?} with ce-specversion: {ce_specversion}"
        );
    }
}

#[test]
fn paths_map_to_targets() {
    assert_eq!(
        parse_target("/default/my-broker"),
        Ok(Target::Broker { namespace: "default".into(), name: "my-broker".into() })
    );
    assert_eq!(parse_target("/channels/ns/c1/"), Ok(Target::Channel { namespace: "ns".into(), name: "c1".into() }));
    // Names are DNS-1123 subdomains, as the API server stores them; namespaces are labels.
    assert_eq!(
        parse_target("/default/team-a.events"),
        Ok(Target::Broker { namespace: "default".into(), name: "team-a.events".into() })
    );
    let long_name = "x".repeat(253);
    assert!(parse_target(&format!("/a/{long_name}")).is_ok());
    for bad in [
        "/",
        "/only",
        "/a/b/c",
        "/Default/b",
        "/-a/b",
        "/a/b_c",
        "/a/b..c",
        "/a/.b",
        "/a.b/c",
        "/channels/x/y/z",
        &format!("/a/{long_name}x"),
        &format!("/{}/b", "x".repeat(64)),
    ] {
        assert_eq!(parse_target(bad).expect_err(bad).error, "malformed path", "{bad}");
    }
}

#[test]
fn knative_attributes_are_set_and_checked() {
    let settings = IngressSettings { ttl: 42, dedupe_window: None };
    let mut event =
        cloudevent::from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#).expect("valid");
    sluice_cloudevent::apply_knative_attributes(&mut event, settings.ttl, "2026-01-01T00:00:00Z").expect("accepted");
    assert_eq!(event.get("knativebrokerttl"), Some(&AttrValue::Integer(42)));
    assert_eq!(event.get_str("knativearrivaltime"), Some("2026-01-01T00:00:00Z"));
    for (ttl, ok) in
        [("5", true), ("0", false), ("-3", false), ("x", false), ("2147483647", true), ("2147483648", false)]
    {
        let mut event = event.clone();
        event.attributes.insert("knativebrokerttl".into(), AttrValue::String(ttl.into()));
        assert_eq!(sluice_cloudevent::apply_knative_attributes(&mut event, settings.ttl, "t").is_ok(), ok, "{ttl}");
    }
}

/// The request's trace context goes on an event without one, unless it would take the event past its limits
/// (the producer did not send it as the event's, and it must not get the event refused).
#[test]
fn a_requests_trace_context_is_adopted_when_it_fits() {
    let limits = attribute_limits(&IngressLimits::default());
    let parent = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    // Regression: only the first `tracestate` line was kept; W3C joins them with commas.
    let mut headers = HeaderMap::new();
    headers.append("tracestate", HeaderValue::from_static("rojo=00f067aa0ba902b7"));
    headers.append("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
    let mut events = vec![event_with(2, 1), event_with(88, 1)];
    adopt_trace_context(&mut events, &parent, headers.get_all("tracestate"), &limits, 255);
    assert_eq!(events[0].get_str("traceparent"), parent.to_str().ok());
    assert_eq!(events[0].get_str("tracestate"), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
    assert_eq!(events[1], event_with(88, 1), "at the limit already: left as sent");
    assert!(check_attributes(&events, &limits, 255, true).is_ok());
}
