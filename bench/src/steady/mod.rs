//! `--mode steady`: a long open-loop run at one rate (e.g. half the max, 10 minutes), publish → subscriber
//! latency and the nodes' memory second by second: does anything stall, does memory creep.
//!
//! In: nodes, partitions, `--rate`, `--seconds`. Out: a summary (overall p50/p99/p99.9/max, events over the
//! stall bound, RSS in the first and the last minute and its least-squares trend once the dedupe window has
//! filled, what the nodes' memory holds, the nodes' CPU per delivered event in the middle of
//! the run), a CSV of the seconds (`--csv`), and an SVG plot of p99 and max latency and RSS over time
//! (`--plot`), drawn by [`svg_plot`] from the same rows.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::driver::System;
use crate::openloop::{self, FirstArrivals, RunConfig};
use crate::systems::SluiceHttp;

pub(crate) mod node_metrics;
mod plot;
mod trend;

use node_metrics::{
    MemoryState, NodeLatency, SLOW_FSYNC_MS, StoreState, memory_state_in, metrics_text, node_latency_line,
    slow_fsyncs_in, store_state_in,
};
use plot::svg_plot;
use trend::{memory_trend, outside_rocksdb};

/// An event slower than this, publish → subscriber, is a stall.
pub(crate) const STALL_MS: f64 = 50.0;

/// The bench's Broker keeps the default dedupe window (2 minutes, docs/resources.md): until it has passed, every
/// acknowledged event adds a key and memory grows by design. Whether RSS is flat is judged on the seconds after.
pub(crate) const DEDUPE_WINDOW_S: u64 = 120;

pub(crate) struct SteadyBench {
    pub nodes: u64,
    pub partitions: u32,
    pub rate: f64,
    pub seconds: u64,
    pub payload_bytes: usize,
    /// Events per request: 1 in binary mode, more as `application/cloudevents-batch+json`.
    pub events_per_request: usize,
    /// The subscriber takes batched delivery, up to this many events per request.
    pub delivery_batch: Option<usize>,
    pub csv: Option<PathBuf>,
    pub plot: Option<PathBuf>,
}

/// One second of the run.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Second {
    pub t: u64,
    pub delivered: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub over_stall: u64,
    pub rss_mib: f64,
    /// WAL fsyncs over 32 ms in this second, summed over the nodes (their `sluice_wal_fsync_seconds`).
    pub slow_fsyncs: u64,
    /// CPU time the nodes spent in this second (user + system, from `/proc`), summed over the nodes.
    pub node_cpu_ms: f64,
    /// What the RSS holds, as the nodes last published it (every 5 s), summed over the nodes.
    pub memory: MemoryState,
}

/// Latencies bucketed by the second (since the run's start) in which the event was received.
struct Seconds {
    /// Set when the run starts; until then (the warm-up events of `subscribe`) nothing is recorded.
    start_unix_ns: AtomicU64,
    buckets: Mutex<Vec<(Histogram<u64>, u64)>>,
    arrivals: Mutex<FirstArrivals>,
    /// Deliveries of an event that had arrived already (at-least-once: after a leader change, the offsets
    /// committed last): counted, not timed, since the event's latency is that of its first arrival.
    duplicates: AtomicU64,
}

/// How long after the run the acknowledged events still on their way are waited for.
const STRAGGLERS_WAIT: Duration = Duration::from_secs(60);

