//! Upgraded connections to a revision (WebSockets, or any protocol switched to with `Upgrade`), as Knative's
//! queue-proxy passes them through. What flows in: a client's HTTP/1.1 request asking to switch protocols, with a
//! slot on a ready instance. What flows out: the app's answer; when it is 101, a tunnel that joins the client's
//! connection to the app's and moves bytes both ways until either side closes it.
//!
//! The request goes to the instance on a connection of its own (a pooled one could not be handed over). The
//! tunnel holds the request's slot for its whole life: Knative counts a WebSocket as a request in flight, so
//! `containerConcurrency` bounds the tunnels an instance has, the autoscaler sees them, and scale-in drains them
//! (up to the revision's `timeoutSeconds`, as for any request). It also holds the client connection's place among
//! the node's bounded connections. Once switched, `timeoutSeconds` no longer cuts it (Knative users asked for
//! exactly that: serving#16169, #16638); `idleTimeoutSeconds`, when set, cuts a tunnel the app has sent nothing
//! on for that long.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::uri::{Authority, PathAndQuery};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sluice_broker::ConnectionPlace;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::clock::monotonic_ms;
use crate::error::ServingError;
use crate::revision::Permit;

/// Whether the request asks to switch protocols: an `Upgrade` header, and `upgrade` among its `Connection`
/// header's tokens (RFC 9110 §7.8: an `Upgrade` not named by `Connection` is to be ignored).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    // `h2c` is not tunnelled: an HTTP/1.1 client offering HTTP/2 (curl --http2, Java's HttpClient) gets its
    // answer over HTTP/1.1 as a plain request, and the connection stays the node's (its gate, its split).
    let only_h2c = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .all(|protocol| protocol.trim().eq_ignore_ascii_case("h2c"));
    headers.contains_key(header::UPGRADE)
        && !only_h2c
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// A client's upgrade request, ready to go to an instance.
pub(crate) struct UpgradeRequest {
    upstream: hyper::Request<Body>,
    client_side: OnUpgrade,
    place: Option<ConnectionPlace>,
}

/// What the app answered to an upgrade request.
pub(crate) enum Answer {
    /// 101: the response for the client, and the tunnel to run once it is sent.
    Switched { response: Response<Body>, tunnel: Tunnel },
    /// Anything else: an ordinary response (a WebSocket endpoint that refuses, a path that has none).
    Declined(Response<Incoming>),
}

impl UpgradeRequest {
    pub(crate) fn new(mut request: Request, permit: &Permit) -> Result<Self, ServingError> {
        let client_side = hyper::upgrade::on(&mut request);
        let place = request.extensions().get::<ConnectionPlace>().cloned();
        let protocol = request.headers().get(header::UPGRADE).cloned();
        // The hop-by-hop headers go as for any request; the two that ask this hop to switch are put back.
        let mut upstream = super::upstream_request(request, permit)?;
        // Origin-form (`GET /ws HTTP/1.1`): this connection is written as given, where the pooled client makes
        // the absolute URI `upstream_request` gives into origin-form itself. An app reads its path and its
        // `Host` (the client's, kept) from there: Go takes the host from an absolute request line, and
        // gorilla/websocket's origin check then failed; Node's `ws` compared the absolute URI with its path.
        let origin_form = upstream.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        *upstream.uri_mut() = Uri::from(origin_form);
        upstream.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            upstream.headers_mut().insert(header::UPGRADE, protocol);
        }
        Ok(UpgradeRequest { upstream, client_side, place })
    }

    /// Sends the request to the instance at `authority` on a new connection; the error is the reason, for a 502.
    pub(crate) async fn send(self, authority: &Authority) -> Result<Answer, String> {
        let stream = TcpStream::connect(authority.as_str()).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        // Ends when the app closes the connection, when the response is done (declined), or when it is handed over.
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upgrade connection to an instance ended");
            }
        });
        sender.ready().await.map_err(|e| e.to_string())?;
        let mut response = sender.send_request(self.upstream).await.map_err(|e| e.to_string())?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Answer::Declined(response));
        }
        let app_side = hyper::upgrade::on(&mut response);
        // The app's 101 as it is, `Connection` and `Upgrade` included: they tell the client what it switched to.
        let (parts, _) = response.into_parts();
        let tunnel = Tunnel { client_side: self.client_side, app_side, place: self.place };
        Ok(Answer::Switched { response: Response::from_parts(parts, Body::empty()), tunnel })
    }
}

