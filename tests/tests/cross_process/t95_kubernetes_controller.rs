//! The whole loop on Kubernetes' side, with no cluster: the real `sluice kube-controller` binary (its kube
//! client, `Controller`, finalizers, Lease) against the in-test API server (`sluice_tests::fake_kube`), and a
//! real Sluice node behind it. A Sluice-class Broker is pushed into Sluice and gets Knative's status and its
//! address on the ingress Service; an MT-class Broker gets nothing; a Trigger on the Sluice Broker reaches
//! Sluice and reports Ready; an EventPolicy is pushed and, this node running without sender identity, reports that nothing enforces it (not Ready, and its Broker not Ready at once, keeping its address); deleting the Broker removes it from Sluice before Kubernetes forgets it; a Broker
//! whose class changes away from Sluice takes its Trigger out of Sluice with it.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_proto::admin::ResourceRef;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_tests::fake_kube::FakeKube;
use sluice_tests::{free_addr, sluice_bin, start_single_node, wait_until};

const BROKERS: &str = "eventing.knative.dev/v1/brokers";
const TRIGGERS: &str = "eventing.knative.dev/v1/triggers";
const POLICIES: &str = "eventing.knative.dev/v1alpha1/eventpolicies";
const LEASES: &str = "coordination.k8s.io/v1/leases";

fn broker(name: &str, class: &str) -> Value {
    json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
           "metadata": {"name": name, "namespace": "default", "annotations": {"eventing.knative.dev/broker.class": class}},
           "spec": {}})
}

/// A Trigger on `broker` to a core Service's URL.
fn trigger_object(name: &str, broker: &str) -> Value {
    json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"broker": broker, "subscriber": {"uri": "http://sink.default.svc.cluster.local/"}}})
}

