//! Snapshots of a group's state machine (its key ranges in `events`, `time_index` and `sm_state`).
//!
//! In: a RocksDB snapshot of the state machine (a leader sending to a follower), or the chunks a follower
//! receives. Out: the encoded state, streamed as it is read ([`open_live`]: nothing is written on the
//! leader), a received file installed, and `*.meta` files (what a build or an install records).
//!
//! Format: `SLUICESNAP1\n`, u32 header length, postcard([`SnapshotMeta`]),
//! then records `cf index (u8) · key length (u32) · key · value length (u32) ·
//! value`, then the end marker `0xff`. Integers are big-endian. A received file
//! is fsynced and renamed into place, so a present `*.snap` file is whole.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::RaftSnapshotBuilder;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use tokio::sync::{mpsc, oneshot};

use super::{cf, io_err};
use crate::command::{GroupId, LogId, SnapshotMeta, StoredMembership, TypeConfig, decode, encode};
use crate::store::keys::{CF_SM_STATE, SM_APPLIED, SM_MEMBERSHIP, STATE_MACHINE_CFS, group_end, group_prefix, tag_key};

const MAGIC: &[u8] = b"SLUICESNAP1\n";
/// A snapshot of a group's state machine, as openraft hands it around.
pub(crate) type Snapshot = openraft::alias::SnapshotOf<crate::command::TypeConfig, SnapshotData>;

/// A snapshot's meta without its data (`*.meta`): what a group records when it builds a snapshot (so that
/// openraft may purge the log) or has installed one. A different magic, so a meta file can never be
/// installed as an (empty) snapshot.
const META_MAGIC: &[u8] = b"SLUICEMETA1\n";
const END_MARKER: u8 = 0xff;
/// Bytes per RocksDB write batch when installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// Bytes per chunk of a snapshot sent to a follower (one gRPC message each).
pub(crate) const CHUNK_BYTES: usize = 1 << 20;
/// Encoded chunks a live snapshot reads ahead of the one being sent.
const LIVE_CHUNKS_AHEAD: usize = 4;

/// The data of a snapshot.
#[derive(Debug)]
pub(crate) enum SnapshotData {
    /// A file on disk: a full snapshot received from a leader, or a `.meta` (what start-up reads; it
    /// carries no data and cannot be sent or installed).
    File { path: PathBuf },
    /// A leader's state machine as of one RocksDB snapshot, encoded as it is read ([`open_live`]).
    Live(LiveSnapshot),
}

impl SnapshotData {
    /// The encoded snapshot in chunks (a live one's as opened, a file's of [`CHUNK_BYTES`]); the reading
    /// stops when the receiver is dropped.
    pub(crate) fn into_chunks(self) -> io::Result<mpsc::Receiver<io::Result<Vec<u8>>>> {
        match self {
            SnapshotData::Live(live) => Ok(live.chunks),
            SnapshotData::File { path } if path.extension().is_some_and(|ext| ext == "meta") => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "only the meta of this snapshot is on disk; the next request reads the data",
            )),
            SnapshotData::File { path } => {
                let mut file = File::open(&path)?;
                let (tx, rx) = mpsc::channel(LIVE_CHUNKS_AHEAD);
                spawn_reader("snapshot-file", ChunkWriter::new(tx, CHUNK_BYTES), move |out| {
                    io::copy(&mut file, out)?;
                    out.finish()
                })?;
                Ok(rx)
            }
        }
    }

    /// Writes the encoded snapshot to `path` and fsyncs it: what a follower does with what it receives.
    pub(crate) async fn save_to(self, path: &Path) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut chunks = self.into_chunks()?;
        let mut file = tokio::fs::File::create(path).await?;
        while let Some(chunk) = chunks.recv().await {
            file.write_all(&chunk?).await?;
        }
        file.sync_all().await
    }
}

/// The encoded chunks of a live snapshot, read by a thread that holds the RocksDB snapshot until the last
/// chunk is taken or this is dropped.
pub(crate) struct LiveSnapshot {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
}

