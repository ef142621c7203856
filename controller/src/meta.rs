//! Kubernetes metadata Sluice maintains on apply, decided deterministically
//! when the metadata group applies the object (every replica agrees).

use std::collections::BTreeSet;

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

/// The field manager of annotations set through the admin API (`sluice trigger pause`), recorded in
/// `metadata.managedFields` as Kubernetes records who set a field.
pub const ADMIN_FIELD_MANAGER: &str = "sluice-admin";

/// Whether applying `incoming` over the stored `stored` ([`merge_for_apply_keeping_owned`]) would change
/// nothing: the same spec, labels, annotations (those the admin API owns carried over) and other user fields,
/// and the same ownership; what Sluice maintains is not compared.
pub fn apply_changes_nothing(stored: &Value, incoming: &Value) -> bool {
    // Apply stores what admission makes of the object (nulls pruned, Knative's defaults, fields fixed at
    // creation kept): an object that differs only by those changes nothing.
    let incoming = crate::admission::admitted(incoming.clone(), Some(stored));
    let carried = carry_owned_annotations(stored, incoming);
    user_part(stored) == user_part(&carried) && admin_owned(stored) == admin_owned(&carried)
}

/// Merges `incoming` with the stored `existing` object (the rules of `LogCommand::PutResource`, part of the
/// log format: never change them, add a variant):
/// - a new object gets `uid`, `creationTimestamp`, generation 1;
/// - an object whose spec changed keeps its uid and creation time and bumps
///   `generation`; labels or annotations alone change `resourceVersion` only;
/// - an object identical to the stored one is left as it is (`unchanged`).
///
/// `status` is kept from the stored object (the reconcile step owns it).
pub fn merge_for_apply(
    existing: Option<&Value>,
    incoming: Value,
    uid: &str,
    now: &str,
    resource_version: u64,
) -> (Value, ApplyOutcome) {
    merge(existing, incoming, uid, now, resource_version, false)
}

/// [`merge_for_apply`], where the annotations the admin API set ([`ADMIN_FIELD_MANAGER`]) survive an apply
/// that does not name them, as an annotation set with `kubectl annotate` survives `kubectl apply`: an apply
/// that names one takes it over (its value wins, and the next apply without it removes it). The
/// `managedFields` of `incoming` are not taken: Sluice records them. The rules of `LogCommand::ApplyResource`.
pub fn merge_for_apply_keeping_owned(
    existing: Option<&Value>,
    incoming: Value,
    uid: &str,
    now: &str,
    resource_version: u64,
) -> (Value, ApplyOutcome) {
    let carried = match existing {
        Some(existing) => carry_owned_annotations(existing, incoming),
        None => without_managed_fields(incoming),
    };
    let ownership_changed = existing.is_some_and(|e| admin_owned(e) != admin_owned(&carried));
    merge(existing, carried, uid, now, resource_version, ownership_changed)
}

/// `object` with one annotation set to `value` by the admin API (which then owns it, [`ADMIN_FIELD_MANAGER`]),
/// or removed with `None` (and no longer owned; an emptied `annotations` is removed too, as Kubernetes shows
/// none), merged as an apply would be. The rules of `LogCommand::SetAdminAnnotation`.
pub fn set_admin_annotation(
    existing: &Value,
    annotation: &str,
    value: Option<&str>,
    resource_version: u64,
) -> (Value, ApplyOutcome) {
    let mut changed = with_annotation(existing, annotation, value);
    let mut owned = admin_owned(existing);
    match value {
        Some(_) => {
            owned.insert(annotation.to_string());
        }
        None => {
            owned.remove(annotation);
        }
    }
    set_admin_owned(&mut changed, &owned);
    let ownership_changed = admin_owned(existing) != owned;
    merge(Some(existing), changed, "", "", resource_version, ownership_changed)
}

