//! How far past a consumer's window the records that match its filter go (its backlog, for the autoscaler and
//! the gauges). In: the window's position, the stream's end, the partition's log and the consumer's filter.
//! Out: matching records past the window, and records not scanned yet; each record is scanned once.

use sluice_cloudevent::CloudEvent;

use super::reading::ReadLog;

/// Records scanned per backlog report and consumer, at most; what is left counts as matching until scanned.
const LOOKAHEAD_SCAN_PER_REPORT: usize = 4_096;
/// Matching offsets kept ahead of a window, at most (80 KB).
const LOOKAHEAD_MAX_MATCHES: usize = 10_000;

/// The records past a consumer's window that match its filter, found by scanning ahead of it (each record
/// once), so that its backlog counts matching events only.
#[derive(Default)]
pub(super) struct Lookahead {
    /// Offsets of matching records in `[window's scan position, scanned_to)`, in order.
    matched: std::collections::VecDeque<u64>,
    scanned_to: u64,
}

impl Lookahead {
    /// Scans on from where it left off (the window's position `from` at least) towards `end`, within the
    /// budgets; answers (matching records past `from`, records not scanned yet).
    pub(super) fn scan(
        &mut self,
        from: u64,
        end: u64,
        log: &impl ReadLog,
        matches: impl Fn(&CloudEvent) -> bool,
    ) -> (u64, u64) {
        if self.scanned_to < from {
            self.scanned_to = from;
            self.matched.clear();
        }
        while self.matched.front().is_some_and(|offset| *offset < from) {
            self.matched.pop_front();
        }
        let mut budget = LOOKAHEAD_SCAN_PER_REPORT;
        while self.scanned_to < end && budget > 0 && self.matched.len() < LOOKAHEAD_MAX_MATCHES {
            let Some((events, next)) = log.read(self.scanned_to, budget.min(256)) else { break };
            if next <= self.scanned_to {
                break;
            }
            budget = budget.saturating_sub((next - self.scanned_to) as usize);
            self.matched.extend(events.iter().filter(|(_, _, event)| matches(event)).map(|(offset, _, _)| *offset));
            self.scanned_to = next;
        }
        (self.matched.len() as u64, end.saturating_sub(self.scanned_to))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::partition::reading::ReadEvent;

    /// Records 0..n; those whose id is even match.
    struct Numbers(u64);

    impl ReadLog for Numbers {
        fn read(&self, from: u64, max: usize) -> Option<(Vec<ReadEvent>, u64)> {
            let to = (from + max as u64).min(self.0);
            let events = (from..to)
                .map(|offset| {
                    let body = format!(r#"{{"specversion":"1.0","id":"{offset}","source":"/t","type":"t"}}"#);
                    let event = sluice_cloudevent::from_structured(body.as_bytes()).expect("event");
                    (offset, 0, Arc::new(event))
                })
                .collect();
            Some((events, to))
        }
    }

    fn even(event: &CloudEvent) -> bool {
        event.get_str("id").and_then(|id| id.parse::<u64>().ok()).is_some_and(|n| n % 2 == 0)
    }

    #[test]
    fn the_backlog_counts_only_matching_records_past_the_window() {
        let mut ahead = Lookahead::default();
        assert_eq!(ahead.scan(10, 20, &Numbers(20), even), (5, 0), "10, 12, .. 18");
        assert_eq!(ahead.scan(15, 20, &Numbers(20), even), (2, 0), "the window moved past 10, 12, 14");
        assert_eq!(ahead.scan(15, 30, &Numbers(30), even), (7, 0), "new records are scanned once");
        let mut far = Lookahead::default();
        let (matched, unscanned) = far.scan(0, 10_000, &Numbers(10_000), even);
        assert_eq!((matched, unscanned), (2_048, 10_000 - 4_096), "a budget per report; the rest counts as matching");
        assert_eq!(far.scan(0, 10_000, &Numbers(10_000), even).0, 4_096, "the next report scans on");
    }
}
