//! Coalesces concurrent appends to one group into one Raft entry.
//!
//! Requests wait in a bounded queue. The batcher takes the first waiting
//! request, then everything else already waiting (up to the entry's record
//! and byte limits), and submits them as one entry. It never waits for more
//! to arrive: an idle group commits a lone append at once, and a busy one
//! batches because requests pile up while earlier entries are in flight
//! (at most `max_in_flight_entries` at a time).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc, oneshot};

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
}

/// How long an entry may wait to commit before its appends are answered as
/// indeterminate. A leader cut off from its quorum keeps the entry (it may
/// still commit later), but no caller waits on it without bound.
pub(crate) const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for AppendLimits {
    fn default() -> Self {
        Self {
            max_records_per_entry: 4096,
            max_bytes_per_entry: 1 << 20,
            queue_capacity: 8192,
            max_in_flight_entries: 16,
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
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight_entries.max(1)));
    let mut carried: Option<PendingAppend> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match rx.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // Waiting for a slot lets more requests queue up behind `first`.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let filled = fill_batch(first, || rx.try_recv().ok(), &limits, |p| &p.append, |_, _| true);
        let (batch, records, bytes) = (filled.batch, filled.records, filled.bytes);
        carried = filled.carried;
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(group, &raft, batch, records, bytes).await;
            drop(permit);
        });
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
    mut next_waiting: impl FnMut() -> Option<T>,
    limits: &AppendLimits,
    append_of: impl Fn(&T) -> &StreamAppend,
    joins: impl Fn(&T, &T) -> bool,
) -> Filled<T> {
    let mut records = append_of(&first).payloads.len();
    let mut bytes = append_of(&first).payload_bytes();
    let mut batch = vec![first];
    let mut carried = None;
    while records < limits.max_records_per_entry && bytes < limits.max_bytes_per_entry {
        let Some(next) = next_waiting() else { break };
        let next_records = append_of(&next).payloads.len();
        let next_bytes = append_of(&next).payload_bytes();
        if !joins(&batch[0], &next)
            || records + next_records > limits.max_records_per_entry
            || bytes + next_bytes > limits.max_bytes_per_entry
        {
            carried = Some(next);
            break;
        }
        records += next_records;
        bytes += next_bytes;
        batch.push(next);
    }
    Filled { batch, records, bytes, carried }
}

async fn commit(group: GroupId, raft: &Raft, batch: Vec<PendingAppend>, records: usize, bytes: usize) {
    let label = group_name(group);
    metrics::histogram!("sluice_append_batch_records", "group" => label.clone()).record(records as f64);
    metrics::histogram!("sluice_append_batch_bytes", "group" => label.clone()).record(bytes as f64);
    metrics::histogram!("sluice_append_batch_requests", "group" => label.clone()).record(batch.len() as f64);
    let (appends, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.append, p.reply)).unzip();
    let started = Instant::now();
    let result = tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(LogCommand::Append(appends))).await;
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
                    let _ = reply.send(Err(WriteFailure::Indeterminate { group, reason: reason.clone() }));
                }
            }
        },
        Err(error) => {
            // Submitted: even a ForwardToLeader now means a new leader may still commit it.
            let reason = error.to_string();
            tracing::debug!(group, %reason, "append not acknowledged");
            for reply in replies {
                let _ = reply.send(Err(WriteFailure::Indeterminate { group, reason: reason.clone() }));
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
}