fn merge(
    existing: Option<&Value>,
    mut incoming: Value,
    uid: &str,
    now: &str,
    resource_version: u64,
    metadata_changed: bool,
) -> (Value, ApplyOutcome) {
    if let Some(map) = incoming.as_object_mut() {
        map.remove("status");
    }
    let (outcome, generation, uid, created) = match existing {
        None => (ApplyOutcome::Created, 1, uid.to_string(), now.to_string()),
        Some(existing) => {
            if !metadata_changed && user_part(existing) == user_part(&incoming) {
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

/// The annotations of `object` that [`ADMIN_FIELD_MANAGER`] owns, from its `managedFields`.
fn admin_owned(object: &Value) -> BTreeSet<String> {
    let entries = object.pointer("/metadata/managedFields").and_then(Value::as_array);
    entries
        .into_iter()
        .flatten()
        .filter(|entry| entry["manager"] == ADMIN_FIELD_MANAGER)
        .filter_map(|entry| entry.pointer("/fieldsV1/f:metadata/f:annotations").and_then(Value::as_object))
        .flat_map(|fields| fields.keys())
        .filter_map(|field| field.strip_prefix("f:"))
        .map(str::to_string)
        .collect()
}

/// Records `owned` as the annotations [`ADMIN_FIELD_MANAGER`] owns: `managedFields` is Sluice's to keep, so
/// it holds that one entry, or is absent when nothing is owned.
fn set_admin_owned(object: &mut Value, owned: &BTreeSet<String>) {
    let api_version = object["apiVersion"].clone();
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if owned.is_empty() {
        metadata.remove("managedFields");
        return;
    }
    let fields: serde_json::Map<String, Value> =
        owned.iter().map(|annotation| (format!("f:{annotation}"), Value::Object(Default::default()))).collect();
    metadata.insert(
        "managedFields".into(),
        serde_json::json!([{
            "manager": ADMIN_FIELD_MANAGER,
            "operation": "Update",
            "apiVersion": api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": fields}},
        }]),
    );
}

fn without_managed_fields(mut object: Value) -> Value {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    object
}

/// `incoming` with the stored object's admin-owned annotations it does not name carried over (still owned),
/// and those it names no longer owned (the apply took them over).
fn carry_owned_annotations(stored: &Value, incoming: Value) -> Value {
    let mut carried = without_managed_fields(incoming);
    let mut owned = admin_owned(stored);
    let named: BTreeSet<String> = carried
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|annotations| annotations.keys().cloned().collect())
        .unwrap_or_default();
    let stored_value = |annotation: &str| {
        stored.pointer("/metadata/annotations").and_then(|a| a.get(annotation)).and_then(Value::as_str)
    };
    // Named by the apply: taken over. Gone from the object (an older `SetAnnotation` removed it): not owned.
    owned.retain(|annotation| !named.contains(annotation) && stored_value(annotation).is_some());
    for annotation in &owned {
        if let Some(value) = stored_value(annotation) {
            carried = with_annotation(&carried, annotation, Some(value));
        }
    }
    set_admin_owned(&mut carried, &owned);
    carried
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

    /// A Trigger as admission makes it (labelled with its Broker).
    fn trigger(annotations: Value) -> Value {
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": "t", "namespace": "default", "annotations": annotations,
                            "labels": {"eventing.knative.dev/broker": "default"}},
               "spec": {"broker": "default", "subscriber": {"uri": "http://sink"}}})
    }

    const PAUSED: &str = "sluice.dev/paused";

    /// The stored trigger with `team: a`, paused through the admin API.
    fn paused() -> Value {
        let created = merge_for_apply_keeping_owned(None, trigger(json!({"team": "a"})), "u", "t0", 1).0;
        let (paused, outcome) = set_admin_annotation(&created, PAUSED, Some("true"), 2);
        assert_eq!(outcome, ApplyOutcome::Configured);
        assert_eq!(admin_owned(&paused), BTreeSet::from([PAUSED.to_string()]));
        paused
    }

    type OwnedCase = (&'static str, Value, ApplyOutcome, Option<&'static str>, bool);

    #[test]
    fn annotations_the_admin_api_set_survive_an_apply_that_does_not_name_them() {
        // (case, the incoming annotations, outcome, the pause after, still owned by the admin API)
        let cases: Vec<OwnedCase> = vec![
            ("the same object again", json!({"team": "a"}), ApplyOutcome::Unchanged, Some("true"), true),
            ("another annotation changed", json!({"team": "b"}), ApplyOutcome::Configured, Some("true"), true),
            ("annotations removed", json!({}), ApplyOutcome::Configured, Some("true"), true),
            (
                "named, another value",
                json!({"team": "a", PAUSED: "false"}),
                ApplyOutcome::Configured,
                Some("false"),
                false,
            ),
            (
                "named, the same value",
                json!({"team": "a", PAUSED: "true"}),
                ApplyOutcome::Configured,
                Some("true"),
                false,
            ),
        ];
        for (case, annotations, outcome, pause, owned) in cases {
            let stored = paused();
            let incoming = trigger(annotations);
            assert_eq!(apply_changes_nothing(&stored, &incoming), outcome == ApplyOutcome::Unchanged, "{case}");
            let (merged, got) = merge_for_apply_keeping_owned(Some(&stored), incoming, "u2", "t1", 3);
            assert_eq!(got, outcome, "{case}");
            assert_eq!(
                merged.pointer("/metadata/annotations/sluice.dev~1paused").and_then(Value::as_str),
                pause,
                "{case}"
            );
            assert_eq!(admin_owned(&merged).contains(PAUSED), owned, "{case}: {merged}");
            assert_eq!(merged["metadata"]["generation"], 1, "{case}: annotations are not the spec");
            if !owned {
                // Taken over by the apply: the next apply without it removes it.
                let (after, _) = merge_for_apply_keeping_owned(Some(&merged), trigger(json!({})), "u3", "t2", 4);
                assert!(after.pointer("/metadata/annotations/sluice.dev~1paused").is_none(), "{case}: {after}");
            }
        }
    }

    #[test]
    fn resuming_removes_the_annotation_and_its_ownership_and_managed_fields_are_sluices_to_keep() {
        let (resumed, outcome) = set_admin_annotation(&paused(), PAUSED, None, 3);
        assert_eq!(outcome, ApplyOutcome::Configured);
        assert_eq!(resumed["metadata"]["annotations"], json!({"team": "a"}));
        assert!(resumed["metadata"].get("managedFields").is_none(), "{resumed}");
        assert_eq!(set_admin_annotation(&resumed, PAUSED, None, 4).1, ApplyOutcome::Unchanged);

        // Owned, but removed by an earlier version's `SetAnnotation`: the ownership goes with the next apply.
        let (mut stale, _) = set_admin_annotation(&resumed, PAUSED, Some("true"), 5);
        stale = with_annotation(&stale, PAUSED, None);
        let (applied, _) = merge_for_apply_keeping_owned(Some(&stale), trigger(json!({"team": "a"})), "u", "t0", 6);
        assert!(admin_owned(&applied).is_empty(), "{applied}");
        assert!(applied.pointer("/metadata/annotations/sluice.dev~1paused").is_none(), "{applied}");

        // An applied object's own managedFields (as `kubectl get -o yaml` prints them) give it no ownership.
        let mut forged = trigger(json!({PAUSED: "true"}));
        forged["metadata"]["managedFields"] = json!([{"manager": ADMIN_FIELD_MANAGER, "operation": "Update",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {"f:sluice.dev/paused": {}}}}}]);
        let (created, _) = merge_for_apply_keeping_owned(None, forged.clone(), "u", "t0", 1);
        assert!(created["metadata"].get("managedFields").is_none(), "{created}");
        let (updated, _) = merge_for_apply_keeping_owned(Some(&resumed), forged, "u", "t0", 5);
        assert!(admin_owned(&updated).is_empty(), "{updated}");
        let (after, _) = merge_for_apply_keeping_owned(Some(&updated), trigger(json!({})), "u", "t0", 6);
        assert_eq!(after["metadata"]["annotations"], json!({}), "an applied pause goes with the next apply");
    }

    #[test]
    fn put_resource_rules_are_unchanged_by_ownership() {
        // `PutResource` entries of earlier logs replace annotations whole, whoever set them.
        let (merged, outcome) = merge_for_apply(Some(&paused()), trigger(json!({"team": "a"})), "u", "t", 3);
        assert_eq!(outcome, ApplyOutcome::Configured);
        assert_eq!(merged["metadata"]["annotations"], json!({"team": "a"}));
    }

    #[test]
    fn nulls_are_pruned_at_every_depth_as_the_api_server_prunes_them() {
        let mut object = serde_json::json!({
            "kind": "EventPolicy",
            "metadata": {"name": "p", "labels": null},
            "spec": {"from": null, "to": [{"ref": {"apiVersion": null, "kind": "Broker", "name": "b"}}, null]},
            "status": null,
        });
        let as_written = object.clone();
        crate::admission::prune_nulls(&mut object);
        assert!(super::apply_changes_nothing(&object, &as_written), "the same object, stored without its nulls");
        assert_eq!(
            object,
            serde_json::json!({
                "kind": "EventPolicy",
                "metadata": {"name": "p"},
                "spec": {"to": [{"ref": {"kind": "Broker", "name": "b"}}, null]},
            }),
            "a null list item is not an absent field: it stays, for validation to refuse"
        );
    }
}
