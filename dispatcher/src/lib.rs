//! Sluice's dispatcher.
//!
//! Events flow in from the broker's logs; filter decisions flow out: for each event and each Trigger, the
//! dispatcher decides whether the event matches the Trigger's filter and therefore has to be delivered to its
//! subscriber. For now this crate holds the filter engine for the CloudEvents Expression Language
//! ([`cesql`]): a parser turning an expression into an [`cesql::Expression`], and a pure, synchronous evaluator
//! computing its value against an event's context attributes.

pub mod cesql;
