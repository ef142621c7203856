//! Coalesces concurrent appends to one group into one Raft entry.
//!
//! Requests wait in a bounded queue. The batcher takes the first waiting
//! request, then everything else already waiting (up to the entry's record
//! and byte limits), and submits them as one entry. It never waits for more
//! to arrive when nothing is in flight: an idle group commits a lone append at
//! once. While entries are in flight, a small batch waits for one of them to
//! finish, gathering what arrives meanwhile ([`send_decision`]); a batch of
//! `pipeline_min_records` records (or `pipeline_min_bytes`) goes at once, up to
//! `max_in_flight_entries` at a time. Producers that send one event per request
//! thus share entries instead of each taking its own (every entry costs a log
//! write, an apply and Raft's bookkeeping), and producers that batch still
//! pipeline.
//!
//! The leader stamps every record of an entry with its own clock's time as it proposes it (the records'
//! arrival time: time index, retention, dedupe horizon), whichever node took the request.
//!
//! The entries in flight are driven by the batcher's own task (see [`InFlight`]), not spawned: a task per
//! entry cost a hand-off between tasks when it started and another when it ended.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::command::forward::WriteFailure;
use crate::command::{Appended, GroupId, LogCommand, LogResponse, StreamAppend, group_name};
use crate::store::Raft;

/// Bounds of the append path of one group.
#[derive(Clone, Debug)]
pub struct AppendLimits {
    pub max_records_per_entry: usize,
    pub max_bytes_per_entry: usize,
    /// Appends waiting for a batch; beyond this, appends fail with `QueueFull`.
    pub queue_capacity: usize,
    pub max_in_flight_entries: usize,
    /// A batch this large goes while other entries are in flight; a smaller one waits for one of them to
    /// finish (and gathers what arrives meanwhile). 1 pipelines every batch.
    pub pipeline_min_records: usize,
    /// The same in bytes of payload: whichever is reached first.
    pub pipeline_min_bytes: usize,
    /// The same rule for a follower's forwards to the leader (records only; 1 sends every batch at once).
    pub forward_pipeline_min_records: usize,
}

/// How long an entry may wait to commit before its appends are answered as
/// indeterminate. A leader cut off from its quorum keeps the entry (it may
/// still commit later), but no caller waits on it without bound.
pub(crate) const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl AppendLimits {
    /// Whether an entry of `max_bytes_per_entry` fits one message between nodes (else replication could never
    /// carry it); the error names the flags that size it.
    pub fn validate(&self) -> Result<(), String> {
        payload_entries_for(self.max_bytes_per_entry).map(|_| ())
    }
}

/// The most entries one AppendEntries carries: 16, fewer when 16 of the largest entry (the ingress limits
/// decide it, about 5.0 MiB by default) would not fit one peer message (`MAX_PEER_MESSAGE_BYTES`), which
/// the receiver refuses: replication would then fail at every try, under load, for good. An entry that does
/// not fit one message alone is refused at start, naming the limits.
pub(crate) fn payload_entries_for(max_bytes_per_entry: usize) -> Result<u64, String> {
    const MOST_ENTRIES: usize = 16;
    // An entry's records are framed (lengths, the stream, the dedupe keys) and the message has its own.
    const ENTRY_OVERHEAD_BYTES: usize = 64 << 10;
    const MESSAGE_OVERHEAD_BYTES: usize = 1 << 20;
    let room = crate::transport::client::MAX_PEER_MESSAGE_BYTES - MESSAGE_OVERHEAD_BYTES;
    let entry = max_bytes_per_entry.saturating_add(ENTRY_OVERHEAD_BYTES);
    match room / entry {
        0 => Err(format!(
            "a Raft entry may hold {max_bytes_per_entry} bytes (from --max-batch-bytes, --max-event-bytes and \
             --max-batch-events), more than one message between nodes carries ({} bytes): \
             lower them",
            crate::transport::client::MAX_PEER_MESSAGE_BYTES
        )),
        fits => Ok(fits.min(MOST_ENTRIES) as u64),
    }
}

impl Default for AppendLimits {
    fn default() -> Self {
        Self {
            max_records_per_entry: 4096,
            max_bytes_per_entry: 1 << 20,
            queue_capacity: 8192,
            max_in_flight_entries: 16,
            pipeline_min_records: 64,
            pipeline_min_bytes: 64 << 10,
            forward_pipeline_min_records: 64,
        }
    }
}

