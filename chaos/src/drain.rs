//! The end of a chaos run, after the heal: what flows in is the nodes' admin addresses, the run's Triggers and
//! what the subscribers received; what flows out is whether every node holds the same copies and committed
//! offsets (`converge`), every node's final committed offsets read in one pass (`final_offsets`), and what still
//! keeps the Triggers from being drained (`drain_blockers`, empty when drained), so that a drain that times out
//! says why.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::ChaosError;
use crate::admin_calls::{committed_offsets, dispatch_status, end_offset, read_partition, wait_until};
use crate::checker::{self, DispatchProgress};
use crate::history::TriggerSpec;
use crate::workload::Subscribers;

/// What keeps the Triggers from being drained, read from the node at `admin`: per Trigger and partition the
/// matching events neither delivered nor dead-lettered, a committed offset short of the end, deliveries in
/// flight, or the admin call that failed. Empty when drained.
pub(crate) async fn drain_blockers(
    admin: &str,
    stream: &str,
    specs: &[TriggerSpec],
    partitions: u32,
    subscribers: &Subscribers,
) -> Vec<String> {
    let mut waiting = Vec::new();
    // Each Trigger's dispatch in every partition, asked once per check.
    let mut statuses = Vec::with_capacity(specs.len());
    for spec in specs {
        match dispatch_status(admin, &spec.name).await {
            Ok(partitions) => statuses.push(Some(partitions)),
            Err(e) => {
                waiting.push(format!("{} status: {e}", spec.name));
                statuses.push(None);
            }
        }
    }
    for partition in 0..partitions {
        let events = match read_partition(admin, stream, partition).await {
            Ok(events) => events,
            Err(e) => {
                waiting.push(format!("reading partition {partition}: {e}"));
                continue;
            }
        };
        for (spec, status) in specs.iter().zip(&statuses) {
            // A failed status call is already among the blockers.
            let Some(status) = status else { continue };
            let Some(status) = status.iter().find(|s| s.partition == partition) else {
                waiting.push(format!("{} partition {partition}: no status", spec.name));
                continue;
            };
            let dead: BTreeSet<(String, String)> =
                match read_partition(admin, &spec.dead_letter_stream, partition).await {
                    Ok(dead) => dead.into_iter().map(|e| (e.source, e.id)).collect(),
                    Err(e) => {
                        waiting.push(format!("{} dead letters of partition {partition}: {e}", spec.name));
                        continue;
                    }
                };
            let progress = DispatchProgress {
                end_offset: status.end_offset,
                committed_offset: status.committed_offset,
                in_flight: status.in_flight,
            };
            let undrained = checker::undrained(
                &events,
                spec,
                |(source, id)| subscribers.delivered(&spec.name, source, id),
                &dead,
                progress,
            );
            if undrained > 0 {
                waiting.push(format!(
                    "{} partition {partition}: {undrained} undrained (committed {} of {}, {} in flight)",
                    spec.name, status.committed_offset, status.end_offset, status.in_flight
                ));
            }
        }
    }
    waiting
}

/// Waits (at most `timeout`) until every node in `admins` has the same end offset in each partition of `streams`
/// and the same committed offset for each of `triggers` in each partition (a dispatcher's last commit may still be
/// on its way to a follower when the drain ends).
pub(crate) async fn converge(
    admins: &[String],
    streams: &[String],
    triggers: &[String],
    partitions: u32,
    timeout: Duration,
) -> Result<(), ChaosError> {
    wait_until("copies converged", timeout, || async {
        for s in streams {
            for partition in 0..partitions {
                let mut ends = BTreeSet::new();
                for admin in admins {
                    ends.insert(end_offset(admin, s, partition).await.ok()?);
                }
                if ends.len() > 1 {
                    return None;
                }
            }
        }
        for trigger in triggers {
            let mut committed = BTreeSet::new();
            for admin in admins {
                committed.insert(committed_offsets(admin, trigger).await.ok()?);
            }
            if committed.len() > 1 {
                return None;
            }
        }
        Some(())
    })
    .await
}

/// One node's committed offsets for each Trigger: per partition, or the admin call's error.
pub(crate) type NodeOffsets = Vec<Result<Vec<(u32, u64)>, String>>;

/// Each node's committed offsets (per partition) for each of `triggers`, read one node after another with nothing
/// in between: `[node][trigger]`.
pub(crate) async fn final_offsets(admins: &[String], triggers: &[String]) -> Vec<NodeOffsets> {
    let mut nodes = Vec::with_capacity(admins.len());
    for admin in admins {
        let mut each = Vec::with_capacity(triggers.len());
        for trigger in triggers {
            each.push(committed_offsets(admin, trigger).await.map_err(|e| e.to_string()));
        }
        nodes.push(each);
    }
    nodes
}

/// Whether every node that answered reported the same committed offsets for each Trigger.
pub(crate) fn offsets_agree(finals: &[NodeOffsets]) -> bool {
    let triggers = finals.first().map_or(0, Vec::len);
    (0..triggers).all(|t| {
        let answers: BTreeSet<&Vec<(u32, u64)>> = finals.iter().filter_map(|node| node.get(t)?.as_ref().ok()).collect();
        answers.len() <= 1
    })
}
