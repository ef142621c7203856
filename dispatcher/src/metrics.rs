//! Label helpers shared with ingress, so that dispatch metrics carry Knative's label values.

/// Event types as metric label values, capped in number (see ingress).
pub use sluice_broker::ingress::event_type_label;
