//! The dispatcher's backlog reports, kept per reporter, and the counter that moves when some revision's ready
//! capacity grew.
//!
//! What flows in: reports (per consumer and partition: the subscriber's host, events waiting, ordered keys)
//! and "capacity grew". What flows out: each revision's share of the backlog (the fresh reports towards hosts
//! that route to it, split by traffic percent), and the counter dispatchers waiting for room watch.

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
    /// revision's traffic share.
    pub(crate) fn backlog_for(&self, table: &RouteTable, namespace: &str, revision: &str, now_ms: u64) -> Backlog {
        let Ok(reports) = self.reports.lock() else { return Backlog::default() };
        let mut total = Backlog::default();
        for report in reports.values().filter(|r| now_ms.saturating_sub(r.at_ms) <= REPORT_TTL_MS) {
            let Some(route) = table.get(&report.host).filter(|route| route.namespace == namespace) else { continue };
            let all: u64 = route.targets.iter().map(|(_, percent)| u64::from(*percent)).sum();
            let Some(share) = route.targets.iter().find(|(name, _)| name == revision).map(|(_, p)| u64::from(*p))
            else {
                continue;
            };
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
