//! The Raft side of a write: what a group agrees on and how an append gets there.
//!
//! What flows in: appends and commands for a group (from ingress, the dispatcher, the admin API), on any node.
//! A follower coalesces them and forwards them to the leader ([`forward_batcher`]); the leader coalesces appends
//! into one Raft entry ([`append_batcher`]) and proposes it to its [`group`]. What flows out: committed entries
//! (`crate::command`'s `LogCommand`, answered by a `LogResponse`), applied by the store's state machine.

pub(crate) mod append_batcher;
pub(crate) mod forward_batcher;
pub(crate) mod group;

pub use append_batcher::AppendLimits;
pub use group::RaftTuning;
