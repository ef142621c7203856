//! What a power cut loses, pure: the bytes written to a file and not yet fsynced ([`PendingData`]), and the
//! directory entries created or renamed and not yet made durable by an fsync of their directory
//! ([`NamespaceLog`]). The filesystem (`super::fs`) keeps written data here instead of passing it to the disk
//! below, reads through it, and on fsync writes it down; on a cut it forgets it and undoes the namespace
//! changes, newest first.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// One file's writes since its last fsync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingData {
    /// The size the file has for its readers.
    pub size: u64,
    /// Bytes of the durable file at or past this offset are gone (a truncation not yet synced), so they read as
    /// zeros unless written again.
    pub cut_at: Option<u64>,
    /// Writes in order; a write that continues the previous one is appended to it.
    pub writes: Vec<(u64, Vec<u8>)>,
}

impl PendingData {
    /// Pending data over a durable file of `durable_size` bytes.
    pub fn over(durable_size: u64) -> Self {
        PendingData { size: durable_size, cut_at: None, writes: Vec::new() }
    }

    /// Bytes held here.
    pub fn bytes(&self) -> usize {
        self.writes.iter().map(|(_, data)| data.len()).sum()
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        match self.writes.last_mut() {
            Some((last_offset, last)) if *last_offset + last.len() as u64 == offset => last.extend_from_slice(data),
            _ => self.writes.push((offset, data.to_vec())),
        }
        self.size = self.size.max(end);
    }

    pub fn truncate(&mut self, size: u64) {
        for (offset, data) in &mut self.writes {
            let keep = size.saturating_sub(*offset).min(data.len() as u64) as usize;
            data.truncate(keep);
        }
        self.writes.retain(|(_, data)| !data.is_empty());
        if size < self.size {
            self.cut_at = Some(self.cut_at.map_or(size, |cut| cut.min(size)));
        }
        self.size = size;
    }

    /// What a reader sees at `offset..offset + length`, given the durable file's bytes there (`durable`, possibly
    /// shorter than asked).
    pub fn read(&self, offset: u64, length: usize, durable: &[u8]) -> Vec<u8> {
        let end = (offset + length as u64).min(self.size);
        if end <= offset {
            return Vec::new();
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let durable_end = self.cut_at.map_or(u64::MAX, |cut| cut);
        for (i, byte) in durable.iter().enumerate().take(out.len()) {
            if offset + (i as u64) < durable_end {
                out[i] = *byte;
            }
        }
        for (write_offset, data) in &self.writes {
            let write_end = write_offset + data.len() as u64;
            let from = offset.max(*write_offset);
            let to = end.min(write_end);
            if from < to {
                let src = (from - write_offset) as usize..(to - write_offset) as usize;
                let dst = (from - offset) as usize..(to - offset) as usize;
                out[dst].copy_from_slice(&data[src]);
            }
        }
        out
    }
}

/// A change to a directory's entries since its last fsync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceChange {
    /// An entry created (a file or a directory).
    Created { path: PathBuf },
    /// `from` renamed to `to`; what `to` named before was kept at `displaced` (in the stash), to come back.
    Renamed { from: PathBuf, to: PathBuf, displaced: Option<PathBuf> },
}

/// How to undo one change on the disk below, on a cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undo {
    Remove(PathBuf),
    /// Rename `.0` back to `.1`.
    Rename(PathBuf, PathBuf),
}

/// The namespace changes not yet durable, oldest first, each with the directories that must be fsynced for it
/// to be.
#[derive(Clone, Debug, Default)]
pub struct NamespaceLog {
    changes: Vec<(NamespaceChange, BTreeSet<PathBuf>)>,
}

fn parent(path: &std::path::Path) -> PathBuf {
    path.parent().map(PathBuf::from).unwrap_or_default()
}

impl NamespaceLog {
    pub fn record(&mut self, change: NamespaceChange) {
        let dirs = match &change {
            NamespaceChange::Created { path } => BTreeSet::from([parent(path)]),
            NamespaceChange::Renamed { from, to, .. } => BTreeSet::from([parent(from), parent(to)]),
        };
        self.changes.push((change, dirs));
    }