/// Both ends of a switched connection, joined once the client has had its 101.
pub(crate) struct Tunnel {
    client_side: OnUpgrade,
    app_side: OnUpgrade,
    place: Option<ConnectionPlace>,
}

/// How a tunnel ended, the label of `sluice_serving_tunnels_ended_total{why}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TunnelEnd {
    /// Either side closed it (or the connection broke).
    Closed,
    /// The app sent nothing for the revision's `idleTimeoutSeconds`.
    Idle,
    /// One side's upgrade never completed (the client went away before its 101 was written).
    NotJoined,
}

impl TunnelEnd {
    fn label(self) -> &'static str {
        match self {
            TunnelEnd::Closed => "closed",
            TunnelEnd::Idle => "idle",
            TunnelEnd::NotJoined => "not_joined",
        }
    }
}

impl Tunnel {
    /// Moves bytes both ways until the tunnel ends; the request's slot and the connection's place go back then.
    pub(crate) async fn run(self, permit: Permit, idle: Option<Duration>, revision: String) {
        let _held = (permit, self.place);
        let open = metrics::gauge!("sluice_serving_tunnels");
        open.increment(1.0);
        let end = match tokio::try_join!(self.client_side, self.app_side) {
            Err(e) => {
                tracing::debug!(%revision, error = %e, "an upgraded connection was not joined");
                TunnelEnd::NotJoined
            }
            Ok((client, app)) => join(client, app, idle, &revision).await,
        };
        open.decrement(1.0);
        metrics::counter!("sluice_serving_tunnels_ended_total", "why" => end.label()).increment(1);
        tracing::debug!(%revision, why = end.label(), "tunnel ended");
    }
}

async fn join(
    client: hyper::upgrade::Upgraded,
    app: hyper::upgrade::Upgraded,
    idle: Option<Duration>,
    revision: &str,
) -> TunnelEnd {
    let app_heard_ms = Arc::new(AtomicU64::new(monotonic_ms()));
    let app = Heard { io: TokioIo::new(app), heard_ms: app_heard_ms.clone() };
    let copying = copy_until_either_ends(TokioIo::new(client), app, revision);
    tokio::pin!(copying);
    let Some(idle) = idle else {
        copying.await;
        return TunnelEnd::Closed;
    };
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let look_in_ms = match idle_look(app_heard_ms.load(Ordering::Relaxed), monotonic_ms(), idle_ms) {
            IdleLook::Cut => return TunnelEnd::Idle,
            IdleLook::AgainInMs(ms) => ms,
        };
        tokio::select! {
            _ = &mut copying => return TunnelEnd::Closed,
            _ = tokio::time::sleep(Duration::from_millis(look_in_ms)) => {}
        }
    }
}

/// Copies both ways until one way ends (its reader closed or failed), then shuts the other side's writing down:
/// the tunnel is over when either side is done, as Go's reverse proxy (Knative's queue-proxy) ends it. Waiting
/// for both ways instead would keep a WebSocket whose app has closed it (after the closing handshake) open, and
/// its slot held, until the client also closed its half.
async fn copy_until_either_ends<C, A>(client: C, app: A, revision: &str)
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let (mut client_reads, mut client_writes) = tokio::io::split(client);
    let (mut app_reads, mut app_writes) = tokio::io::split(app);
    let to_app = async {
        let copied = tokio::io::copy(&mut client_reads, &mut app_writes).await;
        let _ = app_writes.shutdown().await;
        copied
    };
    let to_client = async {
        let copied = tokio::io::copy(&mut app_reads, &mut client_writes).await;
        let _ = client_writes.shutdown().await;
        copied
    };
    let ended = tokio::select! {
        copied = to_app => copied,
        copied = to_client => copied,
    };
    if let Err(e) = ended {
        tracing::debug!(%revision, error = %e, "tunnel broke");
    }
}

