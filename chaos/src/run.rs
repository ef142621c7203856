//! One chaos run: start the cluster, the subscribers and the producers; quiet phase; faults for the
//! configured time; heal everything; drain (subscribers catch up, every node's copies converge); read every
//! node's log from that node; check the history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{AddNodeRequest, ApplyResourceRequest, InitRequest, Member, RemoveNodeRequest};
use tokio::time::Instant;

pub use crate::admin_calls::wait_until;
use crate::admin_calls::{NAMESPACE, channel, channel_with_timeout, committed_offsets, read_partition, status};
use crate::checker::{Report, check};
use crate::drain::{converge, drain_blockers};
use crate::faults::{self, Fault, FaultKind, Planned, Target, Timing};
use crate::history::{History, Op, TriggerSpec};
use crate::netns::{Network, NetworkKind, NodeAddrs};
use crate::powerloss::LazyFsProcess;
use crate::workload::{FailSchedule, Producers, Subscribers, TYPES};
use crate::{ChaosError, netns};

const BROKER: &str = "chaos";

/// What a run does.
#[derive(Clone, Debug)]
pub struct Config {
    pub nodes: usize,
    pub partitions: u32,
    /// Length of the fault phase.
    pub duration: Duration,
    /// Length of the quiet phase before it (producers running, no faults).
    pub quiet: Duration,
    pub faults: Vec<FaultKind>,
    pub seed: u64,
    pub history: Option<PathBuf>,
    pub producers: usize,
    /// Events per second per producer.
    pub rate: f64,
    pub network: NetworkKind,
    pub sluice_bin: PathBuf,
    /// The power-loss filesystem's binary (`sluice-lazyfs`), for the power faults.
    pub lazyfs_bin: PathBuf,
    /// Sets `SLUICE_PLANTED_BUG` for the nodes (a build with feature `planted-bugs`).
    pub planted_bug: Option<String>,
    /// How long the drain waits for subscribers to catch up.
    pub drain_timeout: Duration,
    /// How long the heal waits for every node to be ready again, and the final read for the copies to
    /// converge (a run whose nodes cannot recover, in the self-test, need not wait long to say so).
    pub recovery_timeout: Duration,
    /// Probability that an attempt to the failing Trigger's subscriber is answered 500.
    pub fail_rate: f64,
    /// Delivery policy of the Triggers.
    pub retry: u32,
    pub backoff_policy: String,
    pub backoff_delay: String,
    pub commit_interval_ms: u64,
    pub timing: Timing,
    /// After each fault, wait (30 s at most) until every node is ready before the next gap.
    pub wait_ready_between_faults: bool,
    /// At most this many faults held at once (1: one after another). Faults that overlap never hit the same
    /// node twice; a membership change runs alone.
    pub max_overlapping_faults: usize,
    /// Keep the nodes' data and logs here (else a temporary directory, removed).
    pub keep_dir: Option<PathBuf>,
    /// Print progress to stderr.
    pub verbose: bool,
    /// Transport encryption on (`permissive`: mutual TLS between nodes, TLS or plaintext for clients), with a
    /// CA and a certificate for every node's address made for the run.
    pub tls: bool,
    /// Nodes snapshot every N entries and keep N/4 behind (`None`: the node's defaults).
    pub snapshot_every_entries: Option<u64>,
}

impl Config {
    pub fn new(sluice_bin: PathBuf) -> Self {
        Self {
            nodes: 3,
            partitions: 2,
            duration: Duration::from_secs(180),
            quiet: Duration::from_secs(5),
            faults: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition],
            seed: 0,
            history: None,
            producers: 4,
            rate: 20.0,
            network: NetworkKind::Auto,
            lazyfs_bin: sibling_binary("sluice-lazyfs"),
            sluice_bin,
            planted_bug: None,
            drain_timeout: Duration::from_secs(120),
            recovery_timeout: Duration::from_secs(60),
            fail_rate: 0.3,
            retry: 3,
            backoff_policy: "exponential".into(),
            backoff_delay: "PT0.2S".into(),
            commit_interval_ms: 500,
            timing: Timing::default(),
            wait_ready_between_faults: true,
            max_overlapping_faults: 1,
            keep_dir: None,
            verbose: true,
            tls: false,
            snapshot_every_entries: None,
        }
    }
}

/// The `sluice` binary next to this executable (target/<profile>/ for binaries, its parent for tests), or
/// `SLUICE_BIN`.
pub fn default_sluice_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(path);
    }
    sibling_binary("sluice")
}

/// The binary `name` next to this executable (target/<profile>/ for binaries, its parent for tests).
fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for candidate in [dir.join(name), dir.parent().map(|p| p.join(name)).unwrap_or_default()] {
        if candidate.is_file() {
            return candidate;
        }
    }
    dir.join(name)
}

fn stream() -> String {
    format!("broker/{NAMESPACE}/{BROKER}")
}

