//! One Raft group on this node: its Raft instance, the read view of its
//! state machine and its append batcher, plus a task that publishes its
//! Raft metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{Config, ServerState, SnapshotPolicy};

use crate::command::{GroupId, NodeId, group_name};
use crate::error::BrokerError;
use crate::raft::append_batcher::{AppendBatcher, AppendLimits, payload_entries_for};
use crate::raft::forward_batcher::ForwardBatcher;
use crate::store::Raft;
use crate::store::{GroupLogStore, GroupStateMachine, Store, StreamView};
use crate::transport::client::{NetworkFactory, PeerClients};

/// Timing and log-compaction settings shared by all groups of a node.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot (for followers that lag a little).
    pub keep_entries_after_snapshot: u64,
    /// A learner counts as caught up (and may be promoted to voter) once it
    /// is within this many entries of the leader's log.
    pub learner_catch_up_entries: u64,
    /// A learner that has not answered its leader for this long is refused promotion (`cluster add-node`
    /// fails instead of waiting the whole membership deadline for a node that is not there).
    pub learner_contact_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 50,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            snapshot_every_entries: 20_000,
            keep_entries_after_snapshot: 1_000,
            learner_catch_up_entries: 5_000,
            learner_contact_timeout_ms: 30_000,
        }
    }
}

impl RaftTuning {
    fn openraft_config(&self, group: GroupId, limits: &AppendLimits) -> Result<Config, BrokerError> {
        let max_payload_entries = payload_entries_for(limits.max_bytes_per_entry)
            .map_err(|reason| BrokerError::InvalidRaftConfig { group, reason })?;
        let config = Config {
            cluster_name: format!("sluice-{}", group_name(group)),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // Building a snapshot writes only its meta (the state is in RocksDB already); the data is
            // written when a follower needs it (`store/snapshot.rs`), so a build is cheap at any size.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.keep_entries_after_snapshot,
            replication_lag_threshold: self.learner_catch_up_entries,
            max_payload_entries,
            install_snapshot_timeout: 10_000,
            enable_pre_vote: Some(true),
            // A leader that restarts is elected again, never restored (openraft's default restores it at once,
            // in the same term and without a blank entry). After a power cut of every node, a leader restored
            // that way had lost an entry a follower had kept, and wrote another one under the same log id: the
            // follower kept its own, and the replicas' streams diverged (session 67, `t81`'s control run; openraft
            // warns of it for state machines that do not flush on every apply, as Sluice's does not).
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        config.validate().map_err(|e| BrokerError::InvalidRaftConfig { group, reason: e.to_string() })
    }
}

pub(crate) struct Group {
    pub id: GroupId,
    pub raft: Raft,
    pub view: StreamView,
    pub batcher: AppendBatcher,
    /// Appends this node forwards to the group's leader when it does not lead.
    pub forwarder: ForwardBatcher,
    /// Where this node leads: since when each learner it replicates to has not answered
    /// ([`crate::node::membership::long_unanswered`]).
    pub unanswered_learners: std::sync::Mutex<BTreeMap<NodeId, tokio::time::Instant>>,
}

impl Group {
    pub(crate) async fn start(
        node_id: NodeId,
        group: GroupId,
        store: &Store,
        peers: PeerClients,
        tuning: &RaftTuning,
        limits: AppendLimits,
    ) -> Result<Arc<Group>, BrokerError> {
        let log_store = GroupLogStore::new(store.db().clone(), store.wal().clone(), group);
        let db = store.db().clone();
        let state_machine = GroupStateMachine::open(
            db,
            group,
            store.snapshot_dir(),
            store.dedupe_horizons().clone(),
            store.dedupe_memory(),
        )
        .map_err(|e| BrokerError::io(format!("state machine of {}", group_name(group)), e))?;
        let view = state_machine.view();
        let raft_started = state_machine.raft_started();
        let config = Arc::new(tuning.openraft_config(group, &limits)?);
        let forwarder = ForwardBatcher::start(group, peers.clone(), limits.clone());
        let network = NetworkFactory::new(group, peers);
        let raft = Raft::new(node_id, config, network, log_store, state_machine)
            .await
            .map_err(|e| BrokerError::Raft { group, reason: e.to_string() })?;
        raft_started.store(true, std::sync::atomic::Ordering::Release);
        let batcher = AppendBatcher::start(group, raft.clone(), limits);
        tokio::spawn(publish_metrics(group, raft.clone()));
        tokio::spawn(release_idle_dedupe_windows(raft.clone()));
        Ok(Arc::new(Group { id: group, raft, view, batcher, forwarder, unanswered_learners: Default::default() }))
    }

    /// Waits until this group's leader, vote or membership changes, or `wait` passes: what a write or read
    /// refused for want of a leader waits for before it asks again.
    pub(crate) async fn leadership_changed_within(&self, wait: std::time::Duration) {
        let mut server = self.raft.server_metrics();
        // A clone keeps its source's mark of what was seen, which openraft never moves: unmarked, `changed()`
        // returned at once every time, and the retry loops around this spun for their whole deadline.
        let _ = server.borrow_and_update();
        let _ = tokio::time::timeout(wait, server.changed()).await;
    }

