//! `sluice node`: one cluster member in this process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use sluice_broker::AppendLimits;
use sluice_broker::IngressLimits;
use sluice_broker::{ExtraAdminRoutes, ExtraRoutes, Listen, RunningNode, start_node};
use sluice_broker::{NodeSettings, ReadLimits};

use crate::tuning_args::TuningArgs;
use std::sync::Arc;

use sluice_controller::serving::autoscaling::AutoscalerDefaults;
use sluice_kubernetes::revision::{DEFAULT_INSTALL, Install};
use sluice_serving::{LogHub, Serving, ServingSettings, ServingState, SubscriberSignals};

#[derive(Args, Clone, Debug)]
pub(crate) struct NodeArgs {
    /// This node's id in the cluster (a positive number, stable across restarts). With --statefulset it
    /// comes from the pod's name instead.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), required_unless_present = "statefulset")]
    pub id: Option<u64>,
    /// Directory for this node's RocksDB and snapshots.
    #[arg(long)]
    pub data: PathBuf,
    /// Address for Raft traffic from the other nodes (IP:PORT).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub peer_listen: String,
    /// Address of the HTTP port: /healthz, /readyz, /metrics (IP:PORT).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Address of the admin gRPC API (IP:PORT).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Dial the peer advertised as ADDR at VIA instead (ADDR=VIA, repeatable): a proxy or a NAT address on
    /// this node's path to that peer. The cluster still names the peer by ADDR.
    #[arg(long = "peer-route", value_name = "ADDR=VIA", value_parser = parse_peer_route)]
    pub peer_routes: Vec<(String, String)>,
    /// Shut down (as on SIGTERM) when the process PID is no longer this node's parent: `sluice dev` starts
    /// its nodes with it, so that a `kill -9` of `sluice dev` does not leave them running.
    #[arg(long, value_name = "PID", hide = true)]
    pub stop_with_parent: Option<u32>,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub ingress: IngressArgs,
    #[command(flatten)]
    pub serving: ServingArgs,
    #[command(flatten)]
    pub tls: crate::security_args::TlsArgs,
    #[command(flatten)]
    pub oidc: crate::security_args::OidcArgs,
    #[command(flatten)]
    pub admin_auth: crate::security_args::AdminAuthArgs,
    #[command(flatten)]
    pub statefulset: crate::statefulset::StatefulSetArgs,
}

/// Returns once `parent` is no longer this process's parent (it died and the process was re-parented).
/// Polled: Linux tells a child of its parent's death only through `prctl`, which needs `unsafe`.
async fn parent_gone(parent: u32) {
    const PARENT_POLL: Duration = Duration::from_millis(500);
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(PARENT_POLL).await;
    }
}

