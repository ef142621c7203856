//! `sluice dlq list | redrive | purge`: a Trigger's (or Subscription's) dead-letter stream, through the
//! admin API's `DeadLetters` service.

use anyhow::Result;
use clap::Subcommand;
use sluice_proto::admin::dead_letters_client::DeadLettersClient;
use sluice_proto::admin::{DeadLetter, DeadLetterPosition, ListDeadLettersRequest, PurgeRequest, RedriveRequest};

use crate::admin_cli::{AdminError, EXIT_UNAVAILABLE, from_status, human_size, human_time};
use crate::trigger_cmd::{Target, progress};

#[derive(Subcommand)]
pub(crate) enum Command {
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
        #[arg(long, value_delimiter = ',', value_parser = parse_position)]
        select: Vec<DeadLetterPosition>,
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

async fn connect(admin: &str) -> Result<DeadLettersClient<crate::admin_channel::AdminChannel>> {
    crate::admin_channel::connect(admin).await.map(DeadLettersClient::new)
}

/// `--select`'s PARTITION:OFFSET, parsed by clap so that a bad one is a usage error (exit 2) naming the value.
fn parse_position(text: &str) -> Result<DeadLetterPosition, String> {
    let (partition, offset) = text.split_once(':').ok_or("expected PARTITION:OFFSET")?;
    Ok(DeadLetterPosition {
        partition: partition.trim().parse().map_err(|e| format!("bad partition {partition:?} ({e})"))?,
        offset: offset.trim().parse().map_err(|e| format!("bad offset {offset:?} ({e})"))?,
    })
}

/// A dead letter for `-o json|yaml`: where it is, its error, its attributes with their types (integers stay
/// integers, as `events read -o json` shows them) and the event in the CloudEvents JSON format, as in
/// `events read`. A node that does not send `event_json` yet gets the attributes as strings and no `event`.
fn dead_letter_json(dead: &DeadLetter) -> serde_json::Value {
    let event: Option<serde_json::Value> =
        Some(crate::events_cmd::event_value(&dead.event_json)).filter(serde_json::Value::is_object);
    let attributes = match &event {
        Some(serde_json::Value::Object(members)) => serde_json::Value::Object(
            members
                .iter()
                .filter(|(name, _)| !matches!(name.as_str(), "data" | "data_base64"))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        ),
        _ => serde_json::json!(dead.attributes),
    };
    let mut json = serde_json::json!({
        "partition": dead.partition, "offset": dead.offset, "arrivalMs": dead.arrival_ms,
        "errorCode": dead.error_code, "errorDest": dead.error_dest,
        "errorData": String::from_utf8_lossy(&dead.error_data), "reason": dead.reason,
        "attributes": attributes, "dataBytes": dead.data.len(),
    });
    if let (Some(event), Some(members)) = (event, json.as_object_mut()) {
        members.insert("event".into(), event);
    }
    json
}

pub(crate) async fn run(command: Command) -> Result<()> {
    match command {
        Command::List { target, limit, output } => {
            let mut client = connect(&target.admin).await?;
            let request = ListDeadLettersRequest { consumer: Some(target.reference()), limit };
            let list = client.list(request).await.map_err(from_status)?.into_inner();
            let listing = || serde_json::json!({"total": list.total, "deadLetters": list.dead_letters.iter().map(dead_letter_json).collect::<Vec<_>>()});
            match output.as_str() {
                "json" => outln!("{}", serde_json::to_string_pretty(&listing())?)?,
                "yaml" => out!("{}", serde_yaml_ng::to_string(&listing())?)?,
                _ => {
                    let shown = list.dead_letters.len() as u64;
                    if shown < list.total {
                        outln!("{} dead letter(s), {shown} shown (--limit, or the reply's 3 MiB)", list.total)?;
                    } else {
                        outln!("{} dead letter(s)", list.total)?;
                    }
                    outln!(
                        "{:<8} {:<19} {:<5} {:<24} {:<20} {:>7}  REASON",
                        "POS",
                        "ARRIVED",
                        "CODE",
                        "ID",
                        "TYPE",
                        "SIZE"
                    )?;
                    for d in &list.dead_letters {
                        let attr = |n: &str| d.attributes.get(n).cloned().unwrap_or_default();
                        outln!(
                            "{:<8} {:<19} {:<5} {:<24} {:<20} {:>7}  {}",
                            format!("{}:{}", d.partition, d.offset),
                            human_time(d.arrival_ms),
                            if d.error_code.is_empty() { "-" } else { &d.error_code },
                            attr("id"),
                            attr("type"),
                            human_size(d.data.len() as u64),
                            d.reason
                        )?;
                    }
                }
            }
            Ok(())
        }
        Command::Redrive { target, select, to_broker } => {
            let mut client = connect(&target.admin).await?;
            let request = RedriveRequest { consumer: Some(target.reference()), selected: select, to_broker };
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
            if !last.done {
                // The node ended the stream early (it stopped, or the redrive failed): what was handled is out of
                // the stream, the rest is still there.
                return Err(anyhow::Error::new(AdminError {
                    exit_code: EXIT_UNAVAILABLE,
                    message: format!(
                        "the redrive ended before its end: {} of {} handled (delivered {}, failed again {}); run it again for the rest",
                        last.processed, last.total, last.delivered, last.failed
                    ),
                }));
            }
            outln!("redriven {}: delivered {}, failed again {}", last.processed, last.delivered, last.failed)?;
            Ok(())
        }
        Command::Purge { target } => {
            let mut client = connect(&target.admin).await?;
            let reply = client.purge(PurgeRequest { consumer: Some(target.reference()) }).await.map_err(from_status)?;
            outln!("purged {} dead letter(s)", reply.into_inner().purged)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Dlq {
        #[command(subcommand)]
        command: Command,
    }

    /// Regression: a bad `--select` was found after parsing and exited 1 (a runtime failure), where every other
    /// malformed argument is a usage error, exit 2.
    #[test]
    fn a_bad_select_is_a_usage_error_naming_the_value() {
        use clap::Parser;
        let parse = |select: &str| Dlq::try_parse_from(["dlq", "redrive", "t", "--select", select]);
        match parse("0:7,2:9").map(|dlq| dlq.command) {
            Ok(Command::Redrive { select, .. }) => assert_eq!(
                select,
                [DeadLetterPosition { partition: 0, offset: 7 }, DeadLetterPosition { partition: 2, offset: 9 }]
            ),
            _ => panic!("a good --select parses"),
        }
        for (bad, named) in [("7", "expected PARTITION:OFFSET"), ("x:1", "bad partition \"x\""), ("1:-2", "bad offset")]
        {
            let Err(error) = parse(bad) else { panic!("{bad} is refused") };
            assert_eq!(error.exit_code(), 2, "{bad}");
            assert!(error.to_string().contains(named), "{bad}: {error}");
        }
    }

    #[test]
    fn attributes_keep_the_types_of_event_json() {
        let event = r#"{"specversion":"1.0","id":"e1","source":"/s","type":"t","knativebrokerttl":255,
                        "knativeerrorcode":500,"data":{"n":1}}"#;
        let dead = DeadLetter {
            partition: 1,
            offset: 7,
            error_code: "500".into(),
            attributes: [("knativeerrorcode".to_string(), "500".to_string()), ("id".to_string(), "e1".to_string())]
                .into_iter()
                .collect(),
            event_json: event.into(),
            ..Default::default()
        };
        let json = dead_letter_json(&dead);
        assert_eq!(json["attributes"]["knativeerrorcode"], 500, "an integer, as events read shows it");
        assert_eq!(json["attributes"]["knativebrokerttl"], 255);
        assert_eq!(json["attributes"]["id"], "e1");
        assert!(json["attributes"].get("data").is_none(), "data is not an attribute");
        assert_eq!(json["event"]["data"]["n"], 1);
        assert_eq!((json["partition"].as_u64(), json["offset"].as_u64()), (Some(1), Some(7)));

        // A node without event_json: the string map, and no event.
        let old = DeadLetter { event_json: String::new(), ..dead };
        let json = dead_letter_json(&old);
        assert_eq!(json["attributes"]["knativeerrorcode"], "500");
        assert!(json.get("event").is_none());
    }
}
