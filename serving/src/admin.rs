//! The `sluice.admin.v1.Serving` admin service: `Logs`, the output of a Service's instances on this node, and
//! `Decisions`, what the autoscaler decided for its revisions here and why.

use std::sync::Arc;

use serde_json::Value;
use sluice_broker::Node;
use sluice_controller::serving::{CONFIGURATION_LABEL, SERVICE_LABEL};
use sluice_proto::admin::serving_server::{Serving, ServingServer};
use sluice_proto::admin::{AutoscalerDecision, DecisionsRequest, LogLine, LogsRequest};
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use crate::ServingState;
use crate::logs::LogHub;
use sluice_autoscaler::Decision;

struct LogsService {
    node: Node,
    logs: Arc<LogHub>,
    state: ServingState,
}

/// `routes` with the admin services serving provides, for the node's admin port.
pub fn with_admin_routes(
    routes: tonic::service::Routes,
    node: Node,
    logs: Arc<LogHub>,
    state: ServingState,
) -> tonic::service::Routes {
    routes.add_service(ServingServer::new(LogsService { node, logs, state }))
}

/// Sends `kept` (oldest first), then what each revision's follower receives as it comes, merged, until the
/// client goes away. `message` makes an item of the stream from a revision's name and what its follower
/// received (or how many items it missed by lagging), or skips it.
fn send_kept_then_followed<T, M>(
    tx: mpsc::Sender<Result<M, Status>>,
    kept: Vec<M>,
    followers: Vec<(String, broadcast::Receiver<T>)>,
    message: fn(&str, Result<T, u64>) -> Option<M>,
) where
    T: Clone + Send + 'static,
    M: Send + 'static,
{
    tokio::spawn(async move {
        for item in kept {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        let (merged_tx, mut merged) = mpsc::channel::<M>(256);
        for (revision, mut follower) in followers {
            let merged_tx = merged_tx.clone();
            tokio::spawn(async move {
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
        while let Some(item) = merged.recv().await {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
    });
}

fn decision_message(revision: &str, d: &Decision) -> AutoscalerDecision {
    AutoscalerDecision {
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

/// The revisions whose output a request asks for, oldest first.
fn revisions(node: &Node, kind: &str, namespace: &str, name: &str) -> Vec<String> {
    let label = match kind {
        "" | "Service" => SERVICE_LABEL,
        "Configuration" => CONFIGURATION_LABEL,
        _ => return vec![name.to_string()],
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
    found.into_iter().map(|(_, name)| name).collect()
}

#[tonic::async_trait]
impl Serving for LogsService {
    type LogsStream = tokio_stream::wrappers::ReceiverStream<Result<LogLine, Status>>;
    type DecisionsStream = tokio_stream::wrappers::ReceiverStream<Result<AutoscalerDecision, Status>>;

    async fn decisions(&self, request: Request<DecisionsRequest>) -> Result<Response<Self::DecisionsStream>, Status> {
        let request = request.into_inner();
        let namespace = if request.namespace.is_empty() { "default".to_string() } else { request.namespace };
        let names = revisions(&self.node, &request.kind, &namespace, &request.name);
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
        let (tx, rx) = mpsc::channel(256);
        // Followers subscribe before the kept decisions are read: one may show twice, none is lost.
        let followers: Vec<(String, broadcast::Receiver<Decision>)> = if request.follow {
            handles.iter().map(|(name, handle)| (name.clone(), handle.decision_feed.subscribe())).collect()
        } else {
            Vec::new()
        };
        let kept: Vec<AutoscalerDecision> = handles
            .iter()
            .flat_map(|(name, handle)| handle.decisions().into_iter().map(move |d| decision_message(name, &d)))
            .collect();
        // A lagging follower skips the decisions it missed: the next one says where the revision is.
        send_kept_then_followed(tx, kept, followers, |name, decision| {
            decision.ok().map(|decision| decision_message(name, &decision))
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let request = request.into_inner();
        let namespace = if request.namespace.is_empty() { "default".to_string() } else { request.namespace };
        let revisions = revisions(&self.node, &request.kind, &namespace, &request.name);
        if revisions.is_empty() {
            return Err(Status::not_found(format!(
                "{} {namespace}/{} has no revisions",
                if request.kind.is_empty() { "Service" } else { &request.kind },
                request.name
            )));
        }
        let (tx, rx) = mpsc::channel(256);
        // Followers subscribe before the files are read: a line is then shown twice at worst, never lost.
        let followers: Vec<(String, broadcast::Receiver<String>)> = if request.follow {
            revisions.iter().map(|r| (r.clone(), self.logs.follow(&namespace, r))).collect()
        } else {
            Vec::new()
        };
        let backlog: Vec<LogLine> = revisions
            .iter()
            .flat_map(|revision| {
                self.logs
                    .tail(&namespace, revision, request.tail_lines as usize)
                    .into_iter()
                    .map(|line| LogLine { revision: revision.clone(), line })
            })
            .collect();
        send_kept_then_followed(tx, backlog, followers, |revision, line| {
            let line = line.unwrap_or_else(|missed| format!("[{missed} lines missed]"));
            Some(LogLine { revision: revision.to_string(), line })
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
