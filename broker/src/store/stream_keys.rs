//! The state machine's side of a dedupe window's lookups beyond memory. In: a stream's append (its keys, the
//! dedupe horizon) and a live key's place in the `time_index`. Out: whether an earlier version's `dedupe`
//! column family saw a key, and a live key's full fingerprint, read from RocksDB.

use std::io;

use rocksdb::DB;

use super::{cf, io_err};
use crate::command::GroupId;
use crate::store::dedupe_window::{Fingerprint, KeyLookup, StoredKey, indexed_fingerprint};
use crate::store::keys::{CF_DEDUPE, CF_TIME_INDEX, dedupe_seen_key, time_index_key};

/// Where an append's dedupe keys are looked up beyond its stream's window: the `dedupe` column family
/// (appends of earlier versions) and the `time_index` (full fingerprints of live keys).
pub(crate) struct StreamKeys<'a> {
    pub(crate) db: &'a DB,
    pub(crate) group: GroupId,
    pub(crate) stream_id: u32,
    pub(crate) keys: &'a [bytes::Bytes],
    pub(crate) horizon_ms: u64,
}

impl KeyLookup for StreamKeys<'_> {
    type Error = io::Error;

    fn legacy_seen(&mut self, index: usize) -> io::Result<bool> {
        let key = self.keys.get(index).ok_or_else(|| io_err("dedupe key index past the append"))?;
        legacy_seen_since(self.db, self.group, self.stream_id, key, self.horizon_ms)
    }

    fn stored_fingerprint(&mut self, key: StoredKey) -> io::Result<Fingerprint> {
        // A duplicate, or a new key whose 32 kept bits match a live one's: how often the second happens is
        // what the window's short hashes cost in reads.
        metrics::counter!("sluice_dedupe_fingerprint_reads_total", "group" => crate::ids::group_name(self.group))
            .increment(1);
        let index_key = time_index_key(self.group, self.stream_id, key.arrival_ms, key.append_offset);
        let value = self.db.get_pinned_cf(cf(self.db, CF_TIME_INDEX)?, index_key).map_err(io_err)?;
        // A live key's entry is kept until the key is forgotten (`stage_trim`): missing, it is a bug.
        value.as_deref().and_then(|value| indexed_fingerprint(value, key.index)).ok_or_else(|| {
            io_err(format!(
                "dedupe window: the time index of stream {} has no fingerprint {} for the append at offset {}",
                self.stream_id, key.index, key.append_offset
            ))
        })
    }
}

/// Whether the `dedupe` column family, where earlier versions kept each stream's keys, has `key` seen at or
/// after `horizon_ms` (keys before it do not count, whether or not compaction has dropped them yet).
fn legacy_seen_since(db: &DB, group: GroupId, stream_id: u32, key: &[u8], horizon_ms: u64) -> io::Result<bool> {
    let Some(value) = db.get_cf(cf(db, CF_DEDUPE)?, dedupe_seen_key(group, stream_id, key)).map_err(io_err)? else {
        return Ok(false);
    };
    let seen_at_ms = u64::from_be_bytes(
        value.get(..8).and_then(|v| v.try_into().ok()).ok_or_else(|| io_err("malformed dedupe value"))?,
    );
    Ok(seen_at_ms >= horizon_ms)
}
