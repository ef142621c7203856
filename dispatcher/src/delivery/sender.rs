//! HTTP push: one attempt to POST one CloudEvent (or a batch of them) to one URL, and what came back.
//!
//! Binary mode by default (attributes as `ce-` headers encoded by `cloudevent::encode_header_value`,
//! `datacontenttype` as `Content-Type`, data as the body, byte for byte); structured mode (`application/cloudevents+json`) when the DeliverySpec
//! says `format: json`; batched mode (`application/cloudevents-batch+json`, a JSON array) for subscribers that
//! opted in. Every single-event request carries `Prefer: reply`; every request a W3C `traceparent`. Connections are pooled
//! and kept alive per host by the HTTP clients: plaintext HTTP/1.1 (Knative's usual in-cluster subscriber) goes
//! through hyper's pooled client directly, with the URL parsed once per attempt into the request's `Uri`;
//! https (which may need the destination's own CAs) and h2c with prior knowledge go through reqwest. A
//! destination with an OIDC audience is sent `Authorization: Bearer` with the token Sluice minted for it. One
//! deadline covers the response and a body that may be a reply; any other body, which the status settles, gets
//! [`UNWANTED_BODY_GRACE`] after the headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use sluice_broker::NodeRoutes;
use sluice_cloudevent::{self as cloudevent, CloudEvent};

use crate::consumer::{Format, Protocol};
use crate::delivery::policy::RetryAfter;

mod names;
mod request;
mod reuse;
mod traceparent;
mod userinfo;

use names::{LoopbackNames, PlainNames};
#[cfg(test)]
use request::ce_header_name;
pub(crate) use request::{BROKER_TTL, batch_body, batch_member_bound};
use request::{build_batch_request, build_request};
#[cfg(test)]
use traceparent::push_hex_u64;
pub(crate) use traceparent::traceparent;
pub(crate) use userinfo::redacted_url;
use userinfo::without_userinfo;

/// The most of a success's body that is read: a reply event must fit.
pub(crate) const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// The most of a subscriber's failure body read and carried in `knativeerrordata` (before base64).
pub(crate) const MAX_ERROR_DATA_BYTES: usize = 1024;
/// The most of a success's body read when no reply is wanted (a Subscription without `spec.reply`, a
/// dead-letter sink, a reply destination): enough for the short bodies servers send with a 2xx, so that the
/// kept-alive connection goes back to the pool; a longer body is left unread and its connection closed. Reading
/// up to [`MAX_RESPONSE_BYTES`] for a body that is thrown away let one consumer's window hold 4 MiB per delivery.
pub(crate) const MAX_DISCARDED_BODY_BYTES: usize = 64 << 10;
/// Idle pooled connections kept per host: at least what a node has in flight to one subscriber (a Trigger's
/// window, 100 by default, on each of the node's partitions), or every completion beyond the pool closes a
/// connection that the next delivery opens again. At 64, half the deliveries of a backlog drain opened a
/// connection (docs/benchmarks.md, session 14). Idle connections go after `POOL_IDLE_TIMEOUT`.
pub(crate) const MAX_IDLE_PER_HOST: usize = 512;
/// How long an idle pooled connection is kept. Under the idle timeouts servers commonly close kept-alive
/// connections at (Node.js 5 s, Sluice's own HTTP port 10 s through its header-read timeout): a connection the
/// server is closing at the moment it is reused loses the request, and a shorter pool avoids that race.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long the body of a response whose status settles the attempt by itself (a 2xx whose body nobody takes,
/// an error page, of which `knativeerrordata` keeps 1 KiB) may go on arriving after its headers, within the
/// attempt's deadline. A server that sends its status and never finishes the body held the delivery (and its
/// place in the window) for the whole attempt `timeout`, 30 s by default; past this the body is dropped with
/// what came of it, and its connection closed rather than reused.
pub(crate) const UNWANTED_BODY_GRACE: Duration = Duration::from_secs(1);
/// Times one attempt is sent again when its kept-alive connection died before any response byte (see
/// [`died_before_response`]). Not a DeliverySpec retry: it is not counted, and a Trigger without retries gets it.
pub(crate) const MAX_RESENDS: u32 = 1;

