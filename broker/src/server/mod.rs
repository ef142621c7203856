//! Runs a node: binds its three ports (so a busy port fails before anything
//! starts), opens the node, and serves the Raft transport, admin gRPC and HTTP
//! until shutdown.

mod incoming_snapshot;
pub(crate) mod raft_service;

use std::net::SocketAddr;
use std::path::PathBuf;

use sluice_proto::admin::cluster_server::ClusterServer;
use sluice_proto::admin::events_server::EventsServer;
use sluice_proto::admin::log_server::LogServer;
use sluice_proto::admin::resources_server::ResourcesServer;
use sluice_proto::raft::raft_transport_server::RaftTransportServer;
use sluice_security::{ClientCertificate, PlaintextPolicy, Tls};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminService;
use crate::admin::events::EventsService;
use crate::error::BrokerError;
use crate::ingress::http::{HostRouteSlot, NodeRoutes};
use crate::ingress::{Ingress, IngressLimits};
use crate::node::{Node, NodeSettings};
use crate::server::raft_service::TransportService;
use crate::transport::client::MAX_PEER_MESSAGE_BYTES;

/// How often the TLS files are re-read (a rotated certificate is served within this).
const TLS_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// HTTP/2 streams one admin connection may have open at once (tonic sets no limit unless asked: each stream
/// may hold a request body of up to 32 MiB, or a read on a blocking thread).
const MAX_ADMIN_STREAMS_PER_CONNECTION: u32 = 256;
/// HTTP/2 streams one peer connection may have open at once: a replication stream per group and follower, a
/// forward stream, a snapshot, and the votes and reads of an election (the limit is well above what a node of
/// a few hundred partitions opens to another).
const MAX_PEER_STREAMS_PER_CONNECTION: u32 = 2048;
/// HTTP/2 pings on admin and peer connections, so that a client that vanished (a laptop asleep, a node
/// powered off) is found and its streams end within a minute rather than holding their places for ever.
const GRPC_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const GRPC_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(Clone, Debug)]
pub struct Listen {
    /// The Raft peer listener; `None` for a node that will never have peers (one-node `sluice dev`).
    pub peer: Option<String>,
    pub http: String,
    pub admin: String,
}

/// A running node and the addresses it actually listens on.
pub struct RunningNode {
    pub node: Node,
    pub peer_addr: Option<SocketAddr>,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Where the serving module plugs in the hosts it serves on the HTTP port.
    pub host_routes: HostRouteSlot,
    /// Where a Route's cluster-local URL is sent ([`NodeRoutes`]); `None` when the HTTP port takes TLS only.
    pub node_routes: Option<NodeRoutes>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

async fn bind(flag: &'static str, addr: &str) -> Result<TcpListener, BrokerError> {
    let listen_error = |reason: String| BrokerError::Listen { flag, addr: addr.to_string(), reason };
    let resolved: SocketAddr = addr.parse().map_err(|_| listen_error("not an IP:PORT address".into()))?;
    TcpListener::bind(resolved).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "the port is in use; stop the other process or choose another port".to_string()
            }
            std::io::ErrorKind::AddrNotAvailable => "that IP is not on this machine".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied; use a port above 1023".to_string(),
            _ => e.to_string(),
        };
        listen_error(hint)
    })
}

/// A listener's connections for tonic, sorted into plaintext and TLS by the node's transport-encryption
/// mode (with `TCP_NODELAY`: without it small replies wait for delayed ACKs, about 40 ms).
fn incoming(
    listener: TcpListener,
    tls: Option<&Tls>,
    port: &'static str,
) -> impl tokio_stream::Stream<Item = std::io::Result<sluice_security::Conn>> {
    let (plaintext, client_certificate) = match port {
        // A node without a certificate of the cluster's CA never reaches Raft.
        "peer" => (PlaintextPolicy::Refuse, ClientCertificate::Required),
        _ => match tls.map(Tls::mode) {
            Some(mode) if !mode.accepts_plaintext() => (PlaintextPolicy::Refuse, ClientCertificate::Optional),
            _ => (PlaintextPolicy::Accept, ClientCertificate::Optional),
        },
    };
    sluice_security::incoming(listener, tls.cloned(), plaintext, client_certificate, port)
}

