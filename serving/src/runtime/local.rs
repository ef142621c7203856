//! The local runtime: an instance is a child process running the container's `command` + `args`, with its
//! `env`, `workingDir`, `PORT`, `K_SERVICE`, `K_CONFIGURATION` and `K_REVISION`, in a process group of its own
//! (so that stopping it stops what it started), and of the node's environment only what a base image sets
//! (`environment.rs`). Its output is appended to a log file per revision and its last
//! lines are kept for the Revision's status when it fails.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use sluice_controller::serving::ServingRuntime;

use super::liveness::LivenessTracker;
use super::{Instance, InstanceEvent, InstanceSpec, Runtime};
use crate::error::ServingError;
use crate::logs::RevisionLog;
use probes::{Deadline, ProbeEnv, Rotation, Stopper, probe_until_ready, watch_liveness};

pub(crate) mod environment;
mod probes;

/// Lines of output kept for a failure message (which keeps their last 4 KiB: `revision/instance_events.rs`).
const TAIL_LINES: usize = 10;
/// A line longer than this is cut.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How long a stop waits for the process to be gone after SIGKILL (it never hangs the node's shutdown).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Runs instances as child processes; records each one's process group under `instances_dir` while it runs,
/// so that a node killed with `kill -9` (whose children outlive it) stops them when it starts again.
pub(crate) struct LocalRuntime {
    instances_dir: PathBuf,
    /// Where an instance without a `workingDir` runs: an empty directory of its own under here, removed when it
    /// exits (a container's own filesystem, not the node's working directory with its data dir in it).
    scratch_root: PathBuf,
    slots: Arc<Mutex<LocalSlots>>,
    /// What every instance gets of the node's environment ([`environment::inherited`]).
    inherited_env: Vec<(String, String)>,
}

/// What this node's instances hold: their count (at most `max`, `--max-local-instances`) and the fixed
/// `containerPort`s they listen on. Instances share the machine's ports, where pods have their own: an instance
/// on a port another one (of any revision) still holds would not listen, and its readiness probe would reach the
/// other one.
#[derive(Debug, Default)]
struct LocalSlots {
    max: usize,
    running: usize,
    /// The fixed ports held, and the revision (`namespace/name`) of the instance holding each.
    fixed_ports: std::collections::HashMap<u16, String>,
}

/// One instance's share of [`LocalSlots`], given back when its process has exited (or when it did not start).
struct LocalSlot {
    slots: Arc<Mutex<LocalSlots>>,
    fixed_port: Option<u16>,
}

impl LocalSlots {
    /// Takes a slot for an instance of `revision` (on `fixed_port`, if it has one), or says why it must wait. A
    /// fixed port held by an instance of the same revision makes it wait (one instance per fixed port, as before);
    /// one held by another revision's instance (a rollout: the old revision serves until the new one is Ready)
    /// gives it a port of its own instead, which `PORT` tells it (Knative's runtime contract: an app listens on
    /// `PORT`), so that its readiness probe reaches it and not the old process. `Ok((slot, true))`: moved.
    fn take(
        slots: &Arc<Mutex<LocalSlots>>,
        revision: &str,
        fixed_port: Option<u16>,
    ) -> Result<(LocalSlot, bool), String> {
        let mut held = slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if held.running >= held.max {
            return Err(format!("this node runs {} local instances already (--max-local-instances)", held.running));
        }
        let (fixed_port, moved) = match fixed_port.map(|port| (port, held.fixed_ports.get(&port))) {
            Some((port, Some(holder))) if holder == revision => {
                return Err(format!("port {port} is held by another instance of {revision} until it exits"));
            }
            Some((_, Some(_))) => (None, true),
            Some((port, None)) => (Some(port), false),
            None => (None, false),
        };
        held.running += 1;
        if let Some(port) = fixed_port {
            held.fixed_ports.insert(port, revision.to_string());
        }
        metrics::gauge!("sluice_serving_local_instances").set(held.running as f64);
        Ok((LocalSlot { slots: slots.clone(), fixed_port }, moved))
    }
}

