//! JSON schemas for the model's fields that hold free JSON, written as Kubernetes' structural schemas want
//! them and as Knative's own CRDs declare them: objects and lists whose contents Kubernetes keeps unchecked
//! (`x-kubernetes-preserve-unknown-fields`), and int-or-string ports. The CRDs of `deploy/crds/` are derived
//! from the model with these.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Any JSON object (pod fields Kubernetes acts on; a Subscriptions API filter nested in `all`/`any`/`not`,
/// which a structural schema cannot describe recursively).
pub(crate) fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// A list of any JSON objects.
pub(crate) fn array_of_any_objects(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// `intstr.IntOrString`: a port number or a port name.
pub(crate) fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-int-or-string": true })
}
