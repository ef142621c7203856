//! An instance's probes on the local runtime: readiness (until ready, then at its rhythm, in and out of
//! rotation), and startup and liveness ([`LivenessTracker`]: they stop an instance that fails them). In: the
//! instance's checks, its environment, its exit. Out: `Ready`/`NotReady` events, and stops with their reason.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use super::signal_group;
use crate::runtime::liveness::LivenessTracker;
use crate::runtime::{InstanceEvent, ProbeRhythm, Readiness, ReadinessTracker};

/// Readiness probing: every 5 ms for the first 2 s (cold starts are short), then every 50 ms.
pub(super) const FAST_PROBE_MS: u64 = 5;
pub(super) const FAST_PROBE_FOR_MS: u64 = 2_000;
pub(super) const SLOW_PROBE_MS: u64 = 50;
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an instance a startup or liveness probe stops has between SIGTERM and SIGKILL: Kubernetes'
/// `terminationGracePeriodSeconds` default.
pub(super) const PROBE_KILL_GRACE: Duration = Duration::from_secs(30);

/// Where an exec probe runs: the instance's variables (`PORT`, the container's `env`) and working directory;
/// and how often any probe runs once the instance is ready.
#[derive(Clone)]
pub(super) struct ProbeEnv {
    pub(super) vars: Vec<(String, String)>,
    pub(super) working_dir: Option<PathBuf>,
    pub(super) rhythm: ProbeRhythm,
}

/// An instance that is not ready `after` it started is stopped (its process group killed), saying why.
pub(super) struct Deadline {
    pub(super) after: Duration,
    pub(super) gave_up: Arc<Mutex<Option<String>>>,
    pub(super) group: Option<u32>,
}

/// Probes until the instance is ready, then goes on probing at the probe's rhythm: an instance whose probe
/// fails `failureThreshold` times in a row is taken out of rotation (`NotReady`) and put back once it passes
/// again. Before session 40 the probe stopped at the first success, and an instance that stopped answering
/// its probe kept its share of the requests until it exited.
pub(super) async fn probe_until_ready(
    readiness: Readiness,
    env: ProbeEnv,
    deadline: Deadline,
    id: u64,
    addr: SocketAddr,
    events: mpsc::Sender<InstanceEvent>,
    (mut started_up, exited): (watch::Receiver<bool>, watch::Receiver<bool>),
) {
    let started = tokio::time::Instant::now();
    let mut exit = exited.clone();
    // The progress deadline counts from the start, a startup probe's time included.
    tokio::select! {
        passed = started_up.wait_for(|passed| *passed) => if passed.is_err() { return },
        _ = exit.wait_for(|exited| *exited) => return,
        _ = tokio::time::sleep(deadline.after) => return deadline.give_up(id),
    }
    // Probed fast for the first moments of its probing, a startup probe's time not counted.
    let probing_since = tokio::time::Instant::now();
    loop {
        if *exited.borrow() {
            return;
        }
        if probe_once(&readiness, &env, PROBE_TIMEOUT).await {
            if events.send(InstanceEvent::Ready { id, addr }).await.is_ok() {
                keep_probing(&readiness, &env, (id, addr), &events, exited, &deadline.gave_up).await;
            }
            return;
        }
        if started.elapsed() >= deadline.after {
            return deadline.give_up(id);
        }
        let fast = probing_since.elapsed().as_millis() < u128::from(FAST_PROBE_FOR_MS);
        let period = if fast { FAST_PROBE_MS } else { SLOW_PROBE_MS };
        tokio::time::sleep(Duration::from_millis(period)).await;
    }
}

impl Deadline {
    /// Kills an instance not ready by the deadline, saying why.
    fn give_up(&self, id: u64) {
        tracing::warn!(
            instance = id,
            after_ms = self.after.as_millis() as u64,
            "not ready within the progress deadline; stopping it"
        );
        if let Ok(mut gave_up) = self.gave_up.lock() {
            *gave_up = Some("ProgressDeadlineExceeded".into());
        }
        if let Some(group) = self.group {
            signal_group(group, Signal::SIGKILL);
        }
    }
}

