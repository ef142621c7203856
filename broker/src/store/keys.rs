//! RocksDB key layout. Every key starts with the 4-byte big-endian group id,
//! so a group's data is one contiguous range in each column family (snapshots
//! and snapshot installs work on that range). Integers are big-endian so that
//! byte order is numeric order.
//!
//! | column family | key                                        | value                      |
//! |---------------|--------------------------------------------|----------------------------|
//! | `raft_log`    | group · index                              | postcard(Entry)            |
//! | `raft_state`  | group · tag (vote, committed, last purged) | postcard(value)            |
//! | `events`      | group · stream id · offset                 | arrival_ms · payload       |
//! | `time_index`  | group · stream id · arrival_ms · offset    | 1 · the stored events' key |
//! |               |                                            | fingerprints (dedupe on), 0|
//! |               |                                            | (off), empty (earlier      |
//! |               |                                            | versions)                  |
//! | `sm_state`    | group · tag [· name]                       | postcard(value) or JSON    |
//! | `sm_state`    | group · 6 · cursor name                    | committed offset (u64 BE)  |
//! | `dedupe`      | group · stream id · 1 · key                | arrival_ms (seen at; only  |
//! |               |                                            | earlier versions wrote it) |
//! | `dedupe`      | group · stream id · 2 · arrival_ms · key   | (empty; expiry order; only |
//! |               |                                            | earlier versions wrote it) |

use crate::ids::GroupId;

pub(crate) const CF_RAFT_LOG: &str = "raft_log";
pub(crate) const CF_RAFT_STATE: &str = "raft_state";
pub(crate) const CF_EVENTS: &str = "events";
pub(crate) const CF_TIME_INDEX: &str = "time_index";
pub(crate) const CF_SM_STATE: &str = "sm_state";
pub(crate) const CF_DEDUPE: &str = "dedupe";

pub(crate) const ALL_CFS: [&str; 6] = [CF_RAFT_LOG, CF_RAFT_STATE, CF_EVENTS, CF_TIME_INDEX, CF_SM_STATE, CF_DEDUPE];
/// The column families that hold a group's state machine (what a snapshot
/// carries; the snapshot format refers to them by position, so only append).
pub(crate) const STATE_MACHINE_CFS: [&str; 4] = [CF_EVENTS, CF_TIME_INDEX, CF_SM_STATE, CF_DEDUPE];

pub(crate) const RAFT_STATE_VOTE: u8 = 1;
pub(crate) const RAFT_STATE_COMMITTED: u8 = 2;
pub(crate) const RAFT_STATE_LAST_PURGED: u8 = 3;

pub(crate) const SM_APPLIED: u8 = 1;
pub(crate) const SM_MEMBERSHIP: u8 = 2;
pub(crate) const SM_STREAM: u8 = 3;
pub(crate) const SM_CLUSTER_CONFIG: u8 = 4;
pub(crate) const SM_RESOURCE: u8 = 5;
/// Consumer offsets (partition groups), one key per cursor.
pub(crate) const SM_OFFSET: u8 = 6;
/// When each former member was last taken out of the member list: node id → log index (metadata group).
pub(crate) const SM_MEMBER_REMOVALS: u8 = 7;

const DEDUPE_SEEN: u8 = 1;
const DEDUPE_EXPIRY: u8 = 2;

pub(crate) fn group_prefix(group: GroupId) -> [u8; 4] {
    group.to_be_bytes()
}

/// The first key after every key of `group`.
pub(crate) fn group_end(group: GroupId) -> Vec<u8> {
    match group.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 5],
    }
}

pub(crate) fn log_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&group.to_be_bytes());
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

pub(crate) fn log_index_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(4..12)?.try_into().ok()?))
}

pub(crate) fn tag_key(group: GroupId, tag: u8) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[..4].copy_from_slice(&group.to_be_bytes());
    key[4] = tag;
    key
}

pub(crate) fn stream_state_key(group: GroupId, stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + stream.len());
    key.extend_from_slice(&tag_key(group, SM_STREAM));
    key.extend_from_slice(stream.as_bytes());
    key
}

pub(crate) fn event_key(group: GroupId, stream_id: u32, offset: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&group.to_be_bytes());
    key[4..8].copy_from_slice(&stream_id.to_be_bytes());
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}

pub(crate) fn event_offset_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(8..16)?.try_into().ok()?))
}

