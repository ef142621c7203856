use serde_json::{Value, json};

use super::*;

fn broker() -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "default", "namespace": "default",
                     "annotations": {"eventing.knative.dev/broker.class": "MTChannelBasedBroker"}},
        "spec": {"delivery": {
            "deadLetterSink": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "dlq"}},
            "retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S", "timeout": "PT5S", "retryAfterMax": "PT1M"}}
    })
}

fn trigger() -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "my-trigger", "namespace": "default"},
        "spec": {
            "broker": "default",
            "filter": {"attributes": {"type": "dev.knative.foo.bar", "myextension": ""}},
            "filters": [
                {"exact": {"type": "com.github.push"}},
                {"prefix": {"source": "https://github.com"}},
                {"suffix": {"subject": ".jpg"}},
                {"all": [{"exact": {"type": "a"}}, {"not": {"exact": {"source": "b"}}}]},
                {"any": [{"cesql": "type LIKE 'dev.%'"}]}
            ],
            "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "my-service"}, "uri": "/path"},
            "delivery": {"retry": 0}
        }
    })
}

fn channel() -> Value {
    json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel",
           "metadata": {"name": "my-channel"}, "spec": {"delivery": {"retry": 3}}})
}

fn subscription() -> Value {
    json!({"apiVersion": "messaging.knative.dev/v1", "kind": "Subscription",
           "metadata": {"name": "sub", "namespace": "default"},
           "spec": {"channel": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "my-channel"},
                    "subscriber": {"uri": "http://example.com/events"},
                    "reply": {"ref": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "replies"}}}})
}

#[test]
fn knative_shaped_objects_are_valid() {
    for object in [broker(), trigger(), channel(), subscription()] {
        assert_eq!(validate_object(&object, None), Ok(()), "{object}");
    }
    let mut with_unknown = trigger();
    with_unknown["spec"]["futureField"] = json!({"x": 1});
    assert_eq!(validate_object(&with_unknown, None), Ok(()), "unknown fields are kept, not rejected");
}

fn set(mut object: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let target = if parent.is_empty() { &mut object } else { object.pointer_mut(parent).expect("parent exists") };
    match value {
        Value::Null => {
            target.as_object_mut().expect("object").remove(key);
        }
        value => {
            target.as_object_mut().expect("object").insert(key.to_string(), value);
        }
    }
    object
}

