use super::*;

fn headers(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static [u8])> {
    pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect()
}

const MINIMAL: [(&str, &str); 4] = [("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "/src"), ("ce-type", "t")];

fn binary(extra: &[(&'static str, &'static str)]) -> Result<CloudEvent, EventError> {
    let mut all = headers(&MINIMAL);
    all.extend(headers(extra));
    from_binary(all, Some(b"text/plain"), Bytes::from_static(b"hello"))
}

#[test]
fn binary_mode_keeps_attributes_and_body() {
    let event = binary(&[("CE-Subject", "x"), ("ce-myext", "Euro%20%E2%82%AC%20%F0%9F%98%80")]).expect("valid");
    assert_eq!(event.get_str("subject"), Some("x"));
    assert_eq!(event.get_str("myext"), Some("Euro € 😀"));
    assert_eq!(event.get_str("datacontenttype"), Some("text/plain"));
    assert_eq!(event.data, Some(EventData::Bytes(Bytes::from_static(b"hello"))));
}

#[test]
fn binary_mode_accepts_quoted_and_lower_case_percent_values() {
    let event = binary(&[("ce-myext", "\"a \\\"b\\\" %c3%a9\"")]).expect("valid");
    assert_eq!(event.get_str("myext"), Some("a \"b\" é"));
}

#[test]
fn binary_mode_refuses_bad_values() {
    for (header, value, attribute) in [
        ("ce-myext", "%C0%A0", "myext"),
        ("ce-myext", "%zz", "myext"),
        ("ce-myext", "%4", "myext"),
        ("ce-myext", "\"unterminated\\\"", "myext"),
        ("ce-datacontenttype", "text/plain", "datacontenttype"),
        ("ce-My_Ext", "v", "my_ext"),
        ("ce-time", "yesterday", "time"),
        ("ce-dataschema", "relative/path", "dataschema"),
        ("ce-subject", "", "subject"),
    ] {
        let err = binary(&[(header, value)]).expect_err(header);
        assert_eq!(err.status, 400);
        assert_eq!(err.attribute.as_deref(), Some(attribute), "{header}: {value}: {err}");
    }
}

#[test]
fn binary_mode_requires_the_required_attributes() {
    for missing in ["ce-specversion", "ce-id", "ce-source", "ce-type"] {
        let all: Vec<_> = headers(&MINIMAL).into_iter().filter(|(k, _)| *k != missing).collect();
        let err = from_binary(all, None, Bytes::new()).expect_err(missing);
        assert_eq!(err.attribute.as_deref(), Some(&missing[3..]));
        assert_eq!(err.error, "missing required attribute");
    }
    let all = headers(&[("ce-specversion", "1.0"), ("ce-id", ""), ("ce-source", "/s"), ("ce-type", "t")]);
    assert_eq!(from_binary(all, None, Bytes::new()).expect_err("empty id").error, "required attribute is empty");
}

#[test]
fn spec_versions_are_kept_as_sent() {
    let all = headers(&[
        ("ce-specversion", "0.3"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("ce-schemaurl", "rel"),
    ]);
    let event = from_binary(all, None, Bytes::new()).expect("0.3 is accepted");
    assert_eq!(event.spec_version(), "0.3");
    for bad in ["1.1", "2.0", "1", ""] {
        let all = vec![("ce-specversion", bad.as_bytes()), ("ce-id", b"1"), ("ce-source", b"/s"), ("ce-type", b"t")];
        let err = from_binary(all, None, Bytes::new()).expect_err(bad);
        assert_eq!(err.attribute.as_deref(), Some("specversion"), "{bad}");
    }
}

#[test]
fn structured_mode_keeps_data_byte_for_byte() {
    let body = br#"{"specversion":"1.0","id":"1","source":"urn:x","type":"t","datacontenttype":"application/json","data":{ "b": 1.50, "a":[1,2] },"ext":7,"flag":true,"nothing":null}"#;
    let event = from_structured(body).expect("valid");
    assert_eq!(event.data, Some(EventData::Json(r#"{ "b": 1.50, "a":[1,2] }"#.into())));
    assert_eq!(event.get("ext"), Some(&AttrValue::Integer(7)));
    assert_eq!(event.get("flag"), Some(&AttrValue::Boolean(true)));
    assert_eq!(event.get("nothing"), None, "null means absent");
    let base64 = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AAEC/w=="}"#;
    assert_eq!(
        from_structured(base64).expect("valid").data,
        Some(EventData::Bytes(Bytes::from_static(&[0, 1, 2, 255])))
    );
}

#[test]
fn structured_mode_refuses_bad_events() {
    let cases: &[(&[u8], Option<&str>)] = &[
        (b"not json", None),
        (b"[1]", None),
        (b"\"string\"", None),
        (br#"{"specversion":"1.0","id":"1","source":"/s"}"#, Some("type")),
        (br#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#, Some("id")),
        (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{"a":1}}"#, Some("ext")),
        (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":1.5}"#, Some("ext")),
        (
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#,
            Some("data_base64"),
        ),
        (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"***"}"#, Some("data_base64")),
        (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad":"x"}"#, Some("Bad")),
        (br#"{"specversion":"1.0","id":"1","source":"a b","type":"t"}"#, Some("source")),
        (
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"json"}"#,
            Some("datacontenttype"),
        ),
        (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"a\u0001b"}"#, Some("subject")),
    ];
    for (body, attribute) in cases {
        let err = from_structured(body).expect_err(&String::from_utf8_lossy(body));
        assert_eq!(err.status, 400);
        assert_eq!(err.attribute.as_deref(), *attribute, "{}: {err}", String::from_utf8_lossy(body));
    }
}

#[test]
fn batches_are_all_or_nothing_and_name_the_bad_index() {
    let ok = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"0.3","id":"2","source":"/s","type":"t"}]"#;
    assert_eq!(from_batch(ok, 10).expect("valid").len(), 2);
    let bad =
        br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s"}]"#;
    let err = from_batch(bad, 10).expect_err("bad second event");
    assert_eq!((err.index, err.attribute.as_deref()), (Some(1), Some("type")));
    assert_eq!(from_batch(b"[]", 10).expect_err("empty").error, "empty batch");
    assert_eq!(from_batch(b"{}", 10).expect_err("object").error, "a batch must be a JSON array");
    assert_eq!(from_batch(ok, 1).expect_err("too many").status, 413);
}

#[test]
fn stored_encoding_round_trips() {
    let event =
        from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","n":3,"data":"x"}"#).expect("valid");
    assert_eq!(CloudEvent::decode(&event.encode().expect("encode")).expect("decode"), event);
    assert!(CloudEvent::decode(b"\x09junk").is_err());
}

#[test]
fn uri_and_media_type_rules() {
    for ok in ["/s", "urn:event:from:myapi/resource/123", "https://example.com/a?b#c", "mailto:a@b", "%41", "rel/path"]
    {
        assert!(is_uri_reference(ok), "{ok}");
    }
    for bad in ["a b", "1http://x", "%4", "%zz", "a\"b"] {
        assert!(!is_uri_reference(bad), "{bad}");
    }
    assert!(is_absolute_uri("https://x/y") && !is_absolute_uri("/y") && !is_absolute_uri("y"));
    for ok in ["application/json", "text/plain; charset=utf-8", "application/cloudevents+json"] {
        assert!(is_media_type(ok), "{ok}");
    }
    for bad in ["json", "a/", "/b", "a b/c"] {
        assert!(!is_media_type(bad), "{bad}");
    }
    assert_eq!(
        media_essence("Application/CloudEvents+JSON; charset=UTF-8"),
        ("application/cloudevents+json".into(), Some("utf-8".into()))
    );
    assert!(is_json_media_type("application/vnd.x+json") && !is_json_media_type("text/json-ish"));
}

#[test]
fn partitions_are_stable_and_follow_partitionkey() {
    let a = from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#).expect("valid");
    // Fixed expectations: the hash must never change between builds.
    assert_eq!(stable_hash(&[b"/s", b"1"]), stable_hash(&[b"/s", b"1"]));
    assert_ne!(stable_hash(&[b"/s1", b""]), stable_hash(&[b"/s", b"1"]));
    assert_eq!(stable_hash(&[b""]), 0xcbf29ce484222325);
    assert_eq!(stable_hash(&[b"a"]), 0xaf63dc4c8601ec8c);
    assert_eq!(partition_of(&a, 1), 0);
    let keyed = |id: &str| {
        from_structured(
            format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t","partitionkey":"k"}}"#).as_bytes(),
        )
        .expect("valid")
    };
    assert_eq!(partition_of(&keyed("1"), 16), partition_of(&keyed("2"), 16));
}
