//! Sluice's serving module: Knative Services run as revisions on the node, routed by Host and traffic split,
//! activated from zero.
//!
//! What flows in: the resource objects (Services, Configurations, Revisions, Routes, as stored in the
//! metadata group) and HTTP requests to `NAME.NAMESPACE.DOMAIN` on the node's HTTP port (the dispatcher's
//! deliveries to a Knative Service come the same way). What flows out: instances running the revisions
//! ([`runtime`]: child processes here; the interface is public and `sluice-kubernetes` implements it with
//! pods), proxied responses, the Revisions and Routes that Services own
//! (`children`, written on the metadata leader), and what the runtime learns about each revision (ready,
//! failed and why, instances), recorded for their status.
//!
//! The path of a request: [`http`] (host → Route) → [`balance`] (traffic split → revision) → [`gate`] (a
//! slot on a ready instance, or wait while [`revision`] starts one) → the instance. Each revision's task runs
//! its autoscaler (`sluice_autoscaler`) over the gate's exact samples and the dispatcher's backlog
//! ([`signals`]); [`shared`] holds what the parts share and is the dispatcher's view ([`SubscriberSignals`]:
//! in-flight limits, backlog reports). [`supervisor`] keeps the route table and the running revisions in line
//! with the objects ([`plan`]).
//!
//! Placement: instances run on the node that serves the request. Each node runs the instances its own
//! requests and deliveries need and scales them to zero when idle; a node that dies takes only its own
//! instances with it, and the requests and deliveries that were in flight there are retried by their clients
//! (the dispatcher redelivers from the committed offset). See `docs/serving.md`.

mod admin;
mod balance;
mod clock;
mod error;
mod facts;
mod gate;
mod http;
mod logs;
mod plan;
mod revision;
pub mod runtime;
mod shared;
mod signals;
mod supervisor;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_broker::{HostRouteSlot, HostRoutes, Node};
use sluice_controller::serving::autoscaling::AutoscalerDefaults;
use tokio::sync::oneshot;

pub use admin::{peer_routes, with_admin_routes};
pub use error::ServingError;
pub use logs::LogHub;
pub use runtime::Runtime;
pub use runtime::local::environment::valid_name as valid_instance_env_name;
pub use shared::{HostLimit, SubscriberSignals};
pub use sluice_autoscaler::{Backlog, Decision, Reason};

/// What a node's serving shares with its admin API and its dispatcher: the route table, the running
/// revisions (their autoscaler decisions), the dispatcher's signals. Made before the node starts (its admin
/// routes need it), handed to [`Serving::start`].
#[derive(Clone, Default)]
pub struct ServingState {
    shared: Arc<shared::Shared>,
}

impl ServingState {
    /// The dispatcher's side: in-flight limits towards Knative Services, backlog reports.
    pub fn signals(&self) -> SubscriberSignals {
        SubscriberSignals { shared: self.shared.clone() }
    }
}

/// How a node serves.
#[derive(Clone)]
pub struct ServingSettings {
    /// Routes are served as `NAME.NAMESPACE.DOMAIN`.
    pub domain: String,
    /// What a previous run left running is recorded under `DIR/instances`.
    pub data_dir: PathBuf,
    /// Where instances' output goes (also served by [`with_admin_routes`]).
    pub logs: Arc<LogHub>,
    /// The cluster's autoscaling defaults (Knative's `config-autoscaler` keys), under each revision's
    /// `autoscaling.knative.dev/*` annotations.
    pub autoscaler: AutoscalerDefaults,
    /// Between SIGTERM and SIGKILL when an instance stops.
    pub termination_grace: Duration,
    /// How long an instance may take to become ready before it is stopped as failed to start.
    pub progress_deadline: Duration,
    /// The most instances the local runtime runs at once on this node (over every revision).
    pub max_local_instances: usize,
    /// Variables of the node's environment that local instances get besides the few a base image sets
    /// (`--instance-env`; docs/serving.md).
    pub instance_env: Vec<String>,
    /// The rollout duration of a Route without `serving.knative.dev/rollout-duration` (Knative's
    /// `config-network` `rollout-duration`; 0: at once).
    pub rollout_default_ms: u64,
    /// What runs instances: `None` for child processes on this node ([`runtime`] has the interface a
    /// Kubernetes runtime implements).
    pub runtime: Option<Arc<dyn Runtime>>,
}

/// Kills at once (SIGKILL) the local instances a node with this `data_dir` ([`ServingSettings::data_dir`])
/// runs, for a node that stops without its graceful [`Serving::stop`] (a second Ctrl-C); answers how many.
pub fn kill_local_instances(data_dir: &std::path::Path) -> usize {
    runtime::local::kill_recorded_instances(&data_dir.join("instances"))
}

/// Serving on one node; stops (every instance drained and terminated) with [`Serving::stop`].
pub struct Serving {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// Starts serving Routes on the node's HTTP port (through `host_routes`).
    pub fn start(node: Node, host_routes: &HostRouteSlot, state: &ServingState, settings: ServingSettings) -> Serving {
        let shared = state.shared.clone();
        // Hosts are matched lowercased: the table's keys must be too.
        let settings = ServingSettings { domain: settings.domain.to_ascii_lowercase(), ..settings };
        let router: Arc<dyn HostRoutes> = Arc::new(http::HostRouter::new(shared.clone(), &settings.domain));
        if host_routes.set(router).is_err() {
            tracing::warn!("serving: the node's HTTP port already serves another router");
        }
        let (stop, stopped) = oneshot::channel();
        let supervisor_settings = supervisor::SupervisorSettings {
            domain: settings.domain.clone(),
            logs: settings.logs.clone(),
            autoscaler: settings.autoscaler.clone(),
            grace: settings.termination_grace,
            progress_deadline: settings.progress_deadline,
            rollout_default_ms: settings.rollout_default_ms,
        };
        let runtime = settings.runtime.clone().unwrap_or_else(|| {
            let instances_dir = settings.data_dir.join("instances");
            let inherited = runtime::local::environment::inherited(std::env::vars_os(), &settings.instance_env);
            Arc::new(runtime::local::LocalRuntime::new(instances_dir, settings.max_local_instances, inherited))
                as Arc<dyn Runtime>
        });
        let task = tokio::spawn(supervisor::run(node, supervisor_settings, runtime, shared, stopped));
        Serving { stop: Some(stop), task }
    }

    /// Stops every revision: in-flight requests finish, then each instance gets SIGTERM (SIGKILL after the
    /// grace period).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}
