//! A proxied response's body on its way to the client. In: the app's body, the request's slot (its permit), the
//! revision's `timeoutSeconds` deadline and `idleTimeoutSeconds`. Out: the body's frames, cut off with an error at
//! the deadline or after the idle time, and the slot given back when the body ends, is dropped, or the deadline
//! passes, whichever comes first: a client that stops reading (an HTTP/2 client granting no window while it
//! pings, an HTTP/1.1 one that never drains its socket) no longer holds the slot past `timeoutSeconds`.
//! And a request's body on its way to the app ([`UploadBody`]): whether the client's own upload broke.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::oneshot;

/// A response body cut off when the request's `timeoutSeconds` runs out, or when it stays silent for
/// `idleTimeoutSeconds`, as Knative's queue-proxy aborts it: a stalled app would otherwise hold its slot (and keep
/// its revision from scaling in) for ever.
pub(super) struct TimedBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl<B> TimedBody<B> {
    pub(super) fn new(inner: B, deadline: Instant, idle: Option<Duration>) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            idle: idle.map(|idle| (idle, Box::pin(tokio::time::sleep(idle)))),
        }
    }
}

/// Why a response body was cut off.
#[derive(Debug, thiserror::Error)]
enum BodyCut {
    #[error("the response did not end within the revision's timeoutSeconds")]
    Timeout,
    #[error("the response body was silent for the revision's idleTimeoutSeconds")]
    Idle,
}

/// The frame that ends a body cut off, counted by why.
fn cut(why: BodyCut) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
    let label = match why {
        BodyCut::Timeout => "timeout",
        BodyCut::Idle => "idle",
    };
    metrics::counter!("sluice_serving_responses_cut_total", "why" => label).increment(1);
    Poll::Ready(Some(Err(why.into())))
}

