//! A Sluice node: the store, the metadata group, the partition groups of the
//! cluster config, and the write/read API the servers and later crates use.

pub mod membership;
pub mod publish;
pub mod retention;

use membership::{belongs, run_membership, watch_cluster_config};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio::sync::watch;

use crate::command::cluster_config::ClusterConfig;
use crate::command::forward::{ForwardedReply, ForwardedWrite, MembershipOp, MembershipOutcome, WriteFailure};
use crate::command::{
    Appended, Dedupe, GroupId, LogCommand, LogResponse, METADATA_GROUP, NodeId, OffsetCommit, ResourceKey,
    ResourceRecord, StreamAppend, group_name, partition_group,
};
use crate::error::BrokerError;
use crate::raft::append_batcher::AppendLimits;
use crate::raft::group::{Group, RaftTuning};
use crate::store::AppliedConfig;
use crate::store::{Raft, ReadBatch, Store};
use crate::transport::client::PeerClients;

/// Bounds of one read.
#[derive(Clone, Debug)]
pub struct ReadLimits {
    pub max_records: usize,
    pub max_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self { max_records: 10_000, max_bytes: 16 << 20 }
    }
}

/// Longest stream name (bytes).
pub const MAX_STREAM_NAME_BYTES: usize = 512;

#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub tuning: RaftTuning,
    pub append_limits: AppendLimits,
    pub read_limits: ReadLimits,
    /// How often the leader of a partition applies retention.
    pub retention_check_interval: Duration,
    /// `--peer-route`: dial a peer advertised as the key at the value instead.
    pub peer_routes: BTreeMap<String, String>,
}

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

/// How long a leader waits for a new learner to catch up before it answers
/// "still catching up" (below the forward RPC's timeout; the caller asks again).
const LEARNER_WAIT: Duration = Duration::from_secs(5);
/// Membership changes one node runs or holds waiting at once; more are refused (retryable).
const MEMBERSHIP_QUEUE: usize = 8;

/// How long `cluster add-node` / `remove-node` keep trying one group.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(180);

#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    settings: NodeSettings,
    store: Store,
    peers: PeerClients,
    groups: RwLock<HashMap<GroupId, Arc<Group>>>,
    /// Serialises group creation (never held by readers).
    creating: tokio::sync::Mutex<()>,
    /// Serialises `cluster add-node` / `remove-node` run by this node: a
    /// client that repeats a change after a timeout waits for the first one
    /// to finish instead of racing it.
    membership_changes: Arc<tokio::sync::Mutex<()>>,
    /// Bounds the changes running or waiting on this node.
    membership_queue: Arc<tokio::sync::Semaphore>,
    /// Set when this node was removed from the cluster (`cluster remove-node`):
    /// its partition groups are stopped.
    removed: std::sync::atomic::AtomicBool,
    /// Bumped whenever a group starts or changes leader or server state, so
    /// that components that act only where this node leads (the dispatcher)
    /// re-check without polling every group.
    leadership: Arc<watch::Sender<u64>>,
}

