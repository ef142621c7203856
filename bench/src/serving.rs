//! `--mode serving`: Knative Services on one node.
//!
//! - Cold start: a request to a revision at zero → its first response, repeated (`--cold-starts`, ≥ 50), for
//!   the compiled test app (`sluice-hello`) and for a Python app (`tests/python/hello.py`). The node scales to
//!   zero 200 ms after the last request; each round waits until the revision reports 0 instances.
//! - Proxy cost: closed loop, `--concurrency` clients, GETs through the serving path (Host routing, traffic
//!   split, gate, proxy) and straight to the instance's port, in the same run: `--seconds` one-second slices
//!   of each, alternating, so that the machine's drift falls on both alike.
//! - Memory: the node's RSS before the Services exist and with both revisions at zero.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sluice_proto::admin::ResourceRef;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_tests::{apply_resource, hello_bin, manifest_dir, start_single_node, wait_until};

use crate::cpu;

pub(crate) struct ServingArgs {
    pub(crate) cold_starts: usize,
    pub(crate) concurrency: usize,
    pub(crate) seconds: u64,
}

fn service(name: &str, command: Vec<String>, annotations: Value) -> Value {
    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {"metadata": {"annotations": annotations},
            "spec": {"containers": [{"image": "ghcr.io/knative/helloworld-go", "command": command}]}}}})
}

async fn replicas(admin: &str, revision: &str) -> Result<Option<u64>> {
    let mut client = ResourcesClient::connect(format!("http://{admin}")).await?;
    let object = client
        .get(ResourceRef { kind: "Revision".into(), namespace: "default".into(), name: revision.into() })
        .await?
        .into_inner();
    let object: Value = serde_json::from_str(&object.object_json)?;
    let ready = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    Ok(ready.then(|| object.pointer("/status/actualReplicas").and_then(Value::as_u64)).flatten())
}

async fn wait_replicas(admin: &str, revision: &str, wanted: u64) -> Result<()> {
    wait_replicas_within(admin, revision, wanted, Duration::from_secs(60)).await
}

pub(crate) async fn wait_replicas_within(admin: &str, revision: &str, wanted: u64, within: Duration) -> Result<()> {
    wait_until(within, || async { Ok((replicas(admin, revision).await? == Some(wanted)).then_some(())) })
        .await
        .with_context(|| format!("{revision} never had {wanted} instances"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn quantiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n = {})",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    )
}

async fn cold_starts(
    admin: &str,
    client: &reqwest::Client,
    url: &str,
    revision: &str,
    rounds: usize,
) -> Result<Histogram<u64>> {
    let mut histogram = Histogram::<u64>::new(3)?;
    for _ in 0..rounds {
        wait_replicas(admin, revision, 0).await?;
        let started = Instant::now();
        let response = client.get(url).send().await?;
        anyhow::ensure!(response.status() == 200, "cold request answered {}", response.status());
        response.bytes().await?;
        histogram.record(started.elapsed().as_micros() as u64)?;
    }
    Ok(histogram)
}

/// `concurrency` clients, each sending its next request when the last was answered, for `length`: every
/// request's latency in microseconds.
async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    concurrency: usize,
    length: Duration,
) -> Result<Histogram<u64>> {
    let deadline = Instant::now() + length;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3)?;
            while Instant::now() < deadline {
                let started = Instant::now();
                let response = client.get(&url).send().await?;
                anyhow::ensure!(response.status() == 200, "answered {}", response.status());
                response.bytes().await?;
                histogram.record(started.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(histogram)
        }));
    }
    let mut total = Histogram::<u64>::new(3)?;
    for task in tasks {
        total.add(task.await??)?;
    }
    Ok(total)
}

/// What one path of the proxy comparison measured: every request's latency, and the CPU each process spent
/// while its slices ran.
struct PathLoad {
    latencies: Histogram<u64>,
    node_cpu_us: u64,
    app_cpu_us: u64,
    client_cpu_us: u64,
}

impl PathLoad {
    fn new() -> Result<Self> {
        Ok(PathLoad { latencies: Histogram::new(3)?, node_cpu_us: 0, app_cpu_us: 0, client_cpu_us: 0 })
    }

    /// One slice: the loop, with the CPU time of the node, of its children (the app) and of this process
    /// (the client) read around it.
    async fn slice(&mut self, client: &reqwest::Client, url: &str, concurrency: usize, node_pid: u32) -> Result<()> {
        let app = cpu::children_of(node_pid);
        let read_cpu =
            || (cpu::total_cpu_us(&[node_pid]), cpu::total_cpu_us(&app), cpu::total_cpu_us(&[std::process::id()]));
        let before = read_cpu();
        let latencies = closed_loop(client, url, concurrency, Duration::from_secs(1)).await?;
        let after = read_cpu();
        self.node_cpu_us += after.0.saturating_sub(before.0);
        self.app_cpu_us += after.1.saturating_sub(before.1);
        self.client_cpu_us += after.2.saturating_sub(before.2);
        self.latencies.add(&latencies)?;
        Ok(())
    }

    /// CPU microseconds per request: node, app, client.
    fn cpu_per_request(&self) -> String {
        let requests = self.latencies.len().max(1) as f64;
        let per = |us: u64| us as f64 / requests;
        format!(
            "CPU per request: node {:.1} µs, app {:.1} µs, client {:.1} µs",
            per(self.node_cpu_us),
            per(self.app_cpu_us),
            per(self.client_cpu_us)
        )
    }
}

