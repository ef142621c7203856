//! The filesystem a node's data directory sits on in the power-loss runs: a FUSE passthrough to a directory
//! below ("the disk") that keeps every write in memory until the file is fsynced, and every created or renamed
//! entry undoable until its directory is fsynced ([`super::model`]). A cut drops what is pending, as a machine
//! losing power loses its page cache.
//!
//! Every open is `direct_io` and attributes are never cached by the kernel, so nothing the cut dropped
//! survives in the kernel's caches. File locks are left to the kernel (the FUSE default).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use super::model::{NamespaceChange, NamespaceLog, PendingData, Undo};

/// Where entries displaced by a rename wait (in the disk below, hidden from the mount).
const STASH: &str = ".lazyfs-stash";
/// Pending bytes kept at most; past it the largest file's are written down, as a kernel writes back dirty pages
/// under memory pressure (they survive a cut then).
const MAX_PENDING_BYTES: usize = 512 << 20;
const NO_CACHE: Duration = Duration::ZERO;

/// What the filesystem knows; shared with the control socket that cuts.
#[derive(Default)]
pub struct State {
    /// The disk below.
    root: PathBuf,
    /// inode → path under `root` (root is inode 1, path "").
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_inode: u64,
    /// Open handles of the disk's files, by inode.
    files: HashMap<u64, File>,
    pending: HashMap<u64, PendingData>,
    namespace: NamespaceLog,
    next_stash: u64,
    /// Counters, for the control socket's `stats`.
    pub cuts: u64,
    pub dropped_bytes: u64,
    pub undone_entries: u64,
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc_eio())
}

const fn libc_eio() -> i32 {
    5
}
const ENOENT: i32 = 2;

impl State {
    pub fn new(root: PathBuf) -> std::io::Result<State> {
        std::fs::create_dir_all(root.join(STASH))?;
        let mut state = State { root, next_inode: 2, ..State::default() };
        state.paths.insert(1, PathBuf::new());
        state.inodes.insert(PathBuf::new(), 1);
        Ok(state)
    }

    fn path(&self, ino: u64) -> Option<&PathBuf> {
        self.paths.get(&ino)
    }

    fn disk(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }

    fn inode_for(&mut self, path: PathBuf) -> u64 {
        if let Some(ino) = self.inodes.get(&path) {
            return *ino;
        }
        let ino = self.next_inode;
        self.next_inode += 1;
        self.paths.insert(ino, path.clone());
        self.inodes.insert(path, ino);
        ino
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        let path = self.path(parent)?.join(name);
        (path != Path::new(STASH)).then_some(path)
    }

