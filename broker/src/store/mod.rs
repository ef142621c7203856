//! One RocksDB instance per node, shared by every Raft group it hosts.
//!
//! - [`GroupLogStore`]: a group's Raft log and vote (openraft's `RaftLogStorage`).
//! - [`GroupStateMachine`]: a group's applied state: streams of records with
//!   dense offsets and an arrival-time index, or the cluster config.
//! - [`WalSyncer`]: group commit. Log appends of all groups are written to
//!   RocksDB unsynced and then wait for one shared `fsync` of the WAL; one
//!   fsync covers every append written before it, whatever its group.

mod dedupe_expiry;
pub(crate) mod keys;
mod log_store;
mod memory;
mod read_view;
mod snapshot;
mod state_machine;
mod wal_sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Options};

pub(crate) use log_store::GroupLogStore;
pub(crate) use snapshot::{Snapshot, SnapshotFile};
pub(crate) use state_machine::{
    AppliedConfig, GroupStateMachine, Raft, ReadBatch, StoredRecord, StreamExtent, StreamView,
};
pub(crate) use wal_sync::WalSyncer;

use crate::error::BrokerError;
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
}

impl Store {
    /// Opens (or creates) the store under `dir`: RocksDB in `dir/db`,
    /// snapshots in `dir/snapshots`.
    pub(crate) fn open(dir: &Path) -> Result<Self, BrokerError> {
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
        let cfs = ALL_CFS.iter().map(|name| {
            let mut cf_options = Options::default();
            cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
            // Every appended event looks its dedupe key up, and almost every lookup misses: bloom filters
            // (memtable and, set by `apply_to_cf`, SST) answer a miss without searching.
            memory.apply_to_cf(name, &mut cf_options, rocksdb::BlockBasedOptions::default());
            if *name == crate::store::keys::CF_DEDUPE {
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
            ColumnFamilyDescriptor::new(*name, cf_options)
        });
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
        Ok(Self { db, wal, snapshot_dir, dedupe_horizons })
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

    pub(crate) fn dedupe_horizons(&self) -> &Arc<DedupeHorizons> {
        &self.dedupe_horizons
    }

    /// What RocksDB holds in memory now.
    pub(crate) fn memory_usage(&self) -> MemoryUsage {
        MemoryUsage::read(&self.db)
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
