//! Which dedupe windows a group holds in memory, and a stream's window rebuilt from its appends' `time_index`
//! entries: at start and after a snapshot install for the streams worth holding, and at the next append with
//! dedupe of a stream whose window is not held. In: the streams' replicated state, this node's clock, each
//! append with dedupe applied. Out: the windows held; a window rebuilt holds only the keys of its live range.
//! Idle streams' windows leave memory ([`GroupStateMachine::release_idle_dedupe_windows`]); a rebuilt window
//! decides as the one released would have, so which are held is a matter of memory and reads, never of what
//! is stored.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::GroupStateMachine;
use crate::store::dedupe_window::{
    DedupeWindow, IndexedKeys, LiveRange, RecordedAppend, decode_index_value, window_shown, worth_holding,
};
use crate::store::keys::{CF_TIME_INDEX, time_index_arrival_of, time_index_key, time_index_offset_of};
use crate::store::read_view::StreamState;
use crate::store::{cf, io_err};

/// A clock in milliseconds since the epoch.
pub(crate) type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What decides which streams' dedupe windows a group holds in memory (`dedupe_window::worth_holding`).
#[derive(Clone)]
pub(crate) struct DedupeMemory {
    /// This node's clock; injected by tests.
    pub clock_ms: WallClock,
    /// How long past its window an idle stream keeps its window.
    pub idle_grace_ms: u64,
}

impl DedupeMemory {
    /// The node's clock (as a partition leader stamps arrivals with it) and `idle_grace_ms`.
    pub(crate) fn with_grace(idle_grace_ms: u64) -> Self {
        DedupeMemory { clock_ms: Arc::new(|| crate::wall_clock().timestamp_millis().max(0) as u64), idle_grace_ms }
    }
}

/// A stream's window in memory, and what the sweep weighs it by.
pub(super) struct HeldWindow {
    pub(super) window: DedupeWindow,
    /// This node's clock when an append with dedupe was last applied to the stream here (or the window
    /// rebuilt at open).
    used_at_ms: u64,
    /// That append's window (at open: the window the stream's state shows).
    window_ms: u64,
}

impl GroupStateMachine {
    /// The windows worth holding of `streams` (at open, after a snapshot install), rebuilt from the index;
    /// another stream's is rebuilt at its next append with dedupe.
    pub(super) fn windows_worth_holding(
        &self,
        streams: &HashMap<String, StreamState>,
    ) -> io::Result<HashMap<u32, HeldWindow>> {
        let (now_ms, grace_ms) = ((self.dedupe_memory.clock_ms)(), self.dedupe_memory.idle_grace_ms);
        let mut held = HashMap::new();
        for state in streams.values() {
            let shown = window_shown(state.last_arrival_ms, state.dedupe_horizon_ms);
            if !worth_holding(shown, state.last_arrival_ms, now_ms, grace_ms) {
                continue;
            }
            let range = LiveRange::of(state.start_offset, state.next_offset, state.dedupe_horizon_ms);
            let window = self.rebuild_dedupe_window(state.id, state.next_offset, range)?;
            held.insert(state.id, HeldWindow { window, used_at_ms: now_ms, window_ms: shown.unwrap_or(0) });
        }
        Ok(held)
    }

    /// Drops from memory the windows of streams this node applied no append with dedupe to for their window
    /// and the grace (`worth_holding`, by this node's clock alone): a Broker deleted or gone quiet no longer
    /// keeps its last window's keys until its next event. Run in the state machine's worker between applies
    /// (`raft/group.rs`), so a window released has every append it admitted in the index.
    pub(crate) fn release_idle_dedupe_windows(&mut self) {
        let (now_ms, grace_ms) = ((self.dedupe_memory.clock_ms)(), self.dedupe_memory.idle_grace_ms);
        let keys_before = self.dedupe_keys();
        let windows_before = self.dedupe_windows.len();
        self.dedupe_windows.retain(|_, held| worth_holding(Some(held.window_ms), held.used_at_ms, now_ms, grace_ms));
        let released = windows_before - self.dedupe_windows.len();
        if released == 0 {
            return;
        }
        // Info: once per stream per idle spell.
        tracing::info!(
            group = self.group,
            windows = released,
            keys = keys_before - self.dedupe_keys(),
            "released the dedupe windows of idle streams"
        );
        metrics::counter!("sluice_dedupe_windows_released_total", "group" => crate::ids::group_name(self.group))
            .increment(released as u64);
        self.publish_dedupe_keys();
    }

