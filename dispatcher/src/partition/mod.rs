//! One stream partition's dispatch, on the node that leads the partition: the consumers (Triggers of a Broker,
//! Subscriptions of a Channel) reading it, their windows, their deliveries and their offset commits.
//!
//! What flows in: the consumers of the stream (from the supervisor), the partition's applied log, delivery
//! settlements, replay requests (stored as cursors), a commit tick. What flows out: delivery tasks, and offset
//! and statistics commits through the partition's Raft group.
//!
//! The decisions (shared and private readers, attach and detach, admission into windows, rate limits,
//! replays, what to commit) are [`reading`]'s, pure and tested over an in-memory log; this task reads the log
//! for them, runs and aborts deliveries, and commits.
//!
//! The deliveries run inside this task (polled beside its other inputs), not as tasks of their own: a spawned
//! delivery cost a task hand-off when it started and another when it ended, on every event. Their sockets are
//! driven by the HTTP client's connection tasks, so what runs here is each delivery's own bookkeeping.
//!
//! Offsets: every `commit_interval` the watermark of each consumer (below it everything is settled or did not
//! match) is committed through the partition's Raft group; also when the dispatcher stops. A crash redelivers
//! at most what settled since the last commit, plus what was in flight.

mod gauges;
mod lookahead;
mod reading;
mod resume;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{AbortHandle, Abortable, Aborted, BoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use sluice_broker::OffsetCommit;
use sluice_cloudevent::{CloudEvent, EventView};
use tokio::sync::mpsc;

use crate::capacity::{DeliverySlot, host_of};
use crate::consumer::{ConsumerSpec, InitialOffset, cursor_prefix};
use crate::delivery::task::{
    DeliveryContext, Settled, Settlement, dead_letter_after_panic, deliver, deliver_batch, now_ms,
};
use crate::stats::{self, CursorStats};
use lookahead::Lookahead;
use reading::{Consumer, ConsumerStart, ReadEvent, ReadLog, Reading, Start};
use resume::Resume;

/// A window sized by its subscriber's capacity holds at most this many events (memory).
const MAX_WINDOW_FOR_CAPACITY: usize = 1_000;

/// Under the test-only fault `first-consumer-start-fails` (feature `planted-bugs`): whether this is the first
/// start of `cursor` in this process, which then fails as if its offset could not be read.
#[cfg(feature = "planted-bugs")]
fn first_start_of(cursor: &str) -> bool {
    static STARTED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    STARTED.lock().is_ok_and(|mut started| started.insert(cursor.to_string()))
}

/// The event type that, under the planted bug `dispatcher-panic` (feature `planted-bugs`), makes the partition
/// dispatcher that is about to start its delivery panic, outside any delivery: once per process.
#[cfg(feature = "planted-bugs")]
pub(crate) const PLANTED_DISPATCHER_PANIC_TYPE: &str = "sluice.test.dispatcher-panic";

#[cfg(feature = "planted-bugs")]
fn first_dispatcher_panic() -> bool {
    static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    sluice_broker::planted_bug("dispatcher-panic") && !PANICKED.swap(true, std::sync::atomic::Ordering::SeqCst)
}

/// Batches the shared reader reads per pump (yielding between them); what is left is read in the next pump,
/// after the control messages, the commit tick and the deliveries had their turn.
const SHARED_READS_PER_PUMP: usize = 64;

/// How long a handover waits for the running deliveries (the broker gives the whole handover 1 s).
const HANDOVER_DRAIN: Duration = Duration::from_millis(500);

/// Backlog reports towards a full subscriber, at most this often (besides one every commit tick).
const BACKLOG_REPORT_MIN_MS: u64 = 50;

/// What a delivery answers: (cursor, generation, each event's offset and settlement).
type DeliveryResult = (String, u64, Settled);

/// A running delivery; an aborted one answers `Aborted` (and is dropped, with its slot at the subscriber), one
/// that panicked answers `None`.
type RunningDelivery = Abortable<BoxFuture<'static, Option<DeliveryResult>>>;

/// How a running delivery ended.
type Ended = Result<Option<DeliveryResult>, Aborted>;

pub(crate) enum Control {
    /// The consumers of this stream now; `live_uids` are the uids of every Trigger and Subscription that
    /// exists (cursors of others are deleted).
    Update {
        consumers: Vec<Arc<ConsumerSpec>>,
        live_uids: Arc<HashSet<String>>,
    },
    /// A planned leadership transfer is about to start: let the running deliveries settle (bounded), commit
    /// every consumer's offset, answer, and end (the next leader's dispatcher goes on from the commit).
    HandOver(tokio::sync::oneshot::Sender<()>),
    Stop,
}

#[derive(Clone, Debug)]
pub(crate) struct PartitionSettings {
    pub commit_interval: Duration,
    /// Records per read.
    pub read_batch: usize,
    pub partitions: u32,
    /// The term in which this node led the partition when the dispatcher started: every commit is fenced by
    /// it (`Node::commit_offsets_in_term`), so that one sent after this node was deposed is not written.
    pub leader_term: u64,
}

pub(crate) struct PartitionDispatcher {
    ctx: DeliveryContext,
    stream: String,
    settings: PartitionSettings,
    reading: Reading,
    deliveries: FuturesUnordered<RunningDelivery>,
    /// Running deliveries by consumer and offset, to abort when the consumer stops, changes or replays.
    running: HashMap<String, HashMap<u64, AbortHandle>>,
    /// `sluice_dispatch_settled_total` by consumer and outcome, kept: its labels are owned strings, built and
    /// looked up in the registry on every settlement otherwise.
    settled_counters: HashMap<String, Vec<(&'static str, metrics::Counter)>>,
    last_backlog_report_ms: u64,
    /// Per consumer with a limited subscriber: the matching records past its window (its backlog).
    lookahead: HashMap<String, Lookahead>,
    /// The windows are sized to the subscribers' capacity when this is set: when consumers change, capacity
    /// grows (the wake-up) and at every commit tick (a shrink needs no hurry: starts check the limit). Sizing
    /// at every pump asked every consumer's limit per batch of events, a quarter of a node's CPU with 1,000
    /// Triggers (docs/benchmarks.md, session 11).
    windows_stale: bool,
    /// Consumers whose start failed (their offset could not be read), tried again at every commit tick.
    unstarted: BTreeMap<String, Arc<ConsumerSpec>>,
    /// A commit came back stale: this node no longer leads the partition in the term the dispatcher started
    /// in. The dispatcher stops (the supervisor starts another where the partition is led now).
    deposed: bool,
}

impl PartitionDispatcher {
    /// Starts the task; it runs until [`Control::Stop`] or the sender is dropped.
    pub(crate) fn spawn(
        ctx: DeliveryContext,
        stream: String,
        settings: PartitionSettings,
    ) -> (mpsc::Sender<Control>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16);
        let dispatcher = PartitionDispatcher {
            reading: Reading::new(settings.read_batch, settings.partitions),
            ctx,
            stream,
            settings,
            deliveries: FuturesUnordered::new(),
            running: HashMap::new(),
            settled_counters: HashMap::new(),
            last_backlog_report_ms: 0,
            lookahead: HashMap::new(),
            windows_stale: true,
            unstarted: BTreeMap::new(),
            deposed: false,
        };
        (tx, tokio::spawn(dispatcher.run(rx)))
    }

