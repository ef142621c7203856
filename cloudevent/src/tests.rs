use std::collections::BTreeMap;

use bytes::Bytes;

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
    assert_eq!(event.get_str("myext"), Some("Euro%20%E2%82%AC%20%F0%9F%98%80"), "taken as sent");
    assert_eq!(event.get_str("datacontenttype"), Some("text/plain"));
    assert_eq!(event.data, Some(EventData::Bytes(Bytes::from_static(b"hello"))));
}

/// Which headers are attributes: `ce-` in any case, once each; every other header, however close, is not one.
#[test]
fn binary_mode_takes_ce_headers_in_any_case_once_each_and_nothing_else() {
    let event = binary(&[
        ("cE-Subject", "x"),
        ("ce", "not an attribute"),
        ("c", "nor this"),
        ("x-ce-other", "nor this"),
        ("content-length", "5"),
        ("cé-thing", "nor this"),
    ])
    .expect("valid");
    let names: Vec<&str> = event.attributes.keys().map(String::as_str).collect();
    assert_eq!(names, ["datacontenttype", "id", "source", "specversion", "subject", "type"]);
    type Refused = (&'static [(&'static str, &'static str)], &'static str, &'static str);
    let refused: [Refused; 3] = [
        (&[("CE-ID", "2")], "id", "one ce- header per attribute"),
        (&[("ce-", "x")], "ce-", "ce-NAME"),
        (
            &[("Ce-DataContentType", "text/plain")],
            "datacontenttype",
            "binary mode carries datacontenttype in Content-Type",
        ),
    ];
    for (extra, attribute, rule) in refused {
        let error = binary(extra).expect_err("refused");
        assert_eq!((error.attribute.as_deref(), error.rule.as_deref()), (Some(attribute), Some(rule)), "{extra:?}");
    }
}

/// `"whole"` was stored as `whole`: the quotes are data (no SDK sends RFC 7230 quoted-strings).
#[test]
fn quoted_header_value_keeps_its_quotes() {
    for value in ["\"whole\"", "\"a \\\"b\\\"\"", "\"unterminated\\\""] {
        let event = binary(&[("ce-myext", value)]).expect(value);
        assert_eq!(event.get_str("myext"), Some(value));
    }
}

/// The Python (1.x) and JavaScript SDKs send values unencoded: raw UTF-8, ISO-8859-1 (Python's `http.client`,
/// `fetch`), and `%` as data. Sluice answered 400 to them, or decoded `%XX` that the sender meant literally.
#[test]
fn unencoded_sdk_header_values_are_taken_as_sent() {
    let all = |value: &'static [u8]| {
        let mut all = headers(&MINIMAL);
        all.push(("ce-myext", value));
        from_binary(all, None, Bytes::new()).map(|e| e.get_str("myext").map(str::to_string))
    };
    assert_eq!(all("dl ✓".as_bytes()), Ok(Some("dl ✓".into())));
    assert_eq!(all(b"caf\xe9"), Ok(Some("café".into())), "ISO-8859-1 byte");
    assert_eq!(all(b"100%"), Ok(Some("100%".into())));
    assert_eq!(all(b"a%zz %4"), Ok(Some("a%zz %4".into())));
    assert_eq!(all(b"https://x/a%20b?c=%E2%9C%93"), Ok(Some("https://x/a%20b?c=%E2%9C%93".into())));
    assert_eq!(all(b"%C0%A0"), Ok(Some("%C0%A0".into())));
}

#[test]
fn binary_mode_refuses_bad_values() {
    for (header, value, attribute) in [
        ("ce-myext", "a\tb", "myext"),
        ("ce-datacontenttype", "text/plain", "datacontenttype"),
        ("ce-My_Ext", "v", "my_ext"),
        ("ce-time", "yesterday", "time"),
        ("ce-dataschema", "relative/path", "dataschema"),
        ("ce-subject", "", "subject"),
        ("ce-source", "/a b", "source"),
    ] {
        let err = binary(&[(header, value)]).expect_err(header);
        assert_eq!(err.status, 400);
        assert_eq!(err.attribute.as_deref(), Some(attribute), "{header}: {value}: {err}");
    }
}

