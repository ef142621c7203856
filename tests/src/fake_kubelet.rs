//! What a cluster does with a Deployment, in the test, beside the in-test API server ([`crate::fake_kube`]):
//! the ReplicaSet's count (pods created up to `spec.replicas`, and past it the pod with the lowest
//! `controller.kubernetes.io/pod-deletion-cost` deleted first), the kubelet (each pod's container run as a real
//! child process, probed until it accepts connections, SIGTERM when the pod goes), and the EndpointSlice
//! controller (a slice per pod, labelled with the Services that select it, the endpoint ready once the probe
//! passes and terminating while the pod stops).
//!
//! No container engine runs here, so an image is mapped to a program: [`FakeKubelet::start`] takes the images
//! it can "pull"; any other image leaves its pod waiting with `ImagePullBackOff`, as a real kubelet would. Pods
//! on one machine share an address, so each pod's container gets a port of its own in `PORT` (a real pod has
//! its own IP and keeps the container's port) and its own slice (slices group endpoints by port).

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::fake_kube::{FakeKube, labels_match};

const DEPLOYMENTS: &str = "apps/v1/deployments";
const PODS: &str = "core/v1/pods";
const SERVICES: &str = "core/v1/services";
const SLICES: &str = "discovery.k8s.io/v1/endpointslices";
/// How often a starting container is probed.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// The running fake cluster node.
pub struct FakeKubelet {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Running {
    child: Child,
    port: u16,
}

struct Kubelet {
    kube: Arc<FakeKube>,
    images: BTreeMap<String, std::path::PathBuf>,
    containers: Mutex<HashMap<(String, String), Running>>,
    next_pod: std::sync::atomic::AtomicU64,
}

impl FakeKubelet {
    /// Runs Deployments' pods; `images` maps each image it can run to the program that stands for it.
    pub fn start(kube: Arc<FakeKube>, images: BTreeMap<String, std::path::PathBuf>) -> FakeKubelet {
        let mut changes = kube.changes();
        let kubelet = Arc::new(Kubelet {
            kube,
            images,
            containers: Mutex::default(),
            next_pod: std::sync::atomic::AtomicU64::new(1),
        });
        let task = tokio::spawn(async move {
            loop {
                kubelet.reconcile().await;
                // Every change may matter (a scale, a pod's mark, a Service); a lag is one more look.
                match changes.recv().await {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                while changes.try_recv().is_ok() {}
            }
        });
        FakeKubelet { task }
    }
}

fn name_of(object: &Value) -> (String, String) {
    (
        object["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
        object["metadata"]["name"].as_str().unwrap_or_default().to_string(),
    )
}

fn selector_of(match_labels: &Value) -> String {
    match_labels
        .as_object()
        .map(|labels| {
            labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
        })
        .unwrap_or_default()
}

impl Kubelet {
    async fn reconcile(self: &Arc<Self>) {
        let deployments = self.kube.list(DEPLOYMENTS);
        let pods = self.kube.list(PODS);
        // The ReplicaSet's part: up to the count, and past it the cheapest pod out.
        for deployment in &deployments {
            let (namespace, name) = name_of(deployment);
            let selector = selector_of(&deployment["spec"]["selector"]["matchLabels"]);
            let live: Vec<&Value> = pods
                .iter()
                .filter(|p| name_of(p).0 == namespace && labels_match(p, &selector))
                .filter(|p| p["metadata"].get("deletionTimestamp").is_none_or(Value::is_null))
                .collect();
            let wanted = deployment["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
            for _ in live.len()..wanted {
                self.create_pod(deployment, &namespace, &name);
            }
            if live.len() > wanted {
                let mut by_cost: Vec<&Value> = live.clone();
                by_cost.sort_by_key(|p| {
                    let cost = p["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"]
                        .as_str()
                        .and_then(|c| c.parse::<i64>().ok())
                        .unwrap_or(0);
                    let ready = p["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
                    (ready, cost)
                });
                for pod in by_cost.into_iter().take(live.len() - wanted) {
                    self.clone().terminate(name_of(pod));
                }
            }
        }
        // Pods whose Deployment is gone go too.
        for pod in &pods {
            let owner = pod["metadata"]["labels"]["fake-kubelet/deployment"].as_str().unwrap_or_default();
            let (namespace, _) = name_of(pod);
            let owned = deployments.iter().any(|d| name_of(d) == (namespace.clone(), owner.to_string()));
            let going = pod["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null());
            if !owned && !going {
                self.clone().terminate(name_of(pod));
            }
        }
    }

    fn create_pod(self: &Arc<Self>, deployment: &Value, namespace: &str, deployment_name: &str) {
        let number = self.next_pod.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pod_name = format!("{deployment_name}-{number:05}");
        let mut labels = deployment["spec"]["template"]["metadata"]["labels"].clone();
        labels["fake-kubelet/deployment"] = json!(deployment_name);
        let container = deployment["spec"]["template"]["spec"]["containers"][0].clone();
        let image = container["image"].as_str().unwrap_or_default().to_string();
        let program = self.images.get(&image).cloned();
        let status = match &program {
            Some(_) => json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}),
            None => json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "user-container", "image": image, "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff",
                    "message": format!("Back-off pulling image \"{image}\"")}}}]}),
        };
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": namespace, "labels": labels},
            "spec": deployment["spec"]["template"]["spec"].clone(), "status": status});
        if self.kube.create(PODS, pod).is_err() {
            return;
        }
        let Some(program) = program else { return };
        let kubelet = self.clone();
        let key = (namespace.to_string(), pod_name);
        tokio::spawn(async move { kubelet.run(key, program, container).await });
    }

    /// Runs a pod's container, probes it, and publishes its endpoint once it accepts connections.
    async fn run(self: Arc<Self>, key: (String, String), program: std::path::PathBuf, container: Value) {
        let Ok(port) =
            crate::free_addr().rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default().parse::<u16>()
        else {
            return;
        };
        let mut command = Command::new(program);
        command.args(container["args"].as_array().into_iter().flatten().filter_map(Value::as_str));
        for var in container["env"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (var["name"].as_str(), var["value"].as_str()) {
                command.env(name, value);
            }
        }
        command.env("PORT", port.to_string()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let Ok(child) = command.kill_on_drop(true).spawn() else { return };
        self.containers.lock().await.insert(key.clone(), Running { child, port });
        loop {
            if !self.containers.lock().await.contains_key(&key) {
                return;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
        let (namespace, name) = key.clone();
        let Some(pod) = self.kube.update(PODS, &namespace, &name, |pod| {
            pod["status"] = json!({"phase": "Running", "podIP": "127.0.0.1",
                                   "conditions": [{"type": "Ready", "status": "True"}]});
        }) else {
            return;
        };
        self.publish_endpoint(&pod, port, true, false);
    }

    /// The pod's own slice, labelled with each Service that selects it.
    fn publish_endpoint(&self, pod: &Value, port: u16, ready: bool, terminating: bool) {
        let (namespace, name) = name_of(pod);
        for service in self.kube.list(SERVICES) {
            let (service_namespace, service_name) = name_of(&service);
            if service_namespace != namespace || !labels_match(pod, &selector_of(&service["spec"]["selector"])) {
                continue;
            }
            let slice_name = format!("{service_name}-{name}");
            let port_name = service["spec"]["ports"][0]["name"].clone();
            let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": slice_name, "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": service_name}},
                "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.0.0.1"],
                               "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
                               "targetRef": {"kind": "Pod", "name": name, "namespace": namespace}}]});
            if self.kube.get(SLICES, &namespace, &slice_name).is_some() {
                self.kube.update(SLICES, &namespace, &slice_name, |s| *s = slice.clone());
            } else {
                let _ = self.kube.create(SLICES, slice);
            }
        }
    }

    /// The pod goes: marked deleting, its endpoint terminating, SIGTERM (SIGKILL after the grace period), then
    /// it and its slices are removed.
    fn terminate(self: Arc<Self>, (namespace, name): (String, String)) {
        let Some(pod) = self.kube.update(PODS, &namespace, &name, |pod| {
            pod["metadata"]["deletionTimestamp"] = json!("2026-11-28T00:00:02Z");
            pod["metadata"]["finalizers"] = json!(["fake-kubelet/running"]);
        }) else {
            return;
        };
        tokio::spawn(async move {
            let running = self.containers.lock().await.remove(&(namespace.clone(), name.clone()));
            if let Some(mut running) = running {
                self.publish_endpoint(&pod, running.port, false, true);
                if let Some(pid) = running.child.id() {
                    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
                }
                if tokio::time::timeout(GRACE, running.child.wait()).await.is_err() {
                    let _ = running.child.kill().await;
                }
            }
            for slice in self.kube.list(SLICES) {
                let (slice_namespace, slice_name) = name_of(&slice);
                if slice_namespace == namespace && slice["endpoints"][0]["targetRef"]["name"] == json!(name) {
                    self.kube.delete(SLICES, &slice_namespace, &slice_name);
                }
            }
            self.kube.update(PODS, &namespace, &name, |pod| pod["metadata"]["finalizers"] = json!([]));
        });
    }
}
