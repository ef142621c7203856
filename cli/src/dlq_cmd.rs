//! `sluice dlq list | redrive | purge`: a Trigger's (or Subscription's) dead-letter stream, through the
//! admin API's `DeadLetters` service.

use anyhow::{Context, Result};
use clap::Subcommand;
use sluice_proto::admin::dead_letters_client::DeadLettersClient;
use sluice_proto::admin::{DeadLetterPosition, ListDeadLettersRequest, PurgeRequest, RedriveRequest};

use crate::admin_cli::{from_status, human_size, human_time};
use crate::trigger_cmd::{Target, progress};

#[derive(Subcommand)]
pub enum Command {
    /// The dead letters with their error code, destination and data.
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
        output: String,
    },
    /// Deliver dead letters again (all, or --select PARTITION:OFFSET,...); what fails again stays.
    Redrive {
        #[command(flatten)]
        target: Target,
        /// Only these: PARTITION:OFFSET,... (as `dlq list` shows them).
        #[arg(long, value_delimiter = ',')]
        select: Vec<String>,
        /// Into the broker (every matching Trigger) instead of to this Trigger's subscriber.
        #[arg(long)]
        to_broker: bool,
    },
    /// Delete every dead letter of the Trigger.
    Purge {
        #[command(flatten)]
        target: Target,
    },
}

async fn connect(admin: &str) -> Result<DeadLettersClient<tonic::transport::Channel>> {
    DeadLettersClient::connect(format!("http://{admin}"))
        .await
        .with_context(|| format!("cannot reach the admin API at {admin} (--admin)"))
}

fn parse_position(text: &str) -> Result<DeadLetterPosition> {
    let (partition, offset) =
        text.split_once(':').with_context(|| format!("--select {text:?}: expected PARTITION:OFFSET"))?;
    Ok(DeadLetterPosition {
        partition: partition.trim().parse().with_context(|| format!("--select {text:?}: bad partition"))?,
        offset: offset.trim().parse().with_context(|| format!("--select {text:?}: bad offset"))?,
    })
}

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::List { target, limit, output } => {
            let mut client = connect(&target.admin).await?;
            let request = ListDeadLettersRequest { consumer: Some(target.reference()), limit };
            let list = client.list(request).await.map_err(from_status)?.into_inner();
            let rows: Vec<serde_json::Value> = list
                .dead_letters
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "partition": d.partition, "offset": d.offset, "arrivalMs": d.arrival_ms,
                        "errorCode": d.error_code, "errorDest": d.error_dest,
                        "errorData": String::from_utf8_lossy(&d.error_data), "reason": d.reason,
                        "attributes": d.attributes, "dataBytes": d.data.len(),
                    })
                })
                .collect();
            match output.as_str() {
                "json" => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"total": list.total, "deadLetters": rows}))?
                ),
                "yaml" => {
                    print!("{}", serde_yaml::to_string(&serde_json::json!({"total": list.total, "deadLetters": rows}))?)
                }
                _ => {
                    println!("{} dead letter(s)", list.total);
                    println!(
                        "{:<8} {:<19} {:<5} {:<24} {:<20} {:>7}  REASON",
                        "POS", "ARRIVED", "CODE", "ID", "TYPE", "SIZE"
                    );
                    for d in &list.dead_letters {
                        let attr = |n: &str| d.attributes.get(n).cloned().unwrap_or_default();
                        println!(
                            "{:<8} {:<19} {:<5} {:<24} {:<20} {:>7}  {}",
                            format!("{}:{}", d.partition, d.offset),
                            human_time(d.arrival_ms),
                            if d.error_code.is_empty() { "-" } else { &d.error_code },
                            attr("id"),
                            attr("type"),
                            human_size(d.data.len() as u64),
                            d.reason
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Redrive { target, select, to_broker } => {
            let selected = select.iter().map(|s| parse_position(s)).collect::<Result<Vec<_>>>()?;
            let mut client = connect(&target.admin).await?;
            let request = RedriveRequest { consumer: Some(target.reference()), selected, to_broker };
            let mut stream = client.redrive(request).await.map_err(from_status)?.into_inner();
            let mut last = None;
            while let Some(update) = stream.message().await.map_err(from_status)? {
                progress(
                    update.processed,
                    update.total,
                    &format!("delivered {} failed {}", update.delivered, update.failed),
                );
                last = Some(update);
            }
            eprintln!();
            let last = last.unwrap_or_default();
            println!("redriven {}: delivered {}, failed again {}", last.processed, last.delivered, last.failed);
            Ok(())
        }
        Command::Purge { target } => {
            let mut client = connect(&target.admin).await?;
            let reply = client.purge(PurgeRequest { consumer: Some(target.reference()) }).await.map_err(from_status)?;
            println!("purged {} dead letter(s)", reply.into_inner().purged);
            Ok(())
        }
    }
}
