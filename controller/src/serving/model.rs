//! Knative Serving's v1 types (`serving.knative.dev/v1`): Service, Configuration, Revision, Route, with
//! Knative's JSON field names and every field of their CRD schemas (`specs/knative/crds/serving/`), so that
//! Knative's own YAML applies unchanged and a misspelt field is refused with its path.
//!
//! The container fields Sluice acts on (`command`, `args`, `env`, `workingDir`, `ports`, `readinessProbe`) are
//! typed; the pod fields Kubernetes acts on and the local runtime ignores (`affinity`, `volumes`,
//! `securityContext`, `resources`, ...) are kept as JSON, as the CRD keeps them
//! (`x-kubernetes-preserve-unknown-fields`), and shown back unchanged.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Object, ObjectMeta};

/// `corev1.EnvVar`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// ConfigMap, Secret, field and resource references: Kubernetes resolves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub value_from: Option<Value>,
}

/// `corev1.ContainerPort` (Knative allows `containerPort`, `name` and `protocol`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// `corev1.HTTPHeader`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// `corev1.HTTPGetAction`. `port` is an int-or-string.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::int_or_string")]
    pub port: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

/// `corev1.TCPSocketAction`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpSocketAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::int_or_string")]
    pub port: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `corev1.ExecAction`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecAction {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

/// `corev1.GRPCAction`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// `corev1.Probe`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
}

/// The index of the container that serves: the one with `ports` (Knative's `GetContainer`; validation allows
/// exactly one when there are several), else the first. The others are sidecars.
pub fn serving_container_index(containers: &[Container]) -> usize {
    containers.iter().position(|c| !c.ports.is_empty()).unwrap_or(0)
}

/// `corev1.Container`, the fields Knative allows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::array_of_any_objects")]
    pub env_from: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub resources: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::array_of_any_objects")]
    pub volume_mounts: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub security_context: Option<Value>,
}

/// `servingv1.RevisionSpec`: Knative's subset of `corev1.PodSpec` plus the serving fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    /// Requests one instance handles at once; 0 means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_start_timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_service_links: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<String>,
    /// Kubernetes spells it `hostIPC`, which camelCase would not.
    #[serde(default, rename = "hostIPC", skip_serializing_if = "Option::is_none")]
    pub host_ipc: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    #[serde(default, rename = "hostPID", skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_process_namespace: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub affinity: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub dns_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::array_of_any_objects")]
    pub host_aliases: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::array_of_any_objects")]
    pub image_pull_secrets: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::array_of_any_objects")]
    pub init_containers: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub security_context: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::array_of_any_objects")]
    pub tolerations: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::array_of_any_objects")]
    pub topology_spread_constraints: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::array_of_any_objects")]
    pub volumes: Option<Value>,
}

/// `servingv1.RevisionTemplateSpec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTemplateSpec {
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RevisionSpec,
}

/// `servingv1.TrafficTarget`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// Status only; refused in a spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub template: RevisionTemplateSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Vec<TrafficTarget>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    #[serde(default)]
    pub template: RevisionTemplateSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Vec<TrafficTarget>>,
}

pub type Service = Object<ServiceSpec>;
pub type Configuration = Object<ConfigurationSpec>;
pub type Revision = Object<RevisionSpec>;
pub type Route = Object<RouteSpec>;

/// Knative's name for a container that has none (`config-defaults`' `container-name-template`).
const DEFAULT_CONTAINER_NAME: &str = "user-container";

