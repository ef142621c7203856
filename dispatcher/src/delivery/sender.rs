//! HTTP push: one attempt to POST one CloudEvent to one URL, and what came back.
//!
//! Binary mode by default (attributes as `ce-` headers encoded by `cloudevent::encode_header_value`,
//! `datacontenttype` as `Content-Type`, data as the body, byte for byte); structured mode (`application/cloudevents+json`) when the DeliverySpec
//! says `format: json`. Every request carries `Prefer: reply` and a W3C `traceparent`. Connections are pooled
//! and kept alive per host by the HTTP clients (one for HTTP/1.1, one for h2c with prior knowledge). A
//! destination with an OIDC audience is sent `Authorization: Bearer` with the token Sluice minted for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_cloudevent::{self as cloudevent, AttrValue, CloudEvent, EventData};

use crate::consumer::{Format, Protocol};
use crate::delivery::policy::RetryAfter;

/// The most of a response body that is read: a reply event must fit, and `knativeerrordata` is cut from it.
pub(crate) const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Idle pooled connections kept per host: at least what a node has in flight to one subscriber (a Trigger's
/// window, 100 by default, on each of the node's partitions), or every completion beyond the pool closes a
/// connection that the next delivery opens again. At 64, half the deliveries of a backlog drain opened a
/// connection (docs/benchmarks.md, session 14). Idle connections go after `POOL_IDLE_TIMEOUT`.
pub(crate) const MAX_IDLE_PER_HOST: usize = 512;
/// How long an idle pooled connection is kept. Under the idle timeouts servers commonly close kept-alive
/// connections at (Node.js 5 s, Sluice's own HTTP port 10 s through its header-read timeout): a connection the
/// server is closing at the moment it is reused loses the request, and a shorter pool avoids that race.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Times one attempt is sent again when its kept-alive connection died before any response byte (see
/// [`died_before_response`]). Not a DeliverySpec retry: it is not counted, and a Trigger without retries gets it.
pub(crate) const MAX_RESENDS: u32 = 1;

/// What one attempt produced.
#[derive(Debug, Default)]
pub(crate) struct AttemptResult {
    /// `None`: no response (connection error or timeout).
    pub status: Option<u16>,
    pub retry_after: Option<RetryAfter>,
    /// The response body (at most [`MAX_RESPONSE_BYTES`]).
    pub body: Bytes,
    /// A reply event in a 200 response: parsed and validated, or why it is not a valid event.
    pub reply: Option<Result<CloudEvent, String>>,
    /// Why there was no response, or why the body could not be read.
    pub error: Option<String>,
}

/// Resolves every `*.localhost` name to loopback, as RFC 6761 asks and as browsers and curl do (the system
/// resolver here does not), so that a subscriber URL of a Knative Service served by this machine
/// (`http://hello.default.localhost:8080`) reaches the node's HTTP port; other names go to the system resolver.
struct LoopbackNames;

impl reqwest::dns::Resolve for LoopbackNames {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        Box::pin(async move {
            if host == "localhost" || host.ends_with(".localhost") {
                let addrs: reqwest::dns::Addrs =
                    Box::new([std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))].into_iter());
                return Ok(addrs);
            }
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
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
        .connect_timeout(Duration::from_secs(5))
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
    pub(crate) fn new(tls: Option<sluice_security::Tls>) -> Result<Self, String> {
        let generation = tls.as_ref().map_or(0, sluice_security::Tls::generation);
        let clients = Clients::build(generation, tls.as_ref().map(|tls| tls.ca_pem().into()))?;
        let h2c =
            client_builder().http2_prior_knowledge().build().map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Sender { tls, clients: Arc::new(std::sync::RwLock::new(Arc::new(clients))), h2c })
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

    /// One attempt: POSTs `event` to `url`, waiting at most `timeout_ms` for the whole response.
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
    ) -> AttemptResult {
        let client = match (protocol, ca_certs) {
            // h2c is plaintext by definition; an https URL goes over HTTP/1.1 with TLS.
            (Protocol::H2c, _) if !url.starts_with("https:") => self.h2c.clone(),
            (_, None) => self.clients().http1.clone(),
            (_, Some(ca_certs)) => match self.client_with_ca(&self.clients(), ca_certs, url) {
                Ok(client) => client,
                Err(e) => return AttemptResult { error: Some(e), ..Default::default() },
            },
        };
        let client = &client;
        let mut resends = 0;
        let response = loop {
            // Built again for a resend (rare) rather than cloned for every delivery.
            match build_request(client, url, format, event, authorization, timeout_ms).send().await {
                Ok(response) => break response,
                Err(e) if resends < MAX_RESENDS && died_before_response(&e) => {
                    resends += 1;
                    metrics::counter!("sluice_dispatch_resends_total").increment(1);
                    tracing::debug!(%url, error = %e, "kept-alive connection died before a response; sending again");
                }
                Err(e) => {
                    return AttemptResult { error: Some(describe_error(&e, timeout_ms)), ..Default::default() };
                }
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let retry_after =
            headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now_ms));
        let (body, error) = read_limited(response, MAX_RESPONSE_BYTES).await;
        let reply = if status == 200 { parse_reply(&headers, body.clone()) } else { None };
        AttemptResult { status: Some(status), retry_after, body, reply, error }
    }
}

