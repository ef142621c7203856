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
//! Memory: of each fingerprint the window keeps only 32 bits of its (per-process keyed) table hash, 4
//! bytes, in a queue of fixed blocks in offset order; the table holds its position there (4 bytes per
//! slot, at a load between 3/5 and 4/5: `dedupe_table.rs`); and 24 bytes per append (one-key appends of
//! one arrival share them: [`Span`]), also in fixed blocks: a `VecDeque` of spans doubled, and held up to
//! twice what it needed (`block_deque.rs`). About 9-11 bytes per key, at most [`MAX_KEYS_PER_STREAM`] keys per
//! stream. Those 32 bits only nominate: a key whose
//! bits match a live one's (a duplicate, or one new key in about 2³² ÷ live keys: 2,000 with a full
//! window; `sluice_dedupe_fingerprint_reads_total` counts them) is compared in full with the fingerprint
//! in that append's `time_index` entry, or, for an append not written yet (this apply batch), with the copy kept
//! until [`DedupeWindow::written`]. So decisions stay exact on the 96-bit fingerprint, the same on every
//! replica, whatever its process key. (Earlier versions kept 48 bits, 6 bytes, and grew their table past
//! the cap: 11-13 bytes per key, and 10 M events of backlog on 4 partitions at the cap peaked 22-25 MiB
//! higher, docs/benchmarks.md "Session 45"; before them the full 12 bytes: 17-19
//! bytes per key. The first kept a `HashSet` of fingerprints beside a `VecDeque` of them; both doubled at
//! once, and a 10 M event backlog with 4 M keys reached 287 MiB RSS.)

use super::dedupe_table::{POSITION_BITS, PositionTable, slot_hash};
use block_deque::BlockDeque;

mod block_deque;

/// Bytes of SHA-256 kept per key. Two distinct keys share a fingerprint with probability 2⁻⁹⁶ per pair,
/// the same on every replica (the function is fixed), so even that would not make replicas diverge.
pub(crate) const FINGERPRINT_BYTES: usize = 12;

/// The most keys one stream remembers: the window ends at the last this many events, whatever its length
/// (about 18.5 MiB per stream with its table). Part of the replicated semantics: every replica must use the
/// same value.
pub(crate) const MAX_KEYS_PER_STREAM: u64 = 1 << 21;

/// The most keys a window's table is sized for up front: the cap and 5 % more for the append being admitted
/// (an append with more keys than that rebuilds it bigger).
const MOST_LIVE_KEYS: usize = (MAX_KEYS_PER_STREAM + MAX_KEYS_PER_STREAM / 20) as usize;

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

/// What the ring keeps of a fingerprint: the top 32 bits of its table hash (first eight bytes, mixed with
/// this process's key), enough to place it in a table of any size the window makes and to nominate it as
/// a match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ShortHash(u32);

impl ShortHash {
    fn of(fingerprint: &Fingerprint, mask: u64) -> Self {
        let mut first = [0u8; 8];
        first.copy_from_slice(&fingerprint.0[..8]);
        let hash = slot_hash(u64::from_le_bytes(first)) & mask;
        ShortHash((hash >> 32) as u32)
    }

    /// The table's hash: these 32 bits on top, zeros below.
    fn table_hash(self) -> u64 {
        u64::from(self.0) << 32
    }
}

/// Every bit a [`ShortHash`] keeps.
const FULL_MASK: u64 = !0xffff_ffff;

/// Short hashes in insertion order, numbered by a sequence that never goes back.
struct Ring {
    hashes: BlockDeque<ShortHash, RING_BLOCK>,
    /// The oldest entry held, and the one after the newest.
    front_seq: u64,
    end_seq: u64,
}

const RING_BLOCK: usize = 4096;

/// Spans per block: a few in tests, so that their proptests cross blocks.
const SPAN_BLOCK: usize = if cfg!(test) { 3 } else { 512 };

/// The first sequence number: high enough that a span's first key, counted back to the start of its
/// append (see [`Span::first_seq`]), is never below zero.
const FIRST_SEQ: u64 = 1 << 32;

impl Default for Ring {
    fn default() -> Self {
        Ring { hashes: BlockDeque::default(), front_seq: FIRST_SEQ, end_seq: FIRST_SEQ }
    }
}

