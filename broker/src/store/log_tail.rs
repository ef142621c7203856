//! The newest entries of a group's Raft log, kept decoded in memory. In: the entries the log store has just
//! written, its truncations and purges; out: ranges of entries for the log's readers (the state machine's
//! apply, and on a leader one replication stream per follower), which read each entry shortly after it is
//! written. Without it each reader read the entries back from RocksDB and decoded them, copying every event's
//! bytes once more per reader (docs/benchmarks.md, "Session 21"); a reader that has fallen behind the tail
//! still reads RocksDB.
//!
//! The one rule that makes a range from the tail complete: while the tail answers, its newest entry is the
//! log's newest. Every append goes through [`LogTail::push`], a truncation through
//! [`LogTail::truncate_after`], and an entry that does not follow the newest held starts the tail afresh (the
//! first append after a start-up). An entry at or below the newest held rewrites the log in place without a
//! truncation (openraft truncates first; this is the defence): the old entries above it may still be in the
//! store, so the tail answers nothing until its newest is past them again. The tail is bounded by bytes and
//! drops its oldest entries first.

use std::collections::VecDeque;

/// A group's newest log entries; `T` is the entry (generic so that the rules are tested on plain values).
#[derive(Debug)]
pub(crate) struct LogTail<T> {
    /// Consecutive indexes, oldest first: `(index, entry, encoded bytes)`.
    entries: VecDeque<(u64, T, usize)>,
    bytes: usize,
    max_bytes: usize,
    /// The log's newest index as far as the tail has been told (kept when the bound or a purge empties
    /// `entries`): with it, an in-place rewrite is recognised even then. While `entries` holds anything, its
    /// newest is this one.
    newest: Option<u64>,
    /// After an in-place rewrite: the store may hold entries up to here that the tail does not.
    shadowed_through: Option<u64>,
}

impl<T: Clone> LogTail<T> {
    pub(crate) fn new(max_bytes: usize) -> Self {
        LogTail { entries: VecDeque::new(), bytes: 0, max_bytes, newest: None, shadowed_through: None }
    }

    /// An entry the log has just stored (`encoded_bytes`: its size on disk, what the bound counts).
    pub(crate) fn push(&mut self, index: u64, entry: T, encoded_bytes: usize) {
        if let Some(newest) = self.newest
            && newest.checked_add(1) != Some(index)
        {
            if index <= newest {
                self.shadowed_through = self.shadowed_through.max(Some(newest));
            }
            self.clear();
        }
        if self.shadowed_through.is_some_and(|shadowed| index > shadowed) {
            self.shadowed_through = None;
        }
        self.newest = Some(index);
        self.entries.push_back((index, entry, encoded_bytes));
        self.bytes += encoded_bytes;
        while self.bytes > self.max_bytes {
            match self.entries.pop_front() {
                Some((_, _, bytes)) => self.bytes -= bytes,
                None => break,
            }
        }
    }

    /// The store's newest entry, as read at start-up: until the tail holds an entry past it, the tail cannot
    /// know what the store holds above its own entries, and answers nothing. Ignored once the tail has been
    /// told of any entry.
    pub(crate) fn store_holds_through(&mut self, newest: Option<u64>) {
        if self.newest.is_none() {
            self.shadowed_through = self.shadowed_through.max(newest);
            self.newest = newest;
        }
    }

    /// The log dropped every entry after `last_kept` (all of them with `None`).
    pub(crate) fn truncate_after(&mut self, last_kept: Option<u64>) {
        // What the store may hold beyond the tail ends at the truncation too.
        self.shadowed_through = match last_kept {
            Some(kept) => self.shadowed_through.map(|shadowed| shadowed.min(kept)),
            None => None,
        };
        self.newest = match last_kept {
            Some(kept) => self.newest.map(|newest| newest.min(kept)),
            None => None,
        };
        while let Some(&(index, _, bytes)) = self.entries.back() {
            if last_kept.is_some_and(|kept| index <= kept) {
                break;
            }
            self.entries.pop_back();
            self.bytes -= bytes;
        }
    }

