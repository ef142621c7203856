//! The serving supervisor of one node: keeps the route table and the running revisions in line with the
//! objects, records what the runtime learns about each revision, and (on the metadata group's leader) writes
//! the children Services and Configurations own.
//!
//! What flows in: resource changes (the node's resource watch) and revision facts from the revision tasks
//! (through the [`FactsOutbox`], which keeps only each revision's latest). Facts are written one revision at a
//! time by a spawned task, so the loop never waits on the metadata group: with no leader, stop, route changes
//! and new revisions are still seen at once; facts that fail go back into the outbox behind a backoff.
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
use sluice_controller::serving::rollout::RolloutClock;
use sluice_controller::serving::routing::{RouteTable, revision_facts, rollouts_under_way, route_table};
use sluice_controller::serving::{REVISION_STATE_KIND, children};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::monotonic_ms;
use crate::facts::{self, Change, FactsOutbox, FactsUpdate, Recorded, RunId, Waiting};
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
    /// The rollout duration of a Route without the annotation (`--serving-rollout-duration`; 0: at once).
    pub(crate) rollout_default_ms: u64,
}

/// Resource changes closer together than this are handled together.
const SETTLE: Duration = Duration::from_millis(20);
/// How long a stopping node tries to record its revisions' last facts.
const LAST_FACTS_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a start-up sweep that did not go through (not caught up, a write failed) is tried again.
const SWEEP_RETRY_MS: u64 = 5_000;

/// The start-up sweep: this node's entries in the states of revisions it no longer runs are what it ran before
/// it restarted, and go, so no revision shows instances that stopped with the node. Done only once the node
/// has caught up with the metadata group (else a state it cannot see yet keeps its entry) and every forget
/// went through; until then it starts again every [`SWEEP_RETRY_MS`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sweep {
    /// To start (catch up first) at this monotonic ms.
    At(u64),
    /// Caught up: the revisions (namespace, name) whose state to take this node's entry out of, one at a time.
    Forgetting(Vec<(String, String)>),
    Done,
}

/// A write of the sweep's.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SweepJob {
    CatchUp,
    Forget(String, String),
}

/// The sweep's next write now, if one is due; `runs`: whether this node runs a revision now (one started since
/// the sweep read the states writes its own entry). Pure.
fn sweep_step(sweep: &mut Sweep, now_ms: u64, runs: impl Fn(&str) -> bool) -> Option<SweepJob> {
    match sweep {
        Sweep::At(at) if *at <= now_ms => Some(SweepJob::CatchUp),
        Sweep::At(_) | Sweep::Done => None,
        Sweep::Forgetting(stale) => {
            while let Some((namespace, name)) = stale.pop() {
                if !runs(&format!("{namespace}/{name}")) {
                    return Some(SweepJob::Forget(namespace, name));
                }
            }
            *sweep = Sweep::Done;
            None
        }
    }
}

/// When the sweep wants the supervisor awake (monotonic ms): when its next try is due.
fn sweep_due_ms(sweep: &Sweep) -> Option<u64> {
    match sweep {
        Sweep::At(at) => Some(*at),
        Sweep::Forgetting(_) => Some(0),
        Sweep::Done => None,
    }
}

/// What the supervisor's one write in flight is.
enum Job {
    /// A revision's facts: put back in the outbox if they were not recorded.
    Facts(Waiting),
    Sweep(SweepJob),
}

/// The supervisor's one write in flight (a spawned task: the supervisor loop never waits on Raft). One at a
/// time, so a revision's facts land in the order they were posted, and a node without a metadata leader
/// holds one write, not one per revision.
struct Writing {
    job: Job,
    /// Whether it went through.
    task: JoinHandle<bool>,
}

