use super::*;
use sluice_cloudevent::AttrValue;

#[test]
fn retry_after_in_seconds_or_as_a_date() {
    assert_eq!(parse_retry_after("3", 0), Some(RetryAfter::Seconds(3)));
    assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 0), Some(RetryAfter::AtMs(1_445_412_480_000)));
    assert_eq!(parse_retry_after("soon", 0), None);
}

/// Regression: a delay in seconds past `u64` was ignored (the retry came after the backoff alone, not at the
/// cap), and the RFC 850 and asctime date forms, which RFC 9110 makes recipients accept, were refused.
#[test]
fn retry_after_past_u64_is_the_longest_delay_and_every_http_date_form_is_read() {
    assert_eq!(parse_retry_after("99999999999999999999", 0), Some(RetryAfter::Seconds(u64::MAX)));
    let at = Some(RetryAfter::AtMs(784_111_777_000));
    assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 0), at);
    assert_eq!(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", 0), at);
    assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", 0), at);
    assert_eq!(parse_retry_after("-3", 0), None);
    assert_eq!(parse_retry_after("", 0), None);
}

#[test]
fn ce_header_names_are_the_attribute_names_prefixed() {
    for attribute in [
        "id",
        "source",
        "type",
        "specversion",
        "time",
        "subject",
        "dataschema",
        "knativearrivaltime",
        "traceparent",
        "tracestate",
        "partitionkey",
        "myextension",
        "a1",
    ] {
        let name = ce_header_name(attribute).expect("a valid header name");
        assert_eq!(name.as_str(), format!("ce-{attribute}"));
    }
}

#[test]
fn traceparent_is_kept_or_derived_stably() {
    let mut event = cloudevent::from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#)
        .expect("valid event");
    let derived = traceparent(&event);
    assert!(cloudevent::is_traceparent(&derived), "{derived}");
    let (source, id) = (b"/s".as_slice(), b"1".as_slice());
    let high = cloudevent::stable_hash(&[source, b"\0", id]);
    let low = cloudevent::stable_hash(&[id, b"\0", source]);
    let span = cloudevent::stable_hash(&[b"span", source, id]);
    assert_eq!(derived, format!("00-{high:016x}{low:016x}-{span:016x}-01"), "derived from source and id");
    assert_eq!(derived, traceparent(&event));
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    event.attributes.insert("traceparent".into(), AttrValue::String(own.into()));
    assert_eq!(traceparent(&event), own);
}

#[test]
fn only_a_whole_w3c_traceparent_is_kept() {
    let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert!(cloudevent::is_traceparent(valid));
    for (invalid, why) in [
        ("", "empty"),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0", "flags one digit short"),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-011", "a digit too many"),
        ("00-0af7651916cd43dd8448eb211c80319c0b7ad6b7169203331-01", "a dash missing"),
        ("00-0af7651916cd43dd8448eb211c8031-9cb7ad6b7169203331-01", "a dash out of place"),
        ("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01", "not hex"),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-", "a fifth part"),
        ("0-00af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "version one digit"),
    ] {
        assert!(!cloudevent::is_traceparent(invalid), "{why}: {invalid}");
    }
    let mut hex = String::new();
    for value in [0, 1, 0xf, 0x10, 0xdead_beef, u64::MAX] {
        hex.clear();
        push_hex_u64(&mut hex, value);
        assert_eq!(hex, format!("{value:016x}"));
    }
}

/// A subscriber that answers the first request on each connection and, keeping it alive, closes it when the
/// next request arrives without answering (what a server closing an idle connection does as it is reused).
/// `answer_first: false`: it closes every connection without answering.
async fn closing_subscriber(answer_first: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("address"));
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut answered = !answer_first;
                let mut buffer = Vec::new();
                loop {
                    if read_request(&mut stream, &mut buffer).await.is_none() {
                        return;
                    }
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if answered {
                        return; // closes the connection: the request is lost with it
                    }
                    answered = true;
                    if stream.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, requests)
}

fn event() -> CloudEvent {
    cloudevent::from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"n":1}}"#)
        .expect("valid event")
}

