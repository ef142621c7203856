//! A revision's `sluice_autoscaler_*{revision}` gauges: what its autoscaler decided last, while its task
//! decides.

use sluice_autoscaler::Decision;

/// A revision's `sluice_autoscaler_*{revision}` gauges, registered once for its task. Dropped when the task
/// stops deciding, they go to zero: the `metrics` facade cannot remove a series, and a revision that no longer
/// runs here must not go on showing its last decision (instances wanted, panicking) as if it did.
pub(crate) struct AutoscalerGauges {
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
    pub(crate) fn new(revision: &str) -> Self {
        let labels = [("revision", revision.to_string())];
        AutoscalerGauges {
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

    /// `actual_instances`: instance processes, draining ones included.
    pub(crate) fn show(&self, decision: &Decision, actual_instances: usize) {
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
