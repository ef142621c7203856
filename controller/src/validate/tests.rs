use serde_json::{Value, json};

use std::time::Duration;

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
        (
            "subscription channel in another namespace",
            set(subscription(), "/spec/channel/namespace", json!("elsewhere")),
            "spec.channel.namespace",
        ),
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
            "rate limit tiny",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/rate-limit": "1e-20"})),
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
            "exact without an attribute",
            set(trigger(), "/spec/filters", json!([{"exact": {}}])),
            "spec.filters[0].exact",
        ),
        (
            "prefix empty value",
            set(trigger(), "/spec/filters", json!([{"prefix": {"type": ""}}])),
            "spec.filters[0].prefix[type]",
        ),
        (
            "exact empty value",
            set(trigger(), "/spec/filters", json!([{"exact": {"type": "a", "subject": ""}}])),
            "spec.filters[0].exact[subject]",
        ),
        (
            "suffix empty value",
            set(trigger(), "/spec/filters", json!([{"suffix": {"subject": ""}}])),
            "spec.filters[0].suffix[subject]",
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
        (
            "subscription with a reply but no subscriber (Knative v1 requires one)",
            set(subscription(), "/spec/subscriber", Value::Null),
            "spec.subscriber",
        ),
        (
            "subscription with an empty subscriber",
            set(subscription(), "/spec/subscriber", json!({})),
            "spec.subscriber",
        ),
        ("uri without a host", set(trigger(), "/spec/subscriber", json!({"uri": "http:///x"})), "spec.subscriber.uri"),
        (
            "uri with only userinfo and a port",
            set(trigger(), "/spec/subscriber", json!({"uri": "http://user@:8080/x"})),
            "spec.subscriber.uri",
        ),
        (
            "dependency annotation not an object reference",
            set(trigger(), "/metadata/annotations", json!({"knative.dev/dependency": "pingsource"})),
            "metadata.annotations[knative.dev/dependency]",
        ),
        (
            "dependency annotation without apiVersion",
            set(
                trigger(),
                "/metadata/annotations",
                json!({"knative.dev/dependency": "{\"kind\":\"PingSource\",\"name\":\"p\"}"}),
            ),
            "metadata.annotations[knative.dev/dependency].apiVersion",
        ),
        (
            "dependency annotation in another namespace",
            set(
                trigger(),
                "/metadata/annotations",
                json!({"knative.dev/dependency":
                    "{\"kind\":\"PingSource\",\"name\":\"p\",\"apiVersion\":\"sources.knative.dev/v1\",\"namespace\":\"other\"}"}),
            ),
            "metadata.annotations[knative.dev/dependency].namespace",
        ),
        (
            "injection annotation neither enabled nor disabled",
            set(trigger(), "/metadata/annotations", json!({"eventing.knative.dev/injection": "true"})),
            "metadata.annotations[eventing.knative.dev/injection]",
        ),
        ("channel negative retry", set(channel(), "/spec/delivery/retry", json!(-2)), "spec.delivery.retry"),
        ("retry not a number", set(broker(), "/spec/delivery/retry", json!("five")), "spec.delivery.retry"),
    ];
    assert!(cases.len() >= 30);
    eprintln!("{} invalid objects", cases.len());
    for (name, object, path) in cases {
        let errors = validate_object(&object, None).expect_err(name);
        assert!(errors.iter().any(|e| e.path == path), "{name}: expected {path}, got {errors:?}");
    }
}

