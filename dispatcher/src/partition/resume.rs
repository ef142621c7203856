//! What a consumer's dispatcher hands to the next one besides its watermark, so that events settled after an
//! unsettled one are not delivered again.
//!
//! The committed offset is a watermark: everything below it is settled. One event in a long retry backoff holds
//! it back while the events after it are delivered, and a consumer that started again from the watermark
//! delivered all of those again. When a dispatcher stops in order (a planned leadership transfer, a node that
//! shuts down, a changed Trigger) it knows more: which offsets between the watermark and its scan position are
//! still pending. It commits them beside the watermark, and the next dispatcher reads only those again there,
//! and goes on from the scan position.
//!
//! What flows in: a window's pending offsets and scan position (or what is stored in the partition's Raft
//! group). What flows out: the commits that store them, and for a starting consumer which offsets it skips.
//!
//! Stored as stat cursors (`{cursor}!resume…`, see [`crate::stats`]), all written in the one entry that commits
//! the watermark `W`: `!resumeat` = `W + 1` (0: none), `!resumeto` = the scan position, `!resumeheld` = how many
//! pending offsets follow, `!resumeheld.{i}` = each. They hold only while the consumer's committed offset is
//! still `W`: the next dispatcher's first commit past `W` retires them without a write, and a replay (the one
//! other way the offset moves, and possibly back to `W`) clears `!resumeat`. A crash leaves them valid and true:
//! what the next dispatcher delivered since is redelivered, as after any crash.

use std::collections::{BTreeMap, BTreeSet};

use sluice_broker::OffsetCommit;

use crate::stats::stat_key;

/// Most pending offsets one consumer hands over; the offsets past them are read again (and what settled there
/// delivered again), as before there was a hand-over. Bounds the commit: `sluice.dev/max-inflight` may be 10,000.
pub(crate) const MAX_HELD: usize = 1_024;

/// Most pending offsets one stopping dispatcher hands over for all its consumers together (a Broker may have
/// 1,000 Triggers): about 1.5 MiB in the one entry. Consumers past it hand over nothing and start from their
/// watermark, as before, or from a hand-over stored earlier at the same watermark, which is still true.
pub(crate) const MAX_HELD_PER_COMMIT: usize = 16_384;

const AT: &str = "resumeat";
const TO: &str = "resumeto";
const HELD: &str = "resumeheld";

/// Between a consumer's watermark and `to`, only `held` are still to be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    held: BTreeSet<u64>,
    to: u64,
}

impl Resume {
    /// What a window holds at `watermark` (its lowest pending offset, or its scan position): `pending` offsets
    /// (each at or above the watermark) and everything else below `scanned_to` settled or not matching. `None`
    /// when there is nothing past the watermark to skip. Past [`MAX_HELD`] pending offsets the hand-over ends
    /// at the first one left out.
    pub(crate) fn of_window(watermark: u64, pending: impl IntoIterator<Item = u64>, scanned_to: u64) -> Option<Self> {
        let mut held = BTreeSet::new();
        let mut to = scanned_to;
        for offset in pending {
            if offset < watermark || offset >= scanned_to {
                continue;
            }
            if held.len() == MAX_HELD {
                to = to.min(offset);
                break;
            }
            held.insert(offset);
        }
        held.retain(|offset| *offset < to);
        // Worth storing only when some offset in `[watermark, to)` is not held (one that is skipped).
        (to > watermark && (held.len() as u64) < to - watermark).then_some(Resume { held, to })
    }

    /// The hand-over stored for `cursor`, if it holds at its committed offset `committed`.
    pub(crate) fn stored(cursor: &str, committed: u64, stored: &BTreeMap<String, u64>) -> Option<Self> {
        let get = |stat: &str| stored.get(&stat_key(cursor, stat)).copied();
        if get(AT)? != committed.checked_add(1)? {
            return None;
        }
        let to = get(TO)?;
        let count = usize::try_from(get(HELD)?).ok()?.min(MAX_HELD);
        let mut held = BTreeSet::new();
        for i in 0..count {
            let offset = get(&format!("{HELD}.{i}"))?;
            if offset < committed || offset >= to {
                return None;
            }
            held.insert(offset);
        }
        (to > committed).then_some(Resume { held, to })
    }

    /// The commits that store this hand-over beside the watermark `watermark` of `cursor`.
    pub(crate) fn commits(&self, cursor: &str, watermark: u64) -> Vec<OffsetCommit> {
        let put = |stat: &str, offset: u64| OffsetCommit { cursor: stat_key(cursor, stat), offset, reset: true };
        let mut commits = Vec::with_capacity(self.held.len() + 3);
        commits.push(put(AT, watermark + 1));
        commits.push(put(TO, self.to));
        commits.push(put(HELD, self.held.len() as u64));
        for (i, offset) in self.held.iter().enumerate() {
            commits.push(put(&format!("{HELD}.{i}"), *offset));
        }
        commits
    }

    /// The commit that retires any hand-over stored for `cursor` (a replay moves its offset, maybe back to
    /// where the hand-over was made).
    pub(crate) fn clear(cursor: &str) -> OffsetCommit {
        OffsetCommit { cursor: stat_key(cursor, AT), offset: 0, reset: true }
    }

    /// Whether a consumer resuming with this hand-over skips `offset` (settled by the dispatcher before it).
    pub(crate) fn skips(&self, offset: u64) -> bool {
        offset < self.to && !self.held.contains(&offset)
    }

    /// Whether a reader at `next` has passed every held offset (it may go on from [`Resume::to`]).
    pub(crate) fn passed(&self, next: u64) -> bool {
        self.held.last().is_none_or(|last| next > *last)
    }

