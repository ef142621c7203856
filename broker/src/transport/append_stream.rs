//! Replication to one follower as one long-lived HTTP/2 stream (`StreamAppend`).
//!
//! In: openraft's stream of AppendEntries requests for one group and follower (a replication session:
//! it lasts while the follower keeps up). Out: the follower's answers, one per request, in order.
//!
//! Why: openraft's default sends one request, waits for its answer, then sends the next. As unary gRPC
//! calls that cost a whole HTTP/2 stream per request (headers, a task on each side, a deadline) and left
//! the follower idle for a round trip between requests. On the stream, requests go without waiting for
//! earlier answers, up to [`MAX_APPENDS_IN_FLIGHT`]; the follower's openraft (`Raft::stream_append`)
//! answers them in order.
//!
//! The session fails (openraft then opens another, backing off) when the follower leaves the oldest
//! unanswered request unanswered for [`APPEND_ANSWER_TIMEOUT`], when the stream ends with requests still
//! unanswered, or on a transport error. The wait is the pure [`AnswerWindow`]; the async shell only
//! carries it out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use openraft::error::{NetworkError, RPCError, Unreachable};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use sluice_proto::raft::raft_transport_client::RaftTransportClient;
use sluice_proto::raft::{GroupMessage, GroupReply};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::command::{GroupId, TypeConfig, decode, encode, group_name};

/// Requests sent to a follower and not yet answered, per session. Bounds what the leader holds for a
/// follower that answers slowly (each request is up to `max_payload_entries` entries).
pub(crate) const MAX_APPENDS_IN_FLIGHT: usize = 64;

/// How long the oldest unanswered request may wait for its answer before the session is abandoned.
/// A follower that fsyncs under load answers in milliseconds to a few hundred; a dead or cut-off one
/// never does (a killed process resets the connection at once; a cut-off one is found here or by the
/// HTTP/2 keep-alive).
pub(crate) const APPEND_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The metadata key naming the group a `StreamAppend` carries.
pub(crate) const GROUP_METADATA_KEY: &str = "sluice-group";

/// When each unanswered request was sent, oldest first: decides when the session has waited too long.
#[derive(Debug)]
pub(crate) struct AnswerWindow<T> {
    sent: VecDeque<T>,
}

impl<T> Default for AnswerWindow<T> {
    fn default() -> Self {
        Self { sent: VecDeque::new() }
    }
}

/// What the next answer wait should do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AnswerWait<T> {
    /// Nothing is unanswered: wait for a request to be sent (check again after the timeout).
    Idle { recheck_at: T },
    /// Wait for an answer until `deadline`, the oldest request's.
    Until { deadline: T },
    /// The oldest request has waited past the timeout.
    Overdue { unanswered: usize },
}

impl<T: Copy + Ord + std::ops::Add<Duration, Output = T>> AnswerWindow<T> {
    pub(crate) fn sent(&mut self, at: T) {
        self.sent.push_back(at);
    }

    /// An answer came (they come in request order): the oldest request is answered. False if none was
    /// unanswered (a follower that answers more than it was asked is broken).
    pub(crate) fn answered(&mut self) -> bool {
        self.sent.pop_front().is_some()
    }

    pub(crate) fn unanswered(&self) -> usize {
        self.sent.len()
    }

    pub(crate) fn wait(&self, now: T, timeout: Duration) -> AnswerWait<T> {
        match self.sent.front() {
            None => AnswerWait::Idle { recheck_at: now + timeout },
            Some(&oldest) if oldest + timeout <= now => AnswerWait::Overdue { unanswered: self.sent.len() },
            Some(&oldest) => AnswerWait::Until { deadline: oldest + timeout },
        }
    }
}

type Result<T> = std::result::Result<T, RPCError<TypeConfig>>;
type Answers = BoxStream<'static, Result<StreamAppendResult<TypeConfig>>>;

fn unreachable(reason: String) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(reason))
}

fn network(reason: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(reason))
}

