//! When a group builds a snapshot.
//!
//! A snapshot is a copy of the group's whole state machine, and for a partition that is every retained
//! event of its streams. Building one every N entries (openraft's `LogsSinceLast`) therefore costs a copy
//! of the whole stream every N entries: quadratic in the stream's size. Here a snapshot waits until at
//! least N entries were applied since the last one AND the log since it holds at least as many bytes as
//! the last snapshot file: copying then costs at most as much again as appending did (amortized), and the
//! Raft log kept between snapshots is never much larger than the state. Decision recorded in
//! `docs/architecture.md` (Snapshots).
//!
//! [`should_snapshot`] is the pure decision; [`SnapshotPacer`] is what the state machine and the
//! snapshot builder update; [`run`] asks openraft for a snapshot when the decision says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;

use crate::raft_types::{GroupId, Raft, group_name};

/// What the decision looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacingState {
    /// Entries applied since the last snapshot (all entries, if there is none).
    pub entries_since: u64,
    /// Bytes applied since the last snapshot (since the process started, after a restart).
    pub bytes_since: u64,
    /// Size of the last snapshot file; 0 if there is none.
    pub last_snapshot_bytes: u64,
    /// Whether a snapshot is being built now.
    pub building: bool,
}

/// Whether to build a snapshot now: at least `every_entries` entries since the last one, and at least as
/// many bytes as the last snapshot holds.
pub fn should_snapshot(state: PacingState, every_entries: u64) -> bool {
    !state.building && state.entries_since >= every_entries.max(1) && state.bytes_since >= state.last_snapshot_bytes
}

/// Shared between a group's state machine (bytes applied), its snapshot builder (sizes) and [`run`].
#[derive(Debug, Default)]
pub struct SnapshotPacer {
    applied_bytes: AtomicU64,
    applied_bytes_at_last_snapshot: AtomicU64,
    last_snapshot_bytes: AtomicU64,
    building: AtomicBool,
}

impl SnapshotPacer {
    /// `last_snapshot_bytes`: the size of the snapshot on disk at start, if any.
    pub fn new(last_snapshot_bytes: u64) -> Arc<SnapshotPacer> {
        let pacer = SnapshotPacer::default();
        pacer.last_snapshot_bytes.store(last_snapshot_bytes, Ordering::Relaxed);
        Arc::new(pacer)
    }

    pub fn applied(&self, bytes: u64) {
        self.applied_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A build starts: everything applied so far is in it.
    pub fn build_started(&self) {
        self.building.store(true, Ordering::Relaxed);
        self.applied_bytes_at_last_snapshot.store(self.applied_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// A build ended; `file_bytes` is the new snapshot's size if it succeeded.
    pub fn build_finished(&self, file_bytes: Option<u64>) {
        if let Some(bytes) = file_bytes {
            self.last_snapshot_bytes.store(bytes, Ordering::Relaxed);
        }
        self.building.store(false, Ordering::Relaxed);
    }

    /// A snapshot received from the leader replaced the state.
    pub fn installed(&self, file_bytes: u64) {
        self.last_snapshot_bytes.store(file_bytes, Ordering::Relaxed);
        self.applied_bytes_at_last_snapshot.store(self.applied_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn state(&self, entries_since: u64) -> PacingState {
        PacingState {
            entries_since,
            bytes_since: self
                .applied_bytes
                .load(Ordering::Relaxed)
                .saturating_sub(self.applied_bytes_at_last_snapshot.load(Ordering::Relaxed)),
            last_snapshot_bytes: self.last_snapshot_bytes.load(Ordering::Relaxed),
            building: self.building.load(Ordering::Relaxed),
        }
    }
}

/// How often [`run`] looks.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Asks openraft for a snapshot whenever [`should_snapshot`] says so; ends when the group shuts down.
pub async fn run(group: GroupId, raft: Raft, pacer: Arc<SnapshotPacer>, every_entries: u64) {
    let mut interval = tokio::time::interval(CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let entries_since = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow_watched();
            let applied = metrics.last_applied.as_ref().map_or(0, |id| id.index + 1);
            let snapshot = metrics.snapshot.as_ref().map_or(0, |id| id.index + 1);
            applied.saturating_sub(snapshot)
        };
        let state = pacer.state(entries_since);
        if !should_snapshot(state, every_entries) {
            continue;
        }
        tracing::debug!(group = %group_name(group), ?state, "asking for a snapshot");
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
        // The build runs in the background; wait for it (bounded) before deciding again.
        for _ in 0..120 {
            interval.tick().await;
            let snapshot_moved = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow_watched();
                let applied = metrics.last_applied.as_ref().map_or(0, |id| id.index + 1);
                let snapshot = metrics.snapshot.as_ref().map_or(0, |id| id.index + 1);
                applied.saturating_sub(snapshot) < entries_since
            };
            if snapshot_moved && !pacer.state(0).building {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(entries_since: u64, bytes_since: u64, last_snapshot_bytes: u64) -> PacingState {
        PacingState { entries_since, bytes_since, last_snapshot_bytes, building: false }
    }

    #[test]
    fn first_snapshot_after_the_entry_count() {
        assert!(!should_snapshot(state(19_999, 1 << 30, 0), 20_000));
        assert!(should_snapshot(state(20_000, 0, 0), 20_000));
    }

    #[test]
    fn a_large_state_waits_until_as_many_bytes_were_appended_again() {
        let gib = 1u64 << 30;
        assert!(!should_snapshot(state(1_000_000, gib - 1, gib), 20_000));
        assert!(should_snapshot(state(1_000_000, gib, gib), 20_000));
    }

    #[test]
    fn never_while_building_and_never_with_zero_entries() {
        let mut s = state(50_000, 10, 0);
        s.building = true;
        assert!(!should_snapshot(s, 20_000));
        assert!(!should_snapshot(state(0, 10, 0), 0), "every_entries 0 means 1");
        assert!(should_snapshot(state(1, 10, 0), 0));
    }

    #[test]
    fn copying_is_amortized_linear() {
        // A stream that only grows, appended in steps of `step` bytes, one entry per step: the bytes
        // copied into snapshots stay within twice the bytes appended.
        let step = 1u64 << 20;
        let pacer = SnapshotPacer::new(0);
        let (mut state_bytes, mut copied, mut entries_since) = (0u64, 0u64, 0u64);
        for _ in 0..10_000 {
            pacer.applied(step);
            state_bytes += step;
            entries_since += 1;
            if should_snapshot(pacer.state(entries_since), 100) {
                pacer.build_started();
                pacer.build_finished(Some(state_bytes));
                copied += state_bytes;
                entries_since = 0;
            }
        }
        assert!(copied <= 2 * state_bytes, "copied {copied} for {state_bytes} appended");
        assert!(copied >= state_bytes / 2, "snapshots were still built");
    }

    #[test]
    fn installed_snapshot_resets_the_count() {
        let pacer = SnapshotPacer::new(0);
        pacer.applied(500);
        pacer.installed(1_000);
        assert_eq!(pacer.state(7), state(7, 0, 1_000));
        pacer.applied(1_000);
        assert!(should_snapshot(pacer.state(7), 5));
    }
}
