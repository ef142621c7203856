//! A revision's `sluice_autoscaler_*{revision}` gauges: what its autoscaler decided last, while its task
//! decides.

use std::collections::BTreeMap;
use std::sync::Mutex;

use sluice_autoscaler::Decision;

/// The latest run of each revision that registered its gauges (revision → run generation). The gauges of a
/// revision are one series whichever run sets them, so a run replaced while its successor already decides must
/// neither overwrite nor zero them. Bounded: an entry goes with the gauges of the latest run, so there is at most
/// one per revision whose task decides on this node.
static LATEST_RUN: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Run `run` of `revision` registers: the latest run registered stays the later of the two. Pure.
fn register(latest: &mut BTreeMap<String, u64>, revision: &str, run: u64) {
    let registered = latest.entry(revision.to_string()).or_insert(run);
    *registered = (*registered).max(run);
}

/// Whether run `run` of `revision` shows its decisions: no later run has registered since. Pure.
fn shows(latest: &BTreeMap<String, u64>, revision: &str, run: u64) -> bool {
    latest.get(revision).is_none_or(|registered| *registered <= run)
}

/// Run `run` of `revision` stops deciding: whether its gauges go to zero (no later run shows its own); the
/// entry goes with the latest run. Pure.
fn unregister(latest: &mut BTreeMap<String, u64>, revision: &str, run: u64) -> bool {
    if !shows(latest, revision, run) {
        return false;
    }
    latest.remove(revision);
    true
}

/// A revision's `sluice_autoscaler_*{revision}` gauges, registered once for its task. Dropped when the task
/// stops deciding, they go to zero: the `metrics` facade cannot remove a series, and a revision that no longer
/// runs here must not go on showing its last decision (instances wanted, panicking) as if it did. A run
/// replaced by a later run of the revision leaves them to it.
pub(crate) struct AutoscalerGauges {
    revision: String,
    /// The run's generation ([`crate::facts::RunId`]).
    run: u64,
    desired: metrics::Gauge,
    ready: metrics::Gauge,
    actual: metrics::Gauge,
    panic: metrics::Gauge,
    excess_burst_capacity: metrics::Gauge,
    backlog_events: metrics::Gauge,
    stable_metric: metrics::Gauge,
    panic_metric: metrics::Gauge,
}

impl AutoscalerGauges {
    /// For run `run` (its generation) of `revision`.
    pub(crate) fn new(revision: &str, run: u64) -> Self {
        if let Ok(mut latest) = LATEST_RUN.lock() {
            register(&mut latest, revision, run);
        }
        let labels = [("revision", revision.to_string())];
        AutoscalerGauges {
            revision: revision.to_string(),
            run,
            desired: metrics::gauge!("sluice_autoscaler_desired_instances", &labels),
            ready: metrics::gauge!("sluice_autoscaler_ready_instances", &labels),
            actual: metrics::gauge!("sluice_autoscaler_actual_instances", &labels),
            panic: metrics::gauge!("sluice_autoscaler_panic", &labels),
            excess_burst_capacity: metrics::gauge!("sluice_autoscaler_excess_burst_capacity", &labels),
            backlog_events: metrics::gauge!("sluice_autoscaler_backlog_events", &labels),
            stable_metric: metrics::gauge!("sluice_autoscaler_stable_metric", &labels),
            panic_metric: metrics::gauge!("sluice_autoscaler_panic_metric", &labels),
        }
    }

    /// `actual_instances`: instance processes, draining ones included. Nothing shown once a later run of the
    /// revision registered (its decisions are the revision's now).
    pub(crate) fn show(&self, decision: &Decision, actual_instances: usize) {
        if !LATEST_RUN.lock().map_or(true, |latest| shows(&latest, &self.revision, self.run)) {
            return;
        }
        self.desired.set(f64::from(decision.desired));
        self.ready.set(f64::from(decision.ready));
        self.actual.set(actual_instances as f64);
        self.panic.set(if decision.panicking { 1.0 } else { 0.0 });
        self.excess_burst_capacity.set(decision.excess_burst_capacity as f64);
        self.backlog_events.set(decision.backlog.events as f64);
        self.stable_metric.set(decision.stable_metric);
        self.panic_metric.set(decision.panic_metric);
    }
}

impl Drop for AutoscalerGauges {
    fn drop(&mut self) {
        // Poisoned (a panic elsewhere while it was held): zeroed, as before there was a registry.
        let zero = LATEST_RUN.lock().map_or(true, |mut latest| unregister(&mut latest, &self.revision, self.run));
        if !zero {
            return;
        }
        for gauge in [
            &self.desired,
            &self.ready,
            &self.actual,
            &self.panic,
            &self.excess_burst_capacity,
            &self.backlog_events,
            &self.stable_metric,
            &self.panic_metric,
        ] {
            gauge.set(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_run_of_a_revision_shows_or_zeroes_its_gauges() {
        let mut latest = BTreeMap::new();
        register(&mut latest, "r", 1);
        assert!(shows(&latest, "r", 1), "alone: it shows");
        register(&mut latest, "r", 2);
        assert!(!shows(&latest, "r", 1) && shows(&latest, "r", 2), "replaced: the successor shows");
        assert!(!unregister(&mut latest, "r", 1), "the replaced run stops: the successor's gauges stay");
        assert_eq!(latest.get("r"), Some(&2));
        register(&mut latest, "r", 1);
        assert_eq!(latest.get("r"), Some(&2), "an earlier run registering late does not take over");
        assert!(unregister(&mut latest, "r", 2), "the latest run stops: zeroed");
        assert!(latest.is_empty(), "bounded: its entry went with it");
        assert!(unregister(&mut latest, "r", 1), "no run left: zeroing shows nothing wrong");
    }
}
