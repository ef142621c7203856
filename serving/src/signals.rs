//! What the dispatcher and serving tell each other on one node, so that events wait in the log rather than at
//! a revision that cannot take them, and the autoscaler sees the demand the dispatcher holds back.
//!
//! What flows in: the dispatcher's backlog reports (per consumer and partition: the subscriber's host, events
//! waiting, ordered keys), and each revision's ready capacity (ready instances × `containerConcurrency`).
//! What flows out: the in-flight limit towards a host ([`SubscriberSignals::limit`], the sum of its routed
//! revisions' capacity), each revision's share of the backlog (split by traffic percent), and a counter that
//! moves whenever a capacity grew (dispatchers waiting for room wake on it).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use sluice_cloudevent::clock::now_ms;
use sluice_controller::serving::autoscaling::Signals as DecidingSignals;
use sluice_controller::serving::routing::RouteTable;
use tokio::sync::watch;

use crate::revision::UNLIMITED;
use crate::supervisor::Shared;
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

/// The node's serving, as the dispatcher sees it.
#[derive(Clone)]
pub struct SubscriberSignals {
    pub(crate) shared: Arc<Shared>,
}

/// `Host` without the port, lower case.
fn host_name(host: &str) -> String {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.to_ascii_lowercase()
}

impl SubscriberSignals {
    /// Deliveries to `host` that may be in flight from this node now: the ready capacity of the revisions its
    /// Route sends traffic to. `None`: not a Route served here, or a revision without `containerConcurrency`
    /// (no limit from serving).
    pub fn limit(&self, host: &str) -> Option<usize> {
        let host = host_name(host);
        let table = self.shared.table.read().ok()?.clone();
        let route = table.get(&host)?;
        let revisions = self.shared.revisions.read().ok()?;
        let mut limit = 0usize;
        for (name, percent) in &route.targets {
            if *percent == 0 {
                continue;
            }
            let revision = revisions.get(&format!("{}/{name}", route.namespace));
            // Deciding on concurrency alone (Knative's way), the dispatcher pushes its own window, unlimited.
            if revision.is_some_and(|r| r.run.autoscaling.signals == DecidingSignals::Concurrency) {
                return None;
            }
            let capacity = revision.map_or(0, |revision| revision.ready_capacity.load(Ordering::Relaxed));
            if capacity == UNLIMITED {
                return None;
            }
            limit = limit.saturating_add(capacity);
        }
        Some(limit)
    }

    /// Replaces `reporter`'s last report: `events` waiting for `host` (`ordered_keys` of them ordered). A
    /// revision at zero that this wakes starts at once.
    pub fn report_backlog(&self, reporter: &str, host: &str, events: u64, ordered_keys: Option<u64>) {
        let host = host_name(host);
        let now = now_ms();
        let backlog = Backlog { events, ordered_keys };
        if let Ok(mut reports) = self.shared.signals.reports.lock() {
            if events == 0 && !reports.contains_key(reporter) {
                return;
            }
            if reports.len() >= REPORTERS_LIMIT && !reports.contains_key(reporter) {
                let oldest = reports.iter().min_by_key(|(_, r)| r.at_ms).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    reports.remove(&oldest);
                }
            }
            reports.insert(reporter.to_string(), Report { host: host.clone(), backlog, at_ms: now });
        }
        if events == 0 {
            return;
        }
        // Wake the revisions this host routes to, so that one at zero starts without waiting for its tick.
        let Ok(table) = self.shared.table.read().map(|t| t.clone()) else { return };
        let Some(route) = table.get(&host) else { return };
        if let Ok(revisions) = self.shared.revisions.read() {
            for (name, _) in &route.targets {
                if let Some(revision) = revisions.get(&format!("{}/{name}", route.namespace)) {
                    revision.poke();
                }
            }
        }
    }

    /// Moves whenever a revision's ready capacity grew.
    pub fn capacity_grown(&self) -> watch::Receiver<u64> {
        self.shared.signals.grown.subscribe()
    }
}
