//! A group's applied state. Partition groups hold streams: each stream has
//! dense offsets from 0, assigned here when an entry is applied, and a sparse
//! arrival-time index (one key per appended batch). The metadata group holds
//! the cluster config.
//!
//! Applying writes to RocksDB without the WAL: the Raft log is the durable
//! record (its entries hold the events already; writing them to the WAL again
//! doubled the bytes written and synced per event). The applied log id is
//! written in the same `WriteBatch` as the data, and the column families are
//! flushed atomically (`atomic_flush`), so the state on disk is always the
//! state as of the applied id on disk: after a crash, openraft re-applies the
//! entries after it from the log. The log is purged only up to a snapshot,
//! and a snapshot's meta is written only after the memtables are flushed
//! (`snapshot::write_snapshot_meta`), so the entries a restart replays are
//! always still there.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteOptions};
use tokio::sync::watch;

use super::event_tail::EventTail;
use super::snapshot::{self, GroupSnapshotBuilder, SnapshotData};
use super::{cf, io_err};

use crate::command::cluster_config::ClusterConfig;
use crate::command::{
    Appended, GroupId, LogCommand, LogId, LogResponse, NodeId, OffsetCommit, SnapshotMeta, StoredMembership,
    StreamAppend, TypeConfig, decode, encode,
};
use crate::store::dedupe_expiry::DedupeHorizons;
use crate::store::dedupe_window::{Fingerprint, LiveRange, index_value};
use crate::store::keys::{
    CF_EVENTS, CF_SM_STATE, CF_TIME_INDEX, SM_APPLIED, SM_CLUSTER_CONFIG, SM_MEMBER_REMOVALS, SM_MEMBERSHIP,
    SM_RESOURCE, SM_STREAM, event_key, offset_key, split_resource_key, stream_state_key, tag_key, time_index_key,
    time_index_offset_of, write_event_value,
};
use crate::store::snapshot::Snapshot;
use crate::store::stream_keys::StreamKeys;

mod held_windows;
mod resources;
mod staged;

pub(crate) use held_windows::DedupeMemory;
use held_windows::HeldWindow;
use resources::{AnnotationChange, ResourceRules};
use staged::Staged;

pub(crate) use super::read_view::{AppliedConfig, ReadBatch, StoredRecord, StreamExtent, StreamView};
use super::read_view::{AppliedView, StreamState};

/// A group's Raft: openraft over this state machine.
pub(crate) type Raft = openraft::Raft<crate::command::TypeConfig, GroupStateMachine>;

pub(crate) struct GroupStateMachine {
    db: Arc<DB>,
    group: GroupId,
    snapshot_dir: PathBuf,
    /// Shared with the group's snapshot builders (snapshot.rs, `SnapshotLock`).
    snapshot_lock: snapshot::SnapshotLock,
    view: Arc<AppliedView>,
    next_stream_id: u32,
    /// Set once openraft runs the group: from then on a request for the current snapshot comes from a
    /// follower that needs the data, not from start-up reading the meta.
    raft_started: Arc<AtomicBool>,
    /// Where each stream's dedupe window starts, for the compaction that forgets the keys earlier versions
    /// kept in the `dedupe` column family.
    dedupe_horizons: Arc<DedupeHorizons>,
    /// The live dedupe keys of the streams worth holding in memory, by stream id (dedupe_window.rs,
    /// `held_windows.rs`): rebuilt by `reload`, released when idle, rebuilt at a stream's next append.
    dedupe_windows: HashMap<u32, HeldWindow>,
    /// Which windows are worth holding: the clock and the grace.
    dedupe_memory: DedupeMemory,
}

