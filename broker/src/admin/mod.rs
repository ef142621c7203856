//! The admin gRPC API (`sluice.admin.v1`): cluster init and status, and the
//! log's append/read calls. Errors map to gRPC codes: definite refusals that
//! wrote nothing are `FAILED_PRECONDITION`, `RESOURCE_EXHAUSTED`,
//! `INVALID_ARGUMENT` or `NOT_FOUND`; `UNAVAILABLE` may or may not have
//! written (the caller must not assume either).

pub(crate) mod events;

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_proto::admin::cluster_server::Cluster;
use sluice_proto::admin::log_server::Log;
use sluice_proto::admin::{
    AddNodeReply, AddNodeRequest, AppendReply, AppendRequest, GroupStatus, InitReply, InitRequest, MemberStatus,
    OffsetForTimeReply, OffsetForTimeRequest, ReadReply, ReadRequest, Record, RemoveNodeReply, RemoveNodeRequest,
    ReplicaStatus, StatusReply, StatusRequest, TransferLeaderReply, TransferLeaderRequest,
};
use tonic::{Request, Response, Status};

use sluice_proto::admin::resources_server::Resources;
use sluice_proto::admin::{
    ApplyResourceReply, ApplyResourceRequest, DeleteResourceReply, ListResourcesRequest, ResourceEvent, ResourceList,
    ResourceObject, ResourceRef, WatchResourcesRequest, resource_event,
};

use crate::admin_errors::{ErrorCode, error_status};
use crate::command::cluster_config::ClusterConfig;
use crate::command::{NodeId, ResourceKey, ResourceRecord};
use crate::error::BrokerError;
use crate::node::Node;
use sluice_controller::model::KINDS;
use sluice_controller::serving::children::template_name_collision;
use sluice_controller::status::{World, with_status};
use sluice_controller::validate_object_with;

pub(crate) struct AdminService {
    node: Node,
    /// Where this node's ingress is reached (Broker and Channel addresses in status); status is computed
    /// against it, and the current CA, per call.
    ingress_base: String,
}

impl AdminService {
    pub(crate) fn new(node: Node, ingress_base: String) -> Self {
        Self { node, ingress_base }
    }

    /// Every resource object, parsed (the world status is computed from).
    fn all_objects(&self) -> Vec<serde_json::Value> {
        sluice_controller::model::world_kinds()
            .flat_map(|kind| self.node.resources(kind))
            .filter_map(|(_, json)| serde_json::from_str(&json).ok())
            .collect()
    }
}

pub fn status_of(error: BrokerError) -> Status {
    let message = error.to_string();
    let code = match error {
        BrokerError::InvalidClusterConfig(_)
        | BrokerError::InvalidStream { .. }
        | BrokerError::InvalidCursor { .. } => ErrorCode::InvalidArgument,
        BrokerError::AppendTooLarge { .. } => ErrorCode::TooLarge,
        BrokerError::NoSuchPartition { .. } | BrokerError::NoSuchGroup { .. } => ErrorCode::NoSuchPartition,
        BrokerError::NoSuchMember(_) => ErrorCode::NoSuchMember,
        BrokerError::MembershipRefused(_) => ErrorCode::MembershipRefused,
        BrokerError::AlreadyInitialized { .. } => ErrorCode::AlreadyInitialized,
        BrokerError::NotInitialized => ErrorCode::NotInitialized,
        BrokerError::NoLeader { .. } => ErrorCode::NoLeader,
        BrokerError::QueueFull { .. } => ErrorCode::QueueFull,
        BrokerError::Raft { .. }
        | BrokerError::Bug { .. }
        | BrokerError::InvalidRaftConfig { .. }
        | BrokerError::Storage(_)
        | BrokerError::Codec(_)
        // A disk that fails a read or a write, or a node that cannot start its parts, is not fixed by a retry
        // (every unlisted error used to be UNAVAILABLE, so a storage fault read as "try again"; HTTP ingress
        // answers the same errors 500).
        | BrokerError::Io { .. }
        | BrokerError::DataDir { .. }
        | BrokerError::Listen { .. }
        | BrokerError::PeerAddress { .. } => ErrorCode::Internal,
        // What passes: a leader lost mid-write, a forward that failed, a node stopping or not a member yet.
        BrokerError::ForwardFailed { .. }
        | BrokerError::Indeterminate { .. }
        | BrokerError::Interrupted { .. }
        | BrokerError::ShuttingDown
        | BrokerError::NotAMember(_)
        | BrokerError::RemovedFromCluster => ErrorCode::Unavailable,
    };
    error_status(code, message)
}

