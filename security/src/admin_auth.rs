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
//! UNAUTHENTICATED ([`RevocableBody`]), so `watch`, `tail` and `logs --follow` do not outlive the token.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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

/// The role a method needs.
pub fn required_role(path: &str) -> Role {
    if READ_METHODS.contains(&path) || path.starts_with("/grpc.reflection.") { Role::Read } else { Role::Operate }
}

/// The tokens file: `TOKEN,NAME,ROLE` per line, `#` comments and blank lines ignored.
#[derive(Clone, Debug, Default)]
pub struct AdminTokens {
    by_token: HashMap<String, (String, Role)>,
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
            if by_token.insert(token.to_string(), (name.to_string(), role)).is_some() {
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
                .get(token)
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
        let certificate_role = request
            .extensions()
            .get::<ConnInfo>()
            .and_then(|info| info.client_certificates.as_ref())
            .and_then(|chain| chain.first())
            .and_then(|leaf| certificate_role(leaf.as_ref()));
        let authorization = request.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or_default());
        let path = request.uri().path().to_string();
        // Subscribed before the decision, so that a reload right after it still reaches the response.
        let mut tokens = self.tokens.tokens.subscribe();
        let current = tokens.borrow_and_update().clone();
        match authorize_call(&current, &path, authorization, certificate_role) {
            Ok((caller, role)) => {
                tracing::debug!(%caller, ?role, %path, "admin call");
                let token = authorization.and_then(|value| crate::jwt::bearer_token(Some(value)).ok());
                let Some(token) = token.map(str::to_string) else { return Box::pin(self.inner.call(request)) };
                let changes = tokio_stream::wrappers::WatchStream::from_changes(tokens);
                let needed = required_role(&path);
                let response = self.inner.call(request);
                Box::pin(async move {
                    let response = response.await?;
                    Ok(response.map(|inner| {
                        tonic::body::Body::new(RevocableBody { inner, token, needed, caller, changes, ended: false })
                    }))
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
        self.by_token.get(token).is_some_and(|(_, role)| *role >= needed)
    }
}

/// A response body of a call let in by a token, ended with UNAUTHENTICATED in its trailers as soon as the
/// tokens file no longer lets that token call the method (the rest of the response is not sent).
pub struct RevocableBody {
    inner: tonic::body::Body,
    token: String,
    needed: Role,
    caller: String,
    changes: tokio_stream::wrappers::WatchStream<Arc<AdminTokens>>,
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
        use tokio_stream::Stream;
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        // Registers for the next change, so an idle stream (a watch with nothing to say) ends too.
        while let Poll::Ready(Some(tokens)) = Pin::new(&mut this.changes).poll_next(cx) {
            if !tokens.allows(&this.token, this.needed) {
                this.ended = true;
                metrics::counter!("sluice_admin_streams_revoked_total").increment(1);
                tracing::info!(caller = %this.caller, "an admin response ended: its token was revoked");
                let mut trailers = http::HeaderMap::new();
                let status = tonic::Status::unauthenticated("the token was revoked");
                if status.add_header(&mut trailers).is_err() {
                    return Poll::Ready(Some(Err(status)));
                }
                return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
            }
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

    /// Regression: a stream opened with a token (`watch`, `tail`, `logs --follow`) went on after the token was
    /// revoked; only new calls were refused.
    #[tokio::test]
    async fn a_stream_ends_unauthenticated_once_its_token_is_revoked() {
        use http_body::Body as _;
        use tower::{Layer, Service};
        let layer = AdminAuthLayer::new(AdminTokens::parse(TOKENS).expect("parses"));
        let streams_for_ever = tower::service_fn(|_request: http::Request<()>| async {
            let body = http_body_util::StreamBody::new(tokio_stream::pending::<
                Result<http_body::Frame<bytes::Bytes>, tonic::Status>,
            >());
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::new(body)))
        });
        let mut service = layer.layer(streams_for_ever);
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
    }
}