/// `spec` as Knative's defaulting webhook leaves it with the stock `config-defaults` (`RevisionSpec.SetDefaults`
/// in `pkg/apis/serving/v1/revision_defaults.go`), so that two specs compare as Knative compares them, after
/// defaulting both: `timeoutSeconds` unset or 0 is 300, `containerConcurrency` unset is 0,
/// `enableServiceLinks` unset is false, an unnamed container is `user-container` (`user-container-N` among
/// several, skipping names taken), the serving container's readiness probe defaults to a `tcpSocket` one,
/// a readiness probe's `successThreshold` unset is 1 (and with `periodSeconds` set, `failureThreshold` 3 and
/// `timeoutSeconds` 1), a `grpc` probe's `service` unset is "", a probe's `port` 0 is unset (the serving port, as
/// Knative writes it). A probe's numbers unset and 0 are the same
/// (Kubernetes' `int32`s, not pointers). Not defaulted: volume mounts' `readOnly`, the `securityContext`
/// defaults of `secure-pod-defaults`, resources (none by default; `resources: {}` is none).
pub fn with_knative_defaults(spec: &RevisionSpec) -> RevisionSpec {
    let mut spec = spec.clone();
    if spec.timeout_seconds.is_none_or(|seconds| seconds == 0) {
        spec.timeout_seconds = Some(super::DEFAULT_TIMEOUT_SECONDS);
    }
    spec.container_concurrency = spec.container_concurrency.or(Some(0));
    spec.enable_service_links = spec.enable_service_links.or(Some(false));
    let init_names = spec.init_containers.as_ref().and_then(Value::as_array).into_iter().flatten();
    let taken: BTreeSet<String> = spec
        .containers
        .iter()
        .filter_map(|c| c.name.clone())
        .chain(init_names.filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string)))
        .filter(|name| !name.is_empty())
        .collect();
    let single = spec.containers.len() == 1;
    let mut suffix = 0;
    for container in &mut spec.containers {
        if container.name.as_deref().is_none_or(str::is_empty) {
            let mut name = DEFAULT_CONTAINER_NAME.to_string();
            if !single || taken.contains(&name) {
                loop {
                    name = format!("{DEFAULT_CONTAINER_NAME}-{suffix}");
                    suffix += 1;
                    if !taken.contains(&name) {
                        break;
                    }
                }
            }
            container.name = Some(name);
        }
        // `resources: {}` (as Knative prints a container without any) is none.
        if container.resources.as_ref().and_then(Value::as_object).is_some_and(serde_json::Map::is_empty) {
            container.resources = None;
        }
        if single || !container.ports.is_empty() {
            let probe = container.readiness_probe.get_or_insert_with(Probe::default);
            if probe.http_get.is_none() && probe.tcp_socket.is_none() && probe.exec.is_none() && probe.grpc.is_none() {
                probe.tcp_socket = Some(TcpSocketAction::default());
            }
        }
        if let Some(probe) = &mut container.readiness_probe {
            let unset = |value: Option<i64>| value.is_none_or(|v| v == 0);
            if unset(probe.success_threshold) {
                probe.success_threshold = Some(1);
            }
            if !unset(probe.period_seconds) {
                if unset(probe.failure_threshold) {
                    probe.failure_threshold = Some(3);
                }
                if unset(probe.timeout_seconds) {
                    probe.timeout_seconds = Some(1);
                }
            }
        }
        for probe in [&mut container.readiness_probe, &mut container.liveness_probe, &mut container.startup_probe]
            .into_iter()
            .flatten()
        {
            // Knative writes the serving container's probe port as 0 (the port it serves on, filled in at run).
            let port_zero = |port: &Option<Value>| port.as_ref().and_then(Value::as_i64) == Some(0);
            if let Some(tcp) = &mut probe.tcp_socket
                && port_zero(&tcp.port)
            {
                tcp.port = None;
            }
            if let Some(http) = &mut probe.http_get
                && port_zero(&http.port)
            {
                http.port = None;
            }
            if let Some(grpc) = &mut probe.grpc
                && grpc.service.is_none()
            {
                grpc.service = Some(String::new());
            }
            for number in [
                &mut probe.initial_delay_seconds,
                &mut probe.timeout_seconds,
                &mut probe.period_seconds,
                &mut probe.success_threshold,
                &mut probe.failure_threshold,
            ] {
                if *number == Some(0) {
                    *number = None;
                }
            }
        }
    }
    spec
}

/// Whether two Revision specs (as stored JSON) are the same once Knative's defaults are applied to both
/// ([`with_knative_defaults`]); specs that do not read as a `RevisionSpec` are compared as written.
pub fn same_revision_spec(a: &Value, b: &Value) -> bool {
    let read = |spec: &Value| serde_json::from_value::<RevisionSpec>(spec.clone()).ok();
    match (read(a), read(b)) {
        (Some(a), Some(b)) => with_knative_defaults(&a) == with_knative_defaults(&b),
        _ => a == b,
    }
}

/// The Route's (or Service's) traffic as written, with Knative's default: 100 % to the latest revision of the
/// Configuration of the same name.
pub fn spec_traffic(object: &Value, configuration: &str) -> Vec<TrafficTarget> {
    let traffic: Option<Vec<TrafficTarget>> =
        object.pointer("/spec/traffic").and_then(|t| serde_json::from_value(t.clone()).ok());
    match traffic {
        Some(traffic) if !traffic.is_empty() => traffic,
        _ if object.get("kind").and_then(Value::as_str) == Some("Route") => Vec::new(),
        _ => vec![TrafficTarget {
            configuration_name: Some(configuration.to_string()),
            latest_revision: Some(true),
            percent: Some(100),
            ..TrafficTarget::default()
        }],
    }
}
