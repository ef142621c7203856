//! The local runtime: an instance is a child process running the container's `command` + `args`, with its
//! `env`, `workingDir`, `PORT`, `K_SERVICE`, `K_CONFIGURATION` and `K_REVISION`, in a process group of its own
//! (so that stopping it stops what it started). Its output is appended to a log file per revision and its last
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
    slots: Arc<Mutex<LocalSlots>>,
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
    /// once (at least 1).
    pub(crate) fn new(instances_dir: PathBuf, max_instances: usize) -> Self {
        if let Ok(entries) = std::fs::read_dir(&instances_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let recorded = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok());
                if let Some(pid) = pid
                    && process_start_time(pid).is_some_and(|started| started == recorded.trim())
                {
                    tracing::warn!(pid, "stopping an instance left by a previous run of this node");
                    signal_group(pid, Signal::SIGKILL);
                }
                let _ = std::fs::remove_file(&path);
            }
        }
        let _ = std::fs::create_dir_all(&instances_dir);
        let slots = LocalSlots { max: max_instances.max(1), ..LocalSlots::default() };
        LocalRuntime { instances_dir, slots: Arc::new(Mutex::new(slots)) }
    }
}

/// A process's start time (field 22 of `/proc/PID/stat`): with the pid, it names one process, never a later
/// one that reuses the pid.
fn process_start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_string)
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
        let (slot, moved) = LocalSlots::take(&self.slots, &spec.revision, fixed_port)
            .map_err(|reason| ServingError::NoRoom { revision: spec.revision.clone(), reason })?;
        let fixed_port = slot.fixed_port;
        if moved {
            let port = free_port()?;
            tracing::info!(revision = %spec.revision, instance = spec.id, port, "its containerPort is held by another revision's instance on this node: a port of its own");
            spec.port = port;
            spec.readiness = spec.readiness.on_port(port);
        }
        // `$(VAR)` in env values refers to variables defined before it; in command and args, to all of them.
        let mut vars: Vec<(String, String)> = vec![("PORT".into(), spec.port.to_string())];
        for (name, value) in &spec.env {
            let value = super::expand_references(value, &vars);
            vars.push((name.clone(), value));
        }
        let argv: Vec<String> = spec.argv.iter().map(|arg| super::expand_references(arg, &vars)).collect();
        let program = argv.first().ok_or_else(|| ServingError::Spawn {
            revision: spec.revision.clone(),
            command: String::new(),
            reason: "no command".into(),
        })?;
        if let Some(port) = fixed_port
            && port_taken_by_another_program(port)
        {
            return Err(ServingError::Spawn {
                revision: spec.revision.clone(),
                command: program.clone(),
                reason: format!(
                    "port {port} (its containerPort) is in use on this node by a program Sluice did not start"
                ),
            });
        }
        let mut command = Command::new(program);
        command
            .args(&argv[1..])
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &spec.working_dir {
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
        let probe_env = ProbeEnv { vars, working_dir: spec.working_dir.clone(), rhythm: spec.readiness_rhythm };
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
mod tests {
    use super::probes::probe_once;
    use super::*;
    use crate::runtime::{DEFAULT_PROBE_TIMEOUT, InstanceSpec, KillingProbe, ProbeRhythm, Readiness, Runtime};

    /// Whether the process is gone (or a zombie nobody has reaped yet: it runs no more).
    fn gone(pid: u32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
        stat.rfind(')').and_then(|at| stat[at + 1..].split_whitespace().next()).is_some_and(|state| state == "Z")
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An instance of `default/REVISION` running `argv` on the port `readiness` names (a free one for an exec
    /// probe), with the default rhythm and a progress deadline long enough never to matter.
    fn instance(
        id: u64,
        revision: &str,
        argv: &[&str],
        readiness: Readiness,
        logs: &crate::logs::LogHub,
    ) -> InstanceSpec {
        let port = match &readiness {
            Readiness::TcpConnect { port } | Readiness::HttpGet { port, .. } => *port,
            Readiness::Exec { .. } => free_port().expect("port"),
        };
        InstanceSpec {
            id,
            revision: format!("default/{revision}"),
            run: 1,
            object: Arc::new(serde_json::Value::Null),
            argv: argv.iter().map(|arg| arg.to_string()).collect(),
            env: Vec::new(),
            working_dir: None,
            port,
            fixed_port: false,
            readiness,
            readiness_rhythm: ProbeRhythm::default(),
            startup: None,
            liveness: None,
            progress_deadline: Duration::from_secs(600),
            log: logs.revision("default", revision),
        }
    }

    /// An instance that never becomes ready is stopped at the progress deadline, and its exit says why (the
    /// revision then counts a failed start and shows the reason).
    #[tokio::test]
    async fn an_instance_not_ready_by_the_progress_deadline_is_stopped_saying_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = LocalRuntime::new(dir.path().join("instances"), 8);
        let logs = crate::logs::LogHub::new(dir.path().join("logs"));
        let port = free_port().expect("port");
        let spec = InstanceSpec {
            progress_deadline: Duration::from_millis(300),
            ..instance(7, "never-00001", &["sleep", "300"], Readiness::TcpConnect { port }, &logs)
        };
        let (events, mut received) = mpsc::channel(8);
        let _instance = runtime.start(spec, events).expect("start");
        let event = tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("an event");
        match event {
            Some(InstanceEvent::Exited { id, reason, signal, .. }) => {
                assert_eq!(id, 7);
                assert_eq!(reason.as_deref(), Some("ProgressDeadlineExceeded"));
                assert_eq!(signal, Some(9), "killed");
            }
            other => panic!("expected the instance to exit at its deadline: {other:?}"),
        }
    }

    /// Regression: the probe stopped at the first success, so an instance that stopped passing it kept its share
    /// of the requests until it exited. It goes on at the probe's period: out of rotation after
    /// `failureThreshold` failures in a row, back after `successThreshold` successes.
    #[tokio::test]
    async fn a_ready_instance_whose_probe_fails_leaves_rotation_and_comes_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = LocalRuntime::new(dir.path().join("instances"), 8);
        let logs = crate::logs::LogHub::new(dir.path().join("logs"));
        let healthy = dir.path().join("healthy");
        std::fs::write(&healthy, b"").expect("write");
        let probe = Readiness::Exec { argv: vec!["test".into(), "-f".into(), healthy.display().to_string()] };
        let spec = InstanceSpec {
            readiness_rhythm: ProbeRhythm {
                period: Some(Duration::from_millis(20)),
                failure_threshold: 2,
                success_threshold: 1,
                ..ProbeRhythm::default()
            },
            ..instance(3, "flaky-00001", &["sleep", "300"], probe, &logs)
        };
        let (events, mut received) = mpsc::channel(8);
        let instance = runtime.start(spec, events).expect("start");
        let mut next = async || tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("an event");
        assert!(matches!(next().await, Some(InstanceEvent::Ready { id: 3, .. })));
        std::fs::remove_file(&healthy).expect("remove");
        assert_eq!(next().await, Some(InstanceEvent::NotReady { id: 3 }));
        std::fs::write(&healthy, b"").expect("write");
        assert!(matches!(next().await, Some(InstanceEvent::Ready { id: 3, .. })));
        instance.stop(Duration::from_secs(10)).await;
        assert!(matches!(next().await, Some(InstanceEvent::Exited { id: 3, .. })), "then its exit");
    }

    /// A liveness probe that fails `failureThreshold` times in a row stops a ready instance (SIGTERM, as the
    /// kubelet restarts a container), its exit saying why; the revision then replaces it. Regression: the
    /// instance stayed in rotation until it exited, and a request sent to it meanwhile got a 502 (t90 in CI).
    #[tokio::test]
    async fn an_instance_whose_liveness_probe_fails_is_stopped_saying_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = LocalRuntime::new(dir.path().join("instances"), 8);
        let logs = crate::logs::LogHub::new(dir.path().join("logs"));
        let alive = dir.path().join("alive");
        std::fs::write(&alive, b"").expect("write");
        let liveness = KillingProbe {
            check: Readiness::Exec { argv: vec!["test".into(), "-f".into(), alive.display().to_string()] },
            initial_delay: Duration::ZERO,
            period: Duration::from_millis(20),
            timeout: DEFAULT_PROBE_TIMEOUT,
            failure_threshold: 2,
        };
        let ready = Readiness::Exec { argv: vec!["true".into()] };
        let spec =
            InstanceSpec { liveness: Some(liveness), ..instance(4, "sick-00001", &["sleep", "300"], ready, &logs) };
        let (events, mut received) = mpsc::channel(8);
        let _instance = runtime.start(spec, events).expect("start");
        let mut next = async || tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("an event");
        assert!(matches!(next().await, Some(InstanceEvent::Ready { id: 4, .. })));
        std::fs::remove_file(&alive).expect("remove");
        assert_eq!(next().await, Some(InstanceEvent::NotReady { id: 4 }), "out of rotation first");
        match next().await {
            Some(InstanceEvent::Exited { id: 4, reason, signal, .. }) => {
                assert_eq!(reason.as_deref(), Some(super::super::liveness::LIVENESS_PROBE_FAILED));
                assert_eq!(signal, Some(15), "asked to stop (SIGTERM) first");
            }
            other => panic!("expected the instance to be stopped: {other:?}"),
        }
    }

    /// Readiness is not probed before the startup probe passes, and a startup probe that fails
    /// `failureThreshold` times in a row stops the instance, saying why.
    #[tokio::test]
    async fn readiness_waits_for_the_startup_probe_which_stops_an_instance_that_never_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = LocalRuntime::new(dir.path().join("instances"), 8);
        let logs = crate::logs::LogHub::new(dir.path().join("logs"));
        let (started, runs) = (dir.path().join("started"), dir.path().join("runs"));
        let startup = |failure_threshold| KillingProbe {
            check: Readiness::Exec {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("echo run >> '{}'; test -f '{}'", runs.display(), started.display()),
                ],
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_millis(20),
            timeout: DEFAULT_PROBE_TIMEOUT,
            failure_threshold,
        };
        let ready = || Readiness::Exec { argv: vec!["true".into()] };
        let spec = InstanceSpec {
            startup: Some(startup(1_000)),
            ..instance(5, "slow-00001", &["sleep", "300"], ready(), &logs)
        };
        let (events, mut received) = mpsc::channel(8);
        let _instance = runtime.start(spec, events).expect("start");
        let run_count = || std::fs::read_to_string(&runs).map(|r| r.lines().count()).unwrap_or(0);
        wait_for("the startup probe ran three times", || run_count() >= 3).await;
        assert!(received.try_recv().is_err(), "not ready while the startup probe fails (its readiness passes)");
        std::fs::write(&started, b"").expect("write");
        let event = tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("an event");
        assert!(matches!(event, Some(InstanceEvent::Ready { id: 5, .. })), "{event:?}");

        std::fs::remove_file(&started).expect("remove");
        let spec =
            InstanceSpec { startup: Some(startup(2)), ..instance(6, "never-00001", &["sleep", "300"], ready(), &logs) };
        let (events, mut received) = mpsc::channel(8);
        let _instance = runtime.start(spec, events).expect("start");
        let event = tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("an event");
        match event {
            Some(InstanceEvent::Exited { id: 6, reason, .. }) => {
                assert_eq!(reason.as_deref(), Some(super::super::liveness::STARTUP_PROBE_FAILED));
            }
            other => panic!("expected the instance to be stopped, never ready: {other:?}"),
        }
    }

    /// Regression: an exec probe ran with the node's environment and directory, so a probe such as
    /// `curl localhost:$PORT/healthz` never passed.
    #[tokio::test]
    async fn an_exec_probe_runs_with_the_instances_environment_and_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let workdir = std::fs::canonicalize(dir.path()).expect("canonical");
        let probe = |script: &str| Readiness::Exec { argv: vec!["sh".into(), "-c".into(), script.into()] };
        let env = ProbeEnv {
            vars: vec![("PORT".into(), "4321".into()), ("TARGET".into(), "x".into())],
            working_dir: Some(workdir.clone()),
            rhythm: ProbeRhythm::default(),
        };
        let script =
            format!("test \"$PORT\" = 4321 && test \"$TARGET\" = x && test \"$(pwd -P)\" = '{}'", workdir.display());
        assert!(probe_once(&probe(&script), &env, DEFAULT_PROBE_TIMEOUT).await, "{script}");
        assert!(!probe_once(&probe("test \"$PORT\" = 1"), &env, DEFAULT_PROBE_TIMEOUT).await, "a failing probe fails");
    }

    /// Regression: when an instance's first process exited, what it had started lived on (a child that ignored
    /// SIGTERM, as `npm start` leaves `node`), holding the port the next instance needed.
    #[tokio::test]
    async fn what_an_instance_started_goes_with_it_even_when_it_ignored_sigterm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = LocalRuntime::new(dir.path().join("instances"), 8);
        let logs = crate::logs::LogHub::new(dir.path().join("logs"));
        let orphan_file = dir.path().join("orphan.pid");
        let script =
            format!("trap '' TERM; sleep 300 & echo $! > {}; trap - TERM; exec sleep 299", orphan_file.display());
        let port = free_port().expect("port");
        let spec = instance(1, "hello-00001", &["sh", "-c", &script], Readiness::TcpConnect { port }, &logs);
        let (events, _events) = mpsc::channel(8);
        let instance = runtime.start(spec, events).expect("start");
        let orphan_pid = || std::fs::read_to_string(&orphan_file).ok().and_then(|pid| pid.trim().parse::<u32>().ok());
        wait_for("the child started", || orphan_pid().is_some()).await;
        let orphan = orphan_pid().expect("pid");
        assert!(!gone(orphan), "the child runs");
        instance.stop(Duration::from_secs(10)).await;
        wait_for("the child that ignored SIGTERM is killed with its instance", || gone(orphan)).await;
    }

    /// At most `--max-local-instances` run at once. A fixed `containerPort` is held from an instance's start until
    /// its exit: another instance of the same revision waits for it, and another revision's instance (a rollout)
    /// gets a port of its own in `PORT`, so that its readiness probe cannot pass on the old revision's process (it
    /// did, when only the same revision's instances were looked at). A port another program listens on is
    /// refused.
    #[tokio::test]
    async fn instances_share_the_nodes_slots_and_fixed_ports() {
        const LISTEN: &str = "import os, socket, time\ns = socket.socket()\n\
                              s.bind(('127.0.0.1', int(os.environ['PORT'])))\ns.listen()\ntime.sleep(300)";
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = LocalRuntime::new(dir.path().join("instances"), 2);
        let logs = crate::logs::LogHub::new(dir.path().join("logs"));
        let app = |id: u64, revision: &str, port: u16, fixed_port: bool| InstanceSpec {
            fixed_port,
            ..instance(id, revision, &["python3", "-c", LISTEN], Readiness::TcpConnect { port }, &logs)
        };
        let running = || runtime.slots.lock().map(|slots| slots.running).unwrap_or(usize::MAX);
        let (events, mut received) = mpsc::channel(16);
        let mut ready_at = async |id: u64| -> SocketAddr {
            let ready = async {
                loop {
                    match received.recv().await {
                        Some(InstanceEvent::Ready { id: got, addr }) if got == id => return addr,
                        Some(_) => {}
                        None => panic!("the events ended"),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(20), ready).await.expect("ready within 20 s")
        };
        let port = free_port().expect("port");
        let first = runtime.start(app(1, "a-00001", port, true), events.clone()).expect("start");
        assert_eq!(ready_at(1).await.port(), port, "on its containerPort");
        let waits = runtime.start(app(2, "a-00001", port, true), events.clone()).err();
        assert!(matches!(waits, Some(ServingError::NoRoom { .. })), "the same revision waits: {waits:?}");
        let second = runtime.start(app(3, "b-00001", port, true), events.clone()).expect("another revision starts");
        assert_ne!(ready_at(3).await.port(), port, "a port of its own, not the first one's process");
        let full = runtime.start(app(4, "c-00001", free_port().expect("port"), false), events.clone()).err();
        assert!(matches!(full, Some(ServingError::NoRoom { .. })), "two at most: {full:?}");

        first.stop(Duration::from_secs(10)).await;
        wait_for("the first instance's slot is given back", || running() == 1).await;
        let third = runtime.start(app(5, "a-00001", port, true), events.clone()).expect("the port is free again");
        second.stop(Duration::from_secs(10)).await;
        wait_for("the second instance's slot is given back", || running() == 1).await;

        let foreign = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let foreign_port = foreign.local_addr().expect("address").port();
        let refused = runtime.start(app(6, "d-00001", foreign_port, true), events.clone()).err();
        assert!(
            matches!(&refused, Some(ServingError::Spawn { reason, .. }) if reason.contains("in use")),
            "{refused:?}"
        );
        assert_eq!(running(), 1, "a refused start holds no slot");
        third.stop(Duration::from_secs(10)).await;
        wait_for("every slot is given back", || running() == 0).await;
    }

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut lines: Vec<String> = chunks.iter().flat_map(|chunk| splitter.push(chunk)).collect();
        lines.extend(splitter.finish());
        lines
    }

    #[test]
    fn output_is_split_into_lines_whatever_the_chunks() {
        assert_eq!(split(&[b"a\nbc\n"]), ["a", "bc"]);
        assert_eq!(split(&[b"a", b"b\nc", b"d\n"]), ["ab", "cd"]);
        assert_eq!(split(&[b"a\r\n\nlast"]), ["a", "", "last"], "CRLF, an empty line, no final newline");
        assert!(split(&[b""]).is_empty());
    }

    #[test]
    fn invalid_utf8_is_replaced_and_reading_goes_on() {
        assert_eq!(split(&[b"ok \xff\xfe bytes\n", b"next\n"]), ["ok \u{fffd}\u{fffd} bytes", "next"]);
    }

    #[test]
    fn a_long_line_is_cut_and_its_rest_skipped_without_holding_it() {
        let long = vec![b'x'; MAX_LINE_BYTES * 3];
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        for chunk in long.chunks(1000) {
            lines.extend(splitter.push(chunk));
            assert!(splitter.line.len() <= MAX_LINE_BYTES, "never more than one line's limit held");
        }
        lines.extend(splitter.push(b"\nafter\n"));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1], "after");
        let exact = vec![b'y'; MAX_LINE_BYTES];
        assert_eq!(split(&[&exact, b"\nz\n"]), [String::from_utf8(exact.clone()).unwrap_or_default(), "z".into()]);
    }
}