struct Shared {
    window: Mutex<AnswerWindow<Instant>>,
    /// Signalled when an answer frees room in the window (a stored permit covers a signal sent before
    /// the request side waits).
    room: Notify,
}

impl Shared {
    fn window(&self) -> std::sync::MutexGuard<'_, AnswerWindow<Instant>> {
        // The guard is never held across an await or a panic point: a poisoned lock still holds valid data.
        self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Opens a `StreamAppend` to the follower behind `client` and streams `requests` on it. Opening and each
/// answer are bounded by `answer_timeout` ([`APPEND_ANSWER_TIMEOUT`] outside tests).
pub(crate) async fn open<S>(
    mut client: RaftTransportClient<Channel>,
    group: GroupId,
    requests: S,
    answer_timeout: Duration,
) -> Result<Answers>
where
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let shared = Arc::new(Shared { window: Mutex::new(AnswerWindow::default()), room: Notify::new() });
    let outgoing = futures::stream::unfold((requests, shared.clone()), move |(mut requests, shared)| async move {
        // The next request is taken from openraft only while fewer than the limit are unanswered.
        while shared.window().unanswered() >= MAX_APPENDS_IN_FLIGHT {
            shared.room.notified().await;
        }
        let request = requests.next().await?;
        let payload = match encode(&request) {
            Ok(payload) => payload,
            Err(e) => {
                // Ends the request stream; the follower then ends its answers, and the session with them.
                tracing::error!(group, error = %e, "encoding an AppendEntries request");
                return None;
            }
        };
        shared.window().sent(Instant::now());
        Some((GroupMessage { group_id: group, payload: payload.into() }, (requests, shared)))
    });
    let mut request = tonic::Request::new(outgoing);
    request
        .metadata_mut()
        .insert(GROUP_METADATA_KEY, group.to_string().parse().map_err(|e| network(format!("group metadata: {e}")))?);
    let opened = match tokio::time::timeout(answer_timeout, client.stream_append(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(super::status::status_error(status)),
        Err(_) => Err(unreachable(format!("opening the append stream took over {answer_timeout:?}"))),
    };
    let answers = opened.inspect_err(|_| {
        metrics::counter!("sluice_raft_append_stream_failures_total", "group" => group_name(group)).increment(1);
    })?;
    metrics::counter!("sluice_raft_append_streams_total", "group" => group_name(group)).increment(1);
    Ok(answer_stream(group, answers, shared, answer_timeout))
}

fn answer_stream(
    group: GroupId,
    answers: tonic::Streaming<GroupReply>,
    shared: Arc<Shared>,
    answer_timeout: Duration,
) -> Answers {
    futures::stream::unfold(Some((answers, shared)), move |state| async move {
        let (mut answers, shared) = state?;
        match next_answer(&mut answers, &shared, answer_timeout).await {
            Ok(Some(answer)) => Some((Ok(answer), Some((answers, shared)))),
            Ok(None) => None,
            Err(e) => {
                metrics::counter!("sluice_raft_append_stream_failures_total", "group" => group_name(group))
                    .increment(1);
                Some((Err(e), None))
            }
        }
    })
    .boxed()
}

async fn next_answer(
    answers: &mut tonic::Streaming<GroupReply>,
    shared: &Shared,
    answer_timeout: Duration,
) -> Result<Option<StreamAppendResult<TypeConfig>>> {
    loop {
        let wait = shared.window().wait(Instant::now(), answer_timeout);
        let until = match wait {
            AnswerWait::Overdue { unanswered } => {
                return Err(unreachable(format!(
                    "no answer to an AppendEntries for {answer_timeout:?} ({unanswered} unanswered)"
                )));
            }
            AnswerWait::Idle { recheck_at } => recheck_at,
            AnswerWait::Until { deadline } => deadline,
        };
        // `message()` keeps its progress in `answers`: abandoning it at the deadline loses nothing.
        let Ok(next) = tokio::time::timeout_at(until, answers.message()).await else { continue };
        match next {
            Ok(Some(reply)) => {
                if !shared.window().answered() {
                    return Err(network("the follower answered an AppendEntries it was not sent".to_string()));
                }
                shared.room.notify_one();
                return decode(&reply.payload)
                    .map(Some)
                    .map_err(|e| network(format!("undecodable AppendEntries answer: {e}")));
            }
            Ok(None) => {
                let unanswered = shared.window().unanswered();
                if unanswered == 0 {
                    return Ok(None);
                }
                return Err(unreachable(format!("the append stream ended with {unanswered} requests unanswered")));
            }
            Err(status) => return Err(super::status::status_error(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn an_idle_session_never_times_out() {
        let window = AnswerWindow::<Duration>::default();
        assert_eq!(window.wait(at(10_000), T), AnswerWait::Idle { recheck_at: at(12_000) });
    }

    #[test]
    fn the_oldest_unanswered_request_sets_the_deadline() {
        let mut window = AnswerWindow::default();
        window.sent(at(100));
        window.sent(at(1_500));
        assert_eq!(window.wait(at(200), T), AnswerWait::Until { deadline: at(2_100) });
        assert!(window.answered());
        assert_eq!(window.wait(at(2_200), T), AnswerWait::Until { deadline: at(3_500) });
        assert!(window.answered());
        assert_eq!(window.wait(at(9_000), T), AnswerWait::Idle { recheck_at: at(11_000) });
    }

    #[test]
    fn a_request_unanswered_for_the_timeout_is_overdue() {
        let mut window = AnswerWindow::default();
        window.sent(at(100));
        window.sent(at(900));
        assert_eq!(window.wait(at(2_099), T), AnswerWait::Until { deadline: at(2_100) });
        assert_eq!(window.wait(at(2_100), T), AnswerWait::Overdue { unanswered: 2 });
    }

    use crate::transport::fake_peer::{Peer, client_of};

    fn heartbeat() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: crate::command::Vote::new(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        }
    }

    async fn first_answer(peer: Peer, requests: usize) -> Result<Option<StreamAppendResult<TypeConfig>>> {
        let client = client_of(peer).await;
        let requests = futures::stream::iter((0..requests).map(|_| heartbeat()));
        let mut answers = open(client, 1, requests, Duration::from_millis(300)).await?;
        answers.next().await.transpose()
    }

    #[tokio::test]
    async fn a_follower_that_never_answers_fails_the_session_after_the_timeout() {
        let started = Instant::now();
        let outcome = first_answer(Peer::Silent, 3).await;
        let Err(RPCError::Unreachable(e)) = outcome else { panic!("expected Unreachable, got {outcome:?}") };
        assert!(e.to_string().contains("no answer"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(300), "not before the timeout");
    }

    #[tokio::test]
    async fn a_stream_that_ends_with_requests_unanswered_fails_the_session() {
        let outcome = first_answer(Peer::EndsAtOnce, 2).await;
        let Err(RPCError::Unreachable(e)) = outcome else { panic!("expected Unreachable, got {outcome:?}") };
        assert!(e.to_string().contains("unanswered"), "{e}");
    }

    #[tokio::test]
    async fn every_request_gets_its_answer_and_the_session_ends_with_the_requests() {
        let client = client_of(Peer::AnswersEach).await;
        let requests = futures::stream::iter((0..100).map(|_| heartbeat()));
        let answers = open(client, 1, requests, Duration::from_secs(5)).await.expect("open");
        let answers: Vec<_> = answers.collect().await;
        assert_eq!(answers.len(), 100);
        assert!(answers.iter().all(|a| matches!(a, Ok(Ok(None)))), "{answers:?}");
    }

    #[test]
    fn an_answer_nobody_asked_for_is_refused() {
        let mut window = AnswerWindow::<Duration>::default();
        assert!(!window.answered());
        window.sent(at(1));
        assert!(window.answered());
        assert!(!window.answered());
    }
}