/// Knative YAML its webhook accepts: an empty `reply: {}` is no reply, a dependency annotation naming what the
/// Trigger waits for, the injection annotation on a Trigger of Broker `default`, a URI with a host and a port.
#[test]
fn knatives_optional_forms_are_accepted() {
    let trigger_of_default = set(trigger(), "/spec/broker", json!("default"));
    let accepted = [
        ("an empty reply", set(subscription(), "/spec/reply", json!({}))),
        (
            "a dependency",
            set(
                trigger(),
                "/metadata/annotations",
                json!({"knative.dev/dependency":
                    "{\"kind\":\"PingSource\",\"name\":\"p\",\"apiVersion\":\"sources.knative.dev/v1\"}"}),
            ),
        ),
        (
            "injection",
            set(trigger_of_default, "/metadata/annotations", json!({"eventing.knative.dev/injection": "enabled"})),
        ),
        ("a host and a port", set(trigger(), "/spec/subscriber", json!({"uri": "http://user@[::1]:8080/x"}))),
    ];
    for (name, object) in accepted {
        assert_eq!(validate_object(&object, None), Ok(()), "{name}");
    }
    let other_broker = set(trigger(), "/spec/broker", json!("other"));
    let elsewhere = set(other_broker, "/metadata/annotations", json!({"eventing.knative.dev/injection": "enabled"}));
    let errors = validate_object(&elsewhere, None).expect_err("injection names Broker default only");
    assert!(errors.iter().any(|e| e.message.contains("only used for default broker")), "{errors:?}");
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
    // The last three overflow `Duration` (a panic before: the validation of an object said nothing).
    for bad in [
        "",
        "2",
        "2x",
        "m",
        "PT",
        "P",
        "-1s",
        "PT1X",
        "PT99999999999999999999S",
        "99999999999999999999s",
        "P99999999999999999999D",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_size("10GiB"), Some(10 << 30));
    assert_eq!(parse_size("500MB"), Some(500_000_000));
    assert_eq!(parse_size("12parsecs"), None);
}

/// The values the dispatcher refused when it built the consumer while this validation let them through (the
/// Trigger showed Ready and never delivered): each is refused here now, naming its field and its rule.
#[test]
fn delivery_durations_the_dispatcher_refuses_are_refused_naming_field_and_rule() {
    let only_seconds = "only the seconds may have a fraction";
    let not_iso = "is not an ISO-8601 duration";
    let order = "each unit may appear once, in the order";
    let zero = "a timeout must be greater than zero";
    let short = "one whole number and one unit";
    let backoff_max = "metadata.annotations[sluice.dev/backoff-max]";
    let delivery = |field: &str, value: &str| set(trigger(), &format!("/spec/delivery/{field}"), json!(value));
    let annotation = |value: &str| set(trigger(), "/metadata/annotations", json!({"sluice.dev/backoff-max": value}));
    let cases: Vec<(Value, &str, &str)> = vec![
        (delivery("backoffDelay", "PT1.5M"), "spec.delivery.backoffDelay", only_seconds),
        (delivery("timeout", "PT1.5M"), "spec.delivery.timeout", only_seconds),
        (delivery("retryAfterMax", "PT1.5M"), "spec.delivery.retryAfterMax", only_seconds),
        (delivery("backoffDelay", "P1.5D"), "spec.delivery.backoffDelay", only_seconds),
        (delivery("retryAfterMax", "PT0.5H"), "spec.delivery.retryAfterMax", only_seconds),
        (delivery("backoffDelay", "PT.5S"), "spec.delivery.backoffDelay", not_iso),
        (delivery("timeout", "PT.5S"), "spec.delivery.timeout", not_iso),
        (delivery("backoffDelay", "PT30S1M"), "spec.delivery.backoffDelay", order),
        (delivery("retryAfterMax", "PT30S1M"), "spec.delivery.retryAfterMax", order),
        (delivery("timeout", "PT1H1H"), "spec.delivery.timeout", order),
        (delivery("timeout", "PT0S"), "spec.delivery.timeout", zero),
        (delivery("timeout", "P0D"), "spec.delivery.timeout", zero),
        (delivery("timeout", "PT0.0001S"), "spec.delivery.timeout", zero),
        (delivery("backoffDelay", " PT1S"), "spec.delivery.backoffDelay", not_iso),
        (delivery("backoffDelay", "P1M"), "spec.delivery.backoffDelay", "years and months"),
        (delivery("timeout", "PT99999999999999999999S"), "spec.delivery.timeout", "is too long"),
        (annotation("1h30m"), backoff_max, short),
        (annotation("0.5s"), backoff_max, short),
        (annotation("30"), backoff_max, short),
        (annotation("PT1.5M"), backoff_max, only_seconds),
        (annotation("P1.5D"), backoff_max, only_seconds),
        (annotation("PT.5S"), backoff_max, not_iso),
        (annotation("PT30S1M"), backoff_max, order),
    ];
    for (object, path, rule) in cases {
        let errors = validate_object(&object, None).expect_err(path);
        assert!(
            errors.iter().any(|e| e.path == path && e.message.contains(rule)),
            "expected {path}: ...{rule}..., got {errors:?}"
        );
    }
    // The same refusals on the other kinds that carry a DeliverySpec.
    for object in [broker(), channel(), subscription()] {
        let object = set(object, "/spec/delivery", json!({"timeout": "PT0S", "backoffDelay": "PT1.5M"}));
        let errors = validate_object(&object, None).expect_err("zero timeout, fractional minutes");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.delivery.backoffDelay", "spec.delivery.timeout"], "{errors:?}");
    }
}

