//! CloudEvents ingress over HTTP: `POST /{namespace}/{broker}` and
//! `POST /channels/{namespace}/{channel}`. Parses binary, structured and
//! batched requests (`cloudevent`), adds Knative's attributes, picks the
//! partition, appends through the node (202 only once committed), and turns
//! every refusal into a 4xx/5xx with a JSON body naming the field and rule.

pub(crate) mod authorize;
mod body;
mod connections;
pub(crate) mod http;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use sluice_controller::validate::{is_dns_label, is_dns_subdomain};

use crate::cloudevent::{self, AttributeLimits, EventError};
use crate::command::ResourceKey;
use crate::error::BrokerError;
use crate::node::Node;
use crate::node::publish::{PublishError, publish_events};
use crate::resources::IngressSettings;
pub(crate) use body::ConnectionBodyShare;
use body::{BodyBudget, BodyPermit, DISCARD_MAX_BYTES, discard_body, read_body};

/// Bounds of the HTTP ingress (all configurable).
#[derive(Clone, Debug)]
pub struct IngressLimits {
    pub max_event_bytes: usize,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Of `max_connections`, what one client address (an IPv6 /64) may hold at once.
    pub max_connections_per_address: usize,
    /// Whether loopback clients count against `max_connections_per_address` (the node's own dispatcher and a
    /// sidecar connect from loopback).
    pub limit_loopback_connections: bool,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// A connection with no byte moving either way for this long is shut down gracefully.
    pub idle_connection_timeout: Duration,
    /// Request bodies held at once over every connection, from their first byte until their answer (never
    /// less than the largest body allowed).
    pub max_inflight_body_bytes: usize,
    /// What one connection's requests may hold of `max_inflight_body_bytes` at once (never less than the
    /// largest body allowed).
    pub max_inflight_body_bytes_per_connection: usize,
}

impl Default for IngressLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1 << 20,
            max_batch_events: 1000,
            max_batch_bytes: 4 << 20,
            max_headers: 100,
            max_header_bytes: 16 << 10,
            max_connections: 4096,
            max_connections_per_address: 1024,
            limit_loopback_connections: false,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_connection_timeout: Duration::from_secs(60),
            max_inflight_body_bytes: 256 << 20,
            max_inflight_body_bytes_per_connection: 32 << 20,
        }
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Broker { namespace: String, name: String },
    Channel { namespace: String, name: String },
}

impl Target {
    pub(crate) fn stream(&self) -> String {
        match self {
            Target::Broker { namespace, name } => crate::resources::stream_name("Broker", namespace, name),
            Target::Channel { namespace, name } => crate::resources::stream_name("Channel", namespace, name),
        }
    }

    fn namespace_and_name(&self) -> (&str, &str) {
        match self {
            Target::Broker { namespace, name } | Target::Channel { namespace, name } => (namespace, name),
        }
    }
}

pub(crate) fn parse_target(path: &str) -> Result<Target, EventError> {
    let malformed = || {
        EventError::bad("malformed path").rule(
            "POST /{namespace}/{broker} or /channels/{namespace}/{channel}: the namespace a DNS-1123 label, the \
                 name a DNS-1123 subdomain",
        )
    };
    let segments: Vec<&str> = path.trim_start_matches('/').trim_end_matches('/').split('/').collect();
    let (namespace, name, channel) = match segments.as_slice() {
        [namespace, name] => (*namespace, *name, false),
        ["channels", namespace, name] => (*namespace, *name, true),
        _ => return Err(malformed()),
    };
    if !is_dns_label(namespace) || !is_dns_subdomain(name) {
        return Err(malformed());
    }
    let (namespace, name) = (namespace.to_string(), name.to_string());
    Ok(if channel { Target::Channel { namespace, name } } else { Target::Broker { namespace, name } })
}

