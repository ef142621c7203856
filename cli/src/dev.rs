//! `sluice dev`: one node in this process (initialised on first start), or
//! `--nodes N` local `sluice node` processes that it starts, initialises as
//! one cluster, restarts if they die, and stops on Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use sluice_broker::ClusterConfig;
use sluice_broker::{Listen, start_node};
use tokio::process::{Child, Command};

use crate::cluster_cmd;
use crate::node_cmd::{IngressArgs, settings};
use crate::tuning_args::TuningArgs;

#[derive(Args, Debug)]
pub(crate) struct DevArgs {
    /// Data directory (node N of a multi-node dev cluster uses DATA/node-N).
    #[arg(long, default_value = ".sluice")]
    data: PathBuf,
    /// HTTP address; with --nodes, node N uses this port + N - 1.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Admin gRPC address; with --nodes, node N uses this port + N - 1.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: String,
    /// Raft peer address; with --nodes, node N uses this port + N - 1 (default 127.0.0.1:7070). One node binds
    /// none unless this is given (say it to add nodes to a dev node later).
    #[arg(long)]
    peer_listen: Option<String>,
    /// Number of local nodes: 1 runs in this process, more run as child processes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9))]
    nodes: u64,
    /// Partitions when the cluster is first initialised (default: 1 for one node, 4 for more).
    #[arg(long)]
    partitions: Option<u32>,
    #[command(flatten)]
    tuning: TuningArgs,
    #[command(flatten)]
    ingress: IngressArgs,
    #[command(flatten)]
    serving: crate::node_cmd::ServingArgs,
    /// Transport encryption with a local CA made on first start under DATA/tls (ca.pem is the one to trust:
    /// `curl --cacert DATA/tls/ca.pem https://...`); `permissive` unless --transport-encryption says otherwise.
    #[arg(long)]
    tls: bool,
    #[command(flatten)]
    transport: crate::security_args::TlsArgs,
    #[command(flatten)]
    oidc: crate::security_args::OidcArgs,
    #[command(flatten)]
    admin_auth: crate::security_args::AdminAuthArgs,
}

impl DevArgs {
    fn tls_args(&self) -> Result<crate::security_args::TlsArgs> {
        if self.tls { self.transport.with_dev_certificates(&self.data) } else { Ok(self.transport.clone()) }
    }
}

fn with_port_offset(flag: &str, addr: &str, offset: u64) -> Result<String> {
    let mut parsed: SocketAddr = addr.parse().with_context(|| format!("{flag} {addr:?} is not IP:PORT"))?;
    let port = u64::from(parsed.port()) + offset;
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("{flag} {addr}: port + {offset} is out of range"))?;
    parsed.set_port(port);
    Ok(parsed.to_string())
}

/// Broker `default` in namespace `default`, created on a dev cluster's first start.
fn default_broker() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": { "name": "default", "namespace": "default" },
    })
}

/// Where a dev cluster's nodes listen for Raft peers by default (node N: this port + N - 1).
const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:7070";

fn member_peer_addr(peer_listen: Option<&str>) -> String {
    peer_listen.unwrap_or(DEFAULT_PEER_LISTEN).to_string()
}

pub(crate) async fn run(args: DevArgs) -> Result<()> {
    if args.nodes == 1 { run_single(args).await } else { run_cluster(args).await }
}

