//! What Services and Configurations own, as Knative's controllers make it: a Service owns a Configuration and
//! a Route of its name; a Configuration owns one Revision per template generation (`NAME-00001`, ... or the
//! template's own name). Revisions are immutable: once made, one is never rewritten.
//!
//! What flows in: every stored serving object. What flows out: a [`ChildPlan`]: the children to write (whole
//! objects, written through the resources API like any apply, so the state machine gives them their
//! metadata) and the objects whose owner is gone (deleted: Kubernetes' cascading deletion, by owner uid).
//! Pure: the children reconcile loop on the metadata leader carries the plan out and runs it again after
//! every change, so a lost write is made again.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::model::{TrafficTarget, same_revision_spec};
use super::rollout::ROLLOUT_DURATION_ANNOTATION;
use super::{
    CONFIGURATION_GENERATION_LABEL, CONFIGURATION_LABEL, CONFIGURATION_UID_LABEL, REVISION_STATE_KIND, SERVICE_LABEL,
    SERVICE_UID_LABEL, SERVING_API_VERSION,
};

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// An object's identity: (kind, namespace, name).
pub type ObjectKey = (String, String, String);

fn key_of(object: &Value) -> ObjectKey {
    (
        str_at(object, "/kind").to_string(),
        str_at(object, "/metadata/namespace").to_string(),
        str_at(object, "/metadata/name").to_string(),
    )
}

/// What the children reconcile writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChildPlan {
    /// Children to create or update (as applied objects: no uid, generation or status).
    pub put: Vec<Value>,
    /// Objects whose controlling owner no longer exists.
    pub delete: Vec<ObjectKey>,
}

/// The name of the Revision a Configuration makes at `generation`: the template's own name, else
/// `CONFIGURATION-0000G` (Knative's `kmeta.ChildName`, which keeps names within 63 characters).
pub fn revision_name(configuration: &str, template_name: &str, generation: i64) -> String {
    if !template_name.is_empty() {
        return template_name.to_string();
    }
    let suffix = format!("-{generation:05}");
    if configuration.len() + suffix.len() <= 63 {
        return format!("{configuration}{suffix}");
    }
    // Knative cuts long parent names and adds a hash so that children stay unique.
    let hash = fnv1a32(configuration);
    let keep = 63 - suffix.len() - 9;
    format!("{}-{hash:08x}{suffix}", &configuration[..keep.min(configuration.len())])
}