#[test]
fn delivery_durations_the_dispatcher_accepts_are_accepted() {
    for (field, value) in [
        ("backoffDelay", "PT0.2S"),
        ("backoffDelay", "PT0,2S"),
        ("backoffDelay", "PT0S"),
        ("backoffDelay", "PT1H2M3.5S"),
        ("timeout", "PT0.001S"),
        ("timeout", "PT30S"),
        ("timeout", "PT90S"),
        ("timeout", "P1DT2H"),
        ("retryAfterMax", "PT0S"),
        ("retryAfterMax", "PT2M"),
        ("retryAfterMax", "P1W1D"),
    ] {
        let object = set(trigger(), &format!("/spec/delivery/{field}"), json!(value));
        assert_eq!(validate_object(&object, None), Ok(()), "{field}: {value}");
    }
    for value in ["250ms", "30s", "5m", "1h", "1d", "0s", " 30s", "PT1M", "PT0.5S", "P1D"] {
        let object = set(trigger(), "/metadata/annotations", json!({"sluice.dev/backoff-max": value}));
        assert_eq!(validate_object(&object, None), Ok(()), "backoff-max: {value:?}");
    }
}

#[test]
fn empty_filter_values_are_refused_except_in_the_legacy_attributes() {
    for dialect in ["exact", "prefix", "suffix"] {
        let object = set(trigger(), "/spec/filters", json!([{"not": {dialect: {"type": ""}}}]));
        let path = format!("spec.filters[0].not.{dialect}[type]");
        assert_eq!(
            validate_object(&object, None),
            Err(vec![FieldError {
                path,
                message: "must not be empty (the value of an exact, prefix or suffix filter MUST NOT be empty)".into(),
            }]),
            "{dialect}"
        );
    }
    // Knative's `filter.attributes`: an empty value means "any value".
    let legacy = set(trigger(), "/spec/filter/attributes", json!({"type": "", "source": ""}));
    assert_eq!(validate_object(&legacy, None), Ok(()));
}

const DELIVERY_FIELDS: &str = "backoffDelay, backoffPolicy, deadLetterSink, format, retry, retryAfterMax, timeout";
const DESTINATION_FIELDS: &str = "audience, CACerts, ref, uri";
const KREFERENCE_FIELDS: &str = "address, apiVersion, group, kind, name, namespace";
const FILTER_FIELDS: &str = "all, any, cesql, exact, not, prefix, suffix";
const METADATA_FIELDS: &str = "annotations, creationTimestamp, deletionGracePeriodSeconds, deletionTimestamp, \
     finalizers, generateName, generation, labels, managedFields, name, namespace, ownerReferences, resourceVersion, \
     selfLink, uid";

fn unknown(known: &str) -> String {
    format!("unknown field (known fields: {known})")
}

/// The regression of issue 14: `retires` (for `retry`) applied silently.
#[test]
fn unknown_delivery_field_retires_is_refused_with_its_path() {
    let object = set(broker(), "/spec/delivery/retires", json!(3));
    assert_eq!(
        validate_object(&object, None),
        Err(vec![FieldError {
            path: "spec.delivery.retires".into(),
            message: format!("unknown field (known fields: {DELIVERY_FIELDS})"),
        }])
    );
    assert_eq!(
        validate_object(&object, None).expect_err("refused")[0].to_string(),
        "spec.delivery.retires: unknown field (known fields: backoffDelay, backoffPolicy, deadLetterSink, format, \
         retry, retryAfterMax, timeout)"
    );
}

