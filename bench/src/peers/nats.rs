//! NATS JetStream as a peer: `servers` nats-server processes clustered on loopback, one stream (`bench.>`,
//! file storage, `num_replicas = servers`), publishes awaiting the PubAck, a durable pull consumer that acks
//! each message after the callback.
//!
//! NATS 2.9 acknowledges a publish once the message is written (not fsynced) on a quorum of the stream's
//! replicas: the store is fsynced every `sync_interval` (2 minutes by default). `durability()` says so.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::driver::{BoxFuture, OnMessage, System};

const STREAM: &str = "BENCH";
const SUBJECT: &str = "bench.events";
const CONSUMER: &str = "bench";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process started in its own process group; the whole group is killed on [`Proc::kill`] and on
/// drop, so wrapper scripts that fork (rabbitmq-server) leave nothing behind.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Self { name: name.to_string(), log: log.to_path_buf(), child: Some(child) })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(e.to_string()),
            None => Some("not running".to_string()),
        }
    }

    /// SIGKILL to the process group, then reaps the child.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ =
                Command::new("kill").args(["-9", "--", &group]).stdout(Stdio::null()).stderr(Stdio::null()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of the log, for error messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port (below the ephemeral range, never handed out twice by this process).
pub(crate) fn free_port() -> u16 {
    let addr = sluice_tests::free_addr();
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_default()
}

pub(crate) struct NatsJetStream {
    servers: usize,
    procs: Vec<Proc>,
    client: async_nats::Client,
    js: jetstream::Context,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Dropped last: the servers' store directories.
    _dir: tempfile::TempDir,
}

impl NatsJetStream {
    /// Starts `servers` clustered nats-server processes on loopback (JetStream, file storage in a tempdir),
    /// waits for a JetStream meta leader and creates the stream with `servers` replicas.
    pub(crate) async fn start(servers: usize) -> Result<Self> {
        if servers == 0 {
            bail!("nats: at least one server");
        }
        let dir = tempfile::Builder::new().prefix("sluice-bench-nats").tempdir()?;
        let client_ports: Vec<u16> = (0..servers).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..servers).map(|_| free_port()).collect();
        let mut procs = Vec::new();
        for i in 0..servers {
            let store = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&store)?;
            let mut config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n}}\n",
                client_ports[i],
                store.display().to_string(),
            );
            if servers > 1 {
                let routes: Vec<String> = (0..servers)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats-route://127.0.0.1:{}", cluster_ports[j]))
                    .collect();
                config.push_str(&format!(
                    "cluster {{\n  name: bench\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    cluster_ports[i],
                    routes.join(", ")
                ));
            }
            let config_path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&config_path, config)?;
            let mut command = Command::new("nats-server");
            command.arg("-c").arg(&config_path);
            procs.push(Proc::spawn(&format!("nats-server n{i}"), command, &dir.path().join(format!("n{i}.log")))?);
        }
        let urls: Vec<String> = client_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let started = Instant::now();
        let result = connect_and_create(&urls, servers, &mut procs, started + STARTUP_TIMEOUT).await;
        let (client, js) = match result {
            Ok(ok) => ok,
            Err(e) => {
                let logs: Vec<String> = procs.iter().map(|p| format!("{}:\n{}", p.name, p.log_tail(10))).collect();
                for p in &mut procs {
                    p.kill();
                }
                return Err(e.context(format!("nats-jetstream-{servers} did not start; logs:\n{}", logs.join("\n"))));
            }
        };
        eprintln!("nats-jetstream-{servers}: ready in {:.1?}", started.elapsed());
        Ok(Self { servers, procs, client, js, tasks: Mutex::new(Vec::new()), _dir: dir })
    }
}