    fn partition(&self) -> u32 {
        self.ctx.partition
    }

    async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let partition = self.partition();
        tracing::info!(stream = %self.stream, partition, "dispatch started");
        let mut applied = match self.ctx.node.watch_applied(partition) {
            Ok(applied) => applied,
            Err(e) => {
                tracing::error!(stream = %self.stream, partition, error = %e, "cannot watch the partition");
                return;
            }
        };
        let mut commit_tick = tokio::time::interval(self.settings.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Room at a full subscriber (capacity grew, a slot was given back) wakes this dispatcher.
        let mut room = self.ctx.limits.as_ref().map(|limits| limits.wake());
        while !self.deposed {
            let more_to_read = self.pump().await;
            // The deliveries are polled in every turn, whichever branch the select below takes: the ones `pump`
            // just started send their requests, the ones that ended settle and give back their slots, aborted
            // ones go. What this settles may free room, so the select then does not wait (its last branch).
            let settled_before_select = self.settle_ready();
            let wake_at = self.reading.next_rate_wakeup(now_ms());
            // Biased, in this order: the control messages, the commit tick and room at a subscriber never wait
            // behind deliveries that keep ending under load; the applied log's news can wait, as every pump
            // reads up to the stream's end anyway.
            tokio::select! {
                biased;
                message = control.recv() => match message {
                    Some(Control::Update { consumers, live_uids }) => {
                        self.windows_stale = true;
                        self.update(consumers, &live_uids).await;
                    }
                    Some(Control::HandOver(done)) => {
                        self.settle_running(HANDOVER_DRAIN).await;
                        self.deliveries.clear();
                        self.commit(true).await;
                        let _ = done.send(());
                        tracing::info!(stream = %self.stream, partition, "dispatch handed over");
                        break;
                    }
                    Some(Control::Stop) | None => break,
                },
                _ = commit_tick.tick() => {
                    self.windows_stale = true;
                    self.start_unstarted();
                    self.commit(false).await;
                    self.publish_gauges();
                    self.report_backlog();
                }
                changed = async { room.as_mut()?.changed().await.ok() }, if room.is_some() => {
                    self.windows_stale = true;
                    if changed.is_none() {
                        room = None;
                    }
                }
                Some(ended) = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    self.settle_ended(ended);
                    // Every other delivery that has ended too, so that one pump admits and starts for all of them.
                    self.settle_ready();
                }
                changed = applied.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = sleep_until_ms(wake_at), if wake_at.is_some() => {}
                // Settled deliveries may free room, and a reader at its budget goes on: neither waits for news.
                () = std::future::ready(()), if settled_before_select > 0 || more_to_read => {}
            }
        }
        self.deliveries.clear();
        if !self.deposed {
            self.commit(true).await;
        }
        for consumer in self.reading.consumers.values() {
            gauges::clear(&consumer.spec, partition);
        }
        tracing::info!(stream = %self.stream, partition, "dispatch stopped");
    }

