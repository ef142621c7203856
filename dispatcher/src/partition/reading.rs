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
use crate::delivery::sender::batch_member_bound;
use crate::delivery::{MAX_DELIVERY_BATCH_BYTES, Settlement};
use crate::filter::FilterIndex;
use crate::rate::TokenBucket;
use crate::stats::{self, CursorStats};
use crate::window::Window;

use super::resume::{self, Resume};

/// Read batches a detached consumer reads per [`Reading::read_detached`] call (the shared reader's budget is
/// the shell's, per pump).
pub(crate) const PRIVATE_READS_PER_CALL: usize = 64;

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
    /// What the dispatcher before this one had settled past the start (skipped until the reader passes it).
    resume: Option<Resume>,
}

impl Consumer {
    /// The commits of the gauges of this consumer once it stops here: nothing in flight, pending or held.
    pub(crate) fn stopped_stat_commits(&self) -> Vec<OffsetCommit> {
        self.stats.stopped().commits(&self.spec.cursor, &self.committed_stats)
    }

    /// Moves the private read position; what was read ahead no longer follows it.
    fn set_private_next(&mut self, offset: u64) {
        self.private_next = offset;
        self.lookahead.clear();
        self.lookahead_next = 0;
    }

    /// What this consumer hands to the next dispatcher beside its watermark: its pending offsets, and what an
    /// earlier hand-over still holds that it has not read yet.
    pub(crate) fn hand_over(&self) -> Option<Resume> {
        let (watermark, pending, scanned_to) =
            (self.window.watermark(), self.window.pending_offsets(), self.window.scanned_to());
        match &self.resume {
            Some(resume) => resume.merged(watermark, pending, scanned_to),
            None => Resume::of_window(watermark, pending, scanned_to),
        }
    }

    /// A reader resuming from a hand-over that has passed its last held offset goes on from where the
    /// dispatcher before stopped scanning.
    fn pass_resume(&mut self) {
        let Some(resume) = self.resume.take_if(|resume| resume.passed(self.private_next)) else { return };
        if resume.to() > self.private_next {
            self.window.skip_to(resume.to());
            self.set_private_next(resume.to());
        }
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
    /// What the dispatcher before had settled past `offset`.
    pub(crate) resume: Option<Resume>,
}

/// One delivery's events: one inline (Knative's one event per request), a batch on the heap.
pub(crate) type DeliveryEvents = smallvec::SmallVec<[(u64, Arc<CloudEvent>); 1]>;

/// A delivery to spawn: one event, or a batch for a consumer with `delivery_batch`.
pub(crate) struct Start {
    pub(crate) cursor: String,
    pub(crate) generation: u64,
    /// At least one, in log order.
    pub(crate) events: DeliveryEvents,
    /// A batch's: the most bytes its JSON array body takes (`sender::batch_member_bound` summed as it was filled).
    pub(crate) json_bytes_bound: usize,
}

impl Start {
    /// The first event's offset.
    pub(crate) fn offset(&self) -> u64 {
        self.events.first().map_or(0, |(offset, _)| *offset)
    }

