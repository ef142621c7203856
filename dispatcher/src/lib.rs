//! Sluice's dispatcher.
//!
//! Events flow in from the broker's logs; filter decisions flow out: for each event and each Trigger, the
//! dispatcher decides whether the event matches the Trigger's filter and therefore has to be delivered to its
//! subscriber. For now this crate holds the filter engine: the CloudEvents Expression Language ([`cesql`]), a
//! parser turning an expression into an [`cesql::Expression`] and a pure, synchronous evaluator computing its
//! value against an event's context attributes; and the Trigger filters built on it ([`filter`]): Knative's
//! `filter.attributes` and the Subscriptions API dialects, compiled once per Trigger and indexed by exact
//! values so that an event is evaluated only against the Triggers that may select it. Once an event is to be
//! delivered, [`delivery`] decides, attempt after attempt, whether the subscriber's answer completes the delivery,
//! calls for a retry and when (Knative's DeliverySpec backoff, `Retry-After`), or sends the event to the
//! dead-letter sink.

/// The CESQL engine (its own crate, shared with the controller).
pub use sluice_cesql as cesql;
pub mod delivery;
pub mod filter;