impl LocalSlot {
    /// Stops holding the fixed port (the instance listens elsewhere).
    fn give_back_fixed_port(&mut self) {
        if let Some(port) = self.fixed_port.take() {
            let mut held = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            held.fixed_ports.remove(&port);
        }
    }
}

impl Drop for LocalSlot {
    fn drop(&mut self) {
        let mut held = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        held.running = held.running.saturating_sub(1);
        if let Some(port) = self.fixed_port {
            held.fixed_ports.remove(&port);
        }
        metrics::gauge!("sluice_serving_local_instances").set(held.running as f64);
    }
}

/// Whether a program Sluice did not start listens on `port` (binding it fails): an instance started there would
/// not listen, and its readiness probe would reach that program.
fn port_taken_by_another_program(port: u16) -> bool {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err()
}

impl LocalRuntime {
    /// Stops what a previous run of this node left running, then starts fresh; runs at most `max_instances` at
    /// once (at least 1), each with `inherited_env` beneath its own variables.
    pub(crate) fn new(instances_dir: PathBuf, max_instances: usize, inherited_env: Vec<(String, String)>) -> Self {
        let stopped = kill_recorded_instances(&instances_dir);
        if stopped > 0 {
            tracing::warn!(stopped, "stopped the instances a previous run of this node left running");
        }
        let _ = std::fs::create_dir_all(&instances_dir);
        // The instances that ran here before are stopped: what they left in their directories goes too.
        let scratch_root = instances_dir.with_file_name("instance-dirs");
        let _ = std::fs::remove_dir_all(&scratch_root);
        let _ = std::fs::create_dir_all(&scratch_root);
        let slots = LocalSlots { max: max_instances.max(1), ..LocalSlots::default() };
        LocalRuntime { instances_dir, scratch_root, slots: Arc::new(Mutex::new(slots)), inherited_env }
    }
}

