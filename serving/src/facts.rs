//! A revision's facts on their way to its `RevisionState`: the revision tasks post them, the supervisor
//! records them through Raft.
//!
//! What flows in: each run's latest [`Facts`] (ready once, whether an instance became ready since the run's
//! last post, the last failure, its instances on this node). What flows out: writes of the `RevisionState`
//! object, where this node's instances are its own entry in `spec.instancesByNode` (the status sums them over
//! the nodes), and entries of nodes that left the cluster are dropped.
//!
//! Bounded: the outbox keeps only the latest facts of each revision, so a slow metadata group makes a
//! revision's changes coalesce, never a queue; facts that replace a run's earlier ones keep the ready edge those
//! carried (the run clears it once posted), so a failure it clears is cleared when they are recorded. Facts whose
//! record failed (no metadata leader, other nodes kept writing first) go back into the outbox, behind a backoff
//! (1 s doubling to 30 s), unless newer facts of the revision came in meanwhile: a fact lost to a leader
//! election is recorded once the group is back, not never. A run's facts apply only while it is its revision's
//! run: a run is identified by its Revision's uid and a generation that later runs on this node exceed
//! ([`RunId`]); facts of an earlier run (draining while a replacement starts) do not overwrite the
//! replacement's, nor facts of a Revision deleted and made again under its name (checked again at every
//! attempt, as a conflict makes the node catch up). Writes are conditional on the stored object's token, so two
//! nodes writing their entries at once never lose one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};
use sluice_broker::{Node, NodeId, ResourceKey};
use sluice_cloudevent::clock::now_ms;
use sluice_controller::serving::routing::{INSTANCES_BY_NODE_FIELD, READY_AT_FIELD, READY_INSTANCES_BY_NODE_FIELD};
use sluice_controller::serving::{REVISION_STATE_KIND, SERVING_API_VERSION};
use tokio::sync::Notify;

/// Revisions whose facts may wait to be recorded at once (each revision has at most one entry).
pub(crate) const PENDING_FACTS_LIMIT: usize = 10_000;
/// Conditional writes of one revision's facts before giving up (each lost to another node's write).
const WRITE_ATTEMPTS: usize = 5;
/// The wait before facts whose record failed are tried again, doubling with each failure in a row...
const RETRY_FIRST_MS: u64 = 1_000;
/// ...up to this: a metadata group down for long is tried twice a minute per revision, not in a loop.
const RETRY_MAX_MS: u64 = 30_000;

/// What the runtime learnt about a revision on this node (recorded for its status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// Ready once, on any node (a run starts with what the state said).
    pub(crate) ready: bool,
    /// An instance of this run on this node became ready since the run last posted its facts: an edge, not a
    /// level. Only facts carrying it clear a failure: `ready` may be inherited, a run just started on another
    /// node knows nothing of the failure it would clear, and a run whose instance was ready long ago, posting
    /// again as it scales, must not clear another node's newer failure. The run clears it once the outbox took
    /// it; the outbox keeps it until it is recorded (newer facts of the run that take its place carry it on).
    pub(crate) saw_ready: bool,
    pub(crate) failure: Option<(String, String)>,
    /// Running on this node (starting or ready, not draining).
    pub(crate) instances: u32,
    /// Of them, ready (in rotation): what `actualReplicas` counts, as Knative counts ready pods.
    pub(crate) ready_instances: u32,
}

/// One run of a revision on this node: its Revision's uid, and a generation unique on the node that a later
/// run exceeds. A Revision deleted and made again under the same name has another uid; a run restarted
/// because what it takes changed has the same uid and a later generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunId {
    pub(crate) uid: String,
    pub(crate) generation: u64,
}

/// A run's facts, posted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FactsUpdate {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) run: RunId,
    pub(crate) facts: Facts,
}

impl FactsUpdate {
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Keeps the ready edge of `other`, facts of the same run whose place these take in the outbox: the run
    /// cleared the edge once `other` was posted, so dropping it here would lose it, and the failure it clears
    /// would stand. Another run's edge is not this run's (it may run what changed since, or a namesake).
    fn keep_ready_edge_of(&mut self, other: &FactsUpdate) {
        if self.run == other.run {
            self.facts.saw_ready |= other.facts.saw_ready;
        }
    }
}

