//! One consumer's (Trigger's or Subscription's) window over one partition: which matching events are waiting,
//! which are being delivered, which may start next, and how far the consumer's offset may be committed.
//!
//! What flows in: offsets the reader has looked at ([`Window::skip_to`] for events that do not match,
//! [`Window::admit`] for matching ones, with their ordering key), deliveries started ([`Window::start`]) and
//! settled ([`Window::settle`]: delivered, dead-lettered or dropped). What flows out: the events that may start
//! now ([`Window::ready`]) under the ordering rule, whether the reader may admit more ([`Window::has_room`]), and
//! the commit watermark ([`Window::watermark`]): every offset below it is settled or did not match, so a
//! consumer that resumes there loses nothing.
//!
//! Ordering: unordered windows start any admitted event. Ordered windows start an event only when no earlier
//! event with the same key is still pending, so per key deliveries happen one at a time and in log order, while
//! different keys proceed in parallel. Events without a key share one key (ordered per partition).
//!
//! Pure and synchronous; the partition dispatcher drives it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ordering {
    Ordered,
    Unordered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    InFlight,
}

#[derive(Debug)]
pub(crate) struct Window {
    ordering: Ordering,
    max_pending: usize,
    /// Every offset below this has been admitted or skipped.
    scanned_to: u64,
    pending: BTreeMap<u64, (Option<String>, State)>,
    /// Ordered mode: per key, its pending offsets in log order.
    by_key: HashMap<Option<String>, VecDeque<u64>>,
    /// Admitted events that may start now (front of their key, or any in unordered mode).
    startable: BTreeSet<u64>,
}

impl Window {
    /// A window starting at `offset`, holding at most `max_pending` admitted but unsettled events (at least 1).
    pub(crate) fn new(ordering: Ordering, max_pending: usize, offset: u64) -> Self {
        Window {
            ordering,
            max_pending: max_pending.max(1),
            scanned_to: offset,
            pending: BTreeMap::new(),
            by_key: HashMap::new(),
            startable: BTreeSet::new(),
        }
    }

    /// The next offset the reader should look at for this consumer.
    pub(crate) fn scanned_to(&self) -> u64 {
        self.scanned_to
    }

    pub(crate) fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Holds at most `max_pending` from now on (at least 1); events already admitted stay.
    pub(crate) fn set_max_pending(&mut self, max_pending: usize) {
        self.max_pending = max_pending.max(1);
    }

    /// Whether another matching event may be admitted.
    pub(crate) fn has_room(&self) -> bool {
        self.pending.len() < self.max_pending
    }

