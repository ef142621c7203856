//! The store's memory budget. In: the column family's name; out: its RocksDB options.
//!
//! A node's RocksDB memory must not grow with the data it holds (a paused Trigger with millions of events
//! behind it, docs/benchmarks.md). RocksDB's defaults do grow: each column family gets its own 32 MiB block
//! cache and 2 × 64 MiB memtables, the index and filter blocks of every open table file stay in memory
//! outside any cache, and the WAL is kept until 4 × the memtables' total. So:
//! - one LRU block cache for every column family, with the memtables charged to it (a write buffer
//!   manager): what RocksDB caches and buffers is bounded by its capacity;
//! - index and filter blocks outside the cache (inside, ingest fell to a third, `apply_to_cf`), kept small:
//!   larger data blocks for events (one index entry per block), dedupe keys expired by compaction;
//! - memtables sized by what each column family takes (events and the Raft log take the bytes);
//! - the event bytes (events, Raft log entries) in blob files, outside the tables compaction rewrites;
//! - the WAL bounded, so column families that are written little (state, votes) get flushed and the old
//!   WAL files, which hold every event twice, are deleted.

use rocksdb::{BlockBasedOptions, Cache, DB, Options, WriteBufferManager};

use crate::store::keys::{ALL_CFS, CF_DEDUPE, CF_EVENTS, CF_RAFT_LOG, CF_TIME_INDEX};

/// The smallest value kept in a blob file ([`MemoryBudget::min_blob_bytes`]).
const MIN_BLOB_BYTES: u64 = 256;

/// What RocksDB may hold in memory and in its WAL, whatever the size of the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemoryBudget {
    /// The shared block cache: data blocks, and (charged to it) the memtables.
    pub cache_bytes: usize,
    /// All memtables together; a flush starts when they reach it.
    pub write_buffer_bytes: usize,
    /// One memtable of a column family that takes the bytes (events, the Raft log).
    pub large_memtable_bytes: usize,
    /// One memtable of any other column family.
    pub small_memtable_bytes: usize,
    /// The WAL files kept before the column families holding the oldest are flushed.
    pub wal_bytes: u64,
    /// Memtables a column family may hold: the one written and those waiting for their flush. At the limit
    /// RocksDB stops every write until a flush ends (why four: `apply_to_cf`).
    pub memtables_per_cf: i32,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget {
            cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            large_memtable_bytes: 8 << 20,
            small_memtable_bytes: 4 << 20,
            wal_bytes: 128 << 20,
            memtables_per_cf: 4,
        }
    }
}

impl MemoryBudget {
    /// The memtable size of a column family.
    pub(crate) fn memtable_bytes(&self, cf: &str) -> usize {
        if cf == CF_EVENTS || cf == CF_RAFT_LOG { self.large_memtable_bytes } else { self.small_memtable_bytes }
    }

    /// Values at least this large are kept in blob files rather than in the column family's tables: the
    /// events and the Raft log's entries, which carry the events' bytes, and the time index's values, which
    /// carry an append's dedupe fingerprints (12 bytes per event: 768 bytes for a batch of 64). Smaller ones
    /// (a tiny event, an entry of a few commands, a short append's fingerprints) stay inline, where a blob
    /// reference would save nothing. The time index's keys are one per append, in arrival order per stream,
    /// so leveled compaction rewrote each of them (and its fingerprints) about ten times (measured:
    /// 65 MB written by its compactions per 30 s on one node of three, 1.3 MB with the values in blobs).
    /// An append of one event still rewrote its key that often, value inline: the time index compacts
    /// tiered now (`store::default_cf_options`).
    pub(crate) fn min_blob_bytes(&self, cf: &str) -> Option<u64> {
        (cf == CF_EVENTS || cf == CF_RAFT_LOG || cf == CF_TIME_INDEX).then_some(MIN_BLOB_BYTES)
    }

    /// Data blocks of a column family: larger for events, read in offset order by the dispatcher, so that
    /// the index (one entry per block) stays small.
    pub(crate) fn block_bytes(&self, cf: &str) -> usize {
        if cf == CF_EVENTS { 16 << 10 } else { 4 << 10 }
    }
}

