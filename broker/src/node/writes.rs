//! Writes: a request for a group goes to its leader (forwarded if this node is not it), which proposes it
//! to Raft and answers once it is committed and applied. Streams, consumer offsets and resource objects
//! all come through here.

use std::time::Duration;

use bytes::Bytes;

use super::Node;
use super::membership::run_membership;
use crate::command::forward::{ForwardedReply, ForwardedWrite, MembershipOp, WriteFailure};
use crate::command::{
    Appended, Dedupe, GroupId, LogCommand, LogResponse, METADATA_GROUP, NodeId, OffsetCommit, ResourceKey,
    ResourceRecord, StreamAppend, partition_group,
};
use crate::error::BrokerError;
use crate::raft::group::Group;

/// Longest stream name (bytes). A Broker's stream is at most 324: `broker/`, a 63-byte namespace (a DNS-1123
/// label) and a 253-byte name (a DNS-1123 subdomain).
pub(crate) const MAX_STREAM_NAME_BYTES: usize = 512;
/// Longest consumer cursor name (bytes): its stream's name, the consumer's kind, name (up to 253 bytes) and uid,
/// and a statistic's suffix; about 640 at the longest names.
pub(crate) const MAX_CURSOR_NAME_BYTES: usize = 1024;

/// The record of an object the node derives itself: its key from its kind and metadata, a new uid and this
/// moment as its creation time (used only if the object is new).
fn internal_record(object: &serde_json::Value) -> ResourceRecord {
    let text = |pointer: &str| object.pointer(pointer).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let key = ResourceKey { kind: text("/kind"), namespace: text("/metadata/namespace"), name: text("/metadata/name") };
    let uid = format!("{:032x}", rand::random::<u128>());
    let applied_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    ResourceRecord { key, json: object.to_string(), uid, applied_at }
}

/// The most records one `Trim` entry drops (see [`Node::trim`]).
const MAX_TRIM_RECORDS_PER_ENTRY: u64 = 16_384;

/// The `before_offset` of each `Trim` entry that drops a stream's records from `start` to `before_offset`, at
/// most `max_per_entry` records each, in order. Always at least one (the last is `before_offset` itself): this
/// node's copy may lag the leader's, whose start decides what a trim drops.
fn trim_steps(start: u64, before_offset: u64, max_per_entry: u64) -> impl Iterator<Item = u64> {
    let step = max_per_entry.max(1);
    let first = before_offset.min(start.saturating_add(step));
    std::iter::successors(Some(first), move |&done| {
        (done < before_offset).then(|| before_offset.min(done.saturating_add(step)))
    })
}

impl Node {
    /// Appends `payloads` to `stream` in `partition`; answers where they went
    /// once committed (the stored ones have dense offsets from `first_offset`;
    /// with `dedupe`, records seen within the window are not stored again).
    pub async fn append(
        &self,
        stream: &str,
        partition: u32,
        payloads: Vec<Bytes>,
        arrival_ms: u64,
        dedupe: Option<Dedupe>,
    ) -> Result<Appended, BrokerError> {
        validate_stream_name(stream)?;
        if let Some(dedupe) = &dedupe
            && dedupe.keys.len() != payloads.len()
        {
            return Err(BrokerError::InvalidStream { stream: stream.to_string(), rule: "one dedupe key per payload" });
        }
        let group = self.partition_group_id(partition)?;
        let append = StreamAppend { stream: stream.to_string(), arrival_ms, payloads, dedupe };
        match self.write(group, ForwardedWrite::Append(append)).await? {
            ForwardedReply::Appended(appended) => Ok(appended),
            other => Err(BrokerError::Bug { group, reason: format!("unexpected reply {other:?}") }),
        }
    }

