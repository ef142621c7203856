//! The power-loss filesystem itself (`sluice-lazyfs`, mounted for real through FUSE): before a cut, readers see
//! every write; a cut keeps exactly what was fsynced — file data after the file's fsync, a new entry or a
//! rename after its directory's fsync — and drops the rest.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use sluice_chaos::powerloss::LazyFsProcess;

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_file(path: &Path, content: &str, fsync: bool) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(content.as_bytes())?;
    if fsync {
        file.sync_all()?;
    }
    Ok(())
}

#[test]
fn a_cut_keeps_what_was_fsynced_and_drops_the_rest() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let lazy = LazyFsProcess::start(
        Path::new(env!("CARGO_BIN_EXE_sluice-lazyfs")),
        &root.path().join("disk"),
        &root.path().join("mnt"),
        &root.path().join("control.sock"),
    )?;
    let mnt = lazy.mount.clone();
    std::fs::create_dir(mnt.join("db"))?;
    sync_dir(&mnt)?;
    let db = mnt.join("db");

    // Durable: data fsynced, entries fsynced.
    write_file(&db.join("durable"), "one", true)?;
    write_file(&db.join("CURRENT"), "MANIFEST-1", true)?;
    write_file(&db.join("truncated"), "0123456789", true)?;
    sync_dir(&db)?;

    // Then nothing more of the directory is fsynced.
    // Data fsynced, entry not: the file goes.
    write_file(&db.join("new-entry"), "two", true)?;
    // An append not fsynced: readers see it until the cut.
    let mut durable = OpenOptions::new().append(true).open(db.join("durable"))?;
    durable.write_all(b" and more")?;
    drop(durable);
    assert_eq!(std::fs::read_to_string(db.join("durable"))?, "one and more");
    // A rename over a durable file, not made durable: undone, the old content comes back.
    write_file(&db.join("CURRENT.tmp"), "MANIFEST-2", true)?;
    std::fs::rename(db.join("CURRENT.tmp"), db.join("CURRENT"))?;
    assert_eq!(std::fs::read_to_string(db.join("CURRENT"))?, "MANIFEST-2");
    // A truncation not fsynced.
    OpenOptions::new().write(true).open(db.join("truncated"))?.set_len(3)?;
    assert_eq!(std::fs::read_to_string(db.join("truncated"))?, "012");

    let answer = lazy.cut()?;
    assert!(answer.starts_with("ok cuts=1"), "{answer}");

    assert_eq!(std::fs::read_to_string(db.join("durable"))?, "one", "the unsynced append is gone");
    assert!(!db.join("new-entry").exists(), "an entry whose directory was not fsynced is gone");
    assert_eq!(std::fs::read_to_string(db.join("CURRENT"))?, "MANIFEST-1", "the rename is undone");
    assert!(!db.join("CURRENT.tmp").exists(), "and the new file's entry was never durable");
    assert_eq!(std::fs::read_to_string(db.join("truncated"))?, "0123456789");

    // After the cut, the same rules: a rename made durable by its directory's fsync stays.
    write_file(&db.join("CURRENT.tmp"), "MANIFEST-3", true)?;
    std::fs::rename(db.join("CURRENT.tmp"), db.join("CURRENT"))?;
    sync_dir(&db)?;
    lazy.cut()?;
    assert_eq!(std::fs::read_to_string(db.join("CURRENT"))?, "MANIFEST-3");
    // What the mount shows is what the disk below holds.
    assert_eq!(std::fs::read_to_string(lazy.disk.join("db/CURRENT"))?, "MANIFEST-3");
    Ok(())
}
