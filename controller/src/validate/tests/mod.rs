use serde_json::{Value, json};

use std::time::Duration;

use super::*;

mod allow_list;
mod filters;
mod metadata;

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
    let batched = json!({"sluice.dev/delivery-batch-max-events": "1000"});
    let batched_trigger = set(trigger(), "/metadata/annotations", batched.clone());
    let batched_subscription = set(set(subscription(), "/spec/reply", Value::Null), "/metadata/annotations", batched);
    for object in [batched_trigger, batched_subscription] {
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

/// Regression: eventing objects' names were checked as DNS-1123 labels (at most 63, no '.'), so a Broker or
/// Trigger the Kubernetes API server stores (a DNS-1123 subdomain, as for most kinds; Knative's eventing
/// webhooks add no rule) was refused by `sluice apply`, and a Trigger could not name such a Broker.
#[test]
fn regression_eventing_names_are_dns_1123_subdomains() {
    let long = format!("{}.{}", "a".repeat(100), "b".repeat(152));
    assert_eq!(long.len(), 253);
    for name in ["team-a.events", "1events", long.as_str()] {
        assert_eq!(validate_object(&set(broker(), "/metadata/name", json!(name)), None), Ok(()), "Broker {name}");
        let trigger = set(set(trigger(), "/metadata/name", json!(name)), "/spec/broker", json!(name));
        assert_eq!(validate_object(&trigger, None), Ok(()), "Trigger {name}");
        let subscription = set(set(subscription(), "/metadata/name", json!(name)), "/spec/channel/name", json!(name));
        assert_eq!(validate_object(&subscription, None), Ok(()), "Subscription {name}");
    }
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
        ("long name", set(broker(), "/metadata/name", json!("a".repeat(254))), "metadata.name"),
        ("empty part of a name", set(broker(), "/metadata/name", json!("team..events")), "metadata.name"),
        ("part of a name ending in '-'", set(broker(), "/metadata/name", json!("team-.events")), "metadata.name"),
        ("trailing dot", set(broker(), "/metadata/name", json!("events.")), "metadata.name"),
        ("namespace with a dot", set(broker(), "/metadata/namespace", json!("team.a")), "metadata.namespace"),
        ("trigger's broker", set(trigger(), "/spec/broker", json!("Events")), "spec.broker"),
        (
            "subscription's channel named with a '/'",
            set(subscription(), "/spec/channel/name", json!("other/channel")),
            "spec.channel.name",
        ),
        (
            "subscription's channel named with a '#'",
            set(subscription(), "/spec/channel/name", json!("my-channel#sub")),
            "spec.channel.name",
        ),
        ("bad namespace", set(broker(), "/metadata/namespace", json!("-ns")), "metadata.namespace"),
        (
            "annotations over 256 KiB",
            set(broker(), "/metadata/annotations", json!({"a": "x".repeat(128 << 10), "b": "y".repeat(128 << 10)})),
            "metadata.annotations",
        ),
        (
            "an object over 1.5 MiB",
            set(trigger(), "/spec/filter/attributes", json!({"big": "z".repeat(1600 << 10)})),
            "",
        ),
        (
            "ttl zero",
            set(broker(), "/metadata/annotations", json!({"sluice.dev/ttl": "0"})),
            "metadata.annotations[sluice.dev/ttl]",
        ),
        (
            "ttl past a CloudEvents Integer",
            set(broker(), "/metadata/annotations", json!({"sluice.dev/ttl": "2147483648"})),
            "metadata.annotations[sluice.dev/ttl]",
        ),
        (
            "dedupe window text",
            set(broker(), "/metadata/annotations", json!({"sluice.dev/dedupe-window": "soon"})),
            "metadata.annotations[sluice.dev/dedupe-window]",
        ),
        (
            "dedupe window past 24h (it was cut to 24h without a word)",
            set(broker(), "/metadata/annotations", json!({"sluice.dev/dedupe-window": "48h"})),
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
            "a Broker's annotation on a Trigger (accepted and ignored before)",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/ttl": "10"})),
            "metadata.annotations[sluice.dev/ttl]",
        ),
        (
            "a Trigger's annotation on a Broker (accepted and ignored before)",
            set(broker(), "/metadata/annotations", json!({"sluice.dev/max-inflight": "10"})),
            "metadata.annotations[sluice.dev/max-inflight]",
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
            "delivery batch zero",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/delivery-batch-max-events": "0"})),
            "metadata.annotations[sluice.dev/delivery-batch-max-events]",
        ),
        (
            "delivery batch past the limit",
            set(trigger(), "/metadata/annotations", json!({"sluice.dev/delivery-batch-max-events": "1001"})),
            "metadata.annotations[sluice.dev/delivery-batch-max-events]",
        ),
        (
            "batched delivery with a reply destination",
            set(subscription(), "/metadata/annotations", json!({"sluice.dev/delivery-batch-max-events": "10"})),
            "metadata.annotations[sluice.dev/delivery-batch-max-events]",
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
        (
            "unknown dialect",
            set(trigger(), "/spec/filters", json!([{"exact": {"type": "a"}, "sql": "x"}])),
            "spec.filters[0].sql",
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
        (
            "broker config without apiVersion",
            set(broker(), "/spec/config", json!({"kind": "ConfigMap", "name": "config-br-default-channel"})),
            "spec.config.apiVersion",
        ),
        ("uri without a host", set(trigger(), "/spec/subscriber", json!({"uri": "http:///x"})), "spec.subscriber.uri"),
        (
            "uri with only userinfo and a port",
            set(trigger(), "/spec/subscriber", json!({"uri": "http://user@:8080/x"})),
            "spec.subscriber.uri",
        ),
        // Regression: a port that is not one was accepted, and the HTTP client, reading no port, sent the events
        // to the scheme's default port (80), another server.
        (
            "uri with a port that is not a number",
            set(trigger(), "/spec/subscriber", json!({"uri": "http://svc:8o80/x"})),
            "spec.subscriber.uri",
        ),
        (
            "uri with a port past 65535",
            set(trigger(), "/spec/subscriber", json!({"uri": "http://svc:99999/x"})),
            "spec.subscriber.uri",
        ),
        (
            "dead letter sink uri with a signed port",
            set(broker(), "/spec/delivery/deadLetterSink", json!({"uri": "https://[::1]:+443/"})),
            "spec.delivery.deadLetterSink.uri",
        ),
        (
            "subscriber CACerts that are not PEM",
            set(trigger(), "/spec/subscriber", json!({"uri": "https://svc/x", "CACerts": "not a pem"})),
            "spec.subscriber.CACerts",
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
        // Knative's webhook counts only the dialects set with something in them: these are no condition.
        ("a filter of no dialect", set(trigger(), "/spec/filters", json!([{}]))),
        ("an empty exact", set(trigger(), "/spec/filters", json!([{"exact": {}}]))),
        ("an empty cesql", set(trigger(), "/spec/filters", json!([{"cesql": ""}]))),
        ("an empty any", set(trigger(), "/spec/filters", json!([{"any": []}]))),
        ("an empty not", set(trigger(), "/spec/filters", json!([{"not": {}}]))),
        (
            "an empty dialect beside one",
            set(trigger(), "/spec/filters", json!([{"exact": {}, "prefix": {"type": "a"}}])),
        ),
        // Sluice's own annotations at their bounds.
        (
            "the longest ttl and dedupe window",
            set(
                broker(),
                "/metadata/annotations",
                json!({"sluice.dev/ttl": "2147483647", "sluice.dev/dedupe-window": "24h"}),
            ),
        ),
        ("dedupe off", set(broker(), "/metadata/annotations", json!({"sluice.dev/dedupe-window": "off"}))),
    ];
    for (name, object) in accepted {
        assert_eq!(validate_object(&object, None), Ok(()), "{name}");
    }
    let other_broker = set(trigger(), "/spec/broker", json!("other"));
    let elsewhere = set(other_broker, "/metadata/annotations", json!({"eventing.knative.dev/injection": "enabled"}));
    let errors = validate_object(&elsewhere, None).expect_err("injection names Broker default only");
    assert!(errors.iter().any(|e| e.message.contains("only used for default broker")), "{errors:?}");
}

/// Knative's `brokerRef`, the other way to name a Trigger's Broker: accepted alone, in the Trigger's namespace;
/// refused beside `broker`, or towards another namespace; the Broker it names is as immutable as `broker`.
#[test]
fn a_trigger_names_its_broker_by_broker_or_broker_ref() {
    let reference = |extra: Value| {
        let mut reference = json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"});
        if let (Some(r), Value::Object(extra)) = (reference.as_object_mut(), extra) {
            r.extend(extra);
        }
        reference
    };
    let by_ref = set(set(trigger(), "/spec/broker", Value::Null), "/spec/brokerRef", reference(json!({})));
    assert_eq!(validate_object(&by_ref, None), Ok(()));
    let injected = set(by_ref.clone(), "/metadata/annotations", json!({"eventing.knative.dev/injection": "enabled"}));
    assert_eq!(validate_object(&injected, None), Ok(()), "Broker default, by brokerRef");
    let own_namespace = set(by_ref.clone(), "/spec/brokerRef", reference(json!({"namespace": "default"})));
    assert_eq!(validate_object(&own_namespace, None), Ok(()));
    let refused = |object: &Value| -> Vec<String> {
        validate_object(object, None).expect_err("refused").into_iter().map(|e| e.path).collect()
    };
    let both = set(trigger(), "/spec/brokerRef", reference(json!({})));
    assert_eq!(refused(&both), ["spec"]);
    let elsewhere = set(by_ref.clone(), "/spec/brokerRef", reference(json!({"namespace": "other"})));
    assert_eq!(refused(&elsewhere), ["spec.brokerRef.namespace"]);
    let not_a_broker = set(by_ref.clone(), "/spec/brokerRef", reference(json!({"kind": "Channel"})));
    assert_eq!(refused(&not_a_broker), ["spec.brokerRef.kind"]);
    // The same Broker spelt the other way is no change; another one is.
    assert_eq!(validate_object(&by_ref, Some(&trigger())), Ok(()));
    let moved = set(by_ref.clone(), "/spec/brokerRef", reference(json!({"name": "other"})));
    let errors = validate_object(&moved, Some(&trigger())).expect_err("immutable");
    assert!(errors.iter().any(|e| e.path == "spec.brokerRef.name" && e.message.contains("immutable")), "{errors:?}");
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
    let configured = set(broker(), "/spec/config", json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "x"}));
    assert_eq!(
        validate_object(&configured, Some(&broker())),
        Ok(()),
        "a config may be set once on a Broker that had none"
    );
    let reconfigured = set(configured.clone(), "/spec/config/name", json!("y"));
    assert!(
        validate_object(&reconfigured, Some(&configured)).expect_err("config").iter().any(|e| e.path == "spec.config")
    );
    let unconfigured = set(broker(), "/spec", json!({}));
    assert!(
        validate_object(&unconfigured, Some(&configured)).expect_err("config").iter().any(|e| e.path == "spec.config"),
        "removed is changed (an apply that omits it keeps it: admission)"
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

/// A URL's port: none, empty (the scheme's default) or 0 to 65535, in digits; an IPv6 host's colons are no port.
#[test]
fn a_destination_uri_names_a_port_or_none() {
    for fine in [
        "http://svc/x",
        "http://svc:/x",
        "http://svc:0/",
        "https://svc:65535/",
        "http://[::1]:8080/",
        "http://[::1]/",
        "http://user:pass@svc:8080/x?a=b:c",
        "http://svc?q=1:2",
    ] {
        let trigger = set(trigger(), "/spec/subscriber", json!({"uri": fine}));
        assert_eq!(validate_object(&trigger, None), Ok(()), "{fine}");
    }
    for refused in ["http://svc:8o80/", "http://svc:65536/", "http://svc:-1/", "http://[::1]:x/", "http://svc:80:80/"] {
        let trigger = set(trigger(), "/spec/subscriber", json!({"uri": refused}));
        let errors = validate_object(&trigger, None).expect_err(refused);
        assert!(
            errors.iter().any(|e| e.path == "spec.subscriber.uri" && e.message.contains("port")),
            "{refused}: {errors:?}"
        );
    }
}

/// Knative refuses `CACerts` that are not PEM certificates at admission (`CA Cert provided is invalid`, `... is
/// not a certificate`); before, Sluice stored them and every delivery failed as a network error, retried.
#[test]
fn destination_ca_certs_are_pem_certificates() {
    let signed = rcgen::generate_simple_self_signed(vec!["sink.example".into()]).expect("certificate");
    let certificate = signed.cert.pem();
    let request = rcgen::CertificateParams::new(vec!["sink.example".into()])
        .expect("params")
        .serialize_request(&signed.signing_key)
        .expect("request")
        .pem()
        .expect("pem");
    let key = signed.signing_key.serialize_pem();
    let with = |ca_certs: &str| {
        set(trigger(), "/spec/subscriber", json!({"uri": "https://sink.example/", "CACerts": ca_certs}))
    };
    assert_eq!(validate_object(&with(&certificate), None), Ok(()));
    assert_eq!(validate_object(&with(&format!("{certificate}{certificate}")), None), Ok(()), "a bundle");
    // The first half of the certificate's DER, as PEM: a certificate cut short.
    let body = certificate.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
    let half = &body[..body.len() / 8 * 4];
    let corrupt = format!("-----BEGIN CERTIFICATE-----\n{half}\n-----END CERTIFICATE-----\n");
    for (bad, says) in [
        ("", "no PEM certificate"),
        ("not a pem", "invalid"),
        ("-----BEGIN CERTIFICATE-----", "not PEM"),
        (request.as_str(), "not a certificate"),
        (key.as_str(), "not a certificate"),
        (corrupt.as_str(), "not an X.509 certificate"),
    ] {
        let errors = validate_object(&with(bad), None).expect_err(bad);
        assert!(
            errors.iter().any(|e| e.path == "spec.subscriber.CACerts" && e.message.contains(says)),
            "{bad:?}: {errors:?}"
        );
    }
    let broker = set(broker(), "/spec/delivery/deadLetterSink", json!({"uri": "https://dlq/", "CACerts": "x"}));
    let errors = validate_object(&broker, None).expect_err("the dead letter sink's too");
    assert!(errors.iter().any(|e| e.path == "spec.delivery.deadLetterSink.CACerts"), "{errors:?}");
}

#[test]
fn retention_is_one_duration_and_or_one_size_above_zero() {
    for ok in ["7d", "24h", "10GiB", "24h,10GiB", "10GiB, 24h", "1s", "1B"] {
        assert_eq!(check_retention(ok), Ok(()), "{ok}");
    }
    let refused = [
        ("0s", "duration of 0"),
        ("0B", "size of 0"),
        ("300", "no unit"),
        ("24h,300", "no unit"),
        ("0GiB", "size of 0"),
        ("1h,2h", "at most one"),
        ("10GiB,5GiB", "at most one"),
        ("forever", "e.g. 7d"),
        ("", "e.g. 7d"),
        ("24h,", "e.g. 7d"),
    ];
    for (value, rule) in refused {
        let error = check_retention(value).expect_err(value);
        assert!(error.contains(rule), "{value}: {error}");
    }
}
