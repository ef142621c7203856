//! Writes this node forwards to a peer (the leader of their group), on one long-lived stream per peer
//! (`ForwardStream`).
//!
//! In: encoded `ForwardedWrite`s for any group the peer leads. Out: each write's encoded outcome, or why
//! the transport lost it. Each write gets an id; the peer answers each with its id, in whatever order its
//! writes commit. The stream opens with the first write to the peer and lasts until it fails; the next
//! write opens another.
//!
//! Why: one unary call per forwarded batch cost an HTTP/2 stream, its headers and a task on each side,
//! like the unary AppendEntries did before `append_stream`.
//!
//! What a caller learns when the stream fails: a write whose stream never connected was not sent
//! ([`Lost::NotSent`], definite); any other write in flight may or may not have reached the leader
//! ([`Lost::Broken`], indeterminate).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::raft::ForwardRequest;
use sluice_proto::raft::raft_transport_client::RaftTransportClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::command::GroupId;

/// Writes sent to one peer and not yet answered; a forward beyond this waits for room.
pub(crate) const MAX_FORWARDS_IN_FLIGHT: usize = 256;

/// Why a forwarded write got no answer from the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The stream never connected, or the write never left this node: nothing reached the peer.
    NotSent(String),
    /// The stream failed, or the answer took too long, after the write may have reached the peer.
    Broken(String),
}

type Answer = Result<Bytes, Lost>;

/// The open stream to each peer, by the address it is dialed at.
#[derive(Clone, Default)]
pub(crate) struct ForwardStreams {
    by_addr: Arc<Mutex<HashMap<String, Arc<Session>>>>,
    serial: Arc<AtomicU64>,
}

struct Session {
    serial: u64,
    requests: mpsc::Sender<ForwardRequest>,
    next_id: AtomicU64,
    /// The writes in flight, by id. `None` once the stream has ended: nothing may wait on it any more.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Answer>>>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Guards are never held across an await or a panic point: a poisoned lock still holds valid data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ForwardStreams {
    /// Sends `write` (for `group`) on the stream to `addr`, opening one with `client` if none is open, and
    /// waits up to `timeout` for its answer.
    pub(crate) async fn send(
        &self,
        addr: &str,
        client: impl FnOnce() -> Result<RaftTransportClient<Channel>, String>,
        group: GroupId,
        write: Bytes,
        timeout: Duration,
    ) -> Answer {
        let session = self.session(addr, client)?;
        let id = session.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        match locked(&session.pending).as_mut() {
            Some(pending) => pending.insert(id, answer_tx),
            // The stream ended between the lookup and now; the next write opens another.
            None => return Err(Lost::NotSent("the forward stream to the leader had just ended".to_string())),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let forget_write = || locked(&session.pending).as_mut().and_then(|pending| pending.remove(&id)).is_some();
        let request = ForwardRequest { group_id: group, write, id };
        match tokio::time::timeout_at(deadline, session.requests.send(request)).await {
            Ok(Ok(())) => {}
            // The write never entered the stream (unless the stream's end answered it first, below).
            Ok(Err(_)) if forget_write() => {
                return Err(Lost::NotSent("the forward stream to the leader ended".to_string()));
            }
            Ok(Err(_)) => {}
            Err(_) => {
                forget_write();
                return Err(Lost::NotSent(format!("the forward stream to the leader had no room for {timeout:?}")));
            }
        }
        match tokio::time::timeout_at(deadline, answer_rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Lost::Broken("the forward stream dropped the write".to_string())),
            Err(_) => {
                forget_write();
                Err(Lost::Broken(format!("no answer from the leader within {timeout:?}")))
            }
        }
    }

