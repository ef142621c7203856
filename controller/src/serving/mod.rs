//! Knative Serving's objects (`serving.knative.dev/v1`): Service, Configuration, Revision, Route.
//!
//! What flows in: the stored objects (and the facts the serving runtime records about each Revision, kind
//! [`REVISION_STATE_KIND`]). What flows out, all pure:
//! - [`model`]: the typed objects (the allow-list of fields);
//! - [`validate`](mod@validate): Knative's webhook rules, run by `crate::validate::validate_object`, with
//!   [`isolation`]'s: what a revision's pod may ask of the node and cluster it runs on, [`volumes`]': how
//!   its containers mount its volumes, and [`image`]'s: what an image reference is;
//! - [`children`]: what a Service and a Configuration own (a Configuration and a Route; one Revision per
//!   template generation) and what no longer has an owner, for the children reconcile loop to write;
//! - [`autoscaling`]: the autoscaling knobs of a Revision, from its annotations over the cluster's defaults;
//! - [`rollout`]: how a Route's traffic moves to a Configuration's new Revision over its rollout duration;
//! - [`routing`]: which revisions each Route (and tag) sends its traffic to, by weight, and under which host;
//!   one source for the Route's status and for the data plane;
//! - [`status`]: Knative's conditions, `url`, `traffic`, `latestReadyRevisionName`, ...

pub mod autoscaling;
pub mod children;
pub mod gc;
mod image;
pub(crate) mod isolation;
pub mod model;
pub mod rollout;
pub mod routing;
pub mod status;
pub(crate) mod validate;
pub(crate) mod volumes;

#[cfg(test)]
mod tests;

/// Knative's per-Revision progress deadline, on a template's (a Revision's) annotations: how long its instances
/// have to become ready before the Revision fails (the node's `--progress-deadline-ms` otherwise).
pub const PROGRESS_DEADLINE_ANNOTATION: &str = "serving.knative.dev/progress-deadline";

/// The progress deadline an annotation value asks for, in ms: Go's duration syntax, above zero, whole seconds
/// (Knative's webhook). Regression: the annotation was accepted and ignored.
pub fn progress_deadline_ms(value: &str) -> Result<u64, String> {
    let ms = autoscaling::millis(PROGRESS_DEADLINE_ANNOTATION, value)?;
    if ms == 0 {
        return Err(format!("{PROGRESS_DEADLINE_ANNOTATION}={} must be positive", value.trim()));
    }
    if ms % 1000 != 0 {
        return Err(format!(
            "{PROGRESS_DEADLINE_ANNOTATION}={} must be specified with at most second precision",
            value.trim()
        ));
    }
    Ok(ms)
}

/// The API version of every serving kind.
pub const SERVING_API_VERSION: &str = "serving.knative.dev/v1";
/// Facts the serving runtime records about a Revision (ready, failed and why, instances), stored next to the
/// resources under the Revision's name. Internal: not applied or listed by users.
pub const REVISION_STATE_KIND: &str = "RevisionState";

pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
pub const SERVICE_UID_LABEL: &str = "serving.knative.dev/serviceUID";
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
pub const CONFIGURATION_UID_LABEL: &str = "serving.knative.dev/configurationUID";
pub const CONFIGURATION_GENERATION_LABEL: &str = "serving.knative.dev/configurationGeneration";
pub const ROUTE_LABEL: &str = "serving.knative.dev/route";
/// Knative's label for who may reach a Route (a Service's labels reach its Route; `routing::visibility`).
pub const VISIBILITY_LABEL: &str = "networking.knative.dev/visibility";
/// The label's name before Knative moved it (still read by Knative's Route reconciler).
pub const LEGACY_VISIBILITY_LABEL: &str = "serving.knative.dev/visibility";

pub const AUTOSCALING_PREFIX: &str = "autoscaling.knative.dev/";

/// Knative's `config-defaults`: `revision-timeout-seconds` and `max-revision-timeout-seconds`.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 300;
pub const MAX_TIMEOUT_SECONDS: i64 = 600;
/// Knative's `container-concurrency-max-limit`.
pub const MAX_CONTAINER_CONCURRENCY: i64 = 1000;
/// Set by the runtime for every instance; a container may not set them, except `PORT` in a sidecar (Knative's
/// `reservedSidecarEnvVars`: the runtime sets `PORT` in the serving container only).
pub const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];
/// Ports Knative's queue-proxy and activator take (8012, 8013, 8022, 9090, 9091), and 8008, its profiling
/// port (Knative's `reservedPorts`).
pub const RESERVED_PORTS: [i64; 6] = [8008, 8012, 8013, 8022, 9090, 9091];
pub use crate::world::{DEFAULT_DOMAIN, ServingRuntime};
pub use isolation::{FEATURE_FLAGS, ServingFeatures};