#[tokio::test]
async fn regression_idle_connection_closed_as_it_is_reused_loses_no_event() {
    let (url, requests) = closing_subscriber(true).await;
    let sender = Sender::new(None).expect("client");
    let first = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0, ReplyUse::Wanted, None)
        .await;
    assert_eq!(first.status, Some(202), "{first:?}");
    // Goes out on the kept-alive connection, which the subscriber closes: sent again on a new one.
    let second = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0, ReplyUse::Wanted, None)
        .await;
    assert_eq!(second.status, Some(202), "{second:?}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn urls_a_uri_cannot_take_as_they_are_are_normalised_first() {
    assert_eq!(parse_uri("http://a.example:8080/x?y=1").expect("valid").to_string(), "http://a.example:8080/x?y=1");
    assert_eq!(parse_uri("http://a.example/with space").expect("valid").path(), "/with%20space");
    assert_eq!(parse_uri("http://bücher.example/").expect("valid").host(), Some("xn--bcher-kva.example"));
    for invalid in ["", "not a url", "/relative/only", "http://"] {
        assert!(parse_uri(invalid).is_err(), "{invalid:?}");
    }
}

/// Regression (review): `http://NAME.NAMESPACE.svc.cluster.local:80` went to port 80 of the node's address,
/// since hyper's connector keeps a resolved port only for a URL that names none.
#[test]
fn an_http_urls_default_port_is_dropped_and_any_other_port_kept() {
    let cases = [
        ("http://hello.default.svc.cluster.local:80/x?y=1", "http://hello.default.svc.cluster.local/x?y=1"),
        ("http://[::1]:80/", "http://[::1]/"),
        ("http://user@a.example:80/", "http://user@a.example/"),
        ("http://a.example:8080/", "http://a.example:8080/"),
        ("http://a.example:800/", "http://a.example:800/"),
        ("http://a.example:080/", "http://a.example:080/"),
        ("http://a.example/", "http://a.example/"),
        ("https://a.example:80/", "https://a.example:80/"),
    ];
    for (url, expected) in cases {
        let uri = parse_uri(url).expect("valid");
        assert_eq!(without_default_port(uri).to_string(), expected, "{url}");
    }
}

/// A destination that cannot be sent to (its URL or CA certificates invalid) is no network error: the attempt
/// says so, and the delivery is not retried (`send_with_retries`).
#[tokio::test]
async fn an_invalid_url_or_ca_is_unsendable_not_a_network_error() {
    let sender = Sender::new(None).expect("client");
    let bad_ca: Arc<str> = Arc::from("not a pem");
    for (url, ca) in [("http://svc:8o80/", None), ("https://127.0.0.1:9/", Some(&bad_ca))] {
        let result = sender
            .send(url, ca, Protocol::Http1, Format::Binary, &event(), None, 1_000, 0, ReplyUse::Wanted, None)
            .await;
        assert!(result.unsendable && result.status.is_none() && result.error.is_some(), "{url}: {result:?}");
    }
    let refused = sender
        .send(
            "http://127.0.0.1:9/",
            None,
            Protocol::Http1,
            Format::Binary,
            &event(),
            None,
            1_000,
            0,
            ReplyUse::Wanted,
            None,
        )
        .await;
    assert!(!refused.unsendable && refused.error.is_some(), "a connection refused may pass: {refused:?}");
}

/// Regression: `http://svc:8o80/` became a `Uri` with no port, and the events went to port 80, another server.
#[test]
fn a_port_that_is_not_one_is_refused_never_read_as_the_default() {
    for (url, port) in [
        ("http://svc:8080/x", Some(8080)),
        ("http://svc/x", None),
        ("http://svc:/x", None),
        ("http://[::1]:9090/", Some(9090)),
        ("http://[::1]/", None),
        ("http://u:p@svc:81/", Some(81)),
    ] {
        assert_eq!(parse_uri(url).expect(url).port_u16(), port, "{url}");
    }
    for invalid in
        ["http://svc:8o80/", "http://svc:99999/", "http://svc:65536/x", "https://[::1]:x/", "http://u:p@svc:8o/"]
    {
        assert!(parse_uri(invalid).is_err(), "{invalid:?}: {:?}", parse_uri(invalid));
    }
}

