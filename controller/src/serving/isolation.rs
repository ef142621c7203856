//! What a revision's pod may ask of the node and the cluster it runs on.
//!
//! In: a revision's spec, whose Kubernetes-only parts (`volumes`, `securityContext`, `initContainers`, a
//! container's `securityContext`) Sluice keeps as JSON and passes to the Deployment unchanged. Out: a
//! [`FieldError`] for each thing Knative's default feature flags (`config-features`) refuse that would give
//! the pod more than its namespace already grants: the node's filesystem (`hostPath`), its network, process
//! or IPC namespaces, privileged containers, added capabilities, volumes outside the namespace's own
//! ConfigMaps, Secrets and scratch space. Sluice's node service account creates the Deployment, so without
//! these rules anyone allowed to apply a Knative Service could run a pod as privileged as the node's RBAC
//! allows. The scheduling fields (`affinity`, `nodeSelector`, `tolerations`, ...) stay accepted, as in Knative
//! with their flags enabled (docs/serving.md, "What a revision's pod may ask for"). A cluster's operator
//! enables a flag as Knative's `config-features` does, with the nodes' `--serving-feature FLAG=enabled`
//! ([`ServingFeatures`]); `privileged` and an `Unconfined` seccomp profile have no flag.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::autoscaling::AutoscalerDefaults;
use super::model::RevisionSpec;
use crate::fields::FieldError;

/// Volume sources a revision may mount: Knative's always-allowed ones, and `emptyDir`
/// (`kubernetes.podspec-volumes-emptydir`, enabled by default).
const VOLUME_SOURCES: [&str; 4] = ["configMap", "emptyDir", "projected", "secret"];
/// Sources inside a `projected` volume.
const PROJECTED_SOURCES: [&str; 4] = ["configMap", "downwardAPI", "secret", "serviceAccountToken"];
/// A pod's `securityContext` fields (`kubernetes.podspec-securitycontext`'s set).
const POD_SECURITY_FIELDS: [&str; 6] =
    ["fsGroup", "runAsGroup", "runAsNonRoot", "runAsUser", "seccompProfile", "supplementalGroups"];
/// A container's `securityContext` fields; `privileged` only as `false`, `capabilities.add` only
/// [`ADDABLE_CAPABILITIES`].
const CONTAINER_SECURITY_FIELDS: [&str; 8] = [
    "allowPrivilegeEscalation",
    "capabilities",
    "privileged",
    "readOnlyRootFilesystem",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "seccompProfile",
];
/// Knative lets a container bind a low port without `kubernetes.containerspec-addcapabilities`.
const ADDABLE_CAPABILITIES: [&str; 1] = ["NET_BIND_SERVICE"];

/// Knative's feature flags (`config-features`) that lift a rule below; all disabled unless enabled.
/// `kubernetes.podspec-securitycontext` is taken and changes nothing: the pod `securityContext` fields it
/// lets through in Knative ([`POD_SECURITY_FIELDS`]) are accepted already, and it lets through no other.
pub const FEATURE_FLAGS: [&str; 13] = [
    "kubernetes.containerspec-addcapabilities",
    "kubernetes.podspec-hostipc",
    "kubernetes.podspec-hostnetwork",
    "kubernetes.podspec-hostpid",
    "kubernetes.podspec-persistent-volume-claim",
    "kubernetes.podspec-persistent-volume-write",
    "kubernetes.podspec-securitycontext",
    "kubernetes.podspec-shareprocessnamespace",
    "kubernetes.podspec-volumes-csi",
    "kubernetes.podspec-volumes-ephemeral",
    "kubernetes.podspec-volumes-hostpath",
    "kubernetes.podspec-volumes-image",
    MULTI_CONTAINER_PROBING,
];

/// Knative's flag that lets a sidecar have readiness and liveness probes (refused without it).
pub(crate) const MULTI_CONTAINER_PROBING: &str = "multi-container-probing";

