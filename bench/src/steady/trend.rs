//! Is memory flat once warmed up? In: the run's seconds; out: a least-squares line through one figure of them
//! (RSS, or what the allocator holds outside RocksDB) from a given second on.

use super::Second;

/// A least-squares line through one figure of the rows from second `from_s` on: is memory flat once warmed up?
#[derive(Debug, PartialEq)]
pub(crate) struct Trend {
    pub from_s: u64,
    pub to_s: u64,
    pub mean_mib: f64,
    pub slope_mib_per_10_min: f64,
}

/// What the allocator holds for the node itself, RocksDB's bounded memtables and caches left out.
pub(crate) fn outside_rocksdb(row: &Second) -> f64 {
    row.memory.allocated_mib - row.memory.rocksdb_mib
}

/// The [`Trend`] of `figure` over the rows from second `from_s`; `None` under a minute of them (a slope over
/// less says nothing about a creep).
pub(crate) fn memory_trend(rows: &[Second], from_s: u64, figure: impl Fn(&Second) -> f64) -> Option<Trend> {
    let after: Vec<(f64, f64)> = rows.iter().filter(|r| r.t >= from_s).map(|r| (r.t as f64, figure(r))).collect();
    let (first, last) = (after.first()?.0, after.last()?.0);
    if last - first < 60.0 {
        return None;
    }
    let n = after.len() as f64;
    let (mean_t, mean_y) = (after.iter().map(|p| p.0).sum::<f64>() / n, after.iter().map(|p| p.1).sum::<f64>() / n);
    let covariance: f64 = after.iter().map(|(t, y)| (t - mean_t) * (y - mean_y)).sum();
    let variance: f64 = after.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    Some(Trend {
        from_s: first as u64,
        to_s: last as u64,
        mean_mib: mean_y,
        slope_mib_per_10_min: covariance / variance * 600.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steady::DEDUPE_WINDOW_S;
    use crate::steady::node_metrics::MemoryState;

    fn second(t: u64, rss_mib: f64) -> Second {
        Second {
            t,
            delivered: 10,
            p50_ms: 1.0,
            p99_ms: 2.0,
            max_ms: 5.0,
            over_stall: 0,
            rss_mib,
            slow_fsyncs: 0,
            node_cpu_ms: 0.0,
            memory: MemoryState {
                allocated_mib: rss_mib - 20.0,
                allocator_resident_mib: rss_mib,
                rocksdb_mib: 30.0,
                dedupe_keys: 0.0,
            },
        }
    }

    #[test]
    fn the_trend_is_a_least_squares_line_over_the_seconds_after_the_warm_up() {
        // 100 MiB growing 1 MiB a second while the window fills, then 300 MiB ± 2 alternating: flat.
        let rows: Vec<Second> = (0..400)
            .map(|t| {
                let rss = if t < 120 { 100.0 + t as f64 } else { 300.0 + if t % 2 == 0 { 2.0 } else { -2.0 } };
                second(t, rss)
            })
            .collect();
        let flat = memory_trend(&rows, DEDUPE_WINDOW_S, |r| r.rss_mib).expect("280 s after the warm-up");
        assert_eq!((flat.from_s, flat.to_s), (120, 399));
        assert!((flat.mean_mib - 300.0).abs() < 1e-9, "{flat:?}");
        assert!(flat.slope_mib_per_10_min.abs() < 0.1, "{flat:?}");
        let whole = memory_trend(&rows, 0, |r| r.rss_mib).expect("400 s");
        assert!(whole.slope_mib_per_10_min > 100.0, "the warm-up counted: {whole:?}");
        let creeping: Vec<Second> = (0..300).map(|t| second(t, 200.0 + t as f64 / 60.0)).collect();
        let creep = memory_trend(&creeping, DEDUPE_WINDOW_S, |r| r.rss_mib).expect("180 s");
        assert!((creep.slope_mib_per_10_min - 10.0).abs() < 1e-6, "1 MiB a minute: {creep:?}");
        assert_eq!(memory_trend(&rows[..150], DEDUPE_WINDOW_S, |r| r.rss_mib), None, "30 s after the warm-up");
        assert_eq!(memory_trend(&[], 0, |r| r.rss_mib), None);
        let outside = memory_trend(&rows, DEDUPE_WINDOW_S, outside_rocksdb).expect("the same seconds");
        assert!((outside.mean_mib - 250.0).abs() < 1e-9, "RSS less 20 MiB held, less 30 of RocksDB: {outside:?}");
    }
}
