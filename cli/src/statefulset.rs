//! `sluice node --statefulset`: a node that takes its id from its pod's name and forms (or joins) the cluster
//! by itself. The decisions are `sluice_kubernetes::bootstrap`'s; this loop observes (DNS, this node's state,
//! a founding member's status), asks for the next step, and carries it out, until the node is a member.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sluice_broker::{ClusterConfig, Node};
use sluice_kubernetes::bootstrap::{
    ClusterAnswer, Observed, OpenStep, PeerNaming, PodIdentity, Step, before_open, next_step,
};
use sluice_kubernetes::revision::Install;
use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_proto::admin::{AddNodeRequest, RemoveNodeRequest, StatusReply, StatusRequest};

/// How often a node that is not a member yet looks again.
const BOOTSTRAP_ROUND: Duration = Duration::from_secs(1);
/// How long one remote call of a round may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How many ordinals past the founders a pod on an empty volume asks about its node (a scaled-up cluster's
/// pods; a name that does not resolve fails at once).
const ORDINALS_PAST_FOUNDERS: u32 = 8;
/// How long removing this node (every group, one after another) may take.
const REMOVE_SELF_TIMEOUT: Duration = Duration::from_secs(600);

/// How a node finds its place in a StatefulSet (`deploy/statefulset.yaml`).
#[derive(Args, Clone, Debug)]
pub(crate) struct StatefulSetArgs {
    /// Run as a StatefulSet pod: the node id is the pod's ordinal + 1 (from $POD_NAME, else the hostname), and
    /// the node forms the cluster with its peers, or joins it, by itself (docs/kubernetes.md).
    #[arg(long, conflicts_with = "id")]
    pub statefulset: bool,
    /// With --statefulset: the pods that found the cluster (the StatefulSet's replicas at install).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub initial_members: u32,
    /// With --statefulset: partitions of a new cluster.
    #[arg(long, default_value_t = 4)]
    pub initial_partitions: u32,
    /// With --statefulset: the headless Service that names the pods.
    #[arg(long, default_value = "sluice-peers")]
    pub peer_service: String,
    /// With --statefulset: the cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// With --statefulset: a pod's host as its peers reach it, with {pod}, {ordinal}, {service}, {namespace}
    /// and {domain} filled in; the default is its DNS name under the headless Service.
    #[arg(long, default_value = sluice_kubernetes::bootstrap::DEFAULT_HOST_TEMPLATE)]
    pub peer_host_template: String,
}

