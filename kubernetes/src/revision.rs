//! A Knative Revision on Kubernetes: the Deployment that runs it ([`revision_deployment`], pure), and the
//! calls that apply it and carry out the autoscaler's decisions through the scale subresource ([`apply`],
//! [`scale`]). What flows in: a Revision as Sluice stores it (JSON) and a desired instance count. What flows
//! out: a server-side apply of the Deployment, and a patch of `deployments/NAME/scale` when the count changes.
//!
//! Knative's shape is kept: the Deployment is named `REVISION-deployment`, owned by the Revision, labelled with
//! `serving.knative.dev/{revision,configuration,service}`, its user container named `user-container` with
//! `PORT`, `K_SERVICE`, `K_CONFIGURATION`, `K_REVISION`; the termination grace period is the Revision's
//! `timeoutSeconds` (in-flight requests may finish).

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};
use sluice_controller::serving::{CONFIGURATION_LABEL, SERVICE_LABEL};

/// The label every pod of a revision carries (the Deployment's selector).
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";
/// The port a container listens on when it names none (Knative's default).
pub const DEFAULT_USER_PORT: i64 = 8080;
/// The field manager of Sluice's server-side applies.
pub const FIELD_MANAGER: &str = "sluice";

/// The Deployment's name for a revision.
pub fn deployment_name(revision: &str) -> String {
    format!("{revision}-deployment")
}

/// The Deployment that runs `revision` with `replicas` pods. Fields Kubernetes acts on and Sluice keeps as
/// JSON (`resources`, `volumes`, `affinity`, ...) are passed through as the user wrote them.
pub fn revision_deployment(revision: &Value, replicas: i32) -> Result<Deployment, String> {
    let name = revision["metadata"]["name"].as_str().filter(|n| !n.is_empty()).ok_or("the revision has no name")?;
    let namespace = revision["metadata"]["namespace"].as_str().unwrap_or("default");
    let labels = revision["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    let label = |key: &str| labels.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    let spec = &revision["spec"];
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let user = containers.first().cloned().ok_or("the revision has no container")?;
    if user["image"].as_str().is_none_or(str::is_empty) {
        return Err("spec.containers[0].image: a container on Kubernetes needs an image".into());
    }
    let port = user["ports"][0]["containerPort"].as_i64().filter(|p| *p > 0).unwrap_or(DEFAULT_USER_PORT);

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
        "livenessProbe",
        "startupProbe",
        "securityContext",
        "imagePullPolicy",
        "terminationMessagePath",
        "terminationMessagePolicy",
    ] {
        if let Some(value) = user.get(field).filter(|v| !v.is_null()) {
            container.insert(field.into(), value.clone());
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
    container.insert("readinessProbe".into(), readiness);

    let mut pod_spec = Map::new();
    pod_spec.insert("containers".into(), json!([container]));
    for field in [
        "serviceAccountName",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "dnsPolicy",
        "dnsConfig",
        "hostAliases",
        "imagePullSecrets",
        "initContainers",
        "nodeSelector",
        "affinity",
        "tolerations",
        "topologySpreadConstraints",
        "priorityClassName",
        "runtimeClassName",
        "schedulerName",
        "securityContext",
        "volumes",
    ] {
        if let Some(value) = spec.get(field).filter(|v| !v.is_null()) {
            pod_spec.insert(field.into(), value.clone());
        }
    }
    let timeout_seconds = spec["timeoutSeconds"].as_i64().unwrap_or(300);
    pod_spec.insert("terminationGracePeriodSeconds".into(), json!(timeout_seconds));

    let mut pod_labels = Map::new();
    pod_labels.insert(REVISION_LABEL.into(), json!(name));
    for key in [CONFIGURATION_LABEL, SERVICE_LABEL] {
        if !label(key).is_empty() {
            pod_labels.insert(key.into(), json!(label(key)));
        }
    }
    let mut owner = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision", "name": name,
                           "controller": true, "blockOwnerDeletion": true});
    if let Some(uid) = revision["metadata"]["uid"].as_str() {
        owner["uid"] = json!(uid);
    }
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name),
            "namespace": namespace,
            "labels": pod_labels.clone(),
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas.max(0),
            "selector": {"matchLabels": {REVISION_LABEL: name}},
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

/// Creates or updates a revision's Deployment (server-side apply, Sluice the field manager). Replicas are
/// left out once the Deployment exists, so the apply never fights the autoscaler's scale patches.
pub async fn apply(api: &Api<Deployment>, deployment: &Deployment, exists: bool) -> Result<Deployment, kube::Error> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(deployment).map_err(kube::Error::SerdeError)?;
    if exists && let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("replicas");
    }
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await
}

