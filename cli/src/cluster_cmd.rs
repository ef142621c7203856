//! `sluice cluster init | status | add-node | remove-node | transfer-leader | pre-stop`, through a node's admin API.
//! Exit codes follow `docs/operations.md` (3 not found, 4 refused, 5 unavailable).

use anyhow::{Context, Result};
use clap::Subcommand;
use sluice_broker::parse_members;
use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_proto::admin::{
    AddNodeRequest, InitRequest, Member, RemoveNodeRequest, StatusReply, StatusRequest, TransferLeaderRequest,
};

use crate::admin_cli::{from_status, human_age};

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Initialise a new cluster from its member list (send it to any one member).
    Init {
        /// Admin address of one member.
        #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
        admin: String,
        /// Every member: ID=PEER_ADDR,... (the nodes' --peer-listen addresses).
        #[arg(long)]
        members: String,
        /// Partitions of the cluster (fixed from now on).
        #[arg(long, default_value_t = 4)]
        partitions: u32,
    },
    /// Show a node's view of the cluster: members and whether it reaches them, groups, leaders, indexes, lag.
    Status {
        #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
        admin: String,
        /// Output format.
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
        output: String,
    },
    /// Add a running node (started with `sluice node`, no `cluster init`) to every group as a voter.
    AddNode {
        #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
        admin: String,
        /// The new node's --id.
        #[arg(long)]
        id: u64,
        /// The new node's --peer-listen address (host:port), as the other members reach it.
        #[arg(long)]
        peer: String,
    },
    /// Remove a member from every group (it stops serving partitions; stop it afterwards).
    RemoveNode {
        #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
        admin: String,
        /// The member's node id.
        #[arg(long)]
        id: u64,
    },
    /// Move a group's leadership to one of its voters.
    TransferLeader {
        #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
        admin: String,
        /// Group id: 0 = metadata, N = partition N-1 (as `cluster status` lists them).
        #[arg(long)]
        group: u32,
        /// Node id of the new leader.
        #[arg(long)]
        to: u64,
    },
    /// Before this node stops (a pod's preStop): hand its leaderships to other members, and on a StatefulSet
    /// scale-down (its ordinal at or past the StatefulSet's replicas) leave the cluster.
    PreStop {
        #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
        admin: String,
    },
}

pub(crate) async fn connect(admin: &str) -> Result<ClusterClient<crate::admin_channel::AdminChannel>> {
    crate::admin_channel::connect(admin).await.map(ClusterClient::new)
}

pub(crate) async fn init(admin: &str, members: &str, partitions: u32) -> Result<()> {
    let members = parse_members(members)?;
    let mut client = connect(admin).await?;
    client
        .init(InitRequest {
            members: members.into_iter().map(|(node_id, peer_addr)| Member { node_id, peer_addr }).collect(),
            partitions,
        })
        .await
        .map_err(from_status)?;
    Ok(())
}

pub(crate) async fn status(admin: &str) -> Result<StatusReply> {
    let mut client = connect(admin).await?;
    Ok(client.status(StatusRequest {}).await.map_err(from_status)?.into_inner())
}

/// The status as plain data (for `-o json|yaml`).
fn status_value(reply: &StatusReply) -> serde_json::Value {
    let members: Vec<_> = reply
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.node_id, "peer": m.peer_addr, "reachable": m.reachable, "checked_by": m.checked_by,
                "heartbeat_age_ms": m.heartbeat_age_ms, "initial": m.initial,
            })
        })
        .collect();
    let groups: Vec<_> = reply
        .groups
        .iter()
        .map(|g| {
            let replicas: Vec<_> = g
                .replicas
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "node": r.node_id, "voter": r.voter, "matched": r.matched_index, "lag": r.lag,
                        "heartbeat_age_ms": r.heartbeat_age_ms,
                    })
                })
                .collect();
            serde_json::json!({
                "group": g.group_id, "name": g.name, "leader": g.leader_id, "state": g.state,
                "term": g.term, "committed": g.committed_index, "applied": g.applied_index,
                "last_log": g.last_log_index, "purged": g.purged_index, "snapshot": g.snapshot_index,
                "voters": g.voters, "learners": g.learners, "lag_known": g.lag_known, "replicas": replicas,
            })
        })
        .collect();
    serde_json::json!({
        "node": reply.node_id, "initialized": reply.initialized, "removed": reply.removed,
        "partitions": reply.partitions, "members": members, "groups": groups,
    })
}