/// What a cluster lets a revision ask for: the feature flags it has enabled (a node's `--serving-feature`;
/// the default enables none), the longest request timeout (`--max-revision-timeout-seconds`, Knative's
/// `config-defaults` key; 600 s by default) and the autoscaling defaults its annotations are resolved over
/// (`--autoscaler`, Knative's `config-autoscaler` keys: `max-scale-limit`, `allow-zero-initial-scale`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct ServingFeatures {
    enabled: BTreeSet<&'static str>,
    max_revision_timeout_seconds: i64,
    autoscaler: AutoscalerDefaults,
}

impl Default for ServingFeatures {
    fn default() -> Self {
        ServingFeatures {
            enabled: BTreeSet::new(),
            max_revision_timeout_seconds: super::MAX_TIMEOUT_SECONDS,
            autoscaler: AutoscalerDefaults::default(),
        }
    }
}

impl ServingFeatures {
    /// From `FLAG=enabled` or `FLAG=disabled` settings (Knative's `config-features` keys and values; the last
    /// setting of a flag wins). `allowed` is refused: Knative reads it as "enabled where an annotation asks",
    /// which Sluice does not implement.
    pub fn parse<S: AsRef<str>>(settings: &[S]) -> Result<ServingFeatures, String> {
        let mut enabled = BTreeSet::new();
        for setting in settings {
            let setting = setting.as_ref();
            let (flag, value) = setting.split_once('=').unwrap_or((setting, ""));
            let Some(flag) = FEATURE_FLAGS.iter().copied().find(|known| *known == flag.trim()) else {
                return Err(format!("--serving-feature {setting:?}: not one of {}", FEATURE_FLAGS.join(", ")));
            };
            match value.trim() {
                "enabled" => enabled.insert(flag),
                "disabled" => enabled.remove(flag),
                other => return Err(format!("--serving-feature {setting:?}: {other:?} is not enabled or disabled")),
            };
        }
        Ok(ServingFeatures { enabled, ..ServingFeatures::default() })
    }

    /// The same, with another longest `timeoutSeconds` (and response-start and idle timeouts) a revision may
    /// ask for: at least the timeout of a revision that sets none (300 s, Knative's `revision-timeout-seconds`,
    /// which Knative too refuses above the maximum).
    pub fn with_max_revision_timeout_seconds(self, seconds: i64) -> Result<ServingFeatures, String> {
        if seconds < super::DEFAULT_TIMEOUT_SECONDS {
            return Err(format!(
                "--max-revision-timeout-seconds {seconds}: must be at least {} (the timeout of a revision that sets none)",
                super::DEFAULT_TIMEOUT_SECONDS
            ));
        }
        Ok(ServingFeatures { max_revision_timeout_seconds: seconds, ..self })
    }

    pub fn max_revision_timeout_seconds(&self) -> i64 {
        self.max_revision_timeout_seconds
    }

    /// The same, with the node's autoscaling defaults: a revision's `autoscaling.knative.dev/*` annotations are
    /// validated over them (Knative's webhook reads `config-autoscaler`), not over Knative's stock ones.
    pub fn with_autoscaler_defaults(self, autoscaler: AutoscalerDefaults) -> ServingFeatures {
        ServingFeatures { autoscaler, ..self }
    }

    pub fn autoscaler_defaults(&self) -> &AutoscalerDefaults {
        &self.autoscaler
    }

    pub fn is_enabled(&self, flag: &str) -> bool {
        self.enabled.contains(flag)
    }

    /// The flags enabled, as `FLAG=enabled` settings.
    pub fn settings(&self) -> Vec<String> {
        self.enabled.iter().map(|flag| format!("{flag}=enabled")).collect()
    }
}

fn refused(path: String, flag: &str) -> FieldError {
    FieldError {
        path,
        message: format!(
            "must not set the field(s): it needs Knative's feature flag {flag}, which this cluster keeps disabled \
             (a node's --serving-feature {flag}=enabled)"
        ),
    }
}

