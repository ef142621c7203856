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
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use sluice_tests::{TestCluster, apply_resource, broker_object, trigger_object};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::driver::{BoxFuture, OnMessage, System};

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

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
                    let body = request.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let current = callback.read().unwrap_or_else(PoisonError::into_inner).clone();
                    if let Some(on_message) = current {
                        on_message(&body);
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

fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().pool_max_idle_per_host(1024).tcp_nodelay(true).timeout(PUBLISH_TIMEOUT).build()?)
}

/// POSTs `payload` as a binary-mode CloudEvent; `Ok` on 202.
async fn post_event(client: &reqwest::Client, url: &str, id: u64, payload: Bytes) -> Result<()> {
    let response = client
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id.to_string())
        .header("ce-source", "/bench")
        .header("ce-type", "bench.event")
        .header("content-type", "application/octet-stream")
        .body(payload)
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        bail!("status {}", response.status());
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
    urls: Vec<String>,
    client: reqwest::Client,
    next: AtomicUsize,
    ids: AtomicU64,
    subscriber: Option<HttpServer>,
}

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
    pub(crate) async fn start(nodes: u64, partitions: u32) -> Result<SluiceHttp> {
        let cluster = start_cluster(nodes, partitions).await?;
        let admin = cluster.nodes[0].admin.clone();
        let https: Vec<String> = cluster.nodes.iter().map(|n| n.http.clone()).collect();
        apply_resource(&admin, broker_object("bench", "bench", json!({}))).await?;
        for http in &https {
            sluice_tests::wait_for_broker(http, "/bench/bench").await?;
        }
        let urls = https.iter().map(|h| format!("http://{h}/bench/bench")).collect();
        Ok(SluiceHttp {
            cluster: Some(cluster),
            nodes,
            partitions,
            admin,
            https,
            urls,
            client: http_client()?,
            next: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
            subscriber: Some(HttpServer::start().await?),
        })
    }

    /// Adds `count` Triggers on the broker that never match (fan-out scenario) and waits until every
    /// partition leader dispatches them all.
    pub(crate) async fn add_idle_triggers(&self, count: usize) -> Result<()> {
        crate::dispatch::add_nonmatching_triggers(&self.admin, &self.https, self.partitions, count).await
    }
}

impl System for SluiceHttp {
    fn name(&self) -> String {
        format!("sluice-{}", self.nodes)
    }

    fn durability(&self) -> String {
        match self.nodes {
            1 => "1 replica, fsync before ack".into(),
            n => format!("{n} replicas, quorum {} fsync before ack", n / 2 + 1),
        }
    }

    fn publish(&self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        let url = &self.urls[self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len()];
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        Box::pin(post_event(&self.client, url, id, payload))
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
            apply_resource(&self.admin, trigger_object("bench", "match", "bench", &server.url(), filter, json!({})))
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
    url: String,
    client: reqwest::Client,
    ids: AtomicU64,
}

impl HttpCeiling {
    pub(crate) async fn start() -> Result<HttpCeiling> {
        let server = HttpServer::start().await?;
        let url = server.url();
        Ok(HttpCeiling { server: Some(server), url, client: http_client()?, ids: AtomicU64::new(0) })
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
        Box::pin(post_event(&self.client, &self.url, id, payload))
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
