//! The serving supervisor of one node: keeps the route table and the running revisions in line with the
//! objects, records what the runtime learns about each revision, and (on the metadata group's leader) writes
//! the children Services and Configurations own.
//!
//! What flows in: resource changes (the node's resource watch) and revision facts from the revision tasks.
//! What flows out: the [`RouteTable`] the HTTP router serves, revision tasks started and stopped ([`plan`]),
//! `RevisionState` objects, and child objects ([`children::plan`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_broker::{Node, ResourceKey};
use sluice_cloudevent::clock::now_ms;
use sluice_controller::serving::autoscaling::AutoscalerDefaults;
use sluice_controller::serving::gc::{self, GcSettings};
use sluice_controller::serving::routing::{revision_facts, route_table};
use sluice_controller::serving::{REVISION_STATE_KIND, SERVING_API_VERSION, children};
use tokio::sync::{mpsc, oneshot};

use crate::logs::LogHub;
use crate::plan::{plan, wanted_revisions};
use crate::revision::{Facts, RevisionEnv, RevisionRun, RunningRevision};
use crate::runtime::Runtime;
use crate::shared::Shared;

pub(crate) struct SupervisorSettings {
    pub(crate) domain: String,
    pub(crate) logs: Arc<LogHub>,
    pub(crate) autoscaler: AutoscalerDefaults,
    pub(crate) grace: Duration,
    pub(crate) progress_deadline: Duration,
}

/// Resource changes closer together than this are handled together.
const SETTLE: Duration = Duration::from_millis(20);

pub(crate) async fn run(
    node: Node,
    settings: SupervisorSettings,
    runtime: Arc<dyn Runtime>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let (facts_tx, mut facts_rx) = mpsc::unbounded_channel::<(String, String, Facts)>();
    let env = RevisionEnv {
        runtime,
        logs: settings.logs.clone(),
        grace: settings.grace,
        progress_deadline: settings.progress_deadline,
        facts: facts_tx,
        signals: shared.clone(),
    };
    let Some(mut changes) = node.watch_resources() else {
        tracing::error!("serving: the node has no resource watch");
        return;
    };
    let mut leadership = node.watch_leadership();
    let mut running: BTreeMap<String, RunningRevision> = BTreeMap::new();
    // Revisions taken off traffic, draining then stopping (up to their timeout plus the grace period each).
    let mut stopping = tokio::task::JoinSet::new();
    let mut reported: HashMap<String, String> = HashMap::new();
    loop {
        changes.borrow_and_update();
        leadership.borrow_and_update();
        reconcile(&node, &settings, &shared, &env, &mut running, &mut stopping, &mut reported).await;
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = stopping.join_next(), if !stopping.is_empty() => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                tokio::time::sleep(SETTLE).await;
            }
            // A node that becomes the metadata leader writes the children nobody wrote yet.
            _ = leadership.changed() => {}
            Some((namespace, name, facts)) = facts_rx.recv() => {
                record_facts(&node, &namespace, &name, &facts).await;
            }
        }
    }
    if let Ok(mut revisions) = shared.revisions.write() {
        revisions.clear();
    }
    let stops: Vec<_> = running.into_values().map(RunningRevision::stop).collect();
    futures::future::join_all(stops).await;
    // And those already stopping: their instances drain and get their SIGTERM too, not a SIGKILL at exit.
    while stopping.join_next().await.is_some() {}
}

fn objects(node: &Node) -> Vec<Value> {
    sluice_controller::model::world_kinds()
        .flat_map(|kind| node.resources(kind))
        .filter_map(|(_, json)| serde_json::from_str(&json).ok())
        .collect()
}