#[tokio::test]
async fn a_localhost_name_reaches_loopback_over_plain_http() {
    let (url, requests) = closing_subscriber(true).await;
    let port = url.trim_end_matches('/').rsplit(':').next().expect("a port").to_string();
    let sender = Sender::new(None).expect("client");
    let url = format!("http://hello.default.localhost:{port}/");
    let result = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0, ReplyUse::Wanted, None)
        .await;
    assert_eq!(result.status, Some(202), "{result:?}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_subscriber_that_never_answers_times_out_with_no_status() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("address"));
    // Accepts, reads and holds the connection without answering.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let sender = Sender::new(None).expect("client");
    let result =
        sender.send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 200, 0, ReplyUse::Wanted, None).await;
    assert_eq!(result.status, None, "{result:?}");
    assert_eq!(result.error.as_deref(), Some("no response within 200 ms"));
}

/// A subscriber that answers every request with `head` then `body`, and closes the connection.
async fn raw_subscriber(head: String, body: Vec<u8>) -> String {
    recording_subscriber(head, body).await.0
}

/// [`raw_subscriber`], keeping each request's head (lower-cased) to read back; its URL `http://ADDRESS/`.
async fn recording_subscriber(head: String, body: Vec<u8>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("address"));
    let heads: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let kept = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (head, body, kept) = (head.clone(), body.clone(), kept.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The request's head, then the body's bytes that came with it; the answer does not wait for more.
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                kept.lock().expect("heads").push(String::from_utf8_lossy(&request).to_lowercase());
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, heads)
}

/// One attempt at a subscriber that answers 200 with a binary reply declaring `content_length` bytes of data
/// and sending 2,000 of them.
async fn attempt_with_a_binary_reply(content_length: usize) -> AttemptResult {
    let head = format!(
        "HTTP/1.1 200 OK\r\nce-specversion: 1.0\r\nce-id: r1\r\nce-source: /reply\r\nce-type: t\r\n\
         content-type: application/octet-stream\r\ncontent-length: {content_length}\r\n\r\n"
    );
    let url = raw_subscriber(head, vec![b'x'; 2000]).await;
    let sender = Sender::new(None).expect("client");
    sender.send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0, ReplyUse::Wanted, None).await
}

/// Regression: a reply whose body was cut off (the connection closed before `Content-Length` bytes) was
/// parsed from what had arrived, and a binary reply was stored with its data cut short.
#[tokio::test]
async fn a_reply_cut_off_is_not_parsed_and_the_attempt_is_retried() {
    let result = attempt_with_a_binary_reply(5000).await;
    assert_eq!(result.status, Some(200), "{result:?}");
    assert!(result.reply.is_none(), "no reply is taken from a cut-off body: {result:?}");
    assert!(result.reply_cut.is_some(), "{result:?}");
}

#[tokio::test]
async fn a_reply_read_whole_is_parsed() {
    let result = attempt_with_a_binary_reply(2000).await;
    let reply = result.reply.expect("a reply").expect("a valid reply");
    assert!(matches!(&reply.data, Some(cloudevent::EventData::Bytes(data)) if data.len() == 2000), "{reply:?}");
    assert!(result.reply_cut.is_none());
}

/// Regression: a 200's body was read up to 4 MiB and parsed as a reply even when nobody took the reply (a
/// Subscription without `spec.reply`, a dead-letter sink), so a subscriber answering with large bodies held up
/// to 4 MiB per delivery of a consumer's window.
#[tokio::test]
async fn a_discarded_reply_is_read_within_its_small_limit_and_never_parsed() {
    let data_bytes = 1 << 20;
    let head = format!(
        "HTTP/1.1 200 OK\r\nce-specversion: 1.0\r\nce-id: r1\r\nce-source: /reply\r\nce-type: t\r\n\
         content-type: application/octet-stream\r\ncontent-length: {data_bytes}\r\n\r\n"
    );
    let url = raw_subscriber(head, vec![b'x'; data_bytes]).await;
    let sender = Sender::new(None).expect("client");

    let wanted = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0, ReplyUse::Wanted, None)
        .await;
    let reply = wanted.reply.expect("a reply").expect("a valid reply");
    assert!(matches!(&reply.data, Some(cloudevent::EventData::Bytes(data)) if data.len() == data_bytes), "{reply:?}");

    let discarded = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0, ReplyUse::Discarded, None)
        .await;
    assert_eq!(discarded.status, Some(200));
    assert!(discarded.reply.is_none(), "a discarded reply is not parsed: {:?}", discarded.reply);
    assert!(
        discarded.reply_cut.is_none() && discarded.error.is_none(),
        "{:?} {:?}",
        discarded.reply_cut,
        discarded.error
    );
    assert_eq!(discarded.body.len(), MAX_DISCARDED_BODY_BYTES, "read no further than its limit");
}

