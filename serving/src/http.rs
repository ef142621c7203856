//! Requests to Knative Routes on the node's HTTP port: the host names the Route (or a tag of it), the traffic
//! split picks a revision, the revision's gate gives a slot on a ready instance (holding the request while one
//! starts), and the request is proxied to it, bodies streamed both ways, HTTP/1.1 or h2c. The slot is given back
//! when the response body ends (or is dropped), so in-flight counts are exact. A request that upgrades its
//! connection (a WebSocket) holds its slot for as long as the upgraded connection lives (`upgrade`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::uri::{PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Uri, header};
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sluice_broker::{ClientConnection, ConnectionPlace, HostRoutes};
use sluice_controller::serving::routing::is_cluster_local;

mod body;
mod upgrade;

use crate::error::ServingError;
use crate::revision::{Permit, RevisionHandle, RevisionRun};
use crate::shared::{HostMetrics, HostTraffic, Shared};
use body::{GuardedBody, TimedBody, UploadBody};

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1), besides those `Connection`
/// names. `Trailer` is not one (it announces the message's own trailers, which HTTP/1.1 clients get only when it
/// is there), and `TE: trailers` is kept on requests ([`remove_hop_by_hop`]).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::UPGRADE,
];

/// Removes a message's hop-by-hop headers: [`HOP_BY_HOP`] and every header its `Connection` names (except
/// `Host`). A request's `TE: trailers` stays, as Knative's queue-proxy (Go's reverse proxy) keeps it: gRPC
/// servers refuse a call without it.
fn remove_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| name != header::HOST)
        .collect();
    let te_trailers = keep_te_trailers
        && headers.get_all(header::TE).iter().any(|value| {
            value.to_str().is_ok_and(|value| value.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
        });
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Tells the app who asked, as Knative's ingress and activator do: the client's address appended to
/// `X-Forwarded-For` (after any a proxy in front of the node put there), and `X-Forwarded-Proto` as the node
/// received the request unless a proxy in front already said it.
fn add_forwarded(headers: &mut HeaderMap, client: Option<ClientConnection>) {
    let Some(client) = client else { return };
    let forwarded_for = HeaderName::from_static("x-forwarded-for");
    let ip = client.peer.ip().to_string();
    // Every line a proxy in front put there, in order (one may add a line rather than extend the last: the
    // entries after the first were dropped, the address the app should trust among them).
    let before: Vec<&str> = headers
        .get_all(&forwarded_for)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let value = if before.is_empty() { ip } else { format!("{}, {ip}", before.join(", ")) };
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(forwarded_for, value);
    }
    let proto = HeaderName::from_static("x-forwarded-proto");
    if !headers.contains_key(&proto) {
        headers.insert(proto, HeaderValue::from_static(if client.tls { "https" } else { "http" }));
    }
}

/// How long an idle connection to an instance is kept: under the idle timeouts apps commonly close kept-alive
/// connections at (Node.js: 5 s), so that a request never goes out on a connection the app is closing; such a
/// request would be lost with it (the body is streamed, so it cannot be sent again).
const UPSTREAM_POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);
/// Revisions one request is given to at most when the ones picked before stop under it (a rollout).
const MAX_PICKS: u32 = 3;

#[derive(Clone)]
pub(crate) struct HostRouter {
    shared: Arc<Shared>,
    /// `.DOMAIN`: every host under it is ours (an unknown one is answered 404).
    suffix: String,
    http1: Client<HttpConnector, Body>,
    h2c: Client<HttpConnector, Body>,
}

