//! Instances' output: each revision's lines are appended to `DIR/NAMESPACE/REVISION.log` and published to
//! followers (`sluice logs --follow`) as they are written. The `Serving.Logs` admin service reads both.
//!
//! Bounded by what runs: a revision's log (its open file, its followers' buffer) is held while a run of it is on
//! the node ([`LogHub::run`]) or someone follows it, closed and forgotten after, and opened again by the next
//! line. Its files go when its Revision is deleted ([`LogHub::delete`], [`LogHub::delete_all_but`]).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Lines a follower may fall behind by before it misses some (it is told how many).
const FOLLOW_BUFFER: usize = 1024;
/// A revision's log file is rotated past this size (kubelet's `containerLogMaxSize` default): the current file
/// becomes `REVISION.log.1`, replacing the one before, so a revision's output takes at most twice this on disk.
pub(crate) const MAX_LOG_FILE_BYTES: u64 = 10 << 20;
/// Most lines one request reads back from a revision's file.
pub(crate) const MAX_TAIL_LINES: usize = 10_000;
/// A revision's current log file is `REVISION` and this; the rotated one adds [`ROTATED_SUFFIX`].
const LOG_SUFFIX: &str = ".log";
const ROTATED_SUFFIX: &str = ".1";

/// One revision's output.
#[derive(Debug)]
pub struct RevisionLog {
    path: PathBuf,
    file: Mutex<LogFile>,
    live: broadcast::Sender<String>,
}

/// A revision's file: the one being written, if open, and whether its Revision was deleted.
#[derive(Debug, Default)]
struct LogFile {
    open: Option<OpenLog>,
    /// The Revision was deleted and its files with it: a run still draining writes no more to disk (it would make
    /// them again), only to followers.
    deleted: bool,
}

/// The file being written and its size.
#[derive(Debug)]
struct OpenLog {
    file: File,
    bytes: u64,
}

impl RevisionLog {
    fn new(path: PathBuf, follow_buffer: usize) -> RevisionLog {
        RevisionLog { path, file: Mutex::new(LogFile::default()), live: broadcast::channel(follow_buffer).0 }
    }

    /// Appends one line of the revision's output (and sends it to followers). The file is opened by the first line
    /// after it was closed.
    pub fn write_line(&self, line: &str) {
        if let Ok(mut log) = self.file.lock()
            && !log.deleted
        {
            if log.open.as_ref().is_some_and(|open| open.bytes >= MAX_LOG_FILE_BYTES) {
                log.open = None;
                let _ = std::fs::rename(&self.path, rotated(&self.path));
            }
            if log.open.is_none() {
                if let Some(parent) = self.path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                log.open = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).ok().map(|file| {
                    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
                    OpenLog { file, bytes }
                });
            }
            if let Some(open) = log.open.as_mut()
                && writeln!(open.file, "{line}").is_ok()
            {
                open.bytes += line.len() as u64 + 1;
            }
        }
        let _ = self.live.send(line.to_string());
    }

    /// Closes the file (the next line opens it again); `deleted`: and writes no more to disk.
    fn close(&self, deleted: bool) {
        if let Ok(mut log) = self.file.lock() {
            log.open = None;
            log.deleted |= deleted;
        }
    }
}

/// Where a log file goes when it is rotated.
fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(ROTATED_SUFFIX);
    PathBuf::from(name)
}

/// The revision a file of the logs directory holds the output of (its current or rotated file), if it is one.
fn revision_of_file(file_name: &str) -> Option<&str> {
    let current = file_name.strip_suffix(ROTATED_SUFFIX).unwrap_or(file_name);
    current.strip_suffix(LOG_SUFFIX).filter(|revision| !revision.is_empty())
}

/// A revision's log as the hub holds it: the runs of the revision on this node writing to it.
#[derive(Debug)]
struct HeldLog {
    log: Arc<RevisionLog>,
    runs: usize,
}

/// Every revision's output on this node.
#[derive(Debug)]
pub struct LogHub {
    dir: PathBuf,
    revisions: Mutex<HashMap<(String, String), HeldLog>>,
}

