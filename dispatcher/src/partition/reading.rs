//! The decisions of one partition's dispatch, pure: which consumers read together and which alone, what each
//! admits into its window, what may start now, what a settlement or a replay changes, and what to commit.
//!
//! What flows in: consumers added and removed (with the offset each starts at), the stream's end offset, reads
//! of the log through [`ReadLog`] (the shell reads RocksDB; tests read a vector), settlements, replay targets,
//! and the time (`now_ms`, for rate limits). What flows out: [`Start`]s (deliveries to spawn), [`Commits`]
//! (offsets and statistics to commit through Raft), and the state the gauges show.
//!
//! Attach and detach: consumers that keep up are *attached* and share one reader (`shared_next`): it decodes
//! each event once and asks the [`FilterIndex`] which of them match. A consumer whose window is full when an
//! event matches, or that starts behind, is *detached*: it reads on its own from `private_next` with its own
//! filter (keeping at most one read batch of look-ahead so a window that frees one slot at a time does not
//! re-read), and attaches again exactly where the shared reader is. The shared reader never runs past a
//! detached consumer waiting ahead of it. A slow subscriber therefore never holds up the others, and memory
//! stays bounded by the windows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use sluice_broker::OffsetCommit;
use sluice_cloudevent::{CloudEvent, EventView, ordering_key};

use crate::consumer::ConsumerSpec;
use crate::delivery::Settlement;
use crate::filter::FilterIndex;
use crate::rate::TokenBucket;
use crate::stats::{self, CursorStats};
use crate::window::Window;

/// (offset, arrival_ms, event) of one decoded record.
pub(crate) type ReadEvent = (u64, u64, Arc<CloudEvent>);

/// The log as the decisions see it.
pub(crate) trait ReadLog {
    /// Up to `max` decoded records from `from` (undecodable ones left out), and the offset after the last
    /// record looked at; `None` when the read failed (nothing changes, the shell tries again later).
    fn read(&self, from: u64, max: usize) -> Option<(Vec<ReadEvent>, u64)>;
}

pub(crate) struct Pending {
    pub(crate) event: Arc<CloudEvent>,
    pub(crate) arrival_ms: u64,
}

pub(crate) struct Consumer {
    pub(crate) spec: Arc<ConsumerSpec>,
    pub(crate) window: Window,
    attached: bool,
    /// Where this consumer reads on its own while detached.
    private_next: u64,
    /// Records read (and decoded) while detached but not admitted yet, because the window was full: every
    /// record in `[private_next, lookahead_next)`. At most one read batch.
    lookahead: VecDeque<ReadEvent>,
    lookahead_next: u64,
    pub(crate) committed: Option<u64>,
    pub(crate) stats: CursorStats,
    /// What is stored of `stats`.
    committed_stats: CursorStats,
    pub(crate) pending: HashMap<u64, Pending>,
    bucket: Option<TokenBucket>,
    /// Distinguishes this incarnation's delivery results from an earlier one's.
    pub(crate) generation: u64,
}

impl Consumer {
    /// Moves the private read position; what was read ahead no longer follows it.
    fn set_private_next(&mut self, offset: u64) {
        self.private_next = offset;
        self.lookahead.clear();
        self.lookahead_next = 0;
    }

    /// The arrival time of the oldest event admitted and not settled (0: none).
    pub(crate) fn oldest_pending_arrival_ms(&self) -> Option<u64> {
        self.window.oldest_pending().and_then(|o| self.pending.get(&o)).map(|p| p.arrival_ms)
    }
}

/// Where a consumer starts and what it had before (its committed offset and counters).
pub(crate) struct ConsumerStart {
    pub(crate) offset: u64,
    pub(crate) committed: Option<u64>,
    pub(crate) counters: CursorStats,
    pub(crate) committed_stats: CursorStats,
}

/// A delivery to spawn.
pub(crate) struct Start {
    pub(crate) cursor: String,
    pub(crate) generation: u64,
    pub(crate) offset: u64,
    pub(crate) event: Arc<CloudEvent>,
}

/// What to commit through the partition's Raft group, and what is stored once it is.
#[derive(Debug, Default)]
pub(crate) struct Commits {
    pub(crate) commits: Vec<OffsetCommit>,
    stat_updates: Vec<(String, CursorStats)>,
}

/// Every consumer of one stream partition, and the shared reader.
pub(crate) struct Reading {
    read_batch: usize,
    /// Each consumer's rate limit is shared between this many partitions.
    partitions: u32,
    pub(crate) consumers: BTreeMap<String, Consumer>,
    index: FilterIndex<String>,
    /// The shared reader's next offset; `None` while no consumer is attached.
    shared_next: Option<u64>,
    next_generation: u64,
    /// Consumers reading on their own (a set, so that a Broker with 1,000 Triggers that keep up costs nothing
    /// per event for the others).
    detached: BTreeSet<String>,
    /// Consumers whose window changed since deliveries were last started.
    dirty: BTreeSet<String>,
    /// Consumers with startable events held back by their rate limit.
    throttled: BTreeSet<String>,
    /// Consumers with startable events held back because their subscriber has no room.
    full: BTreeSet<String>,
}