impl std::fmt::Debug for LiveSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveSnapshot")
    }
}

/// Opens the group's state machine as of now for a follower: the meta at once, and the data encoded as
/// the receiver takes it, from the same RocksDB snapshot (so the two always agree). Nothing is written:
/// a follower's catch-up costs the leader a read of the state, not a copy of it on disk.
pub(crate) async fn open_live(
    db: Arc<DB>,
    group: GroupId,
    chunk_bytes: usize,
) -> io::Result<(SnapshotMeta, LiveSnapshot)> {
    let (meta_tx, meta_rx) = oneshot::channel();
    let (tx, chunks) = mpsc::channel(LIVE_CHUNKS_AHEAD);
    spawn_reader("snapshot-live", ChunkWriter::new(tx, chunk_bytes), move |out| {
        let snapshot = db.snapshot();
        let meta = match applied_meta(&db, &snapshot, group) {
            Ok(meta) => meta,
            Err(e) => {
                let _ = meta_tx.send(Err(e));
                return Ok(());
            }
        };
        if meta_tx.send(Ok(meta.clone())).is_err() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        encode_state(&db, &snapshot, group, &meta, out)?;
        out.finish()?;
        let label = crate::ids::group_name(group);
        metrics::histogram!("sluice_snapshot_send_seconds", "group" => label.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("sluice_snapshot_sent_bytes_total", "group" => label).increment(out.bytes);
        tracing::info!(group, last_log_id = ?meta.last_log_id, bytes = out.bytes, "sent a snapshot's data");
        Ok(())
    })?;
    let meta = meta_rx.await.map_err(|_| io::Error::other("the snapshot reader stopped before its meta"))??;
    Ok((meta, LiveSnapshot { chunks }))
}

/// Runs `read` into `out` on a thread of its own (it blocks on RocksDB and on the receiver). An error is
/// the receiver's last item, so that a cut-short snapshot is never taken for a whole one (a receiver that
/// went away needs no answer).
fn spawn_reader(
    name: &str,
    mut out: ChunkWriter,
    read: impl FnOnce(&mut ChunkWriter) -> io::Result<()> + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        if let Err(e) = read(&mut out)
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            tracing::warn!(error = %e, "reading a snapshot to send");
            let _ = out.tx.blocking_send(Err(e));
        }
    })?;
    Ok(())
}

/// Cuts what is written into chunks of `chunk_bytes` and hands them to the receiver, waiting while it is
/// `LIVE_CHUNKS_AHEAD` behind; a receiver that is gone is a `BrokenPipe`, which ends the writing.
struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    chunk_bytes: usize,
    buffer: Vec<u8>,
    bytes: u64,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<io::Result<Vec<u8>>>, chunk_bytes: usize) -> Self {
        let chunk_bytes = chunk_bytes.max(1);
        Self { tx, chunk_bytes, buffer: Vec::with_capacity(chunk_bytes), bytes: 0 }
    }

    fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.bytes += chunk.len() as u64;
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot's receiver went away"))
    }

    /// Sends what is left.
    fn finish(&mut self) -> io::Result<()> {
        let rest = std::mem::take(&mut self.buffer);
        if rest.is_empty() { Ok(()) } else { self.send(rest) }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let take = bytes.len().min(self.chunk_bytes - self.buffer.len());
        self.buffer.extend_from_slice(&bytes[..take]);
        if self.buffer.len() == self.chunk_bytes {
            let full = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.chunk_bytes));
            self.send(full)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the snapshot format for `group` as of `snapshot`: header, every record, end marker.
