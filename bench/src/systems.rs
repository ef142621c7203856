//! The systems of the comparison that live in this crate: Sluice over its CloudEvents HTTP ingress
//! ([`SluiceHttp`]) and the bare HTTP ceiling of the machine ([`HttpCeiling`]).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use sluice_tests::{TestCluster, apply_resource, broker_object, trigger_object};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::driver::{BoxFuture, OnMessage, System};
use crate::post_client::PostTarget;

/// A minimal in-process HTTP/1.1 + h2c server on 127.0.0.1 answering 202 to everything, after handing the
/// body to the current callback (if any). Nothing is recorded, so memory stays flat however long it runs.
pub(crate) struct HttpServer {
    pub addr: std::net::SocketAddr,
    callback: Arc<RwLock<Option<OnMessage>>>,
    task: JoinHandle<()>,
}

impl HttpServer {
    pub(crate) async fn start() -> Result<HttpServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the HTTP server")?;
        let addr = listener.local_addr()?;
        let callback: Arc<RwLock<Option<OnMessage>>> = Arc::default();
        let task = tokio::spawn(serve(listener, callback.clone()));
        Ok(HttpServer { addr, callback, task })
    }

    pub(crate) fn set_callback(&self, on_message: OnMessage) {
        *self.callback.write().unwrap_or_else(PoisonError::into_inner) = Some(on_message);
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, callback: Arc<RwLock<Option<OnMessage>>>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            Some(_) = connections.join_next() => continue,
        };
        let _ = stream.set_nodelay(true);
        let (builder, callback) = (builder.clone(), callback.clone());
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let callback = callback.clone();
                async move {
                    let batched = request.headers().get(hyper::header::CONTENT_TYPE).is_some_and(|v| v == BATCH);
                    let body = request.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let current = callback.read().unwrap_or_else(PoisonError::into_inner).clone();
                    if let Some(on_message) = current {
                        if batched {
                            for data in batch_data(&body) {
                                on_message(&data);
                            }
                        } else {
                            on_message(&body);
                        }
                    }
                    let mut response = Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = hyper::StatusCode::ACCEPTED;
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

pub(crate) const BATCH: &str = "application/cloudevents-batch+json";

/// POSTs `payloads` as one `application/cloudevents-batch+json` request; `Ok` on 202.
pub(crate) async fn post_batch(target: &PostTarget, first_id: u64, payloads: Vec<Bytes>) -> Result<()> {
    let body = batch_body(first_id, &payloads)?;
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(BATCH));
    let status = target.post(headers, body.into()).await?;
    if status != hyper::StatusCode::ACCEPTED {
        bail!("status {status}");
    }
    Ok(())
}

/// A batch of structured CloudEvents, ids from `first_id`, each payload as `data_base64`.
pub(crate) fn batch_body(first_id: u64, payloads: &[Bytes]) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let events: Vec<serde_json::Value> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            json!({"specversion": "1.0", "id": (first_id + i as u64).to_string(), "source": "/bench",
                "type": "bench.event", "datacontenttype": "application/octet-stream",
                "data_base64": base64::engine::general_purpose::STANDARD.encode(payload)})
        })
        .collect();
    Ok(serde_json::to_vec(&events)?)
}

