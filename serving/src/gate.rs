//! The activator and queue-proxy of one revision on this node, as accounting: which instance takes the next
//! request, who waits, and who is woken when a slot frees.
//!
//! What flows in: requests asking for a slot ([`Gate::admit`]), slots given back ([`Gate::release`]), instances
//! added, ready, draining and removed, waiters giving up. What flows out: the instance a request goes to, or
//! "wait" (no instance ready or all full: the request is held, never answered 5xx because the revision is at
//! zero), or "full" (the bounded queue is full), and the waiters to wake with their instance.
//!
//! In-flight counts are exact: a slot is taken when a request is admitted and given back when its response
//! ends, so an instance never has more than `containerConcurrency` requests at once (0: no limit). The least
//! loaded ready instance that is not draining takes the request; waiters are served first come, first served.

use sluice_autoscaler::Sample;
use std::collections::{BTreeMap, VecDeque};

pub type InstanceId = u64;
pub(crate) type WaiterId = u64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    ready: bool,
    draining: bool,
    in_flight: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Go(InstanceId),
    Wait,
    Full,
}

/// What the scaler needs to know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Load {
    pub(crate) instances: usize,
    pub(crate) ready: usize,
    pub(crate) in_flight: u32,
    pub(crate) waiting: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct Gate {
    container_concurrency: u32,
    queue_limit: usize,
    instances: BTreeMap<InstanceId, Slot>,
    waiting: VecDeque<WaiterId>,
}

impl Gate {
    pub(crate) fn new(container_concurrency: u32, queue_limit: usize) -> Self {
        Gate { container_concurrency, queue_limit, instances: BTreeMap::new(), waiting: VecDeque::new() }
    }

    fn has_room(&self, slot: &Slot) -> bool {
        slot.ready && !slot.draining && (self.container_concurrency == 0 || slot.in_flight < self.container_concurrency)
    }

    fn take_slot(&mut self) -> Option<InstanceId> {
        let id = self
            .instances
            .iter()
            .filter(|(_, slot)| self.has_room(slot))
            .min_by_key(|(id, slot)| (slot.in_flight, **id))
            .map(|(id, _)| *id)?;
        if let Some(slot) = self.instances.get_mut(&id) {
            slot.in_flight += 1;
        }
        Some(id)
    }

    /// A request asks for a slot. Waiting requests go first: a new one never overtakes them.
    pub(crate) fn admit(&mut self, waiter: WaiterId) -> Admit {
        if self.waiting.is_empty()
            && let Some(id) = self.take_slot()
        {
            return Admit::Go(id);
        }
        if self.waiting.len() >= self.queue_limit {
            return Admit::Full;
        }
        self.waiting.push_back(waiter);
        Admit::Wait
    }

    /// Gives waiters the free slots, in order.
    fn wake(&mut self) -> Vec<(WaiterId, InstanceId)> {
        let mut woken = Vec::new();
        while !self.waiting.is_empty() {
            let Some(id) = self.take_slot() else { break };
            if let Some(waiter) = self.waiting.pop_front() {
                woken.push((waiter, id));
            }
        }
        woken
    }

    /// A request's response ended: its slot is free.
    pub(crate) fn release(&mut self, id: InstanceId) -> Vec<(WaiterId, InstanceId)> {
        if let Some(slot) = self.instances.get_mut(&id) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
        self.wake()
    }

    /// A new instance (not ready yet).
    pub(crate) fn add(&mut self, id: InstanceId) {
        self.instances.entry(id).or_default();
    }

    pub(crate) fn set_ready(&mut self, id: InstanceId, ready: bool) -> Vec<(WaiterId, InstanceId)> {
        if let Some(slot) = self.instances.get_mut(&id) {
            slot.ready = ready;
        }
        self.wake()
    }

    /// No new requests for this instance; the ones it has finish.
    pub(crate) fn drain(&mut self, id: InstanceId) {
        if let Some(slot) = self.instances.get_mut(&id) {
            slot.draining = true;
        }
    }

    pub(crate) fn remove(&mut self, id: InstanceId) {
        self.instances.remove(&id);
    }

    pub(crate) fn in_flight(&self, id: InstanceId) -> u32 {
        self.instances.get(&id).map_or(0, |slot| slot.in_flight)
    }

    /// A waiter gave up (timeout, client gone).
    pub(crate) fn cancel(&mut self, waiter: WaiterId) {
        self.waiting.retain(|w| *w != waiter);
    }

    /// Every waiter is answered elsewhere at once (the revision stops): none is handed a slot afterwards.
    pub(crate) fn cancel_all(&mut self) {
        self.waiting.clear();
    }