    /// Drops the records of `stream` in `partition` below `before_offset` (retention).
    pub async fn trim(&self, partition: u32, stream: &str, before_offset: u64) -> Result<(), BrokerError> {
        let group_id = self.partition_group_id(partition)?;
        // One entry drops at most MAX_TRIM_RECORDS_PER_ENTRY records: applying a trim reads every record it drops
        // (to count the bytes it frees) on every replica, and one trim of millions (a retention shortened on a
        // large stream, a purge) would hold the group's apply, and every append behind it, past their timeouts.
        let start = self.group(group_id)?.view.extent(stream).start_offset;
        for step in trim_steps(start, before_offset, MAX_TRIM_RECORDS_PER_ENTRY) {
            let command = LogCommand::Trim { stream: stream.to_string(), before_offset: step };
            self.write(group_id, ForwardedWrite::Command(command)).await?;
        }
        Ok(())
    }

    /// Commits consumer offsets in `partition`'s group: each cursor moves to
    /// `max(stored, offset)`, or exactly `offset` with `reset`. Through Raft,
    /// so that a new leader resumes delivery where the old one left off.
    pub async fn commit_offsets(&self, partition: u32, commits: Vec<OffsetCommit>) -> Result<(), BrokerError> {
        for commit in &commits {
            validate_cursor_name(&commit.cursor)?;
        }
        let group = self.partition_group_id(partition)?;
        if commits.is_empty() {
            return Ok(());
        }
        self.write(group, ForwardedWrite::Command(LogCommand::CommitOffsets(commits))).await.map(|_| ())
    }

    /// [`Node::commit_offsets`] only when every cursor of `expected` (cursor, offset) is stored at its offset
    /// (absent: 0):
    /// `Ok(Some(true))` once committed, `Ok(Some(false))` when the condition did not hold (another writer
    /// won; nothing is written). `Ok(None)` when some member of the cluster does not read the conditional entry
    /// yet (a rolling upgrade): nothing is written, and the caller does without.
    pub async fn commit_offsets_if(
        &self,
        partition: u32,
        expected: Vec<(String, u64)>,
        commits: Vec<OffsetCommit>,
    ) -> Result<Option<bool>, BrokerError> {
        for cursor in expected.iter().map(|(cursor, _)| cursor).chain(commits.iter().map(|c| &c.cursor)) {
            validate_cursor_name(cursor)?;
        }
        let group = self.partition_group_id(partition)?;
        if self.cluster_log_format() < super::log_format::FORMAT_COMMIT_OFFSETS_IF {
            return Ok(None);
        }
        let command = LogCommand::CommitOffsetsIf { expected, commits };
        match self.write(group, ForwardedWrite::Command(command)).await? {
            ForwardedReply::Response(LogResponse::Applied { outcome }) => Ok(Some(outcome == "committed")),
            other => Err(BrokerError::Bug { group, reason: format!("unexpected reply {other:?}") }),
        }
    }

    /// A partition dispatcher's [`Node::commit_offsets`], fenced by `term`, the term in which this node led the
    /// partition when the dispatcher started ([`Node::partition_leader_term`]): `Ok(true)` once committed,
    /// `Ok(false)` when the entry was appended by another leader than this node in `term` (it was deposed
    /// meanwhile, or leads again in a later term): nothing is written, and the dispatcher should stop. Until
    /// every member reads the fenced entry (a rolling upgrade) the commit is written unfenced, as before.
    pub async fn commit_offsets_in_term(
        &self,
        partition: u32,
        term: u64,
        commits: Vec<OffsetCommit>,
    ) -> Result<bool, BrokerError> {
        if self.cluster_log_format() < super::log_format::FORMAT_COMMIT_IN_TERM {
            return self.commit_offsets(partition, commits).await.map(|()| true);
        }
        for commit in &commits {
            validate_cursor_name(&commit.cursor)?;
        }
        let group = self.partition_group_id(partition)?;
        if commits.is_empty() {
            return Ok(true);
        }
        let command = LogCommand::CommitOffsetsInTerm { term, leader: self.id(), commits };
        match self.write(group, ForwardedWrite::Command(command)).await? {
            ForwardedReply::Response(LogResponse::Applied { outcome }) => Ok(outcome == "committed"),
            other => Err(BrokerError::Bug { group, reason: format!("unexpected reply {other:?}") }),
        }
    }