/// Resolves when the write in flight ends (never while there is none): whether it went through. A write that
/// panicked did not.
async fn written(writing: &mut Option<Writing>) -> bool {
    match writing {
        Some(writing) => (&mut writing.task).await.unwrap_or(false),
        None => std::future::pending().await,
    }
}

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
    // After the first reconcile, so that the revisions this node runs are known.
    let mut sweep = Sweep::At(0);
    let mut writing: Option<Writing> = None;
    let mut facts_turn = false;
    // The next step of a Route's rollout (wall clock, ms): the table is computed again then.
    let mut rollout_step_at_ms: Option<u64> = None;
    // The Revisions (namespace, name) the last reconcile saw: one gone since was deleted, and its logs go.
    let mut revisions_seen: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        if needs_reconcile {
            changes.borrow_and_update();
            leadership.borrow_and_update();
            let reconciled =
                reconcile(&node, &settings, &shared, &env, &mut running, &mut stopping, &mut reported).await;
            rollout_step_at_ms = reconciled.rollout_step_at_ms;
            if let Some(revisions) = reconciled.revisions {
                for (namespace, name) in revisions_seen.difference(&revisions) {
                    tracing::info!(%namespace, revision = %name, "revision deleted: its logs go");
                    settings.logs.delete(namespace, name);
                }
                revisions_seen = revisions;
            }
        }
        needs_reconcile = true;
        let now = monotonic_ms();
        if writing.is_none() {
            writing = next_write(&node, &running, &outbox, &mut sweep, &mut facts_turn, now);
        }
        // Nothing in flight, something waits for its time (a backoff, the sweep's retry): wake then.
        let wake_in = match writing {
            Some(_) => None,
            None => [outbox.next_due_ms(), sweep_due_ms(&sweep)].into_iter().flatten().min(),
        }
        .map(|at| Duration::from_millis(at.saturating_sub(now)));
        let mut went_through = None;
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
            _ = outbox.wait() => needs_reconcile = false,
            ok = written(&mut writing), if writing.is_some() => {
                needs_reconcile = false;
                went_through = Some(ok);
            }
            _ = tokio::time::sleep(wake_in.unwrap_or_default()), if wake_in.is_some() => needs_reconcile = false,
            // A rollout's next step: the objects did not change, the time did.
            _ = tokio::time::sleep(Duration::from_millis(rollout_step_at_ms.unwrap_or(0).saturating_sub(now_ms()))),
                if rollout_step_at_ms.is_some() => {}
        }
        if let Some(ok) = went_through
            && let Some(done) = writing.take()
        {
            let now = monotonic_ms();
            match done.job {
                Job::Facts(waiting) if !ok => outbox.put_back(waiting, now),
                Job::Facts(_) => {}
                Job::Sweep(SweepJob::CatchUp) if ok => {
                    sweep = Sweep::Forgetting(stale_states(&node, &running));
                    // Caught up: every Revision that exists is known, and the logs of those deleted while the node
                    // was down go (the ones deleted since it started went as it saw them go).
                    if node.watch_resources().is_some() {
                        settings.logs.delete_all_but(&revision_keys(&node));
                    }
                }
                Job::Sweep(_) if !ok => sweep = Sweep::At(now.saturating_add(SWEEP_RETRY_MS)),
                Job::Sweep(_) => {}
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
    // forgets them). The write in flight ends first: a revision's earlier facts must not land after its last.
    let (in_flight, mut task) = match writing.take() {
        Some(Writing { job, task }) => (Some(job), Some(task)),
        None => (None, None),
    };
    let last_facts = async {
        if let (Some(job), Some(task)) = (in_flight, task.as_mut()) {
            let went_through = task.await.unwrap_or(false);
            // Facts that did not go through are written again below, with the rest (or newer ones in their place).
            if let Job::Facts(waiting) = job
                && !went_through
            {
                outbox.put_back(waiting, monotonic_ms());
            }
        }
        for update in outbox.take_all() {
            record_facts(&node, None, &update).await;
        }
    };
    if tokio::time::timeout(LAST_FACTS_TIMEOUT, last_facts).await.is_err() {
        tracing::warn!("serving: the revisions' last facts were not all recorded before the node stopped");
    }
    if let Some(task) = task {
        task.abort();
    }
}

/// The next write to start, if one is due: the facts that have waited longest and the sweep's writes, in turn.
fn next_write(
    node: &Node,
    running: &BTreeMap<String, RunningRevision>,
    outbox: &FactsOutbox,
    sweep: &mut Sweep,
    facts_turn: &mut bool,
    now_ms: u64,
) -> Option<Writing> {
    // Facts and the sweep's forgets take turns: a node restarted after running many revisions must not hold its
    // new runs' first facts (a revision's first Ready) behind one forget per revision it ran before.
    *facts_turn = !*facts_turn;
    if *facts_turn && let Some(waiting) = outbox.take_due(now_ms) {
        return Some(facts_write(node, running, waiting));
    }
    if let Some(job) = sweep_step(sweep, now_ms, |key| running.contains_key(key)) {
        let node = node.clone();
        let task = match job.clone() {
            SweepJob::CatchUp => tokio::spawn(async move {
                match node.catch_up_metadata().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "serving: not caught up with the metadata group: the sweep waits");
                        false
                    }
                }
            }),
            SweepJob::Forget(namespace, name) => tokio::spawn(async move {
                let forgotten = facts::record(&node, &namespace, &name, Change::Forget).await;
                forgotten == Recorded::Done
            }),
        };
        return Some(Writing { job: Job::Sweep(job), task });
    }
    let waiting = outbox.take_due(now_ms)?;
    Some(facts_write(node, running, waiting))
}

