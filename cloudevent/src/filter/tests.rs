use super::*;
use serde_json::json;

type Event = serde_json::Map<String, Json>;

fn event(attributes: Json) -> Event {
    match attributes {
        Json::Object(map) => map,
        other => panic!("test events are JSON objects, got {other}"),
    }
}

fn push_event() -> Event {
    event(json!({
        "specversion": "1.0",
        "id": "1",
        "type": "com.github.push",
        "source": "https://github.com/cloudevents/spec",
        "subject": "README.md",
        "seq": 42,
        "flag": true,
        "empty": "",
    }))
}

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn legacy(pairs: &[(&str, &str)]) -> CompiledFilter {
    compile(Some(&attributes(pairs)), None).expect("valid filter.attributes")
}

fn filters(filters: Json) -> CompiledFilter {
    compile(None, Some(&filters)).expect("valid filters")
}

fn filters_err(filters: Json) -> FilterError {
    compile(None, Some(&filters)).expect_err("invalid filters")
}

fn matches_push(filter: Json) -> bool {
    filters(json!([filter])).matches(&push_event())
}

// --- Knative filter.attributes ---

#[test]
fn no_filter_matches_everything() {
    let filter = compile(None, None).expect("no filter");
    assert!(filter.matches(&push_event()));
    assert!(filter.matches(&Event::new()));
    assert!(CompiledFilter::match_all().matches(&Event::new()));
}

#[test]
fn empty_attributes_match_everything() {
    assert!(legacy(&[]).matches(&push_event()));
    assert!(legacy(&[]).matches(&Event::new()));
}

#[test]
fn attributes_exact_value_is_case_sensitive() {
    assert!(legacy(&[("type", "com.github.push")]).matches(&push_event()));
    assert!(!legacy(&[("type", "com.github.Push")]).matches(&push_event()));
    assert!(!legacy(&[("type", "com.github")]).matches(&push_event()), "exact, not prefix");
    assert!(!legacy(&[("type", "com.github.push ")]).matches(&push_event()));
}

#[test]
fn attributes_all_keys_must_match() {
    assert!(legacy(&[("type", "com.github.push"), ("subject", "README.md")]).matches(&push_event()));
    assert!(!legacy(&[("type", "com.github.push"), ("subject", "LICENSE")]).matches(&push_event()));
    assert!(!legacy(&[("type", "com.github.push"), ("missing", "x")]).matches(&push_event()));
}

#[test]
fn attributes_empty_value_requires_presence_only() {
    assert!(legacy(&[("subject", "")]).matches(&push_event()));
    assert!(legacy(&[("empty", "")]).matches(&push_event()), "an empty attribute value is present");
    assert!(legacy(&[("seq", ""), ("flag", "")]).matches(&push_event()));
    assert!(!legacy(&[("myextension", "")]).matches(&push_event()));
    let mut with_null = push_event();
    with_null.insert("myextension".into(), Json::Null);
    assert!(!legacy(&[("myextension", "")]).matches(&with_null), "null is an absent attribute");
}

/// Regression (found by an exploratory test): Knative's attributes filter sees its core attributes on every
/// event (`""` when absent), so `subject: ""` matches events without a subject; Sluice required the subject.
#[test]
fn attributes_empty_value_on_a_core_attribute_matches_events_without_it() {
    let bare = event(json!({"specversion": "1.0", "id": "1", "type": "t", "source": "/s"}));
    for core in ["subject", "time", "schemaurl", "datacontenttype", "datamediatype", "datacontentencoding"] {
        assert!(legacy(&[(core, "")]).matches(&bare), "{core}");
        assert!(legacy(&[(core, ""), ("source", "/s")]).matches(&bare), "{core} with another condition");
    }
    assert!(!legacy(&[("subject", ""), ("source", "/other")]).matches(&bare), "the other condition still holds");
    assert!(!legacy(&[("dataschema", "")]).matches(&bare), "not in Knative's map: present only");
    assert!(!legacy(&[("subject", "README.md")]).matches(&bare), "a value still needs the attribute");
}