impl Reading {
    pub(crate) fn new(read_batch: usize, partitions: u32) -> Self {
        Reading {
            read_batch: read_batch.max(1),
            partitions,
            consumers: BTreeMap::new(),
            index: FilterIndex::new(Vec::new()),
            shared_next: None,
            next_generation: 0,
            detached: BTreeSet::new(),
            dirty: BTreeSet::new(),
            throttled: BTreeSet::new(),
            full: BTreeSet::new(),
        }
    }

    /// Takes a consumer out (removed or changed); its running deliveries are the caller's to abort. Call
    /// [`Reading::finish_update`] after the round of changes.
    pub(crate) fn remove(&mut self, cursor: &str) -> Option<Consumer> {
        self.detached.remove(cursor);
        self.dirty.remove(cursor);
        self.throttled.remove(cursor);
        self.full.remove(cursor);
        self.consumers.remove(cursor)
    }

    /// Adds a consumer; it starts detached and attaches when it reaches the shared reader. Call
    /// [`Reading::finish_update`] after the round of changes.
    pub(crate) fn add(&mut self, spec: Arc<ConsumerSpec>, start: ConsumerStart, now_ms: u64) {
        self.next_generation += 1;
        let bucket = spec
            .rate_limit
            .map(|rate| rate / f64::from(self.partitions.max(1)))
            .map(|rate| TokenBucket::new(rate, rate.max(1.0), now_ms));
        self.detached.insert(spec.cursor.clone());
        self.consumers.insert(
            spec.cursor.clone(),
            Consumer {
                window: Window::new(spec.ordering, spec.max_inflight, start.offset),
                spec,
                attached: false,
                private_next: start.offset,
                lookahead: VecDeque::new(),
                lookahead_next: 0,
                committed: start.committed,
                stats: CursorStats { in_flight: 0, oldest_pending_arrival_ms: 0, ..start.counters },
                committed_stats: start.committed_stats,
                pending: HashMap::new(),
                bucket,
                generation: self.next_generation,
            },
        );
    }

    /// Ends a round of [`Reading::add`] and [`Reading::remove`]: rebuilds the filter index once.
    pub(crate) fn finish_update(&mut self) {
        if self.detached.len() == self.consumers.len() {
            self.shared_next = None;
        }
        self.index = FilterIndex::new(self.consumers.iter().map(|(cursor, c)| (cursor.clone(), c.spec.filter.clone())));
    }

    /// Moves the scan position of every attached consumer up to the shared reader's: the events between did
    /// not match them (matching ones were admitted as they were read).
    pub(crate) fn sync_attached(&mut self) {
        let Some(shared) = self.shared_next else { return };
        for (cursor, consumer) in self.consumers.iter_mut() {
            if consumer.attached && !self.detached.contains(cursor) {
                consumer.window.skip_to(shared);
            }
        }
    }

    /// One batch of the shared reader; answers whether it made progress.
    pub(crate) fn read_shared(&mut self, end: u64, log: &impl ReadLog) -> bool {
        let Some(shared) = self.shared_next else { return false };
        if shared >= end {
            return false;
        }
        // Do not run past a detached consumer waiting ahead of the shared reader: it attaches there.
        let barrier = self
            .detached
            .iter()
            .filter_map(|cursor| self.consumers.get(cursor))
            .filter(|c| c.private_next > shared && !c.spec.paused)
            .map(|c| c.private_next)
            .min()
            .unwrap_or(end)
            .min(end);
        let want = ((barrier - shared) as usize).min(self.read_batch);
        if want == 0 {
            return false;
        }
        let Some((events, next)) = log.read(shared, want) else { return false };
        for (offset, arrival_ms, event) in events {
            let matched = self.index.matching(&EventView(&event));
            for cursor in matched {
                let Some(consumer) = self.consumers.get_mut(&cursor) else { continue };
                if !consumer.attached || consumer.window.scanned_to() > offset {
                    continue;
                }
                consumer.window.skip_to(offset);
                if consumer.window.admit(offset, ordering_key(&event)) {
                    consumer.pending.insert(offset, Pending { event: event.clone(), arrival_ms });
                    self.dirty.insert(cursor);
                } else {
                    // Its window is full: it goes on alone from this event, and the others do not wait.
                    self.detached.insert(cursor);
                    consumer.attached = false;
                    consumer.set_private_next(offset);
                    metrics::counter!("sluice_dispatch_detached_total", "consumer" => consumer.spec.name.clone())
                        .increment(1);
                }
            }
        }
        let next = next.max(shared);
        // Attached consumers that did not match are brought up to the shared position lazily
        // (`sync_attached`), so a batch costs nothing for them.
        self.shared_next = if self.detached.len() < self.consumers.len() { Some(next) } else { None };
        next > shared
    }

