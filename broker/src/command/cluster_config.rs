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

/// A member's peer address: `host:port` (a name or an IPv4 address, or `[v6]:port`), the port from 1 to 65535, no
/// scheme or path. Regression: `127.0.0.1:99999` and `http://10.0.0.4:7000` were taken by `cluster add-node`, which
/// then waited 30 s for a node nothing could reach and left a learner behind.
pub(crate) fn check_peer_addr(addr: &str) -> Result<(), String> {
    let not = |why: &str| Err(format!("peer address {addr:?} is not host:port ({why})"));
    if addr.contains("://") {
        return not("no scheme: the address alone, e.g. 10.0.0.4:7000");
    }
    let Some((host, port)) = addr.rsplit_once(':') else { return not("no port") };
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
        return not("no host");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return not("an IPv6 address goes in brackets, e.g. [::1]:7000");
    }
    match port.parse::<u16>() {
        Ok(1..) => Ok(()),
        _ => not("the port must be a number from 1 to 65535"),
    }
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
            if let Err(rule) = check_peer_addr(addr) {
                return Err(BrokerError::InvalidClusterConfig(format!("member {id}: {rule}")));
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

/// What `cluster add-node` asks of the node it adds (`Node::may_join`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct JoinAsk {
    /// The id the node is added as.
    pub(crate) node: NodeId,
    /// The member that asks, and its peer address in its cluster's config.
    pub(crate) asker: NodeId,
    pub(crate) asker_addr: String,
}

/// Whether a node with `own_id` and `config` may join the cluster of `ask.asker` as `ask.node`: not when it has
/// another id, nor when it belongs to a cluster that does not list the asking member at its address.
pub(crate) fn join_decision(own_id: NodeId, config: Option<&ClusterConfig>, ask: &JoinAsk) -> Result<(), String> {
    if own_id != ask.node {
        return Err(format!(
            "the node at this peer address is node {own_id}, not node {}: add it with --id {own_id}, or check --peer",
            ask.node
        ));
    }
    match config {
        None => Ok(()),
        Some(config) if config.members.get(&ask.asker) == Some(&ask.asker_addr) => Ok(()),
        Some(config) => Err(format!(
            "node {own_id} already belongs to another cluster (members {}): a node joins with an empty data dir, \
             started without `cluster init`",
            config.member_ids()
        )),
    }
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
    fn peer_addresses_are_host_and_port() {
        for good in ["127.0.0.1:7001", "sluice-0.sluice.ns.svc.cluster.local:7070", "[::1]:7000", "node:1"] {
            assert_eq!(check_peer_addr(good), Ok(()), "{good}");
        }
        let bad = [
            ("127.0.0.1:99999", "from 1 to 65535"),
            ("127.0.0.1:0", "from 1 to 65535"),
            ("http://127.0.0.1:7000", "no scheme"),
            ("abc", "no port"),
            (":7000", "no host"),
            ("::1:7000", "brackets"),
            ("host:port", "from 1 to 65535"),
            ("a/b:7000", "no host"),
        ];
        for (addr, rule) in bad {
            let refused = check_peer_addr(addr).expect_err(addr);
            assert!(refused.contains(rule), "{addr}: {refused}");
        }
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

    #[test]
    fn a_node_joins_only_empty_or_into_its_own_cluster() {
        let ask = JoinAsk { node: 4, asker: 1, asker_addr: "10.0.0.1:7070".into() };
        let config = |members: &[(NodeId, &str)]| {
            ClusterConfig::new(2, members.iter().map(|(id, addr)| (*id, addr.to_string())).collect()).expect("valid")
        };
        let ours = config(&[(1, "10.0.0.1:7070"), (2, "10.0.0.2:7070"), (4, "10.0.0.4:7070")]);
        let theirs = config(&[(9, "10.0.0.9:7070"), (10, "10.0.0.10:7070")]);
        let same_ids_elsewhere = config(&[(1, "10.0.1.1:7070"), (4, "10.0.1.4:7070")]);
        assert_eq!(join_decision(4, None, &ask), Ok(()), "an empty node");
        assert_eq!(join_decision(4, Some(&ours), &ask), Ok(()), "already in this cluster (add-node again)");
        let refused = join_decision(4, Some(&theirs), &ask).expect_err("another cluster's node");
        assert!(refused.contains("already belongs to another cluster (members 9,10)"), "{refused}");
        assert!(join_decision(4, Some(&same_ids_elsewhere), &ask).is_err(), "the same ids at other addresses");
        let other_id = join_decision(5, None, &ask).expect_err("another node at that address");
        assert!(other_id.contains("is node 5, not node 4"), "{other_id}");
    }
}