/// Whether a 200's body can be a reply event that someone takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyUse {
    /// A Trigger's (to its Broker) or a Subscription's with `spec.reply`: read within [`MAX_RESPONSE_BYTES`]
    /// and parsed.
    Wanted,
    /// Nobody takes it: read within [`MAX_DISCARDED_BODY_BYTES`], never parsed.
    Discarded,
}

/// What one attempt produced.
#[derive(Debug, Default)]
pub(crate) struct AttemptResult {
    /// `None`: no response (connection error or timeout).
    pub status: Option<u16>,
    pub retry_after: Option<RetryAfter>,
    /// The response body: at most [`MAX_RESPONSE_BYTES`] of a 2xx whose reply is wanted,
    /// [`MAX_DISCARDED_BODY_BYTES`] of another 2xx, [`MAX_ERROR_DATA_BYTES`] of any other status; of a body that
    /// did not finish in time (the deadline, or [`UNWANTED_BODY_GRACE`]), what had come.
    pub body: Bytes,
    /// A reply event in a 200 response: parsed and validated, or why it is not a valid event.
    pub reply: Option<Result<CloudEvent, String>>,
    /// Why there was no response, or why the body could not be read.
    pub error: Option<String>,
    /// A reply announced by a 200's headers whose body did not arrive whole (a read error, the timeout): why.
    /// The attempt counts as one without a response, and is retried; a cut-off reply is never stored.
    pub reply_cut: Option<String>,
    /// The request could not be made at all: the destination's URL or its CA certificates are invalid (`error`
    /// says why). Not a network error: another attempt cannot do better, so the delivery is not retried.
    pub unsendable: bool,
}

/// Why a response body was not read whole.
#[derive(Debug)]
enum BodyProblem {
    TooLarge {
        limit: usize,
    },
    Cut(String),
    /// Still arriving when the time it was given (`allowed`, from its headers) ran out; what came is kept.
    Late {
        allowed: Duration,
    },
}

impl std::fmt::Display for BodyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyProblem::TooLarge { limit } => write!(f, "response body larger than {limit} bytes"),
            BodyProblem::Cut(reason) => f.write_str(reason),
            BodyProblem::Late { allowed } => {
                write!(f, "response body not complete within {} ms of the response's headers", allowed.as_millis())
            }
        }
    }
}

/// Whether a response's body may be a reply event someone takes: a 200's, when the reply is wanted. Only such a
/// body is parsed, and read until the attempt's deadline.
fn reply_wanted(reply_use: ReplyUse, status: u16) -> bool {
    reply_use == ReplyUse::Wanted && status == 200
}

/// How long a response's body is read once its headers came, with `remaining` left of the attempt's deadline:
/// all of it for a body that may be a reply; at most [`UNWANTED_BODY_GRACE`] for any other, whose status alone
/// settles the attempt.
fn body_read_time(reply_use: ReplyUse, status: u16, remaining: Duration) -> Duration {
    if reply_wanted(reply_use, status) { remaining } else { remaining.min(UNWANTED_BODY_GRACE) }
}

/// Plaintext HTTP/1.1, pooled per host.
type PlainClient = hyper_util::client::legacy::Client<reuse::Tagging<HttpConnector<PlainNames>>, Full<Bytes>>;

fn plain_client(node: Option<NodeRoutes>) -> PlainClient {
    let mut connector = HttpConnector::new_with_resolver(PlainNames { node });
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(reuse::Tagging(connector))
}

/// How long a new connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The client one attempt goes out on.
enum Client<'a> {
    Plain(&'a PlainClient),
    Reqwest(reqwest::Client),
}

/// Why an attempt got no response.
enum SendError {
    Plain(hyper_util::client::legacy::Error),
    Reqwest(reqwest::Error),
}

impl SendError {
    fn is_connect(&self) -> bool {
        match self {
            SendError::Plain(e) => e.is_connect(),
            SendError::Reqwest(e) => e.is_connect(),
        }
    }

