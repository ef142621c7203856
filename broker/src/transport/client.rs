//! Raft transport, client side: one lazily connected tonic channel per peer
//! address, shared by every group; each group's openraft network wraps it
//! with the group id.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Future, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use sluice_proto::raft::raft_transport_client::RaftTransportClient;
use sluice_proto::raft::{GroupMessage, SnapshotChunk};
use tonic::transport::{Channel, Endpoint};

use crate::command::forward::{ForwardedReply, ForwardedWrite, WriteFailure};
use crate::command::{GroupId, NodeId, TypeConfig, Vote, decode, encode};
use crate::store::Snapshot;
use crate::store::SnapshotData;
use crate::transport::append_stream;
use crate::transport::forward_stream::{ForwardStreams, Lost};
use crate::transport::status::status_error;

/// Largest gRPC message between nodes (an AppendEntries of up to 16 entries of ~4 MiB: `raft::append_batcher::payload_entries_for`).
pub(crate) const MAX_PEER_MESSAGE_BYTES: usize = 96 << 20;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// A read index is one heartbeat round on the leader; past this the asking node tries again.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a follower may take no chunk of a snapshot being sent before the transfer fails.
const SNAPSHOT_SEND_STALL: Duration = Duration::from_secs(30);

/// How long the follower may take to answer once the last chunk of a `bytes`-byte snapshot is sent: it reads
/// the whole file back to check it, then installs it (its state swapped in), so a minute plus the time to read
/// it at 16 MiB/s, a slow disk's pace.
pub(crate) fn snapshot_answer_deadline(bytes: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(bytes / (16 << 20) * 1000)
}

#[derive(Clone, Default)]
pub(crate) struct PeerClients {
    /// Raft and forwarded writes: one connection per peer.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Every other call to a peer (serving's `Logs` and `Decisions`, relayed to an admin client): a connection
    /// of their own, because HTTP/2's flow control is per connection as well as per stream, and a relay held
    /// up by a slow reader (`sluice logs -f | less`) stops reading its stream; on the Raft connection a few of
    /// those would use up its window and stall the replies to AppendEntries, votes and forwarded writes.
    service_channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// `--peer-route`: a peer's advertised address → the address this node
    /// dials instead (a proxy, a NAT address). Peers are still named by
    /// their advertised address everywhere else.
    routes: Arc<BTreeMap<String, String>>,
    /// Mutual TLS to every peer when transport encryption is on.
    tls: Option<sluice_security::Tls>,
    /// The stream of forwarded writes to each peer.
    forwards: ForwardStreams,
}

impl PeerClients {
    pub(crate) fn new(routes: BTreeMap<String, String>, tls: Option<sluice_security::Tls>) -> Self {
        PeerClients {
            channels: Arc::default(),
            service_channels: Arc::default(),
            routes: Arc::new(routes),
            tls,
            forwards: ForwardStreams::default(),
        }
    }

    /// The address this node dials to reach the peer advertised as `addr`.
    pub(crate) fn dial_addr<'a>(&'a self, addr: &'a str) -> &'a str {
        self.routes.get(addr).map(String::as_str).unwrap_or(addr)
    }

