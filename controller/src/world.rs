//! What status and resolution are computed from: the objects that exist ([`World`]) and where the node
//! serves them ([`Environment`]). A leaf: eventing's and serving's status both read it.

use serde_json::Value;

/// The domain Routes are served under when none is configured: `NAME.NAMESPACE.localhost`. Browsers and curl
/// resolve every `*.localhost` name to loopback (RFC 6761), so a newcomer can type the URL.
pub const DEFAULT_DOMAIN: &str = "localhost";

/// What reconciling needs to know besides the objects.
#[derive(Clone, Debug)]
pub struct Environment {
    /// Base URL of the ingress, e.g. `http://127.0.0.1:8080`.
    pub ingress_base: String,
    /// The domain Knative Routes are served under (`NAME.NAMESPACE.DOMAIN` on the ingress port).
    pub serving_domain: String,
}

impl Environment {
    /// The environment of a node whose ingress is `ingress_base`, serving Routes under the default domain.
    pub fn new(ingress_base: impl Into<String>) -> Self {
        Environment { ingress_base: ingress_base.into(), serving_domain: DEFAULT_DOMAIN.into() }
    }

    /// The environment of a node whose ingress is `ingress_base`, serving Routes under `serving_domain`.
    pub fn with_domain(ingress_base: impl Into<String>, serving_domain: &str) -> Self {
        Environment { ingress_base: ingress_base.into(), serving_domain: serving_domain.to_ascii_lowercase() }
    }
}

/// The objects that exist, as stored JSON.
pub struct World<'a> {
    pub objects: &'a [Value],
}

impl World<'_> {
    pub(crate) fn find(&self, kind: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.iter().find(|o| {
            o.get("kind").and_then(Value::as_str) == Some(kind)
                && o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace)
                && o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
        })
    }
}
