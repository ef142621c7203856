//! The node's HTTP port: requests for a host claimed by [`HostRoutes`] (Knative Routes, served by the serving
//! module) go there whatever their path; otherwise `/healthz`, `/readyz`, `/metrics`, and CloudEvents ingress
//! on every other path (`ingress`). Served with bounded connections, header sizes and header-read time (slow
//! clients are cut off), HTTP/1.1 and h2c.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use sluice_security::{ClientCertificate, PlaintextPolicy, Tls, Transport};

use crate::ingress::{Ingress, IngressLimits};
use crate::node::Node;

#[derive(Clone)]
struct HttpState {
    node: Node,
    metrics: PrometheusHandle,
}

/// Requests the node's HTTP port serves by their Host rather than their path: Knative Routes. The serving
/// module implements it; bodies stream both ways.
pub trait HostRoutes: Send + Sync + 'static {
    /// Whether `host` (lower-case, without the port) is one of ours.
    fn claims(&self, host: &str) -> bool;
    /// Whether a Route is served under exactly `host` now (a claimed host may be served by none: 404).
    fn serves(&self, host: &str) -> bool;
    /// Serves `request` for `host` (as [`request_host`] gives it, and claimed).
    fn handle(&self, host: String, request: Request) -> BoxFuture<'static, Response>;
}

/// A connection's place among the node's bounded connections (`--max-connections`, and per client address), in
/// every request's extensions. A request that upgrades its connection (a WebSocket to a Knative Route) keeps a
/// clone for as long as the upgraded connection lives: hyper hands the connection over and its task ends, and
/// the place must not be given back while the bytes still flow.
#[derive(Clone)]
pub struct ConnectionPlace {
    _held: Arc<HeldPlace>,
    client: ClientConnection,
}

impl ConnectionPlace {
    /// Who is at the other end of the connection.
    pub fn client(&self) -> ClientConnection {
        self.client
    }
}

/// The places a connection holds until it ends, and the open-connections gauge going down with them.
struct HeldPlace {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _address_slot: super::connections::AddressSlot,
    open: metrics::Gauge,
}

impl Drop for HeldPlace {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// Who is at the other end of a request's connection ([`ConnectionPlace::client`]): a proxy in front of an app
/// (a Knative Route) passes it on as `X-Forwarded-For` and `X-Forwarded-Proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConnection {
    pub peer: std::net::SocketAddr,
    pub tls: bool,
}

/// Where the serving module plugs its [`HostRoutes`] in once it runs (it needs the node, which starts first).
pub type HostRouteSlot = Arc<OnceLock<Arc<dyn HostRoutes>>>;

/// Where this node serves Knative Routes: its plaintext HTTP port, and the routes served there. A Route's
/// cluster-local URL (`http://NAME.NAMESPACE.svc.cluster.local`, Knative's, on port 80) has no DNS name outside
/// Kubernetes; the node's own HTTP clients (the dispatcher's) send it to this port, as the cluster's DNS would
/// send it to Knative's cluster-local gateway.
#[derive(Clone)]
pub struct NodeRoutes {
    routes: HostRouteSlot,
    http_addr: std::net::SocketAddr,
}

impl NodeRoutes {
    pub(crate) fn new(routes: HostRouteSlot, http_addr: std::net::SocketAddr) -> Self {
        let http_addr = match http_addr.ip() {
            // Listening on every address: reached on loopback.
            ip if ip.is_unspecified() => {
                std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), http_addr.port())
            }
            _ => http_addr,
        };
        NodeRoutes { routes, http_addr }
    }

    /// The node's HTTP address for `host` (lower-case, no trailing dot) when the node serves a Route under that
    /// cluster-local name; `None` for any other name.
    pub fn address_of(&self, host: &str) -> Option<std::net::SocketAddr> {
        let cluster_local = sluice_controller::serving::routing::is_cluster_local(host);
        let served = cluster_local && self.routes.get().is_some_and(|routes| routes.serves(host));
        served.then_some(self.http_addr)
    }
}

