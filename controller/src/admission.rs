//! What an apply stores, decided before the object is validated and proposed (where Knative's defaulting
//! webhook runs). In: the object as applied and the stored one of its kind, namespace and name, if any. Out:
//! the object to validate and store, which is the applied one with
//! - nulls pruned and the namespace `default` when none is given;
//! - the label Knative's webhook puts on a Trigger, `eventing.knative.dev/broker: <spec.broker>`;
//! - the fields Knative fixes at creation (a Broker's class annotation and `spec.config`, a Channel's
//!   `spec.channelTemplate`) kept from the stored object when the apply omits them, as `kubectl apply` keeps
//!   what a webhook defaulted (a three-way merge leaves what it did not write);
//! - the stored spec, when the applied one says the same thing once Knative's defaults are written out on
//!   both sides ([`defaulted_spec`]): a `kubectl get -o yaml` export of a Service (`timeoutSeconds: 300`,
//!   `containerConcurrency: 0`, the container's name, `traffic: [{latestRevision: true, percent: 100}]`)
//!   re-applied changes nothing: no new generation, no new Revision taking the traffic.
//!
//! Pure and deterministic over its inputs; the log's apply rules ([`crate::meta`]) are not changed by it.

use serde_json::{Value, json};

use crate::serving::model::{RevisionSpec, with_knative_defaults};

/// The label Knative's webhook sets on a Trigger to the name of its Broker.
pub const BROKER_LABEL: &str = "eventing.knative.dev/broker";

/// The class annotation of a Broker, fixed at creation.
const BROKER_CLASS_POINTER: &str = "/metadata/annotations/eventing.knative.dev~1broker.class";

/// Removes every mapping entry whose value is `null`, at any depth (inside lists too), as the Kubernetes API
/// server prunes nulls from fields that are not `nullable` (none of Knative's are): YAML's `from:` with nothing
/// after it means the field is absent, and that is how everything that reads the object must see it. Done before
/// an object is validated and stored, and on both sides of the comparisons made before a write, never by the
/// log's apply rules (`crate::meta`, which must not change). An object stored with nulls by an earlier version is
/// rewritten without them at its next apply (a Service or Configuration whose spec held one gets a new
/// generation, and a new Revision, once).
pub fn prune_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(prune_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// `object` as an apply over `stored` stores it (see the module's text), validated (for keeping the stored spec)
/// as on a node without serving feature flags.
pub fn admitted(object: Value, stored: Option<&Value>) -> Value {
    admitted_with(object, stored, &crate::serving::ServingFeatures::default())
}

/// [`admitted`] on a node with the serving feature flags `features` (`--serving-feature`): a template using a
/// field they let through is valid there.
pub fn admitted_with(mut object: Value, stored: Option<&Value>, features: &crate::serving::ServingFeatures) -> Value {
    prune_nulls(&mut object);
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.entry("namespace").or_insert_with(|| "default".into());
    }
    label_trigger_with_its_broker(&mut object);
    if let Some(stored) = stored.filter(|s| s.get("kind") == object.get("kind")) {
        keep_fields_fixed_at_creation(stored, &mut object);
        // Only a valid object: the defaults are read leniently, so a misspelt field would compare equal and be
        // dropped with the applied spec instead of refused.
        if defaulted_spec(stored) == defaulted_spec(&object)
            && crate::validate::validate_object_with(&object, Some(stored), features).is_ok()
            && let Some(map) = object.as_object_mut()
        {
            match stored.get("spec") {
                Some(spec) => map.insert("spec".into(), spec.clone()),
                None => map.remove("spec"),
            };
        }
    }
    object
}