impl Seconds {
    fn record(&self, payload: &[u8]) {
        let Some((seq, intended)) = crate::driver::header(payload) else { return };
        let start = self.start_unix_ns.load(Ordering::Acquire);
        let now = unix_ns();
        if intended < start || now < start {
            return;
        }
        let index = seq & ((1 << openloop::RUN_SHIFT) - 1);
        if !self.arrivals.lock().unwrap_or_else(PoisonError::into_inner).first(index) {
            self.duplicates.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let second = ((now - start) / 1_000_000_000) as usize;
        let micros = (now.saturating_sub(intended) / 1000).max(1);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        while buckets.len() <= second {
            buckets.push((openloop::new_histogram(), 0));
        }
        let (histogram, over) = &mut buckets[second];
        histogram.saturating_record(micros);
        if micros as f64 / 1000.0 > STALL_MS {
            *over += 1;
        }
    }
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl SteadyBench {
    pub(crate) async fn run(&self) -> Result<()> {
        let sluice = Arc::new(SluiceHttp::start(self.nodes, self.partitions, self.delivery_batch).await?);
        let seconds = Arc::new(Seconds {
            start_unix_ns: AtomicU64::new(u64::MAX),
            buckets: Mutex::new(Vec::new()),
            arrivals: Mutex::new(FirstArrivals::default()),
            duplicates: AtomicU64::new(0),
        });
        let recorder = seconds.clone();
        sluice.subscribe(Arc::new(move |payload: &[u8]| recorder.record(payload))).await.context("subscribe")?;
        seconds.start_unix_ns.store(unix_ns(), Ordering::Release);

        let pids = sluice.pids();
        let metrics_urls: Vec<String> = sluice.https.iter().map(|http| format!("http://{http}/metrics")).collect();
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (samples, sampling) = (samples.clone(), sampling.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                // Each node's count as last read: a scrape that fails keeps it, rather than counting the node's
                // whole history again in the next second.
                let mut slow_per_node = vec![0u64; metrics_urls.len()];
                let mut store_per_node = vec![StoreState::default(); metrics_urls.len()];
                let mut memory_per_node = vec![MemoryState::default(); metrics_urls.len()];
                let mut latency_per_node = vec![NodeLatency::default(); metrics_urls.len()];
                let mut ticker = tokio::time::interval(Duration::from_secs(1));
                while sampling.load(Ordering::Acquire) {
                    ticker.tick().await;
                    let bytes: u64 = pids.iter().filter_map(|pid| crate::cpu::rss_bytes(*pid)).sum();
                    let node_cpu_us_total = crate::cpu::total_cpu_us(&pids);
                    let thread_cpu_us = crate::cpu::thread_cpu_us_by_name(&pids);
                    for ((((url, last), store), memory), latency) in metrics_urls
                        .iter()
                        .zip(&mut slow_per_node)
                        .zip(&mut store_per_node)
                        .zip(&mut memory_per_node)
                        .zip(&mut latency_per_node)
                    {
                        let text = metrics_text(&client, url, Duration::from_millis(500)).await;
                        if let Some(slow) = slow_fsyncs_in(&text) {
                            *last = slow;
                        }
                        if let Some(state) = store_state_in(&text) {
                            *store = state;
                        }
                        if let Some(state) = memory_state_in(&text) {
                            *memory = state;
                        }
                        if let Some(read) = NodeLatency::read(&text) {
                            *latency = read;
                        }
                    }
                    let sample = Sample {
                        rss_mib: bytes as f64 / (1 << 20) as f64,
                        slow_fsyncs_total: slow_per_node.iter().sum(),
                        node_cpu_us_total,
                        thread_cpu_us,
                        compaction_pending_bytes: store_per_node.iter().map(|s| s.compaction_pending_bytes).sum(),
                        nodes_holding_writes: store_per_node.iter().filter(|s| s.writes_held).count() as u64,
                        memory: memory_per_node.iter().fold(MemoryState::default(), |sum, node| sum.plus(node)),
                        latency: latency_per_node.iter().fold(NodeLatency::default(), |sum, node| sum.plus(node)),
                    };
                    samples.lock().unwrap_or_else(PoisonError::into_inner).push(sample);
                }
            })
        };
        println!(
            "steady: {} nodes, {:.0} events/s for {} s, {} per request",
            self.nodes, self.rate, self.seconds, self.events_per_request
        );
        let started = Instant::now();
        let config = RunConfig {
            rate: self.rate,
            duration: Duration::from_secs(self.seconds),
            payload_bytes: self.payload_bytes,
            max_outstanding: 512,
            grace: Duration::from_secs(5),
            batch: self.events_per_request.max(1),
        };
        let result = openloop::run(sluice.clone(), &config, None).await?;
        // Every acknowledged event must arrive: the stragglers are waited for (bounded), and those that never
        // came are said. Regression: the buckets were read 5 s after the run, so events of a partition whose
        // dispatch had wedged never entered p99, max or the stall counts, and the figures looked clean.
        let delivered_so_far = || {
            let buckets = seconds.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            buckets.iter().map(|(histogram, _)| histogram.len()).sum::<u64>()
        };
        let stragglers_deadline = Instant::now() + STRAGGLERS_WAIT;
        while delivered_so_far() < result.acked && Instant::now() < stragglers_deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let undelivered = result.acked.saturating_sub(delivered_so_far());
        sampling.store(false, Ordering::Release);
        let _ = sampler.await;
        println!("  {} offered, {} acked in {:.0} s", result.offered, result.acked, started.elapsed().as_secs_f64());
        if undelivered > 0 {
            println!(
                "  UNDELIVERED: {undelivered} acknowledged events did not reach the subscriber within {} s of the run's end (a stall that never ended: not in the latency figures)",
                STRAGGLERS_WAIT.as_secs()
            );
        }

        let buckets = seconds.buckets.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let samples = samples.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let rows = rows(&buckets, &samples);
        let mut all = openloop::new_histogram();
        for (histogram, _) in &buckets {
            all.add(histogram).context("merging histograms")?;
        }
        let summary = summarize(&rows);
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "  publish→subscriber: {} delivered (and {} duplicates), p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms",
            all.len(),
            seconds.duplicates.load(Ordering::Acquire),
            ms(0.5),
            ms(0.99),
            ms(0.999),
            all.max() as f64 / 1000.0
        );
        let acks = &result.ack_latency;
        let ack_ms = |q: f64| acks.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "  publish→ack: p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms",
            ack_ms(0.5),
            ack_ms(0.99),
            ack_ms(0.999),
            acks.max() as f64 / 1000.0
        );
        let per_request = |h: &Histogram<u64>| {
            format!(
                "p50 {:.2} p99 {:.2} max {:.2} ms",
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            )
        };
        println!(
            "  per request: the load generator's lag (send time → started) {}; the request (started → response) {}",
            per_request(&result.send_lag),
            per_request(&result.request_latency)
        );
        println!(
            "  events over {STALL_MS} ms: {} in {} of {} seconds; RSS first minute {:.0} MiB, last minute {:.0} MiB",
            summary.over_stall,
            summary.seconds_with_stall,
            summary.seconds,
            summary.rss_first_min,
            summary.rss_last_min
        );
        match (
            memory_trend(&rows, DEDUPE_WINDOW_S, |r| r.rss_mib),
            memory_trend(&rows, DEDUPE_WINDOW_S, outside_rocksdb),
        ) {
            (Some(rss), Some(outside)) => println!(
                "  after the dedupe window filled (seconds {}-{}): RSS mean {:.1} MiB, slope {:+.1} MiB per 10 min; \
                 allocated outside RocksDB mean {:.1} MiB, slope {:+.1} MiB per 10 min",
                rss.from_s,
                rss.to_s,
                rss.mean_mib,
                rss.slope_mib_per_10_min,
                outside.mean_mib,
                outside.slope_mib_per_10_min
            ),
            _ => println!(
                "  RSS after the dedupe window filled: the run is too short to tell (under {} s)",
                DEDUPE_WINDOW_S + 60
            ),
        }
        let (first, last) = (&summary.memory_first_min, &summary.memory_last_min);
        println!(
            "  memory (all nodes, first minute → last minute, MiB): allocated {:.0} → {:.0}, of it RocksDB {:.0} → \
             {:.0}; held by the allocator, not allocated {:.0} → {:.0}; dedupe keys {:.0} → {:.0}",
            first.allocated_mib,
            last.allocated_mib,
            first.rocksdb_mib,
            last.rocksdb_mib,
            first.allocator_resident_mib - first.allocated_mib,
            last.allocator_resident_mib - last.allocated_mib,
            first.dedupe_keys,
            last.dedupe_keys
        );
        println!(
            "  WAL fsyncs over {SLOW_FSYNC_MS} ms (all nodes): {} in {} seconds; seconds with a stall and a slow \
             fsync then or the second before: {} of {}",
            summary.slow_fsyncs,
            summary.seconds_with_slow_fsync,
            summary.stalls_with_slow_fsync,
            summary.seconds_with_stall
        );
        let store = store_summary(&samples);
        println!(
            "  RocksDB (all nodes, gauges of every 5 s): compaction pending at most {:.1} MiB; seconds with writes \
             delayed or stopped on some node: {} of {}",
            store.max_compaction_pending_mib,
            store.seconds_holding_writes,
            samples.len()
        );
        match cpu_per_event(&rows) {
            Some(cpu) => {
                println!(
                    "  node CPU (all nodes) in seconds {}-{} of the run: {:.2} cores, {:.1} µs per delivered event",
                    cpu.from_s, cpu.to_s, cpu.cores, cpu.us_per_event
                );
                let shares: Vec<String> = thread_shares(&samples, cpu.from_s, cpu.to_s)
                    .iter()
                    .map(|(name, cores)| format!("{name} {cores:.2}"))
                    .collect();
                println!("  by thread (cores): {}", shares.join(", "));
                if let Some(line) = node_latency_line(&samples, cpu.from_s, cpu.to_s) {
                    println!("{line}");
                }
            }
            None => println!("  node CPU per delivered event: too few seconds with deliveries to tell"),
        }
        if let Some(csv) = &self.csv {
            std::fs::write(csv, to_csv(&rows)).with_context(|| format!("writing {}", csv.display()))?;
        }
        if let Some(plot) = &self.plot {
            let producers = match self.events_per_request {
                0 | 1 => "one per request".to_string(),
                n => format!("batches of {n}"),
            };
            let title = format!(
                "sluice-{}: {:.0} events/s, 1 KiB, {producers}, publish → subscriber (p99 {:.1} ms, max {:.1} ms)",
                self.nodes,
                self.rate,
                ms(0.99),
                all.max() as f64 / 1000.0
            );
            std::fs::write(plot, svg_plot(&rows, &title)).with_context(|| format!("writing {}", plot.display()))?;
        }
        Ok(())
    }
}