    /// Makes sure the window of `stream` (as the appends staged so far leave it: `state`) is held, for an
    /// append with dedupe whose live range is `range` and whose window is `window_ms`, and marks it used now.
    /// When none is held (a stream new, idle, or not worth rebuilding at open), it is rebuilt from the index
    /// for that range, which holds the appends applied before this batch: a stream's window is held from its
    /// first append with dedupe in a batch on, so none of that stream's earlier in the batch had dedupe.
    pub(super) fn hold_dedupe_window(
        &mut self,
        stream: &str,
        state: &StreamState,
        range: LiveRange,
        window_ms: u64,
    ) -> io::Result<()> {
        let now_ms = (self.dedupe_memory.clock_ms)();
        if let Some(held) = self.dedupe_windows.get_mut(&state.id) {
            held.used_at_ms = now_ms;
            held.window_ms = window_ms;
            return Ok(());
        }
        // Where the appends in the index end: the stream as applied before this batch (regression, review of
        // session 67: the staged end, past appends without dedupe earlier in the batch, stretched an earlier
        // version's last append over their offsets, and its keys counted where a window held would not).
        let written_end = match self.view.streams.read() {
            Ok(streams) => streams.get(stream).map_or(0, |written| written.next_offset),
            Err(_) => return Err(io_err("the streams' view is poisoned")),
        };
        let window = self.rebuild_dedupe_window(state.id, written_end, range)?;
        if window.len() > 0 {
            tracing::info!(group = self.group, stream, keys = window.len(), "rebuilt an idle stream's dedupe window");
            metrics::counter!("sluice_dedupe_windows_rebuilt_total", "group" => crate::ids::group_name(self.group))
                .increment(1);
        }
        self.dedupe_windows.insert(state.id, HeldWindow { window, used_at_ms: now_ms, window_ms });
        Ok(())
    }

    /// A stream's dedupe window as its appends left it: from their `time_index` entries since the horizon, read
    /// one at a time into the window, keeping none of the appends that end below the live range (regression:
    /// every append since the horizon was first collected with its keys, whatever the cap: a 24-hour window of
    /// single-event appends held gigabytes at every start and snapshot install).
    ///
    /// `range` is the stream's live range: as its state leaves it (at open, after a snapshot install), or as an
    /// append with dedupe will have it (a window not held in memory, rebuilt for that append). `written_end`:
    /// where the stream's appends in the index end (the last of an earlier version's appends ends there). An
    /// entry that reaches past it is refused as corruption, not read into the window: the index, the events
    /// and the stream's state are written in one batch, so an entry there was never written by an apply.
    fn rebuild_dedupe_window(&self, stream_id: u32, written_end: u64, range: LiveRange) -> io::Result<DedupeWindow> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(time_index_key(self.group, stream_id, u64::MAX, u64::MAX).to_vec());
        // A read of up to the whole window: through, not into, the block cache (docs/memory.md).
        read_options.fill_cache(false);
        let from = time_index_key(self.group, stream_id, range.horizon_ms, 0);
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
                let (arrival_ms, first_offset, keys) =
                    match recorded.and_then(|recorded| written_below(recorded, stream_id, written_end)) {
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
                    IndexedKeys::Legacy => {
                        Some(RecordedAppend { first_offset, end_offset: written_end, arrival_ms, fingerprints: None })
                    }
                    IndexedKeys::Fingerprints(fingerprints) => {
                        let end_offset = first_offset.saturating_add(fingerprints.len() as u64);
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

/// A `time_index` entry read by a rebuild, refused when it reaches past where the stream's appends end
/// (`written_end`): its fingerprints would be counted as live keys of events that are not stored.
fn written_below(
    (arrival_ms, first_offset, keys): (u64, u64, IndexedKeys),
    stream_id: u32,
    written_end: u64,
) -> io::Result<(u64, u64, IndexedKeys)> {
    let end_offset = match &keys {
        IndexedKeys::Fingerprints(fingerprints) => first_offset.saturating_add(fingerprints.len() as u64),
        IndexedKeys::WithoutDedupe | IndexedKeys::Legacy => first_offset.saturating_add(1),
    };
    if end_offset > written_end {
        return Err(io_err(format!(
            "time index entry of stream {stream_id} at offsets {first_offset}..{end_offset} reaches past the \
             stream's written end {written_end}: the store is corrupt"
        )));
    }
    Ok((arrival_ms, first_offset, keys))
}