/// The POST of one attempt: binary or structured, with `Prefer: reply` and the event's `traceparent`.
fn build_request(
    client: &reqwest::Client,
    url: &str,
    format: Format,
    event: &CloudEvent,
    token: Option<&str>,
    timeout_ms: u64,
) -> reqwest::RequestBuilder {
    use reqwest::header::{HeaderName, HeaderValue};
    let mut request = client
        .post(url)
        .timeout(Duration::from_millis(timeout_ms))
        .header(HeaderName::from_static("prefer"), HeaderValue::from_static("reply"))
        .header(HeaderName::from_static("traceparent"), traceparent(event));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match format {
        Format::Binary => {
            for (name, value) in &event.attributes {
                if name == "datacontenttype" {
                    continue;
                }
                let value = value.to_canonical_string();
                match (ce_header_name(name), HeaderValue::from_bytes(cloudevent::encode_header_value(&value))) {
                    (Some(header_name), Ok(header)) => request = request.header(header_name, header),
                    // Validation keeps control characters out of attribute names and values, so this cannot happen.
                    _ => tracing::warn!(attribute = %name, "attribute cannot be a header; not sent"),
                }
            }
            let content_type = event.get_str("datacontenttype").map(str::to_string).or_else(|| match &event.data {
                Some(EventData::Json(_)) => Some("application/json".to_string()),
                _ => None,
            });
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            request = request.body(event.binary_body());
        }
        Format::Structured => {
            request = request.header("content-type", "application/cloudevents+json").body(event.to_json_string());
        }
    }
    request
}

