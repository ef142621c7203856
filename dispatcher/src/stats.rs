//! A consumer's per-partition statistics, kept next to its offset in the partition's Raft group, so that any
//! node can answer `trigger status` and the counters survive leader changes.
//!
//! They are stored as extra cursors named `{cursor}!{stat}` (u64 values): counters only grow (committed like
//! offsets, as a maximum), gauges are overwritten (`reset`). `{cursor}!replay` holds a requested replay target
//! plus one (0: none); the partition's dispatcher applies it and clears it, so that only the dispatcher ever
//! moves the consumer's own offset.

use std::collections::BTreeMap;

use sluice_broker::OffsetCommit;

pub(crate) const DELIVERED: &str = "delivered";
pub(crate) const RETRIED: &str = "retried";
pub(crate) const DEAD_LETTERED: &str = "deadlettered";
pub(crate) const IN_FLIGHT: &str = "inflight";
pub(crate) const OLDEST_PENDING_ARRIVAL_MS: &str = "oldest";
pub(crate) const REPLAY: &str = "replay";
/// 1 once the partition's dispatcher holds the consumer paused (so `pause` can wait for it to take effect).
pub(crate) const PAUSED: &str = "paused";

pub(crate) fn stat_key(cursor: &str, stat: &str) -> String {
    format!("{cursor}!{stat}")
}

/// The uid of the consumer a stored cursor (or one of its stats) belongs to.
pub(crate) fn owner_uid(stored: &str) -> &str {
    let cursor = stored.split_once('!').map_or(stored, |(cursor, _)| cursor);
    cursor.rsplit('/').next().unwrap_or(cursor)
}

/// The events a consumer at `position` (its committed offset, or where it starts) has yet to be given, of a
/// stream holding `[start, end)`: those below the start were trimmed by retention and will never be delivered.
/// Regression: a never-committed consumer counted from offset 0 (the whole stream, though it starts at its
/// creation time), and a paused one counted the events retention had trimmed under it.
pub(crate) fn backlog(position: u64, start: u64, end: u64) -> u64 {
    end.saturating_sub(position.max(start))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CursorStats {
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub in_flight: u64,
    /// Arrival time of the oldest unsettled event (0: none).
    pub oldest_pending_arrival_ms: u64,
    /// 1 while the dispatcher holds the consumer paused.
    pub paused: u64,
}

impl CursorStats {
    /// Reads a consumer's stats from a partition's committed cursors.
    pub(crate) fn from_committed(cursor: &str, committed: &BTreeMap<String, u64>) -> Self {
        let get = |stat: &str| committed.get(&stat_key(cursor, stat)).copied().unwrap_or(0);
        CursorStats {
            delivered: get(DELIVERED),
            retried: get(RETRIED),
            dead_lettered: get(DEAD_LETTERED),
            in_flight: get(IN_FLIGHT),
            oldest_pending_arrival_ms: get(OLDEST_PENDING_ARRIVAL_MS),
            paused: get(PAUSED),
        }
    }

    /// The same counters with the gauges of a consumer that no dispatcher holds here any more: nothing in
    /// flight, nothing pending, not held paused.
    pub(crate) fn stopped(self) -> Self {
        CursorStats { in_flight: 0, oldest_pending_arrival_ms: 0, paused: 0, ..self }
    }

    /// The commits that bring `previous` (what is stored) to `self`.
    pub(crate) fn commits(&self, cursor: &str, previous: &CursorStats) -> Vec<OffsetCommit> {
        let mut commits = Vec::new();
        let mut push = |stat: &str, now: u64, before: u64, reset: bool| {
            if now != before {
                commits.push(OffsetCommit { cursor: stat_key(cursor, stat), offset: now, reset });
            }
        };
        push(DELIVERED, self.delivered, previous.delivered, false);
        push(RETRIED, self.retried, previous.retried, false);
        push(DEAD_LETTERED, self.dead_lettered, previous.dead_lettered, false);
        push(IN_FLIGHT, self.in_flight, previous.in_flight, true);
        push(OLDEST_PENDING_ARRIVAL_MS, self.oldest_pending_arrival_ms, previous.oldest_pending_arrival_ms, true);
        push(PAUSED, self.paused, previous.paused, true);
        commits
    }
}

/// A pending replay's target offset, if any.
pub(crate) fn pending_replay(cursor: &str, committed: &BTreeMap<String, u64>) -> Option<u64> {
    committed.get(&stat_key(cursor, REPLAY)).copied().filter(|v| *v > 0).map(|v| v - 1)
}

/// The commit that requests a replay (or a skip) to `target`.
pub(crate) fn request_replay(cursor: &str, target: u64) -> OffsetCommit {
    OffsetCommit { cursor: stat_key(cursor, REPLAY), offset: target + 1, reset: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_and_only_changes_are_committed() {
        let cursor = "broker/default/b#trigger/t/uid-1";
        let stats = CursorStats {
            delivered: 5,
            retried: 2,
            dead_lettered: 1,
            in_flight: 3,
            oldest_pending_arrival_ms: 9,
            paused: 1,
        };
        let commits = stats.commits(cursor, &CursorStats::default());
        assert_eq!(commits.len(), 6);
        let committed: BTreeMap<String, u64> = commits.iter().map(|c| (c.cursor.clone(), c.offset)).collect();
        assert_eq!(CursorStats::from_committed(cursor, &committed), stats);
        let later = CursorStats { delivered: 6, in_flight: 0, ..stats };
        let commits = later.commits(cursor, &stats);
        assert_eq!(commits.len(), 2);
        assert!(commits.iter().any(|c| c.cursor.ends_with("!inflight") && c.reset && c.offset == 0));
        assert!(commits.iter().any(|c| c.cursor.ends_with("!delivered") && !c.reset));
    }

    #[test]
    fn replays_and_owners() {
        let cursor = "broker/default/b#trigger/t/uid-1";
        let mut committed = BTreeMap::new();
        assert_eq!(pending_replay(cursor, &committed), None);
        let request = request_replay(cursor, 0);
        committed.insert(request.cursor.clone(), request.offset);
        assert_eq!(pending_replay(cursor, &committed), Some(0));
        assert_eq!(owner_uid(cursor), "uid-1");
        assert_eq!(owner_uid(&stat_key(cursor, DELIVERED)), "uid-1");
    }

    #[test]
    fn the_backlog_counts_only_retained_events_from_the_consumers_position() {
        // (position, start, end, backlog)
        let table = [
            (0, 0, 10, 10),
            (4, 0, 10, 6),
            (10, 0, 10, 0),
            (4, 7, 10, 3),  // retention trimmed [4, 7) under it: never delivered
            (0, 10, 10, 0), // everything trimmed
            (12, 0, 10, 0), // ahead of the end (a replay target past it): nothing
        ];
        for (position, start, end, expected) in table {
            assert_eq!(backlog(position, start, end), expected, "position {position}, [{start}, {end})");
        }
    }
}