    pub(crate) fn client(&self, addr: &str) -> Result<RaftTransportClient<Channel>, String> {
        Ok(RaftTransportClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }

    /// The Raft connection to the peer advertised as `addr` (made on first use, then shared by Raft's calls
    /// and forwarded writes to it).
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, String> {
        self.channel_in(&self.channels, addr)
    }

    /// The connection for the other services of the peer advertised as `addr` (made on first use, then
    /// shared by those calls), apart from the Raft connection: see `service_channels`.
    pub(crate) fn service_channel(&self, addr: &str) -> Result<Channel, String> {
        self.channel_in(&self.service_channels, addr)
    }

    fn channel_in(&self, channels: &Mutex<HashMap<String, Channel>>, addr: &str) -> Result<Channel, String> {
        let mut channels = channels.lock().map_err(|_| "peer client table poisoned".to_string())?;
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let dial = self.dial_addr(addr);
                let endpoint = Endpoint::from_shared(format!("http://{dial}"))
                    .map_err(|e| format!("bad peer address {addr}: {e}"))?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                let channel = match &self.tls {
                    None => endpoint.connect_lazy(),
                    Some(tls) => endpoint.connect_with_connector_lazy(sluice_security::TlsDialer::new(
                        tls.clone(),
                        dial,
                        sluice_security::host_of(addr),
                    )),
                };
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(channel)
    }

    /// Sends a write to `addr`, the leader of `group`, on the stream of writes to that peer
    /// ([`super::forward_stream`]).
    pub(crate) async fn forward(
        &self,
        addr: &str,
        group: GroupId,
        write: &ForwardedWrite,
    ) -> Result<ForwardedReply, WriteFailure> {
        let indeterminate = |reason: String| WriteFailure::Indeterminate { group, reason };
        let payload = encode(write).map_err(|e| indeterminate(e.to_string()))?;
        let answer = self.forwards.send(addr, || self.client(addr), group, payload.into(), FORWARD_TIMEOUT).await;
        match answer {
            Ok(result) => {
                decode::<Result<ForwardedReply, WriteFailure>>(&result).map_err(|e| indeterminate(e.to_string()))?
            }
            // Refused before it reached the leader: nothing was written.
            Err(Lost::NotSent(_)) => Err(WriteFailure::NotLeader { group, leader: None }),
            Err(Lost::Broken(reason)) => Err(indeterminate(reason)),
        }
    }
}

/// Why a peer did not answer a read index.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadIndexFailure {
    /// The peer answered: it is not the leader, or could not confirm it still leads.
    #[error("refused: {0}")]
    Refused(WriteFailure),
    /// The peer runs a build without the call (a rolling upgrade): the asking node falls back to what its
    /// leader last reported committed.
    #[error("the leader's build has no read index")]
    Unsupported,
    /// The call did not complete (unreachable, timed out, an answer this build cannot read).
    #[error("the call failed: {0}")]
    Failed(String),
}

impl PeerClients {
    /// Asks `addr`, the leader of `group`, for its read index ([`crate::node::Node::read_index_local`]).
    /// Waits no later than `deadline`, nor longer than [`READ_INDEX_TIMEOUT`].
    pub(crate) async fn read_index(
        &self,
        addr: &str,
        group: GroupId,
        deadline: tokio::time::Instant,
    ) -> Result<u64, ReadIndexFailure> {
        let mut client = self.client(addr).map_err(ReadIndexFailure::Failed)?;
        let request = GroupMessage { group_id: group, payload: Default::default() };
        let until = deadline.min(tokio::time::Instant::now() + READ_INDEX_TIMEOUT);
        match tokio::time::timeout_at(until, client.read_index(request)).await {
            Err(_) => Err(ReadIndexFailure::Failed("no answer in time".into())),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Err(ReadIndexFailure::Unsupported),
            Ok(Err(status)) => Err(ReadIndexFailure::Failed(status.message().to_string())),
            Ok(Ok(reply)) => match decode::<Result<u64, WriteFailure>>(&reply.get_ref().payload) {
                Ok(Ok(index)) => Ok(index),
                Ok(Err(refused)) => Err(ReadIndexFailure::Refused(refused)),
                // An answer this build cannot read: during a rolling upgrade, a newer leader's refusal of a kind
                // added since; asked again (until the caller's deadline), as for a call that failed.
                Err(e) => Err(ReadIndexFailure::Failed(format!("undecodable read index answer: {e}"))),
            },
        }
    }

    /// Asks the node at `addr` whether it may join ([`crate::node::Node::may_join`]): `Ok(Err(why))` when it says
    /// no, `Err` when it could not be asked (unreachable, or a build without the call: the add goes on, and its
    /// own checks decide).
    pub(crate) async fn join_check(
        &self,
        addr: &str,
        ask: &crate::command::cluster_config::JoinAsk,
    ) -> Result<Result<(), String>, String> {
        let mut client = self.client(addr)?;
        let payload = encode(ask).map_err(|e| e.to_string())?;
        let request = GroupMessage { group_id: 0, payload: payload.into() };
        match tokio::time::timeout(JOIN_CHECK_TIMEOUT, client.join_check(request)).await {
            Err(_) => Err("no answer in time".into()),
            Ok(Err(status)) => Err(status.message().to_string()),
            Ok(Ok(reply)) => decode(&reply.get_ref().payload).map_err(|e| format!("undecodable answer: {e}")),
        }
    }
}

/// How long `cluster add-node` waits for the new node's answer to [`PeerClients::join_check`].
const JOIN_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct NetworkFactory {
    group: GroupId,
    peers: PeerClients,
}

