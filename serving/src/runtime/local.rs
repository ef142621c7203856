//! The local runtime: an instance is a child process running the container's `command` + `args`, with its
//! `env`, `workingDir`, `PORT`, `K_SERVICE`, `K_CONFIGURATION` and `K_REVISION`, in a process group of its own
//! (so that stopping it stops what it started). Its output is appended to a log file per revision and its last
//! lines are kept for the Revision's status when it fails.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::{Instance, InstanceEvent, InstanceSpec, Readiness, Runtime};
use crate::error::ServingError;

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

pub(crate) struct LocalRuntime;

struct LocalInstance {
    addr: SocketAddr,
    pid: Option<u32>,
    /// Becomes true once the process has exited.
    exited: watch::Receiver<bool>,
}

impl Runtime for LocalRuntime {
    fn start(
        &self,
        spec: InstanceSpec,
        events: mpsc::Sender<InstanceEvent>,
    ) -> Result<Box<dyn Instance>, ServingError> {
        let program = spec.argv.first().ok_or_else(|| ServingError::Spawn {
            revision: spec.revision.clone(),
            command: String::new(),
            reason: "no command".into(),
        })?;
        let mut command = Command::new(program);
        command
            .args(&spec.argv[1..])
            .env("PORT", spec.port.to_string())
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        if let Some(parent) = spec.log_path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .ok()
            .map(|f| Arc::new(Mutex::new(f)));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(tokio::spawn(copy_lines(stdout, tail.clone(), log.clone())));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(tokio::spawn(copy_lines(stderr, tail.clone(), log.clone())));
        }
        let (exited_tx, exited) = watch::channel(false);
        let probe = tokio::spawn(probe_until_ready(spec.readiness.clone(), spec.id, events.clone(), exited.clone()));
        tokio::spawn(wait_for_exit(child, spec.id, spec.revision.clone(), events, tail, readers, probe, exited_tx));
        Ok(Box::new(LocalInstance { addr: SocketAddr::from((Ipv4Addr::LOCALHOST, spec.port)), pid, exited }))
    }
}

async fn copy_lines(
    stream: impl tokio::io::AsyncRead + Unpin,
    tail: Arc<Mutex<VecDeque<String>>>,
    log: Option<Arc<Mutex<std::fs::File>>>,
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
        if let Some(log) = &log
            && let Ok(mut file) = log.lock()
        {
            let _ = writeln!(file, "{line}");
        }
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
    let _ = events.send(InstanceEvent::Exited { id, code, signal, last_output }).await;
}

async fn probe_until_ready(
    readiness: Readiness,
    id: u64,
    events: mpsc::Sender<InstanceEvent>,
    exited: watch::Receiver<bool>,
) {
    let started = tokio::time::Instant::now();
    loop {
        if *exited.borrow() {
            return;
        }
        if probe_once(&readiness).await {
            let _ = events.send(InstanceEvent::Ready(id)).await;
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
    fn addr(&self) -> SocketAddr {
        self.addr
    }

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
