//! The window against its definition: tables of decisions, and proptests with full and 3-bit short hashes.

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
    window.contains(fingerprint, ShortHash::of(fingerprint, window.hash_mask), index).expect("in the index")
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
    let mut ring = Ring { hashes: BlockDeque::default(), front_seq: start, end_seq: start };
    let keys: Vec<ShortHash> = (0..3 * RING_BLOCK + 7).map(|i| ShortHash::of(&fp(&i.to_string()), FULL_MASK)).collect();
    for (i, key) in keys.iter().enumerate() {
        let seq = ring.push(*key);
        assert_eq!(seq, start + i as u64);
        assert_eq!(ring.resolve(seq as u32), seq, "past 2^32 too");
    }
    assert_eq!(ring.hashes.block_count(), 4);
    for key in &keys[..2 * RING_BLOCK] {
        assert_eq!(ring.pop_front().map(|(_, f)| f), Some(*key));
    }
    assert_eq!(ring.hashes.block_count(), 2, "emptied blocks are freed");
    assert_eq!(ring.len(), (RING_BLOCK + 7) as u64);
    assert_eq!(ring.get(ring.front_seq), keys[2 * RING_BLOCK]);
}

#[test]
fn a_short_hash_keeps_the_top_32_bits_of_the_table_hash() {
    let fingerprint = fp("abc");
    let mut first = [0u8; 8];
    first.copy_from_slice(&fingerprint.as_bytes()[..8]);
    let short = ShortHash::of(&fingerprint, FULL_MASK);
    assert_eq!(short.table_hash(), slot_hash(u64::from_le_bytes(first)) & !0xffff_ffff);
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
    assert!(window.order.hashes.block_count() <= 1, "and the ring its blocks, but the one being filled");
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
        assert_eq!(index.append(&mut window, reached, 5, 200, &[fp("x")]), [false], "the dedupe column family had it");
        assert_eq!(index.append(&mut window, range, 6, 210, &[fp("y")]), [true], "passed by {passed_by}: not asked");
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
    /// The batch is written and the window leaves memory (the stream looked idle); the next append with
    /// dedupe rebuilds it from the index with its own range.
    Release,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (proptest::collection::vec(0u8..24, 0..6), 0u64..60, 20u64..200)
            .prop_map(|(keys, advance_ms, window_ms)| Step::Append { keys, advance_ms, window_ms }),
        1 => (1u8..4).prop_map(|count| Step::Plain { count }),
        1 => (0u64..6).prop_map(|by| Step::Trim { by }),
        1 => Just(Step::Reopen),
        2 => Just(Step::Write),
        1 => Just(Step::Release),
    ]
}