/// Regression: a 200 without an event (no `ce-specversion`, not structured: an HTML page, a JSON status) to a
/// Trigger, whose reply is wanted, was read up to the reply limit (4 MiB) before it was found to be no event, so a
/// subscriber answering with large pages held 4 MiB per delivery of the window. It is read as a discarded body.
#[tokio::test]
async fn a_2xx_without_an_event_is_read_within_the_small_limit_though_a_reply_is_wanted() {
    let body_bytes = 1 << 20;
    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {body_bytes}\r\n\r\n");
    let url = raw_subscriber(head, vec![b'x'; body_bytes]).await;
    let sender = Sender::new(None).expect("client");
    let result = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0, ReplyUse::Wanted, None)
        .await;
    assert_eq!(result.status, Some(200));
    assert!(result.reply.is_none() && result.reply_cut.is_none() && result.error.is_none(), "{result:?}");
    assert_eq!(result.body.len(), MAX_DISCARDED_BODY_BYTES, "read no further than a discarded body's limit");
}

/// The HTTP binding tells the modes apart by `Content-Type` first: a structured reply that also carries a
/// stray `ce-specversion` header is structured.
#[test]
fn a_structured_reply_with_a_stray_ce_header_is_structured() {
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", http::HeaderValue::from_static("application/cloudevents+json"));
    headers.insert("ce-specversion", http::HeaderValue::from_static("1.0"));
    let body = Bytes::from_static(br#"{"specversion":"1.0","id":"r","source":"/s","type":"t","data":{"n":2}}"#);
    let reply = parse_reply(&headers, body).expect("a reply").expect("valid");
    assert_eq!(reply.get_str("id"), Some("r"));
    headers.insert("content-type", http::HeaderValue::from_static("application/json"));
    for (name, value) in [("ce-id", "b"), ("ce-source", "/s"), ("ce-type", "t")] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    let binary = parse_reply(&headers, Bytes::from_static(b"{}")).expect("a reply").expect("valid");
    assert_eq!(binary.get_str("id"), Some("b"));
}

/// Regression: a 200 in batched mode was taken for a response without a reply, and its events were dropped
/// without a word. It is an invalid reply (the delivery dead-letters it, saying why).
#[test]
fn a_batched_reply_is_refused_not_dropped() {
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", http::HeaderValue::from_static("application/cloudevents-batch+json; charset=utf-8"));
    assert!(carries_an_event(&headers), "read as a reply, within the reply's limit");
    let body = Bytes::from_static(br#"[{"specversion":"1.0","id":"r","source":"/s","type":"t"}]"#);
    let refused = parse_reply(&headers, body).expect("not taken for no reply").expect_err("not a reply");
    assert!(refused.contains("batched mode"), "{refused}");
}

#[tokio::test]
async fn a_closed_port_is_a_connection_failure_and_not_resent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("address"));
    drop(listener);
    let sender = Sender::new(None).expect("client");
    let result = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0, ReplyUse::Wanted, None)
        .await;
    assert_eq!(result.status, None, "{result:?}");
    let error = result.error.expect("an error");
    assert!(error.starts_with("connection failed"), "{error}");
}

