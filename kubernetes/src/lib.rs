//! Sluice on Kubernetes.
//!
//! What flows in: Knative objects from the Kubernetes API (Brokers of class `Sluice`, their Triggers,
//! Channels, InMemoryChannels, Subscriptions and EventPolicies; with `--serving`, Knative Services,
//! Configurations and Routes), the controller's Lease, and a StatefulSet pod's identity (its name, the headless Service). What flows
//! out: the objects pushed into the Sluice cluster's metadata group (the data plane's source of truth) through
//! its admin API ([`sluice_api`]), their status written back to Kubernetes ([`controller`], deciding with
//! [`reconcile`]), the bootstrap steps of a StatefulSet's pods ([`bootstrap`]), and the CRDs of
//! `deploy/crds/`, derived from Sluice's model types ([`crd`]). Revisions a node runs become Deployments that
//! its serving scales ([`KubernetesRuntime`], with [`revision`] for their shape).

pub mod bootstrap;
pub mod controller;
pub mod crd;
mod error;
pub mod lease;
pub mod reconcile;
pub mod revision;
mod serving_runtime;
pub mod sluice_api;

pub use controller::{Context, Settings};
pub use error::Error;
pub use serving_runtime::KubernetesRuntime;
pub use sluice_api::{AdminApi, SluiceApi};

#[cfg(test)]
mod deploy_tests;
#[cfg(test)]
mod mock_api;
