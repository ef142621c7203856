//! The dedupe window's index: ring positions, found by the hash of the fingerprint stored there. In: a
//! hash and a position to insert, a hash and a test to find one, a slot to remove. Out: where a position
//! is. The window's ring keeps 32 bits of each hash (the full fingerprints are in the `time_index`); this
//! table holds 4 bytes per slot.
//!
//! Why not `hashbrown`: its bucket counts are powers of two at a load of at most 7/8, so a table's load
//! moves between 7/16 and 7/8 as it grows, and at the window's cap (2²¹ keys) it is 1/2, with 5 bytes per
//! bucket: 10.5 bytes per key, and a doubling that holds both tables while it copies. Here any slot count
//! will do (a position's home slot is `hash × slots >> 64`), the table is rebuilt at 3/5 full when it
//! passes 4/5, so it stays between those loads: 5 to 6.7 bytes per key, and a rebuild holds 7/3 of one
//! table, not 3.
//!
//! Robin Hood linear probing, with a slot of 32 bits: the position's low [`POSITION_BITS`], its distance
//! from its home slot, and four more bits of its hash, so that a lookup compares a short hash (a read in
//! the ring) only for one in sixteen of the entries it passes that share its probe distance; removal
//! shifts the entries after it back one slot and needs no fingerprint at all. The table decides nothing a
//! replica could see: membership is the window's, exact on the full fingerprint. So its hash may differ
//! per process, and does (a key chosen at start): a producer cannot grind keys into one long run.

use std::hash::BuildHasher;
use std::sync::OnceLock;

/// Bits of a ring position kept in a slot; the window resolves them against its newest position, so it
/// must never hold more than 2^POSITION_BITS positions (it holds at most about [`MAX_KEYS_PER_STREAM`]).
///
/// [`MAX_KEYS_PER_STREAM`]: super::dedupe_window::MAX_KEYS_PER_STREAM
pub(crate) const POSITION_BITS: u32 = 22;
const POSITION_MASK: u32 = (1 << POSITION_BITS) - 1;
const DISTANCE_BITS: u32 = 6;
/// A slot stores its distance plus one (0 is an empty slot), so the largest distance is 62.
const MAX_DISTANCE: u32 = (1 << DISTANCE_BITS) - 2;
const TAG_SHIFT: u32 = POSITION_BITS + DISTANCE_BITS;
const EMPTY: u32 = 0;

/// Rebuilt when an insert would pass 4/5 full; to 3/5.
const MAX_LOAD: (usize, usize) = (4, 5);
const REBUILT_LOAD: (usize, usize) = (3, 5);
const MIN_SLOTS: usize = 16;

/// The table's hash of a fingerprint's first eight bytes (already uniform: a SHA-256 prefix), mixed with
/// this process's key.
pub(crate) fn slot_hash(first_eight: u64) -> u64 {
    static KEY: OnceLock<u64> = OnceLock::new();
    let key = *KEY.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64));
    // murmur3's 64-bit finalizer.
    let mut h = first_eight ^ key;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[derive(Default)]
pub(crate) struct PositionTable {
    slots: Vec<u32>,
    len: usize,
}

/// An insert that would carry an entry further than [`MAX_DISTANCE`] from its home: rebuild bigger.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooFar;

impl PositionTable {
    /// An empty table for `len` entries, rebuilt to [`REBUILT_LOAD`].
    pub(crate) fn for_entries(len: usize) -> Self {
        let slots = (len * REBUILT_LOAD.1).div_ceil(REBUILT_LOAD.0).max(MIN_SLOTS);
        PositionTable { slots: vec![EMPTY; slots], len: 0 }
    }