    /// Forgets consumer cursors in `partition`'s group (absent ones are fine).
    pub async fn delete_offsets(&self, partition: u32, cursors: Vec<String>) -> Result<(), BrokerError> {
        for cursor in &cursors {
            validate_cursor_name(cursor)?;
        }
        let group = self.partition_group_id(partition)?;
        if cursors.is_empty() {
            return Ok(());
        }
        self.write(group, ForwardedWrite::Command(LogCommand::DeleteOffsets(cursors))).await.map(|_| ())
    }

    /// Creates or replaces a resource object in the metadata group; answers
    /// `created`, `configured` or `unchanged`.
    pub async fn put_resource(&self, record: ResourceRecord) -> Result<String, BrokerError> {
        self.put_resource_in_format(record, self.cluster_log_format()).await
    }

    /// [`Node::put_resource`] as an entry of metadata `format` (`node/log_format.rs`): with the first, an
    /// apply replaces the annotations whole, as versions before it did.
    pub(crate) async fn put_resource_in_format(
        &self,
        record: ResourceRecord,
        format: u64,
    ) -> Result<String, BrokerError> {
        let command = if format >= super::log_format::FORMAT_APPLY_RESOURCE {
            LogCommand::ApplyResource(record)
        } else {
            LogCommand::PutResource(record)
        };
        match self.write(METADATA_GROUP, ForwardedWrite::Command(command)).await? {
            ForwardedReply::Response(LogResponse::Applied { outcome }) => Ok(outcome),
            other => Err(BrokerError::Bug { group: METADATA_GROUP, reason: format!("unexpected reply {other:?}") }),
        }
    }

    /// [`Node::put_resource`] only when the stored object is still the one at `expected_version` (its
    /// `resourceVersion`; `None`: only when there is none), what the caller validated the object against:
    /// `Ok(Some(outcome))`, or `Ok(None)` when it changed meanwhile (nothing written; read again, validate again).
    /// While some member does not read the conditional entry (a rolling upgrade), the plain apply.
    pub async fn put_resource_if_version(
        &self,
        record: ResourceRecord,
        expected_version: Option<u64>,
    ) -> Result<Option<String>, BrokerError> {
        let format = self.cluster_log_format();
        if format < super::log_format::FORMAT_APPLY_IF_VERSION {
            return self.put_resource_in_format(record, format).await.map(Some);
        }
        let command = LogCommand::ApplyResourceIfVersion { record, expected_version };
        match self.write(METADATA_GROUP, ForwardedWrite::Command(command)).await? {
            ForwardedReply::Response(LogResponse::Applied { outcome }) if outcome == "conflict" => Ok(None),
            ForwardedReply::Response(LogResponse::Applied { outcome }) => Ok(Some(outcome)),
            other => Err(BrokerError::Bug { group: METADATA_GROUP, reason: format!("unexpected reply {other:?}") }),
        }
    }

    /// Sets (or, with `None`, removes) one annotation of a stored resource, on the object as it is when the
    /// write applies: `configured`, `unchanged`, or `absent` when there is no such object (or, with a `uid`,
    /// when the object of that name is another one).
    pub async fn set_resource_annotation(
        &self,
        key: ResourceKey,
        uid: &str,
        annotation: &str,
        value: Option<&str>,
    ) -> Result<String, BrokerError> {
        let (uid, annotation, value) = (uid.to_string(), annotation.to_string(), value.map(str::to_string));
        // Until every member reads `SetAdminAnnotation`, the older entry: the annotation is then not the admin
        // API's, and an apply that does not name it removes it, as before (`node/log_format.rs`).
        let command = if self.cluster_log_format() >= super::log_format::FORMAT_APPLY_RESOURCE {
            LogCommand::SetAdminAnnotation { key, uid, annotation, value }
        } else {
            LogCommand::SetAnnotation { key, uid, annotation, value }
        };
        match self.write(METADATA_GROUP, ForwardedWrite::Command(command)).await? {
            ForwardedReply::Response(LogResponse::Applied { outcome }) => Ok(outcome),
            other => Err(BrokerError::Bug { group: METADATA_GROUP, reason: format!("unexpected reply {other:?}") }),
        }
    }