/// Kills (SIGKILL, each process group) the instances recorded under `instances_dir` that still run, and forgets
/// every record; answers how many it killed. A record names a pid and its start time, so a later process that
/// reuses the pid is never touched.
pub(crate) fn kill_recorded_instances(instances_dir: &std::path::Path) -> usize {
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir(instances_dir) else { return 0 };
    for entry in entries.flatten() {
        let path = entry.path();
        let recorded = std::fs::read_to_string(&path).unwrap_or_default();
        let pid = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok());
        if let Some(pid) = pid {
            let leader_started = process_start_time(pid);
            let leader_lives = leader_started.as_deref().is_some_and(|started| started == recorded.trim());
            // The leader may have died while the node was down (its output pipe closed with the node) and left
            // the rest of its group running, holding the port (a server's workers). Regression: only a living
            // leader's group was killed, and the record of the others was forgotten.
            let group_left = leader_started.is_none() && orphans_of_group(pid, recorded.trim());
            if leader_lives || group_left {
                tracing::warn!(pid, leader_lives, "killing a local instance's process group");
                signal_group(pid, Signal::SIGKILL);
                killed += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

/// A process's start time (field 22 of `/proc/PID/stat`): with the pid, it names one process, never a later
/// one that reuses the pid.
fn process_start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_group_and_start(&stat).map(|(_, start)| start.to_string())
}

/// The process group (field 5) and start time (field 22) of a `/proc/PID/stat` line. Pure.
fn stat_group_and_start(stat: &str) -> Option<(u32, u64)> {
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let group = fields.nth(2)?.parse().ok()?;
    let start = fields.nth(16)?.parse().ok()?;
    Some((group, start))
}

/// Whether processes of the group `leader` led remain, started no earlier than the leader was (`leader_start`,
/// as recorded): the group of an instance whose leader died, not a later group that reuses the number.
fn orphans_of_group(leader: u32, leader_start: &str) -> bool {
    let Ok(leader_start) = leader_start.parse::<u64>() else { return false };
    let Ok(processes) = std::fs::read_dir("/proc") else { return false };
    processes.flatten().any(|process| {
        let stat = std::fs::read_to_string(process.path().join("stat")).unwrap_or_default();
        stat_group_and_start(&stat).is_some_and(|(group, start)| group == leader && start >= leader_start)
    })
}

struct LocalInstance {
    pid: Option<u32>,
    /// Becomes true once the process has exited.
    exited: watch::Receiver<bool>,
}

impl Runtime for LocalRuntime {
    fn kind(&self) -> ServingRuntime {
        ServingRuntime::Local
    }

    fn start(
        &self,
        mut spec: InstanceSpec,
        events: mpsc::Sender<InstanceEvent>,
    ) -> Result<Box<dyn Instance>, ServingError> {
        let fixed_port = spec.fixed_port.then_some(spec.port);
        let (mut slot, mut moved) = LocalSlots::take(&self.slots, &spec.revision, fixed_port)
            .map_err(|reason| ServingError::NoRoom { revision: spec.revision.clone(), reason })?;
        if moved {
            tracing::info!(revision = %spec.revision, instance = spec.id, "its containerPort is held by another revision's instance on this node: a port of its own");
        }
        // A port that no instance of Sluice's holds but something listens on (another program, or this node's own
        // listener: `containerPort: 8080`, in many Knative samples, is the node's default HTTP port) is not the
        // instance's either: a port of its own in `PORT`, as in a rollout. Regression: the start failed, saying
        // a program Sluice did not start held the port, for the node's own listener too.
        if let Some(port) = slot.fixed_port
            && port_taken_by_another_program(port)
        {
            tracing::warn!(revision = %spec.revision, instance = spec.id, port, "its containerPort is in use on this node by something Sluice did not start (this node's own listener, or another program): a port of its own, in PORT");
            slot.give_back_fixed_port();
            moved = true;
        }
        if moved {
            let port = free_port()?;
            spec.port = port;
            spec.readiness = spec.readiness.on_port(port);
        }
        // `$(VAR)` in env values refers to variables defined before it; in command and args, to all of them.
        let mut vars: Vec<(String, String)> = vec![("PORT".into(), spec.port.to_string())];
        let too_long = |what: String| ServingError::Spawn {
            revision: spec.revision.clone(),
            command: spec.argv.first().cloned().unwrap_or_default(),
            reason: format!(
                "{what} is longer than {} bytes once its $(VAR) references are expanded (Linux's limit for one argument or variable)",
                super::MAX_EXPANDED_BYTES
            ),
        };
        for (name, value) in &spec.env {
            let value = super::expand_references(value, &vars).map_err(|_| too_long(format!("env {name}")))?;
            vars.push((name.clone(), value));
        }
        let argv = spec
            .argv
            .iter()
            .enumerate()
            .map(|(i, arg)| super::expand_references(arg, &vars).map_err(|_| too_long(format!("argument {i}"))))
            .collect::<Result<Vec<String>, ServingError>>()?;
        let program = argv.first().ok_or_else(|| ServingError::Spawn {
            revision: spec.revision.clone(),
            command: String::new(),
            reason: "no command".into(),
        })?;
        // The container's own variables win over the node's, as a container's `env` over its image's.
        let vars: Vec<(String, String)> = self.inherited_env.iter().cloned().chain(vars).collect();
        let mut command = Command::new(program);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // Without a `workingDir`, not the node's own directory: `python3 -m http.server` (the example in
        // docs/serving.md) served the node's data dir from there, its signing keys included.
        let scratch = match &spec.working_dir {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new()
                    .prefix(&format!("{}-{}-", spec.revision.replace('/', "_"), spec.id))
                    .tempdir_in(&self.scratch_root)
                    .map_err(|e| ServingError::Spawn {
                        revision: spec.revision.clone(),
                        command: program.clone(),
                        reason: format!("creating its working directory under {}: {e}", self.scratch_root.display()),
                    })?,
            ),
        };
        let working_dir = spec.working_dir.clone().or_else(|| scratch.as_ref().map(|dir| dir.path().to_path_buf()));
        if let Some(dir) = &working_dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|e| ServingError::Spawn {
            revision: spec.revision.clone(),
            command: program.clone(),
            reason: e.to_string(),
        })?;
        let pid = child.id();
        tracing::info!(revision = %spec.revision, instance = spec.id, pid, port = spec.port, "instance started");
        let record = pid.map(|pid| self.instances_dir.join(pid.to_string()));
        if let (Some(pid), Some(record)) = (pid, &record)
            && let Some(started) = process_start_time(pid)
        {
            let _ = std::fs::write(record, started);
        }
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(tokio::spawn(copy_lines(stdout, tail.clone(), spec.log.clone())));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(tokio::spawn(copy_lines(stderr, tail.clone(), spec.log.clone())));
        }
        let (exited_tx, exited) = watch::channel(false);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, spec.port));
        // An exec probe runs as it would in the container: with its environment and working directory.
        let probe_env = ProbeEnv { vars, working_dir, rhythm: spec.readiness_rhythm };
        // In and out of rotation, and why the runtime stopped the instance itself, if it did (its exit says so).
        let rotation = Rotation::new(events.clone());
        // Readiness is probed once the startup probe passed, as the kubelet does.
        let (started_tx, started) = watch::channel(spec.startup.is_none());
        let mut probes = Vec::with_capacity(2);
        let tracker = LivenessTracker::new(spec.startup.clone(), spec.liveness.clone());
        if tracker.next_probe_at().is_some() {
            probes.push(tokio::spawn(watch_liveness(
                tracker,
                probe_env.clone(),
                Stopper { rotation: rotation.clone(), group: pid, exited: exited.clone() },
                started_tx,
                spec.revision.clone(),
                spec.id,
            )));
        }
        probes.push(tokio::spawn(probe_until_ready(
            spec.readiness.clone(),
            probe_env,
            Deadline { after: spec.progress_deadline, group: pid },
            spec.id,
            addr,
            rotation.clone(),
            (started, exited.clone()),
        )));
        let (id, revision) = (spec.id, spec.revision.clone());
        tokio::spawn(async move {
            wait_for_exit(child, pid, id, revision, events, tail, readers, probes, exited_tx, rotation).await;
            if let Some(record) = record {
                let _ = std::fs::remove_file(record);
            }
            drop(scratch);
            drop(slot);
        });
        Ok(Box::new(LocalInstance { pid, exited }))
    }
}

