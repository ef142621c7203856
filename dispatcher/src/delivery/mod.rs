//! Delivering one admitted event (or, to a subscriber that opted in, a batch of them) to one consumer, from the
//! first HTTP attempt to its settlement.
//!
//! What flows in: an event (a batch) the partition dispatcher admitted, the consumer's resolved URLs and its
//! DeliverySpec. What flows out: a [`Settlement`] (delivered, dead-lettered to the sink or the consumer's
//! dead-letter stream, or dropped), with replies and dead letters appended to the log on the way.
//!
//! - [`policy`]: the decisions, pure: how a response is classified, when to retry (backoff, jitter,
//!   `Retry-After`), when to give up.
//! - [`sender`]: one HTTP attempt (binary, structured or batched mode) and what came back.
//! - [`task`]: the shell that runs the send loop by the policy's steps and settles the event.

pub(crate) mod policy;
pub(crate) mod sender;
pub(crate) mod task;

pub(crate) use task::Settlement;

/// The most bytes of events (their JSON format) one batched request to a subscriber carries; an event larger than
/// this by itself goes alone.
pub(crate) const MAX_DELIVERY_BATCH_BYTES: usize = 1 << 20;