    /// An empty table for `len` entries, rebuilt to [`REBUILT_LOAD`] unless that is more than `most`
    /// entries need at [`MAX_LOAD`]: a table that will never hold more than `most` is sized for them, and
    /// never rebuilt again (at the window's cap, a load of 3/4 rather than 3/5: 5.2 bytes per key, not 6.6).
    pub(crate) fn for_entries_within(len: usize, most: usize) -> Self {
        let tight = (most * MAX_LOAD.1).div_ceil(MAX_LOAD.0);
        let rebuilt = (len * REBUILT_LOAD.1).div_ceil(REBUILT_LOAD.0);
        let slots = if most > len { rebuilt.min(tight) } else { rebuilt }.max(MIN_SLOTS);
        PositionTable { slots: vec![EMPTY; slots], len: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Whether one more entry keeps the table at or under [`MAX_LOAD`].
    pub(crate) fn has_room(&self) -> bool {
        (self.len + 1) * MAX_LOAD.1 <= self.slots.len() * MAX_LOAD.0
    }

    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    /// Bits 32-35 of the hash: below the bits that pick a home slot in any table the window makes (at
    /// most 2²² slots: the top 22 bits), and within the top 32 it keeps (so its hashes may end in zeros).
    fn tag(hash: u64) -> u32 {
        ((hash >> 32) & 0xf) as u32
    }

    fn distance(slot: u32) -> u32 {
        ((slot >> POSITION_BITS) & ((1 << DISTANCE_BITS) - 1)) - 1
    }

    fn slot(position: u32, distance: u32, tag: u32) -> u32 {
        (tag << TAG_SHIFT) | ((distance + 1) << POSITION_BITS) | (position & POSITION_MASK)
    }

    fn next(&self, index: usize) -> usize {
        if index + 1 == self.slots.len() { 0 } else { index + 1 }
    }

    /// The slot of the entry with this hash whose position passes `is_it` (given the position's low
    /// [`POSITION_BITS`]).
    pub(crate) fn find(&self, hash: u64, mut is_it: impl FnMut(u32) -> bool) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let tag = Self::tag(hash);
        let mut index = self.home(hash);
        for distance in 0..=MAX_DISTANCE {
            let slot = self.slots[index];
            // Robin Hood order: past an empty slot, or an entry nearer its home than we are to ours, ours
            // would have been placed already.
            if slot == EMPTY || Self::distance(slot) < distance {
                return None;
            }
            if Self::distance(slot) == distance && slot >> TAG_SHIFT == tag && is_it(slot & POSITION_MASK) {
                return Some(index);
            }
            index = self.next(index);
        }
        None
    }

    /// Inserts a position (not already in the table) under its hash. Refused, with the table unchanged,
    /// if there is no room or an entry would end up more than [`MAX_DISTANCE`] from its home.
    pub(crate) fn insert(&mut self, hash: u64, position: u32) -> Result<(), TooFar> {
        if !self.has_room() || !self.fits(hash) {
            return Err(TooFar);
        }
        let mut carried = Self::slot(position, 0, Self::tag(hash));
        let mut index = self.home(hash);
        loop {
            let slot = self.slots[index];
            if slot == EMPTY {
                self.slots[index] = carried;
                self.len += 1;
                return Ok(());
            }
            if Self::distance(slot) < Self::distance(carried) {
                self.slots[index] = carried;
                carried = slot;
            }
            carried = Self::slot(carried & POSITION_MASK, Self::distance(carried) + 1, carried >> TAG_SHIFT);
            index = self.next(index);
        }
    }

    /// Whether inserting under `hash` keeps every entry within [`MAX_DISTANCE`]: the insert's walk, on the
    /// distances alone.
    fn fits(&self, hash: u64) -> bool {
        let mut carried = 0;
        let mut index = self.home(hash);
        loop {
            let slot = self.slots[index];
            if slot == EMPTY {
                return true;
            }
            // The insert swaps with an entry nearer its home and goes on carrying that one.
            carried = carried.min(Self::distance(slot)) + 1;
            if carried > MAX_DISTANCE {
                return false;
            }
            index = self.next(index);
        }
    }

    /// Removes the entry in `index`, shifting the run after it back by one.
    pub(crate) fn remove_at(&mut self, index: usize) {
        let mut hole = index;
        let mut next = self.next(hole);
        while self.slots[next] != EMPTY && Self::distance(self.slots[next]) > 0 {
            let slot = self.slots[next];
            self.slots[hole] = Self::slot(slot & POSITION_MASK, Self::distance(slot) - 1, slot >> TAG_SHIFT);
            hole = next;
            next = self.next(hole);
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// A table under test beside the model it must agree with: position → hash.
    struct Checked {
        table: PositionTable,
        model: HashMap<u32, u64>,
    }

    impl Checked {
        fn insert(&mut self, hash: u64, position: u32) {
            if self.table.insert(hash, position).is_err() {
                // What the window does: a bigger table with everything in it.
                let mut entries = self.model.len() + 1;
                loop {
                    let mut table = PositionTable::for_entries(entries);
                    let all = self.model.iter().map(|(&p, &h)| (h, p)).chain([(hash, position)]);
                    if all.into_iter().all(|(h, p)| table.insert(h, p).is_ok()) {
                        self.table = table;
                        break;
                    }
                    entries += entries / 2 + 1;
                    assert!(entries < 1 << 20, "no table holds these hashes");
                }
            }
            self.model.insert(position, hash);
        }

        fn remove(&mut self, position: u32) {
            let hash = self.model.remove(&position).expect("in the model");
            let slot = self.table.find(hash, |p| p == position).expect("an inserted position is found");
            self.table.remove_at(slot);
        }

        fn check(&self) {
            assert_eq!(self.table.len(), self.model.len());
            for (&position, &hash) in &self.model {
                assert!(self.table.find(hash, |p| p == position).is_some(), "position {position} lost");
            }
            assert!(self.table.len() * MAX_LOAD.1 <= self.table.slot_count() * MAX_LOAD.0 || self.table.len() < 4);
        }
    }

    #[test]
    fn slots_pack_position_distance_and_tag() {
        let slot = PositionTable::slot(POSITION_MASK, MAX_DISTANCE, 0xf);
        assert_eq!(slot & POSITION_MASK, POSITION_MASK);
        assert_eq!(PositionTable::distance(slot), MAX_DISTANCE);
        assert_eq!(slot >> TAG_SHIFT, 0xf);
        assert_ne!(PositionTable::slot(0, 0, 0), EMPTY, "an entry at its home is not an empty slot");
    }

    #[test]
    fn a_run_past_the_largest_distance_is_refused_and_leaves_the_table_as_it_was() {
        // Every entry wants the same home: the 63rd would sit 62 slots away, the 64th cannot.
        let mut table = PositionTable::for_entries(1000);
        for position in 0..=MAX_DISTANCE {
            assert_eq!(table.insert(7, position), Ok(()));
        }
        assert_eq!(table.insert(7, 999), Err(TooFar));
        assert_eq!(table.len(), MAX_DISTANCE as usize + 1);
        for position in 0..=MAX_DISTANCE {
            assert!(table.find(7, |p| p == position).is_some());
        }
        assert!(table.find(7, |p| p == 999).is_none());
    }

    #[test]
    fn a_table_within_a_known_most_is_sized_for_it_and_holds_it_all() {
        let most = 10_000;
        // Far below the most: the usual rebuilt load.
        assert_eq!(PositionTable::for_entries_within(600, most).slot_count(), 1000);
        // Near it: sized for the most at the largest load, not for 3/5 of what is there now.
        let near = PositionTable::for_entries_within(9_000, most);
        assert_eq!(near.slot_count(), 12_500);
        let mut table = near;
        for position in 0..most as u32 {
            assert_eq!(table.insert(slot_hash(u64::from(position)), position), Ok(()), "entry {position}");
        }
        assert!(!table.has_room(), "full at exactly the most");
        // Past the most (an append bigger than expected): the usual rebuilt load again.
        assert_eq!(PositionTable::for_entries_within(12_000, most).slot_count(), 20_000);
    }

    #[test]
    fn a_full_table_refuses_until_rebuilt() {
        let mut table = PositionTable::for_entries(0);
        let room = MIN_SLOTS * MAX_LOAD.0 / MAX_LOAD.1;
        for position in 0..room as u32 {
            assert_eq!(table.insert(slot_hash(u64::from(position)), position), Ok(()));
        }
        assert!(!table.has_room());
        assert_eq!(table.insert(slot_hash(99), 99), Err(TooFar));
    }

    fn op() -> impl Strategy<Value = (bool, u64)> {
        // Few distinct hashes (collisions, long runs, wrapping past the last slot) or any hash.
        // (distinct hashes that share a home in small tables, any hash, or homes at the last slots so that
        // runs wrap; never more than a few entries with one hash, which only a bigger table can part).
        (
            any::<bool>(),
            prop_oneof![(0u64..64).prop_map(|h| h << 56), any::<u64>(), (0u64..32).prop_map(|h| u64::MAX - (h << 54))],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Inserts (rebuilding when refused) and removals of random positions agree with a map: every
        /// position in it is found under its hash, none removed is, and the load stays under 4/5.
        #[test]
        fn the_table_agrees_with_a_map(ops in proptest::collection::vec(op(), 1..400)) {
            let mut checked = Checked { table: PositionTable::default(), model: HashMap::new() };
            let mut next_position = 0u32;
            for (insert, hash) in ops {
                if insert || checked.model.is_empty() {
                    checked.insert(hash, next_position);
                    next_position += 1;
                } else {
                    let position = *checked.model.keys().min_by_key(|p| (**p).wrapping_mul(hash as u32 | 1)).expect("non-empty");
                    checked.remove(position);
                    prop_assert!(checked.table.find(hash, |p| p == position).is_none());
                }
                checked.check();
            }
        }
    }
}