    /// Stores an object the node derives itself (the serving runtime's facts about a revision), as it is,
    /// without the validation user objects go through: its kind is not one users apply.
    pub async fn put_internal_object(&self, object: &serde_json::Value) -> Result<String, BrokerError> {
        self.put_internal_object_in_format(object, self.cluster_log_format()).await
    }

    /// [`Node::put_internal_object`] as an entry of metadata `format` (`node/log_format.rs`).
    pub(crate) async fn put_internal_object_in_format(
        &self,
        object: &serde_json::Value,
        format: u64,
    ) -> Result<String, BrokerError> {
        self.put_resource_in_format(internal_record(object), format).await
    }

    /// Stores an internal object (as [`Node::put_internal_object`]) only when the stored one's `spec.token` is
    /// `token` (`None`: only when there is none): `Ok(true)` once stored, `Ok(false)` when the condition did not
    /// hold (another writer won). `Ok(None)` when some member of the cluster does not read the conditional
    /// entry yet (a rolling upgrade): nothing is written, and the caller does without.
    pub async fn put_internal_object_if_token(
        &self,
        object: &serde_json::Value,
        token: Option<&str>,
    ) -> Result<Option<bool>, BrokerError> {
        if self.cluster_log_format() < super::log_format::FORMAT_APPLY_IF_TOKEN {
            return Ok(None);
        }
        let command =
            LogCommand::ApplyResourceIfToken { record: internal_record(object), token: token.map(str::to_string) };
        match self.write(METADATA_GROUP, ForwardedWrite::Command(command)).await? {
            ForwardedReply::Response(LogResponse::Applied { outcome }) => Ok(Some(outcome != "conflict")),
            other => Err(BrokerError::Bug { group: METADATA_GROUP, reason: format!("unexpected reply {other:?}") }),
        }
    }

    /// Deletes a resource object; `false` when there was none (nothing changed).
    pub async fn delete_resource(&self, key: ResourceKey) -> Result<bool, BrokerError> {
        match self.write(METADATA_GROUP, ForwardedWrite::Command(LogCommand::DeleteResource(key))).await? {
            ForwardedReply::Response(LogResponse::Deleted { existed }) => Ok(existed),
            other => Err(BrokerError::Bug { group: METADATA_GROUP, reason: format!("unexpected reply {other:?}") }),
        }
    }

    pub(super) fn partition_group_id(&self, partition: u32) -> Result<GroupId, BrokerError> {
        let partitions = self.partitions();
        if partitions == 0 {
            return Err(BrokerError::NotInitialized);
        }
        if partition >= partitions {
            return Err(BrokerError::NoSuchPartition { partition, partitions });
        }
        Ok(partition_group(partition))
    }

