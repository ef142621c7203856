//! The allow-list of fields: unknown fields and wrong types refused with their paths, every field Knative has
//! accepted and kept, Knative's own fixtures valid.

use serde_json::{Value, json};

use super::*;

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

/// A CA certificate in PEM, as `CACerts` must be.
static CA_CERTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    rcgen::generate_simple_self_signed(vec!["c.default.svc".into()]).expect("certificate").cert.pem()
});

fn full_destination() -> Value {
    json!({"ref": full_reference(), "uri": "/path", "CACerts": *CA_CERTS, "audience": "aud"})
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
               // `brokerRef` (every KReference field, in the Trigger's namespace); `broker` is the other spelling,
               // exactly one of them (the other objects of these tests set `broker`).
               "spec": {"brokerRef": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default",
                                      "namespace": full_metadata()["namespace"], "group": "eventing.knative.dev",
                                      "address": "http"},
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
    for mut object in every_field_once() {
        // A Sluice annotation each kind acts on (a Broker's on a Trigger is refused).
        let kind = object["kind"].as_str().expect("kind").to_string();
        if crate::validate::sluice_annotation_kinds("sluice.dev/ttl")
            .is_some_and(|kinds| !kinds.contains(&kind.as_str()))
        {
            let annotations = object["metadata"]["annotations"].as_object_mut().expect("annotations");
            annotations.remove("sluice.dev/ttl");
            annotations.insert("sluice.dev/max-inflight".into(), json!("10"));
        }
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
    let text = include_str!("../../../../tests/fixtures/knative.yaml");
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
