//! A group's Raft log and vote in the shared RocksDB (`raft_log`, `raft_state`), with the newest entries also
//! held decoded in memory for the log's readers ([`LogTail`]).
//!
//! The committed log id is saved so that a restarting node re-applies its log up to it before any leader
//! speaks. The metadata group writes it at every commit: what a node decides at start (is it a member?) reads
//! the cluster config applied from it. A partition group writes it in its next append's batch instead, one
//! RocksDB write per append rather than two: after a restart it may re-apply less and learn the rest from its
//! leader (or, leading, from its own first commit), which Raft allows, and nothing reads a partition's applied
//! state at start (its dispatch waits for the leader's own term to be applied).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::log_tail::LogTail;
use super::{WalSyncer, cf, io_err};
use crate::command::{
    Entry, GroupId, LogId, METADATA_GROUP, TypeConfig, Vote, decode, decode_shared, encode, encode_into, entry_len_hint,
};
use crate::store::keys::{
    CF_RAFT_LOG, CF_RAFT_STATE, RAFT_STATE_COMMITTED, RAFT_STATE_LAST_PURGED, RAFT_STATE_VOTE, group_end, log_index_of,
    log_key, tag_key,
};

/// Bytes of encoded entries a group holds in its [`LogTail`]: at the 4–5 MB/s one partition of a batched
/// benchmark writes, about half a second, far more than apply and the replication streams lag when they keep
/// up; a node's groups together hold at most a few times this.
const LOG_TAIL_BYTES: usize = 2 << 20;

/// When a group's committed log id reaches RocksDB (the module's doc says why each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommittedWrites {
    AtEveryCommit,
    WithTheNextAppend,
}

/// The store and its log reader are clones sharing one tail.
#[derive(Clone)]
pub(crate) struct GroupLogStore {
    db: Arc<DB>,
    wal: WalSyncer,
    group: GroupId,
    tail: Arc<Mutex<LogTail<Entry>>>,
    committed_writes: CommittedWrites,
    /// The newest committed log id not written yet (`WithTheNextAppend` only).
    unwritten_committed: Arc<Mutex<Option<LogId>>>,
}

impl GroupLogStore {
    pub(crate) fn new(db: Arc<DB>, wal: WalSyncer, group: GroupId) -> Self {
        let committed_writes =
            if group == METADATA_GROUP { CommittedWrites::AtEveryCommit } else { CommittedWrites::WithTheNextAppend };
        Self {
            db,
            wal,
            group,
            tail: Arc::new(Mutex::new(LogTail::new(LOG_TAIL_BYTES))),
            committed_writes,
            unwritten_committed: Arc::new(Mutex::new(None)),
        }
    }