impl GroupStateMachine {
    /// Loads the group's applied state from the store; `dedupe_memory` decides which dedupe windows are held.
    pub(crate) fn open(
        db: Arc<DB>,
        group: GroupId,
        snapshot_root: &std::path::Path,
        dedupe_horizons: Arc<DedupeHorizons>,
        dedupe_memory: DedupeMemory,
    ) -> io::Result<Self> {
        let snapshot_dir = snapshot_root.join(format!("group-{group}"));
        crate::durable_fs::create_dir_all(&snapshot_dir)?;
        snapshot::remove_partial_snapshots(&snapshot_dir)?;
        let view = Arc::new(AppliedView {
            streams: RwLock::new(HashMap::new()),
            tail: Mutex::new(EventTail::default()),
            resources: RwLock::new(BTreeMap::new()),
            resources_version: watch::Sender::new(0),
            cluster_config: watch::Sender::new(None),
            applied_index: watch::Sender::new(0),
        });
        let raft_started = Arc::new(AtomicBool::new(false));
        let mut machine = Self {
            db,
            group,
            snapshot_dir,
            snapshot_lock: snapshot::SnapshotLock::default(),
            view,
            next_stream_id: 0,
            raft_started,
            dedupe_horizons,
            dedupe_windows: HashMap::new(),
            dedupe_memory,
        };
        machine.reload()?;
        Ok(machine)
    }

    /// What keeps this group's snapshot builds and installs apart (tests take it to stand for an install).
    #[cfg(test)]
    pub(crate) fn snapshot_lock(&self) -> snapshot::SnapshotLock {
        self.snapshot_lock.clone()
    }

    /// Marks the group as run by openraft (see `raft_started`).
    pub(crate) fn raft_started(&self) -> Arc<AtomicBool> {
        self.raft_started.clone()
    }

    pub(crate) fn view(&self) -> StreamView {
        StreamView { db: self.db.clone(), group: self.group, view: self.view.clone() }
    }

    /// Re-reads the in-memory view from RocksDB (at open and after a snapshot install).
    fn reload(&mut self) -> io::Result<()> {
        self.dedupe_horizons.forget_group(self.group);
        let sm = cf(&self.db, CF_SM_STATE)?;
        let prefix = tag_key(self.group, SM_STREAM);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(tag_key(self.group, SM_STREAM + 1).to_vec());
        let mut streams = HashMap::new();
        let mut next_stream_id = 0;
        for item in self.db.iterator_cf_opt(sm, read_options, IteratorMode::From(&prefix, Direction::Forward)) {
            let (key, value) = item.map_err(io_err)?;
            let name = String::from_utf8(key[prefix.len()..].to_vec()).map_err(io_err)?;
            let state = StreamState::decode(&value).map_err(io_err)?;
            next_stream_id = next_stream_id.max(state.id + 1);
            self.dedupe_horizons.advance(self.group, state.id, state.dedupe_horizon_ms);
            streams.insert(name, state);
        }
        let cluster_config: Option<ClusterConfig> =
            match self.db.get_cf(sm, tag_key(self.group, SM_CLUSTER_CONFIG)).map_err(io_err)? {
                Some(bytes) => Some(decode(&bytes).map_err(io_err)?),
                None => None,
            };
        let removed_at: BTreeMap<NodeId, u64> =
            match self.db.get_cf(sm, tag_key(self.group, SM_MEMBER_REMOVALS)).map_err(io_err)? {
                Some(bytes) => decode(&bytes).map_err(io_err)?,
                None => BTreeMap::new(),
            };
        let mut resources = BTreeMap::new();
        let prefix = tag_key(self.group, SM_RESOURCE);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(tag_key(self.group, SM_RESOURCE + 1).to_vec());
        for item in self.db.iterator_cf_opt(sm, read_options, IteratorMode::From(&prefix, Direction::Forward)) {
            let (key, value) = item.map_err(io_err)?;
            let key = split_resource_key(&key).ok_or_else(|| io_err("malformed resource key"))?;
            resources.insert(key, String::from_utf8(value.to_vec()).map_err(io_err)?);
        }
        let (applied, _) = self.read_applied_state()?;
        let started = std::time::Instant::now();
        self.dedupe_windows = self.windows_worth_holding(&streams)?;
        if self.dedupe_keys() > 0 {
            tracing::info!(
                group = self.group,
                keys = self.dedupe_keys(),
                windows = self.dedupe_windows.len(),
                streams = streams.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "rebuilt the dedupe windows from the time index"
            );
        }
        self.publish_dedupe_keys();
        // The streams' records may have been replaced (a snapshot installed): none of the tail's stay.
        self.view.tail.lock().unwrap_or_else(PoisonError::into_inner).clear();
        if let Ok(mut guard) = self.view.streams.write() {
            *guard = streams;
        }
        if let Ok(mut guard) = self.view.resources.write() {
            *guard = resources;
        }
        self.view.resources_version.send_modify(|v| *v += 1);
        self.next_stream_id = next_stream_id;
        self.view.cluster_config.send_replace(cluster_config.map(|config| AppliedConfig { config, removed_at }));
        self.view.applied_index.send_replace(applied.map(|id| id.index()).unwrap_or(0));
        Ok(())
    }

