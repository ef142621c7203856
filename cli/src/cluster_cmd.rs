//! `sluice cluster init | status`, through a node's admin API.

use anyhow::{Context, Result};
use clap::Subcommand;
use sluice_broker::cluster::parse_members;
use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_proto::admin::{InitRequest, Member, StatusReply, StatusRequest};

#[derive(Subcommand)]
pub enum ClusterCommand {
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
    /// Show a node's view of the cluster: its groups, leaders and indexes.
    Status {
        #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
        admin: String,
        /// Output format.
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
}

pub async fn connect(admin: &str) -> Result<ClusterClient<tonic::transport::Channel>> {
    ClusterClient::connect(format!("http://{admin}"))
        .await
        .with_context(|| format!("cannot reach the admin API at {admin} (--admin)"))
}

pub async fn init(admin: &str, members: &str, partitions: u32) -> Result<()> {
    let members = parse_members(members)?;
    let mut client = connect(admin).await?;
    client
        .init(InitRequest {
            members: members.into_iter().map(|(node_id, peer_addr)| Member { node_id, peer_addr }).collect(),
            partitions,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(())
}

pub async fn status(admin: &str) -> Result<StatusReply> {
    let mut client = connect(admin).await?;
    Ok(client.status(StatusRequest {}).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner())
}

pub async fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Init { admin, members, partitions } => {
            init(&admin, &members, partitions).await?;
            println!("cluster initialised: {partitions} partitions");
            Ok(())
        }
        ClusterCommand::Status { admin, output } => {
            let reply = status(&admin).await?;
            if output == "json" {
                let groups: Vec<_> = reply
                    .groups
                    .iter()
                    .map(|g| {
                        serde_json::json!({
                            "group": g.group_id, "name": g.name, "leader": g.leader_id, "state": g.state,
                            "term": g.term, "committed": g.committed_index, "applied": g.applied_index,
                            "last_log": g.last_log_index, "purged": g.purged_index, "snapshot": g.snapshot_index,
                            "voters": g.voters,
                        })
                    })
                    .collect();
                let json = serde_json::json!({
                    "node": reply.node_id, "initialized": reply.initialized, "partitions": reply.partitions, "groups": groups,
                });
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                println!(
                    "node {}  initialised: {}  partitions: {}",
                    reply.node_id, reply.initialized, reply.partitions
                );
                println!(
                    "{:<14} {:>7} {:<10} {:>6} {:>10} {:>10} {:>10} {:>10}  VOTERS",
                    "GROUP", "LEADER", "STATE", "TERM", "COMMITTED", "APPLIED", "SNAPSHOT", "PURGED"
                );
                let show = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                for g in &reply.groups {
                    let voters: Vec<String> = g.voters.iter().map(u64::to_string).collect();
                    println!(
                        "{:<14} {:>7} {:<10} {:>6} {:>10} {:>10} {:>10} {:>10}  {}",
                        g.name,
                        show(g.leader_id),
                        g.state,
                        g.term,
                        show(g.committed_index),
                        show(g.applied_index),
                        show(g.snapshot_index),
                        show(g.purged_index),
                        voters.join(",")
                    );
                }
            }
            Ok(())
        }
    }
}
