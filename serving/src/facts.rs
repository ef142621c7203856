//! A revision's facts on their way to its `RevisionState`: the revision tasks post them, the supervisor
//! records them through Raft.
//!
//! What flows in: each run's latest [`Facts`] (ready once, the last failure, its instances on this node). What
//! flows out: writes of the `RevisionState` object, where this node's instances are its own entry in
//! `spec.instancesByNode` (the status sums them over the nodes), and entries of nodes that left the cluster
//! are dropped.
//!
//! Bounded: the outbox keeps only the latest facts of each revision, so a slow metadata group makes a
//! revision's changes coalesce, never a queue. A run's facts apply only while it is its revision's run: a run
//! is identified by its Revision's uid and a generation that later runs on this node exceed ([`RunId`]); facts
//! of an earlier run (draining while a replacement starts) do not overwrite the replacement's, nor facts of a
//! Revision deleted and made again under its name. Writes are conditional on the stored object's token, so two
//! nodes writing their entries at once never lose one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};
use sluice_broker::{Node, NodeId, ResourceKey};
use sluice_cloudevent::clock::now_ms;
use sluice_controller::serving::routing::INSTANCES_BY_NODE_FIELD;
use sluice_controller::serving::{REVISION_STATE_KIND, SERVING_API_VERSION};
use tokio::sync::Notify;

/// Revisions whose facts may wait to be recorded at once (each revision has at most one entry).
pub(crate) const PENDING_FACTS_LIMIT: usize = 10_000;
/// Conditional writes of one revision's facts before giving up (each lost to another node's write).
const WRITE_ATTEMPTS: usize = 5;

/// What the runtime learnt about a revision on this node (recorded for its status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    pub(crate) ready: bool,
    pub(crate) failure: Option<(String, String)>,
    /// Running on this node (starting or ready, not draining).
    pub(crate) instances: u32,
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

/// Adds `update` to the facts waiting, keyed by revision: the latest facts of the latest run win. Pure.
pub(crate) fn coalesce(pending: &mut BTreeMap<String, FactsUpdate>, update: FactsUpdate, limit: usize) -> Posted {
    let key = update.key();
    match pending.get(&key) {
        Some(waiting) if waiting.run.generation > update.run.generation => Posted::Superseded,
        Some(_) => {
            pending.insert(key, update);
            Posted::Waiting
        }
        None if pending.len() >= limit => Posted::Full,
        None => {
            pending.insert(key, update);
            Posted::Waiting
        }
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

/// The facts waiting to be recorded, and the supervisor's wake-up.
#[derive(Default)]
pub(crate) struct FactsOutbox {
    pending: Mutex<BTreeMap<String, FactsUpdate>>,
    posted: Notify,
}

impl FactsOutbox {
    /// Posts a run's latest facts; false when they were not taken (the outbox is full: post them again).
    pub(crate) fn post(&self, update: FactsUpdate) -> bool {
        let posted = match self.pending.lock() {
            Ok(mut pending) => coalesce(&mut pending, update, PENDING_FACTS_LIMIT),
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

    /// Everything waiting, taken out.
    pub(crate) fn take(&self) -> Vec<FactsUpdate> {
        self.pending.lock().map(|mut pending| std::mem::take(&mut *pending).into_values().collect()).unwrap_or_default()
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
/// Pure. Rules:
/// - this node's entry in `instancesByNode` is its instance count, and goes at zero or on [`Change::Forget`];
/// - entries of nodes that are not `members` go (`None`: membership unknown, none goes);
/// - ready once, ready for good, for the same Revision: facts stored for another uid (a namesake deleted
///   and made again) are not carried over;
/// - the failure is the writer's when it saw one, or saw an instance ready (which clears it); else it stays.
pub(crate) fn next_spec(
    stored: Option<&Value>,
    me: NodeId,
    members: Option<&BTreeSet<NodeId>>,
    change: Change<'_>,
) -> Option<Value> {
    if stored.is_none() && matches!(change, Change::Run { facts, .. } if *facts == Facts::default()) {
        // Nothing known yet, and nothing to say (a run's first facts, at zero).
        return None;
    }
    let stored_spec = stored.and_then(|s| s.get("spec")).and_then(Value::as_object);
    let stored_uid = stored_spec.and_then(|s| s.get("revisionUid")).and_then(Value::as_str).unwrap_or_default();
    let same_revision = match change {
        Change::Run { uid, .. } => stored_uid.is_empty() || uid.is_empty() || stored_uid == uid,
        Change::Forget => true,
    };
    let mut spec = match (stored_spec, same_revision) {
        (Some(spec), true) => spec.clone(),
        _ => Map::new(),
    };
    spec.remove("token");
    let mut by_node = spec.get(INSTANCES_BY_NODE_FIELD).and_then(Value::as_object).cloned().unwrap_or_default();
    if let Some(members) = members {
        by_node.retain(|id, _| id.parse::<NodeId>().is_ok_and(|id| members.contains(&id)));
    }
    match change {
        Change::Run { uid, facts } => {
            match facts.instances {
                0 => by_node.remove(&node_entry(me)),
                instances => by_node.insert(node_entry(me), json!(instances)),
            };
            let was_ready = spec.get("ready").and_then(Value::as_bool).unwrap_or(false);
            spec.insert("ready".into(), json!(facts.ready || was_ready));
            // A failure is cleared by an instance becoming ready; a run that saw neither (one just started)
            // leaves another node's failure as it is.
            let failure = match (&facts.failure, facts.ready) {
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
        }
    }
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

/// Records this node's change to a revision's `RevisionState`, conditionally on the token of the object read
/// (another node's write in between: read again, change again).
pub(crate) async fn record(node: &Node, namespace: &str, name: &str, change: Change<'_>) {
    let key = ResourceKey { kind: REVISION_STATE_KIND.into(), namespace: namespace.into(), name: name.into() };
    let members: Option<BTreeSet<NodeId>> = node.cluster_config().map(|c| c.members.keys().copied().collect());
    for _ in 0..WRITE_ATTEMPTS {
        let stored: Option<Value> = node.resource(&key).and_then(|json| serde_json::from_str(&json).ok());
        let Some(mut spec) = next_spec(stored.as_ref(), node.id(), members.as_ref(), change) else { return };
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
            Ok(Some(true)) => return,
            // Some member does not read conditional writes yet (a rolling upgrade): written as before.
            Ok(None) => {
                if let Err(e) = node.put_internal_object(&object).await {
                    tracing::warn!(revision = %name, error = %e, "revision facts not recorded");
                }
                return;
            }
            // Another node wrote first: read what it wrote (caught up with the leader), and merge again.
            Ok(Some(false)) => {
                if let Err(e) = node.catch_up_metadata().await {
                    tracing::warn!(revision = %name, error = %e, "revision facts not recorded");
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(revision = %name, error = %e, "revision facts not recorded");
                return;
            }
        }
    }
    tracing::warn!(revision = %name, attempts = WRITE_ATTEMPTS, "revision facts not recorded: other nodes kept writing first");
}

#[cfg(test)]
mod tests;