impl Node {
    /// Opens the data dir and starts the metadata group and, if the cluster
    /// is initialised, the partition groups.
    pub async fn open(settings: NodeSettings) -> Result<Node, BrokerError> {
        claim_data_dir(&settings.data_dir, settings.node_id)?;
        let store = Store::open(&settings.data_dir)?;
        let peers = PeerClients::with_routes(settings.peer_routes.clone());
        let node = Node {
            inner: Arc::new(NodeInner {
                settings,
                store,
                peers,
                groups: RwLock::new(HashMap::new()),
                creating: tokio::sync::Mutex::new(()),
                membership_changes: Arc::new(tokio::sync::Mutex::new(())),
                membership_queue: Arc::new(tokio::sync::Semaphore::new(MEMBERSHIP_QUEUE)),
                removed: std::sync::atomic::AtomicBool::new(false),
                leadership: Arc::new(watch::Sender::new(0)),
            }),
        };
        let metadata = node.start_group(METADATA_GROUP).await?;
        let mut was_member = false;
        if let Some(applied) = metadata.view.watch_cluster_config().borrow().clone() {
            let config = &applied.config;
            // The metrics show the membership of the log only once the group's core runs: wait for it
            // (bounded). A node with a config has one (the initial membership precedes `cluster init`).
            let loaded = metadata
                .raft
                .wait(Some(Duration::from_secs(10)))
                .metrics(|m| m.membership_config.log_id().is_some(), "metadata membership loaded")
                .await;
            if let Err(e) = loaded {
                tracing::warn!(error = %e, "the metadata membership did not load; deciding without it");
            }
            let membership = metadata.raft.metrics().borrow_watched().membership_config.clone();
            // A node being added is in a metadata membership newer than its last removal from the member
            // list before the list names it (`cluster add-node` records it last): it may restart meanwhile.
            was_member = belongs(&applied, &membership, node.id());
            if !was_member {
                // Stop the group first, so that nothing logs after the error.
                let _ = metadata.raft.shutdown().await;
                return Err(BrokerError::NotAMember(format!(
                    "node id {} is not a member of the cluster stored in {} (members: {}; a node removed with `cluster remove-node` cannot rejoin with its old data); start with one of those ids, or use a new --data dir",
                    node.id(),
                    node.inner.settings.data_dir.display(),
                    config.member_ids()
                )));
            }
            node.ensure_partitions(config).await?;
        }
        tokio::spawn(watch_cluster_config(node.clone(), metadata.view.watch_cluster_config(), was_member));
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.settings.node_id
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.inner.settings
    }

    pub fn cluster_config(&self) -> Option<ClusterConfig> {
        self.group(METADATA_GROUP).ok().and_then(|g| g.view.cluster_config())
    }

    pub(crate) fn group(&self, group: GroupId) -> Result<Arc<Group>, BrokerError> {
        let groups = self.inner.groups.read().map_err(|_| BrokerError::ShuttingDown)?;
        groups.get(&group).cloned().ok_or(if group == METADATA_GROUP {
            BrokerError::ShuttingDown
        } else {
            BrokerError::NotInitialized
        })
    }

    fn groups(&self) -> Vec<Arc<Group>> {
        let mut groups: Vec<_> = self.inner.groups.read().map(|g| g.values().cloned().collect()).unwrap_or_default();
        groups.sort_by_key(|g| g.id);
        groups
    }

    async fn start_group(&self, group: GroupId) -> Result<Arc<Group>, BrokerError> {
        let _creating = self.inner.creating.lock().await;
        if let Ok(existing) = self.group(group)
            && existing.id == group
        {
            return Ok(existing);
        }
        let settings = &self.inner.settings;
        let started = Group::start(
            settings.node_id,
            group,
            &self.inner.store,
            self.inner.peers.clone(),
            &settings.tuning,
            settings.append_limits.clone(),
        )
        .await?;
        self.inner.groups.write().map_err(|_| BrokerError::ShuttingDown)?.insert(group, started.clone());
        // Spawned after the insert: its first bump (the group's start) must
        // find the group in the map.
        tokio::spawn(watch_group_leadership(started.raft.clone(), self.inner.leadership.clone()));
        tracing::info!(group = %group_name(group), "started group");
        Ok(started)
    }

    /// Starts every partition group of `config`. The members given to
    /// `cluster init` also initialise each group whose Raft is not
    /// initialised; a node added later never does (it would found a
    /// conflicting one-member group): it waits for the leader's replication.
    async fn ensure_partitions(&self, config: &ClusterConfig) -> Result<(), BrokerError> {
        if self.is_removed() {
            return Ok(());
        }
        let members = raft_members(config);
        let initial = config.is_initial_member(self.id());
        for partition in 0..config.partitions {
            let group = self.start_group(partition_group(partition)).await?;
            if initial
                && !group
                    .raft
                    .is_initialized()
                    .await
                    .map_err(|e| BrokerError::Raft { group: group.id, reason: e.to_string() })?
            {
                // Every member initialises with the same membership: the
                // initial entries are identical, so this is safe to race.
                if let Err(e) = group.raft.initialize(members.clone()).await {
                    tracing::debug!(group = %group_name(group.id), error = %e, "initialise skipped");
                }
            }
        }
        Ok(())
    }

