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

fn install() -> Install {
    Install::new("sluice-system.sluice").expect("a label value")
}

#[test]
fn probes_get_the_containers_port_where_they_name_none_or_name_it() {
    let cases = [
        (json!({"httpGet": {"path": "/"}}), json!({"httpGet": {"path": "/", "port": 8080}})),
        (json!({"tcpSocket": {}}), json!({"tcpSocket": {"port": 8080}})),
        (json!({"httpGet": {"port": 0}}), json!({"httpGet": {"port": 8080}})),
        (json!({"httpGet": {"port": "user-port"}}), json!({"httpGet": {"port": 8080}})),
        (json!({"grpc": {}}), json!({"grpc": {"port": 8080}})),
        (json!({"httpGet": {"port": 8080, "path": "/x"}}), json!({"httpGet": {"port": 8080, "path": "/x"}})),
        (json!({"exec": {"command": ["true"]}}), json!({"exec": {"command": ["true"]}})),
    ];
    for (probe, expected) in cases {
        assert_eq!(with_probe_port(probe.clone(), 8080), expected, "{probe}");
    }
}

#[test]
fn a_revision_becomes_a_deployment_shaped_as_knatives() {
    let deployment = revision_deployment(&revision(), 2, &install(), 3).expect("deployment");
    let value = serde_json::to_value(&deployment).expect("json");
    assert_eq!(value["metadata"]["name"], "hello-00002-n2-deployment");
    assert_eq!(value["metadata"]["namespace"], "apps");
    // Sluice's Revision is not in the API server: an owner reference to it would have the Deployment
    // garbage-collected.
    assert!(value["metadata"].get("ownerReferences").is_none(), "{value}");
    let spec = &value["spec"];
    assert_eq!(spec["replicas"], 3);
    // The install is no part of the selector, which cannot change on a Deployment made before it was.
    assert_eq!(spec["selector"]["matchLabels"], json!({REVISION_LABEL: "hello-00002", NODE_LABEL: "n2"}));
    assert_eq!(spec["template"]["metadata"]["labels"][NODE_LABEL], "n2");
    assert_eq!(value["metadata"]["labels"][INSTALL_LABEL], "sluice-system.sluice");
    assert_eq!(spec["template"]["metadata"]["labels"][INSTALL_LABEL], "sluice-system.sluice");
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
    // Regression: a probe without a port went into the Deployment as port 0, which Kubernetes refuses.
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], 9000, "the container's port filled in");
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

/// What an enabled feature flag let through at apply reaches the pod (a field left out would be a flag
/// that does nothing).
#[test]
fn pod_fields_behind_feature_flags_reach_the_pod() {
    let mut asking = revision();
    for (field, value) in [
        ("hostNetwork", json!(true)),
        ("hostPID", json!(true)),
        ("hostIPC", json!(true)),
        ("shareProcessNamespace", json!(true)),
        ("volumes", json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}])),
    ] {
        asking["spec"][field] = value;
    }
    let value =
        serde_json::to_value(revision_deployment(&asking, 1, &install(), 1).expect("deployment")).expect("json");
    let pod = &value["spec"]["template"]["spec"];
    for field in ["hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"] {
        assert_eq!(pod[field], true, "{field}: {pod}");
    }
    assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "data");
}

