//! A Knative Revision on Kubernetes: the Deployment that runs one node's pods of it and the headless Service
//! whose EndpointSlices list them ([`revision_deployment`], [`revision_service`], pure), and the calls that
//! apply them and carry out the autoscaler's decisions through the scale subresource ([`apply`], [`scale`]).
//! What flows in: a Revision as Sluice stores it (JSON), the Sluice node that runs it, a desired pod count.
//! What flows out: server-side applies, and a patch of `deployments/NAME/scale` when the count changes.
//!
//! Each Sluice node scales the revisions its own requests and deliveries need (as with the local runtime), so
//! a revision has one Deployment per node that runs it: `REVISION-nID-deployment`, its pods labelled with the
//! node ([`NODE_LABEL`]) and with the Sluice install the node belongs to ([`INSTALL_LABEL`], [`Install`]): node
//! ids repeat across installs on one cluster. Knative's shape is kept otherwise: labelled with
//! `serving.knative.dev/{revision,configuration,service}`, the user container named `user-container` with
//! `PORT`, `K_SERVICE`, `K_CONFIGURATION`, `K_REVISION`; the termination grace period is the Revision's
//! `timeoutSeconds` (in-flight requests may finish). No owner reference: Sluice's Revisions live in Sluice's
//! metadata group, not in the API server (an owner the API server does not know would have the garbage
//! collector delete the Deployment); the node deletes what it made when the revision stops running there, and
//! what a previous run of the node (of its install) left when it starts ([`owned_selector`]).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};
use sluice_controller::serving::{CONFIGURATION_LABEL, SERVICE_LABEL};

/// The label every pod of a revision carries.
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";
/// The label naming the Sluice node that scales a Deployment (and its pods).
pub const NODE_LABEL: &str = "serving.sluice.dev/node";
/// The label naming the Sluice install whose node made a Deployment or Service ([`Install`]).
pub const INSTALL_LABEL: &str = "serving.sluice.dev/install";
/// The install of a node that is neither a StatefulSet's pod nor told its install (`--serving-install`).
pub const DEFAULT_INSTALL: &str = "sluice";
/// The port a container listens on when it names none (Knative's default).
pub const DEFAULT_USER_PORT: i64 = 8080;
/// The name of the revision Service's port, in its EndpointSlices.
pub const SERVICE_PORT_NAME: &str = "http";
/// The field manager of Sluice's server-side applies.
pub const FIELD_MANAGER: &str = "sluice";
/// Longest name of a Service (a DNS-1035 label).
const MAX_SERVICE_NAME: usize = 63;
/// Longest label value.
const MAX_LABEL_VALUE: usize = 63;

/// FNV-1a: stable across runs and builds (a name made with it must not change when the node restarts).
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Which Sluice install a node belongs to: the value of [`INSTALL_LABEL`] on every Deployment and Service its
/// Kubernetes runtime makes. Node ids repeat across installs (each StatefulSet's pods are nodes 1, 2, 3, ...),
/// so what a node owns is what carries its id and its install; without the install, a node starting would
/// delete another install's revisions. Checked to be a label value when made, so it goes into a label
/// selector as it is (a `,` in it would add a term).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install(String);

impl Install {
    /// The install named `name`: a label value (at most 63 letters, digits, `-`, `_` and `.`, beginning and
    /// ending with a letter or digit), as the API server requires of it.
    pub fn new(name: &str) -> Result<Install, String> {
        let alphanumeric = |c: char| c.is_ascii_alphanumeric();
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.len() > MAX_LABEL_VALUE
            || !name.starts_with(alphanumeric)
            || !name.ends_with(alphanumeric)
            || !name.chars().all(allowed)
        {
            return Err(format!(
                "{name:?} is not a label value (at most {MAX_LABEL_VALUE} letters, digits, '-', '_' or '.', \
                 beginning and ending with a letter or digit)"
            ));
        }
        Ok(Install(name.to_string()))
    }