/// Runs `steps` against the definition, kept naively as every stored event (key, offset, arrival): an
/// append's key is a duplicate iff a stored event with it is at or after the start and the horizon.
/// Appends reach the index when their batch is written (a reopen writes first: it follows a write);
/// reopens rebuild from the index entries, filtered by arrival as the scan from the horizon is.
fn run_against_the_definition(steps: Vec<Step>, hash_mask: u64) -> Result<(), TestCaseError> {
    let mut held = Some(DedupeWindow { hash_mask, ..DedupeWindow::default() });
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
                // Released: rebuilt from the index as the state machine does, with this append's range.
                let window = held.get_or_insert_with(|| {
                    let recorded = index.recorded().into_iter().filter(|a| a.arrival_ms >= horizon_ms);
                    DedupeWindow::rebuilt_with_mask(recorded, range, hash_mask)
                });
                let decided = window.admit(range, next_offset, now_ms, &fingerprints, &mut index);
                let decided = decided.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                let mut kept = Vec::new();
                for (i, key) in keys.iter().enumerate() {
                    let seen = stored
                        .iter()
                        .any(|(k, offset, at)| *k == Some(*key) && *offset >= range.from_offset && *at >= horizon_ms)
                        || keys[..i].contains(key);
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
            Step::Release => {
                index.entries.extend(unwritten.drain(..));
                index.trim(start_offset);
                held = None;
            }
            Step::Write | Step::Reopen => {
                index.entries.extend(unwritten.drain(..));
                index.trim(start_offset);
                let Some(window) = held.as_mut() else { continue };
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
                        let before = window.contains(&fingerprint, ShortHash::of(&fingerprint, hash_mask), &mut index);
                        let after = rebuilt.contains(&fingerprint, ShortHash::of(&fingerprint, hash_mask), &mut index);
                        prop_assert_eq!(before, after, "key {}", key);
                    }
                    *window = rebuilt;
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

/// Fingerprints derived from offsets: a `time_index` needs no storage when every event is new.
struct OffsetKeys;

fn offset_fingerprint(offset: u64) -> Fingerprint {
    // splitmix64: distinct, uniform bytes without a SHA-256 per key (2 M of them in a debug build).
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut bytes = [0u8; FINGERPRINT_BYTES];
    bytes[..8].copy_from_slice(&mix(offset).to_le_bytes());
    bytes[8..].copy_from_slice(&(offset as u32).to_le_bytes());
    Fingerprint(bytes)
}

impl KeyLookup for OffsetKeys {
    type Error = Missing;

    fn legacy_seen(&mut self, _: usize) -> Result<bool, Missing> {
        Ok(false)
    }

    fn stored_fingerprint(&mut self, key: StoredKey) -> Result<Fingerprint, Missing> {
        Ok(offset_fingerprint(key.append_offset + key.index as u64))
    }
}

/// A window filled past its cap keeps the cap's keys in a table sized once for them (load 3/4), not in one
/// grown by a third past it (0.61): the memory a node budgets per partition (docs/ingress.md, "Memory").
#[test]
fn a_window_at_its_cap_sizes_its_table_once_for_it() {
    const APPEND: u64 = 4096;
    let mut window = DedupeWindow::default();
    let mut next_offset = 0;
    while next_offset < MAX_KEYS_PER_STREAM + 4 * APPEND {
        let fingerprints: Vec<Fingerprint> = (next_offset..next_offset + APPEND).map(offset_fingerprint).collect();
        let range = LiveRange::of(0, next_offset + APPEND, 0);
        let admitted = window.admit(range, next_offset, 0, &fingerprints, &mut OffsetKeys).expect("derived");
        assert!(admitted.iter().all(|stored| *stored), "every key is new (offset {next_offset})");
        window.written();
        next_offset += APPEND;
    }
    assert_eq!(window.len() as u64, MAX_KEYS_PER_STREAM);
    assert_eq!(window.live.slot_count(), (MOST_LIVE_KEYS * 5).div_ceil(4));
    assert!(window.len() * 100 >= window.live.slot_count() * 76, "load at the cap");
    // Still exact: the newest key is a duplicate, the oldest forgotten one is not.
    let newest = offset_fingerprint(next_offset - 1);
    let forgotten = offset_fingerprint(next_offset - MAX_KEYS_PER_STREAM - 1);
    let range = LiveRange::of(0, next_offset + 2, 0);
    let admitted = window.admit(range, next_offset, 0, &[newest, forgotten], &mut OffsetKeys).expect("derived");
    assert_eq!(admitted, [false, true]);
}

/// Producers that send one event per request: one entry's appends of one key each share a span, and every
/// key is still found in its own append's `time_index` entry (short hashes of one bit: every lookup reads it).
#[test]
fn one_key_appends_of_one_arrival_share_a_span() {
    let mut window = DedupeWindow { hash_mask: 1 << 63, ..DedupeWindow::default() };
    let mut index = Index::default();
    let range = LiveRange { from_offset: 0, horizon_ms: 0 };
    for offset in 0..50u64 {
        assert_eq!(index.append(&mut window, range, offset, 100, &[fp(&offset.to_string())]), [true]);
    }
    assert_eq!(window.spans.len(), 1, "one run");
    // A new arrival starts another run; an append of two keys and one after a gap in offsets (an append
    // without dedupe between them) end one.
    for offset in 50..60u64 {
        assert_eq!(index.append(&mut window, range, offset, 200, &[fp(&offset.to_string())]), [true]);
    }
    assert_eq!(index.append(&mut window, range, 60, 200, &[fp("60"), fp("61")]), [true, true]);
    assert_eq!(index.append(&mut window, range, 62, 200, &[fp("62")]), [true]);
    assert_eq!(index.append(&mut window, range, 70, 200, &[fp("70")]), [true]);
    assert_eq!(window.spans.len(), 5);
    // A duplicate of each: found, through its own append's entry.
    for key in (0..63u64).chain([70]) {
        assert_eq!(index.append(&mut window, range, 71, 300, &[fp(&key.to_string())]), [false], "key {key}");
    }
    // Trimmed into the middle of the first run: its front is forgotten, the rest still found.
    index.trim(20);
    let trimmed = LiveRange { from_offset: 20, horizon_ms: 0 };
    assert_eq!(index.append(&mut window, trimmed, 71, 300, &[fp("19")]), [true], "forgotten with its event");
    assert_eq!(index.append(&mut window, trimmed, 72, 300, &[fp("20")]), [false]);
    // Rebuilt from the index: the same runs, the same answers.
    let mut rebuilt = DedupeWindow::rebuilt_with_mask(index.recorded(), trimmed, 1 << 63);
    assert_eq!(rebuilt.spans.len(), window.spans.len());
    for key in (20..63u64).chain([70]) {
        assert!(live_contains(&rebuilt, &mut index, &fp(&key.to_string())), "key {key} after a rebuild");
    }
    assert_eq!(index.append(&mut rebuilt, trimmed, 72, 300, &[fp("5")]), [true]);
}

/// Which windows a node keeps in memory: by the window, when the stream was last used and the node's clock.
/// (Whatever it decides, the decisions stay exact: the proptests release windows at random.)
#[test]
fn a_window_is_held_while_its_stream_may_still_send_within_it() {
    let minute = 60_000;
    let grace = DEFAULT_IDLE_GRACE_MS;
    // (window, last used, now, held)
    let table = [
        (Some(2 * minute), 10 * minute, 10 * minute, true, "just used"),
        (Some(2 * minute), 10 * minute, 12 * minute + grace, true, "window and grace not yet past"),
        (Some(2 * minute), 10 * minute, 12 * minute + grace + 1, false, "window and grace past"),
        (Some(2 * minute), 10 * minute, 5 * minute, true, "a clock that went back holds"),
        (None, 10 * minute, 10 * minute, false, "never an append with dedupe: nothing to hold"),
        (Some(0), 10 * minute, 10 * minute + grace + 1, false, "a zero window: the grace alone"),
        (Some(u64::MAX), u64::MAX, 0, true, "no overflow"),
    ];
    for (window_ms, last_used_ms, now_ms, held, why) in table {
        assert_eq!(worth_holding(window_ms, last_used_ms, now_ms, grace), held, "{why}");
    }
    assert!(!worth_holding(Some(2 * minute), 10 * minute, 12 * minute + 1, 0), "no grace: the window alone");
    assert!(worth_holding(Some(2 * minute), 10 * minute, 12 * minute, 0));
    assert_eq!(window_shown(10 * minute, 8 * minute), Some(2 * minute));
    assert_eq!(window_shown(10 * minute, 0), None, "no horizon: no append with dedupe yet");
}