fn trigger_specs() -> Vec<TriggerSpec> {
    [("t-all", None), ("t-b", Some(TYPES[1].to_string()))]
        .into_iter()
        .map(|(name, type_filter)| TriggerSpec {
            name: name.to_string(),
            type_filter,
            dead_letter_stream: format!("deadletter/trigger/{NAMESPACE}/{name}"),
        })
        .collect()
}

/// One `sluice node` process.
struct NodeProc {
    id: u64,
    addrs: NodeAddrs,
    data: PathBuf,
    /// The power-loss filesystem `data` is mounted from, in the power-loss runs.
    disk: Option<LazyFsProcess>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    incarnation: Arc<AtomicU32>,
}

impl NodeProc {
    fn pid(&self) -> Option<String> {
        self.child.as_ref().map(|c| c.id().to_string())
    }

    fn signal(&self, signal: &str) -> Result<(), ChaosError> {
        match self.pid() {
            Some(pid) => netns::run("kill", &[signal, &pid], None).map(|_| ()),
            None => Ok(()),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERM, then waits for the exit; kill -9 after `timeout`. Answers whether it exited by itself.
    async fn stop_gracefully(&mut self, timeout: Duration) -> bool {
        if self.signal("-TERM").is_err() {
            self.kill9();
            return false;
        }
        let Some(mut child) = self.child.take() else {
            return false;
        };
        self.paused = false;
        let pid = child.id().to_string();
        // std's Child has no async wait: wait on a blocking thread, kill -9 (by pid) if it takes too long.
        let mut exited = tokio::task::spawn_blocking(move || child.wait());
        match tokio::time::timeout(timeout, &mut exited).await {
            Ok(_) => true,
            Err(_) => {
                let _ = netns::run("kill", &["-9", &pid], None);
                let _ = exited.await;
                false
            }
        }
    }
}

/// How long a graceful restart waits for the node to exit on SIGTERM.
const GRACEFUL_STOP: Duration = Duration::from_secs(10);

impl Drop for NodeProc {
    fn drop(&mut self) {
        // The node first: the filesystem unmounts when `disk` drops.
        self.kill9();
    }
}

impl NodeProc {
    /// The power goes: kill -9, then what the disk had not fsynced is dropped. Answers what was lost.
    fn cut_power(&mut self) -> Result<(u64, u64), ChaosError> {
        self.kill9();
        match &self.disk {
            Some(disk) => disk.cut_counted(),
            None => Err(ChaosError::Setup(format!("node {} has no power-loss filesystem", self.id))),
        }
    }
}

/// Empties a data directory (it may be a mount point: the directory itself stays).
fn wipe(dir: &Path) -> Result<(), ChaosError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ChaosError::io(format!("wiping {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ChaosError::io(format!("wiping {}", dir.display()), e))?;
        let path = entry.path();
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.map_err(|e| ChaosError::io(format!("wiping {}", path.display()), e))?;
    }
    Ok(())
}

struct Cluster<'a> {
    net: &'a Network,
    nodes: Vec<NodeProc>,
    config: Config,
    history: Arc<History>,
    /// The links each active partition fault cuts (by fault number): the network blocks their union.
    partitions: BTreeMap<u64, Vec<(u64, u64)>>,
    /// The node (admin address) that ran each active membership fault's RemoveNode.
    membership_via: BTreeMap<u64, String>,
    /// Flags every node starts with besides its addresses (transport encryption).
    extra_node_args: Vec<String>,
}

impl Cluster<'_> {
    fn node(&mut self, id: u64) -> &mut NodeProc {
        let index = (id as usize).saturating_sub(1).min(self.nodes.len() - 1);
        &mut self.nodes[index]
    }