    /// Initialises a new cluster. Must be sent to one of `config.members`.
    pub async fn init_cluster(&self, config: ClusterConfig) -> Result<(), BrokerError> {
        if !config.is_member(self.id()) {
            return Err(BrokerError::InvalidClusterConfig(format!(
                "this node (id {}) is not in the member list ({}); send init to a member",
                self.id(),
                config.member_ids()
            )));
        }
        if let Some(existing) = self.cluster_config() {
            return if existing.same_init(&config) { Ok(()) } else { Err(already_initialized(&existing)) };
        }
        let metadata = self.group(METADATA_GROUP)?;
        if !metadata
            .raft
            .is_initialized()
            .await
            .map_err(|e| BrokerError::Raft { group: METADATA_GROUP, reason: e.to_string() })?
            && let Err(e) = metadata.raft.initialize(raft_members(&config)).await
        {
            tracing::debug!(error = %e, "metadata group initialise skipped");
        }
        let reply =
            self.write(METADATA_GROUP, ForwardedWrite::Command(LogCommand::InitCluster(config.clone()))).await?;
        if let ForwardedReply::Response(LogResponse::AlreadyInitialized(existing)) = reply
            && !existing.same_init(&config)
        {
            return Err(already_initialized(&existing));
        }
        self.ensure_partitions(&config).await
    }

    /// Appends `payloads` to `stream` in `partition`; answers where they went
    /// once committed (the stored ones have dense offsets from `first_offset`;
    /// with `dedupe`, records seen within the window are not stored again).
    pub async fn append(
        &self,
        stream: &str,
        partition: u32,
        payloads: Vec<Bytes>,
        arrival_ms: u64,
        dedupe: Option<Dedupe>,
    ) -> Result<Appended, BrokerError> {
        validate_stream_name(stream)?;
        if let Some(dedupe) = &dedupe
            && dedupe.keys.len() != payloads.len()
        {
            return Err(BrokerError::InvalidStream { stream: stream.to_string(), rule: "one dedupe key per payload" });
        }
        let group = self.partition_group_id(partition)?;
        let append = StreamAppend { stream: stream.to_string(), arrival_ms, payloads, dedupe };
        match self.write(group, ForwardedWrite::Append(append)).await? {
            ForwardedReply::Appended(appended) => Ok(appended),
            other => Err(BrokerError::Bug { group, reason: format!("unexpected reply {other:?}") }),
        }
    }

    /// Drops the records of `stream` in `partition` below `before_offset` (retention).
    pub async fn trim(&self, partition: u32, stream: &str, before_offset: u64) -> Result<(), BrokerError> {
        let group = self.partition_group_id(partition)?;
        let command = LogCommand::Trim { stream: stream.to_string(), before_offset };
        self.write(group, ForwardedWrite::Command(command)).await.map(|_| ())
    }

    /// Commits consumer offsets in `partition`'s group: each cursor moves to
    /// `max(stored, offset)`, or exactly `offset` with `reset`. Through Raft,
    /// so that a new leader resumes delivery where the old one left off.
    pub async fn commit_offsets(&self, partition: u32, commits: Vec<OffsetCommit>) -> Result<(), BrokerError> {
        for commit in &commits {
            validate_cursor_name(&commit.cursor)?;
        }
        let group = self.partition_group_id(partition)?;
        if commits.is_empty() {
            return Ok(());
        }
        self.write(group, ForwardedWrite::Command(LogCommand::CommitOffsets(commits))).await.map(|_| ())
    }

