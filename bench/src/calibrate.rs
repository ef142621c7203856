//! The disk's limit for durable appends: 1 KiB appends, each made durable with `fdatasync` before it counts.
//!
//! - single: one thread, write + fsync per append (what a log without batching can do);
//! - group commit: `threads` writers; each appends, then waits until an fsync that started after its write
//!   finished — one writer at a time runs that fsync for every write made so far (classic group commit).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

pub(crate) const APPEND_BYTES: usize = 1024;

#[derive(Clone, Debug)]
pub(crate) struct FsyncReport {
    pub single_appends_per_second: f64,
    pub group_threads: usize,
    pub group_appends_per_second: f64,
    pub group_fsyncs_per_second: f64,
}

impl FsyncReport {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "append_bytes": APPEND_BYTES,
            "single_appends_per_second": self.single_appends_per_second,
            "group_threads": self.group_threads,
            "group_appends_per_second": self.group_appends_per_second,
            "group_fsyncs_per_second": self.group_fsyncs_per_second,
        })
    }
}

/// Measures for `seconds` each, in a temporary file under `dir` (removed afterwards). Blocking.
pub(crate) fn fsync_calibration(dir: &Path, seconds: f64, threads: usize) -> Result<FsyncReport> {
    let tmp = tempfile::tempdir_in(dir)?;
    let period = Duration::from_secs_f64(seconds);
    let block = vec![b'x'; APPEND_BYTES];

    let mut file = File::create(tmp.path().join("single"))?;
    let started = Instant::now();
    let mut appends = 0u64;
    while started.elapsed() < period {
        file.write_all(&block)?;
        file.sync_data()?;
        appends += 1;
    }
    let single = appends as f64 / started.elapsed().as_secs_f64();

    struct State {
        file: File,
        written: u64,
        synced: u64,
        syncing: bool,
        fsyncs: u64,
        error: Option<String>,
    }
    let state = Arc::new((
        Mutex::new(State {
            file: File::create(tmp.path().join("group"))?,
            written: 0,
            synced: 0,
            syncing: false,
            fsyncs: 0,
            error: None,
        }),
        Condvar::new(),
    ));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (state, block) = (state.clone(), block.clone());
            std::thread::spawn(move || {
                let (lock, wake) = &*state;
                let mut appends = 0u64;
                while started.elapsed() < period {
                    let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Err(e) = s.file.write_all(&block) {
                        s.error = Some(e.to_string());
                        return appends;
                    }
                    s.written += 1;
                    let mine = s.written;
                    while s.synced < mine {
                        if s.syncing {
                            s = wake.wait(s).unwrap_or_else(PoisonError::into_inner);
                            continue;
                        }
                        s.syncing = true;
                        let target = s.written;
                        let file = match s.file.try_clone() {
                            Ok(f) => f,
                            Err(e) => {
                                s.error = Some(e.to_string());
                                return appends;
                            }
                        };
                        drop(s);
                        let outcome = file.sync_data();
                        s = lock.lock().unwrap_or_else(PoisonError::into_inner);
                        s.syncing = false;
                        s.fsyncs += 1;
                        if let Err(e) = outcome {
                            s.error = Some(e.to_string());
                            wake.notify_all();
                            return appends;
                        }
                        s.synced = s.synced.max(target);
                        wake.notify_all();
                    }
                    appends += 1;
                }
                appends
            })
        })
        .collect();
    let mut appends = 0u64;
    for worker in workers {
        appends += worker.join().unwrap_or(0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let s = state.0.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = &s.error {
        anyhow::bail!("group commit calibration: {e}");
    }
    Ok(FsyncReport {
        single_appends_per_second: single,
        group_threads: threads.max(1),
        group_appends_per_second: appends as f64 / elapsed,
        group_fsyncs_per_second: s.fsyncs as f64 / elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_counts_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = fsync_calibration(dir.path(), 0.2, 4).expect("calibration");
        assert!(report.single_appends_per_second > 0.0);
        assert!(report.group_appends_per_second > 0.0);
        assert!(report.group_fsyncs_per_second <= report.group_appends_per_second);
    }
}