fn print_status_table(reply: &StatusReply) -> Result<()> {
    let show = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    outln!(
        "node {}  initialised: {}  partitions: {}{}",
        reply.node_id,
        reply.initialized,
        reply.partitions,
        if reply.removed { "  (REMOVED from the cluster)" } else { "" }
    )?;
    if !reply.members.is_empty() {
        outln!()?;
        outln!("{:<6} {:<24} {:<10} {:<10} {:<8}", "MEMBER", "PEER", "REACHABLE", "CHECKED", "INITIAL")?;
        for m in &reply.members {
            let checked = match m.heartbeat_age_ms {
                Some(age) if m.checked_by == "heartbeat" => format!("hb {}", human_age(age.max(1))),
                _ => m.checked_by.clone(),
            };
            outln!(
                "{:<6} {:<24} {:<10} {:<10} {:<8}",
                m.node_id,
                m.peer_addr,
                if m.reachable { "yes" } else { "NO" },
                checked,
                if m.initial { "yes" } else { "no" }
            )?;
        }
    }
    outln!()?;
    outln!(
        "{:<14} {:>7} {:<10} {:>6} {:>10} {:>10} {:>10} {:>10}  {:<12} {:<10} LAG",
        "GROUP",
        "LEADER",
        "STATE",
        "TERM",
        "COMMITTED",
        "APPLIED",
        "SNAPSHOT",
        "PURGED",
        "VOTERS",
        "LEARNERS"
    )?;
    for g in &reply.groups {
        let list = |ids: &[u64]| {
            let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
            if ids.is_empty() { "-".to_string() } else { ids.join(",") }
        };
        let lag = if g.lag_known {
            let parts: Vec<String> = g.replicas.iter().map(|r| format!("{}:{}", r.node_id, show(r.lag))).collect();
            parts.join(" ")
        } else {
            "(known on the leader)".to_string()
        };
        outln!(
            "{:<14} {:>7} {:<10} {:>6} {:>10} {:>10} {:>10} {:>10}  {:<12} {:<10} {}",
            g.name,
            show(g.leader_id),
            g.state,
            g.term,
            show(g.committed_index),
            show(g.applied_index),
            show(g.snapshot_index),
            show(g.purged_index),
            list(&g.voters),
            list(&g.learners),
            lag
        )?;
    }
    Ok(())
}

pub(crate) async fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Init { admin, members, partitions } => {
            init(&admin, &members, partitions).await?;
            outln!("cluster initialised: {partitions} partitions")?;
            Ok(())
        }
        ClusterCommand::Status { admin, output } => {
            let reply = status(&admin).await?;
            match output.as_str() {
                "json" => outln!("{}", serde_json::to_string_pretty(&status_value(&reply))?)?,
                "yaml" => out!("{}", serde_yaml_ng::to_string(&status_value(&reply)).context("encoding YAML")?)?,
                _ => print_status_table(&reply)?,
            }
            Ok(())
        }
        ClusterCommand::AddNode { admin, id, peer } => {
            let mut client = connect(&admin).await?;
            client.add_node(AddNodeRequest { node_id: id, peer_addr: peer.clone() }).await.map_err(from_status)?;
            outln!("node {id} ({peer}) added: a voter in every group")?;
            Ok(())
        }
        ClusterCommand::RemoveNode { admin, id } => {
            let mut client = connect(&admin).await?;
            client.remove_node(RemoveNodeRequest { node_id: id }).await.map_err(from_status)?;
            outln!("node {id} removed from every group; it serves no partition now and can be stopped")?;
            Ok(())
        }
        ClusterCommand::PreStop { admin } => pre_stop(&admin).await,
        ClusterCommand::TransferLeader { admin, group, to } => {
            let mut client = connect(&admin).await?;
            let reply = client
                .transfer_leader(TransferLeaderRequest { group_id: group, to_node_id: to })
                .await
                .map_err(from_status)?
                .into_inner();
            outln!("group {group} is now led by node {}", reply.leader_id)?;
            Ok(())
        }
    }
}

/// `cluster pre-stop`: best effort, each step logged; a stopping pod must not hang on a failed step.
async fn pre_stop(admin: &str) -> Result<()> {
    use sluice_kubernetes::bootstrap::{GroupView, PodIdentity, handover, leave_on_stop};
    let reply = status(admin).await?;
    let groups: Vec<GroupView> = reply
        .groups
        .iter()
        .map(|g| GroupView { group_id: g.group_id, leader: g.leader_id, voters: g.voters.clone() })
        .collect();
    let reachable: Vec<u64> = reply.members.iter().filter(|m| m.reachable).map(|m| m.node_id).collect();
    let mut client = connect(admin).await?;
    for (group, to) in handover(reply.node_id, &groups, &reachable) {
        let request = TransferLeaderRequest { group_id: group, to_node_id: to };
        match tokio::time::timeout(std::time::Duration::from_secs(10), client.transfer_leader(request)).await {
            Ok(Ok(_)) => outln!("group {group}: leadership handed to node {to}")?,
            Ok(Err(e)) => outln!("group {group}: handing leadership to node {to} failed: {}", e.message())?,
            Err(_) => outln!("group {group}: handing leadership to node {to} took over 10 s; left")?,
        }
    }
    // A StatefulSet pod whose ordinal the StatefulSet no longer wants leaves the cluster.
    let Some(pod) = std::env::var("POD_NAME").ok().and_then(|name| PodIdentity::from_hostname(&name).ok()) else {
        return Ok(());
    };
    let Some(replicas) = statefulset_replicas(&pod.set).await else {
        outln!("the StatefulSet's replicas are unknown: staying a member")?;
        return Ok(());
    };
    if leave_on_stop(&pod, replicas) && reply.members.len() > 1 {
        match client.remove_node(RemoveNodeRequest { node_id: reply.node_id }).await {
            Ok(_) => outln!("scaled down to {replicas}: node {} left the cluster", reply.node_id)?,
            Err(e) => outln!("scaled down to {replicas}: leaving failed: {}", e.message())?,
        }
    }
    Ok(())
}

/// The desired replicas of StatefulSet `name` in this pod's namespace, read through the Kubernetes API.
async fn statefulset_replicas(name: &str) -> Option<u32> {
    let client = kube::Client::try_default().await.ok()?;
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let sets: kube::Api<k8s_openapi::api::apps::v1::StatefulSet> = kube::Api::namespaced(client, &namespace);
    let set = tokio::time::timeout(std::time::Duration::from_secs(5), sets.get(name)).await.ok()?.ok()?;
    set.spec.and_then(|s| s.replicas).and_then(|r| u32::try_from(r).ok())
}