async fn run_single(args: DevArgs) -> Result<()> {
    let mut settings = settings(1, args.data.clone(), &args.tuning, &args.ingress)?;
    let tls_args = args.tls_args()?;
    settings.tls = tls_args.load()?;
    settings.authenticator = args.oidc.start(settings.tls.as_ref()).await?;
    settings.default_authorization = args.oidc.default_authorization_mode;
    settings.sender_identity = args.oidc.sender_identity()?;
    settings.admin_tokens = args.admin_auth.load(settings.tls.as_ref())?;
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    settings.serving_domain = args.serving.serving_domain.clone();
    settings.serving_rollout_default_ms = args.serving.rollout_default_ms();
    settings.serving_runtime = args.serving.serving_runtime.kind();
    settings.serving_features = args.serving.features()?;
    let listen = Listen { peer: args.peer_listen.clone(), http: args.http.clone(), admin: args.admin.clone() };
    // The member address recorded in the cluster config: the listener's, or the one a later --peer-listen
    // would use by default.
    let member_addr = member_peer_addr(args.peer_listen.as_deref());
    let logs = crate::node_cmd::ServingArgs::logs(&args.data);
    let serving_state = sluice_serving::ServingState::default();
    let running = start_node(
        settings,
        listen,
        args.ingress.limits()?,
        Some(crate::node_cmd::extra_admin(logs.clone(), serving_state.clone())),
    )
    .await?;
    if running.node.cluster_config().is_none() {
        let members = [(1, running.peer_addr.map(|a| a.to_string()).unwrap_or(member_addr))].into_iter().collect();
        let config = ClusterConfig::new(args.partitions.unwrap_or(1), members)?;
        running.node.init_cluster(config).await.context("initialising the dev cluster")?;
        let record = sluice_broker::resource_record(&default_broker().to_string(), &running.node)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        running.node.put_resource(record).await.context("creating the default broker")?;
    }
    let partitions = running.node.cluster_config().map(|c| c.partitions).unwrap_or(0);
    println!("sluice dev: 1 node, {partitions} partition(s), data in {}", args.data.display());
    println!("  http   {scheme}://{}  (/healthz, /readyz, /metrics; events: POST /default/default)", running.http_addr);
    if let Some(ca) = &tls_args.tls_ca {
        let mode = tls_args.transport_encryption.unwrap_or_default();
        println!("  tls    {mode}; trust {} (curl --cacert {0})", ca.display());
    }
    println!("  admin  {}  (gRPC: sluice.admin.v1)", running.admin_addr);
    match running.peer_addr {
        Some(peer) => println!("  peer   {peer}  (Raft)"),
        None => println!("  peer   none (one node; --peer-listen to bind one)"),
    }
    println!(
        "  ksvc   {scheme}://NAME.NAMESPACE.{}:{}  (Knative Services: sluice apply -f service.yaml)",
        args.serving.serving_domain,
        running.http_addr.port()
    );
    println!("Ctrl-C stops it; restarting on the same --data keeps everything.");
    let allocator_gauges = crate::allocator::publish_every(std::time::Duration::from_secs(5));
    // Not a StatefulSet's pod: the install is --serving-install's, or the default.
    let serving = args.serving.start(&running, &args.data, logs, &serving_state, None).await?;
    let dispatcher = crate::node_cmd::start_dispatcher(&running, &args.tuning, &serving_state)?;
    crate::shutdown_signal().await;
    allocator_gauges.abort();
    crate::node_cmd::stop(dispatcher, serving, running, &args.data).await;
    Ok(())
}

struct DevNode {
    id: u64,
    args: Vec<String>,
    admin: String,
    child: Option<Child>,
}

impl DevNode {
    fn spawn(&mut self) -> Result<()> {
        let exe = std::env::current_exe().context("cannot find the sluice executable")?;
        let child = Command::new(exe)
            .args(&self.args)
            .stdin(Stdio::null())
            // A terminal's Ctrl-C reaches this command only, which stops the nodes (`stop_children`).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }
}

async fn run_cluster(args: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data).with_context(|| format!("cannot create --data {}", args.data.display()))?;
    let tls_args = args.tls_args()?;
    // This command initialises the children over their admin ports: with TLS on, as a node (their certificate).
    let tls = tls_args.load()?;
    if let Some(tls) = &tls {
        crate::admin_channel::use_node_identity_unless_given(tls.files());
    }
    // Regression: the banner showed `http://` for nodes that serve TLS (and answer plaintext with 426).
    let http_scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(ca) = &tls_args.tls_ca {
        let mode = tls_args.transport_encryption.unwrap_or_default();
        println!("  tls    {mode}; trust {} (curl --cacert {0})", ca.display());
    }
    let mut nodes = Vec::new();
    let mut members = Vec::new();
    // One issuer for the whole cluster (every node serves its discovery and the union of the keys): node 1's
    // address unless one is given.
    let mut oidc = args.oidc.clone();
    if oidc.sender_issuer.is_none() {
        let encrypted =
            tls_args.transport_encryption.is_some_and(|mode| mode != sluice_security::TransportEncryption::Disabled);
        let scheme = if encrypted { "https" } else { "http" };
        oidc.sender_issuer = Some(format!("{scheme}://{}", with_port_offset("--http", &args.http, 0)?));
    }
    for id in 1..=args.nodes {
        let offset = id - 1;
        let peer =
            with_port_offset("--peer-listen", args.peer_listen.as_deref().unwrap_or(DEFAULT_PEER_LISTEN), offset)?;
        let http = with_port_offset("--http", &args.http, offset)?;
        let admin = with_port_offset("--admin", &args.admin, offset)?;
        let data = args.data.join(format!("node-{id}"));
        let mut node_args = vec![
            "node".into(),
            "--id".into(),
            id.to_string(),
            "--data".into(),
            data.display().to_string(),
            "--peer-listen".into(),
            peer.clone(),
            "--http".into(),
            http.clone(),
            "--admin".into(),
            admin.clone(),
            "--stop-with-parent".into(),
            std::process::id().to_string(),
        ];
        node_args.extend(args.tuning.to_args());
        node_args.extend(args.serving.to_args());
        node_args.extend(args.ingress.to_args());
        node_args.extend(tls_args.to_args());
        node_args.extend(oidc.to_args());
        // The children's admin APIs then ask for credentials: this command calls them with its own
        // (--token or SLUICE_TOKEN).
        node_args.extend(args.admin_auth.to_args());
        members.push(format!("{id}={peer}"));
        println!("  node {id}: http {http_scheme}://{http}  admin {admin}  peer {peer}  data {}", data.display());
        nodes.push(DevNode { id, args: node_args, admin, child: None });
    }
    for node in &mut nodes {
        node.spawn()?;
    }
    let result = supervise(&args, &mut nodes, &members.join(",")).await;
    stop_children(&mut nodes).await;
    result
}

