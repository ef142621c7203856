//! The `sluice.admin.v1.Serving` admin service: `Logs`, the output of a Service's instances, and `Decisions`,
//! what the autoscaler decided for its revisions and why: this node's, and by default every other node's, asked
//! on its peer listener and relayed (`gather`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_broker::{Node, NodeId, ResourceKey};
use sluice_controller::serving::{CONFIGURATION_LABEL, SERVICE_LABEL};
use sluice_proto::admin::serving_client::ServingClient;
use sluice_proto::admin::serving_server::{Serving, ServingServer};
use sluice_proto::admin::{AutoscalerDecision, DecisionsRequest, LogLine, LogsRequest};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::ServingState;
use crate::logs::{LogHub, MAX_TAIL_LINES};
use sluice_autoscaler::Decision;

/// How long a node waits for another to start answering a `Logs` or `Decisions` it relays, and, not following,
/// for each next item of the answer.
const PEER_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

struct LogsService {
    node: Node,
    logs: Arc<LogHub>,
    state: ServingState,
    /// Whether `Logs` and `Decisions` gather every node's part (the admin port) or answer with this node's alone
    /// (the peer listener, asked by the node that gathers).
    gathers: bool,
}

/// `routes` with the admin services serving provides, for the node's admin port.
pub fn with_admin_routes(
    routes: tonic::service::Routes,
    node: Node,
    logs: Arc<LogHub>,
    state: ServingState,
) -> tonic::service::Routes {
    routes.add_service(ServingServer::new(LogsService { node, logs, state, gathers: true }))
}

/// The services other nodes ask of this one on its peer listener: `Logs` (and `Decisions`) of this node alone.
pub fn peer_routes(node: Node, logs: Arc<LogHub>, state: ServingState) -> tonic::service::Routes {
    tonic::service::Routes::default().add_service(ServingServer::new(LogsService { node, logs, state, gathers: false }))
}

/// The most a `Logs` request gathers from the files of all its revisions before it sends them (lines: the
/// logs' own `MAX_TAIL_LINES`).
const MAX_LOG_BACKLOG_BYTES: usize = 8 << 20;