    /// Forgets consumer cursors in `partition`'s group (absent ones are fine).
    pub async fn delete_offsets(&self, partition: u32, cursors: Vec<String>) -> Result<(), BrokerError> {
        for cursor in &cursors {
            validate_cursor_name(cursor)?;
        }
        let group = self.partition_group_id(partition)?;
        if cursors.is_empty() {
            return Ok(());
        }
        self.write(group, ForwardedWrite::Command(LogCommand::DeleteOffsets(cursors))).await.map(|_| ())
    }

    /// A cursor's committed offset in `partition`, as applied on this node.
    pub fn committed_offset(&self, partition: u32, cursor: &str) -> Result<Option<u64>, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        group.view.committed_offset(cursor).map_err(|e| BrokerError::io("reading a committed offset", e))
    }

    /// Every cursor committed in `partition` and its offset, ordered by cursor name.
    pub fn committed_offsets(&self, partition: u32) -> Result<Vec<(String, u64)>, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        group.view.committed_offsets().map_err(|e| BrokerError::io("reading committed offsets", e))
    }

    /// Creates or replaces a resource object in the metadata group; answers
    /// `created`, `configured` or `unchanged`.
    pub async fn put_resource(&self, record: ResourceRecord) -> Result<String, BrokerError> {
        match self.write(METADATA_GROUP, ForwardedWrite::Command(LogCommand::PutResource(record))).await? {
            ForwardedReply::Response(LogResponse::Applied { outcome }) => Ok(outcome),
            other => Err(BrokerError::Bug { group: METADATA_GROUP, reason: format!("unexpected reply {other:?}") }),
        }
    }

    /// Deletes a resource object; `false` when there was none (nothing changed).
    pub async fn delete_resource(&self, key: ResourceKey) -> Result<bool, BrokerError> {
        match self.write(METADATA_GROUP, ForwardedWrite::Command(LogCommand::DeleteResource(key))).await? {
            ForwardedReply::Response(LogResponse::Deleted { existed }) => Ok(existed),
            other => Err(BrokerError::Bug { group: METADATA_GROUP, reason: format!("unexpected reply {other:?}") }),
        }
    }

    /// A resource object as applied on this node.
    pub fn resource(&self, key: &ResourceKey) -> Option<String> {
        self.group(METADATA_GROUP).ok().and_then(|g| g.view.resource(key))
    }

    /// Every resource of `kind` as applied on this node.
    pub fn resources(&self, kind: &str) -> Vec<(ResourceKey, String)> {
        self.group(METADATA_GROUP).map(|g| g.view.resources(kind)).unwrap_or_default()
    }

    /// Changes whenever a resource is put or deleted (None while shutting down).
    pub fn watch_resources(&self) -> Option<watch::Receiver<u64>> {
        self.group(METADATA_GROUP).ok().map(|g| g.view.watch_resources())
    }

    /// The number of partitions (0 before `cluster init`).
    pub fn partitions(&self) -> u32 {
        self.cluster_config().map(|c| c.partitions).unwrap_or(0)
    }

    fn partition_group_id(&self, partition: u32) -> Result<GroupId, BrokerError> {
        let config = self.cluster_config().ok_or(BrokerError::NotInitialized)?;
        if partition >= config.partitions {
            return Err(BrokerError::NoSuchPartition { partition, partitions: config.partitions });
        }
        Ok(partition_group(partition))
    }

    /// Writes through the group's leader: locally, or forwarded one hop.
    /// Definite refusals (no leader yet, stale leader) are retried while a
    /// new leader is elected, for a bounded time.
    async fn write(&self, group_id: GroupId, write: ForwardedWrite) -> Result<ForwardedReply, BrokerError> {
        let group = self.group(group_id)?;
        let tuning = &self.inner.settings.tuning;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(tuning.election_timeout_max_ms * 4);
        loop {
            let attempt = match group.leader() {
                Some(leader) if leader == self.id() => self.write_local(group_id, write.clone()).await,
                Some(leader) => match group.node_addr(leader) {
                    Some(addr) => match &write {
                        ForwardedWrite::Append(append) => {
                            group.forwarder.submit(&addr, append.clone()).await.map(ForwardedReply::Appended)
                        }
                        _ => self.inner.peers.forward(&addr, group_id, &write).await,
                    },
                    None => Err(WriteFailure::NotLeader { group: group_id, leader: Some(leader) }),
                },
                None => Err(WriteFailure::NotLeader { group: group_id, leader: None }),
            };
            match attempt {
                Err(WriteFailure::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    let mut metrics = group.raft.metrics();
                    let _ =
                        tokio::time::timeout(Duration::from_millis(tuning.heartbeat_ms * 2), metrics.changed()).await;
                }
                other => return other.map_err(BrokerError::from),
            }
        }
    }

    /// Writes on this node, which must lead the group (the `Forward` RPC lands here).
    pub(crate) async fn write_local(
        &self,
        group_id: GroupId,
        write: ForwardedWrite,
    ) -> Result<ForwardedReply, WriteFailure> {
        let group = self.group(group_id).map_err(|_| WriteFailure::NotLeader { group: group_id, leader: None })?;
        if !group.is_leader(self.id()) {
            return Err(WriteFailure::NotLeader { group: group_id, leader: group.leader() });
        }
        match write {
            ForwardedWrite::Append(append) => group.batcher.submit(append).await.map(ForwardedReply::Appended),
            ForwardedWrite::AppendBatch(appends) => {
                let results = futures::future::join_all(appends.into_iter().map(|a| group.batcher.submit(a))).await;
                Ok(ForwardedReply::AppendedBatch(results))
            }
            ForwardedWrite::Membership(op) => run_membership(&group, op).await.map(ForwardedReply::Membership),
            // Metadata commands are idempotent (applying one twice changes
            // nothing more), so a lost leadership is simply retried.
            ForwardedWrite::Command(command) => {
                match tokio::time::timeout(
                    crate::raft::append_batcher::COMMIT_TIMEOUT,
                    group.raft.client_write(command),
                )
                .await
                {
                    Err(_) => Err(WriteFailure::Indeterminate {
                        group: group_id,
                        reason: format!(
                            "not committed within {:?} (no quorum?)",
                            crate::raft::append_batcher::COMMIT_TIMEOUT
                        ),
                    }),
                    Ok(Ok(response)) => Ok(ForwardedReply::Response(response.response().clone())),
                    Ok(Err(e)) => match e.forward_to_leader() {
                        Some(forward) => Err(WriteFailure::NotLeader { group: group_id, leader: forward.leader_id }),
                        None => Err(WriteFailure::Indeterminate { group: group_id, reason: e.to_string() }),
                    },
                }
            }
        }
    }

    /// Committed records of `stream` in `partition` from `from_offset`, as
    /// applied on this node (bounded by the node's read limits).
    pub fn read(
        &self,
        stream: &str,
        partition: u32,
        from_offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        let limits = &self.inner.settings.read_limits;
        let max_records = if max_records == 0 { limits.max_records } else { max_records.min(limits.max_records) };
        let max_bytes = if max_bytes == 0 { limits.max_bytes } else { max_bytes.min(limits.max_bytes) };
        group.view.read(stream, from_offset, max_records, max_bytes).map_err(|e| BrokerError::io("reading events", e))
    }

    pub fn end_offset(&self, stream: &str, partition: u32) -> Result<u64, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        Ok(group.view.end_offset(stream))
    }

    pub fn offset_for_time(&self, stream: &str, partition: u32, time_ms: u64) -> Result<u64, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        group.view.offset_for_time(stream, time_ms).map_err(|e| BrokerError::io("reading the time index", e))
    }

    /// A partition's applied index, which changes whenever entries are applied
    /// (the dispatcher and tail readers wait on it).
    pub fn watch_applied(&self, partition: u32) -> Result<watch::Receiver<u64>, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        Ok(group.view.watch_applied())
    }

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

    /// Stops every group's Raft (in-flight writes fail as indeterminate).
    pub async fn shutdown(&self) {
        for group in self.groups() {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(group = %group_name(group.id), error = %e, "raft shutdown");
            }
        }
    }

    /// The address this node dials to reach the peer advertised as `addr` (`--peer-route`).
    pub fn peer_dial_addr<'a>(&'a self, addr: &'a str) -> &'a str {
        self.inner.peers.dial_addr(addr)
    }

    /// Whether this node was removed from the cluster (its partition groups are stopped).
    pub fn is_removed(&self) -> bool {
        self.inner.removed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this node leads `group` (tests and status).
    pub fn leads(&self, group: GroupId) -> bool {
        self.group(group).map(|g| g.raft.metrics().borrow_watched().state == ServerState::Leader).unwrap_or(false)
    }

    /// Whether this node is the Raft leader of `partition`'s group.
    pub fn leads_partition(&self, partition: u32) -> bool {
        self.leads(partition_group(partition))
    }

    /// A counter bumped whenever a group of this node starts or changes
    /// leader or server state; watchers re-check [`Node::leads_partition`].
    pub fn watch_leadership(&self) -> watch::Receiver<u64> {
        self.inner.leadership.subscribe()
    }
}

