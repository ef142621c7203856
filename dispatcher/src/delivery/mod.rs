//! Delivering one admitted event to one consumer, from the first HTTP attempt to its settlement.
//!
//! What flows in: an event the partition dispatcher admitted, the consumer's resolved URLs and its
//! DeliverySpec. What flows out: a [`Settlement`] (delivered, dead-lettered to the sink or the consumer's
//! dead-letter stream, or dropped), with replies and dead letters appended to the log on the way.
//!
//! - [`policy`]: the decisions, pure: how a response is classified, when to retry (backoff, jitter,
//!   `Retry-After`), when to give up.
//! - [`sender`]: one HTTP attempt (binary or structured mode) and what came back.
//! - [`task`]: the shell that runs the send loop by the policy's steps and settles the event.

pub(crate) mod policy;
pub(crate) mod sender;
pub(crate) mod task;

pub(crate) use task::Settlement;
