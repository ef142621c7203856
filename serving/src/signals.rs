//! The dispatcher's backlog reports, kept per reporter, and the counter that moves when some revision's ready
//! capacity grew.
//!
//! What flows in: reports (per consumer and partition: the subscriber's host, events waiting, ordered keys)
//! and "capacity grew". What flows out: each revision's share of the backlog (the fresh reports towards hosts
//! that route to it, split by traffic percent), and the counter dispatchers waiting for room watch.
//!
//! A route may list a revision more than once (`latestRevision: true` and the same revision by name): its
//! share is the sum of its entries ([`traffic_share`], [`routed_revisions`]). Report times are the monotonic
//! clock's (`crate::clock`): a report's age is only ever compared within this process.

use std::collections::HashMap;
use std::sync::Mutex;

use sluice_controller::serving::routing::RouteTable;
use tokio::sync::watch;

use sluice_autoscaler::Backlog;

/// A report older than this no longer counts (its consumer stopped reporting: deleted, or moved to another
/// node with its partition's leadership).
pub(crate) const REPORT_TTL_MS: u64 = 5_000;
/// Reporters kept at most; beyond it the oldest report is dropped.
const REPORTERS_LIMIT: usize = 100_000;
/// From this many reports on, a new reporter first drops those past [`REPORT_TTL_MS`].
const SWEEP_EXPIRED_AT: usize = 1_024;

#[derive(Clone, Debug)]
struct Report {
    host: String,
    backlog: Backlog,
    at_ms: u64,
}

pub(crate) struct Signals {
    reports: Mutex<HashMap<String, Report>>,
    grown: watch::Sender<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals { reports: Mutex::new(HashMap::new()), grown: watch::channel(0).0 }
    }
}

impl Signals {
    /// A revision's ready capacity grew.
    pub(crate) fn capacity_grew(&self) {
        self.grown.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Replaces `reporter`'s last report; answers whether it was kept (a zero backlog from a new reporter is not).
    pub(crate) fn report(&self, reporter: &str, host: &str, backlog: Backlog, now_ms: u64) -> bool {
        let Ok(mut reports) = self.reports.lock() else { return false };
        if backlog.events == 0 && !reports.contains_key(reporter) {
            return false;
        }
        // A new reporter sweeps out the reports that no longer count (of consumers deleted, or moved away with
        // their partitions), once there are enough of them to matter: they were kept until the limit, and every
        // revision's tick walked them.
        if reports.len() >= SWEEP_EXPIRED_AT && !reports.contains_key(reporter) {
            reports.retain(|_, r| now_ms.saturating_sub(r.at_ms) <= REPORT_TTL_MS);
        }
        if reports.len() >= REPORTERS_LIMIT && !reports.contains_key(reporter) {
            let oldest = reports.iter().min_by_key(|(_, r)| r.at_ms).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                reports.remove(&oldest);
            }
        }
        reports.insert(reporter.to_string(), Report { host: host.to_string(), backlog, at_ms: now_ms });
        true
    }

    /// Dispatchers waiting for room watch this.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.grown.subscribe()
    }

    /// The backlog of `namespace/revision`: each fresh report towards a host that routes to it, times the
    /// revision's traffic share (all its entries in the route).
    pub(crate) fn backlog_for(&self, table: &RouteTable, namespace: &str, revision: &str, now_ms: u64) -> Backlog {
        let Ok(reports) = self.reports.lock() else { return Backlog::default() };
        let mut total = Backlog::default();
        for report in reports.values().filter(|r| now_ms.saturating_sub(r.at_ms) <= REPORT_TTL_MS) {
            let Some(route) = table.get(&report.host).filter(|route| route.namespace == namespace) else { continue };
            let all: u64 = route.targets.iter().map(|(_, percent)| u64::from(*percent)).sum();
            let share = traffic_share(&route.targets, revision);
            if all == 0 || share == 0 {
                continue;
            }
            let part = Backlog {
                events: (report.backlog.events * share).div_ceil(all),
                ordered_keys: report.backlog.ordered_keys.map(|keys| (keys * share).div_ceil(all)),
            };
            total = total.merge(part);
        }
        total
    }
}

