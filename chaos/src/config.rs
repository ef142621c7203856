//! What a chaos run does: its [`Config`] (nodes, faults and their timing, the workload, the delivery policy,
//! the binaries), built by the `sluice-chaos` command and the chaos suite's tests, read by the run and its
//! cluster (`cluster.rs`).

use std::path::PathBuf;
use std::time::Duration;

use crate::faults::{FaultKind, Timing};
use crate::netns::NetworkKind;

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
    /// The Broker's dedupe window (`None`: its default, 2 minutes), and the nodes give an idle stream's window
    /// up right after it (`--dedupe-idle-grace-ms 0`): short enough, a node held back by a fault releases
    /// windows and rebuilds them as it catches up. The checker then allows an event stored again past it.
    pub dedupe_window: Option<Duration>,
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
            dedupe_window: None,
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
