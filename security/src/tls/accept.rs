//! Accepted connections in, plaintext or TLS streams out.
//!
//! A TLS client speaks first with a handshake record (first byte 0x16); an HTTP/1 or h2c client starts with
//! an ASCII method or the h2 preface. So one port serves both, and the mode decides which are let through.
//! Every wait here is bounded: the first byte and the handshake must arrive within the caller's timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tls::Tls;

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Handshakes in progress at once per listener; a connection beyond them is closed at once rather than
/// left waiting (so silent connections cannot hold the accept loop).
const MAX_HANDSHAKES_IN_FLIGHT: usize = 256;
/// The first byte and the handshake on a gRPC port must each come within this.
const GRPC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// How a connection reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

/// Whether a port lets plaintext connections through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaintextPolicy {
    Accept,
    Refuse,
}

/// Which server config a TLS connection is accepted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCertificate {
    /// Checked against the CA when offered (clients' ports).
    Optional,
    /// Required (the Raft transport).
    Required,
}

/// What a server knows of the other end, for every request on the connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub transport: Transport,
    /// The client's certificate chain, verified against the cluster's CA (TLS with a client certificate).
    pub client_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A plaintext or TLS stream over TCP.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    pub fn info(&self) -> ConnInfo {
        match self {
            Conn::Plain(stream) => {
                ConnInfo { remote: stream.peer_addr().ok(), transport: Transport::Plain, client_certificates: None }
            }
            Conn::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                ConnInfo {
                    remote: tcp.peer_addr().ok(),
                    transport: Transport::Tls,
                    client_certificates: session
                        .peer_certificates()
                        .map(|chain| Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect())),
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("no byte within {0:?}")]
    Silent(Duration),
    #[error("plaintext refused: this port takes TLS only")]
    PlaintextRefused,
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    #[error("TLS handshake not done within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the client certificate is not a node's (organisation sluice:node)")]
    NotANode,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl AcceptError {
    fn label(&self) -> &'static str {
        match self {
            AcceptError::Silent(_) => "silent",
            AcceptError::PlaintextRefused => "plaintext_refused",
            AcceptError::Handshake(_) => "handshake_failed",
            AcceptError::HandshakeTimeout(_) => "handshake_timeout",
            AcceptError::NotANode => "not_a_node",
            AcceptError::Io(_) => "io",
        }
    }
}

/// Turns an accepted TCP stream into a [`Conn`]: plaintext when `tls` is `None` (mode disabled) or the
/// first byte is not a TLS handshake and `plaintext` allows it; else a TLS handshake, within `timeout`.
pub async fn accept(
    stream: TcpStream,
    tls: Option<&Tls>,
    plaintext: PlaintextPolicy,
    client_certificate: ClientCertificate,
    timeout: Duration,
) -> Result<Conn, AcceptError> {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else { return Ok(Conn::Plain(stream)) };
    let mut first = [0u8; 1];
    let peeked =
        tokio::time::timeout(timeout, stream.peek(&mut first)).await.map_err(|_| AcceptError::Silent(timeout))??;
    if peeked == 0 || first[0] != TLS_HANDSHAKE_RECORD {
        return match plaintext {
            PlaintextPolicy::Accept => Ok(Conn::Plain(stream)),
            PlaintextPolicy::Refuse => Err(AcceptError::PlaintextRefused),
        };
    }
    let config: Arc<ServerConfig> = match client_certificate {
        ClientCertificate::Optional => tls.server_config(),
        ClientCertificate::Required => tls.mutual_server_config(),
    };
    let handshake = TlsAcceptor::from(config).accept(stream);
    let stream = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(AcceptError::Handshake(e)),
        Err(_) => return Err(AcceptError::HandshakeTimeout(timeout)),
    };
    if client_certificate == ClientCertificate::Required {
        // The CA may sign other workloads' certificates too: only a node's may speak Raft.
        let is_node = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .is_some_and(|leaf| certificate_organisations(leaf.as_ref()).iter().any(|o| o == NODE_ORGANISATION));
        if !is_node {
            return Err(AcceptError::NotANode);
        }
    }
    Ok(Conn::Tls(Box::new(stream)))
}

/// A listener's accepted connections as a stream for tonic's `serve_with_incoming`: each connection is
/// sorted (and its handshake done) in a task of its own, so a slow handshake never holds up the next
/// accept. Refused connections are counted (`sluice_tls_refused_total{port,reason}`) and logged at debug.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Tls>,
    plaintext: PlaintextPolicy,
    client_certificate: ClientCertificate,
    port: &'static str,
) -> impl tokio_stream::Stream<Item = io::Result<Conn>> {
    let (sender, receiver) = mpsc::channel::<io::Result<Conn>>(64);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES_IN_FLIGHT));
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = sender.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: wait a little rather than spin on the error.
                        tracing::warn!(error = %e, port, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                metrics::counter!("sluice_tls_refused_total", "port" => port, "reason" => "too_many_handshakes")
                    .increment(1);
                drop(stream);
                continue;
            };
            let (sender, tls) = (sender.clone(), tls.clone());
            tokio::spawn(async move {
                let accepted =
                    accept(stream, tls.as_ref(), plaintext, client_certificate, GRPC_HANDSHAKE_TIMEOUT).await;
                drop(permit);
                match accepted {
                    Ok(conn) => {
                        let _ = sender.send(Ok(conn)).await;
                    }
                    Err(e) => {
                        metrics::counter!("sluice_tls_refused_total", "port" => port, "reason" => e.label())
                            .increment(1);
                        tracing::debug!(error = %e, port, "connection refused");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(stream) => stream.is_write_vectored(),
            Conn::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The organisation of a node's certificate: required on the Raft peer port, and an operator on the admin API.
pub const NODE_ORGANISATION: &str = "sluice:node";

/// The organisations of a certificate's subject (none when it does not parse).
pub fn certificate_organisations(certificate: &[u8]) -> Vec<String> {
    match x509_parser::parse_x509_certificate(certificate) {
        Ok((_, parsed)) => {
            parsed.subject().iter_organization().filter_map(|o| o.as_str().ok()).map(String::from).collect()
        }
        Err(_) => Vec::new(),
    }
}
