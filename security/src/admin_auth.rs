//! Who may call the admin API: a gRPC method and the caller's credentials in, allowed (with who and which
//! role) or a gRPC status out.
//!
//! Two roles. `read`: status, get/list/watch, read/tail/find, consumer and dead-letter listings, logs.
//! `operate`: everything, including what changes state (init, membership, apply, delete, append, pause,
//! resume, replay, redrive, purge). A method not in the read table needs `operate` (fail closed).
//! Credentials: a bearer token from the tokens file (`TOKEN,NAME,ROLE` per line), or a client certificate of
//! the cluster's CA whose subject's organisation names a role: `sluice:read` reads, `sluice:operate` and
//! `sluice:node` (the nodes' own) operate. A certificate of the CA naming none of them has no role: a CA
//! shared with other workloads grants nothing by itself.
//!
//! A token is checked when a call starts and again whenever the tokens file changes while its response
//! streams: a stream opened with a token since revoked (or demoted below the method's role) ends with
//! UNAUTHENTICATED ([`RevocableBody`]), so `watch`, `tail` and `logs --follow` do not outlive the token. A
//! client certificate is checked when the connection is made (TLS) and its expiry at every call; a stream it
//! let in ends when it expires.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use crate::tls::accept::{ConnInfo, NODE_ORGANISATION, certificate_organisations};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Operate,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "read" => Ok(Role::Read),
            "operate" => Ok(Role::Operate),
            other => Err(format!("role {other:?} is not read or operate")),
        }
    }
}

/// The gRPC methods (`/package.Service/Method`) a reader may call; gRPC reflection too.
const READ_METHODS: &[&str] = &[
    "/sluice.admin.v1.Cluster/Status",
    "/sluice.admin.v1.Log/Read",
    "/sluice.admin.v1.Log/OffsetForTime",
    "/sluice.admin.v1.Resources/Get",
    "/sluice.admin.v1.Resources/List",
    "/sluice.admin.v1.Resources/Watch",
    "/sluice.admin.v1.Consumers/Status",
    "/sluice.admin.v1.DeadLetters/List",
    "/sluice.admin.v1.Events/Read",
    "/sluice.admin.v1.Events/Tail",
    "/sluice.admin.v1.Events/Find",
    "/sluice.admin.v1.Serving/Logs",
    "/sluice.admin.v1.Serving/Decisions",
];

/// The methods whose responses stream until the client ends them: what a revoked token or an expired
/// certificate cuts short. A unary call runs to its end (a write committed while the token was revoked is
/// answered as committed, never as refused).
const STREAMING_METHODS: &[&str] = &[
    "/sluice.admin.v1.Resources/Watch",
    "/sluice.admin.v1.Events/Tail",
    "/sluice.admin.v1.DeadLetters/Redrive",
    "/sluice.admin.v1.Serving/Logs",
    "/sluice.admin.v1.Serving/Decisions",
];

/// The role a method needs.
pub fn required_role(path: &str) -> Role {
    if READ_METHODS.contains(&path) || path.starts_with("/grpc.reflection.") { Role::Read } else { Role::Operate }
}

/// A token's SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TokenDigest([u8; 32]);

impl TokenDigest {
    fn of(token: &str) -> TokenDigest {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        TokenDigest(bytes)
    }
}

/// The tokens file: `TOKEN,NAME,ROLE` per line, `#` comments and blank lines ignored.
#[derive(Clone, Debug, Default)]
pub struct AdminTokens {
    /// By the SHA-256 of each token, never the token itself: a lookup compares digests, so how long it takes
    /// tells nothing about the tokens' bytes (a plain map compared the presented token with stored ones byte
    /// by byte).
    by_token: HashMap<TokenDigest, (String, Role)>,
    /// The file they were read from and its text then (read again by [`AdminAuthLayer::watch_file`]).
    path: Option<std::path::PathBuf>,
    loaded_text: Option<String>,
}

impl AdminTokens {
    pub fn parse(text: &str) -> Result<AdminTokens, String> {
        let mut by_token = HashMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [token, name, role] = fields.as_slice() else {
                return Err(format!("line {number}: expected TOKEN,NAME,ROLE"));
            };
            if token.len() < 16 {
                return Err(format!("line {number}: a token must be at least 16 characters"));
            }
            let role: Role = role.parse().map_err(|e| format!("line {number}: {e}"))?;
            if by_token.insert(TokenDigest::of(token), (name.to_string(), role)).is_some() {
                return Err(format!("line {number}: the same token twice"));
            }
        }
        Ok(AdminTokens { by_token, path: None, loaded_text: None })
    }

    pub fn load(path: &Path) -> Result<AdminTokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let tokens = AdminTokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(AdminTokens { path: Some(path.to_path_buf()), loaded_text: Some(text), ..tokens })
    }
}

