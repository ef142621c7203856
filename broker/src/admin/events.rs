//! Admin `Events` service: read, tail and find the events stored for a broker or channel, from this node's
//! applied (committed) state. Every call is bounded: events and bytes per page, records scanned per page and per
//! find, events buffered per tail. See `docs/operations.md`, "Events".

use std::pin::Pin;

use futures::Stream;
use sluice_cesql::Expression;
use sluice_cloudevent::EventView;
use sluice_proto::admin::events_server::Events;
use sluice_proto::admin::{
    EventStreamRef, FindEventsReply, FindEventsRequest, LoggedEvent, PartitionPosition, ReadEventsReply,
    ReadEventsRequest, TailEventsRequest,
};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status};

use crate::admin::status_of;
use crate::admin_errors::{ErrorCode, error_status};
use crate::cloudevent::{CloudEvent, EventData};
use crate::command::ResourceKey;
use crate::error::BrokerError;
use crate::node::{Node, validate_stream_name};
use crate::store::StoredRecord;

/// Events per `Read` page when the request does not say.
pub(crate) const DEFAULT_PAGE_EVENTS: usize = 100;
/// Most events per `Read` page.
pub(crate) const MAX_PAGE_EVENTS: usize = 1000;
/// Bytes (stored size) per `Read` page when the request does not say.
pub(crate) const DEFAULT_PAGE_BYTES: usize = 4 << 20;
/// Most bytes per `Read` page (a page always has at least one event).
pub(crate) const MAX_PAGE_BYTES: usize = 16 << 20;
/// Most records looked at for one `Read` page (matters with a filter that matches little).
pub(crate) const MAX_SCANNED_PER_PAGE: u64 = 10_000;
/// Events a `Tail` buffers for its client; past them it reads the log only as fast as the client takes them.
pub(crate) const TAIL_BUFFER: usize = 256;
/// How long a tail waits for its client to take an event, with [`TAIL_BUFFER`] waiting, before it ends the
/// stream as too slow.
pub(crate) const TAIL_STALL: std::time::Duration = std::time::Duration::from_secs(30);
/// Records a `Find` looks at when the request does not say.
pub(crate) const DEFAULT_FIND_SCAN: u64 = 100_000;
/// Most records a `Find` looks at.
pub(crate) const MAX_FIND_SCAN: u64 = 1_000_000;
/// Records per internal read.
const CHUNK: usize = 500;
/// Most events one `Find` answers (the same `source` and `id` stored this often means a producer resending far
/// outside the dedupe window); the reply then says it is not complete.
pub(crate) const FIND_MAX_MATCHES: usize = 100;
/// Most bytes of events one `Find` answers, under the 4 MiB a gRPC client takes by default.
pub(crate) const FIND_MAX_BYTES: usize = 3 << 20;

#[derive(Clone)]
pub(crate) struct EventsService {
    node: Node,
}

impl EventsService {
    pub(crate) fn new(node: Node) -> Self {
        Self { node }
    }
}

fn invalid(message: impl Into<String>) -> Status {
    error_status(ErrorCode::InvalidArgument, message)
}

/// The stream a request names; a broker or channel that has no resource object and no stored event is
/// NOT_FOUND (RESOURCE_NOT_FOUND).
fn stream_of(node: &Node, target: Option<&EventStreamRef>) -> Result<String, Status> {
    // Regression: a node never initialised answered RESOURCE_NOT_FOUND for every Broker.
    node.check_initialised().map_err(status_of)?;
    let target = target.ok_or_else(|| invalid("target: required (kind, namespace and name, or stream)"))?;
    if !target.stream.is_empty() {
        validate_stream_name(&target.stream).map_err(status_of)?;
        return Ok(target.stream.clone());
    }
    if target.name.is_empty() {
        return Err(invalid("target.name: required (or target.stream)"));
    }
    let namespace = if target.namespace.is_empty() { "default" } else { target.namespace.as_str() };
    let (prefix, kinds): (&str, &[&str]) = match target.kind.to_ascii_lowercase().as_str() {
        "" | "broker" => ("broker", &["Broker"]),
        "channel" => ("channel", &["Channel", "InMemoryChannel"]),
        other => return Err(invalid(format!("target.kind: {other:?} is neither broker nor channel"))),
    };
    let stream = format!("{prefix}/{namespace}/{}", target.name);
    validate_stream_name(&stream).map_err(status_of)?;
    let known = kinds.iter().any(|kind| {
        node.resource(&ResourceKey {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: target.name.clone(),
        })
        .is_some()
    });
    let has_events = (0..node.partitions()).any(|p| node.end_offset(&stream, p).unwrap_or(0) > 0);
    if !known && !has_events {
        return Err(error_status(
            ErrorCode::ResourceNotFound,
            format!("{prefix} {namespace}/{} does not exist and has no stored events", target.name),
        ));
    }
    Ok(stream)
}