/// Sends `kept` (oldest first), then what each revision's follower receives as it comes, merged, holding `permit`
/// (a place among the node's admin streams, [`sluice_broker::admin_stream_permit`]) until the
/// client goes away (noticed at once, not at the next item: a follow of an idle revision would otherwise keep its
/// tasks for ever). `message` makes an item of the stream from a revision's name and what its follower
/// received (or how many items it missed by lagging), or skips it.
fn send_kept_then_followed<T, M, F>(
    permit: OwnedSemaphorePermit,
    tx: mpsc::Sender<Result<M, Status>>,
    kept: Vec<M>,
    followers: Vec<(String, broadcast::Receiver<T>)>,
    message: F,
) where
    T: Clone + Send + 'static,
    M: Send + 'static,
    F: Fn(&str, Result<T, u64>) -> Option<M> + Send + Sync + 'static,
{
    let message = Arc::new(message);
    tokio::spawn(async move {
        // The stream's place among the node's admin streams, until its client goes (or, not following, its items
        // are sent).
        let _permit = permit;
        for item in kept {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        let (merged_tx, mut merged) = mpsc::channel::<M>(256);
        // Dropped (and so aborted) with this task.
        let mut following = tokio::task::JoinSet::new();
        for (revision, mut follower) in followers {
            let merged_tx = merged_tx.clone();
            let message = message.clone();
            following.spawn(async move {
                loop {
                    let received = match follower.recv().await {
                        Ok(item) => Ok(item),
                        Err(broadcast::error::RecvError::Lagged(missed)) => Err(missed),
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if let Some(item) = message(&revision, received)
                        && merged_tx.send(item).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
        drop(merged_tx);
        loop {
            let item = tokio::select! {
                item = merged.recv() => item,
                _ = tx.closed() => return,
            };
            let Some(item) = item else { return };
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
    });
}

fn decision_message(node_id: NodeId, revision: &str, d: &Decision) -> AutoscalerDecision {
    AutoscalerDecision {
        node_id,
        error: String::new(),
        revision: revision.to_string(),
        at_ms: d.at_ms,
        desired: d.desired,
        reason: d.reason.as_str().to_string(),
        panicking: d.panicking,
        ready: d.ready,
        instances: d.instances,
        held: d.held,
        stable_metric: d.stable_metric,
        panic_metric: d.panic_metric,
        backlog_events: d.backlog.events,
        backlog_ordered_keys: d.backlog.ordered_keys,
        metric_wanted: d.metric_wanted,
        panic_wanted: d.panic_wanted,
        backlog_wanted: d.backlog_wanted,
        excess_burst_capacity: d.excess_burst_capacity,
    }
}

/// What a Logs or Decisions request names: the revisions of a Service or a Configuration (by their label), or
/// one Revision.
#[derive(Debug, PartialEq, Eq)]
enum Named {
    Labelled(&'static str),
    Revision,
}

/// Checks what a request names. The namespace and name must be DNS-1123 labels, as every Service's,
/// Configuration's and Revision's are: they also name files under the node's log directory, so nothing else may
/// reach a path.
fn named(kind: &str, namespace: &str, name: &str) -> Result<Named, Status> {
    for (field, value) in [("namespace", namespace), ("name", name)] {
        if !sluice_controller::validate::is_dns_label(value) {
            return Err(Status::invalid_argument(format!(
                "{field}: {value:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)"
            )));
        }
    }
    match kind {
        "" | "Service" => Ok(Named::Labelled(SERVICE_LABEL)),
        "Configuration" => Ok(Named::Labelled(CONFIGURATION_LABEL)),
        "Revision" => Ok(Named::Revision),
        other => {
            Err(Status::invalid_argument(format!("kind: {other:?} is not one of Service, Configuration, Revision")))
        }
    }
}

/// kubectl's words for an object that is not there (`services.serving.knative.dev "nope" not found`), as
/// `sluice get` says them. Regression: `sluice logs ksvc nope` said the Service had no revisions.
fn not_found(kind: &str, name: &str) -> Status {
    let plural = match kind {
        "Configuration" => "configurations",
        "Revision" => "revisions",
        _ => "services",
    };
    sluice_proto::errors::error_status(
        sluice_proto::errors::ErrorCode::ResourceNotFound,
        format!("{plural}.serving.knative.dev \"{name}\" not found"),
    )
}

/// The revisions whose output a request asks for, oldest first (a Revision only if it exists), or why the
/// request is refused.
fn revisions(node: &Node, kind: &str, namespace: &str, name: &str) -> Result<Vec<String>, Status> {
    let named = named(kind, namespace, name)?;
    let kind = if kind.is_empty() { "Service" } else { kind };
    let key = ResourceKey { kind: kind.into(), namespace: namespace.into(), name: name.into() };
    if node.resource(&key).is_none() {
        return Err(not_found(kind, name));
    }
    let label = match named {
        Named::Labelled(label) => label,
        Named::Revision => return Ok(vec![name.to_string()]),
    };
    let mut found: Vec<(i64, String)> = node
        .resources("Revision")
        .into_iter()
        .filter(|(key, _)| key.namespace == namespace)
        .filter_map(|(key, json)| {
            let object: Value = serde_json::from_str(&json).ok()?;
            let labels = object.pointer("/metadata/labels")?;
            (labels.get(label).and_then(Value::as_str) == Some(name)).then(|| {
                let generation = labels
                    .get("serving.knative.dev/configurationGeneration")
                    .and_then(Value::as_str)
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(0);
                (generation, key.name)
            })
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, name)| name).collect())
}

#[tonic::async_trait]
impl Serving for LogsService {
    type LogsStream = tokio_stream::wrappers::ReceiverStream<Result<LogLine, Status>>;
    type DecisionsStream = tokio_stream::wrappers::ReceiverStream<Result<AutoscalerDecision, Status>>;

    async fn decisions(&self, request: Request<DecisionsRequest>) -> Result<Response<Self::DecisionsStream>, Status> {
        let request = request.into_inner();
        let namespace = if request.namespace.is_empty() { "default".to_string() } else { request.namespace };
        let names = revisions(&self.node, &request.kind, &namespace, &request.name)?;
        let handles: Vec<(String, Arc<crate::revision::RevisionHandle>)> = {
            let running = self.state.shared.revisions.read().map_err(|_| Status::internal("revisions poisoned"))?;
            names
                .iter()
                .filter_map(|name| Some((name.clone(), running.get(&format!("{namespace}/{name}"))?.clone())))
                .collect()
        };
        if names.is_empty() {
            return Err(Status::not_found(format!("{namespace}/{} has no revisions", request.name)));
        }
        let permit = sluice_broker::admin_stream_permit()?;
        let (tx, rx) = mpsc::channel(256);
        let node_id = self.node.id();
        // Followers subscribe before the kept decisions are read: one may show twice, none is lost.
        let followers: Vec<(String, broadcast::Receiver<Decision>)> = if request.follow {
            handles.iter().map(|(name, handle)| (name.clone(), handle.decision_feed.subscribe())).collect()
        } else {
            Vec::new()
        };
        let kept: Vec<AutoscalerDecision> = handles
            .iter()
            .flat_map(|(name, handle)| handle.decisions().into_iter().map(move |d| decision_message(node_id, name, &d)))
            .collect();
        // A lagging follower skips the decisions it missed: the next one says where the revision is.
        send_kept_then_followed(permit, tx, kept, followers, move |name, decision| {
            decision.ok().map(|decision| decision_message(node_id, name, &decision))
        });
        let only_here = request.this_node_only;
        let asked = DecisionsRequest { namespace, this_node_only: true, ..request };
        let follow = asked.follow;
        Ok(Response::new(self.answer(rx, only_here, follow, move |mut client| {
            let asked = asked.clone();
            async move { client.decisions(asked).await }
        })))
    }

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let request = request.into_inner();
        let namespace = if request.namespace.is_empty() { "default".to_string() } else { request.namespace };
        let revisions = revisions(&self.node, &request.kind, &namespace, &request.name)?;
        if revisions.is_empty() {
            return Err(Status::not_found(format!(
                "{} {namespace}/{} has no revisions",
                if request.kind.is_empty() { "Service" } else { &request.kind },
                request.name
            )));
        }
        let permit = sluice_broker::admin_stream_permit()?;
        let (tx, rx) = mpsc::channel(256);
        // Followers subscribe before the files are read: a line is then shown twice at worst, never lost.
        let followers: Vec<(String, broadcast::Receiver<String>)> = if request.follow {
            revisions.iter().map(|r| (r.clone(), self.logs.follow(&namespace, r))).collect()
        } else {
            Vec::new()
        };
        let node_id = self.node.id();
        // Up to two files of 10 MiB a revision: read on a blocking thread, not on the runtime's workers.
        let (logs, read_namespace, read_revisions) = (self.logs.clone(), namespace.clone(), revisions.clone());
        let tail_lines = request.tail_lines as usize;
        let backlog: Vec<LogLine> = tokio::task::spawn_blocking(move || {
            // One request's lines, over all its revisions, within one budget of lines and bytes. Regression: each
            // revision had its own (10,000 lines), so a Service of many revisions gathered hundreds of MiB per
            // request, held until its client read them.
            let (mut lines_left, mut bytes_left) = (MAX_TAIL_LINES, MAX_LOG_BACKLOG_BYTES);
            let mut backlog = Vec::new();
            for revision in &read_revisions {
                if lines_left == 0 || bytes_left == 0 {
                    break;
                }
                let asked = if tail_lines == 0 { lines_left } else { tail_lines.min(lines_left) };
                let mut newest_first: Vec<String> = Vec::new();
                for line in logs.tail(&read_namespace, revision, asked).into_iter().rev() {
                    let Some(left) = bytes_left.checked_sub(line.len()) else { break };
                    bytes_left = left;
                    newest_first.push(line);
                }
                lines_left -= newest_first.len();
                backlog.extend(newest_first.into_iter().rev().map(|line| LogLine {
                    revision: revision.clone(),
                    line,
                    node_id,
                    error: String::new(),
                }));
            }
            backlog
        })
        .await
        .map_err(|e| Status::internal(format!("reading the revisions' logs: {e}")))?;
        send_kept_then_followed(permit, tx, backlog, followers, move |revision, line| {
            let line = line.unwrap_or_else(|missed| format!("[{missed} lines missed]"));
            Some(LogLine { revision: revision.to_string(), line, node_id, error: String::new() })
        });
        let only_here = request.this_node_only;
        let asked = LogsRequest { namespace, this_node_only: true, ..request };
        let follow = asked.follow;
        Ok(Response::new(self.answer(rx, only_here, follow, move |mut client| {
            let asked = asked.clone();
            async move { client.logs(asked).await }
        })))
    }
}

impl LogsService {
    /// This node's items alone (asked so, or asked on the peer listener), or with every other member's (asked
    /// on its peer listener with `ask`), relayed to the client as [`gather`] says.
    fn answer<M, F, Fut>(
        &self,
        own: mpsc::Receiver<Result<M, Status>>,
        only_here: bool,
        follow: bool,
        ask: F,
    ) -> ReceiverStream<M>
    where
        M: Gathered,
        F: Fn(ServingClient<Channel>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<tonic::Streaming<M>>, Status>> + Send + 'static,
    {
        if only_here || !self.gathers {
            return tokio_stream::wrappers::ReceiverStream::new(own);
        }
        let own_id = self.node.id();
        let peers: Vec<(NodeId, String)> = self
            .node
            .cluster_config()
            .map(|config| config.members.into_iter().filter(|(id, _)| *id != own_id).collect())
            .unwrap_or_default();
        let (tx, gathered) = mpsc::channel(256);
        tokio::spawn(gather(self.node.clone(), own, peers, ask, follow, tx));
        tokio_stream::wrappers::ReceiverStream::new(gathered)
    }
}

/// An item of a stream gathered from every node: it names its node, or says why a node could not be asked.
trait Gathered: Send + 'static {
    fn not_asked(node_id: NodeId, error: String) -> Self;
}

impl Gathered for LogLine {
    fn not_asked(node_id: NodeId, error: String) -> Self {
        LogLine { node_id, error, ..LogLine::default() }
    }
}

impl Gathered for AutoscalerDecision {
    fn not_asked(node_id: NodeId, error: String) -> Self {
        AutoscalerDecision { node_id, error, ..AutoscalerDecision::default() }
    }
}

type ReceiverStream<M> = tokio_stream::wrappers::ReceiverStream<Result<M, Status>>;

/// Relays this node's items and then each peer's in turn, or, following, all of them at once as they come;
/// until the client goes away.
async fn gather<M, F, Fut>(
    node: Node,
    mut own: mpsc::Receiver<Result<M, Status>>,
    peers: Vec<(NodeId, String)>,
    ask: F,
    follow: bool,
    tx: mpsc::Sender<Result<M, Status>>,
) where
    M: Gathered,
    F: Fn(ServingClient<Channel>) -> Fut,
    Fut: Future<Output = Result<Response<tonic::Streaming<M>>, Status>>,
{
    let relay_own = async {
        loop {
            let item = tokio::select! {
                item = own.recv() => item,
                _ = tx.closed() => return false,
            };
            let Some(item) = item else { return true };
            if tx.send(item).await.is_err() {
                return false;
            }
        }
    };
    if follow {
        let relays = peers.iter().map(|(peer, addr)| relay_peer(&node, *peer, addr, &ask, Until::ClientLeaves, &tx));
        futures::future::join(relay_own, futures::future::join_all(relays)).await;
        return;
    }
    if !relay_own.await {
        return;
    }
    for (peer, addr) in &peers {
        if !relay_peer(&node, *peer, addr, &ask, Until::PeerEndsOrFallsSilentFor(PEER_ANSWER_TIMEOUT), &tx).await {
            return;
        }
    }
}

/// How long a peer's relay may last.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Until {
    /// Following: as long as the client reads, however long the peer has nothing to say.
    ClientLeaves,
    /// Not following, the peers relayed one after another: a peer silent this long before its answer ends
    /// (alive, so keepalive does not end it, but stuck) is named and left, so that it holds up neither the
    /// client nor the peers after it ([`PEER_ANSWER_TIMEOUT`]).
    PeerEndsOrFallsSilentFor(Duration),
}

/// Relays what `peer` answers `ask` with; a peer that cannot be asked is named in an item saying why. A peer
/// that does not know the revisions yet (its copy of the resources behind) has none to give. Says whether the
/// client is still there.
async fn relay_peer<M, F, Fut>(
    node: &Node,
    peer: NodeId,
    addr: &str,
    ask: &F,
    until: Until,
    tx: &mpsc::Sender<Result<M, Status>>,
) -> bool
where
    M: Gathered,
    F: Fn(ServingClient<Channel>) -> Fut,
    Fut: Future<Output = Result<Response<tonic::Streaming<M>>, Status>>,
{
    let not_asked = |error: String| {
        tracing::warn!(peer, %addr, %error, "serving: a node could not be asked for its part");
        Ok(M::not_asked(peer, error))
    };
    let channel = match node.peer_channel(addr) {
        Ok(channel) => channel,
        Err(e) => return tx.send(not_asked(e.to_string())).await.is_ok(),
    };
    let items = match tokio::time::timeout(PEER_ANSWER_TIMEOUT, ask(ServingClient::new(channel))).await {
        Ok(Ok(answer)) => answer.into_inner(),
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => return true,
        Ok(Err(status)) => {
            return tx.send(not_asked(format!("{:?}: {}", status.code(), status.message()))).await.is_ok();
        }
        Err(_) => return tx.send(not_asked(format!("no answer within {PEER_ANSWER_TIMEOUT:?}"))).await.is_ok(),
    };
    relay_answer(peer, addr, items, until, tx).await
}

/// Relays a peer's answer, item by item, until it ends (or, not following, falls silent) or the client goes
/// away; an error ends it, named in an item. Says whether the client is still there.
async fn relay_answer<M>(
    peer: NodeId,
    addr: &str,
    mut items: impl futures::Stream<Item = Result<M, Status>> + Unpin,
    until: Until,
    tx: &mpsc::Sender<Result<M, Status>>,
) -> bool
where
    M: Gathered,
{
    use futures::StreamExt;
    let not_asked = |error: String| {
        tracing::warn!(peer, %addr, %error, "serving: a node's part ended early");
        Ok(M::not_asked(peer, error))
    };
    loop {
        let next = async {
            match until {
                Until::ClientLeaves => Some(items.next().await),
                Until::PeerEndsOrFallsSilentFor(silence) => tokio::time::timeout(silence, items.next()).await.ok(),
            }
        };
        let next = tokio::select! {
            next = next => next,
            _ = tx.closed() => return false,
        };
        let item = match next {
            Some(Some(Ok(item))) => Ok(item),
            Some(None) => return true,
            // The answer ends with its error.
            Some(Some(Err(status))) => {
                return tx.send(not_asked(format!("{:?}: {}", status.code(), status.message()))).await.is_ok();
            }
            None => {
                let silence = match until {
                    Until::PeerEndsOrFallsSilentFor(silence) => silence,
                    Until::ClientLeaves => Duration::ZERO,
                };
                let silent = not_asked(format!("silent for {silence:?} before its answer ended"));
                return tx.send(silent).await.is_ok();
            }
        };
        if tx.send(item).await.is_err() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[test]
    fn a_request_names_a_service_configuration_or_revision_by_dns_labels() {
        let cases = [
            ("", "default", "hello", Some(Named::Labelled(SERVICE_LABEL))),
            ("Service", "default", "hello", Some(Named::Labelled(SERVICE_LABEL))),
            ("Configuration", "team-a", "hello", Some(Named::Labelled(CONFIGURATION_LABEL))),
            ("Revision", "default", "hello-00001", Some(Named::Revision)),
            ("Revision", "../../../../var/log", "dpkg", None),
            ("Revision", "default", "../../etc/passwd", None),
            ("Revision", "default", "a/b", None),
            ("Service", "", "hello", None),
            ("Service", "default", "", None),
            ("Service", "Default", "hello", None),
            ("Pod", "default", "hello", None),
        ];
        for (kind, namespace, name, expected) in cases {
            let got = named(kind, namespace, name);
            match expected {
                Some(expected) => assert_eq!(got.ok(), Some(expected), "{kind} {namespace}/{name}"),
                None => assert_eq!(
                    got.map_err(|status| status.code()).err(),
                    Some(tonic::Code::InvalidArgument),
                    "{kind} {namespace}/{name}"
                ),
            }
        }
    }

    /// Regression: a follow of an idle revision kept its tasks (and its subscription) after the client went
    /// away, until a line was next logged, which for a deleted revision is never.
    #[tokio::test]
    async fn a_follow_ends_when_its_client_goes_away_though_nothing_is_logged() {
        let (live, _) = broadcast::channel::<String>(4);
        let (tx, mut rx) = mpsc::channel(4);
        let kept = vec![LogLine { revision: "hello-00001".into(), line: "started".into(), ..LogLine::default() }];
        let streams = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = streams.clone().try_acquire_owned().expect("room");
        send_kept_then_followed(permit, tx, kept, vec![("hello-00001".into(), live.subscribe())], |revision, line| {
            line.ok().map(|line| LogLine { revision: revision.to_string(), line, ..LogLine::default() })
        });
        assert_eq!(rx.recv().await.map(|line| line.map(|l| l.line).ok()), Some(Some("started".to_string())));
        assert_eq!(live.receiver_count(), 1, "followed");
        assert_eq!(streams.available_permits(), 0, "the follow holds its place among the admin streams");
        drop(rx);
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while live.receiver_count() > 0 || streams.available_permits() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the follower ends once the client is gone, and gives its place back");
    }

    fn line(text: &str) -> Result<LogLine, Status> {
        Ok(LogLine { node_id: 2, line: text.into(), ..LogLine::default() })
    }

    /// What the client received: each line, or the error its item names.
    fn received(rx: &mut mpsc::Receiver<Result<LogLine, Status>>) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(item) = rx.try_recv() {
            let item = item.expect("relayed items are Ok");
            got.push(if item.error.is_empty() { item.line } else { format!("error: {}", item.error) });
        }
        got
    }

    #[tokio::test]
    async fn a_peers_answer_is_relayed_in_order_to_its_end_or_its_error() {
        for until in [Until::ClientLeaves, Until::PeerEndsOrFallsSilentFor(PEER_ANSWER_TIMEOUT)] {
            let (tx, mut rx) = mpsc::channel(8);
            let answer = futures::stream::iter([line("a"), line("b")]);
            assert!(relay_answer(2, "peer:1", answer, until, &tx).await, "the client is still there");
            assert_eq!(received(&mut rx), ["a", "b"]);

            let broken = futures::stream::iter([line("a"), Err(Status::unavailable("gone")), line("never")]);
            assert!(relay_answer(2, "peer:1", broken, until, &tx).await);
            assert_eq!(received(&mut rx), ["a", "error: Unavailable: gone"], "{until:?}: nothing after the error");
        }
    }

    /// Regression: not following, a peer that answered and then fell silent (alive, so keepalive did not end
    /// it) held `sluice logs` and `describe` forever, and the peers after it.
    #[tokio::test]
    async fn not_following_a_peer_silent_before_its_answer_ends_is_named_and_left() {
        let (tx, mut rx) = mpsc::channel(8);
        let stuck = futures::stream::iter([line("a")]).chain(futures::stream::pending());
        let until = Until::PeerEndsOrFallsSilentFor(Duration::from_millis(50));
        let relayed = tokio::time::timeout(Duration::from_secs(10), relay_answer(2, "peer:1", stuck, until, &tx))
            .await
            .expect("a silent peer is left");
        assert!(relayed, "the client is still there, so the next peer is asked");
        assert_eq!(received(&mut rx), ["a", "error: silent for 50ms before its answer ended"]);
    }

    #[tokio::test]
    async fn following_a_silent_peer_ends_when_the_client_goes_away() {
        let (tx, mut rx) = mpsc::channel(8);
        let quiet = futures::stream::iter([line("a")]).chain(futures::stream::pending());
        let relay = tokio::spawn(async move { relay_answer(2, "peer:1", quiet, Until::ClientLeaves, &tx).await });
        let first = rx.recv().await.map(|item| item.map(|l| l.line).ok());
        assert_eq!(first, Some(Some("a".to_string())));
        drop(rx);
        let ended = tokio::time::timeout(Duration::from_secs(10), relay).await.expect("the relay ends");
        assert!(!ended.expect("the relay task"), "it says the client went away");
    }
}