/// Connects (retrying until the servers listen) and creates the stream (retrying until JetStream has a meta
/// leader and enough peers for the replicas).
async fn connect_and_create(
    urls: &[String],
    replicas: usize,
    procs: &mut [Proc],
    deadline: Instant,
) -> Result<(async_nats::Client, jetstream::Context)> {
    let mut last_error = anyhow!("no attempt");
    let client = loop {
        check_running(procs)?;
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
        let attempt = tokio::time::timeout(Duration::from_secs(3), options.connect(urls)).await;
        match attempt {
            Ok(Ok(client)) => break client,
            Ok(Err(e)) => last_error = e.into(),
            Err(_) => last_error = anyhow!("connect timed out"),
        }
        if Instant::now() > deadline {
            return Err(last_error.context("connecting to nats-server"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut js = jetstream::new(client.clone());
    js.set_timeout(PUBLISH_TIMEOUT);
    let config = stream::Config {
        name: STREAM.to_string(),
        subjects: vec!["bench.>".to_string()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    loop {
        check_running(procs)?;
        match tokio::time::timeout(Duration::from_secs(5), js.get_or_create_stream(config.clone())).await {
            Ok(Ok(_)) => break,
            Ok(Err(e)) => last_error = e.into(),
            Err(_) => last_error = anyhow!("stream creation timed out"),
        }
        if Instant::now() > deadline {
            return Err(last_error.context("creating the JetStream stream (no meta leader?)"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((client, js))
}

fn check_running(procs: &mut [Proc]) -> Result<()> {
    for p in procs {
        if let Some(status) = p.exited() {
            bail!("{} exited ({status}): {}", p.name, p.log_tail(10));
        }
    }
    Ok(())
}

impl System for NatsJetStream {
    fn name(&self) -> String {
        format!("nats-jetstream-{}", self.servers)
    }

    fn durability(&self) -> String {
        let replicas = if self.servers == 1 { "1 replica".to_string() } else { format!("{} replicas", self.servers) };
        format!("{replicas}, acked after quorum write, no fsync before ack (NATS 2.9 default sync_interval 2m)")
    }

    fn publish(&self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let ack = tokio::time::timeout(PUBLISH_TIMEOUT, async {
                self.js.publish(SUBJECT, payload).await?.await.map_err(anyhow::Error::from)
            })
            .await
            .map_err(|_| anyhow!("nats publish: no PubAck within {PUBLISH_TIMEOUT:?}"))??;
            if ack.duplicate {
                bail!("nats publish: duplicate");
            }
            Ok(())
        })
    }

    fn publish_batch(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
        // NATS's own batching: every publish sent before any PubAck is awaited (async publish).
        Box::pin(async move {
            tokio::time::timeout(PUBLISH_TIMEOUT, async {
                let mut pending = Vec::with_capacity(payloads.len());
                for payload in payloads {
                    pending.push(std::future::IntoFuture::into_future(self.js.publish(SUBJECT, payload).await?));
                }
                for ack in futures::future::join_all(pending).await {
                    if ack?.duplicate {
                        bail!("nats publish: duplicate");
                    }
                }
                anyhow::Ok(())
            })
            .await
            .map_err(|_| anyhow!("nats publish: no PubAck within {PUBLISH_TIMEOUT:?}"))?
        })
    }

    fn cpu_us(&self) -> Option<u64> {
        let groups: Vec<u32> = self.procs.iter().filter_map(Proc::pid).collect();
        Some(crate::cpu::group_cpu_us(&groups))
    }

    fn subscribe(&self, on_message: OnMessage) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let stream = tokio::time::timeout(STARTUP_TIMEOUT, self.js.get_stream(STREAM))
                .await
                .map_err(|_| anyhow!("nats: get_stream timed out"))??;
            let config = consumer::pull::Config {
                durable_name: Some(CONSUMER.to_string()),
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 100_000,
                ..Default::default()
            };
            let consumer = tokio::time::timeout(STARTUP_TIMEOUT, stream.create_consumer(config))
                .await
                .map_err(|_| anyhow!("nats: create_consumer timed out"))??;
            let mut messages = tokio::time::timeout(
                STARTUP_TIMEOUT,
                consumer.stream().max_messages_per_batch(1000).heartbeat(Duration::from_secs(5)).messages(),
            )
            .await
            .map_err(|_| anyhow!("nats: consumer messages timed out"))??;
            let task = tokio::spawn(async move {
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(message) => {
                            on_message(&message.payload);
                            if let Err(e) = message.ack().await {
                                eprintln!("nats: ack failed: {e}");
                            }
                        }
                        Err(e) => eprintln!("nats: consumer: {e}"),
                    }
                }
            });
            self.tasks.lock().map_err(|_| anyhow!("poisoned"))?.push(task);
            Ok(())
        })
    }

    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for task in self.tasks.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default() {
                task.abort();
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), self.client.drain()).await;
            for p in &mut self.procs {
                p.kill();
            }
        })
    }
}

impl Drop for NatsJetStream {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
        for p in &mut self.procs {
            p.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(servers: usize) -> Result<()> {
        let started = Instant::now();
        let mut system = NatsJetStream::start(servers).await?;
        eprintln!("{} started in {:.1?}: {}", system.name(), started.elapsed(), system.durability());
        let result = crate::driver::publish_and_receive(&system, 100).await;
        tokio::time::timeout(Duration::from_secs(30), system.stop()).await?;
        result
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs nats-server (Debian package)"]
    async fn peers_nats_one_server_round_trip() -> Result<()> {
        round_trip(1).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs nats-server (Debian package)"]
    async fn peers_nats_three_servers_round_trip() -> Result<()> {
        round_trip(3).await
    }
}