/// The role a verified client certificate carries (see the module's doc); `None`: no role.
pub fn certificate_role(certificate: &[u8]) -> Option<(String, Role)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let subject = parsed.subject();
    let name = subject.iter_common_name().filter_map(|cn| cn.as_str().ok()).next().unwrap_or("certificate").to_string();
    let organisations = certificate_organisations(certificate);
    let has = |o: &str| organisations.iter().any(|x| x == o);
    let role = if has("sluice:operate") || has(NODE_ORGANISATION) {
        Role::Operate
    } else if has("sluice:read") {
        Role::Read
    } else {
        return None;
    };
    Some((format!("cert:{name}"), role))
}

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRefusal {
    /// No credentials, or ones that are not known: gRPC UNAUTHENTICATED.
    Unauthenticated(String),
    /// Known, but the role is too small: gRPC PERMISSION_DENIED.
    Forbidden(String),
}

/// Decides one call: `path` the gRPC method, `authorization` the metadata value, `certificate_role` what a
/// verified client certificate carries.
pub fn authorize_call(
    tokens: &AdminTokens,
    path: &str,
    authorization: Option<&str>,
    certificate_role: Option<(String, Role)>,
) -> Result<(String, Role), AdminRefusal> {
    let needed = required_role(path);
    let caller = match authorization {
        Some(value) => {
            let token = crate::jwt::bearer_token(Some(value))
                .map_err(|_| AdminRefusal::Unauthenticated("authorization metadata is not `Bearer TOKEN`".into()))?;
            tokens
                .by_token
                .get(&TokenDigest::of(token))
                .cloned()
                .ok_or_else(|| AdminRefusal::Unauthenticated("the token is not known".into()))?
        }
        None => certificate_role.ok_or_else(|| {
            AdminRefusal::Unauthenticated(
                "the admin API needs credentials: a token (--token, SLUICE_TOKEN) or a client certificate".into(),
            )
        })?,
    };
    if caller.1 < needed {
        return Err(AdminRefusal::Forbidden(format!("{} has the read role; {path} needs operate", caller.0)));
    }
    Ok(caller)
}

/// A tower layer for the admin gRPC server that refuses calls [`authorize_call`] refuses.
#[derive(Clone)]
pub struct AdminAuthLayer {
    tokens: SharedTokens,
}

/// The current tokens, replaced whole when the file changes; responses still streaming watch them.
type SharedTokens = Arc<tokio::sync::watch::Sender<Arc<AdminTokens>>>;

impl AdminAuthLayer {
    pub fn new(tokens: AdminTokens) -> AdminAuthLayer {
        AdminAuthLayer { tokens: Arc::new(tokio::sync::watch::Sender::new(Arc::new(tokens))) }
    }

    fn current(&self) -> Arc<AdminTokens> {
        self.tokens.borrow().clone()
    }

    /// Takes `text` as the tokens file's new content: `Ok` when it replaced the tokens, an error (and
    /// the previous tokens kept) when it does not parse, or holds no token where there were some: an empty
    /// file is far more often one being written (`cat > file`, read mid-write) than a wish to lock every holder
    /// out, which removing the flag does instead.
    pub fn reload(&self, text: &str) -> Result<(), String> {
        let current = self.current();
        let path = current.path.clone();
        let tokens = AdminTokens::parse(text)?;
        if tokens.by_token.is_empty() && !current.by_token.is_empty() {
            return Err("the file holds no token (empty, or being written?)".into());
        }
        self.tokens.send_replace(Arc::new(AdminTokens { path, loaded_text: Some(text.to_string()), ..tokens }));
        Ok(())
    }

