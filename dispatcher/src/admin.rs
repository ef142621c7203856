//! The dispatcher's admin gRPC services (`sluice.admin.v1.Consumers`, `sluice.admin.v1.DeadLetters`):
//! consumer status, pause/resume and replay, and dead letters (list, redrive, purge). Served on the node's
//! admin port next to the broker's services; any node answers.
//!
//! Status comes from what the partition dispatchers commit through Raft (offsets and `stats`), so it is at
//! most one commit interval old and survives leader changes. Replays are requests the dispatchers apply
//! (`stats::REPLAY`), so that only a dispatcher ever moves a consumer's offset.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use sluice_broker::IngressSettings;
use sluice_broker::Node;
use sluice_broker::NodeRoutes;
use sluice_broker::ResourceKey;
use sluice_cloudevent::{AttrValue, CloudEvent, EventData};
use sluice_proto::admin::consumers_server::{Consumers, ConsumersServer};
use sluice_proto::admin::dead_letters_server::{DeadLetters, DeadLettersServer};
use sluice_proto::admin::{
    ConsumerRef, ConsumerStatus, DeadLetter, DeadLetterList, ListDeadLettersRequest, PartitionStatus, PurgeReply,
    PurgeRequest, RedriveProgress, RedriveRequest, ReplayReply, ReplayRequest, ReplayTarget, replay_request,
};
use sluice_proto::errors::{ErrorCode, error_status};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::consumer::{
    ANNOTATION_PAUSED, CONSUMER_UID_ATTRIBUTE, ConsumerKind, ConsumerSpec, InitialOffset, ReplyTarget, consumers,
    cursor_name, dead_letter_stream, stream_of,
};
use crate::delivery::sender::Sender;
use crate::delivery::task::{DeliveryContext, Settlement, deliver, now_ms};
use crate::redrive_lease::{RedriveGuard, Redrives};
use crate::stats::{self, CursorStats};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;

mod redrive;
use redrive::Redrive;

/// Most dead letters one `List` returns.
pub(crate) const MAX_LIST: usize = 1000;
/// Most bytes of dead letters one `List` returns (each carries its data twice, raw and in its JSON), under the
/// 4 MiB a gRPC client takes by default; at least one is listed whatever its size.
pub(crate) const MAX_LIST_BYTES: usize = 3 << 20;
/// Most dead letters one `Redrive` call handles per partition (run it again for more).
pub(crate) const MAX_REDRIVE_PER_PARTITION: usize = 10_000;
/// Bytes of dead letters a redrive reads (and holds) at once; at least one letter is read whatever its size.
const REDRIVE_BATCH_BYTES: usize = 8 << 20;
/// How long `Pause` and `Resume` wait for the dispatchers to take them into account.
pub(crate) const PAUSE_WAIT: Duration = Duration::from_secs(10);
/// How long `Replay` with `wait` waits for the dispatchers.
pub(crate) const REPLAY_WAIT: Duration = Duration::from_secs(30);

/// The routes of the dispatcher's admin services for `node`.
pub fn routes(node: Node, ingress_base: String, node_routes: Option<NodeRoutes>) -> tonic::service::Routes {
    let sender = match Sender::with_node_routes(node.settings().tls.clone(), node_routes) {
        Ok(sender) => Some(sender),
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client: redrive to subscribers is unavailable");
            None
        }
    };
    let admin = ConsumersAdmin { node, ingress_base, sender, redrives: Redrives::default() };
    tonic::service::Routes::new(ConsumersServer::new(admin.clone())).add_service(DeadLettersServer::new(admin))
}

#[derive(Clone)]
pub(crate) struct ConsumersAdmin {
    node: Node,
    /// Status and destinations are resolved against it (and the current CA) per call.
    ingress_base: String,
    sender: Option<Sender>,
    redrives: Redrives,
}

/// A consumer as found from its reference.
struct Found {
    kind: ConsumerKind,
    key: ResourceKey,
    object: Value,
    stream: String,
    cursor: String,
    spec: Option<Arc<ConsumerSpec>>,
    reason: String,
}

fn kind_of(reference: &ConsumerRef) -> Result<ConsumerKind, Status> {
    match reference.kind.to_ascii_lowercase().as_str() {
        "" | "trigger" => Ok(ConsumerKind::Trigger),
        "subscription" => Ok(ConsumerKind::Subscription),
        other => Err(error_status(
            ErrorCode::InvalidArgument,
            format!("consumer.kind: {other:?} is neither trigger nor subscription"),
        )),
    }
}