impl HostRouter {
    pub(crate) fn new(shared: Arc<Shared>, domain: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HostRouter {
            shared,
            suffix: format!(".{}", domain.trim_start_matches('.').to_ascii_lowercase()),
            http1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(UPSTREAM_POOL_IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .build(connector.clone()),
            h2c: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .pool_idle_timeout(UPSTREAM_POOL_IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .build(connector),
        }
    }

    /// The revision the next request to `host` goes to, by the traffic split, and the host's metrics.
    fn pick(&self, host: &str) -> (Option<Arc<HostMetrics>>, Result<Arc<RevisionHandle>, ServingError>) {
        let no_route = || ServingError::NoRoute { host: host.into() };
        let table = self.shared.table.read().map(|t| t.clone()).unwrap_or_default();
        let Some(targets) = table.get(host) else { return (None, Err(no_route())) };
        let Ok(mut hosts) = self.shared.hosts.lock() else { return (None, Err(no_route())) };
        let traffic = match hosts.get_mut(host) {
            Some(traffic) => traffic,
            None => hosts
                .entry(host.to_string())
                .or_insert_with(|| HostTraffic::new(host, &targets.namespace, &targets.targets)),
        };
        if !traffic.balancer.same_targets(&targets.targets) {
            traffic.balancer = traffic.balancer.rebalanced(&targets.namespace, &targets.targets);
        }
        let metrics = Some(traffic.metrics.clone());
        let Some(key) = traffic.balancer.pick() else { return (metrics, Err(no_route())) };
        let revision = self.shared.revisions.read().ok().and_then(|r| r.get(key).cloned());
        let revision = revision.ok_or_else(|| ServingError::NotRunning { revision: key.to_string() });
        (metrics, revision)
    }

    /// Picks a revision for the request and serves it there. A revision that stops while the request waits for
    /// a slot (taken off traffic by a rollout) has not had the request: it is picked again, a few times at most,
    /// rather than answered 5xx. The request's time, counted from the first pick, is bounded by the timeout of
    /// the revision that serves it.
    async fn pick_and_serve(
        &self,
        host: &str,
        request: Request,
    ) -> (Option<Arc<HostMetrics>>, Result<Response<Body>, ServingError>) {
        let mut started: Option<Instant> = None;
        let mut picks = 0;
        loop {
            let (metrics, revision) = self.pick(host);
            let revision = match revision {
                Ok(revision) => revision,
                Err(e) => return (metrics, Err(e)),
            };
            let timeout_ms = revision.run.timeout_ms;
            let deadline = *started.get_or_insert_with(Instant::now) + std::time::Duration::from_millis(timeout_ms);
            let remaining_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
            picks += 1;
            match revision.acquire(remaining_ms.max(1)).await {
                Ok(permit) => return (metrics, self.forward(&revision, permit, request, deadline).await),
                Err(ServingError::RevisionStopped { .. }) if picks < MAX_PICKS => {
                    metrics::counter!("sluice_serving_repicks_total").increment(1);
                    continue;
                }
                Err(e) => return (metrics, Err(e)),
            }
        }
    }

    async fn forward(
        &self,
        revision: &RevisionHandle,
        permit: Permit,
        request: Request,
        deadline: Instant,
    ) -> Result<Response<Body>, ServingError> {
        let run = &revision.run;
        // The response must start within `responseStartTimeoutSeconds` of the delivery, and within what is left of
        // `timeoutSeconds`, whichever comes first.
        let (start_by, after_ms) = match run.response_start_timeout_ms {
            Some(start_ms) if Instant::now() + Duration::from_millis(start_ms) < deadline => {
                (Instant::now() + Duration::from_millis(start_ms), start_ms)
            }
            _ => (deadline, run.timeout_ms),
        };
        let timed_out = || ServingError::Timeout { revision: revision.key(), after_ms };
        // An h2c app speaks no HTTP/1.1, so it is never asked to switch protocols (the request goes as a plain one);
        // nor is anything asked over HTTP/1.0, which cannot upgrade.
        if !run.h2c && request.version() == axum::http::Version::HTTP_11 && upgrade::wants_upgrade(request.headers()) {
            let response = upgrade::UpgradeRequest::new(request, &permit)?;
            let answer = tokio::time::timeout_at(start_by.into(), response.send(&permit.authority)).await;
            return match answer {
                Err(_) => Err(timed_out()),
                Ok(Err(reason)) => Err(ServingError::Upstream { revision: revision.key(), reason }),
                Ok(Ok(upgrade::Answer::Switched { response, tunnel })) => {
                    tokio::spawn(tunnel.run(permit, run.idle_timeout_ms.map(Duration::from_millis), revision.key()));
                    Ok(response)
                }
                Ok(Ok(upgrade::Answer::Declined(response))) => Ok(respond(response, permit, run, deadline)),
            };
        }
        let client = if run.h2c { &self.h2c } else { &self.http1 };
        let (parts, body) = request.into_parts();
        // A body already at its end (most GETs) cannot break.
        let (body, upload) = if hyper::body::Body::is_end_stream(&body) {
            (body, None)
        } else {
            let (body, upload) = UploadBody::new(body);
            (Body::new(body), Some(upload))
        };
        let upstream = upstream_request(Request::from_parts(parts, body), &permit)?;
        let response = match tokio::time::timeout_at(start_by.into(), client.request(upstream)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) if upload.is_some_and(|upload| upload.broke()) => {
                return Err(ServingError::ClientBody { revision: revision.key(), reason: with_causes(&e) });
            }
            Ok(Err(e)) => return Err(ServingError::Upstream { revision: revision.key(), reason: with_causes(&e) }),
            Ok(Ok(response)) => response,
        };
        Ok(respond(response, permit, run, deadline))
    }
}

/// An error with its causes: the client's own message (`client error (SendRequest)`) leaves them out.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// The app's response as the client gets it: without its hop-by-hop headers, its body cut off at the revision's
/// timeouts, holding the request's slot until it ends.
fn respond(response: Response<Incoming>, permit: Permit, run: &RevisionRun, deadline: Instant) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers, false);
    let body = TimedBody::new(body, deadline, run.idle_timeout_ms.map(Duration::from_millis));
    Response::from_parts(parts, Body::new(GuardedBody::new(body, permit, deadline)))
}

