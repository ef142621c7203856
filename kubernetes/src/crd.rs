//! Knative's custom resources as Kubernetes types, derived from Sluice's model (`sluice_controller::model`,
//! `sluice_controller::serving::model`): one spec type per kind, so the CRDs that `sluice crds` prints (and
//! `deploy/crds/` holds) cannot drift from what `sluice apply` accepts. Groups, versions, kinds, plurals,
//! short names, categories and printer columns are Knative's, so a cluster with Knative's own CRDs installed
//! needs none of these, and Knative's YAML applies to either.
//!
//! Knative's CRDs never require `spec` (`kind: Broker` with a name only is Knative's own example), so every
//! root type reads a missing `spec` as the default one: `attr = "cfg_attr(all(), serde(default))"` puts
//! serde's container `default` on the generated root (kube's `attr` refuses a bare `serde(...)`), and
//! `crds()` drops the default that schemars then writes into the schema.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition,
};
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_controller::model;
use sluice_controller::serving::model as serving;

/// `eventing.knative.dev/v1` Broker.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1",
    kind = "Broker",
    doc = "A Knative Broker: an event ingress with a durable log, served by Sluice when its class is Sluice.",
    namespaced,
    status = "KnativeStatus",
    derive = "Default",
    attr = "cfg_attr(all(), serde(default))"
)]
#[kube(category = "all", category = "knative", category = "eventing")]
#[kube(label("knative.dev/crd-install", "true"), label("duck.knative.dev/addressable", "true"))]
#[serde(transparent)]
#[schemars(transparent)]
pub struct BrokerSpec(pub model::BrokerSpec);

/// `eventing.knative.dev/v1` Trigger.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1",
    kind = "Trigger",
    doc = "A Knative Trigger: a filter on a Broker and the subscriber its events are pushed to.",
    namespaced,
    status = "KnativeStatus",
    derive = "Default",
    attr = "cfg_attr(all(), serde(default))"
)]
#[kube(category = "all", category = "knative", category = "eventing")]
#[kube(label("knative.dev/crd-install", "true"))]
#[serde(transparent)]
#[schemars(transparent)]
pub struct TriggerSpec(pub model::TriggerSpec);

/// `messaging.knative.dev/v1` Channel.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "Channel",
    doc = "A Knative Channel: an ordered stream of events fanned out to its Subscriptions.",
    namespaced,
    status = "KnativeStatus",
    derive = "Default",
    attr = "cfg_attr(all(), serde(default))"
)]
#[kube(category = "all", category = "knative", category = "messaging", category = "channel", shortname = "ch")]
#[kube(label("knative.dev/crd-install", "true"), label("messaging.knative.dev/subscribable", "true"))]
#[kube(label("duck.knative.dev/addressable", "true"))]
#[serde(transparent)]
#[schemars(transparent)]
pub struct ChannelSpec(pub model::ChannelSpec);

/// `messaging.knative.dev/v1` InMemoryChannel.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "InMemoryChannel",
    doc = "A Knative InMemoryChannel (durable in Sluice).",
    namespaced,
    status = "KnativeStatus",
    derive = "Default",
    attr = "cfg_attr(all(), serde(default))"
)]
#[kube(category = "all", category = "knative", category = "messaging", category = "channel", shortname = "imc")]
#[kube(label("knative.dev/crd-install", "true"), label("messaging.knative.dev/subscribable", "true"))]
#[kube(label("duck.knative.dev/addressable", "true"))]
#[serde(transparent)]
#[schemars(transparent)]
pub struct InMemoryChannelSpec(pub model::InMemoryChannelSpec);

/// `messaging.knative.dev/v1` Subscription.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "Subscription",
    doc = "A Knative Subscription: a Channel to a subscriber, with an optional reply.",
    namespaced,
    status = "KnativeStatus",
    derive = "Default",
    attr = "cfg_attr(all(), serde(default))"
)]
#[kube(category = "all", category = "knative", category = "messaging", shortname = "sub")]
#[kube(label("knative.dev/crd-install", "true"))]
#[serde(transparent)]
#[schemars(transparent)]
pub struct SubscriptionSpec(pub model::SubscriptionSpec);

