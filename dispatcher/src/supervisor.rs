//! The dispatcher of one node: runs a [`PartitionDispatcher`] for every (stream, partition) that has
//! consumers and whose partition this node leads, and keeps that set right as resources and leadership change.
//!
//! What flows in: the resources and the partitions this node leads, each time either changes. What flows out:
//! partition dispatchers started, given their consumers, and stopped. The decision is [`plan`], a pure function
//! of what is wanted and what runs; `reconcile` carries it out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use sluice_broker::Node;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::capacity::{DestinationLimits, SubscriberCapacity};
use crate::consumer::{ConsumerSpec, consumers};
use crate::delivery::sender::Sender;
use crate::delivery::task::DeliveryContext;
use crate::holds::{HoldEnd, HoldId, Holds};
use crate::partition::{Control, PartitionDispatcher, PartitionSettings};

#[derive(Clone)]
pub struct DispatcherSettings {
    /// Base URL of this node's ingress (resolves references to Brokers and Channels).
    pub ingress_base: String,
    /// How often consumer offsets are committed; a crash redelivers at most what settled within one interval.
    pub commit_interval: Duration,
    /// Records per log read.
    pub read_batch: usize,
    /// The node's serving: in-flight limits towards the Knative Services it runs, and their backlog.
    pub subscriber_capacity: Option<Arc<dyn SubscriberCapacity>>,
    /// Where this node serves Knative Routes: deliveries to their cluster-local URLs go to its HTTP port.
    pub node_routes: Option<sluice_broker::NodeRoutes>,
}

impl std::fmt::Debug for DispatcherSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherSettings")
            .field("ingress_base", &self.ingress_base)
            .field("commit_interval", &self.commit_interval)
            .field("read_batch", &self.read_batch)
            .field("subscriber_capacity", &self.subscriber_capacity.is_some())
            .field("node_routes", &self.node_routes.is_some())
            .finish()
    }
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self {
            ingress_base: "http://127.0.0.1:8080".into(),
            commit_interval: Duration::from_secs(1),
            read_batch: 256,
            subscriber_capacity: None,
            node_routes: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{0}")]
    HttpClient(String),
}

/// A running dispatcher; [`Dispatcher::shutdown`] stops it and commits every offset.
pub struct Dispatcher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Dispatcher {
    pub fn start(node: Node, settings: DispatcherSettings) -> Result<Dispatcher, DispatchError> {
        let sender = Sender::with_node_routes(node.settings().tls.clone(), settings.node_routes.clone())
            .map_err(DispatchError::HttpClient)?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(node, settings, sender, stopped));
        Ok(Dispatcher { stop, task })
    }

    /// Stops every partition dispatcher (in-flight deliveries are abandoned and will be redelivered) after
    /// committing offsets.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A partition dispatcher's key: (stream, partition).
type Key = (String, u32);
/// (cursor, version) of each consumer a partition dispatcher was given, to send updates only on change.
type Fingerprint = Vec<(String, String)>;

/// What a partition dispatcher is, as [`plan`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    fingerprint: Fingerprint,
    /// It ended on its own (its partition's state went away).
    finished: bool,
}

/// What turns the running partition dispatchers into the wanted ones.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Not running (or ended on its own): start it.
    start: Vec<Key>,
    /// Started now, or given other consumers: send it its consumers.
    update: Vec<Key>,
    /// Running (or ended) but not wanted (no consumers, or the partition is led elsewhere now): stop it and
    /// forget it.
    stop: Vec<Key>,
}

/// Every stream with consumers, in every partition this node leads, is wanted with that stream's consumers.
fn plan(led_partitions: &[u32], wanted: &BTreeMap<String, Fingerprint>, running: &BTreeMap<Key, Observed>) -> Plan {
    let mut plan = Plan::default();
    let mut wanted_keys = HashSet::new();
    for &partition in led_partitions {
        for (stream, fingerprint) in wanted {
            let key = (stream.clone(), partition);
            wanted_keys.insert(key.clone());
            match running.get(&key) {
                Some(observed) if !observed.finished => {
                    if &observed.fingerprint != fingerprint {
                        plan.update.push(key);
                    }
                }
                _ => {
                    plan.start.push(key.clone());
                    plan.update.push(key);
                }
            }
        }
    }
    plan.stop = running.keys().filter(|k| !wanted_keys.contains(*k)).cloned().collect();
    plan
}

