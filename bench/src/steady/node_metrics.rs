//! What the steady and backlog benches read from a node's `/metrics` text: slow WAL fsyncs, RocksDB's
//! compaction state, what the node's memory holds, and the node's own latency histograms. In: the text (fetched by [`metrics_text`]); out: plain
//! figures (pure functions).

use std::time::Duration;

/// A node's `/metrics` text, or an empty one if it does not answer within `timeout` (every reader below then
/// answers `None`, and the caller keeps what it read last).
pub(crate) async fn metrics_text(client: &reqwest::Client, url: &str, timeout: Duration) -> String {
    match client.get(url).timeout(timeout).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A WAL fsync slower than this (an upper bound of `sluice_wal_fsync_seconds`' buckets, 0.032 s) is a slow one:
/// a second with a stall and a slow fsync on some node is a stall the disk shares in.
pub(crate) const SLOW_FSYNC_MS: u32 = 32;

/// One node's RocksDB gauges (`sluice_store_compaction_pending_bytes`, `sluice_store_write_delayed_rate_bytes_per_second`,
/// `sluice_store_writes_stopped`), published every 5 s.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct StoreState {
    pub compaction_pending_bytes: u64,
    pub writes_held: bool,
}

/// A node's memory as it publishes it (`sluice_allocator_bytes`, `sluice_store_*_bytes`, `sluice_dedupe_keys`):
/// what a growing RSS is made of. Mean of a minute, or summed over nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct MemoryState {
    /// What the process holds through the allocator (Rust and RocksDB alike: jemalloc serves both).
    pub allocated_mib: f64,
    /// The pages the allocator keeps resident: `allocated` plus what it keeps for reuse.
    pub allocator_resident_mib: f64,
    /// RocksDB's memtables, table readers and block cache.
    pub rocksdb_mib: f64,
    /// The dedupe keys held in memory, over the node's groups.
    pub dedupe_keys: f64,
}

impl MemoryState {
    pub(crate) fn plus(&self, other: &MemoryState) -> MemoryState {
        MemoryState {
            allocated_mib: self.allocated_mib + other.allocated_mib,
            allocator_resident_mib: self.allocator_resident_mib + other.allocator_resident_mib,
            rocksdb_mib: self.rocksdb_mib + other.rocksdb_mib,
            dedupe_keys: self.dedupe_keys + other.dedupe_keys,
        }
    }

    pub(crate) fn scaled(&self, factor: f64) -> MemoryState {
        MemoryState {
            allocated_mib: self.allocated_mib * factor,
            allocator_resident_mib: self.allocator_resident_mib * factor,
            rocksdb_mib: self.rocksdb_mib * factor,
            dedupe_keys: self.dedupe_keys * factor,
        }
    }
}

/// A node's [`MemoryState`] from its `/metrics` text; `None` before it first published its allocator's figures.
pub(crate) fn memory_state_in(metrics: &str) -> Option<MemoryState> {
    let mib = |bytes: f64| bytes / (1 << 20) as f64;
    let allocated = gauge_in(metrics, "sluice_allocator_bytes{kind=\"allocated\"}")?;
    let resident = gauge_in(metrics, "sluice_allocator_bytes{kind=\"resident\"}").unwrap_or(allocated);
    let rocksdb: f64 =
        ["sluice_store_memtable_bytes", "sluice_store_table_readers_bytes", "sluice_store_block_cache_bytes"]
            .iter()
            .filter_map(|name| gauge_in(metrics, name))
            .sum();
    Some(MemoryState {
        allocated_mib: mib(allocated),
        allocator_resident_mib: mib(resident),
        rocksdb_mib: mib(rocksdb),
        dedupe_keys: series_sum_in(metrics, "sluice_dedupe_keys"),
    })
}

