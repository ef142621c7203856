//! Sluice's gRPC APIs, generated from `proto/`.
//!
//! - [`raft`]: node ↔ node. Raft messages of every group (metadata and
//!   partitions) and forwarded appends, over one connection per peer pair.
//! - [`admin`]: operator ↔ node. Cluster initialisation and status, and the
//!   log's append/read calls.

pub mod raft {
    #![allow(clippy::all)]
    tonic::include_proto!("sluice.raft.v1");
}

pub mod admin {
    #![allow(clippy::all)]
    tonic::include_proto!("sluice.admin.v1");
}