struct Running {
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
    fingerprint: Fingerprint,
}

async fn supervise(node: Node, settings: DispatcherSettings, sender: Sender, mut stopped: watch::Receiver<bool>) {
    let Some(mut resources) = node.watch_resources() else { return };
    let mut leadership = node.watch_leadership();
    let mut handovers = node.handovers();
    let mut running: HashMap<(String, u32), Running> = HashMap::new();
    let mut reported: HashMap<String, String> = HashMap::new();
    // Partitions handed over (a planned transfer is under way) are not dispatched here until the transfer
    // attempt is over or this node no longer leads them (`holds`).
    let mut holds = Holds::new(HANDOVER_HOLD);
    let mut transfers: FuturesUnordered<BoxFuture<'static, HoldId>> = FuturesUnordered::new();
    let limits = settings.subscriber_capacity.clone().map(DestinationLimits::new);
    'supervise: loop {
        for (partition, end) in holds.expire(tokio::time::Instant::now(), |partition| node.leads_partition(partition)) {
            hold_ended(partition, end);
        }
        reconcile(&node, &settings, &sender, &limits, &holds, &mut running, &mut reported).await;
        let hold_ends = holds.next_expiry();
        loop {
            tokio::select! {
                changed = resources.changed() => if changed.is_err() { break 'supervise } else { break },
                // Leadership changes are reconciled at once (the new leader's dispatch waits for nothing else).
                changed = leadership.changed() => if changed.is_err() { break 'supervise } else { continue 'supervise },
                Some(handover) = handovers.recv() => {
                    let hold = holds.start(handover.partition, tokio::time::Instant::now());
                    let transfer_over = hand_over(&mut running, handover).await;
                    transfers.push(Box::pin(async move {
                        transfer_over.await;
                        hold
                    }));
                    continue 'supervise;
                }
                Some(hold) = transfers.next(), if !transfers.is_empty() => {
                    if holds.transfer_over(hold) {
                        hold_ended(hold.partition, HoldEnd::TransferOver);
                    }
                    continue 'supervise;
                }
                _ = tokio::time::sleep_until(hold_ends.unwrap_or_else(tokio::time::Instant::now)),
                    if hold_ends.is_some() => continue 'supervise,
                _ = stopped.changed() => break 'supervise,
                // A partition dispatcher that ended on its own (it lost its view of the applied log, or panicked
                // outside a delivery) is started again by the next reconcile; without this look it waited for an
                // unrelated change, and every consumer of its partition with it.
                _ = tokio::time::sleep(ENDED_DISPATCHERS_LOOK) => {
                    let ended = running.values().filter(|r| r.task.is_finished()).count();
                    if ended > 0 {
                        metrics::counter!("sluice_dispatch_partition_dispatchers_ended_total").increment(ended as u64);
                        tracing::warn!(ended, "partition dispatchers ended on their own; starting them again");
                        continue 'supervise;
                    }
                }
            }
        }
        // Applying many objects (a YAML file of 1,000 Triggers) changes the resources many times in a row:
        // reconcile once the burst settles (no change for SETTLE), but at least every SETTLE_MAX.
        let burst_started = tokio::time::Instant::now();
        while burst_started.elapsed() < SETTLE_MAX {
            match tokio::time::timeout(SETTLE, resources.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return stop_all(running).await,
                Err(_) => break,
            }
        }
    }
    stop_all(running).await;
}

fn hold_ended(partition: u32, end: HoldEnd) {
    metrics::counter!("sluice_dispatch_handover_holds_ended_total", "why" => end.label()).increment(1);
    tracing::info!(partition, why = end.label(), "handed-over partition no longer held");
}