/// A ready instance's probe, every `rhythm.period`, until it exits (or nobody listens for its events). An
/// instance being stopped (`stopping` says why) never comes back into rotation, though it may still pass its
/// probe while it drains.
async fn keep_probing(
    readiness: &Readiness,
    env: &ProbeEnv,
    (id, addr): (u64, SocketAddr),
    events: &mpsc::Sender<InstanceEvent>,
    mut exited: watch::Receiver<bool>,
    stopping: &Mutex<Option<String>>,
) {
    let mut tracker = ReadinessTracker::ready(env.rhythm);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(env.rhythm.period) => {}
            _ = exited.wait_for(|exited| *exited) => return,
        }
        let passed = probe_once(readiness, env, PROBE_TIMEOUT).await;
        let event = match tracker.observe(passed) {
            Some(true) if stopping.lock().map_or(true, |why| why.is_some()) => continue,
            Some(true) => InstanceEvent::Ready { id, addr },
            Some(false) => InstanceEvent::NotReady { id },
            None => continue,
        };
        if *exited.borrow() || events.send(event).await.is_err() {
            return;
        }
    }
}

pub(super) async fn probe_once(readiness: &Readiness, env: &ProbeEnv, timeout: Duration) -> bool {
    let attempt = async {
        match readiness {
            Readiness::TcpConnect { port } => {
                tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, *port)).await.is_ok()
            }
            Readiness::HttpGet { port, path } => http_get_ok(*port, path).await,
            Readiness::Exec { argv } => match argv.split_first() {
                Some((program, args)) => Command::new(program)
                    .args(args)
                    .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .current_dir(env.working_dir.as_deref().unwrap_or_else(|| std::path::Path::new(".")))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .is_ok_and(|s| s.success()),
                None => false,
            },
        }
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or(false)
}

/// What stops an instance from outside its revision: why (its exit says it), its process group, its exit, and
/// the revision's events (the instance leaves rotation before it is asked to stop).
pub(super) struct Stopper {
    pub(super) gave_up: Arc<Mutex<Option<String>>>,
    pub(super) group: Option<u32>,
    pub(super) exited: watch::Receiver<bool>,
    pub(super) events: mpsc::Sender<InstanceEvent>,
}

/// Runs an instance's startup and liveness probes as [`LivenessTracker`] says when; tells readiness once the
/// startup probe passed; stops the instance when either fails too often (SIGTERM, then SIGKILL after
/// [`PROBE_KILL_GRACE`], as the kubelet restarts a container), its exit saying which. It leaves rotation first
/// (as a terminating pod leaves its Endpoints), so that requests wait for another instance rather than go to
/// one being stopped. The revision replaces it as it replaces an instance that crashed.
pub(super) async fn watch_liveness(
    mut tracker: LivenessTracker,
    env: ProbeEnv,
    mut stopper: Stopper,
    started: watch::Sender<bool>,
    revision: String,
    id: u64,
) {
    let start = tokio::time::Instant::now();
    while let Some(due) = tracker.next_probe_at() {
        tokio::select! {
            _ = tokio::time::sleep_until(start + due) => {}
            _ = stopper.exited.wait_for(|exited| *exited) => return,
        }
        let Some(probe) = tracker.current().cloned() else { return };
        let passed = probe_once(&probe.check, &env, probe.timeout).await;
        let verdict = tracker.observe(passed, start.elapsed());
        if tracker.started() {
            started.send_if_modified(|passed| !std::mem::replace(passed, true));
        }
        let Some(reason) = verdict else { continue };
        tracing::warn!(%revision, instance = id, %reason, failures = probe.failure_threshold, "stopping the instance");
        if let Ok(mut gave_up) = stopper.gave_up.lock() {
            *gave_up = Some(reason.to_string());
        }
        // Out of rotation before the signal (an instance whose startup probe failed was never in it). A closed
        // channel means nobody routes to it any more.
        if tracker.started() {
            let _ = stopper.events.send(InstanceEvent::NotReady { id }).await;
        }
        metrics::counter!("sluice_serving_probe_stops_total", "revision" => revision, "reason" => reason).increment(1);
        let Some(group) = stopper.group else { return };
        signal_group(group, Signal::SIGTERM);
        if tokio::time::timeout(PROBE_KILL_GRACE, stopper.exited.wait_for(|exited| *exited)).await.is_err() {
            signal_group(group, Signal::SIGKILL);
        }
        return;
    }
}

/// A bare HTTP/1.1 GET: 2xx or 3xx is ready.
async fn http_get_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else { return false };
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: sluice-probe\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    // "HTTP/1.1 200"
    matches!(head.get(9), Some(b'2' | b'3'))
}
