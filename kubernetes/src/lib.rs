//! Sluice on Kubernetes.
//!
//! What flows in: Knative objects from the Kubernetes API (Brokers of class `Sluice`, their Triggers,
//! Channels, Subscriptions, and Knative Serving objects), and the StatefulSet's pod identity (hostname,
//! headless Service). What flows out: the same objects pushed into the Sluice cluster's metadata group (the
//! data plane's source of truth), their status written back to Kubernetes, and the CRDs (`deploy/crds/`)
//! derived from Sluice's model types ([`crd`]).

pub mod bootstrap;
pub mod crd;

#[cfg(test)]
mod deploy_tests;