    /// Whether the request went out on a connection that had answered before: unknown for the reqwest client
    /// (answered yes, the resend as before session 75).
    fn on_a_used_connection(&self) -> bool {
        match self {
            SendError::Plain(e) => reuse::Answered::before(e),
            SendError::Reqwest(_) => true,
        }
    }

    fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            SendError::Plain(e) => e,
            SendError::Reqwest(e) => e,
        }
    }

    fn describe(&self) -> String {
        // Each client's own message leaves the cause out; the chain says what happened.
        let mut text = self.as_error().to_string();
        let mut source = self.as_error().source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text = format!("{text}: {cause_text}");
            }
            source = cause.source();
        }
        if self.is_connect() { format!("connection failed: {text}") } else { text }
    }
}

/// A response's body, from either client.
enum ResponseBody {
    Plain(hyper::body::Incoming),
    Reqwest(reqwest::Body),
}

impl Client<'_> {
    async fn send(&self, request: http::Request<Bytes>) -> Result<(http::response::Parts, ResponseBody), SendError> {
        match self {
            Client::Plain(client) => {
                let response = client.request(request.map(Full::new)).await.map_err(SendError::Plain)?;
                reuse::Answered::note(response.extensions());
                let (parts, body) = response.into_parts();
                Ok((parts, ResponseBody::Plain(body)))
            }
            Client::Reqwest(client) => {
                let request = reqwest::Request::try_from(request).map_err(SendError::Reqwest)?;
                let response = client.execute(request).await.map_err(SendError::Reqwest)?;
                let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
                Ok((parts, ResponseBody::Reqwest(body)))
            }
        }
    }
}

/// HTTPS clients kept for destinations with CA certificates of their own; more distinct bundles than this
/// empty the table (each client keeps its own connection pool).
const MAX_CLIENTS_WITH_CA: usize = 256;

#[derive(Clone)]
pub(crate) struct Sender {
    /// The node's TLS, when transport encryption is on: its CA is trusted for every destination, as it is now
    /// (a rotated CA reaches the clients at the next attempt).
    tls: Option<sluice_security::Tls>,
    clients: Arc<std::sync::RwLock<Arc<Clients>>>,
    /// Plaintext HTTP/1.1.
    plain: PlainClient,
    /// HTTP/2 with prior knowledge, plaintext only.
    h2c: reqwest::Client,
}

/// The HTTP clients built for one generation of the node's CA.
struct Clients {
    generation: u64,
    /// Plaintext and https (trusting the system's CAs and the cluster's).
    http1: reqwest::Client,
    cluster_ca: Option<Arc<str>>,
    /// By a destination's CACerts: clients trusting them besides the system's and the cluster's CAs.
    with_ca: Mutex<HashMap<Arc<str>, reqwest::Client>>,
}

impl Clients {
    fn build(generation: u64, cluster_ca: Option<Arc<str>>) -> Result<Clients, String> {
        let http1 = https_client(cluster_ca.as_deref().as_slice(), "the cluster's CA (--tls-ca)")?;
        Ok(Clients { generation, http1, cluster_ca, with_ca: Mutex::default() })
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(LoopbackNames))
        .http1_only()
}

/// An HTTP/1.1 client (https too) trusting the system's CAs and `cas` (PEM bundles).
fn https_client(cas: &[&str], what: &str) -> Result<reqwest::Client, String> {
    let tls = sluice_security::https_client_config(cas, what).map_err(|e| e.to_string())?;
    client_builder().use_preconfigured_tls(tls).build().map_err(|e| format!("building the HTTP client: {e}"))
}

impl Sender {
    /// `tls`: the node's, when transport encryption is on; its CA is trusted for every destination.
    #[cfg(test)]
    pub(crate) fn new(tls: Option<sluice_security::Tls>) -> Result<Self, String> {
        Self::with_node_routes(tls, None)
    }

