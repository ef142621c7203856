//! The controller, in kube-rs controller-rs's shape: a [`Context`], `reconcile` and `error_policy` per kind,
//! and [`run`]. What flows in: watch events of Brokers (class `Sluice` only), their Triggers, Channels,
//! Subscriptions and EventPolicies (and the serving kinds). What flows out: each object pushed into the Sluice
//! cluster ([`SluiceApi`]), its status patched back (`status` subresource), a finalizer that holds the object
//! until Sluice has forgotten it, and a Warning Event for each failure (which is then retried with backoff).
//!
//! The decisions are [`crate::reconcile`]'s; this module fetches what they need and applies what they say.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::crd::{
    Broker, Channel, Configuration, EventPolicy, InMemoryChannel, KnativeService, KnativeStatus, Route, Subscription,
    Trigger,
};
use crate::error::Error;
use crate::reconcile::{
    ClusterAddressing, FINALIZER, TriggerPlan, desired_sluice_object, is_core_service_ref, is_sluice_broker,
    keeping_address, plan_trigger, refused_status, resolve_core_service, status_for_kubernetes, status_patch,
    unresolved_status,
};
use crate::sluice_api::SluiceApi;

#[cfg(test)]
mod tests;

/// How the controller is set up (`sluice kube-controller`'s flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The class a Broker without the class annotation has.
    pub default_broker_class: String,
    pub addressing: ClusterAddressing,
    /// The cluster's DNS domain, for core Services' URLs.
    pub cluster_domain: String,
    /// How often an object that is Ready is read back from Sluice (its status can change without a
    /// Kubernetes event: a subscriber that stops resolving, a partition without a leader).
    pub resync_ready: Duration,
    /// The same for an object that is not Ready yet.
    pub resync_not_ready: Duration,
    /// Also push Knative Serving's Services, Configurations and Routes (where Knative Serving is not installed
    /// to serve them itself).
    pub serve_knative_serving: bool,
    /// Knative Eventing runs in the cluster too: its Channels, InMemoryChannels and their Subscriptions are
    /// left to it, and an EventPolicy is Sluice's only if it may apply to a Sluice Broker ([`policy_is_ours`]).
    pub beside_knative_eventing: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_broker_class: crate::reconcile::SLUICE_BROKER_CLASS.into(),
            addressing: ClusterAddressing { ingress_host: "sluice-ingress.sluice-system.svc.cluster.local".into() },
            cluster_domain: "cluster.local".into(),
            resync_ready: Duration::from_secs(300),
            resync_not_ready: Duration::from_secs(2),
            serve_knative_serving: false,
            beside_knative_eventing: false,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub sluice: Arc<dyn SluiceApi>,
    pub settings: Settings,
    recorder: Recorder,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Consecutive reconciles per object that found it not Ready, for [`not_ready_requeue`].
    not_ready: Mutex<HashMap<String, u32>>,
    /// The namespaces whose EventPolicies just changed in Sluice: the Brokers and Channels there are reconciled
    /// at once, since their status (`EventPoliciesReady`, `status.policies`) follows from the policies.
    policy_changes: broadcast::Sender<String>,
}

impl Context {
    pub fn new(client: Client, sluice: Arc<dyn SluiceApi>, settings: Settings, reporter: Reporter) -> Arc<Context> {
        let recorder = Recorder::new(client.clone(), reporter);
        Arc::new(Context {
            client,
            sluice,
            settings,
            recorder,
            failures: Mutex::default(),
            not_ready: Mutex::default(),
            policy_changes: broadcast::channel(POLICY_CHANGES_QUEUED).0,
        })
    }

    /// The requeue of an object found Ready (or not) now, counting its not-Ready reconciles in a row.
    fn requeue_after(&self, key: String, ready: bool) -> Action {
        let Ok(mut not_ready) = self.not_ready.lock() else { return Action::requeue(self.settings.resync_not_ready) };
        if ready {
            not_ready.remove(&key);
            return Action::requeue(self.settings.resync_ready);
        }
        // As `failures` (in `error_policy`): a bound for the entries of objects gone without a last reconcile.
        if not_ready.len() >= MAX_COUNTED_OBJECTS && !not_ready.contains_key(&key) {
            not_ready.clear();
        }
        let times = not_ready.entry(key).or_insert(0);
        *times = times.saturating_add(1);
        Action::requeue(not_ready_requeue(self.settings.resync_not_ready, *times))
    }
}

