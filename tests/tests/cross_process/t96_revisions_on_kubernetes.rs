//! Revisions on Kubernetes, with no cluster: a real Sluice node started with `--serving-runtime kubernetes`
//! against the in-test API server (`sluice_tests::fake_kube`), with the in-test kubelet
//! (`sluice_tests::fake_kubelet`) running the Deployments' pods as real `sluice-hello` processes and publishing
//! their EndpointSlices. A Knative Service becomes a Deployment and a headless Service per revision and node;
//! the revision proves itself ready with one pod, goes to zero through the scale subresource, and a request at
//! zero is held while the Deployment scales to one and answered by that pod. An image the kubelet cannot pull
//! makes the Revision fail with `ImagePullBackOff`. Deleting the Service deletes what the node made, and what
//! a previous run of the node left is deleted when it starts (not what another install's node 1 made).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_proto::admin::ResourceRef;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_tests::fake_kube::FakeKube;
use sluice_tests::fake_kubelet::FakeKubelet;
use sluice_tests::{NodeProc, apply_resource, hello_bin, start_as_single_node, wait_until};

use super::t90_serving::{client, get, url, wait_ready};

const DEPLOYMENTS: &str = "apps/v1/deployments";
const SERVICES: &str = "core/v1/services";
const PODS: &str = "core/v1/pods";
const HELLO_IMAGE: &str = "registry.example/sluice-hello:1";
const WITHIN: Duration = Duration::from_secs(60);

fn knative_service(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {
            "metadata": {"annotations": {"autoscaling.knative.dev/window": "6s"}},
            "spec": {"containerConcurrency": 4, "containers": [{"image": image, "env": [{"name": "TARGET", "value": "Kubernetes"}]}]},
        }},
    })
}

fn live_pods(kube: &FakeKube, selector_revision: &str) -> usize {
    kube.list(PODS)
        .iter()
        .filter(|p| p["metadata"]["labels"]["serving.knative.dev/revision"] == selector_revision)
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none_or(Value::is_null))
        .count()
}

