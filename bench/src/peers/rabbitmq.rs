//! RabbitMQ as a peer: `nodes` rabbitmq-server nodes on loopback joined into a cluster (falling back to one
//! node, said in `name()` and `durability()`, when the cluster cannot be formed here in bounded time), one
//! durable quorum queue, publisher confirms awaited per publish (persistent messages), and a consumer with
//! manual acks.
//!
//! Quorum queues confirm a publish once a quorum of members has written it to the Ra WAL and fsynced it
//! (`fdatasync`, the default `raft.wal_sync_method`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::task::JoinHandle;

use super::nats::{Proc, free_port};
use crate::driver::{BoxFuture, OnMessage, System};

const QUEUE: &str = "bench";
const SBIN: &str = "/usr/lib/rabbitmq/bin";
/// Per node (they boot concurrently).
const NODE_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
const PUBLISH_CHANNELS: usize = 4;
const PREFETCH: u16 = 1000;
const COOKIE: &str = "SLUICEBENCHCOOKIE";

/// The Erlang nodes of one (attempted) cluster.
struct Nodes {
    home: PathBuf,
    names: Vec<String>,
    amqp_ports: Vec<u16>,
    procs: Vec<Proc>,
}

pub(crate) struct RabbitQuorum {
    requested: usize,
    nodes: Nodes,
    /// Why the `requested`-node cluster was replaced by one node.
    fallback: Option<String>,
    epmd: Option<Proc>,
    connection: Connection,
    publishers: Vec<Channel>,
    next: AtomicUsize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Dropped last: the nodes' data, logs, configuration and cookie.
    _dir: tempfile::TempDir,
}

impl RabbitQuorum {
    /// Starts `nodes` RabbitMQ nodes on loopback and clusters them (or falls back to 1 node, see `name()`),
    /// declares the quorum queue and opens the publishing channels (publisher confirms on).
    pub(crate) async fn start(nodes: usize) -> Result<Self> {
        if nodes == 0 {
            bail!("rabbitmq: at least one node");
        }
        let dir = tempfile::Builder::new().prefix("sluice-bench-rabbitmq").tempdir()?;
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home)?;
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, COOKIE)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))?;
        }
        let epmd = start_epmd(dir.path()).await?;
        let started = Instant::now();
        let (cluster, fallback) = match start_cluster(dir.path(), &home, nodes, "c").await {
            Ok(cluster) => (cluster, None),
            Err((mut partial, e)) if nodes > 1 => {
                let reason = format!("{e:#}");
                eprintln!("rabbitmq: {nodes}-node cluster did not start ({reason}); falling back to 1 node");
                stop_nodes(&mut partial).await;
                let single = start_cluster(dir.path(), &home, 1, "s").await.map_err(|(mut partial, e)| {
                    partial.procs.iter_mut().for_each(Proc::kill);
                    e
                })?;
                (single, Some(reason))
            }
            Err((mut partial, e)) => {
                partial.procs.iter_mut().for_each(Proc::kill);
                return Err(e);
            }
        };
        let mut cluster = cluster;
        match open(&cluster).await {
            Ok((connection, publishers)) => {
                eprintln!(
                    "rabbitmq-quorum-{}: ready in {:.1?}{}",
                    cluster.names.len(),
                    started.elapsed(),
                    if fallback.is_some() { " (fallback to 1 node)" } else { "" }
                );
                Ok(Self {
                    requested: nodes,
                    nodes: cluster,
                    fallback,
                    epmd,
                    connection,
                    publishers,
                    next: AtomicUsize::new(0),
                    tasks: Mutex::new(Vec::new()),
                    _dir: dir,
                })
            }
            Err(e) => {
                stop_nodes(&mut cluster).await;
                Err(e)
            }
        }
    }

    /// The members of the quorum queue (as `rabbitmqctl list_queues` reports them).
    pub(crate) async fn queue_members(&self) -> Result<String> {
        let node = &self.nodes.names[0];
        ctl(&self.nodes.home, node, &["list_queues", "-q", "name", "type", "members", "leader"], CTL_TIMEOUT).await
    }
}