fn encode_state(
    db: &DB,
    snapshot: &rocksdb::Snapshot<'_>,
    group: GroupId,
    meta: &SnapshotMeta,
    out: &mut impl Write,
) -> io::Result<()> {
    let header = encode(meta).map_err(io_err)?;
    out.write_all(MAGIC)?;
    out.write_all(&(header.len() as u32).to_be_bytes())?;
    out.write_all(&header)?;
    for (cf_index, cf_name) in STATE_MACHINE_CFS.iter().enumerate() {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(group_end(group));
        // A catch-up read of the whole state would otherwise push the hot blocks out of the cache.
        read_options.fill_cache(false);
        let prefix = group_prefix(group);
        let iter =
            snapshot.iterator_cf_opt(cf(db, cf_name)?, read_options, IteratorMode::From(&prefix, Direction::Forward));
        for item in iter {
            let (key, value) = item.map_err(io_err)?;
            out.write_all(&[cf_index as u8])?;
            out.write_all(&(key.len() as u32).to_be_bytes())?;
            out.write_all(&key)?;
            out.write_all(&(value.len() as u32).to_be_bytes())?;
            out.write_all(&value)?;
        }
    }
    out.write_all(&[END_MARKER])
}

/// Writes the state machine's memtables to table files (every group's: the column families are shared) and
/// waits for it. With `atomic_flush` the column families are flushed as of one point, so the applied log id
/// on disk always matches the data on disk.
pub(crate) fn flush_state_machine(db: &DB) -> io::Result<()> {
    let cfs = STATE_MACHINE_CFS.iter().map(|name| cf(db, name)).collect::<io::Result<Vec<_>>>()?;
    let mut options = rocksdb::FlushOptions::default();
    options.set_wait(true);
    db.flush_cfs_opt(&cfs, &options).map_err(io_err)
}

/// The group's applied log id and membership as of `snapshot`.
fn applied_meta(db: &DB, snapshot: &rocksdb::Snapshot<'_>, group: GroupId) -> io::Result<SnapshotMeta> {
    let sm_cf = cf(db, CF_SM_STATE)?;
    let last_log_id: Option<LogId> = match snapshot.get_cf(sm_cf, tag_key(group, SM_APPLIED)).map_err(io_err)? {
        Some(bytes) => decode(&bytes).map_err(io_err)?,
        None => None,
    };
    let last_membership: StoredMembership =
        match snapshot.get_cf(sm_cf, tag_key(group, SM_MEMBERSHIP)).map_err(io_err)? {
            Some(bytes) => decode(&bytes).map_err(io_err)?,
            None => StoredMembership::default(),
        };
    Ok(SnapshotMeta { last_log_id, last_membership })
}

fn file_name(last_log_id: Option<&LogId>) -> String {
    format!("{:020}.snap", last_log_id.map(|id| id.index() + 1).unwrap_or(0))
}

/// Keeps a group's snapshot build and its installs apart. openraft builds a snapshot on a task of its own,
/// while the state machine goes on with its commands, an install among them. A build that read the applied
/// state in the middle of an install would record a meta for a half-installed state (or for none), and its
/// `record_meta` would remove the received `.snap` that a crash mid-install needs on restart to install
/// again. The functions that write either take the guard, so neither can run without it. The lock also
/// remembers an install that began and did not finish (it failed, or panicked): until one finishes, no build
/// records a meta, since the state is half-replaced and the received file is what a restart installs again.
#[derive(Clone, Default)]
pub(crate) struct SnapshotLock(Arc<Mutex<bool>>);

/// Held while a group's snapshot meta is built or a snapshot is installed.
pub(crate) struct SnapshotGuard<'a> {
    install_incomplete: MutexGuard<'a, bool>,
}

impl SnapshotLock {
    /// Blocks until no build or install of the group runs (call it on a blocking thread).
    pub(crate) fn hold(&self) -> SnapshotGuard<'_> {
        // A panic while it was held changed nothing the flag does not say: an install sets it before its first
        // change.
        let install_incomplete = self.0.lock().unwrap_or_else(|poisoned| {
            self.0.clear_poison();
            poisoned.into_inner()
        });
        SnapshotGuard { install_incomplete }
    }
}