/// The partitions a request covers: one, or all.
fn partitions_of(node: &Node, partition: Option<u32>) -> Result<Vec<u32>, Status> {
    let partitions = node.partitions();
    if partitions == 0 {
        return Err(status_of(BrokerError::NotInitialized));
    }
    match partition {
        Some(p) if p >= partitions => Err(status_of(BrokerError::NoSuchPartition { partition: p, partitions })),
        Some(p) => Ok(vec![p]),
        None => Ok((0..partitions).collect()),
    }
}

/// The request's CESQL filter, parsed once.
fn compile_filter(text: &str) -> Result<Option<Expression>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let parsed = sluice_cesql::parse(text).map_err(|e| invalid(format!("filter: {e}")))?;
    // A call no function answers fails on every event: the read would find nothing, with no word of why.
    parsed.check_functions().map_err(|e| invalid(format!("filter: {e}")))?;
    Ok(Some(parsed))
}

/// Whether a stored record passes the filter (a record that is not a CloudEvent passes only without one).
fn passes(filter: Option<&Expression>, event: Option<&CloudEvent>) -> bool {
    match (filter, event) {
        (None, _) => true,
        (Some(filter), Some(event)) => filter.matches(&EventView(event)),
        (Some(_), None) => false,
    }
}

/// The API form of a stored record. A record that is not a stored CloudEvent (a raw stream's) has no
/// attributes and its payload as data.
fn logged_event(partition: u32, record: &StoredRecord, event: Option<&CloudEvent>) -> LoggedEvent {
    let Some(event) = event else {
        return LoggedEvent {
            partition,
            offset: record.offset,
            arrival_ms: record.arrival_ms,
            data: record.payload.clone(),
            ..Default::default()
        };
    };
    let data = match &event.data {
        Some(EventData::Bytes(bytes)) => bytes.clone(),
        Some(EventData::Json(text)) => bytes::Bytes::from(text.clone().into_bytes()),
        None => bytes::Bytes::new(),
    };
    LoggedEvent {
        partition,
        offset: record.offset,
        arrival_ms: record.arrival_ms,
        attributes: event.attributes.iter().map(|(k, v)| (k.clone(), v.to_canonical_string())).collect(),
        data,
        datacontenttype: event.get_str("datacontenttype").unwrap_or_default().to_string(),
        json: event.to_json_string(),
    }
}

/// What a page token is bound to: the stream it reads (a hash of its name).
fn stream_tag(stream: &str) -> String {
    format!("{:016x}", sluice_cloudevent::stable_hash(&[stream.as_bytes()]))
}

/// Page token: `v2:`, the stream's tag, `:`, then `partition.next.end` per partition, comma-separated (opaque to
/// clients).
fn encode_token(stream: &str, positions: &[PartitionPosition]) -> String {
    let parts: Vec<String> =
        positions.iter().map(|p| format!("{}.{}.{}", p.partition, p.next_offset, p.end_offset)).collect();
    format!("v2:{}:{}", stream_tag(stream), parts.join(","))
}