impl NetworkFactory {
    pub(crate) fn new(group: GroupId, peers: PeerClients) -> Self {
        Self { group, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        GroupNetwork { group: self.group, target, addr: node.addr.clone(), peers: self.peers.clone() }
    }
}

pub(crate) struct GroupNetwork {
    group: GroupId,
    target: NodeId,
    addr: String,
    peers: PeerClients,
}

fn unreachable(e: impl ToString) -> Unreachable<TypeConfig> {
    Unreachable::from_string(e.to_string())
}

impl GroupNetwork {
    fn client(&self) -> Result<RaftTransportClient<Channel>, RPCError<TypeConfig>> {
        self.peers.client(&self.addr).map_err(|e| RPCError::Unreachable(unreachable(e)))
    }

    fn message<T: serde::Serialize>(
        &self,
        rpc: &T,
        option: &RPCOption,
    ) -> Result<tonic::Request<GroupMessage>, RPCError<TypeConfig>> {
        let payload = encode(rpc).map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))?;
        let mut request = tonic::Request::new(GroupMessage { group_id: self.group, payload: payload.into() });
        request.set_timeout(option.hard_ttl());
        Ok(request)
    }
}

fn decode_reply<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RPCError<TypeConfig>> {
    decode(bytes).map_err(|e| RPCError::Network(NetworkError::from_string(format!("bad reply: {e}"))))
}