impl SnapshotGuard<'_> {
    pub(super) fn begin_install(&mut self) {
        *self.install_incomplete = true;
    }

    fn install_done(&mut self) {
        *self.install_incomplete = false;
    }

    /// An install began and did not finish.
    pub(crate) fn install_incomplete(&self) -> bool {
        *self.install_incomplete
    }
}

/// Records the meta of a snapshot as of now without writing its data: cheap, whatever the state's size.
/// Applied state is written without the WAL (state_machine.rs), so the state machine's memtables are
/// flushed first (atomically, and waited for): the applied state the meta names is on disk before the meta
/// is, and before openraft purges the log entries it came from (after a crash the state is never behind
/// its meta, and openraft never needs to install anything at start).
pub(crate) fn write_snapshot_meta(
    held: &SnapshotGuard<'_>,
    db: &DB,
    group: GroupId,
    dir: &Path,
) -> io::Result<(SnapshotMeta, PathBuf)> {
    if held.install_incomplete() {
        return Err(io::Error::other(
            "a snapshot install did not finish: no snapshot is built until one does (a restart installs it again)",
        ));
    }
    crate::durable_fs::create_dir_all(dir)?;
    let snapshot = db.snapshot();
    let meta = applied_meta(db, &snapshot, group)?;
    drop(snapshot);
    flush_state_machine(db)?;
    let path = record_meta(dir, &meta)?;
    Ok((meta, path))
}

/// Writes `meta` as the group's current snapshot meta (durably: fsynced, renamed, directory synced), then
/// removes every other meta and full snapshot file in `dir`. The caller has made the state it names durable.
fn record_meta(dir: &Path, meta: &SnapshotMeta) -> io::Result<PathBuf> {
    let final_path = dir.join(file_name(meta.last_log_id.as_ref())).with_extension("meta");
    let tmp_path = final_path.with_extension("meta.tmp");
    let header = encode(meta).map_err(io_err)?;
    let mut file = File::create(&tmp_path)?;
    file.write_all(META_MAGIC)?;
    file.write_all(&(header.len() as u32).to_be_bytes())?;
    file.write_all(&header)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp_path, &final_path)?;
    sync_dir(dir)?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path != final_path && path.extension().is_some_and(|ext| ext == "meta" || ext == "snap") {
            fs::remove_file(&path)?;
        }
    }
    Ok(final_path)
}

/// The newest snapshot or snapshot meta in `dir` (by the index in its name), if any.
pub(crate) fn newest_snapshot_or_meta(dir: &Path) -> io::Result<Option<(SnapshotMeta, PathBuf)>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut newest: Option<(String, PathBuf)> = None;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let Some(stem) = name.strip_suffix(".snap").or_else(|| name.strip_suffix(".meta")) else { continue };
        // Equal indexes: the full snapshot wins (it can also be sent).
        let rank = format!("{stem}{}", if name.ends_with(".snap") { "1" } else { "0" });
        if newest.as_ref().is_none_or(|(best, _)| rank > *best) {
            newest = Some((rank, path));
        }
    }
    let Some((_, path)) = newest else { return Ok(None) };
    let mut input = BufReader::new(File::open(&path)?);
    let mut magic = [0u8; MAGIC.len()];
    input.read_exact(&mut magic)?;
    if magic != MAGIC && magic != META_MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a sluice snapshot file"));
    }
    let header = read_chunk(&mut input)?;
    Ok(Some((decode(&header).map_err(io_err)?, path)))
}