#[test]
fn unknown_fields_and_wrong_types_are_refused_with_path_and_rule() {
    let filters = |filters: Value| set(trigger(), "/spec/filters", filters);
    let cases: Vec<(&str, Value, &str, String)> = vec![
        ("top level", set(broker(), "/specs", json!({})), "specs", unknown("apiVersion, kind, metadata, spec, status")),
        ("metadata", set(broker(), "/metadata/lables", json!({"a": "b"})), "metadata.lables", unknown(METADATA_FIELDS)),
        (
            "metadata.ownerReferences[0]",
            set(
                broker(),
                "/metadata/ownerReferences",
                json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u", "controler": true}]),
            ),
            "metadata.ownerReferences[0].controler",
            unknown("apiVersion, blockOwnerDeletion, controller, kind, name, uid"),
        ),
        ("broker spec", set(broker(), "/spec/class", json!("Sluice")), "spec.class", unknown("config, delivery")),
        (
            "trigger spec",
            set(trigger(), "/spec/brokerref", json!({})),
            "spec.brokerref",
            unknown("broker, brokerRef, delivery, filter, filters, subscriber"),
        ),
        (
            "spec.delivery",
            set(broker(), "/spec/delivery/retries", json!(3)),
            "spec.delivery.retries",
            unknown(DELIVERY_FIELDS),
        ),
        (
            "spec.delivery.deadLetterSink",
            set(broker(), "/spec/delivery/deadLetterSink/url", json!("http://x/")),
            "spec.delivery.deadLetterSink.url",
            unknown(DESTINATION_FIELDS),
        ),
        (
            "spec.delivery.deadLetterSink.ref",
            set(broker(), "/spec/delivery/deadLetterSink/ref/names", json!("dlq")),
            "spec.delivery.deadLetterSink.ref.names",
            unknown(KREFERENCE_FIELDS),
        ),
        (
            "spec.subscriber.ref",
            set(trigger(), "/spec/subscriber/ref/namespce", json!("default")),
            "spec.subscriber.ref.namespce",
            unknown(KREFERENCE_FIELDS),
        ),
        (
            "spec.config",
            set(broker(), "/spec/config", json!({"kind": "ConfigMap", "name": "c", "data": {}})),
            "spec.config.data",
            unknown(KREFERENCE_FIELDS),
        ),
        (
            "spec.filter",
            set(trigger(), "/spec/filter/attribute", json!({})),
            "spec.filter.attribute",
            unknown("attributes"),
        ),
        (
            "spec.filters[1]",
            filters(json!([{"exact": {"type": "a"}}, {"exactly": {"type": "b"}}])),
            "spec.filters[1].exactly",
            unknown(FILTER_FIELDS),
        ),
        (
            "a filter dialect Sluice does not know",
            filters(json!([{"exact": {"type": "a"}, "sql": "x"}])),
            "spec.filters[0].sql",
            unknown(FILTER_FIELDS),
        ),
        (
            "spec.filters[0].all[1]",
            filters(json!([{"all": [{"exact": {"type": "a"}}, {"not": {"exact": {"b": "c"}}, "or": []}]}])),
            "spec.filters[0].all[1].or",
            unknown(FILTER_FIELDS),
        ),
        (
            "spec.filters[0].not",
            filters(json!([{"not": {"suffx": {"type": "a"}}}])),
            "spec.filters[0].not.suffx",
            unknown(FILTER_FIELDS),
        ),
        (
            "InMemoryChannel has no channelTemplate",
            set(
                channel(),
                "/spec/channelTemplate",
                json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel"}),
            ),
            "spec.channelTemplate",
            unknown("delivery, subscribers"),
        ),
        (
            "spec.subscribers[0]",
            set(channel(), "/spec/subscribers", json!([{"uid": "u", "subscriberURI": "http://x/"}])),
            "spec.subscribers[0].subscriberURI",
            unknown(
                "auth, delivery, generation, name, namespace, replyAudience, replyCACerts, replyUri, \
                 subscriberAudience, subscriberCACerts, subscriberUri, uid",
            ),
        ),
        (
            "subscription spec",
            set(subscription(), "/spec/replyTo", json!({"uri": "http://x/"})),
            "spec.replyTo",
            unknown("channel, delivery, reply, subscriber"),
        ),
        (
            "spec.reply.ref",
            set(subscription(), "/spec/reply/ref/title", json!("x")),
            "spec.reply.ref.title",
            unknown(KREFERENCE_FIELDS),
        ),
        (
            "spec.filters a mapping",
            filters(json!({"exact": {"type": "a"}})),
            "spec.filters",
            "expected a list, got a mapping".into(),
        ),
        ("spec.filters[0] null", filters(json!([null])), "spec.filters[0]", "expected a mapping, got null".into()),
        (
            "an exact value not a string",
            filters(json!([{"exact": {"type": true}}])),
            "spec.filters[0].exact[type]",
            "expected a string, got a boolean true".into(),
        ),
        (
            "spec.delivery.retry a string",
            set(broker(), "/spec/delivery/retry", json!("3")),
            "spec.delivery.retry",
            r#"expected an integer, got a string "3""#.into(),
        ),
        (
            "spec.delivery.retry a fraction",
            set(broker(), "/spec/delivery/retry", json!(2.5)),
            "spec.delivery.retry",
            "expected an integer, got a number 2.5".into(),
        ),
        (
            "spec.delivery.retry beyond int32",
            set(broker(), "/spec/delivery/retry", json!(3_000_000_000u64)),
            "spec.delivery.retry",
            "expected an integer from -2147483648 to 2147483647, got an integer 3000000000".into(),
        ),
        (
            "spec.delivery a list",
            set(trigger(), "/spec/delivery", json!([{"retry": 1}])),
            "spec.delivery",
            "expected a mapping, got a list".into(),
        ),
        (
            "spec.broker a list",
            set(trigger(), "/spec/broker", json!(["default"])),
            "spec.broker",
            "expected a string, got a list".into(),
        ),
        (
            "metadata.labels value an integer",
            set(broker(), "/metadata/labels", json!({"version": 1})),
            "metadata.labels[version]",
            "expected a string, got an integer 1".into(),
        ),
        (
            "metadata.labels a string",
            set(broker(), "/metadata/labels", json!("app=x")),
            "metadata.labels",
            r#"expected a mapping, got a string "app=x""#.into(),
        ),
        (
            "metadata.annotations value a boolean",
            set(broker(), "/metadata/annotations", json!({"sluice.dev/paused": true})),
            "metadata.annotations[sluice.dev/paused]",
            "expected a string, got a boolean true".into(),
        ),
        (
            "metadata.finalizers a string",
            set(broker(), "/metadata/finalizers", json!("x")),
            "metadata.finalizers",
            r#"expected a list, got a string "x""#.into(),
        ),
        (
            "metadata.generation a string",
            set(broker(), "/metadata/generation", json!("1")),
            "metadata.generation",
            r#"expected an integer, got a string "1""#.into(),
        ),
        (
            "the object a list",
            json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "metadata": {"name": "c"},
                   "spec": []}),
            "spec",
            "expected a mapping, got a list".into(),
        ),
    ];
    for (name, object, path, message) in cases {
        let errors = validate_object(&object, None).expect_err(name);
        assert!(
            errors.iter().any(|e| e.path == path && e.message == message),
            "{name}: expected {path}: {message}\ngot {errors:?}"
        );
    }
}