/// Copies an instance's output, line by line, to its revision's log and its tail. Reads until the pipe
/// closes whatever the bytes are: invalid UTF-8 is replaced (an app's output is not ours to refuse, and a
/// reader that stopped would leave the app writing into a closed pipe, killed by SIGPIPE), and a line longer
/// than [`MAX_LINE_BYTES`] is cut there, the rest of it skipped, so no line is held whole in memory.
async fn copy_lines(
    mut stream: impl tokio::io::AsyncRead + Unpin,
    tail: Arc<Mutex<VecDeque<String>>>,
    log: Arc<RevisionLog>,
) {
    use tokio::io::AsyncReadExt;
    let mut splitter = LineSplitter::default();
    let mut chunk = vec![0u8; 8 * 1024];
    let emit = |line: String| {
        log.write_line(&line);
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    };
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(read) => splitter.push(&chunk[..read]).into_iter().for_each(emit),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading an instance's output failed");
                break;
            }
        }
    }
    splitter.finish().into_iter().for_each(emit);
}

/// Bytes in, lines out: at most [`MAX_LINE_BYTES`] held for the line being read.
#[derive(Default)]
struct LineSplitter {
    line: Vec<u8>,
    /// The line being read was cut: its bytes up to the next newline are skipped.
    skipping: bool,
}

