//! The types every Raft group of a node agrees on: openraft's type config,
//! the commands stored in Raft entries and what applying them answers.
//!
//! A leaf of the write path: the store applies these, the transport carries them, Raft groups agree on them.
//! [`cluster_config`] is the cluster's membership and partition count (the first thing the metadata group
//! commits); [`forward`] is what a follower forwards to its group's leader and what it gets back.

pub(crate) mod cluster_config;
pub(crate) mod forward;

pub use cluster_config::{ClusterConfig, parse_members};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub(crate) use crate::ids::{GroupId, METADATA_GROUP, NodeId, ResourceKey, group_name, partition_group};

openraft::declare_raft_types!(
    /// openraft's type config for every Sluice group.
    pub(crate) TypeConfig:
        D = LogCommand,
        R = LogResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

pub(crate) type Entry = openraft::alias::EntryOf<TypeConfig>;
pub(crate) type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub(crate) type Vote = openraft::alias::VoteOf<TypeConfig>;
pub(crate) type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub(crate) type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// Records for one stream, accepted together at one arrival time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StreamAppend {
    /// A broker's or channel's stream name, e.g. `broker/default/my-broker`.
    pub stream: String,
    /// Milliseconds since the Unix epoch when the node accepted the records.
    /// Applied as `max(arrival_ms, last arrival of the stream)` so that a
    /// stream's arrival times never go back (a new leader's clock may lag).
    pub arrival_ms: u64,
    /// Slices of the message they arrive in when decoded with [`decode_shared`] (a follower's entries, an entry
    /// read back from RocksDB), not copies.
    #[serde(deserialize_with = "sluice_cloudevent::shared_bytes::deserialize_vec")]
    pub payloads: Vec<Bytes>,
    /// Drop records whose key was stored within the window (one key per payload).
    pub dedupe: Option<Dedupe>,
}

/// Duplicate suppression for one append: `keys[i]` identifies `payloads[i]`
/// (for events: `source` and `id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedupe {
    pub window_ms: u64,
    pub keys: Vec<Bytes>,
}

/// Where an append's records went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// Offset of the first stored record; the others follow densely.
    pub first_offset: u64,
    /// Records stored (the rest were duplicates within the dedupe window).
    pub stored: u32,
}

impl StreamAppend {
    pub(crate) fn payload_bytes(&self) -> usize {
        self.payloads.iter().map(Bytes::len).sum()
    }

    /// About the bytes [`encode`] writes for this append (each length prefix at most 10 bytes): a buffer sized
    /// by it takes the payloads without growing (each growth copied everything written so far).
    fn encoded_len_hint(&self) -> usize {
        const VARINT: usize = 10;
        let keys = self.dedupe.as_ref().map_or(0, |d| d.keys.iter().map(|k| k.len() + VARINT).sum::<usize>());
        3 * VARINT + self.stream.len() + self.payload_bytes() + self.payloads.len() * VARINT + keys + 2 * VARINT
    }
}

/// About the bytes [`encode`] writes for `entry`: see [`StreamAppend::encoded_len_hint`]. Only a hint: an
/// entry that takes more grows its buffer as before.
pub(crate) fn entry_len_hint(entry: &Entry) -> usize {
    const LOG_ID_AND_TAGS: usize = 64;
    match &entry.payload {
        openraft::EntryPayload::Normal(LogCommand::Append(appends)) => {
            LOG_ID_AND_TAGS + appends.iter().map(StreamAppend::encoded_len_hint).sum::<usize>()
        }
        _ => 4 * LOG_ID_AND_TAGS,
    }
}

/// [`encode`] appended to `buffer` (a buffer reused, or sized by [`entry_len_hint`]).
pub(crate) fn encode_into<T: Serialize>(value: &T, buffer: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(value, buffer)
}

