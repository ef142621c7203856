//! Snapshot files: a group's state machine (its key ranges in `events`,
//! `time_index` and `sm_state`) written from a RocksDB snapshot.
//!
//! Format: `SLUICESNAP1\n`, u32 header length, postcard([`SnapshotMeta`]),
//! then records `cf index (u8) · key length (u32) · key · value length (u32) ·
//! value`, then the end marker `0xff`. Integers are big-endian. The file is
//! fsynced and renamed into place, so a present `*.snap` file is whole.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};

use super::{cf, io_err};
use crate::command::{GroupId, LogId, SnapshotMeta, StoredMembership, decode, encode};
use crate::store::keys::{CF_SM_STATE, SM_APPLIED, SM_MEMBERSHIP, STATE_MACHINE_CFS, group_end, group_prefix, tag_key};

const MAGIC: &[u8] = b"SLUICESNAP1\n";
/// A snapshot of a group's state machine, as openraft hands it around.
pub(crate) type Snapshot = openraft::alias::SnapshotOf<crate::command::TypeConfig, SnapshotFile>;

/// A snapshot's meta without its data (`*.meta`): what a group records when it builds a snapshot, so that
/// openraft may purge the log. The data is written only when a follower needs it ([`write_snapshot`]).
/// A different magic, so a meta file can never be installed as an (empty) snapshot.
const META_MAGIC: &[u8] = b"SLUICEMETA1\n";
const END_MARKER: u8 = 0xff;
/// Bytes per RocksDB write batch when installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// The data of a snapshot: a complete file on disk.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotFile {
    pub path: PathBuf,
}

fn file_name(last_log_id: Option<&LogId>) -> String {
    format!("{:020}.snap", last_log_id.map(|id| id.index() + 1).unwrap_or(0))
}

/// Writes the group's state machine as of now; the meta comes from the same
/// RocksDB snapshot as the data, so the two always agree.
pub(crate) fn write_snapshot(db: &DB, group: GroupId, dir: &Path) -> io::Result<(SnapshotMeta, PathBuf)> {
    crate::durable_fs::create_dir_all(dir)?;
    let snapshot = db.snapshot();
    let meta = applied_meta(db, &snapshot, group)?;
    let final_path = dir.join(file_name(meta.last_log_id.as_ref()));
    let tmp_path = final_path.with_extension("snap.tmp");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp_path)?);
    let header = encode(&meta).map_err(io_err)?;
    out.write_all(MAGIC)?;
    out.write_all(&(header.len() as u32).to_be_bytes())?;
    out.write_all(&header)?;
    for (cf_index, cf_name) in STATE_MACHINE_CFS.iter().enumerate() {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(group_end(group));
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
    out.write_all(&[END_MARKER])?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp_path, &final_path)?;
    sync_dir(dir)?;
    remove_other_snapshots(dir, &final_path)?;
    Ok((meta, final_path))
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

/// Records the meta of a snapshot as of now without writing its data: cheap, whatever the state's size.
/// Applied state is written without the WAL (state_machine.rs), so the state machine's memtables are
/// flushed first (atomically, and waited for): the applied state the meta names is on disk before the meta
/// is, and before openraft purges the log entries it came from (after a crash the state is never behind
/// its meta, and openraft never needs to install anything at start).
pub(crate) fn write_snapshot_meta(db: &DB, group: GroupId, dir: &Path) -> io::Result<(SnapshotMeta, PathBuf)> {
    crate::durable_fs::create_dir_all(dir)?;
    let snapshot = db.snapshot();
    let meta = applied_meta(db, &snapshot, group)?;
    drop(snapshot);
    flush_state_machine(db)?;
    let final_path = dir.join(file_name(meta.last_log_id.as_ref())).with_extension("meta");
    let tmp_path = final_path.with_extension("meta.tmp");
    let header = encode(&meta).map_err(io_err)?;
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
        if path != final_path && path.extension().is_some_and(|ext| ext == "meta") {
            fs::remove_file(&path)?;
        }
    }
    Ok((meta, final_path))
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

/// Replaces the group's state machine with the snapshot in `path`.
///
/// The file is first moved into place as the current snapshot, and the
/// applied log id is written last: a crash midway leaves a state machine
/// without an applied id and a current snapshot newer than it, which
/// openraft installs again on restart.
pub(crate) fn install_snapshot(
    db: &DB,
    group: GroupId,
    path: &Path,
    dir: &Path,
) -> io::Result<(SnapshotMeta, PathBuf)> {
    crate::durable_fs::create_dir_all(dir)?;
    let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
    let meta = read_meta(&mut input)?;
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
    loop {
        let mut cf_index = [0u8; 1];
        input.read_exact(&mut cf_index)?;
        if cf_index[0] == END_MARKER {
            break;
        }
        let handle = cfs
            .get(usize::from(cf_index[0]))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "snapshot names an unknown column family"))?;
        let key = read_chunk(&mut input)?;
        let value = read_chunk(&mut input)?;
        if !key.starts_with(&group_prefix(group)) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot holds a key of another group"));
        }
        if key == applied_key {
            continue;
        }
        batch.put_cf(*handle, key, value);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut batch)).map_err(io_err)?;
        }
    }
    if let Some(last_log_id) = &meta.last_log_id {
        batch.put_cf(cf(db, CF_SM_STATE)?, applied_key, encode(&Some(*last_log_id)).map_err(io_err)?);
    }
    db.write(batch).map_err(io_err)?;
    db.flush_wal(true).map_err(io_err)?;
    remove_other_snapshots(dir, &final_path)?;
    Ok((meta, final_path))
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

fn remove_other_snapshots(dir: &Path, keep: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path != keep && path.extension().is_some_and(|ext| ext == "snap") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

use crate::durable_fs::sync_dir;
