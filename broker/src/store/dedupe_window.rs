//! A stream's dedupe window, in memory. In: each append's dedupe keys (as fingerprints), its first offset
//! and arrival, and the stream's live range (start offset, dedupe horizon, key cap) at that append; for
//! the rare key that looks seen, the full fingerprint it looks like, from its append's `time_index` entry.
//! Out: which of its events are new (stored) and which were seen within the range (acknowledged, not
//! stored).
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
//! Memory: of each fingerprint the window keeps only 48 bits of its (per-process keyed) table hash, 6
//! bytes, in a queue of fixed blocks in offset order; the table holds its position there (4 bytes per
//! slot, at a load between 3/5 and 4/5: `dedupe_table.rs`); and 24 bytes per append. About 11-13 bytes
//! per key, at most [`MAX_KEYS_PER_STREAM`] keys per stream. Those 48 bits only nominate: a key whose
//! bits match a live one's (a duplicate, or one new key in about 2⁴⁸ ÷ live keys) is compared in full
//! with the fingerprint in that append's `time_index` entry, or, for an append not written yet (this
//! apply batch), with the copy kept until [`DedupeWindow::written`]. So decisions stay exact on the
//! 96-bit fingerprint, the same on every replica, whatever its process key. (Earlier versions kept the
//! full 12 bytes in the ring: 17-19 bytes per key. The first kept a `HashSet` of fingerprints beside a
//! `VecDeque` of them; both doubled at once, and a 10 M event backlog with 4 M keys reached 287 MiB RSS.)

use std::collections::VecDeque;

use super::dedupe_table::{POSITION_BITS, PositionTable, slot_hash};

/// Bytes of SHA-256 kept per key. Two distinct keys share a fingerprint with probability 2⁻⁹⁶ per pair,
/// the same on every replica (the function is fixed), so even that would not make replicas diverge.
pub(crate) const FINGERPRINT_BYTES: usize = 12;

/// The most keys one stream remembers: the window ends at the last this many events, whatever its length
/// (about 26 MiB per stream with its table). Part of the replicated semantics: every replica must use the
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

/// What the ring keeps of a fingerprint: the top 48 bits of its table hash (first eight bytes, mixed with
/// this process's key), enough to place it in a table of any size and to nominate it as a match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ShortHash([u8; 6]);

impl ShortHash {
    fn of(fingerprint: &Fingerprint, mask: u64) -> Self {
        let mut first = [0u8; 8];
        first.copy_from_slice(&fingerprint.0[..8]);
        let hash = slot_hash(u64::from_le_bytes(first)) & mask;
        let mut kept = [0u8; 6];
        kept.copy_from_slice(&hash.to_be_bytes()[..6]);
        ShortHash(kept)
    }

    /// The table's hash: these 48 bits on top, zeros below.
    fn table_hash(self) -> u64 {
        let mut bytes = [0u8; 8];
        bytes[..6].copy_from_slice(&self.0);
        u64::from_be_bytes(bytes)
    }
}

/// Every bit a [`ShortHash`] keeps.
const FULL_MASK: u64 = !0xffff;

/// Short hashes in insertion order, numbered by a sequence that never goes back; stored in blocks of
/// [`RING_BLOCK`], so that growing never copies (or doubles) what is there, and a block is freed once its
/// last entry is popped.
struct Ring {
    blocks: VecDeque<Box<[ShortHash]>>,
    /// Sequence number of `blocks[0][0]`.
    first_seq: u64,
    /// The oldest entry held, and the one after the newest.
    front_seq: u64,
    end_seq: u64,
}

const RING_BLOCK: usize = 4096;

/// The first sequence number: high enough that a span's first key, counted back to the start of its
/// append (see [`Span::first_seq`]), is never below zero.
const FIRST_SEQ: u64 = 1 << 32;

impl Default for Ring {
    fn default() -> Self {
        Ring { blocks: VecDeque::new(), first_seq: FIRST_SEQ, front_seq: FIRST_SEQ, end_seq: FIRST_SEQ }
    }
}

impl Ring {
    fn len(&self) -> u64 {
        self.end_seq - self.front_seq
    }

    fn get(&self, seq: u64) -> ShortHash {
        let i = (seq - self.first_seq) as usize;
        self.blocks[i / RING_BLOCK][i % RING_BLOCK]
    }

