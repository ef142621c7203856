//! Request bodies: read within a time and size limit, their bytes held in the node's [`BodyBudget`] from
//! their arrival until the request is answered; a refused body is read (bounded) and dropped, so the client
//! sees its answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cloudevent::EventError;

/// Reads a body of at most `limit` bytes within `timeout`, holding its bytes in `budget` as they arrive (the
/// permit goes back when the request is answered); past `limit` the rest is read and dropped, up to a bound,
/// so the client sees the 413.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
    budget: &BodyBudget,
    mut held: BodyPermit,
) -> Result<(Bytes, BodyPermit), EventError> {
    use http_body_util::BodyExt;
    let too_large = || EventError::bad("request body too large").rule(format!("at most {limit} bytes")).status(413);
    let mut body = body;
    let collect = async {
        // A body that arrives in one frame (most events) is kept as it came, not copied; one that arrives in
        // several is copied into one buffer, of its declared length when the budget holds that length at once
        // (the buffer is memory whether or not the rest comes), else grown as the frames come (each growth
        // copies everything so far again).
        let declared = hyper::body::Body::size_hint(&body).exact().and_then(|n| usize::try_from(n).ok());
        let declared = declared.map_or(0, |n| n.min(limit));
        let mut collected = Collected::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| EventError::bad("request body could not be read").rule(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if collected.len() + data.len() > limit {
                    return Ok(Err(too_large()));
                }
                let joined = collected.len() + data.len();
                if let Err(busy) = budget.hold(&mut held, joined) {
                    return Ok(Err(busy));
                }
                let capacity = match collected {
                    Collected::One(_) if declared > joined && budget.hold_if_room(&mut held, declared) => declared,
                    _ => 0,
                };
                collected.push(data, capacity);
            }
        }
        Ok(Ok(collected.into_bytes()))
    };
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(EventError::bad("request body not received in time")
            .rule(format!("the body must arrive within {timeout:?}"))
            .status(408)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Ok(bytes))) => Ok((bytes, held)),
        Ok(Ok(Err(refused))) => {
            drop(held);
            discard_body(body, DISCARD_MAX_BYTES, timeout).await;
            Err(refused)
        }
    }
}

/// The request bodies a node holds at once, over every connection (`--max-inflight-body-bytes`): a body's bytes
/// count from their arrival (its declared length at once, for a client awaiting `100 Continue`) until its
/// request is answered (parsed, appended, committed). Without it, 4,096
/// connections of 256 HTTP/2 streams each could hold a 4 MiB batch apiece. Past it, a request gets 429 with
/// `Retry-After` at once rather than waiting: requests that each hold part of the budget and wait for more
/// would wait on each other. Each connection may hold only its [`ConnectionBodyShare`] of it, so that one client's
/// streams (an HTTP/2 connection carries 256) cannot take the whole budget from the others.
#[derive(Clone)]
pub(super) struct BodyBudget {
    kib: Arc<Semaphore>,
    bytes: usize,
}

/// What one connection's requests may hold of the [`BodyBudget`] at once
/// (`--max-inflight-body-bytes-per-connection`); it travels in each request's extensions.
#[derive(Clone)]
pub(crate) struct ConnectionBodyShare {
    kib: Arc<Semaphore>,
    bytes: usize,
}

impl ConnectionBodyShare {
    pub(crate) fn new(bytes: usize) -> Self {
        ConnectionBodyShare { kib: Arc::new(Semaphore::new(bytes.div_ceil(1024).min(Semaphore::MAX_PERMITS))), bytes }
    }
}

/// A request's part of the [`BodyBudget`] and of its connection's share, in KiB.
#[derive(Default)]
pub(super) struct BodyPermit {
    node: Option<OwnedSemaphorePermit>,
    connection: Option<OwnedSemaphorePermit>,
    share: Option<ConnectionBodyShare>,
}

/// Bytes of request bodies the node holds now (whole KiB), as `sluice_ingress_body_budget_held_bytes`.
static HELD_BYTES: std::sync::LazyLock<metrics::Gauge> =
    std::sync::LazyLock::new(|| metrics::gauge!("sluice_ingress_body_budget_held_bytes"));

impl BodyPermit {
    /// A permit holding nothing yet, for a request on a connection with `share` (none: the node's budget only).
    pub(super) fn on_connection(share: Option<ConnectionBodyShare>) -> Self {
        BodyPermit { node: None, connection: None, share }
    }

    pub(super) fn kib(&self) -> usize {
        self.node.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        HELD_BYTES.decrement((self.kib() * 1024) as f64);
    }
}

/// Grows `held` by `more` KiB of `kib`, or says that there is not as much left.
fn grow(held: &mut Option<OwnedSemaphorePermit>, kib: &Arc<Semaphore>, more: usize) -> Result<(), ()> {
    if more == 0 {
        return Ok(());
    }
    let more = u32::try_from(more).unwrap_or(u32::MAX);
    let permit = kib.clone().try_acquire_many_owned(more).map_err(|_| ())?;
    match held {
        Some(held) => held.merge(permit),
        None => *held = Some(permit),
    }
    Ok(())
}

