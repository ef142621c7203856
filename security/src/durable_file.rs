//! A file written whole or not at all, and kept across a power cut: keys and certificates (and the broker's
//! small files, `sluice_broker`'s `durable_fs`). A crash mid-write must not leave a half file that a node
//! then reads on every start.

use std::io::{self, Write};
use std::path::Path;

/// Writes `contents` to `path` with permissions `mode` from its first byte: to `PATH.tmp` (the whole name and
/// `.tmp`: `node.pem` and `node.key` never share one), fsynced, renamed over `path`, the directory fsynced (a new
/// entry is durable only then).
pub fn write_file_durably(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    // A temporary some earlier crash left keeps its own permissions when opened (the mode applies only to a
    // file created): made anew, so a key is never written readable to others. Regression: a leftover
    // `node.key.tmp` of 0644 gave the key 0644.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_and_no_temporary_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        std::fs::write(&path, "old").expect("old");
        write_file_durably(&path, b"new contents", 0o600).expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new contents");
        assert_eq!(std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777, 0o600);
        assert!(!dir.path().join("node.key.tmp").exists());
        assert!(write_file_durably(&dir.path().join("missing/x"), b"", 0o600).is_err(), "no such directory");
    }

    /// Regression: a temporary left by a crash, readable to others, kept its mode and passed it on to the key.
    #[test]
    fn a_leftover_temporary_does_not_lend_its_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let leftover = dir.path().join("node.key.tmp");
        std::fs::write(&leftover, "half a key").expect("leftover");
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).expect("0644");
        write_file_durably(&path, b"the key", 0o600).expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "the key");
        assert_eq!(std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777, 0o600);
    }
}