/// Carries out a decision: patches the Deployment's scale subresource to `replicas`.
pub async fn scale(api: &Api<Deployment>, name: &str, replicas: i32) -> Result<(), kube::Error> {
    api.patch_scale(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}}))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api::{mock_client, next_request, respond};
    use http::Method;

    fn revision() -> Value {
        json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "metadata": {"name": "hello-00002", "namespace": "apps", "uid": "r-uid",
                         "labels": {CONFIGURATION_LABEL: "hello", SERVICE_LABEL: "hello"}},
            "spec": {
                "containerConcurrency": 4, "timeoutSeconds": 120, "serviceAccountName": "runner",
                "containers": [{
                    "image": "ghcr.io/example/hello:1", "args": ["--greeting", "hi"],
                    "env": [{"name": "TARGET", "value": "World"},
                            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                    "ports": [{"containerPort": 9000}],
                    "resources": {"limits": {"memory": "128Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/healthz"}, "periodSeconds": 1}
                }]
            }
        })
    }

    #[test]
    fn a_revision_becomes_a_deployment_shaped_as_knatives() {
        let deployment = revision_deployment(&revision(), 3).expect("deployment");
        let value = serde_json::to_value(&deployment).expect("json");
        assert_eq!(value["metadata"]["name"], "hello-00002-deployment");
        assert_eq!(value["metadata"]["namespace"], "apps");
        assert_eq!(value["metadata"]["ownerReferences"][0]["kind"], "Revision");
        assert_eq!(value["metadata"]["ownerReferences"][0]["uid"], "r-uid");
        assert_eq!(value["metadata"]["ownerReferences"][0]["controller"], true);
        let spec = &value["spec"];
        assert_eq!(spec["replicas"], 3);
        assert_eq!(spec["selector"]["matchLabels"][REVISION_LABEL], "hello-00002");
        assert_eq!(spec["template"]["metadata"]["labels"][SERVICE_LABEL], "hello");
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "runner");
        assert_eq!(pod["terminationGracePeriodSeconds"], 120);
        let container = &pod["containers"][0];
        assert_eq!(container["name"], "user-container");
        assert_eq!(container["image"], "ghcr.io/example/hello:1");
        assert_eq!(container["args"], json!(["--greeting", "hi"]));
        assert_eq!(container["ports"], json!([{"name": "user-port", "containerPort": 9000, "protocol": "TCP"}]));
        assert_eq!(container["resources"]["limits"]["memory"], "128Mi");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
        let env: Vec<(String, Value)> = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_string(),
                    e.get("value").cloned().unwrap_or(e["valueFrom"].clone()),
                )
            })
            .collect();
        for (name, value) in [
            ("TARGET", json!("World")),
            ("PORT", json!("9000")),
            ("K_REVISION", json!("hello-00002")),
            ("K_CONFIGURATION", json!("hello")),
            ("K_SERVICE", json!("hello")),
        ] {
            assert!(env.contains(&(name.to_string(), value.clone())), "{name}={value} in {env:?}");
        }
        // Kubernetes resolves valueFrom here (the local runtime cannot).
        assert!(env.iter().any(|(name, value)| name == "TOKEN" && value["secretKeyRef"]["key"] == "k"));
    }

    #[test]
    fn defaults_port_and_probe_and_refuses_what_cannot_run() {
        let mut bare = revision();
        bare["spec"]["containers"][0] = json!({"image": "example/app"});
        let value = serde_json::to_value(revision_deployment(&bare, 1).expect("deployment")).expect("json");
        let container = &value["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["ports"][0]["containerPort"], DEFAULT_USER_PORT);
        assert_eq!(container["readinessProbe"]["tcpSocket"]["port"], DEFAULT_USER_PORT);
        assert_eq!(value["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 120);

        let mut no_image = revision();
        no_image["spec"]["containers"][0] = json!({"command": ["./app"]});
        assert!(revision_deployment(&no_image, 1).expect_err("no image").contains("image"));
        let mut no_container = revision();
        no_container["spec"]["containers"] = json!([]);
        assert!(revision_deployment(&no_container, 1).is_err());
        assert!(revision_deployment(&json!({"spec": {}}), 1).is_err());
    }

    #[test]
    fn only_a_changed_count_is_patched() {
        assert_eq!(scale_change(Some(2), 2), None);
        assert_eq!(scale_change(Some(2), 5), Some(5));
        assert_eq!(scale_change(Some(2), 0), Some(0));
        assert_eq!(scale_change(None, 1), Some(1));
    }

    #[tokio::test]
    async fn a_revision_is_applied_as_its_deployment_and_a_decision_becomes_a_scale_patch() {
        let (client, mut handle) = mock_client();
        let api: Api<Deployment> = Api::namespaced(client, "apps");
        let deployment = revision_deployment(&revision(), 1).expect("deployment");
        let echo = serde_json::to_value(&deployment).expect("json");
        let server = tokio::spawn(async move {
            let (method, path, body, send) = next_request(&mut handle).await;
            assert_eq!(method, Method::PATCH);
            assert_eq!(
                path,
                "/apis/apps/v1/namespaces/apps/deployments/hello-00002-deployment?&force=true&fieldManager=sluice"
            );
            assert_eq!(body["spec"]["template"]["spec"]["containers"][0]["image"], "ghcr.io/example/hello:1");
            // The Deployment exists: replicas are the autoscaler's, not the apply's.
            assert!(body["spec"].get("replicas").is_none(), "{body}");
            respond(send, &echo);
            let (method, path, body, send) = next_request(&mut handle).await;
            assert_eq!(method, Method::PATCH);
            assert_eq!(path, "/apis/apps/v1/namespaces/apps/deployments/hello-00002-deployment/scale?");
            assert_eq!(body, json!({"spec": {"replicas": 7}}));
            respond(
                send,
                &json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                                  "metadata": {"name": "hello-00002-deployment"}, "spec": {"replicas": 7}}),
            );
        });
        apply(&api, &deployment, true).await.expect("apply");
        if let Some(replicas) = scale_change(Some(1), 7) {
            scale(&api, "hello-00002-deployment", replicas).await.expect("scale");
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("scenario finished")
            .expect("scenario");
    }
}