/// What posting did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Posted {
    /// Waiting to be recorded (alone, or in place of the revision's earlier facts).
    Waiting,
    /// Dropped: a later run's facts for the revision wait already, and hold.
    Superseded,
    /// Not taken: [`PENDING_FACTS_LIMIT`] revisions wait already. The poster posts again later.
    Full,
}

/// How long facts whose record failed `failures` times in a row wait before the next try: 1 s doubling to
/// 30 s. Pure.
pub(crate) fn retry_delay_ms(failures: u32) -> u64 {
    if failures == 0 {
        return 0;
    }
    RETRY_FIRST_MS.saturating_mul(1 << failures.saturating_sub(1).min(5)).min(RETRY_MAX_MS)
}

/// A revision's facts in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Waiting {
    pub(crate) update: FactsUpdate,
    /// Failed records in a row of the revision's facts (0: not tried yet).
    pub(crate) failures: u32,
    /// Not taken before this (monotonic ms): the backoff after a failure.
    pub(crate) not_before_ms: u64,
    /// Its place in line: the revision waiting longest goes first, so one that keeps changing (or failing)
    /// never keeps the others waiting.
    place: u64,
}

/// The facts waiting, one entry per revision. Pure (the caller passes the clock).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    waiting: BTreeMap<String, Waiting>,
    next_place: u64,
}

impl Pending {
    fn insert(&mut self, key: String, update: FactsUpdate, failures: u32, not_before_ms: u64) {
        self.next_place += 1;
        self.waiting.insert(key, Waiting { update, failures, not_before_ms, place: self.next_place });
    }

    /// Adds `update`, keyed by revision: the latest facts of the latest run win, with the ready edge of the
    /// run's facts they replace. Facts that replace waiting ones keep their place and their backoff (a revision
    /// whose records fail is not tried faster for changing).
    pub(crate) fn post(&mut self, update: FactsUpdate, limit: usize) -> Posted {
        let key = update.key();
        let full = self.waiting.len() >= limit;
        match self.waiting.get_mut(&key) {
            Some(waiting) if waiting.update.run.generation > update.run.generation => Posted::Superseded,
            Some(waiting) => {
                let replaced = std::mem::replace(&mut waiting.update, update);
                waiting.update.keep_ready_edge_of(&replaced);
                Posted::Waiting
            }
            None if full => Posted::Full,
            None => {
                self.insert(key, update, 0, 0);
                Posted::Waiting
            }
        }
    }

    /// The facts that have waited longest of those due at `now_ms`, taken out.
    pub(crate) fn take_due(&mut self, now_ms: u64) -> Option<Waiting> {
        let key = self
            .waiting
            .iter()
            .filter(|(_, waiting)| waiting.not_before_ms <= now_ms)
            .min_by_key(|(_, waiting)| waiting.place)
            .map(|(key, _)| key.clone())?;
        self.waiting.remove(&key)
    }

    /// Facts taken whose record failed, back in line behind their backoff, with their ready edge. Facts of the
    /// revision posted while they were written are newer and stay (unless they are an earlier run's), under the
    /// same backoff, and take the failed facts' ready edge when they are the same run's. Bounded:
    /// the one entry taken comes back, so the outbox holds at most its limit plus the facts being written.
    pub(crate) fn put_back(&mut self, failed: Waiting, now_ms: u64) {
        let failures = failed.failures.saturating_add(1);
        let not_before_ms = now_ms.saturating_add(retry_delay_ms(failures));
        let key = failed.update.key();
        match self.waiting.get_mut(&key) {
            Some(newer) => {
                if newer.update.run.generation < failed.update.run.generation {
                    newer.update = failed.update;
                } else {
                    newer.update.keep_ready_edge_of(&failed.update);
                }
                newer.failures = failures;
                newer.not_before_ms = not_before_ms;
            }
            None => self.insert(key, failed.update, failures, not_before_ms),
        }
    }

    /// When the next facts are due (monotonic ms), if any wait.
    pub(crate) fn next_due_ms(&self) -> Option<u64> {
        self.waiting.values().map(|waiting| waiting.not_before_ms).min()
    }

    /// Everything waiting, due or not, taken out (a stopping node's last try).
    pub(crate) fn take_all(&mut self) -> Vec<FactsUpdate> {
        std::mem::take(&mut self.waiting).into_values().map(|waiting| waiting.update).collect()
    }
}