/// A run of a revision writing its output through the hub: while one is held, the revision's log stays (its
/// file open once written to). Dropped when the run has stopped.
pub(crate) struct LogRun {
    hub: Arc<LogHub>,
    key: (String, String),
}

impl Drop for LogRun {
    fn drop(&mut self) {
        self.hub.run_stopped(&self.key);
    }
}

impl LogHub {
    /// Output goes under `dir` (a node's `DATA/serving/logs`).
    pub fn new(dir: PathBuf) -> Arc<LogHub> {
        Arc::new(LogHub { dir, revisions: Mutex::new(HashMap::new()) })
    }

    fn path_of(&self, namespace: &str, revision: &str) -> PathBuf {
        self.dir.join(namespace).join(format!("{revision}{LOG_SUFFIX}"))
    }

    fn held<'a>(
        &self,
        revisions: &'a mut HashMap<(String, String), HeldLog>,
        namespace: &str,
        revision: &str,
    ) -> &'a mut HeldLog {
        revisions.entry((namespace.to_string(), revision.to_string())).or_insert_with(|| HeldLog {
            log: Arc::new(RevisionLog::new(self.path_of(namespace, revision), FOLLOW_BUFFER)),
            runs: 0,
        })
    }

    /// A run of the revision starts on this node: its log is held until the guard is dropped (when the run has
    /// stopped). A run under the name of a Revision deleted while an earlier run drained (a Revision made again)
    /// writes to disk again.
    pub(crate) fn run(self: &Arc<Self>, namespace: &str, revision: &str) -> LogRun {
        if let Ok(mut revisions) = self.revisions.lock() {
            let held = self.held(&mut revisions, namespace, revision);
            held.runs += 1;
            if let Ok(mut log) = held.log.file.lock() {
                log.deleted = false;
            }
        }
        LogRun { hub: self.clone(), key: (namespace.to_string(), revision.to_string()) }
    }

    /// A run has stopped: with the revision's last one, its file is closed now (not when the last instance's output
    /// reader lets go of it), and it is forgotten unless someone follows it.
    fn run_stopped(&self, key: &(String, String)) {
        let Ok(mut revisions) = self.revisions.lock() else { return };
        if let Some(held) = revisions.get_mut(key) {
            held.runs = held.runs.saturating_sub(1);
            if held.runs == 0 {
                held.log.close(false);
            }
        }
        forget_unused(&mut revisions);
    }

    pub(crate) fn revision(&self, namespace: &str, revision: &str) -> Arc<RevisionLog> {
        let Ok(mut revisions) = self.revisions.lock() else {
            return Arc::new(RevisionLog::new(PathBuf::new(), 1));
        };
        self.held(&mut revisions, namespace, revision).log.clone()
    }

    /// The Revision is deleted: its files go, and a run of it still draining writes no more to disk (its
    /// followers still get its lines).
    pub(crate) fn delete(&self, namespace: &str, revision: &str) {
        // Held while the files go, so that no run of a namesake starts writing in between.
        let revisions = self.revisions.lock();
        if let Ok(revisions) = &revisions
            && let Some(held) = revisions.get(&(namespace.to_string(), revision.to_string()))
        {
            held.log.close(true);
        }
        let path = self.path_of(namespace, revision);
        for file in [rotated(&path), path] {
            match std::fs::remove_file(&file) {
                Ok(()) => tracing::debug!(file = %file.display(), "a deleted revision's log removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %file.display(), error = %e, "a deleted revision's log not removed"),
            }
        }
    }

    /// Deletes the files of every revision not in `existing` (namespace, name): what Revisions deleted while the
    /// node was down left (a node that ran them sees their deletion as it happens, [`LogHub::delete`]).
    pub(crate) fn delete_all_but(&self, existing: &BTreeSet<(String, String)>) {
        let Ok(namespaces) = std::fs::read_dir(&self.dir) else { return };
        for namespace_dir in namespaces.flatten() {
            let Ok(namespace) = namespace_dir.file_name().into_string() else { continue };
            let Ok(files) = std::fs::read_dir(namespace_dir.path()) else { continue };
            let gone: BTreeSet<String> = files
                .flatten()
                .filter_map(|file| file.file_name().into_string().ok())
                .filter_map(|name| revision_of_file(&name).map(str::to_string))
                .filter(|revision| !existing.contains(&(namespace.clone(), revision.clone())))
                .collect();
            for revision in gone {
                self.delete(&namespace, &revision);
            }
        }
    }

    /// The last `lines` lines of a revision's output on this node (all, up to [`MAX_TAIL_LINES`], for 0).
    /// Reads the current file (at most [`MAX_LOG_FILE_BYTES`], rotation bounds it), and the rotated one before it
    /// when the current one has fewer lines than asked.
    pub(crate) fn tail(&self, namespace: &str, revision: &str, lines: usize) -> Vec<String> {
        let path = self.path_of(namespace, revision);
        let keep = if lines == 0 { MAX_TAIL_LINES } else { lines.min(MAX_TAIL_LINES) };
        // No rotation between the two reads (it would show the same file twice). A revision the hub does not hold
        // has nothing writing to it, and reading it holds nothing either.
        let held = self.revisions.lock().ok().and_then(|revisions| {
            revisions.get(&(namespace.to_string(), revision.to_string())).map(|held| held.log.clone())
        });
        let _writing = held.as_ref().map(|log| log.file.lock());
        let read = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<String> = text.lines().map(str::to_string).collect();
            all
        };
        let mut current = read(&path);
        if current.len() < keep {
            let mut before = read(&rotated(&path));
            before.append(&mut current);
            current = before;
        }
        current.split_off(current.len().saturating_sub(keep))
    }

    /// The revision's lines as they are written, by this run and later ones (held for the follower meanwhile).
    pub(crate) fn follow(&self, namespace: &str, revision: &str) -> broadcast::Receiver<String> {
        let Ok(mut revisions) = self.revisions.lock() else {
            return broadcast::channel(1).1;
        };
        forget_unused(&mut revisions);
        self.held(&mut revisions, namespace, revision).log.live.subscribe()
    }
}