    fn push(&mut self, hash: ShortHash) -> u64 {
        let i = (self.end_seq - self.first_seq) as usize;
        if i / RING_BLOCK == self.blocks.len() {
            self.blocks.push_back(vec![ShortHash::default(); RING_BLOCK].into_boxed_slice());
        }
        self.blocks[i / RING_BLOCK][i % RING_BLOCK] = hash;
        self.end_seq += 1;
        self.end_seq - 1
    }

    fn pop_front(&mut self) -> Option<(u64, ShortHash)> {
        if self.front_seq == self.end_seq {
            return None;
        }
        let seq = self.front_seq;
        let hash = self.get(seq);
        self.front_seq += 1;
        if self.front_seq - self.first_seq == RING_BLOCK as u64 {
            self.blocks.pop_front();
            self.first_seq += RING_BLOCK as u64;
        }
        Some((seq, hash))
    }

    /// The full sequence number of a position kept as its low [`POSITION_BITS`] (the ring never holds
    /// that many entries).
    fn resolve(&self, low: u32) -> u64 {
        let mask = (1u32 << POSITION_BITS) - 1;
        self.end_seq - u64::from((self.end_seq as u32).wrapping_sub(low) & mask)
    }

    /// The live entries with their sequence numbers, oldest first.
    fn iter(&self) -> impl Iterator<Item = (u64, ShortHash)> + '_ {
        (self.front_seq..self.end_seq).map(|seq| (seq, self.get(seq)))
    }
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

/// Where a live key's full fingerprint is stored: entry `index` of the `time_index` value of the append
/// that started at `append_offset` and arrived at `arrival_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoredKey {
    pub(crate) arrival_ms: u64,
    pub(crate) append_offset: u64,
    pub(crate) index: usize,
}

/// One append's keyed events, all arrived at `arrival_ms`, whose `time_index` entry is keyed by
/// `append_offset`. Its keys are in the ring from the sequence number `first_seq` would have plus the
/// ones forgotten (a window rebuilt mid-append starts past them) up to the next span's `first_seq`.
#[derive(Clone, Copy, Debug)]
struct Span {
    append_offset: u64,
    arrival_ms: u64,
    /// The sequence number the append's first key has, or would have had.
    first_seq: u64,
}

/// One stream's live keys.
pub(crate) struct DedupeWindow {
    /// The live keys' short hashes in offset order; `spans` says where each append's start.
    order: Ring,
    /// Positions in `order` (low [`POSITION_BITS`] of the sequence), found by short hash.
    live: PositionTable,
    spans: VecDeque<Span>,
    /// Full fingerprints of the keys from `recent_from_seq` on: admitted since the last
    /// [`DedupeWindow::written`], so not in the `time_index` yet.
    recent: Vec<Fingerprint>,
    recent_from_seq: u64,
    /// The bits of the table hash kept ([`FULL_MASK`]; fewer in tests, so that nominations that fail
    /// happen often).
    hash_mask: u64,
    /// Appends stored by a version that kept their keys in the `dedupe` column family only: while the
    /// range reaches them, a miss here must ask that column family too.
    legacy: Option<LegacyAppends>,
}

impl Default for DedupeWindow {
    fn default() -> Self {
        DedupeWindow {
            order: Ring::default(),
            live: PositionTable::default(),
            spans: VecDeque::new(),
            recent: Vec::new(),
            recent_from_seq: FIRST_SEQ,
            hash_mask: FULL_MASK,
            legacy: None,
        }
    }
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

/// Where an append's keys are looked up beyond the window: the `dedupe` column family for an earlier
/// version's appends, and the `time_index` for a stored key's full fingerprint.
pub(crate) trait KeyLookup {
    type Error;
    /// Whether event `index` of the append being admitted was seen in the `dedupe` column family.
    fn legacy_seen(&mut self, index: usize) -> Result<bool, Self::Error>;
    /// The full fingerprint of a live key that is in the `time_index`.
    fn stored_fingerprint(&mut self, key: StoredKey) -> Result<Fingerprint, Self::Error>;
}

impl DedupeWindow {
    /// Builds the window a stream had, from its appends in offset order; their `fingerprints` are `Some`
    /// for an append with dedupe, `None` for one stored by an earlier version
    /// (whose keys are only in the `dedupe` column family, and whose offsets end at `end_offset`: the next
    /// append's first offset, or the stream's end). Appends without dedupe are left out.
    pub(crate) fn rebuilt(appends: impl IntoIterator<Item = RecordedAppend>, range: LiveRange) -> Self {
        Self::rebuilt_with_mask(appends, range, FULL_MASK)
    }

