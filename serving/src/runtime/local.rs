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
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use sluice_controller::serving::ServingRuntime;

use super::{Instance, InstanceEvent, InstanceSpec, Readiness, Runtime};
use crate::error::ServingError;
use crate::logs::RevisionLog;

/// Lines of output kept for a failure message.
const TAIL_LINES: usize = 10;
/// A line longer than this is cut.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Readiness probing: every 5 ms for the first 2 s (cold starts are short), then every 50 ms.
const FAST_PROBE_MS: u64 = 5;
const FAST_PROBE_FOR_MS: u64 = 2_000;
const SLOW_PROBE_MS: u64 = 50;
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stop waits for the process to be gone after SIGKILL (it never hangs the node's shutdown).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Runs instances as child processes; records each one's process group under `instances_dir` while it runs,
/// so that a node killed with `kill -9` (whose children outlive it) stops them when it starts again.
pub(crate) struct LocalRuntime {
    instances_dir: PathBuf,
}

impl LocalRuntime {
    /// Stops what a previous run of this node left running, then starts fresh.
    pub(crate) fn new(instances_dir: PathBuf) -> Self {
        if let Ok(entries) = std::fs::read_dir(&instances_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let recorded = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok());
                if let Some(pid) = pid
                    && process_start_time(pid).is_some_and(|started| started == recorded.trim())
                {
                    tracing::warn!(pid, "stopping an instance left by a previous run of this node");
                    signal_group(pid, "-KILL");
                }
                let _ = std::fs::remove_file(&path);
            }
        }
        let _ = std::fs::create_dir_all(&instances_dir);
        LocalRuntime { instances_dir }
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
        spec: InstanceSpec,
        events: mpsc::Sender<InstanceEvent>,
    ) -> Result<Box<dyn Instance>, ServingError> {
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
        let probe =
            tokio::spawn(probe_until_ready(spec.readiness.clone(), spec.id, addr, events.clone(), exited.clone()));
        let (id, revision) = (spec.id, spec.revision.clone());
        tokio::spawn(async move {
            wait_for_exit(child, id, revision, events, tail, readers, probe, exited_tx).await;
            if let Some(record) = record {
                let _ = std::fs::remove_file(record);
            }
        });
        Ok(Box::new(LocalInstance { pid, exited }))
    }
}

async fn copy_lines(
    stream: impl tokio::io::AsyncRead + Unpin,
    tail: Arc<Mutex<VecDeque<String>>>,
    log: Arc<RevisionLog>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        if line.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        log.write_line(&line);
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn wait_for_exit(
    mut child: Child,
    id: u64,
    revision: String,
    events: mpsc::Sender<InstanceEvent>,
    tail: Arc<Mutex<VecDeque<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    probe: tokio::task::JoinHandle<()>,
    exited: watch::Sender<bool>,
) {
    let status = child.wait().await;
    let _ = exited.send(true);
    probe.abort();
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
    let _ = events.send(InstanceEvent::Exited { id, code, signal, reason: None, last_output }).await;
}

async fn probe_until_ready(
    readiness: Readiness,
    id: u64,
    addr: SocketAddr,
    events: mpsc::Sender<InstanceEvent>,
    exited: watch::Receiver<bool>,
) {
    let started = tokio::time::Instant::now();
    loop {
        if *exited.borrow() {
            return;
        }
        if probe_once(&readiness).await {
            let _ = events.send(InstanceEvent::Ready { id, addr }).await;
            return;
        }
        let period =
            if started.elapsed().as_millis() < u128::from(FAST_PROBE_FOR_MS) { FAST_PROBE_MS } else { SLOW_PROBE_MS };
        tokio::time::sleep(Duration::from_millis(period)).await;
    }
}

async fn probe_once(readiness: &Readiness) -> bool {
    let attempt = async {
        match readiness {
            Readiness::TcpConnect { port } => {
                tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, *port)).await.is_ok()
            }
            Readiness::HttpGet { port, path } => http_get_ok(*port, path).await,
            Readiness::Exec { argv } => match argv.split_first() {
                Some((program, args)) => Command::new(program)
                    .args(args)
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
    tokio::time::timeout(PROBE_TIMEOUT, attempt).await.unwrap_or(false)
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

impl Instance for LocalInstance {
    fn stop(&self, grace: Duration) -> BoxFuture<'static, ()> {
        let pid = self.pid;
        let mut exited = self.exited.clone();
        Box::pin(async move {
            let Some(pid) = pid else { return };
            signal_group(pid, "-TERM");
            if tokio::time::timeout(grace, exited.wait_for(|gone| *gone)).await.is_err() {
                signal_group(pid, "-KILL");
                if tokio::time::timeout(KILL_WAIT, exited.wait_for(|gone| *gone)).await.is_err() {
                    tracing::error!(pid, "instance did not exit after SIGKILL");
                }
            }
        })
    }
}

/// Sends `signal` to the instance's process group (its pid: it leads the group).
fn signal_group(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill").arg(signal).arg("--").arg(format!("-{pid}")).status();
}

/// A free loopback port for an instance without a `containerPort`.
pub(crate) fn free_port() -> Result<u16, ServingError> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ServingError::NoPort)?;
    listener.local_addr().map(|a| a.port()).map_err(ServingError::NoPort)
}
