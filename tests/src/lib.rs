//! Helpers for the cross-process tests: real `sluice node` processes on
//! loopback, each with its own data dir and log file, and admin-API clients.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_proto::admin::log_client::LogClient;
use sluice_proto::admin::{AppendRequest, InitRequest, Member, ReadRequest, Record, StatusReply, StatusRequest};
use tonic::transport::Channel;

pub mod fake_kube;
pub mod fake_kubelet;
pub mod hostile;
pub mod subscriber;

/// This crate's directory, read when the test runs (cargo sets `CARGO_MANIFEST_DIR` for test processes): a
/// test binary reused from a shared target directory may have been compiled in another checkout.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The `sluice` binary built by this workspace (or `SLUICE_BIN`).
pub fn sluice_bin() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test> → target/<profile>/sluice
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir");
    profile_dir.join("sluice")
}

/// The `sluice-hello` test app (a Knative Service's `command` in the serving tests), next to `sluice`.
pub fn hello_bin() -> PathBuf {
    sluice_bin().with_file_name("sluice-hello")
}

/// A free loopback port for a node to bind. Ports come from below the
/// kernel's ephemeral range (so no client socket or port-0 bind is handed
/// one) and are never handed out twice by one process, so a port a killed
/// node held is still its own when it restarts.
pub fn free_addr() -> String {
    free_run(1)
}

/// A port and the `count - 1` ports after it, all free now and all taken from the same counter as
/// [`free_addr`], so no other caller of this process is handed one of them (`sluice dev --nodes N` gives
/// node i port + i - 1; two dev clusters started at once were handed overlapping runs).
pub fn free_run(count: u16) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let count = u32::from(count.max(1));
    let base = 20_000 + (std::process::id() * 97) % 10_000;
    loop {
        let offset = NEXT.fetch_add(count, Ordering::Relaxed);
        let first = 20_000 + (base - 20_000 + offset) % 12_000;
        // A run never wraps past the end of the range: ports stay consecutive.
        if first + count > 32_000 {
            continue;
        }
        let free = (first..first + count).all(|port| std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok());
        if free {
            return format!("127.0.0.1:{first}");
        }
    }
}

