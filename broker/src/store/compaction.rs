//! How far RocksDB's compaction is behind. In: RocksDB's properties; out: the `sluice_store_compaction_*` and
//! `sluice_store_write_*` gauges. Compaction that falls behind shows as pending bytes first and then as
//! writes RocksDB delays or stops until it catches up: a stall of every group on the node.

use rocksdb::DB;

use crate::store::keys::ALL_CFS;

/// How far compaction is behind, from RocksDB's properties; `None` where RocksDB does not know a property.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CompactionBacklog {
    /// Bytes RocksDB estimates compaction must rewrite to bring every column family back within its shape,
    /// summed over the column families.
    pub pending_bytes: Option<u64>,
    pub running: Option<u64>,
    /// The rate RocksDB holds writes to while compaction catches up (0: writes are not delayed).
    pub delayed_write_rate_bytes_per_second: Option<u64>,
    pub writes_stopped: Option<bool>,
}

impl CompactionBacklog {
    pub(crate) fn read(db: &DB) -> CompactionBacklog {
        let db_property = |name: &str| db.property_int_value(name).ok().flatten();
        let pending = ALL_CFS
            .iter()
            .filter_map(|name| db.cf_handle(name))
            .map(|cf| db.property_int_value_cf(cf, "rocksdb.estimate-pending-compaction-bytes").ok().flatten());
        CompactionBacklog {
            pending_bytes: pending.sum(),
            running: db_property("rocksdb.num-running-compactions"),
            delayed_write_rate_bytes_per_second: db_property("rocksdb.actual-delayed-write-rate"),
            writes_stopped: db_property("rocksdb.is-write-stopped").map(|stopped| stopped != 0),
        }
    }

    pub(crate) fn publish(&self) {
        let gauges = [
            ("sluice_store_compaction_pending_bytes", self.pending_bytes),
            ("sluice_store_compactions_running", self.running),
            ("sluice_store_write_delayed_rate_bytes_per_second", self.delayed_write_rate_bytes_per_second),
            ("sluice_store_writes_stopped", self.writes_stopped.map(u64::from)),
        ];
        for (name, value) in gauges {
            if let Some(value) = value {
                metrics::gauge!(name).set(value as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_store_reports_every_backlog_property_at_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("open");
        let backlog = store.compaction_backlog();
        assert_eq!(
            backlog,
            CompactionBacklog {
                pending_bytes: Some(0),
                running: Some(0),
                delayed_write_rate_bytes_per_second: Some(0),
                writes_stopped: Some(false),
            },
            "every property known to RocksDB, and nothing behind"
        );
    }
}
