//! The newest applied records of a group's streams, kept in memory for their readers. In: the records the
//! state machine has just written (with the payload bytes the log entry already holds: shared, not copied),
//! trims, and a reset when the whole state is replaced (a snapshot installed); out: the records of a stream
//! from an offset, for a dispatcher that keeps up (it reads each record moments after it is applied).
//!
//! Without it every read made a RocksDB iterator and sought it through every level of the event column
//! family, reading and decompressing a data block of each table file past the key (blocks read with
//! `fill_cache(false)`, so from the file each time), and then copied each payload out (docs/benchmarks.md,
//! "Session 29"). A reader behind the tail still reads RocksDB.
//!
//! The rule that makes an answer complete: a stream's records here are consecutive offsets ending at the
//! newest pushed; a record that does not follow the newest one starts that stream afresh. A reader asks up
//! to the stream's applied end as it saw it, and the tail answers only if it holds every record up to that
//! end. One bound on bytes and one on records for the whole group; the oldest records of any stream go
//! first.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// One record read back from a stream (from the tail or from RocksDB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub arrival_ms: u64,
    pub payload: Bytes,
}

/// Bytes of payload a group's tail holds for readers that keep up: at the 4–5 MB/s one partition of a batched
/// benchmark takes, a fifth of a second, far more than a dispatcher that keeps up lags. The payloads are
/// those of the log's own tail (shared, not copied) while both hold them.
const EVENT_TAIL_BYTES: usize = 1 << 20;

/// Records a group's tail holds at most (small events: the tail's own bookkeeping bounded).
const EVENT_TAIL_RECORDS: usize = 8192;

/// The records of all streams of one group, newest last.
#[derive(Debug)]
pub(crate) struct EventTail {
    streams: HashMap<u32, VecDeque<StoredRecord>>,
    /// `(stream id, offset)` of every record pushed and not yet evicted, in push order: eviction takes the
    /// front. An entry whose record a trim or a restart of its stream already dropped is skipped then.
    order: VecDeque<(u32, u64)>,
    bytes: usize,
    max_bytes: usize,
    max_records: usize,
}

impl Default for EventTail {
    fn default() -> Self {
        EventTail::new(EVENT_TAIL_BYTES, EVENT_TAIL_RECORDS)
    }
}

impl EventTail {
    pub(crate) fn new(max_bytes: usize, max_records: usize) -> Self {
        EventTail {
            streams: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_records: max_records.max(1),
        }
    }

    /// A record the state machine has just written.
    pub(crate) fn push(&mut self, stream_id: u32, offset: u64, arrival_ms: u64, payload: Bytes) {
        let records = self.streams.entry(stream_id).or_default();
        if records.back().is_some_and(|newest| newest.offset.checked_add(1) != Some(offset)) {
            self.bytes -= records.iter().map(|r| r.payload.len()).sum::<usize>();
            records.clear();
        }
        self.bytes += payload.len();
        records.push_back(StoredRecord { offset, arrival_ms, payload });
        self.order.push_back((stream_id, offset));
        while self.bytes > self.max_bytes || self.order.len() > self.max_records {
            let Some((stream_id, offset)) = self.order.pop_front() else { break };
            if let Some(records) = self.streams.get_mut(&stream_id)
                && records.front().is_some_and(|oldest| oldest.offset == offset)
                && let Some(evicted) = records.pop_front()
            {
                self.bytes -= evicted.payload.len();
                if records.is_empty() {
                    self.streams.remove(&stream_id);
                }
            }
        }
    }

    /// Retention dropped the stream's records below `before_offset`.
    pub(crate) fn trim(&mut self, stream_id: u32, before_offset: u64) {
        let Some(records) = self.streams.get_mut(&stream_id) else { return };
        while records.front().is_some_and(|oldest| oldest.offset < before_offset) {
            if let Some(dropped) = records.pop_front() {
                self.bytes -= dropped.payload.len();
            }
        }
        if records.is_empty() {
            self.streams.remove(&stream_id);
        }
    }

    /// The group's state was replaced (a snapshot installed): nothing held may still be right.
    pub(crate) fn clear(&mut self) {
        self.streams.clear();
        self.order.clear();
        self.bytes = 0;
    }

