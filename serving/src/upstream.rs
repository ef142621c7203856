//! HTTP/1.1 connections to instances, driven by the task that serves the request.
//!
//! hyper's pooled client runs each connection in a task of its own: a request is handed to that task and its
//! response handed back, two task wake-ups per request on top of the sockets' own. Here a request takes an idle
//! connection (or opens one) and polls it itself while it waits for the response, and the response body polls
//! it while the client reads, so the connection moves in the task that serves the client. When the body ends
//! the connection goes back to the idle list of its instance.
//!
//! What flows in: a request for an instance's address. What flows out: its response, whose body hands the
//! connection back. Limits: at most [`MAX_IDLE_PER_INSTANCE`] idle connections per instance, each idle at most
//! [`IDLE_TIMEOUT`] (under the idle timeouts apps commonly close kept-alive connections at, Node.js's 5 s: a
//! request never goes out on a connection the app is closing, where it would be lost).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per instance, at most.
pub(crate) const MAX_IDLE_PER_INSTANCE: usize = 64;
/// How long an idle connection is kept.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

type Connection = Pin<Box<http1::Connection<TokioIo<TcpStream>, Body>>>;

/// One connection to an instance.
pub(crate) struct Upstream {
    addr: SocketAddr,
    sender: http1::SendRequest<Body>,
    connection: Connection,
    idle_since: Instant,
}

impl Upstream {
    /// Polls the connection: true when it has ended (closed by the instance, or failed).
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        self.connection.as_mut().poll(cx).is_ready()
    }
}

/// The idle connections of every instance.
#[derive(Default)]
pub(crate) struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<Upstream>>>,
}

impl Upstreams {
    /// The newest idle connection to `addr` that is still open.
    fn take(&self, addr: SocketAddr) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while let Some(mut upstream) = list.pop() {
            // A connection the instance closed shows it when polled (it reads the end of the stream).
            if upstream.idle_since.elapsed() < IDLE_TIMEOUT && !upstream.poll_ended(&mut cx) {
                return Some(upstream);
            }
        }
        None
    }

    fn give_back(&self, mut upstream: Upstream) {
        if upstream.sender.is_closed() {
            return;
        }
        upstream.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(upstream.addr).or_default();
        list.retain(|u| u.idle_since.elapsed() < IDLE_TIMEOUT);
        if list.len() < MAX_IDLE_PER_INSTANCE {
            list.push(upstream);
        }
    }

    async fn connect(addr: SocketAddr) -> Result<Upstream, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP/1.1 handshake with {addr}: {e}"))?;
        Ok(Upstream { addr, sender, connection: Box::pin(connection), idle_since: Instant::now() })
    }

    /// Sends `request` to the instance at `addr`; the response's body drives the connection and hands it back.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        request: hyper::Request<Body>,
    ) -> Result<hyper::Response<UpstreamBody>, String> {
        let mut upstream = match self.take(addr) {
            Some(upstream) => upstream,
            None => Self::connect(addr).await?,
        };
        std::future::poll_fn(|cx| {
            if upstream.poll_ended(cx) {
                return Poll::Ready(Err("the instance closed the connection".to_string()));
            }
            upstream.sender.poll_ready(cx).map_err(|e| e.to_string())
        })
        .await?;
        let mut response = std::pin::pin!(upstream.sender.send_request(request));
        let response = std::future::poll_fn(|cx| {
            if let Poll::Ready(outcome) = response.as_mut().poll(cx) {
                return Poll::Ready(outcome.map_err(|e| e.to_string()));
            }
            if upstream.poll_ended(cx) {
                // The connection ended: the response, if any came, is ready now; else it is lost with it.
                return response.as_mut().poll(cx).map(|outcome| outcome.map_err(|e| e.to_string()));
            }
            Poll::Pending
        })
        .await?;
        let pool = self.clone();
        Ok(response.map(|inner| UpstreamBody { inner, upstream: Some(upstream), pool }))
    }
}

/// A response body that drives its connection and, once it has ended, hands the connection back.
pub(crate) struct UpstreamBody {
    inner: Incoming,
    upstream: Option<Upstream>,
    pool: Arc<Upstreams>,
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(upstream) = this.upstream.as_mut()
            && upstream.poll_ended(cx)
        {
            this.upstream = None;
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame
            && let Some(upstream) = this.upstream.take()
        {
            this.pool.give_back(upstream);
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

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body that ended without being read to its end (an empty one) leaves the connection reusable; one
        // dropped half-read does not (the rest of the response is still on it).
        if let Some(upstream) = self.upstream.take()
            && hyper::body::Body::is_end_stream(&self.inner)
        {
            self.pool.give_back(upstream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A keep-alive HTTP/1.1 server that answers every request with its path, and counts connections.
    async fn server(connections: Arc<AtomicUsize>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|request: hyper::Request<Incoming>| async move {
                        let path = request.uri().path().to_string();
                        let body = if path == "/empty" { String::new() } else { format!("hello {path}") };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(Bytes::from(
                            body,
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn get(addr: SocketAddr, path: &str) -> hyper::Request<Body> {
        hyper::Request::builder()
            .uri(format!("http://{addr}{path}"))
            .header("host", addr.to_string())
            .body(Body::empty())
            .expect("request")
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_has_been_read_and_not_before() {
        let connections = Arc::new(AtomicUsize::new(0));
        let addr = server(connections.clone()).await;
        let pool = Arc::new(Upstreams::default());
        for i in 0..5 {
            let response = pool.send(addr, get(addr, &format!("/{i}"))).await.expect("response");
            let body = response.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body, format!("hello /{i}"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection, read to its end each time");
        // An empty body needs no read to end.
        for _ in 0..3 {
            drop(pool.send(addr, get(addr, "/empty")).await.expect("response"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        // Two at once: two connections; a response dropped unread leaves its connection out.
        let first = pool.send(addr, get(addr, "/a")).await.expect("first");
        let second = pool.send(addr, get(addr, "/b")).await.expect("second");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        drop(first);
        assert_eq!(second.into_body().collect().await.expect("body").to_bytes(), "hello /b");
        let idle = pool.idle.lock().map(|i| i.get(&addr).map_or(0, Vec::len)).unwrap_or_default();
        assert_eq!(idle, 1, "the half-read one is not kept");
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_or_that_idled_too_long_is_not_taken() {
        // An instance that answers one request with a kept-alive response, then closes the connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            drop(stream);
            let _ = closed_tx.send(());
        });
        let pool = Arc::new(Upstreams::default());
        let response = pool.send(addr, get(addr, "/x")).await.expect("response");
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "ok");
        closed.await.expect("the instance closed");
        assert!(pool.take(addr).is_none(), "closed by the instance");

        let connections = Arc::new(AtomicUsize::new(0));
        let addr = server(connections.clone()).await;
        let response = pool.send(addr, get(addr, "/y")).await.expect("response");
        let _ = response.into_body().collect().await.expect("body");
        if let Ok(mut idle) = pool.idle.lock()
            && let Some(upstream) = idle.get_mut(&addr).and_then(|list| list.last_mut())
        {
            upstream.idle_since -= IDLE_TIMEOUT;
        }
        assert!(pool.take(addr).is_none(), "too long idle");
        let refused = pool.send("127.0.0.1:1".parse().expect("addr"), get(addr, "/")).await;
        assert!(refused.is_err_and(|e| e.contains("connecting to 127.0.0.1:1")));
    }
}
