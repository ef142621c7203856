//! A peer for the transport's tests: a real tonic server on loopback that answers the streams the way a
//! test asks (a follower that never answers, one that ends at once, one that answers everything, a leader
//! that answers forwarded writes in reverse order).

use futures::StreamExt;
use futures::stream::BoxStream;
use openraft::raft::StreamAppendResult;
use sluice_proto::raft::raft_transport_client::RaftTransportClient;
use sluice_proto::raft::raft_transport_server::{RaftTransport, RaftTransportServer};
use sluice_proto::raft::{ForwardReply, ForwardRequest, GroupMessage, GroupReply, SnapshotChunk};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::command::forward::WriteFailure;
use crate::command::{TypeConfig, encode};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Peer {
    /// Reads every request and never answers.
    Silent,
    /// Ends its answers at once.
    EndsAtOnce,
    /// Answers each AppendEntries with success.
    AnswersEach,
    /// Waits for this many forwarded writes, then answers them last first, each with
    /// `QueueFull { group, capacity: its payload's length }` (so that a test can tell which write an answer is
    /// for).
    AnswersForwardsInReverse(usize),
}

type UnaryReply = Result<Response<GroupReply>, Status>;

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not served by the fake peer"))
}

#[tonic::async_trait]
impl RaftTransport for Peer {
    type StreamAppendStream = BoxStream<'static, Result<GroupReply, Status>>;
    type ForwardStreamStream = BoxStream<'static, Result<ForwardReply, Status>>;

    async fn stream_append(
        &self,
        request: Request<Streaming<GroupMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let answer =
            encode(&StreamAppendResult::<TypeConfig>::Ok(None)).map_err(|e| Status::internal(e.to_string()))?;
        let answers = match self {
            Peer::Silent | Peer::AnswersForwardsInReverse(_) => {
                let mut requests = request.into_inner();
                tokio::spawn(async move { while let Ok(Some(_)) = requests.message().await {} });
                futures::stream::pending().boxed()
            }
            Peer::EndsAtOnce => futures::stream::empty().boxed(),
            Peer::AnswersEach => {
                request.into_inner().map(move |m| m.map(|_| GroupReply { payload: answer.clone().into() })).boxed()
            }
        };
        Ok(Response::new(answers))
    }

    async fn forward_stream(
        &self,
        request: Request<Streaming<ForwardRequest>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        let mut requests = request.into_inner();
        let answers = match *self {
            Peer::AnswersForwardsInReverse(count) => {
                let mut received = Vec::new();
                while received.len() < count {
                    match requests.message().await? {
                        Some(request) => received.push(request),
                        None => break,
                    }
                }
                let answers: Vec<Result<ForwardReply, Status>> = received
                    .into_iter()
                    .rev()
                    .map(|request| {
                        let result: Result<(), WriteFailure> =
                            Err(WriteFailure::QueueFull { group: request.group_id, capacity: request.write.len() });
                        let bytes = encode(&result).map_err(|e| Status::internal(e.to_string()))?;
                        Ok(ForwardReply { result: bytes.into(), id: request.id })
                    })
                    .collect();
                // Stays open after the answers, like a leader waiting for more.
                futures::stream::iter(answers).chain(futures::stream::pending()).boxed()
            }
            Peer::Silent => {
                tokio::spawn(async move { while let Ok(Some(_)) = requests.message().await {} });
                futures::stream::pending().boxed()
            }
            Peer::EndsAtOnce | Peer::AnswersEach => futures::stream::empty().boxed(),
        };
        Ok(Response::new(answers))
    }

    async fn append_entries(&self, _: Request<GroupMessage>) -> UnaryReply {
        unimplemented()
    }
    async fn vote(&self, _: Request<GroupMessage>) -> UnaryReply {
        unimplemented()
    }
    async fn pre_vote(&self, _: Request<GroupMessage>) -> UnaryReply {
        unimplemented()
    }
    async fn transfer_leader(&self, _: Request<GroupMessage>) -> UnaryReply {
        unimplemented()
    }
    async fn install_snapshot(&self, _: Request<Streaming<SnapshotChunk>>) -> UnaryReply {
        unimplemented()
    }
    async fn forward(&self, _: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        unimplemented()
    }
    async fn read_index(&self, _: Request<GroupMessage>) -> Result<Response<GroupReply>, Status> {
        unimplemented()
    }
    async fn join_check(&self, _: Request<GroupMessage>) -> Result<Response<GroupReply>, Status> {
        unimplemented()
    }
}

/// Serves `peer` on a loopback port; returns its address.
pub(crate) async fn serve(peer: Peer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftTransportServer::new(peer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr.to_string()
}

/// A client connected to `peer` served on a loopback port.
pub(crate) async fn client_of(peer: Peer) -> RaftTransportClient<Channel> {
    let addr = serve(peer).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    RaftTransportClient::new(channel)
}