    /// The install a StatefulSet's pods make up: `NAMESPACE.STATEFULSET`, which no other StatefulSet shares (and
    /// a release installed again under the same names takes over what the previous one left). Past 63
    /// characters, cut short with a hash of the whole, so that two long names still differ.
    pub fn of_statefulset(namespace: &str, statefulset: &str) -> Result<Install, String> {
        let full = format!("{namespace}.{statefulset}");
        if full.len() <= MAX_LABEL_VALUE {
            return Install::new(&full);
        }
        let tail = format!("-{:08x}", stable_hash(&full) as u32);
        let kept: String = full.chars().take(MAX_LABEL_VALUE - tail.len()).collect();
        Install::new(&format!("{}{tail}", kept.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())))
    }

    /// The label value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What node `node_id` of `install` made, as a label selector: what the node deletes when it starts. Both
/// labels: another install's node of the same id is not this one.
pub fn owned_selector(node_id: u64, install: &Install) -> String {
    format!("{NODE_LABEL}=n{node_id},{INSTALL_LABEL}={}", install.as_str())
}

/// Whose a Deployment or Service of a revision's name is, by its labels, to the node of `install` that would
/// apply it (`None`: there is none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// There is none: the node makes it.
    Absent,
    /// Labelled with the node's install: the node's (its name has the node's id in it).
    Ours,
    /// A Sluice node's made before the install label (session 58): taken over, as an upgrade needs.
    MadeBeforeInstalls,
    /// Another install's, or not a Sluice node's at all: the node leaves it alone and the revision fails to
    /// start with `NotOwned`, as Knative's revision reconciler does when a Deployment of its name is not its own.
    NotOurs(String),
}

impl Ownership {
    /// The node may apply (or delete) it.
    pub fn is_ours(&self) -> bool {
        !matches!(self, Ownership::NotOurs(_))
    }
}

/// Whose the `kind` named `name` with these `labels` is ([`Ownership`]). Pure.
pub fn ownership(
    kind: &str,
    name: &str,
    labels: Option<&std::collections::BTreeMap<String, String>>,
    install: &Install,
) -> Ownership {
    let Some(labels) = labels else { return Ownership::Absent };
    match (labels.get(INSTALL_LABEL), labels.contains_key(NODE_LABEL)) {
        (Some(theirs), true) if theirs == install.as_str() => Ownership::Ours,
        (None, true) => Ownership::MadeBeforeInstalls,
        (Some(theirs), true) => Ownership::NotOurs(format!(
            "There is an existing {kind} {name:?} that we do not own: Sluice install {theirs:?} made it \
             (this node's is {:?}); run the installs' revisions in different namespaces or under different names",
            install.as_str()
        )),
        (_, false) => Ownership::NotOurs(format!(
            "There is an existing {kind} {name:?} that we do not own: no Sluice node made it (it has no {NODE_LABEL} \
             label); delete it or give the revision another name"
        )),
    }
}

/// What one node's pods of a revision are called: `REVISION-nID`.
pub fn pod_set_name(revision: &str, node_id: u64) -> String {
    format!("{revision}-n{node_id}")
}

/// The Deployment's name for a node's pods of a revision.
pub fn deployment_name(revision: &str, node_id: u64) -> String {
    format!("{}-deployment", pod_set_name(revision, node_id))
}

/// The headless Service whose EndpointSlices list a node's pods of a revision: `REVISION-nID-private`, or,
/// past 63 characters, the revision's name cut short with a hash of the whole.
pub fn service_name(revision: &str, node_id: u64) -> String {
    let full = format!("{}-private", pod_set_name(revision, node_id));
    if full.len() <= MAX_SERVICE_NAME {
        return full;
    }
    let tail = format!("-{:08x}-n{node_id}-private", stable_hash(&full) as u32);
    let keep = MAX_SERVICE_NAME - tail.len();
    format!("{}{tail}", revision[..keep.min(revision.len())].trim_end_matches('-'))
}