/// FNV-1a, 32 bits: a stable hash for the cut names (the same on every node and release).
fn fnv1a32(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": SERVING_API_VERSION,
        "kind": str_at(owner, "/kind"),
        "name": str_at(owner, "/metadata/name"),
        "uid": str_at(owner, "/metadata/uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A Service's or Configuration's template with its own name names one Revision. Refused at apply (Knative's
/// webhook does the same) when a Revision of that name exists that was not made from this template by this
/// Configuration (its spec compared after Knative's defaults, [`same_revision_spec`]): `revision` is the stored
/// Revision of the template's name, if any.
pub fn template_name_collision(object: &Value, revision: Option<&Value>) -> Option<crate::fields::FieldError> {
    let kind = str_at(object, "/kind");
    let template_name = str_at(object, "/spec/template/metadata/name");
    if !matches!(kind, "Service" | "Configuration") || template_name.is_empty() {
        return None;
    }
    let revision = revision?;
    let same_spec = match (revision.get("spec"), object.pointer("/spec/template/spec")) {
        (Some(made), Some(template)) => same_revision_spec(made, template),
        (made, template) => made == template,
    };
    let made_by_us =
        revision.pointer("/metadata/labels").and_then(|l| l.get(CONFIGURATION_LABEL)).and_then(Value::as_str)
            == Some(str_at(object, "/metadata/name"))
            && same_spec;
    (!made_by_us).then(|| crate::fields::FieldError {
        path: "spec.template.metadata.name".into(),
        message: format!(
            "Revision {template_name:?} already exists and was not made from this template; give the template a new name"
        ),
    })
}

/// Whether `revision` is the one `configuration`'s template makes now: owned by the Configuration (by uid)
/// and with the template's spec, compared after Knative's defaults ([`same_revision_spec`]: a template that
/// only writes out a default, `timeoutSeconds: 300`, is the same template, as the apply-time check takes it).
/// A Revision is never rewritten, so it keeps the spec it was made with. A template that names a Revision
/// made from it before (a rollback to an earlier template name) makes nothing new: that Revision is the
/// Configuration's latest created ([`super::routing::latest_revisions`]).
pub fn made_from_template(revision: &Value, configuration: &Value) -> bool {
    let spec = configuration.pointer("/spec/template").map_or_else(|| json!({}), revision_spec);
    owned_by(revision, configuration) && revision.get("spec").is_some_and(|made| same_revision_spec(made, &spec))
}

/// The spec of the Revision a template makes, as it is stored (without nulls).
fn revision_spec(template: &Value) -> Value {
    let mut spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    crate::admission::prune_nulls(&mut spec);
    spec
}

/// The spec of the Configuration a Service owns, as it is stored (without nulls): the Service's template.
pub fn configuration_spec(service: &Value) -> Value {
    let template = service.pointer("/spec/template").cloned().unwrap_or_else(|| json!({}));
    let mut spec = json!({"template": template});
    crate::admission::prune_nulls(&mut spec);
    spec
}

/// The spec of the Route a Service owns, as it is stored (without nulls): the Service's traffic (by default
/// 100 % to its latest revision), each target that names no Revision naming the Service's Configuration.
pub fn route_spec(service: &Value) -> Value {
    let name = str_at(service, "/metadata/name");
    let traffic: Vec<Value> = super::model::spec_traffic(service, name)
        .into_iter()
        .map(|target| {
            let target = if target.revision_name.is_none() {
                TrafficTarget { configuration_name: Some(name.to_string()), ..target }
            } else {
                target
            };
            serde_json::to_value(target).unwrap_or(Value::Null)
        })
        .collect();
    let mut spec = json!({"traffic": traffic});
    crate::admission::prune_nulls(&mut spec);
    spec
}

/// Whether `owner` is one of `object`'s owners (by uid).
pub fn owned_by(object: &Value, owner: &Value) -> bool {
    let uid = str_at(owner, "/metadata/uid");
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)))
}

fn labels_of(object: &Value) -> Map<String, Value> {
    object.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default()
}

/// The object as applied: `apiVersion`, `kind`, `metadata` (name, namespace, labels, annotations, owners), `spec`.
fn child(
    kind: &str,
    namespace: &str,
    name: &str,
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    owner: &Value,
    spec: Value,
) -> Value {
    let mut metadata = json!({"name": name, "namespace": namespace, "ownerReferences": [owner_reference(owner)]});
    if !labels.is_empty() {
        metadata["labels"] = Value::Object(labels);
    }
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    json!({"apiVersion": SERVING_API_VERSION, "kind": kind, "metadata": metadata, "spec": spec})
}

/// Whether the stored object already says what `desired` says (its labels, annotations, owners and spec).
fn up_to_date(stored: &Value, desired: &Value) -> bool {
    ["/spec", "/metadata/labels", "/metadata/annotations", "/metadata/ownerReferences"]
        .iter()
        .all(|pointer| stored.pointer(pointer) == desired.pointer(pointer))
}