/// What the idle watch of a tunnel does when it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdleLook {
    Cut,
    AgainInMs(u64),
}

/// The app was last heard at `heard_ms`; at `now_ms`, a tunnel silent for `idle_ms` or more is cut, otherwise the
/// watch looks again when it would have been silent that long.
fn idle_look(heard_ms: u64, now_ms: u64, idle_ms: u64) -> IdleLook {
    let silent_ms = now_ms.saturating_sub(heard_ms);
    if silent_ms >= idle_ms { IdleLook::Cut } else { IdleLook::AgainInMs(idle_ms - silent_ms) }
}

/// The app's side of a tunnel, noting when it last sent a byte.
struct Heard<T> {
    io: T,
    heard_ms: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Heard<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard_ms.store(monotonic_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Heard<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn an_upgrade_is_asked_for_only_with_the_header_and_the_connection_token() {
        let table: &[(&[(&str, &str)], bool)] = &[
            (&[("connection", "Upgrade"), ("upgrade", "websocket")], true),
            (&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")], true),
            (&[("connection", "keep-alive"), ("connection", "upgrade"), ("upgrade", "websocket")], true),
            (&[("connection", " UPGRADE "), ("upgrade", "websocket")], true),
            // `Upgrade` not named by `Connection` is ignored (RFC 9110 §7.8).
            (&[("upgrade", "websocket")], false),
            (&[("connection", "keep-alive"), ("upgrade", "websocket")], false),
            (&[("connection", "upgrade")], false),
            (&[("connection", "upgraded"), ("upgrade", "websocket")], false),
            // An HTTP/1.1 client offering HTTP/2 goes on as a plain request.
            (&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c")], false),
            (&[("connection", "upgrade"), ("upgrade", "h2c, websocket")], true),
            (&[], false),
        ];
        for (pairs, expected) in table {
            assert_eq!(wants_upgrade(&headers(pairs)), *expected, "{pairs:?}");
        }
    }

    /// The app closing its side ends the tunnel, and the client reads the end, though the client keeps its own
    /// side open (a WebSocket after the closing handshake: the server closes first).
    #[tokio::test]
    async fn a_tunnel_ends_when_one_side_closes_while_the_other_stays_open() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client_end, mut client) = tokio::io::duplex(64);
        let (app_end, mut app) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(async move { copy_until_either_ends(client_end, app_end, "t/r").await });
        client.write_all(b"ping").await.expect("client writes");
        let mut got = [0u8; 4];
        app.read_exact(&mut got).await.expect("the app reads");
        assert_eq!(&got, b"ping");
        app.write_all(b"pong").await.expect("app writes");
        client.read_exact(&mut got).await.expect("the client reads");
        assert_eq!(&got, b"pong");
        drop(app);
        tunnel.await.expect("the tunnel ended with the app's side");
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.expect("the client reads the end"), 0);
    }

    #[test]
    fn a_tunnel_is_cut_once_the_app_has_been_silent_for_the_idle_timeout() {
        let table = [
            // (heard, now, idle) → look
            (1_000, 1_000, 500, IdleLook::AgainInMs(500)),
            (1_000, 1_200, 500, IdleLook::AgainInMs(300)),
            (1_000, 1_499, 500, IdleLook::AgainInMs(1)),
            (1_000, 1_500, 500, IdleLook::Cut),
            (1_000, 9_000, 500, IdleLook::Cut),
            // Heard after the watch read the clock (another thread): not silent at all.
            (2_000, 1_000, 500, IdleLook::AgainInMs(500)),
            (0, u64::MAX, u64::MAX, IdleLook::Cut),
        ];
        for (heard, now, idle, expected) in table {
            assert_eq!(idle_look(heard, now, idle), expected, "heard {heard}, now {now}, idle {idle}");
        }
    }
}
