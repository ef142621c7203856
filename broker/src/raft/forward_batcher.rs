//! Coalesces the appends a follower forwards to a group's leader into one `Forward` RPC.
//!
//! Producers may send to any node; a node that does not lead the partition forwards the append one hop.
//! One RPC per request made the peer transport (HTTP/2 framing, protobuf, a task per call) the largest
//! cost of a 3-node cluster. Requests wait in a bounded queue; the sender takes the first waiting one and
//! everything else already waiting for the same leader (up to the entry's record and byte limits), sends
//! them as one `AppendBatch`, and answers each request with its own outcome. It never waits for more to
//! arrive when nothing is in flight to that leader; while RPCs to it are in flight, a small batch waits for
//! one of them (the leader's rule, [`crate::raft::append_batcher::send_decision`]), up to
//! `MAX_IN_FLIGHT_RPCS` batches per group on the wire. The wait counts only RPCs to the same leader: an RPC
//! to a leader that just died lasts until its timeout, and forwards to the new one must not wait behind it.

use tokio::sync::{mpsc, oneshot};

use crate::command::forward::{ForwardedReply, ForwardedWrite, WriteFailure};
use crate::command::{Appended, GroupId, StreamAppend, group_name};
use crate::raft::append_batcher::{AppendLimits, Batching, InFlight, Queue, check_append_size, next_batch};
use crate::transport::client::PeerClients;

const MAX_IN_FLIGHT_RPCS: usize = 8;

struct PendingForward {
    leader_addr: String,
    append: StreamAppend,
    reply: oneshot::Sender<Result<Appended, WriteFailure>>,
}

#[derive(Clone)]
pub(crate) struct ForwardBatcher {
    group: GroupId,
    limits: AppendLimits,
    tx: mpsc::Sender<PendingForward>,
}

impl ForwardBatcher {
    pub(crate) fn start(group: GroupId, peers: PeerClients, limits: AppendLimits) -> Self {
        let (tx, rx) = mpsc::channel(limits.queue_capacity.max(1));
        tokio::spawn(run(group, peers, limits.clone(), rx));
        Self { group, limits, tx }
    }

    /// Forwards `append` to the leader at `leader_addr`; answers the leader's outcome for it.
    pub(crate) async fn submit(&self, leader_addr: &str, append: StreamAppend) -> Result<Appended, WriteFailure> {
        check_append_size(&self.limits, &append)?;
        let (reply, rx) = oneshot::channel();
        let pending = PendingForward { leader_addr: leader_addr.to_string(), append, reply };
        let queue = Queue { group: self.group, capacity: self.limits.queue_capacity, name: "forwarder" };
        queue.submit(&self.tx, pending, rx, "forward_queue_full").await
    }
}

async fn run(group: GroupId, peers: PeerClients, limits: AppendLimits, mut rx: mpsc::Receiver<PendingForward>) {
    let requests_per_rpc = metrics::histogram!("sluice_forward_batch_requests", "group" => group_name(group));
    let mut in_flight = InFlight::default();
    let mut carried = None;
    let same_leader = |a: &PendingForward, b: &PendingForward| a.leader_addr == b.leader_addr;
    let limits = AppendLimits { pipeline_min_records: limits.forward_pipeline_min_records, ..limits };
    let batching: Batching<'_, PendingForward, String> = Batching {
        max_in_flight: MAX_IN_FLIGHT_RPCS,
        limits: &limits,
        append_of: |p| &p.append,
        lane_of: |p| p.leader_addr.clone(),
    };
    while let Some(filled) = next_batch(&mut rx, &mut carried, &mut in_flight, &batching, same_leader).await {
        let batch = filled.batch;
        requests_per_rpc.record(batch.len() as f64);
        let leader_addr = batch[0].leader_addr.clone();
        let peers = peers.clone();
        in_flight.spawn(leader_addr.clone(), async move { send(group, &peers, &leader_addr, batch).await });
    }
    in_flight.join_all().await;
}

async fn send(group: GroupId, peers: &PeerClients, leader_addr: &str, batch: Vec<PendingForward>) {
    let (appends, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.append, p.reply)).unzip();
    match peers.forward(leader_addr, group, &ForwardedWrite::AppendBatch(appends)).await {
        Ok(ForwardedReply::AppendedBatch(results)) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Ok(other) => {
            let reason = format!("unexpected reply to a forwarded batch: {other:?}");
            tracing::error!(group, %reason);
            for reply in replies {
                let _ = reply.send(Err(WriteFailure::Bug { group, reason: reason.clone() }));
            }
        }
        Err(failure) => {
            for reply in replies {
                let _ = reply.send(Err(failure.clone()));
            }
        }
    }
}