impl RaftNetworkV2<TypeConfig> for GroupNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.message(&rpc, &option)?;
        let reply = self.client()?.append_entries(request).await.map_err(status_error)?;
        decode_reply(&reply.get_ref().payload)
    }

    /// Replication sessions go on one long-lived stream each ([`super::append_stream`]), not one call per
    /// request.
    ///
    /// The session's first request is taken before the stream opens: openraft waits out its backoff after a
    /// failed session as it hands out a request, not before calling this. Opened first, a session to a
    /// follower that refuses connections (down, restarting) failed at once without taking a request, and
    /// openraft opened the next at once: each leader looped on it with every core it could get (two log
    /// warnings per try, about 15,000 lines per second per node) for as long as the follower was down.
    fn stream_append<'s, S>(
        &'s mut self,
        mut input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let Some(first) = input.next().await else {
                // Nothing to send (the session was cancelled or its payload replaced meanwhile).
                return Ok(futures::stream::empty().boxed());
            };
            let client = self.client()?;
            let requests = futures::stream::iter([first]).chain(input);
            append_stream::open(client, self.group, requests, append_stream::APPEND_ANSWER_TIMEOUT).await
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.message(&rpc, &option)?;
        let reply = self.client()?.vote(request).await.map_err(status_error)?;
        decode_reply(&reply.get_ref().payload)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.message(&rpc, &option)?;
        let reply = self.client()?.pre_vote(request).await.map_err(status_error)?;
        decode_reply(&reply.get_ref().payload)
    }

    async fn transfer_leader(
        &mut self,
        rpc: openraft::raft::TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.message(&rpc, &option)?;
        let reply = self.client()?.transfer_leader(request).await.map_err(status_error)?;
        decode_reply(&reply.get_ref().payload)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let to_streaming = |e: RPCError<TypeConfig>| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::from_string(other.to_string())),
        };
        let header = encode(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e.to_string())))?;
        let mut data = snapshot
            .snapshot
            .into_chunks()
            .map_err(|e| StreamingError::Network(NetworkError::from_string(format!("read snapshot: {e}"))))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(2);
        let (failed, failure) = tokio::sync::oneshot::channel::<String>();
        let (all_sent, sent_bytes) = tokio::sync::oneshot::channel::<u64>();
        let group = self.group;
        // Moves the encoded chunks into the request stream; the stream ends after the last. A read error, or a
        // follower that takes no chunk for SNAPSHOT_SEND_STALL, keeps the stream open and fails the call, which
        // cancels it: the follower never takes a cut-short snapshot for a whole one.
        tokio::spawn(async move {
            let mut header = Some(header);
            let mut bytes = 0u64;
            while let Some(chunk) = data.recv().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        let _ = failed.send(format!("read snapshot: {e}"));
                        tx.closed().await;
                        return;
                    }
                };
                bytes += chunk.len() as u64;
                let message = SnapshotChunk {
                    group_id: group,
                    header: header.take().map(Into::into).unwrap_or_default(),
                    data: chunk.into(),
                };
                match tokio::time::timeout(SNAPSHOT_SEND_STALL, tx.send(message)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        let _ = failed.send(format!("the follower took no chunk for {SNAPSHOT_SEND_STALL:?}"));
                        tx.closed().await;
                        return;
                    }
                }
            }
            let _ = all_sent.send(bytes);
        });
        let mut client = self.client().map_err(to_streaming)?;
        // No deadline on the whole call: a snapshot of a large partition streams for as long as its size takes
        // (regression: a 60 s deadline cut every transfer of more than about a minute's worth, and the follower
        // never caught up). Stalls are bounded instead: the follower's wait for each chunk (its idle timeout),
        // this side's wait for the follower to take each one, and the wait for its answer once all are sent.
        let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let send = client.install_snapshot(request);
        let answer_deadline = async {
            match sent_bytes.await {
                Ok(bytes) => tokio::time::sleep(snapshot_answer_deadline(bytes)).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            Ok(reason) = failure => {
                tracing::warn!(group, target = self.target, error = %reason, "sending a snapshot");
                Err(StreamingError::Network(NetworkError::from_string(reason)))
            }
            () = answer_deadline => {
                tracing::warn!(group, target = self.target, "the follower did not answer the snapshot in time");
                Err(StreamingError::Network(NetworkError::from_string(
                    "the follower did not answer after the snapshot's last chunk in time".to_string(),
                )))
            }
            reply = send => {
                let reply = reply.map_err(|s| to_streaming(status_error(s)))?;
                decode(&reply.get_ref().payload)
                    .map_err(|e| StreamingError::Network(NetworkError::from_string(format!("bad reply: {e}"))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::PeerClients;
    use crate::command::encode;
    use crate::command::forward::{ForwardedWrite, MembershipOp, WriteFailure};
    use crate::transport::fake_peer::{Peer, serve};

    fn write_for(node: u64) -> ForwardedWrite {
        ForwardedWrite::Membership(MembershipOp::Promote(node))
    }

    #[tokio::test]
    async fn each_write_gets_its_own_answer_whatever_order_the_leader_answers_in() {
        let addr = serve(Peer::AnswersForwardsInReverse(8)).await;
        let peers = PeerClients::new(BTreeMap::new(), None);
        // All eight are in flight before the leader answers any.
        let forwards: Vec<_> = (0..8u32)
            .map(|group| {
                let (peers, addr) = (peers.clone(), addr.clone());
                // Writes of different lengths, so that each answer names its write.
                let write = write_for(1u64 << (group * 7));
                let length = encode(&write).expect("encode").len();
                tokio::spawn(async move { (group, length, peers.forward(&addr, group, &write).await) })
            })
            .collect();
        for forward in forwards {
            let (group, length, outcome) = forward.await.expect("forward task");
            assert_eq!(outcome.err(), Some(WriteFailure::QueueFull { group, capacity: length }));
        }
    }

    #[tokio::test]
    async fn a_leader_that_cannot_be_reached_is_a_definite_refusal() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let peers = PeerClients::new(BTreeMap::new(), None);
        let outcome = peers.forward(&addr, 3, &write_for(1)).await;
        assert_eq!(outcome.err(), Some(WriteFailure::NotLeader { group: 3, leader: None }));
    }

    /// A replication session to a follower that refuses connections takes its first request before it fails:
    /// openraft waits out its backoff as it hands a request out, and a session that failed without taking one
    /// was followed by the next at once, in a loop, while the follower was down.
    #[tokio::test]
    async fn a_session_to_a_follower_that_refuses_connections_takes_a_request_before_it_fails() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use futures::StreamExt;
        use openraft::error::RPCError;
        use openraft::network::{RPCOption, RaftNetworkV2};
        use openraft::raft::AppendEntriesRequest;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let mut network =
            super::GroupNetwork { group: 1, target: 2, addr, peers: PeerClients::new(BTreeMap::new(), None) };
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = taken.clone();
        let heartbeat = AppendEntriesRequest {
            vote: crate::command::Vote::new(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        };
        let requests = futures::stream::iter([heartbeat]).inspect(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let outcome = network.stream_append(requests, RPCOption::new(Duration::from_millis(50))).await;
        assert!(matches!(outcome, Err(RPCError::Unreachable(_))), "{:?}", outcome.err());
        assert_eq!(taken.load(Ordering::SeqCst), 1, "the session failed without taking a request");
    }

    /// The wait for a follower's answer after a snapshot's last chunk grows with the snapshot (it reads the
    /// whole file back before it installs it), from a minute; the transfer itself has no overall deadline.
    #[test]
    fn the_wait_for_a_snapshots_answer_grows_with_its_size() {
        let cases: [(u64, u64); 4] = [(0, 60), (16 << 20, 61), (1 << 30, 124), (16 << 30, 1084)];
        for (bytes, seconds) in cases {
            assert_eq!(super::snapshot_answer_deadline(bytes), Duration::from_secs(seconds), "{bytes} bytes");
        }
    }
}
