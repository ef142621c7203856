//! Sluice's broker: CloudEvents ingress over HTTP, the replicated durable log, and the node that serves both.
//!
//! The folders follow an event: it is POSTed to [`ingress`] (the HTTP binding), published by the [`node`]
//! (Knative attributes, encoding, partition, dedupe keys) as an append to its partition's Raft group, which
//! [`raft`] coalesces and forwards to the group's leader ([`transport`] carries it between nodes) and proposes
//! as one entry ([`command`]: what an entry holds and what applying it answers); once a quorum has it fsynced,
//! the [`store`]'s state machine applies it, giving each record its offset in its stream, and readers
//! ([`Node::read`], [`admin`]'s Events API, the dispatcher) read the applied streams. [`server`] starts the
//! node and serves its three ports (HTTP, admin gRPC, the Raft transport). [`ids`] is the leaf everything
//! names; [`resources`] maps Knative objects to streams and settings.
//!
//! Groups: one metadata group (cluster config and resources) and one group per partition; all share one
//! RocksDB and one gRPC transport. See `docs/architecture.md`.

mod admin;
mod command;
mod durable_fs;
mod error;
mod ids;
mod ingress;
mod node;
mod raft;
mod resources;
mod server;
mod store;
mod telemetry;
mod transport;

pub use admin::{admin_stream_permit, resource_record, status_of};
pub use command::{ClusterConfig, OffsetCommit, parse_members};
pub use error::BrokerError;
pub use ids::{NodeId, ResourceKey};
pub use ingress::IngressLimits;
/// EventPolicy decisions, for what reaches a Broker without its ingress (a Trigger's replies).
pub use ingress::authorize::{CompiledPolicy, authorize as authorize_sender, compile_policies};
pub use ingress::http::{ClientConnection, ConnectionPlace, HostRouteSlot, HostRoutes, NodeRoutes, request_host};
pub use node::publish::{PublishError, Published, publish};
pub use node::signing_keys::SenderIdentity;
pub use node::{Handover, Node, NodeSettings, ReadLimits, TransferOver};
pub use raft::{AppendLimits, RaftTuning};
pub use resources::{DEFAULT_BROKER_TTL, IngressSettings, stream_name};
pub use server::{ExtraAdminRoutes, ExtraRoutes, Listen, RunningNode, start as start_node};
/// The CloudEvent model lives in its own crate (no storage); re-exported so `sluice_broker::cloudevent` paths
/// keep working.
pub use sluice_cloudevent as cloudevent;
/// The admin API's error codes live with the API (`sluice_proto::errors`); re-exported for the broker's callers.
pub use sluice_proto::errors as admin_errors;
pub use store::DEFAULT_IDLE_GRACE_MS as DEFAULT_DEDUPE_IDLE_GRACE_MS;
/// Knative's `event_count` and `event_dispatch_latencies`, with their handles kept (ingress and dispatch).
pub use telemetry::EventMetrics;
/// The process's Prometheus recorder (installed on first use), for binaries that serve `/metrics` themselves.
pub use telemetry::prometheus;

/// Test-only planted bugs (feature `planted-bugs`, never in a release build): whether the bug `name` is switched
/// on by the env var `SLUICE_PLANTED_BUG` (comma-separated names). The chaos suite's self-test plants them to
/// prove that its checker can fail (`docs/reliability.md`).
#[cfg(feature = "planted-bugs")]
pub fn planted_bug(name: &str) -> bool {
    std::env::var("SLUICE_PLANTED_BUG").is_ok_and(|bugs| bugs.split(',').any(|bug| bug.trim() == name))
}

/// The node's wall clock, where records get their times. With the test-only fault `clock-ahead-2h` (feature
/// `planted-bugs`), two hours ahead of the machine's: a node with a wrong clock, for `t41` (libfaketime cannot
/// be preloaded under jemalloc).
pub(crate) fn wall_clock() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    #[cfg(feature = "planted-bugs")]
    if planted_bug("clock-ahead-2h") {
        return now + chrono::TimeDelta::hours(2);
    }
    now
}