/// `eventing.knative.dev/v1alpha1` EventPolicy.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1alpha1",
    kind = "EventPolicy",
    plural = "eventpolicies",
    doc = "A Knative EventPolicy: who may send which events to which Brokers and Channels (with sender identity on).",
    namespaced,
    status = "KnativeStatus",
    derive = "Default",
    attr = "cfg_attr(all(), serde(default))"
)]
#[kube(category = "all", category = "knative", category = "eventing")]
#[kube(label("knative.dev/crd-install", "true"))]
#[serde(transparent)]
#[schemars(transparent)]
pub struct EventPolicySpec(pub model::EventPolicySpec);

/// `serving.knative.dev/v1` Service (`KnativeService` here, to keep it apart from a core `v1` Service).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Service",
    doc = "A Knative Service: a Configuration and a Route managed together.",
    root = "KnativeService",
    namespaced,
    status = "KnativeStatus",
    derive = "Default",
    attr = "cfg_attr(all(), serde(default))"
)]
#[kube(category = "all", category = "knative", category = "serving", shortname = "kservice", shortname = "ksvc")]
#[kube(label("knative.dev/crd-install", "true"), label("duck.knative.dev/addressable", "true"))]
#[serde(transparent)]
#[schemars(transparent)]
pub struct ServiceSpec(pub serving::ServiceSpec);

/// `serving.knative.dev/v1` Configuration.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Configuration",
    doc = "A Knative Configuration: the template each new Revision is made from.",
    namespaced,
    status = "KnativeStatus",
    derive = "Default",
    attr = "cfg_attr(all(), serde(default))"
)]
#[kube(category = "all", category = "knative", category = "serving", shortname = "config", shortname = "cfg")]
#[kube(label("knative.dev/crd-install", "true"))]
#[serde(transparent)]
#[schemars(transparent)]
pub struct ConfigurationSpec(pub serving::ConfigurationSpec);

/// `serving.knative.dev/v1` Revision.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Revision",
    doc = "A Knative Revision: an immutable snapshot of code and configuration, run and scaled by Sluice.",
    namespaced,
    status = "KnativeStatus",
    derive = "Default",
    attr = "cfg_attr(all(), serde(default))"
)]
#[kube(category = "all", category = "knative", category = "serving", shortname = "rev")]
#[kube(label("knative.dev/crd-install", "true"))]
#[serde(transparent)]
#[schemars(transparent)]
pub struct RevisionSpec(pub serving::RevisionSpec);

/// `serving.knative.dev/v1` Route.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Route",
    doc = "A Knative Route: a host whose requests are split across Revisions.",
    namespaced,
    status = "KnativeStatus",
    derive = "Default",
    attr = "cfg_attr(all(), serde(default))"
)]
#[kube(category = "all", category = "knative", category = "serving", shortname = "rt")]
#[kube(label("knative.dev/crd-install", "true"), label("duck.knative.dev/addressable", "true"))]
#[serde(transparent)]
#[schemars(transparent)]
pub struct RouteSpec(pub serving::RouteSpec);

/// Knative's status (`duckv1.Status` with `address` and `url`): typed where every kind shares it; the
/// kind's own fields (`subscriberUri`, `traffic`, `latestReadyRevisionName`, ...) kept as Sluice derives them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnativeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

/// `apis.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `duckv1.Addressable`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addressable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl JsonSchema for KnativeStatus {
    fn schema_name() -> Cow<'static, str> {
        "KnativeStatus".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
            "properties": {
                "observedGeneration": { "type": "integer", "format": "int64" },
                "conditions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "status"],
                        "properties": {
                            "type": { "type": "string" },
                            "status": { "type": "string" },
                            "severity": { "type": "string" },
                            "lastTransitionTime": { "type": "string" },
                            "reason": { "type": "string" },
                            "message": { "type": "string" }
                        }
                    }
                },
                "annotations": { "type": "object", "additionalProperties": { "type": "string" } },
                "address": {
                    "type": "object",
                    "properties": {
                        "name": { "type": "string" },
                        "url": { "type": "string" },
                        "CACerts": { "type": "string" },
                        "audience": { "type": "string" }
                    }
                },
                "url": { "type": "string" }
            }
        })
    }
}