/// What a Raft entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LogCommand {
    /// Several appends coalesced into one entry (partition groups). Shared, so that the readers of a recent
    /// entry (the apply, one replication stream per follower) take a reference to its appends, not a copy of
    /// every stream name, payload list and dedupe key list; stored and sent as the list itself.
    Append(Arc<Vec<StreamAppend>>),
    /// The cluster's fixed shape, written once by `cluster init` (metadata group).
    InitCluster(ClusterConfig),
    /// Retention: drops the records of `stream` below `before_offset`
    /// (partition groups; idempotent).
    Trim { stream: String, before_offset: u64 },
    /// Creates or replaces a resource object (metadata group). Kept for logs written by earlier versions:
    /// it replaces the annotations whole, so a resync undid a `trigger pause`; nodes propose `ApplyResource`.
    PutResource(ResourceRecord),
    /// Removes a resource object (metadata group); absent is not an error.
    DeleteResource(ResourceKey),
    /// Consumer offsets (partition groups): each cursor's stored offset
    /// becomes `max(stored, offset)`, or exactly `offset` with `reset`, so a
    /// late or repeated commit never moves a consumer back by accident.
    CommitOffsets(Vec<OffsetCommit>),
    /// Forgets consumer cursors (partition groups); absent ones are fine.
    DeleteOffsets(Vec<String>),
    /// Replaces the cluster config's current member list (metadata group).
    /// Ignored before `InitCluster`. Kept for logs written by earlier
    /// versions: a whole list built before it commits can undo a concurrent
    /// change, so add-node and remove-node write the two below.
    SetMembers(BTreeMap<NodeId, String>),
    /// `cluster add-node`'s last step: lists one member (metadata group),
    /// applied to the member list current at apply time.
    AddMember { node: NodeId, addr: String },
    /// `cluster remove-node`: unlists one member (metadata group), applied to
    /// the member list current at apply time; never the last one.
    RemoveMember(NodeId),
    /// Sets (or, with `None`, removes) one annotation of a stored resource (metadata group), applied to the
    /// object current at apply time, so that a change applied meanwhile is kept (`trigger pause`/`resume`
    /// read the object, changed it and wrote it whole, undoing an apply that landed in between). Answers
    /// [`LogResponse::Applied`], `absent` when there is no such object, or when `uid` is set and the object
    /// is another one of that name (deleted and created again meanwhile).
    /// Kept for logs written by earlier versions; nodes propose `SetAdminAnnotation`.
    SetAnnotation { key: ResourceKey, uid: String, annotation: String, value: Option<String> },
    /// Creates or replaces a resource object (metadata group), keeping the annotations the admin API set
    /// that the object does not name (`sluice_controller::meta::merge_for_apply_keeping_owned`).
    ApplyResource(ResourceRecord),
    /// `SetAnnotation`, recording the annotation as the admin API's (`metadata.managedFields`), so that an
    /// apply that does not name it keeps it (`trigger pause`/`resume`).
    SetAdminAnnotation { key: ResourceKey, uid: String, annotation: String, value: Option<String> },
    /// `ApplyResource` of an object the node derives itself (a lease), only when the stored object's
    /// `spec.token` is `token` (`None`: only when there is no object): a compare-and-set, so that of two nodes
    /// taking or renewing the same lease at once one wins. Answers [`LogResponse::Applied`], `conflict` when
    /// the condition does not hold (nothing is written).
    ApplyResourceIfToken { record: ResourceRecord, token: Option<String> },
    /// `CommitOffsets` only when every cursor of `expected` (cursor, offset) is stored at its offset (an absent
    /// cursor reads as 0): a compare-and-set, so that of two operators asking a partition's replay at once through two nodes
    /// one wins. Answers [`LogResponse::Applied`], `committed`, or `conflict` when the condition does not hold
    /// (nothing is written).
    CommitOffsetsIf { expected: Vec<(String, u64)>, commits: Vec<OffsetCommit> },
    /// `ApplyResource` only when the stored object is the one the apply was validated against: its
    /// `metadata.resourceVersion` is `expected_version` (`None`: only when there is no object). A compare-and-set,
    /// so that an immutable field (a Trigger's Broker) checked against one node's copy cannot change when that
    /// copy was behind or another apply landed in between. Answers [`LogResponse::Applied`], `conflict` when the
    /// condition does not hold (nothing is written).
    ApplyResourceIfVersion { record: ResourceRecord, expected_version: Option<u64> },
    /// A partition dispatcher's `CommitOffsets`, only when the entry is appended by the leader the dispatcher
    /// started under: `leader` in `term` (partition groups). A dispatcher whose node was deposed can still send
    /// a commit (forwarded to the new leader, or retried there); appended by a later leader, it could move a
    /// cursor that leader's dispatcher had reset (an operator's replay) forward again. Answers
    /// [`LogResponse::Applied`], `committed`, or `stale` (nothing is written).
    CommitOffsetsInTerm { term: u64, leader: NodeId, commits: Vec<OffsetCommit> },
}

/// One consumer cursor's position: the next offset it will read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    pub cursor: String,
    pub offset: u64,
    /// Store `offset` even if it is lower than the stored one (operator replay).
    pub reset: bool,
}

/// A resource object as JSON text (Kubernetes-style object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRecord {
    pub key: ResourceKey,
    pub json: String,
    /// `metadata.uid` if the object is new (chosen by the node that proposed it).
    pub uid: String,
    /// `metadata.creationTimestamp` if the object is new (RFC 3339).
    pub applied_at: String,
}

