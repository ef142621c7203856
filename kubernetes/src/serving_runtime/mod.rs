//! Sluice's serving runtime on Kubernetes: the revision task of a node starts and stops instances, and here
//! each instance is a pod of the Deployment that runs the node's pods of that revision.
//!
//! What flows in: starts and stops from the serving module ([`sluice_serving::Runtime`]), the revision's
//! EndpointSlices (which pods are ready, at which address) and its pods (why one cannot start). What flows out:
//! the Deployment and its headless Service (server-side applies, [`crate::revision`]), scale patches, a
//! pod-deletion-cost mark on the pod an instance stop takes out, and each instance's readiness (its pod's
//! address: the serving proxy sends requests there) or exit. [`claims`] decides, pure; one task per revision
//! carries it out. Requests wait at zero in the serving module's gate, as with the local runtime.
//!
//! A node's run owns what it made: when a revision stops running on the node, its Deployment and Service are
//! deleted; when the node starts, what a previous run of it left (labelled with its id and its install: node
//! ids repeat across the Sluice installs on one cluster) is deleted first.
//! Runs of one revision may overlap (one drains while its replacement starts, [`runs`]): the Deployment
//! follows the latest run that started an instance, and an earlier run's retirement leaves it alone.

mod claims;
mod observe;
mod runs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use sluice_controller::serving::ServingRuntime;
use sluice_serving::runtime::{Instance, InstanceEvent, InstanceId, InstanceSpec};
use sluice_serving::{Runtime, ServingError};
use tokio::sync::{mpsc, oneshot};

use crate::revision::{
    Install, Ownership, apply, apply_service, owned_selector, ownership, pod_selector, revision_deployment,
    revision_service, scale,
};
use claims::{Claims, Command, Input};
use runs::{RunStart, Runs};

/// How often a revision's task looks again after a failed call (an apply, a scale patch).
const RESYNC: Duration = Duration::from_secs(2);
/// How long a revision's retirement (deleting its Deployment and Service) may take.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stop waits past the grace period for the pod to leave the endpoints.
const STOP_SLACK: Duration = Duration::from_secs(10);
/// The annotation that makes a pod the ReplicaSet's first to delete when the count goes down.
const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Requests (starts, stops, retirements) waiting for one revision's pod task, at most. The task takes them as
/// fast as its API calls go; full, a start is deferred (tried again at the revision's next turn) and a stop or a
/// retirement waits for room, within its own time limit.
const POD_TASK_REQUESTS: usize = 1_024;

/// A claim's id: unique in the runtime (two runs of one revision, an old one draining while a new one starts,
/// number their instances from 1 each, and share the revision's task).
type ClaimId = u64;

/// A revision's Deployment and headless Service for this node, as a run of it builds them.
struct PodSet {
    deployment: Deployment,
    service: Service,
}

enum Request {
    Start {
        claim: ClaimId,
        instance: InstanceId,
        events: mpsc::Sender<InstanceEvent>,
        /// The revision's run that starts it, and what that run's pods are.
        run: u64,
        pod_set: Box<PodSet>,
    },
    Stop {
        claim: ClaimId,
        done: oneshot::Sender<()>,
    },
    /// Run `run` has stopped.
    Retire {
        run: u64,
        done: oneshot::Sender<()>,
    },
}

type Tasks = Arc<Mutex<HashMap<String, mpsc::Sender<Request>>>>;

/// Runs revisions as Deployments on the cluster the node runs in.
pub struct KubernetesRuntime {
    client: Client,
    node_id: u64,
    /// The install the node belongs to, on everything the runtime makes.
    install: Install,
    tasks: Tasks,
    next_claim: std::sync::atomic::AtomicU64,
}