    /// Applies a new set of consumers: new ones start from their committed (or initial) offset, changed ones
    /// restart from their watermark, removed ones stop.
    async fn update(&mut self, specs: Vec<Arc<ConsumerSpec>>, live_uids: &HashSet<String>) {
        self.reading.sync_attached();
        let stored: BTreeMap<String, u64> =
            self.ctx.node.committed_offsets(self.partition()).unwrap_or_default().into_iter().collect();
        let wanted: HashMap<&str, &Arc<ConsumerSpec>> = specs.iter().map(|s| (s.cursor.as_str(), s)).collect();
        let removed: Vec<String> =
            self.reading.consumers.keys().filter(|cursor| !wanted.contains_key(cursor.as_str())).cloned().collect();
        // A changed consumer restarts from its watermark: its deliveries running now end first (bounded, as a
        // handover's), so that a slow one is not aborted and sent again beside its successor. Regression: any
        // edit (an annotation, a pause) aborted them at once, and under ordered delivery the next event of a key
        // could reach the subscriber while an attempt of the one before it was still being handled.
        let changed: Vec<String> = specs
            .iter()
            .filter(|spec| self.reading.consumers.get(&spec.cursor).is_some_and(|c| c.spec.version != spec.version))
            .map(|spec| spec.cursor.clone())
            .collect();
        self.settle_running_of(&changed, HANDOVER_DRAIN).await;
        // The final offsets of the consumers that stop, committed together once the update is made.
        let mut final_commits = Vec::new();
        self.unstarted.retain(|cursor, _| wanted.contains_key(cursor.as_str()));
        for cursor in removed {
            self.settled_counters.remove(&cursor);
            if let Some(consumer) = self.reading.remove(&cursor) {
                final_commits.extend(self.stop_consumer(consumer));
            }
        }
        for spec in specs {
            let start = match self.reading.consumers.get(&spec.cursor) {
                Some(existing) if existing.spec.version == spec.version => continue,
                Some(_) => {
                    let Some(existing) = self.reading.remove(&spec.cursor) else { continue };
                    // What settled past the watermark is not delivered again by the changed consumer.
                    let start = ConsumerStart {
                        offset: existing.window.watermark(),
                        committed: existing.committed,
                        counters: existing.stats,
                        committed_stats: CursorStats::from_committed(&spec.cursor, &stored),
                        resume: existing.hand_over(),
                    };
                    final_commits.extend(self.stop_consumer(existing));
                    start
                }
                None => {
                    self.start_new(spec, &stored);
                    continue;
                }
            };
            tracing::info!(consumer = %spec.cursor, partition = self.partition(), offset = start.offset, "consumer starts");
            self.reading.add(spec, start, now_ms());
        }
        self.reading.finish_update();
        if !final_commits.is_empty() {
            let node = self.ctx.node.clone();
            let term = self.settings.leader_term;
            let (written, ended) =
                self.while_delivering(node.commit_offsets_in_term(self.partition(), term, final_commits)).await;
            match written {
                Ok(true) => {}
                Ok(false) => self.was_deposed(),
                Err(e) => {
                    tracing::warn!(stream = %self.stream, partition = self.partition(), error = %e, "final offset commit failed")
                }
            }
            ended.into_iter().for_each(|ended| self.settle_ended(ended));
        }
        self.collect_garbage(live_uids).await;
    }