/// Half of `system`'s max publish→ack rate at 1 KiB in a `--mode compare` report, for producers that send
/// `events_per_request` events per request (the one-event row for 1, the "batches of N" row otherwise): the
/// rate the latency target is set at.
pub(crate) fn half_max_from_report(report: &serde_json::Value, system: &str, events_per_request: usize) -> Option<f64> {
    let scenario = match events_per_request {
        0 | 1 => "max publish→ack, 1 KiB".to_string(),
        n => format!("max publish→ack, 1 KiB, batches of {n}"),
    };
    let rows = report.get("rows")?.as_array()?;
    let row = rows.iter().find(|row| {
        row.get("system").and_then(|s| s.as_str()) == Some(system)
            && row.get("scenario").and_then(|s| s.as_str()) == Some(scenario.as_str())
    })?;
    Some(row.get("value")?.as_f64()? / 2.0)
}

/// What the sampler reads from the nodes once a second.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sample {
    pub rss_mib: f64,
    /// WAL fsyncs over [`SLOW_FSYNC_MS`] since each node started, summed over the nodes.
    pub slow_fsyncs_total: u64,
    /// CPU time of the node processes since they started, summed.
    pub node_cpu_us_total: u64,
    /// The same by thread name, of the threads alive when sampled.
    pub thread_cpu_us: std::collections::BTreeMap<String, u64>,
    /// What RocksDB's compaction has still to rewrite, summed over the nodes (as each last published it).
    pub compaction_pending_bytes: u64,
    /// Nodes whose RocksDB delays or stops writes until compaction catches up.
    pub nodes_holding_writes: u64,
    /// What the nodes' memory holds, summed over the nodes (as each last published it).
    pub memory: MemoryState,
    /// The nodes' own latency histograms, summed over the nodes (as each last published them).
    pub latency: NodeLatency,
}