fn replicas(kube: &FakeKube, deployment: &str) -> Option<i64> {
    kube.get(DEPLOYMENTS, "default", deployment).and_then(|d| d["spec"]["replicas"].as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_run_as_deployments_scaled_from_sluice_and_routed_to_their_pods() -> Result<()> {
    let root = tempfile::tempdir()?;
    let kube = Arc::new(FakeKube::start().await?);
    let kubeconfig = kube.write_kubeconfig(root.path())?;
    let _kubelet = FakeKubelet::start(kube.clone(), BTreeMap::from([(HELLO_IMAGE.to_string(), hello_bin())]));
    // What a previous run of node 1 left, and what another node made and another install's node 1 made (left
    // alone). The node is no StatefulSet's pod and is given no --serving-install: its install is `sluice`.
    for (name, node, install) in [
        ("old-00001-n1-deployment", "n1", "sluice"),
        ("other-00001-n2-deployment", "n2", "sluice"),
        ("elsewhere-00001-n1-deployment", "n1", "team-b.sluice"),
    ] {
        let labels = json!({"serving.sluice.dev/node": node, "serving.sluice.dev/install": install});
        kube.create(
            DEPLOYMENTS,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": name, "namespace": "default", "labels": labels},
                   "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": []}}}}),
        )?;
    }

    let quick_zero = [
        "--serving-runtime",
        "kubernetes",
        "--autoscaler",
        "scale-to-zero-grace-period=0s",
        "--autoscaler",
        "tick-interval=200ms",
    ];
    let mut node = NodeProc::new(1, root.path(), &quick_zero);
    node.env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    start_as_single_node(&mut node, 1).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    // Serving (and with it the runtime's clean-up) starts once the node is up, so that is awaited.
    wait_until(WITHIN, || async {
        Ok(kube.get(DEPLOYMENTS, "default", "old-00001-n1-deployment").is_none().then_some(()))
    })
    .await
    .context("a previous run's Deployment is deleted")
    .with_context(|| node.log_tail())?;
    assert!(kube.get(DEPLOYMENTS, "default", "other-00001-n2-deployment").is_some(), "another node's stays");
    assert!(
        kube.get(DEPLOYMENTS, "default", "elsewhere-00001-n1-deployment").is_some(),
        "another install's node 1's stays"
    );

    // The Service's first revision runs as a Deployment of this node, and proves itself ready with a pod.
    apply_resource(&admin, knative_service("hello", HELLO_IMAGE)).await?;
    let revision = wait_ready(&admin, "Revision", "hello-00001").await.with_context(|| node.log_tail())?;
    assert_eq!(revision["metadata"]["name"], "hello-00001");
    let deployment = kube.get(DEPLOYMENTS, "default", "hello-00001-n1-deployment").context("the Deployment")?;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], HELLO_IMAGE);
    let env: BTreeMap<String, Value> = container["env"]
        .as_array()
        .context("env")?
        .iter()
        .map(|e| (e["name"].as_str().unwrap_or_default().to_string(), e["value"].clone()))
        .collect();
    assert_eq!(env["K_REVISION"], "hello-00001");
    assert_eq!(env["K_SERVICE"], "hello");
    assert_eq!(env["TARGET"], "Kubernetes");
    assert_eq!(deployment["spec"]["selector"]["matchLabels"]["serving.sluice.dev/node"], "n1");
    assert_eq!(deployment["metadata"]["labels"]["serving.sluice.dev/install"], "sluice");
    let service = kube.get(SERVICES, "default", "hello-00001-n1-private").context("the private Service")?;
    assert_eq!(service["spec"]["clusterIP"], "None");

    // Idle: the autoscaler takes it to zero through the scale subresource, and its pod goes.
    wait_until(WITHIN, || async {
        Ok((replicas(&kube, "hello-00001-n1-deployment") == Some(0) && live_pods(&kube, "hello-00001") == 0)
            .then_some(()))
    })
    .await
    .with_context(|| node.log_tail())?;
    let scale_patches = |kube: &FakeKube| {
        kube.requests()
            .iter()
            .filter(|r| {
                r.as_str() == "PATCH /apis/apps/v1/namespaces/default/deployments/hello-00001-n1-deployment/scale"
            })
            .count()
    };
    assert!(scale_patches(&kube) >= 2, "up to one, down to zero: {:?}", kube.requests());

    // A request at zero is held while the Deployment scales to one, and its pod answers it.
    let client = client(&http, &["hello.default.localhost"])?;
    let response = client.get(url("hello.default.localhost", &http, "/")).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await?, "Hello Kubernetes!\n");
    let contract: Value = client.get(url("hello.default.localhost", &http, "/env")).send().await?.json().await?;
    assert_eq!(contract["K_REVISION"], "hello-00001");
    assert_eq!(replicas(&kube, "hello-00001-n1-deployment"), Some(1));

    // An image the cluster cannot pull: the Revision fails with the kubelet's reason.
    apply_resource(&admin, knative_service("broken", "registry.example/no-such-image:1")).await?;
    let failed = wait_until(WITHIN, || async {
        let revision = get(&admin, "Revision", "broken-00001").await?;
        let healthy = revision["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "ContainerHealthy"))
            .cloned();
        Ok(healthy.filter(|c| c["status"] == "False"))
    })
    .await
    .with_context(|| node.log_tail())?;
    assert_eq!(failed["reason"], "ImagePullBackOff", "{failed}");
    assert!(failed["message"].as_str().unwrap_or_default().contains("no-such-image"), "{failed}");

    // Deleting the Service: the revision stops here, and what the node made for it goes.
    let mut resources = ResourcesClient::connect(format!("http://{admin}")).await?;
    resources.delete(ResourceRef { kind: "Service".into(), namespace: "default".into(), name: "hello".into() }).await?;
    wait_until(WITHIN, || async {
        Ok((kube.get(DEPLOYMENTS, "default", "hello-00001-n1-deployment").is_none()
            && kube.get(SERVICES, "default", "hello-00001-n1-private").is_none()
            && live_pods(&kube, "hello-00001") == 0)
            .then_some(()))
    })
    .await
    .with_context(|| node.log_tail())?;
    Ok(())
}
