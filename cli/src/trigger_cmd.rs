//! `sluice trigger status | replay | pause | resume`: a Trigger's (or, with `--subscription`, a
//! Subscription's) delivery, through the admin API's `Consumers` service.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use sluice_proto::admin::consumers_client::ConsumersClient;
use sluice_proto::admin::{ConsumerRef, ConsumerStatus, ReplayRequest, replay_request};

use crate::admin_cli::{AdminError, EXIT_UNAVAILABLE, from_status, human_age, parse_time_ms};

#[derive(Args, Clone, Debug)]
pub(crate) struct Target {
    /// The Trigger's name (or the Subscription's, with --subscription).
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// NAME is a Subscription.
    #[arg(long)]
    pub subscription: bool,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
}

impl Target {
    pub(crate) fn reference(&self) -> ConsumerRef {
        ConsumerRef {
            kind: if self.subscription { "subscription" } else { "trigger" }.into(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Per partition: committed and end offsets, backlog, oldest undelivered, in flight, counts.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
        output: String,
    },
    /// Deliver again from an offset or a time (or skip forward to one).
    #[command(group = clap::ArgGroup::new("to").required(true).args(["to_offset", "to_time"]))]
    Replay {
        #[command(flatten)]
        target: Target,
        /// Move to this offset (in every partition, or in --partition).
        #[arg(long)]
        to_offset: Option<u64>,
        /// Move to the first event at or after this time: RFC 3339, or an age like 10m.
        #[arg(long)]
        to_time: Option<String>,
        #[arg(long)]
        partition: Option<u32>,
        /// Wait until the backlog from the replay is delivered, showing progress.
        #[arg(long)]
        follow: bool,
    },
    /// Stop delivering (the offset stays; events wait in the log).
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Deliver again after a pause, from where it stopped.
    Resume {
        #[command(flatten)]
        target: Target,
    },
}

async fn connect(admin: &str) -> Result<ConsumersClient<crate::admin_channel::AdminChannel>> {
    crate::admin_channel::connect(admin).await.map(ConsumersClient::new)
}

pub(crate) fn status_json(status: &ConsumerStatus) -> serde_json::Value {
    let partitions: Vec<_> = status
        .partitions
        .iter()
        .map(|p| {
            serde_json::json!({
                "partition": p.partition, "committedOffset": p.committed_offset, "endOffset": p.end_offset,
                "backlog": p.backlog, "oldestUndeliveredAgeMs": p.oldest_undelivered_age_ms, "inFlight": p.in_flight,
                "delivered": p.delivered, "retried": p.retried, "deadLettered": p.dead_lettered,
                "deadLetterCount": p.dead_letter_count, "replayPendingTo": p.replay_pending_to,
                "pausedApplied": p.paused_applied,
            })
        })
        .collect();
    let consumer = status.consumer.clone().unwrap_or_default();
    serde_json::json!({
        "kind": consumer.kind, "namespace": consumer.namespace, "name": consumer.name, "stream": status.stream,
        "paused": status.paused, "dispatchable": status.dispatchable, "reason": status.reason,
        "subscriberUri": status.subscriber_uri, "backlog": status.backlog, "partitions": partitions,
    })
}

fn print_status(status: &ConsumerStatus, output: &str) -> Result<()> {
    match output {
        "json" => outln!("{}", serde_json::to_string_pretty(&status_json(status))?)?,
        "yaml" => out!("{}", serde_yaml_ng::to_string(&status_json(status))?)?,
        _ => {
            let consumer = status.consumer.clone().unwrap_or_default();
            let state = match (status.paused, status.dispatchable) {
                (true, _) => "paused".to_string(),
                (false, true) => "delivering".to_string(),
                (false, false) => format!("waiting: {}", status.reason),
            };
            outln!(
                "{} {}/{}  {}  backlog {}",
                consumer.kind,
                consumer.namespace,
                consumer.name,
                state,
                status.backlog
            )?;
            outln!("  stream {}  subscriber {}", status.stream, status.subscriber_uri)?;
            outln!(
                "{:>9} {:>10} {:>10} {:>8} {:>9} {:>8} {:>10} {:>8} {:>8} {:>6}",
                "PARTITION",
                "COMMITTED",
                "END",
                "BACKLOG",
                "OLDEST",
                "INFLIGHT",
                "DELIVERED",
                "RETRIED",
                "DEAD",
                "DLQ"
            )?;
            for p in &status.partitions {
                outln!(
                    "{:>9} {:>10} {:>10} {:>8} {:>9} {:>8} {:>10} {:>8} {:>8} {:>6}",
                    p.partition,
                    p.committed_offset,
                    p.end_offset,
                    p.backlog,
                    human_age(p.oldest_undelivered_age_ms),
                    p.in_flight,
                    p.delivered,
                    p.retried,
                    p.dead_lettered,
                    p.dead_letter_count
                )?;
            }
        }
    }
    Ok(())
}

/// The partitions whose dispatcher does not hold the consumer `paused` (as asked) yet: the node answers a pause or
/// a resume once every partition's does, or after 10 s with what it knows. Pure.
fn partitions_not_yet(status: &ConsumerStatus, paused: bool) -> Vec<u32> {
    if !status.dispatchable {
        // No dispatcher runs it: nothing is delivered, and the annotation holds when one does.
        return Vec::new();
    }
    status.partitions.iter().filter(|p| p.paused_applied != paused).map(|p| p.partition).collect()
}

/// A pause or resume not in effect on every partition yet is no success to a script: exit 5, naming them.
/// Regression: "paused" and exit 0 while a partition's dispatcher still delivered.
fn not_yet_in_effect(status: &ConsumerStatus, paused: bool) -> Result<()> {
    let waiting = partitions_not_yet(status, paused);
    if waiting.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = waiting.iter().map(u32::to_string).collect();
    Err(anyhow::Error::new(AdminError {
        exit_code: EXIT_UNAVAILABLE,
        message: format!(
            "asked and kept, not yet in effect on partition(s) {}: their dispatchers take it at their next commit",
            list.join(", ")
        ),
    }))
}

/// A one-line progress bar on stderr: `[#####.....] 50/100 label`.
pub(crate) fn progress(done: u64, total: u64, label: &str) {
    let width = 30usize;
    let filled = if total == 0 { width } else { (done.min(total) as usize * width) / total as usize };
    eprint!("\r[{}{}] {done}/{total} {label}   ", "#".repeat(filled), ".".repeat(width - filled));
    let _ = std::io::stderr().flush();
}

pub(crate) async fn run(command: Command) -> Result<()> {
    match command {
        Command::Status { target, output } => {
            let mut client = connect(&target.admin).await?;
            let status = client.status(target.reference()).await.map_err(from_status)?.into_inner();
            print_status(&status, &output)
        }
        Command::Pause { target } => {
            let mut client = connect(&target.admin).await?;
            let status = client.pause(target.reference()).await.map_err(from_status)?.into_inner();
            outln!("paused {}/{}; backlog {}", target.namespace, target.name, status.backlog)?;
            not_yet_in_effect(&status, true)
        }
        Command::Resume { target } => {
            let mut client = connect(&target.admin).await?;
            let status = client.resume(target.reference()).await.map_err(from_status)?.into_inner();
            outln!("resumed {}/{}; backlog {}", target.namespace, target.name, status.backlog)?;
            not_yet_in_effect(&status, false)
        }
        Command::Replay { target, to_offset, to_time, partition, follow } => {
            let to = match (to_offset, to_time) {
                (Some(offset), _) => replay_request::To::Offset(offset),
                (None, Some(time)) => replay_request::To::TimeMs(parse_time_ms(&time)?),
                (None, None) => anyhow::bail!("give --to-offset or --to-time"),
            };
            let mut client = connect(&target.admin).await?;
            let request = ReplayRequest { consumer: Some(target.reference()), to: Some(to), partition, wait: true };
            let reply = client.replay(request).await.map_err(from_status)?.into_inner();
            for t in &reply.targets {
                outln!("{}", replay_line(t, to_offset))?;
            }
            if !reply.applied {
                // Asked and kept: the partitions' dispatchers take it when they next commit. Not confirmed, so
                // not a success to a script (exit 5: look again with `trigger status`).
                return Err(anyhow::Error::new(AdminError {
                    exit_code: EXIT_UNAVAILABLE,
                    message: "requested, not yet applied: the partitions' dispatchers take it at their next commit \
                              (`sluice trigger status` shows `replay_pending_to` until they do)"
                        .into(),
                }));
            }
            if follow {
                // Per replayed partition: once its committed offset has been seen back at the replay's target (the
                // replay applied), until it is where it was when the replay was asked (what comes after is new
                // traffic, which a backlog of 0 would wait for forever).
                let total: u64 = reply.targets.iter().map(|t| t.from_offset.saturating_sub(t.to_offset)).sum();
                let mut rewound = vec![false; reply.targets.len()];
                loop {
                    let status = client.status(target.reference()).await.map_err(from_status)?.into_inner();
                    let mut done = 0;
                    for (t, rewound) in reply.targets.iter().zip(rewound.iter_mut()) {
                        let Some(committed) =
                            status.partitions.iter().find(|p| p.partition == t.partition).map(|p| p.committed_offset)
                        else {
                            continue;
                        };
                        *rewound |= committed <= t.to_offset;
                        if *rewound {
                            done += committed.clamp(t.to_offset, t.from_offset.max(t.to_offset)) - t.to_offset;
                        }
                    }
                    progress(done, total, "redelivered");
                    if done >= total && rewound.iter().all(|r| *r) {
                        eprintln!();
                        break;
                    }
                    if status.paused {
                        eprintln!();
                        outln!("the consumer is paused: it redelivers once resumed")?;
                        break;
                    }
                    if !status.dispatchable {
                        eprintln!();
                        outln!("the consumer cannot be dispatched now ({}): it redelivers once it can", status.reason)?;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Ok(())
        }
    }
}

/// One partition of a replay: where its cursor was and where it goes. An offset outside what the partition holds
/// is moved into it by the node: said, rather than silently showing another offset than the one asked for.
fn replay_line(target: &sluice_proto::admin::ReplayTarget, asked_offset: Option<u64>) -> String {
    let moved = match asked_offset {
        Some(asked) if asked != target.to_offset => {
            format!(" (offset {asked} is outside what the partition holds: moved to {})", target.to_offset)
        }
        _ => String::new(),
    };
    format!("partition {}: {} -> {}{moved}", target.partition, target.from_offset, target.to_offset)
}

#[cfg(test)]
mod tests {
    use sluice_proto::admin::PartitionStatus;

    use super::*;

    #[derive(clap::Parser)]
    struct Trigger {
        #[command(subcommand)]
        command: Command,
    }

    #[test]
    fn a_replay_to_an_offset_outside_the_partition_says_where_it_went() {
        let target = |to_offset| sluice_proto::admin::ReplayTarget { partition: 0, from_offset: 19, to_offset };
        assert_eq!(replay_line(&target(3), Some(3)), "partition 0: 19 -> 3");
        assert_eq!(
            replay_line(&target(19), Some(999)),
            "partition 0: 19 -> 19 (offset 999 is outside what the partition holds: moved to 19)"
        );
        assert_eq!(replay_line(&target(7), None), "partition 0: 19 -> 7", "by time: no offset was asked for");
    }

    /// `replay` needs one of `--to-offset` and `--to-time`: the error named `--to-offset` alone.
    #[test]
    fn a_replay_without_a_target_names_both_ways_to_give_one() {
        use clap::Parser;
        let parse = |args: &[&str]| Trigger::try_parse_from([&["trigger", "replay", "t"], args].concat());
        let missing = parse(&[]).err().expect("a target is required").to_string();
        assert!(missing.contains("--to-offset") && missing.contains("--to-time"), "{missing}");
        assert!(parse(&["--to-offset", "3"]).is_ok());
        assert!(parse(&["--to-time", "10m"]).is_ok());
        assert!(parse(&["--to-offset", "3", "--to-time", "10m"]).is_err(), "one or the other");
    }

    #[test]
    fn a_pause_is_in_effect_once_every_partitions_dispatcher_holds_it() {
        let status = |dispatchable: bool, applied: &[bool]| ConsumerStatus {
            dispatchable,
            partitions: applied
                .iter()
                .enumerate()
                .map(|(p, applied)| PartitionStatus {
                    partition: p as u32,
                    paused_applied: *applied,
                    ..PartitionStatus::default()
                })
                .collect(),
            ..ConsumerStatus::default()
        };
        assert_eq!(partitions_not_yet(&status(true, &[true, true]), true), Vec::<u32>::new());
        assert_eq!(partitions_not_yet(&status(true, &[true, false, false]), true), [1, 2]);
        assert_eq!(partitions_not_yet(&status(true, &[true, false]), false), [0], "a resume alike");
        assert_eq!(partitions_not_yet(&status(false, &[false]), true), Vec::<u32>::new(), "nothing delivers");
        let error = not_yet_in_effect(&status(true, &[false]), true).expect_err("not in effect");
        let admin = error.downcast_ref::<AdminError>().expect("an exit code");
        assert_eq!(admin.exit_code, EXIT_UNAVAILABLE);
        assert!(admin.message.contains("partition(s) 0"), "{}", admin.message);
    }
}