/// The positions of a page token given for a read of `stream` (of `partitions`, or only `partition`). Refused: a
/// token of another stream or partition (it would read this one's events at the other's offsets), a partition
/// twice (its events twice), and what is malformed. A `v1:` token (from a node before session 62, during an
/// upgrade) names no stream and is taken as it was. Regression: the positions alone were read, whatever the
/// request named.
fn decode_token(
    token: &str,
    stream: &str,
    partitions: u32,
    partition: Option<u32>,
) -> Result<Vec<PartitionPosition>, Status> {
    let malformed = || invalid("page_token: malformed (pass next_page_token as it was given)");
    let body = match (token.strip_prefix("v2:"), token.strip_prefix("v1:")) {
        (Some(v2), _) => {
            let (tag, body) = v2.split_once(':').ok_or_else(malformed)?;
            if tag != stream_tag(stream) {
                return Err(invalid("page_token: from a read of another broker or channel (pass it with its own)"));
            }
            body
        }
        (None, Some(v1)) => v1,
        (None, None) => return Err(malformed()),
    };
    let mut positions: Vec<PartitionPosition> = Vec::new();
    for part in body.split(',').filter(|p| !p.is_empty()) {
        let mut fields = part.split('.');
        let mut field = || fields.next().and_then(|f| f.parse::<u64>().ok()).ok_or_else(malformed);
        let (position_partition, next_offset, end_offset) = (field()?, field()?, field()?);
        let position_partition =
            u32::try_from(position_partition).ok().filter(|p| *p < partitions).ok_or_else(malformed)?;
        if positions.iter().any(|p| p.partition == position_partition) {
            return Err(malformed());
        }
        if partition.is_some_and(|asked| asked != position_partition) {
            return Err(invalid("page_token: from a read of another partition (pass it with its own)"));
        }
        positions.push(PartitionPosition { partition: position_partition, next_offset, end_offset });
    }
    if positions.is_empty() {
        return Err(malformed());
    }
    Ok(positions)
}

/// Its data a slice of the record (an admin read holds the event only while it answers).
fn decode(record: &StoredRecord) -> Option<CloudEvent> {
    CloudEvent::decode_shared(&record.payload).ok()
}

impl EventsService {
    fn read_page(&self, request: ReadEventsRequest) -> Result<ReadEventsReply, Status> {
        let node = &self.node;
        let stream = stream_of(node, request.target.as_ref())?;
        let filter = compile_filter(&request.filter)?;
        let max_events = match request.max_events as usize {
            0 => DEFAULT_PAGE_EVENTS,
            n => n.min(MAX_PAGE_EVENTS),
        };
        let max_bytes = match usize::try_from(request.max_bytes).unwrap_or(usize::MAX) {
            0 => DEFAULT_PAGE_BYTES,
            n => n.min(MAX_PAGE_BYTES),
        };
        let mut positions = if request.page_token.is_empty() {
            let mut positions = Vec::new();
            for partition in partitions_of(node, request.partition)? {
                let mut next = request.from_offset.unwrap_or(0);
                let mut end = node.end_offset(&stream, partition).map_err(status_of)?;
                if let Some(from) = request.from_time_ms {
                    next = next.max(node.offset_for_time(&stream, partition, from).map_err(status_of)?);
                }
                if let Some(to) = request.to_offset {
                    end = end.min(to);
                }
                if let Some(to) = request.to_time_ms {
                    end = end.min(node.offset_for_time(&stream, partition, to).map_err(status_of)?);
                }
                positions.push(PartitionPosition { partition, next_offset: next, end_offset: end });
            }
            positions
        } else {
            let partitions = node.partitions();
            if partitions == 0 {
                return Err(status_of(BrokerError::NotInitialized));
            }
            decode_token(&request.page_token, &stream, partitions, request.partition)?
        };

        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut scanned = 0u64;
        let mut full = false;
        for position in &mut positions {
            while !full && position.next_offset < position.end_offset {
                let want = ((position.end_offset - position.next_offset) as usize)
                    .min(CHUNK)
                    .min((MAX_SCANNED_PER_PAGE - scanned) as usize)
                    .max(1);
                let batch = node
                    .read(
                        &stream,
                        position.partition,
                        position.next_offset,
                        want,
                        max_bytes.saturating_sub(bytes).max(1),
                    )
                    .map_err(status_of)?;
                if batch.records.is_empty() {
                    // Nothing stored there (trimmed, or past the end): the range is done.
                    position.next_offset = position.end_offset;
                    break;
                }
                for record in &batch.records {
                    if record.offset >= position.end_offset {
                        position.next_offset = position.end_offset;
                        break;
                    }
                    let event = decode(record);
                    let matched = passes(filter.as_ref(), event.as_ref());
                    let size = record.payload.len();
                    if matched && !events.is_empty() && bytes + size > max_bytes {
                        full = true;
                        break;
                    }
                    scanned += 1;
                    position.next_offset = record.offset + 1;
                    if matched {
                        events.push(logged_event(position.partition, record, event.as_ref()));
                        bytes += size;
                    }
                    if events.len() >= max_events || scanned >= MAX_SCANNED_PER_PAGE {
                        full = true;
                        break;
                    }
                }
            }
        }
        let done = positions.iter().all(|p| p.next_offset >= p.end_offset);
        let next_page_token = if done { String::new() } else { encode_token(&stream, &positions) };
        Ok(ReadEventsReply { events, next_page_token, next: positions, scanned })
    }

