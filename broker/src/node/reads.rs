//! Reads: what this node has applied, served locally (any node, leader or not) from the group's
//! read view: stream records, offsets by time, committed consumer offsets, resource objects.

use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;

use std::time::Duration;

use super::Node;
use crate::command::forward::WriteFailure;
use crate::command::{GroupId, METADATA_GROUP, ResourceKey};
use crate::error::BrokerError;
use crate::store::ReadBatch;
use crate::transport::client::ReadIndexFailure;

impl Node {
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
        self.group(METADATA_GROUP).map_or(0, |g| g.view.partitions())
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

    /// The first retained offset of `stream` in `partition`: retention trimmed the offsets below it.
    pub fn start_offset(&self, stream: &str, partition: u32) -> Result<u64, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        Ok(group.view.extent(stream).start_offset)
    }

    pub fn offset_for_time(&self, stream: &str, partition: u32, time_ms: u64) -> Result<u64, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        group.view.offset_for_time(stream, time_ms).map_err(|e| BrokerError::io("reading the time index", e))
    }

    /// Waits until this node has applied everything `partition`'s group had committed when this was called, as
    /// the group's leader confirms it (Raft's read index, asked of the leader with the `ReadIndex` call): reads
    /// after it are linearizable, and see every write (a trim) acknowledged before it. A follower lags its
    /// leader by a heartbeat or more, which is why a redrive or purge through it must wait. At most four
    /// election timeouts; then `Interrupted`, which is worth retrying.
    pub async fn catch_up(&self, partition: u32) -> Result<(), BrokerError> {
        self.catch_up_group(self.partition_group_id(partition)?).await
    }

    /// [`Node::catch_up`] for the metadata group (resources, leases).
    pub async fn catch_up_metadata(&self) -> Result<(), BrokerError> {
        self.catch_up_group(METADATA_GROUP).await
    }

    async fn catch_up_group(&self, group_id: GroupId) -> Result<(), BrokerError> {
        let group = self.group(group_id)?;
        let wait = Duration::from_millis(self.inner.settings.tuning.election_timeout_max_ms * 4);
        let deadline = tokio::time::Instant::now() + wait;
        let interrupted = |reason: String| BrokerError::Interrupted { group: group_id, reason };
        let target = loop {
            let asked = match group.leader() {
                Some(leader) if leader == self.id() => {
                    self.read_index_local(group_id).await.map_err(ReadIndexFailure::Refused)
                }
                Some(leader) => match group.node_addr(leader) {
                    Some(addr) => self.inner.peers.read_index(&addr, group_id, deadline).await,
                    None => Err(ReadIndexFailure::Refused(WriteFailure::NotLeader { group: group_id, leader: None })),
                },
                None => Err(ReadIndexFailure::Refused(WriteFailure::NotLeader { group: group_id, leader: None })),
            };
            let counted = |outcome: &'static str| {
                metrics::counter!("sluice_raft_read_index_total", "outcome" => outcome).increment(1);
            };
            match asked {
                Ok(index) => {
                    counted("confirmed");
                    break index;
                }
                // A leader of an earlier build: what it last reported committed (not linearizable, as before).
                Err(ReadIndexFailure::Unsupported) => {
                    counted("unsupported");
                    break group.raft.metrics().borrow_watched().cluster_committed.as_ref().map_or(0, |id| id.index);
                }
                Err(ReadIndexFailure::Refused(WriteFailure::Bug { reason, .. })) => {
                    return Err(BrokerError::Bug { group: group_id, reason });
                }
                Err(failure) if tokio::time::Instant::now() >= deadline => {
                    counted("failed");
                    return Err(interrupted(format!(
                        "group {group_id}'s leader did not confirm a read index within {} ms: {failure}",
                        wait.as_millis()
                    )));
                }
                // No leader yet, or one that no longer leads: wait for the next change of leadership.
                Err(_) => {
                    let heartbeat = Duration::from_millis(self.inner.settings.tuning.heartbeat_ms * 2);
                    group.leadership_changed_within(heartbeat.min(deadline - tokio::time::Instant::now())).await;
                }
            }
        };
        let mut applied = group.view.watch_applied();
        match tokio::time::timeout_at(deadline, applied.wait_for(|index| *index >= target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::ShuttingDown),
            Err(_) => Err(interrupted(format!(
                "this node has not applied group {group_id}'s committed entries (to index {target}) within {} ms",
                wait.as_millis()
            ))),
        }
    }

    /// Raft's read index on this node, which must lead `group_id`: it confirms with a quorum's heartbeat that it
    /// still leads, then answers the index a read must have applied to see every write committed before (the
    /// `ReadIndex` call lands here). Not leading, or not confirmed by a quorum: `NotLeader`, retried by the
    /// asker until its deadline.
    pub(crate) async fn read_index_local(&self, group_id: GroupId) -> Result<u64, WriteFailure> {
        let not_leader = |leader| WriteFailure::NotLeader { group: group_id, leader };
        let group = self.group(group_id).map_err(|_| not_leader(None))?;
        match group.raft.get_read_linearizer(openraft::ReadPolicy::ReadIndex).await {
            Ok(linearizer) => Ok(linearizer.read_log_id().index()),
            Err(e) => match e.api_error() {
                Some(openraft::error::LinearizableReadError::ForwardToLeader(forward)) => {
                    Err(not_leader(forward.leader_id))
                }
                // No quorum answered the heartbeat, or this node's Raft stopped (a fatal error: it leads no
                // more, and the asker asks the next leader): leadership is not confirmed.
                _ => Err(not_leader(None)),
            },
        }
    }

    /// A partition's applied index, which changes whenever entries are applied
    /// (the dispatcher and tail readers wait on it).
    pub fn watch_applied(&self, partition: u32) -> Result<watch::Receiver<u64>, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        Ok(group.view.watch_applied())
    }
}