pub(crate) fn upstream_request(request: Request, permit: &Permit) -> Result<hyper::Request<Body>, ServingError> {
    let (mut parts, body) = request.into_parts();
    let mut uri = parts.uri.into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(permit.authority.clone());
    uri.path_and_query = Some(uri.path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")));
    parts.uri = Uri::from_parts(uri)
        .map_err(|e| ServingError::Upstream { revision: permit.authority.to_string(), reason: e.to_string() })?;
    remove_hop_by_hop(&mut parts.headers, true);
    add_forwarded(&mut parts.headers, parts.extensions.get::<ConnectionPlace>().map(ConnectionPlace::client));
    // h2c requests carry their host in the authority; HTTP/1.1 upstreams need a Host header.
    if !parts.headers.contains_key(header::HOST)
        && let Some(host) = parts.extensions.get::<OriginalHost>().map(|h| h.0.clone())
    {
        parts.headers.insert(header::HOST, host);
    }
    join_cookies(&mut parts.headers);
    parts.version = axum::http::Version::HTTP_11;
    Ok(hyper::Request::from_parts(parts, body))
}

/// An HTTP/2 client may split its cookies over several `cookie` fields; before HTTP/1.1 they are one, joined by
/// "; " (RFC 9113 §8.2.3). Regression: they went as several `Cookie` lines, which servers joining repeated
/// headers with "," misread.
fn join_cookies(headers: &mut HeaderMap) {
    let pieces: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if pieces.len() < 2 {
        return;
    }
    if let Ok(joined) = HeaderValue::from_bytes(&pieces.join(&b"; "[..])) {
        headers.insert(header::COOKIE, joined);
    }
}

/// The client's Host, kept when the request reached us over h2 (authority instead of a Host header).
#[derive(Clone)]
struct OriginalHost(HeaderValue);

fn error_response(error: &ServingError) -> Response<Body> {
    let status = error.status_code();
    let body = serde_json::json!({"error": error.to_string(), "status": status.as_u16()}).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

impl HostRoutes for HostRouter {
    fn claims(&self, host: &str) -> bool {
        // A host under the cluster's own domain only when a Route is served under it: the node's own names live
        // there too (its Kubernetes Service, `sluice-ingress.NAMESPACE.svc.cluster.local`).
        host.ends_with(&self.suffix) || (is_cluster_local(host) && self.serves(host))
    }

    fn serves(&self, host: &str) -> bool {
        self.shared.table.read().is_ok_and(|table| table.contains_key(host))
    }

    fn handle(&self, host: String, mut request: Request) -> BoxFuture<'static, Response<Body>> {
        let router = self.clone();
        if !request.headers().contains_key(header::HOST)
            && let Some(authority) = request.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.extensions_mut().insert(OriginalHost(authority));
        }
        Box::pin(async move {
            let started = Instant::now();
            let (metrics, served) = router.pick_and_serve(&host, request).await;
            let response = match served {
                Ok(response) => response,
                Err(e) => {
                    tracing::debug!(%host, error = %e, "serving request failed");
                    error_response(&e)
                }
            };
            let code = response.status().as_u16();
            let elapsed_seconds = started.elapsed().as_secs_f64();
            match metrics {
                Some(metrics) => metrics.record(code, elapsed_seconds),
                None => HostMetrics::record_unrouted(code, elapsed_seconds),
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        map
    }

    /// Regression: `TE: trailers` and `Trailer` were removed with the hop-by-hop headers, so a gRPC call to a
    /// revision on an `h2c` port was refused ("missing te header"), and headers that `Connection` names went on.
    #[test]
    fn hop_by_hop_headers_go_but_te_trailers_and_trailer_stay() {
        let mut request = headers(&[
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("trailer", "grpc-status"),
            ("content-type", "application/grpc"),
            ("host", "hello.default.localhost"),
        ]);
        remove_hop_by_hop(&mut request, true);
        let mut names: Vec<&str> = request.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "host", "te", "trailer"]);
        assert_eq!(request["te"], "trailers");

        let mut gzip = headers(&[("te", "gzip"), ("connection", "host")]);
        remove_hop_by_hop(&mut gzip, true);
        assert!(gzip.is_empty(), "{gzip:?}");

        let mut response = headers(&[("te", "trailers"), ("trailer", "grpc-status"), ("upgrade", "h2c")]);
        remove_hop_by_hop(&mut response, false);
        assert_eq!(response.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["trailer"]);
    }

    #[test]
    fn the_client_is_appended_to_x_forwarded_for_and_the_scheme_said_once() {
        let client = ClientConnection { peer: "10.0.0.7:51000".parse().expect("address"), tls: false };
        let mut direct = HeaderMap::new();
        add_forwarded(&mut direct, Some(client));
        assert_eq!(direct["x-forwarded-for"], "10.0.0.7");
        assert_eq!(direct["x-forwarded-proto"], "http");

        let behind_a_proxy = ClientConnection { tls: true, ..client };
        let mut proxied = headers(&[("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "https")]);
        add_forwarded(&mut proxied, Some(behind_a_proxy));
        assert_eq!(proxied["x-forwarded-for"], "203.0.113.9, 10.0.0.7");
        assert_eq!(proxied["x-forwarded-proto"], "https");

        let mut unknown = HeaderMap::new();
        add_forwarded(&mut unknown, None);
        assert!(unknown.is_empty());

        // Regression (review): a proxy that adds a line of its own had every line but the first dropped.
        let mut two_lines = HeaderMap::new();
        two_lines.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        two_lines.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        add_forwarded(&mut two_lines, Some(client));
        assert_eq!(two_lines.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(two_lines["x-forwarded-for"], "6.6.6.6, 203.0.113.9, 10.0.0.7");
    }

    /// Regression (review): an HTTP/2 client's cookie fields went to the HTTP/1.1 app as several `Cookie` lines.
    #[test]
    fn cookie_fields_are_one_header_for_the_app() {
        let mut split = HeaderMap::new();
        split.append(header::COOKIE, HeaderValue::from_static("a=1"));
        split.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut split);
        assert_eq!(split.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
        let mut one = headers(&[("cookie", "a=1")]);
        join_cookies(&mut one);
        assert_eq!(one["cookie"], "a=1");
    }
}