    /// Starts a consumer new to this dispatcher from its committed (or initial) offset; one whose offset cannot
    /// be read now waits in `unstarted` and is tried again at every commit tick. It was left out until its
    /// consumers changed again, which for a Trigger applied once is never: its events waited in the log.
    fn start_new(&mut self, spec: Arc<ConsumerSpec>, stored: &BTreeMap<String, u64>) {
        let Some((offset, committed)) = self.starting_offset(&spec) else {
            metrics::counter!("sluice_dispatch_consumer_start_failures_total", "consumer" => spec.name.clone(), "namespace" => spec.namespace.clone()).increment(1);
            self.unstarted.insert(spec.cursor.clone(), spec);
            return;
        };
        self.unstarted.remove(&spec.cursor);
        let counters = CursorStats::from_committed(&spec.cursor, stored);
        // A planned hand-over stored what its dispatcher had settled past the committed offset.
        let resume = committed.and_then(|committed| Resume::stored(&spec.cursor, committed, stored));
        let resumes_to = resume.as_ref().map(Resume::to);
        let start = ConsumerStart { offset, committed, committed_stats: counters, counters, resume };
        tracing::info!(consumer = %spec.cursor, partition = self.partition(), offset, ?resumes_to, "consumer starts");
        self.reading.add(spec, start, now_ms());
    }

    /// Tries again to start the consumers whose start failed (`start_new`).
    fn start_unstarted(&mut self) {
        if self.unstarted.is_empty() {
            return;
        }
        let stored: BTreeMap<String, u64> =
            self.ctx.node.committed_offsets(self.partition()).unwrap_or_default().into_iter().collect();
        self.reading.sync_attached();
        for spec in self.unstarted.values().cloned().collect::<Vec<_>>() {
            self.start_new(spec, &stored);
        }
        self.reading.finish_update();
        self.windows_stale = true;
    }

