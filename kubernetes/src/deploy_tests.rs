//! `deploy/`'s manifests: every document parses as its Kubernetes type (k8s-openapi) and loses nothing in
//! doing so (a misspelt or misplaced field would be dropped by the typed read, and the comparison fails), and
//! the kustomizations list files that exist.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            let value: Value =
                serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The document read as `T` and written back, compared with the document.
fn round_trips<T: DeserializeOwned + Serialize>(document: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(document.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if &back == document {
        Ok(())
    } else {
        Err(format!("fields lost or changed by the typed read:\nwritten: {document}\nread back: {back}"))
    }
}

fn check(document: &Value) -> Result<(), String> {
    let kind = document["kind"].as_str().unwrap_or_default();
    match kind {
        "Namespace" => round_trips::<Namespace>(document),
        "Service" => round_trips::<Service>(document),
        "ServiceAccount" => round_trips::<ServiceAccount>(document),
        "StatefulSet" => round_trips::<StatefulSet>(document),
        "Deployment" => round_trips::<Deployment>(document),
        "PodDisruptionBudget" => round_trips::<PodDisruptionBudget>(document),
        "NetworkPolicy" => round_trips::<NetworkPolicy>(document),
        "Role" => round_trips::<Role>(document),
        "RoleBinding" => round_trips::<RoleBinding>(document),
        "ClusterRole" => round_trips::<ClusterRole>(document),
        "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(document),
        other => Err(format!("kind {other:?} has no check here")),
    }
}

fn kustomization_resources(dir: &Path) -> Vec<String> {
    let kustomization = &documents(&dir.join("kustomization.yaml"))[0];
    kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_string())
        .collect()
}

