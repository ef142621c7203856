//! Sluice's gRPC APIs, generated from `proto/`.
//!
//! - [`raft`]: node ↔ node. Raft messages of every group (metadata and
//!   partitions) and forwarded appends, over one connection per peer pair.
//! - [`admin`]: operator ↔ node. Cluster initialisation, status and
//!   membership, the log's append/read calls, resources (apply/get/delete),
//!   events, consumers, dead letters and serving.
//! - [`errors`]: the admin API's stable error codes, carried in every error
//!   status (servers build them, clients read them).

pub mod raft {
    #![allow(clippy::all)]
    tonic::include_proto!("sluice.raft.v1");
}

pub mod admin {
    #![allow(clippy::all)]
    tonic::include_proto!("sluice.admin.v1");
}

pub mod errors;

/// The admin API (`sluice.admin.v1`: every service and message) as an encoded `FileDescriptorSet`, for gRPC
/// server reflection on the admin port.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_admin_descriptor");