    /// The committed offset, or else the initial one. The initial offset is derived from the consumer's
    /// `creationTimestamp` (or is the stream's start), so every leader derives the same one; it is committed
    /// with the next periodic commit.
    fn starting_offset(&self, spec: &ConsumerSpec) -> Option<(u64, Option<u64>)> {
        let node = &self.ctx.node;
        let partition = self.partition();
        #[cfg(feature = "planted-bugs")]
        if sluice_broker::planted_bug("first-consumer-start-fails") && first_start_of(&spec.cursor) {
            tracing::warn!(consumer = %spec.cursor, partition, "cannot read the committed offset (planted fault)");
            return None;
        }
        match node.committed_offset(partition, &spec.cursor) {
            Ok(Some(offset)) => return Some((offset, Some(offset))),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(consumer = %spec.cursor, partition, error = %e, "cannot read the committed offset");
                return None;
            }
        }
        let initial = match spec.initial {
            InitialOffset::Earliest => 0,
            InitialOffset::FromCreation { created_ms } => {
                match node.offset_for_time(&spec.stream, partition, created_ms) {
                    Ok(offset) => offset,
                    Err(e) => {
                        tracing::warn!(consumer = %spec.cursor, partition, error = %e, "cannot find the initial offset");
                        return None;
                    }
                }
            }
        };
        Some((initial, None))
    }

    /// Aborts a stopping consumer's deliveries; answers the commits of its watermark if that moved, and of
    /// its gauges, which no longer count deliveries here.
    fn stop_consumer(&mut self, consumer: Consumer) -> Vec<OffsetCommit> {
        let cursor = &consumer.spec.cursor;
        self.abort_running(cursor);
        gauges::clear(&consumer.spec, self.partition());
        let watermark = consumer.window.watermark();
        let mut commits = consumer.stopped_stat_commits();
        if consumer.committed.is_none_or(|c| watermark > c) {
            commits.push(OffsetCommit { cursor: cursor.clone(), offset: watermark, reset: false });
        }
        commits
    }

    /// Deletes the cursors of this stream whose Trigger or Subscription no longer exists, while the deliveries
    /// go on. Only once this node's copy of the metadata is confirmed current (a read index of the metadata
    /// group), and against that copy. Regression: a node back from an outage could lead a partition before its
    /// metadata had caught up, and deleted the cursor of a Trigger made meanwhile, which then started again
    /// from its creation time (every retained event since delivered again).
    async fn collect_garbage(&mut self, live_uids: &HashSet<String>) {
        let prefix = cursor_prefix(&self.stream);
        let Ok(committed) = self.ctx.node.committed_offsets(self.partition()) else { return };
        let unknown_owner = |cursor: &String, live: &HashSet<String>| {
            cursor.starts_with(&prefix) && !live.contains(stats::owner_uid(cursor))
        };
        let dead: Vec<String> =
            committed.into_iter().map(|(cursor, _)| cursor).filter(|cursor| unknown_owner(cursor, live_uids)).collect();
        if dead.is_empty() {
            return;
        }
        let node = self.ctx.node.clone();
        let (caught_up, ended) = self.while_delivering(node.catch_up_metadata()).await;
        ended.into_iter().for_each(|ended| self.settle_ended(ended));
        if let Err(e) = caught_up {
            tracing::debug!(stream = %self.stream, error = %e, "offsets of deleted consumers kept: the metadata is not confirmed current");
            return;
        }
        let live_now = crate::consumer::live_consumer_uids(&node);
        let dead: Vec<String> = dead.into_iter().filter(|cursor| unknown_owner(cursor, &live_now)).collect();
        if !dead.is_empty() {
            tracing::info!(stream = %self.stream, partition = self.partition(), cursors = ?dead, "deleting the offsets of deleted consumers");
            let node = self.ctx.node.clone();
            let (deleted, ended) = self.while_delivering(node.delete_offsets(self.partition(), dead)).await;
            if let Err(e) = deleted {
                tracing::warn!(error = %e, "deleting offsets failed");
            }
            ended.into_iter().for_each(|ended| self.settle_ended(ended));
        }
    }

    fn abort_running(&mut self, cursor: &str) {
        for handle in self.running.remove(cursor).unwrap_or_default().into_values() {
            handle.abort();
        }
    }

    /// Reads what can be read (up to a budget), admits matching events into the windows, and starts what may
    /// start; answers whether a reader stopped at its budget with more to read.
    async fn pump(&mut self) -> bool {
        let Ok(end) = self.ctx.node.end_offset(&self.stream, self.partition()) else { return false };
        // A subscriber that can take more than the consumer's `max-inflight` (a Knative Service scaled out)
        // gets a window as large as its capacity, so that new instances take load at once.
        if let Some(limits) = &self.ctx.limits
            && std::mem::take(&mut self.windows_stale)
        {
            self.reading.size_windows(|spec| match limits.limit(host_of(&spec.subscriber_uri)) {
                Some(capacity) => spec.max_inflight.max(capacity.min(MAX_WINDOW_FOR_CAPACITY)),
                None => spec.max_inflight,
            });
        }
        let log = NodeLog { node: &self.ctx.node, stream: &self.stream, partition: self.partition() };
        let mut more_to_read = true;
        for _ in 0..SHARED_READS_PER_PUMP {
            if !self.reading.read_shared(end, &log) {
                more_to_read = false;
                break;
            }
            tokio::task::yield_now().await;
        }
        let log = NodeLog { node: &self.ctx.node, stream: &self.stream, partition: self.partition() };
        more_to_read |= self.reading.read_detached(end, &log);
        let limits = self.ctx.limits.clone();
        let starts = self.reading.take_startable(now_ms(), |spec| match &limits {
            Some(limits) => limits.try_start(host_of(&spec.subscriber_uri)),
            None => Some(None),
        });
        for (start, slot) in starts {
            #[cfg(feature = "planted-bugs")]
            if start.events.iter().any(|(_, event)| event.get_str("type") == Some(PLANTED_DISPATCHER_PANIC_TYPE))
                && first_dispatcher_panic()
            {
                panic!("a planted bug in the dispatch of partition {}", self.partition());
            }
            let Some(spec) = self.reading.consumers.get(&start.cursor).map(|c| c.spec.clone()) else { continue };
            let ctx = self.ctx.clone();
            let first_offset = start.offset();
            let Start { cursor, generation, events, json_bytes_bound } = start;
            let running = self.running.entry(cursor.clone()).or_default();
            // Boxed: the delivery's state machine is large; the set moves a pointer.
            let (abort, registration) = AbortHandle::new_pair();
            let delivery: BoxFuture<'static, Option<DeliveryResult>> = Box::pin(async move {
                // The slot at the subscriber is held while the delivery is in flight (given back through a retry's
                // backoff), until it ends or is aborted.
                let mut slot = slot;
                let settled = match AssertUnwindSafe(deliver_start(&ctx, &spec, (&events, json_bytes_bound), &mut slot))
                    .catch_unwind()
                    .await
                {
                    Ok(settled) => settled,
                    Err(_) => {
                        // A bug: the events are dead-lettered, saying so, and this partition's other deliveries
                        // go on.
                        tracing::error!(consumer = %cursor, first_offset, events = events.len(), "a delivery panicked; dead-lettering its events");
                        metrics::counter!("sluice_dispatch_panics_total").increment(1);
                        let mut settled = Settled::with_capacity(events.len());
                        for (offset, event) in &events {
                            let dead_letter = dead_letter_after_panic(&ctx, &spec, *offset, event);
                            match AssertUnwindSafe(dead_letter).catch_unwind().await {
                                Ok(settlement) => settled.push((*offset, settlement)),
                                // Left in flight (unsettled) until the consumer restarts.
                                Err(_) => return None,
                            }
                        }
                        settled
                    }
                };
                Some((cursor, generation, settled))
            });
            self.deliveries.push(Abortable::new(delivery, registration));
            // A batch is aborted through its first offset (an abort always takes the consumer's whole set).
            running.insert(first_offset, abort);
        }
        // A subscriber without room: tell it (its autoscaler) what waits, now rather than at the next tick.
        if self.reading.any_full() && now_ms() >= self.last_backlog_report_ms + BACKLOG_REPORT_MIN_MS {
            self.report_backlog();
        }
        more_to_read
    }

    /// Reports, for each consumer whose subscriber limits its in-flight deliveries, the events waiting in the
    /// log for it: admitted and not started, plus those not read yet (counted as matching until read: an upper
    /// bound for filtered Triggers); for a batched consumer, the requests they make (a batch per slot).
    fn report_backlog(&mut self) {
        let Some(limits) = self.ctx.limits.clone() else { return };
        self.last_backlog_report_ms = now_ms();
        let end = self.ctx.node.end_offset(&self.stream, self.partition()).unwrap_or(0);
        let log = NodeLog { node: &self.ctx.node, stream: &self.stream, partition: self.partition() };
        let partition = self.partition();
        self.lookahead.retain(|cursor, _| self.reading.consumers.contains_key(cursor));
        for consumer in self.reading.consumers.values() {
            let spec = &consumer.spec;
            let host = host_of(&spec.subscriber_uri);
            if !limits.is_limited(host) {
                continue;
            }
            let window = &consumer.window;
            let ahead = self.lookahead.entry(spec.cursor.clone()).or_default();
            let (matched, unscanned) = if spec.paused {
                (0, 0)
            } else {
                ahead.scan(window.scanned_to(), end, &log, |event| spec.filter.matches(&EventView(event)))
            };
            let events = if spec.paused { 0 } else { window.queued() as u64 + matched + unscanned };
            // The subscriber's concurrency counts requests: a batched consumer needs one per batch.
            let events = events.div_ceil(spec.delivery_batch.unwrap_or(1) as u64);
            let ordered_keys = (spec.ordering == crate::window::Ordering::Ordered)
                .then(|| window.keys_pending() as u64 + u64::from(matched + unscanned > 0));
            let reporter = format!("{}#{partition}", spec.cursor);
            limits.report_backlog(&reporter, host, events, ordered_keys);
        }
    }

    /// Waits for the running deliveries to finish and settles them, starting none, for at most `within` (a
    /// delivery in its retries' backoff may take longer; the rest are aborted by the caller and delivered
    /// again from the committed offset).
    async fn settle_running(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(ended)) = tokio::time::timeout_at(deadline, self.deliveries.next()).await {
            self.settle_ended(ended);
        }
    }

    /// Settles the deliveries that end, starting none, until none of `cursors` has one running, for at most
    /// `within`.
    async fn settle_running_of(&mut self, cursors: &[String], within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while cursors.iter().any(|cursor| self.running.get(cursor).is_some_and(|running| !running.is_empty())) {
            match tokio::time::timeout_at(deadline, self.deliveries.next()).await {
                Ok(Some(ended)) => self.settle_ended(ended),
                _ => break,
            }
        }
    }

    /// Awaits `work` while the running deliveries go on (an offset commit waits for a quorum's fsync; the
    /// deliveries must not wait with it); answers what it gave and the deliveries that ended meanwhile.
    async fn while_delivering<T>(&mut self, work: impl std::future::Future<Output = T>) -> (T, Vec<Ended>) {
        let mut work = std::pin::pin!(work);
        let mut ended = Vec::new();
        loop {
            tokio::select! {
                biased;
                out = &mut work => return (out, ended),
                Some(done) = self.deliveries.next(), if !self.deliveries.is_empty() => ended.push(done),
            }
        }
    }

    /// Settles every delivery that has ended, without waiting (and gives the new ones their first poll);
    /// answers how many ended.
    fn settle_ready(&mut self) -> usize {
        let mut count = 0;
        while let Some(Some(ended)) = self.deliveries.next().now_or_never() {
            self.settle_ended(ended);
            count += 1;
        }
        count
    }

    fn settle_ended(&mut self, ended: Ended) {
        if let Ok(Some((cursor, generation, settled))) = ended {
            for (offset, settlement) in settled {
                self.settle(&cursor, generation, offset, settlement);
            }
        }
    }

    fn settle(&mut self, cursor: &str, generation: u64, offset: u64, settlement: Settlement) {
        let Some(outcome) = self.reading.settle(cursor, generation, offset, settlement) else { return };
        if let Some(running) = self.running.get_mut(cursor) {
            running.remove(&offset);
        }
        let Some(consumer) = self.reading.consumers.get(cursor) else { return };
        if !self.settled_counters.contains_key(cursor) {
            self.settled_counters.insert(cursor.to_string(), Vec::new());
        }
        let Some(kept) = self.settled_counters.get_mut(cursor) else { return };
        match kept.iter().find(|(kept_outcome, _)| *kept_outcome == outcome) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let spec = &consumer.spec;
                let counter = metrics::counter!("sluice_dispatch_settled_total", "consumer" => spec.name.clone(),
                    "namespace" => spec.namespace.clone(), "outcome" => outcome);
                counter.increment(1);
                kept.push((outcome, counter));
            }
        }
    }

    /// Applies requested replays, then commits every watermark that moved and the statistics that changed
    /// (`stopping`: see [`Reading::commits`]).
    async fn commit(&mut self, stopping: bool) {
        self.reading.sync_attached();
        let stored: BTreeMap<String, u64> = match self.ctx.node.committed_offsets(self.partition()) {
            Ok(stored) => {
                let stored = stored.into_iter().collect();
                self.reading.observe_stored_stats(&stored);
                stored
            }
            Err(_) => BTreeMap::new(),
        };
        // A consumer about to replay lets its running deliveries end first (bounded, as an edit does), so that
        // under ordered delivery the replayed events do not reach the subscriber beside an attempt still being
        // handled. Regression: they were aborted at once.
        if !stopping {
            let replaying: Vec<String> = self
                .reading
                .consumers
                .keys()
                .filter(|c| stats::pending_replay(c, &stored).is_some())
                .cloned()
                .collect();
            if !replaying.is_empty() {
                self.settle_running_of(&replaying, HANDOVER_DRAIN).await;
            }
        }
        // A dispatcher that stops leaves a requested replay to the partition's next one: applied here, it would
        // be cleared while the next leader's dispatcher, which may have read the cursor already, moves it back.
        let (replayed, replay_commits) =
            if stopping { Default::default() } else { self.reading.apply_replays(&stored) };
        for cursor in &replayed {
            tracing::info!(consumer = %cursor, partition = self.partition(), "replay restarts the consumer");
            self.abort_running(cursor);
        }
        let replayed: HashSet<String> = replayed.into_iter().collect();
        let commits = self.reading.commits(&replayed, replay_commits, stopping);
        if commits.commits.is_empty() {
            return;
        }
        let node = self.ctx.node.clone();
        let term = self.settings.leader_term;
        let (written, ended) =
            self.while_delivering(node.commit_offsets_in_term(self.partition(), term, commits.commits.clone())).await;
        match written {
            Ok(true) => self.reading.committed(commits),
            Ok(false) => self.was_deposed(),
            Err(e) => {
                tracing::warn!(stream = %self.stream, partition = self.partition(), error = %e, "offset commit failed")
            }
        }
        for ended in ended {
            self.settle_ended(ended);
        }
    }

    /// A commit came back stale (appended by another leader than the one this dispatcher started under): nothing
    /// of it was written, and nothing more will be; the dispatcher stops at its next turn.
    fn was_deposed(&mut self) {
        tracing::info!(
            stream = %self.stream,
            partition = self.partition(),
            term = self.settings.leader_term,
            "this node no longer leads the partition in the term dispatch started in: its commit was not written"
        );
        metrics::counter!("sluice_dispatch_stale_commits_total").increment(1);
        self.deposed = true;
    }

    fn publish_gauges(&self) {
        let end = self.ctx.node.end_offset(&self.stream, self.partition()).unwrap_or(0);
        let start = self.ctx.node.start_offset(&self.stream, self.partition()).unwrap_or(0);
        gauges::publish(self.reading.consumers.values(), (start, end), now_ms(), self.partition());
    }
}

