//! What readers of a group see, on any node at any time: the applied streams (extent, records by offset,
//! offset by arrival time), committed consumer offsets, resource objects and the cluster config.
//! `GroupStateMachine` (state_machine.rs) writes this view as it applies entries; everyone else only
//! reads it, through [`StreamView`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::event_tail::EventTail;
pub(crate) use super::event_tail::StoredRecord;
use super::{cf, io_err};
use crate::command::cluster_config::ClusterConfig;
use crate::command::{GroupId, NodeId, ResourceKey};
use crate::store::keys::{
    CF_EVENTS, CF_SM_STATE, CF_TIME_INDEX, SM_OFFSET, event_key, event_offset_of, offset_key, split_event_value,
    tag_key, time_index_key, time_index_offset_of,
};

/// Where a stream stands, persisted in `sm_state` under its name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StreamState {
    /// Compact id used in event keys, unique within the group.
    pub(super) id: u32,
    pub(super) next_offset: u64,
    pub(super) last_arrival_ms: u64,
    /// The first retained offset (retention trims below it).
    pub(super) start_offset: u64,
    /// Payload bytes of the retained records.
    pub(super) retained_bytes: u64,
    /// Dedupe keys seen before this arrival time count as not seen, whatever the window is now. It only
    /// moves forward (to the arrival minus the window of each append with dedupe), so every replica
    /// forgets the same keys, and compaction may drop them from disk at any time (`dedupe_expiry.rs`).
    pub(super) dedupe_horizon_ms: u64,
}

/// A stream's state as stored before `dedupe_horizon_ms` existed (postcard has no optional trailing fields).
#[derive(Deserialize)]
struct StreamStateWithoutHorizon {
    id: u32,
    next_offset: u64,
    last_arrival_ms: u64,
    start_offset: u64,
    retained_bytes: u64,
}

impl StreamState {
    /// Decodes a stored state, of this version or the one before (whose keys nothing had forgotten yet).
    pub(super) fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        crate::command::decode::<StreamState>(bytes).or_else(|current_error| {
            let old: StreamStateWithoutHorizon = crate::command::decode(bytes).map_err(|_| current_error)?;
            Ok(StreamState {
                id: old.id,
                next_offset: old.next_offset,
                last_arrival_ms: old.last_arrival_ms,
                start_offset: old.start_offset,
                retained_bytes: old.retained_bytes,
                dedupe_horizon_ms: 0,
            })
        })
    }
}

/// How much of a stream is retained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StreamExtent {
    pub start_offset: u64,
    pub end_offset: u64,
    pub retained_bytes: u64,
}

/// The cluster config as applied (metadata group), with when each former
/// member was last taken out of its member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AppliedConfig {
    pub config: ClusterConfig,
    /// Node id → log index of the entry that last removed it from `members`.
    pub removed_at: BTreeMap<NodeId, u64>,
}

/// What readers of a group see: the applied streams and cluster config.
pub(super) struct AppliedView {
    pub(super) streams: RwLock<HashMap<String, StreamState>>,
    /// The streams' newest records, written before `streams` shows them.
    pub(super) tail: Mutex<EventTail>,
    /// Resource objects (metadata group), JSON text by key.
    pub(super) resources: RwLock<BTreeMap<ResourceKey, String>>,
    /// Bumped on every resource change, so watchers re-read.
    pub(super) resources_version: watch::Sender<u64>,
    pub(super) cluster_config: watch::Sender<Option<AppliedConfig>>,
    pub(super) applied_index: watch::Sender<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadBatch {
    pub records: Vec<StoredRecord>,
    /// One past the last applied offset of the stream.
    pub end_offset: u64,
    /// The first retained offset.
    pub start_offset: u64,
}

/// Read access to a group's applied state (any node, any time).
#[derive(Clone)]
pub(crate) struct StreamView {
    pub(super) db: Arc<DB>,
    pub(super) group: GroupId,
    pub(super) view: Arc<AppliedView>,
}

impl StreamView {
    fn stream_state(&self, stream: &str) -> Option<StreamState> {
        self.view.streams.read().ok().and_then(|streams| streams.get(stream).cloned())
    }

