//! What one `apply` call stages: its writes in one RocksDB `WriteBatch`, sized once for the entries' records,
//! and the changes to publish to readers once the batch is written.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use openraft::EntryPayload;
use rocksdb::WriteBatch;

use crate::command::{Entry, LogCommand, ResourceKey};
use crate::store::read_view::{AppliedConfig, StreamState};

/// Writes of one `apply` call, staged in one `WriteBatch`, and the view
/// changes to publish once it is written.
#[derive(Default)]
pub(super) struct Staged {
    /// The cluster config as changed by the entries staged so far (metadata group).
    pub(super) new_config: Option<AppliedConfig>,
    pub(super) batch: WriteBatch,
    /// The streams as the entries staged so far left them; written to the batch once each, at the end.
    pub(super) streams: HashMap<String, StreamState>,
    /// One event's stored value at a time, on its way into `batch` (which copies it).
    pub(super) value_scratch: Vec<u8>,
    /// (stream id, dedupe horizon) of each append with dedupe, published once the batch is written.
    pub(super) dedupe_horizons: Vec<(u32, u64)>,
    pub(super) resources: BTreeMap<ResourceKey, Option<String>>,
    /// Payload bytes of the records staged so far, by (stream id, offset).
    pub(super) event_bytes: BTreeMap<(u32, u64), u64>,
    /// The records staged, (stream id, offset, arrival, payload), for the readers' tail once written.
    pub(super) tail_records: Vec<(u32, u64, u64, Bytes)>,
    /// The trims staged, (stream id, new start).
    pub(super) tail_trims: Vec<(u32, u64)>,
    /// Consumer offsets staged so far (`None`: deleted), so that later
    /// commits of the same apply compare against them, not the older disk value.
    pub(super) offsets: HashMap<String, Option<u64>>,
    /// Offset commits applied (for the metric).
    pub(super) offset_commits: u64,
}

impl Staged {
    /// Staging for `entries`, its batch sized for their records: each record's stored value (its payload and
    /// arrival time), key and RocksDB's record header, and room for the streams' states and the applied id.
    pub(super) fn sized_for<'a>(entries: impl Iterator<Item = &'a Entry>) -> Self {
        const RECORD_OVERHEAD: usize = 64;
        let record_bytes: usize = entries
            .filter_map(|entry| match &entry.payload {
                EntryPayload::Normal(LogCommand::Append(appends)) => Some(appends),
                _ => None,
            })
            .flat_map(|appends| appends.iter())
            .map(|append| append.payload_bytes() + append.payloads.len() * RECORD_OVERHEAD + 256)
            .sum();
        Staged { batch: WriteBatch::with_capacity_bytes(record_bytes + 1024), ..Staged::default() }
    }

    /// Records what an append or trim left `stream` as (written once per apply, by `commit_staged`).
    pub(super) fn set_stream(&mut self, stream: &str, state: StreamState) {
        match self.streams.get_mut(stream) {
            Some(staged) => *staged = state,
            None => {
                self.streams.insert(stream.to_string(), state);
            }
        }
    }
}