/// Replaces the group's state machine with the snapshot in `path`, which must be the one `expected` describes
/// (openraft's meta; its membership is written with the applied id). A file whose meta differs is refused
/// before anything changes.
///
/// The file is first moved into place as the current snapshot, and the
/// applied log id is written last, with the membership, in one batch: a crash midway leaves a state machine
/// without an applied id and a current snapshot newer than it, which
/// openraft installs again on restart. Once the state is durable, the file
/// is replaced by its meta.
pub(crate) fn install_snapshot(
    held: &mut SnapshotGuard<'_>,
    db: &DB,
    group: GroupId,
    path: &Path,
    dir: &Path,
    expected: &SnapshotMeta,
) -> io::Result<(SnapshotMeta, PathBuf)> {
    crate::durable_fs::create_dir_all(dir)?;
    let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
    let meta = read_meta(&mut input)?;
    if meta != *expected {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot file does not match its meta"));
    }
    held.begin_install();
    let final_path = dir.join(file_name(meta.last_log_id.as_ref()));
    if path != final_path {
        fs::rename(path, &final_path)?;
        sync_dir(dir)?;
    }

    let cfs = STATE_MACHINE_CFS.iter().map(|name| cf(db, name)).collect::<io::Result<Vec<_>>>()?;
    for handle in &cfs {
        db.delete_range_cf(*handle, group_prefix(group).to_vec(), group_end(group)).map_err(io_err)?;
    }
    let applied_key = tag_key(group, SM_APPLIED);
    let mut batch = WriteBatch::default();
    let prefix = group_prefix(group);
    while let Some((cf_index, key, value)) = read_record(&mut input, &prefix)? {
        if key == applied_key {
            continue;
        }
        batch.put_cf(cfs[cf_index], key, value);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut batch)).map_err(io_err)?;
        }
    }
    let sm_state = cf(db, CF_SM_STATE)?;
    batch.put_cf(sm_state, tag_key(group, SM_MEMBERSHIP), encode(&expected.last_membership).map_err(io_err)?);
    if let Some(last_log_id) = &meta.last_log_id {
        batch.put_cf(sm_state, applied_key, encode(&Some(*last_log_id)).map_err(io_err)?);
    }
    db.write(batch).map_err(io_err)?;
    db.flush_wal(true).map_err(io_err)?;
    // The installed state is durable in the WAL: its meta is all that needs to stay (the received copy
    // would otherwise hold the state's size on disk a second time).
    let meta_path = record_meta(dir, &meta)?;
    held.install_done();
    Ok((meta, meta_path))
}

/// Removes snapshots that were being written or received when the node stopped.
pub(crate) fn remove_partial_snapshots(dir: &Path) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".snap.tmp") || name.ends_with(".meta.tmp") || name.ends_with(".incoming") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Reads a received snapshot file through without installing anything: its meta, if the file is whole (every
/// record complete, the end marker last, nothing after it) and holds only `group`'s keys in known column
/// families. A follower checks this before it hands the file to openraft: an install that fails halfway is
/// a storage error, which stops the group on that node, and it would already have removed the old state.
pub(crate) fn check_snapshot_file(path: &Path, group: GroupId) -> io::Result<SnapshotMeta> {
    let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
    let meta = read_meta(&mut input)?;
    let prefix = group_prefix(group);
    while read_record(&mut input, &prefix)?.is_some() {}
    if input.read(&mut [0u8; 1])? != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes after the snapshot's end marker"));
    }
    Ok(meta)
}

/// A snapshot record: the index of its column family in `STATE_MACHINE_CFS`, its key, its value.
type Record = (usize, Vec<u8>, Vec<u8>);

/// The next record of a snapshot, or `None` at its end marker; refuses an unknown column family and a key
/// outside `prefix` (another group's).
fn read_record(input: &mut impl Read, prefix: &[u8]) -> io::Result<Option<Record>> {
    let mut cf_index = [0u8; 1];
    input.read_exact(&mut cf_index)?;
    if cf_index[0] == END_MARKER {
        return Ok(None);
    }
    let cf_index = usize::from(cf_index[0]);
    if cf_index >= STATE_MACHINE_CFS.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot names an unknown column family"));
    }
    let key = read_chunk(input)?;
    if !key.starts_with(prefix) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot holds a key of another group"));
    }
    Ok(Some((cf_index, key, read_chunk(input)?)))
}

fn read_meta(input: &mut impl Read) -> io::Result<SnapshotMeta> {
    let mut magic = [0u8; MAGIC.len()];
    input.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a sluice snapshot file"));
    }
    let header = read_chunk(input)?;
    decode(&header).map_err(io_err)
}

