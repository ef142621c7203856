//! `--mode backlog`: what a backlog costs. A Trigger paused from its creation holds `--events` events back
//! while batching producers publish them; the node's resident memory is sampled every second throughout.
//! Then the Trigger is resumed and the backlog drained, and last, with the Trigger live, producers publish for
//! `--seconds` and the subscriber's rate is the steady-state dispatch rate the drain is compared with. With
//! `--quiet-seconds`, nothing is published for that long after it, and the nodes' memory is read at both ends.
//!
//! In: node count, partitions, events, payload size, producers. Out: a table (and JSON with `--json`): ingest
//! rate, RSS idle / peak while the backlog grows / at its end / peak while draining, disk bytes per event,
//! drain rate, steady-state dispatch rate and their ratio; at the end of the ingest, what the nodes say their
//! memory holds (allocated, RocksDB's, dedupe keys).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use sluice_tests::{apply_resource, broker_object, trigger_object};

use crate::steady::node_metrics::{MemoryState, memory_state_in, metrics_text};
use crate::systems::{BATCH, HttpServer, batch_body, start_cluster};

pub(crate) struct BacklogBench {
    pub nodes: u64,
    pub partitions: u32,
    pub events: u64,
    pub payload_bytes: usize,
    pub producers: usize,
    pub batch: usize,
    pub steady_seconds: u64,
    /// The Broker's `sluice.dev/dedupe-window`; its default if `None`.
    pub dedupe_window: Option<String>,
    /// Seconds with nothing published after the steady-state run (0: none).
    pub quiet_seconds: u64,
    pub json: bool,
}

/// The resident memory of the nodes, sampled every second: the peak since the last [`RssSampler::take_peak`].
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> RssSampler {
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (task_peak, task_stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            while !task_stop.load(Ordering::Acquire) {
                ticker.tick().await;
                task_peak.fetch_max(nodes_rss(&pids), Ordering::AcqRel);
            }
        });
        RssSampler { peak, stop }
    }

    fn take_peak(&self) -> u64 {
        self.peak.swap(0, Ordering::AcqRel)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn nodes_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|pid| crate::cpu::rss_bytes(*pid)).sum()
}

