//! Which dedupe windows a group holds in memory, and a stream's window rebuilt from its appends' `time_index`
//! entries (at start and after a snapshot install for the streams worth holding, and at the next append with
//! dedupe of a stream whose window was not held): the entries since the horizon in, one at a time; the window
//! out, holding only the keys of its live range. Idle streams' windows leave memory
//! ([`GroupStateMachine::release_idle_dedupe_windows`]); a rebuilt window decides as the one released would
//! have, so which are held is a matter of memory and reads, never of what is stored.

use std::io;

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::GroupStateMachine;
use crate::store::dedupe_window::{
    DedupeWindow, IndexedKeys, LiveRange, RecordedAppend, decode_index_value, worth_holding,
};
use crate::store::keys::{CF_TIME_INDEX, time_index_arrival_of, time_index_key, time_index_offset_of};
use crate::store::read_view::StreamState;
use crate::store::{cf, io_err};

impl GroupStateMachine {
    /// Drops from memory the windows of streams not worth holding now (`worth_holding`): a Broker deleted or
    /// gone quiet no longer keeps its last window's keys until its next event. Run in the state machine's
    /// worker between applies (`raft/group.rs`), so a window released has every append it admitted in the
    /// index.
    pub(crate) fn release_idle_dedupe_windows(&mut self) {
        let (now_ms, grace_ms) = ((self.dedupe_memory.clock_ms)(), self.dedupe_memory.idle_grace_ms);
        let Ok(streams) = self.view.streams.read() else { return };
        let idle: Vec<u32> = streams
            .values()
            .filter(|state| {
                self.dedupe_windows.contains_key(&state.id)
                    && !worth_holding(state.last_arrival_ms, state.dedupe_horizon_ms, now_ms, grace_ms)
            })
            .map(|state| state.id)
            .collect();
        drop(streams);
        if idle.is_empty() {
            return;
        }
        let keys_before = self.dedupe_keys();
        for stream_id in &idle {
            self.dedupe_windows.remove(stream_id);
        }
        tracing::debug!(
            group = self.group,
            windows = idle.len(),
            keys = keys_before - self.dedupe_keys(),
            "released the dedupe windows of idle streams"
        );
        metrics::counter!("sluice_dedupe_windows_released_total", "group" => crate::ids::group_name(self.group))
            .increment(idle.len() as u64);
        self.publish_dedupe_keys();
    }

    /// Makes sure the window of `state`'s stream is held, for an append with dedupe whose live range is
    /// `range`: when none is (a stream new, idle, or not worth rebuilding at open), it is rebuilt from the
    /// index for that range.
    pub(super) fn hold_dedupe_window(&mut self, state: &StreamState, range: LiveRange) -> io::Result<()> {
        if !self.dedupe_windows.contains_key(&state.id) {
            let window = self.rebuild_dedupe_window(state, range)?;
            if window.len() > 0 {
                metrics::counter!("sluice_dedupe_windows_rebuilt_total", "group" => crate::ids::group_name(self.group))
                    .increment(1);
            }
            self.dedupe_windows.insert(state.id, window);
        }
        Ok(())
    }

    /// A stream's dedupe window as its appends left it: from their `time_index` entries since the horizon, read
    /// one at a time into the window, keeping none of the appends that end below the live range (regression:
    /// every append since the horizon was first collected with its keys, whatever the cap: a 24-hour window of
    /// single-event appends held gigabytes at every start and snapshot install).
    ///
    /// `range` is the stream's live range: as its state leaves it (at open, after a snapshot install), or as an
    /// append with dedupe will have it (a window not held in memory, rebuilt for that append).
    pub(super) fn rebuild_dedupe_window(&self, state: &StreamState, range: LiveRange) -> io::Result<DedupeWindow> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(time_index_key(self.group, state.id, u64::MAX, u64::MAX).to_vec());
        // A read of up to the whole window: through, not into, the block cache (docs/memory.md).
        read_options.fill_cache(false);
        let from = time_index_key(self.group, state.id, range.horizon_ms, 0);
        let index = cf(&self.db, CF_TIME_INDEX)?;
        let mut entries = self.db.iterator_cf_opt(index, read_options, IteratorMode::From(&from, Direction::Forward));
        let mut failure: Option<io::Error> = None;
        // Each append waits for the next one's first offset, which bounds an earlier version's (legacy) append.
        let mut pending: Option<RecordedAppend> = None;
        let mut next_append = || -> Option<RecordedAppend> {
            loop {
                let Some(item) = entries.next() else { return pending.take() };
                let recorded = item.map_err(io_err).and_then(|(key, value)| {
                    let (Some(arrival_ms), Some(first_offset)) =
                        (time_index_arrival_of(&key), time_index_offset_of(&key))
                    else {
                        return Err(io_err("malformed time index key"));
                    };
                    let keys = decode_index_value(&value).ok_or_else(|| io_err("malformed time index value"))?;
                    Ok((arrival_ms, first_offset, keys))
                });
                let (arrival_ms, first_offset, keys) = match recorded {
                    Ok(recorded) => recorded,
                    Err(e) => {
                        failure = Some(e);
                        return None;
                    }
                };
                let ready = pending.take().map(|mut previous| {
                    previous.end_offset = previous.end_offset.min(first_offset);
                    previous
                });
                pending = match keys {
                    IndexedKeys::WithoutDedupe => None,
                    IndexedKeys::Legacy => Some(RecordedAppend {
                        first_offset,
                        end_offset: state.next_offset,
                        arrival_ms,
                        fingerprints: None,
                    }),
                    IndexedKeys::Fingerprints(fingerprints) => {
                        let end_offset = first_offset + fingerprints.len() as u64;
                        // None of its keys is live (below the cap or trimmed): the window would remember none.
                        (end_offset > range.from_offset).then_some(RecordedAppend {
                            first_offset,
                            end_offset,
                            arrival_ms,
                            fingerprints: Some(fingerprints),
                        })
                    }
                };
                if ready.is_some() {
                    return ready;
                }
            }
        };
        let window = DedupeWindow::rebuilt(std::iter::from_fn(&mut next_append), range);
        match failure {
            Some(e) => Err(e),
            None => Ok(window),
        }
    }
}
