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
/// Most lines one request reads back from a revision's file.
pub(crate) const MAX_TAIL_LINES: usize = 10_000;

/// One revision's output.
#[derive(Debug)]
pub struct RevisionLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
    live: broadcast::Sender<String>,
}

impl RevisionLog {
    /// Appends one line of the revision's output (and sends it to followers).
    pub fn write_line(&self, line: &str) {
        if let Ok(mut file) = self.file.lock() {
            if file.is_none() {
                if let Some(parent) = self.path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                *file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).ok();
            }
            if let Some(file) = file.as_mut() {
                let _ = writeln!(file, "{line}");
            }
        }
        let _ = self.live.send(line.to_string());
    }
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
    pub(crate) fn tail(&self, namespace: &str, revision: &str, lines: usize) -> Vec<String> {
        let path = self.dir.join(namespace).join(format!("{revision}.log"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let keep = if lines == 0 { MAX_TAIL_LINES } else { lines.min(MAX_TAIL_LINES) };
        all[all.len().saturating_sub(keep)..].iter().map(|l| l.to_string()).collect()
    }

    pub(crate) fn follow(&self, namespace: &str, revision: &str) -> broadcast::Receiver<String> {
        self.revision(namespace, revision).live.subscribe()
    }
}
