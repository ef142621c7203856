//! What the watches show, as the claims take it: a store of the objects a watcher has listed and seen change
//! ([`Store`]), the endpoints of a revision's EndpointSlices ([`endpoints`]) and why a pod cannot start
//! ([`pod_problem`]). Pure.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use super::claims::{Endpoint, PodProblem};
use crate::revision::SERVICE_PORT_NAME;

/// Why a container waits, when it means the pod cannot start by itself (not `ContainerCreating`).
const STUCK_REASONS: [&str; 7] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The objects a watch has shown, by name; a relist replaces them whole.
pub(crate) struct Store<K> {
    objects: BTreeMap<String, K>,
    /// Filled while a relist runs.
    relisting: Option<BTreeMap<String, K>>,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store { objects: BTreeMap::new(), relisting: None }
    }
}

impl<K: kube::Resource> Store<K> {
    /// Takes one watch event; true when what is known changed (a relist counts once it is complete).
    pub(crate) fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Apply(object) => {
                self.objects.insert(object.name_any(), object);
                true
            }
            Event::Delete(object) => self.objects.remove(&object.name_any()).is_some(),
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                self.relisting.get_or_insert_default().insert(object.name_any(), object);
                false
            }
            Event::InitDone => {
                self.objects = self.relisting.take().unwrap_or_default();
                true
            }
        }
    }

    pub(crate) fn objects(&self) -> impl Iterator<Item = &K> {
        self.objects.values()
    }
}

/// Every endpoint of the slices: its pod (the target's name, else its address), its address at the Service's
/// port, and its conditions.
pub(crate) fn endpoints<'a>(slices: impl Iterator<Item = &'a EndpointSlice>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(SERVICE_PORT_NAME))
            .or(ports.first())
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
            let conditions = endpoint.conditions.as_ref();
            out.push(Endpoint {
                pod: endpoint.target_ref.as_ref().and_then(|t| t.name.clone()).unwrap_or_else(|| ip.to_string()),
                addr: SocketAddr::new(ip, port),
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            });
        }
    }
    out
}

/// Why this pod cannot start by itself, if it cannot: a container stuck waiting (its image cannot be pulled,
/// it crash-loops, its config is wrong), or no node to run it on.
pub(crate) fn pod_problem(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    let name = pod.name_any();
    for container in status.container_statuses.iter().flatten() {
        let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
        if let Some(waiting) = waiting
            && let Some(reason) = waiting.reason.as_deref().filter(|r| STUCK_REASONS.contains(r))
        {
            let message = waiting.message.clone().unwrap_or_default();
            return Some(PodProblem {
                pod: name,
                reason: reason.to_string(),
                message: format!("container {}: {reason}: {message}", container.name),
            });
        }
    }
    let unschedulable =
        status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
        })?;
    Some(PodProblem {
        pod: name,
        reason: "Unschedulable".into(),
        message: unschedulable.message.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(name: &str, port: i64, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name},
            "ports": [{"name": "metrics", "port": 9090}, {"name": SERVICE_PORT_NAME, "port": port}],
            "endpoints": endpoints,
        }))
        .expect("slice")
    }

    #[test]
    fn endpoints_come_from_every_slice_at_the_services_port() {
        let a = slice(
            "s-a",
            8080,
            json!([
                {"addresses": ["10.1.0.5"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "p-a"}},
                {"addresses": ["10.1.0.6"], "conditions": {"ready": false, "terminating": true},
                 "targetRef": {"kind": "Pod", "name": "p-b"}},
                {"addresses": ["not an ip"]},
            ]),
        );
        let b = slice("s-b", 9000, json!([{"addresses": ["10.1.0.7"]}]));
        let found = endpoints([a, b].iter());
        assert_eq!(
            found,
            [
                Endpoint {
                    pod: "p-a".into(),
                    addr: "10.1.0.5:8080".parse().expect("addr"),
                    ready: true,
                    terminating: false
                },
                Endpoint {
                    pod: "p-b".into(),
                    addr: "10.1.0.6:8080".parse().expect("addr"),
                    ready: false,
                    terminating: true
                },
                // No conditions: ready, as Kubernetes reads a missing one; no target: named by its address.
                Endpoint {
                    pod: "10.1.0.7".into(),
                    addr: "10.1.0.7:9000".parse().expect("addr"),
                    ready: true,
                    terminating: false
                },
            ]
        );
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p-a"}, "status": status}),
        )
        .expect("pod")
    }

    #[test]
    fn a_stuck_container_or_no_node_is_a_problem_and_creating_is_not() {
        let pulling = pod(json!({"containerStatuses": [{"name": "user-container", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}));
        let problem = pod_problem(&pulling).expect("a problem");
        assert_eq!((problem.pod.as_str(), problem.reason.as_str()), ("p-a", "ImagePullBackOff"));
        assert!(problem.message.contains("user-container") && problem.message.contains("Back-off"), "{problem:?}");

        let creating = pod(json!({"containerStatuses": [{"name": "user-container", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        assert_eq!(pod_problem(&creating), None);

        let unschedulable = pod(json!({"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available"}]}));
        assert_eq!(pod_problem(&unschedulable).map(|p| p.reason), Some("Unschedulable".to_string()));
        assert_eq!(pod_problem(&pod(json!({"phase": "Running"}))), None);
    }

    #[test]
    fn a_relist_replaces_what_was_known_once_it_is_complete() {
        let named = |name: &str| -> Pod {
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}})).expect("pod")
        };
        let mut store = Store::<Pod>::default();
        assert!(store.apply(Event::Apply(named("a"))));
        assert!(store.apply(Event::Apply(named("b"))));
        assert!(!store.apply(Event::Init));
        assert!(!store.apply(Event::InitApply(named("b"))));
        assert_eq!(store.objects().count(), 2, "not replaced before the relist is done");
        assert!(store.apply(Event::InitDone));
        assert_eq!(store.objects().map(|p| p.name_any()).collect::<Vec<_>>(), ["b"]);
        assert!(store.apply(Event::Delete(named("b"))));
        assert!(!store.apply(Event::Delete(named("b"))), "deleting what is not there changes nothing");
    }
}