/// How the node serves Knative Services.
#[derive(Args, Clone, Debug)]
pub(crate) struct ServingArgs {
    /// Knative Routes are served on the HTTP port as NAME.NAMESPACE.DOMAIN (curl and browsers resolve every
    /// *.localhost name to this machine).
    #[arg(long, default_value = sluice_controller::serving::DEFAULT_DOMAIN)]
    pub serving_domain: String,
    /// The cluster's autoscaling defaults as Knative's config-autoscaler keys (KEY=VALUE, repeatable):
    /// stable-window=60s, scale-to-zero-grace-period=30s, container-concurrency-target-default=100,
    /// max-scale-up-rate=1000, ... and Sluice's backlog-target=100, activation-backlog=0, tick-interval=2s.
    /// A revision's autoscaling.knative.dev/* annotations override them (docs/autoscaling.md), and are validated
    /// over them when applied through this node (max-scale-limit, allow-zero-initial-scale): give every node the
    /// same settings.
    #[arg(long = "autoscaler", value_name = "KEY=VALUE", value_parser = parse_autoscaler_key)]
    pub autoscaler: Vec<String>,
    /// Between SIGTERM and SIGKILL when an instance stops.
    #[arg(long, default_value_t = 30_000)]
    pub termination_grace_ms: u64,
    /// How long an instance may take to become ready before it is stopped as failed to start
    /// (`ProgressDeadlineExceeded`; Knative's progress deadline, 600 s by default).
    #[arg(long, default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_deadline_ms: u64,
    /// What runs revisions: `local` (child processes on this node, from each container's command) or
    /// `kubernetes` (a Deployment per revision and node, from its image, on the cluster the node runs in: the
    /// in-cluster service account, or KUBECONFIG).
    #[arg(long, value_enum, default_value_t = RuntimeArg::Local)]
    pub serving_runtime: RuntimeArg,
    /// With --serving-runtime kubernetes: the Sluice install this node belongs to, in the
    /// serving.sluice.dev/install label of the Deployments and Services it makes. A node starting deletes what
    /// its id left in its install only, so each install on one cluster needs its own (node ids repeat across
    /// installs). Default: with --statefulset, NAMESPACE.STATEFULSET (from $POD_NAMESPACE and the pod's name),
    /// which no other install shares; else `sluice`.
    #[arg(long, value_name = "NAME", value_parser = parse_serving_install)]
    pub serving_install: Option<String>,
    /// The most instances the local runtime runs at once on this node, over every revision (kubelet's default
    /// max-pods); past it an instance waits to start, and requests wait for it as at a cold start.
    #[arg(long, default_value_t = 110, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_local_instances: u64,
    /// A variable of this node's environment that local instances get too (repeatable). An instance otherwise
    /// gets only PATH, HOME, USER, LOGNAME, LANG, LC_ALL, LC_CTYPE, TZ and TMPDIR of it, as a container gets its
    /// image's environment and not the node's, then its container's env and Knative's variables (docs/serving.md).
    #[arg(long = "instance-env", value_name = "NAME", value_parser = parse_instance_env_name)]
    pub instance_env: Vec<String>,
    /// Enables (or disables) one of Knative's feature flags (config-features) that let a revision's pod ask
    /// for more of the node and the cluster, as FLAG=enabled (repeatable): kubernetes.podspec-volumes-hostpath,
    /// kubernetes.podspec-persistent-volume-claim, ... All are disabled by default (docs/serving.md).
    #[arg(long = "serving-feature", value_name = "FLAG=enabled", value_parser = parse_serving_feature)]
    pub serving_features: Vec<String>,
    /// The longest `timeoutSeconds` (and response-start and idle timeouts) a revision may ask for (Knative's
    /// config-defaults max-revision-timeout-seconds), at least the 300 s of a revision that sets none. Give every
    /// node the same value: the node an object is applied through validates it.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(300..=86_400))]
    pub max_revision_timeout_seconds: u32,
    /// How long a Route's traffic takes to move to a new latest Revision when it has no
    /// serving.knative.dev/rollout-duration annotation (Knative's config-network rollout-duration; Go's
    /// syntax: 380s, 10m). 0, the default, moves it at once. Give every node the same value.
    #[arg(long, default_value = "0", value_parser = parse_rollout_duration)]
    pub serving_rollout_duration: String,
}

fn parse_instance_env_name(name: &str) -> std::result::Result<String, String> {
    sluice_serving::valid_instance_env_name(name)?;
    Ok(name.to_string())
}

fn parse_rollout_duration(value: &str) -> std::result::Result<String, String> {
    sluice_controller::serving::rollout::parse_duration_ms(value)?;
    Ok(value.to_string())
}

/// A label value, as the install is (it goes into a label selector).
fn parse_serving_install(name: &str) -> std::result::Result<String, String> {
    Install::new(name)?;
    Ok(name.to_string())
}