/// A revision's share of a route's traffic, in percent: every entry naming it, summed.
pub(crate) fn traffic_share(targets: &[(String, u32)], revision: &str) -> u64 {
    targets.iter().filter(|(name, _)| name == revision).map(|(_, percent)| u64::from(*percent)).sum()
}

/// Each revision a route sends traffic to, once, with its summed share, in the order first listed; revisions
/// whose share is zero are left out.
pub(crate) fn routed_revisions(targets: &[(String, u32)]) -> Vec<(&str, u64)> {
    let mut merged: Vec<(&str, u64)> = Vec::new();
    for (name, percent) in targets {
        match merged.iter_mut().find(|(seen, _)| *seen == name.as_str()) {
            Some((_, share)) => *share += u64::from(*percent),
            None => merged.push((name.as_str(), u64::from(*percent))),
        }
    }
    merged.retain(|(_, share)| *share > 0);
    merged
}

#[cfg(test)]
mod tests {
    use sluice_controller::serving::routing::HostTargets;

    use super::*;

    const HOST: &str = "hello.default.localhost";

    type Entries<'a> = &'a [(&'a str, u32)];

    fn targets(entries: Entries) -> Vec<(String, u32)> {
        entries.iter().map(|(revision, percent)| (revision.to_string(), *percent)).collect()
    }

    #[test]
    fn a_revision_listed_twice_is_one_target_with_both_shares() {
        // (targets, the revisions routed to with their shares)
        let cases: [(Entries, &[(&str, u64)]); 5] = [
            (&[("a", 100)], &[("a", 100)]),
            (&[("a", 50), ("a", 50)], &[("a", 100)]),
            (&[("a", 25), ("b", 50), ("a", 25)], &[("a", 50), ("b", 50)]),
            (&[("a", 100), ("b", 0)], &[("a", 100)]),
            (&[], &[]),
        ];
        for (entries, wanted) in cases {
            let listed = targets(entries);
            assert_eq!(routed_revisions(&listed), wanted, "{entries:?}");
            for (revision, share) in wanted {
                assert_eq!(traffic_share(&listed, revision), *share, "{revision} in {entries:?}");
            }
        }
        assert_eq!(traffic_share(&targets(&[("a", 100)]), "b"), 0, "not routed to");
    }

    #[test]
    fn a_revision_listed_twice_gets_the_backlog_of_both_entries() {
        let signals = Signals::default();
        let waiting = Backlog { events: 1_000, ordered_keys: Some(8) };
        assert!(signals.report("partition-0", HOST, waiting, 0));
        // (targets, revision, its events and ordered keys)
        let cases: [(Entries, &str, u64, Option<u64>); 5] = [
            (&[("a", 100)], "a", 1_000, Some(8)),
            (&[("a", 50), ("a", 50)], "a", 1_000, Some(8)),
            (&[("a", 50), ("b", 50)], "a", 500, Some(4)),
            (&[("a", 25), ("b", 50), ("a", 25)], "a", 500, Some(4)),
            (&[("b", 100)], "a", 0, None),
        ];
        for (entries, revision, events, ordered_keys) in cases {
            let route = HostTargets { namespace: "default".into(), name: "hello".into(), targets: targets(entries) };
            let table = RouteTable::from([(HOST.to_string(), route)]);
            let backlog = signals.backlog_for(&table, "default", revision, 1_000);
            assert_eq!(backlog, Backlog { events, ordered_keys }, "{revision} in {entries:?}");
        }
    }

    /// Regression: reports past their expiry (of deleted consumers) stayed until 100,000 reporters, and every
    /// revision's tick walked them. A new reporter sweeps them out once there are enough to matter.
    #[test]
    fn expired_reports_are_swept_out_by_a_new_reporter() {
        let signals = Signals::default();
        let waiting = Backlog { events: 1, ordered_keys: None };
        for i in 0..SWEEP_EXPIRED_AT {
            assert!(signals.report(&format!("old-{i}"), HOST, waiting, 0));
        }
        let later = REPORT_TTL_MS + 1;
        assert!(signals.report("fresh", HOST, waiting, later));
        let kept: Vec<String> = signals.reports.lock().expect("lock").keys().cloned().collect();
        assert_eq!(kept, ["fresh"], "only the report that still counts");
    }
}
