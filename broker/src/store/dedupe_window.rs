//! A stream's dedupe window, in memory. In: each append's dedupe keys (as fingerprints), its first offset
//! and arrival, and the stream's live range (start offset, dedupe horizon, key cap) at that append. Out:
//! which of its events are new (stored) and which were seen within the range (acknowledged, not stored).
//!
//! This decides what a replica stores, so it must decide alike on every replica, whatever each one's
//! apply batches, restarts and snapshot installs: the answer depends only on the appends applied before,
//! in log order, and on the live range, which comes from replicated state. A key counts as seen iff an
//! event with its fingerprint was stored at an offset ≥ `LiveRange::from_offset` with an arrival ≥
//! `LiveRange::horizon_ms`. Arrivals never go back within a stream and offsets only grow, so the live keys
//! are always a suffix of the stored ones: forgetting pops from the front.
//!
//! The window is not persisted as such. Each append's fingerprints go into its `time_index` entry (the
//! one key per append that existed already), and a window is rebuilt from those entries at open and after
//! a snapshot install ([`DedupeWindow::rebuilt`]); `proptest` below checks that a rebuilt window decides
//! exactly as the one it replaces. Data dirs of earlier versions kept the keys in the `dedupe` column
//! family instead; their appends have an empty index value, and until the range passes them a lookup
//! that misses here asks that column family (`LegacyAppends`).
//!
//! Memory: each fingerprint once, 12 bytes, in a queue of fixed blocks in offset order; the table holds
//! only its position there (4 bytes per slot, at a load between 3/5 and 4/5: `dedupe_table.rs`); and 24
//! bytes per append. About 17-19 bytes per key, at most [`MAX_KEYS_PER_STREAM`] keys per stream. (The first
//! version kept a `HashSet` of fingerprints beside a `VecDeque` of them; both doubled at once, and a 10 M
//! event backlog with 4 M keys reached 287 MiB RSS against 228 MiB with the ring and a `hashbrown` table of
//! positions, whose load moved between 7/16 and 7/8.)

use std::collections::VecDeque;

use super::dedupe_table::{POSITION_BITS, PositionTable, slot_hash};

/// Bytes of SHA-256 kept per key. Two distinct keys share a fingerprint with probability 2⁻⁹⁶ per pair,
/// the same on every replica (the function is fixed), so even that would not make replicas diverge.
pub(crate) const FINGERPRINT_BYTES: usize = 12;

/// The most keys one stream remembers: the window ends at the last this many events, whatever its length
/// (about 38 MiB per stream with its table). Part of the replicated semantics: every replica must use the
/// same value.
pub(crate) const MAX_KEYS_PER_STREAM: u64 = 1 << 21;

// The ring holds the live keys (at most the cap, plus one append's) and the table resolves their positions
// from POSITION_BITS; twice the cap leaves room for any append.
const _: () = assert!(2 * MAX_KEYS_PER_STREAM <= 1 << POSITION_BITS);

/// A dedupe key's fingerprint: the first [`FINGERPRINT_BYTES`] of its SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint([u8; FINGERPRINT_BYTES]);

impl Fingerprint {
    pub(crate) fn of_key(key: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, key);
        let mut bytes = [0u8; FINGERPRINT_BYTES];
        bytes.copy_from_slice(&digest.as_ref()[..FINGERPRINT_BYTES]);
        Fingerprint(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; FINGERPRINT_BYTES] {
        &self.0
    }
}

/// Fingerprints in insertion order, numbered by a sequence that never goes back; stored in blocks of
/// [`RING_BLOCK`], so that growing never copies (or doubles) what is there, and a block is freed once its
/// last fingerprint is popped.
#[derive(Default)]
struct Ring {
    blocks: VecDeque<Box<[Fingerprint]>>,
    /// Sequence number of `blocks[0][0]`.
    first_seq: u64,
    /// The oldest fingerprint held, and the one after the newest.
    front_seq: u64,
    end_seq: u64,
}