/// The RocksDB side of a run: the most compaction had pending, and the samples in which a node held writes.
#[derive(Debug, PartialEq)]
pub(crate) struct StoreSummary {
    pub max_compaction_pending_mib: f64,
    pub seconds_holding_writes: usize,
}

pub(crate) fn store_summary(samples: &[Sample]) -> StoreSummary {
    StoreSummary {
        max_compaction_pending_mib: samples.iter().map(|s| s.compaction_pending_bytes).max().unwrap_or(0) as f64
            / (1 << 20) as f64,
        seconds_holding_writes: samples.iter().filter(|s| s.nodes_holding_writes > 0).count(),
    }
}

/// The rows of the run: one per second that received events, with the RSS sampled nearest to it, and the
/// slow fsyncs and the nodes' CPU time between that sample and the one before.
pub(crate) fn rows(buckets: &[(Histogram<u64>, u64)], samples: &[Sample]) -> Vec<Second> {
    let sample = |t: usize| samples.get(t).or(samples.last());
    buckets
        .iter()
        .enumerate()
        .filter(|(_, (histogram, _))| !histogram.is_empty())
        .map(|(t, (histogram, over))| {
            let (slow_fsyncs, node_cpu_us) =
                match (t.checked_sub(1).and_then(|before| samples.get(before)), samples.get(t)) {
                    (Some(before), Some(now)) => (
                        now.slow_fsyncs_total.saturating_sub(before.slow_fsyncs_total),
                        now.node_cpu_us_total.saturating_sub(before.node_cpu_us_total),
                    ),
                    _ => (0, 0),
                };
            Second {
                t: t as u64,
                delivered: histogram.len(),
                p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
                max_ms: histogram.max() as f64 / 1000.0,
                over_stall: *over,
                rss_mib: sample(t).map_or(0.0, |s| s.rss_mib),
                slow_fsyncs,
                node_cpu_ms: node_cpu_us as f64 / 1000.0,
                memory: sample(t).map_or(MemoryState::default(), |s| s.memory),
            }
        })
        .collect()
}

