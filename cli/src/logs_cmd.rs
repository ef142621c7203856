//! `sluice logs ksvc NAME [--follow] [--tail N]`: the output of a Knative Service's instances (or a
//! Configuration's, or one Revision's), through the admin API's `Serving` service. Each node runs the instances
//! its own requests need (`docs/serving.md`); the node asked (`--admin`) gathers every node's lines, or gives
//! its own alone with `--this-node-only`. A node that could not be asked is named on stderr.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;
use sluice_controller::model::kind_info;
use sluice_proto::admin::LogsRequest;
use sluice_proto::admin::serving_client::ServingClient;

use crate::admin_cli::from_status;

#[derive(Args, Debug)]
pub(crate) struct LogsArgs {
    /// ksvc (Service), configuration or revision.
    kind: String,
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Keep printing new lines as the instances write them.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines of each revision (all, up to 10,000, by default).
    #[arg(long, default_value_t = 0)]
    tail: u32,
    /// Prefix each line with its revision and the node whose instance wrote it.
    #[arg(long)]
    prefix: bool,
    /// Only the lines of the instances the node asked (`--admin`) ran.
    #[arg(long)]
    this_node_only: bool,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

pub(crate) async fn run(args: LogsArgs) -> Result<()> {
    let kind = match kind_info(&args.kind).map(|k| k.kind) {
        Some(kind @ ("Service" | "Configuration" | "Revision")) => kind,
        _ => bail!("{:?}: logs are kept for ksvc, configuration or revision", args.kind),
    };
    let mut client = ServingClient::new(crate::admin_channel::connect(&args.admin).await?);
    let request = LogsRequest {
        kind: kind.into(),
        namespace: args.namespace,
        name: args.name,
        follow: args.follow,
        tail_lines: args.tail,
        this_node_only: args.this_node_only,
    };
    let mut stream = client.logs(request).await.map_err(from_status)?.into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(line) = stream.message().await.map_err(from_status)? {
        if !line.error.is_empty() {
            eprintln!("sluice logs: node {}: not asked: {}", line.node_id, line.error);
        } else if args.prefix {
            writeln!(out, "[{} node {}] {}", line.revision, line.node_id, line.line)?;
        } else {
            writeln!(out, "{}", line.line)?;
        }
        if args.follow {
            out.flush()?;
        }
    }
    Ok(())
}