/// Regression: chrono's RFC 3339 parser also takes a space for the `T` and a Unicode minus sign in the offset;
/// such a `time` was stored, and every delivery to a Go SDK subscriber (which refuses it) failed.
#[test]
fn a_time_outside_rfc_3339s_grammar_is_refused() {
    // And a second of 60 (a leap second at any minute to chrono, refused by Go's `time.Parse`).
    for time in [
        "2018-04-05 17:31:00Z",
        "2018-04-05T17:31:00\u{2212}01:00",
        "2018-04-05",
        "17:31:00Z",
        "2018-04-05T17:31:60Z",
        "2016-12-31T23:59:60.5Z",
    ] {
        let err = binary(&[("ce-time", time)]).expect_err(time);
        assert_eq!(err.attribute.as_deref(), Some("time"), "{time}: {err}");
    }
    for time in [
        "2018-04-05T17:31:00Z",
        "2018-04-05t17:31:00.123456789z",
        "2018-04-05T17:31:00-01:00",
        "2018-04-05T17:31:59.999Z",
    ] {
        assert!(binary(&[("ce-time", time)]).is_ok(), "{time}");
    }
}

/// Outbound, Sluice percent-encoded `dl ✓` as `dl%20%E2%9C%93`, which no SDK decodes.
#[test]
fn outbound_header_values_are_their_utf8_bytes() {
    for value in ["dl ✓", "\"whole\"", "100%", "a%20b"] {
        assert_eq!(encode_header_value(value), value.as_bytes());
    }
}

proptest::proptest! {
    #[test]
    fn header_values_round_trip(value in "[^\u{0}-\u{1f}\u{7f}]{0,24}") {
        proptest::prop_assert_eq!(decode_header_value(encode_header_value(&value)), Ok(value));
    }

    #[test]
    fn stored_encoding_round_trips_for_any_event(
        attributes in proptest::collection::btree_map("[a-z][a-z0-9]{0,8}", "[^\u{0}-\u{1f}]{0,16}", 0..6),
        integer in proptest::num::i32::ANY,
        data in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..64)),
    ) {
        let mut attributes: BTreeMap<String, AttrValue> =
            attributes.into_iter().map(|(k, v)| (k, AttrValue::String(v))).collect();
        attributes.insert("zint".into(), AttrValue::Integer(i64::from(integer)));
        let event = CloudEvent { attributes, data: data.map(|d| EventData::Bytes(Bytes::from(d))) };
        let stored = event.encode().expect("encodes");
        proptest::prop_assert_eq!(CloudEvent::decode(&stored).expect("decodes"), event);
    }
}