struct PendingAppend {
    append: StreamAppend,
    reply: oneshot::Sender<Result<Appended, WriteFailure>>,
}

#[derive(Clone)]
pub(crate) struct AppendBatcher {
    group: GroupId,
    limits: AppendLimits,
    tx: mpsc::Sender<PendingAppend>,
}

impl AppendBatcher {
    pub(crate) fn start(group: GroupId, raft: Raft, limits: AppendLimits) -> Self {
        let (tx, rx) = mpsc::channel(limits.queue_capacity.max(1));
        tokio::spawn(run(group, raft, limits.clone(), rx));
        Self { group, limits, tx }
    }

    /// Appends `append` to its stream; answers where its records went once
    /// the entry holding it is committed and applied.
    pub(crate) async fn submit(&self, append: StreamAppend) -> Result<Appended, WriteFailure> {
        check_append_size(&self.limits, &append)?;
        let (reply, rx) = oneshot::channel();
        let queue = Queue { group: self.group, capacity: self.limits.queue_capacity, name: "batcher" };
        queue.submit(&self.tx, PendingAppend { append, reply }, rx, "queue_full").await
    }
}

/// Refuses an append that could not fit in one entry.
pub(crate) fn check_append_size(limits: &AppendLimits, append: &StreamAppend) -> Result<(), WriteFailure> {
    let bytes = append.payload_bytes();
    if bytes > limits.max_bytes_per_entry || append.payloads.len() > limits.max_records_per_entry {
        return Err(WriteFailure::TooLarge { bytes, limit_bytes: limits.max_bytes_per_entry });
    }
    Ok(())
}

/// A batcher's bounded queue (the leader's AppendBatcher, the follower's ForwardBatcher).
pub(crate) struct Queue {
    pub group: GroupId,
    pub capacity: usize,
    /// Names the batcher in the error of an answer that never came.
    pub name: &'static str,
}

impl Queue {
    /// Queues `pending` without waiting for room (a full queue is `QueueFull`, counted with
    /// `full_reason`), then waits for its answer on `rx`.
    pub(crate) async fn submit<T>(
        &self,
        tx: &mpsc::Sender<T>,
        pending: T,
        rx: oneshot::Receiver<Result<Appended, WriteFailure>>,
        full_reason: &'static str,
    ) -> Result<Appended, WriteFailure> {
        tx.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("sluice_append_rejected_total", "group" => group_name(self.group), "reason" => full_reason).increment(1);
                WriteFailure::QueueFull { group: self.group, capacity: self.capacity }
            }
            mpsc::error::TrySendError::Closed(_) => WriteFailure::NotLeader { group: self.group, leader: None },
        })?;
        rx.await.map_err(|_| WriteFailure::Indeterminate {
            group: self.group,
            reason: format!("the {} stopped before answering", self.name),
        })?
    }
}

async fn run(group: GroupId, raft: Raft, limits: AppendLimits, mut rx: mpsc::Receiver<PendingAppend>) {
    let mut in_flight = InFlight::default();
    let mut carried = None;
    let max_in_flight = limits.max_in_flight_entries.max(1);
    let batching =
        Batching { max_in_flight, limits: &limits, append_of: |p: &PendingAppend| &p.append, lane_of: |_| () };
    while let Some(filled) = next_batch(&mut rx, &mut carried, &mut in_flight, &batching, |_, _| true).await {
        let raft = raft.clone();
        in_flight.spawn((), async move { commit(group, &raft, filled.batch, filled.records, filled.bytes).await });
    }
    // The queue is closed (the group is stopping): the entries already proposed still answer their callers.
    in_flight.join_all().await;
}

/// What an entry or RPC in flight answers: its lane, and whether it ended or panicked.
type Finished<L> = (L, std::thread::Result<()>);

/// Entries or RPCs in flight, each in a lane: the leader's batcher has one lane; the forwarder's lanes are
/// the leaders it sent to, so a batch for a new leader never waits behind an RPC to one that just died.
/// They are polled by the batcher's task whenever it waits ([`next_batch`]), which it does between any two
/// batches; a panic in one ends that one only.
pub(crate) struct InFlight<L> {
    tasks: FuturesUnordered<BoxFuture<'static, Finished<L>>>,
    per_lane: HashMap<L, usize>,
}