/// The sum of every series of `name`, whatever its labels (0 when there is none).
fn series_sum_in(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// The value of the series `name` (labels included, as the text writes them) in a `/metrics` text.
fn gauge_in(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
}

/// A node's [`StoreState`] from its `/metrics` text; `None` before it first published the gauges.
pub(crate) fn store_state_in(metrics: &str) -> Option<StoreState> {
    let pending = gauge_in(metrics, "sluice_store_compaction_pending_bytes")?;
    let delayed = gauge_in(metrics, "sluice_store_write_delayed_rate_bytes_per_second").unwrap_or(0.0);
    let stopped = gauge_in(metrics, "sluice_store_writes_stopped").unwrap_or(0.0);
    Some(StoreState { compaction_pending_bytes: pending as u64, writes_held: delayed > 0.0 || stopped > 0.0 })
}

/// WAL fsyncs slower than [`SLOW_FSYNC_MS`] since the node started, from its `/metrics` text: the
/// histogram's count less its bucket at that bound. `None` when the text has neither.
pub(crate) fn slow_fsyncs_in(metrics: &str) -> Option<u64> {
    let bound_s = f64::from(SLOW_FSYNC_MS) / 1000.0;
    let bucket = format!("sluice_wal_fsync_seconds_bucket{{le=\"{bound_s}\"}}");
    let (count, fast) = (gauge_in(metrics, "sluice_wal_fsync_seconds_count")?, gauge_in(metrics, &bucket)?);
    Some((count as u64).saturating_sub(fast as u64))
}

/// A histogram's cumulative bucket counts, summed over the series of `name` whose labels `keep` accepts:
/// (upper bound, count), bounds ascending, `+Inf` last. Empty when the text has none.
pub(crate) fn buckets_in(metrics: &str, name: &str, keep: impl Fn(&str) -> bool) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in metrics.lines() {
        let Some((labels, value)) = line.strip_prefix(prefix.as_str()).and_then(|rest| rest.split_once("} ")) else {
            continue;
        };
        if !keep(labels) {
            continue;
        }
        let Some(bound) = labels.split("le=\"").nth(1).and_then(|rest| rest.split('"').next()) else { continue };
        let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse::<f64>().unwrap_or(f64::NAN) };
        let Ok(count) = value.trim().parse::<f64>() else { continue };
        if bound.is_nan() {
            continue;
        }
        match buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, sum)) => *sum += count as u64,
            None => buckets.push((bound, count as u64)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// Bucket counts of several nodes added bound by bound (the nodes share their bounds).
pub(crate) fn add_buckets(sum: &mut Vec<(f64, u64)>, node: &[(f64, u64)]) {
    for (bound, count) in node {
        match sum.iter_mut().find(|(b, _)| b == bound) {
            Some((_, total)) => *total += count,
            None => sum.push((*bound, *count)),
        }
    }
    sum.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// What was recorded between two reads of a cumulative histogram: how many samples, and the share (0..=1) of
/// them under each finite bound. `None` when nothing was recorded in between.
pub(crate) fn shares_between(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<(u64, Vec<(f64, f64)>)> {
    let count_at =
        |buckets: &[(f64, u64)], bound: f64| buckets.iter().find(|(b, _)| *b == bound).map_or(0, |(_, c)| *c);
    let total = count_at(after, f64::INFINITY).saturating_sub(count_at(before, f64::INFINITY));
    if total == 0 {
        return None;
    }
    let shares = after
        .iter()
        .filter(|(bound, _)| bound.is_finite())
        .map(|(bound, count)| (*bound, count.saturating_sub(count_at(before, *bound)) as f64 / total as f64))
        .collect();
    Some((total, shares))
}

/// The node's side of a request's time, as its `/metrics` publishes it (cumulative bucket counts): the ingress
/// handler per request (Knative's `event_dispatch_latencies` of the Broker, in ms: body read, forward to the
/// leader, commit and answer; the dispatcher's series of the same name carry a `trigger_name` and are left
/// out) and Raft's commit per entry (`sluice_raft_commit_seconds`, in s).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NodeLatency {
    pub ingress_ms: Vec<(f64, u64)>,
    pub commit_s: Vec<(f64, u64)>,
}

impl NodeLatency {
    /// `None` before the node published either histogram.
    pub(crate) fn read(metrics: &str) -> Option<NodeLatency> {
        let read = NodeLatency {
            ingress_ms: buckets_in(metrics, "event_dispatch_latencies", |labels| {
                labels.contains("broker_name=") && !labels.contains("trigger_name=")
            }),
            commit_s: buckets_in(metrics, "sluice_raft_commit_seconds", |_| true),
        };
        (!read.ingress_ms.is_empty() || !read.commit_s.is_empty()).then_some(read)
    }

    pub(crate) fn plus(&self, other: &NodeLatency) -> NodeLatency {
        let mut sum = self.clone();
        add_buckets(&mut sum.ingress_ms, &other.ingress_ms);
        add_buckets(&mut sum.commit_s, &other.commit_s);
        sum
    }
}

/// The share of the node-side samples under each bound, from the sample before second `from_s` to that of
/// `to_s`: up to the first bound that holds them all.
pub(crate) fn node_latency_line(samples: &[super::Sample], from_s: u64, to_s: u64) -> Option<String> {
    let before = samples.get(from_s.checked_sub(1)? as usize)?;
    let after = samples.get(to_s as usize)?;
    let told = |before: &[(f64, u64)], after: &[(f64, u64)], scale: f64, unit: &str| -> Option<String> {
        let (count, shares) = shares_between(before, after)?;
        let mut parts = Vec::new();
        for (bound, share) in shares {
            if share > 0.0 {
                // Rounded so that 0.008 s reads 8 ms, not 8.000000000000002.
                parts.push(format!("{:.1} % under {} {unit}", share * 100.0, (bound * scale * 1e3).round() / 1e3));
            }
            if share >= 1.0 {
                break;
            }
        }
        Some(format!("{count}: {}", parts.join(", ")))
    };
    let ingress = told(&before.latency.ingress_ms, &after.latency.ingress_ms, 1.0, "ms");
    let commit = told(&before.latency.commit_s, &after.latency.commit_s, 1000.0, "ms");
    if ingress.is_none() && commit.is_none() {
        return None;
    }
    Some(format!(
        "  node side, same seconds: ingress handler per request {}; Raft commit per entry {}",
        ingress.unwrap_or_else(|| "none recorded".into()),
        commit.unwrap_or_else(|| "none recorded".into())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steady::Sample;

    #[test]
    fn the_node_side_line_tells_the_shares_between_the_window_s_samples_up_to_the_bound_holding_all() {
        let at = |ingress: [u64; 4], commit: [u64; 3]| Sample {
            latency: NodeLatency {
                ingress_ms: [2.0, 5.0, 10.0, f64::INFINITY].into_iter().zip(ingress).collect(),
                commit_s: [0.002, 0.004, f64::INFINITY].into_iter().zip(commit).collect(),
            },
            ..Sample::default()
        };
        // Seconds 1-2: the sample before second 1 is samples[0], that of second 2 is samples[2].
        let samples = [at([1, 2, 3, 3], [5, 5, 5]), at([0; 4], [0; 3]), at([1, 32, 42, 43], [25, 45, 45])];
        let line = node_latency_line(&samples, 1, 2).expect("a line");
        assert_eq!(
            line,
            "  node side, same seconds: ingress handler per request 40: 75.0 % under 5 ms, 97.5 % under 10 ms; \
             Raft commit per entry 40: 50.0 % under 2 ms, 100.0 % under 4 ms"
        );
        assert_eq!(node_latency_line(&samples, 0, 2), None, "no sample before the window");
        assert_eq!(node_latency_line(&vec![at([1, 1, 1, 1], [1; 3]); 3], 1, 2), None, "nothing recorded");
    }

    #[test]
    fn buckets_are_summed_over_the_kept_series_and_differenced_between_reads() {
        let read = |fast: u64, slow: u64, dispatched: u64| {
            format!(
                "# TYPE event_dispatch_latencies histogram\n\
                 event_dispatch_latencies_bucket{{broker_name=\"b\",event_type=\"x\",le=\"5\"}} {fast}\n\
                 event_dispatch_latencies_bucket{{broker_name=\"b\",event_type=\"x\",le=\"+Inf\"}} {}\n\
                 event_dispatch_latencies_bucket{{broker_name=\"b\",event_type=\"y\",le=\"5\"}} 0\n\
                 event_dispatch_latencies_bucket{{broker_name=\"b\",event_type=\"y\",le=\"+Inf\"}} {slow}\n\
                 event_dispatch_latencies_bucket{{broker_name=\"b\",trigger_name=\"t\",le=\"5\"}} {dispatched}\n\
                 event_dispatch_latencies_bucket{{broker_name=\"b\",trigger_name=\"t\",le=\"+Inf\"}} {dispatched}\n\
                 event_dispatch_latencies_count{{broker_name=\"b\",event_type=\"x\"}} {}\n",
                fast + 1,
                fast + 1
            )
        };
        let ingress =
            |text: &str| buckets_in(text, "event_dispatch_latencies", |labels| !labels.contains("trigger_name="));
        let before = ingress(&read(10, 2, 500));
        assert_eq!(before, [(5.0, 10), (f64::INFINITY, 13)], "the dispatcher's series left out");
        let after = ingress(&read(40, 12, 900));
        let (count, shares) = shares_between(&before, &after).expect("recorded");
        assert_eq!(count, 40, "30 fast, 10 slow in between");
        assert_eq!(shares, [(5.0, 0.75)]);
        assert_eq!(shares_between(&after, &after), None, "nothing in between");
        let mut sum = before.clone();
        add_buckets(&mut sum, &after);
        assert_eq!(sum, [(5.0, 50), (f64::INFINITY, 66)]);
        assert!(buckets_in("sluice_wal_fsync_seconds_count 3\n", "event_dispatch_latencies", |_| true).is_empty());
    }

    #[test]
    fn memory_comes_from_the_allocator_and_store_gauges_and_sums_the_groups_dedupe_keys() {
        let metrics = "sluice_allocator_bytes{kind=\"allocated\"} 104857600\n\
            sluice_allocator_bytes{kind=\"active\"} 110100480\n\
            sluice_allocator_bytes{kind=\"resident\"} 125829120\n\
            sluice_store_memtable_bytes 8388608\n\
            sluice_store_table_readers_bytes 1048576\n\
            sluice_store_block_cache_bytes 2097152\n\
            sluice_store_block_cache_pinned_bytes 1048576\n\
            sluice_dedupe_keys{group=\"p0\"} 1000\n\
            sluice_dedupe_keys{group=\"p1\"} 500\n\
            sluice_dedupe_keys_total 9\n";
        let memory = memory_state_in(metrics).expect("published");
        assert_eq!(
            memory,
            MemoryState { allocated_mib: 100.0, allocator_resident_mib: 120.0, rocksdb_mib: 11.0, dedupe_keys: 1500.0 }
        );
        assert_eq!(memory_state_in("sluice_store_memtable_bytes 1\n"), None, "the allocator's figures not published");
        assert_eq!(memory.plus(&memory).scaled(0.5), memory);
    }

    #[test]
    fn slow_fsyncs_are_the_count_less_the_bucket_at_32_ms() {
        let metrics = "# TYPE sluice_wal_fsync_seconds histogram\n\
            sluice_wal_fsync_seconds_bucket{le=\"0.016\"} 7349\n\
            sluice_wal_fsync_seconds_bucket{le=\"0.032\"} 7350\n\
            sluice_wal_fsync_seconds_bucket{le=\"0.064\"} 7351\n\
            sluice_wal_fsync_seconds_bucket{le=\"+Inf\"} 7352\n\
            sluice_wal_fsync_seconds_sum 1.46\n\
            sluice_wal_fsync_seconds_count 7352\n";
        assert_eq!(slow_fsyncs_in(metrics), Some(2));
        assert_eq!(slow_fsyncs_in("sluice_wal_fsync_seconds_count 3\n"), None, "no bucket: unknown, not zero");
        assert_eq!(slow_fsyncs_in(""), None);
    }
}