#[derive(Debug, PartialEq)]
pub(crate) struct Summary {
    pub seconds: usize,
    pub over_stall: u64,
    pub seconds_with_stall: usize,
    pub rss_first_min: f64,
    pub rss_last_min: f64,
    pub memory_first_min: MemoryState,
    pub memory_last_min: MemoryState,
    pub slow_fsyncs: u64,
    pub seconds_with_slow_fsync: usize,
    /// Seconds with a stall and a slow fsync in that second or the one before (a stalled event waited up to
    /// its latency, so the fsync that held it may have ended in the second before its delivery).
    pub stalls_with_slow_fsync: usize,
}

/// Stalls, and the mean RSS of the first and the last 60 rows.
pub(crate) fn summarize(rows: &[Second]) -> Summary {
    let mean = |rows: &[Second]| rows.iter().map(|r| r.rss_mib).sum::<f64>() / rows.len().max(1) as f64;
    let minute = rows.len().min(60);
    let mean_memory = |rows: &[Second]| {
        rows.iter().fold(MemoryState::default(), |sum, r| sum.plus(&r.memory)).scaled(1.0 / rows.len().max(1) as f64)
    };
    Summary {
        seconds: rows.len(),
        over_stall: rows.iter().map(|r| r.over_stall).sum(),
        seconds_with_stall: rows.iter().filter(|r| r.over_stall > 0).count(),
        rss_first_min: mean(&rows[..minute]),
        rss_last_min: mean(&rows[rows.len() - minute..]),
        memory_first_min: mean_memory(&rows[..minute]),
        memory_last_min: mean_memory(&rows[rows.len() - minute..]),
        slow_fsyncs: rows.iter().map(|r| r.slow_fsyncs).sum(),
        seconds_with_slow_fsync: rows.iter().filter(|r| r.slow_fsyncs > 0).count(),
        stalls_with_slow_fsync: rows
            .iter()
            .filter(|r| r.over_stall > 0)
            .filter(|r| rows.iter().any(|o| o.slow_fsyncs > 0 && (o.t == r.t || o.t + 1 == r.t)))
            .count(),
    }
}