impl<B> hyper::body::Body for TimedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        // The deadline first: a body with data always ready (a fast app, a client that reads as fast) would
        // otherwise never be cut.
        if this.deadline.as_mut().poll(cx).is_ready() {
            return cut(BodyCut::Timeout);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some((idle, timer)) = &mut this.idle {
                timer.as_mut().reset(tokio::time::Instant::now() + *idle);
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if this.idle.as_mut().is_some_and(|(_, timer)| timer.as_mut().poll(cx).is_ready()) {
            return cut(BodyCut::Idle);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request's body on its way to the app, noting in [`UploadBroke`] whether the client's side of it failed (the
/// client reset or half-closed its connection mid-upload, or sent less than its `Content-Length`), so that a
/// failed exchange is told apart from the app's failure.
pub(super) struct UploadBody<B> {
    inner: B,
    broke: UploadBroke,
}

/// Set once an [`UploadBody`] yielded an error.
#[derive(Clone, Default)]
pub(super) struct UploadBroke(Arc<std::sync::atomic::AtomicBool>);

impl UploadBroke {
    pub(super) fn broke(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl<B> UploadBody<B> {
    pub(super) fn new(inner: B) -> (Self, UploadBroke) {
        let broke = UploadBroke::default();
        (UploadBody { inner, broke: broke.clone() }, broke)
    }
}

impl<B> hyper::body::Body for UploadBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &frame {
            self.broke.0.store(true, std::sync::atomic::Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a [`GuardedBody`] holds until the body ends or the deadline passes.
struct Guarded<B, G> {
    body: Option<B>,
    guard: Option<G>,
    /// The deadline took the body: the next poll answers the cut.
    cut_by_deadline: bool,
    /// The task that last found the body not ready: woken when the watchdog takes the body, whose own wakers go
    /// with it.
    waiting: Option<Waker>,
}

/// How long after the request's deadline the watchdog takes a response nobody polls: a client that reads is cut
/// at the deadline itself, by [`TimedBody`]; this is for the client that takes nothing.
const UNREAD_GRACE: Duration = Duration::from_secs(1);

/// A response body that holds its request's slot (`guard`, the permit) until it ends or is dropped, or until
/// `deadline` (and [`UNREAD_GRACE`]), when a watchdog takes the slot and the app's body (closing the app's
/// response) whether or not the client is reading: the body is polled only as the client takes what it sends.
pub(super) struct GuardedBody<B, G> {
    guarded: Arc<Mutex<Guarded<B, G>>>,
    /// Dropped with the body: ends its watchdog.
    _ended: Option<oneshot::Sender<()>>,
}

impl<B, G> GuardedBody<B, G>
where
    B: hyper::body::Body + Send + 'static,
    G: Send + 'static,
{
    pub(super) fn new(body: B, guard: G, deadline: Instant) -> Self {
        // A body already at its end (a 204, a 304, `Content-Length: 0`) needs no watchdog: its first poll ends it.
        let watched = !body.is_end_stream();
        let state = Guarded { body: Some(body), guard: Some(guard), cut_by_deadline: false, waiting: None };
        let guarded = Arc::new(Mutex::new(state));
        let ended = watched.then(|| {
            let (ended, dropped) = oneshot::channel();
            tokio::spawn(watch_deadline(Arc::downgrade(&guarded), deadline + UNREAD_GRACE, dropped));
            ended
        });
        GuardedBody { guarded, _ended: ended }
    }
}

/// At `deadline`, unless the body was dropped first: takes its slot and the app's body, and wakes the task that
/// waits on it, which then answers the cut.
async fn watch_deadline<B, G>(guarded: Weak<Mutex<Guarded<B, G>>>, deadline: Instant, dropped: oneshot::Receiver<()>) {
    tokio::select! {
        _ = tokio::time::sleep_until(deadline.into()) => {}
        _ = dropped => return,
    }
    let Some(guarded) = guarded.upgrade() else { return };
    let taken = {
        let mut state = guarded.lock().unwrap_or_else(PoisonError::into_inner);
        if state.guard.is_none() {
            return;
        }
        state.cut_by_deadline = true;
        (state.body.take(), state.guard.take(), state.waiting.take())
    };
    metrics::counter!("sluice_serving_responses_cut_total", "why" => "timeout_unread").increment(1);
    tracing::debug!("a response was not taken by its client within timeoutSeconds: its slot is given back");
    // Outside the lock: the permit and the app's body dropped, the waiting task woken.
    let (body, guard, waiting) = taken;
    drop((body, guard));
    if let Some(waiting) = waiting {
        waiting.wake();
    }
}

impl<B, G> hyper::body::Body for GuardedBody<B, G>
where
    B: hyper::body::Body<Data = Bytes, Error = axum::BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // A panic while the lock was held cannot leave a half-made state: every change under it is one assignment.
        let mut state = self.guarded.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(body) = state.body.as_mut() else {
            if std::mem::take(&mut state.cut_by_deadline) {
                return Poll::Ready(Some(Err(BodyCut::Timeout.into())));
            }
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        match polled {
            Poll::Pending => {
                if !state.waiting.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    state.waiting = Some(cx.waker().clone());
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                // Ended (or cut): the slot is free now, not when the client's connection lets the body go.
                let taken = (state.body.take(), state.guard.take());
                drop(state);
                drop(taken);
            }
            Poll::Ready(Some(Ok(_))) => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let state = self.guarded.lock().unwrap_or_else(PoisonError::into_inner);
        state.body.as_ref().is_none_or(|b| b.is_end_stream()) && !state.cut_by_deadline
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let state = self.guarded.lock().unwrap_or_else(PoisonError::into_inner);
        state.body.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;

    type Frames = http_body_util::StreamBody<
        tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    fn body() -> (mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>, Frames) {
        let (tx, rx) = mpsc::channel(8);
        (tx, http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    fn chunk() -> Result<Frame<Bytes>, std::convert::Infallible> {
        Ok(Frame::data(Bytes::from_static(b"chunk")))
    }

    fn cut_by(error: axum::BoxError) -> String {
        error.to_string()
    }

    /// A stand-in for the permit: says when it is given back.
    struct Slot(Option<oneshot::Sender<()>>);

    impl Drop for Slot {
        fn drop(&mut self) {
            if let Some(freed) = self.0.take() {
                let _ = freed.send(());
            }
        }
    }

    /// Regression (a review of the serving data plane): the deadline was enforced only inside the body's polling,
    /// and a client that takes nothing (an HTTP/2 client granting no window) is never polled for, so it held the
    /// revision's slot, and the app its response, for as long as it kept its connection.
    #[tokio::test]
    async fn a_response_its_client_never_reads_gives_back_its_slot_at_the_deadline() {
        let (tx, inner) = body();
        let deadline = Instant::now() + Duration::from_millis(100);
        let (freed_tx, freed) = oneshot::channel();
        let mut guarded = GuardedBody::new(TimedBody::new(inner, deadline, None), Slot(Some(freed_tx)), deadline);
        tokio::time::timeout(Duration::from_secs(20), freed).await.expect("freed by the deadline").expect("freed");
        tokio::time::timeout(Duration::from_secs(20), tx.closed()).await.expect("the app's body is let go");
        let cut = guarded.frame().await.expect("a frame").err().map(cut_by);
        assert_eq!(cut.as_deref(), Some("the response did not end within the revision's timeoutSeconds"));
        assert!(guarded.frame().await.is_none(), "then the body ends");
    }

    /// Regression (review): the watchdog took the body and dropped the wakers it held, so a task already waiting
    /// on it (hyper, between two frames of the app) was never woken to answer the cut.
    #[tokio::test]
    async fn a_task_waiting_on_the_body_is_woken_with_the_cut() {
        let (tx, inner) = body();
        let deadline = Instant::now() + Duration::from_millis(50);
        // A plain body, without a timer of its own: only the watchdog can end it.
        let inner = inner.map_err(|never| -> axum::BoxError { match never {} });
        let mut guarded = GuardedBody::new(inner, Slot(None), deadline);
        // Biased: once the long sleep ends, it is looked at first, so a body found cut only because the sleep's own
        // wake polled it again does not pass for a woken one.
        let cut = tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(20)) => panic!("never woken with the cut"),
            frame = guarded.frame() => frame,
        };
        assert_eq!(
            cut.expect("a frame").err().map(cut_by).as_deref(),
            Some("the response did not end within the revision's timeoutSeconds")
        );
        drop(tx);
    }

    /// A body read to its end gives back its slot at once, and its watchdog then has nothing to take.
    #[tokio::test]
    async fn a_body_read_to_its_end_gives_back_its_slot_at_once() {
        let (tx, inner) = body();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (freed_tx, mut freed) = oneshot::channel();
        let mut guarded = GuardedBody::new(TimedBody::new(inner, deadline, None), Slot(Some(freed_tx)), deadline);
        tx.send(chunk()).await.expect("send");
        assert!(guarded.frame().await.is_some_and(|frame| frame.is_ok()));
        assert!(freed.try_recv().is_err(), "held while the body goes on");
        drop(tx);
        assert!(guarded.frame().await.is_none(), "the end");
        assert!(freed.try_recv().is_ok(), "given back at the end, before the body is dropped");
    }

    #[tokio::test]
    async fn a_body_that_ends_in_time_is_passed_through_whole() {
        let (tx, inner) = body();
        let timed = TimedBody::new(inner, Instant::now() + Duration::from_secs(30), Some(Duration::from_secs(30)));
        tx.send(chunk()).await.expect("send");
        tx.send(chunk()).await.expect("send");
        drop(tx);
        let collected = timed.collect().await.map(|c| c.to_bytes()).map_err(cut_by);
        assert_eq!(collected.ok(), Some(Bytes::from_static(b"chunkchunk")));
    }

    /// Regression: `idleTimeoutSeconds` was validated and never applied, so an app that sent its headers and then
    /// stalled held its slot for ever.
    #[tokio::test]
    async fn a_body_silent_for_the_idle_timeout_is_cut_off() {
        let (tx, inner) = body();
        let mut timed =
            TimedBody::new(inner, Instant::now() + Duration::from_secs(30), Some(Duration::from_millis(100)));
        tx.send(chunk()).await.expect("send");
        assert!(timed.frame().await.is_some_and(|frame| frame.is_ok()), "the first chunk passes");
        let cut = timed.frame().await.expect("a frame").err().map(cut_by);
        assert_eq!(cut.as_deref(), Some("the response body was silent for the revision's idleTimeoutSeconds"));
        drop(tx);
    }

    /// Regression (review): the deadline was looked at only when the app had nothing to send, so a body with data
    /// always ready was never cut.
    #[tokio::test]
    async fn a_body_with_data_always_ready_is_cut_at_the_deadline() {
        let endless = http_body_util::StreamBody::new(futures::stream::repeat_with(chunk));
        let mut timed = TimedBody::new(endless, Instant::now() + Duration::from_millis(100), None);
        let started = Instant::now();
        let cut = loop {
            match timed.frame().await {
                Some(Ok(_)) if started.elapsed() < Duration::from_secs(20) => tokio::task::yield_now().await,
                Some(Ok(_)) => break None,
                Some(Err(e)) => break Some(cut_by(e)),
                None => break None,
            }
        };
        assert_eq!(cut.as_deref(), Some("the response did not end within the revision's timeoutSeconds"));
    }

    /// A body that keeps sending is cut off when the request's `timeoutSeconds` runs out (Knative's queue-proxy
    /// aborts the response then); without an idle timeout.
    #[tokio::test]
    async fn a_body_still_streaming_at_the_deadline_is_cut_off() {
        let (tx, inner) = body();
        let mut timed = TimedBody::new(inner, Instant::now() + Duration::from_millis(200), None);
        let sender = tokio::spawn(async move {
            while tx.send(chunk()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let cut = loop {
            match timed.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Some(cut_by(e)),
                None => break None,
            }
        };
        assert_eq!(cut.as_deref(), Some("the response did not end within the revision's timeoutSeconds"));
        drop(timed);
        sender.await.expect("the sender ends once the body is dropped");
    }
}