pub(crate) fn time_index_key(group: GroupId, stream_id: u32, arrival_ms: u64, offset: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..4].copy_from_slice(&group.to_be_bytes());
    key[4..8].copy_from_slice(&stream_id.to_be_bytes());
    key[8..16].copy_from_slice(&arrival_ms.to_be_bytes());
    key[16..].copy_from_slice(&offset.to_be_bytes());
    key
}

pub(crate) fn time_index_arrival_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(8..16)?.try_into().ok()?))
}

pub(crate) fn time_index_offset_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(16..24)?.try_into().ok()?))
}

/// An event's stored value: arrival time, then the payload as sent; written over what `value` held (the
/// apply reuses one buffer for every event).
pub(crate) fn write_event_value(value: &mut Vec<u8>, arrival_ms: u64, payload: &[u8]) {
    value.clear();
    value.reserve(8 + payload.len());
    value.extend_from_slice(&arrival_ms.to_be_bytes());
    value.extend_from_slice(payload);
}

pub(crate) fn split_event_value(value: &[u8]) -> Option<(u64, &[u8])> {
    let (time, payload) = value.split_at_checked(8)?;
    Some((u64::from_be_bytes(time.try_into().ok()?), payload))
}

/// A consumer cursor's committed offset: the cursor name after the tag.
pub(crate) fn offset_key(group: GroupId, cursor: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + cursor.len());
    key.extend_from_slice(&tag_key(group, SM_OFFSET));
    key.extend_from_slice(cursor.as_bytes());
    key
}

/// `kind \0 namespace \0 name` after the tag (names never hold NUL).
pub(crate) fn resource_key(group: GroupId, kind: &str, namespace: &str, name: &str) -> Vec<u8> {
    let mut key = tag_key(group, SM_RESOURCE).to_vec();
    for (i, part) in [kind, namespace, name].iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

pub(crate) fn split_resource_key(key: &[u8]) -> Option<crate::ids::ResourceKey> {
    let text = std::str::from_utf8(key.get(5..)?).ok()?;
    let mut parts = text.split('\0');
    Some(crate::ids::ResourceKey {
        kind: parts.next()?.to_string(),
        namespace: parts.next()?.to_string(),
        name: parts.next()?.to_string(),
    })
}

pub(crate) fn dedupe_seen_key(group: GroupId, stream_id: u32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.extend_from_slice(&group.to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(DEDUPE_SEEN);
    out.extend_from_slice(key);
    out
}

#[cfg(test)]
pub(crate) fn dedupe_expiry_key(group: GroupId, stream_id: u32, arrival_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + key.len());
    out.extend_from_slice(&group.to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(DEDUPE_EXPIRY);
    out.extend_from_slice(&arrival_ms.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// What a `dedupe` column family key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DedupeEntry {
    /// A key seen in a stream (its value: when).
    Seen { group: GroupId, stream_id: u32 },
    /// An expiry-ordered entry, written by earlier versions (expiry is now the compaction filter's).
    LegacyExpiry,
}

pub(crate) fn split_dedupe_key(key: &[u8]) -> Option<DedupeEntry> {
    let group = GroupId::from_be_bytes(key.get(..4)?.try_into().ok()?);
    let stream_id = u32::from_be_bytes(key.get(4..8)?.try_into().ok()?);
    match *key.get(8)? {
        DEDUPE_SEEN => Some(DedupeEntry::Seen { group, stream_id }),
        DEDUPE_EXPIRY => Some(DedupeEntry::LegacyExpiry),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically_within_a_group() {
        assert!(log_key(1, 255) < log_key(1, 256));
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert!(event_key(3, 1, 9) < event_key(3, 1, 10));
        assert!(event_key(3, 1, u64::MAX) < event_key(3, 2, 0));
        assert!(time_index_key(1, 1, 5, 100) < time_index_key(1, 1, 6, 0));
        assert!(group_end(1).as_slice() > log_key(1, u64::MAX).as_slice());
        assert!(group_end(1).as_slice() <= log_key(2, 0).as_slice());
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(log_index_of(&log_key(7, 42)), Some(42));
        assert_eq!(event_offset_of(&event_key(7, 3, 99)), Some(99));
        assert_eq!(time_index_offset_of(&time_index_key(7, 3, 5, 77)), Some(77));
        let mut value = b"what the buffer held before".to_vec();
        write_event_value(&mut value, 1234, b"hello");
        assert_eq!(split_event_value(&value), Some((1234, &b"hello"[..])));
        assert_eq!(split_event_value(b"short"), None);
    }
}
