//! The controller's decisions, as plain functions over data: which Kubernetes objects are Sluice's, the
//! object Sluice is given for one (spec → desired Sluice object), and the status Kubernetes is given back
//! (observed Sluice status → Knative status). The async controller ([`crate::controller`]) only fetches,
//! calls these, and applies what they return.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::crd::{Condition, KnativeStatus};

/// The annotation that names a Broker's implementation.
pub const BROKER_CLASS_ANNOTATION: &str = "eventing.knative.dev/broker.class";
/// The class Sluice serves.
pub const SLUICE_BROKER_CLASS: &str = "Sluice";
/// The finalizer that keeps a Kubernetes object until Sluice has forgotten it.
pub const FINALIZER: &str = "sluice.dev/controller";

/// Whether a Broker with these annotations is Sluice's. A Broker without a class gets `default_class`, as
/// Knative's `config-br-defaults` gives it one (on a cluster with Knative's webhook the annotation is always
/// set by the time the controller sees it).
pub fn is_sluice_broker(annotations: &BTreeMap<String, String>, default_class: &str) -> bool {
    annotations.get(BROKER_CLASS_ANNOTATION).map_or(default_class, String::as_str) == SLUICE_BROKER_CLASS
}

/// Where an event source reaches Sluice from inside the cluster: the ingress Service's DNS name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterAddressing {
    /// `sluice-ingress.sluice-system.svc.cluster.local` (a port if it is not 80).
    pub ingress_host: String,
}

impl ClusterAddressing {
    /// The URL of an addressable kind, on the ingress Service, with the paths Sluice serves.
    pub fn address(&self, kind: &str, namespace: &str, name: &str) -> Option<String> {
        match kind {
            "Broker" => Some(format!("http://{}/{namespace}/{name}", self.ingress_host)),
            "Channel" | "InMemoryChannel" => Some(format!("http://{}/channels/{namespace}/{name}", self.ingress_host)),
            _ => None,
        }
    }
}

/// The object Sluice is given for a Kubernetes object: its kind, name, namespace, labels, annotations and
/// spec, without what the API server adds (uid, resourceVersion, managedFields, finalizers, status, ...);
/// Sluice keeps its own metadata.
pub fn desired_sluice_object(object: &Value) -> Value {
    let metadata = &object["metadata"];
    let mut kept = Map::new();
    for field in ["name", "namespace", "labels", "annotations"] {
        if let Some(value) = metadata.get(field).filter(|v| !v.is_null()) {
            kept.insert(field.into(), value.clone());
        }
    }
    let mut desired = json!({
        "apiVersion": object["apiVersion"],
        "kind": object["kind"],
        "metadata": kept,
    });
    if let Some(spec) = object.get("spec").filter(|v| !v.is_null()) {
        desired["spec"] = spec.clone();
    }
    desired
}

/// A subscriber (or reply, or dead-letter sink) `ref` to a core `v1` Service, resolved through the API: its
/// cluster DNS URL on its first port (Knative's resolver does the same), keeping a relative `uri` as a path.
pub fn resolve_core_service(
    destination: &Value,
    namespace: &str,
    service_ports: &[i32],
    cluster_domain: &str,
) -> Result<Value, String> {
    let reference = &destination["ref"];
    let name = reference["name"].as_str().ok_or("the ref has no name")?;
    let ref_namespace = reference["namespace"].as_str().unwrap_or(namespace);
    let port = service_ports.first().copied().ok_or_else(|| format!("Service {ref_namespace}/{name} has no port"))?;
    let host = format!("{name}.{ref_namespace}.svc.{cluster_domain}");
    let authority = if port == 80 { host } else { format!("{host}:{port}") };
    let path = destination["uri"].as_str().unwrap_or("");
    let path = if path.is_empty() || path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let mut resolved = destination.clone();
    if let Some(object) = resolved.as_object_mut() {
        object.remove("ref");
        object.insert("uri".into(), Value::String(format!("http://{authority}{path}")));
    }
    Ok(resolved)
}

/// Whether a Destination refers to a core `v1` Service (which Sluice cannot see; the controller resolves it).
pub fn is_core_service_ref(destination: &Value) -> bool {
    let reference = &destination["ref"];
    reference["kind"] == "Service" && matches!(reference["apiVersion"].as_str(), Some("v1") | None)
}

