//! One redrive of a consumer's dead letters (`DeadLetters/Redrive`): each partition's letters handled in offset
//! order, delivered again or kept, and trimmed only once handled. In: the letters of the consumer's dead-letter
//! stream and the selection; out: deliveries (or appends into the Broker), copies kept at the stream's end, trims,
//! and progress for the caller.

use super::*;

/// One redrive of a consumer's dead letters.
pub(super) struct Redrive {
    pub(super) node: Node,
    pub(super) sender: Sender,
    pub(super) spec: Arc<ConsumerSpec>,
    /// The consumer's dead-letter stream.
    pub(super) stream: String,
    pub(super) to_broker: bool,
    /// (partition, offset) of the letters to redrive; empty: all of them.
    pub(super) selected: HashSet<(u32, u64)>,
}

impl Redrive {
    /// Redrives one partition's letters from `start` to `end` (exclusive) in offset order, reading them a batch
    /// at a time (at most [`REDRIVE_BATCH_BYTES`] held). Each letter is handled before the stream's start moves
    /// past it: delivered, dead-lettered again (by the delivery, as any failed event), or, when it is not
    /// selected or could not be redriven, copied to the stream's end first. So no letter is lost, and a redrive
    /// that stops halfway (the client gone, an error) leaves exactly the letters it did not handle. Letters
    /// after the last selected one are not touched, nor (without a selection) an earlier consumer's letters after
    /// the last of this one's. `Err(None)`: the client went away.
    pub(super) async fn partition(
        &self,
        partition: u32,
        start: u64,
        end: u64,
        progress: &mut RedriveProgress,
        tx: &tokio::sync::mpsc::Sender<Result<RedriveProgress, Status>>,
        stop: &tokio::sync::watch::Receiver<Option<Option<Status>>>,
    ) -> Result<(), Option<Status>> {
        let is_selected = |offset: u64| self.selected.is_empty() || self.selected.contains(&(partition, offset));
        let last_selected = if self.selected.is_empty() {
            end.checked_sub(1)
        } else {
            self.selected.iter().filter(|(p, o)| *p == partition && (start..end).contains(o)).map(|(_, o)| *o).max()
        };
        let Some(last_selected) = last_selected.filter(|last| *last >= start) else { return Ok(()) };
        let ctx = DeliveryContext { node: self.node.clone(), sender: self.sender.clone(), partition, limits: None };
        // Without a selection, another consumer's letters are moved out of the way only when one of ours lies
        // after them: those after our last one stay where they are. Regression: every redrive copied them to
        // the stream's end (a new arrival time each run) though nothing behind them needed the trim.
        let defer_others = self.selected.is_empty();
        let (mut others_held, mut others_held_bytes) = (Vec::new(), 0usize);
        let mut from = start;
        while from <= last_selected {
            let letters = self
                .node
                .read(&self.stream, partition, from, (last_selected + 1 - from) as usize, REDRIVE_BATCH_BYTES)
                .map_err(|e| Some(sluice_broker::status_of(e)))?;
            let Some(last_read) = letters.records.last().map(|r| r.offset) else { break };
            from = last_read + 1;
            for record in letters.records {
                if let Some(why) = stop.borrow().clone() {
                    return Err(why);
                }
                let offset = record.offset;
                let stored_bytes = record.payload.len();
                let letter = Letter::decode(&self.stream, offset, record.arrival_ms, record.payload);
                // Another consumer's letter is kept as one not selected: never sent to this one's subscriber.
                let ours = match &letter {
                    Letter::Event { event, .. } => letter_is_ours(event, &self.spec.uid),
                    Letter::Undecodable { .. } => true,
                };
                if defer_others && !ours {
                    others_held_bytes += stored_bytes;
                    others_held.push((offset, letter));
                    if others_held_bytes > REDRIVE_BATCH_BYTES {
                        // Too many to hold: moved out of the way now, as a selection's unselected letters are.
                        for (held_offset, held) in others_held.drain(..) {
                            self.handle(&ctx, partition, held_offset, held, false, progress, tx).await?;
                        }
                        others_held_bytes = 0;
                    }
                    continue;
                }
                for (held_offset, held) in others_held.drain(..) {
                    self.handle(&ctx, partition, held_offset, held, false, progress, tx).await?;
                }
                others_held_bytes = 0;
                self.handle(&ctx, partition, offset, letter, is_selected(offset) && ours, progress, tx).await?;
            }
        }
        Ok(())
    }

