//! Membership: adding and removing cluster members and moving leadership (one change at a time, each run to
//! completion in a task of its own), and whether this node still belongs to the cluster, decided again from the
//! current state each time the cluster config or the metadata group's membership changes.

use super::*;

impl Node {
    /// Stops serving the partition groups: this node was removed from the cluster.
    pub(super) async fn stop_partitions(&self) {
        self.inner.removed.store(true, std::sync::atomic::Ordering::SeqCst);
        let stopped: Vec<Arc<Group>> = match self.inner.groups.write() {
            Ok(mut groups) => {
                let ids: Vec<GroupId> = groups.keys().copied().filter(|g| *g != METADATA_GROUP).collect();
                ids.iter().filter_map(|id| groups.remove(id)).collect()
            }
            Err(_) => return,
        };
        for group in stopped {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(group = %group_name(group.id), error = %e, "raft shutdown");
            }
        }
        self.inner.leadership.send_modify(|v| *v = v.wrapping_add(1));
        tracing::warn!("this node was removed from the cluster: its partition groups are stopped");
    }

    /// Every group of the cluster config: metadata first, then the partitions.
    pub(super) fn cluster_groups(config: &ClusterConfig) -> Vec<GroupId> {
        std::iter::once(METADATA_GROUP).chain((0..config.partitions).map(partition_group)).collect()
    }

    /// Runs `op` on `group`'s leader until it is done (asking again while a
    /// learner catches up or another change commits), for a bounded time.
    pub(super) async fn membership(&self, group_id: GroupId, op: MembershipOp) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_DEADLINE;
        let group = self.group(group_id)?;
        loop {
            let asked_at = tokio::time::Instant::now();
            let outcome = self.write(group_id, ForwardedWrite::Membership(op.clone())).await;
            let last_error = match outcome {
                Ok(ForwardedReply::Membership(MembershipOutcome::Done)) => return Ok(()),
                Ok(ForwardedReply::Membership(MembershipOutcome::Refused(reason))) => {
                    return Err(BrokerError::MembershipRefused(format!("{}: {reason}", group_name(group_id))));
                }
                Ok(ForwardedReply::Membership(MembershipOutcome::CatchingUp)) => None,
                Ok(other) => {
                    return Err(BrokerError::Bug { group: group_id, reason: format!("unexpected reply {other:?}") });
                }
                Err(e) if e.is_retryable() => Some(e),
                Err(e) => return Err(e),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(last_error.unwrap_or_else(|| {
                    BrokerError::MembershipRefused(match &op {
                        MembershipOp::AddLearner { node, addr } => format!(
                            "{}: node {node} did not catch up within {MEMBERSHIP_DEADLINE:?} (is it running, and \
                             reachable at {addr}?); it stays a learner until it does or is removed",
                            group_name(group_id)
                        ),
                        MembershipOp::Promote(node) => format!(
                            "{}: node {node} did not catch up within {MEMBERSHIP_DEADLINE:?} (is it running, and \
                             reachable at its peer address?); it stays a learner until it does or is removed",
                            group_name(group_id)
                        ),
                        _ => format!("{}: {op:?} did not finish within {MEMBERSHIP_DEADLINE:?}", group_name(group_id)),
                    })
                }));
            }
            {
                // Wait for the group to change (new leader, new membership, progress) before asking again.
                let mut metrics = group.raft.metrics();
                // Marked seen first: a clone keeps its source's mark, and `changed()` would return at once.
                let _ = metrics.borrow_and_update();
                let wait = Duration::from_millis(self.inner.settings.tuning.election_timeout_max_ms);
                let _ = tokio::time::timeout(wait, metrics.changed()).await;
                // The metrics change with every replication step: under traffic a change that cannot commit yet
                // (a joint configuration waiting on a node that is down) was asked again hundreds of times a
                // second, each refusal an ERROR line of openraft's. At most one ask per election timeout.
                let pace = Duration::from_millis(self.inner.settings.tuning.election_timeout_min_ms);
                tokio::time::sleep_until(asked_at + pace).await;
            }
        }
    }

    /// `cluster add-node`: adds `node` (peer `addr`) to the metadata group
    /// and every partition group, each as a learner that catches up and then
    /// as a voter, and records it in the cluster config. The new node must be
    /// running (`sluice node` without `cluster init`). Idempotent.
    ///
    /// Runs to completion in its own task: a client that gives up (timeout,
    /// cancelled RPC) does not leave the node half added.
    pub async fn add_node(&self, node: NodeId, addr: String) -> Result<(), BrokerError> {
        // Refused at once, not after the changes queued before it (checked again when it runs).
        self.check_add_node(node, &addr)?;
        let this = self.clone();
        self.run_membership_change(async move { this.add_node_to_completion(node, addr).await }).await
    }

    /// Runs a membership change in a task of its own, after any change this
    /// node is already running, and waits for its outcome.
    pub(super) async fn run_membership_change(
        &self,
        change: impl std::future::Future<Output = Result<(), BrokerError>> + Send + 'static,
    ) -> Result<(), BrokerError> {
        let Ok(queued) = self.inner.membership_queue.clone().try_acquire_owned() else {
            return Err(BrokerError::QueueFull { group: METADATA_GROUP, capacity: MEMBERSHIP_QUEUE });
        };
        let serial = self.inner.membership_changes.clone();
        tokio::spawn(async move {
            let _queued = queued;
            let _serial = serial.lock().await;
            change.await
        })
        .await
        .map_err(|e| BrokerError::Interrupted {
            group: METADATA_GROUP,
            reason: format!("the membership change stopped ({e}) and may be partly done; run it again"),
        })?
    }

    /// The checks of `cluster add-node` against the current config.
    pub(super) fn check_add_node(&self, node: NodeId, addr: &str) -> Result<ClusterConfig, BrokerError> {
        let config = self.cluster_config().ok_or(BrokerError::NotInitialized)?;
        crate::command::cluster_config::check_peer_addr(addr).map_err(BrokerError::InvalidClusterConfig)?;
        if let Some(existing) = config.members.get(&node)
            && existing != addr
        {
            return Err(BrokerError::InvalidClusterConfig(format!(
                "node {node} is already a member with peer address {existing}"
            )));
        }
        if let Some((other, _)) = config.members.iter().find(|(id, a)| **a == addr && **id != node) {
            return Err(BrokerError::InvalidClusterConfig(format!("peer address {addr} belongs to member {other}")));
        }
        Ok(config)
    }

    pub(super) async fn add_node_to_completion(&self, node: NodeId, addr: String) -> Result<(), BrokerError> {
        let config = self.check_add_node(node, &addr)?;
        // Regression: a node initialised as another cluster was added, became a partition leader with that
        // cluster's log, panicked in openraft, and events posted to it were stored in this cluster's streams.
        let ask =
            JoinAsk { node, asker: self.id(), asker_addr: config.members.get(&self.id()).cloned().unwrap_or_default() };
        match self.inner.peers.join_check(&addr, &ask).await {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => return Err(BrokerError::MembershipRefused(refused)),
            Err(e) => tracing::warn!(node, %addr, error = %e, "could not ask the node whether it may join; adding it"),
        }
        for group in Self::cluster_groups(&config) {
            self.membership(group, MembershipOp::AddLearner { node, addr: addr.clone() }).await?;
            self.membership(group, MembershipOp::Promote(node)).await?;
            tracing::info!(group = %group_name(group), node, "node added as a voter");
        }
        self.write(METADATA_GROUP, ForwardedWrite::Command(LogCommand::AddMember { node, addr })).await?;
        Ok(())
    }

    /// Whether this node may join the cluster of `ask.asker` as `ask.node` (`JoinCheck`): not when it has another
    /// id, nor when it already belongs to a cluster that does not list the asking member at its address (its
    /// data dir holds another cluster's state). A node that belongs to the asker's cluster may (an `add-node`
    /// run again, a removed node that still runs taken back). Pure over this node's id and config.
    pub(crate) fn may_join(&self, ask: &JoinAsk) -> Result<(), String> {
        crate::command::cluster_config::join_decision(self.id(), self.cluster_config().as_ref(), ask)
    }

    /// `cluster remove-node`: takes `node` out of every partition group,
    /// records the new member list, then takes it out of the metadata group.
    /// The removed node stops its partition groups when it sees itself leave
    /// the metadata group. Refuses the last member and non-members.
    ///
    /// Runs to completion in its own task, like [`Node::add_node`].
    pub async fn remove_node(&self, node: NodeId) -> Result<(), BrokerError> {
        self.check_remove_node(node)?;
        let this = self.clone();
        self.run_membership_change(async move { this.remove_node_to_completion(node).await }).await
    }

    /// The checks of `cluster remove-node` against the current config.
    pub(super) fn check_remove_node(&self, node: NodeId) -> Result<ClusterConfig, BrokerError> {
        let config = self.cluster_config().ok_or(BrokerError::NotInitialized)?;
        let in_metadata = self.group(METADATA_GROUP)?.node_addr(node).is_some();
        if !config.is_member(node) && !in_metadata {
            return Err(BrokerError::NoSuchMember(format!(
                "node {node} is not a member of the cluster (members: {})",
                config.member_ids()
            )));
        }
        if config.members.keys().all(|id| *id == node) {
            return Err(BrokerError::MembershipRefused(format!("node {node} is the last member of the cluster")));
        }
        Ok(config)
    }

    pub(super) async fn remove_node_to_completion(&self, node: NodeId) -> Result<(), BrokerError> {
        let config = self.check_remove_node(node)?;
        let groups = Self::cluster_groups(&config);
        for group in groups.iter().skip(1) {
            self.membership(*group, MembershipOp::Remove(node)).await?;
            tracing::info!(group = %group_name(*group), node, "node removed");
        }
        if config.is_member(node) {
            self.write(METADATA_GROUP, ForwardedWrite::Command(LogCommand::RemoveMember(node))).await?;
            self.wait_replicated_to(METADATA_GROUP, node, REMOVAL_NOTICE_WAIT).await;
        }
        self.membership(METADATA_GROUP, MembershipOp::Remove(node)).await?;
        Ok(())
    }

    /// Where this node leads `group`, waits (at most `wait`) until `node` holds the group's log up to its last
    /// entry now. Used before the metadata group drops a node: the leader stops replicating to a node it
    /// removed, so a node that lagged would never see the `RemoveMember` that tells it it was removed (found
    /// under load: `t70`'s removed node kept reporting itself a member). A node that is down does not hold
    /// the removal up for longer than `wait`.
    async fn wait_replicated_to(&self, group: GroupId, node: NodeId, wait: Duration) {
        let Ok(group) = self.group(group) else { return };
        let metrics = group.raft.metrics().borrow_watched().clone();
        let (Some(replication), Some(target)) = (metrics.replication.as_ref(), metrics.last_log_index) else {
            return; // Not the leader: the leader's own replication decides.
        };
        if !replication.contains_key(&node) {
            return;
        }
        let reached = group
            .raft
            .wait(Some(wait))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&node))
                        .and_then(|matched| matched.as_ref())
                        .is_some_and(|matched| matched.index >= target)
                },
                "the removed node holds its removal",
            )
            .await;
        if reached.is_err() {
            tracing::warn!(node, target, "the removed node did not replicate its removal in time; removing it anyway");
        }
    }

    /// `cluster transfer-leader`: asks `group`'s leader to hand leadership to
    /// the voter `to`, and waits until this node sees `to` lead (bounded).
    pub async fn transfer_leader(&self, group_id: GroupId, to: NodeId) -> Result<(), BrokerError> {
        let config = self.cluster_config().ok_or(BrokerError::NotInitialized)?;
        if group_id > config.partitions {
            return Err(BrokerError::NoSuchGroup { group: group_id, partitions: config.partitions });
        }
        let group = self.group(group_id)?;
        let voters: Vec<NodeId> =
            group.raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect();
        if !voters.contains(&to) {
            return Err(BrokerError::NoSuchMember(format!(
                "node {to} is not a voter of {} (voters: {voters:?})",
                group_name(group_id)
            )));
        }
        if group.leader() == Some(to) {
            return Ok(());
        }
        self.membership(group_id, MembershipOp::TransferLeader(to)).await?;
        let mut metrics = group.raft.metrics();
        let wait = Duration::from_millis(self.inner.settings.tuning.election_timeout_max_ms * 4);
        let moved = tokio::time::timeout(wait, async {
            loop {
                if metrics.borrow_watched().current_leader == Some(to) {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match moved {
            Ok(true) => Ok(()),
            _ => Err(BrokerError::Interrupted {
                group: group_id,
                reason: format!("leadership did not move to node {to} within {wait:?}; retry"),
            }),
        }
    }
}

/// A group's membership as its leader sees it: the voters, every member (voters and learners) with its
/// peer address, and the members whose log is within the catch-up distance of the leader's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct GroupMembers {
    pub(super) voters: BTreeSet<NodeId>,
    pub(super) addrs: BTreeMap<NodeId, String>,
    pub(super) caught_up: BTreeSet<NodeId>,
    /// Members that have not answered the leader for the contact timeout.
    pub(super) unanswered: BTreeSet<NodeId>,
}

/// The members (in `answered`: whether each has answered, or accepts connections, now) that have not for
/// `contact_timeout` or longer, as this leader has watched them: `since` records when each was first seen
/// silent, and forgets those that answered or left. A learner not yet in the replication metrics (just added)
/// is not counted until it is.
pub(crate) fn long_unanswered(
    since: &mut BTreeMap<NodeId, tokio::time::Instant>,
    answered: &BTreeMap<NodeId, bool>,
    now: tokio::time::Instant,
    contact_timeout: Duration,
) -> BTreeSet<NodeId> {
    since.retain(|node, _| answered.get(node) == Some(&false));
    for (node, _) in answered.iter().filter(|(_, answered)| !**answered) {
        since.entry(*node).or_insert(now);
    }
    since.iter().filter(|(_, first)| now.duration_since(**first) >= contact_timeout).map(|(node, _)| *node).collect()
}

/// How long a learner's peer address may take to accept a connection, asked while it has acknowledged nothing.
const LEARNER_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The members whose log the leader knows to be at most `max_behind` entries behind its last (`matched`: the
/// last entry each is known to hold, `None` while it has acknowledged none). A member that never answered
/// has not caught up, however short the log: openraft's own wait for a learner counts its position as 0,
/// so a node that was never reached (a mistyped address, a node not started) passed for caught up while the
/// log held fewer entries than the distance, and `add-node` made it a voter.
pub(super) fn caught_up_members(
    matched: &BTreeMap<NodeId, Option<u64>>,
    last_log_index: Option<u64>,
    max_behind: u64,
) -> BTreeSet<NodeId> {
    let last = last_log_index.unwrap_or(0);
    matched
        .iter()
        .filter(|(_, matched)| matched.is_some_and(|index| last.saturating_sub(index) <= max_behind))
        .map(|(node, _)| *node)
        .collect()
}

/// What a membership operation comes to on a group, decided from its membership alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum MembershipStep {
    /// Nothing to change (already so): the operation is done.
    Done,
    Refused(String),
    AddLearner {
        node: NodeId,
        addr: String,
    },
    Promote(NodeId),
    /// The learner has not caught up (or never answered): not promoted yet, ask again later.
    WaitForLearner(NodeId),
    RemoveVoter(NodeId),
    RemoveLearner(NodeId),
    TransferLeader(NodeId),
}

/// The decision of [`run_membership`]: idempotent (repeating an operation that took effect is `Done`), and
/// refusing what would break the group (a node under two addresses, removing the last voter, handing
/// leadership to a non-voter).
pub(super) fn plan_membership(group: &str, members: &GroupMembers, op: MembershipOp) -> MembershipStep {
    let is_voter = |node: NodeId| members.voters.contains(&node);
    match op {
        MembershipOp::AddLearner { node, addr } => match members.addrs.get(&node) {
            Some(known) if *known != addr => {
                MembershipStep::Refused(format!("node {node} is already in {group} with another peer address"))
            }
            // Adding again also waits for the learner to catch up, so it is not `Done` here.
            _ => MembershipStep::AddLearner { node, addr },
        },
        MembershipOp::Promote(node) if is_voter(node) => MembershipStep::Done,
        MembershipOp::Promote(node) if members.unanswered.contains(&node) => MembershipStep::Refused(format!(
            "node {node} has not answered {group}'s leader at {} (is it running, and reachable there?); it stays a \
             learner until it answers or is removed",
            members.addrs.get(&node).map_or("its peer address", String::as_str)
        )),
        MembershipOp::Promote(node) if !members.caught_up.contains(&node) => MembershipStep::WaitForLearner(node),
        MembershipOp::Promote(node) => MembershipStep::Promote(node),
        MembershipOp::Remove(node) if !members.addrs.contains_key(&node) && !is_voter(node) => MembershipStep::Done,
        MembershipOp::Remove(node) if is_voter(node) && members.voters.len() <= 1 => {
            MembershipStep::Refused(format!("node {node} is the last voter of {group}"))
        }
        MembershipOp::Remove(node) if is_voter(node) => MembershipStep::RemoveVoter(node),
        MembershipOp::Remove(node) => MembershipStep::RemoveLearner(node),
        MembershipOp::TransferLeader(node) if !is_voter(node) => {
            MembershipStep::Refused(format!("node {node} is not a voter of {group}"))
        }
        MembershipOp::TransferLeader(node) => MembershipStep::TransferLeader(node),
    }
}

/// Carries out a membership operation on a group this node leads, as [`plan_membership`] decides it.
pub(super) async fn run_membership(
    group: &Group,
    op: MembershipOp,
    peers: &PeerClients,
    learner_contact_timeout: Duration,
) -> Result<MembershipOutcome, WriteFailure> {
    let group_id = group.id;
    let metrics = group.raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    let matched: BTreeMap<NodeId, Option<u64>> = metrics
        .replication
        .iter()
        .flatten()
        .map(|(node, matched)| (*node, matched.as_ref().map(|log_id| log_id.index)))
        .collect();
    let mut members = GroupMembers {
        voters: membership.voter_ids().collect(),
        addrs: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
        caught_up: caught_up_members(&matched, metrics.last_log_index, group.raft.config().replication_lag_threshold),
        unanswered: BTreeSet::new(),
    };
    // A learner being promoted that has acknowledged nothing yet: answering at all (a large snapshot on its way
    // holds its first acknowledgement back) is told apart from not being there by whether its peer address
    // accepts a connection.
    if let MembershipOp::Promote(node) = &op
        && let (Some(None), Some(addr)) = (matched.get(node), members.addrs.get(node))
    {
        let dial = peers.dial_addr(addr).to_string();
        let accepts = matches!(
            tokio::time::timeout(LEARNER_PROBE_TIMEOUT, tokio::net::TcpStream::connect(dial)).await,
            Ok(Ok(_))
        );
        let answered: BTreeMap<NodeId, bool> =
            matched.iter().map(|(id, matched)| (*id, matched.is_some() || (id == node && accepts))).collect();
        members.unanswered = long_unanswered(
            &mut group.unanswered_learners.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            &answered,
            tokio::time::Instant::now(),
            learner_contact_timeout,
        );
    }
    let commit_change = |change, what: &'static str| async move {
        match tokio::time::timeout(
            crate::raft::append_batcher::COMMIT_TIMEOUT,
            group.raft.change_membership(change, false),
        )
        .await
        {
            Err(_) => {
                Err(WriteFailure::Indeterminate { group: group_id, reason: format!("{what} not committed in time") })
            }
            Ok(result) => Ok(result.map(|_| ())),
        }
    };
    let result = match plan_membership(&group_name(group_id), &members, op) {
        MembershipStep::Done => return Ok(MembershipOutcome::Done),
        MembershipStep::Refused(reason) => return Ok(MembershipOutcome::Refused(reason)),
        MembershipStep::WaitForLearner(node) => {
            tracing::info!(group = %group_name(group_id), node, "the learner has not caught up yet; not promoted");
            return Ok(MembershipOutcome::CatchingUp);
        }
        MembershipStep::AddLearner { node, addr } => {
            match tokio::time::timeout(LEARNER_WAIT, group.raft.add_learner(node, BasicNode::new(addr), true)).await {
                // The learner is added; the wait for it to catch up timed out.
                Err(_) => return Ok(MembershipOutcome::CatchingUp),
                Ok(result) => result.map(|_| ()),
            }
        }
        MembershipStep::Promote(node) => {
            commit_change(ChangeMembers::AddVoterIds(BTreeSet::from([node])), "promotion").await?
        }
        MembershipStep::RemoveVoter(node) => {
            commit_change(ChangeMembers::RemoveVoters(BTreeSet::from([node])), "removal").await?
        }
        MembershipStep::RemoveLearner(node) => {
            commit_change(ChangeMembers::RemoveNodes(BTreeSet::from([node])), "removal").await?
        }
        MembershipStep::TransferLeader(node) => {
            return match group.raft.trigger().transfer_leader(node).await {
                Ok(()) => Ok(MembershipOutcome::Done),
                Err(e) => Err(WriteFailure::Indeterminate { group: group_id, reason: e.to_string() }),
            };
        }
    };
    match result {
        Ok(()) => Ok(MembershipOutcome::Done),
        Err(e) => {
            if let Some(forward) = e.forward_to_leader() {
                return Err(WriteFailure::NotLeader { group: group_id, leader: forward.leader_id });
            }
            match e.api_error() {
                // Another change (joint config) is still committing: ask again.
                Some(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_))) => {
                    Ok(MembershipOutcome::CatchingUp)
                }
                Some(_) => Ok(MembershipOutcome::Refused(e.to_string())),
                None => Err(WriteFailure::Indeterminate { group: group_id, reason: e.to_string() }),
            }
        }
    }
}