#[test]
fn attributes_compare_canonical_string_forms() {
    assert!(legacy(&[("seq", "42")]).matches(&push_event()));
    assert!(!legacy(&[("seq", "042")]).matches(&push_event()));
    assert!(!legacy(&[("seq", "+42")]).matches(&push_event()));
    assert!(legacy(&[("flag", "true")]).matches(&push_event()));
    assert!(!legacy(&[("flag", "TRUE")]).matches(&push_event()));
    let negative = event(json!({"seq": -7, "flag": false}));
    assert!(legacy(&[("seq", "-7"), ("flag", "false")]).matches(&negative));
    // A string attribute holding digits compares as the same string.
    assert!(legacy(&[("id", "1")]).matches(&push_event()));
}

#[test]
fn attribute_names_are_validated() {
    for name in ["Type", "1type", "", "my-ext", "my_ext", "tÿpe"] {
        let err = compile(Some(&attributes(&[(name, "x")])), None).expect_err("invalid name");
        assert_eq!(err, FilterError::InvalidAttributeName { path: format!("filter.attributes[{name}]") });
        assert_eq!(err.path(), format!("filter.attributes[{name}]"));
    }
    assert!(compile(Some(&attributes(&[("a1", "x"), ("z", "")])), None).is_ok());
}

// --- Subscriptions API dialects ---

#[test]
fn exact_dialect() {
    assert!(matches_push(json!({"exact": {"type": "com.github.push"}})));
    assert!(!matches_push(json!({"exact": {"type": "com.github.PUSH"}})));
    assert!(!matches_push(json!({"exact": {"type": "com.github"}})));
    assert!(matches_push(json!({"exact": {"seq": "42"}})));
    assert!(matches_push(json!({"exact": {"flag": "true"}})));
    assert!(!matches_push(json!({"exact": {"missing": "x"}})));
    // An empty exact value (accepted by the controller) matches only an attribute that is present and empty.
    assert!(matches_push(json!({"exact": {"empty": ""}})));
    assert!(!matches_push(json!({"exact": {"subject": ""}})));
    assert!(!matches_push(json!({"exact": {"missing": ""}})));
}

#[test]
fn prefix_dialect() {
    assert!(matches_push(json!({"prefix": {"type": "com.github."}})));
    assert!(matches_push(json!({"prefix": {"type": "com.github.push"}})), "the whole value is a prefix");
    assert!(!matches_push(json!({"prefix": {"type": "Com."}})));
    assert!(!matches_push(json!({"prefix": {"type": "com.github.push."}})));
    assert!(matches_push(json!({"prefix": {"seq": "4"}})));
    assert!(!matches_push(json!({"prefix": {"missing": "a"}})));
}

#[test]
fn suffix_dialect() {
    assert!(matches_push(json!({"suffix": {"subject": ".md"}})));
    assert!(matches_push(json!({"suffix": {"source": "/cloudevents/spec"}})));
    assert!(!matches_push(json!({"suffix": {"subject": ".MD"}})));
    assert!(matches_push(json!({"suffix": {"flag": "ue"}})));
    assert!(!matches_push(json!({"suffix": {"missing": "a"}})));
}