fn parse_serving_feature(setting: &str) -> std::result::Result<String, String> {
    sluice_controller::serving::ServingFeatures::parse(&[setting])?;
    Ok(setting.to_string())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RuntimeArg {
    Local,
    Kubernetes,
}

impl RuntimeArg {
    pub(crate) fn kind(self) -> sluice_controller::serving::ServingRuntime {
        match self {
            RuntimeArg::Local => sluice_controller::serving::ServingRuntime::Local,
            RuntimeArg::Kubernetes => sluice_controller::serving::ServingRuntime::Kubernetes,
        }
    }
}

impl ServingArgs {
    /// The feature flags enabled (`--serving-feature`), the longest timeout (`--max-revision-timeout-seconds`)
    /// and the autoscaling defaults (`--autoscaler`): what an object applied through this node is validated with.
    pub(crate) fn features(&self) -> Result<sluice_controller::serving::ServingFeatures> {
        let autoscaler = AutoscalerDefaults::from_pairs(self.autoscaler.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("--autoscaler: {e}"))?;
        sluice_controller::serving::ServingFeatures::parse(&self.serving_features)
            .and_then(|features| {
                features.with_max_revision_timeout_seconds(i64::from(self.max_revision_timeout_seconds))
            })
            .map(|features| features.with_autoscaler_defaults(autoscaler))
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// The install the Kubernetes runtime labels what it makes with: `--serving-install`, else the StatefulSet's
    /// (`statefulset`, this pod's place in it), else `sluice`.
    fn install(&self, statefulset: Option<&crate::statefulset::Placement>) -> Result<Install> {
        match (&self.serving_install, statefulset) {
            (Some(name), _) => Install::new(name).map_err(|e| anyhow::anyhow!("--serving-install: {e}")),
            (None, Some(placement)) => placement
                .install()
                .map_err(|e| anyhow::anyhow!("the StatefulSet makes no install name ({e}): give --serving-install")),
            (None, None) => Install::new(DEFAULT_INSTALL).map_err(anyhow::Error::msg),
        }
    }

    /// Where a node's instances' output goes.
    pub(crate) fn logs(data: &std::path::Path) -> Arc<LogHub> {
        LogHub::new(data.join("serving").join("logs"))
    }

    pub(crate) async fn start(
        &self,
        running: &RunningNode,
        data: &std::path::Path,
        logs: Arc<LogHub>,
        state: &ServingState,
        statefulset: Option<&crate::statefulset::Placement>,
    ) -> Result<Serving> {
        let autoscaler = AutoscalerDefaults::from_pairs(self.autoscaler.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("--autoscaler: {e}"))?;
        let runtime: Option<Arc<dyn sluice_serving::Runtime>> = match self.serving_runtime {
            RuntimeArg::Local => None,
            RuntimeArg::Kubernetes => {
                let install = self.install(statefulset)?;
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| anyhow::anyhow!("--serving-runtime kubernetes: no Kubernetes API to talk to: {e}"))?;
                let node_id = running.node.settings().node_id;
                tracing::info!(node = node_id, install = install.as_str(), "revisions run as Deployments");
                let runtime = sluice_kubernetes::KubernetesRuntime::start(client, node_id, install)
                    .await
                    .map_err(|e| anyhow::anyhow!("--serving-runtime kubernetes: {e}"))?;
                Some(Arc::new(runtime))
            }
        };
        Ok(Serving::start(
            running.node.clone(),
            &running.host_routes,
            state,
            ServingSettings {
                domain: self.serving_domain.clone(),
                data_dir: data.join("serving"),
                logs,
                autoscaler,
                termination_grace: Duration::from_millis(self.termination_grace_ms),
                progress_deadline: Duration::from_millis(self.progress_deadline_ms),
                max_local_instances: usize::try_from(self.max_local_instances).unwrap_or(usize::MAX),
                instance_env: self.instance_env.clone(),
                rollout_default_ms: self.rollout_default_ms(),
                runtime,
            },
        ))
    }

    /// `--serving-rollout-duration` in ms (checked when parsed).
    pub(crate) fn rollout_default_ms(&self) -> u64 {
        sluice_controller::serving::rollout::parse_duration_ms(&self.serving_rollout_duration).unwrap_or(0)
    }

    /// The flags a child node is started with, to serve as this one does.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--serving-domain".to_string(),
            self.serving_domain.clone(),
            "--termination-grace-ms".into(),
            self.termination_grace_ms.to_string(),
            "--progress-deadline-ms".into(),
            self.progress_deadline_ms.to_string(),
            "--max-local-instances".into(),
            self.max_local_instances.to_string(),
            "--max-revision-timeout-seconds".into(),
            self.max_revision_timeout_seconds.to_string(),
            "--serving-rollout-duration".into(),
            self.serving_rollout_duration.clone(),
        ];
        if self.serving_runtime == RuntimeArg::Kubernetes {
            args.extend(["--serving-runtime".to_string(), "kubernetes".into()]);
        }
        if let Some(install) = &self.serving_install {
            args.extend(["--serving-install".to_string(), install.clone()]);
        }
        for pair in &self.autoscaler {
            args.extend(["--autoscaler".to_string(), pair.clone()]);
        }
        for name in &self.instance_env {
            args.extend(["--instance-env".to_string(), name.clone()]);
        }
        for setting in &self.serving_features {
            args.extend(["--serving-feature".to_string(), setting.clone()]);
        }
        args
    }
}