fn not_allowed(path: String, allowed: &[&str]) -> FieldError {
    FieldError { path, message: format!("must not set the field(s) (allowed: {})", allowed.join(", ")) }
}

/// The flag that would allow a volume source, where Knative has one.
fn volume_flag(source: &str) -> Option<&'static str> {
    Some(match source {
        "hostPath" => "kubernetes.podspec-volumes-hostpath",
        "persistentVolumeClaim" => "kubernetes.podspec-persistent-volume-claim",
        "csi" => "kubernetes.podspec-volumes-csi",
        "ephemeral" => "kubernetes.podspec-volumes-ephemeral",
        "image" => "kubernetes.podspec-volumes-image",
        _ => return None,
    })
}

/// Every rule above, on the spec at `path` (`spec.template.spec`, or `spec` for a Revision).
pub(crate) fn validate_pod_isolation(
    path: &str,
    spec: &RevisionSpec,
    features: &ServingFeatures,
    errors: &mut Vec<FieldError>,
) {
    let host_namespaces = [
        ("hostNetwork", spec.host_network, "kubernetes.podspec-hostnetwork"),
        ("hostPID", spec.host_pid, "kubernetes.podspec-hostpid"),
        ("hostIPC", spec.host_ipc, "kubernetes.podspec-hostipc"),
        ("shareProcessNamespace", spec.share_process_namespace, "kubernetes.podspec-shareprocessnamespace"),
    ];
    for (field, value, flag) in host_namespaces {
        if value == Some(true) && !features.is_enabled(flag) {
            errors.push(refused(format!("{path}.{field}"), flag));
        }
    }
    if let Some(volumes) = spec.volumes.as_ref().and_then(Value::as_array) {
        for (i, volume) in volumes.iter().enumerate() {
            validate_volume(&format!("{path}.volumes[{i}]"), volume, features, errors);
        }
    }
    if let Some(context) = spec.security_context.as_ref().and_then(Value::as_object) {
        for field in context.keys().filter(|f| !POD_SECURITY_FIELDS.contains(&f.as_str())) {
            errors.push(not_allowed(format!("{path}.securityContext.{field}"), &POD_SECURITY_FIELDS));
        }
        validate_seccomp(&format!("{path}.securityContext"), context, errors);
    }
    for (i, container) in spec.containers.iter().enumerate() {
        if let Some(context) = container.security_context.as_ref().and_then(Value::as_object) {
            let context_path = format!("{path}.containers[{i}].securityContext");
            validate_container_security(&context_path, context, features, errors);
        }
    }
    if let Some(init_containers) = spec.init_containers.as_ref().and_then(Value::as_array) {
        for (i, container) in init_containers.iter().enumerate() {
            let container_path = format!("{path}.initContainers[{i}]");
            if let Some(context) = container.get("securityContext").and_then(Value::as_object) {
                let context_path = format!("{container_path}.securityContext");
                validate_container_security(&context_path, context, features, errors);
            }
            let ports = container.get("ports").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            for (j, port) in ports.iter().enumerate() {
                for field in ["hostPort", "hostIP"].into_iter().filter(|f| port.get(*f).is_some_and(|v| !v.is_null())) {
                    errors.push(not_allowed(
                        format!("{container_path}.ports[{j}].{field}"),
                        &["containerPort", "name", "protocol"],
                    ));
                }
            }
        }
    }
}