fn ready(object: &Value) -> bool {
    object["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The object as the Sluice node keeps it, or `None`.
async fn in_sluice(admin: &str, kind: &str, name: &str) -> anyhow::Result<Option<Value>> {
    let mut client = ResourcesClient::connect(format!("http://{admin}")).await?;
    let reference = ResourceRef { kind: kind.into(), namespace: "default".into(), name: name.into() };
    match client.get(reference).await {
        Ok(reply) => Ok(Some(serde_json::from_str(&reply.into_inner().object_json)?)),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(status.into()),
    }
}

/// A test's `sluice kube-controller` process, against the in-test API server and the node at `admin`, its output
/// in a file; killed when dropped.
struct ControllerProc {
    child: std::process::Child,
    log_path: std::path::PathBuf,
    metrics_addr: String,
}

impl ControllerProc {
    fn start(
        root: &std::path::Path,
        kube: &FakeKube,
        admin: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<ControllerProc> {
        let kubeconfig = kube.write_kubeconfig(root)?;
        let metrics_addr = free_addr();
        let log_path = root.join("controller.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(sluice_bin())
            .args(["kube-controller", "--admin", admin, "--ingress-host", "sluice-ingress.test.svc"])
            .args(["--metrics", &metrics_addr, "--identity", "controller-a", "--lease-namespace", "sluice-system"])
            .args(extra_args)
            .envs(env.iter().copied())
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(ControllerProc { child, log_path, metrics_addr })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the controller has reconciled an object of `kind` at least once (its metric).
    async fn wait_reconciled(&self, kind: &str) -> anyhow::Result<()> {
        let metrics_url = format!("http://{}/metrics", self.metrics_addr);
        let line = format!("sluice_kube_reconciles_total{{kind=\"{kind}\"}} ");
        wait_until(Duration::from_secs(60), || async {
            let Ok(response) = reqwest::get(&metrics_url).await else { return Ok(None) };
            let text = response.text().await?;
            let reconciled = text
                .lines()
                .filter_map(|l| l.strip_prefix(line.as_str()))
                .any(|count| count.trim().parse::<f64>().is_ok_and(|count| count >= 1.0));
            Ok(reconciled.then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("no {kind} was reconciled: {e}\n{}", self.log()))
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_serves_sluice_brokers_and_their_triggers_end_to_end() -> anyhow::Result<()> {
    let (root, node) = start_single_node(2, &[]).await?;
    let kube = FakeKube::start().await?;
    let controller = ControllerProc::start(root.path(), &kube, &node.admin, &[], &[])?;
    let controller_log = || controller.log();

    // An MT-class Broker first, reconciled (left alone) before a Sluice one is created.
    kube.create(BROKERS, broker("mt", "MTChannelBasedBroker"))?;
    controller.wait_reconciled("Broker").await?;
    kube.create(BROKERS, broker("b", "Sluice"))?;
    let served = wait_until(Duration::from_secs(60), || async { Ok(kube.get(BROKERS, "default", "b").filter(ready)) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", controller_log()))?;
    assert_eq!(served["status"]["address"]["url"], "http://sluice-ingress.test.svc/default/b");
    assert_eq!(served["status"]["observedGeneration"], 1);
    assert_eq!(served["metadata"]["finalizers"], json!(["sluice.dev/controller"]));
    assert!(in_sluice(&node.admin, "Broker", "b").await?.is_some());
    let lease = kube.get(LEASES, "sluice-system", "sluice-controller").expect("the controller holds its Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "controller-a");

    let mt = kube.get(BROKERS, "default", "mt").expect("mt");
    assert!(mt["metadata"].get("finalizers").is_none() && mt.get("status").is_none(), "{mt}");
    assert!(!kube.requests().iter().any(|r| r.starts_with("PATCH") && r.contains("/brokers/mt")));
    assert!(in_sluice(&node.admin, "Broker", "mt").await?.is_none());

    // A Trigger on the Sluice Broker: pushed, Ready, its subscriber URI in its status.
    kube.create(TRIGGERS, trigger_object("t", "b"))?;
    let trigger =
        wait_until(Duration::from_secs(60), || async { Ok(kube.get(TRIGGERS, "default", "t").filter(ready)) })
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", controller_log()))?;
    assert_eq!(trigger["status"]["subscriberUri"], "http://sink.default.svc.cluster.local/");
    assert!(in_sluice(&node.admin, "Trigger", "t").await?.is_some());

    // An EventPolicy applied as the CRD: pushed, and judged as Knative judges it without sender identity.
    kube.create(
        POLICIES,
        json!({"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
               "metadata": {"name": "p", "namespace": "default"},
               "spec": {"to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "b"}}],
                        "from": [{"sub": "system:serviceaccount:default:orders"},
                                 {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "name": "t"}}]}}),
    )?;
    let condition = |object: &Value, kind: &str| {
        object["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == kind).cloned())
    };
    // This node runs without sender identity, so nothing enforces the policy: it says so and is not Ready, its
    // subjects are left unresolved, and the Broker it applies to is not Ready either (Knative's reconcilers).
    let judged = |object: &Value| condition(object, "AuthenticationEnabled").is_some();
    let policy =
        wait_until(Duration::from_secs(60), || async { Ok(kube.get(POLICIES, "default", "p").filter(judged)) })
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", controller_log()))?;
    let enabled = condition(&policy, "AuthenticationEnabled").unwrap_or_default();
    assert_eq!((&enabled["status"], &enabled["reason"]), (&json!("False"), &json!("OIDCAuthenticationDisabled")));
    assert_eq!(condition(&policy, "SubjectsResolved").unwrap_or_default()["status"], "Unknown", "{policy}");
    assert!(!ready(&policy), "{policy}");
    let policies_not_ready = |object: &Value| {
        condition(object, "EventPoliciesReady").is_some_and(|c| c["reason"] == "EventPoliciesNotReady")
    };
    // On Kubernetes at once (a policy's change reconciles the Brokers of its namespace, not at their next resync),
    // and the Broker keeps its address: it is not Ready, but it still takes events (`Addressable`).
    let judged_broker = wait_until(Duration::from_secs(60), || async {
        Ok(kube.get(BROKERS, "default", "b").filter(policies_not_ready))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", controller_log()))?;
    assert!(!ready(&judged_broker), "{judged_broker}");
    assert_eq!(judged_broker["status"]["address"]["url"], "http://sluice-ingress.test.svc/default/b");
    assert!(in_sluice(&node.admin, "EventPolicy", "p").await?.is_some());

    // Deleting the Broker: Sluice forgets it, then the finalizer goes and Kubernetes removes it.
    kube.delete(BROKERS, "default", "b");
    wait_until(Duration::from_secs(60), || async { Ok(kube.get(BROKERS, "default", "b").is_none().then_some(())) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", controller_log()))?;
    assert!(in_sluice(&node.admin, "Broker", "b").await?.is_none());

    // A Broker whose class changes away from Sluice: it and its Trigger leave Sluice and lose the finalizer,
    // the Trigger as soon as its Broker changes (a Ready Trigger's own resync is minutes away).
    kube.create(BROKERS, broker("c", "Sluice"))?;
    kube.create(TRIGGERS, trigger_object("u", "c"))?;
    wait_until(Duration::from_secs(60), || async { Ok(kube.get(TRIGGERS, "default", "u").filter(ready)) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", controller_log()))?;
    kube.update(BROKERS, "default", "c", |c| {
        c["metadata"]["annotations"]["eventing.knative.dev/broker.class"] = json!("MTChannelBasedBroker");
    });
    let released = |name: &str| {
        kube.get(TRIGGERS, "default", name)
            .is_some_and(|t| t["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty()))
    };
    wait_until(Duration::from_secs(60), || async { Ok(released("u").then_some(())) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", controller_log()))?;
    assert!(in_sluice(&node.admin, "Trigger", "u").await?.is_none());
    assert!(in_sluice(&node.admin, "Broker", "c").await?.is_none());

    drop(controller);
    Ok(())
}

/// Regression: the controller dialed the admin API in plaintext with no token, whatever it was given, so
/// against nodes started with `--admin-tokens` (docs/security.md) every apply was refused as unauthenticated
/// and retried for ever. It now sends the global `--token`/`SLUICE_TOKEN` as every command does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regression_the_controller_sends_its_token_to_nodes_that_ask_for_one() -> anyhow::Result<()> {
    const OPERATE_TOKEN: &str = "controller-token-0123456789";
    let root = tempfile::tempdir()?;
    let tokens = root.path().join("tokens.csv");
    std::fs::write(&tokens, format!("# token,name,role\n{OPERATE_TOKEN},controller,operate\n"))?;
    let mut node = sluice_tests::NodeProc::new(1, root.path(), &["--admin-tokens", &tokens.to_string_lossy()]);
    node.start()?;
    sluice_tests::init_with_token(&node, OPERATE_TOKEN, 1).await?;

    let kube = FakeKube::start().await?;
    let controller = ControllerProc::start(root.path(), &kube, &node.admin, &[], &[("SLUICE_TOKEN", OPERATE_TOKEN)])?;
    kube.create(BROKERS, broker("b", "Sluice"))?;
    let served = wait_until(Duration::from_secs(60), || async { Ok(kube.get(BROKERS, "default", "b").filter(ready)) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", controller.log()));
    assert_eq!(served?["status"]["address"]["url"], "http://sluice-ingress.test.svc/default/b");
    Ok(())
}

/// Regression: beside Knative Eventing, an EventPolicy is Sluice's only when it may apply to a Sluice-class
/// Broker, and one applied before its Broker was judged not Sluice's and never looked at again: the Broker took
/// events from every sender of its namespace. The Broker's creation now reconciles the policies naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regression_a_policy_applied_before_its_broker_reaches_sluice_beside_knative_eventing() -> anyhow::Result<()> {
    let (root, node) = start_single_node(1, &[]).await?;
    let kube = FakeKube::start().await?;
    let controller = ControllerProc::start(root.path(), &kube, &node.admin, &["--beside-knative-eventing"], &[])?;
    kube.create(
        POLICIES,
        json!({"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
               "metadata": {"name": "p", "namespace": "default"},
               "spec": {"to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "later"}}],
                        "from": [{"sub": "system:serviceaccount:default:orders"}]}}),
    )?;
    // The policy is reconciled (no such Broker: not Sluice's) before the Broker exists.
    controller.wait_reconciled("EventPolicy").await?;
    assert!(in_sluice(&node.admin, "EventPolicy", "p").await?.is_none(), "not Sluice's while no Broker is");
    kube.create(BROKERS, broker("later", "Sluice"))?;
    let pushed = wait_until(Duration::from_secs(60), || async { in_sluice(&node.admin, "EventPolicy", "p").await })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", controller.log()));
    assert_eq!(pushed?["spec"]["from"][0]["sub"], "system:serviceaccount:default:orders");
    Ok(())
}