impl KubernetesRuntime {
    /// A runtime for node `node_id` of `install`; first deletes the Deployments and Services a previous run of
    /// this node left (nothing of them is an instance of this run). Only those of its install: another install's
    /// node of the same id is another node, whose revisions are running.
    pub async fn start(client: Client, node_id: u64, install: Install) -> Result<KubernetesRuntime, kube::Error> {
        let selector = owned_selector(node_id, &install);
        let params = ListParams::default().labels(&selector);
        let left: Vec<Deployment> = Api::<Deployment>::all(client.clone()).list(&params).await?.items;
        for deployment in left {
            let namespace = deployment.namespace().unwrap_or_default();
            tracing::info!(deployment = %deployment.name_any(), %namespace, "deleting what a previous run left");
            delete_ignoring_absent(&Api::<Deployment>::namespaced(client.clone(), &namespace), &deployment.name_any())
                .await?;
        }
        let left: Vec<Service> = Api::<Service>::all(client.clone()).list(&params).await?.items;
        for service in left {
            let namespace = service.namespace().unwrap_or_default();
            delete_ignoring_absent(&Api::<Service>::namespaced(client.clone(), &namespace), &service.name_any())
                .await?;
        }
        Ok(KubernetesRuntime { client, node_id, install, tasks: Arc::default(), next_claim: Default::default() })
    }
}

async fn delete_ignoring_absent<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes `name` when it is this install's ([`ownership`]), and only the object read (a uid precondition): what
/// another install, or anyone else, made under the revision's name stays.
async fn delete_if_ours<K>(api: &Api<K>, kind: &str, name: &str, install: &Install) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(existing) = api.get_opt(name).await? else { return Ok(()) };
    if let Ownership::NotOurs(why) = ownership(kind, name, Some(existing.labels()), install) {
        tracing::info!(%why, "not deleted");
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: existing.uid(), resource_version: None }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        // Gone meanwhile, or replaced by another object of the name (the precondition): not ours to delete.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

impl Runtime for KubernetesRuntime {
    fn kind(&self) -> ServingRuntime {
        ServingRuntime::Kubernetes
    }

    fn start(
        &self,
        spec: InstanceSpec,
        events: mpsc::Sender<InstanceEvent>,
    ) -> Result<Box<dyn Instance>, ServingError> {
        let containers = spec.object["spec"]["containers"].as_array().map(Vec::as_slice).unwrap_or_default();
        let image = containers
            .get(crate::revision::serving_index(containers))
            .and_then(|c| c["image"].as_str())
            .unwrap_or_default()
            .to_string();
        let refuse =
            |reason: String| ServingError::Spawn { revision: spec.revision.clone(), command: image.clone(), reason };
        // What cannot become a Deployment fails here, as a command that cannot start does locally.
        let deployment = revision_deployment(&spec.object, self.node_id, &self.install, 0).map_err(refuse)?;
        let service = revision_service(&spec.object, self.node_id, &self.install).map_err(refuse)?;
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let claim = self.next_claim.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let pod_set = Box::new(PodSet { deployment: deployment.clone(), service: service.clone() });
        let request = Request::Start { claim, instance: spec.id, events, run: spec.run, pod_set };
        let sender = match tasks.get(&spec.revision) {
            Some(sender) if !sender.is_closed() => sender.clone(),
            _ => {
                let (sender, requests) = mpsc::channel(POD_TASK_REQUESTS);
                let task = PodSetTask {
                    client: self.client.clone(),
                    key: spec.revision.clone(),
                    deployment,
                    service,
                    pod_selector: pod_selector(
                        spec.object["metadata"]["name"].as_str().unwrap_or_default(),
                        self.node_id,
                    ),
                    tasks: self.tasks.clone(),
                    install: self.install.clone(),
                    progress_deadline: spec.progress_deadline,
                    runs: Runs::default(),
                };
                tokio::spawn(task.run(requests, sender.clone()));
                tasks.insert(spec.revision.clone(), sender.clone());
                sender
            }
        };
        // Sent under the map's lock, so that a retiring task sees it (`PodSetTask::leave`); `start` cannot wait.
        sender.try_send(request).map_err(|e| match e {
            // No failure of the revision's: the start is tried again at its next turn, as when a node has no room.
            mpsc::error::TrySendError::Full(_) => ServingError::NoRoom {
                revision: spec.revision.clone(),
                reason: format!("the revision's pod task is behind ({POD_TASK_REQUESTS} requests wait)"),
            },
            mpsc::error::TrySendError::Closed(_) => refuse("the revision's pod task has stopped".into()),
        })?;
        Ok(Box::new(PodInstance { claim, requests: sender }))
    }

