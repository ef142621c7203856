//! The dispatcher of one node: runs a [`PartitionDispatcher`] for every (stream, partition) that has
//! consumers and whose partition this node leads, and keeps that set right as resources and leadership change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_broker::Node;
use sluice_controller::status::Environment;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::consumer::{ConsumerSpec, consumers};
use crate::deliver::DeliveryContext;
use crate::partition::{Control, PartitionDispatcher, PartitionSettings};
use crate::sender::Sender;

#[derive(Clone, Debug)]
pub struct DispatcherSettings {
    /// Base URL of this node's ingress (resolves references to Brokers and Channels).
    pub ingress_base: String,
    /// How often consumer offsets are committed; a crash redelivers at most what settled within one interval.
    pub commit_interval: Duration,
    /// Records per log read.
    pub read_batch: usize,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self { ingress_base: "http://127.0.0.1:8080".into(), commit_interval: Duration::from_secs(1), read_batch: 256 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("building the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// A running dispatcher; [`Dispatcher::shutdown`] stops it and commits every offset.
pub struct Dispatcher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Dispatcher {
    pub fn start(node: Node, settings: DispatcherSettings) -> Result<Dispatcher, DispatchError> {
        let sender = Sender::new()?;
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

struct Running {
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
    /// (cursor, version) of the consumers it was given, to send updates only on change.
    fingerprint: Vec<(String, String)>,
}

async fn supervise(node: Node, settings: DispatcherSettings, sender: Sender, mut stopped: watch::Receiver<bool>) {
    let Some(mut resources) = node.watch_resources() else { return };
    let mut leadership = node.watch_leadership();
    let env = Environment { ingress_base: settings.ingress_base.clone() };
    let mut running: HashMap<(String, u32), Running> = HashMap::new();
    let mut reported: HashMap<String, String> = HashMap::new();
    loop {
        reconcile(&node, &settings, &sender, &env, &mut running, &mut reported).await;
        tokio::select! {
            changed = resources.changed() => if changed.is_err() { break },
            changed = leadership.changed() => if changed.is_err() { break },
            _ = stopped.changed() => break,
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
    env: &Environment,
    running: &mut HashMap<(String, u32), Running>,
    reported: &mut HashMap<String, String>,
) {
    let mut objects: Vec<Value> = Vec::new();
    for kind in ["Broker", "Trigger", "Channel", "InMemoryChannel", "Subscription"] {
        objects.extend(node.resources(kind).into_iter().filter_map(|(_, json)| serde_json::from_str(&json).ok()));
    }
    let live_uids: Arc<HashSet<String>> = Arc::new(
        objects
            .iter()
            .filter(|o| matches!(o.get("kind").and_then(Value::as_str), Some("Trigger" | "Subscription")))
            .filter_map(|o| o.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string))
            .collect(),
    );
    let (specs, problems) = consumers(&objects, env);
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
    // A partition dispatcher that ended on its own (its partition's state went away) is started again.
    running.retain(|(stream, partition), task| {
        let alive = !task.task.is_finished();
        if !alive {
            tracing::warn!(%stream, partition, "partition dispatcher ended; starting it again");
        }
        alive
    });
    let partitions = node.partitions();
    let mut wanted: HashSet<(String, u32)> = HashSet::new();
    for partition in (0..partitions).filter(|p| node.leads_partition(*p)) {
        for (stream, specs) in &by_stream {
            let key = (stream.clone(), partition);
            wanted.insert(key.clone());
            let fingerprint: Vec<(String, String)> =
                specs.iter().map(|s| (s.cursor.clone(), s.version.clone())).collect();
            let task = running.entry(key).or_insert_with(|| {
                let ctx = DeliveryContext { node: node.clone(), sender: sender.clone(), partition };
                let partition_settings = PartitionSettings {
                    commit_interval: settings.commit_interval,
                    read_batch: settings.read_batch,
                    partitions,
                };
                let (control, task) = PartitionDispatcher::spawn(ctx, stream.clone(), partition_settings);
                Running { control, task, fingerprint: Vec::new() }
            });
            if task.fingerprint != fingerprint {
                task.fingerprint = fingerprint;
                let update = Control::Update { consumers: specs.clone(), live_uids: live_uids.clone() };
                if task.control.send(update).await.is_err() {
                    tracing::warn!(%stream, partition, "partition dispatcher ended; restarting it");
                    task.fingerprint.clear();
                }
            }
        }
    }
    let stale: Vec<(String, u32)> = running.keys().filter(|k| !wanted.contains(*k)).cloned().collect();
    for key in stale {
        if let Some(task) = running.remove(&key) {
            let _ = task.control.send(Control::Stop).await;
            let _ = task.task.await;
        }
    }
    metrics::gauge!("sluice_dispatch_partitions").set(running.len() as f64);
}