fn parse_autoscaler_key(pair: &str) -> std::result::Result<String, String> {
    AutoscalerDefaults::from_pairs([pair])?;
    Ok(pair.to_string())
}

/// Limits of the HTTP ingress and the append path.
#[derive(Args, Clone, Debug)]
pub(crate) struct IngressArgs {
    /// Largest event (binary body, or structured JSON) in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_event_bytes: usize,
    /// Most events in one batched request.
    #[arg(long, default_value_t = 1000)]
    pub max_batch_events: usize,
    /// Largest batched request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_batch_bytes: usize,
    /// Most headers in one request.
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,
    /// Most bytes of headers in one request.
    #[arg(long, default_value_t = 16 << 10)]
    pub max_header_bytes: usize,
    /// Most concurrent HTTP connections.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Of `--max-connections`, what one client address (an IPv6 /64) may hold at once; more from it are
    /// closed at accept. Behind a proxy every connection comes from the proxy's address.
    #[arg(long, default_value_t = 1024)]
    pub max_connections_per_address: usize,
    /// Count loopback clients against `--max-connections-per-address` too. Off by default: the node's own
    /// dispatcher reaches the revisions it serves over loopback, and a sidecar proxy forwards every client
    /// from loopback.
    #[arg(long)]
    pub limit_loopback_connections: bool,
    /// A request's headers must arrive within this time.
    #[arg(long, default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this time.
    #[arg(long, default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,
    /// A connection with no byte moving either way for this long is shut down gracefully (requests in flight
    /// finish; HTTP/2 gets GOAWAY).
    #[arg(long, default_value_t = 60_000)]
    pub idle_connection_timeout_ms: u64,
    /// Bytes of request bodies held at once over every connection, from their arrival until they are answered;
    /// past it requests get 429 (never less than the largest body allowed).
    #[arg(long, default_value_t = 256 << 20)]
    pub max_inflight_body_bytes: usize,
    /// What one connection's requests may hold of `--max-inflight-body-bytes` at once (never less than the
    /// largest body allowed), so that one client's HTTP/2 streams cannot take it all.
    #[arg(long, default_value_t = 32 << 20)]
    pub max_inflight_body_bytes_per_connection: usize,
    /// Appends waiting per partition before requests get 429.
    #[arg(long, default_value_t = 8192)]
    pub queue_depth: usize,
    /// Raft entries of appends per partition being committed at once; requests arriving meanwhile are
    /// batched into the next entry, so fewer in flight means larger entries.
    #[arg(long, default_value_t = AppendLimits::default().max_in_flight_entries)]
    pub append_inflight_entries: usize,
    /// While entries of a partition are in flight, a batch of appends smaller than this many events (and
    /// 64 KiB) waits for one of them to commit, gathering what arrives meanwhile; 1 sends every batch at once.
    #[arg(long, default_value_t = AppendLimits::default().pipeline_min_records)]
    pub append_pipeline_min_records: usize,
    /// The same for the appends a follower forwards to a partition's leader (counting only the RPCs in flight
    /// to that leader); 1 sends every forward at once.
    #[arg(long, default_value_t = AppendLimits::default().forward_pipeline_min_records)]
    pub forward_pipeline_min_records: usize,
}

