//! The admin gRPC API (`sluice.admin.v1`): cluster init and status, and the
//! log's append/read calls. Errors map to gRPC codes: definite refusals that
//! wrote nothing are `FAILED_PRECONDITION`, `RESOURCE_EXHAUSTED`,
//! `INVALID_ARGUMENT` or `NOT_FOUND`; `UNAVAILABLE` may or may not have
//! written (the caller must not assume either).

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_proto::admin::cluster_server::Cluster;
use sluice_proto::admin::log_server::Log;
use sluice_proto::admin::{
    AppendReply, AppendRequest, GroupStatus, InitReply, InitRequest, OffsetForTimeReply,
    OffsetForTimeRequest, ReadReply, ReadRequest, Record, StatusReply, StatusRequest,
};
use tonic::{Request, Response, Status};

use crate::cluster::ClusterConfig;
use crate::error::BrokerError;
use crate::node::Node;

pub struct AdminService {
    node: Node,
}

impl AdminService {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

pub fn status_of(error: BrokerError) -> Status {
    let message = error.to_string();
    match error {
        BrokerError::InvalidClusterConfig(_) | BrokerError::InvalidStream { .. } => {
            Status::invalid_argument(message)
        }
        BrokerError::AppendTooLarge { .. } => Status::out_of_range(message),
        BrokerError::NoSuchPartition { .. } => Status::not_found(message),
        BrokerError::AlreadyInitialized { .. } => Status::already_exists(message),
        BrokerError::NotInitialized | BrokerError::NoLeader { .. } => {
            Status::failed_precondition(message)
        }
        BrokerError::QueueFull { .. } => Status::resource_exhausted(message),
        _ => Status::unavailable(message),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl Cluster for AdminService {
    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitReply>, Status> {
        let request = request.into_inner();
        let members = request
            .members
            .into_iter()
            .map(|m| (m.node_id, m.peer_addr))
            .collect();
        let config = ClusterConfig::new(request.partitions, members).map_err(status_of)?;
        self.node.init_cluster(config).await.map_err(status_of)?;
        Ok(Response::new(InitReply {}))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let config = self.node.cluster_config();
        let groups = self
            .node
            .status()
            .into_iter()
            .map(|g| GroupStatus {
                group_id: g.group,
                name: g.name,
                leader_id: g.leader,
                term: g.term,
                committed_index: g.committed_index,
                applied_index: g.applied_index,
                last_log_index: g.last_log_index,
                purged_index: g.purged_index,
                snapshot_index: g.snapshot_index,
                voters: g.voters,
                state: g.state,
            })
            .collect();
        Ok(Response::new(StatusReply {
            node_id: self.node.id(),
            initialized: config.is_some(),
            partitions: config.map(|c| c.partitions).unwrap_or(0),
            groups,
        }))
    }
}

#[tonic::async_trait]
impl Log for AdminService {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendReply>, Status> {
        let request = request.into_inner();
        let count = request.payloads.len() as u64;
        if count == 0 {
            return Err(Status::invalid_argument(
                "payloads: at least one record is required",
            ));
        }
        let first = self
            .node
            .append(
                &request.stream,
                request.partition,
                request.payloads,
                now_ms(),
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(AppendReply {
            offsets: (first..first + count).collect(),
        }))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        let request = request.into_inner();
        let batch = self
            .node
            .read(
                &request.stream,
                request.partition,
                request.from_offset,
                request.max_records as usize,
                request.max_bytes as usize,
            )
            .map_err(status_of)?;
        Ok(Response::new(ReadReply {
            records: batch
                .records
                .into_iter()
                .map(|r| Record {
                    offset: r.offset,
                    arrival_ms: r.arrival_ms,
                    payload: r.payload,
                })
                .collect(),
            end_offset: batch.end_offset,
        }))
    }

    async fn offset_for_time(
        &self,
        request: Request<OffsetForTimeRequest>,
    ) -> Result<Response<OffsetForTimeReply>, Status> {
        let request = request.into_inner();
        let offset = self
            .node
            .offset_for_time(&request.stream, request.partition, request.time_ms)
            .map_err(status_of)?;
        Ok(Response::new(OffsetForTimeReply { offset }))
    }
}