    /// As [`Sender::new`], sending plaintext HTTP/1.1 to the cluster-local names of the Routes `node` serves to
    /// its HTTP port.
    pub(crate) fn with_node_routes(
        tls: Option<sluice_security::Tls>,
        node: Option<NodeRoutes>,
    ) -> Result<Self, String> {
        let generation = tls.as_ref().map_or(0, sluice_security::Tls::generation);
        let clients = Clients::build(generation, tls.as_ref().map(|tls| tls.ca_pem().into()))?;
        let h2c =
            client_builder().http2_prior_knowledge().build().map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Sender { tls, clients: Arc::new(std::sync::RwLock::new(Arc::new(clients))), plain: plain_client(node), h2c })
    }

    /// The clients for the node's CA as it is now: rebuilt once after each rotation (a rotation whose clients
    /// cannot be built keeps the previous ones, logged).
    fn clients(&self) -> Arc<Clients> {
        let current = self.clients.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(tls) = &self.tls else { return current };
        let generation = tls.generation();
        if current.generation == generation {
            return current;
        }
        let rebuilt = match Clients::build(generation, Some(tls.ca_pem().into())) {
            Ok(clients) => {
                tracing::info!(generation, "the cluster's CA changed: delivery clients rebuilt");
                Arc::new(clients)
            }
            Err(e) => {
                tracing::error!(error = %e, "the cluster's CA changed but no client trusts it; the previous stay");
                let kept = Clients::build(generation, current.cluster_ca.clone());
                match kept {
                    Ok(kept) => Arc::new(kept),
                    Err(_) => return current,
                }
            }
        };
        *self.clients.write().unwrap_or_else(std::sync::PoisonError::into_inner) = rebuilt.clone();
        rebuilt
    }

    /// The client for a destination that names `ca_certs`, made on first use.
    fn client_with_ca(&self, clients: &Clients, ca_certs: &Arc<str>, url: &str) -> Result<reqwest::Client, String> {
        let mut with_ca = clients.with_ca.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = with_ca.get(ca_certs) {
            return Ok(client.clone());
        }
        let mut cas = vec![&**ca_certs];
        cas.extend(clients.cluster_ca.as_deref());
        let client = https_client(&cas, url)?;
        if with_ca.len() >= MAX_CLIENTS_WITH_CA {
            with_ca.clear();
        }
        with_ca.insert(ca_certs.clone(), client.clone());
        Ok(client)
    }

    /// One attempt: POSTs `event` (without its attribute `withheld`: [`BROKER_TTL`] to a subscriber) to `url`,
    /// waiting at most `timeout_ms` for the whole response.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send(
        &self,
        url: &str,
        ca_certs: Option<&Arc<str>>,
        protocol: Protocol,
        format: Format,
        event: &CloudEvent,
        authorization: Option<&str>,
        timeout_ms: u64,
        now_ms: u64,
        reply_use: ReplyUse,
        withheld: Option<&str>,
    ) -> AttemptResult {
        let build = |uri: &http::Uri| build_request(uri, format, event, authorization, withheld, reply_use);
        self.send_built(url, ca_certs, protocol, build, timeout_ms, now_ms, reply_use).await
    }

    /// One attempt of a batch: POSTs `events` as one `application/cloudevents-batch+json` request (in the order
    /// given). The response settles all of them; its body is no reply (read within
    /// [`MAX_DISCARDED_BODY_BYTES`], never parsed).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_batch(
        &self,
        url: &str,
        ca_certs: Option<&Arc<str>>,
        protocol: Protocol,
        events: &[(u64, Arc<CloudEvent>)],
        json_bytes_bound: usize,
        authorization: Option<&str>,
        timeout_ms: u64,
        now_ms: u64,
    ) -> AttemptResult {
        // Encoded once for the attempt; a resend clones the `Bytes`.
        let body = batch_body(events.iter().map(|(_, event)| event.as_ref()), json_bytes_bound);
        let first = events.first().map(|(_, event)| event.as_ref());
        let build = |uri: &http::Uri| build_batch_request(uri, body.clone(), first, authorization);
        self.send_built(url, ca_certs, protocol, build, timeout_ms, now_ms, ReplyUse::Discarded).await
    }

    /// One attempt with the request `build` makes (again for a resend).
    #[allow(clippy::too_many_arguments)]
    async fn send_built(
        &self,
        url: &str,
        ca_certs: Option<&Arc<str>>,
        protocol: Protocol,
        build: impl Fn(&http::Uri) -> http::Request<Bytes>,
        timeout_ms: u64,
        now_ms: u64,
        reply_use: ReplyUse,
    ) -> AttemptResult {
        let no_response = |error: String| AttemptResult { error: Some(error), ..Default::default() };
        let unsendable = |error: String| AttemptResult { error: Some(error), unsendable: true, ..Default::default() };
        let uri = match parse_uri(url) {
            Ok(uri) => without_default_port(uri),
            Err(e) => return unsendable(e),
        };
        // A URL's `user:password@` is sent as Basic authentication, as Knative's Go client does, and not as part
        // of the request's host. Regression: it was dropped (so such a subscriber refused every delivery).
        let (uri, basic) = without_userinfo(uri);
        let build = |uri: &http::Uri| {
            let mut request = build(uri);
            if let Some(basic) = &basic
                && !request.headers().contains_key(http::header::AUTHORIZATION)
            {
                request.headers_mut().insert(http::header::AUTHORIZATION, basic.clone());
            }
            request
        };
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let client = match (protocol, ca_certs) {
            // h2c is plaintext by definition; an https URL goes over HTTP/1.1 with TLS.
            (Protocol::H2c, _) if !https => Client::Reqwest(self.h2c.clone()),
            _ if !https => Client::Plain(&self.plain),
            (_, None) => Client::Reqwest(self.clients().http1.clone()),
            (_, Some(ca_certs)) => match self.client_with_ca(&self.clients(), ca_certs, url) {
                Ok(client) => Client::Reqwest(client),
                Err(e) => return unsendable(e),
            },
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut resends = 0;
        let (parts, body) = loop {
            // Built again for a resend (rare) rather than cloned for every delivery.
            let request = build(&uri);
            match tokio::time::timeout_at(deadline, client.send(request)).await {
                Err(_elapsed) => return no_response(format!("no response within {timeout_ms} ms")),
                Ok(Ok(response)) => break response,
                // Regression: a new connection the subscriber dropped the request on was sent again too, so each
                // attempt reached a subscriber that crashes on an event twice.
                Ok(Err(e)) if resends < MAX_RESENDS && died_before_response(&e) && e.on_a_used_connection() => {
                    resends += 1;
                    metrics::counter!("sluice_dispatch_resends_total").increment(1);
                    let error = e.describe();
                    tracing::debug!(url = %redacted_url(url), %error, "kept-alive connection died before a response; sending again");
                }
                Ok(Err(e)) => return no_response(e.describe()),
            }
        };
        let status = parts.status.as_u16();
        // A 2xx that carries no event (no `ce-specversion`, not structured) is no reply, whoever would take one:
        // its body is read as a discarded one's, not up to the reply limit.
        let reply_use = if carries_an_event(&parts.headers) { reply_use } else { ReplyUse::Discarded };
        let retry_after =
            parts.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now_ms));
        // Of a failure's body nothing but `knativeerrordata`'s first KiB is kept, and a delivery may hold its result
        // through a retry's backoff (up to an hour), so no more is read (the connection is then not reused). A
        // success's body is read whole, within the limit, so that its kept-alive connection goes back to the pool.
        let limit = match (reply_use, (200..300).contains(&status)) {
            (ReplyUse::Wanted, true) => MAX_RESPONSE_BYTES,
            (ReplyUse::Discarded, true) => MAX_DISCARDED_BODY_BYTES,
            (_, false) => MAX_ERROR_DATA_BYTES,
        };
        // A body that may be a reply is read until the deadline; any other, whose status settled the attempt,
        // for a short grace, then dropped (with its connection) keeping what came.
        let read_for =
            body_read_time(reply_use, status, deadline.saturating_duration_since(tokio::time::Instant::now()));
        let (body, problem) = match body {
            ResponseBody::Plain(body) => read_limited(body, limit, read_for).await,
            ResponseBody::Reqwest(body) => read_limited(body, limit, read_for).await,
        };
        let problem = problem.map(|problem| match problem {
            // The attempt's own deadline, as a response that never came is told.
            BodyProblem::Late { .. } if reply_wanted(reply_use, status) => {
                BodyProblem::Cut(format!("response body not complete within {timeout_ms} ms"))
            }
            problem => problem,
        });
        let reply = if reply_wanted(reply_use, status) { parse_reply(&parts.headers, body.clone()) } else { None };
        let (reply, reply_cut) = match (reply, &problem) {
            (Some(_), Some(BodyProblem::Cut(reason))) => (None, Some(reason.clone())),
            (Some(_), Some(too_large @ BodyProblem::TooLarge { .. })) => {
                (Some(Err(format!("the reply's {too_large}"))), None)
            }
            (reply, _) => (reply, None),
        };
        let error = match problem {
            // The rest of an error page was not wanted, nor a discarded body's; a success's body over the limit is
            // no failure either.
            Some(BodyProblem::TooLarge { .. }) if status != 200 || reply_use == ReplyUse::Discarded => None,
            problem => problem.map(|problem| problem.to_string()),
        };
        AttemptResult { status: Some(status), retry_after, body, reply, error, reply_cut, unsendable: false }
    }
}

