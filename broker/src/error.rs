//! The broker crate's errors.

use std::path::PathBuf;

use crate::ids::{GroupId, NodeId};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot open data dir {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },

    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),

    #[error("I/O error on {context}: {source}")]
    Io { context: String, source: std::io::Error },

    #[error("cannot listen on {addr} ({flag}): {reason}")]
    Listen { flag: &'static str, addr: String, reason: String },

    #[error("invalid cluster config: {0}")]
    InvalidClusterConfig(String),

    #[error("{0}")]
    NotAMember(String),

    #[error("the cluster is not initialised yet (run `sluice cluster init`)")]
    NotInitialized,

    #[error(
        "this node was removed from the cluster (`sluice cluster remove-node`): ask another node; to take it back \
         while it runs, `sluice cluster add-node` with its id and peer address (once stopped, it rejoins only with \
         an empty data dir)"
    )]
    RemovedFromCluster,

    #[error("the cluster is already initialised with partitions={partitions} members={members}")]
    AlreadyInitialized { partitions: u32, members: String },

    #[error("partition {partition} does not exist (the cluster has {partitions})")]
    NoSuchPartition { partition: u32, partitions: u32 },

    #[error("group {group} has no leader right now")]
    NoLeader { group: GroupId },

    #[error("node {leader} leads group {group}, and forwarding to it failed: {reason}")]
    ForwardFailed { group: GroupId, leader: NodeId, reason: String },

    #[error("the append queue of group {group} is full ({capacity} requests waiting)")]
    QueueFull { group: GroupId, capacity: usize },

    #[error("append too large: {bytes} bytes, the limit is {limit_bytes}")]
    AppendTooLarge { bytes: usize, limit_bytes: usize },

    #[error("invalid stream name {stream:?}: {rule}")]
    InvalidStream { stream: String, rule: &'static str },

    #[error("invalid consumer cursor name {cursor:?}: {rule}")]
    InvalidCursor { cursor: String, rule: &'static str },

    /// A write whose outcome is unknown (its leader was lost, or it timed out after it was proposed): retry,
    /// and do not assume either outcome.
    #[error("group {group}: the write may or may not have been committed: {reason}")]
    Indeterminate { group: GroupId, reason: String },

    /// A long operation stopped before it finished (a membership change, a leadership transfer); running it
    /// again is safe.
    #[error("{reason}")]
    Interrupted { group: GroupId, reason: String },

    /// openraft failed: storage, or a fatal Raft error. Not retryable.
    #[error("raft error in group {group}: {reason}")]
    Raft { group: GroupId, reason: String },

    /// The Raft settings are invalid (a node flag): fix the configuration.
    #[error("invalid raft config for group {group}: {reason}")]
    InvalidRaftConfig { group: GroupId, reason: String },

    /// Something that cannot happen did (an unexpected reply): a bug, never retryable.
    #[error("bug in group {group}: {reason}")]
    Bug { group: GroupId, reason: String },

    #[error("the node is shutting down")]
    ShuttingDown,

    #[error("encoding error: {0}")]
    Codec(#[from] postcard::Error),

    /// `cluster remove-node` / `transfer-leader` name a node that is not a member (or not a voter).
    #[error("{0}")]
    NoSuchMember(String),

    /// `cluster transfer-leader` names a group that does not exist.
    #[error("group {group} does not exist (0 is the metadata group, 1..={partitions} the partitions)")]
    NoSuchGroup { group: GroupId, partitions: u32 },

    /// A peer's address cannot be dialled (a malformed advertised address).
    #[error("peer {addr}: {reason}")]
    PeerAddress { addr: String, reason: String },

    /// A membership change that is not allowed (removing the last voter, a catch-up that did not finish...).
    #[error("membership change refused: {0}")]
    MembershipRefused(String),
}

impl BrokerError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BrokerError::Io { context: context.into(), source }
    }

    /// Whether the caller may retry the same request later (on this or another node).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BrokerError::NoLeader { .. }
                | BrokerError::ForwardFailed { .. }
                | BrokerError::QueueFull { .. }
                | BrokerError::ShuttingDown
                | BrokerError::Indeterminate { .. }
                | BrokerError::Interrupted { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Raft { reason: String }` covered bugs ("unexpected reply"), fatal openraft errors and writes of unknown
    /// outcome alike, and all of them were reported as retryable.
    #[test]
    fn a_bug_or_a_fatal_raft_error_is_never_retryable() {
        let group = 1;
        let reason = String::from("x");
        assert!(!BrokerError::Bug { group, reason: reason.clone() }.is_retryable());
        assert!(!BrokerError::Raft { group, reason: reason.clone() }.is_retryable());
        assert!(!BrokerError::InvalidRaftConfig { group, reason: reason.clone() }.is_retryable());
        assert!(BrokerError::Indeterminate { group, reason: reason.clone() }.is_retryable());
        assert!(BrokerError::Interrupted { group, reason }.is_retryable());
        assert!(BrokerError::NoLeader { group }.is_retryable());
        // An answer of the wrong shape to an append was reported as `Indeterminate`, so producers retried a bug.
        let wrong_shape = crate::command::forward::WriteFailure::Bug { group, reason: "unexpected response".into() };
        assert!(!BrokerError::from(wrong_shape).is_retryable());
    }
}
