//! A group's applied state. Partition groups hold streams: each stream has
//! dense offsets from 0, assigned here when an entry is applied, and a sparse
//! arrival-time index (one key per appended batch). The metadata group holds
//! the cluster config.
//!
//! Applying writes to RocksDB without an fsync of its own: the Raft log is
//! the durable record, and the applied log id is written in the same
//! `WriteBatch` as the data, so after a crash openraft re-applies exactly the
//! entries that are missing.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::snapshot::{self, SnapshotFile};
use super::{cf, io_err};
use crate::cluster::ClusterConfig;
use crate::keys::{
    CF_EVENTS, CF_SM_STATE, CF_TIME_INDEX, SM_APPLIED, SM_CLUSTER_CONFIG, SM_MEMBERSHIP, SM_STREAM,
    event_key, event_offset_of, event_value, group_end, split_event_value, stream_state_key,
    tag_key, time_index_key, time_index_offset_of,
};
use crate::raft_types::{
    GroupId, LogCommand, LogId, LogResponse, Snapshot, SnapshotMeta, StoredMembership,
    StreamAppend, TypeConfig, decode, encode,
};

/// Where a stream stands, persisted in `sm_state` under its name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StreamState {
    /// Compact id used in event keys, unique within the group.
    id: u32,
    next_offset: u64,
    last_arrival_ms: u64,
}

/// What readers of a group see: the applied streams and cluster config.
struct AppliedView {
    streams: RwLock<HashMap<String, StreamState>>,
    cluster_config: watch::Sender<Option<ClusterConfig>>,
    applied_index: watch::Sender<u64>,
}

/// One record read back from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub arrival_ms: u64,
    pub payload: Bytes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadBatch {
    pub records: Vec<StoredRecord>,
    /// One past the last applied offset of the stream.
    pub end_offset: u64,
}

/// Read access to a group's applied state (any node, any time).
#[derive(Clone)]
pub struct StreamView {
    db: Arc<DB>,
    group: GroupId,
    view: Arc<AppliedView>,
}

impl StreamView {
    fn stream_state(&self, stream: &str) -> Option<StreamState> {
        self.view
            .streams
            .read()
            .ok()
            .and_then(|streams| streams.get(stream).cloned())
    }

    /// One past the last applied offset (0 for a stream never written).
    pub fn end_offset(&self, stream: &str) -> u64 {
        self.stream_state(stream)
            .map(|s| s.next_offset)
            .unwrap_or(0)
    }

    /// Records from `from_offset`, at most `max_records` and about `max_bytes`
    /// (always at least one record if there is one).
    pub fn read(
        &self,
        stream: &str,
        from_offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<ReadBatch> {
        let Some(state) = self.stream_state(stream) else {
            return Ok(ReadBatch::default());
        };
        let mut batch = ReadBatch {
            records: Vec::new(),
            end_offset: state.next_offset,
        };
        if from_offset >= state.next_offset || max_records == 0 {
            return Ok(batch);
        }
        let mut read_options = ReadOptions::default();
        read_options
            .set_iterate_upper_bound(event_key(self.group, state.id, state.next_offset).to_vec());
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
            let (arrival_ms, payload) =
                split_event_value(&value).ok_or_else(|| io_err("malformed event value"))?;
            bytes += payload.len();
            batch.records.push(StoredRecord {
                offset,
                arrival_ms,
                payload: Bytes::copy_from_slice(payload),
            });
            if batch.records.len() >= max_records || bytes >= max_bytes {
                break;
            }
        }
        Ok(batch)
    }

    /// The first offset whose arrival time is at or after `time_ms`; the end
    /// offset if there is none.
    pub fn offset_for_time(&self, stream: &str, time_ms: u64) -> io::Result<u64> {
        let Some(state) = self.stream_state(stream) else {
            return Ok(0);
        };
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(
            time_index_key(self.group, state.id, u64::MAX, u64::MAX).to_vec(),
        );
        let start = time_index_key(self.group, state.id, time_ms, 0);
        let mut iter = self.db.iterator_cf_opt(
            cf(&self.db, CF_TIME_INDEX)?,
            read_options,
            IteratorMode::From(&start, Direction::Forward),
        );
        match iter.next() {
            Some(item) => {
                let (key, _) = item.map_err(io_err)?;
                time_index_offset_of(&key).ok_or_else(|| io_err("malformed time index key"))
            }
            None => Ok(state.next_offset),
        }
    }

    pub fn cluster_config(&self) -> Option<ClusterConfig> {
        self.view.cluster_config.borrow().clone()
    }

    /// Changes to the cluster config (metadata group).
    pub fn watch_cluster_config(&self) -> watch::Receiver<Option<ClusterConfig>> {
        self.view.cluster_config.subscribe()
    }

