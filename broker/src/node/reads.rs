//! Reads: what this node has applied, served locally (any node, leader or not) from the group's
//! read view: stream records, offsets by time, committed consumer offsets, resource objects.

use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;

use super::Node;
use crate::command::{METADATA_GROUP, ResourceKey};
use crate::error::BrokerError;
use crate::store::ReadBatch;

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

    pub fn offset_for_time(&self, stream: &str, partition: u32, time_ms: u64) -> Result<u64, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        group.view.offset_for_time(stream, time_ms).map_err(|e| BrokerError::io("reading the time index", e))
    }

    /// Waits until this node has applied what `partition`'s leader last reported as committed: a follower
    /// lags its leader by a heartbeat or more, and a write acknowledged by the leader (a trim) may not be in
    /// this node's reads yet. Reads after it see every write the leader had reported committed when it was
    /// called (on the leader itself: everything it committed). At most four election timeouts; then
    /// `Interrupted`, which is worth retrying.
    pub async fn catch_up(&self, partition: u32) -> Result<(), BrokerError> {
        self.catch_up_group(self.partition_group_id(partition)?).await
    }

    /// [`Node::catch_up`] for the metadata group (resources, leases).
    pub async fn catch_up_metadata(&self) -> Result<(), BrokerError> {
        self.catch_up_group(METADATA_GROUP).await
    }

    async fn catch_up_group(&self, group_id: crate::command::GroupId) -> Result<(), BrokerError> {
        let group = self.group(group_id)?;
        let target = group.raft.metrics().borrow_watched().cluster_committed.as_ref().map_or(0, |id| id.index);
        let mut applied = group.view.watch_applied();
        let wait = std::time::Duration::from_millis(self.inner.settings.tuning.election_timeout_max_ms * 4);
        match tokio::time::timeout(wait, applied.wait_for(|index| *index >= target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::ShuttingDown),
            Err(_) => Err(BrokerError::Interrupted {
                group: group_id,
                reason: format!(
                    "this node has not applied group {group_id}'s committed entries (to index {target}) within {} ms",
                    wait.as_millis()
                ),
            }),
        }
    }

    /// A partition's applied index, which changes whenever entries are applied
    /// (the dispatcher and tail readers wait on it).
    pub fn watch_applied(&self, partition: u32) -> Result<watch::Receiver<u64>, BrokerError> {
        let group = self.group(self.partition_group_id(partition)?)?;
        Ok(group.view.watch_applied())
    }
}