fn label_trigger_with_its_broker(object: &mut Value) {
    if object.get("kind").and_then(Value::as_str) != Some("Trigger") {
        return;
    }
    let Some(broker) = object.pointer("/spec/broker").and_then(Value::as_str).filter(|b| !b.is_empty()) else {
        return;
    };
    // A Broker's name may be a DNS-1123 subdomain of up to 253 characters, a label value at most 63: a longer name
    // gets no label (on Kubernetes the API server would refuse the labelled Trigger; here it would fail validation).
    if crate::fields::label_value_error(broker).is_some() {
        if let Some(labels) = object.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
            labels.remove(BROKER_LABEL);
        }
        return;
    }
    let broker = Value::from(broker);
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let labels = metadata.entry("labels").or_insert_with(|| json!({}));
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(BROKER_LABEL.into(), broker);
    }
}

fn keep_fields_fixed_at_creation(stored: &Value, object: &mut Value) {
    let fixed: &[&str] = match object.get("kind").and_then(Value::as_str) {
        Some("Broker") => &[BROKER_CLASS_POINTER, "/spec/config"],
        Some("Channel") => &["/spec/channelTemplate"],
        _ => &[],
    };
    for pointer in fixed {
        if object.pointer(pointer).is_none()
            && let Some(value) = stored.pointer(pointer)
        {
            set_at(object, pointer, value.clone());
        }
    }
}

/// Sets the value at a JSON pointer of object keys (`~1` for `/`), making the mappings on the way.
fn set_at(object: &mut Value, pointer: &str, value: Value) {
    let keys: Vec<String> = pointer.split('/').skip(1).map(|k| k.replace("~1", "/").replace("~0", "~")).collect();
    let Some((last, path)) = keys.split_last() else { return };
    let mut place = object;
    for key in path {
        let Some(map) = place.as_object_mut() else { return };
        place = map.entry(key.clone()).or_insert_with(|| json!({}));
    }
    if let Some(map) = place.as_object_mut() {
        map.insert(last.clone(), value);
    }
}

