//! `sluice node`: one cluster member in this process.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use sluice_broker::batcher::AppendLimits;
use sluice_broker::group::RaftTuning;
use sluice_broker::node::{NodeSettings, ReadLimits};
use sluice_broker::server::{self, Listen};

#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    /// This node's id in the cluster (a positive number, stable across restarts).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
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
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Args, Clone, Debug)]
pub struct TuningArgs {
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Raft election timeout, lower bound (the upper bound is twice this).
    #[arg(long, default_value_t = 600)]
    pub election_timeout_ms: u64,
    /// Build a snapshot of a group after this many Raft entries.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every_entries: u64,
    /// Raft entries kept behind a snapshot before the log is purged.
    #[arg(long, default_value_t = 1_000)]
    pub keep_entries_after_snapshot: u64,
}

impl TuningArgs {
    pub fn to_tuning(&self) -> anyhow::Result<RaftTuning> {
        if self.heartbeat_ms == 0 || self.election_timeout_ms <= self.heartbeat_ms * 2 {
            anyhow::bail!(
                "--election-timeout-ms ({}) must be more than twice --heartbeat-ms ({})",
                self.election_timeout_ms,
                self.heartbeat_ms
            );
        }
        Ok(RaftTuning {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_min_ms: self.election_timeout_ms,
            election_timeout_max_ms: self.election_timeout_ms * 2,
            snapshot_every_entries: self.snapshot_every_entries,
            keep_entries_after_snapshot: self.keep_entries_after_snapshot,
        })
    }
}

pub fn settings(id: u64, data: PathBuf, tuning: &TuningArgs) -> Result<NodeSettings> {
    Ok(NodeSettings {
        node_id: id,
        data_dir: data,
        tuning: tuning.to_tuning()?,
        append_limits: AppendLimits::default(),
        read_limits: ReadLimits::default(),
    })
}

pub async fn run(args: NodeArgs) -> Result<()> {
    let settings = settings(args.id, args.data.clone(), &args.tuning)?;
    let listen = Listen {
        peer: args.peer_listen.clone(),
        http: args.http.clone(),
        admin: args.admin.clone(),
    };
    let running = server::start(settings, listen).await?;
    tracing::info!(
        node = args.id,
        peer = %running.peer_addr,
        http = %running.http_addr,
        admin = %running.admin_addr,
        data = %args.data.display(),
        "sluice node listening"
    );
    crate::shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