/// The decoded `data_base64` of each event of a batch made by [`post_batch`] (what the ceiling's
/// subscriber callback sees, as Sluice's subscriber sees each event's data).
fn batch_data(body: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let Ok(serde_json::Value::Array(events)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    events
        .iter()
        .filter_map(|event| event.get("data_base64")?.as_str())
        .filter_map(|data| base64::engine::general_purpose::STANDARD.decode(data).ok())
        .collect()
}

/// POSTs `payload` as a binary-mode CloudEvent; `Ok` on 202.
pub(crate) async fn post_event(target: &PostTarget, id: u64, payload: Bytes) -> Result<()> {
    let mut headers = HeaderMap::with_capacity(6);
    headers.insert(HeaderName::from_static("ce-specversion"), HeaderValue::from_static("1.0"));
    headers.insert(HeaderName::from_static("ce-id"), HeaderValue::from(id));
    headers.insert(HeaderName::from_static("ce-source"), HeaderValue::from_static("/bench"));
    headers.insert(HeaderName::from_static("ce-type"), HeaderValue::from_static("bench.event"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    let status = target.post(headers, payload).await?;
    if status != hyper::StatusCode::ACCEPTED {
        bail!("status {status}");
    }
    Ok(())
}

/// Sluice: `nodes` real `sluice node` processes (replication factor = nodes), one Broker; publishes are
/// binary-mode CloudEvents POSTed round-robin over the nodes' ingress, acknowledged by the 202 that Sluice
/// only sends once the event is committed on a quorum with fsync.
pub(crate) struct SluiceHttp {
    cluster: Option<TestCluster>,
    nodes: u64,
    pub partitions: u32,
    pub admin: String,
    pub https: Vec<String>,
    /// One per node's ingress, taken in turn.
    targets: Vec<PostTarget>,
    next: AtomicUsize,
    ids: AtomicU64,
    subscriber: Option<HttpServer>,
    /// `Some(n)`: the subscriber's Trigger opts in to batched delivery, up to `n` events per request.
    delivery_batch: Option<usize>,
}

/// The events per request the harness's batched-delivery rows let Sluice push (`--delivery-batch` elsewhere):
/// as many as its batching producers send.
pub(crate) const DELIVERY_BATCH: usize = 64;

/// Extra `sluice node` flags for every Sluice the benchmark starts, from `SLUICE_BENCH_NODE_ARGS`
/// (space-separated), for trying tuning flags without a rebuild.
pub(crate) fn extra_node_args() -> Vec<String> {
    std::env::var("SLUICE_BENCH_NODE_ARGS")
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Starts a Sluice cluster for the benchmark (with [`extra_node_args`]).
pub(crate) async fn start_cluster(nodes: u64, partitions: u32) -> Result<TestCluster> {
    let extra = extra_node_args();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    TestCluster::start(nodes, partitions, &extra).await
}

impl SluiceHttp {
    /// `delivery_batch`: see [`SluiceHttp::delivery_batch`].
    pub(crate) async fn start(nodes: u64, partitions: u32, delivery_batch: Option<usize>) -> Result<SluiceHttp> {
        let cluster = start_cluster(nodes, partitions).await?;
        let admin = cluster.nodes[0].admin.clone();
        let https: Vec<String> = cluster.nodes.iter().map(|n| n.http.clone()).collect();
        apply_resource(&admin, broker_object("bench", "bench", json!({}))).await?;
        for http in &https {
            sluice_tests::wait_for_broker(http, "/bench/bench").await?;
        }
        let targets =
            https.iter().map(|h| PostTarget::new(&format!("http://{h}/bench/bench"))).collect::<Result<_>>()?;
        Ok(SluiceHttp {
            cluster: Some(cluster),
            nodes,
            partitions,
            admin,
            https,
            targets,
            next: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
            subscriber: Some(HttpServer::start().await?),
            delivery_batch,
        })
    }

    /// The node processes' pids.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.cluster.as_ref().map_or_else(Vec::new, |c| c.nodes.iter().filter_map(|n| n.pid()).collect())
    }

    /// Adds `count` Triggers on the broker that never match (fan-out scenario) and waits until every
    /// partition leader dispatches them all.
    pub(crate) async fn add_idle_triggers(&self, count: usize) -> Result<()> {
        crate::dispatch::add_nonmatching_triggers(&self.admin, &self.https, self.partitions, count).await
    }
}

impl System for SluiceHttp {
    fn name(&self) -> String {
        match self.delivery_batch {
            None => format!("sluice-{}", self.nodes),
            Some(_) => format!("sluice-{}-batched-delivery", self.nodes),
        }
    }

    fn durability(&self) -> String {
        match self.nodes {
            1 => "1 replica, fsync before ack".into(),
            n => format!("{n} replicas, quorum {} fsync before ack", n / 2 + 1),
        }
    }

    fn publish(&self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        let target = &self.targets[self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len()];
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        Box::pin(post_event(target, id, payload))
    }

    fn publish_batch(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
        let target = &self.targets[self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len()];
        let first_id = self.ids.fetch_add(payloads.len() as u64, Ordering::Relaxed);
        Box::pin(post_batch(target, first_id, payloads))
    }

    fn cpu_us(&self) -> Option<u64> {
        self.cluster.as_ref()?;
        Some(crate::cpu::total_cpu_us(&self.pids()))
    }

    fn subscribe(&self, on_message: OnMessage) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let server = self.subscriber.as_ref().context("SluiceHttp subscriber missing")?;
            let delivered = Arc::new(AtomicU64::new(0));
            let counter = delivered.clone();
            server.set_callback(Arc::new(move |body: &[u8]| {
                counter.fetch_add(1, Ordering::AcqRel);
                on_message(body);
            }));
            let filter = json!({"filter": {"attributes": {"type": "bench.event"}}});
            // The server splits a batched request into its events' data.
            let annotations = match self.delivery_batch {
                Some(n) => json!({"sluice.dev/delivery-batch-max-events": n.to_string()}),
                None => json!({}),
            };
            apply_resource(&self.admin, trigger_object("bench", "match", "bench", &server.url(), filter, annotations))
                .await?;
            // Publish warm-up events (not of any run) until one arrives: the Trigger is then dispatching.
            sluice_tests::wait_until(Duration::from_secs(60), || {
                let delivered = delivered.clone();
                async move {
                    let _ = self.publish(crate::driver::payload(0, 0, 16)).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok((delivered.load(Ordering::Acquire) > 0).then_some(()))
                }
            })
            .await
            .context("waiting for the Trigger to deliver")
        })
    }

    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.subscriber = None;
            // Dropping the cluster kills every node (NodeProc::drop) and removes the data directory.
            self.cluster = None;
        })
    }
}

