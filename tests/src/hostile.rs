//! Malformed and hostile HTTP requests for an ingress, generated (pure: the same list every run). Each one
//! must be refused with a 4xx or closed by a limit; none may store anything.

use serde_json::{Value, json};

/// One request: what it is, and what is sent.
#[derive(Clone, Debug)]
pub struct Hostile {
    pub name: String,
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

fn binary_headers() -> Vec<(String, Vec<u8>)> {
    [("ce-specversion", "1.0"), ("ce-id", "h-1"), ("ce-source", "/hostile"), ("ce-type", "hostile.test")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn structured_event() -> Value {
    json!({"specversion": "1.0", "id": "h-1", "source": "/hostile", "type": "hostile.test", "data": {"a": 1}})
}

/// Attribute values that every event format must refuse, by attribute.
fn bad_values() -> Vec<(&'static str, Value)> {
    vec![
        ("specversion", json!("0.3-draft")),
        ("specversion", json!("2.0")),
        ("specversion", json!("")),
        ("specversion", json!(1.0)),
        ("id", json!("")),
        ("id", json!(42)),
        ("id", json!(null)),
        ("id", json!({"x": 1})),
        ("source", json!("")),
        ("source", json!(7)),
        ("source", json!("http://bad uri with spaces")),
        ("source", json!(["a"])),
        ("type", json!("")),
        ("type", json!(false)),
        ("type", json!(null)),
        ("time", json!("yesterday")),
        ("time", json!("2024-13-45T99:99:99Z")),
        ("time", json!(1700000000)),
        ("dataschema", json!("not a uri")),
        ("dataschema", json!("")),
        ("datacontenttype", json!("")),
        ("datacontenttype", json!(3)),
        ("subject", json!("")),
        ("subject", json!(5)),
        ("UPPERCASE", json!("x")),
        ("with-dash", json!("x")),
        ("under_score", json!("x")),
        ("ext", json!({"nested": true})),
        ("ext", json!([1, 2])),
        ("ext", json!(1.5)),
    ]
}

/// The value as a `ce-` header, when it is bad as a header too (a JSON number is a fine string in a header;
/// header names are lower-cased on the wire).
fn to_header_value(attribute: &str, value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::String(s) if attribute.chars().all(|c| !c.is_ascii_uppercase()) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// Every hostile request for the Broker at `path` (e.g. `/default/default`). `max_event_bytes` and
/// `max_batch_events` are the node's limits.
pub fn hostile_requests(path: &str, max_event_bytes: usize, max_batch_events: usize) -> Vec<Hostile> {
    let mut all = Vec::new();
    let mut push =
        |name: String, method: &'static str, path: String, headers: Vec<(String, Vec<u8>)>, body: Vec<u8>| {
            all.push(Hostile { name, method, path, headers, body });
        };
    let json_type = || ("content-type".to_string(), b"application/cloudevents+json".to_vec());
    let batch_type = || ("content-type".to_string(), b"application/cloudevents-batch+json".to_vec());

    // Each bad attribute value in each format: binary (as a header), structured, a batch of one, and a batch
    // where it hides among good events.
    for (attribute, value) in bad_values() {
        if let Some(header) = to_header_value(attribute, &value) {
            let mut headers: Vec<(String, Vec<u8>)> =
                binary_headers().into_iter().filter(|(k, _)| k != &format!("ce-{attribute}")).collect();
            headers.push((format!("ce-{attribute}"), header));
            push(format!("binary {attribute}={value}"), "POST", path.into(), headers, b"x".to_vec());
        }
        let mut event = structured_event();
        event[attribute] = value.clone();
        let bytes = event.to_string().into_bytes();
        push(format!("structured {attribute}={value}"), "POST", path.into(), vec![json_type()], bytes);
        let batch = json!([event]).to_string().into_bytes();
        push(format!("batch of one {attribute}={value}"), "POST", path.into(), vec![batch_type()], batch);
        for position in [0, 2, 4] {
            let mut events: Vec<Value> = (0..5)
                .map(|i| {
                    let mut good = structured_event();
                    good["id"] = json!(format!("good-{i}"));
                    good
                })
                .collect();
            events[position] = event.clone();
            let batch = Value::Array(events).to_string().into_bytes();
            push(format!("batch {attribute}={value} at {position}"), "POST", path.into(), vec![batch_type()], batch);
        }
    }

    // A required attribute missing, in each format.
    for missing in ["specversion", "id", "source", "type"] {
        let headers: Vec<(String, Vec<u8>)> =
            binary_headers().into_iter().filter(|(k, _)| k != &format!("ce-{missing}")).collect();
        if missing != "specversion" {
            push(format!("binary without {missing}"), "POST", path.into(), headers, b"x".to_vec());
        }
        let mut event = structured_event();
        event.as_object_mut().map(|o| o.remove(missing));
        push(
            format!("structured without {missing}"),
            "POST",
            path.into(),
            vec![json_type()],
            event.to_string().into_bytes(),
        );
    }

    // Two bad attributes at once (structured): the first refusal must not let the second through.
    let bad = bad_values();
    for (i, (first, first_value)) in bad.iter().enumerate() {
        for (second, second_value) in bad.iter().skip(i + 1) {
            if first == second {
                continue;
            }
            let mut event = structured_event();
            event[*first] = first_value.clone();
            event[*second] = second_value.clone();
            let body = event.to_string().into_bytes();
            push(
                format!("structured {first}={first_value} and {second}={second_value}"),
                "POST",
                path.into(),
                vec![json_type()],
                body,
            );
        }
    }

    // Truncated JSON at every byte, structured and batched: never valid.
    let mut long_event = structured_event();
    long_event["subject"] = json!("a subject");
    long_event["time"] = json!("2024-01-01T00:00:00Z");
    long_event["datacontenttype"] = json!("application/json");
    let whole = long_event.to_string();
    for cut in 1..whole.len() {
        let body = whole.as_bytes()[..cut].to_vec();
        push(format!("structured cut at {cut}"), "POST", path.into(), vec![json_type()], body.clone());
        let mut batch = b"[".to_vec();
        batch.extend(&body);
        push(format!("batch cut at {cut}"), "POST", path.into(), vec![batch_type()], batch);
    }

    // Bodies that are JSON but not events.
    for (i, body) in [
        "null",
        "true",
        "1",
        "\"event\"",
        "[]x",
        "{}",
        "{\"specversion\":\"1.0\"}",
        "[1,2,3]",
        "[null]",
        "[[]]",
        "{\"data\":",
        "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\",\"data_base64\":\"%%%\"}",
        "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\",\"data\":1,\"data_base64\":\"AA==\"}",
        "\u{feff}{\"specversion\":\"1.0\"}",
    ]
    .iter()
    .enumerate()
    {
        push(format!("structured not an event #{i}"), "POST", path.into(), vec![json_type()], body.as_bytes().to_vec());
        push(format!("batch not events #{i}"), "POST", path.into(), vec![batch_type()], body.as_bytes().to_vec());
    }
    // Deep nesting, a depth bomb for naive parsers.
    for depth in [64, 512, 4096, 20_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
        push(format!("batch nested {depth}"), "POST", path.into(), vec![batch_type()], body);
        let mut event = structured_event().to_string();
        event.insert_str(event.len() - 1, &format!(",\"deep\":{}1{}", "[".repeat(depth), "]".repeat(depth)));
        push(format!("structured nested {depth}"), "POST", path.into(), vec![json_type()], event.into_bytes());
    }

    // Too large: one event over the limit (each format), a batch over the event count.
    for extra in [1, 1024, max_event_bytes] {
        let data = "x".repeat(max_event_bytes + extra);
        push(format!("binary body +{extra}"), "POST", path.into(), binary_headers(), data.clone().into_bytes());
        let mut event = structured_event();
        event["data"] = json!(data);
        push(
            format!("structured body +{extra}"),
            "POST",
            path.into(),
            vec![json_type()],
            event.to_string().into_bytes(),
        );
    }
    let many: Vec<Value> = (0..=max_batch_events)
        .map(|i| {
            let mut e = structured_event();
            e["id"] = json!(format!("m-{i}"));
            e
        })
        .collect();
    push(
        "batch over the event limit".into(),
        "POST",
        path.into(),
        vec![batch_type()],
        Value::Array(many).to_string().into_bytes(),
    );

    // Media types and charsets.
    for (i, content_type) in [
        "application/cloudevents+xml",
        "application/cloudevents+json; charset=latin1",
        "application/cloudevents-batch+json; charset=utf-16",
        "application/cloudevents-batch+protobuf",
        "application/cloudevents",
    ]
    .iter()
    .enumerate()
    {
        let headers = vec![("content-type".to_string(), content_type.as_bytes().to_vec())];
        push(
            format!("content type #{i} {content_type}"),
            "POST",
            path.into(),
            headers,
            structured_event().to_string().into_bytes(),
        );
    }

    // Headers: non-ASCII and control bytes in values, too many, too large.
    for count in [101, 150] {
        let mut headers = binary_headers();
        headers.extend((0..count).map(|i| (format!("x-filler-{i}"), b"v".to_vec())));
        push(format!("{count} headers"), "POST", path.into(), headers, b"x".to_vec());
    }
    for size in [17 << 10, 30 << 10] {
        let mut headers = binary_headers();
        headers.push(("x-large".into(), vec![b'a'; size]));
        push(format!("a {size}-byte header"), "POST", path.into(), headers, b"x".to_vec());
    }

    // Paths and methods.
    for (i, bad_path) in [
        "/",
        "/default",
        "/default/default/extra",
        "/Default/default",
        "/default/UPPER",
        "/default/no_underscore",
        "/default/-leading",
        "/default/trailing-",
        "/channels/default",
        "/channels/x/y/z",
        "/%2e%2e/default",
        "/default/%64efault",
        "/default/no-such-broker",
        "/no-such-namespace/default",
        "/channels/default/none",
    ]
    .iter()
    .enumerate()
    {
        push(format!("path #{i} {bad_path}"), "POST", bad_path.to_string(), binary_headers(), b"x".to_vec());
    }
    let long = format!("/{}/{}", "a".repeat(64), "b".repeat(300));
    push("overlong names".into(), "POST", long, binary_headers(), b"x".to_vec());
    for method in ["GET", "PUT", "DELETE", "PATCH", "HEAD"] {
        push(format!("method {method}"), method, path.into(), binary_headers(), Vec::new());
    }
    all
}

/// Raw bytes sent as a whole HTTP/1.1 exchange (framing the client library would never produce).
pub fn raw_requests(path: &str, host: &str) -> Vec<(String, Vec<u8>)> {
    let head = |extra: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\nce-specversion: 1.0\r\nce-id: r\r\nce-source: /r\r\nce-type: r\r\n{extra}\r\n{body}"
        )
        .into_bytes()
    };
    let mut raw = vec![
        ("garbage".to_string(), b"\x00\x01\x02 not http at all\r\n\r\n".to_vec()),
        ("http/0.9".into(), format!("GET {path}\r\n").into_bytes()),
        ("bad version".into(), format!("POST {path} HTTP/9.9\r\nhost: {host}\r\n\r\n").into_bytes()),
        ("no host, bad header line".into(), format!("POST {path} HTTP/1.1\r\nnot a header\r\n\r\n").into_bytes()),
        ("two content-lengths".into(), head("content-length: 1\r\ncontent-length: 2\r\n", "x")),
        ("negative content-length".into(), head("content-length: -1\r\n", "")),
        ("content-length not a number".into(), head("content-length: ten\r\n", "")),
        ("bad chunk size".into(), head("transfer-encoding: chunked\r\n", "zz\r\nx\r\n0\r\n\r\n")),
        // Both framings (a request-smuggling vector): hyper reads by Transfer-Encoding alone and closes the
        // connection after answering (RFC 9112 §6.1); the chunked body here is not an event.
        (
            "chunked and length".into(),
            format!(
                "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/cloudevents+json\r\ntransfer-encoding: chunked\r\ncontent-length: 40\r\n\r\n1\r\n{{\r\n0\r\n\r\n"
            )
            .into_bytes(),
        ),
        ("unknown transfer-encoding".into(), head("transfer-encoding: gzip\r\n", "")),
        ("space before colon".into(), head("ce-extra : v\r\ncontent-length: 1\r\n", "x")),
        ("obsolete line folding".into(), head("x-folded: a\r\n b\r\ncontent-length: 1\r\n", "x")),
        ("control byte in ce-subject".into(), head("ce-subject: a\x01b\r\ncontent-length: 1\r\n", "x")),
        ("DEL in ce-subject".into(), head("ce-subject: a\x7fb\r\ncontent-length: 1\r\n", "x")),
        ("NUL in a header".into(), head("ce-subject: a\x00b\r\ncontent-length: 1\r\n", "x")),
    ];
    // Seeded random bytes: the same every run.
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    for i in 0..40 {
        let mut bytes = Vec::new();
        for _ in 0..(16 + i * 7) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push((seed & 0xff) as u8);
        }
        bytes.extend(b"\r\n\r\n");
        raw.push((format!("random bytes #{i}"), bytes));
    }
    raw
}