    /// Dedupe keys held in memory for this group's streams.
    pub(super) fn dedupe_keys(&self) -> usize {
        self.dedupe_windows.values().map(|held| held.window.len()).sum()
    }

    fn publish_dedupe_keys(&self) {
        metrics::gauge!("sluice_dedupe_keys", "group" => crate::ids::group_name(self.group))
            .set(self.dedupe_keys() as f64);
    }

    fn read_applied_state(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let sm = cf(&self.db, CF_SM_STATE)?;
        let applied: Option<LogId> = match self.db.get_cf(sm, tag_key(self.group, SM_APPLIED)).map_err(io_err)? {
            Some(bytes) => decode(&bytes).map_err(io_err)?,
            None => None,
        };
        let membership = match self.db.get_cf(sm, tag_key(self.group, SM_MEMBERSHIP)).map_err(io_err)? {
            Some(bytes) => decode(&bytes).map_err(io_err)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Stages one `StreamAppend` into `batch`: stream state, events, the
    /// time index and, with dedupe, the seen-keys window.
    fn stage_append(&mut self, staged: &mut Staged, append: &StreamAppend) -> io::Result<Appended> {
        let state = match staged.streams.get(&append.stream) {
            Some(state) => state.clone(),
            None => match self.view.streams.read().ok().and_then(|s| s.get(&append.stream).cloned()) {
                Some(state) => state,
                None => {
                    let id = self.next_stream_id;
                    self.next_stream_id += 1;
                    StreamState { id, ..StreamState::default() }
                }
            },
        };
        let arrival_ms = append.arrival_ms.max(state.last_arrival_ms);
        // A key seen at or after the horizon is a duplicate: with an unchanged window, exactly the keys
        // seen within the window of this arrival.
        let dedupe_horizon_ms = match &append.dedupe {
            Some(dedupe) => state.dedupe_horizon_ms.max(arrival_ms.saturating_sub(dedupe.window_ms)),
            None => state.dedupe_horizon_ms,
        };
        let mut added_bytes = 0u64;
        let first_offset = state.next_offset;
        // Which events are new, decided by the stream's window (and remembered there at once, so that the
        // next append sees them whatever the apply batches are; a failed write stops the group, and the
        // window is rebuilt from disk when it opens again).
        let decided = match &append.dedupe {
            Some(dedupe) => {
                if dedupe.keys.len() != append.payloads.len() {
                    return Err(io_err("dedupe keys and payloads differ in length"));
                }
                let fingerprints: Vec<Fingerprint> = dedupe.keys.iter().map(|key| Fingerprint::of_key(key)).collect();
                let range = LiveRange::of(state.start_offset, state.next_offset, dedupe_horizon_ms);
                self.hold_dedupe_window(&append.stream, &state, range, dedupe.window_ms)?;
                let mut lookup = StreamKeys {
                    db: &self.db,
                    group: self.group,
                    stream_id: state.id,
                    keys: &dedupe.keys,
                    horizon_ms: dedupe_horizon_ms,
                };
                let held =
                    self.dedupe_windows.get_mut(&state.id).ok_or_else(|| io_err("a dedupe window held is missing"))?;
                let admitted = held.window.admit(range, first_offset, arrival_ms, &fingerprints, &mut lookup)?;
                Some((fingerprints, admitted))
            }
            None => None,
        };
        let mut kept = Vec::new();
        let events = cf(&self.db, CF_EVENTS)?;
        // The tail holds a record's payload as the entry has it, which may be a slice of the message the entry
        // came in (`command::decode_shared`): of an append that dropped duplicates, it holds a copy, so that
        // the records it keeps never keep alive bytes it does not count.
        let dropped_any = decided.as_ref().is_some_and(|(_, admitted)| admitted.iter().any(|new| !new));
        let mut next_offset = first_offset;
        for (i, payload) in append.payloads.iter().enumerate() {
            if let Some((fingerprints, admitted)) = &decided {
                if !admitted[i] {
                    continue;
                }
                kept.push(fingerprints[i]);
            }
            write_event_value(&mut staged.value_scratch, arrival_ms, payload);
            staged.batch.put_cf(events, event_key(self.group, state.id, next_offset), &staged.value_scratch);
            staged.event_bytes.insert((state.id, next_offset), payload.len() as u64);
            let for_tail = if dropped_any { Bytes::copy_from_slice(payload) } else { payload.clone() };
            staged.tail_records.push((state.id, next_offset, arrival_ms, for_tail));
            next_offset += 1;
            added_bytes += payload.len() as u64;
        }
        if append.dedupe.is_some() {
            staged.dedupe_horizons.push((state.id, dedupe_horizon_ms));
        }
        let stored = next_offset - first_offset;
        if stored > 0 {
            staged.batch.put_cf(
                cf(&self.db, CF_TIME_INDEX)?,
                time_index_key(self.group, state.id, arrival_ms, first_offset),
                index_value(decided.as_ref().map(|_| kept.as_slice())),
            );
        }
        let next = StreamState {
            next_offset,
            last_arrival_ms: arrival_ms,
            retained_bytes: state.retained_bytes + added_bytes,
            dedupe_horizon_ms,
            ..state
        };
        staged.set_stream(&append.stream, next);
        Ok(Appended { first_offset, stored: stored as u32 })
    }

    /// Drops the records of `stream` below `before_offset` (retention). Offsets
    /// are never reused: the stream's end stays, its start moves up.
    fn stage_trim(&self, staged: &mut Staged, stream: &str, before_offset: u64) -> io::Result<()> {
        let state = match staged.streams.get(stream) {
            Some(state) => state.clone(),
            None => match self.view.streams.read().ok().and_then(|s| s.get(stream).cloned()) {
                Some(state) => state,
                None => return Ok(()),
            },
        };
        let before_offset = before_offset.min(state.next_offset);
        if before_offset <= state.start_offset {
            return Ok(());
        }
        let events = cf(&self.db, CF_EVENTS)?;
        let (from, to) =
            (event_key(self.group, state.id, state.start_offset), event_key(self.group, state.id, before_offset));
        let mut freed = 0u64;
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(to.to_vec());
        for item in self.db.iterator_cf_opt(events, read_options, IteratorMode::From(&from, Direction::Forward)) {
            let (_, value) = item.map_err(io_err)?;
            freed += value.len().saturating_sub(8) as u64;
        }
        // Records appended earlier in this same apply are not in RocksDB yet.
        freed += staged
            .event_bytes
            .range((state.id, state.start_offset)..(state.id, before_offset))
            .map(|(_, b)| b)
            .sum::<u64>();
        staged.batch.delete_range_cf(events, from, to);
        staged.tail_trims.push((state.id, before_offset));
        // Time-index entries of appends that now end at or below the new start. The last that starts below
        // it stays: it may straddle the start, and its later keys are still in the dedupe window, which
        // reads their fingerprints there (and rebuilds from there after a restart).
        let index = cf(&self.db, CF_TIME_INDEX)?;
        let index_from = time_index_key(self.group, state.id, 0, 0);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(time_index_key(self.group, state.id, u64::MAX, u64::MAX).to_vec());
        let mut below: Option<Box<[u8]>> = None;
        for item in self.db.iterator_cf_opt(index, read_options, IteratorMode::From(&index_from, Direction::Forward)) {
            let (key, _) = item.map_err(io_err)?;
            match time_index_offset_of(&key) {
                Some(offset) if offset < before_offset => {
                    if let Some(previous) = below.replace(key) {
                        staged.batch.delete_cf(index, &previous);
                    }
                }
                Some(offset) if offset == before_offset => {
                    // The previous append ends at the start exactly.
                    if let Some(previous) = below.take() {
                        staged.batch.delete_cf(index, &previous);
                    }
                    break;
                }
                _ => break,
            }
        }
        let next = StreamState {
            start_offset: before_offset,
            retained_bytes: state.retained_bytes.saturating_sub(freed),
            ..state
        };
        staged.set_stream(stream, next);
        Ok(())
    }

    /// The offset of `cursor` as of the writes staged so far in this apply.
    fn staged_offset(&self, staged: &Staged, cursor: &str) -> io::Result<Option<u64>> {
        match staged.offsets.get(cursor) {
            Some(offset) => Ok(*offset),
            None => self.view().committed_offset(cursor),
        }
    }

    /// Moves consumer cursors forward (or, with `reset`, to exactly the given offset).
    fn stage_commit_offsets(&self, staged: &mut Staged, commits: &[OffsetCommit]) -> io::Result<()> {
        let sm = cf(&self.db, CF_SM_STATE)?;
        for commit in commits {
            // A state machine that is not a function of its log: each node drops about half of the commits, at
            // random, so the nodes' committed offsets drift apart (the chaos self-test, t81).
            #[cfg(feature = "planted-bugs")]
            if crate::planted_bug("offsets-apply-at-random") && rand::random::<bool>() {
                continue;
            }
            let current = self.staged_offset(staged, &commit.cursor)?;
            let next = match current {
                Some(current) if !commit.reset => current.max(commit.offset),
                _ => commit.offset,
            };
            if current != Some(next) {
                staged.batch.put_cf(sm, offset_key(self.group, &commit.cursor), next.to_be_bytes());
                staged.offsets.insert(commit.cursor.clone(), Some(next));
            }
        }
        staged.offset_commits += commits.len() as u64;
        Ok(())
    }

    fn stage_delete_offsets(&self, staged: &mut Staged, cursors: &[String]) -> io::Result<()> {
        let sm = cf(&self.db, CF_SM_STATE)?;
        for cursor in cursors {
            staged.batch.delete_cf(sm, offset_key(self.group, cursor));
            staged.offsets.insert(cursor.clone(), None);
        }
        Ok(())
    }

    /// Stages one entry and returns what its proposer is told.
    fn stage_entry(&mut self, staged: &mut Staged, entry: &crate::command::Entry) -> io::Result<LogResponse> {
        let sm = cf(&self.db, CF_SM_STATE)?;
        let index = entry.log_id().index();
        let command = match &entry.payload {
            EntryPayload::Blank => return Ok(LogResponse::None),
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(entry.log_id()), membership.clone());
                staged.batch.put_cf(sm, tag_key(self.group, SM_MEMBERSHIP), encode(&stored).map_err(io_err)?);
                return Ok(LogResponse::None);
            }
            EntryPayload::Normal(command) => command,
        };
        Ok(match command {
            LogCommand::Append(appends) => {
                let mut appended = Vec::with_capacity(appends.len());
                for append in appends.iter() {
                    appended.push(self.stage_append(staged, append)?);
                }
                LogResponse::Appended { appended }
            }
            LogCommand::Trim { stream, before_offset } => {
                self.stage_trim(staged, stream, *before_offset)?;
                LogResponse::None
            }
            LogCommand::PutResource(record) => {
                let outcome = self.stage_put_resource(staged, record, index, ResourceRules::Original)?;
                LogResponse::Applied { outcome: outcome.as_str().to_string() }
            }
            LogCommand::ApplyResource(record) => {
                let outcome = self.stage_put_resource(staged, record, index, ResourceRules::KeepingOwned)?;
                LogResponse::Applied { outcome: outcome.as_str().to_string() }
            }
            LogCommand::SetAnnotation { key, uid, annotation, value } => {
                let change = AnnotationChange { key, uid, annotation, value: value.as_deref() };
                let outcome = self.stage_set_annotation(staged, change, index, ResourceRules::Original)?;
                LogResponse::Applied { outcome: outcome.to_string() }
            }
            LogCommand::SetAdminAnnotation { key, uid, annotation, value } => {
                let change = AnnotationChange { key, uid, annotation, value: value.as_deref() };
                let outcome = self.stage_set_annotation(staged, change, index, ResourceRules::KeepingOwned)?;
                LogResponse::Applied { outcome: outcome.to_string() }
            }
            LogCommand::ApplyResourceIfToken { record, token } => {
                let outcome = self.stage_put_resource_if_token(staged, record, token.as_deref(), index)?;
                LogResponse::Applied { outcome: outcome.to_string() }
            }
            LogCommand::ApplyResourceIfVersion { record, expected_version } => {
                let outcome = self.stage_put_resource_if_version(staged, record, *expected_version, index)?;
                LogResponse::Applied { outcome: outcome.to_string() }
            }
            LogCommand::DeleteResource(key) => {
                let existed = self.staged_resource(staged, key).is_some();
                if existed {
                    self.stage_resource(staged, key, None)?;
                }
                LogResponse::Deleted { existed }
            }
            LogCommand::CommitOffsets(commits) => {
                self.stage_commit_offsets(staged, commits)?;
                LogResponse::None
            }
            LogCommand::DeleteOffsets(cursors) => {
                self.stage_delete_offsets(staged, cursors)?;
                LogResponse::None
            }
            LogCommand::CommitOffsetsIf { expected, commits } => {
                let mut holds = true;
                for (cursor, offset) in expected {
                    holds &= self.staged_offset(staged, cursor)?.unwrap_or(0) == *offset;
                }
                if holds {
                    self.stage_commit_offsets(staged, commits)?;
                }
                LogResponse::Applied { outcome: if holds { "committed" } else { "conflict" }.to_string() }
            }
            LogCommand::CommitOffsetsInTerm { term, leader, commits } => {
                let log_id = entry.log_id();
                let appended_by = log_id.committed_leader_id();
                let in_term = appended_by.term == *term && appended_by.node_id == *leader;
                if in_term {
                    self.stage_commit_offsets(staged, commits)?;
                }
                LogResponse::Applied { outcome: if in_term { "committed" } else { "stale" }.to_string() }
            }
            LogCommand::InitCluster(config) => match self.staged_cluster_config(staged) {
                Some(existing) => LogResponse::AlreadyInitialized(existing.config),
                None => {
                    staged.batch.put_cf(sm, tag_key(self.group, SM_CLUSTER_CONFIG), encode(config).map_err(io_err)?);
                    staged.new_config = Some(AppliedConfig { config: config.clone(), removed_at: BTreeMap::new() });
                    LogResponse::None
                }
            },
            LogCommand::SetMembers(_) | LogCommand::AddMember { .. } | LogCommand::RemoveMember(_) => {
                if let Some(next) = next_cluster_config(self.staged_cluster_config(staged), command, index) {
                    staged.batch.put_cf(
                        sm,
                        tag_key(self.group, SM_CLUSTER_CONFIG),
                        encode(&next.config).map_err(io_err)?,
                    );
                    staged.batch.put_cf(
                        sm,
                        tag_key(self.group, SM_MEMBER_REMOVALS),
                        encode(&next.removed_at).map_err(io_err)?,
                    );
                    staged.new_config = Some(next);
                }
                LogResponse::None
            }
        })
    }