#[test]
fn every_manifest_parses_as_its_kubernetes_type() {
    let dir = deploy_dir();
    let mut problems = Vec::new();
    let mut kinds = Vec::new();
    for file in kustomization_resources(&dir) {
        for document in documents(&dir.join(&file)) {
            kinds.push(document["kind"].as_str().unwrap_or_default().to_string());
            if let Err(problem) = check(&document) {
                problems.push(format!("{file}: {problem}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    for kind in ["StatefulSet", "Deployment", "PodDisruptionBudget", "ClusterRole", "Service", "ServiceAccount"] {
        assert!(kinds.iter().any(|k| k == kind), "deploy/ has no {kind}");
    }
}

#[test]
fn the_check_catches_a_misplaced_field() {
    let mut document = documents(&deploy_dir().join("pdb.yaml")).remove(0);
    assert!(check(&document).is_ok());
    document["spec"]["maxUnavailabel"] = Value::from(1);
    assert!(check(&document).is_err());
}

#[test]
fn every_yaml_file_in_deploy_is_in_a_kustomization() {
    for dir in [deploy_dir(), deploy_dir().join("crds")] {
        let listed = kustomization_resources(&dir);
        for entry in std::fs::read_dir(&dir).expect("deploy/") {
            let name = entry.expect("entry").file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                assert!(listed.contains(&name), "{}/{name} is not in its kustomization.yaml", dir.display());
            }
        }
        for file in &listed {
            assert!(dir.join(file).exists(), "{}/kustomization.yaml lists {file}, which does not exist", dir.display());
        }
    }
}

#[test]
fn the_statefulset_and_its_services_agree() {
    let dir = deploy_dir();
    let set: StatefulSet = serde_json::from_value(documents(&dir.join("statefulset.yaml")).remove(0)).expect("set");
    let spec = set.spec.expect("spec");
    assert_eq!(spec.service_name.as_deref(), Some("sluice-peers"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"), "founders must start together");
    let pod = spec.template.spec.expect("pod spec");
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    assert!(args.contains(&format!("--initial-members={replicas}")), "{args:?}");
    let services: Vec<Service> = documents(&dir.join("services.yaml"))
        .into_iter()
        .map(|d| serde_json::from_value(d).expect("service"))
        .collect();
    let peers = services.iter().find(|s| s.metadata.name.as_deref() == Some("sluice-peers")).expect("sluice-peers");
    let peers_spec = peers.spec.clone().expect("spec");
    assert_eq!(peers_spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(peers_spec.publish_not_ready_addresses, Some(true));
    let labels = spec.template.metadata.and_then(|m| m.labels).unwrap_or_default();
    for service in &services {
        for (key, value) in service.spec.clone().and_then(|s| s.selector).unwrap_or_default() {
            assert_eq!(labels.get(&key), Some(&value), "{:?} selects {key}={value}", service.metadata.name);
        }
    }
    let named_ports: Vec<String> =
        container.ports.clone().unwrap_or_default().into_iter().filter_map(|p| p.name).collect();
    for service in &services {
        for port in service.spec.clone().and_then(|s| s.ports).unwrap_or_default() {
            if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) = port.target_port {
                assert!(named_ports.contains(&name), "{:?} targets port {name}", service.metadata.name);
            }
        }
    }
}

/// deploy/ runs without TLS or admin tokens, so the network policy is what keeps other pods off the admin API:
/// every port of a node is admitted from somewhere, HTTP from anywhere, admin and peer from Sluice's pods only
/// (the nodes and the controller, which pushes objects to the admin API).
#[test]
fn only_sluices_own_pods_reach_the_admin_and_peer_ports() {
    let dir = deploy_dir();
    let set: StatefulSet = serde_json::from_value(documents(&dir.join("statefulset.yaml")).remove(0)).expect("set");
    let spec = set.spec.expect("spec");
    let node_labels = spec.template.metadata.and_then(|m| m.labels).unwrap_or_default();
    let ports: Vec<String> = spec.template.spec.expect("pod spec").containers[0]
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    let policy: NetworkPolicy =
        serde_json::from_value(documents(&dir.join("networkpolicy.yaml")).remove(0)).expect("policy");
    let policy = policy.spec.expect("spec");
    let selects = |selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
                   labels: &std::collections::BTreeMap<String, String>| {
        selector.match_expressions.is_none()
            && selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(
        selects(policy.pod_selector.as_ref().expect("a pod selector"), &node_labels),
        "the policy selects the nodes"
    );
    assert_eq!(policy.policy_types, Some(vec!["Ingress".to_string()]));
    let controller: Deployment = serde_json::from_value(
        documents(&dir.join("controller.yaml")).into_iter().find(|d| d["kind"] == "Deployment").expect("controller"),
    )
    .expect("controller");
    let controller_labels =
        controller.spec.and_then(|s| s.template.metadata).and_then(|m| m.labels).unwrap_or_default();
    let rules = policy.ingress.unwrap_or_default();
    for port in &ports {
        let admitting: Vec<_> = rules
            .iter()
            .filter(|rule| {
                rule.ports.iter().flatten().any(|p| {
                    p.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(port.clone()))
                })
            })
            .collect();
        assert!(!admitting.is_empty(), "no rule admits port {port}");
        let from_anywhere = admitting.iter().any(|rule| rule.from.as_ref().is_none_or(Vec::is_empty));
        if port == "http" {
            assert!(from_anywhere, "event sources reach port http");
            continue;
        }
        assert!(!from_anywhere, "port {port} is open to every pod");
        for rule in admitting {
            for peer in rule.from.iter().flatten() {
                assert!(peer.namespace_selector.is_none() && peer.ip_block.is_none(), "{port}: {peer:?}");
                let selector = peer.pod_selector.as_ref().expect("a pod selector");
                assert!(
                    selector.match_labels.iter().flatten().any(|(k, v)| k == "app.kubernetes.io/name" && v == "sluice")
                );
                for (who, labels) in [("the nodes", &node_labels), ("the controller", &controller_labels)] {
                    assert!(selects(selector, labels), "{who} cannot reach port {port}");
                }
            }
        }
    }
}

/// What the Kubernetes serving runtime calls (`serving_runtime`, `revision`): (API group, resource, verb).
const SERVING_RUNTIME_CALLS: [(&str, &str, &str); 14] = [
    ("apps", "deployments", "list"),
    ("apps", "deployments", "get"),
    ("apps", "deployments", "patch"),
    ("apps", "deployments", "delete"),
    ("apps", "deployments/scale", "patch"),
    ("", "services", "list"),
    // Read before an apply or a deletion: another install's is left alone.
    ("", "services", "get"),
    ("", "services", "patch"),
    ("", "services", "delete"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods", "patch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
];

#[test]
fn the_nodes_may_make_every_call_of_the_kubernetes_runtime_and_the_controller_no_longer_runs_revisions() {
    let dir = deploy_dir();
    let set: StatefulSet = serde_json::from_value(documents(&dir.join("statefulset.yaml")).remove(0)).expect("set");
    let pod = set.spec.and_then(|s| s.template.spec).expect("pod spec");
    let account = pod.service_account_name.clone().expect("the nodes' service account");
    assert!(pod.containers[0].args.clone().unwrap_or_default().contains(&"--serving-runtime=kubernetes".to_string()));
    let documents = documents(&dir.join("rbac.yaml"));
    let bound_roles = |account: &str| -> Vec<ClusterRole> {
        let names: Vec<String> = documents
            .iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding")
            .map(|d| serde_json::from_value::<ClusterRoleBinding>(d.clone()).expect("binding"))
            .filter(|b| b.subjects.iter().flatten().any(|s| s.kind == "ServiceAccount" && s.name == account))
            .map(|b| b.role_ref.name)
            .collect();
        documents
            .iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .map(|d| serde_json::from_value::<ClusterRole>(d.clone()).expect("role"))
            .filter(|r| r.metadata.name.as_ref().is_some_and(|n| names.contains(n)))
            .collect()
    };
    let allows = |roles: &[ClusterRole], (group, resource, verb): (&str, &str, &str)| {
        roles.iter().flat_map(|r| r.rules.iter().flatten()).any(|rule| {
            rule.api_groups.iter().flatten().any(|g| g == group)
                && rule.resources.iter().flatten().any(|r| r == resource)
                && rule.verbs.iter().any(|v| v == verb)
        })
    };
    let node_roles = bound_roles(&account);
    for call in SERVING_RUNTIME_CALLS {
        assert!(allows(&node_roles, call), "{account} may not {call:?}");
    }
    let controller_roles = bound_roles("sluice-controller");
    assert!(!controller_roles.is_empty());
    assert!(!allows(&controller_roles, ("apps", "deployments/scale", "patch")), "least privilege");
    // Least privilege (regression: it was granted `update` on every Knative kind, their status and finalizers,
    // Revisions it never reads, and lists and watches it never makes): it patches, and reads what it resolves.
    for call in [
        ("eventing.knative.dev", "brokers", "update"),
        ("eventing.knative.dev", "brokers/status", "update"),
        ("messaging.knative.dev", "subscriptions/finalizers", "update"),
        ("serving.knative.dev", "revisions", "get"),
        ("serving.knative.dev", "services", "update"),
        ("", "services", "list"),
    ] {
        assert!(!allows(&controller_roles, call), "the controller need not {call:?}");
    }
    for call in [
        ("eventing.knative.dev", "brokers", "watch"),
        ("eventing.knative.dev", "brokers/status", "patch"),
        ("eventing.knative.dev", "triggers/finalizers", "patch"),
        ("serving.knative.dev", "routes/status", "patch"),
        ("", "services", "get"),
        ("events.k8s.io", "events", "create"),
    ] {
        assert!(allows(&controller_roles, call), "the controller needs {call:?}");
    }
    // In its own namespace: the Lease, and what `tidy_members` reads (the StatefulSet, its pods).
    let role: Role = documents
        .iter()
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "sluice-controller")
        .map(|d| serde_json::from_value(d.clone()).expect("role"))
        .next()
        .expect("the controller's Role");
    let role_allows = |(group, resource, verb): (&str, &str, &str)| {
        role.rules.iter().flatten().any(|rule| {
            rule.api_groups.iter().flatten().any(|g| g == group)
                && rule.resources.iter().flatten().any(|r| r == resource)
                && rule.verbs.iter().any(|v| v == verb)
        })
    };
    assert!(
        !role_allows(("apps", "statefulsets", "watch")) && !role_allows(("coordination.k8s.io", "leases", "patch"))
    );
    for call in [
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("apps", "statefulsets", "get"),
        ("", "pods", "list"),
    ] {
        assert!(role_allows(call), "the controller may not {call:?} in its namespace");
    }
}

/// Both pods meet the "restricted" Pod Security Standard: non-root, no privilege escalation, every capability
/// dropped, and the runtime's default seccomp profile (regression: neither set it, and both failed that level's
/// admission).
#[test]
fn every_pod_meets_the_restricted_pod_security_standard() {
    let dir = deploy_dir();
    for file in ["statefulset.yaml", "controller.yaml"] {
        let document = documents(&dir.join(file)).into_iter().find(|d| d["kind"] != "ServiceAccount").expect(file);
        let pod = &document["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{file}");
        for container in pod["containers"].as_array().expect("containers") {
            let context = &container["securityContext"];
            assert_eq!(context["allowPrivilegeEscalation"], false, "{file}");
            assert_eq!(context["capabilities"]["drop"], serde_json::json!(["ALL"]), "{file}");
        }
    }
}