/// The partition's leadership is about to move (a planned transfer): its dispatchers let their deliveries
/// settle, commit their offsets and end, so the next leader's start where these stopped and none runs beside
/// them (the broker bounds the wait; the partition is held, see `supervise`). Answers what resolves when the
/// transfer attempt is over.
async fn hand_over(
    running: &mut HashMap<(String, u32), Running>,
    handover: sluice_broker::Handover,
) -> sluice_broker::TransferOver {
    let keys: Vec<(String, u32)> =
        running.keys().filter(|(_, partition)| *partition == handover.partition).cloned().collect();
    let mut handed = Vec::new();
    for key in keys {
        let Some(task) = running.remove(&key) else { continue };
        let (done, answered) = tokio::sync::oneshot::channel();
        let _ = task.control.send(Control::HandOver(done)).await;
        handed.push(async move {
            let _ = answered.await;
            let _ = task.task.await;
        });
    }
    futures::future::join_all(handed).await;
    handover.done()
}

/// The longest a handed-over partition is not dispatched here while this node still leads it, should the end
/// of the transfer attempt never be reported: longer than the broker waits for the transfer (four maximum
/// election timeouts, 1.6 s by default).
const HANDOVER_HOLD: Duration = Duration::from_secs(5);

/// How often the supervisor looks for partition dispatchers that ended on their own (see `supervise`).
const ENDED_DISPATCHERS_LOOK: Duration = Duration::from_secs(1);

/// Quiet time after a resource change before reconciling (see `supervise`).
const SETTLE: Duration = Duration::from_millis(50);
const SETTLE_MAX: Duration = Duration::from_millis(500);

async fn stop_all(mut running: HashMap<(String, u32), Running>) {
    for (_, task) in running.drain() {
        let _ = task.control.send(Control::Stop).await;
        let _ = task.task.await;
    }
}