/// Policy changes a target kind's controller may fall behind by; one that falls further behind reconciles all its
/// objects once instead.
const POLICY_CHANGES_QUEUED: usize = 256;

/// The most objects whose failures (or not-Ready reconciles) in a row are counted at once.
const MAX_COUNTED_OBJECTS: usize = 100_000;

/// The wait before the next attempt after `failures` failures in a row: 1 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let seconds = 1u64.checked_shl(failures.saturating_sub(1)).unwrap_or(u64::MAX).min(300);
    Duration::from_secs(seconds)
}

/// When an object not Ready for `times` reconciles in a row is read again: `first` (2 s), doubling to a minute.
/// What it waits for may have no watch here (a subscriber's Service, a sink in another system), so it is polled,
/// but not every 2 s for ever; what has a watch (a Trigger's Broker) wakes it at once anyway.
pub fn not_ready_requeue(first: Duration, times: u32) -> Duration {
    let factor = 1u32.checked_shl(times.saturating_sub(1)).unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(Duration::from_secs(60)).max(first)
}

/// The kinds the controller pushes into Sluice.
pub trait Pushed:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}
impl Pushed for Broker {}
impl Pushed for Trigger {}
impl Pushed for Channel {}
impl Pushed for InMemoryChannel {}
impl Pushed for Subscription {}
impl Pushed for EventPolicy {}
impl Pushed for KnativeService {}
impl Pushed for Configuration {}
impl Pushed for Route {}

/// Whether an object is Sluice's to serve.
enum Ownership {
    Ours,
    /// Another implementation's (an MT-class Broker, a Trigger on one): left alone.
    NotOurs,
}

fn object_key<K: Pushed>(object: &K) -> String {
    format!("{}/{}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any())
}

/// Reconciles one object of kind `K`: the entry point [`run`] gives the kube `Controller`.
pub async fn reconcile<K: Pushed>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let kind = K::kind(&()).to_string();
    let started = Instant::now();
    metrics::counter!("sluice_kube_reconciles_total", "kind" => kind.clone()).increment(1);
    let result = reconcile_inner(object.clone(), &ctx).await;
    metrics::histogram!("sluice_kube_reconcile_seconds", "kind" => kind.clone())
        .record(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => {
            if let Ok(mut failures) = ctx.failures.lock() {
                failures.remove(&object_key(&*object));
            }
        }
        Err(error) => {
            metrics::counter!("sluice_kube_reconcile_errors_total", "kind" => kind, "error" => error.metric_label())
                .increment(1);
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: error.metric_label().into(),
                note: Some(error.to_string()),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
                tracing::warn!(object = %object_key(&*object), error = %e, "could not record a Kubernetes Event");
            }
        }
    }
    result
}

/// After a failed reconcile: try again after a backoff that grows with the failures in a row.
pub fn error_policy<K: Pushed>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx
        .failures
        .lock()
        .map(|mut failures| {
            // An object deleted while it failed, before it had our finalizer, is never reconciled again, and its
            // count would stay: the map is emptied when it reaches its bound (the backoffs start again).
            if failures.len() >= MAX_COUNTED_OBJECTS {
                failures.clear();
            }
            let count = failures.entry(object_key(&*object)).or_insert(0);
            *count = count.saturating_add(1);
            *count
        })
        .unwrap_or(1);
    let wait = backoff(failures);
    tracing::warn!(object = %object_key(&*object), error = %error, failures, retry_in_ms = wait.as_millis() as u64, "reconcile failed");
    Action::requeue(wait)
}