    /// The least loaded instance to take out (not draining already), for scale-in.
    pub(crate) fn least_loaded(&self) -> Option<InstanceId> {
        self.instances
            .iter()
            .filter(|(_, slot)| !slot.draining)
            .min_by_key(|(id, slot)| (slot.ready, slot.in_flight, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    pub(crate) fn load(&self) -> Load {
        Load {
            instances: self.instances.values().filter(|s| !s.draining).count(),
            ready: self.instances.values().filter(|s| s.ready && !s.draining).count(),
            in_flight: self.instances.values().map(|s| s.in_flight).sum(),
            waiting: self.waiting.len(),
        }
    }
}

/// The gate's level (requests in flight or held) integrated over time, and the requests that arrived: what
/// the autoscaler's samples are made of, exact rather than scraped. Times are the monotonic clock's
/// (`crate::clock`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Meter {
    level: u32,
    since_ms: u64,
    opened_ms: u64,
    /// Level × milliseconds since the bucket opened.
    integral: f64,
    /// Requests that arrived since the bucket opened. Counted as they arrive, as Knative does, not as they end:
    /// requests held at a revision at zero have not ended, and `metric: rps` must see them.
    arrivals: u64,
}

impl Meter {
    pub(crate) fn new(now_ms: u64) -> Self {
        Meter { since_ms: now_ms, opened_ms: now_ms, ..Meter::default() }
    }

    /// The level is `level` from `now_ms` on.
    pub(crate) fn set(&mut self, now_ms: u64, level: u32) {
        let now_ms = now_ms.max(self.since_ms);
        self.integral += f64::from(self.level) * (now_ms - self.since_ms) as f64;
        self.since_ms = now_ms;
        self.level = level;
    }

    /// A request arrived (given a slot, held, or turned away as the queue was full).
    pub(crate) fn arrived(&mut self) {
        self.arrivals += 1;
    }

    /// Closes the bucket: the average level since it opened, the requests that arrived in it, and how long it
    /// lasted.
    pub(crate) fn close(&mut self, now_ms: u64) -> Sample {
        self.set(now_ms, self.level);
        let elapsed = now_ms.saturating_sub(self.opened_ms);
        let average = if elapsed == 0 { f64::from(self.level) } else { self.integral / elapsed as f64 };
        let arrivals = std::mem::take(&mut self.arrivals);
        self.integral = 0.0;
        self.opened_ms = now_ms.max(self.opened_ms);
        Sample { concurrency: average, requests: arrivals, elapsed_ms: elapsed }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_meter_integrates_the_level_over_time() {
        let mut meter = Meter::new(0);
        meter.set(0, 2);
        meter.set(250, 4);
        meter.arrived();
        meter.set(750, 0);
        let closed = |concurrency, requests, elapsed_ms| Sample { concurrency, requests, elapsed_ms };
        assert_eq!(meter.close(1_000), closed(2.0 * 0.25 + 4.0 * 0.5, 1, 1_000));
        assert_eq!(meter.close(2_000), closed(0.0, 0, 1_000), "a new bucket starts empty");
        meter.set(2_000, 3);
        assert_eq!(meter.close(2_500), closed(3.0, 0, 500), "a bucket closed early lasted less");
    }

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn at_zero_requests_wait_and_the_first_ready_instance_takes_them_in_order() {
        let mut gate = Gate::new(1, 10);
        assert_eq!(gate.admit(1), Admit::Wait);
        assert_eq!(gate.admit(2), Admit::Wait);
        gate.add(7);
        assert_eq!(gate.load(), Load { instances: 1, ready: 0, in_flight: 0, waiting: 2 });
        assert_eq!(gate.set_ready(7, true), vec![(1, 7)], "one slot (containerConcurrency 1): the first waiter");
        assert_eq!(gate.release(7), vec![(2, 7)]);
        assert_eq!(gate.release(7), vec![]);
        assert_eq!(gate.admit(3), Admit::Go(7));
    }

    #[test]
    fn container_concurrency_bounds_each_instance_and_the_least_loaded_takes_the_next() {
        let mut gate = Gate::new(2, 10);
        gate.add(1);
        gate.add(2);
        gate.set_ready(1, true);
        gate.set_ready(2, true);
        let taken: Vec<Admit> = (0..5).map(|w| gate.admit(w)).collect();
        assert_eq!(taken, [Admit::Go(1), Admit::Go(2), Admit::Go(1), Admit::Go(2), Admit::Wait]);
        assert_eq!(gate.in_flight(1), 2);
        assert_eq!(gate.release(2), vec![(4, 2)]);
        let mut unlimited = Gate::new(0, 10);
        unlimited.add(1);
        unlimited.set_ready(1, true);
        assert!((0..100).all(|w| unlimited.admit(w) == Admit::Go(1)), "0: no limit per instance");
    }

    #[test]
    fn the_queue_is_bounded_and_a_waiter_can_give_up() {
        let mut gate = Gate::new(1, 2);
        assert_eq!((gate.admit(1), gate.admit(2), gate.admit(3)), (Admit::Wait, Admit::Wait, Admit::Full));
        gate.cancel(1);
        assert_eq!(gate.admit(3), Admit::Wait);
        gate.add(1);
        assert_eq!(gate.set_ready(1, true), vec![(2, 1)], "the cancelled waiter is skipped");
    }

    /// Regression: a stopping revision answered its waiters but left them in the gate, so a slot released
    /// before its instances were drained was handed to a waiter already gone (and on to the next, one by one).
    #[test]
    fn a_stopping_revision_hands_no_slot_to_the_waiters_it_answered() {
        let mut gate = Gate::new(1, 10);
        gate.add(1);
        gate.set_ready(1, true);
        assert_eq!(gate.admit(1), Admit::Go(1));
        assert_eq!((gate.admit(2), gate.admit(3)), (Admit::Wait, Admit::Wait));
        gate.cancel_all();
        assert_eq!(gate.release(1), vec![]);
        assert_eq!(gate.load().waiting, 0);
    }

    #[test]
    fn a_draining_instance_takes_nothing_new_and_is_picked_for_scale_in_by_load() {
        let mut gate = Gate::new(0, 10);
        for id in [1, 2] {
            gate.add(id);
            gate.set_ready(id, true);
        }
        assert_eq!(gate.admit(1), Admit::Go(1));
        assert_eq!(gate.least_loaded(), Some(2), "the idle one goes first");
        gate.drain(2);
        assert_eq!(gate.admit(2), Admit::Go(1));
        assert_eq!(gate.least_loaded(), Some(1));
        gate.remove(2);
        assert_eq!(gate.load().instances, 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Admit,
        Release(usize),
        AddReady,
        Drain(usize),
        Cancel(usize),
    }

    proptest! {
        /// Whatever happens, no instance ever holds more than containerConcurrency requests, every admitted or
        /// woken request holds exactly one slot, and a waiter is only kept while no slot is free for it.
        #[test]
        fn slots_are_never_overcommitted(
            cc in 0u32..4,
            ops in prop::collection::vec(prop_oneof![
                Just(Op::Admit), (0usize..8).prop_map(Op::Release), Just(Op::AddReady),
                (0usize..4).prop_map(Op::Drain), (0usize..8).prop_map(Op::Cancel)], 1..80),
        ) {
            let mut gate = Gate::new(cc, 16);
            let mut held: Vec<InstanceId> = Vec::new();
            let mut waiting: Vec<WaiterId> = Vec::new();
            let mut next_waiter = 0;
            let mut next_instance = 0;
            let woken_into = |woken: Vec<(WaiterId, InstanceId)>, held: &mut Vec<InstanceId>, waiting: &mut Vec<WaiterId>| {
                for (waiter, id) in woken {
                    waiting.retain(|w| *w != waiter);
                    held.push(id);
                }
            };
            for op in ops {
                match op {
                    Op::Admit => {
                        next_waiter += 1;
                        match gate.admit(next_waiter) {
                            Admit::Go(id) => held.push(id),
                            Admit::Wait => waiting.push(next_waiter),
                            Admit::Full => prop_assert_eq!(waiting.len(), 16),
                        }
                    }
                    Op::Release(i) if !held.is_empty() => {
                        let id = held.remove(i % held.len());
                        let woken = gate.release(id);
                        woken_into(woken, &mut held, &mut waiting);
                    }
                    Op::AddReady => {
                        next_instance += 1;
                        gate.add(next_instance);
                        let woken = gate.set_ready(next_instance, true);
                        woken_into(woken, &mut held, &mut waiting);
                    }
                    Op::Drain(i) if next_instance > 0 => gate.drain(1 + (i as u64 % next_instance)),
                    Op::Cancel(i) if !waiting.is_empty() => {
                        let waiter = waiting.remove(i % waiting.len());
                        gate.cancel(waiter);
                    }
                    _ => {}
                }
                for id in 1..=next_instance {
                    let holding = held.iter().filter(|h| **h == id).count() as u32;
                    prop_assert_eq!(gate.in_flight(id), holding);
                    if cc > 0 {
                        prop_assert!(holding <= cc);
                    }
                }
                prop_assert_eq!(gate.load().waiting, waiting.len());
                if !waiting.is_empty() {
                    prop_assert!(gate.take_slot_probe().is_none(), "a waiter is kept while a slot is free");
                }
            }
        }
    }

    impl Gate {
        /// Whether a slot is free now, without taking it.
        fn take_slot_probe(&self) -> Option<InstanceId> {
            self.instances.iter().find(|(_, slot)| self.has_room(slot)).map(|(id, _)| *id)
        }
    }
}