    /// Writes through the group's leader: locally, or forwarded one hop.
    /// Definite refusals (no leader yet, stale leader) are retried while a
    /// new leader is elected, for a bounded time.
    pub(super) async fn write(&self, group_id: GroupId, write: ForwardedWrite) -> Result<ForwardedReply, BrokerError> {
        let group = self.group(group_id)?;
        let tuning = &self.inner.settings.tuning;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(tuning.election_timeout_max_ms * 4);
        loop {
            let attempt = match group.leader() {
                Some(leader) if leader == self.id() => self.write_local(group_id, write.clone()).await,
                Some(leader) => match group.node_addr(leader) {
                    Some(addr) => match &write {
                        ForwardedWrite::Append(append) => {
                            let forwarded = group.forwarder.submit(&addr, append.clone());
                            self.unless_deposed(&group, leader, forwarded).await.map(ForwardedReply::Appended)
                        }
                        // A leadership transfer deposes its own leader: not given up for it.
                        ForwardedWrite::Membership(MembershipOp::TransferLeader(_)) => {
                            self.inner.peers.forward(&addr, group_id, &write).await
                        }
                        _ => {
                            let forwarded = self.inner.peers.forward(&addr, group_id, &write);
                            self.unless_deposed(&group, leader, forwarded).await
                        }
                    },
                    None => Err(WriteFailure::NotLeader { group: group_id, leader: Some(leader) }),
                },
                None => Err(WriteFailure::NotLeader { group: group_id, leader: None }),
            };
            match attempt {
                Err(WriteFailure::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    let wait = Duration::from_millis(tuning.heartbeat_ms * 2);
                    group.leadership_changed_within(wait.min(deadline - tokio::time::Instant::now())).await;
                }
                other => return other.map_err(BrokerError::from),
            }
        }
    }

    /// The answer of a write `forwarded` to `leader`. A leader that stops answering (frozen, or cut off from this
    /// node with its connection still open) would hold the write until the forward's timeout (10 s), though the
    /// other nodes elect a new one within an election timeout: once this node sees it deposed, the write waits one
    /// election timeout more (a deposed leader that runs answers at once: committed, or refused), then is given
    /// up as indeterminate, as that timeout would have, and its caller retries it with the new leader (appends:
    /// dedupe makes that safe) or reads back what was stored; a membership change is asked again of the new
    /// leader ([`Node::membership`]; a change already made is done). Not for a leadership transfer: it deposes
    /// its own leader.
    async fn unless_deposed<T>(
        &self,
        group: &Group,
        leader: NodeId,
        forwarded: impl Future<Output = Result<T, WriteFailure>>,
    ) -> Result<T, WriteFailure> {
        tokio::pin!(forwarded);
        tokio::select! {
            biased;
            reply = &mut forwarded => return reply,
            () = group.deposed(leader) => {}
        }
        let answer_within = Duration::from_millis(self.inner.settings.tuning.election_timeout_max_ms);
        tokio::time::timeout(answer_within, forwarded).await.unwrap_or_else(|_| {
            metrics::counter!("sluice_forwards_abandoned_total", "group" => crate::ids::group_name(group.id))
                .increment(1);
            Err(WriteFailure::Indeterminate {
                group: group.id,
                reason: format!("node {leader} was deposed while the write was forwarded to it, and did not answer"),
            })
        })
    }