    /// Admitted and not yet settled.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.pending.values().filter(|(_, state)| *state == State::InFlight).count()
    }

    /// Admitted and not started: events waiting for their turn (ordering) or for room at the subscriber.
    pub(crate) fn queued(&self) -> usize {
        self.pending.len() - self.in_flight()
    }

    /// Ordered windows: the keys with events pending (more deliveries than this cannot run at once).
    pub(crate) fn keys_pending(&self) -> usize {
        self.by_key.len()
    }

    /// The lowest unsettled offset, if any (its age is the consumer's "oldest undelivered").
    pub(crate) fn oldest_pending(&self) -> Option<u64> {
        self.pending.keys().next().copied()
    }

    /// Every admitted and unsettled offset, lowest first (what a hand-over must deliver again).
    pub(crate) fn pending_offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending.keys().copied()
    }

    /// Records that the offsets below `offset` were looked at and did not match.
    pub(crate) fn skip_to(&mut self, offset: u64) {
        self.scanned_to = self.scanned_to.max(offset);
    }

    /// Admits a matching event. Offsets must increase; an offset below [`Window::scanned_to`] (already seen) is
    /// ignored and answers false, as is one beyond the window's room.
    pub(crate) fn admit(&mut self, offset: u64, key: Option<String>) -> bool {
        if offset < self.scanned_to || !self.has_room() {
            return false;
        }
        self.scanned_to = offset + 1;
        match self.ordering {
            Ordering::Unordered => {
                self.startable.insert(offset);
            }
            Ordering::Ordered => {
                let queue = self.by_key.entry(key.clone()).or_default();
                if queue.is_empty() {
                    self.startable.insert(offset);
                }
                queue.push_back(offset);
            }
        }
        self.pending.insert(offset, (key, State::Queued));
        true
    }

    /// Admitted events that may start now, lowest offset first.
    pub(crate) fn ready(&self) -> impl Iterator<Item = u64> + '_ {
        self.startable.iter().copied()
    }

    /// Whether an admitted event may start now.
    pub(crate) fn is_ready(&self, offset: u64) -> bool {
        self.startable.contains(&offset)
    }

    /// Marks an event as being delivered (it must be ready).
    pub(crate) fn start(&mut self, offset: u64) -> bool {
        if !self.startable.remove(&offset) {
            return false;
        }
        if let Some((_, state)) = self.pending.get_mut(&offset) {
            *state = State::InFlight;
        }
        true
    }

    /// Ordered windows, for a batch: the event after in-flight `offset` in its key's queue, if there is one and it
    /// waits. Starting it ([`Window::start_successor`]) lets one request carry a key's run in log order (its events
    /// settle together). Unordered windows have no successors: every admitted event is ready.
    pub(crate) fn successor(&self, offset: u64) -> Option<u64> {
        if self.ordering == Ordering::Unordered {
            return None;
        }
        let (key, state) = self.pending.get(&offset)?;
        if *state != State::InFlight {
            return None;
        }
        let queue = self.by_key.get(key)?;
        // A key's queue is in log order (admitted in increasing offsets).
        let position = queue.binary_search(&offset).ok()?;
        let next = *queue.get(position + 1)?;
        self.pending.get(&next).is_some_and(|(_, state)| *state == State::Queued).then_some(next)
    }

    /// Starts [`Window::successor`]`(offset)`, answering it.
    pub(crate) fn start_successor(&mut self, offset: u64) -> Option<u64> {
        let next = self.successor(offset)?;
        if let Some((_, state)) = self.pending.get_mut(&next) {
            *state = State::InFlight;
        }
        Some(next)
    }

    /// Settles an event (delivered, dead-lettered or dropped); in ordered mode the next event of its key becomes
    /// ready, unless it is already in flight (started with this one in a batch).
    pub(crate) fn settle(&mut self, offset: u64) -> bool {
        let Some((key, _)) = self.pending.remove(&offset) else { return false };
        self.startable.remove(&offset);
        if self.ordering == Ordering::Ordered
            && let Some(queue) = self.by_key.get_mut(&key)
        {
            queue.retain(|o| *o != offset);
            match queue.front() {
                Some(next) => {
                    if self.pending.get(next).is_some_and(|(_, state)| *state == State::Queued) {
                        self.startable.insert(*next);
                    }
                }
                None => {
                    self.by_key.remove(&key);
                }
            }
        }
        true
    }

    /// Where the consumer may resume: the lowest unsettled offset, or the scan position when all are settled.
    pub(crate) fn watermark(&self) -> u64 {
        self.oldest_pending().unwrap_or(self.scanned_to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(window: &Window) -> Vec<u64> {
        window.ready().collect()
    }

    #[test]
    fn unordered_starts_everything_admitted_and_the_watermark_waits_for_the_oldest() {
        let mut window = Window::new(Ordering::Unordered, 3, 10);
        assert_eq!(window.watermark(), 10);
        window.skip_to(12);
        assert!(window.admit(12, None));
        assert!(window.admit(15, Some("a".into())));
        assert!(window.admit(16, Some("a".into())));
        assert!(!window.has_room());
        assert!(!window.admit(17, None), "full");
        assert_eq!(ready(&window), vec![12, 15, 16]);
        assert_eq!(window.watermark(), 12);
        for offset in [12, 15, 16] {
            assert!(window.start(offset));
        }
        assert_eq!(window.in_flight(), 3);
        assert!(window.settle(16));
        assert_eq!(window.watermark(), 12, "never past an unsettled event");
        assert!(window.settle(12));
        assert_eq!(window.watermark(), 15);
        assert!(window.settle(15));
        assert_eq!(window.watermark(), 17);
        window.skip_to(40);
        assert_eq!(window.watermark(), 40);
    }

    #[test]
    fn ordered_runs_one_event_per_key_in_log_order() {
        let mut window = Window::new(Ordering::Ordered, 10, 0);
        for (offset, key) in [(0, "a"), (1, "b"), (2, "a"), (3, "a"), (4, "b")] {
            assert!(window.admit(offset, Some(key.into())));
        }
        assert!(window.admit(5, None));
        assert!(window.admit(6, None));
        assert_eq!(ready(&window), vec![0, 1, 5]);
        assert!(window.start(0));
        assert!(window.start(1));
        assert!(!window.start(2), "a's second event waits for its first");
        assert!(window.settle(1));
        assert_eq!(ready(&window), vec![4, 5], "b moves on, a still waits");
        assert!(window.settle(0));
        assert_eq!(ready(&window), vec![2, 4, 5]);
        assert_eq!(window.watermark(), 2);
        assert!(window.start(5));
        assert!(window.settle(5));
        assert_eq!(ready(&window), vec![2, 4, 6], "keyless events are ordered among themselves");
    }

    #[test]
    fn a_batch_carries_a_keys_run_and_its_settlement_readies_what_follows() {
        let mut window = Window::new(Ordering::Ordered, 10, 0);
        for (offset, key) in [(0, "a"), (1, "b"), (2, "a"), (3, "a"), (4, "b")] {
            assert!(window.admit(offset, Some(key.into())));
        }
        assert_eq!(window.start_successor(0), None, "0 is not in flight");
        assert!(window.start(0));
        assert_eq!(window.start_successor(0), Some(2));
        assert_eq!(window.start_successor(2), Some(3));
        assert_eq!(window.start_successor(3), None, "a's run ends");
        assert_eq!(window.start_successor(2), None, "3 is in flight already");
        assert_eq!(window.in_flight(), 3);
        assert_eq!(ready(&window), vec![1], "b's front only");
        // The batch settles in log order: nothing of a becomes ready while its run is in flight.
        assert!(window.settle(0));
        assert_eq!(ready(&window), vec![1]);
        assert!(window.settle(2));
        assert!(window.settle(3));
        assert_eq!(ready(&window), vec![1]);
        assert!(window.admit(5, Some("a".into())));
        assert_eq!(ready(&window), vec![1, 5], "a's next event, admitted after its run settled");
        assert_eq!(window.watermark(), 1);
        let mut unordered = Window::new(Ordering::Unordered, 10, 0);
        assert!(unordered.admit(0, None) && unordered.admit(1, None));
        assert!(unordered.start(0));
        assert_eq!(unordered.start_successor(0), None, "every admitted event is ready in an unordered window");
    }

    #[test]
    fn settling_out_of_order_in_ordered_mode_keeps_the_key_queue_consistent() {
        // A dispatcher that aborts deliveries settles nothing; one that dead-letters may settle a queued event
        // of a removed consumer. The queue must not lose its order either way.
        let mut window = Window::new(Ordering::Ordered, 10, 0);
        for offset in 0..4 {
            assert!(window.admit(offset, Some("k".into())));
        }
        assert!(window.settle(2));
        assert_eq!(ready(&window), vec![0]);
        assert!(window.settle(0));
        assert_eq!(ready(&window), vec![1]);
        assert!(window.settle(1));
        assert_eq!(ready(&window), vec![3]);
        assert!(window.settle(3));
        assert_eq!(ready(&window), Vec::<u64>::new());
        assert_eq!(window.watermark(), 4);
        assert!(!window.settle(3), "twice is a no-op");
    }

    #[test]
    fn offsets_already_seen_are_not_admitted_again() {
        let mut window = Window::new(Ordering::Unordered, 10, 5);
        assert!(!window.admit(4, None));
        assert!(window.admit(5, None));
        assert!(!window.admit(5, None));
        window.skip_to(3);
        assert_eq!(window.scanned_to(), 6, "skip never goes back");
    }

    /// Exhaustive check of the ordered invariant over random schedules: per key, an event starts only after
    /// every earlier event of its key settled, and the watermark never passes an unsettled event.
    #[test]
    fn ordered_invariant_holds_under_random_schedules() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut window = Window::new(Ordering::Ordered, 8, 0);
            let mut offset = 0u64;
            let mut keys: BTreeMap<u64, u64> = BTreeMap::new();
            let mut in_flight: BTreeSet<u64> = BTreeSet::new();
            let mut settled: BTreeSet<u64> = BTreeSet::new();
            for _ in 0..300 {
                match next() % 3 {
                    0 if window.has_room() => {
                        let key = next() % 3;
                        assert!(window.admit(offset, Some(key.to_string())));
                        keys.insert(offset, key);
                        offset += 1;
                    }
                    1 => {
                        let first = window.ready().next();
                        if let Some(o) = first {
                            let key = keys[&o];
                            assert!(
                                keys.range(..o).all(|(earlier, k)| *k != key || settled.contains(earlier)),
                                "offset {o} overtook an earlier event of key {key}"
                            );
                            assert!(window.start(o));
                            in_flight.insert(o);
                        }
                    }
                    _ => {
                        if let Some(&o) = in_flight.iter().nth((next() % 4) as usize) {
                            in_flight.remove(&o);
                            assert!(window.settle(o));
                            settled.insert(o);
                        }
                    }
                }
                let watermark = window.watermark();
                assert!((0..watermark).all(|o| settled.contains(&o) || !keys.contains_key(&o)));
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit {
            gap: u64,
            key: Option<u8>,
        },
        /// Starts the first ready event and up to this many successors of its key (a batch).
        StartFirstReady(usize),
        SettleInFlight(usize),
        Skip(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..3, proptest::option::of(0u8..3)).prop_map(|(gap, key)| Op::Admit { gap, key }),
            (0usize..3).prop_map(Op::StartFirstReady),
            (0usize..8).prop_map(Op::SettleInFlight),
            (0u64..4).prop_map(Op::Skip),
        ]
    }

    proptest::proptest! {
        /// Whatever happens: the watermark never goes back and never passes an unsettled event; the window never
        /// holds more than its room; in ordered mode a key's events are in flight in one batch at most, and start
        /// in log order.
        #[test]
        fn window_invariants(ordered in proptest::bool::ANY, room in 1usize..6, ops in proptest::collection::vec(op(), 1..80)) {
            let ordering = if ordered { Ordering::Ordered } else { Ordering::Unordered };
            let mut window = Window::new(ordering, room, 10);
            let mut keys: BTreeMap<u64, Option<String>> = BTreeMap::new();
            // The batches in flight, each in log order.
            let mut in_flight: Vec<Vec<u64>> = Vec::new();
            let mut started_per_key: HashMap<Option<String>, u64> = HashMap::new();
            let mut watermark = window.watermark();
            for op in ops {
                match op {
                    Op::Admit { gap, key } => {
                        let offset = window.scanned_to() + gap;
                        let key = key.map(|k| format!("k{k}"));
                        if window.admit(offset, key.clone()) {
                            keys.insert(offset, key);
                        }
                    }
                    Op::StartFirstReady(successors) => {
                        let first_ready = window.ready().next();
                        if let Some(first) = first_ready {
                            proptest::prop_assert!(window.start(first));
                            let mut batch = vec![first];
                            for _ in 0..successors {
                                let Some(last) = batch.last().copied() else { break };
                                match window.start_successor(last) {
                                    Some(next) => batch.push(next),
                                    None => break,
                                }
                            }
                            proptest::prop_assert!(ordered || batch.len() == 1);
                            for &offset in &batch {
                                let key = keys[&offset].clone();
                                if ordered {
                                    let earlier_pending_elsewhere = keys
                                        .range(..offset)
                                        .any(|(o, k)| *k == key && !batch.contains(o));
                                    proptest::prop_assert!(!earlier_pending_elsewhere, "a key's events start in log order");
                                    let busy_elsewhere = in_flight.iter().flatten().any(|o| keys.get(o) == Some(&key));
                                    proptest::prop_assert!(!busy_elsewhere, "a key is in flight in one batch at most");
                                }
                                let last = started_per_key.insert(key, offset);
                                proptest::prop_assert!(!ordered || last.is_none_or(|l| l < offset));
                            }
                            in_flight.push(batch);
                        }
                    }
                    Op::SettleInFlight(i) => {
                        if !in_flight.is_empty() {
                            for offset in in_flight.remove(i % in_flight.len()) {
                                proptest::prop_assert!(window.settle(offset));
                                keys.remove(&offset);
                            }
                        }
                    }
                    Op::Skip(n) => window.skip_to(window.scanned_to() + n),
                }
                proptest::prop_assert!(window.pending() <= room);
                proptest::prop_assert_eq!(window.pending(), keys.len());
                let ready_in_flight = window.ready().any(|r| in_flight.iter().flatten().any(|o| *o == r));
                proptest::prop_assert!(!ready_in_flight, "an event in flight is never ready again");
                let now = window.watermark();
                proptest::prop_assert!(now >= watermark, "the watermark never goes back");
                if let Some(lowest) = keys.keys().next() {
                    proptest::prop_assert!(now <= *lowest, "the watermark never passes an unsettled event");
                }
                watermark = now;
            }
        }
    }
}