/// The nodes' CPU over the middle of a run: its seconds, the cores they kept busy, and the CPU per event.
#[derive(Debug, PartialEq)]
pub(crate) struct CpuPerEvent {
    pub from_s: u64,
    pub to_s: u64,
    pub cores: f64,
    pub us_per_event: f64,
}

/// The cores each kind of thread (by name) kept busy from the sample before second `from_s` to that of `to_s`,
/// busiest first; empty when the samples do not reach.
pub(crate) fn thread_shares(samples: &[Sample], from_s: u64, to_s: u64) -> Vec<(String, f64)> {
    let (Some(before), Some(after)) =
        (from_s.checked_sub(1).and_then(|t| samples.get(t as usize)), samples.get(to_s as usize))
    else {
        return Vec::new();
    };
    let seconds = (to_s + 1 - from_s) as f64;
    let mut shares: Vec<(String, f64)> = after
        .thread_cpu_us
        .iter()
        .map(|(name, us)| {
            let spent = us.saturating_sub(before.thread_cpu_us.get(name).copied().unwrap_or(0));
            (name.clone(), spent as f64 / 1e6 / seconds)
        })
        .filter(|(_, cores)| *cores > 0.0)
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
}

/// The nodes' CPU per delivered event over the rows of the run's middle three fifths: the first fifth holds
/// the warm-up (connections, the first entries' allocations) and the last the drain after the producers
/// stop, where CPU and deliveries fall out of step. `None` under five rows or with nothing delivered.
pub(crate) fn cpu_per_event(rows: &[Second]) -> Option<CpuPerEvent> {
    if rows.len() < 5 {
        return None;
    }
    let fifth = rows.len() / 5;
    let middle = &rows[fifth..rows.len() - fifth];
    let delivered: u64 = middle.iter().map(|r| r.delivered).sum();
    if delivered == 0 {
        return None;
    }
    let cpu_ms: f64 = middle.iter().map(|r| r.node_cpu_ms).sum();
    let (first, last) = (middle.first()?, middle.last()?);
    Some(CpuPerEvent {
        from_s: first.t,
        to_s: last.t,
        cores: cpu_ms / 1000.0 / middle.len() as f64,
        us_per_event: cpu_ms * 1000.0 / delivered as f64,
    })
}