/// The destination's URL as a request `Uri`. One a `Uri` cannot take as it is (a space, a non-ASCII host) is
/// normalised as a browser would first (percent-encoding, IDNA). A port that is not one (`svc:8o80`,
/// `svc:99999`) is refused: a `Uri` takes it and reads no port, and the request would go to the scheme's
/// default port, another server.
fn parse_uri(url: &str) -> Result<http::Uri, String> {
    if let Ok(uri) = http::Uri::try_from(url)
        && uri.scheme().is_some()
        && uri.host().is_some()
        && uri
            .authority()
            .and_then(|a| port_text(a.as_str()))
            .is_none_or(|port| port.is_empty() || uri.port_u16().is_some())
    {
        return Ok(uri);
    }
    let normalised = reqwest::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    http::Uri::try_from(normalised.as_str()).map_err(|e| format!("invalid URL {url:?}: {e}"))
}

/// `http://HOST:80/…` as `http://HOST/…`: the same destination (RFC 3986 §6.2.3), and a cluster-local name the
/// node serves a Route under then goes to the node's port ([`PlainNames`]: hyper's connector keeps a resolved
/// port only for a URL that names none). Regression (review): `http://NAME.NAMESPACE.svc.cluster.local:80` went to
/// port 80 of the node's address.
fn without_default_port(uri: http::Uri) -> http::Uri {
    // Written exactly `:80`: `:080` is port 80 too, and cutting its last three characters would leave `:0`.
    let default_port = uri.scheme() == Some(&http::uri::Scheme::HTTP)
        && uri.authority().and_then(|a| port_text(a.as_str())) == Some("80");
    let Some(authority) = uri.authority().filter(|_| default_port).and_then(|a| a.as_str().strip_suffix(":80")) else {
        return uri;
    };
    let Ok(authority) = http::uri::Authority::try_from(authority) else { return uri };
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(authority);
    http::Uri::from_parts(parts).unwrap_or(uri)
}