/// The Subscriptions API's own examples (§3.2.4.1.1): several attributes in one dialect must all match.
#[test]
fn several_attributes_in_one_dialect_must_all_match() {
    assert!(matches_push(json!({"exact": {"type": "com.github.push", "subject": "README.md"}})));
    assert!(!matches_push(json!({"exact": {"type": "com.github.push", "subject": "LICENSE"}})));
    assert!(!matches_push(json!({"exact": {"type": "com.github.push", "missing": "x"}})));
    assert!(matches_push(json!({"prefix": {"type": "com.github.", "source": "https://github.com/cloudevents"}})));
    assert!(!matches_push(json!({"prefix": {"type": "com.github.", "source": "http://"}})));
    assert!(matches_push(json!({"suffix": {"type": ".push", "subject": ".md"}})));
    assert!(!matches_push(json!({"suffix": {"type": ".push", "subject": ".txt"}})));
    let two = filters(json!([{"exact": {"source": "https://github.com/cloudevents/spec", "type": "com.github.push"}}]));
    assert_eq!(
        two.index_key().map(|(a, v)| (a.to_owned(), v.to_owned())),
        Some(("type".to_owned(), "com.github.push".to_owned())),
        "filed under one of its exact pairs"
    );
}

#[test]
fn all_any_not_dialects() {
    let yes = json!({"exact": {"type": "com.github.push"}});
    let no = json!({"exact": {"type": "other"}});
    assert!(matches_push(json!({"all": [yes, yes]})));
    assert!(!matches_push(json!({"all": [yes, no]})));
    assert!(!matches_push(json!({"all": [no, yes]})));
    assert!(matches_push(json!({"any": [no, yes]})));
    assert!(matches_push(json!({"any": [yes]})));
    assert!(!matches_push(json!({"any": [no, no]})));
    assert!(!matches_push(json!({"not": yes})));
    assert!(matches_push(json!({"not": no})));
    assert!(matches_push(json!({"not": {"not": yes}})));
    assert!(matches_push(json!({"not": {"exact": {"missing": "x"}}})), "a missing attribute is no match");
    assert!(matches_push(json!({
        "all": [
            {"any": [no, {"prefix": {"source": "https://github.com/"}}]},
            {"not": {"suffix": {"subject": ".jpg"}}},
            {"cesql": "seq > 40"}
        ]
    })));
}

#[test]
fn cesql_dialect() {
    assert!(matches_push(json!({"cesql": "type LIKE 'com.github.%' AND seq = 42"})));
    assert!(!matches_push(json!({"cesql": "type = 'other'"})));
    assert!(!matches_push(json!({"cesql": "seq"})), "a non-boolean value is no match");
    assert!(!matches_push(json!({"cesql": "'yes'"})));
    assert!(!matches_push(json!({"cesql": "missing = 'x'"})), "an evaluation error is no match");
    assert!(!matches_push(json!({"cesql": "1 / 0 = 0"})));
    assert!(!matches_push(json!({"cesql": "NOT (1 / 0 = 0)"})), "even when negated");
    assert!(matches_push(json!({"not": {"cesql": "1 / 0 = 0"}})), "a `not` filter inverts no-match");
    assert!(matches_push(json!({"cesql": "EXISTS subject AND NOT EXISTS missing"})));
}

#[test]
fn every_filter_of_the_list_must_match() {
    let both = filters(json!([{"exact": {"type": "com.github.push"}}, {"suffix": {"subject": ".md"}}]));
    assert!(both.matches(&push_event()));
    let one_fails = filters(json!([{"exact": {"type": "com.github.push"}}, {"suffix": {"subject": ".jpg"}}]));
    assert!(!one_fails.matches(&push_event()));
}

#[test]
fn non_empty_filters_win_over_attributes() {
    let legacy_no = attributes(&[("type", "other")]);
    let legacy_yes = attributes(&[("type", "com.github.push")]);
    let filters_yes = json!([{"prefix": {"type": "com."}}]);
    let filters_no = json!([{"prefix": {"type": "org."}}]);
    let compiled = |a: &BTreeMap<String, String>, f: &Json| compile(Some(a), Some(f)).expect("valid");
    assert!(compiled(&legacy_no, &filters_yes).matches(&push_event()));
    assert!(!compiled(&legacy_yes, &filters_no).matches(&push_event()));
    // Empty or null `filters` leave `filter.attributes` in charge.
    assert!(!compiled(&legacy_no, &json!([])).matches(&push_event()));
    assert!(compiled(&legacy_yes, &json!([])).matches(&push_event()));
    assert!(!compiled(&legacy_no, &Json::Null).matches(&push_event()));
    assert!(compile(None, Some(&json!([]))).expect("valid").matches(&Event::new()));
}

