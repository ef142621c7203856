//! Knative's resources as Sluice keeps them.
//!
//! What flows through it: an object (YAML or JSON, as `kubectl apply` would
//! take it) is parsed into its kind's typed form ([`model`]), validated the
//! way Knative's webhook validates it, with errors that name the field path
//! ([`validate`]), and given its Kubernetes metadata (uid, generation,
//! resourceVersion, creationTimestamp) when it is stored ([`meta`]). Objects
//! are stored as the JSON that was applied, so fields Sluice does not know
//! are kept (forward compatibility).

pub mod meta;
pub mod model;
pub mod status;
pub mod validate;

pub use validate::{FieldError, validate_object};