    /// The applied log index; changes whenever entries are applied.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.view.applied_index.subscribe()
    }

    /// Names of the streams this group holds.
    pub fn stream_names(&self) -> Vec<String> {
        self.view
            .streams
            .read()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }
}

pub struct GroupStateMachine {
    db: Arc<DB>,
    group: GroupId,
    snapshot_dir: PathBuf,
    view: Arc<AppliedView>,
    next_stream_id: u32,
}

impl GroupStateMachine {
    /// Loads the group's applied state from the store.
    pub fn open(db: Arc<DB>, group: GroupId, snapshot_root: &std::path::Path) -> io::Result<Self> {
        let snapshot_dir = snapshot_root.join(format!("group-{group}"));
        std::fs::create_dir_all(&snapshot_dir)?;
        snapshot::remove_partial_snapshots(&snapshot_dir)?;
        let view = Arc::new(AppliedView {
            streams: RwLock::new(HashMap::new()),
            cluster_config: watch::Sender::new(None),
            applied_index: watch::Sender::new(0),
        });
        let mut machine = Self {
            db,
            group,
            snapshot_dir,
            view,
            next_stream_id: 0,
        };
        machine.reload()?;
        Ok(machine)
    }

    pub fn view(&self) -> StreamView {
        StreamView {
            db: self.db.clone(),
            group: self.group,
            view: self.view.clone(),
        }
    }

