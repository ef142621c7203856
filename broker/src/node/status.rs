//! Readiness and status: which groups this node leads, how far each one is, whether the node can
//! serve (the metadata group caught up, every partition group has a leader).

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;

use super::Node;
use crate::command::{GroupId, METADATA_GROUP, NodeId, group_name, partition_group};
use crate::store::Raft;

/// A group as this node sees it (for status and readiness).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub name: String,
    pub leader: Option<NodeId>,
    pub state: String,
    pub term: u64,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Only where this node leads the group: each replica's matched log
    /// index (None: nothing matched yet), from openraft's replication metrics.
    pub replication: Option<BTreeMap<NodeId, Option<u64>>>,
    /// Only where this node leads the group: ms since each replica last
    /// acknowledged a heartbeat or replication (None: never).
    pub heartbeat_age_ms: Option<BTreeMap<NodeId, Option<u64>>>,
}

/// How long a leader may go without a quorum's acknowledgement before its node says it is not ready: about ten
/// election timeouts, so that a slow moment under load does not take the node out of a load balancer.
const QUORUM_SILENCE_NOT_READY: std::time::Duration = std::time::Duration::from_secs(5);

impl Node {
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups()
            .iter()
            .map(|group| {
                let metrics = group.raft.metrics();
                let m = metrics.borrow_watched();
                GroupStatus {
                    group: group.id,
                    name: group_name(group.id),
                    leader: m.current_leader,
                    state: format!("{:?}", m.state),
                    term: m.current_term,
                    committed_index: m.local_committed.as_ref().map(|id| id.index),
                    applied_index: m.last_applied.as_ref().map(|id| id.index),
                    last_log_index: m.last_log_index,
                    purged_index: m.purged.as_ref().map(|id| id.index),
                    snapshot_index: m.snapshot.as_ref().map(|id| id.index),
                    voters: m.membership_config.membership().voter_ids().collect(),
                    learners: m.membership_config.membership().learner_ids().collect(),
                    replication: m
                        .replication
                        .as_ref()
                        .map(|r| r.iter().map(|(id, matched)| (*id, matched.as_ref().map(|l| l.index))).collect()),
                    heartbeat_age_ms: m.heartbeat.as_ref().map(|h| {
                        h.iter()
                            .map(|(id, at)| {
                                (*id, at.as_ref().map(|at| openraft::Instant::elapsed(&**at).as_millis() as u64))
                            })
                            .collect()
                    }),
                }
            })
            .collect()
    }

    /// Whether this node's copy of the cluster's resources (the metadata group's
    /// applied state) is as new as the last commit its leader reported. Until
    /// then a Broker this node does not know may just not have arrived yet (a
    /// node that restarted, or was added, replays the metadata log first).
    pub fn metadata_caught_up(&self) -> Result<(), String> {
        let metadata = self.group(METADATA_GROUP).map_err(|e| e.to_string())?;
        let metrics = metadata.raft.metrics();
        let metrics = metrics.borrow_watched();
        if metrics.current_leader.is_none() {
            return Err("no leader for metadata".into());
        }
        let applied = metrics.last_applied.as_ref().map_or(0, |id| id.index);
        let committed = metrics.cluster_committed.as_ref().map_or(0, |id| id.index);
        if applied < committed {
            return Err(format!("metadata is catching up (applied {applied} of {committed})"));
        }
        Ok(())
    }

    /// Ready: the cluster is initialised, every group this node hosts has a
    /// leader, and its metadata has caught up with the leader's.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_removed() {
            return Err("this node was removed from the cluster".into());
        }
        let Some(config) = self.cluster_config() else {
            return Err("the cluster is not initialised".into());
        };
        self.metadata_caught_up()?;
        let groups = self.groups();
        if groups.len() < config.partitions as usize + 1 {
            return Err("partition groups are still starting".into());
        }
        let leaderless: Vec<String> =
            groups.iter().filter(|g| g.leader().is_none()).map(|g| group_name(g.id)).collect();
        if !leaderless.is_empty() {
            return Err(format!("no leader for {}", leaderless.join(", ")));
        }
        // A leader keeps its role after its quorum is gone (openraft does not step down by itself); it cannot
        // commit. Regression: with two of three nodes killed, the survivor still led and answered ready while
        // every write got 503.
        let silent: Vec<String> = groups
            .iter()
            .filter(|g| g.leads_without_quorum(QUORUM_SILENCE_NOT_READY))
            .map(|g| group_name(g.id))
            .collect();
        if silent.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "this node leads {} but no quorum has answered it for {} s (are the other members down?)",
                silent.join(", "),
                QUORUM_SILENCE_NOT_READY.as_secs()
            ))
        }
    }

    /// Whether this node leads `group` (tests and status).
    pub fn leads(&self, group: GroupId) -> bool {
        self.group(group).map(|g| g.raft.metrics().borrow_watched().state == ServerState::Leader).unwrap_or(false)
    }

    /// Whether this node leads the metadata group (the one node that writes derived objects, so that two
    /// nodes never race to create the same one).
    pub fn leads_metadata(&self) -> bool {
        self.leads(METADATA_GROUP)
    }

    /// Whether this node is the Raft leader of `partition`'s group.
    pub fn leads_partition(&self, partition: u32) -> bool {
        self.leads(partition_group(partition))
    }

    /// Whether this node leads `partition` and has applied every entry of earlier terms (an entry of its own
    /// term is applied: a new leader's first entry is its own term's blank one, applied after all before it).
    /// Until then the partition's state (committed offsets) may not yet read as the last leader left it, so the
    /// dispatcher starts only from here (`handover`).
    pub fn leads_partition_applied(&self, partition: u32) -> bool {
        self.partition_leader_term(partition).is_some()
    }

    /// The term in which this node leads `partition` with its own term applied (as
    /// [`Node::leads_partition_applied`]), read at once; `None` when it does not. A partition dispatcher started
    /// now fences its commits with it ([`Node::commit_offsets_in_term`]).
    pub fn partition_leader_term(&self, partition: u32) -> Option<u64> {
        let group = self.group(partition_group(partition)).ok()?;
        let metrics = group.raft.metrics();
        let m = metrics.borrow_watched();
        let applied_term = m.last_applied.as_ref().map(|id| id.committed_leader_id().term);
        Leadership::of(m.state, m.current_leader, m.current_term, applied_term).serving.then_some(m.current_term)
    }

    /// A counter bumped whenever a group of this node starts or changes
    /// leader or server state; watchers re-check [`Node::leads_partition`].
    pub fn watch_leadership(&self) -> watch::Receiver<u64> {
        self.inner.leadership.subscribe()
    }
}

