//! Where an event goes: its partition (stable across builds and platforms) and its ordering key.

use crate::model::{AttrValue, CloudEvent};

/// FNV-1a 64: stable across builds and platforms (partition choice must never change).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash ^= 0xff;
            hash = hash.wrapping_mul(0x100000001b3);
        }
        for &b in *part {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    hash
}

/// The partition of an event: `partitionkey` if set, else (`source`, `id`).
pub fn partition_of(event: &CloudEvent, partitions: u32) -> u32 {
    let hash = match event.get("partitionkey") {
        Some(key) => stable_hash(&[key.to_canonical_string().as_bytes()]),
        None => stable_hash(&[
            event.get_str("source").unwrap_or_default().as_bytes(),
            event.get_str("id").unwrap_or_default().as_bytes(),
        ]),
    };
    (hash % u64::from(partitions.max(1))) as u32
}

/// The ordering key of an event: its `partitionkey` extension (CloudEvents partitioning).
pub fn ordering_key(event: &CloudEvent) -> Option<String> {
    event.get("partitionkey").map(AttrValue::to_canonical_string)
}