    #[cfg(test)]
    pub(crate) fn offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.events.iter().map(|(offset, _)| *offset)
    }
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
                resume: start.resume,
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
        let first = events.first().map_or(next, |(offset, _, _)| *offset);
        if first > shared {
            // Retention trimmed `[shared, first)` before it was read: for each consumer reading here that had
            // not passed it, those events are never delivered.
            for consumer in self.consumers.values().filter(|c| c.attached && !c.spec.paused) {
                note_trimmed_unread(&consumer.spec, first.saturating_sub(shared.max(consumer.window.scanned_to())));
            }
        }
        for (offset, arrival_ms, event) in events {
            let consumers = &self.consumers;
            let matched = self.index.matching_noting_errors(&EventView(&event), |cursor, error| {
                // Only for a consumer this reader reads for here (a detached one notes its own errors).
                if let Some(consumer) = consumers.get(cursor)
                    && consumer.attached
                    && consumer.window.scanned_to() <= offset
                {
                    note_filter_error(&consumer.spec, offset, &error);
                }
            });
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

    /// Every detached consumer reads on its own (see [`Reading::read_private`]); answers whether one stopped at
    /// its read budget with more to read (the caller calls again soon, after letting other work run).
    pub(crate) fn read_detached(&mut self, end: u64, log: &impl ReadLog) -> bool {
        let detached: Vec<String> = self.detached.iter().cloned().collect();
        let mut more = false;
        for cursor in detached {
            more |= self.read_private(&cursor, end, log);
        }
        more
    }

    /// A detached consumer reads on its own until its window is full, it reaches the shared reader (and
    /// attaches), the end of the stream, or [`PRIVATE_READS_PER_CALL`] batches; answers whether it stopped at
    /// that budget with more to read. Unbounded, a replay of millions of events with a filter matching few of
    /// them read the whole range in one call, and the partition's deliveries, commits and control waited.
    fn read_private(&mut self, cursor: &str, end: u64, log: &impl ReadLog) -> bool {
        if self.consumers.get(cursor).is_none_or(|c| c.spec.paused) {
            return false;
        }
        let mut budget = PRIVATE_READS_PER_CALL;
        let mut more = false;
        loop {
            let Some(consumer) = self.consumers.get_mut(cursor) else { return false };
            consumer.pass_resume();
            let from = consumer.private_next;
            // A consumer resuming from a hand-over does not attach before it has passed it: the shared reader
            // would admit what the dispatcher before had settled.
            let target = match self.shared_next {
                Some(shared) if shared > from && consumer.resume.is_none() => shared,
                _ => end,
            };
            if from >= target || !consumer.window.has_room() {
                break;
            }
            if budget == 0 {
                more = true;
                break;
            }
            budget -= 1;
            let (mut events, next) = if consumer.lookahead_next > from {
                let Some(consumer) = self.consumers.get_mut(cursor) else { return false };
                (std::mem::take(&mut consumer.lookahead), std::mem::take(&mut consumer.lookahead_next))
            } else {
                let want = ((target - from) as usize).min(self.read_batch);
                let Some((events, next)) = log.read(from, want) else { return false };
                let first = events.first().map_or(next, |(offset, _, _)| *offset);
                if let Some(consumer) = self.consumers.get(cursor) {
                    note_trimmed_unread(&consumer.spec, first.saturating_sub(from));
                }
                (VecDeque::from(events), next)
            };
            let Some(consumer) = self.consumers.get_mut(cursor) else { return false };
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
                if consumer.resume.as_ref().is_some_and(|resume| resume.skips(offset)) {
                    continue;
                }
                let (matched, error) = consumer.spec.filter.matches_noting_errors(&EventView(&event));
                if let Some(error) = error {
                    // An evaluation error is no match (the Subscriptions API), and says why nothing matches: a
                    // Trigger's `INT(seq) > 10` over events whose `seq` is not a number (Knative logs these).
                    note_filter_error(&consumer.spec, offset, &error);
                }
                if !matched {
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
            consumer.pass_resume();
            if consumer.resume.is_some() {
                return more;
            }
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
        more
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
            let max_events = consumer.spec.delivery_batch.unwrap_or(1);
            let mut ready = consumer.window.ready().collect::<Vec<u64>>().into_iter().peekable();
            while ready.peek().is_some() {
                let Some(slot) = admit(&consumer.spec) else {
                    self.full.insert(cursor.clone());
                    break;
                };
                let mut batch = BatchFill::new(max_events, consumer.spec.delivery_batch.is_some());
                let mut throttled = false;
                while let Some(&offset) = ready.peek() {
                    match batch.add(consumer, offset, now_ms) {
                        Fill::Added => {
                            ready.next();
                            // An ordered window's key run goes in the same request, in log order.
                            let mut last = offset;
                            while max_events > 1
                                && let Some(next) = consumer.window.successor(last)
                            {
                                match batch.add(consumer, next, now_ms) {
                                    Fill::Added => last = next,
                                    Fill::Full | Fill::Missing => break,
                                    Fill::Throttled => {
                                        throttled = true;
                                        break;
                                    }
                                }
                            }
                        }
                        Fill::Full => break,
                        Fill::Missing => {
                            ready.next();
                        }
                        Fill::Throttled => throttled = true,
                    }
                    if throttled {
                        break;
                    }
                }
                if throttled {
                    self.throttled.insert(cursor.clone());
                }
                if batch.events.is_empty() {
                    break;
                }
                let (mut events, json_bytes_bound) = (batch.events, batch.bytes);
                events.sort_unstable_by_key(|(offset, _)| *offset);
                let generation = consumer.generation;
                starts.push((Start { cursor: cursor.clone(), generation, events, json_bytes_bound }, slot));
                if throttled {
                    break;
                }
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
        if !self.dirty.contains(cursor) {
            self.dirty.insert(cursor.to_string());
        }
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
            consumer.resume = None;
            self.next_generation += 1;
            consumer.generation = self.next_generation;
            self.detached.insert(cursor.clone());
            commits.push(OffsetCommit { cursor: cursor.clone(), offset: target, reset: true });
            commits.push(OffsetCommit { cursor: stats::stat_key(&cursor, stats::REPLAY), offset: 0, reset: true });
            commits.push(Resume::clear(&cursor));
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
    /// commits the replay made) and its statistics where they changed. `stopping`: the dispatcher stops, its
    /// deliveries are dropped, and the gauges say that none is in flight or held here (a next leader's dispatcher
    /// sets its own).
    pub(crate) fn commits(
        &mut self,
        replayed: &HashSet<String>,
        mut commits: Vec<OffsetCommit>,
        stopping: bool,
    ) -> Commits {
        self.sync_attached();
        let mut stat_updates = Vec::new();
        let mut held_budget = resume::MAX_HELD_PER_COMMIT;
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
            if stopping {
                consumer.stats = consumer.stats.stopped();
                // What settled past the watermark, so that the next dispatcher does not deliver it again.
                if let Some(resume) = consumer.hand_over().filter(|resume| resume.held() <= held_budget) {
                    held_budget -= resume.held();
                    commits.extend(resume.commits(cursor, watermark));
                }
            }
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

/// One delivery's events being gathered: up to `max_events`, and for a batch up to
/// [`MAX_DELIVERY_BATCH_BYTES`] (an event larger than that goes alone), each with a token of the consumer's rate
/// limit.
struct BatchFill {
    max_events: usize,
    batched: bool,
    bytes: usize,
    events: DeliveryEvents,
}

enum Fill {
    Added,
    Full,
    Throttled,
    /// Not an event this consumer holds (cannot happen: admitted events are kept until settled).
    Missing,
}

impl BatchFill {
    fn new(max_events: usize, batched: bool) -> Self {
        BatchFill { max_events, batched, bytes: 0, events: DeliveryEvents::new() }
    }

    /// Starts `offset` (ready, or the successor of the last event added) into this delivery if it fits.
    fn add(&mut self, consumer: &mut Consumer, offset: u64, now_ms: u64) -> Fill {
        if self.events.len() >= self.max_events {
            return Fill::Full;
        }
        let Some(pending) = consumer.pending.get(&offset) else { return Fill::Missing };
        let bytes = if self.batched { batch_member_bound(&pending.event) } else { 0 };
        if !self.events.is_empty() && self.bytes + bytes > MAX_DELIVERY_BATCH_BYTES {
            return Fill::Full;
        }
        // A ready event, or the next of the key run this batch carries.
        let behind =
            self.events.last().map(|(last, _)| *last).filter(|last| consumer.window.successor(*last) == Some(offset));
        if behind.is_none() && !consumer.window.is_ready(offset) {
            return Fill::Full;
        }
        if let Some(bucket) = &mut consumer.bucket
            && !bucket.try_take(now_ms)
        {
            return Fill::Throttled;
        }
        match behind {
            Some(last) => consumer.window.start_successor(last).is_some(),
            None => consumer.window.start(offset),
        };
        self.bytes += bytes;
        self.events.push((offset, pending.event.clone()));
        Fill::Added
    }
}

#[cfg(test)]
mod tests;

/// Counts a filter's CESQL evaluation error for its consumer, and says it at debug level.
/// Counts the `skipped` events retention trimmed before `spec`'s consumer read them (a paused or lagging consumer
/// below the stream's start continues at the start): they are never delivered. Regression: nothing said so; a
/// paused Trigger's backlog went to zero on resume with nothing delivered.
fn note_trimmed_unread(spec: &ConsumerSpec, skipped: u64) {
    if skipped == 0 {
        return;
    }
    metrics::counter!("sluice_dispatch_trimmed_unread_total", "consumer" => spec.name.clone(),
        "namespace" => spec.namespace.clone())
    .increment(skipped);
    tracing::warn!(consumer = %spec.cursor, skipped, "retention trimmed events before this consumer read them: not delivered");
}

fn note_filter_error(spec: &ConsumerSpec, offset: u64, error: &sluice_cloudevent::filter::EvalError) {
    let kind = match error {
        sluice_cloudevent::filter::EvalError::Math(_) => "math",
        sluice_cloudevent::filter::EvalError::Cast(_) => "cast",
        sluice_cloudevent::filter::EvalError::MissingFunction(_) => "missing_function",
        sluice_cloudevent::filter::EvalError::FunctionEvaluation(_) => "function_evaluation",
        sluice_cloudevent::filter::EvalError::MissingAttribute(_) => "missing_attribute",
        sluice_cloudevent::filter::EvalError::Generic(_) => "generic",
    };
    metrics::counter!("sluice_filter_evaluation_errors_total", "consumer" => spec.name.clone(),
        "namespace" => spec.namespace.clone(), "kind" => kind)
    .increment(1);
    tracing::debug!(consumer = %spec.cursor, offset, %error, "the filter's CESQL expression failed on an event: no match");
}
