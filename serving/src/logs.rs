//! Instances' output: each revision's lines are appended to `DIR/NAMESPACE/REVISION.log` and published to
//! followers (`sluice logs --follow`) as they are written. The `Serving.Logs` admin service reads both.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Lines a follower may fall behind by before it misses some (it is told how many).
const FOLLOW_BUFFER: usize = 1024;
/// A revision's log file is rotated past this size (kubelet's `containerLogMaxSize` default): the current file
/// becomes `REVISION.log.1`, replacing the one before, so a revision's output takes at most twice this on disk.
pub(crate) const MAX_LOG_FILE_BYTES: u64 = 10 << 20;
/// Most lines one request reads back from a revision's file.
pub(crate) const MAX_TAIL_LINES: usize = 10_000;

/// One revision's output.
#[derive(Debug)]
pub struct RevisionLog {
    path: PathBuf,
    file: Mutex<Option<OpenLog>>,
    live: broadcast::Sender<String>,
}

/// The file being written and its size.
#[derive(Debug)]
struct OpenLog {
    file: File,
    bytes: u64,
}

impl RevisionLog {
    /// Appends one line of the revision's output (and sends it to followers).
    pub fn write_line(&self, line: &str) {
        if let Ok(mut open) = self.file.lock() {
            if open.as_ref().is_some_and(|open| open.bytes >= MAX_LOG_FILE_BYTES) {
                *open = None;
                let _ = std::fs::rename(&self.path, rotated(&self.path));
            }
            if open.is_none() {
                if let Some(parent) = self.path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                *open = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).ok().map(|file| {
                    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
                    OpenLog { file, bytes }
                });
            }
            if let Some(open) = open.as_mut()
                && writeln!(open.file, "{line}").is_ok()
            {
                open.bytes += line.len() as u64 + 1;
            }
        }
        let _ = self.live.send(line.to_string());
    }
}

/// Where a log file goes when it is rotated.
fn rotated(path: &std::path::Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Every revision's output on this node.
#[derive(Debug)]
pub struct LogHub {
    dir: PathBuf,
    revisions: Mutex<HashMap<(String, String), Arc<RevisionLog>>>,
}

impl LogHub {
    /// Output goes under `dir` (a node's `DATA/serving/logs`).
    pub fn new(dir: PathBuf) -> Arc<LogHub> {
        Arc::new(LogHub { dir, revisions: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn revision(&self, namespace: &str, revision: &str) -> Arc<RevisionLog> {
        let key = (namespace.to_string(), revision.to_string());
        let Ok(mut revisions) = self.revisions.lock() else {
            return Arc::new(RevisionLog {
                path: PathBuf::new(),
                file: Mutex::new(None),
                live: broadcast::channel(1).0,
            });
        };
        revisions
            .entry(key)
            .or_insert_with(|| {
                Arc::new(RevisionLog {
                    path: self.dir.join(namespace).join(format!("{revision}.log")),
                    file: Mutex::new(None),
                    live: broadcast::channel(FOLLOW_BUFFER).0,
                })
            })
            .clone()
    }

    /// The last `lines` lines of a revision's output on this node (all, up to [`MAX_TAIL_LINES`], for 0).
    /// Reads the current file (at most [`MAX_LOG_FILE_BYTES`], rotation bounds it), and the rotated one before it
    /// when the current one has fewer lines than asked.
    pub(crate) fn tail(&self, namespace: &str, revision: &str, lines: usize) -> Vec<String> {
        let path = self.dir.join(namespace).join(format!("{revision}.log"));
        let keep = if lines == 0 { MAX_TAIL_LINES } else { lines.min(MAX_TAIL_LINES) };
        // No rotation between the two reads (it would show the same file twice).
        let log = self.revision(namespace, revision);
        let _writing = log.file.lock();
        let read = |path: &std::path::Path| {
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

    pub(crate) fn follow(&self, namespace: &str, revision: &str) -> broadcast::Receiver<String> {
        self.revision(namespace, revision).live.subscribe()
    }
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
}