/// Writes one revision's facts (dropped by their write if they are no longer their revision's).
fn facts_write(node: &Node, running: &BTreeMap<String, RunningRevision>, waiting: Waiting) -> Writing {
    let current = running.get(&waiting.update.key()).map(|current| current.handle.run_id.clone());
    let (node, update) = (node.clone(), waiting.update.clone());
    let task = tokio::spawn(async move { record_facts(&node, current.as_ref(), &update).await == Recorded::Done });
    Writing { job: Job::Facts(waiting), task }
}

/// The problems of revisions (`(namespace/name, why it cannot run here)`, as found now) to log: those not
/// logged yet, or changed since. `logged` becomes what was found now: a problem that went away is forgotten, so
/// it is logged again if it comes back, and the map holds no more than the revisions that have a problem now.
/// Pure.
fn problems_to_log(logged: &mut HashMap<String, String>, problems: Vec<(String, String)>) -> Vec<(String, String)> {
    let new: Vec<(String, String)> =
        problems.iter().filter(|(key, problem)| logged.get(key) != Some(problem)).cloned().collect();
    *logged = problems.into_iter().collect();
    new
}

fn objects(node: &Node) -> Vec<Value> {
    sluice_controller::model::world_kinds()
        .flat_map(|kind| node.resources(kind))
        .filter_map(|(_, json)| serde_json::from_str(&json).ok())
        .collect()
}

/// The Revisions (namespace, name) in the node's copy of the resources.
fn revision_keys(node: &Node) -> BTreeSet<(String, String)> {
    node.resources("Revision").into_iter().map(|(key, _)| (key.namespace, key.name)).collect()
}

/// What a reconcile found that the supervisor keeps.
struct Reconciled {
    /// When a Route's rollout takes its next step (wall clock, ms).
    rollout_step_at_ms: Option<u64>,
    /// The Revisions (namespace, name) that exist; `None` when the node's copy of the resources could not be read
    /// (the node shutting down: none would seem to exist).
    revisions: Option<BTreeSet<(String, String)>>,
}