#[test]
fn invalid_objects_name_their_field() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("unknown kind", set(broker(), "/kind", json!("Brokers")), "kind"),
        ("wrong api version", set(broker(), "/apiVersion", json!("eventing.knative.dev/v1beta1")), "apiVersion"),
        ("missing name", set(broker(), "/metadata/name", Value::Null), "metadata.name"),
        ("upper-case name", set(broker(), "/metadata/name", json!("Default")), "metadata.name"),
        ("underscore name", set(broker(), "/metadata/name", json!("my_broker")), "metadata.name"),
        ("long name", set(broker(), "/metadata/name", json!("a".repeat(64))), "metadata.name"),
        ("bad namespace", set(broker(), "/metadata/namespace", json!("-ns")), "metadata.namespace"),
        (
            "ttl zero",
            set(broker(), "/metadata/annotations", json!({"sluice.dev/ttl": "0"})),
            "metadata.annotations[sluice.dev/ttl]",
        ),
        (
            "dedupe window text",
            set(broker(), "/metadata/annotations", json!({"sluice.dev/dedupe-window": "soon"})),
            "metadata.annotations[sluice.dev/dedupe-window]",
        ),
        (
            "retention text",
            set(broker(), "/metadata/annotations", json!({"sluice.dev/retention": "forever"})),
            "metadata.annotations[sluice.dev/retention]",
        ),
        (
            "unknown sluice annotation",
            set(broker(), "/metadata/annotations", json!({"sluice.dev/colour": "blue"})),
            "metadata.annotations[sluice.dev/colour]",
        ),
        (
            "initial offset",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/initial-offset": "middle"})),
            "metadata.annotations[sluice.dev/initial-offset]",
        ),
        (
            "delivery order",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/delivery-order": "random"})),
            "metadata.annotations[sluice.dev/delivery-order]",
        ),
        (
            "kafka delivery order",
            set(trigger(), "/metadata/annotations", json!({"kafka.eventing.knative.dev/delivery.order": "sorted"})),
            "metadata.annotations[kafka.eventing.knative.dev/delivery.order]",
        ),
        (
            "max inflight zero",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/max-inflight": "0"})),
            "metadata.annotations[sluice.dev/max-inflight]",
        ),
        (
            "max inflight huge",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/max-inflight": "1000000"})),
            "metadata.annotations[sluice.dev/max-inflight]",
        ),
        (
            "rate limit",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/rate-limit": "-5"})),
            "metadata.annotations[sluice.dev/rate-limit]",
        ),
        (
            "backoff max",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/backoff-max": "later"})),
            "metadata.annotations[sluice.dev/backoff-max]",
        ),
        (
            "backoff jitter",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/backoff-jitter": "1.5"})),
            "metadata.annotations[sluice.dev/backoff-jitter]",
        ),
        (
            "dead letter",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/dead-letter": "discard"})),
            "metadata.annotations[sluice.dev/dead-letter]",
        ),
        (
            "subscriber protocol",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/subscriber-protocol": "h3"})),
            "metadata.annotations[sluice.dev/subscriber-protocol]",
        ),
        ("annotation not a string", set(broker(), "/metadata/annotations", json!({"a": 1})), "metadata.annotations[a]"),
        ("negative retry", set(broker(), "/spec/delivery/retry", json!(-1)), "spec.delivery.retry"),
        (
            "bad backoff policy",
            set(broker(), "/spec/delivery/backoffPolicy", json!("random")),
            "spec.delivery.backoffPolicy",
        ),
        (
            "backoff delay not ISO",
            set(broker(), "/spec/delivery/backoffDelay", json!("200ms")),
            "spec.delivery.backoffDelay",
        ),
        ("timeout not ISO", set(broker(), "/spec/delivery/timeout", json!("PTXS")), "spec.delivery.timeout"),
        (
            "retryAfterMax empty",
            set(broker(), "/spec/delivery/retryAfterMax", json!("P")),
            "spec.delivery.retryAfterMax",
        ),
        ("bad format", set(broker(), "/spec/delivery/format", json!("xml")), "spec.delivery.format"),
        (
            "dead letter sink empty",
            set(broker(), "/spec/delivery/deadLetterSink", json!({})),
            "spec.delivery.deadLetterSink",
        ),
        (
            "dead letter ref without name",
            set(broker(), "/spec/delivery/deadLetterSink/ref/name", Value::Null),
            "spec.delivery.deadLetterSink.ref.name",
        ),
        ("broker config without kind", set(broker(), "/spec/config", json!({"name": "cfg"})), "spec.config.kind"),
        ("trigger without broker", set(trigger(), "/spec/broker", Value::Null), "spec.broker"),
        ("trigger broker bad name", set(trigger(), "/spec/broker", json!("Bad Name")), "spec.broker"),
        ("trigger without subscriber", set(trigger(), "/spec/subscriber", Value::Null), "spec.subscriber"),
        ("subscriber neither", set(trigger(), "/spec/subscriber", json!({})), "spec.subscriber"),
        (
            "subscriber uri relative",
            set(trigger(), "/spec/subscriber", json!({"uri": "/only/path"})),
            "spec.subscriber.uri",
        ),
        (
            "subscriber ref plus absolute uri",
            set(trigger(), "/spec/subscriber/uri", json!("http://x/y")),
            "spec.subscriber.uri",
        ),
        (
            "subscriber ref without apiVersion",
            set(trigger(), "/spec/subscriber/ref/apiVersion", Value::Null),
            "spec.subscriber.ref.apiVersion",
        ),
        (
            "filter attribute upper-case",
            set(trigger(), "/spec/filter/attributes", json!({"Type": "x"})),
            "spec.filter.attributes[Type]",
        ),
        (
            "filter attribute digit first",
            set(trigger(), "/spec/filter/attributes", json!({"1type": "x"})),
            "spec.filter.attributes[1type]",
        ),
        (
            "two dialects",
            set(trigger(), "/spec/filters", json!([{"exact": {"type": "a"}, "prefix": {"type": "b"}}])),
            "spec.filters[0]",
        ),
        ("no dialect", set(trigger(), "/spec/filters", json!([{}])), "spec.filters[0]"),
        (
            "unknown dialect",
            set(trigger(), "/spec/filters", json!([{"exact": {"type": "a"}, "sql": "x"}])),
            "spec.filters[0].sql",
        ),
        (
            "exact two attributes",
            set(trigger(), "/spec/filters", json!([{"exact": {"type": "a", "source": "b"}}])),
            "spec.filters[0].exact",
        ),
        (
            "prefix empty value",
            set(trigger(), "/spec/filters", json!([{"prefix": {"type": ""}}])),
            "spec.filters[0].prefix[type]",
        ),
        (
            "nested bad name",
            set(trigger(), "/spec/filters", json!([{"all": [{"exact": {"Bad": "a"}}]}])),
            "spec.filters[0].all[0].exact[Bad]",
        ),
        ("empty any", set(trigger(), "/spec/filters", json!([{"any": []}])), "spec.filters[0].any"),
        (
            "not with two dialects",
            set(trigger(), "/spec/filters", json!([{"not": {"cesql": "true", "exact": {"a": "b"}}}])),
            "spec.filters[0].not",
        ),
        ("empty cesql", set(trigger(), "/spec/filters", json!([{"cesql": " "}])), "spec.filters[0].cesql"),
        (
            "cesql does not parse",
            set(trigger(), "/spec/filters", json!([{"cesql": "type = "}])),
            "spec.filters[0].cesql",
        ),
        ("subscription without channel", set(subscription(), "/spec/channel", Value::Null), "spec.channel"),
        (
            "subscription channel without apiVersion",
            set(subscription(), "/spec/channel/apiVersion", Value::Null),
            "spec.channel.apiVersion",
        ),
        (
            "subscription without subscriber or reply",
            set(set(subscription(), "/spec/subscriber", Value::Null), "/spec/reply", Value::Null),
            "spec.subscriber",
        ),
        ("subscription bad reply", set(subscription(), "/spec/reply", json!({"uri": "ftp://x"})), "spec.reply.uri"),
        ("channel negative retry", set(channel(), "/spec/delivery/retry", json!(-2)), "spec.delivery.retry"),
        ("retry not a number", set(broker(), "/spec/delivery/retry", json!("five")), "spec"),
    ];
    assert!(cases.len() >= 30);
    eprintln!("{} invalid objects", cases.len());
    for (name, object, path) in cases {
        let errors = validate_object(&object, None).expect_err(name);
        assert!(errors.iter().any(|e| e.path == path), "{name}: expected {path}, got {errors:?}");
    }
}