    fn session(
        &self,
        addr: &str,
        client: impl FnOnce() -> Result<RaftTransportClient<Channel>, String>,
    ) -> Result<Arc<Session>, Lost> {
        let mut by_addr = locked(&self.by_addr);
        if let Some(session) = by_addr.get(addr) {
            return Ok(session.clone());
        }
        let client = client().map_err(Lost::NotSent)?;
        let (requests, outgoing) = mpsc::channel(MAX_FORWARDS_IN_FLIGHT);
        let session = Arc::new(Session {
            serial: self.serial.fetch_add(1, Ordering::Relaxed),
            requests,
            next_id: AtomicU64::new(0),
            pending: Mutex::new(Some(HashMap::new())),
        });
        by_addr.insert(addr.to_string(), session.clone());
        tokio::spawn(run(self.clone(), addr.to_string(), client, session.clone(), outgoing));
        Ok(session)
    }

    fn forget(&self, addr: &str, serial: u64) {
        let mut by_addr = locked(&self.by_addr);
        if by_addr.get(addr).is_some_and(|session| session.serial == serial) {
            by_addr.remove(addr);
        }
    }
}

/// Carries one stream: opens it, hands each answer to its write, and when the stream ends answers every
/// write still in flight with why.
async fn run(
    streams: ForwardStreams,
    addr: String,
    mut client: RaftTransportClient<Channel>,
    session: Arc<Session>,
    outgoing: mpsc::Receiver<ForwardRequest>,
) {
    metrics::counter!("sluice_forward_streams_total").increment(1);
    let ended = async {
        let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        let mut answers = match client.forward_stream(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if super::status::is_connect_error(&status) => {
                return Lost::NotSent(format!("connecting to the leader: {}", status.message()));
            }
            Err(status) => return Lost::Broken(format!("opening the forward stream: {}", status.message())),
        };
        loop {
            match answers.message().await {
                Ok(Some(answer)) => {
                    let waiting = locked(&session.pending).as_mut().and_then(|pending| pending.remove(&answer.id));
                    // None: its caller timed out and left.
                    if let Some(waiting) = waiting {
                        let _ = waiting.send(Ok(answer.result));
                    }
                }
                Ok(None) => return Lost::Broken("the leader ended the forward stream".to_string()),
                Err(status) => return Lost::Broken(format!("the forward stream failed: {}", status.message())),
            }
        }
    }
    .await;
    streams.forget(&addr, session.serial);
    let in_flight = locked(&session.pending).take().unwrap_or_default();
    if !in_flight.is_empty() {
        metrics::counter!("sluice_forward_stream_failures_total").increment(1);
        tracing::warn!(peer = %addr, in_flight = in_flight.len(), reason = ?ended, "forward stream ended with writes in flight");
    }
    for (_, waiting) in in_flight {
        let _ = waiting.send(Err(ended.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake_peer::{Peer, serve};

    fn lazy_client(addr: &str) -> Result<RaftTransportClient<Channel>, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
        Ok(RaftTransportClient::new(endpoint.connect_lazy()))
    }

    #[tokio::test]
    async fn a_stream_that_ends_with_writes_in_flight_leaves_them_broken_and_the_next_write_reopens() {
        let addr = serve(Peer::EndsAtOnce).await;
        let streams = ForwardStreams::default();
        for round in 0..3 {
            let answer =
                streams.send(&addr, || lazy_client(&addr), 2, Bytes::from_static(b"w"), Duration::from_secs(5)).await;
            assert!(matches!(answer, Err(Lost::Broken(_))), "round {round}: {answer:?}");
            assert!(locked(&streams.by_addr).is_empty(), "round {round}: the ended stream is forgotten");
        }
        assert_eq!(streams.serial.load(Ordering::Relaxed), 3, "each write opened a stream of its own");
    }

    #[tokio::test]
    async fn a_write_unanswered_in_time_is_broken_and_forgotten_while_the_stream_stays() {
        let addr = serve(Peer::Silent).await;
        let streams = ForwardStreams::default();
        let answer =
            streams.send(&addr, || lazy_client(&addr), 2, Bytes::from_static(b"w"), Duration::from_millis(200)).await;
        assert!(matches!(&answer, Err(Lost::Broken(reason)) if reason.contains("no answer")), "{answer:?}");
        let by_addr = locked(&streams.by_addr);
        let session = by_addr.get(&addr).expect("the stream stays open");
        assert_eq!(locked(&session.pending).as_ref().map(|pending| pending.len()), Some(0));
    }
}