    /// Reads the tokens file again every `interval` (as the TLS files are), until the runtime ends: a changed
    /// file that parses replaces the tokens (a revoked token is refused from then on); one that does not keeps
    /// the previous tokens, logged and counted (`sluice_admin_tokens_reload_failures_total`).
    pub async fn watch_file(self, interval: std::time::Duration) {
        let Some(path) = self.current().path.clone() else { return };
        // Compared with what was loaded, so a change made between the load and this task is not missed.
        let mut last = self.current().loaded_text.clone();
        loop {
            tokio::time::sleep(interval).await;
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    metrics::counter!("sluice_admin_tokens_reload_failures_total").increment(1);
                    tracing::warn!(file = %path.display(), error = %e, "the admin tokens file cannot be read; the previous tokens stay");
                    continue;
                }
            };
            if last.as_deref() == Some(text.as_str()) {
                continue;
            }
            match self.reload(&text) {
                Ok(()) => tracing::info!(file = %path.display(), "admin tokens reloaded"),
                Err(e) => {
                    metrics::counter!("sluice_admin_tokens_reload_failures_total").increment(1);
                    tracing::warn!(file = %path.display(), error = %e, "the admin tokens file does not parse; the previous tokens stay");
                }
            }
            last = Some(text);
        }
    }
}

impl<S> tower::Layer<S> for AdminAuthLayer {
    type Service = AdminAuth<S>;

    fn layer(&self, inner: S) -> AdminAuth<S> {
        AdminAuth { inner, tokens: self.clone() }
    }
}

#[derive(Clone)]
pub struct AdminAuth<S> {
    inner: S,
    tokens: AdminAuthLayer,
}