/// Knative's serving container is the one with `ports`, wherever it is; the others run beside it, and an
/// unnamed sidecar or init container gets Knative's default name (Kubernetes refuses a nameless one).
#[test]
fn the_container_with_ports_serves_and_unnamed_containers_are_named() {
    let mut asking = revision();
    let serving = asking["spec"]["containers"][0].clone();
    asking["spec"]["containers"] =
        json!([{"image": "example/proxy"}, serving, {"name": "user-container-0", "image": "example/log"}]);
    asking["spec"]["initContainers"] = json!([{"image": "example/migrate"}]);
    let value =
        serde_json::to_value(revision_deployment(&asking, 1, &install(), 1).expect("deployment")).expect("json");
    let pod = &value["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 3);
    assert_eq!(containers[0]["name"], "user-container");
    assert_eq!(containers[0]["image"], serving["image"], "the container with ports serves: {pod}");
    assert!(containers[0]["env"].as_array().expect("env").iter().any(|e| e["name"] == "PORT"));
    assert_eq!(
        (containers[1]["name"].as_str(), containers[1]["image"].as_str()),
        (Some("user-container-1"), Some("example/proxy")),
        "named past the one in use"
    );
    assert_eq!(containers[2]["name"], "user-container-0");
    assert!(containers[1].get("env").is_none(), "a sidecar is passed as written");
    assert_eq!(pod["initContainers"][0]["name"], "init-container-0");
    assert_eq!(value["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], user_port(&asking));

    // A sidecar the user named `user-container`: the serving container takes another name.
    let mut clash = revision();
    let serving = clash["spec"]["containers"][0].clone();
    clash["spec"]["containers"] = json!([serving, {"name": "user-container", "image": "example/log"}]);
    let value = serde_json::to_value(revision_deployment(&clash, 1, &install(), 1).expect("deployment")).expect("json");
    let names: Vec<&str> = value["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["user-container-0", "user-container"]);
}

#[test]
fn defaults_port_and_probe_and_refuses_what_cannot_run() {
    let mut bare = revision();
    bare["spec"]["containers"][0] = json!({"image": "example/app"});
    let value = serde_json::to_value(revision_deployment(&bare, 1, &install(), 1).expect("deployment")).expect("json");
    let container = &value["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], DEFAULT_USER_PORT);
    assert_eq!(container["readinessProbe"]["tcpSocket"]["port"], DEFAULT_USER_PORT);
    assert_eq!(value["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 120);

    let mut no_image = revision();
    no_image["spec"]["containers"][0] = json!({"command": ["./app"]});
    assert!(revision_deployment(&no_image, 1, &install(), 1).expect_err("no image").contains("image"));
    let mut no_container = revision();
    no_container["spec"]["containers"] = json!([]);
    assert!(revision_deployment(&no_container, 1, &install(), 1).is_err());
    assert!(revision_deployment(&json!({"spec": {}}), 1, &install(), 1).is_err());
}

#[test]
fn a_sidecar_runs_as_written_beside_the_user_container() {
    let mut with_sidecar = revision();
    if let Some(containers) = with_sidecar["spec"]["containers"].as_array_mut() {
        containers.push(json!({"name": "proxy", "image": "envoy:1"}));
    }
    let value =
        serde_json::to_value(revision_deployment(&with_sidecar, 1, &install(), 1).expect("deployment")).expect("json");
    let containers = &value["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["name"], "user-container");
    assert_eq!(containers[1], json!({"name": "proxy", "image": "envoy:1"}));
}

#[test]
fn the_private_service_selects_the_nodes_pods_and_its_name_fits_a_dns_label() {
    let value = serde_json::to_value(revision_service(&revision(), 3, &install()).expect("service")).expect("json");
    assert_eq!(value["metadata"]["name"], "hello-00002-n3-private");
    assert_eq!(value["metadata"]["namespace"], "apps");
    assert_eq!(value["metadata"]["labels"][INSTALL_LABEL], "sluice-system.sluice");
    assert_eq!(value["metadata"]["labels"][NODE_LABEL], "n3");
    assert_eq!(value["spec"]["clusterIP"], "None");
    assert_eq!(value["spec"]["selector"], json!({REVISION_LABEL: "hello-00002", NODE_LABEL: "n3"}));
    assert_eq!(value["spec"]["ports"][0]["name"], SERVICE_PORT_NAME);
    assert_eq!(value["spec"]["ports"][0]["targetPort"], 9000);
    assert_eq!(pod_selector("hello-00002", 3), "serving.knative.dev/revision=hello-00002,serving.sluice.dev/node=n3");

    let long = "a".repeat(50) + "-00001";
    let name = service_name(&long, 12);
    assert!(name.len() <= 63 && name.ends_with("-n12-private"), "{name}");
    assert_eq!(name, service_name(&long, 12), "stable");
    assert_ne!(name, service_name(&("b".repeat(50) + "-00001"), 12));
    assert!(name.starts_with("aaaa") && !name.contains("--"), "{name}");
}

/// Node ids repeat across installs: what a node owns carries its install too, a label value however long
/// the StatefulSet's namespace and name are.
#[test]
fn an_install_is_a_label_value_and_a_statefulsets_is_its_namespace_and_name() {
    let longest = "x".repeat(63);
    for fine in ["sluice", "sluice-system.sluice", "a", "A_1.b-2", longest.as_str()] {
        assert_eq!(Install::new(fine).expect("a label value").as_str(), fine);
    }
    let too_long = "x".repeat(64);
    for refused in ["", "-sluice", "sluice.", "a,b", "a=b", "a b", "ü", too_long.as_str()] {
        assert!(Install::new(refused).is_err(), "{refused:?}");
    }

    let install = Install::of_statefulset("sluice-system", "sluice").expect("install");
    assert_eq!(install.as_str(), "sluice-system.sluice");
    assert_eq!(
        owned_selector(2, &install),
        "serving.sluice.dev/node=n2,serving.sluice.dev/install=sluice-system.sluice"
    );
    let long_namespace = "n".repeat(63);
    let long = Install::of_statefulset(&long_namespace, "sluice").expect("cut short");
    assert!(long.as_str().len() <= 63 && long.as_str().starts_with("nnnn"), "{long:?}");
    assert_eq!(long, Install::of_statefulset(&long_namespace, "sluice").expect("again"), "stable");
    assert_ne!(long, Install::of_statefulset(&long_namespace, "sluice-b").expect("another"));
    assert!(Install::of_statefulset("default", "a,b").is_err(), "never a selector's separator");
}

/// Two installs (or a user's Deployment) may hold a revision's name in one namespace: a node applies and
/// deletes only what its install made, or what a node made before installs were labelled.
#[test]
fn only_what_this_install_made_or_a_node_made_before_installs_is_ours() {
    let install = install();
    let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let ours = labels(&[(NODE_LABEL, "n2"), (INSTALL_LABEL, install.as_str())]);
    let before_installs = labels(&[(NODE_LABEL, "n2")]);
    let another_install = labels(&[(NODE_LABEL, "n2"), (INSTALL_LABEL, "other.sluice")]);
    let install_label_alone = labels(&[(INSTALL_LABEL, install.as_str())]);
    let a_users = labels(&[("app", "hello")]);
    let unlabelled = labels(&[]);
    let own = |l: Option<&std::collections::BTreeMap<String, String>>| ownership("Deployment", "d", l, &install);
    assert_eq!(own(None), Ownership::Absent);
    assert_eq!(own(Some(&ours)), Ownership::Ours);
    assert_eq!(own(Some(&before_installs)), Ownership::MadeBeforeInstalls);
    for theirs in [&another_install, &install_label_alone, &a_users, &unlabelled] {
        let owner = own(Some(theirs));
        assert!(!owner.is_ours(), "{theirs:?}");
        let Ownership::NotOurs(message) = owner else { unreachable!() };
        assert!(message.starts_with("There is an existing Deployment \"d\" that we do not own"), "{message}");
    }
    let Ownership::NotOurs(message) = own(Some(&another_install)) else { unreachable!() };
    assert!(message.contains("\"other.sluice\""), "names the install that made it: {message}");
    assert!([Ownership::Absent, Ownership::Ours, Ownership::MadeBeforeInstalls].iter().all(Ownership::is_ours));
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
    let deployment = revision_deployment(&revision(), 1, &install(), 1).expect("deployment");
    let echo = serde_json::to_value(&deployment).expect("json");
    let server = tokio::spawn(async move {
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(
            path,
            "/apis/apps/v1/namespaces/apps/deployments/hello-00002-n1-deployment?&force=true&fieldManager=sluice"
        );
        assert_eq!(body["spec"]["template"]["spec"]["containers"][0]["image"], "ghcr.io/example/hello:1");
        assert_eq!(body["metadata"]["labels"][INSTALL_LABEL], "sluice-system.sluice");
        // The Deployment exists: the count is the one it has (the scale patches'), not the apply's.
        assert_eq!(body["spec"]["replicas"], 4, "{body}");
        respond(send, &echo);
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(path, "/apis/apps/v1/namespaces/apps/deployments/hello-00002-n1-deployment/scale?");
        assert_eq!(body, json!({"spec": {"replicas": 7}}));
        respond(
            send,
            &json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                              "metadata": {"name": "hello-00002-n1-deployment"}, "spec": {"replicas": 7}}),
        );
    });
    let existing = revision_deployment(&revision(), 1, &install(), 4).expect("deployment");
    apply(&api, &deployment, Some(&existing)).await.expect("apply");
    if let Some(replicas) = scale_change(Some(1), 7) {
        scale(&api, "hello-00002-n1-deployment", replicas).await.expect("scale");
    }
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("scenario finished")
        .expect("scenario");
}

/// Regression: a re-apply left `spec.replicas` out. The apply that created the Deployment had set them, so
/// its field manager owned them, and under server-side apply a field left out by its owner is removed: the
/// count went back to the API server's default, 1, and a revision at zero started a pod.
#[tokio::test]
async fn an_apply_creates_at_the_initial_count_and_a_re_apply_keeps_the_count_the_deployment_has() {
    let (client, mut handle) = mock_client();
    let api: Api<Deployment> = Api::namespaced(client, "apps");
    let at = |replicas| revision_deployment(&revision(), 1, &install(), replicas).expect("deployment");
    // Built at a count of its own, unlike the existing one's, so that the body shows which was applied.
    let desired = at(2);
    let echo = serde_json::to_value(&desired).expect("json");
    let server = tokio::spawn(async move {
        let mut applied = Vec::new();
        for _ in 0..3 {
            let (method, path, body, send) = next_request(&mut handle).await;
            assert_eq!(method, Method::PATCH);
            assert!(path.contains("fieldManager=sluice"), "{path}");
            applied.push(body["spec"]["replicas"].clone());
            respond(send, &echo);
        }
        applied
    });
    apply(&api, &desired, None).await.expect("create");
    apply(&api, &desired, Some(&at(0))).await.expect("re-apply at zero");
    apply(&api, &desired, Some(&at(3))).await.expect("re-apply at three");
    let applied = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("scenario finished")
        .expect("scenario");
    assert_eq!(applied, [json!(2), json!(0), json!(3)], "created at its count, then kept at the Deployment's");
}