    fn staged_cluster_config(&self, staged: &Staged) -> Option<AppliedConfig> {
        staged.new_config.clone().or_else(|| self.view.cluster_config.borrow().clone())
    }

    /// Writes the staged batch with the applied log id, then publishes the changes to readers.
    fn commit_staged(&mut self, mut staged: Staged, last_applied: LogId) -> io::Result<()> {
        let sm = cf(&self.db, CF_SM_STATE)?;
        // Each stream touched, once, as the last of its appends and trims in this apply left it.
        for (stream, state) in &staged.streams {
            staged.batch.put_cf(sm, stream_state_key(self.group, stream), encode(state).map_err(io_err)?);
        }
        staged.batch.put_cf(sm, tag_key(self.group, SM_APPLIED), encode(&Some(last_applied)).map_err(io_err)?);
        let Staged {
            batch,
            streams: touched,
            resources,
            offset_commits,
            new_config,
            dedupe_horizons,
            tail_records,
            tail_trims,
            ..
        } = staged;
        let mut without_wal = WriteOptions::default();
        without_wal.disable_wal(true);
        self.db.write_opt(batch, &without_wal).map_err(io_err)?;
        // Into the tail before `streams` shows the new ends: a reader that sees an end finds its records.
        if !tail_records.is_empty() || !tail_trims.is_empty() {
            let mut tail = self.view.tail.lock().unwrap_or_else(PoisonError::into_inner);
            for (stream_id, offset, arrival_ms, payload) in tail_records {
                tail.push(stream_id, offset, arrival_ms, payload);
            }
            // After the pushes: a trim drops what this same apply appended below its new start too.
            for (stream_id, before_offset) in tail_trims {
                tail.trim(stream_id, before_offset);
            }
        }
        for (stream_id, _) in &dedupe_horizons {
            if let Some(held) = self.dedupe_windows.get_mut(stream_id) {
                held.window.written();
            }
        }
        if !dedupe_horizons.is_empty() {
            self.publish_dedupe_keys();
        }
        for (stream_id, horizon_ms) in dedupe_horizons {
            self.dedupe_horizons.advance(self.group, stream_id, horizon_ms);
        }
        if offset_commits > 0 {
            metrics::counter!("sluice_offset_commits_total", "group" => crate::ids::group_name(self.group))
                .increment(offset_commits);
        }
        if !touched.is_empty()
            && let Ok(mut streams) = self.view.streams.write()
        {
            streams.extend(touched);
        }
        if !resources.is_empty() {
            if let Ok(mut view) = self.view.resources.write() {
                for (key, json) in resources {
                    match json {
                        Some(json) => view.insert(key, json),
                        None => view.remove(&key),
                    };
                }
            }
            self.view.resources_version.send_modify(|v| *v += 1);
        }
        if let Some(config) = new_config {
            self.view.cluster_config.send_replace(Some(config));
        }
        self.view.applied_index.send_replace(last_applied.index());
        Ok(())
    }
}