/// Every CRD Sluice serves, in `deploy/crds/`'s order, with Knative's printer columns.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        Broker::crd(),
        Trigger::crd(),
        Channel::crd(),
        InMemoryChannel::crd(),
        Subscription::crd(),
        EventPolicy::crd(),
        KnativeService::crd(),
        Configuration::crd(),
        Revision::crd(),
        Route::crd(),
    ];
    for crd in &mut crds {
        let columns = printer_columns(&crd.spec.names.kind);
        for version in &mut crd.spec.versions {
            version.additional_printer_columns = Some(columns.clone());
            // The root's `serde(default)` (a spec-less object reads as the default spec) makes schemars write
            // that default into the schema; Knative's CRDs declare none, and the API server would store it.
            let spec_schema = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut());
            if let Some(spec) = spec_schema.and_then(|s| s.properties.as_mut()).and_then(|p| p.get_mut("spec")) {
                spec.default = None;
            }
        }
    }
    crds
}

/// `kubectl get`'s columns for a kind, as Knative's CRDs declare them.
fn printer_columns(kind: &str) -> Vec<CustomResourceColumnDefinition> {
    let column = |name: &str, type_: &str, json_path: &str| CustomResourceColumnDefinition {
        name: name.into(),
        type_: type_.into(),
        json_path: json_path.into(),
        ..Default::default()
    };
    let ready = || column("Ready", "string", ".status.conditions[?(@.type==\"Ready\")].status");
    let reason = || column("Reason", "string", ".status.conditions[?(@.type==\"Ready\")].reason");
    let age = || column("Age", "date", ".metadata.creationTimestamp");
    let address_url = || column("URL", "string", ".status.address.url");
    let status_url = || column("URL", "string", ".status.url");
    let latest_created = || column("LatestCreated", "string", ".status.latestCreatedRevisionName");
    let latest_ready = || column("LatestReady", "string", ".status.latestReadyRevisionName");
    match kind {
        "Broker" => vec![
            address_url(),
            age(),
            ready(),
            reason(),
            CustomResourceColumnDefinition {
                priority: Some(1),
                ..column("Class", "string", ".metadata.annotations.eventing\\.knative\\.dev/broker\\.class")
            },
        ],
        "Trigger" => vec![
            column("Broker", "string", ".spec.broker"),
            column("Subscriber_URI", "string", ".status.subscriberUri"),
            age(),
            ready(),
            reason(),
        ],
        "Channel" | "InMemoryChannel" => vec![address_url(), age(), ready(), reason()],
        "Service" => vec![status_url(), latest_created(), latest_ready(), ready(), reason()],
        "Configuration" => vec![latest_created(), latest_ready(), ready(), reason()],
        "Revision" => vec![
            column("Config Name", "string", ".metadata.labels['serving\\.knative\\.dev/configuration']"),
            ready(),
            reason(),
            column("Actual Replicas", "integer", ".status.actualReplicas"),
            column("Desired Replicas", "integer", ".status.desiredReplicas"),
        ],
        "Route" => vec![status_url(), ready(), reason()],
        "EventPolicy" => vec![ready(), reason()],
        _ => vec![age(), ready(), reason()],
    }
}

/// A CRD as the YAML file `deploy/crds/` keeps (with a header saying where it comes from).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml_ng::Error> {
    Ok(format!(
        "# Generated by `sluice crds` from Sluice's model types: do not edit (a test fails when this file drifts).\n{}",
        serde_yaml_ng::to_string(crd)?
    ))
}