impl IngressArgs {
    /// The flags a child node is started with, to take requests as this one would.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let flags: [(&str, String); 16] = [
            ("--max-event-bytes", self.max_event_bytes.to_string()),
            ("--max-batch-events", self.max_batch_events.to_string()),
            ("--max-batch-bytes", self.max_batch_bytes.to_string()),
            ("--max-headers", self.max_headers.to_string()),
            ("--max-header-bytes", self.max_header_bytes.to_string()),
            ("--max-connections", self.max_connections.to_string()),
            ("--max-connections-per-address", self.max_connections_per_address.to_string()),
            ("--header-read-timeout-ms", self.header_read_timeout_ms.to_string()),
            ("--body-read-timeout-ms", self.body_read_timeout_ms.to_string()),
            ("--idle-connection-timeout-ms", self.idle_connection_timeout_ms.to_string()),
            ("--max-inflight-body-bytes", self.max_inflight_body_bytes.to_string()),
            ("--max-inflight-body-bytes-per-connection", self.max_inflight_body_bytes_per_connection.to_string()),
            ("--queue-depth", self.queue_depth.to_string()),
            ("--append-inflight-entries", self.append_inflight_entries.to_string()),
            ("--append-pipeline-min-records", self.append_pipeline_min_records.to_string()),
            ("--forward-pipeline-min-records", self.forward_pipeline_min_records.to_string()),
        ];
        let mut args: Vec<String> = flags.into_iter().flat_map(|(flag, value)| [flag.to_string(), value]).collect();
        if self.limit_loopback_connections {
            args.push("--limit-loopback-connections".to_string());
        }
        args
    }

    /// The limits, refused when they leave events no room (`check_header_limits`).
    pub(crate) fn limits(&self) -> anyhow::Result<IngressLimits> {
        sluice_broker::cloudevent::check_header_limits(self.max_headers, self.max_header_bytes)
            .map_err(anyhow::Error::msg)?;
        Ok(IngressLimits {
            max_event_bytes: self.max_event_bytes,
            max_batch_events: self.max_batch_events,
            max_batch_bytes: self.max_batch_bytes,
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
            max_connections: self.max_connections.max(1),
            max_connections_per_address: self.max_connections_per_address.max(1),
            limit_loopback_connections: self.limit_loopback_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms.max(1)),
            idle_connection_timeout: Duration::from_millis(self.idle_connection_timeout_ms.max(1)),
            max_inflight_body_bytes: self.max_inflight_body_bytes,
            max_inflight_body_bytes_per_connection: self.max_inflight_body_bytes_per_connection,
        })
    }
}

/// The dispatcher's admin services (Consumers, DeadLetters) and serving's (Serving: logs, decisions), served on the node's
/// admin port; serving's node-local answers on its peer listener, for the node that gathers them.
pub(crate) fn extra_admin(logs: Arc<LogHub>, state: ServingState) -> ExtraAdminRoutes {
    Box::new(move |node, ingress_base, node_routes| ExtraRoutes {
        peer: sluice_serving::peer_routes(node.clone(), logs.clone(), state.clone()),
        admin: sluice_serving::with_admin_routes(
            sluice_dispatcher::admin_routes(node.clone(), ingress_base, node_routes),
            node,
            logs,
            state,
        ),
    })
}

/// Serving's signals as the dispatcher asks for them: the two crates do not know each other; this binary wires them.
struct ServingCapacity(SubscriberSignals);

impl sluice_dispatcher::SubscriberCapacity for ServingCapacity {
    fn limit(&self, host: &str) -> Option<sluice_dispatcher::DeliveryLimit> {
        self.0.limit(host).map(|limit| sluice_dispatcher::DeliveryLimit {
            max_in_flight: limit.max_in_flight,
            counted_as: limit.counted_as,
        })
    }
    fn report_backlog(&self, reporter: &str, host: &str, events: u64, ordered_keys: Option<u64>) {
        self.0.report_backlog(reporter, host, events, ordered_keys);
    }
    fn capacity_grown(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.capacity_grown()
    }
}

/// A node's stop after a first Ctrl-C or SIGTERM: gracefully (deliveries, then Knative Services' instances, then
/// the Raft groups), unless a second signal stops it at once, killing its local instances.
pub(crate) async fn stop(
    dispatcher: sluice_dispatcher::Dispatcher,
    serving: Serving,
    running: RunningNode,
    data: &Path,
) {
    let serving_dir = data.join("serving");
    crate::stop_gracefully_unless_signalled_again(
        async {
            dispatcher.shutdown().await;
            serving.stop().await;
            running.stop().await;
        },
        || {
            sluice_serving::kill_local_instances(&serving_dir);
        },
    )
    .await;
}

