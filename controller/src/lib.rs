//! Knative's resources as Sluice keeps them: eventing (Broker, Trigger, Channel, InMemoryChannel, EventPolicy ([`policy`]),
//! Subscription) and serving ([`serving`]: Service, Configuration, Revision, Route).
//!
//! What flows through it: an object (YAML or JSON, as `kubectl apply` would
//! take it) is parsed into its kind's typed form ([`model`]), validated the
//! way Knative's webhook validates it, with errors that name the field path
//! ([`validate`]) after what Knative's defaulting webhook would add ([`admission`]), and given its Kubernetes metadata (uid, generation,
//! resourceVersion, creationTimestamp) when it is stored ([`meta`]). Objects
//! are stored as the JSON that was applied.
//!
//! Unknown fields are refused, with their path and the fields that are
//! known (`spec.delivery.retires: unknown field (known fields: backoffDelay,
//! ...)`), as Knative's webhook refuses them (it decodes with
//! `DisallowUnknownFields`) and as kubectl's strict field validation does: a
//! misspelt field silently ignored is a setting silently not applied. The
//! [`model`] types have every field of Knative's v1 types and are the only
//! allow-list; a field a newer Knative adds is added to the model when Sluice
//! supports it. `status` may hold anything (it is derived, never taken from
//! the applied object). Reading stored objects stays lenient.

pub mod admission;
mod fields;
pub mod meta;
pub mod model;
pub mod policy;
mod schema;
pub mod serving;
pub mod status;
pub mod validate;
mod world;

pub use validate::{FieldError, validate_object, validate_object_with};
