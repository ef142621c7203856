//! Files and directories whose entries survive a power cut. A new file or directory is durable only once the
//! directory holding its entry is fsynced (POSIX; the power-loss runs of `chaos/` drop such entries when they
//! were not): RocksDB fsyncs its own directory, but not the directories Sluice creates for it.

use std::fs::File;
use std::io;
use std::path::Path;

/// Fsyncs a directory: the entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, durably: each directory it creates is fsynced in its parent.
pub(crate) fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Created meanwhile by another caller: it made it durable (or is about to); sync again anyway.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    sync_dir(dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// Writes a whole file durably: to `PATH.tmp`, fsynced, renamed over `path`, the directory fsynced
/// ([`sluice_security::write_file_durably`]).
pub(crate) fn write_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_file_with_mode(path, contents, 0o644)
}

/// The same for a secret: readable by the owner only (mode 0600) from its first byte.
pub(crate) fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_file_with_mode(path, contents, 0o600)
}

fn write_file_with_mode(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    sluice_security::write_file_durably(path, contents, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_directories_and_a_file_are_created_whole() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b/c");
        create_dir_all(&dir).expect("created");
        create_dir_all(&dir).expect("again: nothing to do");
        assert!(dir.is_dir());
        write_file(&dir.join("node-id"), b"3\n").expect("written");
        assert_eq!(std::fs::read_to_string(dir.join("node-id")).expect("read"), "3\n");
        assert!(!dir.join("node-id.tmp").exists());
        assert!(create_dir_all(&dir.join("node-id")).is_err(), "a file is no directory");
    }
}