/// Starts the dispatcher of a running node (its ingress address resolves references to Brokers); deliveries
/// to the Knative Services this node serves follow their ready capacity.
pub(crate) fn start_dispatcher(
    running: &RunningNode,
    tuning: &TuningArgs,
    serving: &ServingState,
) -> Result<sluice_dispatcher::Dispatcher> {
    let settings = sluice_dispatcher::DispatcherSettings {
        ingress_base: format!("http://{}", running.http_addr),
        commit_interval: Duration::from_millis(tuning.dispatch_commit_interval_ms),
        subscriber_capacity: Some(Arc::new(ServingCapacity(serving.signals()))),
        node_routes: running.node_routes.clone(),
        ..Default::default()
    };
    Ok(sluice_dispatcher::Dispatcher::start(running.node.clone(), settings)?)
}

fn parse_peer_route(route: &str) -> std::result::Result<(String, String), String> {
    let (addr, via) = route.split_once('=').ok_or_else(|| format!("--peer-route {route:?}: expected ADDR=VIA"))?;
    for (what, value) in [("ADDR", addr), ("VIA", via)] {
        let is_host_port =
            value.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !is_host_port {
            return Err(format!("--peer-route {route:?}: {what} must be host:port"));
        }
    }
    Ok((addr.to_string(), via.to_string()))
}

pub(crate) fn settings(id: u64, data: PathBuf, tuning: &TuningArgs, ingress: &IngressArgs) -> Result<NodeSettings> {
    let limits = ingress.limits()?;
    // An append entry must hold the largest batch as stored: each event grows by Knative's attributes and its
    // framing (about 55 bytes) and an adopted trace context (`traceparent` about 70, `tracestate` up to 512),
    // counted per event of the largest batch; reviews found 4 MiB batches refused as "append too large" with
    // 55 counted (above about 1,200 events) and with 256 (1,000 events and a 512-byte `tracestate`). A binary
    // event may be stored with its attributes on top of its body (up to the header limit).
    const STORED_GROWTH_PER_EVENT_BYTES: usize = 1024;
    let largest_request = limits.max_batch_bytes.max(limits.max_event_bytes + limits.max_header_bytes);
    let growth = ingress.max_batch_events.max(1).saturating_mul(STORED_GROWTH_PER_EVENT_BYTES);
    let max_bytes_per_entry = largest_request.saturating_add(growth).saturating_add(64 << 10).max(1 << 20);
    let append_limits = AppendLimits {
        queue_capacity: ingress.queue_depth.max(1),
        max_bytes_per_entry,
        max_records_per_entry: ingress.max_batch_events.max(4096),
        max_in_flight_entries: ingress.append_inflight_entries.max(1),
        pipeline_min_records: ingress.append_pipeline_min_records.max(1),
        pipeline_min_bytes: AppendLimits::default().pipeline_min_bytes,
        forward_pipeline_min_records: ingress.forward_pipeline_min_records.max(1),
    };
    append_limits.validate().map_err(anyhow::Error::msg)?;
    Ok(NodeSettings {
        node_id: id,
        data_dir: data,
        tuning: tuning.to_tuning()?,
        append_limits,
        read_limits: ReadLimits::default(),
        retention_check_interval: Duration::from_millis(tuning.retention_check_ms),
        dedupe_idle_grace: Duration::from_millis(tuning.dedupe_idle_grace_ms),
        leader_balance_interval: (tuning.leader_balance_ms > 0)
            .then(|| Duration::from_millis(tuning.leader_balance_ms)),
        peer_routes: Default::default(),
        serving_domain: sluice_controller::serving::DEFAULT_DOMAIN.into(),
        serving_rollout_default_ms: 0,
        serving_runtime: Default::default(),
        serving_features: Default::default(),
        tls: None,
        authenticator: None,
        default_authorization: Default::default(),
        admin_tokens: None,
        sender_identity: Default::default(),
        event_attribute_limits: sluice_broker::cloudevent::AttributeLimits::within_headers(
            ingress.max_headers,
            ingress.max_header_bytes,
        ),
    })
}