/// The ingress state shared by requests: the node, limits, and the brokers'
/// and channels' settings, rebuilt whenever a resource changes.
#[derive(Clone)]
pub(crate) struct Ingress {
    node: Node,
    limits: Arc<IngressLimits>,
    targets: Arc<RwLock<Arc<Targets>>>,
    /// The metadata group's resource version: a request that finds the targets built from an older one rebuilds
    /// them first, so that a Broker just created is found (not 404) and one just deleted is not (not 202).
    resources_version: Option<tokio::sync::watch::Receiver<u64>>,
    body_budget: BodyBudget,
}

/// The Brokers and Channels, as of one resource version.
#[derive(Default)]
struct Targets {
    version: u64,
    by_target: HashMap<Target, TargetState>,
}

/// What a request to one Broker or Channel is checked against.
#[derive(Clone)]
struct TargetState {
    settings: IngressSettings,
    /// The EventPolicies that apply (only computed with sender identity on).
    policies: Arc<Vec<authorize::CompiledPolicy>>,
}

impl Ingress {
    pub(crate) fn new(node: Node, limits: IngressLimits) -> Self {
        let body_budget =
            BodyBudget::new(limits.max_inflight_body_bytes.max(limits.max_batch_bytes).max(limits.max_event_bytes));
        let resources_version = node.watch_resources();
        let ingress = Self {
            node: node.clone(),
            limits: Arc::new(limits),
            targets: Arc::default(),
            resources_version: resources_version.clone(),
            body_budget,
        };
        if let Some(mut changes) = resources_version {
            let ingress = ingress.clone();
            tokio::spawn(async move {
                loop {
                    ingress.refresh_targets();
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
        ingress
    }

    pub(crate) fn limits(&self) -> &IngressLimits {
        &self.limits
    }

    fn refresh_targets(&self) {
        // Read before the resources: they are at least as new as it (the version moves after they are written),
        // so targets never claim a version newer than what they were built from.
        let version = self.current_version();
        // EventPolicies are enforced only with sender identity on (Knative's rule); their `from` may name any
        // kind, so every object is read then.
        let objects: Vec<serde_json::Value> = if self.node.settings().authenticator.is_some() {
            sluice_controller::model::KINDS
                .iter()
                .flat_map(|kind| self.node.resources(kind.kind))
                .filter_map(|(_, json)| serde_json::from_str(&json).ok())
                .collect()
        } else {
            Vec::new()
        };
        let world = sluice_controller::status::World { objects: &objects };
        let mut targets = HashMap::new();
        for (kind, channel) in [("Broker", false), ("Channel", true), ("InMemoryChannel", true)] {
            for (ResourceKey { namespace, name, .. }, json) in self.node.resources(kind) {
                let policies = match serde_json::from_str::<serde_json::Value>(&json) {
                    Ok(object) if !objects.is_empty() => {
                        authorize::compile_policies(sluice_controller::policy::applied_policies(&object, &world))
                    }
                    _ => Vec::new(),
                };
                let target =
                    if channel { Target::Channel { namespace, name } } else { Target::Broker { namespace, name } };
                let state = TargetState { settings: IngressSettings::from_object(&json), policies: Arc::new(policies) };
                targets.insert(target, state);
            }
        }
        if let Ok(mut guard) = self.targets.write()
            && guard.version <= version
        {
            *guard = Arc::new(Targets { version, by_target: targets });
        }
    }

    fn current_version(&self) -> u64 {
        self.resources_version.as_ref().map_or(0, |version| *version.borrow())
    }

    /// The target's state as of the node's latest resources: the targets are rebuilt here first when a change
    /// has not reached them yet (the task that follows the changes may not have run).
    fn target(&self, target: &Target) -> Option<TargetState> {
        let built_from = self.targets.read().map(|t| t.version).unwrap_or(0);
        if built_from < self.current_version() {
            self.refresh_targets();
        }
        self.targets.read().ok().and_then(|t| t.by_target.get(target).cloned())
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error_response(error: &EventError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, error.to_json())
}

fn retry_later(status: StatusCode, error: &str, reason: String) -> Response {
    let mut response = json_response(status, serde_json::json!({ "error": error, "rule": reason }));
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn broker_error_response(error: BrokerError) -> Response {
    match &error {
        BrokerError::QueueFull { .. } => {
            retry_later(StatusCode::TOO_MANY_REQUESTS, "partition queue is full", error.to_string())
        }
        BrokerError::AppendTooLarge { .. } => json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            serde_json::json!({ "error": "request too large", "rule": error.to_string() }),
        ),
        // Not worth retrying here (no Retry-After): the node's `/readyz` says so too, so a load balancer sends
        // the producer's requests to another node.
        BrokerError::RemovedFromCluster => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "not accepted by this node", "rule": error.to_string() }),
        ),
        BrokerError::NoLeader { .. }
        | BrokerError::ForwardFailed { .. }
        | BrokerError::NotInitialized
        | BrokerError::ShuttingDown
        | BrokerError::Indeterminate { .. }
        | BrokerError::Interrupted { .. } => {
            retry_later(StatusCode::SERVICE_UNAVAILABLE, "not accepted; retry", error.to_string())
        }
        _ => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({
                "error": error.to_string(),
                "rule": "the node failed, not the request: not stored; its log has the details",
            }),
        ),
    }
}

const ALLOW: &str = "POST, OPTIONS";

enum Mode {
    Binary,
    Structured,
    Batch,
}

/// The HTTP binding (§3) tells the modes apart by `Content-Type` first: `application/cloudevents+json` is
/// structured (and `-batch+json` batched) whatever `ce-` headers come with it; any other type is binary mode's
/// `datacontenttype`.
fn mode_of(headers: &HeaderMap) -> Result<Mode, EventError> {
    let binary_headers = headers.contains_key("ce-specversion");
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else { return Ok(Mode::Binary) };
    let Ok(content_type) = content_type.to_str() else {
        if binary_headers {
            return Ok(Mode::Binary);
        }
        return Err(EventError::bad("invalid Content-Type").attribute("content-type").rule("must be ASCII"));
    };
    let (essence, charset) = cloudevent::media_essence(content_type);
    let unsupported = |rule: &str| {
        EventError::bad("unsupported media type").attribute("content-type").rule(rule.to_string()).status(415)
    };
    let mode = match essence.as_str() {
        "application/cloudevents+json" => Mode::Structured,
        "application/cloudevents-batch+json" => Mode::Batch,
        _ if binary_headers => return Ok(Mode::Binary),
        other if other.starts_with("application/cloudevents") => {
            return Err(unsupported(
                "structured events must be application/cloudevents+json, batches application/cloudevents-batch+json",
            ));
        }
        _ => return Ok(Mode::Binary),
    };
    // Parameters that do not parse hide the charset: refused rather than read as UTF-8. Regression: `charset=utf-16;
    // x` was taken for no charset, and the body refused as invalid UTF-8 instead of its media type.
    if !cloudevent::is_media_type(content_type) {
        return Err(unsupported("Content-Type parameters must be name=value (a token or a quoted string)"));
    }
    if charset.as_deref().is_some_and(|c| c != "utf-8") {
        return Err(unsupported("the JSON event formats are UTF-8 (charset=utf-8 or none)"));
    }
    Ok(mode)
}

fn check_headers(headers: &HeaderMap, limits: &IngressLimits) -> Result<(), EventError> {
    if headers.len() > limits.max_headers {
        return Err(EventError::bad("too many headers")
            .rule(format!("at most {} headers", limits.max_headers))
            .status(431));
    }
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if bytes > limits.max_header_bytes {
        return Err(EventError::bad("headers too large")
            .rule(format!("at most {} bytes of headers", limits.max_header_bytes))
            .status(431));
    }
    Ok(())
}

/// A request with a `Content-Encoding` other than `identity` is refused (415): the node does not decode content
/// codings, and a gzipped body would be stored as the event's data under its `datacontenttype`.
fn check_content_encoding(headers: &HeaderMap) -> Result<(), EventError> {
    let refused = || {
        EventError::bad("unsupported content coding")
            .attribute("content-encoding")
            .rule("the node does not decode content codings: send the body uncoded (no Content-Encoding, or identity)")
            .status(415)
    };
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let codings = value.to_str().map_err(|_| refused())?;
        let coded = |coding: &str| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity");
        if codings.split(',').map(str::trim).any(coded) {
            return Err(refused());
        }
    }
    Ok(())
}