    /// One letter of [`Redrive::partition`].
    #[allow(clippy::too_many_arguments)]
    async fn handle(
        &self,
        ctx: &DeliveryContext,
        partition: u32,
        offset: u64,
        letter: Letter,
        selected: bool,
        progress: &mut RedriveProgress,
        tx: &tokio::sync::mpsc::Sender<Result<RedriveProgress, Status>>,
    ) -> Result<(), Option<Status>> {
        match (&letter, selected) {
            (Letter::Event { event, .. }, true) => {
                let redriven = self.redrive_one(ctx, offset, event).await;
                progress.processed += 1;
                let outcome = match redriven {
                    Redriven::Delivered if self.to_broker => "to_broker",
                    Redriven::Delivered => "delivered",
                    Redriven::DeadLetteredAgain => "dead_lettered_again",
                    Redriven::NotSent => "kept",
                };
                metrics::counter!("sluice_redrive_letters_total", "consumer" => self.spec.name.clone(),
                    "namespace" => self.spec.namespace.clone(), "outcome" => outcome)
                .increment(1);
                match redriven {
                    Redriven::Delivered => progress.delivered += 1,
                    Redriven::DeadLetteredAgain => progress.failed += 1,
                    Redriven::NotSent => {
                        progress.failed += 1;
                        self.keep(partition, &letter).await?;
                    }
                }
            }
            (Letter::Undecodable { .. }, true) => {
                progress.processed += 1;
                progress.failed += 1;
                self.keep(partition, &letter).await?;
            }
            (_, false) => self.keep(partition, &letter).await?,
        }
        self.node.trim(partition, &self.stream, offset + 1).await.map_err(|e| Some(sluice_broker::status_of(e)))?;
        if selected && tx.send(Ok(*progress)).await.is_err() {
            return Err(None);
        }
        Ok(())
    }

    async fn redrive_one(&self, ctx: &DeliveryContext, offset: u64, dead: &CloudEvent) -> Redriven {
        let source_offset =
            dead.get("sluicesourceoffset").and_then(|v| v.to_canonical_string().parse::<u64>().ok()).unwrap_or(offset);
        let event = strip_error_attributes(dead);
        if self.to_broker {
            return match redrive_to_broker(&self.node, &self.spec, event).await {
                Ok(()) => Redriven::Delivered,
                Err(e) => {
                    tracing::warn!(consumer = %self.spec.cursor, offset, error = %e, "redrive to the Broker failed; the letter stays");
                    Redriven::NotSent
                }
            };
        }
        // Delivered with the consumer's policy; what fails again is dead-lettered again (a new letter).
        // A redrive's deliveries take no place in the subscriber's limit, as before.
        match AssertUnwindSafe(deliver(ctx, &self.spec, source_offset, &event, &mut None)).catch_unwind().await {
            Ok(Settlement::Delivered { .. }) => Redriven::Delivered,
            Ok(Settlement::DeadLetterSink { .. } | Settlement::DeadLetterStream { .. }) => Redriven::DeadLetteredAgain,
            // Failed again under `sluice.dev/dead-letter: drop` (or not encodable again): the letter it came from
            // stays; a redrive is not a way to lose it.
            Ok(Settlement::Dropped { .. }) => Redriven::NotSent,
            Err(_) => {
                tracing::error!(consumer = %self.spec.cursor, offset, "a redriven delivery panicked; the letter stays");
                metrics::counter!("sluice_dispatch_panics_total").increment(1);
                Redriven::NotSent
            }
        }
    }

    /// Copies a letter to the end of the stream, so that trimming past it loses nothing. The event is copied whole
    /// (`knativearrivaltime` too); its stored arrival is asked for as it was, but the stream stores no arrival
    /// earlier than its last one (arrival times never go back), so the copy's is in practice the time of the copy.
    async fn keep(&self, partition: u32, letter: &Letter) -> Result<(), Option<Status>> {
        let (payload, arrival_ms) = match letter {
            Letter::Event { event, arrival_ms } => (
                event.encode().map(bytes::Bytes::from).map_err(|e| {
                    Some(error_status(ErrorCode::Internal, format!("a dead letter cannot be encoded again: {e}")))
                })?,
                *arrival_ms,
            ),
            Letter::Undecodable { raw, arrival_ms } => (raw.clone(), *arrival_ms),
        };
        self.node
            .append(&self.stream, partition, vec![payload], arrival_ms, None)
            .await
            .map(|_| ())
            .map_err(|e| Some(sluice_broker::status_of(e)))
    }
}

/// What became of one redriven letter.
enum Redriven {
    Delivered,
    /// Failed again and dead-lettered again by the delivery (a new letter, at the sink or the stream's end).
    DeadLetteredAgain,
    /// Not sent (the Broker refused it, a Subscription has no Broker, a bug): the letter must stay.
    NotSent,
}

async fn redrive_to_broker(node: &Node, spec: &ConsumerSpec, event: CloudEvent) -> Result<(), String> {
    let ReplyTarget::Broker { stream, settings } = &spec.reply else {
        return Err("only a Trigger's letters can go back to its Broker".into());
    };
    // Not deduplicated: the same (source, id) was accepted before, and redriving it is the point.
    let settings = IngressSettings { dedupe_window: None, ..settings.clone() };
    let mut event = event;
    event.attributes.remove("knativearrivaltime");
    sluice_broker::publish(node, stream, &settings, vec![event], crate::delivery::task::MAX_REPLY_EVENT_BYTES)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