async fn reconcile_inner<K: Pushed>(object: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let kind = K::kind(&()).to_string();
    let namespace = object.namespace().ok_or_else(|| Error::IllegalObject { kind: kind.clone() })?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Ownership::NotOurs = ownership(&*object, ctx).await? {
        // Not counted any more: the maps hold the objects this controller pushes.
        if let Ok(mut not_ready) = ctx.not_ready.lock() {
            not_ready.remove(&object_key(&*object));
        }
        if object.finalizers().iter().any(|f| f == FINALIZER) {
            // It was ours (its Broker's class changed): Sluice forgets it, then our finalizer goes.
            ctx.sluice.delete(&kind, &namespace, &object.name_any()).await?;
            policy_changed(ctx, &kind, &namespace);
            remove_finalizer(&api, &*object).await?;
        }
        return Ok(Action::await_change());
    }
    finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalized::Apply(object) => push(&api, &*object, ctx).await,
            Finalized::Cleanup(object) => {
                ctx.sluice.delete(&kind, &namespace, &object.name_any()).await?;
                policy_changed(ctx, &kind, &namespace);
                // Gone: nothing is counted for it any more (the maps hold live objects only).
                if let Ok(mut not_ready) = ctx.not_ready.lock() {
                    not_ready.remove(&object_key(&*object));
                }
                tracing::info!(object = %object_key(&*object), "removed from Sluice");
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn ownership<K: Pushed>(object: &K, ctx: &Context) -> Result<Ownership, Error> {
    let default_class = ctx.settings.default_broker_class.as_str();
    match K::kind(&()).as_ref() {
        "Broker" => {
            Ok(if is_sluice_broker(object.annotations(), default_class) { Ownership::Ours } else { Ownership::NotOurs })
        }
        "Trigger" => {
            let value = serde_json::to_value(object).map_err(|e| bad_object(object, e))?;
            let broker_name = sluice_controller::model::trigger_broker(&value);
            if broker_name.is_empty() {
                // Not a Trigger any class could serve: Sluice refuses it, naming the field, and its status says
                // so. (Looking an empty name up fails in the client before any request, and that failure was
                // retried with backoff for good, the Trigger never told why.)
                return Ok(Ownership::Ours);
            }
            let broker_namespace = trigger_broker_namespace(&value, object);
            let brokers: Api<Broker> = Api::namespaced(ctx.client.clone(), &broker_namespace);
            let broker = brokers.get_opt(broker_name).await?;
            Ok(match plan_trigger(broker.as_ref().map(|b| b.annotations()), default_class) {
                TriggerPlan::Push | TriggerPlan::BrokerMissing => Ownership::Ours,
                TriggerPlan::NotOurs => Ownership::NotOurs,
            })
        }
        "Channel" | "InMemoryChannel" | "Subscription" if ctx.settings.beside_knative_eventing => {
            Ok(Ownership::NotOurs)
        }
        "EventPolicy" if ctx.settings.beside_knative_eventing => {
            let value = serde_json::to_value(object).map_err(|e| bad_object(object, e))?;
            let brokers: Api<Broker> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
            let named = match policy_brokers(&value) {
                PolicyTargets::Any => return Ok(Ownership::Ours),
                PolicyTargets::Brokers(named) => named,
            };
            for name in named {
                if brokers.get_opt(&name).await?.is_some_and(|b| is_sluice_broker(b.annotations(), default_class)) {
                    return Ok(Ownership::Ours);
                }
            }
            Ok(Ownership::NotOurs)
        }
        _ => Ok(Ownership::Ours),
    }
}

/// What an EventPolicy may apply to, as far as its ownership beside Knative Eventing goes.
#[derive(Debug, PartialEq)]
enum PolicyTargets {
    /// Maybe a Sluice Broker, whatever the classes: no `to` (every target of its namespace) or a selector.
    Any,
    /// The Brokers it names by `ref`; their classes decide (naming only Channels, none).
    Brokers(Vec<String>),
}

/// A policy that may apply to a Sluice Broker is Sluice's (it must be enforced there, and a namespace-wide one
/// is then Knative's too: both write its status, docs/kubernetes.md); one naming only Channels or other
/// classes' Brokers is Knative's.
fn policy_brokers(policy: &Value) -> PolicyTargets {
    let targets = policy.pointer("/spec/to").and_then(Value::as_array).cloned().unwrap_or_default();
    if targets.is_empty() || targets.iter().any(|to| to.get("selector").is_some_and(|s| !s.is_null())) {
        return PolicyTargets::Any;
    }
    PolicyTargets::Brokers(
        targets
            .iter()
            .filter(|to| to.pointer("/ref/kind").and_then(Value::as_str) == Some("Broker"))
            .filter_map(|to| to.pointer("/ref/name").and_then(Value::as_str).filter(|n| !n.is_empty()))
            .map(str::to_string)
            .collect(),
    )
}

/// The namespace of a Trigger's Broker: `brokerRef.namespace` when set (Sluice refuses one other than the
/// Trigger's own, but whether the Trigger is Sluice's at all is the class of the Broker it names), else the
/// Trigger's.
fn trigger_broker_namespace<K: Pushed>(value: &Value, object: &K) -> String {
    match value.pointer("/spec/brokerRef/namespace").and_then(Value::as_str) {
        Some(namespace) if !namespace.is_empty() => namespace.to_string(),
        _ => object.namespace().unwrap_or_default(),
    }
}

fn bad_object<K: Pushed>(object: &K, error: serde_json::Error) -> Error {
    Error::SluiceBadReply { admin: "-".into(), reason: format!("{} does not serialise: {error}", object_key(object)) }
}

/// How soon an object is read again when the node read after its push had not applied it yet.
const STALE_READ_AGAIN: Duration = Duration::from_secs(1);

/// Pushes the object into Sluice and writes the status Sluice derives for it back to Kubernetes.
async fn push<K: Pushed>(api: &Api<K>, object: &K, ctx: &Context) -> Result<Action, Error> {
    let kind = K::kind(&()).to_string();
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let generation = object.meta().generation;
    let value = serde_json::to_value(object).map_err(|e| bad_object(object, e))?;
    let mut desired = desired_sluice_object(&value);
    if let Err((pointer, message)) = resolve_core_services(&mut desired, &namespace, ctx).await? {
        let refused = keeping_address(unresolved_status(&kind, generation, pointer, &message), &value["status"]);
        patch_status(api, &name, &value["status"], &refused).await?;
        return Ok(ctx.requeue_after(object_key(object), false));
    }
    // A resync of an object not yet ready that Sluice already has as it is reads it only: an apply is a Raft
    // write, even when it changes nothing, and such objects are resynced every few seconds. A Ready one is
    // applied (every few minutes): the node read may lag the cluster (a change and its undoing, both through
    // Sluice, the read seeing the first), and a Ready answer would leave that unnoticed until the next resync.
    let stored = ctx.sluice.get(&kind, &namespace, &name).await?;
    let stored = match stored {
        Some(stored)
            if sluice_controller::meta::apply_changes_nothing(&stored, &desired)
                && !condition_true(&stored, "Ready") =>
        {
            stored
        }
        stored => {
            let changed =
                !stored.is_some_and(|stored| sluice_controller::meta::apply_changes_nothing(&stored, &desired));
            if let Err(refusal) = ctx.sluice.apply(&desired).await? {
                let refused =
                    keeping_address(refused_status(generation, "SluiceRefused", &refusal.message), &value["status"]);
                patch_status(api, &name, &value["status"], &refused).await?;
                // Refused until the object changes: a new generation is a new watch event.
                return Ok(Action::await_change());
            }
            if changed {
                policy_changed(ctx, &kind, &namespace);
            }
            let read = ctx.sluice.get(&kind, &namespace, &name).await?.unwrap_or(Value::Null);
            if !sluice_controller::meta::apply_changes_nothing(&read, &desired) {
                // The node read has not applied the write yet (a write forwarded to the leader returns once the
                // leader applied it): its status is the earlier spec's. Written now, it would carry this
                // generation with conditions of the one before (`kubectl wait` passing on a stale Ready). Read
                // again shortly, keeping the status as it is. Regression: it was written.
                return Ok(Action::requeue(STALE_READ_AGAIN));
            }
            read
        }
    };
    let status =
        status_for_kubernetes(&stored["status"], &kind, &namespace, &name, generation, &ctx.settings.addressing);
    let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    patch_status(api, &name, &value["status"], &status).await?;
    tracing::debug!(object = %format!("{kind}/{namespace}/{name}"), ready, "pushed to Sluice");
    Ok(ctx.requeue_after(object_key(object), ready))
}

/// After an EventPolicy changed in Sluice (pushed with a difference, or deleted): the Brokers and Channels of its
/// namespace are reconciled, after the change, so that their status on Kubernetes shows it now rather than at
/// their next resync (up to 5 min). All of the namespace's: the targets the policy had before the change count as
/// much as those it has now, and only Sluice knows both.
fn policy_changed(ctx: &Context, kind: &str, namespace: &str) {
    if kind == "EventPolicy" {
        // No receiver (no target controller running, as in the scenario tests) is not a failure.
        let _ = ctx.policy_changes.send(namespace.to_string());
        metrics::counter!("sluice_kube_policy_changes_total").increment(1);
    }
}

/// The objects of `store` to reconcile for each namespace `changes` names; every object when changes were missed
/// (the receiver fell more than [`POLICY_CHANGES_QUEUED`] behind). Ends when the sender is gone.
pub(crate) fn policy_targets<K: Pushed>(
    changes: broadcast::Receiver<String>,
    store: Store<K>,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
    futures::stream::unfold(changes, move |mut changes| {
        let store = store.clone();
        async move {
            let namespace = match changes.recv().await {
                Ok(namespace) => Some(namespace),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, kind = %K::kind(&()), "policy changes missed: reconciling every object");
                    None
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let targets: Vec<ObjectRef<K>> = store
                .state()
                .iter()
                .filter(|object| namespace.is_none() || object.namespace() == namespace)
                .map(|object| ObjectRef::from_obj(&**object))
                .collect();
            Some((futures::stream::iter(targets), changes))
        }
    })
    .flatten()
}

/// Whether a stored object's `status.conditions` hold `kind` as `True`.
fn condition_true(object: &Value, kind: &str) -> bool {
    object["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| conditions.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

/// Replaces every Destination that refers to a core `v1` Service by its URL (Sluice sees no core Services).
/// `Ok(Err((pointer, message)))`: the destination at `pointer` does not resolve.
async fn resolve_core_services(
    desired: &mut Value,
    namespace: &str,
    ctx: &Context,
) -> Result<Result<(), (&'static str, String)>, Error> {
    for pointer in ["/spec/subscriber", "/spec/reply", "/spec/delivery/deadLetterSink"] {
        let Some(destination) = desired.pointer(pointer).filter(|d| is_core_service_ref(d)).cloned() else {
            continue;
        };
        let service_namespace = destination["ref"]["namespace"].as_str().unwrap_or(namespace).to_string();
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), &service_namespace);
        let name = destination["ref"]["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            // Refused, as Sluice would refuse it; looked up, it failed in the client and was retried for good.
            return Ok(Err((pointer, format!("{pointer}.ref.name: a Service's name is required"))));
        }
        let Some(service) = services.get_opt(name).await? else {
            return Ok(Err((pointer, format!("{pointer}: Service {service_namespace}/{name} does not exist"))));
        };
        let ports: Vec<i32> = service.spec.and_then(|s| s.ports).unwrap_or_default().iter().map(|p| p.port).collect();
        match resolve_core_service(&destination, namespace, &ports, &ctx.settings.cluster_domain) {
            Ok(resolved) => {
                if let Some(slot) = desired.pointer_mut(pointer) {
                    *slot = resolved;
                }
            }
            Err(message) => return Ok(Err((pointer, format!("{pointer}: {message}")))),
        }
    }
    Ok(Ok(()))
}

/// Writes `status` over `current`, clearing what it no longer has ([`status_patch`]).
async fn patch_status<K: Pushed>(
    api: &Api<K>,
    name: &str,
    current: &Value,
    status: &KnativeStatus,
) -> Result<(), Error> {
    let patch = status_patch(current, status);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": patch }))).await?;
    Ok(())
}

async fn remove_finalizer<K: Pushed>(api: &Api<K>, object: &K) -> Result<(), Error> {
    let Some(index) = object.finalizers().iter().position(|f| f == FINALIZER) else { return Ok(()) };
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path },
    ]))
    .map_err(|e| bad_object(object, e))?;
    api.patch(&object.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await?;
    Ok(())
}