#[test]
fn every_unknown_field_is_reported_and_a_type_error_with_them() {
    let mut object = trigger();
    object["spec"]["subscriber"]["ref"]["nmae"] = json!("x");
    object["spec"]["delivery"]["retires"] = json!(1);
    object["metadata"]["labls"] = json!({});
    let errors = validate_object(&object, None).expect_err("refused");
    let mut paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["metadata.labls", "spec.delivery.retires", "spec.subscriber.ref.nmae"], "{errors:?}");

    object["spec"]["delivery"]["retry"] = json!("3");
    let errors = validate_object(&object, None).expect_err("refused");
    assert!(errors.iter().any(|e| e.path == "spec.delivery.retry"), "{errors:?}");
    assert!(errors.iter().any(|e| e.path == "metadata.labls"), "{errors:?}");
}

#[test]
fn unknown_fields_do_not_hide_the_rules() {
    let object = set(set(trigger(), "/spec/delivery/retires", json!(3)), "/spec/delivery/retry", json!(-1));
    let errors = validate_object(&object, None).expect_err("refused");
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["spec.delivery.retires", "spec.delivery.retry"], "{errors:?}");
}

#[test]
fn data_keys_status_and_nulls_are_not_fields() {
    // exact/prefix/suffix and filter attributes are maps of attribute name → value.
    let object = set(
        trigger(),
        "/spec/filters",
        json!([{"exact": {"myextension": "x"}}, {"prefix": {"retires": "y"}}, {"suffix": {"apiversion": "z"}}]),
    );
    assert_eq!(validate_object(&object, None), Ok(()));
    let object = set(trigger(), "/spec/filter/attributes", json!({"unknownfield": "", "retires": "3"}));
    assert_eq!(validate_object(&object, None), Ok(()));
    // Labels and annotations are data too.
    let object = set(broker(), "/metadata/labels", json!({"app.kubernetes.io/name": "x", "retires": "3"}));
    assert_eq!(validate_object(&object, None), Ok(()));
    // Status is derived: whatever an applied one holds is accepted (and not stored).
    let object = set(
        broker(),
        "/status",
        json!({"conditions": [{"type": "Ready", "status": "True"}], "anything": {"at": ["all", 1, null]}}),
    );
    assert_eq!(validate_object(&object, None), Ok(()));
    // A field set to null is absent, as in Kubernetes (`kubectl create --dry-run -o yaml`).
    let mut object = broker();
    object["metadata"]["creationTimestamp"] = Value::Null;
    object["spec"]["config"] = Value::Null;
    object["spec"]["delivery"]["deadLetterSink"]["uri"] = Value::Null;
    object["status"] = Value::Null;
    assert_eq!(validate_object(&object, None), Ok(()));
}