/// The file name of a CRD in `deploy/crds/`: `brokers.eventing.knative.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_of(crd: &CustomResourceDefinition) -> Value {
        let version = &crd.spec.versions[0];
        serde_json::to_value(version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref())).expect("schema")
    }

    #[test]
    fn names_groups_and_versions_are_knatives() {
        let names: Vec<(String, String, Vec<String>)> = crds()
            .iter()
            .map(|c| {
                (
                    c.metadata.name.clone().unwrap_or_default(),
                    c.spec.names.kind.clone(),
                    c.spec.names.short_names.clone().unwrap_or_default(),
                )
            })
            .collect();
        let expected = [
            ("brokers.eventing.knative.dev", "Broker", vec![]),
            ("triggers.eventing.knative.dev", "Trigger", vec![]),
            ("channels.messaging.knative.dev", "Channel", vec!["ch"]),
            ("inmemorychannels.messaging.knative.dev", "InMemoryChannel", vec!["imc"]),
            ("subscriptions.messaging.knative.dev", "Subscription", vec!["sub"]),
            ("eventpolicies.eventing.knative.dev", "EventPolicy", vec![]),
            ("services.serving.knative.dev", "Service", vec!["kservice", "ksvc"]),
            ("configurations.serving.knative.dev", "Configuration", vec!["config", "cfg"]),
            ("revisions.serving.knative.dev", "Revision", vec!["rev"]),
            ("routes.serving.knative.dev", "Route", vec!["rt"]),
        ];
        assert_eq!(names.len(), expected.len());
        for ((name, kind, short), (want_name, want_kind, want_short)) in names.iter().zip(expected) {
            assert_eq!((name.as_str(), kind.as_str()), (want_name, want_kind));
            assert_eq!(short, &want_short);
        }
        for crd in crds() {
            assert_eq!(crd.spec.versions.len(), 1);
            let version = if crd.spec.names.kind == "EventPolicy" { "v1alpha1" } else { "v1" };
            assert_eq!(crd.spec.versions[0].name, version);
            assert_eq!(crd.spec.scope, "Namespaced");
            assert!(crd.spec.versions[0].subresources.as_ref().is_some_and(|s| s.status.is_some()));
        }
    }

    #[test]
    fn the_schema_has_the_models_fields_with_knatives_names() {
        let trigger = schema_of(&Trigger::crd());
        let spec = &trigger["properties"]["spec"]["properties"];
        for field in ["broker", "filter", "filters", "subscriber", "delivery"] {
            assert!(spec.get(field).is_some(), "spec.{field} missing: {spec}");
        }
        let filter = &spec["filters"]["items"]["properties"];
        assert_eq!(filter["cesql"]["type"], "string");
        // Nested filters cannot be described recursively by a structural schema: Knative keeps them open too.
        assert_eq!(filter["not"]["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(filter["all"]["items"]["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(spec["delivery"]["properties"]["retry"]["type"], "integer");
        assert_eq!(spec["subscriber"]["properties"]["ref"]["properties"]["apiVersion"]["type"], "string");

        let service = schema_of(&KnativeService::crd());
        let container = &service["properties"]["spec"]["properties"]["template"]["properties"]["spec"]["properties"]["containers"]
            ["items"]["properties"];
        assert_eq!(container["image"]["type"], "string");
        assert_eq!(
            container["readinessProbe"]["properties"]["httpGet"]["properties"]["port"]["x-kubernetes-int-or-string"],
            true
        );
        assert_eq!(container["resources"]["x-kubernetes-preserve-unknown-fields"], true);
    }

    #[test]
    fn schemas_are_structural() {
        // Kubernetes refuses a CRD whose schema has `$ref`, untyped nodes (other than int-or-string and
        // preserved ones), or `properties` beside `additionalProperties`.
        fn check(path: &str, node: &Value, problems: &mut Vec<String>) {
            let Some(object) = node.as_object() else { return };
            if object.contains_key("$ref") {
                problems.push(format!("{path}: $ref"));
            }
            let preserved = object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            let int_or_string = object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
            if !object.contains_key("type") && !preserved && !int_or_string {
                problems.push(format!("{path}: no type"));
            }
            if object.contains_key("properties") && object.contains_key("additionalProperties") {
                problems.push(format!("{path}: properties and additionalProperties"));
            }
            for key in ["anyOf", "oneOf", "allOf"] {
                if object.contains_key(key) {
                    problems.push(format!("{path}: {key}"));
                }
            }
            if let Some(properties) = object.get("properties").and_then(Value::as_object) {
                for (name, child) in properties {
                    check(&format!("{path}.{name}"), child, problems);
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(child) = object.get(key) {
                    check(&format!("{path}[{key}]"), child, problems);
                }
            }
        }
        let mut problems = Vec::new();
        for crd in crds() {
            check(crd.spec.names.kind.as_str(), &schema_of(&crd), &mut problems);
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn deploy_crds_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        let mut drifted = Vec::new();
        for crd in crds() {
            let path = dir.join(crd_file_name(&crd));
            let want = crd_yaml(&crd).expect("yaml");
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                drifted.push(path.display().to_string());
            }
        }
        assert!(drifted.is_empty(), "{drifted:?} differ from the types: run `sluice crds --out-dir deploy/crds`");
        let kustomization =
            std::fs::read_to_string(dir.join("kustomization.yaml")).expect("deploy/crds/kustomization.yaml");
        for crd in crds() {
            assert!(
                kustomization.contains(&crd_file_name(&crd)),
                "kustomization.yaml does not list {}",
                crd_file_name(&crd)
            );
        }
    }

    #[test]
    fn no_kind_requires_a_spec_or_declares_a_default() {
        for crd in crds() {
            let schema = schema_of(&crd);
            let required = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
            assert!(!required.contains(&Value::from("spec")), "{} requires spec", crd.spec.names.kind);
            assert!(schema["properties"]["spec"].get("default").is_none(), "{} defaults spec", crd.spec.names.kind);
        }
    }

    #[test]
    fn a_knative_object_without_a_spec_reads_into_its_type() {
        fn read<K: serde::de::DeserializeOwned>(kind: &str, api_version: &str) -> K {
            let yaml = format!("apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x, namespace: default}}\n");
            serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{kind} without a spec: {e}"))
        }
        let broker: Broker = read("Broker", "eventing.knative.dev/v1");
        assert_eq!(broker.spec, BrokerSpec::default());
        assert_eq!(broker.metadata.name.as_deref(), Some("x"));
        let channel: InMemoryChannel = read("InMemoryChannel", "messaging.knative.dev/v1");
        assert_eq!(channel.spec, InMemoryChannelSpec::default());
        let _: Channel = read("Channel", "messaging.knative.dev/v1");
        let _: Trigger = read("Trigger", "eventing.knative.dev/v1");
        let _: Subscription = read("Subscription", "messaging.knative.dev/v1");
        let _: EventPolicy = read("EventPolicy", "eventing.knative.dev/v1alpha1");
        let _: KnativeService = read("Service", "serving.knative.dev/v1");
        let _: Configuration = read("Configuration", "serving.knative.dev/v1");
        let _: Revision = read("Revision", "serving.knative.dev/v1");
        let _: Route = read("Route", "serving.knative.dev/v1");
    }

    #[test]
    fn a_knative_object_reads_into_its_type() {
        let trigger: Trigger = serde_yaml_ng::from_str(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t, namespace: default}\n\
             spec:\n  broker: default\n  filter: {attributes: {type: dev.example}}\n  subscriber:\n    ref: {apiVersion: v1, kind: Service, name: sink}\n",
        )
        .expect("trigger");
        assert_eq!(trigger.spec.0.broker, "default");
        assert_eq!(trigger.spec.0.subscriber.and_then(|s| s.reference).map(|r| r.name), Some("sink".into()));
    }
}