/// The cluster config after a member command (metadata group): the new member list, and when each node
/// that left it was removed. `None` when there is no config yet or the command would empty the list
/// (both are ignored, as they always were).
fn next_cluster_config(current: Option<AppliedConfig>, command: &LogCommand, index: u64) -> Option<AppliedConfig> {
    let AppliedConfig { mut config, mut removed_at } = current?;
    let mut members = config.members.clone();
    match command {
        LogCommand::SetMembers(list) => members = list.clone(),
        LogCommand::AddMember { node, addr } => {
            members.insert(*node, addr.clone());
        }
        LogCommand::RemoveMember(node) => {
            members.remove(node);
        }
        _ => return None,
    }
    if members.is_empty() {
        return None;
    }
    for gone in config.members.keys().filter(|id| !members.contains_key(id)) {
        removed_at.insert(*gone, index);
    }
    config.members = members;
    Some(AppliedConfig { config, removed_at })
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = GroupSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.read_applied_state()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Taken whole first (openraft holds them in memory already) so that the batch is sized once: grown put
        // by put, it copied everything staged so far at each growth.
        let mut taken = Vec::new();
        while let Some(entry_and_responder) = entries.try_next().await? {
            taken.push(entry_and_responder);
        }
        let mut staged = Staged::sized_for(taken.iter().map(|(entry, _)| entry));
        let mut last_applied: Option<LogId> = None;
        let mut responses = Vec::new();
        for (entry, responder) in taken {
            last_applied = Some(entry.log_id());
            let response = self.stage_entry(&mut staged, &entry)?;
            if let Some(responder) = responder {
                responses.push((responder, response));
            }
        }
        let Some(last_applied) = last_applied else {
            return Ok(());
        };
        self.commit_staged(staged, last_applied)?;
        for (responder, response) in responses {
            responder.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        GroupSnapshotBuilder::new(self.db.clone(), self.group, self.snapshot_dir.clone(), self.snapshot_lock.clone())
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let db = self.db.clone();
        let group = self.group;
        let dir = self.snapshot_dir.clone();
        let path = match snapshot {
            SnapshotData::File { path } => path,
            // A live snapshot handed over in this process (openraft's storage suite does): received into a
            // file first, as the transport's receiver does.
            live @ SnapshotData::Live(_) => {
                crate::durable_fs::create_dir_all(&dir)?;
                let path = dir.join("local.incoming");
                live.save_to(&path).await?;
                path
            }
        };
        let lock = self.snapshot_lock.clone();
        // The file must be the one openraft's meta describes; its membership is written with the applied id.
        let expected = meta.clone();
        tokio::task::spawn_blocking(move || {
            snapshot::install_snapshot(&mut lock.hold(), &db, group, &path, &dir, &expected)
        })
        .await
        .map_err(io_err)??;
        tracing::info!(group, last_log_id = ?meta.last_log_id, "installed snapshot");
        metrics::counter!("sluice_snapshots_installed_total", "group" => crate::ids::group_name(group)).increment(1);
        self.reload()
    }

    /// At start-up (openraft reads the meta, and installs a full snapshot newer than the applied state,
    /// which only an interrupted install leaves): the newest snapshot or meta on disk. Once running, this
    /// is asked for when a follower needs the data: the state as of now, read as it is sent (nothing is
    /// written).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let stored = snapshot::newest_snapshot_or_meta(&self.snapshot_dir)?;
        // Nothing built or received yet: there is no snapshot (the log was never purged).
        if !self.raft_started.load(Ordering::Acquire) || stored.is_none() {
            return Ok(stored.map(|(meta, path)| Snapshot { meta, snapshot: SnapshotData::File { path } }));
        }
        let (meta, live) = snapshot::open_live(self.db.clone(), self.group, snapshot::CHUNK_BYTES).await?;
        tracing::info!(group = self.group, last_log_id = ?meta.last_log_id, "opened a snapshot for a follower");
        Ok(Some(Snapshot { meta, snapshot: SnapshotData::Live(live) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(members: &[(NodeId, &str)], removed_at: &[(NodeId, u64)]) -> AppliedConfig {
        let members: BTreeMap<NodeId, String> = members.iter().map(|(id, addr)| (*id, addr.to_string())).collect();
        AppliedConfig {
            config: ClusterConfig { partitions: 2, members: members.clone(), initial_members: members },
            removed_at: removed_at.iter().copied().collect(),
        }
    }

    #[test]
    fn member_commands_change_the_member_list_and_record_removals() {
        let current = applied(&[(1, "a"), (2, "b")], &[]);
        let added = next_cluster_config(Some(current.clone()), &LogCommand::AddMember { node: 3, addr: "c".into() }, 7)
            .expect("config");
        assert_eq!(added.config.members.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(added.removed_at.is_empty());
        assert_eq!(added.config.initial_members, current.config.initial_members, "initial members never change");

        let removed = next_cluster_config(Some(added), &LogCommand::RemoveMember(2), 9).expect("config");
        assert_eq!(removed.config.members.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(removed.removed_at, BTreeMap::from([(2, 9)]));

        let set =
            next_cluster_config(Some(removed), &LogCommand::SetMembers(BTreeMap::from([(2, "b2".to_string())])), 12)
                .expect("config");
        assert_eq!(set.config.members, BTreeMap::from([(2, "b2".to_string())]));
        assert_eq!(set.removed_at, BTreeMap::from([(1, 12), (2, 9), (3, 12)]), "a removal keeps its latest index");
    }

    #[test]
    fn member_commands_without_a_config_or_emptying_the_list_are_ignored() {
        assert_eq!(next_cluster_config(None, &LogCommand::RemoveMember(1), 3), None);
        let only = applied(&[(1, "a")], &[]);
        assert_eq!(next_cluster_config(Some(only.clone()), &LogCommand::RemoveMember(1), 3), None);
        assert_eq!(next_cluster_config(Some(only.clone()), &LogCommand::SetMembers(BTreeMap::new()), 3), None);
        assert_eq!(
            next_cluster_config(Some(only), &LogCommand::Trim { stream: "s".into(), before_offset: 1 }, 3),
            None,
            "not a member command"
        );
    }
}
