//! Kubernetes metadata Sluice maintains on apply, decided deterministically
//! when the metadata group applies the object (every replica agrees).

use serde_json::Value;

/// What an apply did, as kubectl reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

impl ApplyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        }
    }
}

/// What the user controls in an object: spec, labels, annotations and any
/// other top-level field (not status, not the metadata Sluice maintains).
type UserPart<'a> = (Option<&'a Value>, Option<&'a Value>, Option<&'a Value>, Vec<(&'a String, &'a Value)>);

fn user_part(object: &Value) -> UserPart<'_> {
    let spec = object.get("spec");
    let labels = object.pointer("/metadata/labels");
    let annotations = object.pointer("/metadata/annotations");
    let extra: Vec<_> = object
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "spec")).collect())
        .unwrap_or_default();
    (spec, labels, annotations, extra)
}

/// Whether applying `incoming` over the stored `stored` would change nothing (the same spec, labels,
/// annotations and other user fields; what Sluice maintains is not compared).
pub fn same_user_part(stored: &Value, incoming: &Value) -> bool {
    user_part(stored) == user_part(incoming)
}

/// Merges `incoming` with the stored `existing` object:
/// - a new object gets `uid`, `creationTimestamp`, generation 1;
/// - an object whose spec changed keeps its uid and creation time and bumps
///   `generation`; labels or annotations alone change `resourceVersion` only;
/// - an object identical to the stored one is left as it is (`unchanged`).
///
/// `status` is kept from the stored object (the reconcile step owns it).
pub fn merge_for_apply(
    existing: Option<&Value>,
    mut incoming: Value,
    uid: &str,
    now: &str,
    resource_version: u64,
) -> (Value, ApplyOutcome) {
    if let Some(map) = incoming.as_object_mut() {
        map.remove("status");
    }
    let (outcome, generation, uid, created) = match existing {
        None => (ApplyOutcome::Created, 1, uid.to_string(), now.to_string()),
        Some(existing) => {
            if user_part(existing) == user_part(&incoming) {
                return (existing.clone(), ApplyOutcome::Unchanged);
            }
            let generation = existing.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            let generation = if existing.get("spec") == incoming.get("spec") { generation } else { generation + 1 };
            let uid = existing.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or(uid).to_string();
            let created =
                existing.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or(now).to_string();
            (ApplyOutcome::Configured, generation, uid, created)
        }
    };
    if let Some(metadata) = incoming.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("uid".into(), uid.into());
        metadata.insert("generation".into(), generation.into());
        metadata.insert("resourceVersion".into(), resource_version.to_string().into());
        metadata.insert("creationTimestamp".into(), created.into());
    }
    if let (Some(status), Some(map)) = (existing.and_then(|e| e.get("status")), incoming.as_object_mut()) {
        map.insert("status".into(), status.clone());
    }
    (incoming, outcome)
}

/// `object` with one annotation set to `value`, or removed with `None` (an emptied `annotations` is removed
/// too, as Kubernetes shows none).
pub fn with_annotation(object: &Value, annotation: &str, value: Option<&str>) -> Value {
    let mut object = object.clone();
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return object };
    match value {
        Some(value) => {
            let annotations = metadata.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
            if !annotations.is_object() {
                *annotations = Value::Object(Default::default());
            }
            if let Some(annotations) = annotations.as_object_mut() {
                annotations.insert(annotation.to_string(), value.into());
            }
        }
        None => {
            let emptied = match metadata.get_mut("annotations").and_then(Value::as_object_mut) {
                Some(annotations) => {
                    annotations.remove(annotation);
                    annotations.is_empty()
                }
                None => false,
            };
            if emptied {
                metadata.remove("annotations");
            }
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn broker(delivery_retry: i64, labels: Value) -> Value {
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
               "metadata": {"name": "b", "namespace": "default", "labels": labels},
               "spec": {"delivery": {"retry": delivery_retry}}})
    }

    #[test]
    fn generation_follows_the_spec() {
        let (created, outcome) = merge_for_apply(None, broker(1, json!({})), "uid-1", "t0", 10);
        assert_eq!(outcome, ApplyOutcome::Created);
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(created["metadata"]["uid"], "uid-1");
        assert_eq!(created["metadata"]["resourceVersion"], "10");

        let (same, outcome) = merge_for_apply(Some(&created), broker(1, json!({})), "uid-2", "t1", 11);
        assert_eq!(outcome, ApplyOutcome::Unchanged);
        assert_eq!(same, created);

        let (relabelled, outcome) = merge_for_apply(Some(&created), broker(1, json!({"a": "b"})), "uid-2", "t1", 12);
        assert_eq!(outcome, ApplyOutcome::Configured);
        assert_eq!(relabelled["metadata"]["generation"], 1, "labels alone keep the generation");
        assert_eq!(relabelled["metadata"]["resourceVersion"], "12");

        let (changed, outcome) = merge_for_apply(Some(&relabelled), broker(2, json!({"a": "b"})), "uid-3", "t2", 13);
        assert_eq!(outcome, ApplyOutcome::Configured);
        assert_eq!(changed["metadata"]["generation"], 2);
        assert_eq!(changed["metadata"]["uid"], "uid-1", "uid survives updates");
        assert_eq!(changed["metadata"]["creationTimestamp"], "t0");
    }

    #[test]
    fn status_belongs_to_the_stored_object() {
        let mut stored = merge_for_apply(None, broker(1, json!({})), "u", "t", 1).0;
        stored["status"] = json!({"observedGeneration": 1});
        let mut incoming = broker(3, json!({}));
        incoming["status"] = json!({"forged": true});
        let (merged, _) = merge_for_apply(Some(&stored), incoming, "u", "t", 2);
        assert_eq!(merged["status"], json!({"observedGeneration": 1}));
    }
}
