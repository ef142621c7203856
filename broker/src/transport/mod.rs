//! Node ↔ node over gRPC (`sluice.raft.v1`): one connection per peer pair carries every group's Raft messages
//! and the appends followers forward.
//!
//! What flows out of a node: [`client`] sends a group's Raft RPCs (votes, snapshots in chunks) and forwarded
//! writes to a peer; [`append_stream`] carries a group's replication to a follower on one long-lived stream, and [`forward_stream`]
//! every write forwarded to a peer on another. What flows in is served by `crate::server::raft_service`, which hands each
//! message to the local group it names (it needs the node; the client must not, so they live apart).

pub(crate) mod append_stream;
pub(crate) mod client;
pub(crate) mod forward_stream;
pub(crate) mod status;

#[cfg(test)]
pub(crate) mod fake_peer;