fn read_chunk(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut bytes = vec![0u8; u32::from_be_bytes(len) as usize];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

use crate::durable_fs::sync_dir;

/// Builds a group's snapshot for openraft: the meta of the state as of now, once the memtables are flushed
/// (`write_snapshot_meta`); the data is read when a follower needs it.
pub(crate) struct GroupSnapshotBuilder {
    db: Arc<DB>,
    group: GroupId,
    snapshot_dir: PathBuf,
    lock: SnapshotLock,
}

impl GroupSnapshotBuilder {
    pub(crate) fn new(db: Arc<DB>, group: GroupId, snapshot_dir: PathBuf, lock: SnapshotLock) -> Self {
        GroupSnapshotBuilder { db, group, snapshot_dir, lock }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let db = self.db.clone();
        let group = self.group;
        let dir = self.snapshot_dir.clone();
        let lock = self.lock.clone();
        let started = std::time::Instant::now();
        let written = tokio::task::spawn_blocking(move || write_snapshot_meta(&lock.hold(), &db, group, &dir))
            .await
            .map_err(io_err)
            .and_then(|written| written);
        let (meta, path) = match written {
            Ok(written) => written,
            Err(e) => return Err(e),
        };
        metrics::histogram!("sluice_snapshot_build_seconds", "group" => crate::ids::group_name(group))
            .record(started.elapsed().as_secs_f64());
        tracing::info!(group, last_log_id = ?meta.last_log_id, path = %path.display(), "built snapshot");
        Ok(Snapshot { meta, snapshot: SnapshotData::File { path } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_cut_at_the_size_asked_for_whatever_the_writes() {
        for chunk_bytes in [1, 3, 8, 64] {
            for write_sizes in [vec![1usize, 1, 1], vec![10, 0, 7], vec![64, 65, 1], vec![3; 20]] {
                let (tx, mut rx) = mpsc::channel(1024);
                let mut writer = ChunkWriter::new(tx, chunk_bytes);
                let mut expected = Vec::new();
                for (i, size) in write_sizes.iter().enumerate() {
                    let bytes: Vec<u8> = (0..*size).map(|b| (b + i) as u8).collect();
                    writer.write_all(&bytes).expect("write");
                    expected.extend(bytes);
                }
                writer.finish().expect("finish");
                assert_eq!(writer.bytes, expected.len() as u64);
                drop(writer);
                let mut chunks = Vec::new();
                while let Ok(chunk) = rx.try_recv() {
                    chunks.push(chunk.expect("chunk"));
                }
                let (last, full) = chunks.split_last().map_or((None, &[][..]), |(l, f)| (Some(l), f));
                assert!(full.iter().all(|c| c.len() == chunk_bytes), "{chunk_bytes} {write_sizes:?}");
                assert!(last.is_none_or(|l| !l.is_empty() && l.len() <= chunk_bytes));
                assert_eq!(chunks.concat(), expected, "{chunk_bytes} {write_sizes:?}");
            }
        }
    }

    #[test]
    fn a_read_error_is_the_receivers_last_item_not_a_clean_end() {
        let (tx, mut rx) = mpsc::channel(8);
        spawn_reader("test-reader", ChunkWriter::new(tx, 4), |out| {
            out.write_all(b"12345678")?;
            Err(io::Error::other("disk gone"))
        })
        .expect("spawn");
        let mut items = Vec::new();
        while let Some(item) = rx.blocking_recv() {
            items.push(item.map_err(|e| e.to_string()));
        }
        assert_eq!(items, vec![Ok(b"1234".to_vec()), Ok(b"5678".to_vec()), Err("disk gone".to_string())]);
    }

    #[test]
    fn a_receiver_that_went_away_ends_the_writing() {
        let (tx, rx) = mpsc::channel(1);
        let mut writer = ChunkWriter::new(tx, 4);
        drop(rx);
        let error = writer.write_all(b"12345678").expect_err("nobody reads");
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }
}