fn validate_volume(path: &str, volume: &Value, features: &ServingFeatures, errors: &mut Vec<FieldError>) {
    let Some(volume) = volume.as_object() else {
        errors.push(FieldError { path: path.into(), message: "expected a mapping".into() });
        return;
    };
    let mut sources: Vec<&String> =
        volume.iter().filter(|(k, v)| *k != "name" && !v.is_null()).map(|(k, _)| k).collect();
    sources.sort();
    match sources.as_slice() {
        [] => errors.push(FieldError {
            path: path.into(),
            message: format!("expected exactly one, got neither: {}", VOLUME_SOURCES.join(", ")),
        }),
        [source] => {
            let source_path = format!("{path}.{source}");
            if let Some(flag) = volume_flag(source) {
                if !features.is_enabled(flag) {
                    errors.push(refused(source_path, flag));
                } else if source.as_str() == "persistentVolumeClaim"
                    && volume[source.as_str()]["readOnly"] != Value::Bool(true)
                    && !features.is_enabled("kubernetes.podspec-persistent-volume-write")
                {
                    errors.push(FieldError {
                        path: format!("{source_path}.readOnly"),
                        message: "must be true: writing to a claim needs Knative's feature flag \
                                  kubernetes.podspec-persistent-volume-write, which this cluster keeps disabled \
                                  (a node's --serving-feature kubernetes.podspec-persistent-volume-write=enabled)"
                            .into(),
                    });
                }
            } else if !VOLUME_SOURCES.contains(&source.as_str()) {
                errors.push(not_allowed(source_path, &VOLUME_SOURCES));
            } else if source.as_str() == "projected" {
                let projections = volume[source.as_str()]["sources"].as_array().map(Vec::as_slice).unwrap_or_default();
                for (i, projection) in projections.iter().enumerate() {
                    let kinds = projection.as_object().map(|p| p.keys().cloned().collect()).unwrap_or_else(Vec::new);
                    for kind in kinds.iter().filter(|k| !PROJECTED_SOURCES.contains(&k.as_str())) {
                        errors.push(not_allowed(format!("{source_path}.sources[{i}].{kind}"), &PROJECTED_SOURCES));
                    }
                }
            }
        }
        many => errors.push(FieldError {
            path: path.into(),
            message: format!(
                "expected exactly one, got both: {}",
                many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

fn validate_container_security(
    path: &str,
    context: &Map<String, Value>,
    features: &ServingFeatures,
    errors: &mut Vec<FieldError>,
) {
    for field in context.keys().filter(|f| !CONTAINER_SECURITY_FIELDS.contains(&f.as_str())) {
        errors.push(not_allowed(format!("{path}.{field}"), &CONTAINER_SECURITY_FIELDS));
    }
    if context.get("privileged").is_some_and(|v| v.as_bool() != Some(false)) {
        errors.push(FieldError {
            path: format!("{path}.privileged"),
            message: "invalid value: a revision's container is never privileged (only false)".into(),
        });
    }
    let added = context.get("capabilities").and_then(|c| c.get("add")).and_then(Value::as_array);
    let any_capability = features.is_enabled("kubernetes.containerspec-addcapabilities");
    for (i, capability) in added.map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
        if !any_capability && !capability.as_str().is_some_and(|c| ADDABLE_CAPABILITIES.contains(&c)) {
            errors.push(FieldError {
                path: format!("{path}.capabilities.add[{i}]"),
                message: format!(
                    "invalid value {capability}: only {} without Knative's feature flag \
                     kubernetes.containerspec-addcapabilities, which this cluster keeps disabled \
                     (a node's --serving-feature kubernetes.containerspec-addcapabilities=enabled)",
                    ADDABLE_CAPABILITIES.join(", ")
                ),
            });
        }
    }
    validate_seccomp(path, context, errors);
}

/// `Unconfined` turns the runtime's syscall filter off; Kubernetes' baseline Pod Security Standard refuses it.
fn validate_seccomp(path: &str, context: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    if context.get("seccompProfile").and_then(|p| p.get("type")).and_then(Value::as_str) == Some("Unconfined") {
        errors.push(FieldError {
            path: format!("{path}.seccompProfile.type"),
            message: "invalid value: Unconfined (RuntimeDefault or Localhost)".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors_of(spec: Value) -> Vec<String> {
        errors_with(spec, &ServingFeatures::default())
    }

    fn errors_with(spec: Value, features: &ServingFeatures) -> Vec<String> {
        let spec: RevisionSpec = serde_json::from_value(spec).expect("a revision spec");
        let mut errors = Vec::new();
        validate_pod_isolation("spec", &spec, features, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    fn with(fields: Value) -> Value {
        let mut spec = json!({"containers": [{"image": "app"}]});
        for (key, value) in fields.as_object().expect("fields").clone() {
            spec[key] = value;
        }
        spec
    }

    #[test]
    fn what_knative_allows_by_default_passes() {
        let spec = with(json!({
            "serviceAccountName": "app",
            "containers": [{"image": "app", "securityContext": {
                "runAsNonRoot": true, "runAsUser": 1000, "readOnlyRootFilesystem": true, "privileged": false,
                "allowPrivilegeEscalation": false, "seccompProfile": {"type": "RuntimeDefault"},
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "securityContext": {"fsGroup": 2000, "runAsUser": 1000, "supplementalGroups": [3000]},
            "volumes": [
                {"name": "config", "configMap": {"name": "app"}},
                {"name": "secret", "secret": {"secretName": "app"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "all", "projected": {"sources": [
                    {"secret": {"name": "a"}}, {"configMap": {"name": "b"}},
                    {"serviceAccountToken": {"path": "token", "audience": "sluice"}},
                    {"downwardAPI": {"items": []}}]}}],
            "initContainers": [{"name": "migrate", "image": "app", "securityContext": {"runAsNonRoot": true}}],
            "hostNetwork": false,
            "affinity": {"nodeAffinity": {}},
            "nodeSelector": {"disk": "ssd"},
        }));
        assert_eq!(errors_of(spec), Vec::<String>::new());
    }

    #[test]
    fn what_would_reach_past_the_pod_is_refused_with_its_path_and_rule() {
        let flag = |path: &str, flag: &str| {
            format!(
                "{path}: must not set the field(s): it needs Knative's feature flag {flag}, which this cluster keeps \
                 disabled (a node's --serving-feature {flag}=enabled)"
            )
        };
        let cases: Vec<(&str, Value, String)> = vec![
            (
                "host network",
                with(json!({"hostNetwork": true})),
                flag("spec.hostNetwork", "kubernetes.podspec-hostnetwork"),
            ),
            ("host pid", with(json!({"hostPID": true})), flag("spec.hostPID", "kubernetes.podspec-hostpid")),
            ("host ipc", with(json!({"hostIPC": true})), flag("spec.hostIPC", "kubernetes.podspec-hostipc")),
            (
                "shared process namespace",
                with(json!({"shareProcessNamespace": true})),
                flag("spec.shareProcessNamespace", "kubernetes.podspec-shareprocessnamespace"),
            ),
            (
                "hostPath",
                with(json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]})),
                flag("spec.volumes[0].hostPath", "kubernetes.podspec-volumes-hostpath"),
            ),
            (
                "a claim",
                with(
                    json!({"volumes": [{"name": "c", "emptyDir": {}}, {"name": "d", "persistentVolumeClaim": {"claimName": "x"}}]}),
                ),
                flag("spec.volumes[1].persistentVolumeClaim", "kubernetes.podspec-persistent-volume-claim"),
            ),
            (
                "csi",
                with(json!({"volumes": [{"name": "c", "csi": {"driver": "x"}}]})),
                flag("spec.volumes[0].csi", "kubernetes.podspec-volumes-csi"),
            ),
            (
                "nfs",
                with(json!({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]})),
                "spec.volumes[0].nfs: must not set the field(s) (allowed: configMap, emptyDir, projected, secret)"
                    .into(),
            ),
            (
                "no source",
                with(json!({"volumes": [{"name": "n"}]})),
                "spec.volumes[0]: expected exactly one, got neither: configMap, emptyDir, projected, secret".into(),
            ),
            (
                "two sources",
                with(json!({"volumes": [{"name": "n", "secret": {}, "configMap": {}}]})),
                "spec.volumes[0]: expected exactly one, got both: configMap, secret".into(),
            ),
            (
                "a projected cluster trust bundle",
                with(json!({"volumes": [{"name": "p", "projected": {"sources": [{"clusterTrustBundle": {}}]}}]})),
                "spec.volumes[0].projected.sources[0].clusterTrustBundle: must not set the field(s) (allowed: \
                 configMap, downwardAPI, secret, serviceAccountToken)"
                    .into(),
            ),
            (
                "privileged",
                with(json!({"containers": [{"image": "app", "securityContext": {"privileged": true}}]})),
                "spec.containers[0].securityContext.privileged: invalid value: a revision's container is never \
                 privileged (only false)"
                    .into(),
            ),
            (
                "a capability added",
                with(
                    json!({"containers": [{"image": "app", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "SYS_ADMIN"]}}}]}),
                ),
                "spec.containers[0].securityContext.capabilities.add[1]: invalid value \"SYS_ADMIN\": only \
                 NET_BIND_SERVICE without Knative's feature flag kubernetes.containerspec-addcapabilities, which \
                 this cluster keeps disabled (a node's --serving-feature kubernetes.containerspec-addcapabilities=enabled)"
                    .into(),
            ),
            (
                "proc mount",
                with(json!({"containers": [{"image": "app", "securityContext": {"procMount": "Unmasked"}}]})),
                "spec.containers[0].securityContext.procMount: must not set the field(s) (allowed: \
                 allowPrivilegeEscalation, capabilities, privileged, readOnlyRootFilesystem, runAsGroup, \
                 runAsNonRoot, runAsUser, seccompProfile)"
                    .into(),
            ),
            (
                "unconfined",
                with(
                    json!({"containers": [{"image": "app", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}]}),
                ),
                "spec.containers[0].securityContext.seccompProfile.type: invalid value: Unconfined (RuntimeDefault \
                 or Localhost)"
                    .into(),
            ),
            (
                "pod sysctls",
                with(json!({"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "0"}]}})),
                "spec.securityContext.sysctls: must not set the field(s) (allowed: fsGroup, runAsGroup, runAsNonRoot, \
                 runAsUser, seccompProfile, supplementalGroups)"
                    .into(),
            ),
            (
                "a privileged init container",
                with(json!({"initContainers": [{"name": "i", "image": "x", "securityContext": {"privileged": true}}]})),
                "spec.initContainers[0].securityContext.privileged: invalid value: a revision's container is never \
                 privileged (only false)"
                    .into(),
            ),
            (
                "an init container on a host port",
                with(
                    json!({"initContainers": [{"name": "i", "image": "x", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
                ),
                "spec.initContainers[0].ports[0].hostPort: must not set the field(s) (allowed: containerPort, name, \
                 protocol)"
                    .into(),
            ),
        ];
        for (name, spec, expected) in cases {
            let errors = errors_of(spec);
            assert_eq!(errors, vec![expected], "{name}");
        }
    }

    #[test]
    fn an_enabled_flag_lets_its_fields_through_and_no_other() {
        let cases: Vec<(&str, Value)> = vec![
            ("kubernetes.podspec-hostnetwork", with(json!({"hostNetwork": true}))),
            ("kubernetes.podspec-hostpid", with(json!({"hostPID": true}))),
            ("kubernetes.podspec-hostipc", with(json!({"hostIPC": true}))),
            ("kubernetes.podspec-shareprocessnamespace", with(json!({"shareProcessNamespace": true}))),
            (
                "kubernetes.podspec-volumes-hostpath",
                with(json!({"volumes": [{"name": "r", "hostPath": {"path": "/"}}]})),
            ),
            (
                "kubernetes.podspec-persistent-volume-claim",
                with(
                    json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "x", "readOnly": true}}]}),
                ),
            ),
            ("kubernetes.podspec-volumes-csi", with(json!({"volumes": [{"name": "c", "csi": {"driver": "x"}}]}))),
            ("kubernetes.podspec-volumes-ephemeral", with(json!({"volumes": [{"name": "e", "ephemeral": {}}]}))),
            (
                "kubernetes.podspec-volumes-image",
                with(json!({"volumes": [{"name": "i", "image": {"reference": "x"}}]})),
            ),
            (
                "kubernetes.containerspec-addcapabilities",
                with(
                    json!({"containers": [{"image": "app", "securityContext": {"capabilities": {"add": ["SYS_TIME"]}}}]}),
                ),
            ),
        ];
        // Every flag but `kubernetes.podspec-securitycontext`, whose fields are accepted without it, the
        // claim-write one (below) and `multi-container-probing`, a probe rule (`tests/validation.rs`).
        assert_eq!(cases.len() + 3, FEATURE_FLAGS.len(), "a case for every flag");
        for (flag, spec) in cases {
            assert_eq!(errors_of(spec.clone()).len(), 1, "{flag}: refused by default");
            let features = ServingFeatures::parse(&[format!("{flag}=enabled")]).expect("a known flag");
            assert_eq!(errors_with(spec.clone(), &features), Vec::<String>::new(), "{flag}");
            let others: Vec<String> =
                FEATURE_FLAGS.iter().filter(|f| **f != flag).map(|f| format!("{f}=enabled")).collect();
            let others = ServingFeatures::parse(&others).expect("known flags");
            assert_eq!(errors_with(spec, &others).len(), 1, "{flag}: only its own flag lets it through");
        }
        // What no flag allows.
        let every = ServingFeatures::parse(&FEATURE_FLAGS.map(|f| format!("{f}=enabled"))).expect("known flags");
        for spec in [
            with(json!({"containers": [{"image": "app", "securityContext": {"privileged": true}}]})),
            with(json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}})),
            with(json!({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]})),
            // Knative drops these even with kubernetes.podspec-securitycontext.
            with(json!({"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "0"}]}})),
            with(json!({"securityContext": {"seLinuxOptions": {"type": "spc_t"}}})),
            with(json!({"securityContext": {"windowsOptions": {"hostProcess": true}}})),
        ] {
            assert_eq!(errors_with(spec.clone(), &every).len(), 1, "{spec}");
        }
    }

    #[test]
    fn a_claim_is_mounted_read_only_unless_writing_is_enabled() {
        let claim = |read_only: Value| {
            with(
                json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "x", "readOnly": read_only}}]}),
            )
        };
        let claims = ServingFeatures::parse(&["kubernetes.podspec-persistent-volume-claim=enabled"]).expect("flag");
        let writes = ServingFeatures::parse(&[
            "kubernetes.podspec-persistent-volume-claim=enabled",
            "kubernetes.podspec-persistent-volume-write=enabled",
        ])
        .expect("flags");
        assert_eq!(errors_with(claim(json!(true)), &claims), Vec::<String>::new());
        let refused = errors_with(claim(json!(false)), &claims);
        assert_eq!(refused.len(), 1);
        assert!(refused[0].starts_with("spec.volumes[0].persistentVolumeClaim.readOnly: must be true"), "{refused:?}");
        assert_eq!(errors_with(claim(Value::Null), &claims).len(), 1, "read-write unless said otherwise");
        assert_eq!(errors_with(claim(json!(false)), &writes), Vec::<String>::new());
    }

    #[test]
    fn feature_settings_are_knatives_keys_and_values() {
        let features = ServingFeatures::parse(&[
            "kubernetes.podspec-hostpid=enabled",
            "kubernetes.podspec-hostipc=enabled",
            "kubernetes.podspec-hostipc=disabled",
        ])
        .expect("parses");
        assert_eq!(features.settings(), vec!["kubernetes.podspec-hostpid=enabled".to_string()], "the last one wins");
        for (setting, wanted) in [
            ("kubernetes.podspec-hostpath=enabled", "not one of"),
            ("kubernetes.podspec-hostpid", "is not enabled or disabled"),
            ("kubernetes.podspec-hostpid=allowed", "\"allowed\" is not enabled or disabled"),
        ] {
            let error = ServingFeatures::parse(&[setting]).expect_err(setting);
            assert!(error.contains(wanted), "{setting}: {error}");
        }
    }
}