/// One event to a consumer without `delivery_batch` (Knative's one event per request), or a batch.
async fn deliver_start(
    ctx: &DeliveryContext,
    spec: &ConsumerSpec,
    (events, json_bytes_bound): (&[(u64, Arc<CloudEvent>)], usize),
    slot: &mut Option<DeliverySlot>,
) -> Settled {
    match events {
        [(offset, event)] if spec.delivery_batch.is_none() => {
            smallvec::smallvec![(*offset, deliver(ctx, spec, *offset, event, slot).await)]
        }
        _ => deliver_batch(ctx, spec, (events, json_bytes_bound), slot).await,
    }
}

async fn sleep_until_ms(at_ms: Option<u64>) {
    if let Some(at_ms) = at_ms {
        let wait = at_ms.saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
    }
}

/// The partition's applied log, read for [`Reading`].
struct NodeLog<'a> {
    node: &'a sluice_broker::Node,
    stream: &'a str,
    partition: u32,
}

impl ReadLog for NodeLog<'_> {
    fn read(&self, from: u64, max: usize) -> Option<(Vec<ReadEvent>, u64)> {
        let batch = match self.node.read(self.stream, self.partition, from, max.max(1), 0) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(stream = %self.stream, error = %e, "read failed");
                return None;
            }
        };
        let mut next = from.max(batch.start_offset);
        let mut events = Vec::with_capacity(batch.records.len());
        for record in batch.records {
            next = record.offset + 1;
            // Copied, not shared (`CloudEvent::decode_shared`): a slow consumer's window would keep alive the
            // Raft messages its events arrived in, with every other stream's events in them.
            match CloudEvent::decode(&record.payload) {
                Ok(event) => events.push((record.offset, record.arrival_ms, Arc::new(event))),
                Err(e) => {
                    metrics::counter!("sluice_dispatch_undecodable_total").increment(1);
                    tracing::error!(stream = %self.stream, offset = record.offset, error = %e, "undecodable record skipped");
                }
            }
        }
        Some((events, next.min(batch.end_offset.max(from))))
    }
}