/// Whether a run's facts are still its revision's: the revision's current run on this node (`current`, if one
/// runs) is this one, and the Revision stored (`revision_uid`: `None` when it is gone) is the one it ran. An
/// earlier run draining while its replacement starts, or the last run of a Revision deleted and made again
/// under its name, would otherwise overwrite the facts of the run that took its place. Pure.
pub(crate) fn still_applies(current: Option<&RunId>, revision_uid: Option<&str>, run: &RunId) -> bool {
    if current.is_some_and(|current| current != run) {
        return false;
    }
    revision_uid.is_some_and(|uid| uid.is_empty() || run.uid.is_empty() || uid == run.uid)
}

/// Whether a run of the Revision with `run_uid` may write its revision's state, stored for `stored_uid` (empty:
/// none, or written without one), while the Revision stored now has `revision_uid` (`None`: gone). Asked at
/// every attempt, on what the node reads then. Pure. Rules:
/// - the Revision gone, or made again under its name (another uid): the run's facts are no longer anyone's;
/// - a state stored for another uid is replaced only when the Revision stored now is the run's: a lagging
///   node's old run, whose view still shows its Revision, must not overwrite the new Revision's state.
pub(crate) fn run_may_write(stored_uid: &str, revision_uid: Option<&str>, run_uid: &str) -> bool {
    let Some(revision_uid) = revision_uid else { return false };
    let differs = |uid: &str| !uid.is_empty() && !run_uid.is_empty() && uid != run_uid;
    if differs(revision_uid) {
        return false;
    }
    !differs(stored_uid) || revision_uid == run_uid
}

/// The facts waiting to be recorded, and the supervisor's wake-up.
#[derive(Default)]
pub(crate) struct FactsOutbox {
    pending: Mutex<Pending>,
    posted: Notify,
}

impl FactsOutbox {
    /// Posts a run's latest facts; false when they were not taken (the outbox is full: post them again).
    pub(crate) fn post(&self, update: FactsUpdate) -> bool {
        let posted = match self.pending.lock() {
            Ok(mut pending) => pending.post(update, PENDING_FACTS_LIMIT),
            Err(_) => Posted::Full,
        };
        match posted {
            Posted::Waiting => {
                self.posted.notify_one();
                true
            }
            Posted::Superseded => true,
            Posted::Full => false,
        }
    }

    /// The facts that have waited longest of those due at `now_ms` (monotonic), taken out.
    pub(crate) fn take_due(&self, now_ms: u64) -> Option<Waiting> {
        self.pending.lock().ok().and_then(|mut pending| pending.take_due(now_ms))
    }

    /// Facts whose record failed, back in line behind their backoff.
    pub(crate) fn put_back(&self, failed: Waiting, now_ms: u64) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.put_back(failed, now_ms);
        }
    }

    /// When the next facts are due (monotonic ms), if any wait.
    pub(crate) fn next_due_ms(&self) -> Option<u64> {
        self.pending.lock().ok().and_then(|pending| pending.next_due_ms())
    }

    /// Everything waiting, taken out.
    pub(crate) fn take_all(&self) -> Vec<FactsUpdate> {
        self.pending.lock().map(|mut pending| pending.take_all()).unwrap_or_default()
    }

    /// Resolves once facts were posted since the last wake-up.
    pub(crate) async fn wait(&self) {
        self.posted.notified().await;
    }
}

/// What this node records about a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change<'a> {
    /// A run of it, with the uid of the Revision it runs.
    Run { uid: &'a str, facts: &'a Facts },
    /// This node runs none of it: its entry goes (the node restarted, and no longer runs the revision).
    Forget,
}

fn node_entry(node: NodeId) -> String {
    node.to_string()
}

