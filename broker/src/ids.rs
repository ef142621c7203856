//! The ids everything else names: nodes, Raft groups, resources. A leaf: it imports nothing of this crate.

use serde::{Deserialize, Serialize};

/// A node's id in the cluster (`--id`).
pub type NodeId = u64;

/// Which Raft group: [`METADATA_GROUP`] or a partition's group.
pub(crate) type GroupId = u32;

/// The cluster-wide group: membership of the cluster, and (later issues) the
/// resources (Brokers, Triggers, ...).
pub(crate) const METADATA_GROUP: GroupId = 0;

/// The group that holds partition `partition` (partitions are numbered from 0).
pub(crate) fn partition_group(partition: u32) -> GroupId {
    partition + 1
}

/// The partition a group holds; `None` for the metadata group.
pub(crate) fn partition_of(group: GroupId) -> Option<u32> {
    group.checked_sub(1)
}

/// Human name of a group, as used in metrics labels and status.
pub(crate) fn group_name(group: GroupId) -> String {
    match partition_of(group) {
        None => "metadata".to_string(),
        Some(partition) => format!("partition-{partition}"),
    }
}

/// Identifies a resource: kind (e.g. `Broker`), namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}