async fn reconcile(
    node: &Node,
    settings: &SupervisorSettings,
    shared: &Shared,
    env: &RevisionEnv,
    running: &mut BTreeMap<String, RunningRevision>,
    stops: &mut tokio::task::JoinSet<()>,
    reported: &mut HashMap<String, String>,
) {
    let mut objects = objects(node);
    if node.leads_metadata() && write_children(node, &objects).await {
        // Serve what was just written (Routes, Revisions) without waiting for the next change.
        objects = self::objects(node);
    }
    let table = route_table(&objects, &settings.domain);
    let (wanted, problems) = wanted_revisions(&objects, &table, &settings.autoscaler, env.runtime.kind());
    for (key, problem) in problems {
        if reported.get(&key) != Some(&problem) {
            tracing::warn!(revision = %key, %problem, "revision cannot run here");
            reported.insert(key, problem);
        }
    }
    let current: BTreeMap<String, RevisionRun> =
        running.iter().map(|(key, r)| (key.clone(), r.handle.run.clone())).collect();
    let plan = plan(&wanted, &current);
    let mut stopping = Vec::new();
    for key in &plan.stop {
        if let Some(revision) = running.remove(key) {
            stopping.push((key.clone(), revision));
        }
    }
    // New revisions first, then the table that routes to them, then old ones out: a request never finds a
    // route to a revision that is not there.
    for key in &plan.start {
        let Some(run) = wanted.get(key) else { continue };
        tracing::info!(revision = %key, "revision starts");
        let (namespace, name) = key.split_once('/').unwrap_or_default();
        let ready_before = revision_facts(&objects, namespace, name).ready;
        let revision = RunningRevision::start(run.clone(), ready_before, env.clone());
        if let Ok(mut revisions) = shared.revisions.write() {
            revisions.insert(key.clone(), revision.handle.clone());
        }
        running.insert(key.clone(), revision);
    }
    if let Ok(mut current) = shared.table.write() {
        *current = Arc::new(table);
    }
    for (key, revision) in stopping {
        if let Ok(mut revisions) = shared.revisions.write()
            && !running.contains_key(&key)
        {
            revisions.remove(&key);
        }
        tracing::info!(revision = %key, "revision stops");
        // Draining takes up to the revision's timeout: not on the reconcile path.
        stops.spawn(revision.stop());
    }
    metrics::gauge!("sluice_serving_revisions").set(running.len() as f64);
}

/// Writes what Services and Configurations own, and deletes what lost its owner. Only the metadata leader
/// does, so two nodes never race to create the same Revision; a failed write is made again on the next change.
/// Answers whether it wrote anything.
async fn write_children(node: &Node, objects: &[Value]) -> bool {
    let mut plan = children::plan(objects);
    // Old revisions nothing routes to, by Knative's garbage-collection defaults.
    let table = route_table(objects, sluice_controller::serving::DEFAULT_DOMAIN);
    for (namespace, name) in gc::collect(objects, &table, now_ms(), &GcSettings::default()) {
        tracing::info!(%namespace, revision = %name, "old revision collected");
        plan.delete.push(("Revision".into(), namespace, name));
    }
    let wrote = !plan.put.is_empty() || !plan.delete.is_empty();
    for child in plan.put {
        let name = child.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let kind = child.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let record = match sluice_broker::resource_record(&child.to_string(), node) {
            Ok(record) => record,
            Err(status) => {
                tracing::warn!(%kind, %name, error = %status.message(), "child refused");
                continue;
            }
        };
        match node.put_resource(record).await {
            Ok(outcome) => tracing::info!(%kind, %name, %outcome, "child written"),
            Err(e) => tracing::warn!(%kind, %name, error = %e, "child not written"),
        }
    }
    for (kind, namespace, name) in plan.delete {
        tracing::info!(%kind, %namespace, %name, "owner gone: deleting");
        if let Err(e) = node.delete_resource(ResourceKey { kind, namespace, name }).await {
            tracing::warn!(error = %e, "orphan not deleted");
        }
    }
    wrote
}

/// Records a revision's facts as its `RevisionState` (read by its status and by the Configuration's).
async fn record_facts(node: &Node, namespace: &str, name: &str, facts: &Facts) {
    let (reason, message) = facts.failure.clone().unwrap_or_default();
    // Ready once, ready for good (Knative's Revision stays Ready at zero and across restarts of its runner).
    let key = ResourceKey { kind: REVISION_STATE_KIND.into(), namespace: namespace.into(), name: name.into() };
    let stored: Option<Value> = node.resource(&key).and_then(|json| serde_json::from_str(&json).ok());
    let was_ready = stored.as_ref().and_then(|s| s.pointer("/spec/ready")).and_then(Value::as_bool).unwrap_or(false);
    let object = json!({
        "apiVersion": SERVING_API_VERSION, "kind": REVISION_STATE_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ready": facts.ready || was_ready, "failureReason": reason, "failureMessage": message, "instances": facts.instances},
    });
    if let Err(e) = node.put_internal_object(&object).await {
        tracing::warn!(revision = %name, error = %e, "revision facts not recorded");
    }
}