async fn supervise(args: &DevArgs, nodes: &mut [DevNode], members: &str) -> Result<()> {
    let first_admin = nodes.first().map(|n| n.admin.clone()).unwrap_or_default();
    wait_for_admins(nodes).await?;
    let status = cluster_cmd::status(&first_admin).await?;
    if !status.initialized {
        cluster_cmd::init(&first_admin, members, args.partitions.unwrap_or(4)).await?;
        let mut client = sluice_proto::admin::resources_client::ResourcesClient::new(
            crate::admin_channel::connect(&first_admin).await?,
        );
        client
            .apply(sluice_proto::admin::ApplyResourceRequest {
                object_json: default_broker().to_string(),
                dry_run: false,
            })
            .await
            .map_err(|s| anyhow::anyhow!("creating the default broker: {}", s.message()))?;
    }
    let partitions = cluster_cmd::status(&first_admin).await?.partitions;
    println!("sluice dev: {} nodes, {partitions} partitions; Ctrl-C stops them all", nodes.len());
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = check.tick() => {
                for node in nodes.iter_mut() {
                    let exited = match node.child.as_mut() {
                        Some(child) => child.try_wait().ok().flatten(),
                        None => None,
                    };
                    if let Some(status) = exited {
                        eprintln!("sluice dev: node {} exited ({status}); restarting it", node.id);
                        node.spawn()?;
                    }
                }
            }
        }
    }
}

async fn wait_for_admins(nodes: &mut [DevNode]) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for node in nodes.iter_mut() {
        loop {
            if let Some(status) = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("node {} exited during start-up ({status}); see its error above", node.id);
            }
            if cluster_cmd::status(&node.admin).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("node {} did not answer on {} within 30s", node.id, node.admin);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// How long the nodes have for their graceful stop before they are told to stop at once.
const CHILD_GRACEFUL_STOP: Duration = Duration::from_secs(10);
/// How long they then have before they are killed.
const CHILD_FORCED_STOP: Duration = Duration::from_secs(5);

/// Stops the nodes together: SIGTERM to each (its graceful stop). A second Ctrl-C or SIGTERM to this command, or
/// [`CHILD_GRACEFUL_STOP`] passing, sends each a second SIGTERM (it stops at once and kills its instances); one
/// still running [`CHILD_FORCED_STOP`] later is killed. The nodes run in a process group of their own, so that a
/// terminal's Ctrl-C reaches them through this command only, and once.
async fn stop_children(nodes: &mut [DevNode]) {
    let pids: Vec<u32> = nodes.iter().filter_map(|node| node.child.as_ref().and_then(Child::id)).collect();
    let terminate = |pids: &[u32]| {
        for pid in pids {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    };
    let again = crate::next_signal();
    terminate(&pids);
    let stopped = {
        let wait_all = async {
            for node in nodes.iter_mut() {
                if let Some(child) = node.child.as_mut() {
                    let _ = child.wait().await;
                }
            }
        };
        tokio::pin!(wait_all, again);
        let graceful = tokio::time::sleep(CHILD_GRACEFUL_STOP);
        tokio::pin!(graceful);
        let forced = tokio::time::timeout(CHILD_GRACEFUL_STOP + CHILD_FORCED_STOP, async {
            tokio::select! {
                () = &mut wait_all => return,
                _ = &mut again => eprintln!("sluice dev: a second signal: the nodes stop at once"),
                () = &mut graceful => eprintln!("sluice dev: the nodes did not stop within {CHILD_GRACEFUL_STOP:?}: they stop at once"),
            }
            terminate(&pids);
            (&mut wait_all).await;
        });
        forced.await.is_ok()
    };
    if !stopped {
        for node in nodes.iter_mut() {
            if let Some(child) = node.child.as_mut() {
                let _ = child.kill().await;
            }
        }
    }
    for node in nodes.iter_mut() {
        node.child = None;
    }
}
