//! Dialing another node (or any TLS server of the cluster's CA) with this node's client config.

use std::io;
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
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{server_name:?} is not a server name: {e}"))
    })?;
    let connecting = async {
        let stream = TcpStream::connect(dial_addr).await?;
        stream.set_nodelay(true)?;
        TlsConnector::from(tls.client_config()).connect(name, stream).await
    };
    tokio::time::timeout(timeout, connecting).await.map_err(|_| {
        io::Error::new(io::ErrorKind::TimedOut, format!("TLS connect to {dial_addr} not done within {timeout:?}"))
    })?
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
