//! The cluster under test: one `sluice node` process per node ([`NodeProc`]: start, kill -9, SIGTERM, pause,
//! power cut), and the faults carried out on them ([`Cluster`]: inject a planned fault, revert it, heal). In: a
//! planned fault from the seeded schedule (`faults.rs`); out: the processes and the network changed, and each
//! fault's start and end recorded in the history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_proto::admin::{AddNodeRequest, RemoveNodeRequest};
use tokio::time::Instant;

use crate::admin_calls::{channel_with_timeout, status, wait_until};
use crate::config::Config;
use crate::faults::{self, Fault, Planned, Target};
use crate::history::{History, Op};
use crate::netns::{Network, NodeAddrs};
use crate::powerloss::LazyFsProcess;
use crate::{ChaosError, netns};

/// One `sluice node` process.
pub(crate) struct NodeProc {
    pub(crate) id: u64,
    pub(crate) addrs: NodeAddrs,
    pub(crate) data: PathBuf,
    /// The power-loss filesystem `data` is mounted from, in the power-loss runs.
    pub(crate) disk: Option<LazyFsProcess>,
    pub(crate) log: PathBuf,
    pub(crate) child: Option<Child>,
    pub(crate) paused: bool,
    pub(crate) incarnation: Arc<AtomicU32>,
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

    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// When the process exited by itself (no fault took it: a kill or a stop takes the child first), takes
    /// it and answers how it exited. Regression: a node that panicked between faults was found dead only by
    /// a later fault aimed at it, which killed or restarted it as if it had run, and the run passed.
    pub(crate) fn take_if_exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        let exit = match child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => return None,
            Err(e) => format!("its status could not be read: {e}"),
        };
        self.child = None;
        self.paused = false;
        Some(exit)
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

pub(crate) struct Cluster<'a> {
    pub(crate) net: &'a Network,
    pub(crate) nodes: Vec<NodeProc>,
    pub(crate) config: Config,
    pub(crate) history: Arc<History>,
    /// The links each active partition fault cuts (by fault number): the network blocks their union.
    pub(crate) partitions: BTreeMap<u64, Vec<(u64, u64)>>,
    /// The node (admin address) that ran each active membership fault's RemoveNode.
    pub(crate) membership_via: BTreeMap<u64, String>,
    /// Flags every node starts with besides its addresses (transport encryption).
    pub(crate) extra_node_args: Vec<String>,
}

impl Cluster<'_> {
    pub(crate) fn node(&mut self, id: u64) -> &mut NodeProc {
        let index = (id as usize).saturating_sub(1).min(self.nodes.len() - 1);
        &mut self.nodes[index]
    }

    pub(crate) fn start(&mut self, id: u64) -> Result<(), ChaosError> {
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

    /// Records every node process that exited by itself since the last look ([`NodeProc::take_if_exited`]).
    pub(crate) fn note_crashes(&mut self) {
        for node in &mut self.nodes {
            if let Some(exit) = node.take_if_exited() {
                let incarnation = node.incarnation.load(Ordering::SeqCst);
                self.history.record(Op::Crashed { node: node.id, incarnation, exit });
            }
        }
    }

    pub(crate) fn ids(&self) -> Vec<u64> {
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
    pub(crate) async fn unready(&self, timeout: Duration) -> Vec<(u64, String)> {
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

    pub(crate) async fn wait_ready(&self, timeout: Duration) -> Result<(), ChaosError> {
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

    pub(crate) fn log_tails(&self) -> String {
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
    pub(crate) fn heal(&mut self) -> Result<(), ChaosError> {
        self.note_crashes();
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
    pub(crate) async fn inject(
        &mut self,
        planned: &Planned,
        n: u64,
        busy: &BTreeSet<u64>,
    ) -> Result<Option<Fault>, ChaosError> {
        self.note_crashes();
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
    pub(crate) async fn revert(&mut self, fault: &Fault) -> Result<(), ChaosError> {
        self.note_crashes();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node_running(program: &str, args: &[&str]) -> NodeProc {
        let child = std::process::Command::new(program).args(args).stdin(Stdio::null()).spawn().expect("spawn");
        NodeProc {
            id: 1,
            addrs: NodeAddrs { ip: String::new(), peer: String::new(), http: String::new(), admin: String::new() },
            data: PathBuf::new(),
            disk: None,
            log: PathBuf::new(),
            child: Some(child),
            paused: false,
            incarnation: Arc::new(AtomicU32::new(1)),
        }
    }

    #[test]
    fn a_process_that_exited_by_itself_is_found_and_one_running_is_left_alone() {
        let mut running = node_running("sleep", &["30"]);
        assert_eq!(running.take_if_exited(), None);
        assert!(running.running());
        let mut crashed = node_running("sh", &["-c", "exit 101"]);
        // Wait for the exit itself: a zombie until `take_if_exited` reaps it.
        let pid = crashed.pid().expect("pid");
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.rsplit(") ").next().is_some_and(|state| state.starts_with('Z')))
        };
        while !zombie() {
            std::thread::yield_now();
        }
        assert_eq!(crashed.take_if_exited().as_deref(), Some("exit status: 101"));
        assert!(!crashed.running());
        assert_eq!(crashed.take_if_exited(), None, "found once");
    }
}