/// The labels of a revision's Deployment, its pods and its Service.
fn pod_labels(revision: &Value, node_id: u64, install: &Install) -> Result<Map<String, Value>, String> {
    let name = revision["metadata"]["name"].as_str().filter(|n| !n.is_empty()).ok_or("the revision has no name")?;
    let mut labels = Map::new();
    labels.insert(REVISION_LABEL.into(), json!(name));
    labels.insert(NODE_LABEL.into(), json!(format!("n{node_id}")));
    labels.insert(INSTALL_LABEL.into(), json!(install.as_str()));
    for key in [CONFIGURATION_LABEL, SERVICE_LABEL] {
        if let Some(value) = revision["metadata"]["labels"][key].as_str().filter(|v| !v.is_empty()) {
            labels.insert(key.into(), json!(value));
        }
    }
    Ok(labels)
}

/// The pods' selector: the revision and the node (not the install: see [`revision_deployment`]).
pub fn pod_selector(revision: &str, node_id: u64) -> String {
    format!("{REVISION_LABEL}={revision},{NODE_LABEL}=n{node_id}")
}

/// The index of the container that serves: the one with `ports`, else the first (Knative's `GetContainer`).
pub(crate) fn serving_index(containers: &[Value]) -> usize {
    containers.iter().position(|c| c["ports"].as_array().is_some_and(|p| !p.is_empty())).unwrap_or(0)
}

fn user_port(revision: &Value) -> i64 {
    let containers = revision["spec"]["containers"].as_array().map(Vec::as_slice).unwrap_or_default();
    containers
        .get(serving_index(containers))
        .and_then(|c| c["ports"][0]["containerPort"].as_i64())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_USER_PORT)
}

/// Containers as written, the unnamed ones named as Knative names them (`user-container-0`, … or
/// `init-container-0`, …, skipping names in use): Kubernetes refuses a container without a name.
fn named(containers: Vec<Value>, base: &str, taken: &mut std::collections::BTreeSet<String>) -> Vec<Value> {
    let mut next = 0;
    containers
        .into_iter()
        .map(|mut container| {
            if container["name"].as_str().is_none_or(str::is_empty) {
                let name = loop {
                    let name = format!("{base}-{next}");
                    next += 1;
                    if !taken.contains(&name) {
                        break name;
                    }
                };
                taken.insert(name.clone());
                container["name"] = json!(name);
            }
            container
        })
        .collect()
}

/// The headless Service over node `node_id`'s pods of `revision`: its EndpointSlices are where the serving
/// proxy finds the ready pods. Labelled with the node's `install`; it selects the pods as their Deployment does.
pub fn revision_service(revision: &Value, node_id: u64, install: &Install) -> Result<Service, String> {
    let name = revision["metadata"]["name"].as_str().filter(|n| !n.is_empty()).ok_or("the revision has no name")?;
    let namespace = revision["metadata"]["namespace"].as_str().unwrap_or("default");
    let labels = pod_labels(revision, node_id, install)?;
    let selector = json!({REVISION_LABEL: name, NODE_LABEL: format!("n{node_id}")});
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(name, node_id), "namespace": namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": SERVICE_PORT_NAME, "port": user_port(revision), "targetPort": user_port(revision),
                       "protocol": "TCP"}],
        },
    });
    serde_json::from_value(service).map_err(|e| format!("the revision does not make a valid Service: {e}"))
}

/// A probe of the user container with its port filled in, as Knative fills it: a Revision's probes may leave
/// out the port (or name the container's port), and Kubernetes refuses a Deployment whose `httpGet`,
/// `tcpSocket` or `grpc` probe has none.
fn with_probe_port(mut probe: Value, port: i64) -> Value {
    for handler in ["httpGet", "tcpSocket", "grpc"] {
        if let Some(handler) = probe.get_mut(handler).and_then(Value::as_object_mut) {
            let set = match handler.get("port") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_u64() == Some(0),
                // A named port: the user container has one port, named `user-port` or `h2c` here.
                Some(Value::String(_)) => true,
                Some(_) => false,
            };
            if set {
                handler.insert("port".into(), json!(port));
            }
        }
    }
    probe
}