const RING_BLOCK: usize = 4096;

impl Ring {
    fn len(&self) -> u64 {
        self.end_seq - self.front_seq
    }

    fn get(&self, seq: u64) -> Fingerprint {
        let i = (seq - self.first_seq) as usize;
        self.blocks[i / RING_BLOCK][i % RING_BLOCK]
    }

    fn push(&mut self, fingerprint: Fingerprint) -> u64 {
        let i = (self.end_seq - self.first_seq) as usize;
        if i / RING_BLOCK == self.blocks.len() {
            self.blocks.push_back(vec![Fingerprint([0; FINGERPRINT_BYTES]); RING_BLOCK].into_boxed_slice());
        }
        self.blocks[i / RING_BLOCK][i % RING_BLOCK] = fingerprint;
        self.end_seq += 1;
        self.end_seq - 1
    }

    fn pop_front(&mut self) -> Option<(u64, Fingerprint)> {
        if self.front_seq == self.end_seq {
            return None;
        }
        let seq = self.front_seq;
        let fingerprint = self.get(seq);
        self.front_seq += 1;
        if self.front_seq - self.first_seq == RING_BLOCK as u64 {
            self.blocks.pop_front();
            self.first_seq += RING_BLOCK as u64;
        }
        Some((seq, fingerprint))
    }

    /// The full sequence number of a position kept as its low [`POSITION_BITS`] (the ring never holds
    /// that many entries).
    fn resolve(&self, low: u32) -> u64 {
        let mask = (1u32 << POSITION_BITS) - 1;
        self.end_seq - u64::from((self.end_seq as u32).wrapping_sub(low) & mask)
    }

    /// The live fingerprints with their sequence numbers, oldest first.
    fn iter(&self) -> impl Iterator<Item = (u64, Fingerprint)> + '_ {
        (self.front_seq..self.end_seq).map(|seq| (seq, self.get(seq)))
    }
}

/// The table's hash of a fingerprint: its first eight bytes, mixed with a key of this process's.
fn table_hash(fingerprint: &Fingerprint) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&fingerprint.0[..8]);
    slot_hash(u64::from_le_bytes(first))
}

/// What an append with dedupe may match: events stored at or after `from_offset` that arrived at or after
/// `horizon_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LiveRange {
    pub(crate) from_offset: u64,
    pub(crate) horizon_ms: u64,
}

impl LiveRange {
    /// The range of an append to a stream that starts (retention) at `start_offset` and ends before
    /// `next_offset`, with the stream's dedupe horizon after this append.
    pub(crate) fn of(start_offset: u64, next_offset: u64, horizon_ms: u64) -> Self {
        LiveRange { from_offset: start_offset.max(next_offset.saturating_sub(MAX_KEYS_PER_STREAM)), horizon_ms }
    }
}

/// One append's keyed events: `len` fingerprints at offsets `first_offset..`, all arrived at `arrival_ms`.
#[derive(Clone, Copy, Debug)]
struct Span {
    first_offset: u64,
    arrival_ms: u64,
    len: u64,
}

/// One stream's live keys.
#[derive(Default)]
pub(crate) struct DedupeWindow {
    /// The live fingerprints in offset order; `spans` says where each append's start.
    order: Ring,
    /// Positions in `order` (low [`POSITION_BITS`] of the sequence), found by fingerprint.
    live: PositionTable,
    spans: VecDeque<Span>,
    /// Appends stored by a version that kept their keys in the `dedupe` column family only: while the
    /// range reaches them, a miss here must ask that column family too.
    legacy: Option<LegacyAppends>,
}

/// Where a stream's appends of an earlier version end: below `below_offset`, arrived by `last_arrival_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LegacyAppends {
    below_offset: u64,
    last_arrival_ms: u64,
}