/// The HTTP ceiling of this machine: the same POSTs, answered 202 by a bare in-process hyper server that does
/// nothing else. The subscriber callback is called by the server on each POST (no broker in between).
pub(crate) struct HttpCeiling {
    server: Option<HttpServer>,
    target: PostTarget,
    ids: AtomicU64,
}

impl HttpCeiling {
    pub(crate) async fn start() -> Result<HttpCeiling> {
        let server = HttpServer::start().await?;
        let target = PostTarget::new(&server.url())?;
        Ok(HttpCeiling { server: Some(server), target, ids: AtomicU64::new(0) })
    }
}

impl System for HttpCeiling {
    fn name(&self) -> String {
        "http-ceiling".into()
    }

    fn durability(&self) -> String {
        "none (bare HTTP 202, nothing stored)".into()
    }

    fn publish(&self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        Box::pin(post_event(&self.target, id, payload))
    }

    fn publish_batch(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
        let first_id = self.ids.fetch_add(payloads.len() as u64, Ordering::Relaxed);
        Box::pin(post_batch(&self.target, first_id, payloads))
    }

    fn cpu_us(&self) -> Option<u64> {
        None
    }

    fn subscribe(&self, on_message: OnMessage) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.server.as_ref().context("stopped")?.set_callback(on_message);
            Ok(())
        })
    }

    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.server = None;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_body_carries_each_payload_and_its_header() {
        let payloads: Vec<Bytes> = (0..3).map(|seq| crate::driver::payload(seq, 99, 64)).collect();
        let body = batch_body(10, &payloads).expect("body");
        let events: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("json");
        assert_eq!(events[2]["id"], "12");
        let data = batch_data(&body);
        assert_eq!(data.len(), 3);
        assert_eq!(crate::driver::header(&data[1]), Some((1, 99)));
        assert!(batch_data(b"not json").is_empty());
    }
}