    /// The retained range of a stream and its size.
    pub(crate) fn extent(&self, stream: &str) -> StreamExtent {
        self.stream_state(stream)
            .map(|s| StreamExtent {
                start_offset: s.start_offset,
                end_offset: s.next_offset,
                retained_bytes: s.retained_bytes,
            })
            .unwrap_or_default()
    }

    /// `(offset, payload bytes)` of the retained records from the start, in order, as far as a size limit drops:
    /// until those before the last one read add up to `bytes` (the last is the first record kept). Regression:
    /// every retained record was read, and its size kept, at every retention pass of a stream over its size
    /// limit (one at its limit under steady ingest is over it at nearly every pass), filling the block cache.
    pub(crate) fn record_sizes_to_drop(&self, stream: &str, bytes: u64) -> io::Result<Vec<(u64, u64)>> {
        let Some(state) = self.stream_state(stream) else { return Ok(Vec::new()) };
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(event_key(self.group, state.id, state.next_offset).to_vec());
        // A scan read once: through, not into, the block cache (docs/memory.md).
        read_options.fill_cache(false);
        let start = event_key(self.group, state.id, state.start_offset);
        let mut sizes = Vec::new();
        let mut dropped = 0u64;
        for item in self.db.iterator_cf_opt(
            cf(&self.db, CF_EVENTS)?,
            read_options,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (key, value) = item.map_err(io_err)?;
            let offset = event_offset_of(&key).ok_or_else(|| io_err("malformed event key"))?;
            let size = value.len().saturating_sub(8) as u64;
            sizes.push((offset, size));
            if dropped >= bytes {
                break;
            }
            dropped += size;
        }
        Ok(sizes)
    }

    /// One past the last applied offset (0 for a stream never written).
    pub(crate) fn end_offset(&self, stream: &str) -> u64 {
        self.stream_state(stream).map(|s| s.next_offset).unwrap_or(0)
    }

