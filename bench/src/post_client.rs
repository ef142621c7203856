//! The producers' HTTP/1.1 client. In: POSTs to one fixed URL (a body and its headers); out: each response's
//! status. Kept-alive connections to the URL's address are reused by whichever request comes next, and each
//! request is built from parts made once (the path, the `Host`). A general client (reqwest) also parses the
//! URL, runs its retry and redirect layers and boxes the request's future on every request: at half of
//! sluice-3's max the bench process took 96-97 us of CPU per event with it and 62-67 us with this client, load
//! that the systems measured had to share (docs/benchmarks.md, "Session 49").

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per target; more are closed when their request ends.
const MAX_IDLE_CONNECTIONS: usize = 1024;
/// The longest a request waits, its connection's set-up included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One URL POSTed to, with its idle connections.
pub(crate) struct PostTarget {
    addr: SocketAddr,
    path: Uri,
    host: HeaderValue,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl PostTarget {
    /// `url`: `http://IP:PORT/PATH` (the bench only POSTs to addresses it started).
    pub(crate) fn new(url: &str) -> Result<PostTarget> {
        let uri: Uri = url.parse().with_context(|| format!("the URL {url}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("{url}: only http:// URLs");
        }
        let authority = uri.authority().with_context(|| format!("{url}: no host"))?;
        let addr: SocketAddr =
            authority.as_str().parse().with_context(|| format!("{url}: the host must be an IP address and port"))?;
        let host = HeaderValue::from_str(authority.as_str())?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
        Ok(PostTarget { addr, path, host, idle: Mutex::new(Vec::new()) })
    }

    /// POSTs `body` with `headers` (`Host` is added) and returns the response's status, the response's body
    /// read and dropped so that the connection can serve the next request. A request that got no response on
    /// a reused connection (closed or reset by the server while idle) is sent once more on a new one, as
    /// general clients do; a producer that dedupes by id makes that safe.
    pub(crate) async fn post(&self, headers: HeaderMap, body: Bytes) -> Result<StatusCode> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.post_unbounded(headers, body))
            .await
            .with_context(|| format!("no response from {} within {REQUEST_TIMEOUT:?}", self.addr))?
    }

    async fn post_unbounded(&self, headers: HeaderMap, body: Bytes) -> Result<StatusCode> {
        if let Some(sender) = self.take_idle()
            && let Ok(status) = self.send(sender, self.request(headers.clone(), body.clone())).await
        {
            return Ok(status);
        }
        let sender = self.connect().await?;
        Ok(self.send(sender, self.request(headers, body)).await?)
    }

    fn request(&self, mut headers: HeaderMap, body: Bytes) -> Request<Full<Bytes>> {
        headers.insert(HOST, self.host.clone());
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.path.clone();
        *request.headers_mut() = headers;
        request
    }

    async fn send(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        request: Request<Full<Bytes>>,
    ) -> Result<StatusCode, hyper::Error> {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        // A connection whose response body breaks off is not reused; the status stands.
        if response.into_body().collect().await.is_ok() {
            self.put_idle(sender);
        }
        Ok(status)
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_CONNECTIONS && !sender.is_closed() {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.addr).await.with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection's task ends when the server closes it or the last sender is dropped.
        tokio::spawn(connection);
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_an_http_address_and_a_path() {
        let target = PostTarget::new("http://127.0.0.1:8080/bench/bench").expect("target");
        assert_eq!(target.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(target.path, "/bench/bench");
        assert_eq!(target.host, "127.0.0.1:8080");
        assert_eq!(PostTarget::new("http://127.0.0.1:8080").expect("root").path, "/");
        assert!(PostTarget::new("https://127.0.0.1:8080/").is_err());
        assert!(PostTarget::new("http://localhost:8080/").is_err());
    }

    #[tokio::test]
    async fn connections_are_reused_and_a_closed_one_is_replaced() {
        let server = crate::systems::HttpServer::start().await.expect("server");
        let target = PostTarget::new(&server.url()).expect("target");
        for _ in 0..3 {
            let status = target.post(HeaderMap::new(), Bytes::from_static(b"x")).await.expect("post");
            assert_eq!(status, StatusCode::ACCEPTED);
        }
        assert_eq!(target.idle.lock().expect("idle").len(), 1, "one connection served the three requests in turn");
        drop(server);
        let restarted = crate::systems::HttpServer::start().await.expect("server");
        // The idle connection was closed with the stopped server: the POST goes out again on a new one.
        let stale = PostTarget { addr: restarted.addr, ..target };
        let status = stale.post(HeaderMap::new(), Bytes::from_static(b"y")).await.expect("post on a new connection");
        assert_eq!(status, StatusCode::ACCEPTED);
    }
}