/// Reads `lines` until one starts with `prefix`: `true` once one does, `false` if the output ends first; an
/// error after `timeout` (a `sluice dev` that prints that its nodes run, for instance).
pub async fn wait_for_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    prefix: &str,
    timeout: Duration,
) -> Result<bool> {
    tokio::time::timeout(timeout, async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with(prefix) {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await
    .with_context(|| format!("no line starting with {prefix:?} within {timeout:?}"))?
}

pub struct NodeProc {
    pub id: u64,
    pub data: PathBuf,
    pub peer: String,
    pub http: String,
    pub admin: String,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
    /// Environment variables the node starts with, besides the test's own.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl NodeProc {
    pub fn new(id: u64, root: &Path, extra_args: &[&str]) -> Self {
        Self {
            id,
            data: root.join(format!("node-{id}")),
            peer: free_addr(),
            http: free_addr(),
            admin: free_addr(),
            log: root.join(format!("node-{id}.log")),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            child: None,
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(sluice_bin())
            .args(["node", "--id", &self.id.to_string(), "--data"])
            .arg(&self.data)
            .args(["--peer-listen", &self.peer, "--http", &self.http, "--admin", &self.admin])
            .args(&self.extra_args)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", sluice_bin().display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, `"TERM"`) to the node's process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let child = self.child.as_ref().ok_or_else(|| anyhow::anyhow!("node {} is not running", self.id))?;
        let status =
            std::process::Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} of node {}: {status}", self.id);
        Ok(())
    }

    /// The node process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The node process's exit code, once it has exited (`None` while it runs, or when a signal ended it).
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).and_then(|status| status.code())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct TestCluster {
    pub nodes: Vec<NodeProc>,
    pub root: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` nodes and initialises them as one cluster.
    pub async fn start(n: u64, partitions: u32, extra_args: &[&str]) -> Result<Self> {
        let root = tempfile::tempdir()?;
        let mut nodes: Vec<NodeProc> = (1..=n).map(|id| NodeProc::new(id, root.path(), extra_args)).collect();
        for node in &mut nodes {
            node.start()?;
        }
        let cluster = Self { nodes, root };
        for node in &cluster.nodes {
            wait_for_admin(&node.admin).await.with_context(|| node.log_tail())?;
        }
        let members: Vec<Member> =
            cluster.nodes.iter().map(|n| Member { node_id: n.id, peer_addr: n.peer.clone() }).collect();
        let mut client = ClusterClient::connect(format!("http://{}", cluster.nodes[0].admin)).await?;
        // Init is idempotent; a metadata group that has not elected its leader yet (a loaded machine) answers
        // "no leader right now", which is retried (regression: t90 failed its cluster init once under CI load).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match client.init(InitRequest { members: members.clone(), partitions }).await {
                Ok(_) => break,
                Err(status) if status.message().contains("no leader") && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => return Err(anyhow::Error::from(status).context("cluster init")),
            }
        }
        for node in &cluster.nodes {
            wait_ready(&node.http).await.with_context(|| node.log_tail())?;
        }
        Ok(cluster)
    }

    pub fn node(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    /// The node that leads `group` according to the first live node that knows.
    pub async fn leader_of(&mut self, group: u32) -> Result<u64> {
        wait_until(Duration::from_secs(20), || async {
            for node in &self.nodes {
                if let Ok(status) = status(&node.admin).await
                    && let Some(g) = status.groups.iter().find(|g| g.group_id == group)
                    && g.leader_id == Some(status.node_id)
                {
                    return Ok(Some(status.node_id));
                }
            }
            Ok(None)
        })
        .await
    }
}

/// Starts one node and initialises it as a one-member cluster.
pub async fn start_single_node(partitions: u32, extra_args: &[&str]) -> Result<(tempfile::TempDir, NodeProc)> {
    let root = tempfile::tempdir()?;
    let mut node = NodeProc::new(1, root.path(), extra_args);
    start_as_single_node(&mut node, partitions).await?;
    Ok((root, node))
}

/// Starts `node` and initialises it as a one-member cluster.
pub async fn start_as_single_node(node: &mut NodeProc, partitions: u32) -> Result<()> {
    node.start()?;
    wait_for_admin(&node.admin).await.with_context(|| node.log_tail())?;
    let mut client = ClusterClient::connect(format!("http://{}", node.admin)).await?;
    let members = vec![Member { node_id: node.id, peer_addr: node.peer.clone() }];
    client.init(InitRequest { members, partitions }).await?;
    wait_ready(&node.http).await.with_context(|| node.log_tail())?;
    Ok(())
}

/// Initialises `node` (started, with `--admin-tokens`) as a one-member cluster of `partitions`, calling as the
/// operator whose bearer token is `token`, once its admin port answers.
pub async fn init_with_token(node: &NodeProc, token: &str, partitions: u32) -> Result<()> {
    let admin = node.admin.clone();
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let mut cluster = wait_until(Duration::from_secs(30), || async {
        let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))?.connect().await else {
            return Ok(None);
        };
        let token = token.clone();
        Ok(Some(ClusterClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", token.clone());
            Ok(r)
        })))
    })
    .await?;
    let members = vec![Member { node_id: node.id, peer_addr: node.peer.clone() }];
    cluster.init(InitRequest { members, partitions }).await?;
    Ok(())
}

/// Polls `check` until it yields a value (state observed through the API,
/// not a fixed sleep), failing after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("condition not met within {timeout:?} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_for_admin(admin: &str) -> Result<()> {
    wait_until(Duration::from_secs(30), || async { Ok(status(admin).await.ok().map(|_| ())) }).await
}

pub async fn wait_ready(http: &str) -> Result<()> {
    let url = format!("http://{http}/readyz");
    wait_until(Duration::from_secs(30), || async {
        Ok(match reqwest::get(&url).await {
            Ok(response) if response.status().is_success() => Some(()),
            _ => None,
        })
    })
    .await
}

pub async fn status(admin: &str) -> Result<StatusReply> {
    let mut client = ClusterClient::connect(format!("http://{admin}")).await?;
    Ok(client.status(StatusRequest {}).await?.into_inner())
}

pub async fn log_client(admin: &str) -> Result<LogClient<Channel>> {
    Ok(LogClient::connect(format!("http://{admin}")).await?)
}

/// How an append ended, from the client's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Committed at these offsets.
    Acked(Vec<u64>),
    /// Refused before anything was written (safe to send again).
    Refused(String),
    /// May or may not have been written (never sent again, so never duplicated).
    Indeterminate(String),
}

pub async fn append(admin: &str, stream: &str, partition: u32, payloads: Vec<Vec<u8>>) -> AppendOutcome {
    let mut client = match log_client(admin).await {
        Ok(client) => client,
        Err(e) => return AppendOutcome::Refused(format!("connect: {e}")),
    };
    let request = AppendRequest {
        stream: stream.to_string(),
        partition,
        payloads: payloads.into_iter().map(Into::into).collect(),
    };
    match client.append(request).await {
        Ok(reply) => AppendOutcome::Acked(reply.into_inner().offsets),
        Err(status) => match status.code() {
            tonic::Code::FailedPrecondition | tonic::Code::ResourceExhausted => {
                AppendOutcome::Refused(status.message().to_string())
            }
            _ => AppendOutcome::Indeterminate(format!("{:?}: {}", status.code(), status.message())),
        },
    }
}

/// Every retained record of `stream` in `partition` as applied on the node at `admin`.
pub async fn read_all(admin: &str, stream: &str, partition: u32) -> Result<Vec<Record>> {
    let mut client = log_client(admin).await?;
    let mut records: Vec<Record> = Vec::new();
    loop {
        let reply = client
            .read(ReadRequest {
                stream: stream.to_string(),
                partition,
                from_offset: records.last().map(|r| r.offset + 1).unwrap_or(0),
                max_records: 1000,
                max_bytes: 0,
            })
            .await?
            .into_inner();
        if reply.records.is_empty() {
            return Ok(records);
        }
        records.extend(reply.records);
    }
}

/// The end offset of `stream` on the node at `admin`.
pub async fn end_offset(admin: &str, stream: &str, partition: u32) -> Result<u64> {
    let mut client = log_client(admin).await?;
    let reply = client
        .read(ReadRequest {
            stream: stream.to_string(),
            partition,
            from_offset: u64::MAX,
            max_records: 1,
            max_bytes: 0,
        })
        .await?
        .into_inner();
    Ok(reply.end_offset)
}

/// Checks a node's copy of a stream against what was acknowledged: offsets
/// dense from 0, each acknowledged payload at its acknowledged offset, and
/// no payload twice. Returns the payloads by offset.
pub fn check_stream(records: &[Record], acked: &BTreeMap<u64, Vec<u8>>) -> Result<Vec<Vec<u8>>> {
    let mut seen = std::collections::HashSet::new();
    for (expected, record) in records.iter().enumerate() {
        if record.offset != expected as u64 {
            bail!("offsets are not dense: position {expected} holds offset {}", record.offset);
        }
        if !seen.insert(record.payload.to_vec()) {
            bail!("payload at offset {} is present twice", record.offset);
        }
    }
    for (offset, payload) in acked {
        match records.get(*offset as usize) {
            Some(record) if record.payload.as_ref() == payload.as_slice() => {}
            Some(record) => bail!(
                "offset {offset}: acknowledged {:?}, found {:?}",
                String::from_utf8_lossy(payload),
                String::from_utf8_lossy(&record.payload)
            ),
            None => bail!("acknowledged offset {offset} is missing ({} records present)", records.len()),
        }
    }
    Ok(records.iter().map(|r| r.payload.to_vec()).collect())
}

/// Appends a test sends one at a time to one stream partition, as a client that retries safely does: one
/// refused before anything was written is sent again (on a loaded machine an election may move the leadership
/// under the test), and one whose outcome is unknown is remembered as maybe stored and never sent again, so
/// that a node's copy can still be checked for duplicates and for payloads never sent ([`Appends::copy_on`]).
pub struct Appends {
    stream: String,
    partition: u32,
    /// The acknowledged payloads, by offset.
    pub acked: BTreeMap<u64, Vec<u8>>,
    /// The payloads whose append ended indeterminate.
    pub maybe: BTreeSet<Vec<u8>>,
    next: usize,
}

impl Appends {
    /// At most this many appends may end indeterminate before the test fails: more means the cluster is
    /// unavailable, not busy.
    const MAX_INDETERMINATE: usize = 20;

    pub fn new(stream: &str, partition: u32) -> Appends {
        Appends { stream: stream.to_string(), partition, acked: BTreeMap::new(), maybe: BTreeSet::new(), next: 0 }
    }

    /// Appends `payload` through the node at `admin`, sending it again while it is refused (30 s at most).
    pub async fn send(&mut self, admin: &str, payload: Vec<u8>) -> Result<()> {
        anyhow::ensure!(self.maybe.len() < Self::MAX_INDETERMINATE, "{} appends ended indeterminate", self.maybe.len());
        let (stream, partition) = (self.stream.as_str(), self.partition);
        let offset = wait_until(Duration::from_secs(30), || {
            let payload = payload.clone();
            async move {
                match append(admin, stream, partition, vec![payload]).await {
                    AppendOutcome::Acked(offsets) => Ok(Some(offsets.first().copied())),
                    AppendOutcome::Indeterminate(_) => Ok(Some(None)),
                    AppendOutcome::Refused(reason) => Err(anyhow::anyhow!("refused: {reason}")),
                }
            }
        })
        .await
        .with_context(|| format!("append {:?}", String::from_utf8_lossy(&payload)))?;
        match offset {
            Some(offset) => {
                self.acked.insert(offset, payload);
            }
            None => {
                self.maybe.insert(payload);
            }
        }
        Ok(())
    }

    /// Sends new payloads (`event-N`) until `count` of all sent are acknowledged.
    pub async fn until_acked(&mut self, admin: &str, count: usize) -> Result<()> {
        while self.acked.len() < count {
            let payload = format!("event-{}", self.next).into_bytes();
            self.next += 1;
            self.send(admin, payload).await?;
        }
        Ok(())
    }

    /// The offset of the last acknowledged append.
    pub fn last_acked(&self) -> Option<u64> {
        self.acked.keys().next_back().copied()
    }

    /// A node's copy of the stream partition, checked: every acknowledged payload at its offset, nothing twice
    /// ([`check_stream`]), and nothing that was never sent.
    pub async fn copy_on(&self, admin: &str) -> Result<Vec<Vec<u8>>> {
        let payloads = check_stream(&read_all(admin, &self.stream, self.partition).await?, &self.acked)?;
        let acked: BTreeSet<&Vec<u8>> = self.acked.values().collect();
        for payload in &payloads {
            anyhow::ensure!(
                acked.contains(payload) || self.maybe.contains(payload),
                "{:?} was never sent",
                String::from_utf8_lossy(payload)
            );
        }
        Ok(payloads)
    }
}

/// Runs `sluice` with `args` to completion; returns (exit code, stderr).
pub fn run_sluice(args: &[&str], timeout: Duration) -> Result<(i32, String)> {
    let child = Command::new(sluice_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => {
            let output = output?;
            Ok((output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned()))
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            bail!("sluice {args:?} did not exit within {timeout:?}")
        }
    }
}

/// Applies a resource object (JSON) through the admin API.
pub async fn apply_resource(admin: &str, object: serde_json::Value) -> Result<()> {
    let mut client = sluice_proto::admin::resources_client::ResourcesClient::connect(format!("http://{admin}")).await?;
    client.apply(sluice_proto::admin::ApplyResourceRequest { object_json: object.to_string(), dry_run: false }).await?;
    Ok(())
}

/// A Broker object as Knative's YAML would give it, with extra annotations.
pub fn broker_object(namespace: &str, name: &str, annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": { "name": name, "namespace": namespace, "annotations": annotations },
    })
}

/// Waits until the node at `http` answers for `path` with something other than 404 (the broker is known).
pub async fn wait_for_broker(http: &str, path: &str) -> Result<()> {
    let url = format!("http://{http}{path}");
    let client = reqwest::Client::new();
    wait_until(Duration::from_secs(20), || async {
        let response =
            client.post(&url).header("content-type", "application/cloudevents-batch+json").body("[]").send().await?;
        Ok((response.status() != reqwest::StatusCode::NOT_FOUND).then_some(()))
    })
    .await
}

/// Every event stored for `stream`, over all partitions, on the node at `admin`.
pub async fn read_events(admin: &str, stream: &str, partitions: u32) -> Result<Vec<sluice_cloudevent::CloudEvent>> {
    let mut events = Vec::new();
    for partition in 0..partitions {
        for record in read_all(admin, stream, partition).await? {
            events.push(sluice_cloudevent::CloudEvent::decode(&record.payload)?);
        }
    }
    Ok(events)
}

/// A Trigger object: `spec` is merged over `{broker, subscriber: {uri}}`.
pub fn trigger_object(
    namespace: &str,
    name: &str,
    broker: &str,
    subscriber_uri: &str,
    spec: serde_json::Value,
    annotations: serde_json::Value,
) -> serde_json::Value {
    let mut object = serde_json::json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": { "name": name, "namespace": namespace, "annotations": annotations },
        "spec": { "broker": broker, "subscriber": { "uri": subscriber_uri } },
    });
    if let (Some(target), serde_json::Value::Object(extra)) =
        (object.pointer_mut("/spec").and_then(|s| s.as_object_mut()), spec)
    {
        target.extend(extra);
    }
    object
}

/// An InMemoryChannel `namespace/name`.
pub fn in_memory_channel_object(namespace: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "InMemoryChannel",
        "metadata": { "name": name, "namespace": namespace },
    })
}

/// A Subscription `namespace/name` of InMemoryChannel `channel` to `subscriber_uri`, with `spec`'s fields (reply,
/// delivery) added.
pub fn subscription_object(
    namespace: &str,
    name: &str,
    channel: &str,
    subscriber_uri: &str,
    spec: serde_json::Value,
) -> serde_json::Value {
    let mut object = serde_json::json!({
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "Subscription",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "channel": { "apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": channel },
            "subscriber": { "uri": subscriber_uri },
        },
    });
    if let (Some(target), serde_json::Value::Object(extra)) =
        (object.pointer_mut("/spec").and_then(|s| s.as_object_mut()), spec)
    {
        target.extend(extra);
    }
    object
}

/// POSTs one binary-mode event to the ingress at `http` (`path` is `/{namespace}/{broker}`); answers the status.
pub async fn send_event(
    client: &reqwest::Client,
    http: &str,
    path: &str,
    id: &str,
    event_type: &str,
    extensions: &[(&str, &str)],
    data: &str,
) -> Result<u16> {
    let mut request = client
        .post(format!("http://{http}{path}"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/sluice/tests")
        .header("ce-type", event_type)
        .header("content-type", "application/json")
        .body(data.to_string());
    for (name, value) in extensions {
        request = request.header(format!("ce-{name}"), *value);
    }
    Ok(request.send().await?.status().as_u16())
}

/// Sends until the ingress answers 202 (a new leader may be settling), for at most `timeout`.
pub async fn send_event_accepted(
    client: &reqwest::Client,
    http: &str,
    path: &str,
    id: &str,
    event_type: &str,
    extensions: &[(&str, &str)],
    data: &str,
) -> Result<()> {
    wait_until(Duration::from_secs(20), || async {
        let status = send_event(client, http, path, id, event_type, extensions, data).await.unwrap_or(0);
        Ok((status == 202).then_some(()))
    })
    .await
}

/// A certificate for 127.0.0.1 and localhost signed by `ca`, with the CA, written under `dir` as
/// `NAME.pem`, `NAME.key` and `NAME-ca.pem`.
pub fn write_tls_files(
    dir: &Path,
    ca: &sluice_security::DevCertificates,
    name: &str,
) -> Result<sluice_security::TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let (cert, key) = sluice_security::issue_certificate(ca, &["127.0.0.1".to_string(), "localhost".to_string()])?;
    let files = sluice_security::TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        ca: dir.join(format!("{name}-ca.pem")),
    };
    std::fs::write(&files.key, key)?;
    std::fs::write(&files.cert, cert)?;
    std::fs::write(&files.ca, &ca.ca_cert_pem)?;
    Ok(files)
}

/// `sluice node` flags for transport encryption `mode` with `files`.
pub fn tls_node_args(mode: &str, files: &sluice_security::TlsFiles) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--transport-encryption".into(),
        mode.into(),
        "--tls-cert".into(),
        path(&files.cert),
        "--tls-key".into(),
        path(&files.key),
        "--tls-ca".into(),
        path(&files.ca),
    ]
}

/// A gRPC channel to `addr` over TLS with `files` (trusting their CA, presenting their certificate).
pub async fn tls_channel(addr: &str, files: &sluice_security::TlsFiles) -> Result<Channel> {
    let tls = sluice_security::Tls::load(sluice_security::TransportEncryption::Strict, Some(files.clone()))?
        .ok_or_else(|| anyhow::anyhow!("TLS is on"))?;
    let dialer = sluice_security::TlsDialer::new(tls, addr, sluice_security::host_of(addr));
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_with_connector(dialer).await?)
}

/// A gRPC channel over TLS with `files` that connects at its first call: a refusal (in the handshake, or the
/// connection dropped once the server has checked the client's certificate) shows as that call's error. Only
/// loading `files` fails here, so a test cannot mistake its own bad certificate for the server's refusal.
pub fn tls_channel_lazy(addr: &str, files: &sluice_security::TlsFiles) -> Result<Channel> {
    let tls = sluice_security::Tls::load(sluice_security::TransportEncryption::Strict, Some(files.clone()))?
        .ok_or_else(|| anyhow::anyhow!("TLS is on"))?;
    let dialer = sluice_security::TlsDialer::new(tls, addr, sluice_security::host_of(addr));
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_with_connector_lazy(dialer))
}

/// A plaintext gRPC channel that connects at its first call.
pub fn plaintext_channel_lazy(addr: &str) -> Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy())
}

/// An HTTPS client that trusts only the CA in `ca_pem`.
pub fn https_client(ca_pem: &str) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .build()?)
}

/// Waits until the node at `admin` holds the publication of metadata entry format `format` or newer by each of
/// nodes 1..=`nodes` (`broker/src/node/log_format.rs`): until then it proposes only the entries every member
/// reads (the format 3 of a redrive's cluster-wide claim, the format 5 of an apply conditional on the version
/// it was checked against).
pub async fn wait_for_log_format(admin: &str, nodes: u64, format: u64) -> Result<()> {
    use sluice_proto::admin::ResourceRef;
    use sluice_proto::admin::resources_client::ResourcesClient;
    let resources = ResourcesClient::connect(format!("http://{admin}")).await?;
    wait_until(Duration::from_secs(30), || {
        let mut resources = resources.clone();
        async move {
            for node in 1..=nodes {
                let name = format!("node-{node}");
                let node_info = ResourceRef { kind: "SluiceNode".into(), namespace: "sluice-system".into(), name };
                let Ok(object) = resources.get(node_info).await else { return Ok(None) };
                let object: serde_json::Value = serde_json::from_str(&object.into_inner().object_json)?;
                if object.pointer("/spec/logFormat").and_then(serde_json::Value::as_u64) < Some(format) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        }
    })
    .await
    .with_context(|| format!("the node at {admin} never held format {format} from each of {nodes} nodes"))
}

/// The sum of the samples of `name` (over its label sets, and only its own name) whose labels contain each of
/// `labels`, in a Prometheus text page.
pub fn metric_sum(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`metric_sum`] of the node serving HTTP at `http` (its `/metrics`).
pub async fn metric_sum_at(http: &str, name: &str, labels: &[&str]) -> Result<f64> {
    let page = reqwest::get(format!("http://{http}/metrics")).await?.text().await?;
    Ok(metric_sum(&page, name, labels))
}