    /// Records from `from_offset`, at most `max_records` and about `max_bytes`
    /// (always at least one record if there is one).
    pub(crate) fn read(
        &self,
        stream: &str,
        from_offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<ReadBatch> {
        let Some(state) = self.stream_state(stream) else {
            return Ok(ReadBatch::default());
        };
        let mut batch =
            ReadBatch { records: Vec::new(), end_offset: state.next_offset, start_offset: state.start_offset };
        if from_offset >= state.next_offset || max_records == 0 {
            return Ok(batch);
        }
        let held = self.view.tail.lock().unwrap_or_else(PoisonError::into_inner).read(
            state.id,
            from_offset,
            state.next_offset,
            max_records,
            max_bytes,
        );
        if let Some(records) = held {
            metrics::counter!("sluice_stream_reads_total", "from" => "memory").increment(1);
            batch.records = records;
            return Ok(batch);
        }
        metrics::counter!("sluice_stream_reads_total", "from" => "store").increment(1);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(event_key(self.group, state.id, state.next_offset).to_vec());
        // Consumers read forward and never twice: a backlog's blocks would only push everything else out
        // of the shared cache (store/memory.rs).
        read_options.fill_cache(false);
        let start = event_key(self.group, state.id, from_offset);
        let iter = self.db.iterator_cf_opt(
            cf(&self.db, CF_EVENTS)?,
            read_options,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut bytes = 0usize;
        for item in iter {
            let (key, value) = item.map_err(io_err)?;
            let offset = event_offset_of(&key).ok_or_else(|| io_err("malformed event key"))?;
            let (arrival_ms, payload_len) = split_event_value(&value)
                .map(|(arrival_ms, payload)| (arrival_ms, payload.len()))
                .ok_or_else(|| io_err("malformed event value"))?;
            bytes += payload_len;
            // The payload is the value read past its arrival time: a slice of it, not another copy.
            let value = Bytes::from(value);
            let payload = value.slice(value.len() - payload_len..);
            batch.records.push(StoredRecord { offset, arrival_ms, payload });
            if batch.records.len() >= max_records || bytes >= max_bytes {
                break;
            }
        }
        Ok(batch)
    }

    /// The first offset whose arrival time is at or after `time_ms`; the end
    /// offset if there is none.
    pub(crate) fn offset_for_time(&self, stream: &str, time_ms: u64) -> io::Result<u64> {
        let Some(state) = self.stream_state(stream) else {
            return Ok(0);
        };
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(time_index_key(self.group, state.id, u64::MAX, u64::MAX).to_vec());
        let start = time_index_key(self.group, state.id, time_ms, 0);
        let mut iter = self.db.iterator_cf_opt(
            cf(&self.db, CF_TIME_INDEX)?,
            read_options,
            IteratorMode::From(&start, Direction::Forward),
        );
        match iter.next() {
            Some(item) => {
                let (key, _) = item.map_err(io_err)?;
                Ok(time_index_offset_of(&key)
                    .ok_or_else(|| io_err("malformed time index key"))?
                    .max(state.start_offset))
            }
            None => Ok(state.next_offset),
        }
    }

    pub(crate) fn cluster_config(&self) -> Option<ClusterConfig> {
        self.view.cluster_config.borrow().as_ref().map(|applied| applied.config.clone())
    }

    /// The cluster's partition count (0 before `cluster init`), read without copying the config: every
    /// publish asks.
    pub(crate) fn partitions(&self) -> u32 {
        self.view.cluster_config.borrow().as_ref().map_or(0, |applied| applied.config.partitions)
    }

    /// Changes to the cluster config (metadata group), with when each former
    /// member was last removed from the member list.
    pub(crate) fn watch_cluster_config(&self) -> watch::Receiver<Option<AppliedConfig>> {
        self.view.cluster_config.subscribe()
    }

    /// The applied log index; changes whenever entries are applied.
    pub(crate) fn watch_applied(&self) -> watch::Receiver<u64> {
        self.view.applied_index.subscribe()
    }

    /// A resource object's JSON (metadata group).
    pub(crate) fn resource(&self, key: &ResourceKey) -> Option<String> {
        self.view.resources.read().ok().and_then(|r| r.get(key).cloned())
    }

    /// Every resource of `kind`, ordered by namespace and name.
    pub(crate) fn resources(&self, kind: &str) -> Vec<(ResourceKey, String)> {
        self.view
            .resources
            .read()
            .map(|r| r.iter().filter(|(k, _)| k.kind == kind).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Changes whenever a resource is put or deleted.
    pub(crate) fn watch_resources(&self) -> watch::Receiver<u64> {
        self.view.resources_version.subscribe()
    }

    /// Names of the streams this group holds.
    pub(crate) fn stream_names(&self) -> Vec<String> {
        self.view.streams.read().map(|s| s.keys().cloned().collect()).unwrap_or_default()
    }

    /// A consumer cursor's committed offset (partition groups), as applied on
    /// this node. Read from RocksDB rather than cached: cursors can be many,
    /// and a consumer reads its own only when it (re)starts.
    pub(crate) fn committed_offset(&self, cursor: &str) -> io::Result<Option<u64>> {
        self.db
            .get_cf(cf(&self.db, CF_SM_STATE)?, offset_key(self.group, cursor))
            .map_err(io_err)?
            .map(|value| decode_offset(&value))
            .transpose()
    }

    /// Every committed cursor of the group and its offset, ordered by cursor name.
    pub(crate) fn committed_offsets(&self) -> io::Result<Vec<(String, u64)>> {
        let prefix = tag_key(self.group, SM_OFFSET);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(tag_key(self.group, SM_OFFSET + 1).to_vec());
        let mut offsets = Vec::new();
        for item in self.db.iterator_cf_opt(
            cf(&self.db, CF_SM_STATE)?,
            read_options,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, value) = item.map_err(io_err)?;
            let cursor = String::from_utf8(key[prefix.len()..].to_vec()).map_err(io_err)?;
            offsets.push((cursor, decode_offset(&value)?));
        }
        Ok(offsets)
    }
}

/// A committed offset's stored value: 8 bytes, big-endian.
fn decode_offset(value: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| io_err("malformed committed offset"))?;
    Ok(u64::from_be_bytes(bytes))
}