impl LogCommand {
    /// An entry of coalesced appends.
    pub(crate) fn append(appends: Vec<StreamAppend>) -> LogCommand {
        LogCommand::Append(Arc::new(appends))
    }
}

impl fmt::Display for LogCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogCommand::Append(appends) => write!(f, "Append({} streams)", appends.len()),
            LogCommand::InitCluster(config) => write!(f, "InitCluster({config:?})"),
            LogCommand::Trim { stream, before_offset } => write!(f, "Trim({stream} < {before_offset})"),
            LogCommand::PutResource(record) => write!(f, "PutResource({:?})", record.key),
            LogCommand::ApplyResource(record) => write!(f, "ApplyResource({:?})", record.key),
            LogCommand::DeleteResource(key) => write!(f, "DeleteResource({key:?})"),
            LogCommand::CommitOffsets(commits) => write!(f, "CommitOffsets({} cursors)", commits.len()),
            LogCommand::DeleteOffsets(cursors) => write!(f, "DeleteOffsets({} cursors)", cursors.len()),
            LogCommand::SetMembers(members) => write!(f, "SetMembers({:?})", members.keys().collect::<Vec<_>>()),
            LogCommand::AddMember { node, addr } => write!(f, "AddMember({node} at {addr})"),
            LogCommand::RemoveMember(node) => write!(f, "RemoveMember({node})"),
            LogCommand::SetAnnotation { key, annotation, value, .. } => {
                write!(f, "SetAnnotation({key:?} {annotation}={value:?})")
            }
            LogCommand::SetAdminAnnotation { key, annotation, value, .. } => {
                write!(f, "SetAdminAnnotation({key:?} {annotation}={value:?})")
            }
            LogCommand::ApplyResourceIfToken { record, .. } => write!(f, "ApplyResourceIfToken({:?})", record.key),
            LogCommand::ApplyResourceIfVersion { record, expected_version } => {
                write!(f, "ApplyResourceIfVersion({:?} at {expected_version:?})", record.key)
            }
            LogCommand::CommitOffsetsIf { expected, commits } => {
                write!(f, "CommitOffsetsIf({} cursors if {} are as expected)", commits.len(), expected.len())
            }
            LogCommand::CommitOffsetsInTerm { term, leader, commits } => {
                write!(f, "CommitOffsetsInTerm({} cursors, leader {leader} of term {term})", commits.len())
            }
        }
    }
}

/// What applying an entry answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LogResponse {
    #[default]
    None,
    /// For each [`StreamAppend`] of the entry, in order, where it went.
    Appended { appended: Vec<Appended> },
    /// `InitCluster` was refused: the cluster already has this config.
    AlreadyInitialized(ClusterConfig),
    /// What a `PutResource`/`ApplyResource` did: `created`, `configured` or `unchanged` (the annotation
    /// commands: or `absent`).
    Applied { outcome: String },
    /// What a `DeleteResource` did: whether there was an object to delete.
    Deleted { existed: bool },
}

/// postcard: compact, positional; both ends run the same build (openraft keeps
/// its types positional-format compatible, see `SnapshotMeta`).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The largest message whose payloads [`decode_shared`] slices out of it rather than copies.
///
/// A slice keeps its whole message alive (and the message is itself a slice of the gRPC receive buffer it was
/// read into, which may hold the messages after it on the same stream). The log's tail holds the newest
/// entries, contiguous, so of the messages it slices only the oldest can be partly evicted and kept alive for
/// the rest; the events' tail holds the records applied from them, so the apply copies the records of an append
/// that dropped duplicates (their message would otherwise be kept for records the tail does not count). Up to
/// this size what a tail keeps beyond what it counts stays about one message; a larger message (a follower
/// catching up takes up to 16 entries of up to 5.0 MiB at once) is copied as before.
pub(crate) const SHARED_DECODE_MAX_BYTES: usize = 1 << 20;

