//! The cluster's shape, fixed by `sluice cluster init` and kept in the
//! metadata group: who the members are and how many partitions there are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::ids::NodeId;

/// Upper bound on partitions: every partition is a Raft group on every node.
pub(crate) const MAX_PARTITIONS: u32 = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub partitions: u32,
    /// node id → peer (Raft) address, `host:port`: the current members
    /// (`cluster add-node` / `remove-node` change it through `SetMembers`).
    pub members: BTreeMap<NodeId, String>,
    /// The members given to `cluster init`. Only they ever initialise a
    /// group (with this membership); a node added later never does, it
    /// receives the groups by replication.
    pub initial_members: BTreeMap<NodeId, String>,
}

impl ClusterConfig {
    pub fn new(partitions: u32, members: BTreeMap<NodeId, String>) -> Result<Self, BrokerError> {
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(BrokerError::InvalidClusterConfig(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"
            )));
        }
        if members.is_empty() {
            return Err(BrokerError::InvalidClusterConfig("members must not be empty".into()));
        }
        for (id, addr) in &members {
            if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
                return Err(BrokerError::InvalidClusterConfig(format!(
                    "member {id}: peer address {addr:?} is not host:port"
                )));
            }
        }
        Ok(Self { partitions, initial_members: members.clone(), members })
    }

    /// Whether `node` was one of the members given to `cluster init`.
    pub fn is_initial_member(&self, node: NodeId) -> bool {
        self.initial_members.contains_key(&node)
    }

    /// Whether `other` is the same cluster as `self` was initialised with
    /// (repeating `cluster init` with the original arguments is accepted
    /// even after members were added or removed).
    pub fn same_init(&self, other: &ClusterConfig) -> bool {
        self.partitions == other.partitions && self.initial_members == other.initial_members
    }

    pub fn is_member(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
    }

    pub fn member_ids(&self) -> String {
        self.members.keys().map(|id| id.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002` (the `--members` flag).
pub fn parse_members(text: &str) -> Result<BTreeMap<NodeId, String>, BrokerError> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| BrokerError::InvalidClusterConfig(format!("member {part:?} is not ID=HOST:PORT")))?;
        let id: NodeId = id.trim().parse().map_err(|_| {
            BrokerError::InvalidClusterConfig(format!("member {part:?}: node id {id:?} is not a number"))
        })?;
        if members.insert(id, addr.trim().to_string()).is_some() {
            return Err(BrokerError::InvalidClusterConfig(format!("node id {id} is listed twice")));
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members() {
        let members = parse_members("1=127.0.0.1:7001, 2=127.0.0.1:7002").expect("valid");
        assert_eq!(members.len(), 2);
        assert_eq!(members[&2], "127.0.0.1:7002");
    }

    #[test]
    fn rejects_bad_members() {
        assert!(parse_members("1:127.0.0.1:7001").is_err());
        assert!(parse_members("x=127.0.0.1:7001").is_err());
        assert!(parse_members("1=a:1,1=b:2").is_err());
    }

    #[test]
    fn rejects_bad_partition_counts() {
        let members = parse_members("1=127.0.0.1:7001").expect("valid");
        assert!(ClusterConfig::new(0, members.clone()).is_err());
        assert!(ClusterConfig::new(MAX_PARTITIONS + 1, members.clone()).is_err());
        assert!(ClusterConfig::new(4, members).is_ok());
        assert!(ClusterConfig::new(4, BTreeMap::new()).is_err());
    }

    #[test]
    fn init_remembers_the_initial_members() {
        let members = parse_members("1=127.0.0.1:7001,2=127.0.0.1:7002").expect("valid");
        let mut config = ClusterConfig::new(2, members.clone()).expect("valid");
        let original = config.clone();
        config.members.insert(3, "127.0.0.1:7003".into());
        assert!(config.is_member(3) && !config.is_initial_member(3));
        assert!(config.same_init(&original));
        assert_eq!(config.initial_members, members);
    }
}