/// The cache and write buffer manager every column family of one DB shares.
pub(crate) struct SharedMemory {
    pub budget: MemoryBudget,
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl SharedMemory {
    pub(crate) fn new(budget: MemoryBudget) -> Self {
        let cache = Cache::new_lru_cache(budget.cache_bytes);
        // Not stalling writes: a full budget makes RocksDB flush, and the WAL's group commit paces writers.
        let write_buffers =
            WriteBufferManager::new_write_buffer_manager_with_cache(budget.write_buffer_bytes, false, cache.clone());
        SharedMemory { budget, cache, write_buffers }
    }

    /// The DB-wide options that bound memory and the WAL.
    pub(crate) fn apply_to_db(&self, options: &mut Options) {
        options.set_write_buffer_manager(&self.write_buffers);
        options.set_max_total_wal_size(self.budget.wal_bytes);
    }

    /// The options of one column family; `table` carries what the caller set (e.g. a bloom filter).
    pub(crate) fn apply_to_cf(&self, cf: &str, options: &mut Options, mut table: BlockBasedOptions) {
        options.set_write_buffer_size(self.budget.memtable_bytes(cf));
        // With `atomic_flush` every column family with data switches to a new memtable whenever one of them
        // fills or a snapshot flushes the state machine, and the flushes run one at a time. At two memtables
        // (RocksDB's default) a second switch during a flush stopped every write until that flush ended: the
        // LOG of each node of three at their max showed "Stopping writes because we have 2 immutable
        // memtables" 17–25 times in three minutes, each for up to the longest flush (109 ms); at four, none.
        // The memtables stay charged to the shared cache (the write buffer manager).
        options.set_max_write_buffer_number(self.budget.memtables_per_cf);
        table.set_block_cache(&self.cache);
        // Index and filter blocks stay with their table files, outside the cache: inside it (measured,
        // docs/benchmarks.md) every dedupe lookup and iterator fetched them through the cache and ingest fell
        // to a third once the data outgrew it. Their size is bounded instead: the events' larger blocks keep
        // the index small, and the dedupe keys (the filters) go once they are behind their window.
        table.set_block_size(self.budget.block_bytes(cf));
        if cf == CF_DEDUPE {
            table.set_bloom_filter(10.0, false);
        }
        options.set_block_based_table_factory(&table);
        if let Some(min_blob_bytes) = self.budget.min_blob_bytes(cf) {
            // Key-value separation (RocksDB's integrated BlobDB): event bytes go to blob files when a memtable
            // is flushed, and compaction rewrites only the keys and blob references. With the bytes inline,
            // every event was rewritten about five times by compaction (each L0 file spans every group's
            // newest keys, so it overlaps all of L1), and compaction took 40 % of a three-node cluster's CPU
            // (docs/benchmarks.md, "Session 18"). A blob file goes once compaction has dropped the keys of all
            // its values: events are trimmed and entries purged oldest first, so files empty in the order they
            // were written. No blob GC: it rewrites the live values of the oldest files at every compaction,
            // which cost more CPU than the separation saved (measured). The price: a file holding events of
            // streams trimmed at very different times stays until the last of them is trimmed (disk, never
            // correctness).
            options.set_enable_blob_files(true);
            options.set_min_blob_size(min_blob_bytes);
            options.set_blob_compression_type(rocksdb::DBCompressionType::Lz4);
            options.set_enable_blob_gc(false);
            options.set_blob_cache(&self.cache);
        }
    }
}

/// What RocksDB holds in memory now, in bytes (the `sluice_store_*_bytes` gauges).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemoryUsage {
    pub memtables: u64,
    pub table_readers: u64,
    pub block_cache: u64,
    pub pinned: u64,
}

impl MemoryUsage {
    /// Memtables and table readers summed over every column family (the DB-wide property names answer for
    /// the default column family only); the block cache is shared, so any column family tells it.
    pub(crate) fn read(db: &DB) -> MemoryUsage {
        let mut usage = MemoryUsage::default();
        for name in ALL_CFS {
            let Some(cf) = db.cf_handle(name) else { continue };
            let property = |property: &str| db.property_int_value_cf(cf, property).ok().flatten().unwrap_or(0);
            usage.memtables += property("rocksdb.cur-size-all-mem-tables");
            usage.table_readers += property("rocksdb.estimate-table-readers-mem");
            usage.block_cache = property("rocksdb.block-cache-usage");
            usage.pinned = property("rocksdb.block-cache-pinned-usage");
        }
        usage
    }

    pub(crate) fn publish(&self) {
        metrics::gauge!("sluice_store_memtable_bytes").set(self.memtables as f64);
        metrics::gauge!("sluice_store_table_readers_bytes").set(self.table_readers as f64);
        metrics::gauge!("sluice_store_block_cache_bytes").set(self.block_cache as f64);
        metrics::gauge!("sluice_store_block_cache_pinned_bytes").set(self.pinned as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_heavy_column_families_get_the_large_memtables_and_all_fit_the_budget() {
        let budget = MemoryBudget::default();
        assert_eq!(budget.memtable_bytes(CF_EVENTS), 8 << 20);
        assert_eq!(budget.memtable_bytes(CF_RAFT_LOG), 8 << 20);
        assert_eq!(budget.memtable_bytes(CF_DEDUPE), 4 << 20);
        assert_eq!(budget.block_bytes(CF_EVENTS), 16 << 10);
        assert_eq!(budget.block_bytes(CF_DEDUPE), 4 << 10);
        assert_eq!(budget.min_blob_bytes(CF_EVENTS), Some(256));
        assert_eq!(budget.min_blob_bytes(CF_RAFT_LOG), Some(256));
        assert_eq!(budget.min_blob_bytes(CF_TIME_INDEX), Some(256));
        assert_eq!(budget.min_blob_bytes(CF_DEDUPE), None);
        // The write buffers are charged to the cache: they must leave it room for blocks.
        assert!(budget.write_buffer_bytes * 2 <= budget.cache_bytes);
        // One memtable of every column family fits the write buffer budget (and "default", unused, too).
        let one_each: usize = ALL_CFS.iter().chain(&["default"]).map(|cf| budget.memtable_bytes(cf)).sum();
        assert!(one_each <= budget.write_buffer_bytes + budget.small_memtable_bytes, "{one_each}");
    }

    #[test]
    fn the_usage_counts_the_memtables_of_every_column_family() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("open");
        let before = store.memory_usage();
        let events = store.db().cf_handle(CF_EVENTS).expect("events column family");
        for i in 0u32..1000 {
            store.db().put_cf(events, i.to_be_bytes(), [7u8; 1024]).expect("put");
        }
        let after = store.memory_usage();
        assert!(after.memtables >= before.memtables + 1000 * 1024, "{before:?} → {after:?}");
        // The memtables are charged to the shared cache.
        assert!(after.block_cache >= 1000 * 1024, "{after:?}");
    }
}