    /// Re-reads the in-memory view from RocksDB (at open and after a snapshot install).
    fn reload(&mut self) -> io::Result<()> {
        let sm = cf(&self.db, CF_SM_STATE)?;
        let prefix = tag_key(self.group, SM_STREAM);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(tag_key(self.group, SM_STREAM + 1).to_vec());
        let mut streams = HashMap::new();
        let mut next_stream_id = 0;
        for item in self.db.iterator_cf_opt(
            sm,
            read_options,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, value) = item.map_err(io_err)?;
            let name = String::from_utf8(key[prefix.len()..].to_vec()).map_err(io_err)?;
            let state: StreamState = decode(&value).map_err(io_err)?;
            next_stream_id = next_stream_id.max(state.id + 1);
            streams.insert(name, state);
        }
        let cluster_config: Option<ClusterConfig> = match self
            .db
            .get_cf(sm, tag_key(self.group, SM_CLUSTER_CONFIG))
            .map_err(io_err)?
        {
            Some(bytes) => Some(decode(&bytes).map_err(io_err)?),
            None => None,
        };
        let (applied, _) = self.read_applied_state()?;
        if let Ok(mut guard) = self.view.streams.write() {
            *guard = streams;
        }
        self.next_stream_id = next_stream_id;
        self.view.cluster_config.send_replace(cluster_config);
        self.view
            .applied_index
            .send_replace(applied.map(|id| id.index()).unwrap_or(0));
        Ok(())
    }

    fn read_applied_state(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let sm = cf(&self.db, CF_SM_STATE)?;
        let applied: Option<LogId> = match self
            .db
            .get_cf(sm, tag_key(self.group, SM_APPLIED))
            .map_err(io_err)?
        {
            Some(bytes) => decode(&bytes).map_err(io_err)?,
            None => None,
        };
        let membership = match self
            .db
            .get_cf(sm, tag_key(self.group, SM_MEMBERSHIP))
            .map_err(io_err)?
        {
            Some(bytes) => decode(&bytes).map_err(io_err)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Stages one `StreamAppend` into `batch`; returns the first offset.
    fn stage_append(
        &mut self,
        batch: &mut WriteBatch,
        touched: &mut HashMap<String, StreamState>,
        append: &StreamAppend,
    ) -> io::Result<u64> {
        let state = match touched.get(&append.stream) {
            Some(state) => state.clone(),
            None => match self
                .view
                .streams
                .read()
                .ok()
                .and_then(|s| s.get(&append.stream).cloned())
            {
                Some(state) => state,
                None => {
                    let id = self.next_stream_id;
                    self.next_stream_id += 1;
                    StreamState {
                        id,
                        next_offset: 0,
                        last_arrival_ms: 0,
                    }
                }
            },
        };
        let arrival_ms = append.arrival_ms.max(state.last_arrival_ms);
        let first_offset = state.next_offset;
        let events = cf(&self.db, CF_EVENTS)?;
        for (i, payload) in append.payloads.iter().enumerate() {
            batch.put_cf(
                events,
                event_key(self.group, state.id, first_offset + i as u64),
                event_value(arrival_ms, payload),
            );
        }
        if !append.payloads.is_empty() {
            batch.put_cf(
                cf(&self.db, CF_TIME_INDEX)?,
                time_index_key(self.group, state.id, arrival_ms, first_offset),
                [],
            );
        }
        let next = StreamState {
            id: state.id,
            next_offset: first_offset + append.payloads.len() as u64,
            last_arrival_ms: arrival_ms,
        };
        batch.put_cf(
            cf(&self.db, CF_SM_STATE)?,
            stream_state_key(self.group, &append.stream),
            encode(&next).map_err(io_err)?,
        );
        touched.insert(append.stream.clone(), next);
        Ok(first_offset)
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = GroupSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.read_applied_state()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let db = self.db.clone();
        let sm = cf(&db, CF_SM_STATE)?;
        let mut batch = WriteBatch::default();
        let mut touched: HashMap<String, StreamState> = HashMap::new();
        let mut last_applied: Option<LogId> = None;
        let mut new_config: Option<ClusterConfig> = None;
        let mut responses = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            last_applied = Some(entry.log_id());
            let response = match &entry.payload {
                EntryPayload::Blank => LogResponse::None,
                EntryPayload::Normal(LogCommand::Append(appends)) => {
                    let mut first_offsets = Vec::with_capacity(appends.len());
                    for append in appends {
                        first_offsets.push(self.stage_append(&mut batch, &mut touched, append)?);
                    }
                    LogResponse::Appended { first_offsets }
                }
                EntryPayload::Normal(LogCommand::InitCluster(config)) => {
                    let existing = new_config
                        .clone()
                        .or_else(|| self.view.cluster_config.borrow().clone());
                    match existing {
                        Some(existing) => LogResponse::AlreadyInitialized(existing),
                        None => {
                            batch.put_cf(
                                sm,
                                tag_key(self.group, SM_CLUSTER_CONFIG),
                                encode(config).map_err(io_err)?,
                            );
                            new_config = Some(config.clone());
                            LogResponse::None
                        }
                    }
                }
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(entry.log_id()), membership.clone());
                    batch.put_cf(
                        sm,
                        tag_key(self.group, SM_MEMBERSHIP),
                        encode(&stored).map_err(io_err)?,
                    );
                    LogResponse::None
                }
            };
            if let Some(responder) = responder {
                responses.push((responder, response));
            }
        }
        let Some(last_applied) = last_applied else {
            return Ok(());
        };
        batch.put_cf(
            sm,
            tag_key(self.group, SM_APPLIED),
            encode(&Some(last_applied)).map_err(io_err)?,
        );
        self.db.write(batch).map_err(io_err)?;

        if !touched.is_empty()
            && let Ok(mut streams) = self.view.streams.write()
        {
            streams.extend(touched);
        }
        if let Some(config) = new_config {
            self.view.cluster_config.send_replace(Some(config));
        }
        self.view.applied_index.send_replace(last_applied.index());
        for (responder, response) in responses {
            responder.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        GroupSnapshotBuilder {
            db: self.db.clone(),
            group: self.group,
            snapshot_dir: self.snapshot_dir.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let db = self.db.clone();
        let group = self.group;
        let dir = self.snapshot_dir.clone();
        let (installed, _) = tokio::task::spawn_blocking(move || {
            snapshot::install_snapshot(&db, group, &snapshot.path, &dir)
        })
        .await
        .map_err(io_err)??;
        if installed.last_log_id != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot file does not match its meta",
            ));
        }
        // The membership comes from the meta openraft hands us.
        let sm = cf(&self.db, CF_SM_STATE)?;
        self.db
            .put_cf(
                sm,
                tag_key(self.group, SM_MEMBERSHIP),
                encode(&meta.last_membership).map_err(io_err)?,
            )
            .map_err(io_err)?;
        tracing::info!(group, last_log_id = ?meta.last_log_id, "installed snapshot");
        metrics::counter!("sluice_snapshots_installed_total", "group" => crate::raft_types::group_name(group)).increment(1);
        self.reload()
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(
            snapshot::current_snapshot(&self.snapshot_dir)?.map(|(meta, path)| Snapshot {
                meta,
                snapshot: SnapshotFile { path },
            }),
        )
    }
}

pub struct GroupSnapshotBuilder {
    db: Arc<DB>,
    group: GroupId,
    snapshot_dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for GroupSnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let db = self.db.clone();
        let group = self.group;
        let dir = self.snapshot_dir.clone();
        let started = std::time::Instant::now();
        let (meta, path) =
            tokio::task::spawn_blocking(move || snapshot::write_snapshot(&db, group, &dir))
                .await
                .map_err(io_err)??;
        metrics::histogram!("sluice_snapshot_build_seconds", "group" => crate::raft_types::group_name(group))
            .record(started.elapsed().as_secs_f64());
        tracing::info!(group, last_log_id = ?meta.last_log_id, path = %path.display(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile { path },
        })
    }
}

#[allow(dead_code)]
fn _assert_group_end_is_used(group: GroupId) -> Vec<u8> {
    group_end(group)
}