impl<L> Default for InFlight<L> {
    fn default() -> Self {
        Self { tasks: FuturesUnordered::new(), per_lane: HashMap::new() }
    }
}

impl<L: Clone + Eq + Hash + Send + 'static> InFlight<L> {
    pub(crate) fn spawn(&mut self, lane: L, work: impl Future<Output = ()> + Send + 'static) {
        *self.per_lane.entry(lane.clone()).or_default() += 1;
        self.tasks.push(Box::pin(AssertUnwindSafe(work).catch_unwind().map(move |ended| (lane, ended))));
    }

    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    fn in_lane(&self, lane: &L) -> usize {
        self.per_lane.get(lane).copied().unwrap_or(0)
    }

    fn reaped(&mut self, (lane, ended): Finished<L>) {
        if ended.is_err() {
            // A bug: its callers are answered as indeterminate (their reply senders were dropped).
            tracing::error!("an entry in flight panicked");
        }
        if let Some(count) = self.per_lane.get_mut(&lane) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_lane.remove(&lane);
            }
        }
    }

    fn reap_finished(&mut self) {
        while let Some(Some(finished)) = self.tasks.next().now_or_never() {
            self.reaped(finished);
        }
    }

    /// Drives the work in flight until one finishes (forever if none runs: callers select on it beside their
    /// queue).
    async fn next_finished(&mut self) {
        match self.tasks.next().await {
            Some(finished) => self.reaped(finished),
            None => std::future::pending().await,
        }
    }

    pub(crate) async fn join_all(&mut self) {
        while let Some(finished) = self.tasks.next().await {
            self.reaped(finished);
        }
    }
}

/// How [`next_batch`] batches the queued `T`s of one batcher.
pub(crate) struct Batching<'a, T, L> {
    pub max_in_flight: usize,
    pub limits: &'a AppendLimits,
    pub append_of: fn(&T) -> &StreamAppend,
    pub lane_of: fn(&T) -> L,
}

/// Whether a batch goes now or waits: the pure part of the batchers' loops ([`next_batch`] carries it out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendDecision {
    Send,
    /// Wait for an in-flight entry to finish (or more to arrive, if the batch has room).
    Wait,
}

/// What a batch of `records` records and `bytes` bytes does with `in_flight` entries already in flight, of
/// which `ahead` are in its own lane: the window full, it waits; nothing ahead of it, it goes (a lone request
/// never waits on an idle group); otherwise it goes only if it is full (an entry limit reached, or the next
/// request did not fit) or reaches the pipelining size, and else waits for an entry to finish, gathering
/// what arrives meanwhile.
pub(crate) fn send_decision(
    in_flight: usize,
    ahead: usize,
    max_in_flight: usize,
    records: usize,
    bytes: usize,
    full: bool,
    limits: &AppendLimits,
) -> SendDecision {
    let large = records >= limits.pipeline_min_records || bytes >= limits.pipeline_min_bytes;
    if in_flight < max_in_flight && (ahead == 0 || full || large) { SendDecision::Send } else { SendDecision::Wait }
}

/// The next batch to send, once [`send_decision`] lets it go; `None` once the queue is closed and empty.
/// Reaps finished entries from `in_flight` (which the caller spawns into) while it waits.
pub(crate) async fn next_batch<T, L: Clone + Eq + Hash + Send + 'static>(
    rx: &mut mpsc::Receiver<T>,
    carried: &mut Option<T>,
    in_flight: &mut InFlight<L>,
    batching: &Batching<'_, T, L>,
    joins: impl Fn(&T, &T) -> bool + Copy,
) -> Option<Filled<T>> {
    let (limits, append_of) = (batching.limits, batching.append_of);
    let first = match carried.take() {
        Some(first) => first,
        None => loop {
            tokio::select! {
                _ = in_flight.next_finished(), if in_flight.len() > 0 => {}
                next = rx.recv() => break next?,
            }
        },
    };
    let lane = (batching.lane_of)(&first);
    let mut filled = fill_batch(first, || rx.try_recv().ok(), limits, append_of, joins);
    let mut open = true;
    loop {
        in_flight.reap_finished();
        let full = filled.carried.is_some()
            || filled.records >= limits.max_records_per_entry
            || filled.bytes >= limits.max_bytes_per_entry;
        let ahead = in_flight.in_lane(&lane);
        let decision =
            send_decision(in_flight.len(), ahead, batching.max_in_flight, filled.records, filled.bytes, full, limits);
        if decision == SendDecision::Send {
            *carried = filled.carried.take();
            return Some(filled);
        }
        tokio::select! {
            _ = in_flight.next_finished() => {}
            next = rx.recv(), if open && !full => match next {
                Some(next) => {
                    let mut next = Some(next);
                    filled.extend(|| next.take().or_else(|| rx.try_recv().ok()), limits, append_of, joins);
                }
                None => open = false,
            },
        }
    }
}