/// Regression (found by an exploratory test): a subscriber that takes the request on a new connection and drops
/// it (it crashed on the event) was sent it again at once, so each attempt reached it twice. The resend is for a
/// kept-alive connection closed as it was reused only (the test above).
#[tokio::test]
async fn regression_a_subscriber_that_drops_a_new_connection_is_not_sent_the_request_again() {
    let (url, requests) = closing_subscriber(false).await;
    let sender = Sender::new(None).expect("client");
    let result = sender
        .send(&url, None, Protocol::Http1, Format::Structured, &event(), None, 5_000, 0, ReplyUse::Wanted, None)
        .await;
    assert_eq!(result.status, None, "{result:?}");
    assert!(result.error.is_some());
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Regression: every response body was read up to 4 MiB and held through the retry's backoff, so subscribers
/// answering 5xx with large pages pinned up to 4 MiB per delivery waiting. Of a body that is not a 200's only
/// `knativeerrordata`'s first KiB is read, and that is no error.
#[tokio::test]
async fn of_an_error_page_only_the_first_kib_is_read() {
    let page = vec![b'e'; 64 * 1024];
    let head = format!("HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n", page.len());
    let url = raw_subscriber(head, page).await;
    let sender = Sender::new(None).expect("client");
    let result = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0, ReplyUse::Wanted, None)
        .await;
    assert_eq!(result.status, Some(503));
    assert_eq!(result.body.len(), MAX_ERROR_DATA_BYTES);
    assert_eq!(result.error, None, "{result:?}");
}

/// A subscriber that answers one request with `response` and hands over that request (head and body).
async fn capturing_subscriber(response: &'static [u8]) -> (String, tokio::sync::oneshot::Receiver<(String, Vec<u8>)>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("address"));
    let (captured, receiver) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        if let Some(request) = read_request(&mut stream, &mut Vec::new()).await {
            let _ = stream.write_all(response).await;
            let _ = captured.send(request);
        }
    });
    (url, receiver)
}

