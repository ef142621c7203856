//! A stream's dedupe window rebuilt from its appends' `time_index` entries (at start, and after a snapshot is
//! installed): the entries since the stream's dedupe horizon in, one at a time; the window out, holding only
//! the keys of its live range.

use std::io;

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::GroupStateMachine;
use crate::store::dedupe_window::{DedupeWindow, IndexedKeys, LiveRange, RecordedAppend, decode_index_value};
use crate::store::keys::{CF_TIME_INDEX, time_index_arrival_of, time_index_key, time_index_offset_of};
use crate::store::read_view::StreamState;
use crate::store::{cf, io_err};

impl GroupStateMachine {
    /// A stream's dedupe window as its appends left it: from their `time_index` entries since the horizon, read
    /// one at a time into the window, keeping none of the appends that end below the live range (regression:
    /// every append since the horizon was first collected with its keys, whatever the cap: a 24-hour window of
    /// single-event appends held gigabytes at every start and snapshot install).
    pub(super) fn rebuild_dedupe_window(&self, state: &StreamState) -> io::Result<DedupeWindow> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(time_index_key(self.group, state.id, u64::MAX, u64::MAX).to_vec());
        // A read of up to the whole window: through, not into, the block cache (docs/memory.md).
        read_options.fill_cache(false);
        let from = time_index_key(self.group, state.id, state.dedupe_horizon_ms, 0);
        let range = LiveRange::of(state.start_offset, state.next_offset, state.dedupe_horizon_ms);
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
