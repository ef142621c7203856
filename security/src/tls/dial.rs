//! Dialing another node (or any TLS server of the cluster's CA) with this node's client config.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::Tls;

/// Connects to `dial_addr` (IP:PORT or HOST:PORT) and does a TLS handshake that checks the server's
/// certificate against the cluster's CA and `server_name` (the host the peer is known by, which differs
/// from `dial_addr`'s when dialing through a proxy). Presents this node's certificate.
pub async fn dial(
    dial_addr: &str,
    server_name: &str,
    tls: &Tls,
    timeout: Duration,
) -> io::Result<TlsStream<TcpStream>> {
    dial_with_config(dial_addr, server_name, tls.client_config(), timeout).await
}

/// [`dial`] with a client config of the caller's (a CLI that trusts a CA and may hold no certificate).
pub async fn dial_with_config(
    dial_addr: &str,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{server_name:?} is not a server name: {e}"))
    })?;
    let connecting = async {
        let stream = TcpStream::connect(dial_addr).await?;
        stream.set_nodelay(true)?;
        TlsConnector::from(config).connect(name, stream).await
    };
    tokio::time::timeout(timeout, connecting).await.map_err(|_| {
        io::Error::new(io::ErrorKind::TimedOut, format!("TLS connect to {dial_addr} not done within {timeout:?}"))
    })?
}

/// A tower service for tonic's `Endpoint::connect_with_connector`: every connection is [`dial`]ed to the
/// same address and checked against the same server name, whatever URI tonic asks for.
#[derive(Clone)]
pub struct TlsDialer {
    config: DialerConfig,
    dial: Arc<str>,
    server_name: Arc<str>,
}

/// A node's reloading config, or a fixed one.
#[derive(Clone)]
enum DialerConfig {
    Node(Tls),
    Fixed(Arc<rustls::ClientConfig>),
}

/// TCP connect plus TLS handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

impl TlsDialer {
    pub fn new(tls: Tls, dial_addr: &str, server_name: &str) -> TlsDialer {
        TlsDialer { config: DialerConfig::Node(tls), dial: dial_addr.into(), server_name: server_name.into() }
    }

    pub fn with_config(config: Arc<rustls::ClientConfig>, dial_addr: &str, server_name: &str) -> TlsDialer {
        TlsDialer { config: DialerConfig::Fixed(config), dial: dial_addr.into(), server_name: server_name.into() }
    }
}

impl tower::Service<http::Uri> for TlsDialer {
    type Response = hyper_util::rt::TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            let config = match &dialer.config {
                DialerConfig::Node(tls) => tls.client_config(),
                DialerConfig::Fixed(config) => config.clone(),
            };
            let stream = dial_with_config(&dialer.dial, &dialer.server_name, config, DIAL_TIMEOUT).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// The host part of `HOST:PORT` / `IP:PORT` / `[IPv6]:PORT`, as a certificate names it.
pub fn host_of(addr: &str) -> &str {
    match addr.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
        None => addr.rsplit_once(':').map_or(addr, |(host, _)| host),
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_the_port() {
        for (addr, host) in [
            ("127.0.0.1:7070", "127.0.0.1"),
            ("[::1]:7070", "::1"),
            ("sluice-0.sluice-peers.default.svc:7070", "sluice-0.sluice-peers.default.svc"),
            ("localhost", "localhost"),
        ] {
            assert_eq!(host_of(addr), host, "{addr}");
        }
    }
}