    /// The stream's records from `from_offset` below `end_offset`, at most `max_records` and about
    /// `max_bytes` (at least one record if there is one), if the tail holds every record of that range (or
    /// the range is empty and `from_offset` follows the newest). `None` when it cannot answer: the caller
    /// reads the store.
    pub(crate) fn read(
        &self,
        stream_id: u32,
        from_offset: u64,
        end_offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Option<Vec<StoredRecord>> {
        let records = self.streams.get(&stream_id)?;
        let oldest = records.front()?.offset;
        let past_newest = records.back()?.offset.checked_add(1)?;
        if from_offset < oldest || from_offset > past_newest || past_newest < end_offset {
            return None;
        }
        let skip = usize::try_from(from_offset - oldest).ok()?;
        let mut answer = Vec::new();
        let mut bytes = 0usize;
        for record in records.iter().skip(skip).take_while(|r| r.offset < end_offset) {
            if answer.len() >= max_records || (!answer.is_empty() && bytes >= max_bytes) {
                break;
            }
            bytes += record.payload.len();
            answer.push(record.clone());
        }
        Some(answer)
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn payload(offset: u64, len: usize) -> Bytes {
        Bytes::from(vec![offset as u8; len])
    }

    fn offsets(records: &[StoredRecord]) -> Vec<u64> {
        records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn a_stream_read_from_an_offset_it_holds_gets_the_records_up_to_the_end_the_reader_saw() {
        let mut tail = EventTail::new(1 << 20, 1_000);
        for offset in 10..20 {
            tail.push(1, offset, 1_000 + offset, payload(offset, 4));
        }
        let records = tail.read(1, 12, 18, 100, 1 << 20).expect("held");
        assert_eq!(offsets(&records), (12..18).collect::<Vec<_>>());
        assert_eq!(records[0].arrival_ms, 1_012);
        assert_eq!(records[0].payload, payload(12, 4));
        assert_eq!(tail.read(1, 20, 20, 100, 1 << 20), Some(Vec::new()), "caught up: nothing, answered");
        assert_eq!(tail.read(1, 9, 20, 100, 1 << 20), None, "older than the tail: the store answers");
        assert_eq!(tail.read(1, 21, 25, 100, 1 << 20), None, "past the newest: not this tail's to say");
        assert_eq!(tail.read(1, 15, 25, 100, 1 << 20), None, "the reader saw records the tail does not hold");
        assert_eq!(tail.read(2, 0, 5, 100, 1 << 20), None, "another stream");
    }

    #[test]
    fn a_read_stops_at_its_record_and_byte_limits_but_returns_at_least_one_record() {
        let mut tail = EventTail::new(1 << 20, 1_000);
        for offset in 0..10 {
            tail.push(1, offset, 0, payload(offset, 100));
        }
        assert_eq!(offsets(&tail.read(1, 0, 10, 3, 1 << 20).expect("held")), [0, 1, 2]);
        assert_eq!(offsets(&tail.read(1, 0, 10, 100, 250).expect("held")), [0, 1, 2]);
        assert_eq!(offsets(&tail.read(1, 5, 10, 100, 1).expect("held")), [5]);
    }

    #[test]
    fn the_bounds_evict_the_oldest_records_of_any_stream() {
        let mut tail = EventTail::new(1_000, 1_000);
        for offset in 0..6 {
            tail.push(1, offset, 0, payload(offset, 100));
            tail.push(2, offset, 0, payload(offset, 100));
        }
        for offset in 6..10 {
            tail.push(2, offset, 0, payload(offset, 100));
        }
        assert_eq!(tail.bytes(), 1_000);
        // The six oldest pushes went, three of each stream: whatever their stream, oldest first.
        assert_eq!(tail.read(1, 2, 6, 100, 1 << 20), None);
        assert_eq!(offsets(&tail.read(1, 3, 6, 100, 1 << 20).expect("held")), [3, 4, 5]);
        assert_eq!(tail.read(2, 2, 10, 100, 1 << 20), None);
        assert_eq!(offsets(&tail.read(2, 3, 10, 100, 1 << 20).expect("held")), (3..10).collect::<Vec<_>>());

        let mut few = EventTail::new(1 << 20, 3);
        for offset in 0..5 {
            few.push(1, offset, 0, payload(offset, 1));
        }
        assert_eq!(offsets(&few.read(1, 2, 5, 100, 1 << 20).expect("held")), [2, 3, 4]);
        assert_eq!(few.read(1, 1, 5, 100, 1 << 20), None);
    }

    #[test]
    fn a_record_that_does_not_follow_the_newest_starts_its_stream_afresh() {
        let mut tail = EventTail::new(1 << 20, 1_000);
        for offset in 0..5 {
            tail.push(1, offset, 0, payload(offset, 10));
        }
        tail.push(1, 9, 0, payload(9, 10));
        assert_eq!(tail.bytes(), 10);
        assert_eq!(tail.read(1, 4, 10, 100, 1 << 20), None);
        assert_eq!(offsets(&tail.read(1, 9, 10, 100, 1 << 20).expect("held")), [9]);
    }

    #[test]
    fn a_trim_drops_the_records_below_the_new_start_and_a_clear_drops_everything() {
        let mut tail = EventTail::new(1 << 20, 1_000);
        for offset in 0..5 {
            tail.push(1, offset, 0, payload(offset, 10));
            tail.push(2, offset, 0, payload(offset, 10));
        }
        tail.trim(1, 3);
        assert_eq!(tail.read(1, 2, 5, 100, 1 << 20), None);
        assert_eq!(offsets(&tail.read(1, 3, 5, 100, 1 << 20).expect("held")), [3, 4]);
        tail.trim(2, 100);
        assert_eq!(tail.read(2, 4, 5, 100, 1 << 20), None);
        assert_eq!(tail.bytes(), 20);
        tail.clear();
        assert_eq!((tail.bytes(), tail.read(1, 3, 5, 100, 1 << 20)), (0, None));
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Appends this many records to a stream.
        Append { stream: u32, count: u8 },
        /// Retention moves a stream's start up to here.
        Trim { stream: u32, before: u8 },
        /// A snapshot replaces the state: the same streams, the tail forgotten.
        Install,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u32..3, 1u8..5).prop_map(|(stream, count)| Op::Append { stream, count }),
            1 => (0u32..3, 0u8..60).prop_map(|(stream, before)| Op::Trim { stream, before }),
            1 => Just(Op::Install),
        ]
    }

    proptest! {
        /// Against a model of the streams (offset → record of each): whatever the tail answers is exactly the
        /// stream's records from the offset asked, within the limits and the end given, across appends,
        /// trims, snapshot installs and evictions; the bounds always hold.
        #[test]
        fn the_tail_answers_only_what_the_streams_hold(ops in proptest::collection::vec(op(), 1..80),
                                                        max_bytes in 1usize..120,
                                                        max_records in 1usize..20) {
            let mut streams: BTreeMap<u32, BTreeMap<u64, (u64, Bytes)>> = BTreeMap::new();
            let mut next_offsets: BTreeMap<u32, u64> = BTreeMap::new();
            let mut tail = EventTail::new(max_bytes, max_records);
            let mut stamp = 0u64;
            for op in ops {
                match op {
                    Op::Append { stream, count } => {
                        for _ in 0..count {
                            let offset = *next_offsets.entry(stream).or_default();
                            next_offsets.insert(stream, offset + 1);
                            stamp += 1;
                            let bytes = Bytes::from(vec![stamp as u8; (stamp % 9) as usize]);
                            streams.entry(stream).or_default().insert(offset, (stamp, bytes.clone()));
                            tail.push(stream, offset, stamp, bytes);
                        }
                    }
                    Op::Trim { stream, before } => {
                        let before = u64::from(before);
                        streams.entry(stream).or_default().retain(|offset, _| *offset >= before);
                        tail.trim(stream, before);
                    }
                    Op::Install => tail.clear(),
                }
                prop_assert!(tail.bytes() <= max_bytes);
                prop_assert!(tail.order.len() <= max_records);
                let held: usize = tail.streams.values().flatten().map(|r| r.payload.len()).sum();
                prop_assert_eq!(held, tail.bytes());
                for stream in 0..3u32 {
                    let end = next_offsets.get(&stream).copied().unwrap_or(0);
                    for from in 0..end + 2 {
                        for (max_records, max_bytes) in [(usize::MAX, usize::MAX), (2, usize::MAX), (usize::MAX, 5)] {
                            let Some(answer) = tail.read(stream, from, end, max_records, max_bytes) else { continue };
                            let model: Vec<StoredRecord> = streams
                                .get(&stream)
                                .into_iter()
                                .flat_map(|records| records.range(from..end))
                                .map(|(offset, (arrival_ms, payload))| StoredRecord {
                                    offset: *offset,
                                    arrival_ms: *arrival_ms,
                                    payload: payload.clone(),
                                })
                                .collect();
                            prop_assert!(model.len() >= answer.len());
                            prop_assert_eq!(&answer[..], &model[..answer.len()], "read({}, {})", stream, from);
                            let bytes: usize = answer.iter().map(|r| r.payload.len()).sum();
                            let cut_short = answer.len() < model.len();
                            if cut_short {
                                prop_assert!(answer.len() >= max_records || bytes >= max_bytes,
                                    "an answer stops early only at a limit");
                            }
                            prop_assert_eq!(model.is_empty(), answer.is_empty(), "at least one record if there is one");
                        }
                    }
                }
            }
        }
    }
}