impl<S, B> tower::Service<http::Request<B>> for AdminAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let leaf = request
            .extensions()
            .get::<ConnInfo>()
            .and_then(|info| info.client_certificates.as_ref())
            .and_then(|chain| chain.first())
            .cloned();
        // Verified when the connection was made; a connection lives on past its certificate's end.
        let certificate_left = leaf.as_ref().and_then(|leaf| certificate_time_left(leaf, SystemTime::now()));
        let certificate_role = leaf
            .as_ref()
            .filter(|_| certificate_left.is_some_and(|left| !left.is_zero()))
            .and_then(|leaf| certificate_role(leaf.as_ref()));
        let authorization = request.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or_default());
        let path = request.uri().path().to_string();
        // Subscribed before the decision, so that a reload right after it still reaches the response.
        let mut tokens = self.tokens.tokens.subscribe();
        let current = tokens.borrow_and_update().clone();
        let decision = match (leaf.is_some(), certificate_left, authorization) {
            (true, Some(left), None) if left.is_zero() => Err(AdminRefusal::Unauthenticated(
                "the client certificate has expired: connect again with a valid one".into(),
            )),
            _ => authorize_call(&current, &path, authorization, certificate_role),
        };
        match decision {
            Ok((caller, role)) => {
                tracing::debug!(%caller, ?role, %path, "admin call");
                let token = authorization.and_then(|value| crate::jwt::bearer_token(Some(value)).ok());
                if !STREAMING_METHODS.contains(&path.as_str()) {
                    return Box::pin(self.inner.call(request));
                }
                let grant = match (token, certificate_left) {
                    (Some(token), _) => Grant::Token {
                        token: token.to_string(),
                        needed: required_role(&path),
                        changes: tokio_stream::wrappers::WatchStream::from_changes(tokens),
                    },
                    (None, Some(left)) => Grant::certificate(left),
                    (None, None) => return Box::pin(self.inner.call(request)),
                };
                let response = self.inner.call(request);
                Box::pin(async move {
                    let response = response.await?;
                    Ok(response
                        .map(|inner| tonic::body::Body::new(RevocableBody { inner, grant, caller, ended: false })))
                })
            }
            Err(refusal) => {
                let status = match refusal {
                    AdminRefusal::Unauthenticated(message) => {
                        metrics::counter!("sluice_admin_refused_total", "reason" => "unauthenticated").increment(1);
                        tonic::Status::unauthenticated(message)
                    }
                    AdminRefusal::Forbidden(message) => {
                        metrics::counter!("sluice_admin_refused_total", "reason" => "forbidden").increment(1);
                        tonic::Status::permission_denied(message)
                    }
                };
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

impl AdminTokens {
    /// Whether `token` is known with at least the role `needed`.
    fn allows(&self, token: &str, needed: Role) -> bool {
        self.by_token.get(&TokenDigest::of(token)).is_some_and(|(_, role)| *role >= needed)
    }
}

/// How long `certificate` (DER) is valid for from `now` (zero once it has expired); `None` when it cannot be
/// read.
pub fn certificate_time_left(certificate: &[u8], now: SystemTime) -> Option<Duration> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let not_after = u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0);
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(not_after);
    Some(not_after.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The longest one wait of a certificate's deadline (tokio's timer holds about two years at most).
const CERTIFICATE_WAIT_STEP: Duration = Duration::from_secs(24 * 3600);

/// What let a streaming call in, and so what ends it.
enum Grant {
    /// A bearer token of the tokens file: ends when a reload no longer lets it call the method.
    Token { token: String, needed: Role, changes: tokio_stream::wrappers::WatchStream<Arc<AdminTokens>> },
    /// A client certificate: ends when it expires (`left` after the wait now armed, waited `step` at most at
    /// a time).
    Certificate { left: Duration, step: Duration, wait: Pin<Box<tokio::time::Sleep>> },
}

impl Grant {
    fn certificate(valid_for: Duration) -> Grant {
        Grant::certificate_in_steps(valid_for, CERTIFICATE_WAIT_STEP)
    }

    fn certificate_in_steps(valid_for: Duration, step: Duration) -> Grant {
        let first = valid_for.min(step);
        Grant::Certificate { left: valid_for - first, step, wait: Box::pin(tokio::time::sleep(first)) }
    }

    /// Why the call may no longer go on, once that is so; registers `cx` for the next change otherwise.
    fn poll_revoked(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        use tokio_stream::Stream;
        match self {
            Grant::Token { token, needed, changes } => {
                while let Poll::Ready(Some(tokens)) = Pin::new(&mut *changes).poll_next(cx) {
                    if !tokens.allows(token, *needed) {
                        return Some("the token was revoked");
                    }
                }
                None
            }
            Grant::Certificate { left, step, wait } => {
                while wait.as_mut().poll(cx).is_ready() {
                    if left.is_zero() {
                        return Some("the client certificate has expired");
                    }
                    let next = (*left).min(*step);
                    *left -= next;
                    wait.as_mut().reset(tokio::time::Instant::now() + next);
                }
                None
            }
        }
    }
}

/// A response body of a call let in by a token or a client certificate, ended with UNAUTHENTICATED in its
/// trailers as soon as the tokens file no longer lets that token call the method, or the certificate expires
/// (the rest of the response is not sent).
pub struct RevocableBody {
    inner: tonic::body::Body,
    grant: Grant,
    caller: String,
    /// The inner body has ended (or sent its trailers), or the revocation was sent: nothing more.
    ended: bool,
}

impl http_body::Body for RevocableBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        // Registers for the next change, so an idle stream (a watch with nothing to say) ends too.
        if let Some(reason) = this.grant.poll_revoked(cx) {
            this.ended = true;
            metrics::counter!("sluice_admin_streams_revoked_total").increment(1);
            tracing::info!(caller = %this.caller, reason, "an admin response ended");
            let mut trailers = http::HeaderMap::new();
            let status = tonic::Status::unauthenticated(reason);
            if status.add_header(&mut trailers).is_err() {
                return Poll::Ready(Some(Err(status)));
            }
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = &frame {
            this.ended = true;
        }
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            this.ended = frame.is_trailers();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: &str = "# token,name,role\nread-token-0123456789,alice,read\noperate-token-0123456789,bob,operate\n";

    #[test]
    fn a_reloaded_file_replaces_the_tokens_and_a_bad_one_keeps_them() {
        let layer = AdminAuthLayer::new(AdminTokens::parse(TOKENS).expect("parses"));
        let status = "/sluice.admin.v1.Cluster/Status";
        let decide = |token: &str| authorize_call(&layer.current(), status, Some(token), None).is_ok();
        assert!(decide("Bearer read-token-0123456789"));
        layer.reload("rotated-token-0123456789,alice,read\n").expect("parses");
        assert!(!decide("Bearer read-token-0123456789"), "the revoked token is refused");
        assert!(decide("Bearer rotated-token-0123456789"));
        assert!(layer.reload("short,alice,read\n").is_err());
        assert!(decide("Bearer rotated-token-0123456789"), "a bad file keeps the previous tokens");
        for empty in ["", "\n", "# being written\n"] {
            assert!(layer.reload(empty).is_err(), "{empty:?}");
            assert!(decide("Bearer rotated-token-0123456789"), "an empty file keeps the previous tokens: {empty:?}");
        }
    }

    #[test]
    fn every_call_is_decided_by_role() {
        let tokens = AdminTokens::parse(TOKENS).expect("parses");
        let read = Some("Bearer read-token-0123456789");
        let operate = Some("Bearer operate-token-0123456789");
        let unauthenticated =
            |r: Result<(String, Role), AdminRefusal>| matches!(r, Err(AdminRefusal::Unauthenticated(_)));
        for path in ["/sluice.admin.v1.Cluster/Status", "/sluice.admin.v1.Resources/Apply", "/no.such/Method"] {
            assert!(unauthenticated(authorize_call(&tokens, path, None, None)), "{path}: no credentials");
            assert!(unauthenticated(authorize_call(&tokens, path, Some("Bearer wrong-token-000000"), None)), "{path}");
            assert!(unauthenticated(authorize_call(&tokens, path, Some("Basic x"), None)), "{path}");
            assert!(authorize_call(&tokens, path, operate, None).is_ok(), "{path}: operate may do anything");
        }
        assert!(authorize_call(&tokens, "/sluice.admin.v1.Events/Tail", read, None).is_ok());
        for path in [
            "/sluice.admin.v1.Resources/Apply",
            "/sluice.admin.v1.Resources/Delete",
            "/sluice.admin.v1.Cluster/RemoveNode",
            "/sluice.admin.v1.DeadLetters/Purge",
            "/sluice.admin.v1.Consumers/Replay",
            "/sluice.admin.v1.Log/Append",
            "/no.such/Method",
        ] {
            assert!(matches!(authorize_call(&tokens, path, read, None), Err(AdminRefusal::Forbidden(_))), "{path}");
        }
        let reader_cert = Some(("cert:ops".to_string(), Role::Read));
        assert!(authorize_call(&tokens, "/sluice.admin.v1.Cluster/Status", None, reader_cert.clone()).is_ok());
        assert!(matches!(
            authorize_call(&tokens, "/sluice.admin.v1.Cluster/Init", None, reader_cert),
            Err(AdminRefusal::Forbidden(_))
        ));
    }

    #[test]
    fn bad_token_files_are_refused_with_the_line() {
        for (text, wanted) in [
            ("short,alice,read", "at least 16"),
            ("0123456789abcdef,alice,admin", "not read or operate"),
            ("0123456789abcdef,alice", "TOKEN,NAME,ROLE"),
            ("0123456789abcdef,a,read\n0123456789abcdef,b,read", "line 2: the same token"),
        ] {
            let error = AdminTokens::parse(text).expect_err(text);
            assert!(error.contains(wanted), "{text}: {error}");
        }
    }

    #[test]
    fn certificates_carry_their_role_in_the_organisation() {
        let ca = crate::DevCertificates::new_ca("test CA").expect("CA");
        let (reader, _) = crate::dev_certs::issue_certificate_for(&ca, "ops", Some("sluice:read")).expect("issue");
        let (operator, _) = crate::dev_certs::issue_certificate_for(&ca, "ci", Some("sluice:operate")).expect("issue");
        let (node, _) = crate::dev_certs::issue_certificate(&ca, &["node-1".to_string()]).expect("issue");
        let (workload, _) = crate::dev_certs::issue_certificate_for(&ca, "some-app", None).expect("issue");
        let der = |pem: &str| {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem").to_vec()
        };
        assert_eq!(certificate_role(&der(&reader)), Some(("cert:ops".into(), Role::Read)));
        assert_eq!(certificate_role(&der(&operator)), Some(("cert:ci".into(), Role::Operate)));
        assert_eq!(certificate_role(&der(&node)), Some(("cert:node-1".into(), Role::Operate)));
        assert_eq!(certificate_role(&der(&workload)), None, "a certificate of the CA with no Sluice role has none");
    }

    /// A service whose every response streams for ever (as a watch with nothing to say does).
    fn streams_for_ever(
        _request: http::Request<()>,
    ) -> std::future::Ready<Result<http::Response<tonic::body::Body>, Infallible>> {
        let body = http_body_util::StreamBody::new(tokio_stream::pending::<
            Result<http_body::Frame<bytes::Bytes>, tonic::Status>,
        >());
        std::future::ready(Ok(http::Response::new(tonic::body::Body::new(body))))
    }

    /// Regression: a stream opened with a token (`watch`, `tail`, `logs --follow`) went on after the token was
    /// revoked; only new calls were refused.
    #[tokio::test]
    async fn a_stream_ends_unauthenticated_once_its_token_is_revoked() {
        use http_body::Body as _;
        use tower::{Layer, Service};
        let layer = AdminAuthLayer::new(AdminTokens::parse(TOKENS).expect("parses"));
        let mut service = layer.layer(tower::service_fn(streams_for_ever));
        let watch = |token: &str| {
            http::Request::builder()
                .uri("/sluice.admin.v1.Resources/Watch")
                .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                .body(())
                .expect("request")
        };
        let mut reader = service.call(watch("read-token-0123456789")).await.expect("call").into_body();
        let mut operator = service.call(watch("operate-token-0123456789")).await.expect("call").into_body();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut poll = |body: &mut tonic::body::Body| Pin::new(body).poll_frame(&mut cx).map(|f| f.map(|f| f.ok()));
        assert!(poll(&mut reader).is_pending());
        layer.reload("operate-token-0123456789,bob,operate\nread-token-0123456789,alice,read\n").expect("parses");
        assert!(poll(&mut reader).is_pending(), "a reload that keeps the token keeps the stream");
        layer.reload("operate-token-0123456789,bob,operate\n").expect("parses");
        let Poll::Ready(Some(Some(frame))) = poll(&mut reader) else { panic!("the revoked stream ends") };
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "16", "UNAUTHENTICATED: {trailers:?}");
        assert!(matches!(poll(&mut reader), Poll::Ready(None)));
        assert!(poll(&mut operator).is_pending(), "another token's stream goes on");

        // A unary call (here one that would still be running) is not cut: its write may have committed.
        let pause = http::Request::builder()
            .uri("/sluice.admin.v1.Consumers/Pause")
            .header(http::header::AUTHORIZATION, "Bearer operate-token-0123456789")
            .body(())
            .expect("request");
        let mut pausing = service.call(pause).await.expect("call").into_body();
        layer.reload("rotated-token-0123456789,carol,operate\n").expect("parses");
        assert!(poll(&mut pausing).is_pending(), "runs to its end");
        assert!(matches!(poll(&mut operator), Poll::Ready(Some(Some(_)))), "the stream of the same token ends");
    }

    /// A certificate of `organisation`, valid until `not_after` (whole seconds), as DER.
    fn certificate(organisation: &str, not_after: SystemTime) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "ops");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, organisation);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = not_after.into();
        params.self_signed(&key).expect("certificate").der().to_vec()
    }

    /// Regression: an admin connection let in by a client certificate kept working, for new calls and open
    /// streams, after the certificate expired (TLS checks it once, when the connection is made).
    #[tokio::test]
    async fn a_client_certificate_that_expires_ends_its_calls_and_streams() {
        use http_body_util::BodyExt;
        use tower::{Layer, Service};
        let layer = AdminAuthLayer::new(AdminTokens::parse(TOKENS).expect("parses"));
        let mut service = layer.layer(tower::service_fn(streams_for_ever));
        let watch = |der: Vec<u8>| {
            let mut request =
                http::Request::builder().uri("/sluice.admin.v1.Resources/Watch").body(()).expect("request");
            request.extensions_mut().insert(ConnInfo {
                remote: None,
                transport: crate::tls::accept::Transport::Tls,
                client_certificates: Some(Arc::new(vec![rustls_pki_types::CertificateDer::from(der)])),
            });
            request
        };
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let expired = service.call(watch(certificate("sluice:read", an_hour_ago))).await.expect("call");
        let status = tonic::Status::from_header_map(expired.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("expired"), "{status:?}");

        let valid = certificate("sluice:read", SystemTime::now() + Duration::from_secs(2));
        // Started before the time left is read, so a pause between the two cannot make the wait look short.
        let started = tokio::time::Instant::now();
        let left = certificate_time_left(&valid, SystemTime::now()).expect("readable");
        let response = service.call(watch(valid)).await.expect("call");
        assert!(tonic::Status::from_header_map(response.headers()).is_none(), "let in while valid");
        let mut body = response.into_body();
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("the stream ends once the certificate expires")
            .expect("a frame")
            .expect("not an error");
        assert!(started.elapsed() + Duration::from_millis(20) >= left, "not before it expired: {left:?}");
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "16", "UNAUTHENTICATED: {trailers:?}");
    }

    #[tokio::test]
    async fn a_certificate_deadline_longer_than_one_wait_is_waited_in_steps() {
        let step = Duration::from_millis(40);
        let mut grant = Grant::certificate_in_steps(Duration::from_millis(130), step);
        let started = tokio::time::Instant::now();
        let reason = std::future::poll_fn(|cx| match grant.poll_revoked(cx) {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
        })
        .await;
        assert_eq!(reason, "the client certificate has expired");
        assert!(started.elapsed() >= Duration::from_millis(130), "{:?}", started.elapsed());
    }
}
