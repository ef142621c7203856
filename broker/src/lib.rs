//! Sluice's broker: CloudEvents ingress over HTTP, the replicated durable
//! log, and the node that serves both.
//!
//! What flows through it: an event POSTed to a broker ([`ingress`]) is
//! parsed and validated ([`cloudevent`]), stored as a record. An append (stream name, partition, payloads) enters
//! a node ([`Node::append`]), goes to the leader of that partition's Raft
//! group (forwarded one hop if needed), waits in the group's
//! [`batcher`] to be coalesced with other appends into one Raft entry, is
//! replicated and fsynced on a quorum ([`store::WalSyncer`] covers all groups
//! with one fsync), and is applied by the group's state machine, which gives
//! each record its offset in its stream. Readers ([`Node::read`]) read the
//! applied streams of the node they ask.
//!
//! Groups: one metadata group (cluster config, later the resources) and one
//! group per partition; all share one RocksDB and one gRPC transport. See
//! `docs/architecture.md`.

pub mod admin;
pub mod admin_events;
pub mod batcher;
pub mod cluster;
pub mod error;
pub mod forward;
pub mod forward_batcher;
pub mod group;
pub mod http;
pub mod ids;
pub mod ingress;
pub mod keys;
pub mod network;
pub mod node;
pub mod raft_types;
pub mod resources;
pub mod retention;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transport;

pub use error::BrokerError;
pub use node::{Node, NodeSettings};
/// The CloudEvent model lives in its own crate (no storage); re-exported so `sluice_broker::cloudevent` paths
/// keep working.
pub use sluice_cloudevent as cloudevent;
/// The admin API's error codes live with the API (`sluice_proto::errors`); re-exported for the broker's callers.
pub use sluice_proto::errors as admin_errors;

/// Test-only planted bugs (feature `planted-bugs`, never in a release build): whether the bug `name` is switched
/// on by the env var `SLUICE_PLANTED_BUG` (comma-separated names). The chaos suite's self-test plants them to
/// prove that its checker can fail (`docs/reliability.md`).
#[cfg(feature = "planted-bugs")]
pub fn planted_bug(name: &str) -> bool {
    std::env::var("SLUICE_PLANTED_BUG").is_ok_and(|bugs| bugs.split(',').any(|bug| bug.trim() == name))
}