/// The spec of `object` with what Knative's defaulting webhook writes into it: a Revision's spec, a Service's or
/// Configuration's template, with the Revision defaults ([`with_knative_defaults`]), a Service's traffic 100 % to the latest
/// revision, a traffic target's `latestRevision` (true without a `revisionName`), a Trigger's `filter: {}`, a
/// Channel's template, and the namespace of every destination `ref` (the object's own). Two specs equal here
/// are one spec.
pub fn defaulted_spec(object: &Value) -> Value {
    let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
    let mut spec = object.get("spec").cloned().unwrap_or_else(|| json!({}));
    if !spec.is_object() {
        return spec;
    }
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let revision_spec = match kind {
        "Service" | "Configuration" => spec.get_mut("template").and_then(|t| t.get_mut("spec")),
        "Revision" => Some(&mut spec),
        _ => None,
    };
    if let Some(revision_spec) = revision_spec
        && let Ok(revision) = serde_json::from_value::<RevisionSpec>(revision_spec.clone())
        && let Ok(defaulted) = serde_json::to_value(with_knative_defaults(&revision))
    {
        *revision_spec = defaulted;
    }
    let Some(map) = spec.as_object_mut() else { return spec };
    // `kubectl get -o yaml` writes the template's `metadata: {creationTimestamp: null}` (pruned, it is empty) and
    // leaves out empty labels and annotations (Kubernetes' `omitempty`).
    if let Some(template) = map.get_mut("template").and_then(Value::as_object_mut) {
        if let Some(metadata) = template.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.retain(|_, v| v.as_object().is_none_or(|m| !m.is_empty()));
        }
        if template.get("metadata").and_then(Value::as_object).is_some_and(serde_json::Map::is_empty) {
            template.remove("metadata");
        }
    }
    if kind == "Service" && map.get("traffic").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        map.insert("traffic".into(), json!([{"latestRevision": true, "percent": 100}]));
    }
    if matches!(kind, "Service" | "Route") {
        for target in map.get_mut("traffic").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(target) = target.as_object_mut() {
                let latest = target.get("revisionName").and_then(Value::as_str).is_none_or(str::is_empty);
                target.entry("latestRevision").or_insert(latest.into());
            }
        }
    }
    if kind == "Trigger" {
        map.entry("filter").or_insert_with(|| json!({}));
    }
    if kind == "Channel" {
        map.entry("channelTemplate").or_insert_with(crate::model::default_channel_template);
    }
    for destination in ["/subscriber", "/reply", "/delivery/deadLetterSink"] {
        if let Some(reference) = spec.pointer_mut(&format!("{destination}/ref")).and_then(Value::as_object_mut) {
            reference.entry("namespace").or_insert_with(|| namespace.into());
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(spec: Value) -> Value {
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default"}, "spec": spec})
    }

    /// Regression (a review of the apply path): re-applying a Service as `kubectl get -o yaml` prints it, with
    /// Knative's defaults written out, bumped its generation and made a new Revision that took the traffic.
    #[test]
    fn a_service_with_knatives_defaults_written_out_is_the_stored_service() {
        let stored = service(json!({"template": {"metadata": {"annotations": {}},
            "spec": {"containers": [{"image": "ghcr.io/x/app"}]}}}));
        let exported = service(json!({
            "template": {"metadata": {}, "spec": {"containerConcurrency": 0, "timeoutSeconds": 300,
                "enableServiceLinks": false,
                "containers": [{"name": "user-container", "image": "ghcr.io/x/app",
                    "readinessProbe": {"successThreshold": 1, "tcpSocket": {"port": 0}}, "resources": {}}]}},
            "traffic": [{"latestRevision": true, "percent": 100}]}));
        assert_eq!(defaulted_spec(&exported), defaulted_spec(&stored));
        assert_eq!(crate::validate::validate_object(&exported, Some(&stored)), Ok(()));
        let admitted = admitted(exported, Some(&stored));
        assert_eq!(admitted["spec"], stored["spec"], "the stored spec is kept");
        let (_, outcome) = crate::meta::merge_for_apply(Some(&stored), admitted, "", "", 2);
        assert_eq!(outcome, crate::meta::ApplyOutcome::Unchanged);
    }

    #[test]
    fn a_changed_spec_is_taken_as_written() {
        let stored = service(json!({"template": {"spec": {"containers": [{"image": "ghcr.io/x/app"}]}}}));
        for changed in [
            json!({"template": {"spec": {"containers": [{"image": "ghcr.io/x/other"}]}}}),
            json!({"template": {"spec": {"timeoutSeconds": 30, "containers": [{"image": "ghcr.io/x/app"}]}}}),
            json!({"template": {"metadata": {"annotations": {"a": "b"}}, "spec": {"containers": [{"image": "ghcr.io/x/app"}]}}}),
            json!({"template": {"spec": {"containers": [{"image": "ghcr.io/x/app"}]}},
                "traffic": [{"latestRevision": false, "revisionName": "hello-00001", "percent": 100}]}),
        ] {
            let admitted = admitted(service(changed.clone()), Some(&stored));
            assert_eq!(admitted["spec"], changed, "{changed}");
        }
        // Regression (review): a misspelt field is dropped when the defaults are read, so the spec compared equal
        // and the stored one replaced it: the apply said `unchanged` where it must be refused.
        let misspelt =
            json!({"template": {"spec": {"containers": [{"image": "ghcr.io/x/app", "imagePullPolicyy": "Always"}]}}});
        assert_eq!(admitted(service(misspelt.clone()), Some(&stored))["spec"], misspelt);
        assert!(crate::validate::validate_object(&service(misspelt), Some(&stored)).is_err());
    }

    #[test]
    fn a_revision_with_knatives_defaults_written_out_is_the_stored_revision() {
        let revision = |spec: Value| {
            json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
                "metadata": {"name": "r", "namespace": "default"}, "spec": spec})
        };
        let stored = revision(json!({"containers": [{"image": "ghcr.io/x/app"}]}));
        let exported = revision(json!({"containers": [{"image": "ghcr.io/x/app", "name": "user-container"}],
            "timeoutSeconds": 300, "containerConcurrency": 0}));
        assert_eq!(admitted(exported, Some(&stored))["spec"], stored["spec"]);
    }

    #[test]
    fn defaults_that_knative_writes_into_each_kind() {
        let cases = [
            (
                json!({"kind": "Trigger", "metadata": {"namespace": "team"},
                    "spec": {"broker": "b", "subscriber": {"ref": {"kind": "Service", "name": "s"}}}}),
                json!({"broker": "b", "filter": {},
                    "subscriber": {"ref": {"kind": "Service", "name": "s", "namespace": "team"}}}),
            ),
            (
                json!({"kind": "Channel", "spec": {}}),
                json!({"channelTemplate": crate::model::default_channel_template()}),
            ),
            (
                json!({"kind": "Route", "spec": {"traffic": [{"revisionName": "r", "percent": 100},
                    {"configurationName": "c", "percent": 0}]}}),
                json!({"traffic": [{"revisionName": "r", "percent": 100, "latestRevision": false},
                    {"configurationName": "c", "percent": 0, "latestRevision": true}]}),
            ),
            (
                json!({"kind": "Subscription", "metadata": {"namespace": "n"},
                    "spec": {"reply": {"uri": "http://x"}, "delivery": {"deadLetterSink": {"ref": {"name": "d"}}}}}),
                json!({"reply": {"uri": "http://x"}, "delivery": {"deadLetterSink": {"ref": {"name": "d", "namespace": "n"}}}}),
            ),
            (json!({"kind": "Broker", "spec": {}}), json!({})),
        ];
        for (object, expected) in cases {
            assert_eq!(defaulted_spec(&object), expected, "{object}");
        }
    }

    #[test]
    fn a_trigger_is_labelled_with_its_broker() {
        let trigger = json!({"kind": "Trigger", "metadata": {"name": "t", "labels": {"team": "a",
            BROKER_LABEL: "other"}}, "spec": {"broker": "default"}});
        let admitted = admitted(trigger, None);
        assert_eq!(admitted["metadata"]["labels"], json!({"team": "a", BROKER_LABEL: "default"}));
        assert_eq!(admitted["metadata"]["namespace"], "default");
        let long = format!("{}.{}", "a".repeat(63), "b".repeat(63));
        let to_a_long_name = json!({"kind": "Trigger", "metadata": {"name": "t", "labels": {BROKER_LABEL: "other"}},
            "spec": {"broker": long}});
        assert_eq!(
            super::admitted(to_a_long_name, None)["metadata"]["labels"],
            json!({}),
            "no label value past 63 characters"
        );
        let by_reference = json!({"kind": "Trigger", "metadata": {"name": "t"}, "spec": {"brokerRef": {"name": "b"}}});
        assert!(super::admitted(by_reference, None).pointer("/metadata/labels").is_none());
    }

    #[test]
    fn fields_fixed_at_creation_are_kept_when_an_apply_omits_them() {
        let stored = json!({"kind": "Broker", "metadata": {"name": "b", "namespace": "default",
            "annotations": {"eventing.knative.dev/broker.class": "Sluice", "note": "x"}},
            "spec": {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "c"}}});
        let omitted = json!({"kind": "Broker", "metadata": {"name": "b"}, "spec": {"delivery": {"retry": 3}}});
        let admitted = admitted(omitted, Some(&stored));
        assert_eq!(admitted["metadata"]["annotations"], json!({"eventing.knative.dev/broker.class": "Sluice"}));
        assert_eq!(
            admitted["spec"],
            json!({"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "c"},
            "delivery": {"retry": 3}})
        );
        let channel = json!({"kind": "Channel", "metadata": {"name": "c", "namespace": "default"},
            "spec": {"channelTemplate": {"apiVersion": "messaging.knative.dev/v1", "kind": "KafkaChannel"}}});
        let without = json!({"kind": "Channel", "metadata": {"name": "c"}, "spec": {}});
        assert_eq!(super::admitted(without, Some(&channel))["spec"], channel["spec"]);
    }
}