use sluice_cloudevent::clock::now_ms;

/// Admin streams open at once on a node (Tail and Watch here, serving's Logs and Decisions): each holds a task and
/// a buffer (up to 256 events, or 1,024 resource changes and a copy of the resources, or 256 lines or
/// decisions); past this a new one is refused until one ends.
pub(crate) const MAX_ADMIN_STREAMS: usize = 256;

static ADMIN_STREAMS: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_STREAMS)));

/// A place among this node's admin streams, held for the stream's life; `RESOURCE_EXHAUSTED` when they are all
/// taken ([`MAX_ADMIN_STREAMS`]).
pub fn admin_stream_permit() -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
    stream_permit(&ADMIN_STREAMS)
}

fn stream_permit(
    streams: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
    streams.clone().try_acquire_owned().map_err(|_| {
        error_status(
            ErrorCode::QueueFull,
            format!(
                "at most {MAX_ADMIN_STREAMS} admin streams (Tail, Watch, Logs, Decisions) at once on a node: end one, or ask another node"
            ),
        )
    })
}

#[tonic::async_trait]
impl Cluster for AdminService {
    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitReply>, Status> {
        let request = request.into_inner();
        let members = request.members.into_iter().map(|m| (m.node_id, m.peer_addr)).collect();
        let config = ClusterConfig::new(request.partitions, members).map_err(status_of)?;
        self.node.init_cluster(config).await.map_err(status_of)?;
        Ok(Response::new(InitReply {}))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let config = self.node.cluster_config();
        let statuses = self.node.status();
        // The freshest heartbeat acknowledgement of each node, over the groups this node leads.
        let mut heartbeat: BTreeMap<NodeId, u64> = BTreeMap::new();
        for g in &statuses {
            for (id, age) in g.heartbeat_age_ms.iter().flatten() {
                if let Some(age) = age {
                    let best = heartbeat.entry(*id).or_insert(*age);
                    *best = (*best).min(*age);
                }
            }
        }
        let groups = statuses.into_iter().map(group_status).collect();
        let alive_ms = self.node.settings().tuning.election_timeout_max_ms;
        let members = match &config {
            Some(config) => {
                let checks = config.members.iter().map(|(id, addr)| {
                    let (id, addr) = (*id, addr.clone());
                    let dial = self.node.peer_dial_addr(&addr).to_string();
                    let tls = self.node.settings().tls.clone();
                    let age = heartbeat.get(&id).copied();
                    let initial = config.is_initial_member(id);
                    let own = id == self.node.id();
                    let published = self.node.has_published(id);
                    async move {
                        let (reachable, checked_by) = if own {
                            (true, "self")
                        } else if age.is_some_and(|age| age <= alive_ms) {
                            (true, "heartbeat")
                        } else {
                            (can_connect(&dial, &addr, tls.as_ref()).await, "connect")
                        };
                        MemberStatus {
                            node_id: id,
                            peer_addr: addr,
                            reachable,
                            checked_by: checked_by.to_string(),
                            heartbeat_age_ms: age,
                            initial,
                            published,
                        }
                    }
                });
                futures::future::join_all(checks).await
            }
            None => Vec::new(),
        };
        Ok(Response::new(StatusReply {
            node_id: self.node.id(),
            initialized: config.is_some(),
            partitions: config.map(|c| c.partitions).unwrap_or(0),
            groups,
            members,
            removed: self.node.is_removed(),
        }))
    }

