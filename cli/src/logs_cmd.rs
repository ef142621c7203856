//! `sluice logs ksvc NAME [--follow] [--tail N]`: the output of a Knative Service's instances (or a
//! Configuration's, or one Revision's), through the admin API's `Serving` service. Lines come from the node
//! asked (`--admin`): each node runs the instances its own requests need (`docs/serving.md`).

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
    /// Prefix each line with its revision.
    #[arg(long)]
    prefix: bool,
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
    };
    let mut stream = client.logs(request).await.map_err(from_status)?.into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(line) = stream.message().await.map_err(from_status)? {
        if args.prefix {
            writeln!(out, "[{}] {}", line.revision, line.line)?;
        } else {
            writeln!(out, "{}", line.line)?;
        }
        if args.follow {
            out.flush()?;
        }
    }
    Ok(())
}