/// Forgets the logs no run holds and nobody follows (their followers went away). Their files were closed when
/// their last run stopped.
fn forget_unused(revisions: &mut HashMap<(String, String), HeldLog>) {
    revisions.retain(|_, held| held.runs > 0 || held.log.live.receiver_count() > 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revisions_log_is_rotated_past_its_size_and_read_back_across_the_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = LogHub::new(dir.path().to_path_buf());
        let log = hub.revision("default", "hello-00001");
        let line = "x".repeat(1023);
        let lines_per_file = (MAX_LOG_FILE_BYTES / 1024) as usize;
        for _ in 0..lines_per_file * 2 + 10 {
            log.write_line(&line);
        }
        log.write_line("last");
        let current = dir.path().join("default").join("hello-00001.log");
        let bytes = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        assert!(bytes(&current) <= MAX_LOG_FILE_BYTES, "the current file is bounded");
        assert!(bytes(&rotated(&current)) >= MAX_LOG_FILE_BYTES, "the rotated one holds the previous file");
        assert!(!dir.path().join("default").join("hello-00001.log.1.1").exists(), "only one rotated file is kept");
        let tail = hub.tail("default", "hello-00001", 3);
        assert_eq!(tail, [line.clone(), line.clone(), "last".to_string()]);
        // More lines than the current file holds: the rotated file's last ones come first.
        let more = hub.tail("default", "hello-00001", 20);
        assert_eq!(more.len(), 20);
        assert_eq!(more.last().map(String::as_str), Some("last"));
    }

    fn is_open(log: &RevisionLog) -> bool {
        log.file.lock().expect("the log's lock").open.is_some()
    }

    fn held(hub: &LogHub) -> Vec<(String, String)> {
        hub.revisions.lock().expect("the hub's lock").keys().cloned().collect()
    }

    /// Regression: the hub kept every revision's log for as long as the node ran, its file open and its
    /// followers' buffer allocated, though nothing ran it any more. Its last run's stop closes and forgets it; the
    /// next line opens it again; a follower keeps it (its channel), not its file.
    #[test]
    fn a_revisions_log_is_closed_and_forgotten_when_its_last_run_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = LogHub::new(dir.path().to_path_buf());
        let first = hub.run("default", "hello-00001");
        // A replacement run, started while the first one drains.
        let second = hub.run("default", "hello-00001");
        let log = hub.revision("default", "hello-00001");
        log.write_line("started");
        assert!(is_open(&log));
        drop(first);
        assert!(is_open(&log), "the second run writes still");
        drop(second);
        assert!(!is_open(&log), "closed with its last run");
        assert!(held(&hub).is_empty(), "and forgotten");
        drop(log);

        let third = hub.run("default", "hello-00001");
        hub.revision("default", "hello-00001").write_line("again");
        assert_eq!(hub.tail("default", "hello-00001", 0), ["started", "again"], "opened again, appended to");
        let mut follower = hub.follow("default", "hello-00001");
        drop(third);
        assert_eq!(held(&hub), [("default".to_string(), "hello-00001".to_string())], "followed: kept");
        assert!(!is_open(&hub.revision("default", "hello-00001")), "its file closed all the same");
        let fourth = hub.run("default", "hello-00001");
        hub.revision("default", "hello-00001").write_line("followed");
        assert_eq!(follower.try_recv().ok().as_deref(), Some("followed"), "a follower hears the next run");
        drop(follower);
        drop(fourth);
        assert!(held(&hub).is_empty(), "nobody follows any more: forgotten");
        assert!(hub.tail("other", "never-00001", 5).is_empty());
        assert!(held(&hub).is_empty(), "reading a revision's lines holds nothing");
    }

    /// Regression: a deleted Revision's files stayed on disk for good. They go with it; a run of it still draining
    /// does not make them again, and a Revision made again under its name writes its own.
    #[test]
    fn a_deleted_revisions_files_go_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = LogHub::new(dir.path().to_path_buf());
        let current = dir.path().join("default").join("hello-00001.log");
        let draining = hub.run("default", "hello-00001");
        hub.revision("default", "hello-00001").write_line("serving");
        std::fs::write(rotated(&current), "older\n").expect("a rotated file");
        let mut follower = hub.follow("default", "hello-00001");
        hub.delete("default", "hello-00001");
        assert!(!current.exists() && !rotated(&current).exists(), "both files gone");
        hub.revision("default", "hello-00001").write_line("shutting down");
        assert!(!current.exists(), "a run still draining does not make them again");
        assert_eq!(follower.try_recv().ok().as_deref(), Some("shutting down"), "its follower still hears it");
        let again = hub.run("default", "hello-00001");
        hub.revision("default", "hello-00001").write_line("new");
        assert_eq!(hub.tail("default", "hello-00001", 0), ["new"], "a namesake's run writes its own");
        drop(follower);
        drop(draining);
        drop(again);
        assert!(held(&hub).is_empty(), "its last run stopped, nobody follows: forgotten");
    }

    /// What Revisions deleted while the node was down left goes once the node knows which exist; files that are
    /// not revisions' logs stay.
    #[test]
    fn the_files_of_revisions_that_no_longer_exist_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = LogHub::new(dir.path().to_path_buf());
        let file = |namespace: &str, name: &str| dir.path().join(namespace).join(name);
        let files = [
            (file("default", "gone-00001.log"), false),
            (file("default", "gone-00001.log.1"), false),
            (file("default", "kept-00001.log"), true),
            (file("default", "kept-00001.log.1"), true),
            (file("default", "notes.txt"), true),
            (file("team", "gone-00002.log"), false),
        ];
        for (path, _) in &files {
            std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
            std::fs::write(path, "line\n").expect("write");
        }
        let existing = BTreeSet::from([("default".to_string(), "kept-00001".to_string())]);
        hub.delete_all_but(&existing);
        for (path, kept) in &files {
            assert_eq!(path.exists(), *kept, "{}", path.display());
        }
    }

    #[test]
    fn a_log_file_names_its_revision() {
        let cases = [
            ("hello-00001.log", Some("hello-00001")),
            ("hello-00001.log.1", Some("hello-00001")),
            ("a.b.log", Some("a.b")),
            (".log", None),
            ("notes.txt", None),
            ("hello-00001.1", None),
        ];
        for (name, revision) in cases {
            assert_eq!(revision_of_file(name), revision, "{name}");
        }
    }
}