/// Reads one whole request (its head, then the body its content-length names) from `stream` into `buffer`, and
/// takes it out: (the head lower-cased, the body). `None` when the connection ends first.
async fn read_request(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= head_end + 4 + length {
                let body = buffer[head_end + 4..head_end + 4 + length].to_vec();
                buffer.drain(..head_end + 4 + length);
                return Some((head, body));
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn a_batch_goes_as_one_json_array_and_its_response_is_no_reply() {
    // A 200 that looks like a binary reply: a batch's response settles the batch and nothing else.
    let (url, captured) = capturing_subscriber(
        b"HTTP/1.1 200 OK\r\nce-specversion: 1.0\r\nce-id: r\r\nce-source: /r\r\nce-type: t\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    let headers: [(&str, &[u8]); 4] =
        [("ce-specversion", b"1.0"), ("ce-id", b"2"), ("ce-source", b"/s"), ("ce-type", b"u")];
    let binary = cloudevent::from_binary(headers, Some(b"text/plain"), Bytes::from_static(b"plain text"));
    let events: Vec<(u64, Arc<CloudEvent>)> = vec![(7, Arc::new(event())), (9, Arc::new(binary.expect("valid event")))];
    let sender = Sender::new(None).expect("client");
    let bound = events.iter().map(|(_, event)| batch_member_bound(event)).sum();
    let result = sender.send_batch(&url, None, Protocol::Http1, &events, bound, None, 5_000, 0).await;
    assert_eq!(result.status, Some(200), "{result:?}");
    assert!(result.reply.is_none() && result.reply_cut.is_none() && result.error.is_none(), "{result:?}");
    let (head, body) = captured.await.expect("the request");
    assert!(head.contains("content-type: application/cloudevents-batch+json"), "{head}");
    assert!(!head.contains("prefer:"), "a batch asks for no reply: {head}");
    assert!(head.contains("traceparent: 00-"), "{head}");
    let received = cloudevent::from_batch(&body, 10).expect("a valid batch");
    // Text data comes back as a JSON string: the same attributes and the same bytes for a binary-mode reader.
    let seen = |e: &CloudEvent| (e.attributes.clone(), e.binary_body());
    let sent: Vec<_> = events.iter().map(|(_, event)| seen(event)).collect();
    assert_eq!(received.iter().map(seen).collect::<Vec<_>>(), sent, "every event, in order, attributes and data");
}

/// Regression: a `datacontenttype` with bytes past ASCII in a quoted parameter (valid as HTTP's `obs-text`) was
/// refused by `HeaderValue::from_str`, and binary-mode deliveries went out without a `Content-Type`.
#[test]
fn a_content_type_with_bytes_past_ascii_is_sent_as_they_are() {
    let event = cloudevent::from_structured(
        r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain; name=\"résumé.txt\"","data":"x"}"#
            .as_bytes(),
    )
    .expect("a valid event");
    let uri: http::Uri = "http://s.example/".parse().expect("uri");
    let request = build_request(&uri, Format::Binary, &event, None, None, ReplyUse::Wanted);
    let content_type = request.headers().get(http::header::CONTENT_TYPE).expect("a Content-Type");
    assert_eq!(content_type.as_bytes(), "text/plain; name=\"résumé.txt\"".as_bytes());
}

/// Regression: an event whose `datacontenttype` is `application/cloudevents+json` went in binary mode with that
/// `Content-Type`, so the receiver read its data as the event: the outer event was swapped for the inner one.
#[test]
fn an_event_whose_data_is_an_event_goes_in_structured_mode() {
    let outer = cloudevent::from_structured(
        br#"{"specversion":"1.0","id":"outer","source":"/s","type":"wrap","datacontenttype":"application/cloudevents+json","data":{"specversion":"1.0","id":"inner","source":"/i","type":"t"}}"#,
    )
    .expect("a valid event");
    let uri: http::Uri = "http://s.example/".parse().expect("uri");
    for content_type in ["application/cloudevents+json", "application/cloudevents-batch+json; charset=utf-8"] {
        let mut event = outer.clone();
        event.attributes.insert("datacontenttype".into(), cloudevent::AttrValue::String(content_type.into()));
        let request = build_request(&uri, Format::Binary, &event, None, None, ReplyUse::Wanted);
        let sent = request.headers().get(http::header::CONTENT_TYPE).and_then(|c| c.to_str().ok());
        assert_eq!(sent.map(|c| cloudevent::media_essence(c).0), Some("application/cloudevents+json".into()));
        assert!(!request.headers().contains_key("ce-id"), "structured: no ce- headers");
        let received = cloudevent::from_structured(request.body()).expect("the event");
        assert_eq!(received, event, "the outer event, whole");
    }
    // Any other data type stays binary.
    let plain = cloudevent::from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{}}"#)
        .expect("a valid event");
    let request = build_request(&uri, Format::Binary, &plain, None, None, ReplyUse::Wanted);
    assert_eq!(request.headers().get("ce-id").and_then(|v| v.to_str().ok()), Some("1"));
}

/// The batch is written into one buffer, event after event: the same text as each event's JSON format joined.
#[test]
fn a_batch_body_is_each_events_json_in_one_array() {
    let text = cloudevent::from_structured(
        br#"{"specversion":"1.0","id":"q\"1","source":"/s","type":"t","n":7,"datacontenttype":"text/plain","data":"a\n\u0001"}"#,
    )
    .expect("valid event");
    let mut bytes = cloudevent::from_structured(
        br#"{"specversion":"1.0","id":"2","source":"/s","type":"t","data_base64":"AAEC/w=="}"#,
    )
    .expect("valid event");
    bytes.attributes.insert("ok".into(), cloudevent::AttrValue::Boolean(true));
    let events = [event(), text, bytes];
    let bound = events.iter().map(batch_member_bound).sum();
    let body = batch_body(events.iter(), bound);
    assert!(body.len() <= bound + 2, "{} > {bound} + 2", body.len());
    let joined: Vec<String> = events.iter().map(CloudEvent::to_json_string).collect();
    assert_eq!(std::str::from_utf8(&body).expect("UTF-8"), format!("[{}]", joined.join(",")));
    assert_eq!(cloudevent::from_batch(&body, 10).expect("a valid batch"), events);
    assert_eq!(&*batch_body(std::iter::empty(), 0), b"[]");
}

#[test]
fn only_a_body_that_may_be_a_reply_is_read_until_the_deadline() {
    let (ms, grace) = (Duration::from_millis, UNWANTED_BODY_GRACE);
    assert_eq!(grace, Duration::from_secs(1), "docs/dispatch.md states it");
    for (reply_use, status, remaining, expected, why) in [
        (ReplyUse::Wanted, 200, ms(20_000), ms(20_000), "a reply: the whole attempt's time"),
        (ReplyUse::Wanted, 200, ms(300), ms(300), "a reply, late in the attempt"),
        (ReplyUse::Wanted, 202, ms(20_000), grace, "a 202 carries no reply"),
        (ReplyUse::Discarded, 200, ms(20_000), grace, "nobody takes the reply"),
        (ReplyUse::Wanted, 503, ms(20_000), grace, "an error page"),
        (ReplyUse::Discarded, 500, ms(300), ms(300), "never past the attempt's deadline"),
        (ReplyUse::Wanted, 404, Duration::ZERO, Duration::ZERO, "no time left"),
    ] {
        assert_eq!(body_read_time(reply_use, status, remaining), expected, "{why}");
    }
}

/// A subscriber that answers every request with `head` (a chunked response) and one chunk, `chunk`, and then
/// neither ends the body nor closes the connection.
async fn unfinished_body_subscriber(head: &'static str, chunk: &'static [u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request(&mut stream, &mut Vec::new()).await.is_none() {
                    return;
                }
                let mut response = head.as_bytes().to_vec();
                response.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                response.extend_from_slice(chunk);
                response.extend_from_slice(b"\r\n");
                if stream.write_all(&response).await.is_err() {
                    return;
                }
                // Holds the connection open, the body unfinished, until the test's runtime ends.
                std::future::pending::<()>().await;
            });
        }
    });
    url
}