impl LegacyAppends {
    /// Whether a key of theirs could still count: one stored at or after the range's start, and not before
    /// its horizon. Both only move forward, so once this is false it stays false.
    fn reached_by(&self, range: LiveRange) -> bool {
        range.from_offset < self.below_offset && range.horizon_ms <= self.last_arrival_ms
    }
}

impl DedupeWindow {
    /// Builds the window a stream had, from its appends in offset order; their `fingerprints` are `Some`
    /// for an append with dedupe, `None` for one stored by an earlier version
    /// (whose keys are only in the `dedupe` column family, and whose offsets end at `end_offset`: the next
    /// append's first offset, or the stream's end). Appends without dedupe are left out.
    pub(crate) fn rebuilt(appends: impl IntoIterator<Item = RecordedAppend>, range: LiveRange) -> Self {
        let mut window = DedupeWindow::default();
        for append in appends {
            match append.fingerprints {
                // Only the live part: a key stored again after its first event was trimmed or passed the
                // horizon appears twice in the index, and only the later one may stay.
                Some(_) if append.arrival_ms < range.horizon_ms => {}
                Some(fingerprints) => {
                    let skip = range.from_offset.saturating_sub(append.first_offset).min(fingerprints.len() as u64);
                    window.remember(append.first_offset + skip, append.arrival_ms, &fingerprints[skip as usize..]);
                }
                None => {
                    let previous = window.legacy.unwrap_or(LegacyAppends { below_offset: 0, last_arrival_ms: 0 });
                    window.legacy = Some(LegacyAppends {
                        below_offset: previous.below_offset.max(append.end_offset),
                        last_arrival_ms: previous.last_arrival_ms.max(append.arrival_ms),
                    });
                }
            }
        }
        // One table for all the keys, sized once, rather than grown step by step as they came.
        if window.order.len() > 0 {
            window.rebuild_table();
        }
        window
    }

    /// Decides which of an append's events are new and remembers them: `true` for an event to store, in
    /// order; `false` for one whose fingerprint is live, or came earlier in the same append. `range` is the
    /// stream's live range for this append; `legacy_seen(i)` asks the `dedupe` column family about event
    /// `i` while the range still reaches appends of an earlier version.
    pub(crate) fn admit<E>(
        &mut self,
        range: LiveRange,
        first_offset: u64,
        arrival_ms: u64,
        fingerprints: &[Fingerprint],
        mut legacy_seen: impl FnMut(usize) -> Result<bool, E>,
    ) -> Result<Vec<bool>, E> {
        self.forget_before(range);
        let ask_legacy = self.legacy.is_some_and(|legacy| legacy.reached_by(range));
        if !ask_legacy {
            self.legacy = None;
        }
        let mut admitted = Vec::with_capacity(fingerprints.len());
        let mut stored = 0;
        for (i, fingerprint) in fingerprints.iter().enumerate() {
            let seen = self.contains(fingerprint) || (ask_legacy && legacy_seen(i)?);
            if !seen {
                self.insert(*fingerprint);
                stored += 1;
            }
            admitted.push(!seen);
        }
        self.push_span(first_offset, arrival_ms, stored);
        Ok(admitted)
    }