    fn start(&mut self, id: u64) -> Result<(), ChaosError> {
        let (net, config) = (self.net, self.config.clone());
        let extra_node_args = self.extra_node_args.clone();
        let node = self.node(id);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| ChaosError::io(format!("opening {}", node.log.display()), e))?;
        let log_err = log.try_clone().map_err(|e| ChaosError::io("node log", e))?;
        let mut command = net.command((id - 1) as usize, &config.sluice_bin);
        command
            .args(["node", "--id", &id.to_string(), "--data"])
            .arg(&node.data)
            .args(["--peer-listen", &node.addrs.peer, "--http", &node.addrs.http, "--admin", &node.addrs.admin])
            .args(["--dispatch-commit-interval-ms", &config.commit_interval_ms.to_string()])
            .args(net.node_args((id - 1) as usize))
            .args(&extra_node_args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        match &config.planted_bug {
            Some(bug) => command.env("SLUICE_PLANTED_BUG", bug),
            None => command.env_remove("SLUICE_PLANTED_BUG"),
        };
        let child =
            command.spawn().map_err(|e| ChaosError::io(format!("starting {}", config.sluice_bin.display()), e))?;
        node.child = Some(child);
        node.paused = false;
        let incarnation = node.incarnation.fetch_add(1, Ordering::SeqCst) + 1;
        self.history.record(Op::NodeStart { node: id, incarnation });
        Ok(())
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The leader of `group` as the live, unpaused node that leads it with the highest term says.
    async fn leader_of(&self, group: u32) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for node in self.nodes.iter().filter(|n| n.running() && !n.paused) {
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), status(&node.addrs.admin)).await
                && let Some(g) = status.groups.iter().find(|g| g.group_id == group)
                && g.leader_id == Some(status.node_id)
                && best.is_none_or(|(term, _)| g.term > term)
            {
                best = Some((g.term, status.node_id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// A partition group that node `id` leads now (by its own status), if any: a random target may be a leader.
    async fn led_group(&self, id: u64) -> Option<u32> {
        let node = self.nodes.iter().find(|n| n.id == id && n.running() && !n.paused)?;
        let status = tokio::time::timeout(Duration::from_secs(2), status(&node.addrs.admin)).await.ok()?.ok()?;
        status.groups.iter().find(|g| g.group_id >= 1 && g.leader_id == Some(id)).map(|g| g.group_id)
    }

    /// The nodes not ready within `timeout` (all waited for together), with why.
    async fn unready(&self, timeout: Duration) -> Vec<(u64, String)> {
        let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(2)).build() else {
            return self.nodes.iter().map(|n| (n.id, "no HTTP client".to_string())).collect();
        };
        let mut unready = Vec::new();
        let deadline = Instant::now() + timeout;
        for node in &self.nodes {
            let url = format!("http://{}/readyz", node.addrs.http);
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
            let ready = wait_until(&format!("node {} ready", node.id), left, || async {
                let response = client.get(&url).send().await.ok()?;
                response.status().is_success().then_some(())
            })
            .await;
            if let Err(e) = ready {
                let detail = match client.get(&url).send().await {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                unready.push((node.id, format!("{e} ({})", detail.trim())));
            }
        }
        unready
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<(), ChaosError> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        for node in &self.nodes {
            let url = format!("http://{}/readyz", node.addrs.http);
            wait_until(&format!("node {} ready", node.id), timeout, || async {
                let response = client.get(&url).send().await.ok()?;
                response.status().is_success().then_some(())
            })
            .await?;
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- node {} ({}) ---\n", node.id, node.log.display()));
            out.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Resumes paused nodes, removes every partition and restarts dead nodes.
    fn heal(&mut self) -> Result<(), ChaosError> {
        self.partitions.clear();
        self.net.set_blocked(&BTreeMap::new())?;
        for id in self.ids() {
            let node = self.node(id);
            if node.paused {
                node.signal("-CONT")?;
                node.paused = false;
            }
            if !self.node(id).running() {
                self.start(id)?;
            }
        }
        Ok(())
    }

    /// Cuts the links of partition fault `n` (on top of those of other active partitions).
    fn block(&mut self, n: u64, cut: &[(u64, u64)]) -> Result<(), ChaosError> {
        self.partitions.insert(n, cut.to_vec());
        self.apply_partitions()
    }

    /// Heals the links of partition fault `n` that no other active partition cuts.
    fn unblock(&mut self, n: u64) -> Result<(), ChaosError> {
        self.partitions.remove(&n);
        self.apply_partitions()
    }

    fn apply_partitions(&self) -> Result<(), ChaosError> {
        let cut: Vec<(u64, u64)> = self.partitions.values().flatten().copied().collect();
        let blocked: BTreeMap<usize, BTreeSet<usize>> = faults::cut_links(&cut)
            .into_iter()
            .map(|(a, peers)| ((a - 1) as usize, peers.into_iter().map(|b| (b - 1) as usize).collect()))
            .collect();
        self.net.set_blocked(&blocked)
    }

    /// Injects a planned fault; answers what was injected (None when its target could not be found).
    /// `busy`: nodes an active fault already kills, pauses or changes; a fault aimed at one is not injected.
    async fn inject(&mut self, planned: &Planned, n: u64, busy: &BTreeSet<u64>) -> Result<Option<Fault>, ChaosError> {
        let nodes = self.nodes.len() as u64;
        let target = match planned {
            Planned::Kill(t)
            | Planned::Pause(t)
            | Planned::Isolate(t)
            | Planned::Membership(t)
            | Planned::Restart(t)
            | Planned::Power(t) => Some(*t),
            Planned::Bridge { .. } | Planned::PowerAll => None,
        };
        let resolved = match target {
            Some(Target::Node(id)) => Some((id, self.led_group(id).await)),
            Some(Target::LeaderOf(group)) => self.leader_of(group).await.map(|id| (id, Some(group))),
            None => None,
        };
        let hits_node = matches!(
            planned,
            Planned::Kill(_) | Planned::Pause(_) | Planned::Membership(_) | Planned::Restart(_) | Planned::Power(_)
        );
        if hits_node && resolved.is_some_and(|(node, _)| busy.contains(&node)) {
            return Ok(None);
        }
        let fault = match planned {
            Planned::Kill(_) => {
                let Some((node, leader_of_group)) = resolved else { return Ok(None) };
                let fault = Fault::Kill { n, node, leader_of_group };
                self.history.record(Op::FaultStart { fault: fault.clone() });
                self.node(node).kill9();
                fault
            }
            Planned::Power(_) => {
                let Some((node, leader_of_group)) = resolved else { return Ok(None) };
                let (dropped_bytes, undone_entries) = self.node(node).cut_power()?;
                let fault = Fault::Power { n, node, leader_of_group, dropped_bytes, undone_entries };
                self.history.record(Op::FaultStart { fault: fault.clone() });
                fault
            }
            Planned::PowerAll => {
                if !busy.is_empty() {
                    return Ok(None);
                }
                let (mut dropped_bytes, mut undone_entries) = (0, 0);
                // Every node dies first, then every disk loses its cache: no node writes after the cut.
                for node in &mut self.nodes {
                    node.kill9();
                }
                for node in &mut self.nodes {
                    let (dropped, undone) = node.cut_power()?;
                    dropped_bytes += dropped;
                    undone_entries += undone;
                }
                let fault = Fault::PowerAll { n, dropped_bytes, undone_entries };
                self.history.record(Op::FaultStart { fault: fault.clone() });
                fault
            }
            Planned::Restart(_) => {
                let Some((node, leader_of_group)) = resolved else { return Ok(None) };
                if !self.node(node).running() {
                    return Ok(None);
                }
                let graceful = self.node(node).stop_gracefully(GRACEFUL_STOP).await;
                let fault = Fault::Restart { n, node, leader_of_group, graceful };
                self.history.record(Op::FaultStart { fault: fault.clone() });
                fault
            }
            Planned::Pause(_) => {
                let Some((node, leader_of_group)) = resolved else { return Ok(None) };
                if !self.node(node).running() {
                    return Ok(None);
                }
                let fault = Fault::Pause { n, node, leader_of_group };
                self.history.record(Op::FaultStart { fault: fault.clone() });
                self.node(node).signal("-STOP")?;
                self.node(node).paused = true;
                fault
            }
            Planned::Isolate(_) => {
                let Some((node, leader_of_group)) = resolved else { return Ok(None) };
                let name = if leader_of_group.is_some() { "leader-minority" } else { "isolate" };
                let cut = faults::isolate(node, nodes);
                let fault = Fault::Partition { n, name: name.into(), cut: cut.clone(), leader_of_group };
                self.history.record(Op::FaultStart { fault: fault.clone() });
                self.block(n, &cut)?;
                fault
            }
            Planned::Membership(_) => {
                let Some((node, leader_of_group)) = resolved else { return Ok(None) };
                let Some(via) = self.other_member(node) else { return Ok(None) };
                self.membership_via.insert(n, via.clone());
                let fault = Fault::Membership { n, node, leader_of_group };
                self.history.record(Op::FaultStart { fault: fault.clone() });
                // RemoveNode until it answers (or says the node is no member any more). A repeated call waits
                // on `via` for the one still running there, then finds it done.
                let removed = wait_until(&format!("node {node} removed"), Duration::from_secs(90), || async {
                    let channel = channel_with_timeout(&via, Duration::from_secs(60)).await.ok()?;
                    match ClusterClient::new(channel).remove_node(RemoveNodeRequest { node_id: node }).await {
                        Ok(_) => Some(()),
                        Err(status) if status.code() == tonic::Code::NotFound => Some(()),
                        Err(status) => {
                            self.history.note(format!("fault {n}: removing node {node}: {status}"));
                            None
                        }
                    }
                })
                .await;
                if removed.is_err() {
                    // Not (surely) removed: its data must stay (a member that forgets its log is not a fault
                    // Raft tolerates). The removal may still be running on `via` (a change runs to completion
                    // whatever its client does): add the node back right away, unwiped, after it.
                    self.history.note(format!("fault {n}: removing node {node} failed: {removed:?}; adding it back"));
                    self.add_back(n, node).await;
                    self.history.record(Op::FaultEnd { fault });
                    return Ok(None);
                }
                let wiped = self.node(node);
                wiped.kill9();
                wipe(&wiped.data)?;
                fault
            }
            Planned::Bridge { left, right, .. } => {
                let cut = faults::bridge(left, right);
                let fault = Fault::Partition { n, name: "bridge".into(), cut: cut.clone(), leader_of_group: None };
                self.history.record(Op::FaultStart { fault: fault.clone() });
                self.block(n, &cut)?;
                fault
            }
        };
        Ok(Some(fault))
    }

    /// AddNode of `id` (idempotent), retried until it answers (bounded), preferably through the node that ran
    /// its RemoveNode: a node runs membership changes one at a time, so the add comes after a removal that
    /// may still be running there.
    async fn add_back(&mut self, n: u64, id: u64) {
        let peer = self.node(id).addrs.peer.clone();
        let preferred = self.membership_via.remove(&n);
        let added = wait_until(&format!("node {id} added again"), Duration::from_secs(120), || async {
            let via = preferred
                .clone()
                .filter(|via| self.nodes.iter().any(|p| &p.addrs.admin == via && p.running() && !p.paused))
                .or_else(|| self.other_member(id))?;
            let mut client = ClusterClient::new(channel_with_timeout(&via, Duration::from_secs(60)).await.ok()?);
            client.add_node(AddNodeRequest { node_id: id, peer_addr: peer.clone() }).await.ok().map(|_| ())
        })
        .await;
        if let Err(e) = added {
            self.history.note(format!("fault {n}: {e}"));
        }
    }

    /// A running, unpaused node other than `node` (its admin address).
    fn other_member(&self, node: u64) -> Option<String> {
        self.nodes.iter().find(|n| n.id != node && n.running() && !n.paused).map(|n| n.addrs.admin.clone())
    }

    /// Ends a fault.
    async fn revert(&mut self, fault: &Fault) -> Result<(), ChaosError> {
        match fault {
            Fault::Membership { node, n, .. } => {
                self.start(*node)?;
                let admin = self.node(*node).addrs.admin.clone();
                wait_until(&format!("node {node} admin"), Duration::from_secs(30), || async {
                    status(&admin).await.ok()
                })
                .await?;
                self.add_back(*n, *node).await;
            }
            Fault::Kill { node, .. } | Fault::Restart { node, .. } | Fault::Power { node, .. } => self.start(*node)?,
            Fault::PowerAll { .. } => {
                for id in self.ids() {
                    if !self.node(id).running() {
                        self.start(id)?;
                    }
                }
            }
            Fault::Pause { node, .. } => {
                self.node(*node).signal("-CONT")?;
                self.node(*node).paused = false;
            }
            Fault::Partition { n, .. } => self.unblock(*n)?,
        }
        self.history.record(Op::FaultEnd { fault: fault.clone() });
        Ok(())
    }
}

/// Records every Trigger's committed offsets as each node reports them, every second, until stopped.
fn observe_offsets(
    nodes: Vec<(u64, String, Arc<AtomicU32>)>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for (id, admin, incarnation) in &nodes {
                for trigger in trigger_specs() {
                    let before = incarnation.load(Ordering::SeqCst);
                    let observed =
                        tokio::time::timeout(Duration::from_secs(1), committed_offsets(admin, &trigger.name)).await;
                    // A restart during the call would mix incarnations: drop that observation.
                    if let Ok(Ok(committed)) = observed
                        && incarnation.load(Ordering::SeqCst) == before
                    {
                        history.record(Op::Offsets {
                            node: *id,
                            incarnation: before,
                            trigger: trigger.name,
                            committed,
                            is_final: false,
                        });
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

fn say(config: &Config, text: &str) {
    if config.verbose {
        eprintln!("[sluice-chaos] {text}");
    }
}

fn trigger_object(spec: &TriggerSpec, subscribers: &Subscribers, config: &Config) -> serde_json::Value {
    let mut object = serde_json::json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": { "name": spec.name, "namespace": NAMESPACE },
        "spec": {
            "broker": BROKER,
            "subscriber": { "uri": subscribers.url(&spec.name) },
            "delivery": {
                "retry": config.retry,
                "backoffPolicy": config.backoff_policy,
                "backoffDelay": config.backoff_delay,
            },
        },
    });
    if let (Some(event_type), Some(spec_object)) =
        (&spec.type_filter, object.pointer_mut("/spec").and_then(|s| s.as_object_mut()))
    {
        spec_object.insert("filter".into(), serde_json::json!({ "attributes": { "type": event_type } }));
    }
    object
}

/// Runs the whole thing and answers the checker's report.
pub async fn run(config: Config) -> Result<Report, ChaosError> {
    let (net, fallback) = Network::setup(config.network, config.nodes)?;
    let kinds = config.faults.clone();
    if let Some(reason) = &fallback {
        say(&config, &format!("network namespaces unavailable ({reason}); falling back to loopback"));
    }
    let temp = tempfile::tempdir().map_err(|e| ChaosError::io("creating a temporary directory", e))?;
    let root = config.keep_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&root).map_err(|e| ChaosError::io(format!("creating {}", root.display()), e))?;
    // The run keeps its own link to (or copy of) the binary: a rebuild during the run must not give restarted
    // nodes another version.
    let mut config = config;
    let pinned = root.join("sluice");
    let _ = std::fs::remove_file(&pinned);
    if std::fs::hard_link(&config.sluice_bin, &pinned).is_err() {
        std::fs::copy(&config.sluice_bin, &pinned)
            .map_err(|e| ChaosError::io(format!("copying {}", config.sluice_bin.display()), e))?;
    }
    config.sluice_bin = pinned;
    let history = Arc::new(History::new(config.history.as_deref())?);
    say(
        &config,
        &format!(
            "seed {} · {} nodes ({}) · faults {:?} for {:?} · data {}",
            config.seed,
            config.nodes,
            net.name(),
            kinds,
            config.duration,
            root.display()
        ),
    );
    history.record(Op::Start {
        seed: config.seed,
        nodes: config.nodes,
        partitions: config.partitions,
        faults: kinds.iter().map(|k| k.name().to_string()).collect(),
        network: net.name().to_string(),
        stream: stream(),
        dedupe: true,
        triggers: trigger_specs(),
        planted_bug: config.planted_bug.clone(),
    });
    if let Some(reason) = fallback {
        history.note(format!("loopback fallback: {reason}"));
    }

    let nodes = (1..=config.nodes as u64)
        .map(|id| NodeProc {
            id,
            addrs: net.node((id - 1) as usize),
            data: root.join(format!("node-{id}")),
            disk: None,
            log: root.join(format!("node-{id}.log")),
            child: None,
            paused: false,
            incarnation: Arc::new(AtomicU32::new(0)),
        })
        .collect();
    let mut nodes: Vec<NodeProc> = nodes;
    if kinds.iter().any(|k| k.cuts_power()) {
        // Every node's data on the power-loss filesystem (a node the schedule never cuts is still the same).
        for node in &mut nodes {
            let disk = LazyFsProcess::start(
                &config.lazyfs_bin,
                &root.join(format!("node-{}.disk", node.id)),
                &node.data,
                &root.join(format!("node-{}.lazyfs", node.id)),
            )?;
            node.disk = Some(disk);
        }
    }
    let mut extra_node_args = if config.tls {
        let mut hosts: Vec<String> =
            nodes.iter().map(|n| sluice_security::host_of(&n.addrs.peer).to_string()).collect();
        hosts.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
        hosts.sort();
        hosts.dedup();
        history.note(format!("transport encryption: permissive, mutual TLS between nodes (certificate for {hosts:?})"));
        tls_node_args(&root.join("tls"), &hosts)?
    } else {
        Vec::new()
    };
    if let Some(every) = config.snapshot_every_entries {
        history.note(format!("snapshots every {every} entries, {} kept behind", every / 4));
        extra_node_args.extend(snapshot_node_args(every));
    }
    let mut cluster = Cluster {
        net: &net,
        nodes,
        config: config.clone(),
        history: history.clone(),
        partitions: BTreeMap::new(),
        membership_via: BTreeMap::new(),
        extra_node_args,
    };
    let outcome = drive(&mut cluster, &kinds).await;
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails());
    }
    for node in &mut cluster.nodes {
        node.kill9();
    }
    drop(cluster);
    outcome?;
    let entries = history.finish()?;
    Ok(check(&entries))
}

/// The node arguments for a snapshot every `every` entries with a quarter of them kept behind it.
fn snapshot_node_args(every: u64) -> Vec<String> {
    vec![
        "--snapshot-every-entries".into(),
        every.to_string(),
        "--keep-entries-after-snapshot".into(),
        (every / 4).to_string(),
    ]
}

/// A CA and one certificate for `hosts` under `dir`, and the node flags that use them.
fn tls_node_args(dir: &std::path::Path, hosts: &[String]) -> Result<Vec<String>, ChaosError> {
    let setup = |e: sluice_security::TlsError| ChaosError::Setup(format!("TLS certificates: {e}"));
    let ca = sluice_security::DevCertificates::new_ca("sluice-chaos CA").map_err(setup)?;
    let (cert, key) = sluice_security::issue_certificate(&ca, hosts).map_err(setup)?;
    std::fs::create_dir_all(dir).map_err(|e| ChaosError::io(format!("creating {}", dir.display()), e))?;
    let mut args = vec!["--transport-encryption".to_string(), "permissive".to_string()];
    for (flag, name, text) in
        [("--tls-cert", "node.pem", &cert), ("--tls-key", "node.key", &key), ("--tls-ca", "ca.pem", &ca.ca_cert_pem)]
    {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| ChaosError::io(format!("writing {}", path.display()), e))?;
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    Ok(args)
}

/// The fault phase until `end`: draws each step from the seeded schedule when a slot is free (at most
/// `max_overlapping_faults` held at once), waits its gap, injects it, and ends each fault after its hold.
/// With one slot: gap, fault, hold, end, recovery, one after another. A fault whose target is busy (an
/// active fault holds that node) or that would overlap a membership change is skipped and noted.
async fn inject_faults(
    cluster: &mut Cluster<'_>,
    kinds: &[FaultKind],
    rng: &mut StdRng,
    end: Instant,
) -> Result<(), ChaosError> {
    let config = cluster.config.clone();
    let history = cluster.history.clone();
    let nodes = cluster.nodes.len() as u64;
    let slots = config.max_overlapping_faults.max(1);
    let mut active: Vec<(Instant, Fault)> = Vec::new();
    let mut pending: Option<(Instant, faults::Step)> = None;
    let mut n = 0;
    loop {
        if pending.is_none() && active.len() < slots {
            let Some(step) = faults::next_step(rng, kinds, nodes, config.partitions, config.timing) else {
                break;
            };
            pending = Some((Instant::now() + step.gap, step));
        }
        let wake = pending.iter().map(|(at, _)| *at).chain(active.iter().map(|(until, _)| *until)).min();
        tokio::time::sleep_until(wake.unwrap_or(end).min(end)).await;
        if Instant::now() >= end {
            break;
        }
        let now = Instant::now();
        let (due, still): (Vec<_>, Vec<_>) = active.into_iter().partition(|(until, _)| *until <= now);
        active = still;
        for (_, fault) in &due {
            cluster.revert(fault).await?;
        }
        if !due.is_empty()
            && active.is_empty()
            && config.wait_ready_between_faults
            && let Err(e) = cluster.wait_ready(Duration::from_secs(30)).await
        {
            history.note(format!("after fault {n}: {e}"));
            say(&config, &format!("after fault {n}: {e}"));
        }
        let Some((_, step)) = pending.take_if(|(at, _)| *at <= Instant::now()) else {
            continue;
        };
        n += 1;
        let alone = |kind: FaultKind| matches!(kind, FaultKind::Membership | FaultKind::PowerAll);
        let alone_active = active.iter().any(|(_, f)| alone(f.kind()));
        let wants_alone = matches!(step.planned, Planned::Membership(_) | Planned::PowerAll);
        if alone_active || (wants_alone && !active.is_empty()) {
            history.note(format!(
                "fault {n} skipped: a membership change or a cut of every node runs alone ({:?})",
                step.planned
            ));
            continue;
        }
        let busy: BTreeSet<u64> = active.iter().filter_map(|(_, f)| f.node()).collect();
        let Some(fault) = cluster.inject(&step.planned, n, &busy).await? else {
            history.note(format!("fault {n} skipped: no target, or its target is busy ({:?})", step.planned));
            continue;
        };
        say(&config, &format!("fault {n}: {fault:?} for {:?}", step.hold));
        active.push((Instant::now() + step.hold, fault));
    }
    // The phase is over: end what is still held (the heal phase would, but each gets its fault-end here).
    for (_, fault) in active {
        cluster.revert(&fault).await?;
    }
    Ok(())
}

async fn drive(cluster: &mut Cluster<'_>, kinds: &[FaultKind]) -> Result<(), ChaosError> {
    let config = cluster.config.clone();
    let history = cluster.history.clone();
    for id in cluster.ids() {
        cluster.start(id)?;
    }
    for node in &cluster.nodes {
        wait_until(&format!("node {} admin", node.id), Duration::from_secs(30), || async {
            status(&node.addrs.admin).await.ok()
        })
        .await?;
    }
    let members =
        cluster.nodes.iter().map(|n| Member { node_id: n.id, peer_addr: n.addrs.peer.clone() }).collect::<Vec<_>>();
    ClusterClient::new(channel(&cluster.nodes[0].addrs.admin).await?)
        .init(InitRequest { members, partitions: config.partitions })
        .await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;

    // Subscribers, Broker, Triggers.
    let rates = HashMap::from([("t-b".to_string(), config.fail_rate)]);
    let subscribers =
        Subscribers::start(&cluster.net.client_ip(), history.clone(), FailSchedule { seed: config.seed, rates })
            .await?;
    let admin = cluster.nodes[0].addrs.admin.clone();
    let mut resources = ResourcesClient::new(channel(&admin).await?);
    let broker = serde_json::json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": { "name": BROKER, "namespace": NAMESPACE },
    });
    resources.apply(ApplyResourceRequest { object_json: broker.to_string(), dry_run: false }).await?;
    for spec in trigger_specs() {
        let object = trigger_object(&spec, &subscribers, &config);
        resources.apply(ApplyResourceRequest { object_json: object.to_string(), dry_run: false }).await?;
    }
    let path = format!("/{NAMESPACE}/{BROKER}");
    let probe = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    for node in &cluster.nodes {
        let url = format!("http://{}{path}", node.addrs.http);
        wait_until(&format!("broker known on node {}", node.id), Duration::from_secs(30), || async {
            let response = probe
                .post(&url)
                .header("content-type", "application/cloudevents-batch+json")
                .body("[]")
                .send()
                .await
                .ok()?;
            (response.status() != reqwest::StatusCode::NOT_FOUND).then_some(())
        })
        .await?;
    }
    // Every Trigger dispatchable before the first event.
    for spec in trigger_specs() {
        wait_until(&format!("trigger {} known", spec.name), Duration::from_secs(30), || async {
            committed_offsets(&admin, &spec.name).await.ok()
        })
        .await?;
    }

    // Producers and the offset observer.
    let https = cluster.nodes.iter().map(|n| n.addrs.http.clone()).collect();
    let producers = Arc::new(Producers::new(https, &path, history.clone(), config.rate, config.seed)?);
    let mut producer_tasks = tokio::task::JoinSet::new();
    for p in 0..config.producers {
        producer_tasks.spawn(producers.clone().run(p));
    }
    let stop_observer = Arc::new(AtomicBool::new(false));
    let observed_nodes =
        cluster.nodes.iter().map(|n| (n.id, n.addrs.admin.clone(), n.incarnation.clone())).collect::<Vec<_>>();
    let observer = observe_offsets(observed_nodes.clone(), history.clone(), stop_observer.clone());

    history.record(Op::Phase { name: "quiet".into() });
    say(&config, "phase: quiet");
    tokio::time::sleep(config.quiet).await;

    history.record(Op::Phase { name: "faults".into() });
    say(&config, "phase: faults");
    let mut rng = StdRng::seed_from_u64(config.seed);
    let end = Instant::now() + config.duration;
    if kinds.is_empty() {
        // No faults: the phase is the same length, producers and deliveries go on.
        tokio::time::sleep_until(end).await;
    } else {
        inject_faults(cluster, kinds, &mut rng, end).await?;
    }

    history.record(Op::Phase { name: "heal".into() });
    say(&config, "phase: heal");
    cluster.heal()?;
    // A node that does not recover is reported (a violation) and left out of the drain and the final reads;
    // the others are still checked.
    let mut unrecovered = BTreeSet::new();
    for (id, reason) in cluster.unready(config.recovery_timeout).await {
        say(&config, &format!("node {id} did not recover: {reason}"));
        history.record(Op::Unrecovered { node: id, reason });
        unrecovered.insert(id);
    }
    let healthy: Vec<String> =
        cluster.nodes.iter().filter(|n| !unrecovered.contains(&n.id)).map(|n| n.addrs.admin.clone()).collect();
    let first_healthy = healthy.first().cloned().unwrap_or_else(|| cluster.nodes[0].addrs.admin.clone());
    // Producers finish their current id (bounded), then stop.
    producers.producing.store(false, Ordering::Relaxed);
    let settle =
        tokio::time::timeout(Duration::from_secs(30), async { while producer_tasks.join_next().await.is_some() {} })
            .await;
    if settle.is_err() {
        producers.retrying.store(false, Ordering::Relaxed);
        history.note("producers still retrying 30 s after healing: given up (indeterminate)");
        while producer_tasks.join_next().await.is_some() {}
    }

    history.record(Op::Phase { name: "drain".into() });
    say(&config, "phase: drain");
    let specs = trigger_specs();
    let mut streams = vec![stream()];
    streams.extend(specs.iter().map(|t| t.dead_letter_stream.clone()));
    // The drain reads the events from one node: first every node must hold every acknowledged event (the
    // producers have stopped), or an event acknowledged just before the heal, not yet applied on the node
    // read, would be missed and the drain would end while it is still being delivered.
    if let Err(e) = converge(&healthy, &streams[..1], config.partitions, config.recovery_timeout).await {
        history.note(format!("drain: {e}"));
        say(&config, &format!("drain: {e}"));
    }
    // Drained: every matching event delivered or dead-lettered, and every Trigger's dispatcher committed past the
    // end with nothing in flight (so no dead letter is still to come when the copies are compared).
    // What kept the last check from calling it drained, for the note if the drain times out.
    let blocker = std::sync::Mutex::new(String::new());
    let drained = wait_until("subscribers caught up", config.drain_timeout, || async {
        let waiting = drain_blockers(&first_healthy, &stream(), &specs, config.partitions, &subscribers).await;
        let drained = waiting.is_empty();
        if let Ok(mut last) = blocker.lock() {
            *last = waiting.join("; ");
        }
        drained.then_some(())
    })
    .await;
    let drained = drained.map_err(|e| {
        let waiting = blocker.lock().map(|b| b.clone()).unwrap_or_default();
        format!("{e} (still waiting for: {waiting})")
    });
    if let Err(e) = drained {
        history.note(format!("drain: {e}"));
        say(&config, &format!("drain: {e}"));
    }
    // Every node's copies converge (same end offsets everywhere).
    let converged = converge(&healthy, &streams, config.partitions, config.recovery_timeout).await;
    if let Err(e) = converged {
        history.note(format!("final: {e}"));
        say(&config, &format!("final: {e}"));
    }
    stop_observer.store(true, Ordering::Relaxed);
    let _ = observer.await;
    history.record(Op::Phase { name: "final-read".into() });
    for (id, admin, incarnation) in observed_nodes.iter().filter(|(id, ..)| !unrecovered.contains(id)) {
        for spec in &specs {
            match committed_offsets(admin, &spec.name).await {
                Ok(committed) => history.record(Op::Offsets {
                    node: *id,
                    incarnation: incarnation.load(Ordering::SeqCst),
                    trigger: spec.name.clone(),
                    committed,
                    is_final: true,
                }),
                Err(e) => history.note(format!("final offsets of {} on node {id}: {e}", spec.name)),
            }
        }
        let mut reads = Vec::new();
        for s in &streams {
            for partition in 0..config.partitions {
                match read_partition(admin, s, partition).await {
                    Ok(events) => reads.push(Op::Read { node: *id, stream: s.clone(), partition, events }),
                    Err(e) => {
                        history.record(Op::Unrecovered { node: *id, reason: format!("reading {s}/{partition}: {e}") });
                        reads.clear();
                        break;
                    }
                }
            }
        }
        for read in reads {
            history.record(read);
        }
    }
    drop(subscribers);
    Ok(())
}
