//! Sluice's autoscaler: how many instances of a revision should run, from HTTP concurrency (or requests per
//! second) and the event backlog, as one decision. Pure: no clock, no I/O, no tasks.
//!
//! What flows in: per bucket, a revision's traffic as its gate measured it ([`Sample`]: exact in-flight and
//! held requests integrated over time, requests arrived); per tick, an [`Observation`] (ready and running
//! instances, held requests, the dispatcher's [`Backlog`]). What flows out: a [`Decision`]: the instance
//! count and why. Serving's revision task carries decisions out; the Kubernetes controller can too. Time is
//! a monotonic clock's milliseconds (the wall clock only stamps decisions).
//!
//! `kpa` is Knative's KPA decision ported with its own tests, `window` its bucketed windows, [`decision`]'s
//! [`Autoscaler`] the state machine around it (backlog, activation, bounds, scale to zero), [`sim`] a
//! deterministic simulator that replays load traces against a model revision. The knobs are
//! `sluice_controller::serving::autoscaling`'s (they are validated where objects are). See
//! `docs/autoscaling.md` for what is Knative's and where Sluice differs.

pub mod decision;
mod kpa;
pub mod sim;
mod window;

pub use decision::{Autoscaler, Backlog, Decision, Observation, Reason, Sample, backlog_instances};