/// The `RevisionState` spec after this node's change, or `None` when the change changes nothing (no write).
/// `revision_uid`: the uid of the Revision stored now (`None`: gone), for a run's change ([`run_may_write`];
/// a forget ignores it). Pure. Rules:
/// - this node's entry in `instancesByNode` is its instance count, and goes at zero or on [`Change::Forget`];
///   so is its entry in `readyInstancesByNode`, its ready ones (the field goes when no node has one);
/// - entries of nodes that are not `members` go (`None`: membership unknown, none goes);
/// - ready once, ready for good, for the same Revision: facts stored for another uid (a namesake deleted
///   and made again) are not carried over;
/// - the failure is the writer's when it saw one, or when an instance of its run became ready since it last
///   posted (which clears it: [`Facts::saw_ready`]); else it stays.
pub(crate) fn next_spec(
    stored: Option<&Value>,
    me: NodeId,
    members: Option<&BTreeSet<NodeId>>,
    change: Change<'_>,
    revision_uid: Option<&str>,
) -> Option<Value> {
    if stored.is_none() && matches!(change, Change::Run { facts, .. } if *facts == Facts::default()) {
        // Nothing known yet, and nothing to say (a run's first facts, at zero).
        return None;
    }
    let stored_spec = stored.and_then(|s| s.get("spec")).and_then(Value::as_object);
    let stored_uid = stored_spec.and_then(|s| s.get("revisionUid")).and_then(Value::as_str).unwrap_or_default();
    let same_revision = match change {
        Change::Run { uid, .. } => {
            if !run_may_write(stored_uid, revision_uid, uid) {
                return None;
            }
            stored_uid.is_empty() || uid.is_empty() || stored_uid == uid
        }
        Change::Forget => true,
    };
    let mut spec = match (stored_spec, same_revision) {
        (Some(spec), true) => spec.clone(),
        _ => Map::new(),
    };
    spec.remove("token");
    let mut by_node = spec.get(INSTANCES_BY_NODE_FIELD).and_then(Value::as_object).cloned().unwrap_or_default();
    let mut ready_by_node =
        spec.get(READY_INSTANCES_BY_NODE_FIELD).and_then(Value::as_object).cloned().unwrap_or_default();
    if let Some(members) = members {
        by_node.retain(|id, _| id.parse::<NodeId>().is_ok_and(|id| members.contains(&id)));
        ready_by_node.retain(|id, _| id.parse::<NodeId>().is_ok_and(|id| members.contains(&id)));
    }
    match change {
        Change::Run { uid, facts } => {
            match facts.instances {
                0 => by_node.remove(&node_entry(me)),
                instances => by_node.insert(node_entry(me), json!(instances)),
            };
            match facts.ready_instances {
                0 => ready_by_node.remove(&node_entry(me)),
                ready => ready_by_node.insert(node_entry(me), json!(ready)),
            };
            let was_ready = spec.get("ready").and_then(Value::as_bool).unwrap_or(false);
            spec.insert("ready".into(), json!(facts.ready || was_ready));
            // A failure is cleared by an instance of this run becoming ready since its last facts; a run that saw
            // neither (one just started, ready only because the revision was once, or one that only scaled since)
            // leaves another node's failure as it is.
            let failure = match (&facts.failure, facts.saw_ready) {
                (Some(failure), _) => Some(failure.clone()),
                (None, true) => Some((String::new(), String::new())),
                (None, false) => None,
            };
            match failure {
                Some((reason, message)) => {
                    spec.insert("failureReason".into(), json!(reason));
                    spec.insert("failureMessage".into(), json!(message));
                }
                None => {
                    spec.entry("failureReason").or_insert(json!(""));
                    spec.entry("failureMessage").or_insert(json!(""));
                }
            }
            if !uid.is_empty() {
                spec.insert("revisionUid".into(), json!(uid));
            }
        }
        Change::Forget => {
            // Nothing stored: nothing to forget.
            stored?;
            by_node.remove(&node_entry(me));
            ready_by_node.remove(&node_entry(me));
        }
    }
    // Written only while some node has a ready instance (a state without it reads as none ready).
    match ready_by_node.is_empty() {
        true => spec.remove(READY_INSTANCES_BY_NODE_FIELD),
        false => spec.insert(READY_INSTANCES_BY_NODE_FIELD.into(), Value::Object(ready_by_node)),
    };
    // The total as well, for a node of an older version that reads only it (a rolling upgrade).
    let total = by_node.values().filter_map(Value::as_u64).fold(0u64, u64::saturating_add);
    spec.insert("instances".into(), json!(total));
    spec.insert(INSTANCES_BY_NODE_FIELD.into(), Value::Object(by_node));
    let unchanged = stored_spec.is_some_and(|stored| {
        let mut stored = stored.clone();
        stored.remove("token");
        stored == spec
    });
    (!unchanged).then_some(Value::Object(spec))
}

/// Stamps `spec` with the wall-clock time its Revision first became ready ([`READY_AT_FIELD`]: a rollout to it
/// starts there) when it says ready and the stored state did not. Only on that edge: a Revision found ready in a
/// state written without the field (before this was recorded) is taken as ready long ago, since stamping it now
/// would start a rollout back to it from the Revisions before. Pure.
pub(crate) fn stamp_ready_at(stored: Option<&Value>, spec: &mut Value, now_ms: u64) {
    let ready = |spec: Option<&Value>| spec.and_then(|s| s.get("ready")).and_then(Value::as_bool).unwrap_or(false);
    if ready(Some(spec)) && !ready(stored.and_then(|s| s.get("spec"))) && spec.get(READY_AT_FIELD).is_none() {
        spec[READY_AT_FIELD] = json!(now_ms);
    }
}

