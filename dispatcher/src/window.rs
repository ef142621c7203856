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

    /// Settles an event (delivered, dead-lettered or dropped); in ordered mode the next event of its key becomes
    /// ready.
    pub(crate) fn settle(&mut self, offset: u64) -> bool {
        let Some((key, _)) = self.pending.remove(&offset) else { return false };
        self.startable.remove(&offset);
        if self.ordering == Ordering::Ordered
            && let Some(queue) = self.by_key.get_mut(&key)
        {
            queue.retain(|o| *o != offset);
            match queue.front() {
                Some(next) => {
                    self.startable.insert(*next);
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
        Admit { gap: u64, key: Option<u8> },
        StartFirstReady,
        SettleInFlight(usize),
        Skip(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..3, proptest::option::of(0u8..3)).prop_map(|(gap, key)| Op::Admit { gap, key }),
            Just(Op::StartFirstReady),
            (0usize..8).prop_map(Op::SettleInFlight),
            (0u64..4).prop_map(Op::Skip),
        ]
    }

    proptest::proptest! {
        /// Whatever happens: the watermark never goes back and never passes an unsettled event; the window never
        /// holds more than its room; in ordered mode one event per key is in flight, and a key's events start in
        /// log order.
        #[test]
        fn window_invariants(ordered in proptest::bool::ANY, room in 1usize..6, ops in proptest::collection::vec(op(), 1..80)) {
            let ordering = if ordered { Ordering::Ordered } else { Ordering::Unordered };
            let mut window = Window::new(ordering, room, 10);
            let mut keys: BTreeMap<u64, Option<String>> = BTreeMap::new();
            let mut in_flight: Vec<u64> = Vec::new();
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
                    Op::StartFirstReady => {
                        let first_ready = window.ready().next();
                        if let Some(offset) = first_ready {
                            proptest::prop_assert!(window.start(offset));
                            in_flight.push(offset);
                            let key = keys[&offset].clone();
                            if ordered {
                                let earlier_pending = keys.range(..offset).any(|(_, k)| *k == key);
                                proptest::prop_assert!(!earlier_pending, "a key's events start in log order");
                                let busy = in_flight.iter().filter(|o| keys.get(o) == Some(&key)).count();
                                proptest::prop_assert_eq!(busy, 1, "one event per key in flight");
                            }
                            let last = started_per_key.insert(key, offset);
                            proptest::prop_assert!(!ordered || last.is_none_or(|l| l < offset));
                        }
                    }
                    Op::SettleInFlight(i) => {
                        if !in_flight.is_empty() {
                            let offset = in_flight.remove(i % in_flight.len());
                            proptest::prop_assert!(window.settle(offset));
                            keys.remove(&offset);
                        }
                    }
                    Op::Skip(n) => window.skip_to(window.scanned_to() + n),
                }
                proptest::prop_assert!(window.pending() <= room);
                proptest::prop_assert_eq!(window.pending(), keys.len());
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