async fn reconcile(
    node: &Node,
    settings: &SupervisorSettings,
    shared: &Shared,
    env: &RevisionEnv,
    running: &mut BTreeMap<String, RunningRevision>,
    stops: &mut tokio::task::JoinSet<()>,
    reported: &mut HashMap<String, String>,
) -> Reconciled {
    let mut objects = objects(node);
    // The table served until now: a Route whose traffic does not resolve now keeps serving its routing from it.
    let previous = shared.table.read().map(|table| table.clone()).unwrap_or_default();
    if node.leads_metadata() && write_children(node, &objects, settings, &previous).await {
        // Serve what was just written (Routes, Revisions) without waiting for the next change.
        objects = self::objects(node);
    }
    let clock = RolloutClock { now_ms: now_ms(), default_duration_ms: settings.rollout_default_ms };
    let table = route_table(&objects, &settings.domain, &previous, clock);
    let Wanted { runs: wanted, reachable, problems } =
        wanted_revisions(&objects, &table, &settings.autoscaler, env.runtime.kind());
    for (key, problem) in problems_to_log(reported, problems) {
        tracing::warn!(revision = %key, %problem, "revision cannot run here");
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
    // Status says a Route is IngressReady only from here on: requests follow it now.
    node.serve_routes(shared.install_table(table));
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
    let rollouts = rollouts_under_way(&objects, clock);
    metrics::gauge!("sluice_serving_rollouts").set(rollouts.len() as f64);
    for (route, next_step_at_ms) in &rollouts {
        tracing::debug!(%route, next_step_in_ms = next_step_at_ms.saturating_sub(clock.now_ms), "route rolling out");
    }
    let revisions: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|object| object.get("kind").and_then(Value::as_str) == Some("Revision"))
        .filter_map(|revision| {
            let namespace = revision.pointer("/metadata/namespace").and_then(Value::as_str)?;
            let name = revision.pointer("/metadata/name").and_then(Value::as_str)?;
            Some((namespace.to_string(), name.to_string()))
        })
        .collect();
    // Read after the objects: the metadata group was there when the supervisor started, and one gone now was gone
    // when they were read too.
    let readable = node.watch_resources().is_some();
    Reconciled {
        rollout_step_at_ms: rollouts.into_iter().map(|(_, at)| at).min(),
        revisions: readable.then_some(revisions),
    }
}

/// Writes what Services and Configurations own, and deletes what lost its owner. Only the metadata leader
/// does, so two nodes never race to create the same Revision; a failed write is made again on the next change.
/// `previous`: the table this node serves now (under `domain`). Answers whether it wrote anything.
async fn write_children(node: &Node, objects: &[Value], settings: &SupervisorSettings, previous: &RouteTable) -> bool {
    let mut plan = children::plan(objects);
    // Old revisions nothing routes to, by Knative's garbage-collection defaults: a Route that does not resolve
    // now still routes to what it routed to before, and those are kept.
    let clock = RolloutClock { now_ms: now_ms(), default_duration_ms: settings.rollout_default_ms };
    let table = route_table(objects, &settings.domain, previous, clock);
    for (namespace, name) in gc::collect(objects, &table, clock.now_ms, &GcSettings::default()) {
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
/// unless they are not the revision's any more: another run of it has started on this node since (`current`:
/// the revision's run on this node when the write started; it records its own), or the Revision is gone or was
/// made again under its name (another uid; [`facts::record`] asks again at every attempt).
async fn record_facts(node: &Node, current: Option<&RunId>, update: &FactsUpdate) -> Recorded {
    let revision_uid = facts::revision_uid(node, &update.namespace, &update.name);
    if !facts::still_applies(current, revision_uid.as_deref(), &update.run) {
        return Recorded::Done;
    }
    let change = Change::Run { uid: &update.run.uid, facts: &update.facts };
    facts::record(node, &update.namespace, &update.name, change).await
}

/// The revisions (namespace, name) whose state holds an entry of this node's though it does not run them:
/// what the start-up sweep forgets.
fn stale_states(node: &Node, running: &BTreeMap<String, RunningRevision>) -> Vec<(String, String)> {
    node.resources(REVISION_STATE_KIND)
        .into_iter()
        .filter(|(key, _)| !running.contains_key(&format!("{}/{}", key.namespace, key.name)))
        .filter(|(_, json)| serde_json::from_str::<Value>(json).is_ok_and(|state| facts::has_entry(&state, node.id())))
        .map(|(key, _)| (key.namespace, key.name))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests;