/// The request's host, lower-case and without the port: the `Host` header, else the URI's authority (h2c).
pub fn request_host(request: &Request) -> Option<String> {
    let host = match request.headers().get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) => host.to_string(),
        None => request.uri().authority()?.as_str().to_string(),
    };
    let without_port = match host.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        Some(rest) => rest.split_once(']').map_or(host.as_str(), |(address, _)| address),
        None => match host.rsplit_once(':') {
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host.as_str(),
        },
    };
    Some(without_port.trim_end_matches('.').to_ascii_lowercase())
}

pub(crate) fn router(node: Node, metrics: PrometheusHandle, ingress: Ingress) -> Router {
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route(sluice_security::jwt::issuer::DISCOVERY_PATH, get(openid_configuration))
        .route(sluice_security::jwt::issuer::JWKS_PATH, get(jwks))
        .with_state(HttpState { node, metrics });
    // Shared, not cloned per request: a clone of `Ingress` took and dropped a reference of each of its parts.
    probes.merge(Router::new().fallback(crate::ingress::handle).with_state(Arc::new(ingress)))
}

/// What every request of one connection passes before the router: the plaintext refusal of strict transport
/// encryption, then the Knative Routes claiming its host. A plain function per request rather than tower
/// layers: each layer boxed the request's future and cloned the service behind it, per request.
#[derive(Clone)]
struct Front {
    app: Router,
    hosts: HostRouteSlot,
    /// Strict transport encryption and a plaintext connection: only probes are answered.
    refuse_plaintext: bool,
}