/// Which limit a body's bytes would pass.
enum BudgetLimit {
    /// The connection's share (its bytes).
    Connection(usize),
    Node,
}

impl BodyBudget {
    pub(super) fn new(bytes: usize) -> Self {
        BodyBudget { kib: Arc::new(Semaphore::new(bytes.div_ceil(1024).min(Semaphore::MAX_PERMITS))), bytes }
    }

    /// Grows `held` to cover `bytes`, in its connection's share and in the node's budget, or says why not (429).
    pub(super) fn hold(&self, held: &mut BodyPermit, bytes: usize) -> Result<(), EventError> {
        self.grow_to(held, bytes).map_err(|limit| {
            let (rule, reason) = match limit {
                BudgetLimit::Connection(share_bytes) => (
                    format!(
                        "at most {share_bytes} bytes of request bodies are held at once per connection \
                         (--max-inflight-body-bytes-per-connection)"
                    ),
                    "connection",
                ),
                BudgetLimit::Node => (
                    format!(
                        "at most {} bytes of request bodies are held at once over every connection \
                         (--max-inflight-body-bytes)",
                        self.bytes
                    ),
                    "node",
                ),
            };
            metrics::counter!("sluice_ingress_body_budget_refused_total", "limit" => reason).increment(1);
            EventError::bad("the node holds as many request bodies as it may; retry").rule(rule).status(429)
        })
    }

    /// [`BodyBudget::hold`] for memory the node may do without (a buffer sized ahead of the bytes): false, and
    /// nothing counted as refused, when there is no room.
    pub(super) fn hold_if_room(&self, held: &mut BodyPermit, bytes: usize) -> bool {
        self.grow_to(held, bytes).is_ok()
    }

    fn grow_to(&self, held: &mut BodyPermit, bytes: usize) -> Result<(), BudgetLimit> {
        let needed = bytes.div_ceil(1024);
        let have = held.kib();
        if needed <= have {
            return Ok(());
        }
        if let Some(share) = &held.share {
            let have_here = held.connection.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
            if grow(&mut held.connection, &share.kib, needed.saturating_sub(have_here)).is_err() {
                return Err(BudgetLimit::Connection(share.bytes));
            }
        }
        if grow(&mut held.node, &self.kib, needed - have).is_err() {
            return Err(BudgetLimit::Node);
        }
        HELD_BYTES.increment(((needed - have) * 1024) as f64);
        Ok(())
    }
}

/// A body's frames as they arrive: the first kept as it is, copied into one buffer only when a second comes.
#[derive(Default)]
enum Collected {
    #[default]
    Empty,
    One(Bytes),
    Many(bytes::BytesMut),
}

impl Collected {
    fn len(&self) -> usize {
        match self {
            Collected::Empty => 0,
            Collected::One(first) => first.len(),
            Collected::Many(buffer) => buffer.len(),
        }
    }