/// Removes the members of the Sluice cluster whose pods the StatefulSet `name` no longer wants and that are
/// gone (a pod that died instead of running its preStop leaves its member behind; one still stopping leaves
/// by itself; one stuck terminating past its grace period, on a lost node, counts as gone). Returns the node
/// ids removed.
pub async fn tidy_members(ctx: &Context, namespace: &str, name: &str) -> Result<Vec<u64>, Error> {
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(set) = sets.get_opt(name).await? else { return Ok(Vec::new()) };
    let Some(spec) = set.spec else { return Ok(Vec::new()) };
    let Some(replicas) = spec.replicas.and_then(|r| u32::try_from(r).ok()) else { return Ok(Vec::new()) };
    let selector = spec
        .selector
        .match_labels
        .unwrap_or_default()
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let now_ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    let pods_present: Vec<u32> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter(|pod| {
            let started_ms = pod.metadata.deletion_timestamp.as_ref().map(|t| t.0.as_millisecond());
            crate::bootstrap::pod_still_there(started_ms, pod.metadata.deletion_grace_period_seconds, now_ms)
        })
        .filter_map(|pod| crate::bootstrap::PodIdentity::from_hostname(&pod.name_any()).ok())
        .filter(|pod| pod.set == name)
        .map(|pod| pod.ordinal)
        .collect();
    let members = ctx.sluice.members().await?;
    let mut removed = Vec::new();
    for node_id in crate::bootstrap::members_to_remove(&members, replicas, &pods_present) {
        ctx.sluice.remove_member(node_id).await?;
        tracing::info!(node_id, replicas, statefulset = %name, "removed a member the StatefulSet no longer has");
        metrics::counter!("sluice_kube_members_removed_total").increment(1);
        removed.push(node_id);
    }
    Ok(removed)
}

