//! A partition dispatcher's gauges per consumer (`sluice_dispatch_backlog`, `_inflight`, `_pending`,
//! `_oldest_undelivered_age_seconds`): in, its consumers at each commit tick, or one it stops dispatching; out,
//! the gauges set, or zeroed.

use super::reading::Consumer;
use crate::consumer::ConsumerSpec;

const GAUGES: [&str; 4] = [
    "sluice_dispatch_backlog",
    "sluice_dispatch_inflight",
    "sluice_dispatch_pending",
    "sluice_dispatch_oldest_undelivered_age_seconds",
];

fn labels(spec: &ConsumerSpec, partition: u32) -> [(&'static str, String); 4] {
    [
        ("consumer", spec.name.clone()),
        ("namespace", spec.namespace.clone()),
        ("kind", spec.kind.as_str().to_string()),
        ("partition", partition.to_string()),
    ]
}

/// Sets the gauges of `consumers` of `partition`, whose stream holds `[start, end)`, at `now_ms`.
pub(super) fn publish<'a>(
    consumers: impl Iterator<Item = &'a Consumer>,
    (start, end): (u64, u64),
    now_ms: u64,
    partition: u32,
) {
    for consumer in consumers {
        let labels = labels(&consumer.spec, partition);
        let oldest_s = consumer
            .oldest_pending_arrival_ms()
            .map(|arrival_ms| now_ms.saturating_sub(arrival_ms) as f64 / 1000.0)
            .unwrap_or(0.0);
        let values = [
            // Not committed yet: it started where its window did.
            crate::stats::backlog(consumer.committed.unwrap_or_else(|| consumer.window.watermark()), start, end) as f64,
            consumer.window.in_flight() as f64,
            consumer.window.pending() as f64,
            oldest_s,
        ];
        for (gauge, value) in GAUGES.into_iter().zip(values) {
            metrics::gauge!(gauge, &labels).set(value);
        }
    }
}

/// Zeroes a consumer's gauges on this node when it stops dispatching it (the consumer was deleted or changed,
/// or the partition's leadership went elsewhere). Regression: they kept their last values, so sums over the
/// nodes counted a moved partition twice and an alert on the oldest undelivered age kept firing.
pub(super) fn clear(spec: &ConsumerSpec, partition: u32) {
    let labels = labels(spec, partition);
    for gauge in GAUGES {
        metrics::gauge!(gauge, &labels).set(0.0);
    }
}
