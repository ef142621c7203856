//! One RocksDB instance per node, shared by every Raft group it hosts.
//!
//! - [`GroupLogStore`]: a group's Raft log and vote (openraft's `RaftLogStorage`).
//! - [`GroupStateMachine`]: a group's applied state: streams of records with
//!   dense offsets and an arrival-time index, or the cluster config.
//! - [`WalSyncer`]: group commit. Log appends of all groups are written to
//!   RocksDB unsynced and then wait for one shared `fsync` of the WAL; one
//!   fsync covers every append written before it, whatever its group.

mod compaction;
mod dedupe_expiry;
mod dedupe_table;
mod dedupe_window;
mod event_tail;
pub(crate) mod keys;
mod log_store;
mod log_tail;
mod memory;
mod read_view;
mod snapshot;
mod state_machine;
mod stream_keys;
mod wal_sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Options};

pub use dedupe_window::DEFAULT_IDLE_GRACE_MS;
pub(crate) use log_store::GroupLogStore;
pub(crate) use snapshot::{Snapshot, SnapshotData, check_snapshot_file};
pub(crate) use state_machine::{
    AppliedConfig, DedupeMemory, GroupStateMachine, Raft, ReadBatch, StoredRecord, StreamExtent, StreamView,
};
pub(crate) use wal_sync::WalSyncer;

use crate::error::BrokerError;
pub(crate) use crate::store::compaction::CompactionBacklog;
use crate::store::dedupe_expiry::DedupeHorizons;
use crate::store::keys::ALL_CFS;
pub(crate) use crate::store::memory::MemoryUsage;
use crate::store::memory::{MemoryBudget, SharedMemory};

/// The node's storage: the RocksDB instance and the snapshot directory.
#[derive(Clone)]
pub(crate) struct Store {
    db: Arc<DB>,
    wal: WalSyncer,
    snapshot_dir: PathBuf,
    dedupe_horizons: Arc<DedupeHorizons>,
    /// How long past its window an idle stream's dedupe window stays in memory (`--dedupe-idle-grace-ms`).
    dedupe_idle_grace_ms: u64,
}

impl Store {
    /// Opens (or creates) the store under `dir`: RocksDB in `dir/db`,
    /// snapshots in `dir/snapshots`.
    pub(crate) fn open(dir: &Path) -> Result<Self, BrokerError> {
        Self::open_tuned(dir, |variable| std::env::var(variable).ok())
    }