    fn retire(&self, revision: &str, run: u64) -> BoxFuture<'static, ()> {
        let sender = self.tasks.lock().unwrap_or_else(PoisonError::into_inner).get(revision).cloned();
        Box::pin(async move {
            let Some(sender) = sender else { return };
            let (done, retired) = oneshot::channel();
            // The request waits for room in a task of its own, so that it is never dropped; the caller waits for
            // room and the deletion within one limit, and a stalled API never holds the revision's stop (and the
            // node's shutdown) for longer. Waiters get room in turn, so it stays behind the run's stops.
            tokio::spawn(async move {
                let _ = sender.send(Request::Retire { run, done }).await;
            });
            if tokio::time::timeout(RETIRE_TIMEOUT, retired).await.is_err() {
                tracing::warn!("a revision's Deployment was not deleted in time; it goes when the node restarts");
            }
        })
    }
}

/// An instance: a claim on one pod of the revision's Deployment.
struct PodInstance {
    claim: ClaimId,
    requests: mpsc::Sender<Request>,
}

impl Instance for PodInstance {
    fn stop(&self, grace: Duration) -> BoxFuture<'static, ()> {
        let (done, stopped) = oneshot::channel();
        // Queued at once when there is room, as before the revision's next request (its retirement, which must
        // find the stop ahead of it); full, the stop waits for room.
        let waits_for_room = match self.requests.try_send(Request::Stop { claim: self.claim, done }) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(request)) => Some((self.requests.clone(), request)),
            // The task is gone, and the pod with it.
            Err(mpsc::error::TrySendError::Closed(_)) => return Box::pin(async {}),
        };
        let claim = self.claim;
        Box::pin(async move {
            // Full: the stop waits for room in a task of its own, never dropped (the pod would outlive its claim);
            // the caller's wait for it to be done keeps its one limit.
            if let Some((requests, request)) = waits_for_room {
                tokio::spawn(async move {
                    let _ = requests.send(request).await;
                });
            }
            if tokio::time::timeout(grace + STOP_SLACK, stopped).await.is_err() {
                tracing::warn!(claim, "the pod of a stopped instance is not gone after the grace period");
            }
        })
    }
}

/// One revision's pods for this node.
struct PodSetTask {
    client: Client,
    /// `namespace/revision`.
    key: String,
    deployment: Deployment,
    service: Service,
    pod_selector: String,
    tasks: Tasks,
    /// The node's install: what carries another's label is left alone ([`ownership`]).
    install: Install,
    /// An instance with no ready pod by then fails (`ProgressDeadlineExceeded`).
    progress_deadline: Duration,
    /// The runs of the revision that started instances here.
    runs: Runs,
}

/// What applying a revision's Service and Deployment came to.
#[derive(Debug, PartialEq, Eq)]
enum Ensured {
    Applied,
    /// A call failed: tried again at the next resync.
    Failed,
    /// One of them is another's ([`Ownership::NotOurs`]): left alone, looked at again at the next resync.
    NotOwned(String),
}

impl Ensured {
    /// Whether the Deployment is applied, and what the claims learn of its owner (nothing when a call failed).
    fn split(self) -> (bool, Option<Input>) {
        match self {
            Ensured::Applied => (true, Some(Input::NotOwned(None))),
            Ensured::Failed => (false, None),
            Ensured::NotOwned(why) => (false, Some(Input::NotOwned(Some(why)))),
        }
    }
}

