//! Writes a node forwards to the leader of a group, and their outcomes, as
//! they cross the wire (postcard inside the `Forward` RPC).

use serde::{Deserialize, Serialize};

use crate::command::{Appended, GroupId, LogCommand, LogResponse, NodeId, StreamAppend};
use crate::error::BrokerError;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ForwardedWrite {
    /// Records for a stream: the leader batches them with others.
    Append(StreamAppend),
    /// A command written as its own entry (metadata group).
    Command(LogCommand),
    /// A change of the group's Raft membership or leadership, run by its leader.
    Membership(MembershipOp),
    /// Appends a follower coalesced ([`crate::raft::forward_batcher`]); each is answered on its own.
    AppendBatch(Vec<StreamAppend>),
}

/// Membership operations (`cluster add-node`, `remove-node`, `transfer-leader`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MembershipOp {
    /// Adds `node` as a learner and waits (bounded by the forward timeout)
    /// until replication to it has caught up; answers `CatchingUp` if not yet.
    AddLearner { node: NodeId, addr: String },
    /// Makes the learner `node` a voter.
    Promote(NodeId),
    /// Removes `node` from the voters and from the group.
    Remove(NodeId),
    /// Hands the leadership to the voter `node`.
    TransferLeader(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MembershipOutcome {
    Done,
    /// The learner is still catching up: ask again (adding is idempotent).
    CatchingUp,
    /// openraft refused the change (e.g. another change is in progress).
    Refused(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ForwardedReply {
    Appended(Appended),
    Response(LogResponse),
    Membership(MembershipOutcome),
    /// One outcome per append of an `AppendBatch`, in order.
    AppendedBatch(Vec<Result<Appended, WriteFailure>>),
}

/// Why a write failed. `NotLeader`, `QueueFull` and `TooLarge` are definite:
/// nothing was written. `Indeterminate` may or may not have been committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteFailure {
    #[error("this node does not lead group {group} (leader: {leader:?})")]
    NotLeader { group: GroupId, leader: Option<NodeId> },
    #[error("the append queue of group {group} is full ({capacity} requests waiting)")]
    QueueFull { group: GroupId, capacity: usize },
    #[error("append too large: {bytes} bytes, the limit is {limit_bytes}")]
    TooLarge { bytes: usize, limit_bytes: usize },
    #[error("the write may or may not have been committed: {reason}")]
    Indeterminate { group: GroupId, reason: String },
    /// Something that cannot happen did (an answer of the wrong shape): a bug, never retried. Last, so that the
    /// variants before it keep their wire numbers.
    #[error("bug in group {group}: {reason}")]
    Bug { group: GroupId, reason: String },
}

impl From<WriteFailure> for BrokerError {
    fn from(failure: WriteFailure) -> Self {
        match failure {
            WriteFailure::NotLeader { group, .. } => BrokerError::NoLeader { group },
            WriteFailure::QueueFull { group, capacity } => BrokerError::QueueFull { group, capacity },
            WriteFailure::TooLarge { bytes, limit_bytes } => BrokerError::AppendTooLarge { bytes, limit_bytes },
            WriteFailure::Indeterminate { group, reason } => BrokerError::Indeterminate { group, reason },
            WriteFailure::Bug { group, reason } => BrokerError::Bug { group, reason },
        }
    }
}
