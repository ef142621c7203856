//! Broker ingress over real HTTP: the Python CloudEvents SDK's binary,
//! structured and batched events read back identical; a table of malformed
//! requests, each answered with its exact 4xx and a JSON body, storing nothing.

use std::process::Command;

use reqwest::StatusCode;
use sluice_cloudevent::{AttrValue, EventData};
use sluice_tests::{NodeProc, apply_resource, broker_object, end_offset, read_events, wait_for_broker};

const PARTITIONS: u32 = 2;
const STREAM: &str = "broker/default/default";

async fn single_node(extra: &[&str]) -> anyhow::Result<(tempfile::TempDir, NodeProc)> {
    let (root, node) = sluice_tests::start_single_node(PARTITIONS, extra).await?;
    apply_resource(&node.admin, broker_object("default", "default", serde_json::json!({}))).await?;
    wait_for_broker(&node.http, "/default/default").await?;
    Ok((root, node))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_events_read_back_identical() -> anyhow::Result<()> {
    let (_root, node) = single_node(&[]).await?;
    let url = format!("http://{}/default/default", node.http);
    let script = sluice_tests::manifest_dir().join("python").join("send_events.py");
    let output = Command::new("python3").arg(script).arg(&url).output()?;
    assert!(output.status.success(), "python sender failed: {}", String::from_utf8_lossy(&output.stderr));
    let statuses: Vec<String> = String::from_utf8(output.stdout)?.lines().map(str::to_string).collect();
    assert_eq!(statuses, ["202", "202", "202"]);

    let mut events = read_events(&node.admin, STREAM, PARTITIONS).await?;
    events.sort_by(|a, b| a.get_str("id").cmp(&b.get_str("id")));
    assert_eq!(events.len(), 4);
    let ids: Vec<_> = events.iter().map(|e| e.get_str("id").unwrap_or_default().to_string()).collect();
    assert_eq!(ids, ["py-1", "py-2", "py-3", "py-4"]);

    let binary = &events[0];
    assert_eq!(binary.get_str("subject"), Some("a subject"));
    assert_eq!(binary.get_str("myext"), Some("value"));
    assert_eq!(binary.get_str("datacontenttype"), Some("application/json"));
    assert_eq!(binary.data, Some(EventData::Bytes(br#"{"hello": "binary", "n": 1}"#.to_vec().into())));
    let structured = &events[1];
    assert_eq!(structured.data, Some(EventData::Json("\"plain text data\"".into())));
    assert_eq!(events[2].data, Some(EventData::Json(r#"{"i": 3}"#.into())));
    assert_eq!(events[3].data, Some(EventData::Bytes(vec![0u8, 1, 2].into())));
    for event in &events {
        assert_eq!(event.get("knativebrokerttl"), Some(&AttrValue::Integer(255)));
        assert!(event.get_str("knativearrivaltime").is_some_and(chrono_like), "{event:?}");
        assert_eq!(event.get_str("source"), Some("/python/sdk"));
    }
    Ok(())
}

fn chrono_like(t: &str) -> bool {
    t.len() >= 20 && t.ends_with('Z') && t.as_bytes()[4] == b'-'
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
    /// A substring of the JSON body's `error`.
    error: &'static str,
    /// The JSON body's `attribute`, when the error names one.
    attribute: Option<&'static str>,
}

fn binary_headers(skip: &str, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> =
        [("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t")]
            .iter()
            .filter(|(k, _)| *k != skip)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    for (k, v) in overrides {
        headers.retain(|(name, _)| name != k);
        headers.push((k.to_string(), v.to_string()));
    }
    headers
}

fn structured(body: &str) -> (Vec<(String, String)>, Vec<u8>) {
    (vec![("content-type".into(), "application/cloudevents+json".into())], body.as_bytes().to_vec())
}

fn batch(body: &str) -> (Vec<(String, String)>, Vec<u8>) {
    (vec![("content-type".into(), "application/cloudevents-batch+json".into())], body.as_bytes().to_vec())
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let post = "POST";
    let path = "/default/default";
    let mut add = |name: &'static str,
                   headers: Vec<(String, String)>,
                   body: Vec<u8>,
                   status: u16,
                   error: &'static str,
                   attribute: Option<&'static str>| {
        cases.push(Case { name, method: post, path, headers, body, status, error, attribute });
    };
    // Binary mode: required attributes missing or empty.
    for attr in ["ce-specversion", "ce-id", "ce-source", "ce-type"] {
        add(attr, binary_headers(attr, &[]), b"x".to_vec(), 400, "missing required attribute", Some(&attr[3..]));
    }
    for (name, header) in [("empty id", "ce-id"), ("empty source", "ce-source"), ("empty type", "ce-type")] {
        add(name, binary_headers("", &[(header, "")]), vec![], 400, "required attribute is empty", Some(&header[3..]));
    }
    // Spec versions.
    for (name, version) in [
        ("specversion 1.1", "1.1"),
        ("specversion 2.0", "2.0"),
        ("specversion 1", "1"),
        ("specversion 0.2", "0.2"),
        ("specversion empty", ""),
    ] {
        let error = if version.is_empty() { "required attribute is empty" } else { "unsupported specversion" };
        add(name, binary_headers("", &[("ce-specversion", version)]), vec![], 400, error, Some("specversion"));
    }
    // Typed attributes.
    for (name, header, value) in [
        ("time not rfc3339", "ce-time", "yesterday"),
        ("time without zone", "ce-time", "2018-04-05T17:31:00"),
        ("time bad month", "ce-time", "2018-13-05T17:31:00Z"),
        ("dataschema relative", "ce-dataschema", "relative/path"),
        ("dataschema with space", "ce-dataschema", "http://a b"),
        ("source with space", "ce-source", "/a b"),
        ("source bad scheme", "ce-source", "1http://x"),
        ("source bad escape", "ce-source", "/a%zz"),
        ("subject empty", "ce-subject", ""),
        ("control char", "ce-myext", "a\tb"),
    ] {
        let error = match header {
            "ce-time" => "RFC 3339",
            "ce-dataschema" => "not a URI",
            "ce-source" => "URI-reference",
            "ce-subject" => "empty",
            _ => "control character",
        };
        let attribute = Some(&header[3..]);
        add(name, binary_headers("", &[(header, value)]), vec![], 400, error, attribute);
    }
    for (name, header) in [("attribute name with underscore", "ce-my_ext"), ("attribute name with dot", "ce-my.ext")] {
        add(name, binary_headers("", &[(header, "v")]), vec![], 400, "invalid attribute name", Some(&header[3..]));
    }
    add(
        "ce-datacontenttype in binary",
        binary_headers("", &[("ce-datacontenttype", "text/plain")]),
        vec![],
        400,
        "not allowed in binary mode",
        Some("datacontenttype"),
    );
    add(
        "bad content type",
        binary_headers("", &[("content-type", "json")]),
        vec![],
        400,
        "not a media type",
        Some("datacontenttype"),
    );
    add(
        "knativebrokerttl zero",
        binary_headers("", &[("ce-knativebrokerttl", "0")]),
        vec![],
        400,
        "expired",
        Some("knativebrokerttl"),
    );
    add(
        "knativebrokerttl negative",
        binary_headers("", &[("ce-knativebrokerttl", "-1")]),
        vec![],
        400,
        "expired",
        Some("knativebrokerttl"),
    );
    add(
        "knativebrokerttl text",
        binary_headers("", &[("ce-knativebrokerttl", "ten")]),
        vec![],
        400,
        "not an integer",
        Some("knativebrokerttl"),
    );
    // No specversion anywhere: a plain body is read as binary mode.
    add(
        "plain json body",
        vec![("content-type".into(), "application/json".into())],
        b"{}".to_vec(),
        400,
        "missing required attribute",
        Some("specversion"),
    );
    add("no headers at all", vec![], b"hello".to_vec(), 400, "missing required attribute", Some("specversion"));

    // Structured mode.
    let ok = r#""specversion":"1.0","id":"1","source":"/s","type":"t""#;
    let s = |extra: &str| format!("{{{ok}{extra}}}");
    for (name, body, error, attribute) in [
        ("broken json", "{\"specversion\":".to_string(), "malformed JSON", None),
        ("trailing garbage", format!("{} x", s("")), "malformed JSON", None),
        ("json array in structured", "[]".to_string(), "JSON object", None),
        ("json string in structured", "\"x\"".to_string(), "JSON object", None),
        ("json number in structured", "5".to_string(), "JSON object", None),
        ("empty body structured", String::new(), "malformed JSON", None),
        (
            "missing id",
            r#"{"specversion":"1.0","source":"/s","type":"t"}"#.to_string(),
            "missing required attribute",
            Some("id"),
        ),
        (
            "missing source",
            r#"{"specversion":"1.0","id":"1","type":"t"}"#.to_string(),
            "missing required attribute",
            Some("source"),
        ),
        (
            "missing type",
            r#"{"specversion":"1.0","id":"1","source":"/s"}"#.to_string(),
            "missing required attribute",
            Some("type"),
        ),
        (
            "missing specversion",
            r#"{"id":"1","source":"/s","type":"t"}"#.to_string(),
            "missing required attribute",
            Some("specversion"),
        ),
        (
            "null id",
            r#"{"specversion":"1.0","id":null,"source":"/s","type":"t"}"#.to_string(),
            "missing required attribute",
            Some("id"),
        ),
        (
            "numeric id",
            r#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#.to_string(),
            "wrong type",
            Some("id"),
        ),
        (
            "boolean type",
            r#"{"specversion":"1.0","id":"1","source":"/s","type":true}"#.to_string(),
            "wrong type",
            Some("type"),
        ),
        (
            "numeric specversion",
            r#"{"specversion":1.0,"id":"1","source":"/s","type":"t"}"#.to_string(),
            "wrong type",
            Some("specversion"),
        ),
        (
            "structured specversion 9",
            r#"{"specversion":"9","id":"1","source":"/s","type":"t"}"#.to_string(),
            "unsupported specversion",
            Some("specversion"),
        ),
        (
            "empty source json",
            r#"{"specversion":"1.0","id":"1","source":"","type":"t"}"#.to_string(),
            "empty",
            Some("source"),
        ),
        ("object extension", s(r#","ext":{"a":1}"#), "wrong type", Some("ext")),
        ("array extension", s(r#","ext":[1]"#), "wrong type", Some("ext")),
        ("float extension", s(r#","ext":1.5"#), "wrong type", Some("ext")),
        ("huge integer extension", s(r#","ext":9999999999"#), "wrong type", Some("ext")),
        ("uppercase extension", s(r#","Ext":"v""#), "invalid attribute name", Some("Ext")),
        ("dash extension", s(r#","my-ext":"v""#), "invalid attribute name", Some("my-ext")),
        ("data and data_base64", s(r#","data":1,"data_base64":"AA==""#), "both present", Some("data_base64")),
        ("bad base64", s(r#","data_base64":"!!!""#), "not valid base64", Some("data_base64")),
        ("numeric base64", s(r#","data_base64":12"#), "must be a string", Some("data_base64")),
        ("bad time json", s(r#","time":"2018-04-05""#), "RFC 3339", Some("time")),
        ("bad dataschema json", s(r#","dataschema":"no-scheme""#), "not a URI", Some("dataschema")),
        ("bad datacontenttype json", s(r#","datacontenttype":"text""#), "not a media type", Some("datacontenttype")),
        ("empty subject json", s(r#","subject":"""#), "empty", Some("subject")),
        ("control char json", s(r#","subject":"a\u0007b""#), "control character", Some("subject")),
        (
            "0.3 bad encoding",
            r#"{"specversion":"0.3","id":"1","source":"/s","type":"t","datacontentencoding":"gzip"}"#.to_string(),
            "datacontentencoding",
            Some("datacontentencoding"),
        ),
        ("ttl zero json", s(r#","knativebrokerttl":0"#), "expired", Some("knativebrokerttl")),
        ("ttl negative json", s(r#","knativebrokerttl":-5"#), "expired", Some("knativebrokerttl")),
        ("ttl boolean json", s(r#","knativebrokerttl":true"#), "not an integer", Some("knativebrokerttl")),
    ] {
        let (headers, body) = structured(&body);
        add(name, headers, body, 400, error, attribute);
    }
    let (_, invalid_utf8) = structured("");
    let mut invalid = invalid_utf8;
    invalid.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":\"\xff\"}");
    add("invalid utf-8 structured", structured("").0, invalid, 400, "UTF-8", None);

    // Batches.
    let event = |id: &str| format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t"}}"#);
    for (name, body, error, attribute) in [
        ("object batch", event("1"), "JSON array", None),
        ("string batch", "\"x\"".to_string(), "JSON array", None),
        ("broken batch", "[{".to_string(), "malformed JSON", None),
        ("batch with number", format!("[{},1]", event("1")), "JSON object", None),
        (
            "batch second missing type",
            format!(r#"[{},{{"specversion":"1.0","id":"2","source":"/s"}}]"#, event("1")),
            "missing required attribute",
            Some("type"),
        ),
        (
            "batch third bad version",
            format!(r#"[{},{},{{"specversion":"3","id":"3","source":"/s","type":"t"}}]"#, event("1"), event("2")),
            "unsupported specversion",
            Some("specversion"),
        ),
        (
            "batch bad base64",
            r#"[{"specversion":"1.0","id":"2","source":"/s","type":"t","data_base64":"@"}]"#.to_string(),
            "not valid base64",
            Some("data_base64"),
        ),
        (
            "batch ttl zero",
            format!(
                r#"[{},{{"specversion":"1.0","id":"2","source":"/s","type":"t","knativebrokerttl":0}}]"#,
                event("1")
            ),
            "expired",
            Some("knativebrokerttl"),
        ),
    ] {
        let (headers, body) = batch(&body);
        add(name, headers, body, 400, error, attribute);
    }
    // Media types.
    for (name, content_type) in [
        ("cloudevents+xml", "application/cloudevents+xml"),
        ("cloudevents+protobuf", "application/cloudevents+protobuf"),
        ("batch+xml", "application/cloudevents-batch+xml"),
        ("structured latin1", "application/cloudevents+json; charset=iso-8859-1"),
        ("batch utf-16", "application/cloudevents-batch+json; charset=utf-16"),
        ("cloudevents bare", "application/cloudevents"),
    ] {
        add(
            name,
            vec![("content-type".into(), content_type.into())],
            event("1").into_bytes(),
            415,
            "unsupported media type",
            Some("content-type"),
        );
    }
    // Sizes.
    add("oversized binary body", binary_headers("", &[]), vec![b'x'; 70_000], 413, "too large", None);
    add(
        "oversized structured body",
        structured("").0,
        format!("{{{ok},\"data\":\"{}\"}}", "x".repeat(70_000)).into_bytes(),
        413,
        "too large",
        None,
    );
    add(
        "oversized batch body",
        batch("").0,
        format!("[{}]", vec![event("1"); 3000].join(",")).into_bytes(),
        413,
        "too large",
        None,
    );
    add(
        "batch with too many events",
        batch("").0,
        format!("[{}]", vec![event("1"); 101].join(",")).into_bytes(),
        413,
        "too many events",
        None,
    );
    let many_headers: Vec<(String, String)> =
        (0..60).map(|i| (format!("x-filler-{i}"), "v".into())).chain(binary_headers("", &[])).collect();
    add("too many headers", many_headers, vec![], 431, "too many headers", None);
    add(
        "headers too large",
        binary_headers("", &[("ce-myext", &"v".repeat(9000))]),
        vec![],
        431,
        "headers too large",
        None,
    );

    // Paths and methods.
    let mut push = |name: &'static str, method: &'static str, path: &'static str, status: u16, error: &'static str| {
        cases.push(Case {
            name,
            method,
            path,
            headers: binary_headers("", &[]),
            body: vec![],
            status,
            error,
            attribute: None,
        });
    };
    push("unknown broker", "POST", "/default/nope", 404, "unknown broker");
    push("unknown namespace", "POST", "/other/default", 404, "unknown broker");
    push("unknown channel", "POST", "/channels/default/nope", 404, "unknown channel");
    push("uppercase namespace", "POST", "/Default/default", 400, "malformed path");
    push("underscore name", "POST", "/default/my_broker", 400, "malformed path");
    push("three segments", "POST", "/a/b/c", 400, "malformed path");
    push("one segment", "POST", "/default", 400, "malformed path");
    push("root path", "POST", "/", 400, "malformed path");
    push("leading dash", "POST", "/-ns/b", 400, "malformed path");
    // Names are DNS-1123 subdomains (at most 253), namespaces labels (at most 63).
    let name_too_long: &'static str = format!("/default/{}", "a".repeat(254)).leak();
    push("name too long", "POST", name_too_long, 400, "malformed path");
    push("empty part of a name", "POST", "/default/team..events", 400, "malformed path");
    let namespace_too_long: &'static str = format!("/{}/default", "a".repeat(64)).leak();
    push("namespace too long", "POST", namespace_too_long, 400, "malformed path");
    push("namespace with a dot", "POST", "/team.a/default", 400, "malformed path");
    push("GET", "GET", "/default/default", 405, "method not allowed");
    push("PUT", "PUT", "/default/default", 405, "method not allowed");
    push("DELETE", "DELETE", "/default/default", 405, "method not allowed");
    push("PATCH", "PATCH", "/default/default", 405, "method not allowed");
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_exact_errors_and_store_nothing() -> anyhow::Result<()> {
    let (_root, node) = single_node(&[
        "--max-event-bytes",
        "65536",
        "--max-batch-bytes",
        "131072",
        "--max-batch-events",
        "100",
        "--max-headers",
        "50",
        "--max-header-bytes",
        "8192",
    ])
    .await?;
    let client = reqwest::Client::new();
    let cases = cases();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    eprintln!("{} malformed requests", cases.len());
    let mut names = std::collections::HashSet::new();
    for case in &cases {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
        let method = reqwest::Method::from_bytes(case.method.as_bytes())?;
        let mut request = client.request(method, format!("http://{}{}", node.http, case.path)).body(case.body.clone());
        for (k, v) in &case.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let response = request.send().await?;
        let status = response.status();
        let allow = response.headers().get("allow").map(|v| v.to_str().unwrap_or_default().to_string());
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?)
            .map_err(|e| anyhow::anyhow!("{}: body is not JSON: {e}", case.name))?;
        assert_eq!(status, StatusCode::from_u16(case.status)?, "{}: {body}", case.name);
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(case.error) || body["rule"].as_str().unwrap_or_default().contains(case.error),
            "{}: {body}",
            case.name
        );
        if let Some(attribute) = case.attribute {
            assert_eq!(body["attribute"].as_str(), Some(attribute), "{}: {body}", case.name);
        }
        if case.status == 405 {
            assert_eq!(allow.as_deref(), Some("POST, OPTIONS"), "{}", case.name);
        }
    }
    // A batch's error names the index of the bad event.
    let response = client
        .post(format!("http://{}/default/default", node.http))
        .header("content-type", "application/cloudevents-batch+json")
        .body(
            r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s"}]"#,
        )
        .send()
        .await?;
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["index"], 1);
    // An empty batch is valid in a request (JSON Event Format §4): accepted, and nothing stored (checked below).
    let response = client
        .post(format!("http://{}/default/default", node.http))
        .header("content-type", "application/cloudevents-batch+json")
        .body("[]")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "an empty batch");

    // Still healthy, and nothing was stored.
    assert_eq!(client.get(format!("http://{}/healthz", node.http)).send().await?.status(), StatusCode::OK);
    for partition in 0..PARTITIONS {
        assert_eq!(end_offset(&node.admin, STREAM, partition).await?, 0, "partition {partition} holds nothing");
    }
    // And a good event is still accepted.
    let response = client
        .post(format!("http://{}/default/default", node.http))
        .header("ce-specversion", "1.0")
        .header("ce-id", "ok")
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .body("fine")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_answers_the_webhook_handshake() -> anyhow::Result<()> {
    let (_root, node) = single_node(&[]).await?;
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("http://{}/default/default", node.http))
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(header("allow").as_deref(), Some("POST, OPTIONS"));
    assert_eq!(header("webhook-allowed-origin").as_deref(), Some("eventemitter.example.com"));
    assert_eq!(header("webhook-allowed-rate").as_deref(), Some("*"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_events_read_back_identical() -> anyhow::Result<()> {
    use cloudevents::binding::reqwest::RequestBuilderExt;
    use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};

    let (_root, node) = single_node(&[]).await?;
    let url = format!("http://{}/default/default", node.http);
    let client = reqwest::Client::new();
    let binary = EventBuilderV10::new()
        .id("rs-1")
        .source("/rust/sdk")
        .ty("rs.binary")
        .subject("a subject")
        .extension("myext", "value")
        .data("application/json", serde_json::json!({"hello": "binary"}))
        .build()?;
    let structured = EventBuilderV10::new()
        .id("rs-2")
        .source("/rust/sdk")
        .ty("rs.structured")
        .data("application/octet-stream", vec![0u8, 1, 2, 255])
        .build()?;
    let batched: Vec<_> = (3..=4)
        .map(|i| {
            EventBuilderV10::new()
                .id(format!("rs-{i}"))
                .source("/rust/sdk")
                .ty("rs.batch")
                .extension("seq", i as i64)
                .build()
        })
        .collect::<Result<_, _>>()?;

    let response = client.post(&url).event(binary.clone())?.send().await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = client
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(serde_json::to_vec(&structured)?)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = client
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_vec(&batched)?)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let mut stored = read_events(&node.admin, STREAM, PARTITIONS).await?;
    stored.sort_by(|a, b| a.get_str("id").cmp(&b.get_str("id")));
    assert_eq!(stored.len(), 4);
    let sent = [&binary, &structured, &batched[0], &batched[1]];
    for (event, original) in stored.iter().zip(sent) {
        assert_eq!(event.get_str("id"), Some(original.id()));
        assert_eq!(event.get_str("source"), Some(original.source().as_str()));
        assert_eq!(event.get_str("type"), Some(original.ty()));
        assert_eq!(event.get_str("specversion"), Some("1.0"));
        assert_eq!(event.get_str("datacontenttype"), original.datacontenttype());
        for (name, value) in original.iter_extensions() {
            assert_eq!(event.get(name).map(AttrValue::to_canonical_string), Some(value.to_string()), "{name}");
        }
    }
    assert_eq!(stored[0].get_str("subject"), Some("a subject"));
    assert_eq!(
        stored[0].data,
        Some(EventData::Bytes(serde_json::to_vec(&serde_json::json!({"hello": "binary"}))?.into()))
    );
    assert_eq!(stored[1].data, Some(EventData::Bytes(vec![0u8, 1, 2, 255].into())));
    assert_eq!(stored[2].get("seq"), Some(&AttrValue::Integer(3)), "JSON integers stay integers");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_keep_alive_both_work() -> anyhow::Result<()> {
    let (_root, node) = single_node(&[]).await?;
    for client in
        [reqwest::Client::builder().http2_prior_knowledge().build()?, reqwest::Client::builder().http1_only().build()?]
    {
        for i in 0..3 {
            let response = client
                .post(format!("http://{}/default/default", node.http))
                .header("ce-specversion", "1.0")
                .header("ce-id", format!("conn-{i}"))
                .header("ce-source", "/s")
                .header("ce-type", "t")
                .send()
                .await?;
            assert_eq!(response.status(), StatusCode::ACCEPTED, "{:?}", response.version());
        }
    }
    Ok(())
}

/// The Python (1.x) and JavaScript SDKs send `ce-` values unencoded: raw UTF-8 (or ISO-8859-1 for `é`), `%` as
/// data, quotes as data. Sluice answered 400 to `%` that started no escape and to raw UTF-8, decoded `%XX` the
/// sender meant literally, and unquoted `"whole"`. Every value is now stored exactly as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_style_header_values_are_stored_as_sent() -> anyhow::Result<()> {
    let (_root, node) = single_node(&[]).await?;
    let url = format!("http://{}/default/default", node.http);
    let client = reqwest::Client::new();
    let cases: [(&str, &[u8], &str); 8] = [
        ("utf8", "dl ✓ café".as_bytes(), "dl ✓ café"),
        ("latin1", b"caf\xe9", "café"),
        ("percent", b"100%", "100%"),
        ("bad-escape", b"a%zz %4 abc%", "a%zz %4 abc%"),
        ("escape", b"a%20b", "a%20b"),
        ("overlong", b"%C0%A0", "%C0%A0"),
        ("quoted", b"\"whole\"", "\"whole\""),
        ("quoted-escape", b"\"a \\\"b\\\"\"", "\"a \\\"b\\\"\""),
    ];
    for (id, value, _) in &cases {
        let response = client
            .post(&url)
            .header("ce-specversion", "1.0")
            .header("ce-id", *id)
            .header("ce-source", "/sdk/raw")
            .header("ce-type", "raw.header")
            .header("ce-myext", reqwest::header::HeaderValue::from_bytes(value)?)
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{id}: {}", response.text().await?);
    }
    let events = read_events(&node.admin, STREAM, PARTITIONS).await?;
    for (id, _, expected) in &cases {
        let event = events.iter().find(|e| e.get_str("id") == Some(*id)).expect("stored");
        assert_eq!(event.get_str("myext"), Some(*expected), "{id}");
    }
    Ok(())
}

/// Regression: a binary body of exactly `--max-event-bytes` with a few KiB of `ce-` headers passed the body check
/// and then got 413 when stored (the stored event holds the attributes too). The attributes are held to the
/// header limits, so the stored event may be that much larger; one byte more of body is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_body_at_the_limit_with_its_headers_is_taken() -> anyhow::Result<()> {
    let (_root, node) = single_node(&["--max-event-bytes", "65536"]).await?;
    let client = reqwest::Client::new();
    let post = |id: &'static str, body_len: usize| {
        let mut request = client
            .post(format!("http://{}/default/default", node.http))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/limit")
            .header("ce-type", "t")
            .header("content-type", "application/octet-stream");
        for i in 0..8 {
            request = request.header(format!("ce-ext{i}"), "v".repeat(400));
        }
        request.body(vec![b'x'; body_len]).send()
    };
    let response = post("at-the-limit", 65536).await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await?);
    let response = post("past-the-limit", 65537).await?;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    Ok(())
}

/// Regression: a request refused on its declared length alone (413) had its body read and dropped, so a
/// client waiting for `100 Continue` was told to go on, uploaded everything, and only then saw the 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_100_continue_is_refused_before_it_uploads() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_root, node) = single_node(&["--max-event-bytes", "65536"]).await?;
    let mut stream = tokio::net::TcpStream::connect(&node.http).await?;
    let head = "POST /default/default HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: big\r\nce-source: /s\r\n\
                ce-type: t\r\ncontent-length: 10485760\r\nexpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    // The server answers and closes; the client sent no byte of the body.
    tokio::time::timeout(std::time::Duration::from_secs(20), stream.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "the first answer is the refusal, not 100 Continue: {answer:?}");
    assert!(!answer.contains("100 Continue"), "{answer:?}");
    Ok(())
}

/// A node still applying a change may answer 503 (retry): a client that retries gets 202 from the Broker just
/// made and 404 from the one just deleted, never the other way round. (A review found that ingress looked
/// Brokers up in a table a background task rebuilt after each change, so that a definite 404 could come before
/// the rebuild; requests now rebuild a table older than the node's resources first. That window did not show in
/// this test's runs without the change: the test holds the property, it does not reproduce the race.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_takes_events_as_soon_as_its_apply_is_answered() -> anyhow::Result<()> {
    let (_root, node) = single_node(&[]).await?;
    let client = reqwest::Client::new();
    let mut resources =
        sluice_proto::admin::resources_client::ResourcesClient::connect(format!("http://{}", node.admin)).await?;
    // The first answer that is not "retry", as a client honouring 503 gets it.
    let send = |name: String, id: String| {
        let (client, url) = (client.clone(), format!("http://{}/default/{name}", node.http));
        async move {
            for _ in 0..200 {
                let response = client
                    .post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/s")
                    .header("ce-type", "t")
                    .send()
                    .await?;
                if response.status() != StatusCode::SERVICE_UNAVAILABLE {
                    return Ok::<_, anyhow::Error>((response.status(), response.text().await?));
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            anyhow::bail!("{url}: 503 for ever")
        }
    };
    for i in 0..20 {
        let name = format!("just-made-{i}");
        apply_resource(&node.admin, broker_object("default", &name, serde_json::json!({}))).await?;
        let (status, body) = send(name.clone(), format!("first-{i}")).await?;
        assert_eq!(status, StatusCode::ACCEPTED, "broker {name}: {body}");
        let broker = sluice_proto::admin::ResourceRef { kind: "Broker".into(), namespace: "default".into(), name };
        resources.delete(broker.clone()).await?;
        let (status, body) = send(broker.name.clone(), format!("after-{i}")).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "broker {}: {body}", broker.name);
    }
    Ok(())
}