/// Through serving and straight to the instance in alternating one-second slices (routed first in even
/// pairs, direct first in odd ones), so that the machine's drift during the run (its other tenants, its
/// clock speed) falls on both alike: `seconds` slices of each. Returns both paths and each pair's ratio
/// (routed ÷ direct requests).
async fn alternating_loops(
    client: &reqwest::Client,
    (routed_url, direct_url): (&str, &str),
    concurrency: usize,
    seconds: u64,
    node_pid: u32,
) -> Result<(PathLoad, PathLoad, Vec<f64>)> {
    // Connections opened and both paths warm before anything is counted.
    closed_loop(client, routed_url, concurrency, Duration::from_millis(250)).await?;
    closed_loop(client, direct_url, concurrency, Duration::from_millis(250)).await?;
    let (mut routed, mut direct) = (PathLoad::new()?, PathLoad::new()?);
    let mut pair_ratios = Vec::new();
    for pair in 0..seconds {
        let (routed_before, direct_before) = (routed.latencies.len(), direct.latencies.len());
        if pair % 2 == 0 {
            routed.slice(client, routed_url, concurrency, node_pid).await?;
            direct.slice(client, direct_url, concurrency, node_pid).await?;
        } else {
            direct.slice(client, direct_url, concurrency, node_pid).await?;
            routed.slice(client, routed_url, concurrency, node_pid).await?;
        }
        let (r, d) = (routed.latencies.len() - routed_before, direct.latencies.len() - direct_before);
        pair_ratios.push(r as f64 / (d as f64).max(1.0));
    }
    Ok((routed, direct, pair_ratios))
}

pub(crate) async fn run(args: ServingArgs) -> Result<()> {
    let (_dir, node) = start_single_node(
        1,
        &[
            "--autoscaler",
            "stable-window=200ms",
            "--autoscaler",
            "scale-to-zero-grace-period=0s",
            "--autoscaler",
            "tick-interval=100ms",
        ],
    )
    .await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let pid = node.pid().context("the node's pid")?;
    let rss_before = rss_kib(pid);
    let python = manifest_dir().join("python").join("hello.py").display().to_string();
    apply_resource(&admin, service("compiled", vec![hello_bin().display().to_string()], json!({}))).await?;
    apply_resource(&admin, service("python", vec!["python3".into(), python], json!({}))).await?;
    let addr: SocketAddr = http.parse()?;
    let port = addr.port();
    let client = reqwest::Client::builder()
        .resolve("compiled.default.localhost", addr)
        .resolve("python.default.localhost", addr)
        .resolve("warm.default.localhost", addr)
        .pool_max_idle_per_host(256)
        .build()?;
    for revision in ["compiled-00001", "python-00001"] {
        wait_replicas(&admin, revision, 0).await?;
    }
    let rss_idle = rss_kib(pid);
    println!("serving bench: one node, {}", sluice_tests::sluice_bin().display());
    println!(
        "memory: node RSS {rss_before} KiB before, {rss_idle} KiB with two revisions at zero (+{} KiB)",
        rss_idle.saturating_sub(rss_before)
    );
    for (name, revision) in [("compiled", "compiled-00001"), ("python", "python-00001")] {
        let url = format!("http://{name}.default.localhost:{port}/");
        let histogram = cold_starts(&admin, &client, &url, revision, args.cold_starts).await?;
        println!("cold start, {name:8} request at zero → first response: {}", quantiles(&histogram));
    }

    // Proxy cost: a warm instance (min-scale 1), through the node and straight to its port.
    apply_resource(
        &admin,
        service("warm", vec![hello_bin().display().to_string()], json!({"autoscaling.knative.dev/min-scale": "1"})),
    )
    .await?;
    wait_replicas(&admin, "warm-00001", 1).await?;
    let contract: Value = client.get(format!("http://warm.default.localhost:{port}/env")).send().await?.json().await?;
    let instance_port = contract["PORT"].as_str().context("PORT")?.to_string();
    let routed_url = format!("http://warm.default.localhost:{port}/");
    let direct_url = format!("http://127.0.0.1:{instance_port}/");
    let (routed, direct, pair_ratios) =
        alternating_loops(&client, (&routed_url, &direct_url), args.concurrency, args.seconds, pid).await?;
    let seconds = args.seconds.max(1) as f64;
    let (routed_rps, direct_rps) = (routed.latencies.len() as f64 / seconds, direct.latencies.len() as f64 / seconds);
    let (lowest, highest) = pair_ratios.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    println!("proxy, {} clients, {} one-second slices of each, alternating:", args.concurrency, args.seconds);
    println!("  through serving  {routed_rps:>8.0} req/s  {}", quantiles(&routed.latencies));
    println!("                   {}", routed.cpu_per_request());
    println!("  direct           {direct_rps:>8.0} req/s  {}", quantiles(&direct.latencies));
    println!("                   {}", direct.cpu_per_request());
    println!(
        "  serving / direct {:.0} %  (per pair of slices: {:.0}–{:.0} %)",
        100.0 * routed_rps / direct_rps.max(1.0),
        100.0 * lowest,
        100.0 * highest
    );
    Ok(())
}