#[test]
fn immutable_fields_cannot_change() {
    let stored = trigger();
    assert_eq!(validate_object(&stored, Some(&stored)), Ok(()));
    let moved = set(trigger(), "/spec/broker", json!("other"));
    assert!(validate_object(&moved, Some(&stored)).expect_err("broker").iter().any(|e| e.path == "spec.broker"));
    let reclassed = set(broker(), "/metadata/annotations", json!({"eventing.knative.dev/broker.class": "Kafka"}));
    let errors = validate_object(&reclassed, Some(&broker())).expect_err("class");
    assert!(errors.iter().any(|e| e.path == "metadata.annotations[eventing.knative.dev/broker.class]"), "{errors:?}");
    let unclassed = set(broker(), "/metadata/annotations", json!({}));
    assert_eq!(
        validate_object(&broker(), Some(&unclassed)),
        Ok(()),
        "a class may be set once on a Broker that had none"
    );
    let reconfigured = set(broker(), "/spec/config", json!({"kind": "ConfigMap", "name": "x"}));
    assert!(
        validate_object(&reconfigured, Some(&broker())).expect_err("config").iter().any(|e| e.path == "spec.config")
    );
    let rechanneled = set(subscription(), "/spec/channel/name", json!("other"));
    assert!(
        validate_object(&rechanneled, Some(&subscription()))
            .expect_err("channel")
            .iter()
            .any(|e| e.path == "spec.channel")
    );
}

#[test]
fn durations_and_sizes_parse() {
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
    assert_eq!(parse_duration("PT0.5S"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("P1DT2H"), Ok(Duration::from_secs(86400 + 7200)));
    for bad in ["", "2", "2x", "m", "PT", "P", "-1s", "PT1X"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_size("10GiB"), Some(10 << 30));
    assert_eq!(parse_size("500MB"), Some(500_000_000));
    assert_eq!(parse_size("12parsecs"), None);
}
