//! Whether a request that died went out on a connection that had answered before (kept alive, taken from the
//! pool) or on a new one. In: the plaintext client's connections, each tagged with an [`Answered`] count as it is
//! made, and its responses, each counted; out, for an error, whether its connection had answered before. Only
//! then is a request lost before any response the kept-alive race a resend covers: a new connection that the
//! subscriber takes the request on and drops is the subscriber failing, which only a `retry` sends again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};

/// Responses a connection has carried: one count shared by the connection's `Connected` extras, which hyper
/// copies into each response's extensions and into an error's connect info.
#[derive(Clone, Debug, Default)]
pub(super) struct Answered(Arc<AtomicU64>);

impl Answered {
    /// Counts a response on the connection whose extras `extensions` holds.
    pub(super) fn note(extensions: &http::Extensions) {
        if let Some(answered) = extensions.get::<Answered>() {
            answered.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the connection `error` occurred on had answered a request before. An error hyper names no
    /// connection for counts as one that had (the resend stays as it was there).
    pub(super) fn before(error: &hyper_util::client::legacy::Error) -> bool {
        let Some(connected) = error.connect_info() else { return true };
        let mut extensions = http::Extensions::new();
        connected.get_extras(&mut extensions);
        extensions.get::<Answered>().is_none_or(|answered| answered.0.load(Ordering::Relaxed) > 0)
    }
}

/// A connector whose connections carry an [`Answered`] of their own.
#[derive(Clone, Debug)]
pub(super) struct Tagging<C>(pub(super) C);

impl<C> tower::Service<http::Uri> for Tagging<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
    C::Error: 'static,
{
    type Response = Tagged<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map(|io| Tagged { io, answered: Answered::default() }) })
    }
}

/// A connection with its [`Answered`] count.
pub(super) struct Tagged<T> {
    io: T,
    answered: Answered,
}

impl<T: Connection> Connection for Tagged<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.answered.clone())
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Tagged<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Tagged<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
