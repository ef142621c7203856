//! What status and resolution are computed from: the objects that exist ([`World`]) and where the node
//! serves them ([`Environment`]). A leaf: eventing's and serving's status both read it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::serving::autoscaling::AutoscalerDefaults;

/// The domain Routes are served under when none is configured: `NAME.NAMESPACE.localhost`. Browsers and curl
/// resolve every `*.localhost` name to loopback (RFC 6761), so a newcomer can type the URL.
pub const DEFAULT_DOMAIN: &str = "localhost";

/// Knative's `default-authorization-mode`: what a Broker or Channel with no EventPolicy lets in (when sender
/// identity is on; without it nothing is authorized or refused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultAuthorization {
    /// Senders whose subject is a service account of the target's namespace
    /// (`system:serviceaccount:NS:...`).
    #[default]
    AllowSameNamespace,
    AllowAll,
    DenyAll,
}

impl DefaultAuthorization {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultAuthorization::AllowSameNamespace => "allow-same-namespace",
            DefaultAuthorization::AllowAll => "allow-all",
            DefaultAuthorization::DenyAll => "deny-all",
        }
    }
}

impl std::fmt::Display for DefaultAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DefaultAuthorization {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "allow-same-namespace" => Ok(DefaultAuthorization::AllowSameNamespace),
            "allow-all" => Ok(DefaultAuthorization::AllowAll),
            "deny-all" => Ok(DefaultAuthorization::DenyAll),
            other => Err(format!("{other:?} is not one of allow-same-namespace, allow-all, deny-all")),
        }
    }
}

/// What reconciling needs to know besides the objects.
#[derive(Clone, Debug)]
pub struct Environment {
    /// Base URL of the ingress, e.g. `http://127.0.0.1:8080`.
    pub ingress_base: String,
    /// The domain Knative Routes are served under (`NAME.NAMESPACE.DOMAIN` on the ingress port).
    pub serving_domain: String,
    /// What runs revisions: what a Revision needs to be runnable depends on it.
    pub serving_runtime: ServingRuntime,
    /// The ingress over TLS, when transport encryption is on.
    pub ingress_https: Option<HttpsIngress>,
    /// Sender identity is on: addresses carry the audience a token must be minted for.
    pub audiences: bool,
    /// What a Broker or Channel with no EventPolicy lets in (shown in its `EventPoliciesReady` condition).
    pub default_authorization: DefaultAuthorization,
    /// The hosts this node's data plane serves now, as its serving supervisor last installed them: a Route is
    /// `IngressReady` once they route as its traffic says. `None` where no data plane runs here (not judged).
    pub served_routes: Option<Arc<RouteTable>>,
    /// Now, wall clock (ms): where a Route's rollout stands (`serving::rollout`). Stamped when the environment
    /// is made; tests set it.
    pub now_ms: u64,
    /// The rollout duration of a Route without the annotation (`--serving-rollout-duration`; 0: at once).
    pub rollout_default_ms: u64,
    /// The node's autoscaling defaults (`--autoscaler`): a Revision whose annotations they make invalid (a
    /// `max-scale` above `max-scale-limit`) cannot run, and its status says why.
    pub serving_autoscaler: AutoscalerDefaults,
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where one host's requests go: revisions and their weights (percent; zero-weight targets are left out).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostTargets {
    pub namespace: String,
    /// The Route (or Configuration) served.
    pub name: String,
    pub targets: Vec<(String, u32)>,
}

/// Every host served, from the Routes that resolve (and the last good routing of those that do not resolve now)
/// and from Configurations without a Route of their name.
pub type RouteTable = BTreeMap<String, HostTargets>;

/// The node's ingress over TLS (transport-encryption `permissive` or `strict`): what Addressables advertise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsIngress {
    /// e.g. `https://127.0.0.1:8080`: the same port as the plaintext one (a connection's first byte tells them
    /// apart).
    pub base: String,
    /// The CA bundle (PEM) that signs the node's certificate: `CACerts` in every https address.
    pub ca_certs: String,
    /// `permissive`: the `http` address is advertised too; `strict`: https only.
    pub plaintext_too: bool,
}

/// What runs a node's revisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServingRuntime {
    /// Child processes on the node: a container's `command` runs, its image is not pulled.
    #[default]
    Local,
    /// A Deployment per revision (and node) on the Kubernetes cluster the node runs in: images run.
    Kubernetes,
}

impl Environment {
    /// The environment of a node whose ingress is `ingress_base`, serving Routes under the default domain.
    pub fn new(ingress_base: impl Into<String>) -> Self {
        Environment {
            ingress_base: ingress_base.into(),
            serving_domain: DEFAULT_DOMAIN.into(),
            serving_runtime: ServingRuntime::Local,
            ingress_https: None,
            audiences: false,
            default_authorization: DefaultAuthorization::default(),
            served_routes: None,
            now_ms: wall_clock_ms(),
            rollout_default_ms: 0,
            serving_autoscaler: AutoscalerDefaults::default(),
        }
    }

    /// The environment of a node whose ingress is `ingress_base`, serving Routes under `serving_domain`.
    pub fn with_domain(ingress_base: impl Into<String>, serving_domain: &str) -> Self {
        Environment {
            ingress_base: ingress_base.into(),
            serving_domain: serving_domain.to_ascii_lowercase(),
            serving_runtime: ServingRuntime::Local,
            ingress_https: None,
            audiences: false,
            default_authorization: DefaultAuthorization::default(),
            served_routes: None,
            now_ms: wall_clock_ms(),
            rollout_default_ms: 0,
            serving_autoscaler: AutoscalerDefaults::default(),
        }
    }

    /// The same, with Routes without a rollout annotation rolled out over `duration_ms`.
    pub fn with_rollout_default_ms(mut self, duration_ms: u64) -> Self {
        self.rollout_default_ms = duration_ms;
        self
    }

    /// Where rollouts stand for status computed in this environment.
    pub fn rollout_clock(&self) -> crate::serving::rollout::RolloutClock {
        crate::serving::rollout::RolloutClock { now_ms: self.now_ms, default_duration_ms: self.rollout_default_ms }
    }

    /// The same, with the ingress also (or only) served over TLS.
    pub fn with_https(mut self, https: Option<HttpsIngress>) -> Self {
        self.ingress_https = https;
        self
    }

    /// The same, with (or without) audiences in addresses.
    pub fn with_audiences(mut self, audiences: bool) -> Self {
        self.audiences = audiences;
        self
    }

    /// The same, with `mode` for Brokers and Channels no EventPolicy applies to.
    pub fn with_default_authorization(mut self, mode: DefaultAuthorization) -> Self {
        self.default_authorization = mode;
        self
    }

    /// The same, judging Routes' `IngressReady` against `table`, the hosts the node's data plane serves now.
    pub fn with_served_routes(mut self, table: Option<Arc<RouteTable>>) -> Self {
        self.served_routes = table;
        self
    }

    /// The same, with revisions run by `runtime`.
    pub fn with_runtime(mut self, runtime: ServingRuntime) -> Self {
        self.serving_runtime = runtime;
        self
    }

    /// The same, with revisions' autoscaling annotations resolved over `defaults` (the node's `--autoscaler`).
    pub fn with_autoscaler_defaults(mut self, defaults: AutoscalerDefaults) -> Self {
        self.serving_autoscaler = defaults;
        self
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