/// This pod's name: $POD_NAME (the downward API), else $HOSTNAME, else the kernel's hostname.
fn pod_name() -> Result<String> {
    if let Some(name) = ["POD_NAME", "HOSTNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty())) {
        return Ok(name);
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname")?;
    Ok(name.trim().to_string())
}

/// Everything the loop needs to know about this pod and its peers.
#[derive(Clone, Debug)]
pub(crate) struct Placement {
    pub me: PodIdentity,
    naming: PeerNaming,
    admin_port: u16,
    initial_members: u32,
    initial_partitions: u32,
    /// Pods whose nodes the cluster listed when this pod asked before opening its data dir: asked too.
    known_ordinals: Vec<u32>,
    /// Whether this pod's node was removed because its volume was lost (it is added again as new).
    removed_for_lost_volume: bool,
}

impl Placement {
    pub(crate) fn from_args(args: &StatefulSetArgs, peer_listen: &str, admin: &str) -> Result<Placement> {
        let me = PodIdentity::from_hostname(&pod_name()?).map_err(anyhow::Error::msg)?;
        let port = |addr: &str, flag: &str| -> Result<u16> {
            addr.rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .with_context(|| format!("{flag} {addr:?} has no port"))
        };
        let naming = PeerNaming {
            host_template: args.peer_host_template.clone(),
            set: me.set.clone(),
            headless_service: args.peer_service.clone(),
            namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
            cluster_domain: args.cluster_domain.clone(),
            peer_port: port(peer_listen, "--peer-listen")?,
        };
        Ok(Placement {
            me,
            naming,
            admin_port: port(admin, "--admin")?,
            initial_members: args.initial_members,
            initial_partitions: args.initial_partitions,
            known_ordinals: Vec::new(),
            removed_for_lost_volume: false,
        })
    }

    /// The Sluice install this pod's node belongs to: its StatefulSet, by namespace and name (node ids repeat
    /// across StatefulSets; the pair does not).
    pub(crate) fn install(&self) -> Result<Install, String> {
        Install::of_statefulset(&self.naming.namespace, &self.naming.set)
    }

    fn admin_address(&self, ordinal: u32) -> String {
        format!("{}:{}", self.naming.host(ordinal), self.admin_port)
    }

    /// The other pods a round asks: the founders, then the pods of members seen before opening.
    fn others(&self) -> Vec<u32> {
        let mut ordinals: Vec<u32> = (0..self.initial_members).chain(self.known_ordinals.iter().copied()).collect();
        ordinals.sort_unstable();
        ordinals.dedup();
        ordinals.retain(|o| *o != self.me.ordinal);
        ordinals
    }
}

/// Before the node opens `data_dir`: when the dir is empty and the cluster lists this pod's node as a member
/// that ran before, its volume was lost, and the node is removed from the cluster first (the bootstrap adds
/// it again as a new node once it runs). Returns when the dir may be opened.
pub(crate) async fn prepare_data_dir(placement: &mut Placement, data_dir: &std::path::Path) -> Result<()> {
    let mut last_wait = String::new();
    loop {
        // `node-id` is the first thing a node writes in its data dir.
        let empty = !data_dir.join("node-id").try_exists().context("reading the data dir")?;
        let (answer, answered) = if empty { ask_cluster(placement).await } else { (ClusterAnswer::Nobody, vec![]) };
        if let ClusterAnswer::Members { members, .. } = &answer {
            placement.known_ordinals =
                members.iter().filter_map(|id| sluice_kubernetes::bootstrap::ordinal_of(*id)).collect();
        }
        match before_open(&placement.me, empty, &answer) {
            OpenStep::Open => return Ok(()),
            OpenStep::Wait { reason } => {
                if reason != last_wait {
                    tracing::info!(%reason, "statefulset: waiting before opening the data dir");
                    last_wait = reason;
                }
            }
            OpenStep::RemoveSelf { id } => {
                tracing::warn!(
                    node = id,
                    data = %data_dir.display(),
                    "statefulset: this pod's volume is empty but its node ran before (its volume was lost); removing the node from the cluster, to add it again as a new one"
                );
                match remove_self(&answered, placement, id).await {
                    Ok(()) => {
                        placement.removed_for_lost_volume = true;
                        tracing::info!(
                            node = id,
                            "statefulset: removed from the cluster; adding it again once it runs"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "statefulset: removing this node failed; trying again"),
                }
            }
        }
        tokio::time::sleep(BOOTSTRAP_ROUND).await;
    }
}

/// What the other pods say of the cluster (every member list and publication they report, merged: a pod
/// that lags may not list this node yet), and which of them answered.
async fn ask_cluster(placement: &Placement) -> (ClusterAnswer, Vec<u32>) {
    let founders_and_more = placement.initial_members.saturating_add(ORDINALS_PAST_FOUNDERS);
    let asked: Vec<u32> = (0..founders_and_more.max(placement.me.ordinal))
        .chain(placement.others())
        .filter(|o| *o != placement.me.ordinal)
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .collect();
    let replies = futures::future::join_all(asked.iter().map(|o| remote_status(placement.admin_address(*o)))).await;
    let mut answered = Vec::new();
    let mut members = std::collections::BTreeSet::new();
    let mut published = std::collections::BTreeSet::new();
    let mut initialised = false;
    for (ordinal, reply) in asked.iter().zip(replies) {
        let Some(reply) = reply else { continue };
        answered.push(*ordinal);
        if reply.initialized {
            initialised = true;
            members.extend(reply.members.iter().map(|m| m.node_id));
            published.extend(reply.members.iter().filter(|m| m.published).map(|m| m.node_id));
        }
    }
    let answer = match (answered.is_empty(), initialised) {
        (true, _) => ClusterAnswer::Nobody,
        (false, false) => ClusterAnswer::NotInitialised,
        (false, true) => ClusterAnswer::Members {
            members: members.into_iter().collect(),
            published: published.into_iter().collect(),
        },
    };
    (answer, answered)
}

async fn remote_status(admin: String) -> Option<StatusReply> {
    let call = async {
        let mut client = ClusterClient::new(crate::admin_channel::connect(&admin).await.ok()?);
        Some(client.status(StatusRequest {}).await.ok()?.into_inner())
    };
    tokio::time::timeout(CALL_TIMEOUT, call).await.ok().flatten()
}

async fn remove_self(answered: &[u32], placement: &Placement, id: u64) -> Result<()> {
    let mut last_error = anyhow::anyhow!("no pod answered");
    for ordinal in answered {
        let admin = placement.admin_address(*ordinal);
        let call = async {
            let mut client = ClusterClient::new(crate::admin_channel::connect(&admin).await?);
            client.remove_node(RemoveNodeRequest { node_id: id }).await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(REMOVE_SELF_TIMEOUT, call).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last_error = e.context(format!("remove-node through {admin}")),
            Err(_) => {
                last_error = anyhow::anyhow!("remove-node through {admin}: no answer within {REMOVE_SELF_TIMEOUT:?}")
            }
        }
    }
    Err(last_error)
}

/// Forms or joins the cluster, then returns. Runs beside the node until it is a member.
pub(crate) async fn bootstrap(node: Node, placement: Placement) {
    let mut last_wait = String::new();
    let joined = metrics::gauge!("sluice_statefulset_joined");
    joined.set(0.0);
    if placement.removed_for_lost_volume {
        metrics::counter!("sluice_statefulset_lost_volume_rejoins_total").increment(1);
    }
    loop {
        let observed = observe(&node, &placement).await;
        let step = next_step(&placement.me, &placement.naming, placement.initial_members, &observed);
        match step {
            Step::Joined => {
                joined.set(1.0);
                tracing::info!(node = placement.me.node_id(), "statefulset: this node is a cluster member");
                return;
            }
            Step::Wait { reason } => {
                if reason != last_wait {
                    tracing::info!(%reason, "statefulset: waiting");
                    last_wait = reason;
                }
            }
            Step::Init { members } => {
                let members: BTreeMap<u64, String> = members.into_iter().collect();
                tracing::info!(?members, "statefulset: initialising the cluster");
                let result = match ClusterConfig::new(placement.initial_partitions, members) {
                    Ok(config) => node.init_cluster(config).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "statefulset: init failed; trying again");
                }
            }
            Step::AddSelf { id, peer } => {
                if let Err(e) = add_self(&placement, id, &peer).await {
                    tracing::warn!(error = %e, "statefulset: asking a member to add this node failed; trying again");
                }
            }
        }
        tokio::time::sleep(BOOTSTRAP_ROUND).await;
    }
}

async fn observe(node: &Node, placement: &Placement) -> Observed {
    let mut resolvable = Vec::new();
    for ordinal in 0..placement.initial_members {
        let host = placement.naming.host(ordinal);
        if let Ok(Ok(mut addrs)) =
            tokio::time::timeout(CALL_TIMEOUT, tokio::net::lookup_host((host.as_str(), placement.naming.peer_port)))
                .await
            && addrs.next().is_some()
        {
            resolvable.push(ordinal);
        }
    }
    if let Some(config) = node.cluster_config() {
        return Observed { members: Some(config.members.keys().copied().collect()), resolvable };
    }
    // Not initialised here: a founding member may know the cluster (this node is new to it).
    for ordinal in placement.others() {
        if let Some(members) = remote_members(&placement.admin_address(ordinal)).await {
            return Observed { members: Some(members), resolvable };
        }
    }
    Observed { members: None, resolvable }
}

async fn remote_members(admin: &str) -> Option<Vec<u64>> {
    let call = async {
        let mut client = ClusterClient::new(crate::admin_channel::connect(admin).await.ok()?);
        let status = client.status(StatusRequest {}).await.ok()?.into_inner();
        status.initialized.then(|| status.members.iter().map(|m| m.node_id).collect())
    };
    tokio::time::timeout(CALL_TIMEOUT, call).await.ok().flatten()
}

async fn add_self(placement: &Placement, id: u64, peer: &str) -> Result<()> {
    let mut last_error = anyhow::anyhow!("no founding member answered");
    for ordinal in placement.others() {
        let admin = placement.admin_address(ordinal);
        let call = async {
            let mut client = ClusterClient::new(crate::admin_channel::connect(&admin).await?);
            client.add_node(AddNodeRequest { node_id: id, peer_addr: peer.to_string() }).await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(30), call).await {
            Ok(Ok(())) => {
                tracing::info!(%admin, id, %peer, "statefulset: added to the cluster");
                return Ok(());
            }
            Ok(Err(e)) => last_error = e.context(format!("add-node through {admin}")),
            Err(_) => last_error = anyhow::anyhow!("add-node through {admin}: no answer within 30 s"),
        }
    }
    Err(last_error)
}