    /// The log dropped every entry up to and including `through`.
    pub(crate) fn purge_through(&mut self, through: u64) {
        while let Some(&(index, _, bytes)) = self.entries.front() {
            if index > through {
                break;
            }
            self.entries.pop_front();
            self.bytes -= bytes;
        }
    }

    /// The log's entries from `start` up to `end` (exclusive; `None`: to the newest), if the tail can answer
    /// for all of them: it holds `start` or `start` is past the newest entry (then there are none). `None`
    /// when the tail is empty or `start` is older than what it holds: the caller reads the store.
    pub(crate) fn range(&self, start: u64, end: Option<u64>) -> Option<Vec<T>> {
        if self.shadowed_through.is_some() {
            return None;
        }
        let oldest = self.entries.front()?.0;
        if start < oldest {
            return None;
        }
        let skip = usize::try_from(start - oldest).unwrap_or(usize::MAX);
        let wanted = match end {
            Some(end) => usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        Some(self.entries.iter().skip(skip).take(wanted).map(|(_, entry, _)| entry.clone()).collect())
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn filled(indexes: std::ops::RangeInclusive<u64>, max_bytes: usize) -> LogTail<u64> {
        let mut tail = LogTail::new(max_bytes);
        for index in indexes {
            tail.push(index, index * 10, 10);
        }
        tail
    }

    #[test]
    fn ranges_it_holds_are_answered_and_older_ones_are_left_to_the_store() {
        let tail = filled(5..=9, 1000);
        type Case = (u64, Option<u64>, Option<Vec<u64>>);
        let cases: &[Case] = &[
            (5, None, Some(vec![50, 60, 70, 80, 90])),
            (7, Some(9), Some(vec![70, 80])),
            (9, Some(100), Some(vec![90])),
            (10, None, Some(vec![])),
            (12, Some(20), Some(vec![])),
            (7, Some(7), Some(vec![])),
            (7, Some(3), Some(vec![])),
            (4, None, None),
            (0, Some(6), None),
        ];
        for (start, end, expected) in cases {
            assert_eq!(&tail.range(*start, *end), expected, "range({start}, {end:?})");
        }
        assert_eq!(LogTail::<u64>::new(1000).range(0, None), None, "an empty tail answers nothing");
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_entries() {
        let tail = filled(1..=10, 35);
        assert_eq!(tail.range(8, None), Some(vec![80, 90, 100]));
        assert_eq!(tail.range(7, None), None);
        let mut huge = LogTail::new(35);
        huge.push(1, 1, 100);
        assert_eq!(huge.range(1, None), None, "an entry over the bound is not held");
    }

    #[test]
    fn an_entry_that_does_not_follow_the_newest_starts_the_tail_afresh() {
        let mut tail = filled(1..=3, 1000);
        tail.push(7, 70, 10);
        assert_eq!(tail.range(7, None), Some(vec![70]));
        assert_eq!(tail.range(3, None), None);
        tail.truncate_after(Some(4));
        tail.push(5, 50, 10);
        assert_eq!(tail.range(5, None), Some(vec![50]));
        assert_eq!(tail.range(6, None), Some(vec![]), "7 was truncated");
    }

    #[test]
    fn a_rewrite_in_place_silences_the_tail_until_it_is_past_the_old_newest() {
        let mut tail = filled(1..=5, 1000);
        tail.push(3, 31, 10);
        assert_eq!(tail.range(3, None), None, "4 and 5 may still be in the store");
        tail.push(4, 41, 10);
        tail.push(5, 51, 10);
        assert_eq!(tail.range(3, None), None);
        tail.push(6, 61, 10);
        assert_eq!(tail.range(3, None), Some(vec![31, 41, 51, 61]));
    }

    #[test]
    fn after_a_start_up_the_tail_answers_once_it_is_past_what_the_store_held() {
        let mut tail = LogTail::new(1000);
        tail.store_holds_through(Some(9));
        tail.push(7, 70, 10);
        assert_eq!(tail.range(7, None), None, "8 and 9 may be in the store");
        let mut tail = LogTail::new(1000);
        tail.store_holds_through(Some(9));
        tail.push(10, 100, 10);
        assert_eq!(tail.range(10, None), Some(vec![100]));
        tail.store_holds_through(Some(12));
        assert_eq!(tail.range(10, None), Some(vec![100]), "ignored once the tail holds entries");
    }

    #[test]
    fn truncation_and_purge_drop_their_ends() {
        let mut tail = filled(1..=6, 1000);
        tail.truncate_after(Some(4));
        assert_eq!(tail.range(1, None), Some(vec![10, 20, 30, 40]));
        tail.push(5, 51, 10);
        assert_eq!(tail.range(4, None), Some(vec![40, 51]));
        tail.purge_through(2);
        assert_eq!(tail.range(3, None), Some(vec![30, 40, 51]));
        assert_eq!(tail.range(2, None), None);
        tail.truncate_after(None);
        assert_eq!(tail.range(1, None), None);
        assert_eq!(tail.bytes, 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Append(u8),
        /// Writes over the entry this far below the newest, without a truncation (the store keeps the rest).
        Rewrite(u8),
        Restart,
        TruncateAfter(Option<u8>),
        Purge(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..4).prop_map(Op::Append),
            1 => (0u8..4).prop_map(Op::Rewrite),
            1 => Just(Op::Restart),
            1 => proptest::option::of(0u8..40).prop_map(Op::TruncateAfter),
            1 => (0u8..40).prop_map(Op::Purge),
        ]
    }

    proptest! {
        /// Against a model of the log (a map of index → entry): whatever the tail answers is exactly the log's
        /// range, across appends, restarts (the tail forgotten, the log kept), truncations and purges.
        #[test]
        fn the_tail_answers_only_what_the_log_holds(ops in proptest::collection::vec(op(), 1..60),
                                                     max_bytes in 1usize..80) {
            let mut log: BTreeMap<u64, u64> = BTreeMap::new();
            let mut tail = LogTail::new(max_bytes);
            let mut stamp = 0u64;
            for op in ops {
                match op {
                    Op::Append(count) => {
                        for _ in 0..count {
                            let index = log.keys().next_back().map_or(1, |last| last + 1);
                            stamp += 1;
                            log.insert(index, stamp);
                            tail.push(index, stamp, (stamp % 7 + 1) as usize);
                        }
                    }
                    Op::Rewrite(below) => {
                        if let Some(&newest) = log.keys().next_back() {
                            let index = newest.saturating_sub(u64::from(below)).max(1);
                            stamp += 1;
                            log.insert(index, stamp);
                            tail.push(index, stamp, (stamp % 7 + 1) as usize);
                        }
                    }
                    Op::Restart => {
                        tail = LogTail::new(max_bytes);
                        tail.store_holds_through(log.keys().next_back().copied());
                    }
                    Op::TruncateAfter(kept) => {
                        let kept = kept.map(u64::from);
                        log.retain(|index, _| kept.is_some_and(|kept| *index <= kept));
                        tail.truncate_after(kept);
                    }
                    Op::Purge(through) => {
                        let through = u64::from(through);
                        log.retain(|index, _| *index > through);
                        tail.purge_through(through);
                    }
                }
                prop_assert!(tail.bytes <= max_bytes);
                for start in 0..45u64 {
                    for end in [None, Some(start + 1), Some(start + 3)] {
                        if let Some(answer) = tail.range(start, end) {
                            let expected: Vec<u64> = log
                                .range(start..end.unwrap_or(u64::MAX))
                                .map(|(_, entry)| *entry)
                                .collect();
                            prop_assert_eq!(answer, expected, "range({}, {:?})", start, end);
                        }
                    }
                }
            }
        }
    }
}