    /// Writes on this node, which must lead the group (the `Forward` RPC lands here).
    pub(crate) async fn write_local(
        &self,
        group_id: GroupId,
        write: ForwardedWrite,
    ) -> Result<ForwardedReply, WriteFailure> {
        let group = self.group(group_id).map_err(|_| WriteFailure::NotLeader { group: group_id, leader: None })?;
        if !group.is_leader(self.id()) {
            return Err(WriteFailure::NotLeader { group: group_id, leader: group.leader() });
        }
        match write {
            ForwardedWrite::Append(append) => group.batcher.submit(append).await.map(ForwardedReply::Appended),
            ForwardedWrite::AppendBatch(appends) => {
                let results = futures::future::join_all(appends.into_iter().map(|a| group.batcher.submit(a))).await;
                Ok(ForwardedReply::AppendedBatch(results))
            }
            ForwardedWrite::Membership(op) => {
                let attempt = match op {
                    MembershipOp::TransferLeader(_) => Some(self.hand_over(group_id).await),
                    _ => None,
                };
                let contact_timeout = Duration::from_millis(self.inner.settings.tuning.learner_contact_timeout_ms);
                let result = run_membership(&group, op, &self.inner.peers, contact_timeout).await;
                if let Some(attempt) = attempt {
                    // A refused transfer is over now (dropped here); an accepted one once the leadership left
                    // or the caller's wait for it (`transfer_leader`) has passed.
                    if result.is_ok() {
                        let wait = Duration::from_millis(self.inner.settings.tuning.election_timeout_max_ms * 4);
                        attempt.end_when_moved(group.clone(), self.id(), wait);
                    }
                }
                result.map(ForwardedReply::Membership)
            }
            // A lost leadership is definite (nothing was proposed here) and `write` retries it; anything else
            // after the proposal is indeterminate. Most metadata commands are idempotent, so their callers may
            // simply retry; a conditional apply's caller reads back what was stored.
            ForwardedWrite::Command(command) => {
                match tokio::time::timeout(
                    crate::raft::append_batcher::COMMIT_TIMEOUT,
                    group.raft.client_write(command),
                )
                .await
                {
                    Err(_) => Err(WriteFailure::Indeterminate {
                        group: group_id,
                        reason: format!(
                            "not committed within {:?} (no quorum?)",
                            crate::raft::append_batcher::COMMIT_TIMEOUT
                        ),
                    }),
                    Ok(Ok(response)) => Ok(ForwardedReply::Response(response.response().clone())),
                    // Only a proposal refused before its entry was appended is definite. A discarded entry
                    // (`LogEntryDiscarded`, which `forward_to_leader()` also names) may have committed through
                    // another leader: proposed again, a replay's offset reset or a conditional write would
                    // apply twice.
                    Ok(Err(e)) => match e.api_error() {
                        Some(openraft::error::ClientWriteError::ForwardToLeader(forward)) => {
                            Err(WriteFailure::NotLeader { group: group_id, leader: forward.leader_id })
                        }
                        _ => Err(WriteFailure::Indeterminate { group: group_id, reason: e.to_string() }),
                    },
                }
            }
        }
    }
}

pub(crate) fn validate_stream_name(stream: &str) -> Result<(), BrokerError> {
    name_rule(stream, MAX_STREAM_NAME_BYTES, "must be at most 512 bytes")
        .map_or(Ok(()), |rule| Err(BrokerError::InvalidStream { stream: stream.chars().take(64).collect(), rule }))
}

/// Consumer cursor names follow the stream name rules, with room for the stream's name inside them.
pub(crate) fn validate_cursor_name(cursor: &str) -> Result<(), BrokerError> {
    name_rule(cursor, MAX_CURSOR_NAME_BYTES, "must be at most 1024 bytes")
        .map_or(Ok(()), |rule| Err(BrokerError::InvalidCursor { cursor: cursor.chars().take(64).collect(), rule }))
}

/// The rule a stream or cursor name breaks, if any.
fn name_rule(name: &str, max_bytes: usize, too_long: &'static str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > max_bytes {
        Some(too_long)
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_goes_in_entries_of_at_most_the_limit_and_ends_at_its_offset() {
        // (start, before_offset, per entry, the entries' before_offsets)
        let cases: [(u64, u64, u64, &[u64]); 7] = [
            (0, 10, 4, &[4, 8, 10]),
            (0, 8, 4, &[4, 8]),
            (5, 6, 4, &[6]),
            (0, 3, 16_384, &[3]),
            (10, 10, 4, &[10]),
            (12, 10, 4, &[10]),
            (u64::MAX - 2, u64::MAX, 4, &[u64::MAX]),
        ];
        for (start, before, per_entry, want) in cases {
            let steps: Vec<u64> = trim_steps(start, before, per_entry).collect();
            assert_eq!(steps, want, "from {start} to {before}, {per_entry} per entry");
        }
        // Ten million records: 611 entries, none over the limit, the last at the offset asked.
        let steps: Vec<u64> = trim_steps(0, 10_000_000, MAX_TRIM_RECORDS_PER_ENTRY).collect();
        assert_eq!(steps.len(), 611);
        assert!(steps.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= MAX_TRIM_RECORDS_PER_ENTRY));
        assert_eq!(steps.last(), Some(&10_000_000));
    }
}