/// Plans the children of every Service and Configuration in `objects`, and the deletion of orphans.
pub fn plan(objects: &[Value]) -> ChildPlan {
    let find = |key: &ObjectKey| objects.iter().find(|o| key_of(o) == *key);
    let mut plan = ChildPlan::default();
    // A child is stored without nulls (as apply prunes them), whatever its parent held when it was stored.
    let desire = |mut desired: Value, plan: &mut ChildPlan| {
        crate::admission::prune_nulls(&mut desired);
        match find(&key_of(&desired)) {
            Some(stored) if up_to_date(stored, &desired) => {}
            _ => plan.put.push(desired),
        }
    };

    for service in
        objects.iter().filter(|o| str_at(o, "/kind") == "Service" && str_at(o, "/apiVersion") == SERVING_API_VERSION)
    {
        let (namespace, name) = (str_at(service, "/metadata/namespace"), str_at(service, "/metadata/name"));
        let mut labels = labels_of(service);
        labels.insert(SERVICE_LABEL.into(), name.into());
        labels.insert(SERVICE_UID_LABEL.into(), str_at(service, "/metadata/uid").into());
        let annotations = Map::new();
        // A Configuration or Route of the Service's name that the Service does not own (applied on its own) is
        // left as it is, and the Service's status says so (Knative's `NotOwned`): taken over, it was rewritten
        // and then deleted with the Service.
        let ours = |kind: &str| {
            find(&(kind.to_string(), namespace.to_string(), name.to_string()))
                .is_none_or(|stored| owned_by(stored, service))
        };
        if ours("Configuration") {
            let spec = configuration_spec(service);
            desire(
                child("Configuration", namespace, name, labels.clone(), annotations.clone(), service, spec),
                &mut plan,
            );
        }
        if ours("Route") {
            // The Service's rollout duration is its Route's (Knative's Route reconciler reads it there).
            let mut annotations = annotations;
            if let Some(duration) =
                service.pointer("/metadata/annotations").and_then(|a| a.get(ROLLOUT_DURATION_ANNOTATION))
            {
                annotations.insert(ROLLOUT_DURATION_ANNOTATION.into(), duration.clone());
            }
            desire(child("Route", namespace, name, labels, annotations, service, route_spec(service)), &mut plan);
        }
    }

    for configuration in objects.iter().filter(|o| str_at(o, "/kind") == "Configuration") {
        let (namespace, name) = (str_at(configuration, "/metadata/namespace"), str_at(configuration, "/metadata/name"));
        let generation = configuration.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let template = configuration.pointer("/spec/template").cloned().unwrap_or_else(|| json!({}));
        let revision = revision_name(name, str_at(&template, "/metadata/name"), generation);
        let existing = find(&("Revision".to_string(), namespace.to_string(), revision.clone()));
        if existing.is_some() {
            // Made already (this generation's, or an earlier one's that the template names again: a rollback,
            // whose Revision is then the latest created, `made_from_template`), or a name collision, which the
            // Configuration's status reports: never rewritten.
            continue;
        }
        let mut labels = template.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
        labels.insert(CONFIGURATION_LABEL.into(), name.into());
        labels.insert(CONFIGURATION_UID_LABEL.into(), str_at(configuration, "/metadata/uid").into());
        labels.insert(CONFIGURATION_GENERATION_LABEL.into(), generation.to_string().into());
        let configuration_labels = labels_of(configuration);
        for inherited in [SERVICE_LABEL, SERVICE_UID_LABEL] {
            if let Some(value) = configuration_labels.get(inherited) {
                labels.insert(inherited.into(), value.clone());
            }
        }
        let annotations =
            template.pointer("/metadata/annotations").and_then(Value::as_object).cloned().unwrap_or_default();
        let spec = revision_spec(&template);
        desire(child("Revision", namespace, &revision, labels, annotations, configuration, spec), &mut plan);
    }

    // Orphans: serving children (and runtime facts) whose controlling owner is gone, by uid.
    let uids: BTreeSet<&str> = objects.iter().map(|o| str_at(o, "/metadata/uid")).filter(|u| !u.is_empty()).collect();
    for object in objects {
        let kind = str_at(object, "/kind");
        if !matches!(kind, "Configuration" | "Route" | "Revision") {
            continue;
        }
        let owners = object.pointer("/metadata/ownerReferences").and_then(Value::as_array);
        let controller =
            owners.into_iter().flatten().find(|r| r.get("controller").and_then(Value::as_bool) == Some(true));
        // A child about to be rewritten for a new owner of the same name is not an orphan.
        if let Some(owner) = controller
            && !uids.contains(str_at(owner, "/uid"))
            && !plan.put.iter().any(|p| key_of(p) == key_of(object))
        {
            plan.delete.push(key_of(object));
        }
    }
    // A Revision's runtime facts go with it.
    for state in objects.iter().filter(|o| str_at(o, "/kind") == REVISION_STATE_KIND) {
        let (_, namespace, name) = key_of(state);
        let revision = ("Revision".to_string(), namespace.clone(), name.clone());
        if find(&revision).is_none() && !plan.put.iter().any(|p| key_of(p) == revision) {
            plan.delete.push(key_of(state));
        }
    }
    plan
}