    /// How many offsets it holds.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    pub(crate) fn to(&self) -> u64 {
        self.to
    }

    /// This hand-over, for a window that has read up to `scanned_to` of it and holds `pending` now: what it
    /// has not read yet is still held.
    pub(crate) fn merged(
        &self,
        watermark: u64,
        pending: impl IntoIterator<Item = u64>,
        scanned_to: u64,
    ) -> Option<Self> {
        let unread = self.held.range(scanned_to..).copied();
        let pending: BTreeSet<u64> = pending.into_iter().chain(unread).collect();
        Resume::of_window(watermark, pending, self.to.max(scanned_to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURSOR: &str = "broker/default/b#trigger/t/uid-1";

    fn stored(commits: &[OffsetCommit]) -> BTreeMap<String, u64> {
        commits.iter().map(|c| (c.cursor.clone(), c.offset)).collect()
    }

    /// (watermark, pending, scanned_to, expected (held, to)).
    type Case = (u64, &'static [u64], u64, Option<(&'static [u64], u64)>);

    #[test]
    fn a_window_hands_over_its_pending_offsets_and_scan_position() {
        let table: [Case; 7] = [
            (10, &[10, 14], 20, Some((&[10, 14], 20))),
            // Only the watermark's event pending: still worth it (11..20 settled).
            (10, &[10], 20, Some((&[10], 20))),
            // Nothing pending: the watermark is the scan position, nothing to hand over.
            (20, &[], 20, None),
            // An offset out of range is not the window's (ignored).
            (10, &[10, 25], 20, Some((&[10], 20))),
            (0, &[0, 1, 2], 3, None),
            (0, &[0, 2], 3, Some((&[0, 2], 3))),
            (5, &[5], 6, None),
        ];
        for (watermark, pending, scanned_to, expected) in table {
            let resume = Resume::of_window(watermark, pending.iter().copied(), scanned_to);
            let got = resume.as_ref().map(|r| (r.held.iter().copied().collect::<Vec<_>>(), r.to));
            let expected = expected.map(|(held, to)| (held.to_vec(), to));
            assert_eq!(got, expected, "watermark {watermark}, pending {pending:?}, scanned to {scanned_to}");
        }
    }

    #[test]
    fn more_pending_than_the_limit_ends_the_hand_over_at_the_first_left_out() {
        let pending = (0..(MAX_HELD as u64 + 10)).map(|i| 2 * i);
        let resume = Resume::of_window(0, pending, 1_000_000).expect("a hand-over");
        assert_eq!(resume.held.len(), MAX_HELD);
        assert_eq!(resume.to, 2 * MAX_HELD as u64, "the first offset left out is read again");
        assert!(resume.skips(1) && !resume.skips(2) && !resume.skips(2 * MAX_HELD as u64));
    }

    #[test]
    fn a_stored_hand_over_holds_only_at_the_watermark_it_was_made_at() {
        let resume = Resume::of_window(10, [10, 14], 20).expect("a hand-over");
        let mut store = stored(&resume.commits(CURSOR, 10));
        assert_eq!(Resume::stored(CURSOR, 10, &store), Some(resume.clone()));
        assert_eq!(Resume::stored(CURSOR, 11, &store), None, "the next dispatcher committed past it");
        assert_eq!(Resume::stored(CURSOR, 9, &store), None);
        assert_eq!(Resume::stored("broker/default/b#trigger/u/uid-2", 10, &store), None, "another consumer's");
        let clear = Resume::clear(CURSOR);
        store.insert(clear.cursor, clear.offset);
        assert_eq!(Resume::stored(CURSOR, 10, &store), None, "a replay retired it");
    }

    #[test]
    fn a_stored_hand_over_that_is_incomplete_or_inconsistent_is_not_used() {
        let resume = Resume::of_window(10, [10, 14], 20).expect("a hand-over");
        let full = stored(&resume.commits(CURSOR, 10));
        for missing in full.keys() {
            let mut store = full.clone();
            store.remove(missing);
            assert_eq!(Resume::stored(CURSOR, 10, &store), None, "without {missing}");
        }
        let mut outside = full.clone();
        outside.insert(stat_key(CURSOR, "resumeheld.1"), 25);
        assert_eq!(Resume::stored(CURSOR, 10, &outside), None, "a held offset past `to`");
        // Keys of an earlier, longer hand-over past the count are ignored.
        let mut longer = full.clone();
        longer.insert(stat_key(CURSOR, "resumeheld.2"), 12);
        assert_eq!(Resume::stored(CURSOR, 10, &longer), Some(resume));
    }

    #[test]
    fn a_resumed_reader_skips_what_was_settled_and_goes_on_past_the_last_held() {
        let resume = Resume::of_window(10, [10, 14], 20).expect("a hand-over");
        let skipped: Vec<u64> = (8..22).filter(|o| resume.skips(*o)).collect();
        assert_eq!(skipped, [8, 9, 11, 12, 13, 15, 16, 17, 18, 19]);
        assert!(!resume.passed(14) && resume.passed(15));
        assert_eq!(resume.to(), 20);
    }

    #[test]
    fn a_hand_over_made_before_the_last_was_read_keeps_what_is_unread() {
        let first = Resume::of_window(10, [10, 14, 17], 20).expect("a hand-over");
        // The next dispatcher read up to 15: 10 still pending (in backoff), 14 delivered, 17 not read yet.
        let second = first.merged(10, [10], 15).expect("a hand-over");
        assert_eq!(second.held.iter().copied().collect::<Vec<_>>(), [10, 17]);
        assert_eq!(second.to, 20);
        // Everything delivered and nothing unread: nothing to hand over beyond the scan position.
        assert_eq!(first.merged(20, [], 20), None);
    }
}