/// A stored object Sluice cannot read back: a bug or a corruption, never worth retrying.
fn corrupt(e: impl std::fmt::Display) -> Status {
    error_status(ErrorCode::Internal, format!("a stored object cannot be read: {e}"))
}

/// The node cannot answer now (shutting down): retry.
fn unavailable(e: impl std::fmt::Display) -> Status {
    error_status(ErrorCode::Unavailable, e.to_string())
}

fn strip_error_attributes(event: &CloudEvent) -> CloudEvent {
    let mut event = event.clone();
    for name in [
        "knativeerrordest",
        "knativeerrorcode",
        "knativeerrordata",
        "sluiceerrorreason",
        "sluicesourceoffset",
        CONSUMER_UID_ATTRIBUTE,
    ] {
        event.attributes.remove(name);
    }
    event
}

/// Whether a letter of the dead-letter stream of a consumer's name is the consumer's own (object `uid`): not when
/// an earlier consumer of that name, deleted since, dead-lettered it. A letter kept before the uid was written
/// (session 62) cannot tell, and counts as the consumer's, as it did. Regression: a Trigger deleted and made again
/// under its name (on another Broker, to another subscriber) listed the old one's letters as its own, and a
/// redrive sent them to its subscriber, or into its Broker.
fn letter_is_ours(event: &CloudEvent, uid: &str) -> bool {
    event.get_str(CONSUMER_UID_ATTRIBUTE).is_none_or(|kept_by| kept_by == uid)
}

/// What `dlq list` says of a letter another consumer of the name kept: before its own reason.
const NOT_OURS: &str = "[dead-lettered by an earlier consumer of this name: never redriven; `dlq purge` removes it]";

impl ConsumersAdmin {
    fn objects(&self) -> Vec<Value> {
        sluice_controller::model::world_kinds()
            .flat_map(|kind| self.node.resources(kind))
            .filter_map(|(_, json)| serde_json::from_str(&json).ok())
            .collect()
    }

    fn find(&self, reference: Option<&ConsumerRef>) -> Result<Found, Status> {
        let reference = reference.ok_or_else(|| error_status(ErrorCode::InvalidArgument, "consumer: required"))?;
        let kind = kind_of(reference)?;
        let namespace = if reference.namespace.is_empty() { "default" } else { reference.namespace.as_str() };
        let key = ResourceKey {
            kind: if kind == ConsumerKind::Trigger { "Trigger" } else { "Subscription" }.to_string(),
            namespace: namespace.to_string(),
            name: reference.name.clone(),
        };
        let json = self.node.resource(&key).ok_or_else(|| {
            error_status(ErrorCode::ConsumerNotFound, format!("{} {namespace}/{} not found", key.kind, reference.name))
        })?;
        let object: Value = serde_json::from_str(&json).map_err(corrupt)?;
        let uid = object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
        let stream = stream_of(kind, &object);
        let cursor = cursor_name(&stream, kind, &reference.name, &uid);
        let (specs, problems) = consumers(
            &self.objects(),
            &self.node.status_environment(&self.ingress_base),
            self.node.settings().default_authorization,
        );
        let spec = specs.into_iter().find(|s| s.cursor == cursor);
        let label = format!("{}/{namespace}/{}", kind.as_str(), reference.name);
        let reason = problems.into_iter().find(|(name, _)| *name == label).map(|(_, r)| r).unwrap_or_default();
        Ok(Found { kind, key, object, stream, cursor, spec, reason })
    }

    /// Where a consumer without a committed offset starts in `partition`, as its dispatcher derives it.
    fn initial_offset(&self, found: &Found, partition: u32) -> Result<u64, Status> {
        match crate::consumer::initial_offset(&found.object).map_err(Status::failed_precondition)? {
            InitialOffset::Earliest => Ok(0),
            InitialOffset::FromCreation { created_ms } => {
                self.node.offset_for_time(&found.stream, partition, created_ms).map_err(sluice_broker::status_of)
            }
        }
    }

