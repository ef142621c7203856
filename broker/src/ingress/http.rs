//! The node's HTTP port: `/healthz`, `/readyz`, `/metrics`, and CloudEvents
//! ingress on every other path (`ingress`), served with bounded connections,
//! header sizes and header-read time (slow clients are cut off).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ingress::{Ingress, IngressLimits};
use crate::node::Node;

#[derive(Clone)]
struct HttpState {
    node: Node,
    metrics: PrometheusHandle,
}

pub(crate) fn router(node: Node, metrics: PrometheusHandle, ingress: Ingress) -> Router {
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState { node, metrics });
    probes.merge(Router::new().fallback(crate::ingress::handle).with_state(ingress))
}

/// Serves `app` on `listener` until `shutdown`: HTTP/1.1 (keep-alive) and
/// h2c, at most `max_connections` at once (more are closed at accept), and
/// headers must arrive within `header_read_timeout`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: IngressLimits,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
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
    let refused = metrics::counter!("sluice_http_connections_refused_total");
    let open = metrics::gauge!("sluice_http_connections");
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refused.increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let service = TowerToHyperService::new(app.clone());
        let open = open.clone();
        tokio::spawn(async move {
            open.increment(1.0);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "http connection ended");
            }
            open.decrement(1.0);
            drop(permit);
        });
    }
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
