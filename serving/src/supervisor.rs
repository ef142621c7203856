//! The serving supervisor of one node: keeps the route table and the running revisions in line with the
//! objects, records what the runtime learns about each revision, and (on the metadata group's leader) writes
//! the children Services and Configurations own.
//!
//! What flows in: resource changes (the node's resource watch) and revision facts from the revision tasks
//! (through the [`FactsOutbox`], which keeps only each revision's latest).
//! What flows out: the [`RouteTable`] the HTTP router serves, revision tasks started and stopped ([`plan`]),
//! `RevisionState` objects, and child objects ([`children::plan`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_broker::{Node, ResourceKey};
use sluice_cloudevent::clock::now_ms;
use sluice_controller::serving::autoscaling::AutoscalerDefaults;
use sluice_controller::serving::gc::{self, GcSettings};
use sluice_controller::serving::routing::{revision_facts, route_table};
use sluice_controller::serving::{REVISION_STATE_KIND, children};
use tokio::sync::oneshot;

use crate::facts::{self, Change, FactsOutbox, FactsUpdate};
use crate::logs::LogHub;
use crate::plan::{Wanted, plan, wanted_revisions};
use crate::revision::{RevisionEnv, RevisionRun, RunningRevision};
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
/// How long a stopping node tries to record its revisions' last facts.
const LAST_FACTS_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn run(
    node: Node,
    settings: SupervisorSettings,
    runtime: Arc<dyn Runtime>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let outbox = Arc::new(FactsOutbox::default());
    let env = RevisionEnv {
        runtime,
        logs: settings.logs.clone(),
        grace: settings.grace,
        progress_deadline: settings.progress_deadline,
        facts: outbox.clone(),
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
    // Facts recorded alone do not need the objects looked at again (their write, a resource change, does).
    let mut needs_reconcile = true;
    let mut swept = false;
    loop {
        if needs_reconcile {
            changes.borrow_and_update();
            leadership.borrow_and_update();
            reconcile(&node, &settings, &shared, &env, &mut running, &mut stopping, &mut reported).await;
            if !swept {
                swept = true;
                forget_revisions_not_run(&node, &running).await;
            }
        }
        needs_reconcile = true;
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
            _ = outbox.wait() => {
                needs_reconcile = false;
                for update in outbox.take() {
                    record_facts(&node, &running, &update).await;
                }
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
    // Their last facts take this node's entries out, unless the metadata group is gone too (then the next start
    // forgets them).
    let none_running = BTreeMap::new();
    let last_facts = async {
        for update in outbox.take() {
            record_facts(&node, &none_running, &update).await;
        }
    };
    if tokio::time::timeout(LAST_FACTS_TIMEOUT, last_facts).await.is_err() {
        tracing::warn!("serving: the revisions' last facts were not all recorded before the node stopped");
    }
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
    let Wanted { runs: wanted, reachable, problems } =
        wanted_revisions(&objects, &table, &settings.autoscaler, env.runtime.kind());
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
        let revision = RunningRevision::start(run.clone(), ready_before, reachable.contains(key), env.clone());
        if let Ok(mut revisions) = shared.revisions.write() {
            revisions.insert(key.clone(), revision.handle.clone());
        }
        running.insert(key.clone(), revision);
    }
    // Routes change without the revisions changing: each running one learns whether it is reachable now.
    for (key, revision) in running.iter() {
        revision.handle.set_reachable(reachable.contains(key));
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

/// Records a run's facts in its revision's `RevisionState` (read by its status and by the Configuration's),
/// unless they are not the revision's any more: another run of it has started on this node since (it records
/// its own), or the Revision is gone or was made again under its name (another uid).
async fn record_facts(node: &Node, running: &BTreeMap<String, RunningRevision>, update: &FactsUpdate) {
    let key = ResourceKey { kind: "Revision".into(), namespace: update.namespace.clone(), name: update.name.clone() };
    let revision: Option<Value> = node.resource(&key).and_then(|json| serde_json::from_str(&json).ok());
    let revision_uid =
        revision.as_ref().map(|r| r.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default());
    let current = running.get(&update.key()).map(|current| &current.handle.run_id);
    if !facts::still_applies(current, revision_uid, &update.run) {
        return;
    }
    let change = Change::Run { uid: &update.run.uid, facts: &update.facts };
    facts::record(node, &update.namespace, &update.name, change).await;
}

/// Once, at start: this node's entries in the states of revisions it does not run are what it ran before it
/// restarted. They go, so no revision shows instances that stopped with the node.
async fn forget_revisions_not_run(node: &Node, running: &BTreeMap<String, RunningRevision>) {
    let stale: BTreeSet<(String, String)> = node
        .resources(REVISION_STATE_KIND)
        .into_iter()
        .filter(|(key, _)| !running.contains_key(&format!("{}/{}", key.namespace, key.name)))
        .filter(|(_, json)| serde_json::from_str::<Value>(json).is_ok_and(|state| facts::has_entry(&state, node.id())))
        .map(|(key, _)| (key.namespace, key.name))
        .collect();
    for (namespace, name) in stale {
        facts::record(node, &namespace, &name, Change::Forget).await;
    }
}