impl Front {
    async fn serve(self, request: Request) -> Response {
        if self.refuse_plaintext && !plaintext_allowed_when_strict(&request) {
            return plaintext_refused();
        }
        if let Some(routes) = self.hosts.get()
            && let Some(host) = request_host(&request)
            && routes.claims(&host)
        {
            return routes.handle(host, request).await;
        }
        match tower::ServiceExt::oneshot(self.app, request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Sluice's own issuer: its OpenID discovery document (any node answers it alike).
async fn openid_configuration(State(state): State<HttpState>) -> Response {
    let document = sluice_security::jwt::issuer::discovery_document(state.node.sender_tokens().issuer());
    ([(header::CONTENT_TYPE, "application/json")], document.to_string()).into_response()
}

/// Sluice's own issuer: every node's published signing keys.
async fn jwks(State(state): State<HttpState>) -> Response {
    let keys = state.node.sender_jwks();
    ([(header::CONTENT_TYPE, "application/jwk-set+json"), (header::CACHE_CONTROL, "max-age=60")], keys.to_string())
        .into_response()
}

/// Serves `app` on `listener` until `shutdown`: HTTP/1.1 (keep-alive) and
/// h2c, at most `max_connections` at once and `max_connections_per_address` from one client address (more are
/// closed at accept),
/// headers must arrive within `header_read_timeout`, and a connection idle for
/// `idle_connection_timeout` is shut down gracefully.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    hosts: HostRouteSlot,
    limits: IngressLimits,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
) {
    let strict = tls.as_ref().is_some_and(|tls| !tls.mode().accepts_plaintext());
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let address_slots =
        super::connections::AddressSlots::new(limits.max_connections_per_address, limits.limit_loopback_connections);
    let largest_body = limits.max_batch_bytes.max(limits.max_event_bytes);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        // Twice ours: requests between the two limits get our JSON 431.
        .max_headers(limits.max_headers * 2)
        .max_buf_size((limits.max_header_bytes * 2).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size((limits.max_header_bytes * 2) as u32)
        .max_concurrent_streams(256);
    let refused_total = metrics::counter!("sluice_http_connections_refused_total", "limit" => "total");
    let refused_per_address = metrics::counter!("sluice_http_connections_refused_total", "limit" => "per_address");
    let idle_closed = metrics::counter!("sluice_http_connections_idle_closed_total");
    let open = metrics::gauge!("sluice_http_connections");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        if let Err(e) = super::connections::keep_alive(&stream) {
            tracing::debug!(error = %e, %peer, "cannot turn TCP keepalive on");
        }
        let Some(address_slot) = address_slots.try_take(peer.ip()) else {
            refused_per_address.increment(1);
            drop(stream);
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refused_total.increment(1);
            drop(stream);
            continue;
        };
        let builder = builder.clone();
        let (app, hosts, tls) = (app.clone(), hosts.clone(), tls.clone());
        let (open, idle_closed) = (open.clone(), idle_closed.clone());
        let first_byte_timeout = limits.header_read_timeout;
        let idle_timeout = limits.idle_connection_timeout;
        let body_share_bytes = limits.max_inflight_body_bytes_per_connection.max(largest_body);
        tokio::spawn(async move {
            open.increment(1.0);
            let held = Arc::new(HeldPlace { _permit: permit, _address_slot: address_slot, open });
            // Plaintext is let through even in strict mode, so a client is told why (426) and probes work.
            match sluice_security::accept(
                stream,
                tls.as_ref(),
                PlaintextPolicy::Accept,
                ClientCertificate::Optional,
                first_byte_timeout,
            )
            .await
            {
                Ok(conn) => {
                    let refuse_plaintext = strict && conn.info().transport == Transport::Plain;
                    let client = ClientConnection { peer, tls: conn.info().transport != Transport::Plain };
                    let place_here = ConnectionPlace { _held: held.clone(), client };
                    let front = Front { app, hosts, refuse_plaintext };
                    let first_request = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let request_seen = first_request.clone();
                    let handling = Arc::new(AtomicUsize::new(0));
                    let handling_here = handling.clone();
                    let share = super::ConnectionBodyShare::new(body_share_bytes);
                    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                        request_seen.store(true, std::sync::atomic::Ordering::Relaxed);
                        request.extensions_mut().insert(share.clone());
                        request.extensions_mut().insert(place_here.clone());
                        let front = front.clone();
                        let handled = Handling::start(&handling_here);
                        async move {
                            let response = front.serve(request.map(axum::body::Body::new)).await;
                            drop(handled);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    // hyper's header-read timeout starts once it knows the connection is HTTP/1.1, and its
                    // protocol sniffing has no timeout: a client that connects (and finishes TLS) and sends
                    // nothing, or one byte, or only the HTTP/2 preface, would hold its slot for ever. So the
                    // first request's head must be in within the header-read timeout.
                    let moved = Arc::new(AtomicU64::new(0));
                    let conn = WatchedIo::new(conn, first_byte_timeout, first_request, moved.clone());
                    // With upgrades: a Knative Route's app may take the connection over (WebSockets); anything
                    // else never answers 101, and its connections stay HTTP.
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(conn), service);
                    tokio::pin!(connection);
                    // See `IdleWatch`: an idle connection is shut down gracefully, never cut.
                    let mut idle = IdleWatch::new(moved.load(Ordering::Relaxed));
                    let ended = loop {
                        tokio::select! {
                            ended = connection.as_mut() => break ended,
                            _ = tokio::time::sleep(idle_timeout) => match idle.look(
                                moved.load(Ordering::Relaxed),
                                handling.load(Ordering::Relaxed),
                            ) {
                                IdleStep::Serve => {}
                                IdleStep::ShutDownGracefully => {
                                    idle_closed.increment(1);
                                    connection.as_mut().graceful_shutdown();
                                }
                                IdleStep::Drop => break Ok(()),
                            }
                        }
                    };
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "http connection ended");
                    }
                }
                Err(e) => {
                    metrics::counter!("sluice_tls_refused_total", "port" => "http").increment(1);
                    tracing::debug!(error = %e, "http connection refused");
                }
            }
            // The places go back now, or when the last upgraded connection holding them ends.
            drop(held);
        });
    }
}