/// What is refused from the request's head alone, before its body is read: the header limits (431), a content
/// coding (415, with `Accept-Encoding: identity`, as RFC 9110 §15.5.16 suggests), and what the content type does
/// not allow (400, 415).
fn check_head(headers: &HeaderMap, limits: &IngressLimits) -> Result<Mode, Box<Response>> {
    check_headers(headers, limits).map_err(|e| Box::new(error_response(&e)))?;
    if let Err(e) = check_content_encoding(headers) {
        let mut response = error_response(&e);
        response.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        return Err(Box::new(response));
    }
    mode_of(headers).map_err(|e| Box::new(error_response(&e)))
}

/// The bounds on an event's attributes: the header limits, less what a binary-mode delivery adds to the event's
/// `ce-` headers (docs/ingress.md, "Attribute limits"), so that an event accepted at the limit is delivered
/// within the same header limits, to another Sluice Broker or Channel too. The count includes the attributes
/// the node adds on arrival ([`AttributeLimits::check`]).
fn attribute_limits(limits: &IngressLimits) -> AttributeLimits {
    AttributeLimits::within_headers(limits.max_headers, limits.max_header_bytes)
}

/// Every event must fit the headers it will be delivered with (binary mode, every attribute a `ce-` header, the
/// node's own attributes added). Accepted, an event of 150,000 extensions or one 900 KB attribute would be
/// stored and then refused by every subscriber (431) until it was dead-lettered. A batch's refusal names the
/// `index` of its event, a batch of one included.
/// The request's W3C Trace Context (`traceparent`, `tracestate` headers) on each event that has no trace of its own
/// ([`cloudevent::adopt_trace_context`]), so that the producer's trace goes on to the subscribers; taken back off
/// an event that no longer fits its attribute limits with it (the producer did not send it as the event's: it
/// must not get the event refused). Before session 62 the headers were dropped and every delivery began a trace
/// of its own.
fn adopt_trace_context(
    events: &mut [cloudevent::CloudEvent],
    traceparent: &HeaderValue,
    tracestate_lines: header::GetAll<'_, HeaderValue>,
    limits: &AttributeLimits,
    default_ttl: i64,
) {
    // W3C: a `tracestate` split over several header lines is one list, the lines joined by commas. Regression:
    // only the first line was kept.
    let lines: Vec<&[u8]> = tracestate_lines.iter().map(HeaderValue::as_bytes).collect();
    let tracestate = (!lines.is_empty()).then(|| lines.join(&b","[..]));
    for event in events {
        if cloudevent::adopt_trace_context(event, traceparent.as_bytes(), tracestate.as_deref())
            && limits.check(event, default_ttl).is_err()
        {
            cloudevent::forget_trace_context(event);
        }
    }
}

