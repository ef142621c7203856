//! Forgetting the dedupe keys earlier versions wrote: in: each apply's dedupe horizon per stream (arrival −
//! window); out: RocksDB's compaction dropping the `dedupe` entries below it.
//!
//! Since the windows moved into memory (`dedupe_window.rs`) no key is written to the `dedupe` column family;
//! what a data dir of an earlier version holds there is still looked up until the window passes it, and
//! goes the way described below.
//!
//! Each stream keeps a horizon in its state (`StreamState::dedupe_horizon_ms`, replicated like the rest of
//! it): the last arrival minus the window, and never lower than before. A key seen before it counts as not
//! seen (`seen_since`), so it is logically gone the moment the horizon passes it. Removing it physically is
//! therefore not a state-machine step and need not be in the log: a compaction filter drops it whenever
//! RocksDB rewrites the file that holds it. That keeps each event's dedupe cost in apply at one lookup and
//! one put, where it used to be two puts (the key and an expiry-ordered index entry) plus, later, an index
//! scan step, a lookup and two deletes.
//!
//! Replicas hold different physical sets of expired keys (their compactions run at different times); what
//! any apply can observe is the same on all of them, because the horizon, not the window, decides. The
//! horizons here are a copy for the filter: published after each applied batch, read back from the streams'
//! states at open and after a snapshot install; a stream not in it yet keeps everything.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::ids::GroupId;
use crate::store::keys::{DedupeEntry, split_dedupe_key};

/// The horizon of every stream this process knows: read with the streams' states, advanced by each apply.
#[derive(Debug, Default)]
pub(crate) struct DedupeHorizons {
    below_ms: RwLock<HashMap<(GroupId, u32), u64>>,
}

impl DedupeHorizons {
    /// Everything of `stream_id` seen before `horizon_ms` can go; horizons only move forward.
    pub(crate) fn advance(&self, group: GroupId, stream_id: u32, horizon_ms: u64) {
        if let Ok(mut below) = self.below_ms.write() {
            let current = below.entry((group, stream_id)).or_insert(horizon_ms);
            *current = (*current).max(horizon_ms);
        }
    }

    /// Before the group's streams are read again (at open and after a snapshot install).
    pub(crate) fn forget_group(&self, group: GroupId) {
        if let Ok(mut below) = self.below_ms.write() {
            below.retain(|(g, _), _| *g != group);
        }
    }

    fn horizon(&self, group: GroupId, stream_id: u32) -> Option<u64> {
        self.below_ms.read().ok()?.get(&(group, stream_id)).copied()
    }

    /// The compaction filter's decision for one `dedupe` entry.
    pub(crate) fn keep(&self, key: &[u8], value: &[u8]) -> bool {
        keep_dedupe_entry(key, value, |group, stream_id| self.horizon(group, stream_id))
    }
}

/// Whether a `dedupe` column family entry must be kept, given each stream's horizon (`None`: unknown).
/// Seen keys go once their time is below the horizon; the expiry-ordered entries of earlier versions are
/// no longer read and always go; anything not understood is kept.
pub(crate) fn keep_dedupe_entry(key: &[u8], value: &[u8], horizon: impl Fn(GroupId, u32) -> Option<u64>) -> bool {
    match split_dedupe_key(key) {
        Some(DedupeEntry::Seen { group, stream_id }) => {
            let Some(seen_at_ms) = value.get(..8).and_then(|v| v.try_into().ok()).map(u64::from_be_bytes) else {
                return true;
            };
            horizon(group, stream_id).is_none_or(|below_ms| seen_at_ms >= below_ms)
        }
        Some(DedupeEntry::LegacyExpiry) => false,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::keys::{dedupe_expiry_key, dedupe_seen_key};

    #[test]
    fn the_decision_for_each_kind_of_entry() {
        let horizons = DedupeHorizons::default();
        horizons.advance(1, 7, 1_000);
        let seen =
            |group, stream, at: u64| horizons.keep(&dedupe_seen_key(group, stream, b"src\0id"), &at.to_be_bytes());
        // (group, stream, seen at) → kept?
        let table = [
            ((1, 7, 999), false),  // below the horizon: can never match again
            ((1, 7, 1_000), true), // at it: still within the window of the last arrival
            ((1, 7, 5_000), true),
            ((1, 8, 0), true), // another stream: horizon unknown
            ((2, 7, 0), true), // another group
        ];
        for ((group, stream, at), kept) in table {
            assert_eq!(seen(group, stream, at), kept, "group {group} stream {stream} seen at {at}");
        }
        assert!(!horizons.keep(&dedupe_expiry_key(1, 7, 5_000, b"k"), &[]), "old expiry entries go");
        assert!(horizons.keep(&dedupe_seen_key(1, 7, b"k"), b"short"), "a malformed value is kept");
        assert!(horizons.keep(b"\0\0", &[]), "a key not understood is kept");
    }

    #[test]
    fn horizons_only_move_forward_and_a_group_can_be_forgotten() {
        let horizons = DedupeHorizons::default();
        horizons.advance(1, 7, 1_000);
        horizons.advance(1, 7, 400);
        assert_eq!(horizons.horizon(1, 7), Some(1_000));
        horizons.advance(2, 7, 50);
        horizons.forget_group(1);
        assert_eq!(horizons.horizon(1, 7), None);
        assert_eq!(horizons.horizon(2, 7), Some(50));
    }

    proptest! {
        /// The filter drops only what the apply path no longer counts: with the window unchanged, an entry
        /// it drops is one no later append (arrival ≥ the last one) could find within its window.
        #[test]
        fn a_dropped_key_could_never_be_seen_within_the_window_again(
            window_ms in 0u64..10_000,
            arrivals in proptest::collection::vec(0u64..100_000, 1..20),
            seen_at_ms in 0u64..100_000,
            later_by_ms in 0u64..50_000,
        ) {
            let horizons = DedupeHorizons::default();
            let mut last_arrival_ms = 0;
            for arrival in arrivals {
                last_arrival_ms = last_arrival_ms.max(arrival);
                horizons.advance(0, 1, last_arrival_ms.saturating_sub(window_ms));
            }
            let kept = horizons.keep(&dedupe_seen_key(0, 1, b"k"), &seen_at_ms.to_be_bytes());
            let later_arrival_ms = last_arrival_ms + later_by_ms;
            let within = later_arrival_ms.saturating_sub(seen_at_ms) <= window_ms;
            prop_assert!(kept || !within, "dropped a key seen at {seen_at_ms} that {later_arrival_ms} would match");
        }
    }
}