    fn find(&self, request: FindEventsRequest) -> Result<FindEventsReply, Status> {
        let node = &self.node;
        if request.source.is_empty() || request.id.is_empty() {
            return Err(invalid("source and id: both are required"));
        }
        let stream = stream_of(node, request.target.as_ref())?;
        let partitions = partitions_of(node, None)?;
        let max_scanned = match request.max_scanned {
            0 => DEFAULT_FIND_SCAN,
            n => n.min(MAX_FIND_SCAN),
        };
        let budget = (max_scanned / partitions.len() as u64).max(1);
        let mut matches: Vec<LoggedEvent> = Vec::new();
        let mut scanned = 0u64;
        let mut complete = true;
        let is_match = |record: &StoredRecord| {
            decode(record).filter(|e| {
                e.get_str("source") == Some(request.source.as_str()) && e.get_str("id") == Some(request.id.as_str())
            })
        };
        let mut match_bytes = 0usize;
        // Each match is kept until the reply: at most FIND_MAX_MATCHES of them, and FIND_MAX_BYTES.
        let mut keep = |matches: &mut Vec<LoggedEvent>, event: LoggedEvent| {
            match_bytes += prost::Message::encoded_len(&event);
            matches.push(event);
            matches.len() >= FIND_MAX_MATCHES || match_bytes >= FIND_MAX_BYTES
        };
        'partitions: for &partition in &partitions {
            let end = node.end_offset(&stream, partition).map_err(status_of)?;
            let mut scanned_here = 0u64;
            if request.oldest_first {
                let mut next = 0;
                while next < end {
                    if scanned_here >= budget {
                        complete = false;
                        break;
                    }
                    let want = ((end - next) as usize).min(CHUNK).min((budget - scanned_here) as usize);
                    let batch = node.read(&stream, partition, next, want, 0).map_err(status_of)?;
                    let Some(last) = batch.records.last() else { break };
                    next = last.offset + 1;
                    for record in batch.records.iter().filter(|r| r.offset < end) {
                        scanned_here += 1;
                        if let Some(event) = is_match(record)
                            && keep(&mut matches, logged_event(partition, record, Some(&event)))
                        {
                            scanned += scanned_here;
                            complete = false;
                            break 'partitions;
                        }
                    }
                }
            } else {
                // Newest first: chunks from the end backwards, each read forwards.
                let mut high = end;
                let mut low = 0;
                while high > low {
                    if scanned_here >= budget {
                        complete = false;
                        break;
                    }
                    let want = ((high - low) as usize).min(CHUNK).min((budget - scanned_here) as usize) as u64;
                    let from = high - want;
                    let mut chunk = Vec::new();
                    let mut next = from;
                    while next < high {
                        let batch =
                            node.read(&stream, partition, next, (high - next) as usize, 0).map_err(status_of)?;
                        low = low.max(batch.start_offset);
                        let Some(last) = batch.records.last() else { break };
                        next = last.offset + 1;
                        chunk.extend(batch.records.into_iter().filter(|r| r.offset < high));
                    }
                    for record in chunk.iter().rev() {
                        scanned_here += 1;
                        if let Some(event) = is_match(record)
                            && keep(&mut matches, logged_event(partition, record, Some(&event)))
                        {
                            scanned += scanned_here;
                            complete = false;
                            break 'partitions;
                        }
                    }
                    high = from;
                }
            }
            scanned += scanned_here;
        }
        if request.oldest_first {
            matches.sort_by_key(|e| (e.arrival_ms, e.partition, e.offset));
        } else {
            matches.sort_by_key(|e| std::cmp::Reverse((e.arrival_ms, e.partition, e.offset)));
        }
        if matches.is_empty() {
            let how = if complete {
                "every retained record".to_string()
            } else {
                format!("the scan limit was reached ({max_scanned} records): older events were not looked at")
            };
            return Err(error_status(
                ErrorCode::EventNotFound,
                format!(
                    "no event with source {:?} and id {:?} in {stream} (scanned {scanned} records; {how})",
                    request.source, request.id
                ),
            ));
        }
        Ok(FindEventsReply { events: matches, scanned, complete })
    }
}

type TailStream = Pin<Box<dyn Stream<Item = Result<LoggedEvent, Status>> + Send>>;