/// Whether this node's entry is in a stored `RevisionState` (a start-up sweep forgets it where the node no
/// longer runs the revision).
pub(crate) fn has_entry(state: &Value, me: NodeId) -> bool {
    state.pointer("/spec").and_then(|s| s.get(INSTANCES_BY_NODE_FIELD)).and_then(|b| b.get(node_entry(me))).is_some()
}

/// A token no other write of the object carries: the node, the wall clock, and a count.
fn new_token(me: NodeId) -> String {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    format!("n{me}-{}-{}", now_ms(), WRITES.fetch_add(1, Ordering::Relaxed))
}

/// The `metadata.uid` of the Revision `namespace/name` as this node reads it now (`None`: there is none).
pub(crate) fn revision_uid(node: &Node, namespace: &str, name: &str) -> Option<String> {
    let key = ResourceKey { kind: "Revision".into(), namespace: namespace.into(), name: name.into() };
    let revision: Value = node.resource(&key).and_then(|json| serde_json::from_str(&json).ok())?;
    Some(revision.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string())
}

/// How recording a change went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Written, or nothing to write (nothing changed, or the facts are no longer their revision's).
    Done,
    /// Not written: a write or a catch-up failed, or other nodes kept writing first. Worth another try later.
    Failed,
}

/// Records this node's change to a revision's `RevisionState`, conditionally on the token of the object read
/// (another node's write in between: read again, change again). The Revision is read again at each attempt:
/// what the node caught up with after a conflict may be a Revision made again under its name.
pub(crate) async fn record(node: &Node, namespace: &str, name: &str, change: Change<'_>) -> Recorded {
    let key = ResourceKey { kind: REVISION_STATE_KIND.into(), namespace: namespace.into(), name: name.into() };
    let members: Option<BTreeSet<NodeId>> = node.cluster_config().map(|c| c.members.keys().copied().collect());
    for _ in 0..WRITE_ATTEMPTS {
        let stored: Option<Value> = node.resource(&key).and_then(|json| serde_json::from_str(&json).ok());
        let revision = match change {
            Change::Run { .. } => revision_uid(node, namespace, name),
            Change::Forget => None,
        };
        let next = next_spec(stored.as_ref(), node.id(), members.as_ref(), change, revision.as_deref());
        let Some(mut spec) = next else { return Recorded::Done };
        stamp_ready_at(stored.as_ref(), &mut spec, now_ms());
        spec["token"] = json!(new_token(node.id()));
        let object = json!({
            "apiVersion": SERVING_API_VERSION, "kind": REVISION_STATE_KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        });
        let stored_token = stored.as_ref().and_then(|s| s.pointer("/spec/token")).and_then(Value::as_str);
        let written = match (&stored, stored_token) {
            // Written by an older version, without a token: replaced, as that version replaces it.
            (Some(_), None) => node.put_internal_object(&object).await.map(|_| Some(true)),
            (_, token) => node.put_internal_object_if_token(&object, token).await,
        };
        match written {
            Ok(Some(true)) => return Recorded::Done,
            // Some member does not read conditional writes yet (a rolling upgrade): written as before.
            Ok(None) => {
                return match node.put_internal_object(&object).await {
                    Ok(_) => Recorded::Done,
                    Err(e) => {
                        tracing::warn!(revision = %name, error = %e, "revision facts not recorded yet");
                        Recorded::Failed
                    }
                };
            }
            // Another node wrote first: read what it wrote (caught up with the leader), and merge again.
            Ok(Some(false)) => {
                if let Err(e) = node.catch_up_metadata().await {
                    tracing::warn!(revision = %name, error = %e, "revision facts not recorded yet");
                    return Recorded::Failed;
                }
            }
            Err(e) => {
                tracing::warn!(revision = %name, error = %e, "revision facts not recorded yet");
                return Recorded::Failed;
            }
        }
    }
    tracing::warn!(revision = %name, attempts = WRITE_ATTEMPTS, "revision facts not recorded yet: others wrote first");
    Recorded::Failed
}

#[cfg(test)]
mod tests;