    fn attr(&self, ino: u64) -> std::io::Result<FileAttr> {
        let path = self.path(ino).ok_or_else(|| std::io::Error::from_raw_os_error(ENOENT))?;
        let meta = std::fs::symlink_metadata(self.disk(path))?;
        let kind = if meta.is_dir() { FileType::Directory } else { FileType::RegularFile };
        let size = self.pending.get(&ino).map_or(meta.len(), |p| p.size);
        let time = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time(meta.atime()),
            mtime: time(meta.mtime()),
            ctime: time(meta.ctime()),
            crtime: time(meta.ctime()),
            kind,
            perm: (meta.permissions().mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn file(&mut self, ino: u64) -> std::io::Result<&File> {
        if !self.files.contains_key(&ino) {
            let path = self.path(ino).ok_or_else(|| std::io::Error::from_raw_os_error(ENOENT))?;
            let file = OpenOptions::new().read(true).write(true).open(self.disk(path))?;
            self.files.insert(ino, file);
        }
        self.files.get(&ino).ok_or_else(|| std::io::Error::from_raw_os_error(ENOENT))
    }

    fn pending_mut(&mut self, ino: u64) -> std::io::Result<&mut PendingData> {
        if !self.pending.contains_key(&ino) {
            let size = self.file(ino)?.metadata()?.len();
            self.pending.insert(ino, PendingData::over(size));
        }
        self.pending.get_mut(&ino).ok_or_else(|| std::io::Error::from_raw_os_error(ENOENT))
    }

    /// Writes a file's pending data down to the disk below.
    fn write_down(&mut self, ino: u64) -> std::io::Result<()> {
        // Kept until it is all down: a failed write-down loses nothing, and the fsync that asked fails.
        let Some(pending) = self.pending.get(&ino).cloned() else { return Ok(()) };
        let file = self.file(ino)?;
        if let Some(cut) = pending.cut_at {
            file.set_len(cut)?;
        }
        for (offset, data) in &pending.writes {
            file.write_all_at(data, *offset)?;
        }
        file.set_len(pending.size)?;
        self.pending.remove(&ino);
        Ok(())
    }

    fn bound_memory(&mut self) {
        let total: usize = self.pending.values().map(PendingData::bytes).sum();
        if total > MAX_PENDING_BYTES
            && let Some(largest) = self.pending.iter().max_by_key(|(_, p)| p.bytes()).map(|(ino, _)| *ino)
            && let Err(e) = self.write_down(largest)
        {
            eprintln!("lazyfs: writing back under memory pressure: {e}");
        }
    }

    fn renamed(&mut self, from: &Path, to: &Path) {
        // The inode (and its pending data) follows the entry, and every entry under it when it is a directory.
        let moved: Vec<(PathBuf, u64)> = self
            .inodes
            .iter()
            .filter(|(path, _)| path.starts_with(from))
            .map(|(path, ino)| (path.clone(), *ino))
            .collect();
        if let Some(old) = self.inodes.remove(to) {
            self.paths.remove(&old);
            self.files.remove(&old);
            self.pending.remove(&old);
        }
        for (path, ino) in moved {
            self.inodes.remove(&path);
            let below = path.strip_prefix(from).unwrap_or(Path::new(""));
            // `to.join("")` would end in a slash: the entry itself keeps `to` as it is.
            let new = if below.as_os_str().is_empty() { to.to_path_buf() } else { to.join(below) };
            self.paths.insert(ino, new.clone());
            self.inodes.insert(new, ino);
        }
    }

    /// The power goes: pending data is dropped, unsynced entries are undone (newest first), and the inodes are
    /// forgotten (the node that used them is dead).
    /// Answers what this cut lost: (bytes of data, directory entries).
    pub fn cut(&mut self) -> (u64, u64) {
        self.cuts += 1;
        let dropped = self.pending.values().map(|p| p.bytes() as u64).sum::<u64>();
        let undone_before = self.undone_entries;
        self.dropped_bytes += dropped;
        self.pending.clear();
        self.files.clear();
        for undo in self.namespace.cut() {
            self.undone_entries += 1;
            let outcome = match &undo {
                Undo::Remove(path) => {
                    let disk = self.disk(path);
                    if disk.is_dir() { std::fs::remove_dir_all(disk) } else { std::fs::remove_file(disk) }
                }
                Undo::Rename(from, to) => std::fs::rename(self.disk(from), self.disk(to)),
            };
            if let Err(e) = outcome
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("lazyfs: undoing {undo:?}: {e}");
            }
        }
        let root = self.paths.get(&1).cloned().unwrap_or_default();
        self.paths.clear();
        self.inodes.clear();
        self.paths.insert(1, root.clone());
        self.inodes.insert(root, 1);
        (dropped, self.undone_entries - undone_before)
    }
}

/// The FUSE side.
pub struct LazyFs {
    pub state: Arc<Mutex<State>>,
}

impl LazyFs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn time_of(time: Option<TimeOrNow>) -> Option<SystemTime> {
    time.map(|t| match t {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    })
}

impl Filesystem for LazyFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let Some(path) = state.child(parent, name) else { return reply.error(ENOENT) };
        if std::fs::symlink_metadata(state.disk(&path)).is_err() {
            return reply.error(ENOENT);
        }
        let ino = state.inode_for(path);
        match state.attr(ino) {
            Ok(attr) => reply.entry(&NO_CACHE, &attr, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.state().attr(ino) {
            Ok(attr) => reply.attr(&NO_CACHE, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let outcome = (|| {
            let path = state.path(ino).cloned().ok_or_else(|| std::io::Error::from_raw_os_error(ENOENT))?;
            if let Some(size) = size {
                state.pending_mut(ino)?.truncate(size);
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(state.disk(&path), std::fs::Permissions::from_mode(mode))?;
            }
            if atime.is_some() || mtime.is_some() {
                let file =
                    File::options().write(true).open(state.disk(&path)).or_else(|_| File::open(state.disk(&path)))?;
                let mut times = std::fs::FileTimes::new();
                if let Some(t) = time_of(atime) {
                    times = times.set_accessed(t);
                }
                if let Some(t) = time_of(mtime) {
                    times = times.set_modified(t);
                }
                let _ = file.set_times(times);
            }
            state.attr(ino)
        })();
        match outcome {
            Ok(attr) => reply.attr(&NO_CACHE, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let mut state = self.state();
        let Some(path) = state.child(parent, name) else { return reply.error(ENOENT) };
        let created = std::fs::DirBuilder::new().mode(mode).create(state.disk(&path));
        if let Err(e) = created {
            return reply.error(errno(&e));
        }
        state.namespace.record(NamespaceChange::Created { path: path.clone() });
        let ino = state.inode_for(path);
        match state.attr(ino) {
            Ok(attr) => reply.entry(&NO_CACHE, &attr, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let Some(path) = state.child(parent, name) else { return reply.error(ENOENT) };
        let existed = state.disk(&path).exists();
        let exclusive = flags & 0o200 != 0; // O_EXCL
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!exclusive)
            .create_new(exclusive)
            .mode(mode)
            .open(state.disk(&path));
        let file = match opened {
            Ok(file) => file,
            Err(e) => return reply.error(errno(&e)),
        };
        if !existed {
            state.namespace.record(NamespaceChange::Created { path: path.clone() });
        }
        let ino = state.inode_for(path);
        state.files.insert(ino, file);
        if flags & 0o1000 != 0 {
            // O_TRUNC
            if let Ok(pending) = state.pending_mut(ino) {
                pending.truncate(0);
            }
        }
        match state.attr(ino) {
            Ok(attr) => reply.created(&NO_CACHE, &attr, 0, 0, fuser::consts::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut state = self.state();
        if state.path(ino).is_none() {
            return reply.error(ENOENT);
        }
        if flags & 0o1000 != 0
            && let Ok(pending) = state.pending_mut(ino)
        {
            pending.truncate(0);
        }
        reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let mut state = self.state();
        let offset = offset.max(0) as u64;
        let outcome = (|| {
            let file = state.file(ino)?;
            let mut durable = vec![0u8; size as usize];
            let mut filled = 0;
            while filled < durable.len() {
                let n = file.read_at(&mut durable[filled..], offset + filled as u64)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            durable.truncate(filled);
            Ok::<_, std::io::Error>(match state.pending.get(&ino) {
                Some(pending) => pending.read(offset, size as usize, &durable),
                None => durable,
            })
        })();
        match outcome {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        match state.pending_mut(ino) {
            Ok(pending) => pending.write(offset.max(0) as u64, data),
            Err(e) => return reply.error(errno(&e)),
        }
        state.bound_memory();
        reply.written(data.len() as u32);
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        // close(2) is not fsync(2): nothing becomes durable.
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        match self.state().write_down(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Preallocation (RocksDB's WAL) changes no bytes; without FALLOC_FL_KEEP_SIZE it may grow the file.
        const KEEP_SIZE: i32 = 1;
        let mut state = self.state();
        if mode & KEEP_SIZE == 0 {
            let end = (offset + length).max(0) as u64;
            match state.pending_mut(ino) {
                Ok(pending) if pending.size < end => pending.truncate(end),
                Ok(_) => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.ok();
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let Some(path) = state.child(parent, name) else { return reply.error(ENOENT) };
        if let Err(e) = std::fs::remove_file(state.disk(&path)) {
            return reply.error(errno(&e));
        }
        if let Some(ino) = state.inodes.remove(&path) {
            state.paths.remove(&ino);
            state.pending.remove(&ino);
            state.files.remove(&ino);
        }
        reply.ok();
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let Some(path) = state.child(parent, name) else { return reply.error(ENOENT) };
        if let Err(e) = std::fs::remove_dir(state.disk(&path)) {
            return reply.error(errno(&e));
        }
        if let Some(ino) = state.inodes.remove(&path) {
            state.paths.remove(&ino);
        }
        reply.ok();
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let (Some(from), Some(to)) = (state.child(parent, name), state.child(newparent, newname)) else {
            return reply.error(ENOENT);
        };
        // What `to` named is kept aside until the rename is durable, to come back on a cut.
        let displaced = if state.disk(&to).exists() {
            state.next_stash += 1;
            let stashed = PathBuf::from(STASH).join(state.next_stash.to_string());
            if let Err(e) = std::fs::rename(state.disk(&to), state.disk(&stashed)) {
                return reply.error(errno(&e));
            }
            Some(stashed)
        } else {
            None
        };
        if let Err(e) = std::fs::rename(state.disk(&from), state.disk(&to)) {
            if let Some(stashed) = &displaced {
                let _ = std::fs::rename(state.disk(stashed), state.disk(&to));
            }
            return reply.error(errno(&e));
        }
        state.renamed(&from, &to);
        state.namespace.record(NamespaceChange::Renamed { from, to, displaced });
        reply.ok();
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.state().path(ino) {
            Some(_) => reply.opened(0, 0),
            None => reply.error(ENOENT),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let mut state = self.state();
        let Some(path) = state.path(ino).cloned() else { return reply.error(ENOENT) };
        let entries = match std::fs::read_dir(state.disk(&path)) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut listed: Vec<(u64, FileType, std::ffi::OsString)> =
            vec![(ino, FileType::Directory, ".".into()), (1, FileType::Directory, "..".into())];
        let mut names: Vec<(std::ffi::OsString, bool)> = entries
            .filter_map(Result::ok)
            .map(|e| (e.file_name(), e.file_type().is_ok_and(|t| t.is_dir())))
            .filter(|(name, _)| !(path.as_os_str().is_empty() && name == STASH))
            .collect();
        names.sort();
        for (name, is_dir) in names {
            let child = state.inode_for(path.join(&name));
            listed.push((child, if is_dir { FileType::Directory } else { FileType::RegularFile }, name));
        }
        for (i, (child, kind, name)) in listed.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.state();
        let Some(path) = state.path(ino).cloned() else { return reply.error(ENOENT) };
        for stashed in state.namespace.synced(&path) {
            let disk = state.disk(&stashed);
            let _ = if disk.is_dir() { std::fs::remove_dir_all(disk) } else { std::fs::remove_file(disk) };
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        // Plenty of room: the disk below's own figures are not needed by anything that runs here.
        reply.statfs(1 << 30, 1 << 29, 1 << 29, 1 << 20, 1 << 19, 4096, 255, 4096);
    }
}