/// Admin gRPC services that live outside this crate (the dispatcher's), built once the node is open; given
/// the node and its ingress base URL.
pub type ExtraAdminRoutes = Box<dyn FnOnce(Node, String, Option<NodeRoutes>) -> ExtraRoutes + Send>;

/// The services of [`ExtraAdminRoutes`]: those of the admin port, and those other nodes may ask of this one on
/// its peer listener (serving's node-local `Logs` and `Decisions`, gathered by the node a client asked).
#[derive(Default)]
pub struct ExtraRoutes {
    pub admin: tonic::service::Routes,
    pub peer: tonic::service::Routes,
}

pub async fn start(
    mut settings: NodeSettings,
    listen: Listen,
    ingress_limits: IngressLimits,
    extra_admin: Option<ExtraAdminRoutes>,
) -> Result<RunningNode, BrokerError> {
    let peer = match &listen.peer {
        Some(addr) => Some(bind("--peer-listen", addr).await?),
        None => None,
    };
    let http = bind("--http", &listen.http).await?;
    let admin = bind("--admin", &listen.admin).await?;
    let local = |l: &TcpListener| l.local_addr().map_err(|e| BrokerError::io("listener address", e));
    let peer_addr = peer.as_ref().map(local).transpose()?;
    let (http_addr, admin_addr) = (local(&http)?, local(&admin)?);
    let snapshot_root: PathBuf = settings.data_dir.join("snapshots");
    let metrics = crate::telemetry::prometheus();
    let tls = settings.tls.clone();
    let admin_auth = settings.admin_tokens.clone().map(sluice_security::admin_auth::AdminAuthLayer::new);
    if admin_auth.is_none() && !admin.local_addr().is_ok_and(|a| a.ip().is_loopback()) {
        tracing::warn!("the admin API listens beyond loopback without authentication (--admin-tokens, or strict TLS)");
    }
    if settings.sender_identity.issuer.is_none() {
        if http_addr.ip().is_unspecified() {
            tracing::warn!(%http_addr, "--sender-issuer is not set and the HTTP port listens on every address: the \
                tokens Sluice sends name an issuer subscribers cannot reach; set --sender-issuer to an address of \
                this cluster");
        }
        let scheme = if settings.tls.is_some() { "https" } else { "http" };
        settings.sender_identity.issuer = Some(format!("{scheme}://{http_addr}"));
    }
    let node = Node::open(settings).await?;
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(TLS_RELOAD_INTERVAL));
    }
    if let Some(layer) = &admin_auth {
        tokio::spawn(layer.clone().watch_file(TLS_RELOAD_INTERVAL));
    }
    // Detached, as the node's other background loops: it ends with the runtime.
    tokio::spawn(crate::node::retention::run(node.clone(), node.settings().retention_check_interval));
    if let Some(interval) = node.settings().leader_balance_interval {
        tokio::spawn(crate::node::leader_balance::run(node.clone(), interval));
    }
    tokio::spawn(node.clone().report_store_gauges(std::time::Duration::from_secs(5)));
    tokio::spawn(crate::node::signing_keys::run(node.clone()));
    tokio::spawn(crate::node::log_format::run(node.clone()));
    tokio::spawn(crate::node::signing_keys::trust_own_issuer(node.clone()));
    let (shutdown, _) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut tasks = Vec::new();
    let transport = RaftTransportServer::new(TransportService::new(node.clone(), snapshot_root, shutdown.subscribe()))
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
    let ingress_base = format!("http://{http_addr}");
    let host_routes = HostRouteSlot::default();
    // A plaintext URL can be sent to the HTTP port unless it takes TLS only (strict mode).
    let node_routes = tls
        .as_ref()
        .is_none_or(|tls| tls.mode().accepts_plaintext())
        .then(|| NodeRoutes::new(host_routes.clone(), http_addr));
    let ExtraRoutes { admin: extra_routes, peer: peer_routes } =
        extra_admin.map(|build| build(node.clone(), ingress_base.clone(), node_routes.clone())).unwrap_or_default();
    if let Some(peer) = peer {
        let rx = shutdown.subscribe();
        let tls = tls.clone();
        tasks.push((
            "peer",
            tokio::spawn(async move {
                let result = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .max_concurrent_streams(Some(MAX_PEER_STREAMS_PER_CONNECTION))
                    .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
                    .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
                    .add_routes(peer_routes)
                    .add_service(transport)
                    .serve_with_incoming_shutdown(incoming(peer, tls.as_ref(), "peer"), stopped(rx))
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "peer server stopped");
                }
            }),
        ));
    }

    let rx = shutdown.subscribe();
    let admin_node = node.clone();
    // gRPC server reflection (v1 and v1alpha) over the admin API, so `grpcurl` works without .proto files.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 =
        reflection().build_v1().inspect_err(|e| tracing::error!(error = %e, "gRPC reflection (v1) is not served")).ok();
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .inspect_err(|e| tracing::error!(error = %e, "gRPC reflection (v1alpha) is not served"))
        .ok();
    let admin_tls = tls.clone();
    tasks.push((
        "admin",
        tokio::spawn(async move {
            let tls = admin_tls;
            let mut builder = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .max_concurrent_streams(Some(MAX_ADMIN_STREAMS_PER_CONNECTION))
                .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
                .layer(tower::util::option_layer(admin_auth));
            let result = builder
                .add_routes(extra_routes)
                .add_service(ClusterServer::new(AdminService::new(admin_node.clone(), ingress_base.clone())))
                .add_service(
                    LogServer::new(AdminService::new(admin_node.clone(), ingress_base.clone()))
                        .max_decoding_message_size(log_message_limit(&admin_node.settings().append_limits)),
                )
                .add_service(ResourcesServer::new(AdminService::new(admin_node.clone(), ingress_base)))
                .add_service(EventsServer::new(EventsService::new(admin_node)))
                .add_optional_service(reflection_v1)
                .add_optional_service(reflection_v1alpha)
                .serve_with_incoming_shutdown(incoming(admin, tls.as_ref(), "admin"), stopped(rx))
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "admin server stopped");
            }
        }),
    ));

    let rx = shutdown.subscribe();
    let ingress = Ingress::new(node.clone(), ingress_limits.clone());
    let app = crate::ingress::http::router(node.clone(), metrics, ingress);
    tasks.push((
        "http",
        tokio::spawn(crate::ingress::http::serve(http, app, host_routes.clone(), ingress_limits, tls, stopped(rx))),
    ));

    Ok(RunningNode { node, peer_addr, http_addr, admin_addr, host_routes, node_routes, shutdown, tasks })
}

/// How long a stopping node waits for each server's open requests and streams to end.
const SERVER_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl RunningNode {
    /// Stops serving and shuts every group down.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.node.shutdown().await;
        // One deadline for all the servers (it was 10 s for each in turn: 20 s and more to stop).
        let deadline = tokio::time::Instant::now() + SERVER_STOP_TIMEOUT;
        for (server, mut task) in self.tasks {
            // A server waits for its open requests and streams to end; a peer that keeps one open must not
            // keep this node from stopping.
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(server, timeout = ?SERVER_STOP_TIMEOUT, "a server still had requests open; stopping it anyway");
                task.abort();
            }
        }
    }
}

/// The largest `Log` request decoded: an append larger than one entry holds is refused anyway, so it is never
/// decoded whole. Its payloads' bytes, about 16 bytes of framing for each record an entry takes, and 64 KiB for
/// the rest. Regression (review): the bound was 32 MiB, in which some 16 million empty payloads decoded to about
/// half a gigabyte before their count was checked.
pub(crate) fn log_message_limit(limits: &crate::raft::append_batcher::AppendLimits) -> usize {
    limits.max_bytes_per_entry.saturating_add(limits.max_records_per_entry.saturating_mul(16)).saturating_add(64 << 10)
}