pub(crate) async fn run(args: NodeArgs) -> Result<()> {
    let placement = if args.statefulset.statefulset {
        let mut placement =
            crate::statefulset::Placement::from_args(&args.statefulset, &args.peer_listen, &args.admin)?;
        crate::statefulset::prepare_data_dir(&mut placement, &args.data).await?;
        Some(placement)
    } else {
        None
    };
    let id = match (&placement, args.id) {
        (Some(placement), _) => placement.me.node_id(),
        (None, Some(id)) => id,
        (None, None) => anyhow::bail!("--id is required (or --statefulset, to take it from the pod's name)"),
    };
    let mut settings = settings(id, args.data.clone(), &args.tuning, &args.ingress)?;
    settings.tls = args.tls.load()?;
    if let Some(tls) = &settings.tls {
        crate::admin_channel::use_node_identity_unless_given(tls.files());
    }
    settings.authenticator = args.oidc.start(settings.tls.as_ref()).await?;
    settings.default_authorization = args.oidc.default_authorization_mode;
    settings.sender_identity = args.oidc.sender_identity()?;
    settings.admin_tokens = args.admin_auth.load(settings.tls.as_ref())?;
    settings.peer_routes = args.peer_routes.iter().cloned().collect();
    settings.serving_domain = args.serving.serving_domain.clone();
    settings.serving_rollout_default_ms = args.serving.rollout_default_ms();
    settings.serving_runtime = args.serving.serving_runtime.kind();
    settings.serving_features = args.serving.features()?;
    let listen = Listen { peer: Some(args.peer_listen.clone()), http: args.http.clone(), admin: args.admin.clone() };
    let logs = ServingArgs::logs(&args.data);
    let serving_state = ServingState::default();
    let running =
        start_node(settings, listen, args.ingress.limits()?, Some(extra_admin(logs.clone(), serving_state.clone())))
            .await?;
    tracing::info!(
        node = id,
        peer = ?running.peer_addr,
        http = %running.http_addr,
        admin = %running.admin_addr,
        data = %args.data.display(),
        "sluice node listening"
    );
    let allocator_gauges = crate::allocator::publish_every(std::time::Duration::from_secs(5));
    let serving = args.serving.start(&running, &args.data, logs, &serving_state, placement.as_ref()).await?;
    let dispatcher = start_dispatcher(&running, &args.tuning, &serving_state)?;
    let bootstrap =
        placement.map(|placement| tokio::spawn(crate::statefulset::bootstrap(running.node.clone(), placement)));
    match args.stop_with_parent {
        Some(parent) => {
            tokio::select! {
                _ = crate::shutdown_signal() => {}
                _ = parent_gone(parent) => tracing::warn!(parent, "the parent process is gone"),
            }
        }
        None => crate::shutdown_signal().await,
    }
    if let Some(bootstrap) = bootstrap {
        bootstrap.abort();
    }
    allocator_gauges.abort();
    stop(dispatcher, serving, running, &args.data).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{IngressArgs, ServingArgs, TuningArgs};

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        ingress: IngressArgs,
        #[command(flatten)]
        tuning: TuningArgs,
    }

    #[derive(Parser)]
    struct ServingFlags {
        #[command(flatten)]
        serving: ServingArgs,
    }

    /// The install the Kubernetes runtime labels what it makes with (node ids repeat across installs): the one
    /// given, else `sluice` off a StatefulSet; a child node of `sluice dev` gets it too. A name that is no label
    /// value is refused when parsed: it goes into the label selector of the node's cleanup.
    #[test]
    fn the_serving_install_is_the_one_given_else_the_default_and_always_a_label_value() {
        let install = |flags: &[&str]| {
            let flags = ServingFlags::parse_from(std::iter::once("sluice").chain(flags.iter().copied()));
            flags.serving.install(None).map(|install| install.as_str().to_string()).map_err(|e| e.to_string())
        };
        assert_eq!(install(&[]), Ok("sluice".to_string()));
        assert_eq!(install(&["--serving-install", "team-a.sluice"]), Ok("team-a.sluice".to_string()));
        assert!(ServingFlags::try_parse_from(["sluice", "--serving-install", "a,b"]).is_err());
        let given = ServingFlags::parse_from(["sluice", "--serving-install", "team-a.sluice"]);
        let child = ServingFlags::parse_from(std::iter::once("sluice".to_string()).chain(given.serving.to_args()));
        assert_eq!(child.serving.serving_install.as_deref(), Some("team-a.sluice"));
    }

    /// Regression: `sluice dev --nodes N` started its nodes without `--leader-balance-ms`.
    #[test]
    fn tuning_flags_reach_a_child_node_as_given() {
        let given = Flags::parse_from([
            "sluice",
            "--heartbeat-ms",
            "70",
            "--election-timeout-ms",
            "300",
            "--snapshot-every-entries",
            "123",
            "--keep-entries-after-snapshot",
            "45",
            "--learner-catch-up-entries",
            "67",
            "--retention-check-ms",
            "89",
            "--leader-balance-ms",
            "0",
            "--dispatch-commit-interval-ms",
            "250",
        ]);
        let child = Flags::parse_from(std::iter::once("sluice".to_string()).chain(given.tuning.to_args()));
        assert_eq!(format!("{:?}", child.tuning), format!("{:?}", given.tuning));
        let defaults = Flags::parse_from(["sluice"]);
        assert_ne!(format!("{:?}", defaults.tuning), format!("{:?}", given.tuning), "the flags were read");
    }

    /// Regression: `sluice dev --nodes N` started its nodes without the ingress flags it was given.
    #[test]
    fn ingress_flags_reach_a_child_node_as_given() {
        let given = Flags::parse_from([
            "sluice",
            "--max-event-bytes",
            "4096",
            "--max-inflight-body-bytes-per-connection",
            "9999999",
            "--queue-depth",
            "7",
            "--idle-connection-timeout-ms",
            "5",
            "--max-connections-per-address",
            "3",
            "--limit-loopback-connections",
        ]);
        let child = Flags::parse_from(std::iter::once("sluice".to_string()).chain(given.ingress.to_args()));
        assert_eq!(format!("{:?}", child.ingress), format!("{:?}", given.ingress));
        let defaults = Flags::parse_from(["sluice"]);
        assert_ne!(format!("{:?}", defaults.ingress), format!("{:?}", given.ingress), "the flags were read");
    }

    /// Regression: `--max-headers 10` started a node that refused every event (413, too many attributes).
    #[test]
    fn header_limits_that_leave_events_no_room_stop_the_node_at_start() {
        let refused = |flags: &[&str]| {
            let flags = Flags::parse_from(std::iter::once("sluice").chain(flags.iter().copied()));
            flags.ingress.limits().err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(refused(&["--max-headers", "10"]).starts_with("--max-headers 10 leaves 4 attributes"));
        assert!(refused(&["--max-header-bytes", "3072"]).starts_with("--max-header-bytes 3072 leaves 0 bytes"));
        assert_eq!(refused(&["--max-headers", "16", "--max-header-bytes", "4096"]), "", "the smallest allowed");
        assert_eq!(refused(&[]), "", "the defaults");
    }

    /// Regression (review): an entry held the largest batch's bytes plus 64 KiB, while each stored event grows by
    /// about 55 bytes, so with `--max-batch-events` raised above about 1,200 a 4 MiB batch within every limit got
    /// "append too large".
    #[test]
    fn an_entry_holds_the_largest_batch_as_stored_however_many_events_it_may_have() {
        for events in ["1000", "5000", "50000"] {
            let flags = Flags::parse_from(["sluice", "--max-batch-events", events, "--max-batch-bytes", "4194304"]);
            let settings = super::settings(1, "/tmp/x".into(), &flags.tuning, &flags.ingress).expect("settings");
            // Knative's attributes and framing (55), an adopted `traceparent` (70) and 512-byte `tracestate` (525).
            let stored_growth_bytes = flags.ingress.max_batch_events * (55 + 70 + 525);
            assert!(
                settings.append_limits.max_bytes_per_entry >= 4_194_304 + stored_growth_bytes,
                "{events} events: {} bytes per entry",
                settings.append_limits.max_bytes_per_entry
            );
        }
    }

    /// Regression (review): limits whose largest entry no message between nodes can carry started, and
    /// replication failed at every try once such an entry came.
    #[test]
    fn limits_whose_entry_no_peer_message_carries_are_refused_at_start() {
        let settings = |bytes: &str| {
            let flags = Flags::parse_from(["sluice", "--max-batch-bytes", bytes]);
            super::settings(1, "/tmp/x".into(), &flags.tuning, &flags.ingress).map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(settings("8388608"), Ok(()), "8 MiB: fewer entries per message");
        let refused = settings("209715200").expect_err("200 MiB");
        assert!(refused.contains("--max-batch-bytes"), "{refused}");
    }
}