    fn unwritten_committed(&self) -> MutexGuard<'_, Option<LogId>> {
        self.unwritten_committed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tail's rules hold after every whole call, so a panic elsewhere cannot leave it half-changed.
    fn tail(&self) -> MutexGuard<'_, LogTail<Entry>> {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get_state<T: DeserializeOwned>(&self, tag: u8) -> io::Result<Option<T>> {
        let cf = cf(&self.db, CF_RAFT_STATE)?;
        match self.db.get_cf(cf, tag_key(self.group, tag)).map_err(io_err)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&bytes).map_err(io_err)?)),
        }
    }

    fn put_state<T: Serialize>(&self, tag: u8, value: &T) -> io::Result<()> {
        let cf = cf(&self.db, CF_RAFT_STATE)?;
        let bytes = encode(value).map_err(io_err)?;
        self.db.put_cf(cf, tag_key(self.group, tag), bytes).map_err(io_err)
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let end = group_end(self.group);
        let mut iter = self.db.iterator_cf(cf, IteratorMode::From(&end, Direction::Reverse));
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(io_err)?;
                if !key.starts_with(&self.group.to_be_bytes()) {
                    return Ok(None);
                }
                let entry: Entry = decode(&value).map_err(io_err)?;
                Ok(Some(entry.log_id()))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for GroupLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end_exclusive = match range.end_bound() {
            Bound::Included(x) => x.checked_add(1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if let Some(entries) = self.tail().range(start, end_exclusive) {
            metrics::counter!("sluice_raft_log_reads_total", "from" => "memory").increment(1);
            return Ok(entries);
        }
        metrics::counter!("sluice_raft_log_reads_total", "from" => "store").increment(1);
        let end_key = match range.end_bound() {
            Bound::Included(x) => match x.checked_add(1) {
                Some(next) => log_key(self.group, next).to_vec(),
                None => group_end(self.group),
            },
            Bound::Excluded(x) => log_key(self.group, *x).to_vec(),
            Bound::Unbounded => group_end(self.group),
        };
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(end_key);
        let start_key = log_key(self.group, start);
        let iter = self.db.iterator_cf_opt(cf, read_options, IteratorMode::From(&start_key, Direction::Forward));
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(io_err)?;
            // The entry's payloads are slices of the value read, not copies of it.
            let entry: Entry = decode_shared(&bytes::Bytes::from(value)).map_err(io_err)?;
            if log_index_of(&key) != Some(entry.index()) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "log key and entry index disagree"));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_state(RAFT_STATE_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for GroupLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_state(RAFT_STATE_LAST_PURGED)?;
        let last_entry = self.last_entry_log_id()?;
        self.tail().store_holds_through(last_entry.as_ref().map(|log_id| log_id.index()));
        let last_log_id = last_entry.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_state(RAFT_STATE_VOTE, vote)?;
        self.wal.sync().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Never synced. The metadata group writes it at every commit: writing it at most every 100 ms (session
        // 22) left a restart after kill -9 without the cluster config (t05's
        // node_id_not_in_the_stored_cluster_is_rejected).
        let Some(log_id) = committed else { return Ok(()) };
        match self.committed_writes {
            CommittedWrites::AtEveryCommit => self.put_state(RAFT_STATE_COMMITTED, &log_id),
            CommittedWrites::WithTheNextAppend => {
                *self.unwritten_committed() = Some(log_id);
                Ok(())
            }
        }
    }

    /// The newest committed log id this store was given: after a restart, the one written last.
    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(log_id) = *self.unwritten_committed() {
            return Ok(Some(log_id));
        }
        self.get_state(RAFT_STATE_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
    {
        let log_cf = cf(&self.db, CF_RAFT_LOG)?;
        let entries: Vec<Entry> = entries.into_iter().collect();
        // The batch is sized once (grown put by put, it copied everything staged so far at each growth), and
        // each entry is encoded into one reused buffer, which the batch copies.
        const RECORD_OVERHEAD: usize = 32;
        let key_bytes = log_key(self.group, 0).len();
        let batch_bytes: usize =
            entries.iter().map(|entry| entry_len_hint(entry) + key_bytes + RECORD_OVERHEAD).sum::<usize>() + 256;
        let mut batch = WriteBatch::with_capacity_bytes(batch_bytes);
        let mut value = Vec::with_capacity(entries.iter().map(entry_len_hint).max().unwrap_or(0));
        let mut written = Vec::with_capacity(entries.len());
        for entry in entries {
            value.clear();
            value = encode_into(&entry, value).map_err(io_err)?;
            batch.put_cf(log_cf, log_key(self.group, entry.index()), &value);
            written.push((entry, value.len()));
        }
        if let Some(committed) = self.unwritten_committed().take() {
            let state_cf = cf(&self.db, CF_RAFT_STATE)?;
            batch.put_cf(state_cf, tag_key(self.group, RAFT_STATE_COMMITTED), encode(&committed).map_err(io_err)?);
        }
        // Written now so that the entries are readable when this returns;
        // reported flushed only after the shared WAL fsync.
        self.db.write(batch).map_err(io_err)?;
        let mut tail = self.tail();
        for (entry, encoded_bytes) in written {
            tail.push(entry.index(), entry, encoded_bytes);
        }
        drop(tail);
        #[cfg(feature = "planted-bugs")]
        if crate::planted_bug("ack-before-fsync") {
            // Reported flushed while the entries are only in the OS's cache: a kill -9 cannot tell.
            callback.io_completed(Ok(()));
            return Ok(());
        }
        self.wal.after_sync(move |result| callback.io_completed(result));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = match last_log_id {
            Some(log_id) => log_key(self.group, log_id.index() + 1).to_vec(),
            None => log_key(self.group, 0).to_vec(),
        };
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        // Ordered in the WAL before any later append, so it needs no fsync of its own.
        self.db.delete_range_cf(cf, from, group_end(self.group)).map_err(io_err)?;
        self.tail().truncate_after(last_log_id.map(|log_id| log_id.index()));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.put_state(RAFT_STATE_LAST_PURGED, &log_id)?;
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        self.db.delete_range_cf(cf, log_key(self.group, 0), log_key(self.group, log_id.index() + 1)).map_err(io_err)?;
        self.tail().purge_through(log_id.index());
        Ok(())
    }
}