fn full_metadata() -> Value {
    json!({
        "name": "full", "generateName": "full-", "namespace": "default", "selfLink": "/apis/x",
        "uid": "4f7e1c7a-0000-4000-8000-000000000001", "resourceVersion": "42", "generation": 3,
        "creationTimestamp": "2024-01-01T00:00:00Z", "deletionTimestamp": "2024-01-02T00:00:00Z",
        "deletionGracePeriodSeconds": 30,
        "labels": {"app": "demo"},
        "annotations": {"eventing.knative.dev/broker.class": "MTChannelBasedBroker", "sluice.dev/ttl": "10"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "u-1",
                             "controller": true, "blockOwnerDeletion": false}],
        "finalizers": ["kubernetes"],
        "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "eventing.knative.dev/v1",
                           "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:spec": {"f:delivery": {}}}, "subresource": "status"}]
    })
}

fn full_reference() -> Value {
    json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "c", "namespace": "default",
           "group": "messaging.knative.dev", "address": "http"})
}

fn full_destination() -> Value {
    json!({"ref": full_reference(), "uri": "/path", "CACerts": "-----BEGIN CERTIFICATE-----", "audience": "aud"})
}

fn full_delivery() -> Value {
    json!({"deadLetterSink": full_destination(), "retry": 3, "timeout": "PT5S", "backoffPolicy": "linear",
           "backoffDelay": "PT0.5S", "retryAfterMax": "PT1M", "format": "binary"})
}

fn full_subscribers() -> Value {
    json!([{"name": "sub", "namespace": "default", "uid": "u-2", "generation": 1,
            "subscriberUri": "http://s/", "subscriberCACerts": "pem", "subscriberAudience": "s",
            "replyUri": "http://r/", "replyCACerts": "pem", "replyAudience": "r",
            "delivery": full_delivery(),
            "auth": {"serviceAccountName": "sa", "serviceAccountNames": ["sa"]}}])
}