/// The text after an authority's host, its port (`None`: no `:`); an IPv6 host's colons are not it.
fn port_text(authority: &str) -> Option<&str> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let after_host = host_port.rfind(']').map_or(host_port, |end| &host_port[end + 1..]);
    after_host.split_once(':').map(|(_, port)| port)
}

/// Reads `body` within `limit` bytes for at most `allowed`. Whatever stops it (the limit, an error, the time),
/// what came is kept: the start of an error page is still `knativeerrordata`. Dropped on return, a body not read
/// to its end closes its HTTP/1.1 connection.
async fn read_limited<B>(mut body: B, limit: usize, allowed: Duration) -> (Bytes, Option<BodyProblem>)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    // One timer for the whole body, not one per frame.
    let mut late = std::pin::pin!(tokio::time::sleep(allowed));
    let mut collected = bytes::BytesMut::new();
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = &mut late => return (collected.freeze(), Some(BodyProblem::Late { allowed })),
        };
        match frame {
            Some(Ok(frame)) => {
                let Some(chunk) = frame.data_ref() else { continue };
                if collected.len() + chunk.len() > limit {
                    // What fits is kept: the start of an error page is still `knativeerrordata`.
                    collected.extend_from_slice(&chunk[..limit - collected.len()]);
                    return (collected.freeze(), Some(BodyProblem::TooLarge { limit }));
                }
                collected.extend_from_slice(chunk);
            }
            None => return (collected.freeze(), None),
            Some(Err(e)) => {
                return (collected.freeze(), Some(BodyProblem::Cut(format!("reading the response body: {e}"))));
            }
        }
    }
}