/// [`decode`], with the appends' payloads slices of `bytes` rather than copies of them (up to
/// [`SHARED_DECODE_MAX_BYTES`]).
pub(crate) fn decode_shared<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, postcard::Error> {
    if bytes.len() > SHARED_DECODE_MAX_BYTES {
        return decode(bytes);
    }
    sluice_cloudevent::shared_bytes::sharing(bytes, |input| postcard::from_bytes(input))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Append` as logs written before its appends were shared hold it.
    #[derive(Serialize)]
    enum LogCommandBeforeSharing {
        Append(Vec<StreamAppend>),
    }

    #[test]
    fn a_shared_append_is_stored_as_the_list_itself() {
        let appends = vec![StreamAppend {
            stream: "broker/default/b".into(),
            arrival_ms: 7,
            payloads: vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")],
            dedupe: Some(Dedupe { window_ms: 1_000, keys: vec![Bytes::from_static(b"k1"), Bytes::from_static(b"k2")] }),
        }];
        let before = encode(&LogCommandBeforeSharing::Append(appends.clone())).expect("encode");
        let shared = LogCommand::append(appends);
        assert_eq!(encode(&shared).expect("encode"), before);
        assert_eq!(decode::<LogCommand>(&before).expect("decode"), shared);
        let copy = shared.clone();
        match (&shared, &copy) {
            (LogCommand::Append(a), LogCommand::Append(b)) => assert!(Arc::ptr_eq(a, b), "a clone shares the appends"),
            _ => unreachable!("both are appends"),
        }
    }

    fn big_append(stream: &str) -> StreamAppend {
        StreamAppend {
            stream: stream.into(),
            arrival_ms: 9,
            payloads: vec![Bytes::from(vec![5u8; 64 << 10]), Bytes::from_static(b"small")],
            dedupe: Some(Dedupe { window_ms: 1_000, keys: vec![Bytes::from_static(b"k1"), Bytes::from_static(b"k2")] }),
        }
    }

    fn slices_of_one(input: &Bytes, payload: &Bytes) -> bool {
        let (start, at) = (input.as_ptr() as usize, payload.as_ptr() as usize);
        at >= start && at + payload.len() <= start + input.len()
    }

    fn slices_of(input: &Bytes, appends: &[StreamAppend]) -> bool {
        appends.iter().flat_map(|a| a.payloads.iter()).all(|p| slices_of_one(input, p))
    }

    fn log_id(index: u64) -> LogId {
        use openraft::vote::RaftLeaderId;
        openraft::LogId::new(openraft::impls::leader_id_adv::LeaderId::new(3, 1).to_committed(), index)
    }

    /// What a follower receives (AppendEntries through openraft's own serde) and an entry read back: the payloads
    /// are slices of the message, and the same values as a copying decode gives. A forwarded batch shows the same
    /// mechanism on another type (the leader itself decodes those with a copy, `server::raft_service`), and past
    /// the bound nothing is sliced.
    #[test]
    fn shared_decodes_slice_the_payloads_out_of_the_message() {
        let entry = Entry {
            log_id: log_id(42),
            payload: openraft::EntryPayload::Normal(LogCommand::append(vec![big_append("a"), big_append("b")])),
        };
        let request = openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote: openraft::impls::Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(41)),
            entries: vec![entry.clone()],
            leader_commit: None,
        };
        let message = Bytes::from(encode(&request).expect("encode"));
        let received: openraft::raft::AppendEntriesRequest<TypeConfig> = decode_shared(&message).expect("decode");
        let openraft::EntryPayload::Normal(LogCommand::Append(appends)) = &received.entries[0].payload else {
            panic!("an append entry")
        };
        assert!(slices_of(&message, appends), "AppendEntries payloads are slices of the message");
        let copied: openraft::raft::AppendEntriesRequest<TypeConfig> = decode(&message).expect("decode");
        assert_eq!(received.entries, copied.entries);
        let openraft::EntryPayload::Normal(LogCommand::Append(appends)) = &copied.entries[0].payload else {
            panic!("an append entry")
        };
        assert!(!slices_of(&message, appends), "a plain decode copies");

        let forwarded = forward::ForwardedWrite::AppendBatch(vec![big_append("c")]);
        let message = Bytes::from(encode(&forwarded).expect("encode"));
        let forward::ForwardedWrite::AppendBatch(appends) = decode_shared(&message).expect("decode") else {
            panic!("a batch")
        };
        assert!(slices_of(&message, &appends), "forwarded payloads are slices of the message");
        assert_eq!(appends, vec![big_append("c")]);

        let big = forward::ForwardedWrite::AppendBatch(vec![big_append("d"); 20]);
        let message = Bytes::from(encode(&big).expect("encode"));
        assert!(message.len() > SHARED_DECODE_MAX_BYTES);
        let forward::ForwardedWrite::AppendBatch(appends) = decode_shared(&message).expect("decode") else {
            panic!("a batch")
        };
        let none_within = appends.iter().flat_map(|a| a.payloads.iter()).all(|p| !slices_of_one(&message, p));
        assert!(none_within, "a message past the bound is copied, not kept alive whole");

        let stored = Bytes::from(encode_into(&entry, Vec::new()).expect("encode"));
        assert!(stored.len() <= entry_len_hint(&entry), "the hint covers the entry: {}", stored.len());
        let read_back: Entry = decode_shared(&stored).expect("decode");
        assert_eq!(read_back, entry);
    }
}