#[test]
fn shadowed_attributes_are_still_validated() {
    let err = compile(Some(&attributes(&[("Bad", "x")])), Some(&json!([{"exact": {"type": "a"}}])))
        .expect_err("invalid filter.attributes");
    assert_eq!(err.path(), "filter.attributes[Bad]");
}

#[test]
fn the_controllers_example_trigger_compiles() {
    let filter = compile(
        Some(&attributes(&[("type", "dev.knative.foo.bar"), ("myextension", "")])),
        Some(&json!([
            {"exact": {"type": "com.github.push"}},
            {"prefix": {"source": "https://github.com"}},
            {"suffix": {"subject": ".jpg"}},
            {"all": [{"exact": {"type": "a"}}, {"not": {"exact": {"source": "b"}}}]},
            {"any": [{"cesql": "type LIKE 'dev.%'"}]}
        ])),
    )
    .expect("valid Trigger");
    assert!(!filter.matches(&push_event()));
}

#[test]
fn null_dialect_fields_are_absent() {
    assert!(matches_push(json!({"exact": {"type": "com.github.push"}, "prefix": null, "cesql": null})));
}

// --- validation errors ---

/// Knative's webhook counts only the dialects set with something in them, and makes no filter of an empty one:
/// `{}`, `{"exact": {}}`, `{"all": []}`, `{"not": {}}`, `{"cesql": ""}` are no condition, skipped where they
/// stand (an `all` or `any` of nothing else, and a `not` of one, too). A non-empty `filters` is the filter even
/// when all of its filters are empty. Regression: they were refused, and Knative YAML holding them did not apply.
#[test]
fn empty_dialects_are_no_condition_as_in_knative() {
    let other = event(json!({"specversion": "1.0", "id": "2", "type": "other", "source": "s"}));
    // (filters, matches the push event, matches the other event)
    let cases = [
        (json!([{}]), true, true),
        (json!([{"exact": null}]), true, true),
        (json!([{"exact": {}}]), true, true),
        (json!([{"cesql": ""}]), true, true),
        (json!([{"all": []}]), true, true),
        (json!([{"any": [{}]}]), true, true),
        (json!([{"not": {}}]), true, true),
        (json!([{"not": {"exact": {}}}]), true, true),
        (json!([{"exact": {}, "prefix": {"type": "com.github"}}]), true, false),
        (json!([{}, {"exact": {"type": "other"}}]), false, true),
        (json!([{"all": [{}, {"exact": {"type": "other"}}]}]), false, true),
        (json!([{"any": [{"cesql": ""}, {"exact": {"type": "other"}}]}]), false, true),
    ];
    for (list, push, second) in cases {
        let filter = filters(list.clone());
        assert_eq!((filter.matches(&push_event()), filter.matches(&other)), (push, second), "{list}");
    }
    // `filters` of empty filters wins over `filter.attributes`, as a non-empty list does in Knative.
    let both = compile(Some(&attributes(&[("type", "nothing")])), Some(&json!([{}]))).expect("valid");
    assert!(both.matches(&push_event()));
}