fn check_attributes(
    events: &[cloudevent::CloudEvent],
    limits: &AttributeLimits,
    default_ttl: i64,
    batch: bool,
) -> Result<(), EventError> {
    for (index, event) in events.iter().enumerate() {
        limits.check(event, default_ttl).map_err(|e| if batch { e.at_index(index) } else { e })?;
    }
    Ok(())
}

/// A refusal sent before the body is read: the body is read and dropped first, at most [`DISCARD_MAX_BYTES`] of
/// it within `--body-read-timeout-ms`, since an HTTP/1.1 connection closed on unread data is reset and its client
/// may never see the answer. A client awaiting `100 Continue` has sent no body and is not asked for it. The
/// connection is closed unless the whole body was read.
async fn refuse_unread(mut response: Response, body: Body, headers: &HeaderMap, limits: &IngressLimits) -> Response {
    let read_whole = !awaits_continue(headers) && discard_body(body, DISCARD_MAX_BYTES, limits.body_read_timeout).await;
    if !read_whole {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Whether the client waits for `100 Continue` before it sends the body.
fn awaits_continue(headers: &HeaderMap) -> bool {
    headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

pub(crate) use sluice_cloudevent::event_type_label;

/// Knative's `event_count` and `event_dispatch_latencies` of the ingress, by Broker or Channel, event type and
/// response code.
static INGRESS_EVENT_METRICS: std::sync::LazyLock<crate::telemetry::EventMetrics> =
    std::sync::LazyLock::new(Default::default);

// Handles kept, taken at the first request (after the node installed its recorder): each `histogram!` looks its
// key up in the recorder's registry.
static REQUEST_BYTES: std::sync::LazyLock<metrics::Histogram> =
    std::sync::LazyLock::new(|| metrics::histogram!("sluice_ingress_request_bytes"));
static BATCH_EVENTS: std::sync::LazyLock<metrics::Histogram> =
    std::sync::LazyLock::new(|| metrics::histogram!("sluice_ingress_batch_events"));

fn record_events(target: &Target, type_counts: &[(String, u64)], status: StatusCode, started: Instant) {
    let (namespace, name) = target.namespace_and_name();
    let code = status.as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    for (event_type, count) in type_counts {
        INGRESS_EVENT_METRICS.record(&[namespace, name], event_type, code, *count, ms, || {
            vec![
                ("broker_name", name.to_string()),
                ("namespace_name", namespace.to_string()),
                ("event_type", event_type_label(event_type)),
                ("response_code", code.to_string()),
                ("response_code_class", format!("{}xx", code / 100)),
            ]
        });
    }
}

/// How many events of each type a request carried, in the order each type first appears: one metric update per
/// type, not per event (batches), and one `String` per type.
fn count_types(events: &[cloudevent::CloudEvent]) -> Vec<(String, u64)> {
    let mut counts: Vec<(String, u64)> = Vec::new();
    for event in events {
        let event_type = event.get_str("type").unwrap_or_default();
        match counts.iter_mut().find(|(seen, _)| seen == event_type) {
            Some((_, count)) => *count += 1,
            // A linear search: a request's events almost always share one type, and the batch limit bounds
            // the rest.
            None => counts.push((event_type.to_string(), 1)),
        }
    }
    counts
}

/// The handler behind every path that is not `/healthz`, `/readyz` or `/metrics`.
/// Takes the request whole: Axum's `Method`, `Uri` and `HeaderMap` extractors each clone their part.
pub(crate) async fn handle(State(ingress): State<Arc<Ingress>>, request: axum::extract::Request) -> Response {
    let started = Instant::now();
    let (axum::http::request::Parts { method, uri, headers, extensions, .. }, body) = request.into_parts();
    let limits = ingress.limits();
    let target = match parse_target(uri.path()) {
        Ok(target) => target,
        Err(e) => return refuse_unread(error_response(&e), body, &headers, limits).await,
    };
    if method == Method::OPTIONS {
        let origin = headers.get("webhook-request-origin").cloned().unwrap_or(HeaderValue::from_static("*"));
        let rate = headers.get("webhook-request-rate").cloned().unwrap_or(HeaderValue::from_static("*"));
        let mut response = StatusCode::OK.into_response();
        let h = response.headers_mut();
        h.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        h.insert("webhook-allowed-origin", origin);
        h.insert("webhook-allowed-rate", rate);
        return response;
    }
    if method != Method::POST {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({ "error": "method not allowed", "rule": "events are sent with POST" }),
        );
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        return refuse_unread(response, body, &headers, limits).await;
    }
    // Before the target is looked up: an unauthenticated sender learns nothing of what exists.
    let subject = match authenticate(&ingress, &target, &headers) {
        Ok(subject) => subject,
        Err(refused) => return refuse_unread(*refused, body, &headers, limits).await,
    };
    let Some(state) = ingress.target(&target) else {
        let (namespace, name) = target.namespace_and_name();
        let kind = if matches!(target, Target::Broker { .. }) { "broker" } else { "channel" };
        // Unknown here may only mean "not replicated here yet": retryable, not a definite 404.
        let response = match ingress.node.metadata_caught_up() {
            Err(reason) => retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("unknown {kind} {namespace}/{name} on this node yet; retry"),
                reason,
            ),
            Ok(()) => json_response(
                StatusCode::NOT_FOUND,
                serde_json::json!({
                    "error": format!("unknown {kind}"),
                    "namespace": namespace,
                    "name": name,
                    "rule": format!("events go to a {kind} that exists: apply it first"),
                }),
            ),
        };
        return refuse_unread(response, body, &headers, limits).await;
    };
    let sender = subject.as_deref().map(|subject| (subject, state.policies.as_slice()));
    let held = BodyPermit::on_connection(extensions.get::<ConnectionBodyShare>().cloned());
    let response = accept(&ingress, &target, &state.settings, sender, &headers, (body, held)).await;
    match response {
        Ok(type_counts) => {
            record_events(&target, &type_counts, StatusCode::ACCEPTED, started);
            StatusCode::ACCEPTED.into_response()
        }
        Err(response) => {
            record_events(&target, &[(String::new(), 1)], response.status(), started);
            response
        }
    }
}

/// With sender identity on, the sender's subject, or the 401 for a request without a valid token for the
/// target's audience; `None` with sender identity off.
fn authenticate(ingress: &Ingress, target: &Target, headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
    let Some(authenticator) = ingress.node.settings().authenticator.as_ref() else { return Ok(None) };
    let (namespace, name) = target.namespace_and_name();
    let kind = if matches!(target, Target::Broker { .. }) { "Broker" } else { "Channel" };
    let audience = sluice_controller::status::audience_of(kind, namespace, name);
    let authorization = headers.get(header::AUTHORIZATION).map(|value| value.to_str().unwrap_or_default());
    let refusal = match authenticator.authenticate(authorization, &audience) {
        Ok(claims) => return Ok(Some(claims.subject)),
        Err(refusal) => refusal,
    };
    metrics::counter!("sluice_ingress_unauthenticated_total", "check" => refusal.check()).increment(1);
    let mut response = json_response(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({ "error": refusal.to_string(), "field": "Authorization", "rule": refusal.check() }),
    );
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
    Err(Box::new(response))
}

/// Parses, validates and appends; answers how many events of each type were accepted.
async fn accept(
    ingress: &Ingress,
    target: &Target,
    settings: &IngressSettings,
    sender: Option<(&str, &[authorize::CompiledPolicy])>,
    headers: &HeaderMap,
    (body, mut held): (Body, BodyPermit),
) -> Result<Vec<(String, u64)>, Response> {
    let limits = ingress.limits();
    let mode = match check_head(headers, limits) {
        Ok(mode) => mode,
        Err(response) => return Err(refuse_unread(*response, body, headers, limits).await),
    };
    let limit = match mode {
        Mode::Batch => limits.max_batch_bytes,
        _ => limits.max_event_bytes,
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    // A client that waits for `100 Continue` before it sends the body is refused without it: reading the body
    // would make hyper send it, and the whole upload would come only to be dropped.
    let waits_for_continue = awaits_continue(headers);
    if declared.is_some_and(|len| len > limit as u64) {
        let e = EventError::bad("request body too large").rule(format!("at most {limit} bytes")).status(413);
        let mut response = refuse_unread(error_response(&e), body, headers, limits).await;
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(response);
    }
    let refused = |e: &EventError| {
        let mut response = error_response(e);
        if matches!(e.status, 408 | 413 | 429) {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if e.status == 429 {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    };
    // Bytes are held as they arrive, not as declared: declared lengths alone (a 4 MiB Content-Length and no
    // body, on 64 streams) would fill the budget for nothing. A client that waits for `100 Continue` has its
    // declared length held first, so that it is refused before it uploads.
    if waits_for_continue
        && let Some(declared) = declared
        && let Err(e) = ingress.body_budget.hold(&mut held, declared as usize)
    {
        return Err(refused(&e));
    }
    // Held until this request is answered: its bytes live on in the parsed events until they are committed.
    let (body, _held) =
        read_body(body, limit, limits.body_read_timeout, &ingress.body_budget, held).await.map_err(|e| refused(&e))?;
    REQUEST_BYTES.record(body.len() as f64);
    // The JSON formats' attributes are held to their limits as each object is read, then (every mode) with what
    // the node adds counted.
    let attribute_limits = attribute_limits(limits);
    let events = match mode {
        Mode::Binary => {
            let ce_headers =
                headers.iter().filter(|(k, _)| k.as_str().starts_with("ce-")).map(|(k, v)| (k.as_str(), v.as_bytes()));
            let content_type = headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
            vec![cloudevent::from_binary(ce_headers, content_type, body).map_err(|e| error_response(&e))?]
        }
        Mode::Structured => {
            vec![cloudevent::from_structured_within(&body, &attribute_limits).map_err(|e| error_response(&e))?]
        }
        Mode::Batch => cloudevent::from_batch_within(&body, limits.max_batch_events, &attribute_limits)
            .map_err(|e| error_response(&e))?,
    };
    let mut events = events;
    if let Some(traceparent) = headers.get("traceparent") {
        adopt_trace_context(&mut events, traceparent, headers.get_all("tracestate"), &attribute_limits, settings.ttl);
    }
    let batch = matches!(mode, Mode::Batch);
    check_attributes(&events, &attribute_limits, settings.ttl, batch).map_err(|e| {
        // A binary event's attributes are its headers.
        error_response(&if matches!(mode, Mode::Binary) { e.status(431) } else { e })
    })?;
    BATCH_EVENTS.record(events.len() as f64);
    if let Some((subject, policies)) = sender {
        let mode = ingress.node.settings().default_authorization;
        if let Err(reason) = authorize::authorize(policies, mode, target.namespace_and_name().0, subject, &events) {
            metrics::counter!("sluice_ingress_unauthorized_total").increment(1);
            return Err(json_response(
                StatusCode::FORBIDDEN,
                serde_json::json!({ "error": "not authorized", "field": "Authorization", "rule": reason, "subject": subject }),
            ));
        }
    }

    let types = count_types(&events);
    let count = events.len() as u64;
    if events.is_empty() {
        // An empty batch (valid in a request, JSON Event Format §4): nothing to store.
        return Ok(types);
    }
    #[cfg(feature = "planted-bugs")]
    if crate::planted_bug("ack-before-commit") {
        // PLANTED BUG (test-only): acknowledge now and append 300 ms later, like a write-behind buffer; a crash in
        // between loses acknowledged events. The chaos suite's self-test must report them as lost.
        let (node, stream, settings) = (ingress.node.clone(), target.stream(), settings.clone());
        let max = limits.max_event_bytes;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = publish_events(&node, &stream, &settings, events, max, batch).await;
        });
        return Ok(types);
    }
    // A binary body was held to `max_event_bytes` and its attributes to the header limits: the stored event may
    // carry both (a binary event of `max_event_bytes` with its `ce-` headers was refused with 413 before). A
    // structured or batched event's attributes were inside the bytes counted.
    let max_stored = match mode {
        Mode::Binary => limits.max_event_bytes + limits.max_header_bytes,
        _ => limits.max_event_bytes,
    };
    let appended = publish_events(&ingress.node, &target.stream(), settings, events, max_stored, batch).await.map_err(
        |e| match e {
            PublishError::Invalid(e) => error_response(&e),
            PublishError::Broker(e) => broker_error_response(e),
        },
    )?;
    let duplicates = count.saturating_sub(appended.stored);
    if duplicates > 0 {
        metrics::counter!("sluice_ingress_duplicates_total").increment(duplicates);
    }
    Ok(types)
}

#[cfg(test)]
mod tests;