async fn reconcile(
    node: &Node,
    settings: &DispatcherSettings,
    sender: &Sender,
    limits: &Option<Arc<DestinationLimits>>,
    holds: &Holds,
    running: &mut HashMap<(String, u32), Running>,
    reported: &mut HashMap<String, String>,
) {
    // Read again each time: a rotated CA reaches the Broker destinations' trust at the next reconcile.
    let env = &node.status_environment(&settings.ingress_base);
    let mut objects: Vec<Value> = Vec::new();
    // Every kind a destination may refer to (Knative Services, Routes, ... and their revisions' facts).
    for kind in sluice_controller::model::world_kinds() {
        objects.extend(node.resources(kind).into_iter().filter_map(|(_, json)| serde_json::from_str(&json).ok()));
    }
    let live_uids: Arc<HashSet<String>> = Arc::new(
        objects
            .iter()
            .filter(|o| matches!(o.get("kind").and_then(Value::as_str), Some("Trigger" | "Subscription")))
            .filter_map(|o| o.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string))
            .collect(),
    );
    let (specs, problems) = consumers(&objects, env, node.settings().default_authorization);
    let problems: HashMap<String, String> = problems.into_iter().collect();
    for (consumer, reason) in &problems {
        if reported.get(consumer) != Some(reason) {
            tracing::warn!(%consumer, %reason, "not dispatching (its offset waits)");
        }
    }
    *reported = problems;
    metrics::gauge!("sluice_dispatch_consumers_waiting").set(reported.len() as f64);

    let mut by_stream: BTreeMap<String, Vec<Arc<ConsumerSpec>>> = BTreeMap::new();
    for spec in specs {
        by_stream.entry(spec.stream.clone()).or_default().push(spec);
    }
    let wanted: BTreeMap<String, Fingerprint> = by_stream
        .iter()
        .map(|(stream, specs)| (stream.clone(), specs.iter().map(|s| (s.cursor.clone(), s.version.clone())).collect()))
        .collect();
    let observed: BTreeMap<Key, Observed> = running
        .iter()
        .map(|(key, task)| {
            (key.clone(), Observed { fingerprint: task.fingerprint.clone(), finished: task.task.is_finished() })
        })
        .collect();
    let partitions = node.partitions();
    let led: Vec<u32> = (0..partitions).filter(|p| node.leads_partition_applied(*p) && !holds.is_held(*p)).collect();
    let plan = plan(&led, &wanted, &observed);

    for key in plan.stop {
        if let Some(task) = running.remove(&key) {
            let _ = task.control.send(Control::Stop).await;
            let _ = task.task.await;
        }
    }
    for (stream, partition) in plan.start {
        if running.remove(&(stream.clone(), partition)).is_some() {
            tracing::warn!(%stream, partition, "partition dispatcher ended; starting it again");
        }
        // Lost since `led` was read: the next reconcile starts it where the partition is led.
        let Some(leader_term) = node.partition_leader_term(partition) else { continue };
        let ctx = DeliveryContext { node: node.clone(), sender: sender.clone(), partition, limits: limits.clone() };
        let partition_settings = PartitionSettings {
            commit_interval: settings.commit_interval,
            read_batch: settings.read_batch,
            partitions,
            leader_term,
        };
        let (control, task) = PartitionDispatcher::spawn(ctx, stream.clone(), partition_settings);
        running.insert((stream, partition), Running { control, task, fingerprint: Vec::new() });
    }
    for key in plan.update {
        let (Some(task), Some(specs), Some(fingerprint)) =
            (running.get_mut(&key), by_stream.get(&key.0), wanted.get(&key.0))
        else {
            continue;
        };
        task.fingerprint = fingerprint.clone();
        let update = Control::Update { consumers: specs.clone(), live_uids: live_uids.clone() };
        if task.control.send(update).await.is_err() {
            tracing::warn!(stream = %key.0, partition = key.1, "partition dispatcher ended; restarting it");
            task.fingerprint.clear();
        }
    }
    metrics::gauge!("sluice_dispatch_partitions").set(running.len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stream: &str, partition: u32) -> Key {
        (stream.to_string(), partition)
    }

    fn fingerprint(version: &str) -> Fingerprint {
        vec![("trigger/default/t".to_string(), version.to_string())]
    }

    fn observed(version: &str, finished: bool) -> Observed {
        Observed { fingerprint: fingerprint(version), finished }
    }

    #[test]
    fn nothing_runs_yet_every_led_partition_of_every_stream_starts() {
        let wanted = BTreeMap::from([("a".to_string(), fingerprint("1")), ("b".to_string(), fingerprint("1"))]);
        let plan = plan(&[0, 2], &wanted, &BTreeMap::new());
        assert_eq!(plan.start, vec![key("a", 0), key("b", 0), key("a", 2), key("b", 2)]);
        assert_eq!(plan.update, plan.start);
        assert!(plan.stop.is_empty());
    }

    #[test]
    fn unchanged_consumers_send_nothing_and_changed_ones_are_updated() {
        let wanted = BTreeMap::from([("a".to_string(), fingerprint("2")), ("b".to_string(), fingerprint("1"))]);
        let running = BTreeMap::from([(key("a", 0), observed("1", false)), (key("b", 0), observed("1", false))]);
        let plan = plan(&[0], &wanted, &running);
        assert_eq!(plan, Plan { start: vec![], update: vec![key("a", 0)], stop: vec![] });
    }

    #[test]
    fn leadership_lost_or_consumers_gone_stops_the_dispatcher() {
        let wanted = BTreeMap::from([("a".to_string(), fingerprint("1"))]);
        let running = BTreeMap::from([
            (key("a", 0), observed("1", false)),
            (key("a", 1), observed("1", false)),
            (key("gone", 1), observed("1", false)),
        ]);
        let plan = plan(&[0], &wanted, &running);
        assert_eq!(plan.stop, vec![key("a", 1), key("gone", 1)]);
        assert!(plan.start.is_empty() && plan.update.is_empty());
    }

    #[test]
    fn a_dispatcher_that_ended_on_its_own_starts_again_or_is_forgotten() {
        let wanted = BTreeMap::from([("a".to_string(), fingerprint("1"))]);
        let running = BTreeMap::from([(key("a", 0), observed("1", true)), (key("old", 0), observed("1", true))]);
        let plan = plan(&[0], &wanted, &running);
        assert_eq!(plan.start, vec![key("a", 0)]);
        assert_eq!(plan.update, vec![key("a", 0)]);
        assert_eq!(plan.stop, vec![key("old", 0)], "an ended dispatcher nobody wants is forgotten");
    }
}