/// One object per kind with every field Knative's v1 types have, set once.
fn every_field_once() -> Vec<Value> {
    let status = json!({"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True"}]});
    vec![
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": full_metadata(),
               "spec": {"config": full_reference(), "delivery": full_delivery()}, "status": status}),
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": full_metadata(),
               "spec": {"broker": "default", "brokerRef": full_reference(),
                        "filter": {"attributes": {"type": "t"}},
                        "filters": [{"exact": {"type": "a"}}, {"prefix": {"type": "b"}}, {"suffix": {"type": "c"}},
                                    {"all": [{"exact": {"type": "a"}}]}, {"any": [{"exact": {"type": "a"}}]},
                                    {"not": {"exact": {"type": "a"}}}, {"cesql": "type = 'a'"}],
                        "subscriber": full_destination(), "delivery": full_delivery()},
               "status": status}),
        json!({"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "metadata": full_metadata(),
               "spec": {"channelTemplate": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel",
                                            "spec": {"delivery": {"retry": 1}, "anything": true}},
                        "subscribers": full_subscribers(), "delivery": full_delivery()},
               "status": status}),
        json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "metadata": full_metadata(),
               "spec": {"subscribers": full_subscribers(), "delivery": full_delivery()}, "status": status}),
        json!({"apiVersion": "messaging.knative.dev/v1", "kind": "Subscription", "metadata": full_metadata(),
               "spec": {"channel": full_reference(), "subscriber": full_destination(), "reply": full_destination(),
                        "delivery": full_delivery()},
               "status": status}),
    ]
}

#[test]
fn every_knative_field_set_once_validates_and_the_model_keeps_it() {
    use crate::model::{Broker, Channel, InMemoryChannel, Subscription, Trigger};
    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) -> Value {
        let (typed, errors) = strict::read::<T>(object);
        assert_eq!(errors, [], "{object}");
        serde_json::to_value(typed.expect("typed")).expect("serializes")
    }
    for object in every_field_once() {
        assert_eq!(validate_object(&object, None), Ok(()), "{object}");
        // Every field survives the typed form: none is dropped or renamed.
        let typed = match object["kind"].as_str().expect("kind") {
            "Broker" => round_trip::<Broker>(&object),
            "Trigger" => round_trip::<Trigger>(&object),
            "Channel" => round_trip::<Channel>(&object),
            "InMemoryChannel" => round_trip::<InMemoryChannel>(&object),
            _ => round_trip::<Subscription>(&object),
        };
        assert_eq!(typed, object);
    }
}

#[test]
fn knative_fixtures_still_validate() {
    let text = include_str!("../../../tests/fixtures/knative.yaml");
    let mut count = 0;
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let object: Value = serde::Deserialize::deserialize(document).expect("YAML");
        if object.is_null() {
            continue;
        }
        assert_eq!(validate_object(&object, None), Ok(()), "{object}");
        count += 1;
    }
    assert!(count >= 5, "{count} fixtures");
}

/// Knative: a Channel's `spec.channelTemplate` MUST be immutable (its backing channel is made from it once).
#[test]
fn a_channels_template_is_immutable() {
    let with_template = |kind: &str| {
        set(
            json!({"apiVersion": "messaging.knative.dev/v1", "kind": "Channel",
                "metadata": {"name": "c", "namespace": "default"}}),
            "/spec",
            json!({"channelTemplate": {"apiVersion": "messaging.knative.dev/v1", "kind": kind}}),
        )
    };
    let stored = with_template("InMemoryChannel");
    assert_eq!(validate_object(&stored, Some(&stored)), Ok(()), "unchanged");
    let errors = validate_object(&with_template("KafkaChannel"), Some(&stored)).expect_err("changed");
    assert!(errors.iter().any(|e| e.path == "spec.channelTemplate"), "{errors:?}");
    assert_eq!(validate_object(&with_template("KafkaChannel"), None), Ok(()), "a new Channel chooses its template");
}