/// The Knative status Kubernetes is given: Sluice's derived status (conditions, kind-specific fields), with
/// the generation it was derived for and, for addressable kinds, the address on the ingress Service.
pub fn status_for_kubernetes(
    sluice_status: &Value,
    kind: &str,
    namespace: &str,
    name: &str,
    generation: Option<i64>,
    addressing: &ClusterAddressing,
) -> KnativeStatus {
    let mut status: KnativeStatus = serde_json::from_value(sluice_status.clone()).unwrap_or_default();
    status.observed_generation = generation;
    if let Some(url) = addressing.address(kind, namespace, name) {
        // Knative publishes an address while the object can take events at it (`Addressable`), not only while
        // it is Ready: a Broker made not Ready by an EventPolicy still takes its authorized senders' events.
        let addressable = status.conditions.iter().any(|c| c.type_ == "Addressable" && c.status == "True");
        if addressable {
            // Sluice's own address (its scheme, path, audience and CA certificates) on the ingress Service's
            // host. Regression: a bare `http://` URL replaced it, so with OIDC sources found no audience (and
            // sent no token), and with TLS they were sent to plaintext.
            let mut address = status.address.take().unwrap_or_default();
            let own = address.url.as_deref().and_then(|own| on_host(own, &addressing.ingress_host));
            address.url = Some(own.unwrap_or(url));
            status.address = Some(address);
            if let Some(Value::Array(addresses)) = status.details.get_mut("addresses") {
                for entry in addresses.iter_mut() {
                    let moved =
                        entry.get("url").and_then(Value::as_str).and_then(|u| on_host(u, &addressing.ingress_host));
                    if let (Some(moved), Some(entry)) = (moved, entry.as_object_mut()) {
                        entry.insert("url".into(), Value::String(moved));
                    }
                }
            }
        } else {
            status.address = None;
            status.details.remove("addresses");
        }
    }
    status
}

/// `url` with its host (and port) replaced by `host`: `https://127.0.0.1:8443/ns/b` on `sluice-ingress` is
/// `https://sluice-ingress/ns/b`. `None` for what is not `scheme://authority[/path]`. Pure.
fn on_host(url: &str, host: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    Some(format!("{scheme}://{host}{path}"))
}

/// `status` with the address `current` (the status Kubernetes shows) has: a change that cannot be pushed (a
/// dead-letter sink that no longer resolves, an edit Sluice refuses) leaves the object Sluice already serves,
/// taking events at its address, as Knative's reconcilers leave `status.address` then. Regression: the address
/// was nulled, and sources and SinkBindings lost their sink while the Broker still took events. Pure.
pub fn keeping_address(mut status: KnativeStatus, current: &Value) -> KnativeStatus {
    status.address = current.get("address").and_then(|a| serde_json::from_value(a.clone()).ok());
    if let Some(addresses) = current.get("addresses").filter(|a| !a.is_null()) {
        status.details.insert("addresses".into(), addresses.clone());
    }
    status
}