/// Starts an epmd on loopback unless one already listens on 4369 (then it is shared, and not ours to stop).
async fn start_epmd(dir: &Path) -> Result<Option<Proc>> {
    let listening =
        || std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], 4369).into(), Duration::from_secs(1)).is_ok();
    if listening() {
        return Ok(None);
    }
    let mut command = Command::new("epmd");
    command.args(["-address", "127.0.0.1", "-port", "4369"]);
    let mut epmd = Proc::spawn("epmd", command, &dir.join("epmd.log"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening() {
        if let Some(status) = epmd.exited() {
            bail!("epmd exited ({status}): {}", epmd.log_tail(5));
        }
        if Instant::now() > deadline {
            bail!("epmd did not listen on 127.0.0.1:4369 within 10s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Some(epmd))
}

/// Boots `count` nodes concurrently, waits for each, and joins nodes 2.. to node 1. On failure, hands back
/// what was started (for the caller to stop) with the error.
async fn start_cluster(dir: &Path, home: &Path, count: usize, tag: &str) -> Result<Nodes, (Nodes, anyhow::Error)> {
    static STARTS: AtomicUsize = AtomicUsize::new(0);
    let start = STARTS.fetch_add(1, Ordering::Relaxed);
    let mut nodes = Nodes { home: home.to_path_buf(), names: Vec::new(), amqp_ports: Vec::new(), procs: Vec::new() };
    for i in 1..=count {
        let name = format!("sbench{}{tag}{start}n{i}@localhost", std::process::id());
        let port = free_port();
        match spawn_node(dir, home, &name, port) {
            Ok(proc) => {
                nodes.names.push(name);
                nodes.amqp_ports.push(port);
                nodes.procs.push(proc);
            }
            Err(e) => return Err((nodes, e)),
        }
    }
    let booted = Instant::now();
    for i in 0..count {
        if let Err(e) = await_startup(&mut nodes, i).await {
            return Err((nodes, e));
        }
    }
    eprintln!("rabbitmq: {count} node(s) booted in {:.1?}", booted.elapsed());
    let joined = Instant::now();
    for i in 1..count {
        let node = nodes.names[i].clone();
        let seed = nodes.names[0].clone();
        for args in [&["stop_app"][..], &["join_cluster", &seed], &["start_app"]] {
            if let Err(e) = ctl(home, &node, args, CTL_TIMEOUT).await {
                return Err((nodes, e.context(format!("{node}: rabbitmqctl {}", args.join(" ")))));
            }
        }
    }
    if count > 1 {
        eprintln!("rabbitmq: {count} nodes clustered in {:.1?}", joined.elapsed());
    }
    Ok(nodes)
}

fn spawn_node(dir: &Path, home: &Path, name: &str, amqp_port: u16) -> Result<Proc> {
    let short = name.split('@').next().unwrap_or(name);
    let base = dir.join(short);
    std::fs::create_dir_all(base.join("log"))?;
    let config = base.join("rabbitmq.conf");
    std::fs::write(&config, format!("listeners.tcp.default = 127.0.0.1:{amqp_port}\nloopback_users = none\n"))?;
    let plugins = base.join("enabled_plugins");
    std::fs::write(&plugins, "[].\n")?;
    let mut command = Command::new(Path::new(SBIN).join("rabbitmq-server"));
    command
        .current_dir(&base)
        .env("HOME", home)
        .env("RABBITMQ_NODENAME", name)
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
        .env("RABBITMQ_DIST_PORT", free_port().to_string())
        .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", base.join("log"))
        .env("RABBITMQ_CONFIG_FILE", &config)
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", base.join("advanced.config"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
        .env("RABBITMQ_PID_FILE", base.join("pid"))
        .env("RABBITMQ_CONF_ENV_FILE", base.join("no-rabbitmq-env.conf"))
        .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
        .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    Proc::spawn(name, command, &base.join("stdout.log"))
}

/// Waits until node `i` runs the rabbit application (`rabbitmqctl await_startup`, retried while the node is
/// not yet registered with epmd).
async fn await_startup(nodes: &mut Nodes, i: usize) -> Result<()> {
    let deadline = Instant::now() + NODE_STARTUP_TIMEOUT;
    let name = nodes.names[i].clone();
    loop {
        if let Some(status) = nodes.procs[i].exited() {
            bail!("{name} exited ({status}): {}", nodes.procs[i].log_tail(10));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{name} did not start within {NODE_STARTUP_TIMEOUT:?}: {}", nodes.procs[i].log_tail(10));
        }
        let wait = left.as_secs().max(1).to_string();
        if ctl(&nodes.home, &name, &["await_startup", "--timeout", &wait], left + Duration::from_secs(5)).await.is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `rabbitmqctl -n node args...`, killed after `timeout`.
async fn ctl(home: &Path, node: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let mut command = tokio::process::Command::new(Path::new(SBIN).join("rabbitmqctl"));
    command
        .arg("-n")
        .arg(node)
        .args(args)
        .env("HOME", home)
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_CTL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| anyhow!("rabbitmqctl {} timed out after {timeout:?}", args.join(" ")))??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
        bail!("rabbitmqctl {} failed ({}): {first}", args.join(" "), output.status);
    }
    Ok(stdout)
}

/// `rabbitmqctl stop` on every node (last first), then kills whatever is left.
async fn stop_nodes(nodes: &mut Nodes) {
    for i in (0..nodes.procs.len()).rev() {
        if nodes.procs[i].exited().is_none() {
            let _ = ctl(&nodes.home, &nodes.names[i], &["stop"], Duration::from_secs(20)).await;
        }
        nodes.procs[i].kill();
    }
}

/// Connects to node 1, declares the quorum queue and opens the publishing channels.
async fn open(nodes: &Nodes) -> Result<(Connection, Vec<Channel>)> {
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", nodes.amqp_ports[0]);
    let connection =
        tokio::time::timeout(Duration::from_secs(10), Connection::connect(&uri, ConnectionProperties::default()))
            .await
            .map_err(|_| anyhow!("rabbitmq: connect timed out"))?
            .with_context(|| format!("rabbitmq: connecting to {uri}"))?;
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        let channel = connection.create_channel().await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel
            .queue_declare(QUEUE.into(), QueueDeclareOptions { durable: true, ..Default::default() }, arguments)
            .await?;
        let mut publishers = vec![channel];
        while publishers.len() < PUBLISH_CHANNELS {
            publishers.push(connection.create_channel().await?);
        }
        for channel in &publishers {
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        anyhow::Ok(publishers)
    })
    .await
    .map_err(|_| anyhow!("rabbitmq: declaring the queue timed out"))
    .and_then(|r| r);
    match result {
        Ok(publishers) => Ok((connection, publishers)),
        Err(e) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.close(200, "bye".into())).await;
            Err(e)
        }
    }
}

impl System for RabbitQuorum {
    fn name(&self) -> String {
        format!("rabbitmq-quorum-{}", self.nodes.names.len())
    }

    fn durability(&self) -> String {
        match &self.fallback {
            Some(reason) => format!(
                "1 node ({}-node cluster did not start here: {reason}), quorum queue, fsync before confirm",
                self.requested
            ),
            None if self.nodes.names.len() == 1 => "1 node, quorum queue, fsync before confirm".to_string(),
            None => format!("{} replicas (quorum queue), confirm after fsync on a quorum", self.nodes.names.len()),
        }
    }

    fn publish(&self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let channel = &self.publishers[self.next.fetch_add(1, Ordering::Relaxed) % self.publishers.len()];
            let confirmation = tokio::time::timeout(PUBLISH_TIMEOUT, async {
                let properties = BasicProperties::default().with_delivery_mode(2);
                channel
                    .basic_publish("".into(), QUEUE.into(), BasicPublishOptions::default(), &payload, properties)
                    .await?
                    .await
            })
            .await
            .map_err(|_| anyhow!("rabbitmq publish: no confirm within {PUBLISH_TIMEOUT:?}"))??;
            if !confirmation.is_ack() {
                bail!("rabbitmq publish: nacked");
            }
            Ok(())
        })
    }

    fn publish_batch(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
        // RabbitMQ's own batching: every message published on one channel before any confirm is awaited
        // (the broker may confirm several at once with `multiple`).
        Box::pin(async move {
            let channel = &self.publishers[self.next.fetch_add(1, Ordering::Relaxed) % self.publishers.len()];
            tokio::time::timeout(PUBLISH_TIMEOUT, async {
                let mut pending = Vec::with_capacity(payloads.len());
                for payload in &payloads {
                    let properties = BasicProperties::default().with_delivery_mode(2);
                    pending.push(
                        channel
                            .basic_publish("".into(), QUEUE.into(), BasicPublishOptions::default(), payload, properties)
                            .await?,
                    );
                }
                for confirmation in futures::future::join_all(pending).await {
                    if !confirmation?.is_ack() {
                        bail!("rabbitmq publish: nacked");
                    }
                }
                anyhow::Ok(())
            })
            .await
            .map_err(|_| anyhow!("rabbitmq publish: no confirm within {PUBLISH_TIMEOUT:?}"))?
        })
    }

    fn cpu_us(&self) -> Option<u64> {
        let groups: Vec<u32> = self.nodes.procs.iter().filter_map(Proc::pid).collect();
        Some(crate::cpu::group_cpu_us(&groups))
    }

    fn subscribe(&self, on_message: OnMessage) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let consumer = tokio::time::timeout(Duration::from_secs(30), async {
                let channel = self.connection.create_channel().await?;
                channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
                // From now on: what was published before (e.g. a throughput-only run) is not delivered.
                channel.queue_purge(QUEUE.into(), QueuePurgeOptions::default()).await?;
                let consumer = channel
                    .basic_consume(QUEUE.into(), "bench".into(), BasicConsumeOptions::default(), FieldTable::default())
                    .await?;
                anyhow::Ok(consumer)
            })
            .await
            .map_err(|_| anyhow!("rabbitmq: basic_consume timed out"))??;
            let mut consumer = consumer;
            let task = tokio::spawn(async move {
                while let Some(delivery) = consumer.next().await {
                    match delivery {
                        Ok(delivery) => {
                            on_message(&delivery.data);
                            if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                                eprintln!("rabbitmq: ack failed: {e}");
                            }
                        }
                        Err(e) => {
                            eprintln!("rabbitmq: consumer: {e}");
                            break;
                        }
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
            let _ = tokio::time::timeout(Duration::from_secs(2), self.connection.close(200, "bye".into())).await;
            stop_nodes(&mut self.nodes).await;
            if let Some(epmd) = &mut self.epmd {
                epmd.kill();
            }
        })
    }
}

impl Drop for RabbitQuorum {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
        self.nodes.procs.iter_mut().for_each(Proc::kill);
        if let Some(epmd) = &mut self.epmd {
            epmd.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(nodes: usize) -> Result<()> {
        let started = Instant::now();
        let mut system = RabbitQuorum::start(nodes).await?;
        eprintln!("{} started in {:.1?}: {}", system.name(), started.elapsed(), system.durability());
        let result = async {
            if system.name() != format!("rabbitmq-quorum-{nodes}") {
                bail!("fell back: {}", system.durability());
            }
            eprintln!("queue: {}", system.queue_members().await?.trim());
            crate::driver::publish_and_receive(&system, 100).await
        }
        .await;
        let stopping = Instant::now();
        tokio::time::timeout(Duration::from_secs(90), system.stop()).await?;
        eprintln!("stopped in {:.1?}", stopping.elapsed());
        result
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs rabbitmq-server (Debian package)"]
    async fn peers_rabbitmq_one_node_round_trip() -> Result<()> {
        round_trip(1).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs rabbitmq-server (Debian package)"]
    async fn peers_rabbitmq_three_nodes_round_trip() -> Result<()> {
        round_trip(3).await
    }
}