pub(crate) fn to_csv(rows: &[Second]) -> String {
    let mut csv = String::from(
        "t_s,delivered,p50_ms,p99_ms,max_ms,over_stall,rss_mib,slow_fsyncs,node_cpu_ms,allocated_mib,\
         allocator_resident_mib,rocksdb_mib,dedupe_keys\n",
    );
    for r in rows {
        let m = &r.memory;
        csv.push_str(&format!(
            "{},{},{:.3},{:.3},{:.3},{},{:.1},{},{:.0},{:.1},{:.1},{:.1},{:.0}\n",
            r.t,
            r.delivered,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.over_stall,
            r.rss_mib,
            r.slow_fsyncs,
            r.node_cpu_ms,
            m.allocated_mib,
            m.allocator_resident_mib,
            m.rocksdb_mib,
            m.dedupe_keys
        ));
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(t: u64, max_ms: f64, over_stall: u64, rss_mib: f64) -> Second {
        Second {
            t,
            delivered: 10,
            p50_ms: 1.0,
            p99_ms: 2.0,
            max_ms,
            over_stall,
            rss_mib,
            slow_fsyncs: 0,
            node_cpu_ms: 0.0,
            memory: MemoryState::default(),
        }
    }

    fn sample(rss_mib: f64, slow_fsyncs_total: u64) -> Sample {
        Sample { rss_mib, slow_fsyncs_total, ..Sample::default() }
    }

    #[test]
    fn thread_shares_are_the_cores_each_name_used_between_the_samples_busiest_first() {
        let at = |pairs: &[(&str, u64)]| Sample {
            thread_cpu_us: pairs.iter().map(|(name, us)| (name.to_string(), *us)).collect(),
            ..Sample::default()
        };
        let samples = [
            at(&[("tokio-rt-worker", 1_000_000), ("rocksdb:high", 50_000)]),
            at(&[("tokio-rt-worker", 2_000_000), ("rocksdb:high", 50_000)]),
            // A thread that started since is counted from zero.
            at(&[("tokio-rt-worker", 3_000_000), ("rocksdb:high", 150_000), ("rocksdb:low", 200_000)]),
        ];
        // Seconds 1-2: from sample 0 to sample 2.
        let shares = thread_shares(&samples, 1, 2);
        assert_eq!(
            shares,
            vec![
                ("tokio-rt-worker".to_string(), 1.0),
                ("rocksdb:low".to_string(), 0.1),
                ("rocksdb:high".to_string(), 0.05)
            ]
        );
        assert!(thread_shares(&samples, 0, 2).is_empty(), "no sample before second 0");
        assert!(thread_shares(&samples, 1, 3).is_empty(), "no sample for second 3");
    }

    #[test]
    fn the_store_state_comes_from_the_nodes_gauges_and_the_summary_takes_the_worst() {
        let metrics = "sluice_store_compaction_pending_bytes 2097152\n\
            sluice_store_compaction_pending_bytes_total 7\n\
            sluice_store_write_delayed_rate_bytes_per_second 0\n\
            sluice_store_writes_stopped 0\n";
        assert_eq!(store_state_in(metrics), Some(StoreState { compaction_pending_bytes: 2 << 20, writes_held: false }));
        let delayed = metrics.replace("per_second 0", "per_second 16777216");
        assert_eq!(store_state_in(&delayed).map(|s| s.writes_held), Some(true));
        let stopped = metrics.replace("writes_stopped 0", "writes_stopped 1");
        assert_eq!(store_state_in(&stopped).map(|s| s.writes_held), Some(true));
        assert_eq!(store_state_in("sluice_wal_fsync_seconds_count 3\n"), None, "not published yet");
        let samples = [(1 << 20, 0), (3 << 20, 1), (0, 0), (0, 2)].map(|(pending, held)| Sample {
            compaction_pending_bytes: pending,
            nodes_holding_writes: held,
            ..Sample::default()
        });
        assert_eq!(
            store_summary(&samples),
            StoreSummary { max_compaction_pending_mib: 3.0, seconds_holding_writes: 2 }
        );
    }

    #[test]
    fn cpu_per_event_is_the_middle_three_fifths_cpu_over_their_deliveries() {
        let mut histograms = Vec::new();
        for _ in 0..10 {
            let mut histogram = openloop::new_histogram();
            histogram.record(1_000).expect("record");
            histograms.push((histogram, 0));
        }
        // The nodes' CPU: 900 ms in the first second (warm-up), then 100 ms a second, 700 ms in the last.
        let mut total = 0;
        let samples: Vec<Sample> = (0..10)
            .map(|t| {
                total += match t {
                    1 => 900_000,
                    9 => 700_000,
                    0 => 0,
                    _ => 100_000,
                };
                Sample { rss_mib: 1.0, node_cpu_us_total: total, ..Sample::default() }
            })
            .collect();
        let rows = rows(&histograms, &samples);
        assert_eq!(rows.iter().map(|r| r.node_cpu_ms).collect::<Vec<_>>()[..3], [0.0, 900.0, 100.0]);
        // Rows 2..8: 6 seconds of 100 ms of CPU and one event each.
        let cpu = cpu_per_event(&rows).expect("enough rows");
        assert_eq!((cpu.from_s, cpu.to_s), (2, 7));
        assert!((cpu.cores - 0.1).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.us_per_event - 100_000.0).abs() < 1e-6, "{cpu:?}");
        assert_eq!(cpu_per_event(&rows[..4]), None, "too short to leave out its ends");
    }

    #[test]
    fn a_stall_counts_as_the_disks_when_a_slow_fsync_came_in_its_second_or_the_one_before() {
        let mut histograms = Vec::new();
        for max_us in [2_000, 2_000, 90_000, 2_000, 80_000, 70_000] {
            let mut histogram = openloop::new_histogram();
            histogram.record(max_us).expect("record");
            histograms.push((histogram, u64::from(max_us > 50_000)));
        }
        // Cumulative slow fsyncs as sampled: one between samples 0 and 1 (second 1), two in second 3.
        let samples = [0, 1, 1, 3, 3, 3].map(|total| sample(100.0, total));
        let rows = rows(&histograms, &samples);
        assert_eq!(rows.iter().map(|r| r.slow_fsyncs).collect::<Vec<_>>(), [0, 1, 0, 2, 0, 0]);
        let summary = summarize(&rows);
        assert_eq!((summary.slow_fsyncs, summary.seconds_with_slow_fsync), (3, 2));
        // Second 2 follows second 1's slow fsync; second 4 follows second 3's; second 5 has none near it.
        assert_eq!((summary.seconds_with_stall, summary.stalls_with_slow_fsync), (3, 2));
    }

    #[test]
    fn half_the_max_comes_from_the_row_of_the_system_and_its_events_per_request() {
        let report = serde_json::json!({"rows": [
            {"system": "sluice-3", "scenario": "max publish→ack, 1 KiB, batches of 64", "value": 30000.0},
            {"system": "sluice-1", "scenario": "max publish→ack, 1 KiB", "value": 9000.0},
            {"system": "sluice-3", "scenario": "max publish→ack, 1 KiB", "value": 4271.0},
        ]});
        assert_eq!(half_max_from_report(&report, "sluice-3", 1), Some(2135.5));
        assert_eq!(half_max_from_report(&report, "sluice-3", 64), Some(15000.0));
        assert_eq!(half_max_from_report(&report, "sluice-3", 16), None, "no probe in batches of 16");
        assert_eq!(half_max_from_report(&report, "sluice-1", 64), None);
        assert_eq!(half_max_from_report(&report, "sluice-5", 1), None);
        assert_eq!(half_max_from_report(&serde_json::json!({}), "sluice-3", 1), None);
    }

    #[test]
    fn rows_skip_empty_seconds_and_take_the_nearest_rss() {
        let mut quiet = openloop::new_histogram();
        quiet.record(2_000).expect("record");
        let mut slow = openloop::new_histogram();
        slow.record(80_000).expect("record");
        let buckets = vec![(quiet, 0), (openloop::new_histogram(), 0), (slow, 1)];
        let rows = rows(&buckets, &[sample(100.0, 0), sample(101.0, 0)]);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].t, rows[0].rss_mib), (0, 100.0));
        assert_eq!((rows[1].t, rows[1].over_stall, rows[1].rss_mib), (2, 1, 101.0), "past the samples: the last");
        assert!((rows[1].max_ms - 80.0).abs() < 0.1);
    }

    #[test]
    fn the_summary_counts_stalls_and_compares_the_first_and_last_minutes() {
        let rows: Vec<Second> = (0..180).map(|t| second(t, 5.0, u64::from(t == 90) * 3, 100.0 + t as f64)).collect();
        let summary = summarize(&rows);
        assert_eq!((summary.seconds, summary.over_stall, summary.seconds_with_stall), (180, 3, 1));
        assert!((summary.rss_first_min - 129.5).abs() < 1e-9);
        assert!((summary.rss_last_min - 249.5).abs() < 1e-9);
        let short = summarize(&rows[..10]);
        assert_eq!(short.rss_first_min, short.rss_last_min);
    }

    #[test]
    fn the_csv_and_the_plot_carry_every_row() {
        let rows = vec![second(0, 3.0, 0, 90.0), second(1, 60.0, 2, 91.0)];
        let csv = to_csv(&rows);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.lines().nth(2).is_some_and(|l| l == "1,10,1.000,2.000,60.000,2,91.0,0,0,0.0,0.0,0.0,0"));
        let svg = svg_plot(&rows, "a <title> & more");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("a &lt;title&gt; &amp; more"));
    }
}
