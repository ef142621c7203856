//! Raft transport, server side: hands each message to its group's Raft, and
//! runs forwarded writes on this node (which must lead the group).

use std::path::PathBuf;

use sluice_proto::raft::raft_transport_server::RaftTransport;
use sluice_proto::raft::{ForwardReply, ForwardRequest, GroupMessage, GroupReply, SnapshotChunk};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::command::forward::{ForwardedReply, ForwardedWrite, WriteFailure};
use crate::command::{GroupId, SnapshotMeta, TypeConfig, Vote, decode, decode_shared, encode};
use crate::node::Node;
use crate::server::incoming_snapshot::{CHUNK_IDLE_TIMEOUT, receive_snapshot};
use crate::store::Snapshot;
use crate::store::{SnapshotData, check_snapshot_file};
use crate::transport::append_stream::GROUP_METADATA_KEY;
use crate::transport::forward_stream::MAX_FORWARDS_IN_FLIGHT;
use openraft::raft::AppendEntriesRequest;

pub(crate) struct TransportService {
    node: Node,
    snapshot_root: PathBuf,
    /// True once the node stops: the long-lived streams end then, so that the server's graceful stop (which
    /// waits for open streams) finishes while the peers still run.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl TransportService {
    pub(crate) fn new(node: Node, snapshot_root: PathBuf, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { node, snapshot_root, stopping }
    }

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    fn raft(&self, group: GroupId) -> Result<crate::store::Raft, Status> {
        // A group this node has not started yet (it has not seen the cluster
        // config): the sender backs off and retries.
        self.node
            .group(group)
            .map(|g| g.raft.clone())
            .map_err(|_| Status::unavailable(format!("group {group} is not running on this node yet")))
    }
}