/// Well under the 20 s attempt timeout the tests below set, well over the grace.
const SETTLED_WITHIN: Duration = Duration::from_secs(5);

/// Regression: an error page whose body never finished held the attempt for its whole timeout (30 s by
/// default) though its status had settled it, and the bytes that had come were dropped from `knativeerrordata`.
#[tokio::test]
async fn an_unfinished_error_page_settles_the_attempt_after_the_grace_with_what_came() {
    let head = "HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n";
    let url = unfinished_body_subscriber(head, b"partial page").await;
    let (sender, event) = (Sender::new(None).expect("client"), event());
    let attempt =
        sender.send(&url, None, Protocol::Http1, Format::Binary, &event, None, 20_000, 0, ReplyUse::Wanted, None);
    let result = tokio::time::timeout(SETTLED_WITHIN, attempt).await.expect("settled long before the 20 s timeout");
    assert_eq!(result.status, Some(503), "{result:?}");
    assert_eq!(result.body.as_ref(), b"partial page", "what came is kept for knativeerrordata");
    let error = result.error.expect("why the body is short");
    assert!(error.contains("not complete within 1000 ms"), "{error}");
}

/// The same for a 2xx whose body nobody takes: the delivery is done once its grace is over.
#[tokio::test]
async fn an_unfinished_discarded_body_settles_the_attempt_after_the_grace() {
    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let url = unfinished_body_subscriber(head, b"never ends").await;
    let (sender, event) = (Sender::new(None).expect("client"), event());
    let attempt =
        sender.send(&url, None, Protocol::Http1, Format::Binary, &event, None, 20_000, 0, ReplyUse::Discarded, None);
    let result = tokio::time::timeout(SETTLED_WITHIN, attempt).await.expect("settled long before the 20 s timeout");
    assert_eq!(result.status, Some(200), "{result:?}");
    assert_eq!(result.body.as_ref(), b"never ends");
    assert!(result.reply.is_none() && result.reply_cut.is_none(), "{result:?}");
}

/// A body that may be a reply gets the attempt's whole time, not the grace; cut off at the deadline, it is not
/// parsed, and what came is kept.
#[tokio::test]
async fn an_unfinished_reply_is_read_until_the_deadline_and_counts_as_cut_off() {
    let head = "HTTP/1.1 200 OK\r\nce-specversion: 1.0\r\nce-id: r1\r\nce-source: /reply\r\nce-type: t\r\n\
                content-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
    let url = unfinished_body_subscriber(head, b"partial").await;
    let sender = Sender::new(None).expect("client");
    let started = tokio::time::Instant::now();
    let result = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 1_500, 0, ReplyUse::Wanted, None)
        .await;
    assert!(started.elapsed() >= Duration::from_millis(1_450), "read past the grace: {:?}", started.elapsed());
    assert_eq!(result.status, Some(200), "{result:?}");
    assert!(result.reply.is_none(), "a cut-off reply is never parsed: {result:?}");
    assert_eq!(result.reply_cut.as_deref(), Some("response body not complete within 1500 ms"));
    assert_eq!(result.body.as_ref(), b"partial");
}