/// Runs the controller of one kind until a shutdown signal.
async fn control<K: Pushed>(ctx: Arc<Context>) {
    Controller::new(Api::<K>::all(ctx.client.clone()), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The controller of a kind EventPolicies apply to (Brokers, Channels): it also reconciles the objects of a
/// namespace whose policies changed.
async fn control_policy_target<K: Pushed>(ctx: Arc<Context>) {
    let changes = ctx.policy_changes.subscribe();
    let controller = Controller::new(Api::<K>::all(ctx.client.clone()), watcher::Config::default());
    let targets = policy_targets(changes, controller.store());
    controller
        .reconcile_on(targets)
        .shutdown_on_signal()
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The Triggers' controller, which also reconciles a Broker's Triggers when the Broker changes (created
/// after them, its class changed, deleted), rather than at their next resync.
async fn control_triggers(ctx: Arc<Context>) {
    let controller = Controller::new(Api::<Trigger>::all(ctx.client.clone()), watcher::Config::default());
    let triggers = controller.store();
    controller
        .watches(Api::<Broker>::all(ctx.client.clone()), watcher::Config::default(), move |broker: Broker| {
            let namespace = broker.namespace();
            let name = broker.name_any();
            triggers
                .state()
                .into_iter()
                .filter(|trigger| {
                    let broker_namespace = match trigger.spec.0.broker_ref.as_ref().and_then(|r| r.namespace.as_deref())
                    {
                        Some(namespace) if !namespace.is_empty() => Some(namespace.to_string()),
                        _ => trigger.namespace(),
                    };
                    broker_namespace == namespace && trigger.spec.0.broker_name() == name
                })
                .map(|trigger| ObjectRef::from_obj(&*trigger))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile::<Trigger>, error_policy::<Trigger>, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The EventPolicies' controller. Beside Knative Eventing a policy is Sluice's only when it may apply to a
/// Sluice-class Broker, so it also reconciles a namespace's policies that may apply to a Broker when that Broker
/// changes (created after them, its class changed, deleted and made again). Regression: a policy applied before
/// its Broker was judged not Sluice's and never looked at again, and the Broker took events from every sender
/// of the namespace.
async fn control_policies(ctx: Arc<Context>) {
    let controller = Controller::new(Api::<EventPolicy>::all(ctx.client.clone()), watcher::Config::default());
    let policies = controller.store();
    let beside_knative_eventing = ctx.settings.beside_knative_eventing;
    controller
        .watches(Api::<Broker>::all(ctx.client.clone()), watcher::Config::default(), move |broker: Broker| {
            if !beside_knative_eventing {
                // Every policy is Sluice's: a Broker's change does not change that.
                return Vec::new();
            }
            let namespace = broker.namespace();
            let name = broker.name_any();
            policies
                .state()
                .into_iter()
                .filter(|policy| policy.namespace() == namespace)
                .filter(|policy| {
                    serde_json::to_value(&**policy).is_ok_and(|value| match policy_brokers(&value) {
                        PolicyTargets::Any => true,
                        PolicyTargets::Brokers(named) => named.contains(&name),
                    })
                })
                .map(|policy| ObjectRef::from_obj(&*policy))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile::<EventPolicy>, error_policy::<EventPolicy>, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// Runs the controllers for every pushed kind until a shutdown signal.
pub async fn run(ctx: Arc<Context>) {
    let eventing = futures::future::join(
        futures::future::join5(
            control_policy_target::<Broker>(ctx.clone()),
            control_triggers(ctx.clone()),
            control_policy_target::<Channel>(ctx.clone()),
            control::<Subscription>(ctx.clone()),
            control_policies(ctx.clone()),
        ),
        // Knative's InMemoryChannel (its CRD is shipped): Sluice serves it, durably.
        control_policy_target::<InMemoryChannel>(ctx.clone()),
    );
    if ctx.settings.serve_knative_serving {
        let serving = futures::future::join3(
            control::<KnativeService>(ctx.clone()),
            control::<Configuration>(ctx.clone()),
            control::<Route>(ctx),
        );
        futures::future::join(eventing, serving).await;
    } else {
        eventing.await;
    }
}