    fn rebuilt_with_mask(appends: impl IntoIterator<Item = RecordedAppend>, range: LiveRange, hash_mask: u64) -> Self {
        let mut window = DedupeWindow { hash_mask, ..DedupeWindow::default() };
        for append in appends {
            match append.fingerprints {
                // Only the live part: a key stored again after its first event was trimmed or passed the
                // horizon appears twice in the index, and only the later one may stay.
                Some(_) if append.arrival_ms < range.horizon_ms => {}
                Some(fingerprints) => {
                    let skip = range.from_offset.saturating_sub(append.first_offset).min(fingerprints.len() as u64);
                    window.remember(append.first_offset, append.arrival_ms, skip, &fingerprints[skip as usize..]);
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
        window.recent_from_seq = window.order.end_seq;
        window
    }

    /// Decides which of an append's events are new and remembers them: `true` for an event to store, in
    /// order; `false` for one whose fingerprint is live, or came earlier in the same append. `range` is the
    /// stream's live range for this append; `lookup` is asked about the `dedupe` column family while the
    /// range still reaches appends of an earlier version, and for the full fingerprint of a live key whose
    /// short hash matches.
    pub(crate) fn admit<L: KeyLookup>(
        &mut self,
        range: LiveRange,
        first_offset: u64,
        arrival_ms: u64,
        fingerprints: &[Fingerprint],
        lookup: &mut L,
    ) -> Result<Vec<bool>, L::Error> {
        self.forget_before(range);
        let ask_legacy = self.legacy.is_some_and(|legacy| legacy.reached_by(range));
        if !ask_legacy {
            self.legacy = None;
        }
        let mut admitted = Vec::with_capacity(fingerprints.len());
        let first_seq = self.order.end_seq;
        let decided = fingerprints.iter().enumerate().try_for_each(|(i, fingerprint)| {
            let seen = self.contains(fingerprint, lookup)? || (ask_legacy && lookup.legacy_seen(i)?);
            if !seen {
                self.insert(*fingerprint);
            }
            admitted.push(!seen);
            Ok(())
        });
        // Even when a lookup failed half way: every key in the ring belongs to a span (the state machine
        // stops the group on the error, and a window is rebuilt when it opens again).
        if self.order.end_seq > first_seq {
            self.spans.push_back(Span { append_offset: first_offset, arrival_ms, first_seq });
        }
        decided.map(|()| admitted)
    }

    /// The appends admitted so far are in the `time_index` now: their full fingerprints are read there.
    pub(crate) fn written(&mut self) {
        self.recent.clear();
        self.recent_from_seq = self.order.end_seq;
    }

    /// Keys live now.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    fn contains<L: KeyLookup>(&self, fingerprint: &Fingerprint, lookup: &mut L) -> Result<bool, L::Error> {
        let short = ShortHash::of(fingerprint, self.hash_mask);
        let mut failed = None;
        let found = self.live.find(short.table_hash(), |low| {
            let seq = self.order.resolve(low);
            if failed.is_some() || self.order.get(seq) != short {
                return false;
            }
            match self.full_fingerprint(seq, lookup) {
                Ok(stored) => stored == *fingerprint,
                Err(error) => {
                    failed = Some(error);
                    false
                }
            }
        });
        match failed {
            Some(error) => Err(error),
            None => Ok(found.is_some()),
        }
    }

    /// The full fingerprint of the live key at `seq`: kept here until written, else from its append's
    /// `time_index` entry.
    fn full_fingerprint<L: KeyLookup>(&self, seq: u64, lookup: &mut L) -> Result<Fingerprint, L::Error> {
        if seq >= self.recent_from_seq {
            return Ok(self.recent[(seq - self.recent_from_seq) as usize]);
        }
        let span = self.spans[self.spans.partition_point(|span| span.first_seq <= seq) - 1];
        lookup.stored_fingerprint(StoredKey {
            arrival_ms: span.arrival_ms,
            append_offset: span.append_offset,
            index: (seq - span.first_seq) as usize,
        })
    }

    fn insert(&mut self, fingerprint: Fingerprint) {
        let short = ShortHash::of(&fingerprint, self.hash_mask);
        let seq = self.order.push(short);
        self.recent.push(fingerprint);
        if self.live.insert(short.table_hash(), seq as u32).is_err() {
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
            if self.order.iter().all(|(seq, short)| table.insert(short.table_hash(), seq as u32).is_ok()) {
                self.live = table;
                return;
            }
            entries += entries / 2 + 1;
            // Only more than 62 keys sharing their short hash could get here: 48-bit collisions of keyed
            // hashes, many times over.
            assert!(entries <= 64 * (1 << POSITION_BITS), "dedupe table: no table size parts these keys");
        }
    }

    /// Remembers the keys of an append already decided and written (its `time_index` entry lists
    /// `fingerprints` after the first `skip`), as a rebuild does: in the ring only;
    /// [`DedupeWindow::rebuilt`] builds the table once they are all there.
    fn remember(&mut self, append_offset: u64, arrival_ms: u64, skip: u64, fingerprints: &[Fingerprint]) {
        if fingerprints.is_empty() {
            return;
        }
        self.spans.push_back(Span { append_offset, arrival_ms, first_seq: self.order.end_seq - skip });
        for fingerprint in fingerprints {
            self.order.push(ShortHash::of(fingerprint, self.hash_mask));
        }
    }

    /// Forgets every key outside `range`: whole appends that arrived before the horizon or end before
    /// `from_offset`, and the front of one that straddles `from_offset`.
    fn forget_before(&mut self, range: LiveRange) {
        while let Some(&span) = self.spans.front() {
            let end_seq = self.spans.get(1).map_or(self.order.end_seq, |next| next.first_seq);
            // The front span's live keys start at the ring's front.
            let live_len = end_seq - self.order.front_seq;
            let live_first_offset = span.append_offset + (self.order.front_seq - span.first_seq);
            let forget = if span.arrival_ms < range.horizon_ms {
                live_len
            } else {
                range.from_offset.saturating_sub(live_first_offset).min(live_len)
            };
            if forget == 0 {
                break;
            }
            let mask = (1u32 << POSITION_BITS) - 1;
            for _ in 0..forget {
                let Some((seq, short)) = self.order.pop_front() else { break };
                if let Some(slot) = self.live.find(short.table_hash(), |low| low == seq as u32 & mask) {
                    self.live.remove_at(slot);
                }
            }
            if forget < live_len {
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

/// Fingerprint `index` of a `time_index` value with dedupe, read in place; `None` for any other value or
/// an index past its end.
pub(crate) fn indexed_fingerprint(value: &[u8], index: usize) -> Option<Fingerprint> {
    let (&INDEX_WITH_DEDUPE, rest) = value.split_first()? else { return None };
    let bytes = rest.get(index * FINGERPRINT_BYTES..(index + 1) * FINGERPRINT_BYTES)?;
    let mut fingerprint = [0u8; FINGERPRINT_BYTES];
    fingerprint.copy_from_slice(bytes);
    Some(Fingerprint(fingerprint))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn fp(key: &str) -> Fingerprint {
        Fingerprint::of_key(key.as_bytes())
    }

    /// The `time_index` of one stream, as the store keeps it: an append's stored fingerprints under its
    /// (arrival, first offset); `legacy` answers for the `dedupe` column family.
    #[derive(Default)]
    struct Index {
        entries: BTreeMap<(u64, u64), Vec<Fingerprint>>,
        legacy: bool,
        legacy_asked: usize,
        fingerprints_read: usize,
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Missing(StoredKey);

    impl KeyLookup for Index {
        type Error = Missing;

        fn legacy_seen(&mut self, _: usize) -> Result<bool, Missing> {
            self.legacy_asked += 1;
            Ok(self.legacy)
        }

        fn stored_fingerprint(&mut self, key: StoredKey) -> Result<Fingerprint, Missing> {
            self.fingerprints_read += 1;
            let value = self.entries.get(&(key.arrival_ms, key.append_offset)).map(|f| index_value(Some(f)));
            value.and_then(|value| indexed_fingerprint(&value, key.index)).ok_or(Missing(key))
        }
    }

    impl Index {
        /// Admits an append and writes what it kept, as one apply batch does; the events stored.
        fn append(
            &mut self,
            window: &mut DedupeWindow,
            range: LiveRange,
            first_offset: u64,
            arrival_ms: u64,
            fingerprints: &[Fingerprint],
        ) -> Vec<bool> {
            let admitted = window.admit(range, first_offset, arrival_ms, fingerprints, self).expect("in the index");
            let kept: Vec<Fingerprint> =
                fingerprints.iter().zip(&admitted).filter(|(_, stored)| **stored).map(|(f, _)| *f).collect();
            if !kept.is_empty() {
                self.entries.insert((arrival_ms, first_offset), kept);
            }
            window.written();
            admitted
        }

        /// Retention: drops the entries of appends that end at or before `start_offset`, as the store does
        /// (the one that straddles it stays: its later keys are live).
        fn trim(&mut self, start_offset: u64) {
            let ends: Vec<((u64, u64), u64)> =
                self.entries.iter().map(|(&key, fingerprints)| (key, key.1 + fingerprints.len() as u64)).collect();
            for (key, end_offset) in ends {
                if end_offset <= start_offset {
                    self.entries.remove(&key);
                }
            }
        }

        fn recorded(&self) -> Vec<RecordedAppend> {
            self.entries
                .iter()
                .map(|(&(arrival_ms, first_offset), fingerprints)| RecordedAppend {
                    first_offset,
                    end_offset: first_offset + fingerprints.len() as u64,
                    arrival_ms,
                    fingerprints: Some(fingerprints.clone()),
                })
                .collect()
        }
    }

    fn live_contains(window: &DedupeWindow, index: &mut Index, fingerprint: &Fingerprint) -> bool {
        window.contains(fingerprint, index).expect("in the index")
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
            Some(IndexedKeys::Fingerprints(fingerprints.clone()))
        );
        assert_eq!(decode_index_value(&index_value(Some(&[]))), Some(IndexedKeys::Fingerprints(vec![])));
        assert_eq!(decode_index_value(&index_value(None)), Some(IndexedKeys::WithoutDedupe));
        assert_eq!(decode_index_value(&[]), Some(IndexedKeys::Legacy));
        assert_eq!(decode_index_value(&[1, 2, 3]), None, "not a whole fingerprint");
        assert_eq!(decode_index_value(&[0, 0]), None);
        assert_eq!(decode_index_value(&[7]), None);
        let value = index_value(Some(&fingerprints));
        assert_eq!(indexed_fingerprint(&value, 1), Some(fp("b")));
        assert_eq!(indexed_fingerprint(&value, 2), None, "past the end");
        assert_eq!(indexed_fingerprint(&index_value(None), 0), None);
        assert_eq!(indexed_fingerprint(&[], 0), None);
    }

    #[test]
    fn the_decisions_of_one_stream() {
        let mut window = DedupeWindow::default();
        let mut index = Index::default();
        let range = |from_offset, horizon_ms| LiveRange { from_offset, horizon_ms };
        let mut admit = |window: &mut DedupeWindow, range, first, at, keys: &[&str]| {
            let fingerprints: Vec<_> = keys.iter().map(|k| fp(k)).collect();
            index.append(window, range, first, at, &fingerprints)
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
    fn a_short_hash_only_nominates_the_full_fingerprint_decides() {
        // Short hashes of one bit: every lookup is nominated against about half the live keys and has to
        // compare full fingerprints, from this batch's copies before `written`, from the index after.
        let mask = 1 << 63;
        let mut window = DedupeWindow { hash_mask: mask, ..DedupeWindow::default() };
        let mut index = Index::default();
        let keys: Vec<Fingerprint> = (0..40).map(|i| fp(&format!("k{i}"))).collect();
        let range = LiveRange { from_offset: 0, horizon_ms: 0 };
        let first = window.admit(range, 0, 10, &keys[..20], &mut index).expect("no reads");
        assert_eq!(first, [true; 20], "twenty distinct keys, all new though nominated");
        let again = window.admit(range, 20, 11, &keys[..1], &mut index).expect("no reads");
        assert_eq!(again, [false], "found in this batch's copies");
        assert_eq!(index.fingerprints_read, 0, "nothing asked of the index before it is written");
        window.written();
        index.entries.insert((10, 0), keys[..20].to_vec());
        let decided = index.append(&mut window, range, 20, 12, &keys[10..30]);
        assert_eq!(decided, [[false; 10], [true; 10]].concat());
        assert!(index.fingerprints_read >= 10, "each duplicate read its own entry at least");
        let mut rebuilt = DedupeWindow::rebuilt_with_mask(index.recorded(), range, mask);
        assert_eq!(index.append(&mut rebuilt, range, 30, 13, &keys[25..35]), [[false; 5], [true; 5]].concat());
    }

    #[test]
    fn a_lookup_error_is_returned_not_taken_for_an_answer() {
        // Every short hash alike: the first live key is nominated, and its entry is gone.
        let mut window = DedupeWindow { hash_mask: 0, ..DedupeWindow::default() };
        let mut index = Index::default();
        let range = LiveRange { from_offset: 0, horizon_ms: 0 };
        index.append(&mut window, range, 0, 10, &[fp("a"), fp("b")]);
        let entries = std::mem::take(&mut index.entries);
        let result = window.admit(range, 2, 11, &[fp("c")], &mut index);
        assert_eq!(result, Err(Missing(StoredKey { arrival_ms: 10, append_offset: 0, index: 0 })));
        // Half way through an append (c admitted after comparing a and b, d's first comparison fails): the
        // keys admitted before the error keep their span, so the window still finds them, and forgets them.
        index.entries = entries;
        let mut window = DedupeWindow::rebuilt_with_mask(index.recorded(), range, 0);
        let mut failing = FailThird(&mut index, 0);
        let result = window.admit(range, 2, 11, &[fp("c"), fp("d")], &mut failing);
        assert!(result.is_err());
        assert_eq!(window.len(), 3, "a, b, and c, which went in before d's lookup failed");
        window.written();
        index.entries.insert((11, 2), vec![fp("c")]);
        assert!(live_contains(&window, &mut index, &fp("c")));
        window.forget_before(LiveRange { from_offset: 3, horizon_ms: 0 });
        assert_eq!(window.len(), 0);
    }

    /// An index whose third read of a fingerprint fails.
    struct FailThird<'a>(&'a mut Index, usize);

    impl KeyLookup for FailThird<'_> {
        type Error = Missing;

        fn legacy_seen(&mut self, index: usize) -> Result<bool, Missing> {
            self.0.legacy_seen(index)
        }

        fn stored_fingerprint(&mut self, key: StoredKey) -> Result<Fingerprint, Missing> {
            self.1 += 1;
            if self.1 == 3 { Err(Missing(key)) } else { self.0.stored_fingerprint(key) }
        }
    }

    #[test]
    fn the_ring_crosses_blocks_and_its_positions_wrap() {
        let start = u64::from(u32::MAX) - 5;
        let mut ring = Ring { blocks: VecDeque::new(), first_seq: start, front_seq: start, end_seq: start };
        let keys: Vec<ShortHash> =
            (0..3 * RING_BLOCK + 7).map(|i| ShortHash::of(&fp(&i.to_string()), FULL_MASK)).collect();
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

    #[test]
    fn a_short_hash_keeps_the_top_48_bits_of_the_table_hash() {
        let fingerprint = fp("abc");
        let mut first = [0u8; 8];
        first.copy_from_slice(&fingerprint.as_bytes()[..8]);
        let short = ShortHash::of(&fingerprint, FULL_MASK);
        assert_eq!(short.table_hash(), slot_hash(u64::from_le_bytes(first)) & !0xffff);
        assert_eq!(ShortHash::of(&fingerprint, 1 << 63).table_hash() & !(1 << 63), 0);
    }

    /// Many more keys than a block, sliding through the window: every live key is found, no forgotten one.
    #[test]
    fn a_sliding_window_over_many_blocks_holds_exactly_the_live_keys() {
        let mut window = DedupeWindow::default();
        let mut index = Index::default();
        let width = 2 * RING_BLOCK as u64 + 123;
        for offset in 0..6 * RING_BLOCK as u64 {
            let range = LiveRange { from_offset: offset.saturating_sub(width), horizon_ms: 0 };
            let stored = index.append(&mut window, range, offset, 0, &[fp(&offset.to_string())]);
            assert_eq!(stored, [true]);
        }
        let end = 6 * RING_BLOCK as u64;
        window.forget_before(LiveRange { from_offset: end - width, horizon_ms: 0 });
        assert_eq!(window.len() as u64, width);
        for offset in (0..end).step_by(97) {
            let live = live_contains(&window, &mut index, &fp(&offset.to_string()));
            assert_eq!(live, offset >= end - width, "offset {offset}");
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
            let mut index = Index { legacy: true, ..Index::default() };
            let reached = LiveRange { from_offset: 4, horizon_ms: 100 };
            assert_eq!(
                index.append(&mut window, reached, 5, 200, &[fp("x")]),
                [false],
                "the dedupe column family had it"
            );
            assert_eq!(
                index.append(&mut window, range, 6, 210, &[fp("y")]),
                [true],
                "passed by {passed_by}: not asked"
            );
            let stored = index.append(&mut window, reached, 7, 220, &[fp("z")]);
            assert_eq!(stored, [true], "and never again (the range only moves forward)");
            assert_eq!(index.legacy_asked, 1);
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
        /// The apply batch ends: what it admitted is written to the index.
        Write,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (proptest::collection::vec(0u8..24, 0..6), 0u64..60, 20u64..200)
                .prop_map(|(keys, advance_ms, window_ms)| Step::Append { keys, advance_ms, window_ms }),
            1 => (1u8..4).prop_map(|count| Step::Plain { count }),
            1 => (0u64..6).prop_map(|by| Step::Trim { by }),
            1 => Just(Step::Reopen),
            2 => Just(Step::Write),
        ]
    }

    /// Runs `steps` against the definition, kept naively as every stored event (key, offset, arrival): an
    /// append's key is a duplicate iff a stored event with it is at or after the start and the horizon.
    /// Appends reach the index when their batch is written (a reopen writes first: it follows a write);
    /// reopens rebuild from the index entries, filtered by arrival as the scan from the horizon is.
    fn run_against_the_definition(steps: Vec<Step>, hash_mask: u64) -> Result<(), TestCaseError> {
        let mut window = DedupeWindow { hash_mask, ..DedupeWindow::default() };
        let mut index = Index::default();
        let mut unwritten: Vec<((u64, u64), Vec<Fingerprint>)> = Vec::new();
        let mut stored: Vec<(Option<u8>, u64, u64)> = Vec::new();
        let (mut next_offset, mut start_offset, mut now_ms, mut horizon_ms) = (0u64, 0u64, 1_000u64, 0u64);
        for step in steps {
            match step {
                Step::Append { keys, advance_ms, window_ms } => {
                    now_ms += advance_ms;
                    horizon_ms = horizon_ms.max(now_ms.saturating_sub(window_ms));
                    let range = LiveRange::of(start_offset, next_offset, horizon_ms);
                    let fingerprints: Vec<_> = keys.iter().map(|k| fp(&k.to_string())).collect();
                    let decided = window.admit(range, next_offset, now_ms, &fingerprints, &mut index);
                    let decided = decided.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
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
                        unwritten.push(((now_ms, next_offset), kept));
                        next_offset = end_offset;
                    }
                }
                Step::Plain { count } => {
                    for _ in 0..count {
                        stored.push((None, next_offset, now_ms));
                        next_offset += 1;
                    }
                }
                Step::Trim { by } => {
                    start_offset = (start_offset + by).min(next_offset);
                    index.trim(start_offset);
                }
                Step::Write | Step::Reopen => {
                    index.entries.extend(unwritten.drain(..));
                    index.trim(start_offset);
                    window.written();
                    if let Step::Reopen = step {
                        let range = LiveRange::of(start_offset, next_offset, horizon_ms);
                        let recorded = index.recorded().into_iter().filter(|a| a.arrival_ms >= horizon_ms);
                        let rebuilt = DedupeWindow::rebuilt_with_mask(recorded, range, hash_mask);
                        window.forget_before(range);
                        prop_assert_eq!(rebuilt.len(), window.len());
                        prop_assert_eq!(window.len() as u64, window.order.len(), "one table entry per queued key");
                        for key in 0u8..24 {
                            let fingerprint = fp(&key.to_string());
                            let before = window.contains(&fingerprint, &mut index);
                            let after = rebuilt.contains(&fingerprint, &mut index);
                            prop_assert_eq!(before, after, "key {}", key);
                        }
                        window = rebuilt;
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        /// The window decides as the definition across trims, writes and reopens.
        #[test]
        fn the_window_decides_as_the_definition_across_trims_and_reopens(
            steps in proptest::collection::vec(step(), 1..60),
        ) {
            run_against_the_definition(steps, FULL_MASK)?;
        }

        /// And so it does when its short hashes tell little apart (three bits: nearly every lookup is
        /// nominated), where the full fingerprints, from this batch's copies or the index, decide.
        #[test]
        fn the_window_decides_as_the_definition_when_short_hashes_collide(
            steps in proptest::collection::vec(step(), 1..60),
        ) {
            run_against_the_definition(steps, 0b111 << 61)?;
        }
    }
}