/// What a group's leadership watchers react to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leadership {
    state: ServerState,
    leader: Option<NodeId>,
    /// Leads, and has applied an entry of its own term: serves reads and dispatches.
    serving: bool,
}

impl Leadership {
    fn of(state: ServerState, leader: Option<NodeId>, term: u64, applied_term: Option<u64>) -> Self {
        Leadership { state, leader, serving: state == ServerState::Leader && applied_term == Some(term) }
    }

    /// A leader that has not applied an entry of its term yet: the moment it does is in the full metrics.
    fn awaits_own_term(&self) -> bool {
        self.state == ServerState::Leader && !self.serving
    }
}

/// Bumps `leadership` when the group's (server state, leader, leads with an entry of its own term applied)
/// changes, and once at start. Ends when the group's Raft stops.
///
/// openraft sends its full metrics at every turn of its core loop, several times per entry; following them
/// woke this task as often, on every node and group. Its server metrics change only with the role, the leader
/// and the vote, so this task follows those, and the full metrics only while this node leads a term of
/// which it has applied nothing yet (the moment it starts to serve reads and dispatch).
pub(super) async fn watch_group_leadership(raft: Raft, leadership: Arc<watch::Sender<u64>>) {
    let mut server_rx = raft.server_metrics();
    let mut all_rx = raft.metrics();
    drop(raft);
    let mut last = None;
    loop {
        // borrow_and_update, not borrow_watched: it marks the value seen, otherwise changed() would return
        // at once forever.
        let now = {
            let server = server_rx.borrow_and_update();
            let all = all_rx.borrow_and_update();
            // The term from the server metrics: the full ones are sent after them and may still be older.
            let applied_term = all.last_applied.as_ref().map(|id| id.committed_leader_id().term);
            Leadership::of(server.state, server.current_leader, server.vote.leader_id().term, applied_term)
        };
        if last != Some(now) {
            last = Some(now);
            leadership.send_modify(|v| *v = v.wrapping_add(1));
        }
        let changed = if now.awaits_own_term() {
            tokio::select! {
                changed = server_rx.changed() => changed,
                changed = all_rx.changed() => changed,
            }
        } else {
            server_rx.changed().await
        };
        if changed.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::ServerState::{Candidate, Follower, Leader, Learner};

    use super::Leadership;

    #[test]
    fn a_leader_serves_once_it_applied_an_entry_of_its_own_term_and_only_then_stops_following_every_change() {
        // (state, leader, term, applied term) → serving, awaits own term
        let cases = [
            (Leader, Some(1), 5, None, false, true),
            (Leader, Some(1), 5, Some(4), false, true),
            (Leader, Some(1), 5, Some(5), true, false),
            // The full metrics may lag the server metrics: an older term applied is not this term's entry.
            (Leader, Some(1), 6, Some(5), false, true),
            (Follower, Some(2), 5, Some(5), false, false),
            (Follower, None, 5, None, false, false),
            (Candidate, None, 6, Some(5), false, false),
            (Learner, Some(2), 5, Some(5), false, false),
        ];
        for (state, leader, term, applied, serving, awaits) in cases {
            let now = Leadership::of(state, leader, term, applied);
            assert_eq!((now.serving, now.awaits_own_term()), (serving, awaits), "{state:?} {term} {applied:?}");
        }
    }
}