    async fn add_node(&self, request: Request<AddNodeRequest>) -> Result<Response<AddNodeReply>, Status> {
        let request = request.into_inner();
        if request.node_id == 0 {
            return Err(error_status(ErrorCode::InvalidArgument, "node_id: must be a positive node id"));
        }
        if request.peer_addr.is_empty() {
            return Err(error_status(ErrorCode::InvalidArgument, "peer_addr: the new node's --peer-listen host:port"));
        }
        self.node.add_node(request.node_id, request.peer_addr).await.map_err(status_of)?;
        Ok(Response::new(AddNodeReply {}))
    }

    async fn remove_node(&self, request: Request<RemoveNodeRequest>) -> Result<Response<RemoveNodeReply>, Status> {
        self.node.remove_node(request.into_inner().node_id).await.map_err(status_of)?;
        Ok(Response::new(RemoveNodeReply {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderReply>, Status> {
        let request = request.into_inner();
        self.node.transfer_leader(request.group_id, request.to_node_id).await.map_err(status_of)?;
        Ok(Response::new(TransferLeaderReply { leader_id: request.to_node_id }))
    }
}

/// How long a status call waits to connect to a member it has no heartbeat from.
const CONNECT_CHECK: Duration = Duration::from_millis(500);

/// Whether a gRPC (HTTP/2) connection to `addr` opens within [`CONNECT_CHECK`] (over mutual TLS when the
/// node's transport is encrypted: a peer port refuses plaintext then).
async fn can_connect(dial: &str, addr: &str, tls: Option<&sluice_security::Tls>) -> bool {
    if let Some(tls) = tls {
        return sluice_security::dial(dial, sluice_security::host_of(addr), tls, CONNECT_CHECK).await.is_ok();
    }
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{dial}")) else {
        return false;
    };
    let endpoint = endpoint.connect_timeout(CONNECT_CHECK).timeout(CONNECT_CHECK);
    matches!(tokio::time::timeout(CONNECT_CHECK, endpoint.connect()).await, Ok(Ok(_)))
}

fn group_status(g: crate::node::GroupStatus) -> GroupStatus {
    let lag_known = g.replication.is_some();
    let last_log = g.last_log_index.unwrap_or(0);
    let replicas = g
        .voters
        .iter()
        .map(|id| (*id, true))
        .chain(g.learners.iter().map(|id| (*id, false)))
        .map(|(id, voter)| {
            let matched = g.replication.as_ref().and_then(|r| r.get(&id).copied().flatten());
            let known = g.replication.as_ref().is_some_and(|r| r.contains_key(&id));
            ReplicaStatus {
                node_id: id,
                voter,
                matched_index: matched,
                lag: known.then(|| last_log.saturating_sub(matched.unwrap_or(0))),
                heartbeat_age_ms: g.heartbeat_age_ms.as_ref().and_then(|h| h.get(&id).copied().flatten()),
            }
        })
        .collect();
    GroupStatus {
        group_id: g.group,
        name: g.name,
        leader_id: g.leader,
        term: g.term,
        committed_index: g.committed_index,
        applied_index: g.applied_index,
        last_log_index: g.last_log_index,
        purged_index: g.purged_index,
        snapshot_index: g.snapshot_index,
        voters: g.voters,
        state: g.state,
        learners: g.learners,
        lag_known,
        replicas,
    }
}

#[tonic::async_trait]
impl Log for AdminService {
    async fn append(&self, request: Request<AppendRequest>) -> Result<Response<AppendReply>, Status> {
        let request = request.into_inner();
        let count = request.payloads.len() as u64;
        if count == 0 {
            return Err(error_status(ErrorCode::InvalidArgument, "payloads: at least one record is required"));
        }
        let appended = self
            .node
            .append(&request.stream, request.partition, request.payloads, now_ms(), None)
            .await
            .map_err(status_of)?;
        let first = appended.first_offset;
        Ok(Response::new(AppendReply { offsets: (first..first + count).collect() }))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        let request = request.into_inner();
        let batch = self
            .node
            .read(
                &request.stream,
                request.partition,
                request.from_offset,
                request.max_records as usize,
                request.max_bytes as usize,
            )
            .map_err(status_of)?;
        Ok(Response::new(ReadReply {
            records: batch
                .records
                .into_iter()
                .map(|r| Record { offset: r.offset, arrival_ms: r.arrival_ms, payload: r.payload })
                .collect(),
            end_offset: batch.end_offset,
            start_offset: batch.start_offset,
        }))
    }

    async fn offset_for_time(
        &self,
        request: Request<OffsetForTimeRequest>,
    ) -> Result<Response<OffsetForTimeReply>, Status> {
        let request = request.into_inner();
        let offset =
            self.node.offset_for_time(&request.stream, request.partition, request.time_ms).map_err(status_of)?;
        Ok(Response::new(OffsetForTimeReply { offset }))
    }
}

/// Validates an object as Knative's webhook would (against the stored one,
/// for immutable fields) and defaults its namespace to `default`.
pub fn resource_record(object_json: &str, node: &Node) -> Result<ResourceRecord, Status> {
    checked_record(object_json, node).map(|(record, _)| record)
}

/// How many times Apply checks and writes an object that keeps changing under it before it answers
/// `RESOURCE_CONFLICT`.
const APPLY_ATTEMPTS: usize = 3;

/// [`resource_record`], with the `resourceVersion` of the stored object it was checked against (`None`: there
/// was none), for a write conditional on it.
fn checked_record(object_json: &str, node: &Node) -> Result<(ResourceRecord, Option<u64>), Status> {
    let object: serde_json::Value = serde_json::from_str(object_json)
        .map_err(|e| error_status(ErrorCode::InvalidResource, format!("object: not JSON: {e}")))?;
    // `field:` with nothing after it is an absent field, for the validator and for every reader after it; the
    // namespace is `default` when none is given (admission does both; the stored object is read once the key
    // is known).
    let object = sluice_controller::admission::admitted(object, None);
    let key = ResourceKey {
        kind: object.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string(),
        namespace: object.pointer("/metadata/namespace").and_then(|n| n.as_str()).unwrap_or_default().to_string(),
        name: object.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default().to_string(),
    };
    let existing: Option<serde_json::Value> = node.resource(&key).and_then(|json| serde_json::from_str(&json).ok());
    let features = &node.settings().serving_features;
    let object = sluice_controller::admission::admitted_with(object, existing.as_ref(), features);
    if let Err(errors) = validate_object_with(&object, existing.as_ref(), features) {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(error_status(ErrorCode::InvalidResource, text.join("; ")));
    }
    if let Some(template_name) = object.pointer("/spec/template/metadata/name").and_then(|n| n.as_str()) {
        let revision_key =
            ResourceKey { kind: "Revision".into(), namespace: key.namespace.clone(), name: template_name.to_string() };
        let revision: Option<serde_json::Value> =
            node.resource(&revision_key).and_then(|json| serde_json::from_str(&json).ok());
        if let Some(collision) = template_name_collision(&object, revision.as_ref()) {
            return Err(error_status(ErrorCode::InvalidResource, collision.to_string()));
        }
    }
    let uid = format!("{:032x}", rand::random::<u128>());
    let uid = format!("{}-{}-{}-{}-{}", &uid[..8], &uid[8..12], &uid[12..16], &uid[16..20], &uid[20..]);
    let applied_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let checked_version = existing.as_ref().map(crate::resources::resource_version);
    Ok((ResourceRecord { key, json: object.to_string(), uid, applied_at }, checked_version))
}

/// Changes a watcher may fall behind by before the server waits for it.
const WATCH_BUFFER: usize = 1024;

/// The events that turn `before` into `after`.
pub(crate) fn diff_resources(
    before: &std::collections::BTreeMap<ResourceKey, String>,
    after: &std::collections::BTreeMap<ResourceKey, String>,
) -> Vec<ResourceEvent> {
    let event = |kind: resource_event::Type, key: &ResourceKey, json: &String| ResourceEvent {
        r#type: kind as i32,
        r#ref: Some(ResourceRef { kind: key.kind.clone(), namespace: key.namespace.clone(), name: key.name.clone() }),
        object_json: json.clone(),
    };
    let mut events = Vec::new();
    for (key, json) in after {
        match before.get(key) {
            None => events.push(event(resource_event::Type::Added, key, json)),
            Some(old) if old != json => events.push(event(resource_event::Type::Modified, key, json)),
            Some(_) => {}
        }
    }
    for (key, json) in before {
        if !after.contains_key(key) {
            events.push(event(resource_event::Type::Deleted, key, json));
        }
    }
    events
}

fn resource_key(reference: ResourceRef) -> ResourceKey {
    let namespace = if reference.namespace.is_empty() { "default".to_string() } else { reference.namespace };
    ResourceKey { kind: reference.kind, namespace, name: reference.name }
}

#[tonic::async_trait]
impl Resources for AdminService {
    async fn apply(&self, request: Request<ApplyResourceRequest>) -> Result<Response<ApplyResourceReply>, Status> {
        // Regression: a node never initialised answered "no leader, retry" (apply) or "No resources found".
        self.node.check_initialised().map_err(status_of)?;
        let request = request.into_inner();
        let (record, checked_version) = checked_record(&request.object_json, &self.node)?;
        let key = record.key.clone();
        if request.dry_run {
            // What Apply would store, from this node's copy of the object; nothing is proposed.
            let existing: Option<serde_json::Value> =
                self.node.resource(&key).and_then(|json| serde_json::from_str(&json).ok());
            let incoming: serde_json::Value = serde_json::from_str(&record.json)
                .map_err(|e| error_status(ErrorCode::InvalidResource, format!("object: not JSON: {e}")))?;
            let resource_version = existing.as_ref().map_or(0, crate::resources::resource_version);
            let (merged, outcome) = sluice_controller::meta::merge_for_apply_keeping_owned(
                existing.as_ref(),
                incoming,
                &record.uid,
                &record.applied_at,
                resource_version,
            );
            return Ok(Response::new(ApplyResourceReply {
                r#ref: Some(ResourceRef { kind: key.kind, namespace: key.namespace, name: key.name }),
                outcome: outcome.as_str().to_string(),
                object_json: merged.to_string(),
            }));
        }
        // Written only over the object it was checked against: when another apply landed first, or this node's
        // copy was behind, catch up with the metadata group and check again.
        let mut attempt = (record, checked_version);
        let mut attempts = 1;
        let outcome = loop {
            let (record, checked_version) = attempt;
            if let Some(outcome) =
                self.node.put_resource_if_version(record, checked_version).await.map_err(status_of)?
            {
                break outcome;
            }
            metrics::counter!("sluice_resource_apply_conflicts_total").increment(1);
            tracing::info!(kind = %key.kind, namespace = %key.namespace, name = %key.name, attempts,
                "the object changed while the apply was checked; checking again");
            if attempts == APPLY_ATTEMPTS {
                return Err(error_status(
                    ErrorCode::ResourceConflict,
                    format!(
                        "{} {}/{} changed while this apply was checked, {APPLY_ATTEMPTS} times: nothing was written; \
                         apply again",
                        key.kind, key.namespace, key.name
                    ),
                ));
            }
            attempts += 1;
            self.node.catch_up_metadata().await.map_err(status_of)?;
            attempt = checked_record(&request.object_json, &self.node)?;
        };
        let object_json = self.node.resource(&key).unwrap_or_default();
        Ok(Response::new(ApplyResourceReply {
            r#ref: Some(ResourceRef { kind: key.kind, namespace: key.namespace, name: key.name }),
            outcome,
            object_json,
        }))
    }

    async fn get(&self, request: Request<ResourceRef>) -> Result<Response<ResourceObject>, Status> {
        self.node.check_initialised().map_err(status_of)?;
        let key = resource_key(request.into_inner());
        let objects = self.all_objects();
        let world = World { objects: &objects };
        let found = self.node.resource(&key).and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok());
        match found {
            Some(object) => Ok(Response::new(ResourceObject {
                object_json: with_status(object, &world, &self.node.status_environment(&self.ingress_base)).to_string(),
            })),
            None => Err(error_status(
                ErrorCode::ResourceNotFound,
                format!("{} {}/{} not found", key.kind, key.namespace, key.name),
            )),
        }
    }

    async fn list(&self, request: Request<ListResourcesRequest>) -> Result<Response<ResourceList>, Status> {
        self.node.check_initialised().map_err(status_of)?;
        let kind = request.into_inner().kind;
        let objects = self.all_objects();
        let world = World { objects: &objects };
        let status_env = self.node.status_environment(&self.ingress_base);
        let objects_json = objects
            .iter()
            .filter(|o| o.get("kind").and_then(|k| k.as_str()) == Some(kind.as_str()))
            .map(|o| with_status(o.clone(), &world, &status_env).to_string())
            .collect();
        Ok(Response::new(ResourceList { objects_json }))
    }

    type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ResourceEvent, Status>> + Send>>;

    async fn watch(&self, request: Request<WatchResourcesRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let kind = request.into_inner().kind;
        let node = self.node.clone();
        let mut changes = node.watch_resources().ok_or_else(|| Status::unavailable("the node is shutting down"))?;
        let permit = admin_stream_permit()?;
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            let _permit = permit;
            let snapshot = |node: &Node| -> std::collections::BTreeMap<ResourceKey, String> {
                KINDS
                    .iter()
                    .filter(|k| kind.is_empty() || k.kind == kind)
                    .flat_map(|k| node.resources(k.kind))
                    .collect()
            };
            let mut known = std::collections::BTreeMap::new();
            loop {
                changes.borrow_and_update();
                let current = snapshot(&node);
                for event in diff_resources(&known, &current) {
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                known = current;
                // The client leaving ends it too, not only a failed send: a kind that does not change sends
                // nothing, and the stream held its place among the admin streams for ever.
                let changed = tokio::select! {
                    changed = changes.changed() => changed,
                    () = tx.closed() => return,
                };
                if changed.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(self.node.until_stopping(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn delete(&self, request: Request<ResourceRef>) -> Result<Response<DeleteResourceReply>, Status> {
        self.node.check_initialised().map_err(status_of)?;
        let key = resource_key(request.into_inner());
        let existed = self.node.delete_resource(key.clone()).await.map_err(status_of)?;
        if !existed {
            return Err(error_status(
                ErrorCode::ResourceNotFound,
                format!("{} {}/{} not found", key.kind, key.namespace, key.name),
            ));
        }
        Ok(Response::new(DeleteResourceReply {}))
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;
    use sluice_proto::errors::error_detail;

    /// Regression (review): Tail and Watch streams had no bound; each holds a task and a buffer.
    #[test]
    fn streams_past_the_bound_are_refused_until_one_ends() {
        let streams = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
        let first = stream_permit(&streams).expect("room");
        let _second = stream_permit(&streams).expect("room");
        let refused = stream_permit(&streams).expect_err("full");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("Tail, Watch, Logs, Decisions"), "{}", refused.message());
        drop(first);
        assert!(stream_permit(&streams).is_ok(), "room again");
    }

    /// Regression: every error the mapping did not list was UNAVAILABLE, so a disk failing a read told the
    /// operator's tool to try again.
    #[test]
    fn a_storage_fault_is_internal_and_what_passes_is_unavailable() {
        let code = |error: BrokerError| error_detail(&status_of(error)).map(|d| d.code);
        let io = BrokerError::Io { context: "reading a record".into(), source: std::io::Error::other("EIO") };
        assert_eq!(code(io), Some(ErrorCode::Internal as u32));
        assert_eq!(code(BrokerError::ShuttingDown), Some(ErrorCode::Unavailable as u32));
        let group = 1;
        assert_eq!(code(BrokerError::Indeterminate { group, reason: "x".into() }), Some(ErrorCode::Unavailable as u32));
        assert_eq!(code(BrokerError::NoLeader { group }), Some(ErrorCode::NoLeader as u32));
    }
}