    /// Adds a frame; a second one makes the buffer, of `capacity` if that is more than the two (the caller
    /// holds `capacity` in the body budget).
    fn push(&mut self, data: Bytes, capacity: usize) {
        *self = match std::mem::take(self) {
            Collected::Empty => Collected::One(data),
            Collected::One(first) => {
                let mut buffer = bytes::BytesMut::with_capacity(capacity.max(first.len() + data.len()));
                buffer.extend_from_slice(&first);
                buffer.extend_from_slice(&data);
                Collected::Many(buffer)
            }
            Collected::Many(mut buffer) => {
                buffer.extend_from_slice(&data);
                Collected::Many(buffer)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Collected::Empty => Bytes::new(),
            Collected::One(first) => first,
            Collected::Many(buffer) => buffer.freeze(),
        }
    }
}

/// The most a refused request's body is read (and dropped) before answering.
pub(super) const DISCARD_MAX_BYTES: usize = 16 << 20;

/// Reads `body` and drops it, at most `max_bytes` of it within `timeout`; says whether it was read to its end
/// (then the connection may stay open).
pub(super) async fn discard_body(body: Body, max_bytes: usize, timeout: Duration) -> bool {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut seen = 0usize;
    let read = tokio::time::timeout(timeout, async {
        loop {
            match body.frame().await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(frame)) => {
                    seen += frame.data_ref().map(|d| d.len()).unwrap_or(0);
                    if seen > max_bytes {
                        return false;
                    }
                }
            }
        }
    })
    .await;
    read.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_budget_is_held_in_kib_grown_as_bytes_arrive_and_given_back_when_dropped() {
        let budget = BodyBudget::new(4 << 10);
        let (mut first, mut second) = (BodyPermit::on_connection(None), BodyPermit::on_connection(None));
        budget.hold(&mut first, 1000).expect("1 KiB of 4");
        assert_eq!(first.kib(), 1);
        budget.hold(&mut first, 1000).expect("already held");
        budget.hold(&mut first, 3000).expect("grown to 3 KiB");
        assert_eq!(first.kib(), 3);
        let refused = budget.hold(&mut second, 2048).expect_err("2 KiB of the 1 left");
        assert_eq!(refused.status, 429);
        assert!(refused.rule.as_deref().unwrap_or_default().contains("--max-inflight-body-bytes"), "{refused:?}");
        assert_eq!(second.kib(), 0, "a refused request holds nothing");
        budget.hold(&mut second, 1024).expect("the last KiB");
        drop(first);
        budget.hold(&mut second, 4096).expect("the first request's share is back");
        assert_eq!(second.kib(), 4);
    }

    #[test]
    fn a_connection_holds_no_more_than_its_share_and_the_others_keep_theirs() {
        let budget = BodyBudget::new(8 << 10);
        let greedy = ConnectionBodyShare::new(3 << 10);
        let (mut first, mut second) =
            (BodyPermit::on_connection(Some(greedy.clone())), BodyPermit::on_connection(Some(greedy.clone())));
        budget.hold(&mut first, 2048).expect("2 KiB of the connection's 3");
        let refused = budget.hold(&mut second, 2048).expect_err("2 KiB of the connection's 1 left");
        assert_eq!(refused.status, 429);
        assert!(refused.rule.as_deref().unwrap_or_default().contains("per-connection"), "{refused:?}");
        assert_eq!((second.kib(), budget.kib.available_permits()), (0, 6), "nothing held for the refused one");
        let mut other = BodyPermit::on_connection(Some(ConnectionBodyShare::new(8 << 10)));
        budget.hold(&mut other, 6 << 10).expect("another connection has the rest of the node's budget");
        let refused = budget.hold(&mut second, 1024).expect_err("the connection has room, the node none");
        assert!(refused.rule.as_deref().unwrap_or_default().contains("--max-inflight-body-bytes)"), "{refused:?}");
        drop(other);
        budget.hold(&mut second, 1024).expect("the connection's last KiB");
        drop(first);
        budget.hold(&mut second, 3 << 10).expect("the first request's share is back");
        assert_eq!((second.kib(), greedy.kib.available_permits()), (3, 0));
    }

    /// A buffer sized ahead of its bytes is held like bytes that arrived, or not made: never memory the
    /// budget does not cover. Regression (review of session 70): a body declaring 4 MiB and sending two small
    /// frames had a 4 MiB buffer against a budget of a few KiB.
    #[test]
    fn a_buffer_sized_ahead_is_held_in_the_budget_or_not_made() {
        let budget = BodyBudget::new(8 << 10);
        let mut permit = BodyPermit::on_connection(None);
        budget.hold(&mut permit, 2 << 10).expect("two frames' bytes");
        assert!(!budget.hold_if_room(&mut permit, 64 << 10), "more than the node holds");
        assert_eq!(permit.kib(), 2, "a refused room changes nothing held");
        assert!(budget.hold_if_room(&mut permit, 6 << 10), "room for it");
        assert_eq!(permit.kib(), 6);
    }

    #[test]
    fn a_body_in_one_frame_is_kept_and_in_several_joined() {
        let mut collected = Collected::default();
        assert_eq!(collected.len(), 0);
        let first = Bytes::from_static(b"hello ");
        collected.push(first.clone(), 0);
        assert!(matches!(&collected, Collected::One(b) if b.as_ptr() == first.as_ptr()), "kept without a copy");
        collected.push(Bytes::from_static(b"world"), 0);
        collected.push(Bytes::from_static(b"!"), 0);
        assert_eq!(collected.len(), 12);
        assert_eq!(collected.into_bytes(), Bytes::from_static(b"hello world!"));
        assert_eq!(Collected::default().into_bytes(), Bytes::new());
    }

    #[test]
    fn a_body_in_several_frames_goes_into_one_buffer_of_the_capacity_held() {
        let mut collected = Collected::default();
        collected.push(Bytes::from(vec![1u8; 8 << 10]), 64 << 10);
        collected.push(Bytes::from(vec![2u8; 8 << 10]), 64 << 10);
        let Collected::Many(buffer) = &collected else { panic!("joined") };
        let (start, capacity) = (buffer.as_ptr(), buffer.capacity());
        assert!(capacity >= 64 << 10, "sized by the capacity held: {capacity}");
        for _ in 0..6 {
            collected.push(Bytes::from(vec![3u8; 8 << 10]), 0);
        }
        let Collected::Many(buffer) = &collected else { panic!("joined") };
        assert_eq!(buffer.as_ptr(), start, "never moved while the declared length was arriving");
        let joined = collected.into_bytes();
        assert_eq!((joined.len(), joined[0], joined[(8 << 10) + 1], joined[(64 << 10) - 1]), (64 << 10, 1, 2, 3));
        // A body longer than it declared still arrives whole (the limit is the caller's).
        let mut short = Collected::default();
        short.push(Bytes::from_static(b"abc"), 4);
        short.push(Bytes::from_static(b"defgh"), 4);
        assert_eq!(short.into_bytes(), Bytes::from_static(b"abcdefgh"));
    }
}