/// The nodes' memory as they publish it (summed; a node that does not answer counts nothing).
async fn nodes_memory(cluster: &sluice_tests::TestCluster) -> MemoryState {
    let client = reqwest::Client::new();
    let mut sum = MemoryState::default();
    for node in &cluster.nodes {
        let text = metrics_text(&client, &format!("http://{}/metrics", node.http), Duration::from_secs(2)).await;
        if let Some(state) = memory_state_in(&text) {
            sum = sum.plus(&state);
        }
    }
    sum
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Publishes batches of `batch` events from `producers` tasks until `total` were acknowledged (`total` = None:
/// until `until`), their ids numbered from `first_id`. Answers the events acknowledged.
async fn publish(
    first_id: u64,
    urls: &[String],
    producers: usize,
    batch: usize,
    payload_bytes: usize,
    total: Option<u64>,
    until: Option<Instant>,
) -> Result<u64> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(producers).build()?;
    let claimed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for producer in 0..producers {
        let (client, url, claimed) = (client.clone(), urls[producer % urls.len()].clone(), claimed.clone());
        tasks.spawn(async move {
            let mut acked = 0u64;
            let mut failures = 0u32;
            loop {
                if until.is_some_and(|until| Instant::now() >= until) {
                    return anyhow::Ok(acked);
                }
                let first = claimed.fetch_add(batch as u64, Ordering::AcqRel);
                let count = match total {
                    Some(total) if first >= total => return Ok(acked),
                    Some(total) => (total - first).min(batch as u64),
                    None => batch as u64,
                };
                let payloads: Vec<bytes::Bytes> =
                    (first..first + count).map(|seq| crate::driver::payload(seq, 0, payload_bytes)).collect();
                let body = batch_body(first_id + first, &payloads)?;
                // A refused batch is sent again (same ids: the broker's dedupe keeps it once).
                loop {
                    let response = client.post(&url).header("content-type", BATCH).body(body.clone()).send().await;
                    match response {
                        Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => break,
                        outcome => {
                            failures += 1;
                            if failures > 100 {
                                bail!("publishing: 100 refused batches, the last: {outcome:?}");
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                acked += count;
            }
        });
    }
    let mut acked = 0;
    while let Some(result) = tasks.join_next().await {
        acked += result??;
    }
    Ok(acked)
}

impl BacklogBench {
    pub(crate) async fn run(&self) -> Result<()> {
        let cluster = start_cluster(self.nodes, self.partitions).await?;
        let admin = cluster.nodes[0].admin.clone();
        let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
        let urls: Vec<String> = cluster.nodes.iter().map(|n| format!("http://{}/bench/bench", n.http)).collect();
        let annotations = match &self.dedupe_window {
            Some(window) => json!({ "sluice.dev/dedupe-window": window }),
            None => json!({}),
        };
        apply_resource(&admin, broker_object("bench", "bench", annotations)).await?;
        for node in &cluster.nodes {
            sluice_tests::wait_for_broker(&node.http, "/bench/bench").await?;
        }
        let subscriber = HttpServer::start().await?;
        let delivered = Arc::new(AtomicU64::new(0));
        let counter = delivered.clone();
        subscriber.set_callback(Arc::new(move |_body: &[u8]| {
            counter.fetch_add(1, Ordering::AcqRel);
        }));
        let trigger = |annotations| {
            let filter = json!({"filter": {"attributes": {"type": "bench.event"}}});
            trigger_object("bench", "held", "bench", &subscriber.url(), filter, annotations)
        };
        apply_resource(&admin, trigger(json!({"sluice.dev/paused": "true"}))).await?;
        let rss_idle = nodes_rss(&pids);
        let sampler = RssSampler::start(pids.clone());

        println!("backlog: publishing {} events of {} B, {} per request", self.events, self.payload_bytes, self.batch);
        let started = Instant::now();
        let published =
            publish(0, &urls, self.producers, self.batch, self.payload_bytes, Some(self.events), None).await?;
        let ingest_s = started.elapsed().as_secs_f64();
        let rss_backlog_peak = sampler.take_peak().max(nodes_rss(&pids));
        let rss_backlog_end = nodes_rss(&pids);
        let disk_bytes: u64 = cluster.nodes.iter().map(|n| dir_bytes(&n.data)).sum();
        let early = delivered.load(Ordering::Acquire);
        if early > 0 {
            bail!("the paused Trigger delivered {early} events while the backlog grew");
        }
        let memory_end = nodes_memory(&cluster).await;
        println!(
            "  {published} events in {ingest_s:.1} s; RSS {:.1} MiB, of it allocated {:.1} MiB, RocksDB {:.1} MiB, \
             {:.0} dedupe keys; draining",
            mib(rss_backlog_end),
            memory_end.allocated_mib,
            memory_end.rocksdb_mib,
            memory_end.dedupe_keys
        );

        apply_resource(&admin, trigger(json!({}))).await?;
        let resumed = Instant::now();
        let drain_budget = Duration::from_secs(120 + published / 1000);
        let mut last_report = Instant::now();
        while delivered.load(Ordering::Acquire) < published {
            if resumed.elapsed() > drain_budget {
                bail!("drained {} of {published} within {drain_budget:?}", delivered.load(Ordering::Acquire));
            }
            if last_report.elapsed() >= Duration::from_secs(30) {
                last_report = Instant::now();
                println!("  drained {} of {published}", delivered.load(Ordering::Acquire));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drain_s = resumed.elapsed().as_secs_f64();
        let rss_drain_peak = sampler.take_peak().max(nodes_rss(&pids));

        // Steady state: the Trigger live, producers publishing; the subscriber's rate after a warm-up second.
        let window = Duration::from_secs(self.steady_seconds.max(3));
        let producing = Instant::now() + window + Duration::from_secs(1);
        let (urls, producers, batch, payload) = (urls.clone(), self.producers, self.batch, self.payload_bytes);
        // Ids after the backlog's (regression: from 0 again, a backlog ingested within the Broker's dedupe window
        // made every steady-state event a duplicate, and the steady rate read 0).
        let load =
            tokio::spawn(
                async move { publish(published, &urls, producers, batch, payload, None, Some(producing)).await },
            );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (from, at) = (delivered.load(Ordering::Acquire), Instant::now());
        tokio::time::sleep(window).await;
        let steady_rate = (delivered.load(Ordering::Acquire) - from) as f64 / at.elapsed().as_secs_f64();
        load.await.context("steady-state producers")??;
        let rss_steady_peak = sampler.take_peak();
        drop(sampler);
        let quiet = self.quiet(&cluster, &pids).await;

        let drain_rate = published as f64 / drain_s;
        let report = json!({
            "nodes": self.nodes, "partitions": self.partitions, "events": published,
            "payload_bytes": self.payload_bytes, "batch": self.batch, "producers": self.producers,
            "ingest_events_per_s": published as f64 / ingest_s,
            "rss_idle_mib": mib(rss_idle), "rss_backlog_peak_mib": mib(rss_backlog_peak),
            "rss_backlog_end_mib": mib(rss_backlog_end), "rss_drain_peak_mib": mib(rss_drain_peak),
            "rss_steady_peak_mib": mib(rss_steady_peak),
            "backlog_end_allocated_mib": memory_end.allocated_mib, "backlog_end_rocksdb_mib": memory_end.rocksdb_mib,
            "backlog_end_dedupe_keys": memory_end.dedupe_keys,
            "disk_bytes_per_event": disk_bytes as f64 / published.max(1) as f64,
            "drain_events_per_s": drain_rate, "steady_dispatch_events_per_s": steady_rate,
            "drain_vs_steady": drain_rate / steady_rate.max(1e-9),
            "quiet": quiet,
        });
        if self.json {
            println!("{report}");
        } else {
            println!(
                "{:>10} {:>10} {:>9} {:>11} {:>10} {:>10} {:>11} {:>10} {:>10} {:>7}",
                "events",
                "ingest/s",
                "RSS idle",
                "RSS peak",
                "RSS end",
                "RSS drain",
                "disk B/ev",
                "drain/s",
                "steady/s",
                "ratio"
            );
            println!(
                "{:>10} {:>10.0} {:>7.1}Mi {:>9.1}Mi {:>8.1}Mi {:>8.1}Mi {:>11.0} {:>10.0} {:>10.0} {:>7.2}",
                published,
                published as f64 / ingest_s,
                mib(rss_idle),
                mib(rss_backlog_peak),
                mib(rss_backlog_end),
                mib(rss_drain_peak),
                disk_bytes as f64 / published.max(1) as f64,
                drain_rate,
                steady_rate,
                drain_rate / steady_rate.max(1e-9)
            );
        }
        drop(cluster);
        Ok(())
    }

    /// `quiet_seconds` with nothing published: the nodes' RSS and memory at the start and the end (null when 0).
    async fn quiet(&self, cluster: &sluice_tests::TestCluster, pids: &[u32]) -> serde_json::Value {
        if self.quiet_seconds == 0 {
            return serde_json::Value::Null;
        }
        let at = |rss: u64, memory: &MemoryState| {
            json!({ "rss_mib": mib(rss), "allocated_mib": memory.allocated_mib, "allocator_resident_mib":
                memory.allocator_resident_mib, "rocksdb_mib": memory.rocksdb_mib, "dedupe_keys": memory.dedupe_keys })
        };
        let (rss_start, memory_start) = (nodes_rss(pids), nodes_memory(cluster).await);
        println!(
            "quiet: {} s with nothing published; RSS {:.1} MiB, allocated {:.1} MiB, {:.0} dedupe keys at the start",
            self.quiet_seconds,
            mib(rss_start),
            memory_start.allocated_mib,
            memory_start.dedupe_keys
        );
        tokio::time::sleep(Duration::from_secs(self.quiet_seconds)).await;
        let (rss_end, memory_end) = (nodes_rss(pids), nodes_memory(cluster).await);
        println!(
            "  at the end: RSS {:.1} MiB, allocated {:.1} MiB (allocator resident {:.1}, RocksDB {:.1}), {:.0} dedupe keys",
            mib(rss_end),
            memory_end.allocated_mib,
            memory_end.allocator_resident_mib,
            memory_end.rocksdb_mib,
            memory_end.dedupe_keys
        );
        json!({ "seconds": self.quiet_seconds, "start": at(rss_start, &memory_start), "end": at(rss_end, &memory_end) })
    }
}