/// What the task keeps besides the claims.
#[derive(Default)]
struct Waiting {
    /// Each claim's instance (as its revision run numbers it) and where its events go.
    events: HashMap<ClaimId, (InstanceId, mpsc::Sender<InstanceEvent>)>,
    stops: HashMap<ClaimId, Vec<oneshot::Sender<()>>>,
}

/// Hands an event to the revision's task without waiting: a revision that is stopping no longer reads its
/// events, and this task must not block on it (the rest of the revision's pods, and its retirement, wait here).
fn deliver(events: &mpsc::Sender<InstanceEvent>, event: InstanceEvent) {
    if let Err(mpsc::error::TrySendError::Full(event)) = events.try_send(event) {
        let events = events.clone();
        tokio::spawn(async move {
            let _ = events.send(event).await;
        });
    }
}

impl PodSetTask {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>, me: mpsc::Sender<Request>) {
        let namespace = self.deployment.namespace().unwrap_or_default();
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
        let services: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &namespace);
        let deployment_name = self.deployment.name_any();
        let service_name = self.service.name_any();
        let slice_selector = format!("kubernetes.io/service-name={service_name}");
        let mut slice_events =
            watcher(slices, watcher::Config::default().labels(&slice_selector)).default_backoff().boxed();
        let mut pod_events =
            watcher(pods.clone(), watcher::Config::default().labels(&self.pod_selector)).default_backoff().boxed();
        let mut slice_store = observe::Store::<EndpointSlice>::default();
        let mut pod_store = observe::Store::<Pod>::default();
        let clock = tokio::time::Instant::now();
        let now_ms = || u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut claims =
            Claims::with_progress_deadline(u64::try_from(self.progress_deadline.as_millis()).unwrap_or(u64::MAX));
        let mut waiting = Waiting::default();
        let (mut applied, mut owner_news) = self.ensure(&deployments, &services).await.split();
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            let input = tokio::select! {
                request = requests.recv() => match request {
                    Some(Request::Start { claim, instance, events, run, pod_set }) => {
                        // A later run may be a namesake made again (another image): its pods from now on. The
                        // pods of an earlier run still draining are replaced as the Deployment rolls, each given
                        // its termination grace period, as at any rollout.
                        if self.runs.start(run) == RunStart::Later
                            && (pod_set.deployment != self.deployment || pod_set.service != self.service)
                        {
                            let PodSet { deployment, service } = *pod_set;
                            self.deployment = deployment;
                            self.service = service;
                            (applied, owner_news) = self.ensure(&deployments, &services).await.split();
                        }
                        waiting.events.insert(claim, (instance, events));
                        Input::Start(claim)
                    }
                    Some(Request::Stop { claim, done }) => {
                        waiting.stops.entry(claim).or_default().push(done);
                        Input::Stop(claim)
                    }
                    Some(Request::Retire { run, done }) => {
                        // An earlier run's: the Deployment is its replacement's now.
                        if !self.runs.may_retire(run) || !claims.only_stopping() || !requests.is_empty() {
                            let _ = done.send(());
                            continue;
                        }
                        // Deleting the Deployment takes its pods, those still stopping too. Deleted first, then
                        // the task leaves the map: a start that comes meanwhile finds it and has it apply again.
                        for outcome in [
                            delete_if_ours(&deployments, "Deployment", &deployment_name, &self.install).await,
                            delete_if_ours(&services, "Service", &service_name, &self.install).await,
                        ] {
                            if let Err(e) = outcome {
                                tracing::warn!(revision = %self.key, error = %e, "deleting the revision's Deployment or Service failed; it goes when the node restarts");
                                metrics::counter!("sluice_kubernetes_runtime_errors_total", "call" => "delete").increment(1);
                            }
                        }
                        if self.leave(&me, &requests) {
                            tracing::info!(revision = %self.key, deployment = %deployment_name, "revision retired");
                            for done in waiting.stops.into_values().flatten() {
                                let _ = done.send(());
                            }
                            let _ = done.send(());
                            return;
                        }
                        (applied, owner_news) = self.ensure(&deployments, &services).await.split();
                        claims.step(Input::ScaleFailed);
                        let _ = done.send(());
                        Input::Resync
                    }
                    None => return,
                },
                event = slice_events.try_next() => match event {
                    Ok(Some(event)) => match slice_store.apply(event) {
                        true => Input::Endpoints(observe::endpoints(slice_store.objects())),
                        false => continue,
                    },
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(revision = %self.key, error = %e, "watching EndpointSlices failed");
                        continue;
                    }
                },
                event = pod_events.try_next() => match event {
                    Ok(Some(event)) => match pod_store.apply(event) {
                        true => Input::Problems(pod_store.objects().filter_map(observe::pod_problem).collect()),
                        false => continue,
                    },
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(revision = %self.key, error = %e, "watching pods failed");
                        continue;
                    }
                },
                _ = resync.tick() => {
                    if !applied {
                        (applied, owner_news) = self.ensure(&deployments, &services).await.split();
                    }
                    Input::Tick { now_ms: now_ms() }
                }
            };
            let mut commands = owner_news.take().map(|news| claims.step(news)).unwrap_or_default();
            commands.extend(claims.step(input));
            while !commands.is_empty() {
                let mut follow_ups = Vec::new();
                for command in commands {
                    if let Some(input) = self.carry_out(command, applied, &deployments, &pods, &mut waiting).await {
                        if input == Input::ScaleFailed {
                            applied = false;
                        }
                        follow_ups.extend(claims.step(input));
                    }
                }
                commands = follow_ups;
            }
        }
    }

    /// Applies the Service and the Deployment: at zero pods when it is new (the claims set the count), at the
    /// count it has when it exists (an apply must not change it, [`apply`]). The count read here is the one
    /// applied: only this task patches it, and not while it applies. Neither is applied when either of their
    /// names is another's (another install's, or no Sluice node's): a forced apply would take it over.
    async fn ensure(&self, deployments: &Api<Deployment>, services: &Api<Service>) -> Ensured {
        let outcome = async {
            let service_name = self.service.name_any();
            let deployment_name = self.deployment.name_any();
            let existing_service = services.get_opt(&service_name).await?;
            let existing = deployments.get_opt(&deployment_name).await?;
            for owner in [
                ownership("Service", &service_name, existing_service.as_ref().map(ResourceExt::labels), &self.install),
                ownership("Deployment", &deployment_name, existing.as_ref().map(ResourceExt::labels), &self.install),
            ] {
                if let Ownership::NotOurs(why) = owner {
                    return Ok(Some(why));
                }
            }
            apply_service(services, &self.service).await?;
            apply(deployments, &self.deployment, existing.as_ref()).await?;
            Ok::<_, kube::Error>(None)
        }
        .await;
        match outcome {
            Ok(None) => Ensured::Applied,
            Ok(Some(why)) => {
                tracing::warn!(revision = %self.key, %why, "the revision's Deployment or Service is not this node's; left alone");
                metrics::counter!("sluice_kubernetes_runtime_errors_total", "call" => "not_owned").increment(1);
                Ensured::NotOwned(why)
            }
            Err(e) => {
                tracing::warn!(revision = %self.key, error = %e, "applying the revision's Deployment failed");
                metrics::counter!("sluice_kubernetes_runtime_errors_total", "call" => "apply").increment(1);
                Ensured::Failed
            }
        }
    }

    /// Carries out one command; what it learns goes back to the claims.
    async fn carry_out(
        &self,
        command: Command,
        applied: bool,
        deployments: &Api<Deployment>,
        pods: &Api<Pod>,
        waiting: &mut Waiting,
    ) -> Option<Input> {
        match command {
            Command::Scale(replicas) => {
                let outcome = match applied {
                    true => scale(deployments, &self.deployment.name_any(), replicas).await.map_err(|e| e.to_string()),
                    false => Err("the Deployment is not applied yet".to_string()),
                };
                match outcome {
                    Ok(()) => {
                        tracing::info!(revision = %self.key, replicas, "scaled");
                        metrics::counter!("sluice_kubernetes_scale_patches_total").increment(1);
                        None
                    }
                    Err(error) => {
                        tracing::warn!(revision = %self.key, replicas, %error, "scaling the Deployment failed");
                        metrics::counter!("sluice_kubernetes_runtime_errors_total", "call" => "scale").increment(1);
                        Some(Input::ScaleFailed)
                    }
                }
            }
            Command::MarkForDeletion { pod } => {
                let mark = json!({"metadata": {"annotations": {POD_DELETION_COST: i32::MIN.to_string()}}});
                if let Err(e) = pods.patch(&pod, &PatchParams::default(), &Patch::Merge(mark)).await {
                    // The ReplicaSet may then take another pod; that instance reports an exit and is replaced.
                    tracing::warn!(revision = %self.key, %pod, error = %e, "marking the pod to delete failed");
                    metrics::counter!("sluice_kubernetes_runtime_errors_total", "call" => "mark").increment(1);
                }
                None
            }
            Command::Unmark { pod } => {
                let unmark = json!({"metadata": {"annotations": {POD_DELETION_COST: null}}});
                if let Err(e) = pods.patch(&pod, &PatchParams::default(), &Patch::Merge(unmark)).await {
                    // Its next stop marks it again; meanwhile a scale-down may take it first, and its instance
                    // reports an exit and is replaced.
                    tracing::warn!(revision = %self.key, %pod, error = %e, "unmarking the pod handed over failed");
                    metrics::counter!("sluice_kubernetes_runtime_errors_total", "call" => "unmark").increment(1);
                }
                None
            }
            Command::Ready { id: claim, addr } => {
                if let Some((id, events)) = waiting.events.get(&claim) {
                    tracing::info!(revision = %self.key, instance = id, %addr, "pod ready");
                    deliver(events, InstanceEvent::Ready { id: *id, addr });
                }
                None
            }
            Command::Exited { id: claim, reason, message } => {
                tracing::warn!(revision = %self.key, claim, %reason, %message, "pod lost");
                if let Some((id, events)) = waiting.events.remove(&claim) {
                    let event = InstanceEvent::Exited {
                        id,
                        code: None,
                        signal: None,
                        reason: Some(reason),
                        last_output: message,
                    };
                    deliver(&events, event);
                }
                for done in waiting.stops.remove(&claim).unwrap_or_default() {
                    let _ = done.send(());
                }
                None
            }
            Command::Stopped(claim) => {
                for done in waiting.stops.remove(&claim).unwrap_or_default() {
                    let _ = done.send(());
                }
                // As a process's exit after its SIGTERM: the revision task expects it, and forgets the instance.
                if let Some((id, events)) = waiting.events.remove(&claim) {
                    let event = InstanceEvent::Exited {
                        id,
                        code: None,
                        signal: None,
                        reason: Some("Stopped".into()),
                        last_output: String::new(),
                    };
                    deliver(&events, event);
                }
                None
            }
        }
    }

    /// Takes this task out of the runtime's map, unless a request reached it meanwhile (a start of the same
    /// revision: it then goes on). Starts take the map's lock to send, so none can come after; a stop or a
    /// retirement sent after finds the channel closed and is done at once.
    fn leave(&self, me: &mpsc::Sender<Request>, requests: &mpsc::Receiver<Request>) -> bool {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        if !requests.is_empty() {
            return false;
        }
        if tasks.get(&self.key).is_some_and(|sender| sender.same_channel(me)) {
            tasks.remove(&self.key);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::mock_api::{assert_no_request, mock_client, next_request, respond, respond_not_found};
    use crate::revision::{INSTALL_LABEL, NODE_LABEL};

    fn install() -> Install {
        Install::new("sluice-system.sluice").expect("a label value")
    }

    /// Regression: a node starting deleted every Deployment and Service labelled with its id, cluster-wide, so
    /// another install's node of the same id (every StatefulSet's pods are nodes 1, 2, 3, ...) lost its
    /// revisions' pods. The API server selects by labels: the selector names the install as well as the node.
    #[tokio::test]
    async fn a_node_starting_deletes_only_what_its_own_install_left_under_its_id() {
        let (client, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let selector = "serving.sluice.dev%2Fnode%3Dn2%2Cserving.sluice.dev%2Finstall%3Dsluice-system.sluice";
            let labels = json!({NODE_LABEL: "n2", INSTALL_LABEL: "sluice-system.sluice"});
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!((method, path), (Method::GET, format!("/apis/apps/v1/deployments?&labelSelector={selector}")));
            let left = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
                "name": "hello-00001-n2-deployment", "namespace": "apps", "labels": labels}});
            respond(send, &json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": [left]}));
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!(
                (method, path.as_str()),
                (Method::DELETE, "/apis/apps/v1/namespaces/apps/deployments/hello-00001-n2-deployment?")
            );
            respond(send, &left);
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!((method, path), (Method::GET, format!("/api/v1/services?&labelSelector={selector}")));
            let left = json!({"apiVersion": "v1", "kind": "Service", "metadata": {
                "name": "hello-00001-n2-private", "namespace": "apps", "labels": labels}});
            respond(send, &json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": [left]}));
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!(
                (method, path.as_str()),
                (Method::DELETE, "/api/v1/namespaces/apps/services/hello-00001-n2-private?")
            );
            // Gone meanwhile: nothing left to delete.
            respond_not_found(send);
        });
        let runtime = KubernetesRuntime::start(client, 2, install()).await.expect("started");
        assert_eq!(runtime.install, install(), "what it makes is labelled with the install it cleaned up for");
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("scenario finished").expect("scenario");
    }

    fn pod_set_task(client: Client) -> PodSetTask {
        let revision = json!({"metadata": {"name": "hello-00001", "namespace": "apps"},
                              "spec": {"containers": [{"image": "example/hello"}]}});
        PodSetTask {
            client,
            key: "apps/hello-00001".into(),
            deployment: revision_deployment(&revision, 2, &install(), 0).expect("deployment"),
            service: revision_service(&revision, 2, &install()).expect("service"),
            pod_selector: pod_selector("hello-00001", 2),
            tasks: Tasks::default(),
            install: install(),
            progress_deadline: Duration::from_secs(600),
            runs: Runs::default(),
        }
    }

    /// The task reads the Deployment before it applies it: a new one is created at zero (the claims set the
    /// count), an existing one is applied at the count it has, so that a revision at zero stays there (leaving
    /// the count out of the apply had the API server reset it to 1).
    #[tokio::test]
    async fn the_pod_task_creates_its_deployment_at_zero_and_applies_an_existing_one_at_its_count() {
        let (client, mut handle) = mock_client();
        let task = pod_set_task(client.clone());
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "apps");
        let services: Api<Service> = Api::namespaced(client, "apps");
        let deployment = serde_json::to_value(&task.deployment).expect("json");
        let service = serde_json::to_value(&task.service).expect("json");
        let server = tokio::spawn(async move {
            let deployment_path = "/apis/apps/v1/namespaces/apps/deployments/hello-00001-n2-deployment";
            let service_path = "/api/v1/namespaces/apps/services/hello-00001-n2-private";
            let as_sluice = "?&force=true&fieldManager=sluice";
            let mut applied = Vec::new();
            for existing in [None, Some(0), Some(3)] {
                let (method, path, _, send) = next_request(&mut handle).await;
                assert_eq!((method, path.as_str()), (Method::GET, service_path));
                match existing {
                    None => respond_not_found(send),
                    Some(_) => respond(send, &service),
                }
                let (method, path, _, send) = next_request(&mut handle).await;
                assert_eq!((method, path.as_str()), (Method::GET, deployment_path));
                match existing {
                    None => respond_not_found(send),
                    Some(replicas) => {
                        let mut found = deployment.clone();
                        found["spec"]["replicas"] = json!(replicas);
                        respond(send, &found);
                    }
                }
                let (method, path, _, send) = next_request(&mut handle).await;
                assert_eq!((method, path), (Method::PATCH, format!("{service_path}{as_sluice}")));
                respond(send, &service);
                let (method, path, body, send) = next_request(&mut handle).await;
                assert_eq!((method, path), (Method::PATCH, format!("{deployment_path}{as_sluice}")));
                applied.push(body["spec"]["replicas"].clone());
                respond(send, &deployment);
            }
            applied
        });
        for _ in 0..3 {
            assert_eq!(task.ensure(&deployments, &services).await, Ensured::Applied);
        }
        let applied =
            tokio::time::timeout(Duration::from_secs(5), server).await.expect("scenario finished").expect("scenario");
        assert_eq!(applied, [json!(0), json!(0), json!(3)], "created at zero, then applied at the count it had");
    }

    /// Two installs on one cluster ran a revision of one name in one namespace: the second's node applied
    /// (forced) over the first's Deployment, and retiring the revision deleted it. Now another's Deployment or
    /// Service is neither applied nor deleted: the claims learn why (`NotOwned`).
    #[tokio::test]
    async fn regression_another_installs_deployment_of_the_name_is_neither_applied_nor_deleted() {
        let (client, mut handle) = mock_client();
        let task = pod_set_task(client.clone());
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "apps");
        let services: Api<Service> = Api::namespaced(client, "apps");
        let mut theirs = serde_json::to_value(&task.deployment).expect("json");
        theirs["metadata"]["labels"][INSTALL_LABEL] = json!("other.sluice");
        theirs["metadata"]["uid"] = json!("their-uid");
        let mut service = serde_json::to_value(&task.service).expect("json");
        service["metadata"]["uid"] = json!("our-uid");
        let deployment_path = "/apis/apps/v1/namespaces/apps/deployments/hello-00001-n2-deployment";
        let service_path = "/api/v1/namespaces/apps/services/hello-00001-n2-private";
        let server = tokio::spawn(async move {
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!((method, path.as_str()), (Method::GET, service_path));
            respond(send, &service);
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!((method, path.as_str()), (Method::GET, deployment_path));
            respond(send, &theirs);
            // Retiring reads each and deletes only its own, the object it read.
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!((method, path.as_str()), (Method::GET, deployment_path));
            respond(send, &theirs);
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!((method, path.as_str()), (Method::GET, service_path));
            respond(send, &service);
            let (method, path, body, send) = next_request(&mut handle).await;
            assert_eq!((method, path.as_str()), (Method::DELETE, format!("{service_path}?").as_str()));
            assert_eq!(body["preconditions"]["uid"], json!("our-uid"), "{body}");
            respond(send, &service);
            assert_no_request(&mut handle).await;
        });
        let Ensured::NotOwned(why) = task.ensure(&deployments, &services).await else {
            panic!("another install's Deployment was applied over");
        };
        assert!(why.contains("\"hello-00001-n2-deployment\"") && why.contains("\"other.sluice\""), "{why}");
        for (api_kind, outcome) in [
            (
                "Deployment",
                delete_if_ours(&deployments, "Deployment", &task.deployment.name_any(), &task.install).await,
            ),
            ("Service", delete_if_ours(&services, "Service", &task.service.name_any(), &task.install).await),
        ] {
            outcome.unwrap_or_else(|e| panic!("{api_kind}: {e}"));
        }
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("scenario finished").expect("scenario");
    }
}