/// The Deployment that runs node `node_id`'s pods of `revision`, `replicas` of them, labelled (and its pods)
/// with the node's `install`. Fields Kubernetes acts on and Sluice keeps as JSON (`resources`, `volumes`,
/// `affinity`, ...) are passed through as the user wrote them; the containers other than the serving one (the
/// one with `ports`) run as sidecars, as written.
pub fn revision_deployment(
    revision: &Value,
    node_id: u64,
    install: &Install,
    replicas: i32,
) -> Result<Deployment, String> {
    let name = revision["metadata"]["name"].as_str().filter(|n| !n.is_empty()).ok_or("the revision has no name")?;
    let namespace = revision["metadata"]["namespace"].as_str().unwrap_or("default");
    let labels = revision["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    let label = |key: &str| labels.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    let spec = &revision["spec"];
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let serving = serving_index(&containers);
    let user = containers.get(serving).cloned().ok_or("the revision has no container")?;
    if user["image"].as_str().is_none_or(str::is_empty) {
        return Err(format!("spec.containers[{serving}].image: a container on Kubernetes needs an image"));
    }
    let port = user_port(revision);

    let mut env: Vec<Value> = user["env"].as_array().cloned().unwrap_or_default();
    env.extend([
        json!({"name": "PORT", "value": port.to_string()}),
        json!({"name": "K_REVISION", "value": name}),
        json!({"name": "K_CONFIGURATION", "value": label(CONFIGURATION_LABEL)}),
        json!({"name": "K_SERVICE", "value": label(SERVICE_LABEL)}),
    ]);
    let mut container = Map::new();
    container.insert("name".into(), json!("user-container"));
    for field in [
        "image",
        "command",
        "args",
        "workingDir",
        "envFrom",
        "resources",
        "volumeMounts",
        "securityContext",
        "imagePullPolicy",
        "terminationMessagePath",
        "terminationMessagePolicy",
    ] {
        if let Some(value) = user.get(field).filter(|v| !v.is_null()) {
            container.insert(field.into(), value.clone());
        }
    }
    for probe in ["livenessProbe", "startupProbe"] {
        if let Some(value) = user.get(probe).filter(|v| !v.is_null()) {
            container.insert(probe.into(), with_probe_port(value.clone(), port));
        }
    }
    container.insert("env".into(), Value::Array(env));
    let port_name = user["ports"][0]["name"].as_str().filter(|n| *n == "h2c").unwrap_or("user-port");
    container.insert("ports".into(), json!([{"name": port_name, "containerPort": port, "protocol": "TCP"}]));
    // Ready when the app accepts connections, unless the user says otherwise (Knative's default probe).
    let readiness = user.get("readinessProbe").filter(|v| !v.is_null()).cloned().unwrap_or_else(|| json!({}));
    let readiness = if ["httpGet", "tcpSocket", "exec", "grpc"].iter().any(|k| readiness.get(*k).is_some()) {
        readiness
    } else {
        let mut probe = readiness.as_object().cloned().unwrap_or_default();
        probe.insert("tcpSocket".into(), json!({"port": port}));
        Value::Object(probe)
    };
    container.insert("readinessProbe".into(), with_probe_port(readiness, port));

    let mut pod_spec = Map::new();
    let sidecars: Vec<Value> =
        containers.iter().enumerate().filter(|(i, _)| *i != serving).map(|(_, c)| c.clone()).collect();
    let init_containers = spec["initContainers"].as_array().cloned().unwrap_or_default();
    let mut taken: std::collections::BTreeSet<String> =
        sidecars.iter().chain(&init_containers).filter_map(|c| c["name"].as_str().map(str::to_string)).collect();
    // The serving container is `user-container` unless a sidecar the user named so has that name: then it is
    // named as an unnamed one would be (two containers of one name are refused).
    if taken.contains("user-container") {
        let renamed = named(vec![json!({})], "user-container", &mut taken);
        container.insert("name".into(), renamed[0]["name"].clone());
    }
    taken.insert(container["name"].as_str().unwrap_or("user-container").to_string());
    let mut all_containers = vec![Value::Object(container)];
    all_containers.extend(named(sidecars, "user-container", &mut taken));
    pod_spec.insert("containers".into(), Value::Array(all_containers));
    if !init_containers.is_empty() {
        pod_spec.insert("initContainers".into(), Value::Array(named(init_containers, "init-container", &mut taken)));
    }
    for field in [
        "serviceAccountName",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "dnsPolicy",
        "dnsConfig",
        "hostAliases",
        "imagePullSecrets",
        "nodeSelector",
        "affinity",
        "tolerations",
        "topologySpreadConstraints",
        "priorityClassName",
        "runtimeClassName",
        "schedulerName",
        "securityContext",
        "volumes",
        // Refused at apply unless the cluster enables their feature flags (`--serving-feature`).
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "shareProcessNamespace",
    ] {
        if let Some(value) = spec.get(field).filter(|v| !v.is_null()) {
            pod_spec.insert(field.into(), value.clone());
        }
    }
    let timeout_seconds = spec["timeoutSeconds"].as_i64().unwrap_or(300);
    pod_spec.insert("terminationGracePeriodSeconds".into(), json!(timeout_seconds));

    let pod_labels = pod_labels(revision, node_id, install)?;
    // The selector stays the revision and the node, without the install: a Deployment's selector cannot change,
    // and an apply over one a node made before the install label existed would be refused. The install is in
    // the Deployment's and its pods' labels only (a superset of the selector, as the API server requires).
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name, node_id),
            "namespace": namespace,
            "labels": pod_labels.clone(),
        },
        "spec": {
            "replicas": replicas.max(0),
            "selector": {"matchLabels": {REVISION_LABEL: name, NODE_LABEL: format!("n{node_id}")}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    });
    serde_json::from_value(deployment).map_err(|e| format!("the revision does not make a valid Deployment: {e}"))
}

