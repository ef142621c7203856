//! Sluice's dispatcher.
//!
//! Events flow in from the broker's logs; filter decisions flow out: for each event and each Trigger, the
//! dispatcher decides whether the event matches the Trigger's filter and therefore has to be delivered to its
//! subscriber. For now this crate holds the filter engine: the CloudEvents Expression Language ([`cesql`]), a
//! parser turning an expression into an [`cesql::Expression`] and a pure, synchronous evaluator computing its
//! value against an event's context attributes; and the Trigger filters built on it ([`filter`]): Knative's
//! `filter.attributes` and the Subscriptions API dialects, compiled once per Trigger and indexed by exact
//! values so that an event is evaluated only against the Triggers that may select it.

pub mod cesql;
pub mod filter;