    /// [`Store::open`] with the column families' tuning looked up in `lookup` rather than the environment
    /// ([`cf_options_variable`]).
    pub(crate) fn open_tuned(dir: &Path, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, BrokerError> {
        let data_dir_error = |reason: String| BrokerError::DataDir { path: dir.to_path_buf(), reason };
        // RocksDB fsyncs its own directory's entries; the directories above it are Sluice's to make durable.
        crate::durable_fs::create_dir_all(&dir.join("db")).map_err(|e| data_dir_error(e.to_string()))?;
        let snapshot_dir = dir.join("snapshots");
        crate::durable_fs::create_dir_all(&snapshot_dir).map_err(|e| data_dir_error(e.to_string()))?;

        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Writes go to the WAL unsynced; durability comes from WalSyncer's fsync.
        options.set_manual_wal_flush(false);
        // Applied state skips the WAL (state_machine.rs): the column families must reach disk as of one point.
        options.set_atomic_flush(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.increase_parallelism(2);
        // Memory bounded whatever the size of the data (memory.rs).
        let memory = SharedMemory::new(MemoryBudget::default());
        memory.apply_to_db(&mut options);
        memory.apply_to_cf("default", &mut options, rocksdb::BlockBasedOptions::default());
        let dedupe_horizons = Arc::new(DedupeHorizons::default());
        let mut cfs = Vec::new();
        for name in ALL_CFS {
            let mut cf_options = tuned_cf_options(name, &lookup).map_err(data_dir_error)?;
            cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
            // Data dirs of earlier versions hold dedupe keys here, looked up (almost always missing) until
            // the windows pass them: bloom filters (memtable and, set by `apply_to_cf`, SST) answer a miss
            // without searching. Keys are no longer written here (dedupe_window.rs).
            memory.apply_to_cf(name, &mut cf_options, rocksdb::BlockBasedOptions::default());
            if name == crate::store::keys::CF_DEDUPE {
                cf_options.set_memtable_prefix_bloom_ratio(0.1);
                cf_options.set_memtable_whole_key_filtering(true);
                // Keys behind their stream's window go when compaction rewrites them (dedupe_expiry.rs);
                // files no write touches are still rewritten (and so pruned) at least hourly.
                let horizons = dedupe_horizons.clone();
                cf_options.set_compaction_filter(
                    "sluice-dedupe-expiry",
                    move |_level: u32, key: &[u8], value: &[u8]| {
                        if horizons.keep(key, value) {
                            rocksdb::compaction_filter::Decision::Keep
                        } else {
                            rocksdb::compaction_filter::Decision::Remove
                        }
                    },
                );
                cf_options.set_periodic_compaction_seconds(3600);
            }
            cfs.push(ColumnFamilyDescriptor::new(name, cf_options));
        }
        let db = DB::open_cf_descriptors(&options, dir.join("db"), cfs).map_err(|e| {
            let text = e.to_string();
            if text.contains("lock") || text.contains("LOCK") {
                data_dir_error("it is in use by another sluice process".to_string())
            } else {
                data_dir_error(text)
            }
        })?;
        let db = Arc::new(db);
        let wal = WalSyncer::start(db.clone());
        let dedupe_idle_grace_ms = dedupe_window::DEFAULT_IDLE_GRACE_MS;
        Ok(Self { db, wal, snapshot_dir, dedupe_horizons, dedupe_idle_grace_ms })
    }

    pub(crate) fn db(&self) -> &Arc<DB> {
        &self.db
    }

    pub(crate) fn wal(&self) -> &WalSyncer {
        &self.wal
    }

    pub(crate) fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    /// The store with idle streams' dedupe windows kept `grace` past their window (the groups opened after).
    pub(crate) fn with_dedupe_idle_grace(mut self, grace: std::time::Duration) -> Self {
        self.dedupe_idle_grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// What decides which dedupe windows a group opened on this store holds in memory.
    pub(crate) fn dedupe_memory(&self) -> DedupeMemory {
        DedupeMemory::with_grace(self.dedupe_idle_grace_ms)
    }

    pub(crate) fn dedupe_horizons(&self) -> &Arc<DedupeHorizons> {
        &self.dedupe_horizons
    }

    /// What RocksDB holds in memory now.
    pub(crate) fn memory_usage(&self) -> MemoryUsage {
        MemoryUsage::read(&self.db)
    }

    /// How far compaction is behind, and whether RocksDB holds writes back for it.
    pub(crate) fn compaction_backlog(&self) -> CompactionBacklog {
        CompactionBacklog::read(&self.db)
    }
}

/// The environment variable that tunes one column family's RocksDB options, e.g.
/// `SLUICE_ROCKSDB_OPTIONS_EVENTS="level0_file_num_compaction_trigger=8"` (RocksDB's option-string syntax).
/// For benchmarking and for operators who measured; what Sluice sets for memory, filters and blob files is
/// applied over it.
pub(crate) fn cf_options_variable(cf: &str) -> String {
    format!("SLUICE_ROCKSDB_OPTIONS_{}", cf.to_ascii_uppercase())
}

/// A column family's compaction, before the environment's tuning ([`cf_options_variable`]).
///
/// `events` and `dedupe` compact as universal (tiered) compaction. Under leveled compaction every memtable
/// flush made an L0 file spanning the newest keys of every group (events) or keys all over the key space
/// (dedupe, keyed by event id), so it overlapped the whole of L1 and each compaction rewrote all of it:
/// every event's key was rewritten 5–8 times within 30 seconds of a benchmark, more as the data grew.
/// Tiered compaction merges sorted runs of similar size, rewriting each key about log₂(data ÷ memtable)
/// times. The price is space: trimmed events and expired dedupe keys stay on disk until the run holding
/// them is merged, up to about twice the live data (`max_size_amplification_percent`, 200 %). The Raft
/// log stays leveled: its keys are one per entry, cheap to rewrite, and its purged entries (and their blob
/// files) go promptly.
///
/// `time_index` compacts tiered too (docs/benchmarks.md, "Session 72"). Its keys are one per append, in
/// arrival order per stream, so under leveled compaction each flush's file overlapped the whole of L1 as the
/// events' did. With its values in blob files (batches: an append's fingerprints take 768 bytes for 64
/// events) that was cheap; an append of one event keeps its 13-byte value inline, and one node at 20,000
/// single-event requests/s rewrote each key about 12 times: 9.8 M records through its compactions and 3.4 s
/// of CPU in 40 s, more than every other column family together (1.8 M records and 0.7 s tiered). Its reads
/// are seeks (replay from a time, a dedupe window's rebuild) and the rare confirmation of a nominated
/// duplicate, which may consult up to 8 sorted runs behind the memtables.
///
/// `events` and `time_index` merge once 8 sorted runs have piled up rather than RocksDB's 4: the events'
/// keys (one per event, with a blob reference) were still rewritten about four times within 30 s of a
/// batched benchmark, and at 8 the compactions of a node of three took half the CPU (1.78 → 0.89 s per
/// 30 s; 16 saved no more). The price is up to 8 runs for a read behind the memtables to consult; the
/// dispatcher reads the newest events, mostly from the memtables, and a drain of 10 M events of backlog is
/// the measure that it holds.
fn default_cf_options(cf: &str) -> Options {
    let mut options = Options::default();
    if cf == keys::CF_EVENTS || cf == keys::CF_TIME_INDEX || cf == keys::CF_DEDUPE {
        options.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
    }
    if cf == keys::CF_EVENTS || cf == keys::CF_TIME_INDEX {
        options.set_level_zero_file_num_compaction_trigger(SORTED_RUNS_BEFORE_COMPACTION);
    }
    options
}

/// See [`default_cf_options`].
const SORTED_RUNS_BEFORE_COMPACTION: i32 = 8;

fn tuned_cf_options(cf: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Options, String> {
    let variable = cf_options_variable(cf);
    let mut options = default_cf_options(cf);
    match lookup(&variable) {
        Some(text) if !text.trim().is_empty() => {
            let options = options.get_options_from_string(&text).map_err(|e| format!("{variable}: {e}"))?;
            tracing::info!(column_family = cf, options = %text, "RocksDB options tuned from the environment");
            Ok(options)
        }
        _ => Ok(options),
    }
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, std::io::Error> {
    db.cf_handle(name).ok_or_else(|| std::io::Error::other(format!("column family {name} is missing")))
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests;