/// Whether a connection has gone idle, looked at once per idle timeout: idle when no byte moved either way
/// since the last look (so after one to two timeouts of silence). hyper's HTTP/1.1 closes a kept-alive
/// connection after its header-read timeout, but an HTTP/2 connection with no stream open would hold its slot
/// (of `--max-connections`) for as long as the client keeps it. The first idle look shuts the connection down
/// gracefully, which lets every request in flight finish (HTTP/2 sends GOAWAY); a connection still silent at
/// the next look, with no request being handled, is dropped: an HTTP/2 client that never answers the
/// shutdown's PING, or an HTTP/1.1 client that stopped reading its response, would otherwise keep it open. A
/// request whose handler is still at work (a slow revision, a commit) is never cut by this.
struct IdleWatch {
    moved_at_last_look: u64,
    shutting_down: bool,
}

/// A request being handled on a connection (its handler has not answered yet), counted while it lives.
struct Handling(Arc<AtomicUsize>);

impl Handling {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Handling(count.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a look at a connection decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdleStep {
    Serve,
    ShutDownGracefully,
    Drop,
}

impl IdleWatch {
    fn new(moved: u64) -> Self {
        IdleWatch { moved_at_last_look: moved, shutting_down: false }
    }

    /// One look, with the bytes moved so far and the requests being handled now.
    fn look(&mut self, moved: u64, handling: usize) -> IdleStep {
        let idle = moved == self.moved_at_last_look;
        self.moved_at_last_look = moved;
        match (idle, self.shutting_down) {
            (false, _) => IdleStep::Serve,
            (true, false) => {
                self.shutting_down = true;
                IdleStep::ShutDownGracefully
            }
            (true, true) if handling == 0 => IdleStep::Drop,
            (true, true) => IdleStep::Serve,
        }
    }
}

/// A connection's stream, watched: the first request's head must be read within a deadline (`first_request`
/// turns true when the service is called; after that the deadline is gone), and the bytes read and written
/// are counted in `moved` for [`IdleWatch`].
struct WatchedIo<S> {
    inner: S,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    first_request: Arc<std::sync::atomic::AtomicBool>,
    moved: Arc<AtomicU64>,
}

impl<S> WatchedIo<S> {
    fn new(
        inner: S,
        timeout: std::time::Duration,
        first_request: Arc<std::sync::atomic::AtomicBool>,
        moved: Arc<AtomicU64>,
    ) -> Self {
        WatchedIo { inner, deadline: Some(Box::pin(tokio::time::sleep(timeout))), first_request, moved }
    }

    fn count(&self, polled: &std::task::Poll<std::io::Result<usize>>) {
        if let std::task::Poll::Ready(Ok(written)) = polled {
            self.moved.fetch_add(*written as u64, Ordering::Relaxed);
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.deadline.is_some() && self.first_request.load(Ordering::Relaxed) {
            self.deadline = None;
        }
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.moved.fetch_add(read as u64, Ordering::Relaxed);
        }
        if polled.is_pending()
            && let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            let timed_out =
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no request within the header-read timeout");
            return std::task::Poll::Ready(Err(timed_out));
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Probes answer over plaintext in every mode (kubelet's httpGet probes, sent to the pod's IP); in strict
/// mode everything else asks for TLS, a Knative Route's `/healthz` included (its host is a name).
fn plaintext_allowed_when_strict(request: &Request) -> bool {
    let to_node = match request_host(request) {
        None => true,
        Some(host) => host == "localhost" || host.parse::<std::net::IpAddr>().is_ok(),
    };
    to_node && matches!(request.uri().path(), "/healthz" | "/readyz")
}

fn plaintext_refused() -> Response {
    metrics::counter!("sluice_http_plaintext_refused_total").increment(1);
    let body = serde_json::json!({
        "error": "plaintext HTTP is refused",
        "field": "scheme",
        "rule": "transport-encryption is strict: send over https (the CA is the address's CACerts)",
    });
    (StatusCode::UPGRADE_REQUIRED, [(header::UPGRADE, "TLS/1.3, HTTP/1.1")], axum::Json(body)).into_response()
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.node.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::{HostRouteSlot, HostRoutes, IdleStep, IdleWatch, NodeRoutes, Request, Response};

    /// Serves the hosts it was given.
    struct Served(&'static [&'static str]);

    impl HostRoutes for Served {
        fn claims(&self, host: &str) -> bool {
            // As with `--serving-domain svc.cluster.local`: every name under it is claimed.
            host.ends_with("svc.cluster.local")
        }
        fn serves(&self, host: &str) -> bool {
            self.0.contains(&host)
        }
        fn handle(&self, _: String, _: Request) -> futures::future::BoxFuture<'static, Response> {
            unreachable!("only claims are asked")
        }
    }

    #[test]
    fn only_the_cluster_local_names_the_node_serves_go_to_its_own_port() {
        let slot = HostRouteSlot::default();
        let routes = NodeRoutes::new(slot.clone(), "0.0.0.0:8080".parse().expect("address"));
        assert_eq!(routes.address_of("hello.default.svc.cluster.local"), None, "serving not plugged in yet");
        let served: &[&str] = &["hello.default.svc.cluster.local", "hello.default.localhost", "svc.cluster.local"];
        assert!(slot.set(std::sync::Arc::new(Served(served))).is_ok());
        let on_loopback = Some("127.0.0.1:8080".parse().expect("address"));
        assert_eq!(routes.address_of("hello.default.svc.cluster.local"), on_loopback, "every address: loopback");
        assert_eq!(routes.address_of("other.default.svc.cluster.local"), None, "no Route under it");
        assert_eq!(routes.address_of("hello.default.localhost"), None, "not a cluster-local name");
        assert_eq!(routes.address_of("svc.cluster.local"), None, "the domain itself is no Route's name");
        let bound = NodeRoutes::new(slot, "10.0.0.7:8080".parse().expect("address"));
        assert_eq!(bound.address_of("hello.default.svc.cluster.local"), Some("10.0.0.7:8080".parse().expect("a")));
    }

    #[test]
    fn a_silent_connection_is_shut_down_gracefully_then_dropped_if_it_stays_silent() {
        use IdleStep::{Drop, Serve, ShutDownGracefully as Shut};
        /// (bytes moved so far at each look, requests being handled, what that look decides)
        type Look = (u64, usize, IdleStep);
        let cases: [(&str, &[Look]); 6] = [
            ("silent from the start", &[(0, 0, Shut), (0, 0, Drop)]),
            ("busy, then silent", &[(10, 0, Serve), (25, 1, Serve), (25, 0, Shut), (25, 0, Drop)]),
            ("a byte in every period", &[(1, 0, Serve), (2, 0, Serve), (3, 0, Serve), (4, 0, Serve)]),
            // A request in flight finishes after the GOAWAY: bytes move, the connection is left to end.
            ("finishing after the shutdown", &[(0, 1, Shut), (5, 1, Serve), (9, 0, Serve), (9, 0, Drop)]),
            // A handler silent for long (a slow revision) is never cut; dropped once it has answered.
            ("a long silent request", &[(0, 1, Shut), (0, 1, Serve), (0, 1, Serve), (0, 0, Drop)]),
            ("quiet once, then busy", &[(0, 0, Shut), (3, 0, Serve), (7, 0, Serve)]),
        ];
        for (name, looks) in cases {
            let mut watch = IdleWatch::new(0);
            for (i, (moved, handling, expected)) in looks.iter().enumerate() {
                assert_eq!(watch.look(*moved, *handling), *expected, "{name}: look {i}");
            }
        }
    }
}