/// One tail: follows its partitions and feeds the client's bounded buffer.
struct Tailer {
    node: Node,
    stream: String,
    /// (partition, next offset, applied watch) per partition followed.
    partitions: Vec<(u32, u64, watch::Receiver<u64>)>,
    filter: Option<Expression>,
    events: mpsc::Sender<LoggedEvent>,
    /// Ends the client's stream with this error (before the buffered events).
    fail: Option<oneshot::Sender<Status>>,
}

impl Tailer {
    fn fail(&mut self, status: Status) {
        if let Some(fail) = self.fail.take() {
            let _ = fail.send(status);
        }
    }

    /// Sends everything committed past each position, at the client's pace (at most [`TAIL_BUFFER`] events
    /// wait for it); false when the tail is over.
    async fn catch_up(&mut self) -> bool {
        for i in 0..self.partitions.len() {
            loop {
                let (partition, next) = (self.partitions[i].0, self.partitions[i].1);
                self.partitions[i].2.borrow_and_update();
                let batch = match self.node.read(&self.stream, partition, next, CHUNK, 0) {
                    Ok(batch) => batch,
                    Err(e) => {
                        self.fail(status_of(e));
                        return false;
                    }
                };
                let Some(last) = batch.records.last() else { break };
                self.partitions[i].1 = last.offset + 1;
                for record in &batch.records {
                    let event = decode(record);
                    if !passes(self.filter.as_ref(), event.as_ref()) {
                        continue;
                    }
                    let sent = self.events.send(logged_event(partition, record, event.as_ref()));
                    match tokio::time::timeout(TAIL_STALL, sent).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_closed)) => return false,
                        Err(_stalled) => {
                            metrics::counter!("sluice_admin_tail_dropped_total").increment(1);
                            self.fail(error_status(
                                ErrorCode::TailTooSlow,
                                format!(
                                    "the client took no event for {} s with {TAIL_BUFFER} waiting; tail again from \
                                     partition {partition} offset {} (--partition {partition} --from-offset {})",
                                    TAIL_STALL.as_secs(),
                                    record.offset,
                                    record.offset
                                ),
                            ));
                            return false;
                        }
                    }
                }
                // A filter that matches little scans many records between sends: the client may have gone, and
                // other tasks must run.
                if self.events.is_closed() {
                    return false;
                }
                tokio::task::yield_now().await;
            }
        }
        true
    }

    async fn run(mut self) {
        loop {
            if !self.catch_up().await {
                return;
            }
            let events = self.events.clone();
            let changed = futures::future::select_all(
                self.partitions.iter_mut().map(|(_, _, applied)| Box::pin(applied.changed())),
            );
            let stopped = tokio::select! {
                _ = events.closed() => return,
                (result, _, _) = changed => result.is_err(),
            };
            if stopped {
                self.fail(error_status(ErrorCode::Unavailable, "the node is shutting down"));
                return;
            }
        }
    }
}

/// The client's side of a tail: the events, then (once the tailer has ended) its failure if it failed. The
/// events it buffered come first, so a failure's "tail again from" names the first event the client has not had.
fn tail_stream(events: mpsc::Receiver<LoggedEvent>, fail: oneshot::Receiver<Status>) -> TailStream {
    Box::pin(futures::stream::unfold(Some((events, fail)), |state| async move {
        let (mut events, fail) = state?;
        match events.recv().await {
            Some(event) => Some((Ok(event), Some((events, fail)))),
            // Every sender is gone: the tailer has ended, and sent its failure first if it failed.
            None => fail.await.ok().map(|status| (Err(status), None)),
        }
    }))
}

#[tonic::async_trait]
impl Events for EventsService {
    async fn read(&self, request: Request<ReadEventsRequest>) -> Result<Response<ReadEventsReply>, Status> {
        let service = self.clone();
        let request = request.into_inner();
        // Reads hit RocksDB: off the async workers.
        let reply = tokio::task::spawn_blocking(move || service.read_page(request))
            .await
            .map_err(|e| error_status(ErrorCode::Internal, format!("read task: {e}")))??;
        Ok(Response::new(reply))
    }

    type TailStream = TailStream;