    /// Every detached consumer reads on its own (see [`Reading::read_private`]).
    pub(crate) fn read_detached(&mut self, end: u64, log: &impl ReadLog) {
        let detached: Vec<String> = self.detached.iter().cloned().collect();
        for cursor in detached {
            self.read_private(&cursor, end, log);
        }
    }

    /// A detached consumer reads on its own until its window is full, it reaches the shared reader (and
    /// attaches), or the end of the stream.
    fn read_private(&mut self, cursor: &str, end: u64, log: &impl ReadLog) {
        if self.consumers.get(cursor).is_none_or(|c| c.spec.paused) {
            return;
        }
        loop {
            let Some(consumer) = self.consumers.get(cursor) else { return };
            let from = consumer.private_next;
            let target = match self.shared_next {
                Some(shared) if shared > from => shared,
                _ => end,
            };
            if from >= target || !consumer.window.has_room() {
                break;
            }
            let (mut events, next) = if consumer.lookahead_next > from {
                let Some(consumer) = self.consumers.get_mut(cursor) else { return };
                (std::mem::take(&mut consumer.lookahead), std::mem::take(&mut consumer.lookahead_next))
            } else {
                let want = ((target - from) as usize).min(self.read_batch);
                let Some((events, next)) = log.read(from, want) else { return };
                (VecDeque::from(events), next)
            };
            let Some(consumer) = self.consumers.get_mut(cursor) else { return };
            let mut stopped_at = None;
            while let Some((offset, arrival_ms, event)) = events.pop_front() {
                if offset < from {
                    continue;
                }
                // The shared reader may have moved back (it restarts where a consumer attaches): stop there.
                if offset >= target {
                    events.push_front((offset, arrival_ms, event));
                    consumer.window.skip_to(target);
                    stopped_at = Some(target);
                    break;
                }
                if !consumer.spec.filter.matches(&EventView(&event)) {
                    continue;
                }
                consumer.window.skip_to(offset);
                if consumer.window.admit(offset, ordering_key(&event)) {
                    consumer.pending.insert(offset, Pending { event, arrival_ms });
                    self.dirty.insert(cursor.to_string());
                } else {
                    events.push_front((offset, arrival_ms, event));
                    stopped_at = Some(offset);
                    break;
                }
            }
            match stopped_at {
                Some(offset) => {
                    consumer.private_next = offset;
                    if !events.is_empty() {
                        consumer.lookahead = events;
                        consumer.lookahead_next = next;
                    }
                    break;
                }
                None => {
                    // Never past the target: a consumer attaches exactly where the shared reader is.
                    consumer.private_next = next.max(from).min(target);
                    consumer.window.skip_to(consumer.private_next);
                    if consumer.private_next == from {
                        break;
                    }
                }
            }
        }
        let shared = self.shared_next;
        if let Some(consumer) = self.consumers.get_mut(cursor) {
            match shared {
                Some(shared) if consumer.private_next == shared => {
                    consumer.attached = true;
                    consumer.set_private_next(shared);
                    self.detached.remove(cursor);
                }
                None if consumer.private_next >= end => {
                    consumer.attached = true;
                    consumer.set_private_next(consumer.private_next);
                    self.detached.remove(cursor);
                    self.shared_next = Some(consumer.private_next);
                }
                _ => {}
            }
        }
    }

    /// The deliveries that may start now, for the consumers whose window changed (or that wait for tokens);
    /// each is marked started in its window.
    /// Every event that may start now, each with what `admit` gave it (a slot at its subscriber); when `admit`
    /// answers `None` (the subscriber is full), the consumer's next events wait, admitted but not started,
    /// until [`Reading::take_startable`] is called again.
    pub(crate) fn take_startable<T>(
        &mut self,
        now_ms: u64,
        mut admit: impl FnMut(&ConsumerSpec) -> Option<T>,
    ) -> Vec<(Start, T)> {
        let mut starts = Vec::new();
        let mut touched = std::mem::take(&mut self.dirty);
        touched.append(&mut std::mem::take(&mut self.throttled));
        touched.append(&mut std::mem::take(&mut self.full));
        for cursor in touched {
            let Some(consumer) = self.consumers.get_mut(&cursor) else { continue };
            let ready: Vec<u64> = consumer.window.ready().collect();
            for offset in ready {
                let Some(slot) = admit(&consumer.spec) else {
                    self.full.insert(cursor.clone());
                    break;
                };
                if let Some(bucket) = &mut consumer.bucket
                    && !bucket.try_take(now_ms)
                {
                    self.throttled.insert(cursor.clone());
                    break;
                }
                let Some(pending) = consumer.pending.get(&offset) else { continue };
                consumer.window.start(offset);
                let start = Start {
                    cursor: cursor.clone(),
                    generation: consumer.generation,
                    offset,
                    event: pending.event.clone(),
                };
                starts.push((start, slot));
            }
        }
        starts
    }