fn bad_request(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<GroupReply>, Status> {
    let payload = encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(GroupReply { payload: payload.into() }))
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft stopped: {e}"))
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn append_entries(&self, request: Request<GroupMessage>) -> Result<Response<GroupReply>, Status> {
        let message = request.into_inner();
        let raft = self.raft(message.group_id)?;
        let rpc = decode_shared(&message.payload).map_err(bad_request)?;
        reply(&raft.append_entries(rpc).await.map_err(fatal)?)
    }

    type StreamAppendStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<GroupReply, Status>> + Send>>;

    /// A leader's replication session ([`crate::transport::append_stream`]): requests in, one answer each
    /// out, in order. A request that does not decode ends the requests; the leader then sees the answers end
    /// with requests unanswered and opens a new session.
    async fn stream_append(
        &self,
        request: Request<Streaming<GroupMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let group = request
            .metadata()
            .get(GROUP_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<GroupId>().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!("`{GROUP_METADATA_KEY}` metadata: a group id is required"))
            })?;
        let raft = self.raft(group)?;
        let requests = request.into_inner().map_while(move |message| {
            let message = message.map_err(|status| tracing::debug!(group, %status, "append stream closed")).ok()?;
            if message.group_id != group {
                tracing::warn!(group, sent = message.group_id, "an append stream's request names another group");
                return None;
            }
            decode_shared::<AppendEntriesRequest<TypeConfig>>(&message.payload)
                .map_err(|e| tracing::warn!(group, error = %e, "undecodable AppendEntries on an append stream"))
                .ok()
        });
        let answers =
            futures::StreamExt::take_until(raft.stream_append(requests), self.stopped()).map(|answer| match answer {
                Ok(result) => encode(&result)
                    .map(|payload| GroupReply { payload: payload.into() })
                    .map_err(|e| Status::internal(e.to_string())),
                Err(fatal) => Err(self::fatal(fatal)),
            });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, request: Request<GroupMessage>) -> Result<Response<GroupReply>, Status> {
        let message = request.into_inner();
        let raft = self.raft(message.group_id)?;
        let rpc = decode(&message.payload).map_err(bad_request)?;
        reply(&raft.vote(rpc).await.map_err(fatal)?)
    }

    async fn pre_vote(&self, request: Request<GroupMessage>) -> Result<Response<GroupReply>, Status> {
        let message = request.into_inner();
        let raft = self.raft(message.group_id)?;
        let rpc = decode(&message.payload).map_err(bad_request)?;
        reply(&raft.pre_vote(rpc).await.map_err(fatal)?)
    }

    async fn transfer_leader(&self, request: Request<GroupMessage>) -> Result<Response<GroupReply>, Status> {
        let message = request.into_inner();
        let raft = self.raft(message.group_id)?;
        let rpc: openraft::raft::TransferLeaderRequest<crate::command::TypeConfig> =
            decode(&message.payload).map_err(bad_request)?;
        if *rpc.to_node_id() == self.node.id() {
            self.node.note_handover_from(rpc.from_leader().leader_id().node_id);
        }
        reply(&raft.handle_transfer_leader(rpc).await.map_err(fatal)?)
    }

    async fn read_index(&self, request: Request<GroupMessage>) -> Result<Response<GroupReply>, Status> {
        let group = request.into_inner().group_id;
        reply(&self.node.read_index_local(group).await)
    }

    async fn join_check(&self, request: Request<GroupMessage>) -> Result<Response<GroupReply>, Status> {
        let ask: crate::command::cluster_config::JoinAsk =
            decode(&request.into_inner().payload).map_err(bad_request)?;
        reply(&self.node.may_join(&ask))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<GroupReply>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let group = first.group_id;
        let raft = self.raft(group)?;
        let (vote, meta): (Vote, SnapshotMeta) = decode(&first.header).map_err(bad_request)?;
        let dir = self.snapshot_root.join(format!("group-{group}"));
        // On a task of its own: a leader that cancels the call (it timed out, or its replication restarted)
        // drops this handler, and the transfer still ends with its file removed, or its install finished.
        let receiving = tokio::spawn(async move {
            let incoming = receive_snapshot(first, chunks, &dir, CHUNK_IDLE_TIMEOUT).await?;
            // Only a whole snapshot of this group, matching its meta, reaches openraft (its install may not
            // fail halfway); anything else is refused here and the leader sends again.
            let checking = incoming.path().to_path_buf();
            let checked = tokio::task::spawn_blocking(move || check_snapshot_file(&checking, group))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            match checked {
                Ok(file_meta) if file_meta == meta => {}
                Ok(_) => return Err(Status::invalid_argument("the snapshot's data does not match its meta")),
                Err(e) => return Err(Status::data_loss(format!("snapshot for group {group} refused: {e}"))),
            }
            let snapshot = Snapshot { meta, snapshot: SnapshotData::File { path: incoming.path().to_path_buf() } };
            let response = raft.install_full_snapshot(vote, snapshot).await.map_err(fatal)?;
            // An installed snapshot was moved into place; one openraft did not need (it is behind what this
            // node applied) is removed with `incoming`.
            drop(incoming);
            reply(&response)
        });
        receiving.await.map_err(|e| Status::internal(format!("receiving a snapshot for group {group}: {e}")))?
    }

    type ForwardStreamStream = tokio_stream::wrappers::ReceiverStream<Result<ForwardReply, Status>>;

    /// Writes a peer forwards ([`crate::transport::forward_stream`]): each runs as its own task (they wait
    /// for different commits), up to `MAX_FORWARDS_IN_FLIGHT` at a time, and is answered with its id as
    /// soon as it is done.
    async fn forward_stream(
        &self,
        request: Request<Streaming<ForwardRequest>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        let mut requests = request.into_inner();
        let (answers, answers_rx) = tokio::sync::mpsc::channel(MAX_FORWARDS_IN_FLIGHT);
        let node = self.node.clone();
        let stopped = self.stopped();
        tokio::spawn(async move {
            let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS_IN_FLIGHT));
            tokio::pin!(stopped);
            // Once the node stops, no new write is taken; those in flight are answered, then the stream ends.
            while let Some(Ok(Some(request))) = tokio::select! {
                next = requests.message() => Some(next),
                () = &mut stopped => None,
            } {
                let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                let (node, answers) = (node.clone(), answers.clone());
                tokio::spawn(async move {
                    let group = request.group_id;
                    let result: Result<ForwardedReply, WriteFailure> = match decode::<ForwardedWrite>(&request.write) {
                        Ok(write) => node.write_local(group, write).await,
                        // Nothing was written: a definite failure, and a peer that sends what this build cannot
                        // read is a bug (never retried). Regression: it answered `Indeterminate` ("may have been
                        // committed"), and the producer retried for ever.
                        Err(e) => Err(WriteFailure::Bug { group, reason: format!("undecodable forwarded write: {e}") }),
                    };
                    let answer = encode(&result)
                        .map(|bytes| ForwardReply { result: bytes.into(), id: request.id })
                        .map_err(|e| Status::internal(e.to_string()));
                    // The peer may have gone; its writes were done all the same.
                    let _ = answers.send(answer).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(answers_rx)))
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        let message = request.into_inner();
        let write: ForwardedWrite = decode(&message.write).map_err(bad_request)?;
        let result: Result<ForwardedReply, WriteFailure> = self.node.write_local(message.group_id, write).await;
        let bytes = encode(&result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ForwardReply { result: bytes.into(), id: 0 }))
    }
}