impl LineSplitter {
    fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let (part, newline) = match bytes.iter().position(|b| *b == b'\n') {
                Some(at) => (&bytes[..at], true),
                None => (bytes, false),
            };
            bytes = &bytes[part.len() + usize::from(newline)..];
            if !self.skipping {
                let room = MAX_LINE_BYTES - self.line.len();
                self.line.extend_from_slice(&part[..part.len().min(room)]);
                if part.len() > room {
                    lines.push(self.take());
                    self.skipping = true;
                }
            }
            if newline {
                if !self.skipping {
                    lines.push(self.take());
                }
                self.skipping = false;
            }
        }
        lines
    }

    /// The last line, when the output did not end with a newline.
    fn finish(mut self) -> Option<String> {
        (!self.line.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let line = std::mem::take(&mut self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        String::from_utf8_lossy(line).into_owned()
    }
}

#[allow(clippy::too_many_arguments)]
async fn wait_for_exit(
    mut child: Child,
    pid: Option<u32>,
    id: u64,
    revision: String,
    events: mpsc::Sender<InstanceEvent>,
    tail: Arc<Mutex<VecDeque<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    probes: Vec<tokio::task::JoinHandle<()>>,
    exited: watch::Sender<bool>,
    rotation: Rotation,
) {
    let status = child.wait().await;
    // The instance is its first process, as a container is: when it exits, whatever it started goes too (a
    // container runtime kills the rest of the container), or a child that ignored SIGTERM (`npm start` → `node`)
    // would live on, holding the port the next instance needs. While the group has members its id cannot be
    // given to a new process; when it has none, the id is free again once the leader is reaped (just above), and
    // a new group led by a process given that very id in the meantime would be hit: a window of microseconds,
    // which waiting without reaping (waitid with WNOWAIT) would close, at the price of unsafe code here.
    if let Some(pid) = pid {
        signal_group(pid, Signal::SIGKILL);
    }
    let _ = exited.send(true);
    for probe in probes {
        probe.abort();
    }
    // The pipes close when the process (group) is gone; wait briefly for the last lines.
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_millis(200), reader).await;
    }
    let last_output = tail.lock().map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default();
    let (code, signal) = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            (status.code(), status.signal())
        }
        Err(_) => (None, None),
    };
    tracing::info!(%revision, instance = id, ?code, ?signal, "instance exited");
    let reason = rotation.take_stop_reason().await;
    let _ = events.send(InstanceEvent::Exited { id, code, signal, reason, last_output }).await;
}

impl Instance for LocalInstance {
    fn stop(&self, grace: Duration) -> BoxFuture<'static, ()> {
        let pid = self.pid;
        let mut exited = self.exited.clone();
        Box::pin(async move {
            let Some(pid) = pid else { return };
            // An instance that has exited was reaped, and its group killed then (`wait_for_exit`): its pid may
            // lead a new instance's group by now, which a signal here would hit.
            if *exited.borrow() {
                return;
            }
            signal_group(pid, Signal::SIGTERM);
            if tokio::time::timeout(grace, exited.wait_for(|gone| *gone)).await.is_err() {
                signal_group(pid, Signal::SIGKILL);
                if tokio::time::timeout(KILL_WAIT, exited.wait_for(|gone| *gone)).await.is_err() {
                    tracing::error!(pid, "instance did not exit after SIGKILL");
                }
            }
        })
    }
}

/// Sends `signal` to the instance's process group (its pid: it leads the group): one system call, where
/// spawning `kill` blocked a Tokio worker for a fork and exec per instance. Quiet: a group already gone is the
/// usual case after its leader exited.
fn signal_group(pid: u32, signal: Signal) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
}

/// A free loopback port for an instance without a `containerPort`.
pub(crate) fn free_port() -> Result<u16, ServingError> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ServingError::NoPort)?;
    listener.local_addr().map(|a| a.port()).map_err(ServingError::NoPort)
}

#[cfg(test)]
mod tests;