/// The log index of the metadata group's newest membership (the last one
/// this node has in its log, committed or not) if it still counts `node` in:
/// as a learner, or as a voter of the configuration it is moving to. During a
/// removal the joint configuration's last half no longer has the node; during
/// an add the node is a learner, then a voter.
pub(super) fn listed_in_metadata_membership(stored: &crate::command::StoredMembership, node: NodeId) -> Option<u64> {
    let membership = stored.membership();
    let listed = membership.learner_ids().any(|id| id == node)
        || membership.get_joint_config().last().is_some_and(|voters| voters.contains(&node));
    listed.then(|| stored.log_id().as_ref().map_or(0, |id| id.index))
}

/// Whether `node` belongs to the cluster: listed in the member list, or
/// listed in a metadata membership newer than the entry that last removed it
/// from the member list (see [`watch_cluster_config`]).
pub(super) fn belongs(applied: &AppliedConfig, membership: &crate::command::StoredMembership, node: NodeId) -> bool {
    let removed_at = applied.removed_at.get(&node).copied().unwrap_or(0);
    applied.config.is_member(node)
        || listed_in_metadata_membership(membership, node).is_some_and(|index| index > removed_at)
}

/// Keeps the partition groups running exactly while this node belongs to the
/// cluster, decided from the current state every time either the cluster
/// config or the metadata group's membership changes, never from a latch:
/// a node wiped and added again with its old id replays the metadata log,
/// which removes it before it adds it again, possibly before the add has
/// reached the partition groups (`docs/reliability.md`, findings).
///
/// - in the member list: serve;
/// - listed in a metadata membership newer than the entry that last took it
///   out of the member list (a node being added is, from add-node's first
///   step until its last, `AddMember`; other members' changes meanwhile do
///   not count): serve;
/// - otherwise, if it was ever listed: `cluster remove-node` of this node has
///   taken it out of every partition group and then out of the member list:
///   stop the partition groups. (Not waiting for the metadata membership to
///   drop it too: the leader stops replicating to a removed node, which may
///   never see that entry.)
pub(super) async fn watch_cluster_config(
    node: Node,
    mut config_rx: watch::Receiver<Option<AppliedConfig>>,
    mut was_member: bool,
) {
    let Ok(metadata) = node.group(METADATA_GROUP) else {
        return;
    };
    // Server metrics change on membership, leader and state changes only (not on every append); the
    // membership is read from the same value that woke the watcher.
    let mut membership_rx = metadata.raft.server_metrics();
    loop {
        let config = config_rx.borrow_and_update().clone();
        let (membership, leader) = {
            let metrics = membership_rx.borrow_and_update();
            (metrics.membership_config.clone(), metrics.current_leader)
        };
        let last_membership = *membership.log_id();
        if let Some(applied) = config {
            if belongs(&applied, &membership, node.id()) {
                if node.is_removed() {
                    tracing::info!("this node belongs to the cluster again: starting its partition groups");
                    node.inner.removed.store(false, std::sync::atomic::Ordering::SeqCst);
                }
                was_member = true;
            } else if was_member && !node.is_removed() {
                node.stop_partitions().await;
            }
            if let Err(e) = node.ensure_partitions(&applied).await {
                tracing::error!(error = %e, "starting partition groups");
            }
        }
        // Wake on a new config, a new metadata membership, or this node taking the metadata group's lead (it
        // may then found partition groups: `founds_partition_groups`).
        loop {
            tokio::select! {
                changed = config_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                changed = membership_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let (now, now_leader) = {
                        let metrics = membership_rx.borrow_watched();
                        (*metrics.membership_config.log_id(), metrics.current_leader)
                    };
                    if last_membership != now || (now_leader != leader && now_leader == Some(node.id())) {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    fn members(voters: &[NodeId], learners: &[NodeId]) -> GroupMembers {
        GroupMembers {
            voters: voters.iter().copied().collect(),
            addrs: voters.iter().chain(learners).map(|id| (*id, format!("n{id}:7000"))).collect(),
            caught_up: voters.iter().chain(learners).copied().collect(),
            unanswered: BTreeSet::new(),
        }
    }

    #[test]
    fn a_learner_that_has_not_answered_for_the_contact_timeout_is_refused_promotion() {
        let mut group = members(&[1, 2], &[3]);
        group.caught_up.remove(&3);
        group.unanswered.insert(3);
        assert_eq!(
            plan_membership("partition-0", &group, MembershipOp::Promote(3)),
            MembershipStep::Refused(
                "node 3 has not answered partition-0's leader at n3:7000 (is it running, and reachable there?); it \
                 stays a learner until it answers or is removed"
                    .into()
            )
        );
    }

    #[test]
    fn members_unanswered_for_the_contact_timeout_are_counted_from_when_first_seen() {
        let timeout = Duration::from_secs(30);
        let start = tokio::time::Instant::now();
        let mut since = BTreeMap::new();
        let unanswered = BTreeMap::from([(3, false), (4, true)]);
        assert!(long_unanswered(&mut since, &unanswered, start, timeout).is_empty(), "first seen now");
        let later = start + Duration::from_secs(29);
        assert!(long_unanswered(&mut since, &unanswered, later, timeout).is_empty(), "not yet");
        let at_timeout = start + timeout;
        assert_eq!(long_unanswered(&mut since, &unanswered, at_timeout, timeout), BTreeSet::from([3]));
        // It answers: forgotten; silent again later, counted from then.
        let answered = BTreeMap::from([(3, true), (4, true)]);
        assert!(long_unanswered(&mut since, &answered, at_timeout, timeout).is_empty());
        assert!(since.is_empty(), "an answering member is forgotten");
        let again = at_timeout + Duration::from_secs(1);
        assert!(long_unanswered(&mut since, &unanswered, again, timeout).is_empty(), "counted afresh");
        // One that left the replication (removed) is forgotten too.
        assert!(long_unanswered(&mut since, &BTreeMap::new(), again + timeout, timeout).is_empty());
        assert!(since.is_empty());
    }

    #[test]
    fn a_learner_that_never_answered_is_not_promoted() {
        let mut group = members(&[1, 2], &[3]);
        group.caught_up.remove(&3);
        assert_eq!(plan_membership("partition-0", &group, MembershipOp::Promote(3)), MembershipStep::WaitForLearner(3));
        // Promoting a voter again is done whatever its replication says.
        group.caught_up.remove(&2);
        assert_eq!(plan_membership("partition-0", &group, MembershipOp::Promote(2)), MembershipStep::Done);
    }

    #[test]
    fn members_are_caught_up_within_the_distance_once_they_answered() {
        let max_behind = 5_000;
        // (matched, last log index, caught up, why)
        let cases: [(Option<u64>, Option<u64>, bool, &str); 7] = [
            (None, Some(7), false, "never answered, however short the log (found: promoted at once)"),
            (None, None, false, "never answered, empty log"),
            (Some(0), Some(7), true, "answered, seven behind"),
            (Some(7), Some(7), true, "holds the last entry"),
            (Some(1_000), Some(6_000), true, "exactly the distance behind"),
            (Some(999), Some(6_000), false, "one past the distance"),
            (Some(9), Some(7), true, "ahead of a stale last index (metrics read apart)"),
        ];
        for (matched, last, expected, why) in cases {
            let caught_up = caught_up_members(&BTreeMap::from([(3, matched)]), last, max_behind);
            assert_eq!(caught_up.contains(&3), expected, "{why}");
        }
        assert!(caught_up_members(&BTreeMap::new(), Some(7), max_behind).is_empty(), "not replicated to: unknown");
    }

    #[test]
    fn membership_operations_are_planned_from_the_group_membership() {
        use MembershipOp as Op;
        use MembershipStep as Step;
        let group = members(&[1, 2], &[3]);
        let refused = |reason: &str| Step::Refused(reason.to_string());
        let cases: Vec<(Op, Step, &str)> = vec![
            (
                Op::AddLearner { node: 4, addr: "n4:7000".into() },
                Step::AddLearner { node: 4, addr: "n4:7000".into() },
                "a new node joins as a learner",
            ),
            (
                Op::AddLearner { node: 3, addr: "n3:7000".into() },
                Step::AddLearner { node: 3, addr: "n3:7000".into() },
                "adding again waits for the learner again",
            ),
            (
                Op::AddLearner { node: 3, addr: "elsewhere:7000".into() },
                refused("node 3 is already in partition-0 with another peer address"),
                "one node, one address",
            ),
            (Op::Promote(3), Step::Promote(3), "a learner is promoted"),
            (Op::Promote(2), Step::Done, "promoting a voter again is done"),
            (Op::Remove(2), Step::RemoveVoter(2), "a voter is removed by a joint change"),
            (Op::Remove(3), Step::RemoveLearner(3), "a learner is just dropped"),
            (Op::Remove(9), Step::Done, "removing a node that is not there is done"),
            (Op::TransferLeader(2), Step::TransferLeader(2), "leadership moves to a voter"),
            (Op::TransferLeader(3), refused("node 3 is not a voter of partition-0"), "never to a learner"),
            (Op::TransferLeader(9), refused("node 9 is not a voter of partition-0"), "never to a stranger"),
        ];
        for (op, expected, why) in cases {
            assert_eq!(plan_membership("partition-0", &group, op), expected, "{why}");
        }
        assert_eq!(
            plan_membership("partition-0", &members(&[1], &[3]), Op::Remove(1)),
            refused("node 1 is the last voter of partition-0"),
            "the last voter stays"
        );
        assert_eq!(plan_membership("partition-0", &members(&[1], &[3]), Op::Remove(3)), Step::RemoveLearner(3));
    }
}
