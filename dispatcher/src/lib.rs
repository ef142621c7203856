//! Sluice's dispatcher: delivers the events of Brokers and Channels to their Triggers and Subscriptions, at
//! least once.
//!
//! What flows through it: resource objects (Brokers, Triggers, Channels, Subscriptions) become
//! [`consumer::ConsumerSpec`]s — resolved URLs, a compiled [`filter`] (Knative's attributes, the Subscriptions
//! API dialects and [`cesql`]), a [`delivery::policy`] and Sluice's annotations. The [`supervisor`] runs one
//! [`partition::PartitionDispatcher`] per (stream, partition) on the node leading that partition. It reads
//! the committed log, matches each event once against all consumers through a [`filter::FilterIndex`], and
//! admits matches into each consumer's [`window`] (ordering per key, in-flight bound, commit watermark); a
//! [`rate`] limiter paces starts. Each admitted event is delivered by [`delivery`]: HTTP attempts via
//! [`delivery::sender`], the retry/dead-letter decisions of [`delivery::policy`], replies appended to the Broker through the
//! log, dead letters to the sink or the consumer's dead-letter stream. Watermarks are committed through the
//! partition's Raft group, so a new leader resumes where the old one left off.
//!
//! Subscribers that say how much they can take (Knative Services run by the node's serving, through
//! [`SubscriberCapacity`]) get no more in-flight deliveries than that: the rest wait in the log, and the
//! backlog is reported to their autoscaler ([`capacity`]).
//!
//! The decisions (filters, CESQL, backoff, windows, rate) are pure and synchronous, tested without sockets;
//! the tokio tasks only carry them out.

/// The CESQL engine (its own crate, shared with the controller).
pub use sluice_cesql as cesql;
mod admin;
mod capacity;
mod consumer;
mod delivery;
mod holds;
use sluice_cloudevent::filter;
mod partition;
mod rate;
mod redrive_lease;
mod stats;
mod supervisor;
mod window;

pub use admin::routes as admin_routes;
pub use capacity::{DeliveryLimit, SubscriberCapacity};
pub use supervisor::{DispatchError, Dispatcher, DispatcherSettings};