#[test]
fn invalid_filters_are_rejected_with_their_path() {
    let cases = [
        (
            json!({"exact": {"type": "a"}}),
            FilterError::WrongType { path: "filters".into(), expected: "an array of filters" },
        ),
        (json!(["exact"]), FilterError::WrongType { path: "filters[0]".into(), expected: "a filter object" }),
        (
            json!([{"exact": {"type": "a"}}, {"exact": {"type": "a"}, "prefix": {"type": "b"}}]),
            FilterError::DialectCount { path: "filters[1]".into(), found: 2 },
        ),
        (json!([{"sql": "TRUE"}]), FilterError::UnknownDialect { path: "filters[0]".into(), dialect: "sql".into() }),
        (
            json!([{"exact": {"type": "a"}, "futureDialect": {}}]),
            FilterError::UnknownDialect { path: "filters[0]".into(), dialect: "futureDialect".into() },
        ),
        (
            json!([{"prefix": {"type": "a", "source": ""}}]),
            FilterError::EmptyValue { path: "filters[0].prefix[source]".into() },
        ),
        (
            json!([{"exact": "type"}]),
            FilterError::WrongType {
                path: "filters[0].exact".into(),
                expected: "an object mapping attributes to values",
            },
        ),
        (
            json!([{"exact": {"type": 1}}]),
            FilterError::WrongType { path: "filters[0].exact[type]".into(), expected: "a string" },
        ),
        (json!([{"prefix": {"type": ""}}]), FilterError::EmptyValue { path: "filters[0].prefix[type]".into() }),
        (json!([{"suffix": {"type": ""}}]), FilterError::EmptyValue { path: "filters[0].suffix[type]".into() }),
        (
            json!([{"suffix": {"Type": "x"}}]),
            FilterError::InvalidAttributeName { path: "filters[0].suffix[Type]".into() },
        ),
        (
            json!([{"all": [{"exact": {"Bad": "a"}}]}]),
            FilterError::InvalidAttributeName { path: "filters[0].all[0].exact[Bad]".into() },
        ),
        (
            json!([{"all": {"exact": {"type": "a"}}}]),
            FilterError::WrongType { path: "filters[0].all".into(), expected: "an array of filters" },
        ),
        (json!([{"not": []}]), FilterError::WrongType { path: "filters[0].not".into(), expected: "a filter object" }),
        (
            json!([{"not": {"cesql": "true", "exact": {"a": "b"}}}]),
            FilterError::DialectCount { path: "filters[0].not".into(), found: 2 },
        ),
        (
            json!([{"cesql": 1}]),
            FilterError::WrongType { path: "filters[0].cesql".into(), expected: "a CESQL expression (string)" },
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(filters_err(input.clone()), expected, "{input}");
    }
}

#[test]
fn invalid_cesql_is_rejected_at_compile_time() {
    for (input, path) in [
        (json!([{"cesql": "type ="}]), "filters[0].cesql"),
        (json!([{"cesql": " "}]), "filters[0].cesql"),
        (
            json!([{"exact": {"type": "a"}}, {"any": [{"exact": {"type": "a"}}, {"cesql": "(1"}]}]),
            "filters[1].any[1].cesql",
        ),
        (json!([{"not": {"cesql": "x LIKE 1"}}]), "filters[0].not.cesql"),
    ] {
        let err = filters_err(input.clone());
        assert!(matches!(err, FilterError::Cesql { .. }), "{input}: {err:?}");
        assert_eq!(err.path(), path);
        assert!(err.to_string().starts_with(&format!("{path}: CESQL parse error")), "{err}");
    }
}

#[test]
fn error_messages_name_the_path_and_reason() {
    assert_eq!(
        filters_err(json!([{"exact": {"type": "a"}, "prefix": {"type": "b"}}])).to_string(),
        "filters[0]: a filter holds at most one of exact, prefix, suffix, all, any, not, cesql; got 2"
    );
    assert_eq!(filters_err(json!([{"foo": 1}])).to_string(), "filters[0]: unsupported filter dialect \"foo\"");
}

// --- index ---

fn index_of(filters_by_key: Vec<(u32, CompiledFilter)>) -> FilterIndex<u32> {
    FilterIndex::new(filters_by_key)
}

#[test]
fn index_key_prefers_type_then_source_then_smallest_name() {
    let key = |f: &CompiledFilter| f.index_key().map(|(a, v)| (a.to_owned(), v.to_owned()));
    let pair = |a: &str, v: &str| Some((a.to_owned(), v.to_owned()));
    assert_eq!(key(&legacy(&[("source", "s"), ("type", "t"), ("a", "x")])), pair("type", "t"));
    assert_eq!(key(&legacy(&[("source", "s"), ("a", "x")])), pair("source", "s"));
    assert_eq!(key(&legacy(&[("zz", "1"), ("b", "2")])), pair("b", "2"));
    assert_eq!(key(&legacy(&[("type", "")])), None, "presence only");
    assert_eq!(key(&legacy(&[("type", ""), ("b", "2")])), pair("b", "2"));
    assert_eq!(key(&legacy(&[])), None);
    assert_eq!(key(&filters(json!([{"prefix": {"type": "a"}}, {"exact": {"source": "s"}}]))), pair("source", "s"));
    assert_eq!(
        key(&filters(json!([{"all": [{"exact": {"subject": "x"}}, {"all": [{"exact": {"type": "t"}}]}]}]))),
        pair("type", "t"),
        "exact reached through `all` only is required"
    );
    assert_eq!(key(&filters(json!([{"any": [{"exact": {"type": "t"}}]}]))), None);
    assert_eq!(key(&filters(json!([{"not": {"exact": {"type": "t"}}}]))), None);
    assert_eq!(key(&filters(json!([{"cesql": "type = 't'"}]))), None);
    // `filters` replaces `filter.attributes`, so the attributes' exact values are not required.
    let both = compile(Some(&attributes(&[("type", "t")])), Some(&json!([{"prefix": {"type": "t"}}])));
    assert_eq!(key(&both.expect("valid")), None);
}

#[test]
fn index_returns_matching_keys_once_in_ascending_order() {
    let index = index_of(vec![
        (5, legacy(&[("type", "com.github.push")])),
        (3, filters(json!([{"exact": {"source": "https://github.com/cloudevents/spec"}}]))),
        (9, legacy(&[("subject", "README.md")])),
        (1, filters(json!([{"prefix": {"type": "com."}}]))),
        (7, legacy(&[("type", "other")])),
        (2, compile(None, None).expect("no filter")),
        (4, legacy(&[("type", "com.github.push"), ("subject", "LICENSE")])),
        // The same key twice: it matches once even though both of its filters match.
        (5, filters(json!([{"exact": {"subject": "README.md"}}]))),
        (8, filters(json!([{"cesql": "seq = 42"}]))),
        (6, legacy(&[("seq", "42")])),
    ]);
    assert_eq!(index.len(), 10);
    assert!(!index.is_empty());
    let (matched, evaluated) = index.matching_counted(&push_event(), |_, _| {});
    assert_eq!(matched, vec![1, 2, 3, 5, 6, 8, 9]);
    assert_eq!(evaluated, 9, "only the filter on type `other` is skipped");
    assert_eq!(index.matching(&push_event()), matched);
    assert_eq!(index.matching(&Event::new()), vec![2]);
}

#[test]
fn index_looks_up_canonical_values_of_non_string_attributes() {
    let index = index_of(vec![(1, legacy(&[("seq", "42")])), (2, legacy(&[("flag", "true")]))]);
    assert_eq!(index.matching(&push_event()), vec![1, 2]);
    assert_eq!(index.matching(&event(json!({"seq": "42", "flag": "true"}))), vec![1, 2]);
    assert_eq!(index.matching(&event(json!({"seq": 43, "flag": false}))), Vec::<u32>::new());
}

/// Regression: the dispatcher's shared reader matched through the index, which dropped the errors, so
/// `sluice_filter_evaluation_errors_total` counted only what detached consumers read on their own.
#[test]
fn the_index_tells_which_filters_failed_on_an_event() {
    let index = index_of(vec![
        (1, filters(json!([{"cesql": "INT(type) > 0"}]))),
        (2, filters(json!([{"cesql": "missing = 'x'"}]))),
        (3, filters(json!([{"cesql": "type = 'com.github.push'"}]))),
        (4, filters(json!([{"not": {"cesql": "INT(source) > 0"}}]))),
    ]);
    let mut failed = Vec::new();
    let matched = index.matching_noting_errors(&push_event(), |key, error| failed.push((*key, error.to_string())));
    assert_eq!(matched, vec![3, 4], "an error is no match, and `not` of one matches (its error is told too)");
    failed.sort();
    let keys: Vec<u32> = failed.iter().map(|(key, _)| *key).collect();
    assert_eq!(keys, vec![1, 2, 4], "{failed:?}");
}

#[test]
fn empty_index_matches_nothing() {
    let index: FilterIndex<u32> = FilterIndex::new(Vec::new());
    assert!(index.is_empty());
    assert_eq!(index.matching_counted(&push_event(), |_, _| {}), (Vec::new(), 0));
}

#[test]
fn index_agrees_with_evaluating_every_filter() {
    let specs = [
        json!([{"exact": {"type": "a"}}]),
        json!([{"exact": {"type": "b"}}, {"prefix": {"source": "/x"}}]),
        json!([{"exact": {"source": "/x/1"}}]),
        json!([{"exact": {"subject": "s"}}]),
        json!([{"all": [{"exact": {"type": "a"}}, {"exact": {"subject": "s"}}]}]),
        json!([{"any": [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]}]),
        json!([{"not": {"exact": {"type": "a"}}}]),
        json!([{"suffix": {"source": "/1"}}]),
        json!([{"cesql": "type = 'b' OR subject = 's'"}]),
        json!([{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]),
    ];
    let mut compiled: Vec<(usize, CompiledFilter)> =
        specs.iter().enumerate().map(|(i, spec)| (i, filters(spec.clone()))).collect();
    compiled.push((10, legacy(&[("type", "b"), ("subject", "")])));
    compiled.push((11, legacy(&[("source", "/x/2")])));
    let index = FilterIndex::new(compiled.clone());
    for ty in [None, Some("a"), Some("b"), Some("c")] {
        for source in [None, Some("/x/1"), Some("/x/2"), Some("/y/1")] {
            for subject in [None, Some("s"), Some("t")] {
                let mut e = Event::new();
                for (name, value) in [("type", ty), ("source", source), ("subject", subject)] {
                    if let Some(value) = value {
                        e.insert(name.into(), value.into());
                    }
                }
                let expected: Vec<usize> = compiled.iter().filter(|(_, f)| f.matches(&e)).map(|(k, _)| *k).collect();
                assert_eq!(index.matching(&e), expected, "{e:?}");
            }
        }
    }
}

#[test]
fn index_evaluates_far_fewer_than_all_filters() {
    // 1,000 Triggers: most filter on their own type (legacy or `exact`, some with a further condition), some
    // on their own source; a few need evaluating for every event.
    let mut triggers = Vec::new();
    for i in 0..1_000u32 {
        let filter = match i % 4 {
            0 => legacy(&[("type", format!("com.example.t{i}").as_str())]),
            1 => filters(json!([{"exact": {"type": format!("com.example.t{i}")}}, {"cesql": "seq > 0"}])),
            2 => filters(json!([{"prefix": {"subject": "x"}}, {"exact": {"source": format!("/s/{i}")}}])),
            _ if i % 100 == 3 => filters(json!([{"prefix": {"type": format!("org.example.t{i}")}}])),
            _ => legacy(&[("type", format!("com.example.t{i}").as_str()), ("subject", "")]),
        };
        triggers.push((format!("trigger-{i:04}"), filter));
    }
    let index = FilterIndex::new(triggers);
    let e = event(json!({"type": "com.example.t501", "source": "/s/none", "subject": "a", "seq": 1}));
    let (matched, evaluated) = index.matching_counted(&e, |_, _| {});
    assert_eq!(matched, vec!["trigger-0501".to_owned()]);
    // The one candidate for its type plus the 10 prefix filters that cannot be indexed.
    assert_eq!(evaluated, 11);
    assert!(evaluated < 1_000 / 50);

    let by_source = event(json!({"type": "none", "source": "/s/2", "subject": "xyz"}));
    assert_eq!(index.matching_counted(&by_source, |_, _| {}), (vec!["trigger-0002".to_owned()], 11));

    let nothing = event(json!({"type": "com.example.unknown", "source": "/s/unknown"}));
    assert_eq!(index.matching_counted(&nothing, |_, _| {}), (Vec::new(), 10));
}

proptest::proptest! {
    /// The index answers exactly what evaluating every filter answers (docs/dispatch.md), for random filters
    /// (legacy attributes, `exact`, `prefix`, combined) and random events over a small alphabet, so that
    /// collisions are common.
    #[test]
    fn index_equals_linear_scan(
        specs in proptest::collection::vec((0u8..4, "[ab]", "[xy]{0,2}", proptest::bool::ANY), 1..24),
        events in proptest::collection::vec(("[ab]", "[xy]{0,2}", proptest::option::of("[xy]{0,2}")), 1..12),
    ) {
        let compiled: Vec<(usize, CompiledFilter)> = specs
            .iter()
            .enumerate()
            .map(|(i, (dialect, ty, value, with_subject))| {
                // `exact` and `prefix` refuse empty values; legacy attributes read "" as "any value".
                let non_empty = if value.is_empty() { "x" } else { value.as_str() };
                let filter = match dialect {
                    0 => legacy(&[("type", ty.as_str()), ("source", value.as_str())]),
                    1 => filters(json!([{"exact": {"type": ty}}])),
                    2 => filters(json!([{"prefix": {"source": non_empty}}])),
                    _ => filters(json!([{"exact": {"source": non_empty}}, {"exact": {"type": ty}}])),
                };
                let filter = if *with_subject && *dialect == 0 {
                    legacy(&[("type", ty.as_str()), ("subject", "")])
                } else {
                    filter
                };
                (i, filter)
            })
            .collect();
        let index = FilterIndex::new(compiled.clone());
        for (ty, source, subject) in &events {
            let mut e = Event::new();
            e.insert("type".into(), ty.as_str().into());
            e.insert("source".into(), source.as_str().into());
            if let Some(subject) = subject {
                e.insert("subject".into(), subject.as_str().into());
            }
            let expected: Vec<usize> = compiled.iter().filter(|(_, f)| f.matches(&e)).map(|(k, _)| *k).collect();
            proptest::prop_assert_eq!(index.matching(&e), expected);
        }
    }
}

/// An evaluation error means no match, and is reported with the outcome (the dispatcher counts it per consumer:
/// a Trigger whose expression fails on every event matches nothing, and its owner is told why).
#[test]
fn an_evaluation_error_is_no_match_and_is_reported() {
    let failing = filters(json!([{"cesql": "INT(subject) > 10"}]));
    let (matched, error) = failing.matches_noting_errors(&push_event());
    assert!(!matched);
    assert!(matches!(error, Some(EvalError::Cast(_))), "{error:?}");
    let missing = filters(json!([{"not": {"cesql": "nosuch = 'x'"}}]));
    let (matched, error) = missing.matches_noting_errors(&push_event());
    assert!(matched, "NOT of a failed expression: the expression is false, its negation true");
    assert!(matches!(error, Some(EvalError::MissingAttribute(_))), "{error:?}");
    let fine = filters(json!([{"cesql": "seq > 10"}]));
    assert!(fine.matches_noting_errors(&push_event()).0);
    assert!(fine.matches_noting_errors(&push_event()).1.is_none());
}