impl Ring {
    fn len(&self) -> u64 {
        self.end_seq - self.front_seq
    }

    fn get(&self, seq: u64) -> ShortHash {
        self.hashes.get((seq - self.front_seq) as usize)
    }

    fn push(&mut self, hash: ShortHash) -> u64 {
        self.hashes.push_back(hash);
        self.end_seq += 1;
        self.end_seq - 1
    }

    fn pop_front(&mut self) -> Option<(u64, ShortHash)> {
        let hash = self.hashes.pop_front()?;
        self.front_seq += 1;
        Some((self.front_seq - 1, hash))
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

/// How long past its window a stream with no new append keeps its window in memory, unless the node is
/// told otherwise (`--dedupe-idle-grace-ms`): a burst's pause, a producer's retry after a restart, rather
/// than a rebuild for each.
pub const DEFAULT_IDLE_GRACE_MS: u64 = 30_000;

/// Whether a stream's window is worth holding in memory at `now_ms`: not if the stream never had an append
/// with dedupe (`window_ms` None), nor once `window_ms` and `grace_ms` have passed since `last_used_ms`.
/// Read two ways:
/// - at open and after a snapshot install, with the stream's replicated state: its last arrival (stamped by
///   the partition's leader) and the window its horizon trails that arrival by; `now_ms` is this node's
///   clock, so a node whose clock is off may rebuild a window it need not have (or skip one), once;
/// - between applies, with when this node last applied an append with dedupe to the stream, by its own
///   clock, and that append's window: a clock compared only with itself, so a node whose clock is off keeps
///   a busy stream's window as long as any other node (review of session 67: compared with the leader's
///   arrivals, a clock two hours ahead released every window at every sweep and rebuilt each, up to the
///   cap's 24 MiB of index, at the stream's next event).
///
/// A cost decision, never a semantic one: a window not held is rebuilt from the `time_index` at the
/// stream's next append with dedupe, for that append's range ([`DedupeWindow::rebuilt`]), and decides as
/// the one held would have. So a clock, however wrong, changes only what a node spends: memory for a
/// window held, or a read of the index for one rebuilt.
pub(crate) fn worth_holding(window_ms: Option<u64>, last_used_ms: u64, now_ms: u64, grace_ms: u64) -> bool {
    window_ms.is_some_and(|window_ms| now_ms.saturating_sub(last_used_ms) <= window_ms.saturating_add(grace_ms))
}

/// The window a stream's replicated state shows: how far its horizon trails its last arrival (None: no
/// append with dedupe yet). Appends without dedupe since move the arrival and not the horizon, so it may
/// show longer than the window was.
pub(crate) fn window_shown(last_arrival_ms: u64, horizon_ms: u64) -> Option<u64> {
    (horizon_ms > 0).then(|| last_arrival_ms.saturating_sub(horizon_ms))
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
///
/// Or a run of appends of one stored key each, all arrived at `arrival_ms` (one Raft entry's requests from
/// producers that send one event per request), at consecutive offsets from `append_offset`: key `k` of the
/// run has its own `time_index` entry, keyed by `append_offset + k`. One span for the run rather than one
/// per key: 24 bytes per key saved, where they were most of what such a key cost.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    append_offset: u64,
    arrival_ms: u64,
    /// The sequence number the append's first key has, or would have had; [`RUN_BIT`] set for a run.
    first_seq_and_run: u64,
}

/// Set in [`Span::first_seq_and_run`] for a run of one-key appends (sequence numbers stay far below it).
const RUN_BIT: u64 = 1 << 63;

impl Span {
    fn new(append_offset: u64, arrival_ms: u64, first_seq: u64) -> Self {
        Span { append_offset, arrival_ms, first_seq_and_run: first_seq }
    }

    fn first_seq(&self) -> u64 {
        self.first_seq_and_run & !RUN_BIT
    }

    fn is_run(&self) -> bool {
        self.first_seq_and_run & RUN_BIT != 0
    }

    /// Where the full fingerprint of this span's key at `seq` is.
    fn stored_key(&self, seq: u64) -> StoredKey {
        let nth = seq - self.first_seq();
        if self.is_run() {
            StoredKey { arrival_ms: self.arrival_ms, append_offset: self.append_offset + nth, index: 0 }
        } else {
            StoredKey { arrival_ms: self.arrival_ms, append_offset: self.append_offset, index: nth as usize }
        }
    }
}

/// One stream's live keys.
pub(crate) struct DedupeWindow {
    /// The live keys' short hashes in offset order; `spans` says where each append's start.
    order: Ring,
    /// Positions in `order` (low [`POSITION_BITS`] of the sequence), found by short hash.
    live: PositionTable,
    spans: BlockDeque<Span, SPAN_BLOCK>,
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
            spans: BlockDeque::default(),
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
            let short = ShortHash::of(fingerprint, self.hash_mask);
            let seen = self.contains(fingerprint, short, lookup)? || (ask_legacy && lookup.legacy_seen(i)?);
            if !seen {
                self.insert(*fingerprint, short);
            }
            admitted.push(!seen);
            Ok(())
        });
        // Even when a lookup failed half way: every key in the ring belongs to a span (the state machine
        // stops the group on the error, and a window is rebuilt when it opens again).
        if self.order.end_seq > first_seq {
            let one_key = self.order.end_seq - first_seq == 1;
            self.push_span(Span::new(first_offset, arrival_ms, first_seq), one_key);
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

    /// Whether `fingerprint` (whose short hash is `short`) is live.
    fn contains<L: KeyLookup>(
        &self,
        fingerprint: &Fingerprint,
        short: ShortHash,
        lookup: &mut L,
    ) -> Result<bool, L::Error> {
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
        let span = self.spans.get(self.spans.partition_point(|span| span.first_seq() <= seq) - 1);
        lookup.stored_fingerprint(span.stored_key(seq))
    }

    /// Adds the span of the newest append; an append of one key (`one_key`: its `time_index` entry lists
    /// just that key) joins the newest span instead when both make a run: one arrival, and offsets that
    /// follow on (no append without dedupe between them).
    fn push_span(&mut self, span: Span, one_key: bool) {
        if let Some(last) = self.spans.back_mut().filter(|_| one_key) {
            let last_keys = span.first_seq() - last.first_seq();
            let one_key_appends = last.is_run() || last_keys == 1;
            if one_key_appends
                && last.arrival_ms == span.arrival_ms
                && last.append_offset + last_keys == span.append_offset
            {
                last.first_seq_and_run |= RUN_BIT;
                return;
            }
        }
        self.spans.push_back(span);
    }

    fn insert(&mut self, fingerprint: Fingerprint, short: ShortHash) {
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
        let mut table = PositionTable::for_entries_within(entries, MOST_LIVE_KEYS);
        loop {
            if self.order.iter().all(|(seq, short)| table.insert(short.table_hash(), seq as u32).is_ok()) {
                self.live = table;
                return;
            }
            entries += entries / 2 + 1;
            table = PositionTable::for_entries(entries);
            // Only more than 62 keys sharing their short hash could get here: 63 live keys on one 32-bit
            // keyed hash (2 M keys hold about 500 pairs, and a triple is rare).
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
        let one_key = skip == 0 && fingerprints.len() == 1;
        self.push_span(Span::new(append_offset, arrival_ms, self.order.end_seq - skip), one_key);
        for fingerprint in fingerprints {
            self.order.push(ShortHash::of(fingerprint, self.hash_mask));
        }
    }

    /// Forgets every key outside `range`: whole appends that arrived before the horizon or end before
    /// `from_offset`, and the front of one that straddles `from_offset`.
    fn forget_before(&mut self, range: LiveRange) {
        while let Some(span) = self.spans.front() {
            let end_seq = if self.spans.len() > 1 { self.spans.get(1).first_seq() } else { self.order.end_seq };
            // The front span's live keys start at the ring's front (a run's, like an append's, at
            // consecutive offsets).
            let live_len = end_seq - self.order.front_seq;
            let live_first_offset = span.append_offset + (self.order.front_seq - span.first_seq());
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
        // reallocate); the ring and the spans free their blocks as they go.
        if self.live.slot_count() > 1024 && self.live.len() < self.live.slot_count() / 4 {
            self.rebuild_table();
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
mod tests;
