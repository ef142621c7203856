//! Planned leadership transfers hand the partition's dispatch over instead of dropping it.
//!
//! What flows in: a transfer this node (the leader) is about to start, from leader balance or `cluster
//! transfer-leader`. What flows out: a [`Handover`] to the listener that acts where this node leads (the
//! dispatcher), which lets its deliveries settle, commits its consumers' offsets, stops dispatching the
//! partition and answers; the transfer then starts, waiting at most [`HANDOVER_WAIT`] for the answer.
//!
//! Why: offsets are committed once per interval (1 s by default). Without a handover the next leader's
//! dispatcher starts from the last interval's offsets and delivers everything settled since then a second
//! time, about a second late (measured in docs/benchmarks.md, session 20). A crash still redelivers up to
//! one interval; a planned move now redelivers only the deliveries the dispatcher gave up waiting for.
//!
//! The other half: the next leader's dispatcher must read the offsets as this leader left them, so it starts
//! only once it has applied every entry of earlier terms ([`Node::leads_partition_applied`]).
//!
//! A transfer can fail (the target is paused, or behind): the listener learns when the attempt is over
//! ([`TransferOver`]), and if this node still leads the partition it dispatches it again at once, instead of
//! after a fixed hold.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::{mpsc, oneshot};

use super::Node;
use crate::ids::{GroupId, group_name, partition_of};
use crate::raft::group::Group;

/// How long a transfer waits for the listener; past it the leadership moves anyway (a stuck dispatcher must
/// not pin leadership; its consumers are then redelivered from their last commit, as after a crash).
pub(crate) const HANDOVER_WAIT: Duration = Duration::from_secs(1);

/// A partition whose leadership is about to leave this node. Answer with [`Handover::done`] once its offsets
/// are committed; dropping it unanswered lets the transfer go on at once.
#[derive(Debug)]
pub struct Handover {
    pub partition: u32,
    done: oneshot::Sender<()>,
    attempt_over: oneshot::Receiver<()>,
}

impl Handover {
    /// Answers that the partition's offsets are committed; what it returns resolves once the transfer attempt
    /// is over, whether the leadership moved or not.
    pub fn done(self) -> TransferOver {
        let _ = self.done.send(());
        TransferOver(self.attempt_over)
    }
}

/// Resolves once a transfer attempt is over: the leadership left this node, or the attempt failed or gave up.
#[derive(Debug)]
pub struct TransferOver(oneshot::Receiver<()>);

impl Future for TransferOver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Nothing is ever sent: the attempt ends when its sender is dropped.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// Held while a transfer attempt runs; dropping it tells the listener the attempt is over.
pub(super) struct TransferAttempt(Option<oneshot::Sender<()>>);

impl TransferAttempt {
    /// Ends the attempt once this node no longer leads `group`, or after `wait` (the transfer failed).
    pub(super) fn end_when_moved(self, group: std::sync::Arc<Group>, node: crate::ids::NodeId, wait: Duration) {
        if self.0.is_none() {
            return;
        }
        tokio::spawn(async move {
            let mut metrics = group.raft.metrics();
            let _ = tokio::time::timeout(wait, async {
                while group.is_leader(node) {
                    if metrics.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            drop(self);
        });
    }
}

impl Node {
    /// Registers the listener of planned transfers (one per node: a later call replaces the earlier one).
    pub fn handovers(&self) -> mpsc::Receiver<Handover> {
        let (tx, rx) = mpsc::channel(16);
        *self.inner.handover.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        rx
    }

    /// Tells the listener that `group`'s leadership is about to move, and waits for its answer (bounded). The
    /// attempt it answers must be held until the transfer is over.
    pub(super) async fn hand_over(&self, group: GroupId) -> TransferAttempt {
        let Some(partition) = partition_of(group) else { return TransferAttempt(None) };
        let listener = self.inner.handover.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(listener) = listener else { return TransferAttempt(None) };
        let started = Instant::now();
        let (done, answered) = oneshot::channel();
        let (attempt, attempt_over) = oneshot::channel();
        let outcome = match listener.try_send(Handover { partition, done, attempt_over }) {
            Err(_) => "no_listener",
            Ok(()) => match tokio::time::timeout(HANDOVER_WAIT, answered).await {
                Ok(Ok(())) => "done",
                Ok(Err(_)) => "dropped",
                Err(_) => "timeout",
            },
        };
        metrics::counter!("sluice_leadership_handovers_total", "outcome" => outcome).increment(1);
        tracing::info!(group = %group_name(group), outcome, elapsed_ms = started.elapsed().as_millis() as u64, "leadership handover");
        TransferAttempt(Some(attempt))
    }
}