    /// `dir` was fsynced: its changes are durable. Answers the stashed entries that may now be deleted for good.
    pub fn synced(&mut self, dir: &std::path::Path) -> Vec<PathBuf> {
        let mut released = Vec::new();
        for (_, dirs) in &mut self.changes {
            dirs.remove(dir);
        }
        self.changes.retain(|(change, dirs)| {
            let durable = dirs.is_empty();
            if durable && let NamespaceChange::Renamed { displaced: Some(stashed), .. } = change {
                released.push(stashed.clone());
            }
            !durable
        });
        released
    }

    /// A cut: how to undo every change not durable, newest first.
    pub fn cut(&mut self) -> Vec<Undo> {
        let mut undo = Vec::new();
        for (change, _) in self.changes.drain(..).rev() {
            match change {
                NamespaceChange::Created { path } => undo.push(Undo::Remove(path)),
                NamespaceChange::Renamed { from, to, displaced } => {
                    undo.push(Undo::Rename(to.clone(), from));
                    if let Some(stashed) = displaced {
                        undo.push(Undo::Rename(stashed, to));
                    }
                }
            }
        }
        undo
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_see_writes_over_the_durable_bytes_and_a_truncation_zeroes_what_it_cut() {
        let mut pending = PendingData::over(8);
        let durable = b"abcdefgh";
        assert_eq!(pending.read(0, 8, durable), b"abcdefgh");
        pending.write(2, b"XY");
        pending.write(4, b"Z");
        assert_eq!(pending.writes.len(), 1, "a write that continues the last one extends it");
        assert_eq!(pending.read(0, 100, durable), b"abXYZfgh");
        pending.write(10, b"!");
        assert_eq!(pending.size, 11);
        assert_eq!(pending.read(6, 10, &durable[6..]), b"gh\0\0!", "durable bytes as read from the offset");
        pending.truncate(3);
        assert_eq!(pending.read(0, 100, durable), b"abX");
        pending.truncate(6);
        assert_eq!(pending.read(0, 100, durable), b"abX\0\0\0", "what the truncation cut reads as zeros");
        assert_eq!(pending.bytes(), 1);
    }

    #[test]
    fn a_cut_undoes_what_no_directory_fsync_covered_newest_first() {
        let mut log = NamespaceLog::default();
        log.record(NamespaceChange::Created { path: "db/000001.log".into() });
        log.record(NamespaceChange::Created { path: "db/CURRENT.tmp".into() });
        log.record(NamespaceChange::Renamed {
            from: "db/CURRENT.tmp".into(),
            to: "db/CURRENT".into(),
            displaced: Some(".stash/1".into()),
        });
        assert!(log.synced(std::path::Path::new("other")).is_empty());
        assert_eq!(
            log.cut(),
            [
                Undo::Rename("db/CURRENT".into(), "db/CURRENT.tmp".into()),
                Undo::Rename(".stash/1".into(), "db/CURRENT".into()),
                Undo::Remove("db/CURRENT.tmp".into()),
                Undo::Remove("db/000001.log".into()),
            ]
        );
        assert!(log.is_empty());

        log.record(NamespaceChange::Created { path: "db/000002.log".into() });
        log.record(NamespaceChange::Renamed {
            from: "db/CURRENT.tmp".into(),
            to: "db/CURRENT".into(),
            displaced: Some(".stash/2".into()),
        });
        assert_eq!(log.synced(std::path::Path::new("db")), [PathBuf::from(".stash/2")], "the old CURRENT may go");
        assert!(log.cut().is_empty(), "all durable");
    }

    proptest! {
        /// The overlay reads as a plain byte array that took the same writes and truncations.
        #[test]
        fn reads_match_a_plain_file(
            durable in proptest::collection::vec(any::<u8>(), 0..64),
            ops in proptest::collection::vec((any::<bool>(), 0..80u64, proptest::collection::vec(any::<u8>(), 0..16)), 0..20),
        ) {
            let mut plain = durable.clone();
            let mut pending = PendingData::over(durable.len() as u64);
            for (is_write, at, data) in ops {
                if is_write {
                    let end = at as usize + data.len();
                    if plain.len() < end { plain.resize(end, 0); }
                    plain[at as usize..end].copy_from_slice(&data);
                    pending.write(at, &data);
                } else {
                    plain.resize(at as usize, 0);
                    pending.truncate(at);
                }
            }
            prop_assert_eq!(pending.read(0, 1000, &durable), plain);
        }
    }
}