/// The status of an object Sluice could not be given (invalid, or refused): `Ready=False` with the reason.
pub fn refused_status(generation: Option<i64>, reason: &str, message: &str) -> KnativeStatus {
    KnativeStatus {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The status of an object one of whose destinations (`pointer`: `/spec/subscriber`, `/spec/reply`,
/// `/spec/delivery/deadLetterSink`) does not resolve: [`refused_status`], and as Knative's control plane
/// requires, the URI that destination resolves to set to the empty string (a Trigger's `subscriberUri` or
/// `deadLetterSinkUri`, a Subscription's `physicalSubscription`'s) with a condition that names it (a
/// Trigger's `SubscriberResolved`, `DeadLetterSinkResolved`; a Subscription's `ReferencesResolved`, its
/// `AddedToChannel` staying the node's to tell).
pub fn unresolved_status(kind: &str, generation: Option<i64>, pointer: &str, message: &str) -> KnativeStatus {
    let mut status = refused_status(generation, "DestinationNotResolved", message);
    let field = match pointer {
        "/spec/subscriber" => "subscriberUri",
        "/spec/reply" => "replyUri",
        "/spec/delivery/deadLetterSink" => "deadLetterSinkUri",
        _ => return status,
    };
    let unresolved = |type_: &str| Condition {
        type_: type_.into(),
        status: "False".into(),
        reason: Some("DestinationNotResolved".into()),
        message: Some(message.into()),
        ..Default::default()
    };
    match (kind, field) {
        ("Trigger", "subscriberUri") => {
            status.details.insert(field.into(), json!(""));
            status.conditions.push(unresolved("SubscriberResolved"));
        }
        ("Trigger", "deadLetterSinkUri") => {
            status.details.insert(field.into(), json!(""));
            status.conditions.push(unresolved("DeadLetterSinkResolved"));
        }
        ("Subscription", field) => {
            status.details.insert("physicalSubscription".into(), json!({ field: "" }));
            status.conditions.push(unresolved("ReferencesResolved"));
        }
        _ => {}
    }
    status
}

/// The JSON merge patch that makes an object's status `desired`: what `desired` has, and `null` for every field
/// of the `current` status it no longer has (a merge patch keeps what it does not name, so a Broker no longer
/// ready would go on showing its old `address.url` to the sources that resolve it).
pub fn status_patch(current: &Value, desired: &KnativeStatus) -> Value {
    let mut patch = match serde_json::to_value(desired) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    if let Some(current) = current.as_object() {
        for name in current.keys() {
            patch.entry(name.clone()).or_insert(Value::Null);
        }
    }
    Value::Object(patch)
}

/// What the controller does with a Trigger, given the class of the Broker it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerPlan {
    /// Its Broker is Sluice's: push it.
    Push,
    /// Its Broker is another class's: leave it to that implementation.
    NotOurs,
    /// Its Broker does not exist (yet): Knative reports `BrokerDoesNotExist`; Sluice is given it, and its
    /// status says the same, so it starts delivering when the Broker comes.
    BrokerMissing,
}

pub fn plan_trigger(broker_annotations: Option<&BTreeMap<String, String>>, default_class: &str) -> TriggerPlan {
    match broker_annotations {
        None => TriggerPlan::BrokerMissing,
        Some(annotations) if is_sluice_broker(annotations, default_class) => TriggerPlan::Push,
        Some(_) => TriggerPlan::NotOurs,
    }
}

#[cfg(test)]
mod tests {
    /// Regression (review): an unresolved destination left the URI out of the status (so the patch removed
    /// it) where Knative's control plane requires it set to the empty string, with a condition naming it.
    #[test]
    fn an_unresolved_destination_empties_its_uri_and_names_it() {
        use super::unresolved_status;
        let status = |kind: &str, pointer: &str| {
            serde_json::to_value(unresolved_status(kind, Some(3), pointer, "gone")).expect("json")
        };
        let trigger = status("Trigger", "/spec/subscriber");
        assert_eq!(trigger["subscriberUri"], "");
        assert_eq!(trigger["observedGeneration"], 3);
        let types: Vec<&str> =
            trigger["conditions"].as_array().expect("conditions").iter().filter_map(|c| c["type"].as_str()).collect();
        assert_eq!(types, ["Ready", "SubscriberResolved"]);
        let dead_letter = status("Trigger", "/spec/delivery/deadLetterSink");
        assert_eq!((dead_letter["deadLetterSinkUri"].as_str(), dead_letter.get("subscriberUri")), (Some(""), None));
        let subscription = status("Subscription", "/spec/reply");
        assert_eq!(subscription["physicalSubscription"], serde_json::json!({"replyUri": ""}));
        assert_eq!(subscription["conditions"][1]["type"], "ReferencesResolved");
        let broker = status("Broker", "/spec/delivery/deadLetterSink");
        assert_eq!(broker["conditions"].as_array().map(Vec::len), Some(1), "the Ready condition alone");
    }

    use super::*;

    /// Regression: a Broker refused (or no longer ready) kept its `address` and `url`, since the status was
    /// written as a merge patch of the new fields only.
    #[test]
    fn a_status_patch_clears_what_the_new_status_no_longer_has() {
        let current = json!({"observedGeneration": 1, "address": {"url": "http://x"}, "url": "http://x",
            "subscriberUri": "http://s", "conditions": [{"type": "Ready", "status": "True"}]});
        let refused = refused_status(Some(2), "SluiceRefused", "spec.x: bad");
        let patch = status_patch(&current, &refused);
        assert_eq!(patch["address"], Value::Null);
        assert_eq!(patch["url"], Value::Null);
        assert_eq!(patch["subscriberUri"], Value::Null);
        assert_eq!(patch["observedGeneration"], 2);
        assert_eq!(patch["conditions"][0]["reason"], "SluiceRefused", "lists are replaced whole");
        assert_eq!(status_patch(&Value::Null, &refused), serde_json::to_value(&refused).unwrap_or_default());
    }

    fn annotations(class: Option<&str>) -> BTreeMap<String, String> {
        class.map(|c| (BROKER_CLASS_ANNOTATION.to_string(), c.to_string())).into_iter().collect()
    }

    #[test]
    fn only_sluice_class_brokers_are_ours() {
        let cases = [
            (Some("Sluice"), "Sluice", true),
            (Some("Sluice"), "MTChannelBasedBroker", true),
            (Some("MTChannelBasedBroker"), "Sluice", false),
            (Some("Kafka"), "Sluice", false),
            (Some("sluice"), "Sluice", false),
            (None, "Sluice", true),
            (None, "MTChannelBasedBroker", false),
        ];
        for (class, default, want) in cases {
            assert_eq!(is_sluice_broker(&annotations(class), default), want, "{class:?} default {default}");
        }
    }

    #[test]
    fn triggers_follow_their_brokers_class() {
        assert_eq!(plan_trigger(Some(&annotations(Some("Sluice"))), "Sluice"), TriggerPlan::Push);
        assert_eq!(plan_trigger(Some(&annotations(Some("MTChannelBasedBroker"))), "Sluice"), TriggerPlan::NotOurs);
        assert_eq!(plan_trigger(None, "Sluice"), TriggerPlan::BrokerMissing);
    }

    #[test]
    fn the_sluice_object_drops_what_the_api_server_adds() {
        let object = json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
            "metadata": {"name": "b", "namespace": "ns", "uid": "u-1", "resourceVersion": "7", "generation": 3,
                         "finalizers": [FINALIZER], "managedFields": [{}], "creationTimestamp": "2026-11-28T00:00:00Z",
                         "annotations": {BROKER_CLASS_ANNOTATION: "Sluice"}, "labels": {"team": "a"}},
            "spec": {"delivery": {"retry": 3}},
            "status": {"conditions": []}
        });
        assert_eq!(
            desired_sluice_object(&object),
            json!({
                "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                "metadata": {"name": "b", "namespace": "ns",
                             "annotations": {BROKER_CLASS_ANNOTATION: "Sluice"}, "labels": {"team": "a"}},
                "spec": {"delivery": {"retry": 3}}
            })
        );
        let bare = json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "b"}});
        assert_eq!(desired_sluice_object(&bare)["metadata"], json!({"name": "b"}));
        assert!(desired_sluice_object(&bare).get("spec").is_none());
    }

    #[test]
    fn core_service_refs_resolve_to_cluster_dns() {
        let destination = json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "sink"}});
        assert!(is_core_service_ref(&destination));
        assert_eq!(
            resolve_core_service(&destination, "ns", &[80], "cluster.local"),
            Ok(json!({"uri": "http://sink.ns.svc.cluster.local"}))
        );
        let elsewhere = json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "sink", "namespace": "other"},
                               "uri": "events"});
        assert_eq!(
            resolve_core_service(&elsewhere, "ns", &[8080, 9090], "cluster.local"),
            Ok(json!({"uri": "http://sink.other.svc.cluster.local:8080/events"}))
        );
        assert!(resolve_core_service(&destination, "ns", &[], "cluster.local").is_err());
        let ksvc = json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "s"}});
        assert!(!is_core_service_ref(&ksvc));
    }

    /// A change that cannot be pushed keeps the address the object shows (Sluice still serves it); one never
    /// pushed has none to keep.
    #[test]
    fn a_refused_change_keeps_the_address_the_object_shows() {
        let shown = json!({"address": {"url": "http://sluice-ingress/ns/b"}, "addresses": [{"url": "http://sluice-ingress/ns/b"}],
            "conditions": [{"type": "Ready", "status": "True"}]});
        let status = keeping_address(refused_status(Some(3), "SluiceRefused", "no"), &shown);
        assert_eq!(status.address.and_then(|a| a.url).as_deref(), Some("http://sluice-ingress/ns/b"));
        assert_eq!(status.details["addresses"], shown["addresses"]);
        assert_eq!(status.conditions[0].status, "False", "the refusal is what Ready says");
        let never_pushed = keeping_address(refused_status(Some(1), "SluiceRefused", "no"), &Value::Null);
        assert_eq!((never_pushed.address, never_pushed.details.get("addresses")), (None, None));
    }

    #[test]
    fn status_carries_generation_conditions_and_the_cluster_address() {
        let addressing = ClusterAddressing { ingress_host: "sluice-ingress.sluice-system.svc.cluster.local".into() };
        let sluice = json!({
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Addressable", "status": "True"}],
            "address": {"url": "http://127.0.0.1:8080/ns/b"},
            "addresses": [{"url": "http://127.0.0.1:8080/ns/b"}],
        });
        let status = status_for_kubernetes(&sluice, "Broker", "ns", "b", Some(4), &addressing);
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.conditions.len(), 2);
        assert_eq!(
            status.address.and_then(|a| a.url).as_deref(),
            Some("http://sluice-ingress.sluice-system.svc.cluster.local/ns/b")
        );
        assert_eq!(
            status.details["addresses"],
            json!([{"url": "http://sluice-ingress.sluice-system.svc.cluster.local/ns/b"}])
        );
        // With TLS and sender identity on: https, the audience and the CA certificates are kept, on the host.
        let secured = json!({
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Addressable", "status": "True"}],
            "address": {"name": "https", "url": "https://127.0.0.1:8080/ns/b", "CACerts": "PEM",
                "audience": "eventing.knative.dev/broker/ns/b"},
            "addresses": [{"name": "https", "url": "https://127.0.0.1:8080/ns/b", "CACerts": "PEM"}],
        });
        let status = status_for_kubernetes(&secured, "Broker", "ns", "b", Some(4), &addressing);
        let address = status.address.expect("address");
        assert_eq!(address.url.as_deref(), Some("https://sluice-ingress.sluice-system.svc.cluster.local/ns/b"));
        assert_eq!(
            (address.audience.as_deref(), address.ca_certs.as_deref()),
            (Some("eventing.knative.dev/broker/ns/b"), Some("PEM"))
        );
        assert_eq!(
            status.details["addresses"][0]["url"],
            "https://sluice-ingress.sluice-system.svc.cluster.local/ns/b"
        );
        assert_eq!(status.details["addresses"][0]["CACerts"], "PEM");

        let not_addressable = json!({"conditions": [{"type": "Ready", "status": "False", "reason": "NotInitialised"}]});
        assert_eq!(status_for_kubernetes(&not_addressable, "Broker", "ns", "b", Some(1), &addressing).address, None);
        // Not Ready for another reason (an EventPolicy not ready): it still takes events, and keeps its address.
        let not_ready = json!({"conditions": [
            {"type": "Ready", "status": "False", "reason": "EventPoliciesNotReady"},
            {"type": "Addressable", "status": "True"},
            {"type": "EventPoliciesReady", "status": "False", "reason": "EventPoliciesNotReady"}]});
        let status = status_for_kubernetes(&not_ready, "Broker", "ns", "b", Some(1), &addressing);
        assert_eq!(
            status.address.and_then(|a| a.url).as_deref(),
            Some("http://sluice-ingress.sluice-system.svc.cluster.local/ns/b")
        );

        let trigger = json!({"conditions": [{"type": "Ready", "status": "True"}], "subscriberUri": "http://s/"});
        let status = status_for_kubernetes(&trigger, "Trigger", "ns", "t", Some(2), &addressing);
        assert_eq!(status.address, None);
        assert_eq!(status.details["subscriberUri"], "http://s/");
    }
}