/// The `ce-` header of an attribute. The spec's attributes (and those every Sluice delivery carries) are
/// static names, neither allocated nor parsed per delivery; an extension's name is built.
fn ce_header_name(attribute: &str) -> Option<reqwest::header::HeaderName> {
    let known = match attribute {
        "id" => "ce-id",
        "source" => "ce-source",
        "type" => "ce-type",
        "specversion" => "ce-specversion",
        "time" => "ce-time",
        "subject" => "ce-subject",
        "dataschema" => "ce-dataschema",
        "knativearrivaltime" => "ce-knativearrivaltime",
        "traceparent" => "ce-traceparent",
        "tracestate" => "ce-tracestate",
        "partitionkey" => "ce-partitionkey",
        _ => return reqwest::header::HeaderName::try_from(format!("ce-{attribute}")).ok(),
    };
    Some(reqwest::header::HeaderName::from_static(known))
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> (Bytes, Option<String>) {
    let mut body = bytes::BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return (body.freeze(), Some(format!("response body larger than {limit} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return (body.freeze(), None),
            Err(e) => return (body.freeze(), Some(format!("reading the response body: {e}"))),
        }
    }
}

/// Whether the request was lost with its connection before any of the response arrived: the server closed
/// (or reset) a kept-alive connection, typically because it was idle, as the request went out on it. Timeouts and
/// failed connects are not this. Sending again is safe for delivery, which is at least once (subscribers dedupe
/// by `id`); a subscriber that crashes mid-request is also sent the event once more, as a retry would.
fn died_before_response(error: &reqwest::Error) -> bool {
    if error.is_timeout() || error.is_connect() || error.is_body() || error.is_decode() {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
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

fn describe_error(error: &reqwest::Error, timeout_ms: u64) -> String {
    if error.is_timeout() {
        format!("no response within {timeout_ms} ms")
    } else if error.is_connect() {
        format!("connection failed: {error}")
    } else {
        error.to_string()
    }
}

/// A 200's body as a reply event: binary mode (`ce-specversion` present) or structured mode; `None` when the
/// response carries no event.
fn parse_reply(headers: &reqwest::header::HeaderMap, body: Bytes) -> Option<Result<CloudEvent, String>> {
    let content_type = headers.get("content-type").map(|v| v.as_bytes());
    if headers.contains_key("ce-specversion") {
        let ce_headers =
            headers.iter().filter(|(k, _)| k.as_str().starts_with("ce-")).map(|(k, v)| (k.as_str(), v.as_bytes()));
        return Some(cloudevent::from_binary(ce_headers, content_type, body).map_err(|e| e.to_json().to_string()));
    }
    let structured = content_type
        .and_then(|c| std::str::from_utf8(c).ok())
        .map(|c| cloudevent::media_essence(c).0 == "application/cloudevents+json")
        .unwrap_or(false);
    structured.then(|| cloudevent::from_structured(&body).map_err(|e| e.to_json().to_string()))
}

/// `Retry-After`: delay-seconds, or an HTTP-date converted to an instant on the wall clock (`now_ms`'s clock).
pub(crate) fn parse_retry_after(value: &str, now_ms: u64) -> Option<RetryAfter> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(RetryAfter::Seconds(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at_ms = at.timestamp_millis().max(0) as u64;
    Some(RetryAfter::AtMs(at_ms.max(now_ms)))
}

/// The event's own `traceparent` (distributed tracing extension), or one derived from its `source` and `id`,
/// so that every attempt of one event shares a trace.
pub(crate) fn traceparent(event: &CloudEvent) -> String {
    if let Some(AttrValue::String(existing)) = event.get("traceparent")
        && is_traceparent(existing)
    {
        return existing.clone();
    }
    let source = event.get_str("source").unwrap_or_default();
    let id = event.get_str("id").unwrap_or_default();
    let high = cloudevent::stable_hash(&[source.as_bytes(), b"\0", id.as_bytes()]);
    let low = cloudevent::stable_hash(&[id.as_bytes(), b"\0", source.as_bytes()]);
    let span = cloudevent::stable_hash(&[b"span", source.as_bytes(), id.as_bytes()]);
    format!("00-{high:016x}{low:016x}-{:016x}-01", span.max(1))
}

fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, part)| part.len() == *len && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("3", 0), Some(RetryAfter::Seconds(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 0), Some(RetryAfter::AtMs(1_445_412_480_000)));
        assert_eq!(parse_retry_after("soon", 0), None);
    }

    #[test]
    fn ce_header_names_are_the_attribute_names_prefixed() {
        for attribute in [
            "id",
            "source",
            "type",
            "specversion",
            "time",
            "subject",
            "dataschema",
            "knativearrivaltime",
            "traceparent",
            "tracestate",
            "partitionkey",
            "myextension",
            "a1",
        ] {
            let name = ce_header_name(attribute).expect("a valid header name");
            assert_eq!(name.as_str(), format!("ce-{attribute}"));
        }
    }

    #[test]
    fn traceparent_is_kept_or_derived_stably() {
        let mut event = cloudevent::from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#)
            .expect("valid event");
        let derived = traceparent(&event);
        assert!(is_traceparent(&derived), "{derived}");
        assert_eq!(derived, traceparent(&event));
        let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        event.attributes.insert("traceparent".into(), AttrValue::String(own.into()));
        assert_eq!(traceparent(&event), own);
    }

    /// A subscriber that answers the first request on each connection and, keeping it alive, closes it when the
    /// next request arrives without answering (what a server closing an idle connection does as it is reused).
    /// `answer_first: false`: it closes every connection without answering.
    async fn closing_subscriber(answer_first: bool) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut answered = !answer_first;
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One whole request: its head, then the body its content-length names.
                        let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buffer.len() < head_end + 4 + length {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        }
                        buffer.drain(..head_end + 4 + length);
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if answered {
                            return; // closes the connection: the request is lost with it
                        }
                        answered = true;
                        if stream.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, requests)
    }

    fn event() -> CloudEvent {
        cloudevent::from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"n":1}}"#)
            .expect("valid event")
    }

    #[tokio::test]
    async fn regression_idle_connection_closed_as_it_is_reused_loses_no_event() {
        let (url, requests) = closing_subscriber(true).await;
        let sender = Sender::new(None).expect("client");
        let first = sender.send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0).await;
        assert_eq!(first.status, Some(202), "{first:?}");
        // Goes out on the kept-alive connection, which the subscriber closes: sent again on a new one.
        let second = sender.send(&url, None, Protocol::Http1, Format::Binary, &event(), None, 5_000, 0).await;
        assert_eq!(second.status, Some(202), "{second:?}");
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_subscriber_that_always_drops_the_connection_is_sent_to_once_more_only() {
        let (url, requests) = closing_subscriber(false).await;
        let sender = Sender::new(None).expect("client");
        let result = sender.send(&url, None, Protocol::Http1, Format::Structured, &event(), None, 5_000, 0).await;
        assert_eq!(result.status, None, "{result:?}");
        assert!(result.error.is_some());
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1 + MAX_RESENDS as usize);
    }
}
