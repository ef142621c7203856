//! The `sluice.admin.v1.Serving` admin service: `Logs`, the output of a Service's instances on this node.

use std::sync::Arc;

use serde_json::Value;
use sluice_broker::Node;
use sluice_controller::serving::{CONFIGURATION_LABEL, SERVICE_LABEL};
use sluice_proto::admin::serving_server::{Serving, ServingServer};
use sluice_proto::admin::{LogLine, LogsRequest};
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use crate::logs::LogHub;

struct LogsService {
    node: Node,
    logs: Arc<LogHub>,
}

/// `routes` with the admin services serving provides, for the node's admin port.
pub fn with_admin_routes(routes: tonic::service::Routes, node: Node, logs: Arc<LogHub>) -> tonic::service::Routes {
    routes.add_service(ServingServer::new(LogsService { node, logs }))
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
        tokio::spawn(async move {
            for line in backlog {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            let (merged_tx, mut merged) = mpsc::channel::<LogLine>(256);
            for (revision, mut follower) in followers {
                let merged_tx = merged_tx.clone();
                tokio::spawn(async move {
                    loop {
                        let line = match follower.recv().await {
                            Ok(line) => line,
                            Err(broadcast::error::RecvError::Lagged(missed)) => format!("[{missed} lines missed]"),
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        if merged_tx.send(LogLine { revision: revision.clone(), line }).await.is_err() {
                            return;
                        }
                    }
                });
            }
            drop(merged_tx);
            while let Some(line) = merged.recv().await {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
