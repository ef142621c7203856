//! Retention: how much of each broker's or channel's stream is kept, and a
//! task that trims streams on the partitions this node leads.
//!
//! `sluice.dev/retention` on a Broker or Channel: a duration, a size, or
//! both (`7d`, `24h`, `10GiB`, `24h,10GiB`); default 7 days, no size limit.
//! Trimming goes through Raft (`LogCommand::Trim`), so every replica drops
//! the same records; offsets are never reused. The stream of a deleted
//! Broker or Channel keeps the default retention, so its events go in time.

use std::time::Duration;

use sluice_controller::validate::{parse_duration, parse_size};

use crate::command::partition_group;
use crate::node::Node;
use crate::store::StreamExtent;

pub(crate) const ANNOTATION_RETENTION: &str = "sluice.dev/retention";
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RetentionPolicy {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
}

impl RetentionPolicy {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut policy = RetentionPolicy { max_age: None, max_bytes: None };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(bytes) = parse_size(part) {
                policy.max_bytes = Some(bytes);
            } else {
                policy.max_age = Some(parse_duration(part).ok()?);
            }
        }
        Some(policy)
    }

    /// The policy of a resource object (its annotation, else the default).
    pub(crate) fn from_object(json: &str) -> Self {
        let object: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        object
            .pointer(&format!("/metadata/annotations/{}", ANNOTATION_RETENTION.replace('/', "~1")))
            .and_then(|v| v.as_str())
            .and_then(RetentionPolicy::parse)
            .unwrap_or(RetentionPolicy { max_age: Some(DEFAULT_RETENTION), max_bytes: None })
    }
}

/// The offset below which records go, or None when nothing is due.
///
/// `first_young_offset`: the first offset whose arrival is within `max_age`
/// (what the time index answers for `now - max_age`). `sizes`: `(offset,
/// bytes)` of the retained records from the start, needed only with `max_bytes`.
pub(crate) fn trim_point(
    policy: &RetentionPolicy,
    extent: StreamExtent,
    first_young_offset: u64,
    sizes: &[(u64, u64)],
) -> Option<u64> {
    let mut point = extent.start_offset;
    if policy.max_age.is_some() {
        point = point.max(first_young_offset.min(extent.end_offset));
    }
    if let Some(max_bytes) = policy.max_bytes.filter(|max| extent.retained_bytes > *max) {
        // Drop the oldest records until what is left fits.
        let mut remaining = extent.retained_bytes;
        let mut size_point = extent.end_offset;
        for (offset, bytes) in sizes {
            if remaining <= max_bytes {
                size_point = *offset;
                break;
            }
            remaining = remaining.saturating_sub(*bytes);
        }
        point = point.max(size_point);
    }
    (point > extent.start_offset).then_some(point)
}

/// Every `interval`, trims the streams of the partitions this node leads.
pub(crate) async fn run(node: Node, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // A removed node leads no partition (its groups are stopped).
        if node.is_removed() {
            continue;
        }
        if let Err(e) = enforce_once(&node).await {
            tracing::warn!(error = %e, "retention pass failed");
        }
    }
}

async fn enforce_once(node: &Node) -> Result<(), crate::error::BrokerError> {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut policies = std::collections::HashMap::new();
    for kind in ["Broker", "Channel", "InMemoryChannel"] {
        for (key, json) in node.resources(kind) {
            policies.insert(
                crate::resources::stream_name(kind, &key.namespace, &key.name),
                RetentionPolicy::from_object(&json),
            );
        }
    }
    // A stream whose Broker or Channel was deleted keeps the default retention.
    let default_policy = RetentionPolicy::from_object("{}");
    for partition in 0..node.partitions() {
        let group = node.group(partition_group(partition))?;
        if !group.is_leader(node.id()) {
            continue;
        }
        for stream in group.view.stream_names() {
            let policy = policies.get(&stream).unwrap_or(&default_policy);
            let stream = &stream;
            let extent = group.view.extent(stream);
            if extent.end_offset == extent.start_offset {
                continue;
            }
            let first_young = match policy.max_age {
                Some(age) => group
                    .view
                    // Saturated, not truncated: a huge age (`18446744073709552s`) wrapped to 384 ms, and the pass
                    // trimmed everything older than that.
                    .offset_for_time(stream, now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)))
                    .map_err(|e| crate::error::BrokerError::io("reading the time index", e))?,
                None => extent.start_offset,
            };
            let sizes = match policy.max_bytes {
                Some(max) if extent.retained_bytes > max => group
                    .view
                    .record_sizes_to_drop(stream, extent.retained_bytes - max)
                    .map_err(|e| crate::error::BrokerError::io("reading record sizes", e))?,
                _ => Vec::new(),
            };
            if let Some(before_offset) = trim_point(policy, extent, first_young, &sizes) {
                tracing::info!(%stream, partition, before_offset, "retention trims");
                node.trim(partition, stream, before_offset).await?;
                metrics::counter!("sluice_retention_trimmed_records_total")
                    .increment(before_offset.saturating_sub(extent.start_offset));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(start: u64, end: u64, bytes: u64) -> StreamExtent {
        StreamExtent { start_offset: start, end_offset: end, retained_bytes: bytes }
    }

    #[test]
    fn policies_parse() {
        assert_eq!(
            RetentionPolicy::parse("24h"),
            Some(RetentionPolicy { max_age: Some(Duration::from_secs(86400)), max_bytes: None })
        );
        assert_eq!(RetentionPolicy::parse("10GiB"), Some(RetentionPolicy { max_age: None, max_bytes: Some(10 << 30) }));
        assert_eq!(
            RetentionPolicy::parse("PT1H,1MiB"),
            Some(RetentionPolicy { max_age: Some(Duration::from_secs(3600)), max_bytes: Some(1 << 20) })
        );
        assert_eq!(RetentionPolicy::parse("forever"), None);
        assert_eq!(RetentionPolicy::from_object("{}").max_age, Some(DEFAULT_RETENTION));
    }

    #[test]
    fn age_trims_below_the_first_young_record() {
        let policy = RetentionPolicy { max_age: Some(Duration::from_secs(60)), max_bytes: None };
        assert_eq!(trim_point(&policy, extent(0, 10, 100), 4, &[]), Some(4));
        assert_eq!(trim_point(&policy, extent(4, 10, 60), 4, &[]), None, "nothing new is due");
        assert_eq!(trim_point(&policy, extent(0, 10, 100), 10, &[]), Some(10), "everything is old");
        assert_eq!(trim_point(&policy, extent(0, 10, 100), 0, &[]), None, "everything is young");
    }

    #[test]
    fn size_trims_the_oldest_until_it_fits() {
        let policy = RetentionPolicy { max_age: None, max_bytes: Some(25) };
        let sizes = [(0, 10), (1, 10), (2, 10), (3, 10)];
        assert_eq!(trim_point(&policy, extent(0, 4, 40), 0, &sizes), Some(2), "drop 20 bytes to keep 20 <= 25");
        assert_eq!(trim_point(&policy, extent(2, 4, 20), 2, &sizes[2..]), None, "fits already");
        let both = RetentionPolicy { max_age: Some(Duration::from_secs(1)), max_bytes: Some(25) };
        assert_eq!(trim_point(&both, extent(0, 4, 40), 3, &sizes), Some(3), "the stricter of the two wins");
    }
}