    fn status_of(&self, found: &Found) -> Result<ConsumerStatus, Status> {
        let now = now_ms();
        let dead_letters = dead_letter_stream(found.kind, &found.key.namespace, &found.key.name);
        let mut partitions = Vec::new();
        for partition in 0..self.node.partitions() {
            let stored: BTreeMap<String, u64> =
                self.node.committed_offsets(partition).map_err(sluice_broker::status_of)?.into_iter().collect();
            let end_offset = self.node.end_offset(&found.stream, partition).map_err(sluice_broker::status_of)?;
            let start_offset = self.node.start_offset(&found.stream, partition).map_err(sluice_broker::status_of)?;
            // Never committed (new, paused since created, or waiting for its subscriber): where it will start.
            let committed_offset = match stored.get(&found.cursor) {
                Some(offset) => *offset,
                None => self.initial_offset(found, partition)?,
            };
            let backlog = stats::backlog(committed_offset, start_offset, end_offset);
            let counters = CursorStats::from_committed(&found.cursor, &stored);
            let dead = self.node.read(&dead_letters, partition, 0, 1, 0).map_err(sluice_broker::status_of)?;
            // Nothing in flight (paused, or waiting to be read) but a backlog: its oldest is the first event past the
            // committed offset. Regression: a paused Trigger's backlog showed no age at all.
            let oldest_arrival_ms = match counters.oldest_pending_arrival_ms {
                0 if backlog > 0 => self
                    .node
                    .read(&found.stream, partition, committed_offset.max(start_offset), 1, 0)
                    .map_err(sluice_broker::status_of)?
                    .records
                    .first()
                    .map_or(0, |record| record.arrival_ms),
                pending => pending,
            };
            partitions.push(PartitionStatus {
                partition,
                committed_offset,
                end_offset,
                backlog,
                oldest_undelivered_age_ms: match oldest_arrival_ms {
                    0 => 0,
                    arrival => now.saturating_sub(arrival),
                },
                in_flight: counters.in_flight,
                delivered: counters.delivered,
                retried: counters.retried,
                dead_lettered: counters.dead_lettered,
                replay_pending_to: stats::pending_replay(&found.cursor, &stored),
                dead_letter_count: dead.end_offset.saturating_sub(dead.start_offset),
                paused_applied: counters.paused == 1,
            });
        }
        let paused = found
            .object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ANNOTATION_PAUSED))
            .and_then(Value::as_str)
            == Some("true");
        Ok(ConsumerStatus {
            consumer: Some(ConsumerRef {
                kind: found.kind.as_str().to_string(),
                namespace: found.key.namespace.clone(),
                name: found.key.name.clone(),
            }),
            stream: found.stream.clone(),
            cursor: found.cursor.clone(),
            paused,
            dispatchable: found.spec.is_some(),
            reason: found.reason.clone(),
            backlog: partitions.iter().map(|p| p.backlog).sum(),
            partitions,
            subscriber_uri: found.spec.as_ref().map(|s| s.subscriber_uri.clone()).unwrap_or_default(),
        })
    }

    async fn set_paused(&self, reference: Option<&ConsumerRef>, paused: bool) -> Result<ConsumerStatus, Status> {
        let found = self.find(reference)?;
        let mut changes = self.node.watch_resources().ok_or_else(|| unavailable("the node is shutting down"))?;
        // Set on the object as it is when the write applies: an apply landing meanwhile is kept.
        let value = paused.then_some("true");
        let outcome = self
            .node
            .set_resource_annotation(
                found.key.clone(),
                found.object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default(),
                ANNOTATION_PAUSED,
                value,
            )
            .await
            .map_err(sluice_broker::status_of)?;
        if outcome == "absent" {
            return Err(error_status(
                ErrorCode::ConsumerNotFound,
                format!("{} {}/{} was deleted meanwhile", found.key.kind, found.key.namespace, found.key.name),
            ));
        }
        // Answer once every partition's dispatcher has taken the change into account (as this node sees it),
        // so that a pause means nothing new is delivered from then on; or after PAUSE_WAIT with what is known.
        let deadline = tokio::time::Instant::now() + PAUSE_WAIT;
        let mut applied: Vec<_> = (0..self.node.partitions()).filter_map(|p| self.node.watch_applied(p).ok()).collect();
        loop {
            let status = self.status_of(&self.find(reference)?)?;
            let effective = status.paused == paused
                && (!status.dispatchable || status.partitions.iter().all(|p| p.paused_applied == paused));
            if effective || applied.is_empty() {
                return Ok(status);
            }
            let any_partition = futures::future::select_all(applied.iter_mut().map(|rx| Box::pin(rx.changed())));
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(status),
                _ = changes.changed() => {}
                _ = any_partition => {}
            }
        }
    }

    /// At most `limit` of a partition's dead letters, and no more once their stored bytes reach `max_bytes` (at
    /// least one is read).
    fn dead_letters(
        &self,
        found: &Found,
        partition: u32,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, u64, CloudEvent)>, Status> {
        let stream = dead_letter_stream(found.kind, &found.key.namespace, &found.key.name);
        let letters = self.stored_letters(&stream, partition, limit, max_bytes)?;
        Ok(letters
            .into_iter()
            .filter_map(|(offset, letter)| match letter {
                Letter::Event { arrival_ms, event } => Some((offset, arrival_ms, event)),
                Letter::Undecodable { .. } => None,
            })
            .collect())
    }

    /// The first `limit` records of a dead-letter stream's partition, decoded where they can be, stopping once
    /// `max_bytes` of them are read (at least one is).
    fn stored_letters(
        &self,
        stream: &str,
        partition: u32,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Letter)>, Status> {
        let mut out = Vec::new();
        let mut from = 0;
        let mut bytes = 0;
        while out.len() < limit && (out.is_empty() || bytes < max_bytes) {
            let batch = self
                .node
                .read(stream, partition, from, (limit - out.len()).min(1000), max_bytes.saturating_sub(bytes).max(1))
                .map_err(sluice_broker::status_of)?;
            let Some(last) = batch.records.last().map(|r| r.offset) else { break };
            bytes += batch.records.iter().map(|r| r.payload.len()).sum::<usize>();
            for record in batch.records {
                out.push((record.offset, Letter::decode(stream, record.offset, record.arrival_ms, record.payload)));
            }
            from = last + 1;
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl Consumers for ConsumersAdmin {
    async fn status(&self, request: Request<ConsumerRef>) -> Result<Response<ConsumerStatus>, Status> {
        let found = self.find(Some(request.get_ref()))?;
        Ok(Response::new(self.status_of(&found)?))
    }

    async fn pause(&self, request: Request<ConsumerRef>) -> Result<Response<ConsumerStatus>, Status> {
        Ok(Response::new(self.set_paused(Some(request.get_ref()), true).await?))
    }

    async fn resume(&self, request: Request<ConsumerRef>) -> Result<Response<ConsumerStatus>, Status> {
        Ok(Response::new(self.set_paused(Some(request.get_ref()), false).await?))
    }

    async fn replay(&self, request: Request<ReplayRequest>) -> Result<Response<ReplayReply>, Status> {
        let request = request.into_inner();
        let found = self.find(request.consumer.as_ref())?;
        // No dispatcher runs it to take the request, which would stand until one did (hours later, a mass
        // redelivery nobody expects), as a redrive is refused. Regression: it was accepted, and a follow waited for
        // ever.
        if found.spec.is_none() {
            return Err(error_status(
                ErrorCode::ConsumerNotDispatchable,
                format!("the consumer cannot be dispatched now, so nothing would replay: {}", found.reason),
            ));
        }
        let partitions: Vec<u32> = match request.partition {
            Some(p) if p < self.node.partitions() => vec![p],
            Some(p) => return Err(error_status(ErrorCode::NoSuchPartition, format!("partition {p} does not exist"))),
            None => (0..self.node.partitions()).collect(),
        };
        let to = request.to.ok_or_else(|| error_status(ErrorCode::InvalidArgument, "to: an offset or a time"))?;
        // One replay at a time per partition: a second one asked before the first is applied would overwrite it,
        // and both would be told theirs was applied. Regression: the last writer won.
        for &partition in &partitions {
            let key = stats::stat_key(&found.cursor, stats::REPLAY);
            let pending = self.node.committed_offset(partition, &key).map_err(sluice_broker::status_of)?.unwrap_or(0);
            if let Some(target) = pending.checked_sub(1) {
                return Err(error_status(
                    ErrorCode::ReplayPending,
                    format!(
                        "a replay of partition {partition} to offset {target} is asked and not applied yet; \
                         wait for it (`replay_pending_to` in the status) and ask again"
                    ),
                ));
            }
        }
        let mut targets = Vec::new();
        for partition in partitions {
            let end = self.node.end_offset(&found.stream, partition).map_err(sluice_broker::status_of)?;
            let start = self.node.start_offset(&found.stream, partition).map_err(sluice_broker::status_of)?;
            let to_offset = match to {
                replay_request::To::Offset(offset) => replay_offset(offset, start, end),
                replay_request::To::TimeMs(time_ms) => {
                    self.node.offset_for_time(&found.stream, partition, time_ms).map_err(sluice_broker::status_of)?
                }
            };
            let from_offset =
                self.node.committed_offset(partition, &found.cursor).map_err(sluice_broker::status_of)?.unwrap_or(0);
            // Conditional on no replay pending (the check above reads it, but two replays asked at once through
            // two nodes both pass that check): of the two, one is written. Regression: the later overwrote the
            // earlier, and both were told theirs was asked.
            let ask = stats::request_replay(&found.cursor, to_offset);
            let none_pending = vec![(stats::stat_key(&found.cursor, stats::REPLAY), 0)];
            match self.node.commit_offsets_if(partition, none_pending, vec![ask.clone()]).await {
                Ok(Some(true)) => {}
                Ok(Some(false)) => return Err(replay_asked_meanwhile(partition, &targets)),
                // A member of an older version does not read the conditional commit (a rolling upgrade).
                Ok(None) => self.node.commit_offsets(partition, vec![ask]).await.map_err(sluice_broker::status_of)?,
                Err(error) => return Err(sluice_broker::status_of(error)),
            }
            targets.push(ReplayTarget { partition, from_offset, to_offset });
        }
        let mut applied = false;
        if request.wait {
            let deadline = tokio::time::Instant::now() + REPLAY_WAIT;
            applied = true;
            for target in &targets {
                let mut changes = self.node.watch_applied(target.partition).map_err(sluice_broker::status_of)?;
                let key = stats::stat_key(&found.cursor, stats::REPLAY);
                loop {
                    let pending = self
                        .node
                        .committed_offset(target.partition, &key)
                        .map_err(sluice_broker::status_of)?
                        .unwrap_or(0);
                    if pending == 0 {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, changes.changed()).await {
                        Ok(Ok(())) => {}
                        _ => {
                            applied = false;
                            break;
                        }
                    }
                }
            }
        }
        Ok(Response::new(ReplayReply { targets, applied }))
    }
}

/// Where a replay asked to `asked` goes in a partition that holds `[start, end)`: into what it holds. Regression:
/// an offset below what retention had kept was taken as asked, the CLI said the cursor moved there, and the
/// dispatcher then counted every event below the start as trimmed before it was read (a warning and
/// `sluice_dispatch_trimmed_unread_total`), though most had been delivered.
fn replay_offset(asked: u64, start: u64, end: u64) -> u64 {
    asked.clamp(start.min(end), end)
}

/// A replay of `partition` was asked through another node between this one's check and its write; the
/// partitions in `asked` were asked already (each replays; a replay of one partition stands on its own).
fn replay_asked_meanwhile(partition: u32, asked: &[ReplayTarget]) -> Status {
    let asked: Vec<String> = asked.iter().map(|t| format!("{} to offset {}", t.partition, t.to_offset)).collect();
    let asked = match asked.is_empty() {
        true => String::new(),
        false => format!(" (partitions {} were asked already and replay)", asked.join(", ")),
    };
    error_status(
        ErrorCode::ReplayPending,
        format!(
            "another replay of partition {partition} was asked at the same moment and is pending; wait for it \
             (`replay_pending_to` in the status) and ask again{asked}"
        ),
    )
}

fn dead_letter_message(partition: u32, offset: u64, arrival_ms: u64, event: &CloudEvent) -> DeadLetter {
    let text = |name: &str| event.get(name).map(AttrValue::to_canonical_string).unwrap_or_default();
    let error_data =
        base64::engine::general_purpose::STANDARD.decode(text("knativeerrordata").as_bytes()).unwrap_or_default();
    DeadLetter {
        partition,
        offset,
        arrival_ms,
        error_code: text("knativeerrorcode"),
        error_dest: text("knativeerrordest"),
        error_data: error_data.into(),
        reason: text("sluiceerrorreason"),
        attributes: event.attributes.iter().map(|(k, v)| (k.clone(), v.to_canonical_string())).collect(),
        data: match &event.data {
            Some(EventData::Bytes(bytes)) => bytes.clone(),
            Some(EventData::Json(text)) => text.clone().into_bytes().into(),
            None => bytes::Bytes::new(),
        },
        event_json: event.to_json_string(),
    }
}

#[tonic::async_trait]
impl DeadLetters for ConsumersAdmin {
    async fn list(&self, request: Request<ListDeadLettersRequest>) -> Result<Response<DeadLetterList>, Status> {
        let request = request.into_inner();
        let found = self.find(request.consumer.as_ref())?;
        let limit = match request.limit as usize {
            0 => 100,
            n => n.min(MAX_LIST),
        };
        let stream = dead_letter_stream(found.kind, &found.key.namespace, &found.key.name);
        let mut list = Vec::new();
        let mut total = 0;
        let mut bytes = 0;
        for partition in 0..self.node.partitions() {
            let extent = self.node.read(&stream, partition, 0, 1, 0).map_err(sluice_broker::status_of)?;
            total += extent.end_offset.saturating_sub(extent.start_offset);
            if bytes > MAX_LIST_BYTES || list.len() >= limit {
                // Full: the other partitions count in the total only (their letters are not read).
                continue;
            }
            let letters = self.dead_letters(&found, partition, limit - list.len(), MAX_LIST_BYTES - bytes)?;
            let uid = found.object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
            for (offset, arrival_ms, event) in letters {
                let mut letter = dead_letter_message(partition, offset, arrival_ms, &event);
                if !letter_is_ours(&event, uid) {
                    letter.reason = format!("{NOT_OURS} {}", letter.reason);
                }
                bytes += prost::Message::encoded_len(&letter);
                if bytes > MAX_LIST_BYTES && !list.is_empty() {
                    break;
                }
                list.push(letter);
            }
        }
        Ok(Response::new(DeadLetterList { dead_letters: list, total }))
    }

    type RedriveStream = ReceiverStream<Result<RedriveProgress, Status>>;

    async fn redrive(&self, request: Request<RedriveRequest>) -> Result<Response<Self::RedriveStream>, Status> {
        let request = request.into_inner();
        let found = self.find(request.consumer.as_ref())?;
        let Some(spec) = found.spec.clone() else {
            return Err(error_status(
                ErrorCode::ConsumerNotDispatchable,
                format!("the consumer cannot be dispatched now: {}", found.reason),
            ));
        };
        let Some(sender) = self.sender.clone() else {
            return Err(error_status(ErrorCode::Internal, "no HTTP client on this node"));
        };
        if request.to_broker && !matches!(spec.reply, ReplyTarget::Broker { .. }) {
            return Err(error_status(
                ErrorCode::InvalidArgument,
                "to_broker: only a Trigger's dead letters can go back to its Broker; a Subscription's are \
                 redelivered to its subscriber",
            ));
        }
        // A paused consumer's subscriber is not sent its letters either (a pause is for its maintenance); back to
        // the Broker they wait in its stream like any event. Regression: a redrive delivered to it.
        if spec.paused && !request.to_broker {
            return Err(error_status(
                ErrorCode::ConsumerNotDispatchable,
                "the consumer is paused: resume it first, or redrive its letters to its Broker (`--to-broker`)",
            ));
        }
        // No redrive covers more than MAX_REDRIVE_PER_PARTITION letters of each partition: a longer selection is
        // refused before anything is built of it (a 4 MiB request named about 600,000 positions).
        let most_selected = MAX_REDRIVE_PER_PARTITION.saturating_mul(self.node.partitions().max(1) as usize);
        if request.selected.len() > most_selected {
            return Err(error_status(
                ErrorCode::InvalidArgument,
                format!(
                    "selected: at most {most_selected} letters ({MAX_REDRIVE_PER_PARTITION} per partition); {} given",
                    request.selected.len()
                ),
            ));
        }
        let selected: HashSet<(u32, u64)> = request.selected.iter().map(|p| (p.partition, p.offset)).collect();
        // Claimed before the letters are read: a redrive that ends meanwhile must not leave this one a stale list.
        let stream = dead_letter_stream(found.kind, &found.key.namespace, &found.key.name);
        let running = RedriveGuard::take(&self.redrives, &stream, "redrive").map_err(|running| {
            error_status(
                ErrorCode::RedriveRunning,
                format!(
                    "a {running} of {} {}/{} is running on this node; try again once it has ended",
                    found.kind.as_str(),
                    found.key.namespace,
                    found.key.name
                ),
            )
        })?;
        // The cluster-wide claim: a redrive of this consumer through another node refuses this one.
        let lease = take_lease(&self.node, &found, "redrive").await?;
        // What each partition's redrive covers: its letters up to MAX_REDRIVE_PER_PARTITION, as the partition's
        // leader has them. This node may lag it, and a trim by a redrive that just ended (here or elsewhere) must
        // be seen, or its letters would be redriven again.
        let mut extents = Vec::new();
        for partition in 0..self.node.partitions() {
            self.node.catch_up(partition).await.map_err(sluice_broker::status_of)?;
            let extent = self.node.read(&stream, partition, 0, 1, 0).map_err(sluice_broker::status_of)?;
            let end = extent.end_offset.min(extent.start_offset.saturating_add(MAX_REDRIVE_PER_PARTITION as u64));
            extents.push((partition, extent.start_offset, end));
        }
        let missing = missing_letters(&selected, &extents);
        if !missing.is_empty() {
            if let Some(lease) = lease {
                lease.release().await;
            }
            let shown: Vec<String> = missing.iter().take(10).map(|(p, o)| format!("{p}:{o}")).collect();
            return Err(error_status(
                ErrorCode::EventNotFound,
                format!(
                    "no dead letter at {}{} (a redrive covers the first {MAX_REDRIVE_PER_PARTITION} letters of each \
                     partition; a letter redriven before left the stream, and one dead-lettered again is at its \
                     end: list them again); nothing was redriven",
                    shown.join(", "),
                    if missing.len() > shown.len() {
                        format!(" and {} more", missing.len() - shown.len())
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        let total = if selected.is_empty() {
            extents.iter().map(|(_, start, end)| end - start).sum()
        } else {
            selected.len() as u64
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let redrive = Redrive { node: self.node.clone(), sender, spec, stream, to_broker: request.to_broker, selected };
        tokio::spawn(async move {
            let _running = running;
            let mut lease = lease;
            let mut progress = RedriveProgress { total, ..Default::default() };
            // Why the redrive stops early, looked at between letters only: a letter is handled whole (delivered
            // or kept, then trimmed), or a copy kept at the stream's end would stay beside the original.
            let (stop_tx, stop) = tokio::sync::watch::channel(None::<Option<Status>>);
            let ended = {
                let work = async {
                    for (partition, start, end) in extents {
                        redrive.partition(partition, start, end, &mut progress, &tx, &stop).await?;
                    }
                    Ok::<(), Option<Status>>(())
                };
                tokio::pin!(work);
                let mut stopping = false;
                loop {
                    tokio::select! {
                        ended = &mut work => break ended,
                        // A client that goes away ends the redrive after the letter in hand (not at the next one it
                        // would be told of): what was handled so far is trimmed, the rest stays for the next redrive.
                        _ = tx.closed(), if !stopping => {
                            stopping = true;
                            let _ = stop_tx.send(Some(None));
                        }
                        _ = lost(&mut lease), if !stopping => {
                            stopping = true;
                            let _ = stop_tx.send(Some(Some(error_status(
                                ErrorCode::RedriveRunning,
                                "the redrive's claim on these dead letters was lost (not renewed in time, or taken over \
                                 by another node); what was handled so far is trimmed, the rest stays",
                            ))));
                        }
                    }
                }
            };
            if let Some(lease) = lease {
                lease.release().await;
            }
            match ended {
                Ok(()) => {
                    progress.done = true;
                    let _ = tx.send(Ok(progress)).await;
                }
                Err(Some(status)) => {
                    let _ = tx.send(Err(status)).await;
                }
                Err(None) => tracing::info!(stream = %redrive.stream, "redrive ended: its client went away"),
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn purge(&self, request: Request<PurgeRequest>) -> Result<Response<PurgeReply>, Status> {
        let request = request.into_inner();
        let found = self.find(request.consumer.as_ref())?;
        let stream = dead_letter_stream(found.kind, &found.key.namespace, &found.key.name);
        // Not while this node redrives them: the letters it keeps would be copied back after the purge.
        let _purging = RedriveGuard::take(&self.redrives, &stream, "purge").map_err(|running| {
            error_status(
                ErrorCode::RedriveRunning,
                format!("a {running} of this consumer is running on this node; purge once it has ended"),
            )
        })?;
        let lease = take_lease(&self.node, &found, "purge").await?;
        let purging = async {
            let mut purged = 0;
            for partition in 0..self.node.partitions() {
                // As the partition's leader has them (a redrive through another node may just have kept copies
                // at the stream's end, which this node's copy may not show yet).
                self.node.catch_up(partition).await.map_err(sluice_broker::status_of)?;
                let extent = self.node.read(&stream, partition, 0, 1, 0).map_err(sluice_broker::status_of)?;
                if extent.end_offset > extent.start_offset {
                    self.node.trim(partition, &stream, extent.end_offset).await.map_err(sluice_broker::status_of)?;
                    purged += extent.end_offset - extent.start_offset;
                }
            }
            Ok::<u64, Status>(purged)
        };
        let purged = purging.await;
        // Given back however the purge ended: a purge that failed partway holds nobody else off for 30 s.
        if let Some(lease) = lease {
            lease.release().await;
        }
        Ok(Response::new(PurgeReply { purged: purged? }))
    }
}

/// The cluster-wide claim on `found`'s dead letters for `operation` (`redrive_lease`), or why another node's
/// redrive or purge refuses it. `None` while some member does not read the claim's entry yet (an upgrade).
/// The selected positions (partition, offset) no redrive of these extents (partition, first, end) covers, in
/// order. Regression: they were skipped, and the redrive of none reported success.
fn missing_letters(selected: &HashSet<(u32, u64)>, extents: &[(u32, u64, u64)]) -> Vec<(u32, u64)> {
    let mut missing: Vec<(u32, u64)> = selected
        .iter()
        .filter(|(p, o)| !extents.iter().any(|(q, start, end)| q == p && (start..end).contains(&o)))
        .copied()
        .collect();
    missing.sort_unstable();
    missing
}

async fn take_lease(
    node: &Node,
    found: &Found,
    operation: &'static str,
) -> Result<Option<crate::redrive_lease::HeldLease>, Status> {
    let consumer = format!("{}.{}.{}", found.kind.as_str(), found.key.namespace, found.key.name);
    crate::redrive_lease::take(node, &consumer, operation).await.map_err(|refused| {
        let code = match refused {
            // What may pass (no leader, a full queue) is retryable; a bug or a storage fault is not. Regression:
            // every write failure was UNAVAILABLE, a bug included.
            crate::redrive_lease::LeaseRefused::NotWritten(ref error) if error.is_retryable() => ErrorCode::Unavailable,
            crate::redrive_lease::LeaseRefused::NotWritten(error) => return sluice_broker::status_of(error),
            _ => ErrorCode::RedriveRunning,
        };
        error_status(code, format!("{} {}/{}: {refused}", found.kind.as_str(), found.key.namespace, found.key.name))
    })
}

/// Resolves when a held lease is lost; never without one.
async fn lost(lease: &mut Option<crate::redrive_lease::HeldLease>) {
    match lease {
        Some(lease) => lease.lost().await,
        None => std::future::pending().await,
    }
}

/// A record of a dead-letter stream.
enum Letter {
    Event {
        arrival_ms: u64,
        event: CloudEvent,
    },
    /// Not a CloudEvent Sluice can read (written by another version, damaged): never redriven, never lost.
    Undecodable {
        raw: bytes::Bytes,
        arrival_ms: u64,
    },
}

impl Letter {
    /// The record at `offset` of the dead-letter stream `stream`.
    fn decode(stream: &str, offset: u64, arrival_ms: u64, payload: bytes::Bytes) -> Letter {
        match CloudEvent::decode(&payload) {
            Ok(event) => Letter::Event { arrival_ms, event },
            Err(e) => {
                tracing::warn!(%stream, offset, error = %e, "undecodable dead letter");
                Letter::Undecodable { raw: payload, arrival_ms }
            }
        }
    }
}

#[cfg(test)]
mod tests;