/// A batch taken from a queue, and the first waiting item that did not fit (it starts the next batch).
pub(crate) struct Filled<T> {
    pub batch: Vec<T>,
    pub records: usize,
    pub bytes: usize,
    pub carried: Option<T>,
}

/// Takes `first` and what `next_waiting` gives (what is already queued: the shells pass a non-blocking
/// `try_recv`) while the batch stays within the entry's record and byte limits and `joins(first, next)` holds.
/// The first item that does not fit is carried: it starts the next batch. Shared by the leader's batcher and
/// the follower's forwarder.
pub(crate) fn fill_batch<T>(
    first: T,
    next_waiting: impl FnMut() -> Option<T>,
    limits: &AppendLimits,
    append_of: impl Fn(&T) -> &StreamAppend,
    joins: impl Fn(&T, &T) -> bool,
) -> Filled<T> {
    let records = append_of(&first).payloads.len();
    let bytes = append_of(&first).payload_bytes();
    let mut filled = Filled { batch: vec![first], records, bytes, carried: None };
    filled.extend(next_waiting, limits, append_of, joins);
    filled
}

impl<T> Filled<T> {
    /// Takes more from `next_waiting` while the batch stays within the limits and joins its first item; the
    /// first that does not fit is carried (nothing more is taken once one is).
    pub(crate) fn extend(
        &mut self,
        mut next_waiting: impl FnMut() -> Option<T>,
        limits: &AppendLimits,
        append_of: impl Fn(&T) -> &StreamAppend,
        joins: impl Fn(&T, &T) -> bool,
    ) {
        while self.carried.is_none()
            && self.records < limits.max_records_per_entry
            && self.bytes < limits.max_bytes_per_entry
        {
            let Some(next) = next_waiting() else { break };
            let next_records = append_of(&next).payloads.len();
            let next_bytes = append_of(&next).payload_bytes();
            if !joins(&self.batch[0], &next)
                || self.records + next_records > limits.max_records_per_entry
                || self.bytes + next_bytes > limits.max_bytes_per_entry
            {
                self.carried = Some(next);
                break;
            }
            self.records += next_records;
            self.bytes += next_bytes;
            self.batch.push(next);
        }
    }
}