    /// Keys live now.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    fn contains(&self, fingerprint: &Fingerprint) -> bool {
        self.live.find(table_hash(fingerprint), |low| self.order.get(self.order.resolve(low)) == *fingerprint).is_some()
    }

    fn insert(&mut self, fingerprint: Fingerprint) {
        let seq = self.order.push(fingerprint);
        if self.live.insert(table_hash(&fingerprint), seq as u32).is_err() {
            // Full (or a run too long): a bigger table, from the ring, which holds this one already.
            self.rebuild_table();
        }
    }

    /// A new table of every live position, at its rebuilt load; bigger again in the (for keyed hashes of
    /// SHA-256 prefixes, unheard-of) case of a run too long for a slot's distance.
    fn rebuild_table(&mut self) {
        let mut entries = self.order.len() as usize;
        loop {
            let mut table = PositionTable::for_entries(entries);
            if self.order.iter().all(|(seq, fingerprint)| table.insert(table_hash(&fingerprint), seq as u32).is_ok()) {
                self.live = table;
                return;
            }
            entries += entries / 2 + 1;
            // Only more than 62 fingerprints sharing their first eight bytes could get here: SHA-256
            // collisions on 64 bits, many times over.
            assert!(entries <= 64 * (1 << POSITION_BITS), "dedupe table: no table size parts these fingerprints");
        }
    }

    /// Remembers fingerprints already decided (stored at `first_offset..`), as a rebuild does: in the ring
    /// only; [`DedupeWindow::rebuilt`] builds the table once they are all there.
    fn remember(&mut self, first_offset: u64, arrival_ms: u64, fingerprints: &[Fingerprint]) {
        for fingerprint in fingerprints {
            self.order.push(*fingerprint);
        }
        self.push_span(first_offset, arrival_ms, fingerprints.len() as u64);
    }

    fn push_span(&mut self, first_offset: u64, arrival_ms: u64, len: u64) {
        if len > 0 {
            self.spans.push_back(Span { first_offset, arrival_ms, len });
        }
    }

    /// Forgets every key outside `range`: whole appends that arrived before the horizon or end before
    /// `from_offset`, and the front of one that straddles `from_offset`.
    fn forget_before(&mut self, range: LiveRange) {
        while let Some(span) = self.spans.front_mut() {
            let forget = if span.arrival_ms < range.horizon_ms {
                span.len
            } else {
                range.from_offset.saturating_sub(span.first_offset).min(span.len)
            };
            if forget == 0 {
                break;
            }
            let mask = (1u32 << POSITION_BITS) - 1;
            for _ in 0..forget {
                let Some((seq, fingerprint)) = self.order.pop_front() else { break };
                if let Some(slot) = self.live.find(table_hash(&fingerprint), |low| low == seq as u32 & mask) {
                    self.live.remove_at(slot);
                }
            }
            span.first_offset += forget;
            span.len -= forget;
            if span.len > 0 {
                break;
            }
            self.spans.pop_front();
        }
        // After a burst, give the table's memory back (with slack, so that a steady window does not
        // reallocate); the ring frees its blocks as it goes.
        if self.live.slot_count() > 1024 && self.live.len() < self.live.slot_count() / 4 {
            self.rebuild_table();
            self.spans.shrink_to(self.spans.len() * 2);
        }
    }
}

/// One append as recorded in the `time_index` (see [`DedupeWindow::rebuilt`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordedAppend {
    pub(crate) first_offset: u64,
    pub(crate) end_offset: u64,
    pub(crate) arrival_ms: u64,
    pub(crate) fingerprints: Option<Vec<Fingerprint>>,
}

/// A `time_index` value: `[]` from earlier versions (keys, if any, in the `dedupe` column family), `[0]`
/// for an append without dedupe, `[1] · fingerprints` for one with dedupe (the stored events' keys).
pub(crate) fn index_value(fingerprints: Option<&[Fingerprint]>) -> Vec<u8> {
    match fingerprints {
        None => vec![INDEX_WITHOUT_DEDUPE],
        Some(fingerprints) => {
            let mut value = Vec::with_capacity(1 + fingerprints.len() * FINGERPRINT_BYTES);
            value.push(INDEX_WITH_DEDUPE);
            for fingerprint in fingerprints {
                value.extend_from_slice(fingerprint.as_bytes());
            }
            value
        }
    }
}

const INDEX_WITHOUT_DEDUPE: u8 = 0;
const INDEX_WITH_DEDUPE: u8 = 1;

/// What a `time_index` value says about its append's keys.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IndexedKeys {
    /// Written by an earlier version: keys, if any, are in the `dedupe` column family.
    Legacy,
    WithoutDedupe,
    Fingerprints(Vec<Fingerprint>),
}