/// The scale patch an autoscaler decision needs: none when the Deployment already wants that many pods.
pub fn scale_change(current_replicas: Option<i32>, desired: u32) -> Option<i32> {
    let desired = i32::try_from(desired).unwrap_or(i32::MAX);
    (current_replicas != Some(desired)).then_some(desired)
}

/// Creates or updates a revision's Deployment (server-side apply, Sluice the field manager). `existing` is the
/// Deployment as the API server has it now, none when there is none: then it is created with `deployment`'s
/// count. A re-apply never changes the count, which only the scale patches set ([`scale`]): it applies the
/// count the Deployment has, which keeps it as it is. Leaving `spec.replicas` out would not do: the apply that
/// created the Deployment set them, so Sluice's field manager owns them unless a scale patch took them over
/// since (none did while the count stays where the apply put it: an unchanged count is not patched), and an
/// apply that leaves out a field its manager owns removes it: the API server would reset the count to its
/// default, 1, and a revision at zero would start a pod.
pub async fn apply(
    api: &Api<Deployment>,
    deployment: &Deployment,
    existing: Option<&Deployment>,
) -> Result<Deployment, kube::Error> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let mut desired = deployment.clone();
    if let Some(existing) = existing
        && let Some(spec) = desired.spec.as_mut()
    {
        // The API server defaults the count, so a Deployment read from it has one.
        spec.replicas = existing.spec.as_ref().and_then(|existing_spec| existing_spec.replicas);
    }
    let body = serde_json::to_value(&desired).map_err(kube::Error::SerdeError)?;
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await
}

/// Creates or updates a revision's headless Service (server-side apply).
pub async fn apply_service(api: &Api<Service>, service: &Service) -> Result<Service, kube::Error> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let body = serde_json::to_value(service).map_err(kube::Error::SerdeError)?;
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await
}

/// Carries out a decision: patches the Deployment's scale subresource to `replicas`.
pub async fn scale(api: &Api<Deployment>, name: &str, replicas: i32) -> Result<(), kube::Error> {
    api.patch_scale(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}}))).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