/// Whether the request was lost with its connection before any of the response arrived: the server closed
/// (or reset) a kept-alive connection, typically because it was idle, as the request went out on it. Failed
/// connects are not this (timeouts are told apart before). Sending again is safe for delivery, which is at
/// least once (subscribers dedupe by `id`); a subscriber that crashes mid-request is also sent the event once
/// more, as a retry would.
fn died_before_response(error: &SendError) -> bool {
    if error.is_connect() {
        return false;
    }
    if let SendError::Reqwest(e) = error
        && (e.is_timeout() || e.is_body() || e.is_decode())
    {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_error());
    while let Some(current) = source {
        if let Some(hyper_error) = current.downcast_ref::<hyper::Error>()
            && hyper_error.is_incomplete_message()
        {
            return true;
        }
        if let Some(io_error) = current.downcast_ref::<std::io::Error>()
            && matches!(
                io_error.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = current.source();
    }
    false
}

/// Whether a response is a CloudEvent in structured mode, by its `Content-Type`.
fn is_structured(headers: &http::HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| cloudevent::media_essence(c).0 == "application/cloudevents+json")
}

/// Whether a response's body is a CloudEvent by its headers, in structured mode or in binary mode
/// (`ce-specversion`), as the HTTP binding tells them apart.
fn carries_an_event(headers: &http::HeaderMap) -> bool {
    is_structured(headers) || is_batched(headers) || headers.contains_key("ce-specversion")
}

/// Whether a response is in batched mode (`application/cloudevents-batch+json`): events, but not a reply.
fn is_batched(headers: &http::HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| cloudevent::media_essence(c).0 == "application/cloudevents-batch+json")
}

/// A 200's body as a reply event: binary mode (`ce-specversion` present) or structured mode; `None` when the
/// response carries no event.
/// The HTTP binding (§3) tells the modes apart by `Content-Type` first: `application/cloudevents+json` is a
/// structured reply whatever `ce-` headers come with it; otherwise `ce-specversion` makes a binary one.
fn parse_reply(headers: &http::HeaderMap, body: Bytes) -> Option<Result<CloudEvent, String>> {
    let content_type = headers.get("content-type").map(|v| v.as_bytes());
    if is_structured(headers) {
        return Some(cloudevent::from_structured(&body).map_err(|e| e.to_json().to_string()));
    }
    // A reply is one event (Knative's data plane); a batch is refused as an invalid reply, not taken for none.
    // Regression: its events were dropped without a word and the delivery counted as done.
    if is_batched(headers) {
        return Some(Err(
            "a reply in batched mode (application/cloudevents-batch+json) is not taken: reply with one event, in \
             binary or structured mode"
                .into(),
        ));
    }
    headers.contains_key("ce-specversion").then(|| {
        let ce_headers =
            headers.iter().filter(|(k, _)| k.as_str().starts_with("ce-")).map(|(k, v)| (k.as_str(), v.as_bytes()));
        cloudevent::from_binary(ce_headers, content_type, body).map_err(|e| e.to_json().to_string())
    })
}

/// `Retry-After`: delay-seconds, or an HTTP-date converted to an instant on the wall clock (`now_ms`'s clock).
pub(crate) fn parse_retry_after(value: &str, now_ms: u64) -> Option<RetryAfter> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than a u64 holds is still a delay, longer than any cap (`retryAfterMax`, the hour).
        return Some(RetryAfter::Seconds(value.parse::<u64>().unwrap_or(u64::MAX)));
    }
    // IMF-fixdate, and the obsolete RFC 850 and asctime forms that RFC 9110 says recipients must accept.
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
    Some(RetryAfter::AtMs(at_ms.max(now_ms)))
}

#[cfg(test)]
mod tests;