pub(crate) fn decode_index_value(value: &[u8]) -> Option<IndexedKeys> {
    match value.split_first() {
        None => Some(IndexedKeys::Legacy),
        Some((&INDEX_WITHOUT_DEDUPE, [])) => Some(IndexedKeys::WithoutDedupe),
        Some((&INDEX_WITH_DEDUPE, rest)) if rest.len() % FINGERPRINT_BYTES == 0 => Some(IndexedKeys::Fingerprints(
            rest.chunks_exact(FINGERPRINT_BYTES)
                .map(|chunk| {
                    let mut bytes = [0u8; FINGERPRINT_BYTES];
                    bytes.copy_from_slice(chunk);
                    Fingerprint(bytes)
                })
                .collect(),
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use proptest::prelude::*;

    use super::*;

    fn fp(key: &str) -> Fingerprint {
        Fingerprint::of_key(key.as_bytes())
    }

    fn no_legacy(_: usize) -> Result<bool, Infallible> {
        Ok(false)
    }

    #[test]
    fn fingerprints_are_fixed_sha256_prefixes() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 …: the same bytes on every replica and version.
        assert_eq!(fp("abc").as_bytes(), &[0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde]);
        assert_ne!(fp("src\0a"), fp("src\0b"));
    }

    #[test]
    fn index_values_round_trip_and_garbage_is_refused() {
        let fingerprints = vec![fp("a"), fp("b")];
        assert_eq!(
            decode_index_value(&index_value(Some(&fingerprints))),
            Some(IndexedKeys::Fingerprints(fingerprints))
        );
        assert_eq!(decode_index_value(&index_value(Some(&[]))), Some(IndexedKeys::Fingerprints(vec![])));
        assert_eq!(decode_index_value(&index_value(None)), Some(IndexedKeys::WithoutDedupe));
        assert_eq!(decode_index_value(&[]), Some(IndexedKeys::Legacy));
        assert_eq!(decode_index_value(&[1, 2, 3]), None, "not a whole fingerprint");
        assert_eq!(decode_index_value(&[0, 0]), None);
        assert_eq!(decode_index_value(&[7]), None);
    }

    #[test]
    fn the_decisions_of_one_stream() {
        let mut window = DedupeWindow::default();
        let range = |from_offset, horizon_ms| LiveRange { from_offset, horizon_ms };
        let admit = |window: &mut DedupeWindow, range, first, at, keys: &[&str]| {
            let fingerprints: Vec<_> = keys.iter().map(|k| fp(k)).collect();
            window.admit(range, first, at, &fingerprints, no_legacy).expect("infallible")
        };
        // (range, first offset, arrival, keys) → stored?
        assert_eq!(admit(&mut window, range(0, 0), 0, 100, &["a", "b", "a"]), [true, true, false], "twice in one");
        assert_eq!(admit(&mut window, range(0, 0), 2, 150, &["b", "c"]), [false, true]);
        assert_eq!(window.len(), 3);
        assert_eq!(admit(&mut window, range(0, 101), 3, 200, &["a", "c"]), [true, false], "a arrived before 101");
        assert_eq!(admit(&mut window, range(3, 101), 4, 210, &["b", "c"]), [true, true], "trimmed below 3");
        assert_eq!(window.len(), 3, "a (3), b (4), c (5)");
        assert_eq!(admit(&mut window, range(4, 101), 6, 220, &["a"]), [true], "a straddled the start: forgotten");
        assert_eq!(window.len(), 3);
    }

    #[test]
    fn the_ring_crosses_blocks_and_its_positions_wrap() {
        let start = u64::from(u32::MAX) - 5;
        let mut ring = Ring { blocks: VecDeque::new(), first_seq: start, front_seq: start, end_seq: start };
        let keys: Vec<Fingerprint> = (0..3 * RING_BLOCK + 7).map(|i| fp(&i.to_string())).collect();
        for (i, key) in keys.iter().enumerate() {
            let seq = ring.push(*key);
            assert_eq!(seq, start + i as u64);
            assert_eq!(ring.resolve(seq as u32), seq, "past 2^32 too");
        }
        assert_eq!(ring.blocks.len(), 4);
        for key in &keys[..2 * RING_BLOCK] {
            assert_eq!(ring.pop_front().map(|(_, f)| f), Some(*key));
        }
        assert_eq!(ring.blocks.len(), 2, "emptied blocks are freed");
        assert_eq!(ring.len(), (RING_BLOCK + 7) as u64);
        assert_eq!(ring.get(ring.front_seq), keys[2 * RING_BLOCK]);
    }

    /// Many more keys than a block, sliding through the window: every live key is found, no forgotten one.
    #[test]
    fn a_sliding_window_over_many_blocks_holds_exactly_the_live_keys() {
        let mut window = DedupeWindow::default();
        let width = 2 * RING_BLOCK as u64 + 123;
        for offset in 0..6 * RING_BLOCK as u64 {
            let range = LiveRange { from_offset: offset.saturating_sub(width), horizon_ms: 0 };
            let stored = window.admit(range, offset, 0, &[fp(&offset.to_string())], no_legacy).expect("ok");
            assert_eq!(stored, [true]);
        }
        let end = 6 * RING_BLOCK as u64;
        window.forget_before(LiveRange { from_offset: end - width, horizon_ms: 0 });
        assert_eq!(window.len() as u64, width);
        for offset in (0..end).step_by(97) {
            assert_eq!(window.contains(&fp(&offset.to_string())), offset >= end - width, "offset {offset}");
        }
        window.forget_before(LiveRange { from_offset: end, horizon_ms: 0 });
        assert_eq!(window.len(), 0);
        assert!(window.live.slot_count() < 1024, "the table gave its memory back");
        assert!(window.order.blocks.len() <= 1, "and the ring its blocks, but the one being filled");
    }

    #[test]
    fn the_cap_bounds_the_window_by_offsets() {
        assert_eq!(LiveRange::of(0, 10, 5), LiveRange { from_offset: 0, horizon_ms: 5 });
        assert_eq!(LiveRange::of(7, 10, 5).from_offset, 7);
        assert_eq!(LiveRange::of(0, MAX_KEYS_PER_STREAM + 10, 5).from_offset, 10);
        assert_eq!(LiveRange::of(20, MAX_KEYS_PER_STREAM + 10, 5).from_offset, 20);
    }

    #[test]
    fn a_legacy_append_is_asked_about_until_the_range_passes_it() {
        let legacy = RecordedAppend { first_offset: 0, end_offset: 5, arrival_ms: 100, fingerprints: None };
        for (passed_by, range) in [
            ("offset", LiveRange { from_offset: 5, horizon_ms: 0 }),
            ("time", LiveRange { from_offset: 4, horizon_ms: 101 }),
        ] {
            let mut window = DedupeWindow::rebuilt([legacy.clone()], LiveRange { from_offset: 0, horizon_ms: 0 });
            let mut asked = 0;
            let mut ask = |_: usize| -> Result<bool, Infallible> {
                asked += 1;
                Ok(true)
            };
            let reached = LiveRange { from_offset: 4, horizon_ms: 100 };
            let stored = window.admit(reached, 5, 200, &[fp("x")], &mut ask);
            assert_eq!(stored, Ok(vec![false]), "the dedupe column family had it");
            let stored = window.admit(range, 6, 210, &[fp("y")], &mut ask);
            assert_eq!(stored, Ok(vec![true]), "passed by {passed_by}: not asked");
            let stored = window.admit(reached, 7, 220, &[fp("z")], &mut ask);
            assert_eq!(stored, Ok(vec![true]), "and never again (the range only moves forward)");
            assert_eq!(asked, 1);
            assert_eq!(window.legacy, None);
        }
    }

    /// One step of a stream's life, as the log would apply it.
    #[derive(Clone, Debug)]
    enum Step {
        /// An append with dedupe: keys (from a small alphabet, so that duplicates happen), time advanced,
        /// window.
        Append { keys: Vec<u8>, advance_ms: u64, window_ms: u64 },
        /// An append without dedupe of `count` events.
        Plain { count: u8 },
        /// Retention trims `by` events off the front.
        Trim { by: u64 },
        /// The node restarts: the window is rebuilt from what the index holds.
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (proptest::collection::vec(0u8..24, 0..6), 0u64..60, 20u64..200)
                .prop_map(|(keys, advance_ms, window_ms)| Step::Append { keys, advance_ms, window_ms }),
            1 => (1u8..4).prop_map(|count| Step::Plain { count }),
            1 => (0u64..6).prop_map(|by| Step::Trim { by }),
            1 => Just(Step::Reopen),
        ]
    }

    proptest! {
        /// Against the definition, kept naively as every stored event (key, offset, arrival): an append's
        /// key is a duplicate iff a stored event with it is at or after the start and the horizon. Reopens
        /// rebuild from the index entries, filtered by arrival as the scan from the horizon is.
        #[test]
        fn the_window_decides_as_the_definition_across_trims_and_reopens(
            steps in proptest::collection::vec(step(), 1..60),
        ) {
            let mut window = DedupeWindow::default();
            let mut stored: Vec<(Option<u8>, u64, u64)> = Vec::new();
            let mut index: Vec<RecordedAppend> = Vec::new();
            let (mut next_offset, mut start_offset, mut now_ms, mut horizon_ms) = (0u64, 0u64, 1_000u64, 0u64);
            for step in steps {
                match step {
                    Step::Append { keys, advance_ms, window_ms } => {
                        now_ms += advance_ms;
                        horizon_ms = horizon_ms.max(now_ms.saturating_sub(window_ms));
                        let range = LiveRange::of(start_offset, next_offset, horizon_ms);
                        let fingerprints: Vec<_> = keys.iter().map(|k| fp(&k.to_string())).collect();
                        let decided = window.admit(range, next_offset, now_ms, &fingerprints, no_legacy).expect("ok");
                        let mut kept = Vec::new();
                        for (i, key) in keys.iter().enumerate() {
                            let seen = stored.iter().any(|(k, offset, at)| {
                                *k == Some(*key) && *offset >= range.from_offset && *at >= horizon_ms
                            }) || keys[..i].contains(key);
                            prop_assert_eq!(decided[i], !seen, "key {} at {} ms", key, now_ms);
                            if !seen {
                                stored.push((Some(*key), next_offset + kept.len() as u64, now_ms));
                                kept.push(fingerprints[i]);
                            }
                        }
                        if !kept.is_empty() {
                            let end_offset = next_offset + kept.len() as u64;
                            index.push(RecordedAppend {
                                first_offset: next_offset, end_offset, arrival_ms: now_ms, fingerprints: Some(kept),
                            });
                            next_offset = end_offset;
                        }
                    }
                    Step::Plain { count } => {
                        for _ in 0..count {
                            stored.push((None, next_offset, now_ms));
                            next_offset += 1;
                        }
                    }
                    Step::Trim { by } => start_offset = (start_offset + by).min(next_offset),
                    Step::Reopen => {
                        let range = LiveRange::of(start_offset, next_offset, horizon_ms);
                        let recorded = index.iter().filter(|a| a.arrival_ms >= horizon_ms).cloned();
                        let rebuilt = DedupeWindow::rebuilt(recorded, range);
                        window.forget_before(range);
                        let live: Vec<Fingerprint> =
                            (window.order.front_seq..window.order.end_seq).map(|seq| window.order.get(seq)).collect();
                        prop_assert_eq!(rebuilt.len(), window.len());
                        prop_assert_eq!(window.len() as u64, window.order.len(), "one table entry per queued key");
                        prop_assert!(live.iter().all(|f| rebuilt.contains(f) && window.contains(f)));
                        window = rebuilt;
                    }
                }
            }
        }
    }
}