    /// Returns once this node no longer sees `leader` leading the group (another leads, or an election is on).
    /// Pending while the group runs unchanged, and for good once it has shut down.
    pub(crate) async fn deposed(&self, leader: NodeId) {
        let mut server = self.raft.server_metrics();
        loop {
            if server.borrow_and_update().current_leader != Some(leader) {
                return;
            }
            if server.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Whether this node leads the group, has other voters, and no quorum of them has acknowledged it for
    /// `silence`. (A lone voter is its own quorum: openraft records no acknowledgement for it.)
    pub(crate) fn leads_without_quorum(&self, silence: std::time::Duration) -> bool {
        use openraft::Instant as _;
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        if metrics.state != ServerState::Leader || metrics.membership_config.membership().voter_ids().count() < 2 {
            return false;
        }
        metrics.last_quorum_acked.as_ref().is_some_and(|acked| acked.elapsed() > silence)
    }

    /// The peer address of `node` in this group's membership.
    pub(crate) fn node_addr(&self, node: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.membership_config.membership().get_node(&node).map(|n| n.addr.clone())
    }

    pub(crate) fn is_leader(&self, node_id: NodeId) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(node_id)
    }
}

/// How often the log-index gauges are read (openraft's full metrics are not followed: below).
const INDEX_GAUGES_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a group's idle dedupe windows are looked for.
const DEDUPE_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Every [`DEDUPE_SWEEP_EVERY`], has the group's state machine release the dedupe windows of idle streams, in its
/// worker between two applies (a window must not go while an apply's admitted keys are not in the index yet).
/// Ends when the group stops.
async fn release_idle_dedupe_windows(raft: Raft) {
    let mut tick = tokio::time::interval(DEDUPE_SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        fn release(sm: &mut GroupStateMachine) -> futures::future::BoxFuture<'_, ()> {
            sm.release_idle_dedupe_windows();
            Box::pin(std::future::ready(()))
        }
        if raft.external_state_machine_request(release).await.is_err() {
            return;
        }
    }
}

/// Per-group gauges and the leader-change counter, from openraft's metrics.
///
/// openraft sends its full metrics at every turn of its core loop, several times per entry; following them
/// woke this task as often. It wakes when the server metrics change (role, leader, vote: the leader-change
/// counter misses none) and reads the log indexes every [`INDEX_GAUGES_EVERY`].
async fn publish_metrics(group: GroupId, raft: Raft) {
    let label = group_name(group);
    let committed = metrics::gauge!("sluice_raft_commit_index", "group" => label.clone());
    let applied = metrics::gauge!("sluice_raft_applied_index", "group" => label.clone());
    let last_log = metrics::gauge!("sluice_raft_last_log_index", "group" => label.clone());
    let term = metrics::gauge!("sluice_raft_term", "group" => label.clone());
    let is_leader = metrics::gauge!("sluice_raft_is_leader", "group" => label.clone());
    let leader_changes = metrics::counter!("sluice_raft_leader_changes_total", "group" => label.clone());
    let mut server_rx = raft.server_metrics();
    let all_rx = raft.metrics();
    drop(raft);
    let mut index_tick = tokio::time::interval(INDEX_GAUGES_EVERY);
    index_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_leader = None;
    loop {
        {
            let server = server_rx.borrow_and_update();
            term.set(server.vote.leader_id().term as f64);
            is_leader.set(if server.state == ServerState::Leader { 1.0 } else { 0.0 });
            if server.current_leader != last_leader {
                if server.current_leader.is_some() {
                    leader_changes.increment(1);
                    tracing::info!(group = %label, leader = ?server.current_leader, term = server.vote.leader_id().term, "leader changed");
                }
                last_leader = server.current_leader;
            }
        }
        {
            let m = all_rx.borrow_watched();
            committed.set(m.local_committed.as_ref().map(|id| id.index as f64).unwrap_or(0.0));
            applied.set(m.last_applied.as_ref().map(|id| id.index as f64).unwrap_or(0.0));
            last_log.set(m.last_log_index.unwrap_or(0) as f64);
        }
        tokio::select! {
            changed = server_rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = index_tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::client::MAX_PEER_MESSAGE_BYTES;

    /// Regression: 16 entries per AppendEntries whatever their size, so raising `--max-batch-bytes` past about
    /// 5.7 MiB made full messages larger than a peer accepts, and replication failed at every try.
    #[test]
    fn an_append_entries_carries_as_many_of_the_largest_entry_as_a_peer_message_holds() {
        let cases = [(1 << 20, 16), (4_600_000, 16), (8 << 20, 11), (40 << 20, 2), (94 << 20, 1)];
        for (max_bytes_per_entry, entries) in cases {
            let fits = payload_entries_for(max_bytes_per_entry).expect("fits");
            assert_eq!(fits, entries, "{max_bytes_per_entry}");
            let message = fits as usize * (max_bytes_per_entry + (64 << 10));
            assert!(message < MAX_PEER_MESSAGE_BYTES, "{max_bytes_per_entry}: {message}");
        }
        let refused = payload_entries_for(96 << 20).expect_err("an entry larger than a message");
        assert!(refused.contains("--max-batch-bytes"), "{refused}");
    }
}
