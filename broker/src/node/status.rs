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
        if leaderless.is_empty() { Ok(()) } else { Err(format!("no leader for {}", leaderless.join(", "))) }
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
        self.group(partition_group(partition)).map(|g| leads_with_own_term_applied(&g.raft)).unwrap_or(false)
    }

    /// A counter bumped whenever a group of this node starts or changes
    /// leader or server state; watchers re-check [`Node::leads_partition`].
    pub fn watch_leadership(&self) -> watch::Receiver<u64> {
        self.inner.leadership.subscribe()
    }
}

fn leads_with_own_term_applied(raft: &Raft) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    m.state == ServerState::Leader && own_term_applied(&m)
}

fn own_term_applied(m: &openraft::RaftMetrics<crate::command::TypeConfig>) -> bool {
    m.last_applied.as_ref().is_some_and(|applied| applied.committed_leader_id().term == m.current_term)
}

/// Bumps `leadership` when the group's (server state, leader, own term applied) changes, and
/// once at start. Ends when the group's Raft stops.
pub(super) async fn watch_group_leadership(raft: Raft, leadership: Arc<watch::Sender<u64>>) {
    let mut rx = raft.metrics();
    drop(raft);
    let mut last = None;
    loop {
        let now = {
            // borrow_and_update, not borrow_watched: it marks the value seen,
            // otherwise changed() would return at once forever.
            let m = rx.borrow_and_update();
            Some((m.state, m.current_leader, own_term_applied(&m)))
        };
        if now != last {
            last = now;
            leadership.send_modify(|v| *v = v.wrapping_add(1));
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