    /// Sizes each consumer's window: `size(spec)` events admitted at most (its `max-inflight`, or more where
    /// the subscriber can take more). A window that grew is looked at again.
    pub(crate) fn size_windows(&mut self, size: impl Fn(&ConsumerSpec) -> usize) {
        for (cursor, consumer) in &mut self.consumers {
            let wanted = size(&consumer.spec).max(1);
            if wanted != consumer.window.max_pending() {
                if wanted > consumer.window.max_pending() {
                    self.dirty.insert(cursor.clone());
                }
                consumer.window.set_max_pending(wanted);
            }
        }
    }

    /// Whether some consumer has events waiting for room at its subscriber.
    pub(crate) fn any_full(&self) -> bool {
        !self.full.is_empty()
    }

    /// When a consumer held back by its rate limit gets its next token.
    pub(crate) fn next_rate_wakeup(&mut self, now_ms: u64) -> Option<u64> {
        let mut earliest: Option<u64> = None;
        for cursor in &self.throttled {
            if let Some(bucket) = self.consumers.get_mut(cursor).and_then(|c| c.bucket.as_mut()) {
                let at = bucket.next_token_ms(now_ms);
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
        earliest
    }

    /// Records a delivery's end; answers the outcome's name, or `None` for a result of an earlier incarnation
    /// of the consumer (it was changed or replayed meanwhile), which changes nothing.
    pub(crate) fn settle(
        &mut self,
        cursor: &str,
        generation: u64,
        offset: u64,
        settlement: Settlement,
    ) -> Option<&'static str> {
        let consumer = self.consumers.get_mut(cursor)?;
        if consumer.generation != generation {
            return None;
        }
        consumer.pending.remove(&offset);
        consumer.window.settle(offset);
        self.dirty.insert(cursor.to_string());
        let (outcome, attempts) = match settlement {
            Settlement::Delivered { attempts } => {
                consumer.stats.delivered += 1;
                ("delivered", attempts)
            }
            Settlement::DeadLetterSink { attempts } => ("dead_letter_sink", attempts),
            Settlement::DeadLetterStream { attempts } => ("dead_letter_stream", attempts),
            Settlement::Dropped { attempts } => ("dropped", attempts),
        };
        if outcome != "delivered" {
            consumer.stats.dead_lettered += 1;
        }
        consumer.stats.retried += u64::from(attempts.saturating_sub(1));
        Some(outcome)
    }

    /// Restarts the consumers with a replay requested (`{cursor}!replay` in `stored`, the partition's committed
    /// cursors) at their target: a new incarnation, detached. Answers the replayed cursors (their running
    /// deliveries are the caller's to abort) and the commits that record the replays.
    pub(crate) fn apply_replays(&mut self, stored: &BTreeMap<String, u64>) -> (Vec<String>, Vec<OffsetCommit>) {
        let mut replayed = Vec::new();
        let mut commits = Vec::new();
        let cursors: Vec<String> = self.consumers.keys().cloned().collect();
        for cursor in cursors {
            let Some(target) = stats::pending_replay(&cursor, stored) else { continue };
            let Some(consumer) = self.consumers.get_mut(&cursor) else { continue };
            tracing::info!(consumer = %cursor, from = consumer.window.watermark(), to = target, "replay");
            consumer.pending.clear();
            consumer.window = Window::new(consumer.spec.ordering, consumer.spec.max_inflight, target);
            consumer.attached = false;
            consumer.set_private_next(target);
            consumer.committed = Some(target);
            self.next_generation += 1;
            consumer.generation = self.next_generation;
            self.detached.insert(cursor.clone());
            commits.push(OffsetCommit { cursor: cursor.clone(), offset: target, reset: true });
            commits.push(OffsetCommit { cursor: stats::stat_key(&cursor, stats::REPLAY), offset: 0, reset: true });
            replayed.push(cursor);
        }
        if self.detached.len() == self.consumers.len() {
            self.shared_next = None;
        }
        (replayed, commits)
    }

    /// Takes each consumer's statistics as stored in the partition's Raft group for what is committed, so that
    /// the next [`Reading::commits`] corrects what differs. A previous leader's dispatcher can write its gauges
    /// after this one read them at start (its commit applied here late, or made while it still ran): without
    /// this, `trigger status` would show its deliveries in flight for good once the stream goes idle.
    pub(crate) fn observe_stored_stats(&mut self, stored: &BTreeMap<String, u64>) {
        for consumer in self.consumers.values_mut() {
            consumer.committed_stats = CursorStats::from_committed(&consumer.spec.cursor, stored);
        }
    }

    /// What to commit now: each consumer's watermark where it moved (not for the `replayed` ones, whose
    /// commits the replay made) and its statistics where they changed.
    pub(crate) fn commits(&mut self, replayed: &HashSet<String>, mut commits: Vec<OffsetCommit>) -> Commits {
        self.sync_attached();
        let mut stat_updates = Vec::new();
        for consumer in self.consumers.values_mut() {
            let cursor = &consumer.spec.cursor;
            let watermark = consumer.window.watermark();
            // PLANTED BUG (test-only): commit the offset as read, before the deliveries below it have settled; a
            // leader crash then skips events still in flight. The chaos suite's self-test must report them.
            #[cfg(feature = "planted-bugs")]
            let watermark = if sluice_broker::planted_bug("commit-before-delivery") {
                consumer.window.scanned_to()
            } else {
                watermark
            };
            if !replayed.contains(cursor) && consumer.committed.is_none_or(|committed| watermark > committed) {
                commits.push(OffsetCommit { cursor: cursor.clone(), offset: watermark, reset: false });
            }
            consumer.stats.in_flight = consumer.window.in_flight() as u64;
            consumer.stats.paused = u64::from(consumer.spec.paused);
            consumer.stats.oldest_pending_arrival_ms = consumer.oldest_pending_arrival_ms().unwrap_or(0);
            let changed = consumer.stats.commits(cursor, &consumer.committed_stats);
            if !changed.is_empty() {
                stat_updates.push((cursor.clone(), consumer.stats));
                commits.extend(changed);
            }
        }
        Commits { commits, stat_updates }
    }

    /// Records that `committed` is stored.
    pub(crate) fn committed(&mut self, committed: Commits) {
        for commit in committed.commits.iter().filter(|c| !c.cursor.contains('!')) {
            if let Some(consumer) = self.consumers.get_mut(&commit.cursor) {
                consumer.committed = Some(commit.offset);
            }
        }
        for (cursor, stats) in committed.stat_updates {
            if let Some(consumer) = self.consumers.get_mut(&cursor) {
                consumer.committed_stats = stats;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use proptest::prelude::*;
    use serde_json::json;
    use sluice_controller::status::Environment;

    use super::*;
    use crate::consumer::consumers;

    /// A stream in memory; counts how often each offset is read.
    #[derive(Default)]
    struct MemLog {
        events: Vec<Arc<CloudEvent>>,
        reads: RefCell<BTreeMap<u64, usize>>,
    }

    impl MemLog {
        fn append(&mut self, event_type: &str) {
            let id = self.events.len();
            let body = json!({"specversion": "1.0", "id": format!("e{id}"), "source": "/t", "type": event_type});
            let event = sluice_cloudevent::from_structured(body.to_string().as_bytes()).expect("event");
            self.events.push(Arc::new(event));
        }

        fn end(&self) -> u64 {
            self.events.len() as u64
        }
    }

    impl ReadLog for MemLog {
        fn read(&self, from: u64, max: usize) -> Option<(Vec<ReadEvent>, u64)> {
            let to = (from + max as u64).min(self.end());
            let mut reads = self.reads.borrow_mut();
            let events = (from..to)
                .map(|offset| {
                    *reads.entry(offset).or_default() += 1;
                    (offset, offset * 10, self.events[offset as usize].clone())
                })
                .collect();
            Some((events, to))
        }
    }

    /// Trigger specs as the consumer module derives them: `(name, type filter or "", max in flight)`.
    fn specs(triggers: &[(&str, &str, usize)]) -> Vec<Arc<ConsumerSpec>> {
        let meta = |kind: &str, name: &str| {
            json!({"apiVersion": "eventing.knative.dev/v1", "kind": kind,
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                    "creationTimestamp": "2026-01-02T03:04:05Z"}})
        };
        let mut objects = vec![meta("Broker", "b")];
        for (name, event_type, max_inflight) in triggers {
            let mut trigger = meta("Trigger", name);
            trigger["metadata"]["annotations"] = json!({"sluice.dev/max-inflight": max_inflight.to_string()});
            let mut spec = json!({"broker": "b", "subscriber": {"uri": "http://s/"}});
            if !event_type.is_empty() {
                spec["filter"] = json!({"attributes": {"type": event_type}});
            }
            trigger["spec"] = spec;
            objects.push(trigger);
        }
        let (specs, problems) = consumers(&objects, &Environment::new("http://127.0.0.1:1"), Default::default());
        assert!(problems.is_empty(), "{problems:?}");
        specs
    }

    fn start_at(offset: u64) -> ConsumerStart {
        ConsumerStart {
            offset,
            committed: None,
            counters: CursorStats::default(),
            committed_stats: CursorStats::default(),
        }
    }

    fn reading_with(specs: &[Arc<ConsumerSpec>], starts: &[u64], read_batch: usize) -> Reading {
        let mut reading = Reading::new(read_batch, 1);
        for (spec, start) in specs.iter().zip(starts) {
            reading.add(spec.clone(), start_at(*start), 0);
        }
        reading.finish_update();
        reading
    }

    /// What the shell's pump does, without the yields: read until nothing moves, then start what may start.
    fn pump(reading: &mut Reading, log: &MemLog) -> Vec<Start> {
        while reading.read_shared(log.end(), log) {}
        reading.read_detached(log.end(), log);
        reading.take_startable(0, |_| Some(())).into_iter().map(|(start, ())| start).collect()
    }

    fn settle_all(reading: &mut Reading, starts: &[Start]) {
        for start in starts {
            let settled =
                reading.settle(&start.cursor, start.generation, start.offset, Settlement::Delivered { attempts: 1 });
            assert_eq!(settled, Some("delivered"));
        }
    }

    fn name_of(cursor: &str) -> &str {
        cursor.split('/').nth(3).unwrap_or(cursor)
    }

    fn all_cursor(reading: &Reading, name: &str) -> String {
        reading.consumers.keys().find(|cursor| name_of(cursor) == name).cloned().unwrap_or_default()
    }

    fn attached(reading: &Reading) -> Vec<&str> {
        reading.consumers.iter().filter(|(_, c)| c.attached).map(|(cursor, _)| name_of(cursor)).collect()
    }

    #[test]
    fn events_wait_in_the_window_while_the_subscriber_has_no_room() {
        let mut log = MemLog::default();
        for _ in 0..10 {
            log.append("a");
        }
        let mut reading = reading_with(&specs(&[("t1", "", 100)]), &[0], 4);
        while reading.read_shared(log.end(), &log) {}
        reading.read_detached(log.end(), &log);
        let mut room = 0usize;
        let starts = reading.take_startable(0, |_| (room < 3).then(|| room += 1));
        assert_eq!(starts.iter().map(|(s, _)| s.offset).collect::<Vec<_>>(), [0, 1, 2], "three slots, three starts");
        assert!(reading.any_full());
        let window = &reading.consumers.values().next().expect("consumer").window;
        assert_eq!((window.in_flight(), window.queued()), (3, 7), "the rest wait, admitted but not started");
        let none: Vec<(Start, ())> = reading.take_startable(0, |_| None);
        assert!(none.is_empty(), "still no room");
        let later = reading.take_startable(0, |_| Some(()));
        assert_eq!(later.len(), 7, "room again: the waiting ones start, in order");
        assert!(!reading.any_full());
    }

    #[test]
    fn a_window_sized_by_its_subscribers_capacity_admits_more_than_max_inflight() {
        let mut log = MemLog::default();
        for _ in 0..50 {
            log.append("a");
        }
        let mut reading = reading_with(&specs(&[("t1", "", 10)]), &[0], 8);
        assert_eq!(pump(&mut reading, &log).len(), 10, "max-inflight 10");
        reading.size_windows(|spec| spec.max_inflight.max(40));
        assert_eq!(pump(&mut reading, &log).len(), 30, "a capacity of 40: 30 more start");
    }

    #[test]
    fn consumers_that_keep_up_share_one_reader() {
        let mut log = MemLog::default();
        for _ in 0..10 {
            log.append("a");
        }
        let mut reading = reading_with(&specs(&[("t1", "", 100), ("t2", "", 100)]), &[0, 0], 4);
        let starts = pump(&mut reading, &log);
        assert_eq!(starts.len(), 20, "both consumers start every event");
        assert_eq!(attached(&reading), ["t1", "t2"], "both caught up and attached");
        assert_eq!(reading.shared_next, Some(10));
        settle_all(&mut reading, &starts);

        log.reads.borrow_mut().clear();
        for _ in 0..10 {
            log.append("a");
        }
        let starts = pump(&mut reading, &log);
        assert_eq!(starts.len(), 20);
        let reads = log.reads.borrow();
        assert_eq!(reads.keys().copied().collect::<Vec<_>>(), (10..20).collect::<Vec<_>>());
        assert!(reads.values().all(|n| *n == 1), "each new event is read once for both: {reads:?}");
    }

    #[test]
    fn a_full_window_detaches_its_consumer_and_the_others_go_on() {
        let mut log = MemLog::default();
        let mut reading = reading_with(&specs(&[("fast", "", 100), ("slow", "", 2)]), &[0, 0], 100);
        pump(&mut reading, &log);
        assert_eq!(attached(&reading), ["fast", "slow"], "an empty stream: both attach at 0");
        for _ in 0..10 {
            log.append("a");
        }
        let starts = pump(&mut reading, &log);
        let count = |name: &str| starts.iter().filter(|s| name_of(&s.cursor) == name).count();
        assert_eq!((count("fast"), count("slow")), (10, 2), "the slow window holds two");
        assert_eq!(attached(&reading), ["fast"], "slow reads alone from its first event that did not fit");
        let slow_cursor = all_cursor(&reading, "slow");
        assert_eq!(reading.consumers[&slow_cursor].private_next, 2);

        // The slow subscriber answers: it reads on its own, two at a time, and attaches again at the end.
        let mut slow: Vec<Start> = starts.into_iter().filter(|s| name_of(&s.cursor) == "slow").collect();
        let mut delivered = Vec::new();
        while !slow.is_empty() {
            delivered.extend(slow.iter().map(|s| s.offset));
            settle_all(&mut reading, &slow);
            slow = pump(&mut reading, &log);
        }
        assert_eq!(delivered, (0..10).collect::<Vec<_>>(), "every event once, in order");
        assert_eq!(attached(&reading), ["fast", "slow"]);
    }

    #[test]
    fn a_consumer_that_starts_ahead_holds_the_shared_reader_until_it_attaches() {
        let mut log = MemLog::default();
        for _ in 0..10 {
            log.append("a");
        }
        let all = specs(&[("early", "", 1000), ("late", "", 1000)]);
        let mut reading = reading_with(&all[..1], &[0], 100);
        pump(&mut reading, &log);
        assert_eq!(reading.shared_next, Some(10));
        for _ in 10..30 {
            log.append("a");
        }
        // `late` starts at its committed offset 15, ahead of the shared reader.
        reading.add(all[1].clone(), start_at(15), 0);
        reading.finish_update();
        assert!(reading.read_shared(log.end(), &log));
        assert_eq!(reading.shared_next, Some(15), "the shared reader stops where `late` waits");
        let starts = pump(&mut reading, &log);
        let late: Vec<u64> = starts.iter().filter(|s| name_of(&s.cursor) == "late").map(|s| s.offset).collect();
        assert_eq!(late, (15..30).collect::<Vec<_>>(), "nothing before its start, everything after");
        let early: Vec<u64> = starts.iter().filter(|s| name_of(&s.cursor) == "early").map(|s| s.offset).collect();
        assert_eq!(early, (10..30).collect::<Vec<_>>());
        assert_eq!(attached(&reading), ["early", "late"]);
        assert_eq!(reading.shared_next, Some(30));
    }

    #[test]
    fn a_replay_restarts_the_consumer_at_its_target_and_ignores_the_old_deliveries() {
        let mut log = MemLog::default();
        for _ in 0..5 {
            log.append("a");
        }
        let all = specs(&[("t", "", 100)]);
        let mut reading = reading_with(&all, &[0], 100);
        let old = pump(&mut reading, &log);
        assert_eq!(old.len(), 5);
        let cursor = all[0].cursor.clone();
        let stored = BTreeMap::from([(stats::stat_key(&cursor, stats::REPLAY), 2 + 1)]);
        let (replayed, commits) = reading.apply_replays(&stored);
        assert_eq!(replayed, std::slice::from_ref(&cursor));
        assert_eq!(
            commits,
            [
                OffsetCommit { cursor: cursor.clone(), offset: 2, reset: true },
                OffsetCommit { cursor: stats::stat_key(&cursor, stats::REPLAY), offset: 0, reset: true },
            ]
        );
        let first = &old[0];
        assert_eq!(
            reading.settle(&first.cursor, first.generation, first.offset, Settlement::Delivered { attempts: 1 }),
            None,
            "a delivery of the old incarnation changes nothing"
        );
        let again: Vec<u64> = pump(&mut reading, &log).iter().map(|s| s.offset).collect();
        assert_eq!(again, [2, 3, 4]);
        let committed = reading.commits(&replayed.into_iter().collect(), commits);
        assert!(
            !committed.commits.iter().any(|c| c.cursor == cursor && !c.reset),
            "a replayed consumer's watermark is not committed over its replay: {:?}",
            committed.commits
        );
    }

    #[test]
    fn the_watermark_is_committed_only_when_it_moves() {
        let mut log = MemLog::default();
        for event_type in ["a", "b", "a"] {
            log.append(event_type);
        }
        let all = specs(&[("t", "a", 100)]);
        let mut reading = reading_with(&all, &[0], 100);
        let starts = pump(&mut reading, &log);
        assert_eq!(starts.iter().map(|s| s.offset).collect::<Vec<_>>(), [0, 2], "the filter keeps type a");
        let offset_commits =
            |c: &Commits| c.commits.iter().filter(|c| !c.cursor.contains('!')).map(|c| c.offset).collect::<Vec<_>>();
        let first = reading.commits(&HashSet::new(), Vec::new());
        assert_eq!(offset_commits(&first), [0], "nothing settled: the watermark is the start");
        reading.committed(first);
        assert_eq!(offset_commits(&reading.commits(&HashSet::new(), Vec::new())), Vec::<u64>::new());
        settle_all(&mut reading, &starts[..1]);
        let second = reading.commits(&HashSet::new(), Vec::new());
        assert_eq!(offset_commits(&second), [2], "offset 1 did not match, 2 is still in flight");
        reading.committed(second);
        settle_all(&mut reading, &starts[1..]);
        assert_eq!(offset_commits(&reading.commits(&HashSet::new(), Vec::new())), [3]);
    }

    #[test]
    fn regression_a_previous_leaders_in_flight_gauge_written_after_the_start_is_reset() {
        let mut log = MemLog::default();
        log.append("a");
        let all = specs(&[("t", "", 100)]);
        let cursor = all[0].cursor.clone();
        let mut reading = reading_with(&all, &[0], 100);
        let starts = pump(&mut reading, &log);
        settle_all(&mut reading, &starts);
        let first = reading.commits(&HashSet::new(), Vec::new());
        reading.committed(first);
        assert!(reading.commits(&HashSet::new(), Vec::new()).commits.is_empty(), "all committed");
        // The previous leader's last commit lands now: 8 in flight, an older oldest-pending time.
        let mut stored: BTreeMap<String, u64> = BTreeMap::from([(cursor.clone(), 1)]);
        stored.insert(stats::stat_key(&cursor, stats::IN_FLIGHT), 8);
        stored.insert(stats::stat_key(&cursor, stats::OLDEST_PENDING_ARRIVAL_MS), 5);
        stored.insert(stats::stat_key(&cursor, stats::DELIVERED), 1);
        reading.observe_stored_stats(&stored);
        let corrected = reading.commits(&HashSet::new(), Vec::new());
        let gauges: BTreeMap<&str, (u64, bool)> =
            corrected.commits.iter().map(|c| (c.cursor.as_str(), (c.offset, c.reset))).collect();
        assert_eq!(gauges.get(stats::stat_key(&cursor, stats::IN_FLIGHT).as_str()), Some(&(0, true)));
        assert_eq!(gauges.get(stats::stat_key(&cursor, stats::OLDEST_PENDING_ARRIVAL_MS).as_str()), Some(&(0, true)));
        assert_eq!(gauges.len(), 2, "only the gauges that differ: {gauges:?}");
        reading.committed(corrected);
        let mut stored_now = stored.clone();
        stored_now.insert(stats::stat_key(&cursor, stats::IN_FLIGHT), 0);
        stored_now.insert(stats::stat_key(&cursor, stats::OLDEST_PENDING_ARRIVAL_MS), 0);
        reading.observe_stored_stats(&stored_now);
        assert!(reading.commits(&HashSet::new(), Vec::new()).commits.is_empty(), "stored matches: nothing to write");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Append(Vec<bool>),
        Pump,
        Settle(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(any::<bool>(), 1..12).prop_map(Op::Append),
            Just(Op::Pump),
            (0usize..8).prop_map(Op::Settle),
        ]
    }

    proptest! {
        /// Whatever the interleaving of appends, reads and settlements, and whatever the window sizes and read
        /// batch, each consumer starts every event that matches it exactly once, in log order, and its
        /// watermark ends at the end of the stream.
        #[test]
        fn every_matching_event_starts_once_per_consumer_in_order(
            ops in prop::collection::vec(op(), 1..40),
            windows in prop::collection::vec(1usize..6, 3),
            read_batch in 1usize..7,
        ) {
            let all = specs(&[("any", "", windows[0]), ("only-a", "a", windows[1]), ("only-b", "b", windows[2])]);
            let mut reading = reading_with(&all, &[0, 0, 0], read_batch);
            let mut log = MemLog::default();
            let mut running: VecDeque<Start> = VecDeque::new();
            let mut started: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut run = |reading: &mut Reading, log: &MemLog, running: &mut VecDeque<Start>| {
                for start in pump(reading, log) {
                    started.entry(name_of(&start.cursor).to_string()).or_default().push(start.offset);
                    running.push_back(start);
                }
            };
            for op in ops {
                match op {
                    Op::Append(types) => types.iter().for_each(|a| log.append(if *a { "a" } else { "b" })),
                    Op::Pump => run(&mut reading, &log, &mut running),
                    Op::Settle(n) => {
                        let settled: Vec<Start> = (0..n).filter_map(|_| running.pop_front()).collect();
                        settle_all(&mut reading, &settled);
                    }
                }
            }
            // Drain: settle and pump until nothing is left.
            loop {
                run(&mut reading, &log, &mut running);
                if running.is_empty() {
                    break;
                }
                let settled: Vec<Start> = running.drain(..).collect();
                settle_all(&mut reading, &settled);
            }
            let types: Vec<&str> = log.events.iter().map(|e| e.get_str("type").unwrap_or("")).collect();
            for (name, wanted) in [("any", None), ("only-a", Some("a")), ("only-b", Some("b"))] {
                let expected: Vec<u64> = (0..log.end()).filter(|o| wanted.is_none_or(|t| types[*o as usize] == t)).collect();
                prop_assert_eq!(started.get(name).cloned().unwrap_or_default(), expected, "{}", name);
            }
            let watermarks: Vec<u64> = reading.commits(&HashSet::new(), Vec::new()).commits.iter()
                .filter(|c| !c.cursor.contains('!')).map(|c| c.offset).collect();
            prop_assert_eq!(watermarks, vec![log.end(); 3]);
        }
    }
}