/// Regression (found by an exploratory test): a subscriber URL's `user:password@` was dropped, where Knative's
/// Go client sends it as Basic authentication, and dead letters carried the password in `knativeerrordest`.
#[tokio::test]
async fn a_urls_userinfo_is_sent_as_basic_authentication_and_not_as_the_host() {
    use base64::Engine as _;
    let accepted = "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let (url, heads) = recording_subscriber(accepted.into(), Vec::new()).await;
    let address = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let sender = Sender::new(None).expect("client");
    let url = format!("http://us%40er:p%3Ass@{address}/path?q=1");
    let result = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0, ReplyUse::Wanted, None)
        .await;
    assert_eq!(result.status, Some(202), "{result:?}");
    let head = heads.lock().expect("heads").first().cloned().expect("one request");
    let basic = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss").to_lowercase();
    assert!(head.starts_with("post /path?q=1 http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nauthorization: basic {basic}\r\n")), "{head}");
    assert!(head.contains(&format!("\r\nhost: {address}\r\n")) && !head.contains("p%3ass"), "{head}");
    // A token of the delivery's own (OIDC) wins, as in Go's client.
    let with_token = sender
        .send(&url, None, Protocol::Http1, Format::Binary, &event(), Some("t"), 5_000, 0, ReplyUse::Wanted, None)
        .await;
    assert_eq!(with_token.status, Some(202), "{with_token:?}");
    let head = heads.lock().expect("heads").get(1).cloned().expect("two requests");
    assert!(head.contains("\r\nauthorization: bearer t\r\n") && !head.contains("basic"), "{head}");
}

#[test]
fn a_urls_password_is_redacted() {
    let table = [
        ("http://user:s3cret@host:8080/a?b#c", "http://user:xxxxx@host:8080/a?b#c"),
        ("http://user@host/", "http://user@host/"),
        ("http://host/a@b", "http://host/a@b"),
        ("https://u:p@h", "https://u:xxxxx@h"),
        ("not a url", "not a url"),
    ];
    for (url, shown) in table {
        assert_eq!(redacted_url(url), shown, "{url}");
    }
}

/// Regression: every subscriber got the Broker's `knativebrokerttl`, which Knative's broker deletes before it sends an
/// event to a Trigger's subscriber. Withheld in every mode from a subscriber; a dead-letter sink still gets it.
#[test]
fn the_brokers_ttl_is_withheld_from_subscribers_and_sent_to_a_sink() {
    let mut with_ttl = event();
    with_ttl.attributes.insert(BROKER_TTL.into(), cloudevent::AttrValue::Integer(254));
    let uri: http::Uri = "http://s.example/".parse().expect("uri");
    let binary = build_request(&uri, Format::Binary, &with_ttl, None, Some(BROKER_TTL), ReplyUse::Wanted);
    assert!(!binary.headers().contains_key("ce-knativebrokerttl"), "{:?}", binary.headers());
    assert!(binary.headers().contains_key("ce-id"), "the other attributes go");
    let structured = build_request(&uri, Format::Structured, &with_ttl, None, Some(BROKER_TTL), ReplyUse::Wanted);
    let received = cloudevent::from_structured(structured.body()).expect("the event");
    let mut expected = with_ttl.clone();
    expected.attributes.remove(BROKER_TTL);
    assert_eq!(received, expected, "the event whole but its TTL");
    let body = batch_body(std::iter::once(&with_ttl), batch_member_bound(&with_ttl));
    assert_eq!(cloudevent::from_batch(&body, 10).expect("a valid batch"), [expected]);
    let to_sink = build_request(&uri, Format::Binary, &with_ttl, None, None, ReplyUse::Discarded);
    assert_eq!(to_sink.headers().get("ce-knativebrokerttl").and_then(|v| v.to_str().ok()), Some("254"));
    // Regression: a sink, whose response is never read as a reply, was asked for one (`Prefer: reply`).
    assert!(!to_sink.headers().contains_key("prefer"), "{:?}", to_sink.headers());
    assert_eq!(binary.headers().get("prefer").and_then(|v| v.to_str().ok()), Some("reply"), "a subscriber's is used");
}