async fn commit(group: GroupId, raft: &Raft, batch: Vec<PendingAppend>, records: usize, bytes: usize) {
    let label = group_name(group);
    metrics::histogram!("sluice_append_batch_records", "group" => label.clone()).record(records as f64);
    metrics::histogram!("sluice_append_batch_bytes", "group" => label.clone()).record(bytes as f64);
    metrics::histogram!("sluice_append_batch_requests", "group" => label.clone()).record(batch.len() as f64);
    // Every record's arrival time is the partition leader's clock when it proposes the entry (Kafka's
    // LogAppendTime), not the clock of whichever node took the request: a node whose clock ran ahead set the
    // stream's arrival (which only moves forward) into its future, and the dedupe horizon with it, so a retry
    // through another node within the window was stored twice.
    let arrival_ms = u64::try_from(crate::wall_clock().timestamp_millis()).unwrap_or(0);
    let (appends, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (StreamAppend { arrival_ms, ..p.append }, p.reply)).unzip();
    let started = Instant::now();
    let result = tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(LogCommand::append(appends))).await;
    metrics::histogram!("sluice_raft_commit_seconds", "group" => label).record(started.elapsed().as_secs_f64());
    let Ok(result) = result else {
        let reason = format!("not committed within {COMMIT_TIMEOUT:?} (no quorum?)");
        for reply in replies {
            let _ = reply.send(Err(WriteFailure::Indeterminate { group, reason: reason.clone() }));
        }
        return;
    };
    match result {
        Ok(response) => match response.response() {
            LogResponse::Appended { appended } if appended.len() == replies.len() => {
                for (reply, appended) in replies.into_iter().zip(appended) {
                    let _ = reply.send(Ok(*appended));
                }
            }
            other => {
                let reason = format!("unexpected response to an append: {other:?}");
                tracing::error!(group, %reason);
                for reply in replies {
                    let _ = reply.send(Err(WriteFailure::Bug { group, reason: reason.clone() }));
                }
            }
        },
        Err(error) => {
            // openraft (pinned exactly) answers `ForwardToLeader` only for a proposal it refused before
            // appending it (not the leader, or handing leadership over): definite, so the node retries it at
            // the new leader and the producer never sees the change. An entry that was appended and then
            // discarded (`LogEntryDiscarded`), or any other error, may still commit elsewhere.
            let failure = match error.api_error() {
                Some(openraft::error::ClientWriteError::ForwardToLeader(forward)) => {
                    WriteFailure::NotLeader { group, leader: forward.leader_id }
                }
                _ => WriteFailure::Indeterminate { group, reason: error.to_string() },
            };
            tracing::debug!(group, reason = %error, "append not acknowledged");
            for reply in replies {
                let _ = reply.send(Err(failure.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use bytes::Bytes;

    fn append(stream: &str, records: usize, bytes_each: usize) -> StreamAppend {
        StreamAppend {
            stream: stream.into(),
            arrival_ms: 0,
            payloads: (0..records).map(|_| Bytes::from(vec![b'x'; bytes_each])).collect(),
            dedupe: None,
        }
    }

    fn limits(max_records_per_entry: usize, max_bytes_per_entry: usize) -> AppendLimits {
        AppendLimits { max_records_per_entry, max_bytes_per_entry, ..AppendLimits::default() }
    }

    /// Fills one batch from `queued`; answers the streams batched, the carried one and what stays queued.
    fn fill(
        first: StreamAppend,
        queued: &mut VecDeque<StreamAppend>,
        limits: &AppendLimits,
        joins: impl Fn(&StreamAppend, &StreamAppend) -> bool,
    ) -> (Vec<String>, usize, usize, Option<String>) {
        let filled = fill_batch(first, || queued.pop_front(), limits, |a| a, joins);
        (
            filled.batch.iter().map(|a| a.stream.clone()).collect(),
            filled.records,
            filled.bytes,
            filled.carried.map(|a| a.stream),
        )
    }

    #[test]
    fn a_batch_takes_what_is_queued_and_never_waits() {
        let mut queued = VecDeque::from([append("b", 1, 10), append("c", 2, 10)]);
        let (batch, records, bytes, carried) = fill(append("a", 1, 10), &mut queued, &limits(100, 1000), |_, _| true);
        assert_eq!(batch, ["a", "b", "c"]);
        assert_eq!((records, bytes), (4, 40));
        assert_eq!(carried, None);
        assert!(queued.is_empty());

        let (batch, _, _, carried) = fill(append("alone", 1, 10), &mut queued, &limits(100, 1000), |_, _| true);
        assert_eq!((batch, carried), (vec!["alone".to_string()], None), "an empty queue: the first goes alone");
    }

    #[test]
    fn the_first_append_that_would_pass_a_limit_is_carried_and_the_rest_stay_queued() {
        // Records: 3 + 1 = 4 fits, + 2 would be 6 > 5.
        let mut queued = VecDeque::from([append("b", 1, 1), append("c", 2, 1), append("d", 1, 1)]);
        let (batch, records, _, carried) = fill(append("a", 3, 1), &mut queued, &limits(5, 1000), |_, _| true);
        assert_eq!((batch, records, carried), (vec!["a".into(), "b".into()], 4, Some("c".into())));
        assert_eq!(queued.len(), 1, "d was never taken");

        // Reaching a limit exactly ends the batch without taking (or carrying) the next one.
        let mut queued = VecDeque::from([append("b", 2, 1), append("c", 1, 1)]);
        let (batch, records, _, carried) = fill(append("a", 3, 1), &mut queued, &limits(5, 1000), |_, _| true);
        assert_eq!((batch, records, carried), (vec!["a".into(), "b".into()], 5, None));
        assert_eq!(queued.len(), 1);

        // Bytes: 60 + 50 > 100.
        let mut queued = VecDeque::from([append("b", 1, 50)]);
        let (batch, _, bytes, carried) = fill(append("a", 1, 60), &mut queued, &limits(100, 100), |_, _| true);
        assert_eq!((batch, bytes, carried), (vec!["a".into()], 60, Some("b".into())));
    }

    #[test]
    fn a_full_first_append_takes_nothing_more() {
        let mut queued = VecDeque::from([append("b", 1, 1)]);
        let (batch, _, _, carried) = fill(append("a", 5, 1), &mut queued, &limits(5, 1000), |_, _| true);
        assert_eq!((batch, carried), (vec!["a".into()], None));
        assert_eq!(queued.len(), 1, "the limit is reached before anything is taken");
    }

    #[test]
    fn an_append_that_does_not_join_the_first_starts_the_next_batch() {
        // The forwarder joins only requests for the same leader (here: the same stream name's first letter).
        let joins = |a: &StreamAppend, b: &StreamAppend| a.stream[..1] == b.stream[..1];
        let mut queued = VecDeque::from([append("x2", 1, 1), append("y1", 1, 1), append("x3", 1, 1)]);
        let (batch, _, _, carried) = fill(append("x1", 1, 1), &mut queued, &limits(100, 1000), joins);
        assert_eq!((batch, carried), (vec!["x1".into(), "x2".into()], Some("y1".into())));
        assert_eq!(queued.len(), 1);
    }

    #[test]
    fn a_small_batch_waits_for_an_entry_in_flight_and_a_large_or_full_one_pipelines() {
        let limits = AppendLimits { pipeline_min_records: 64, pipeline_min_bytes: 64 << 10, ..AppendLimits::default() };
        let (send, wait) = (SendDecision::Send, SendDecision::Wait);
        // (in flight, of them in this batch's lane, records, bytes, full) -> decision, 16 at most in flight.
        let table = [
            ((0, 0, 1, 1024, false), send, "an idle group sends a lone request at once"),
            ((0, 0, 4096, 1 << 20, true), send, "an idle group sends a full batch"),
            ((1, 1, 1, 1024, false), wait, "a small batch waits for the entry in flight"),
            ((1, 1, 63, 63 * 1024, false), wait, "one record short of the pipelining size"),
            ((1, 1, 64, 100, false), send, "the pipelining size in records"),
            ((1, 1, 2, 64 << 10, false), send, "the pipelining size in bytes"),
            ((5, 5, 3, 300, true), send, "a full batch (its next request did not fit) need not wait"),
            ((15, 15, 64, 64 << 10, false), send, "one slot left"),
            ((16, 16, 4096, 1 << 20, true), wait, "the window is full"),
            ((16, 16, 1, 1, false), wait, "the window is full, small batch"),
            ((3, 0, 1, 10, false), send, "a forward to a leader with nothing in flight goes beside RPCs to another"),
            ((3, 1, 1, 10, false), wait, "a small forward waits for the RPC in flight to its leader"),
            ((16, 0, 1, 10, false), wait, "the window is shared by every lane"),
        ];
        for ((in_flight, ahead, records, bytes, full), expected, why) in table {
            assert_eq!(send_decision(in_flight, ahead, 16, records, bytes, full, &limits), expected, "{why}");
        }
        let always = AppendLimits { pipeline_min_records: 1, ..limits.clone() };
        assert_eq!(send_decision(3, 3, 16, 1, 10, false, &always), send, "1 pipelines every batch");
    }

    /// The shell: a lone request goes at once; while it is in flight, requests that arrive gather into one
    /// batch, which goes when the entry finishes.
    #[tokio::test]
    async fn requests_arriving_while_an_entry_is_in_flight_share_the_next_entry() {
        let limits = AppendLimits::default();
        let (tx, mut rx) = mpsc::channel(16);
        let mut in_flight = InFlight::default();
        let mut carried = None;
        tx.send(append("a", 1, 10)).await.expect("queue open");
        let batching =
            Batching { max_in_flight: 16, limits: &limits, append_of: |a: &StreamAppend| a, lane_of: |_| () };
        let first = next_batch(&mut rx, &mut carried, &mut in_flight, &batching, |_, _| true).await.expect("a batch");
        assert_eq!(first.batch.len(), 1, "nothing in flight: the lone request goes");
        let (finish, finished) = oneshot::channel::<()>();
        in_flight.spawn((), async move {
            let _ = finished.await;
        });
        tx.send(append("b", 1, 10)).await.expect("queue open");
        tx.send(append("c", 1, 10)).await.expect("queue open");
        let gathering = tokio::spawn(async move {
            let batching: Batching<'_, StreamAppend, ()> =
                Batching { max_in_flight: 16, limits: &limits, append_of: |a| a, lane_of: |_| () };
            let filled = next_batch(&mut rx, &mut carried, &mut in_flight, &batching, |_, _| true).await;
            filled.map(|filled| filled.batch.iter().map(|a| a.stream.clone()).collect::<Vec<_>>())
        });
        // The test runtime has one thread: the gatherer runs only while this task yields. Once it has taken
        // everything queued it is waiting (a batch that went at once would have finished it).
        let drained = |tx: &mpsc::Sender<StreamAppend>| tx.capacity() == tx.max_capacity();
        while !drained(&tx) {
            tokio::task::yield_now().await;
        }
        assert!(!gathering.is_finished(), "a small batch does not go while an entry is in flight");
        tx.send(append("d", 1, 10)).await.expect("queue open");
        while !drained(&tx) {
            tokio::task::yield_now().await;
        }
        assert!(!gathering.is_finished(), "still waiting after more arrived");
        drop(finish);
        assert_eq!(gathering.await.expect("the gatherer finishes"), Some(vec!["b".into(), "c".into(), "d".into()]));
    }

    /// A panic in one entry in flight (a bug) ends that entry alone: the others go on, and its lane is free.
    #[tokio::test]
    async fn an_entry_in_flight_that_panics_ends_alone_and_frees_its_lane() {
        let mut in_flight: InFlight<&'static str> = InFlight::default();
        let (finish, finished) = oneshot::channel::<()>();
        in_flight.spawn("a", async { panic!("a planted bug in one entry") });
        in_flight.spawn("b", async move {
            let _ = finished.await;
        });
        in_flight.next_finished().await;
        assert_eq!((in_flight.len(), in_flight.in_lane(&"a"), in_flight.in_lane(&"b")), (1, 0, 1));
        drop(finish);
        in_flight.join_all().await;
        assert_eq!((in_flight.len(), in_flight.in_lane(&"b")), (0, 0));
    }

    /// The forwarder's lanes: an RPC hanging on one leader (one that just died) holds back small forwards to
    /// that leader only; a forward to the new leader goes at once.
    #[tokio::test]
    async fn a_forward_to_a_new_leader_does_not_wait_behind_an_rpc_to_the_old_one() {
        let limits = AppendLimits::default();
        let (tx, mut rx) = mpsc::channel(16);
        let mut in_flight: InFlight<String> = InFlight::default();
        let mut carried = None;
        // (stream, leader)
        let lane_of = |a: &(StreamAppend, String)| a.1.clone();
        let batching =
            Batching { max_in_flight: 8, limits: &limits, append_of: |a: &(StreamAppend, String)| &a.0, lane_of };
        let (_never, hangs) = oneshot::channel::<()>();
        in_flight.spawn("old-leader".to_string(), async move {
            let _ = hangs.await;
        });
        tx.send((append("to-new", 1, 10), "new-leader".into())).await.expect("queue open");
        let same_leader = |a: &(StreamAppend, String), b: &(StreamAppend, String)| a.1 == b.1;
        let to_new = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            next_batch(&mut rx, &mut carried, &mut in_flight, &batching, same_leader),
        )
        .await
        .expect("a forward to the new leader goes while the old leader's RPC hangs");
        assert_eq!(to_new.expect("a batch").batch[0].0.stream, "to-new");
        tx.send((append("to-old", 1, 10), "old-leader".into())).await.expect("queue open");
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            next_batch(&mut rx, &mut carried, &mut in_flight, &batching, same_leader),
        )
        .await;
        assert!(waited.is_err(), "a small forward to the old leader waits for its RPC in flight");
    }
}