    async fn tail(&self, request: Request<TailEventsRequest>) -> Result<Response<Self::TailStream>, Status> {
        let request = request.into_inner();
        let node = &self.node;
        let stream = stream_of(node, request.target.as_ref())?;
        let filter = compile_filter(&request.filter)?;
        let mut partitions = Vec::new();
        // Positions are fixed before the reply's headers go out: whatever is committed after the client's call
        // returns is in the tail.
        for partition in partitions_of(node, request.partition)? {
            let applied = node.watch_applied(partition).map_err(status_of)?;
            let next = match (request.from_offset, request.from_time_ms) {
                (Some(offset), _) => {
                    // Past the end, a tail would wait for the events up to it and show none of them.
                    let end = node.end_offset(&stream, partition).map_err(status_of)?;
                    if let Some(problem) = offset_past_end(partition, offset, end) {
                        return Err(error_status(ErrorCode::InvalidArgument, problem));
                    }
                    offset
                }
                (None, Some(time)) => node.offset_for_time(&stream, partition, time).map_err(status_of)?,
                (None, None) => node.end_offset(&stream, partition).map_err(status_of)?,
            };
            partitions.push((partition, next, applied));
        }
        let permit = super::admin_stream_permit()?;
        let (events, events_rx) = mpsc::channel(TAIL_BUFFER);
        let (fail, fail_rx) = oneshot::channel();
        let tailer = Tailer { node: node.clone(), stream, partitions, filter, events, fail: Some(fail) };
        tokio::spawn(async move {
            let _permit = permit;
            tailer.run().await;
        });
        Ok(Response::new(node.until_stopping(tail_stream(events_rx, fail_rx))))
    }

    async fn find(&self, request: Request<FindEventsRequest>) -> Result<Response<FindEventsReply>, Status> {
        let service = self.clone();
        let request = request.into_inner();
        let reply = tokio::task::spawn_blocking(move || service.find(request))
            .await
            .map_err(|e| error_status(ErrorCode::Internal, format!("find task: {e}")))??;
        Ok(Response::new(reply))
    }
}

/// Why a tail cannot start at `offset` in `partition`, whose next offset is `end`: past it, the tail would show
/// none of the events up to it (a tail of every partition from one offset meets partitions of other lengths).
/// Regression: it was taken as given, and the tail waited, silently skipping the live events before it.
fn offset_past_end(partition: u32, offset: u64, end: u64) -> Option<String> {
    (offset > end).then(|| {
        format!(
            "from_offset {offset} is past partition {partition}'s end ({end}): give an offset at most that, or the \
             partition the offset is of (--partition)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_from_past_a_partitions_end_is_refused_naming_it() {
        assert_eq!(offset_past_end(0, 3, 3), None, "the end itself: the next event");
        assert_eq!(offset_past_end(0, 0, 3), None);
        let refused = offset_past_end(1, 5_000, 3_000).expect("past the end");
        assert!(refused.contains("partition 1's end (3000)"), "{refused}");
    }

    #[test]
    fn page_tokens_round_trip() {
        let positions = vec![
            PartitionPosition { partition: 0, next_offset: 5, end_offset: 9 },
            PartitionPosition { partition: 1, next_offset: 0, end_offset: 3 },
        ];
        let stream = "broker/default/a";
        let token = encode_token(stream, &positions);
        assert_eq!(decode_token(&token, stream, 2, None).ok(), Some(positions.clone()));
        assert!(decode_token(&token, stream, 1, None).is_err());
        assert!(decode_token("v1:", stream, 2, None).is_err());
        assert!(decode_token("garbage", stream, 2, None).is_err());
        assert!(decode_token("v1:0.x.3", stream, 2, None).is_err());
        // An upgrade's token of the older form still reads.
        assert_eq!(decode_token("v1:0.5.9,1.0.3", stream, 2, None).ok(), Some(positions.clone()));
        // Regressions: a token read whatever the request named, and a partition twice read its events twice.
        let other = decode_token(&token, "broker/default/b", 2, None).expect_err("another stream");
        assert!(other.message().contains("another broker or channel"), "{}", other.message());
        assert!(decode_token(&token, stream, 2, Some(1)).is_err(), "partition 1 asked, 0 and 1 in the token");
        let one = encode_token(stream, &positions[1..]);
        assert_eq!(decode_token(&one, stream, 2, Some(1)).ok(), Some(positions[1..].to_vec()));
        let twice = format!("v2:{}:0.0.100,0.0.100", stream_tag(stream));
        assert!(decode_token(&twice, stream, 2, None).is_err(), "a partition twice");
    }

    #[test]
    fn invalid_filter_is_invalid_argument() {
        let status = compile_filter("type = ").expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(compile_filter("  ").ok().flatten().is_none());
        assert!(compile_filter("type = 'a'").ok().flatten().is_some());
    }
}