/// Bumps `leadership` when the group's (server state, leader) changes, and
/// once at start. Ends when the group's Raft stops.
async fn watch_group_leadership(raft: Raft, leadership: Arc<watch::Sender<u64>>) {
    let mut rx = raft.metrics();
    drop(raft);
    let mut last = None;
    loop {
        let now = {
            // borrow_and_update, not borrow_watched: it marks the value seen,
            // otherwise changed() would return at once forever.
            let m = rx.borrow_and_update();
            Some((m.state, m.current_leader))
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

/// The membership every group is initialised with: the members given to `cluster init`.
fn raft_members(config: &ClusterConfig) -> BTreeMap<NodeId, BasicNode> {
    config.initial_members.iter().map(|(id, addr)| (*id, BasicNode::new(addr.clone()))).collect()
}

fn already_initialized(existing: &ClusterConfig) -> BrokerError {
    BrokerError::AlreadyInitialized { partitions: existing.partitions, members: existing.member_ids() }
}

pub fn validate_stream_name(stream: &str) -> Result<(), BrokerError> {
    let rule = if stream.is_empty() {
        "must not be empty"
    } else if stream.len() > MAX_STREAM_NAME_BYTES {
        "must be at most 512 bytes"
    } else if stream.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(BrokerError::InvalidStream { stream: stream.chars().take(64).collect(), rule })
}

/// Consumer cursor names follow the stream name rules.
pub fn validate_cursor_name(cursor: &str) -> Result<(), BrokerError> {
    validate_stream_name(cursor).map_err(|e| match e {
        BrokerError::InvalidStream { stream, rule } => BrokerError::InvalidCursor { cursor: stream, rule },
        other => other,
    })
}

/// Ties a data dir to one node id: `DATA/node-id` is written on first use.
fn claim_data_dir(dir: &Path, node_id: NodeId) -> Result<(), BrokerError> {
    let data_dir_error = |reason: String| BrokerError::DataDir { path: dir.to_path_buf(), reason };
    std::fs::create_dir_all(dir).map_err(|e| data_dir_error(e.to_string()))?;
    let id_file = dir.join("node-id");
    match std::fs::read_to_string(&id_file) {
        Ok(text) => {
            let stored: NodeId =
                text.trim().parse().map_err(|_| data_dir_error(format!("{} is corrupt", id_file.display())))?;
            if stored != node_id {
                return Err(BrokerError::NotAMember(format!(
                    "data dir {} belongs to node {stored}, not --id {node_id}; use --id {stored} or another --data dir",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join("node-id.tmp");
            std::fs::write(&tmp, format!("{node_id}\n")).map_err(|e| data_dir_error(e.to_string()))?;
            std::fs::rename(&tmp, &id_file).map_err(|e| data_dir_error(e.to_string()))
        }
        Err(e) => Err(data_dir_error(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_validated() {
        assert!(validate_stream_name("broker/default/b").is_ok());
        assert!(validate_stream_name("").is_err());
        assert!(validate_stream_name("a\nb").is_err());
        assert!(validate_stream_name(&"x".repeat(513)).is_err());
        assert!(validate_cursor_name("trigger/default/t1").is_ok());
        assert!(matches!(validate_cursor_name(""), Err(BrokerError::InvalidCursor { .. })));
    }

    fn stored(index: u64, voters: &[&[NodeId]], learners: &[NodeId]) -> crate::command::StoredMembership {
        use openraft::vote::RaftLeaderId;
        let configs: Vec<BTreeSet<NodeId>> = voters.iter().map(|ids| ids.iter().copied().collect()).collect();
        let mut nodes: BTreeMap<NodeId, BasicNode> =
            configs.iter().flatten().map(|id| (*id, BasicNode::new(format!("n{id}:1")))).collect();
        nodes.extend(learners.iter().map(|id| (*id, BasicNode::new(format!("n{id}:1")))));
        let membership = openraft::Membership::new(configs, nodes).expect("membership");
        let log_id = openraft::LogId::new(openraft::impls::leader_id_adv::LeaderId::new(1, 1).to_committed(), index);
        openraft::StoredMembership::new(Some(log_id), membership)
    }

    /// A node belongs while the member list has it, or while a metadata membership newer than its last removal
    /// from the list has it.
    #[test]
    fn membership_newer_than_the_last_removal_decides_whether_a_node_belongs() {
        let members = |ids: &[NodeId]| ids.iter().map(|id| (*id, format!("n{id}:1"))).collect();
        let config_123 = ClusterConfig::new(2, members(&[1, 2, 3])).expect("config");
        let applied = |ids: &[NodeId], removed: &[(NodeId, u64)]| {
            let mut config = config_123.clone();
            config.members = members(ids);
            AppliedConfig { config, removed_at: removed.iter().copied().collect() }
        };
        // Listed: belongs, whatever the membership.
        assert!(belongs(&applied(&[1, 2, 3], &[]), &stored(5, &[&[1, 2]], &[]), 3));
        // Removed from the list at 10 while an older membership (5) still has it as a voter: out.
        let without_3 = applied(&[1, 2], &[(3, 10)]);
        assert!(!belongs(&without_3, &stored(5, &[&[1, 2, 3]], &[]), 3));
        // Being added again: a learner (or voter) in a membership newer than its removal.
        assert!(belongs(&without_3, &stored(20, &[&[1, 2]], &[3]), 3));
        assert!(belongs(&without_3, &stored(21, &[&[1, 2], &[1, 2, 3]], &[]), 3));
        // Other members' changes while it is added do not count against it.
        let also_without_2 = applied(&[1], &[(3, 10), (2, 25)]);
        assert!(belongs(&also_without_2, &stored(21, &[&[1, 2], &[1, 2, 3]], &[]), 3));
        // Being removed from the metadata group: in the joint config's old half only, or gone.
        assert!(!belongs(&without_3, &stored(22, &[&[1, 2, 3], &[1, 2]], &[]), 3));
        assert!(!belongs(&without_3, &stored(23, &[&[1, 2]], &[]), 3));
        // A new id, never removed: not in the initial membership, then a learner.
        assert!(!belongs(&applied(&[1, 2, 3], &[]), &stored(1, &[&[1, 2, 3]], &[]), 4));
        assert!(belongs(&applied(&[1, 2, 3], &[]), &stored(30, &[&[1, 2, 3]], &[4]), 4));
    }

    #[test]
    fn a_data_dir_belongs_to_one_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        claim_data_dir(dir.path(), 1).expect("first claim");
        claim_data_dir(dir.path(), 1).expect("same id again");
        let err = claim_data_dir(dir.path(), 2).expect_err("other id");
        assert!(err.to_string().contains("belongs to node 1"), "{err}");
    }
}