/// `{"big": 123456789012345678901234567890}` arrived as `1.2345678901234568e+29`, `1e2` as `100.0`, and object
/// keys re-sorted: JSON data is copied byte for byte into the JSON format.
#[test]
fn json_data_is_never_reparsed() {
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"zeta":1e2,"big":123456789012345678901234567890,"alpha":[1.50,-0]}}"#;
    let event = from_structured(body).expect("valid");
    let json = event.to_json_string();
    assert!(json.ends_with(r#""data":{"zeta":1e2,"big":123456789012345678901234567890,"alpha":[1.50,-0]}}"#), "{json}");
    assert_eq!(from_structured(json.as_bytes()).expect("reparses"), event);
    assert_eq!(&event.binary_body()[..], br#"{"zeta":1e2,"big":123456789012345678901234567890,"alpha":[1.50,-0]}"#);
}

/// Binary-mode data under `content-type: application/json` went out as `data_base64`; a JSON subscriber (the JS
/// SDK) got no `data`.
#[test]
fn binary_json_data_goes_out_as_data() {
    let mut all = headers(&MINIMAL);
    all.push(("ce-subject", b"s"));
    let body = Bytes::from_static(br#"{"b": 123456789012345678901234567890, "a": 1e2}"#);
    let event = from_binary(all, Some(b"application/json; charset=utf-8"), body).expect("valid");
    let json = event.to_json_string();
    assert!(json.contains(r#""data":{"b": 123456789012345678901234567890, "a": 1e2}"#), "{json}");
    assert!(!json.contains("data_base64"), "{json}");
    // Not JSON after all: base64, so nothing is lost.
    let event = from_binary(headers(&MINIMAL), Some(b"application/json"), Bytes::from_static(b"{nope")).expect("valid");
    assert_eq!(event.structured_data(), Some(StructuredData::Base64(b"{nope")));
    // Text as a JSON string; bytes as base64.
    let event = from_binary(headers(&MINIMAL), Some(b"text/plain"), Bytes::from_static("héllo \"x\"".as_bytes()))
        .expect("valid");
    assert!(event.to_json_string().ends_with(r#""data":"héllo \"x\""}"#));
    let event =
        from_binary(headers(&MINIMAL), Some(b"application/octet-stream"), Bytes::from_static(b"\x00\xff")).expect("ok");
    assert!(event.to_json_string().ends_with(r#""data_base64":"AP8="}"#));
}

/// Structured `data` that is a JSON string under a non-JSON content type is the body itself in binary mode (the
/// SDKs write `text/plain` data this way), not its JSON text with quotes.
#[test]
fn structured_text_data_is_the_binary_body_without_quotes() {
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hi \"you\""}"#;
    let event = from_structured(body).expect("valid");
    assert_eq!(&event.binary_body()[..], b"hi \"you\"");
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"hi"}"#;
    assert_eq!(&from_structured(body).expect("valid").binary_body()[..], b"\"hi\"", "JSON by default");
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
    let ok = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"}]"#;
    assert_eq!(from_batch(ok, 10).expect("valid").len(), 2);
    let bad =
        br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s"}]"#;
    let err = from_batch(bad, 10).expect_err("bad second event");
    assert_eq!((err.index, err.attribute.as_deref()), (Some(1), Some("type")));
    assert_eq!(from_batch(b"[]", 10).map(|events| events.len()), Ok(0), "an empty batch is valid (JSON format §4)");
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
    assert!(is_absolute_uri("urn:x:y?q=1") && is_absolute_uri("https://x/y.json#/definitions/A"));
    for ok in [
        "application/json",
        "text/plain; charset=utf-8",
        "application/cloudevents+json",
        // Regression: a quoted value holding `;` (RFC 2045) was split at it and refused.
        "multipart/mixed; boundary=\"a;b\"",
        "text/plain; name=\"r\u{e9}sum\u{e9}.txt\"; charset=utf-8",
        "application/ld+json; profile=http://www.w3.org/ns/activitystreams",
        "text/plain;",
        "text/plain; a=\"q\\\"uote\"",
    ] {
        assert!(is_media_type(ok), "{ok}");
    }
    for bad in [
        "json",
        "a/",
        "/b",
        "a b/c",
        "text/plain; name",
        "text/plain; =x",
        "text/plain; a=\"open",
        "text/plain; a=\u{1}",
    ] {
        assert!(!is_media_type(bad), "{bad}");
    }
    assert_eq!(
        media_essence("multipart/mixed; boundary=\"x;charset=latin1\"; Charset=\"UTF-8\"").1,
        Some("utf-8".into())
    );
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

/// Regression: `ce-data` was accepted as an attribute, and the JSON format then had two `data` members (the
/// attribute and the payload). The spec reserves the name, in every mode.
#[test]
fn an_attribute_named_data_is_refused() {
    let refused = binary(&[("ce-data", "x")]).expect_err("ce-data");
    assert!(refused.to_string().contains("reserved"), "{refused}");
    let structured = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1}"#;
    assert!(from_structured(structured).is_ok(), "the payload member itself is fine");
}

/// Regression: a member named twice was taken with its last value, where other parsers take the first: Sluice's
/// dedupe and a subscriber could see two different ids for one event.
#[test]
fn a_member_named_twice_is_refused() {
    let twice = br#"{"specversion":"1.0","id":"a","source":"/s","type":"t","id":"b"}"#;
    let refused = from_structured(twice).expect_err("id twice");
    assert_eq!((refused.error.as_str(), refused.attribute.as_deref()), ("member given twice", Some("id")), "{refused}");
    let batch = br#"[{"specversion":"1.0","id":"a","source":"/s","type":"t"},{"specversion":"1.0","id":"b","source":"/s","type":"t","type":"u"}]"#;
    let refused = from_batch(batch, 10).expect_err("type twice in the second");
    assert_eq!(refused.index, Some(1));
}

/// A batch is read no further than its limit, nor past the first item that is not an event.
#[test]
fn a_batch_is_read_no_further_than_its_limit() {
    let event = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
    let batch = |n: usize| format!("[{}]", vec![event; n].join(","));
    assert_eq!(from_batch(batch(3).as_bytes(), 3).map(|events| events.len()), Ok(3));
    let over = from_batch(batch(4).as_bytes(), 3).expect_err("4 of 3");
    assert_eq!(over.status, 413);
    assert_eq!(over.rule.as_deref(), Some("at most 3 events per batch"));
    let many = batch(100_000);
    assert_eq!(from_batch(many.as_bytes(), 1000).map_err(|e| e.status), Err(413), "refused at the 1,001st");
    // Each item is made an event as the array is read: the first that is not one stops the reading.
    let zeros = format!("[{}]", vec!["0"; 100_000].join(","));
    let refused = from_batch(zeros.as_bytes(), 1000).expect_err("not events");
    assert_eq!(
        (refused.status, refused.index, refused.error.as_str()),
        (400, Some(0), "an event must be a JSON object")
    );
    let second = format!("[{event},[{event}]]");
    assert_eq!(from_batch(second.as_bytes(), 3).map_err(|e| e.index), Err(Some(1)));
    assert_eq!(from_batch(br#"{"a":1}"#, 3).map_err(|e| e.error), Err("a batch must be a JSON array".to_string()));
    assert_eq!(from_batch(b"[1,", 3).map_err(|e| e.error), Err("an event must be a JSON object".to_string()));
    let cut_short = format!("[{event},");
    assert_eq!(from_batch(cut_short.as_bytes(), 3).map_err(|e| e.error), Err("malformed JSON".to_string()));
    let cut_inside = format!("[{event},{{\"id\":");
    assert_eq!(from_batch(cut_inside.as_bytes(), 3).map_err(|e| e.error), Err("malformed JSON".to_string()));
}

/// Past 32 members the repeat is found through a set: the same answer.
#[test]
fn a_member_named_twice_is_refused_among_many() {
    let extensions: Vec<String> = (0..40).map(|i| format!(r#""x{i}":"v""#)).collect();
    let body =
        format!(r#"{{"specversion":"1.0","id":"a","source":"/s","type":"t",{},"x7":"again"}}"#, extensions.join(","));
    let refused = from_structured(body.as_bytes()).expect_err("x7 twice");
    assert!(refused.to_string().contains("x7"), "{refused}");
    let fine = format!(r#"{{"specversion":"1.0","id":"a","source":"/s","type":"t",{}}}"#, extensions.join(","));
    assert!(from_structured(fine.as_bytes()).is_ok());
}

/// Regression: a batch mixing spec versions was accepted, though "All batched CloudEvents MUST have the same
/// specversion attribute" (HTTP binding §3.3).
#[test]
fn a_batch_must_not_mix_spec_versions() {
    let event = |version: &str| format!(r#"{{"specversion":"{version}","id":"1","source":"/s","type":"t"}}"#);
    // (the events' versions, the index refused and why: None when accepted)
    type Case<'a> = (&'a [&'a str], Option<(usize, &'a str)>);
    let cases: [Case; 6] = [
        (&["1.0", "1.0"], None),
        (&["0.3", "0.3", "0.3"], None),
        (&["1.0", "0.3"], Some((1, "a batch mixes spec versions"))),
        (&["0.3", "0.3", "1.0", "0.3"], Some((2, "a batch mixes spec versions"))),
        (&["1.0", "9"], Some((1, "unsupported specversion"))),
        (&["9", "1.0"], Some((0, "unsupported specversion"))),
    ];
    for (versions, refused) in cases {
        let body = format!("[{}]", versions.iter().map(|&v| event(v)).collect::<Vec<_>>().join(","));
        let result = from_batch(body.as_bytes(), 10);
        match refused {
            None => assert_eq!(result.map(|events| events.len()), Ok(versions.len()), "{versions:?}"),
            Some((index, error)) => {
                let e = result.expect_err(&body);
                assert_eq!((e.status, e.index, e.error.as_str()), (400, Some(index), error), "{versions:?}");
                assert_eq!(e.attribute.as_deref(), Some("specversion"));
            }
        }
    }
}

/// Regression: attribute limits were checked only once the whole body was parsed into events, so a 4 MiB batch
/// of events with hundreds of tiny extensions each built ~450,000 attributes before its 413. The JSON formats
/// stop at the first attribute past the limit, with the refusal [`AttributeLimits::check`] gives.
#[test]
fn attribute_limits_are_held_while_the_object_is_read() {
    let limits = AttributeLimits { max_attributes: 10, max_bytes: 400 };
    let event = |extensions: &str| format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t"{extensions}}}"#);
    let many = |n: usize| (0..n).map(|i| format!(r#","x{i}":"v""#)).collect::<String>();
    // (members besides the required four; refused while read, refused by the later check)
    let cases = [
        (many(4), None, None),
        // Read: 10 attributes; checked: with knativearrivaltime and knativebrokerttl, 12.
        (many(6), None, Some("too many attributes")),
        (many(7), Some("too many attributes"), Some("too many attributes")),
        // A repeated member past the limit: reading stopped before it was seen.
        (format!("{},\"x0\":\"again\"", many(20)), Some("too many attributes"), Some("member given twice")),
        // Nulls, data and data_base64 are not attributes.
        (format!(r#"{},"n1":null,"n2":null,"data":1"#, many(4)), None, None),
        // Read: 58 bytes of required attributes and 308 of `x`; checked: 78 more of the two the node adds.
        (format!(r#","x":"{}""#, "v".repeat(300)), None, Some("attributes too large")),
        (format!(r#","x":"{}""#, "v".repeat(350)), Some("attributes too large"), Some("attributes too large")),
        // Escapes count as the characters they stand for: 60 × `\u00e9` (360 bytes of JSON) is 120 bytes.
        (format!(r#","x":"{}""#, "\\u00e9".repeat(60)), None, None),
        (format!(r#","x":"{}""#, "\\u00e9".repeat(175)), Some("attributes too large"), Some("attributes too large")),
    ];
    for (extensions, while_read, checked) in cases {
        let body = event(&extensions);
        let read = from_structured_within(body.as_bytes(), &limits);
        assert_eq!(read.as_ref().err().map(|e| e.error.as_str()), while_read, "{body}");
        if let Err(e) = &read {
            assert_eq!(e.status, 413);
            let expected = if e.error == "too many attributes" { limits.too_many() } else { limits.too_large() };
            assert_eq!(e, &expected, "the later check's refusal");
        }
        // Read without limits, then checked as stored: never accepted where reading refused.
        let parsed = from_structured(body.as_bytes());
        let later = parsed.as_ref().map_err(EventError::clone).and_then(|event| limits.check(event, 255));
        assert_eq!(later.as_ref().err().map(|e| e.error.as_str()), checked, "{body}");
        let batch = format!("[{},{}]", event_with_id("0"), body);
        let in_batch = from_batch_within(batch.as_bytes(), 10, &limits);
        assert_eq!(in_batch.as_ref().err().map(|e| (e.error.as_str(), e.index)), while_read.map(|e| (e, Some(1))));
    }
}

fn event_with_id(id: &str) -> String {
    format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t"}}"#)
}

/// What the attribute limits count for a JSON value while it is read: never more than the value's canonical
/// string (what [`AttributeLimits::check`] counts), so that reading never refuses what the check accepts.
#[test]
fn an_attribute_values_length_is_read_from_its_json_text() {
    for (json, len) in [
        (r#""abc""#, 3),
        (r#""""#, 0),
        (r#""a\"b""#, 3),
        (r#""é""#, 2),
        (r#""\u00e9""#, 2),
        (r#""\ud83d\ude00""#, 4),
        ("true", 4),
        ("false", 5),
        ("7", 1),
        ("-2147483648", 11),
        ("1.5", 0),
        ("{}", 0),
        ("[1]", 0),
    ] {
        let raw: &serde_json::value::RawValue = serde_json::from_str(json).expect("JSON");
        assert_eq!(binding::canonical_len(raw), len, "{json}");
    }
}

/// The headroom: attributes and their bytes less what a binary-mode delivery adds, never below zero.
#[test]
fn attribute_limits_leave_room_for_the_delivery_headers() {
    for (max_headers, max_header_bytes, expected) in
        [(100, 16 << 10, (94, (16 << 10) - 3072)), (50, 8192, (44, 8192 - 3072)), (4, 1000, (0, 0))]
    {
        let limits = AttributeLimits::within_headers(max_headers, max_header_bytes);
        assert_eq!((limits.max_attributes, limits.max_bytes), expected, "{max_headers} / {max_header_bytes}");
    }
    assert_eq!((DELIVERY_HEADERS, DELIVERY_HEADER_BYTES), (6, 3072));
}

/// Every arrival time is as long as the attribute limits count it.
#[test]
fn arrival_times_have_one_length() {
    use chrono::TimeZone;
    for (seconds, nanos) in [(0, 0), (1_767_225_600, 0), (1_767_225_600, 999_999_999), (253_402_300_799, 1_000)] {
        let at = chrono::Utc.timestamp_opt(seconds, nanos).single().expect("a time");
        assert_eq!(arrival_time(at).len(), ARRIVAL_TIME_LEN, "{at}");
    }
}

/// Regression: `schemaurl` was checked as a URI-reference in 1.0 events, where it is an extension (any string),
/// and `dataschema` in 0.3 ones. The 1.0 `dataschema` takes a fragment, as the Go SDK does.
#[test]
fn schema_attributes_are_checked_in_their_own_version_only() {
    let event = |version: &str, attribute: &str, value: &str| {
        let body = format!(
            r#"{{"specversion":"{version}","id":"1","source":"/s#frag","type":"t","{attribute}":{}}}"#,
            serde_json::to_string(value).expect("string")
        );
        from_structured(body.as_bytes()).map(|_| ()).map_err(|e| e.attribute)
    };
    let refused = |attribute: &str| -> Result<(), Option<String>> { Err(Some(attribute.to_string())) };
    for (version, attribute, value, expected) in [
        ("1.0", "schemaurl", "not a URI at all", Ok(())),
        ("1.0", "schemaurl", "", Ok(())),
        ("0.3", "schemaurl", "not a URI", refused("schemaurl")),
        ("0.3", "schemaurl", "", refused("schemaurl")),
        ("0.3", "schemaurl", "rel/path#frag", Ok(())),
        ("0.3", "dataschema", "not a URI", Ok(())),
        ("1.0", "dataschema", "https://example.com/schema?v=1", Ok(())),
        ("1.0", "dataschema", "https://example.com/schema.json#/definitions/A", Ok(())),
        ("1.0", "dataschema", "rel/path", refused("dataschema")),
    ] {
        assert_eq!(event(version, attribute, value), expected, "{version} {attribute}={value:?}");
    }
}

/// `json_len_bound` fills a batch up to a size before encoding, and `stored_len_bound` sizes the stored
/// form's buffer: neither may be below its encoding.
#[test]
fn the_length_bounds_are_never_below_the_encodings() {
    let text_with_escapes = "line\n\"quoted\" \\ back\u{1}slash é";
    let cases: Vec<CloudEvent> = vec![
        binary(&[]).expect("valid"),
        from_binary(headers(&[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t")]),
            Some(b"text/plain; charset=utf-8"), bytes::Bytes::from(text_with_escapes)).expect("valid"),
        from_binary(headers(&[("ce-specversion", "1.0"), ("ce-id", "\"q\""), ("ce-source", "/s"), ("ce-type", "t")]),
            Some(b"application/octet-stream"), bytes::Bytes::from(vec![0u8, 1, 2, 255, 34, 92])).expect("valid"),
        from_binary(headers(&[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t")]),
            Some(b"application/json"), bytes::Bytes::from_static(br#"{"a": "\n\"", "b": [1e2]}"#)).expect("valid"),
        from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","n":-2147483648,"ok":true,"data":{"x":"\u0001"}}"#)
            .expect("valid"),
        from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"a \"text\"\n"}"#).expect("valid"),
    ];
    for event in cases {
        let encoded = event.to_json_string();
        assert!(event.json_len_bound() >= encoded.len(), "{} < {}: {encoded}", event.json_len_bound(), encoded.len());
        let stored = event.encode().expect("encodes");
        assert!(event.stored_len_bound() >= stored.len(), "{} < {}", event.stored_len_bound(), stored.len());
        assert_eq!(stored.capacity(), event.stored_len_bound(), "the buffer was allocated once, never grown");
        assert_eq!(CloudEvent::decode(&stored).expect("decodes"), event);
    }
}

proptest::proptest! {
    /// Strings are escaped in place, as serde_json escapes them (the JSON format's text stays what it was).
    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them(
        chars in proptest::collection::vec(proptest::prop_oneof![proptest::char::range('\0', '\x7f'), proptest::char::any()], 0..64),
    ) {
        let value: String = chars.into_iter().collect();
        let mut out = String::from("x");
        model::push_json_string(&mut out, &value);
        proptest::prop_assert_eq!(&out[1..], serde_json::to_string(&value).expect("a str serialises"));
    }

    #[test]
    fn the_json_length_bound_holds_for_any_text_and_bytes(
        subject in "\\PC*",
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        content_type in proptest::sample::select(vec![
            "text/plain", "application/json", "application/octet-stream", "application/json; charset=utf-8",
            "text/json", "application/cloudevents+json",
        ]),
        number in proptest::num::i64::ANY,
    ) {
        let mut event = binary(&[]).expect("valid");
        event.attributes.insert("subject".into(), AttrValue::String(subject));
        event.attributes.insert("datacontenttype".into(), AttrValue::String(content_type.into()));
        event.attributes.insert("sequence".into(), AttrValue::Integer(number));
        event.attributes.insert("flag".into(), AttrValue::Boolean(number % 2 == 0));
        event.data = Some(EventData::Bytes(Bytes::from(data)));
        let encoded = event.to_json_string();
        proptest::prop_assert!(event.json_len_bound() >= encoded.len());
        let stored = event.encode().expect("encodes");
        proptest::prop_assert!(event.stored_len_bound() >= stored.len());
        proptest::prop_assert_eq!(stored.capacity(), event.stored_len_bound());
    }
}

/// Strings without escapes are taken from the body as they are; with escapes they are decoded: both read alike.
#[test]
fn attribute_and_base64_strings_read_alike_with_and_without_escapes() {
    let plain =
        from_structured(br#"{"specversion":"1.0","id":"a/b","source":"/s","type":"t","data_base64":"AAEC/w=="}"#)
            .expect("valid");
    let escaped = from_structured(
        br#"{"specversion":"1.0","id":"a\/b","source":"\u002fs","type":"t","data_base64":"AAEC\/w=="}"#,
    )
    .expect("valid");
    assert_eq!(plain, escaped);
    assert_eq!(plain.get_str("id"), Some("a/b"));
    assert_eq!(plain.data, Some(EventData::Bytes(Bytes::from_static(&[0, 1, 2, 255]))));
    let spaced = from_structured(b"{ \"specversion\" : \"1.0\" , \"id\" : \"a/b\" , \"source\" : \"/s\" , \"type\" : \"t\" , \"data_base64\" : \"AAEC/w==\" }")
        .expect("valid");
    assert_eq!(plain, spaced);
    let null_data = from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":null}"#)
        .expect("valid");
    assert_eq!(null_data.data, None);
    // Regression: a null `data_base64` beside `data` (a producer writing every optional field, null when unset)
    // was refused as both present.
    let beside_data = from_structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1},"data_base64":null}"#,
    )
    .expect("null is unset");
    assert_eq!(beside_data.data, Some(EventData::Json(r#"{"a":1}"#.into())));
    let both = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":null,"data_base64":"AA=="}"#;
    assert!(from_structured(both).is_err(), "data: null is data, and with data_base64 it is both");
    let not_a_string = from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":7}"#);
    assert!(not_a_string.is_err());
}

/// Regression (review): an attribute holding an array or object was parsed whole before its type was refused
/// (a batch of `[[],[],…]` built a value per bracket), and a number serde cannot hold (1e400) was refused as
/// "malformed JSON" without naming the attribute.
#[test]
fn an_attribute_of_the_wrong_type_is_refused_naming_it_before_it_is_parsed() {
    let event = |value: &str| format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","x":{value}}}"#);
    for value in ["[[],[],[[]]]", " {\"a\":[1]}", "1e400", "2147483648", "1.5"] {
        let refused = from_structured(event(value).as_bytes()).expect_err(value);
        assert_eq!((refused.status, refused.error.as_str()), (400, "attribute has the wrong type"), "{value}");
        assert_eq!(refused.attribute.as_deref(), Some("x"), "{value}");
        assert!(refused.rule.is_some(), "{value}");
    }
    assert!(from_structured(event("-7").as_bytes()).is_ok());
    assert!(from_structured(event("null").as_bytes()).is_ok(), "null is absent");
    // Regression: `"specversion": 1.0` was told that numbers are 32-bit integers (and as `1`, that it must be a
    // string): a context attribute's rule is its own type.
    let cases = [
        (
            r#"{"specversion":1.0,"id":"1","source":"/s","type":"t"}"#,
            "specversion",
            "must be a string, such as \"1.0\"",
        ),
        (r#"{"specversion":"1.0","id":1.5,"source":"/s","type":"t"}"#, "id", "must be a string"),
        (r#"{"specversion":"1.0","id":"1","source":1e400,"type":"t"}"#, "source", "must be a URI-reference"),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":1.5}"#,
            "time",
            "must be an RFC 3339 timestamp",
        ),
    ];
    for (body, attribute, rule) in cases {
        let refused = from_structured(body.as_bytes()).expect_err(body);
        assert_eq!(refused.attribute.as_deref(), Some(attribute), "{body}");
        assert!(refused.rule.as_deref().is_some_and(|r| r.starts_with(rule)), "{body}: {:?}", refused.rule);
    }
    // Regression: an unpaired surrogate in a string was refused under the rule of numbers.
    let refused = from_structured(event(r#""\udead""#).as_bytes()).expect_err("a lone surrogate");
    assert_eq!(refused.attribute.as_deref(), Some("x"));
    assert!(refused.rule.as_deref().is_some_and(|r| r.starts_with("strings are Unicode")), "{:?}", refused.rule);
}

/// Regression (review): 0.3's JSON format carries bytes as a base64 string in `data` with `datacontentencoding:
/// base64`; Sluice kept that string as JSON text (a binary-mode delivery sent the base64 text for the bytes) and
/// wrote 0.3 bytes as `data_base64`, which 0.3 readers (sdk-go) take for an extension.
#[test]
fn a_v03_events_base64_data_is_its_bytes_and_goes_back_as_0_3_writes_them() {
    let v03 = br#"{"specversion":"0.3","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","datacontentencoding":"base64","data":"AAEC/w=="}"#;
    let event = from_structured(v03).expect("a valid 0.3 event");
    assert_eq!(&event.binary_body()[..], [0u8, 1, 2, 255], "the bytes, decoded");
    assert_eq!(event.get("datacontentencoding"), None, "how the JSON format carried them is not an attribute");
    let json = event.to_json_string();
    assert!(json.contains(r#""datacontentencoding":"base64""#) && json.contains(r#""data":"AAEC/w==""#), "{json}");
    assert!(!json.contains("data_base64"), "{json}");
    assert!(json.len() <= event.json_len_bound(), "{json}");
    assert_eq!(from_structured(json.as_bytes()).expect("read back"), event);
    // 0.3 bytes that came another way (`data_base64`) are written as 0.3 writes them too.
    let lenient =
        from_structured(br#"{"specversion":"0.3","id":"1","source":"/s","type":"t","data_base64":"AAEC/w=="}"#)
            .expect("a valid 0.3 event");
    assert!(lenient.to_json_string().contains(r#""data":"AAEC/w==""#));
    // Not base64: refused, naming `data`.
    let bad = br#"{"specversion":"0.3","id":"1","source":"/s","type":"t","datacontentencoding":"base64","data":"not base64!"}"#;
    let refused = from_structured(bad).expect_err("not base64");
    assert_eq!(refused.attribute.as_deref(), Some("data"));
    // 1.0 keeps `data_base64`.
    let v10 = from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AAEC/w=="}"#)
        .expect("a valid 1.0 event");
    assert!(v10.to_json_string().contains(r#""data_base64":"AAEC/w==""#));
}
