//! Startup and liveness probes, as the kubelet runs them: the startup probe alone first, from the instance's
//! start; once it passes (or when there is none) the liveness probe; `failureThreshold` failures in a row of
//! either stop the instance, which the revision replaces. Readiness waits for the startup probe to pass.
//!
//! What flows in: each probe's result and when it ran (time since the instance started). What flows out: when
//! the next probe is due, whether the instance has started, and the verdict that stops it. Pure; the local
//! runtime's task (`runtime/local.rs`) runs the checks and the stop. The Kubernetes runtime leaves them to the
//! kubelet, which reads them from the pod.

use std::time::Duration;

use super::Readiness;

/// A startup or liveness probe: its check (the instance's port filled in) and its timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillingProbe {
    pub check: Readiness,
    /// `initialDelaySeconds`: from the instance's start to the probe's first run.
    pub initial_delay: Duration,
    /// `periodSeconds`.
    pub period: Duration,
    /// `timeoutSeconds`: a check that takes longer failed.
    pub timeout: Duration,
    /// `failureThreshold`: failures in a row that stop the instance.
    pub failure_threshold: u32,
}

impl KillingProbe {
    /// The same probe, of an instance listening on `port`.
    pub(crate) fn on_port(&self, port: u16) -> KillingProbe {
        KillingProbe { check: self.check.on_port(port), ..self.clone() }
    }
}

/// Why an instance was stopped (its exit's reason).
pub(crate) const STARTUP_PROBE_FAILED: &str = "StartupProbeFailed";
pub(crate) const LIVENESS_PROBE_FAILED: &str = "LivenessProbeFailed";

/// Where one instance stands with its startup and liveness probes.
#[derive(Clone, Debug)]
pub(crate) struct LivenessTracker {
    startup: Option<KillingProbe>,
    liveness: Option<KillingProbe>,
    started: bool,
    failures: u32,
    /// When the probe running now is next due, since the instance's start.
    next_at: Duration,
}

impl LivenessTracker {
    pub(crate) fn new(startup: Option<KillingProbe>, liveness: Option<KillingProbe>) -> Self {
        let started = startup.is_none();
        let mut tracker = LivenessTracker { startup, liveness, started, failures: 0, next_at: Duration::ZERO };
        tracker.next_at = tracker.current().map_or(Duration::ZERO, |probe| probe.initial_delay);
        tracker
    }

    /// The startup probe until it passes, then the liveness probe; `None` when nothing (more) is probed.
    pub(crate) fn current(&self) -> Option<&KillingProbe> {
        if self.started { self.liveness.as_ref() } else { self.startup.as_ref() }
    }

    /// The startup probe passed (or there is none): readiness may be probed.
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// When the next probe is due, since the instance's start (`None`: none is).
    pub(crate) fn next_probe_at(&self) -> Option<Duration> {
        self.current().map(|_| self.next_at)
    }

    /// The result of the probe due, which ran `at` (since the instance's start); the reason to stop the
    /// instance when it is one failure too many.
    pub(crate) fn observe(&mut self, passed: bool, at: Duration) -> Option<&'static str> {
        let probe = self.current()?.clone();
        if passed {
            self.failures = 0;
            if !self.started {
                self.started = true;
                // The liveness probe's first run: its own delay from the start, and not before now.
                self.next_at = self.liveness.as_ref().map_or(at, |liveness| liveness.initial_delay.max(at));
                return None;
            }
            self.next_at = at.saturating_add(probe.period);
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= probe.failure_threshold.max(1) {
            return Some(if self.started { LIVENESS_PROBE_FAILED } else { STARTUP_PROBE_FAILED });
        }
        self.next_at = at.saturating_add(probe.period);
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn probe(initial_delay_s: u64, period_s: u64, failure_threshold: u32) -> KillingProbe {
        KillingProbe {
            check: Readiness::TcpConnect { port: 1 },
            initial_delay: Duration::from_secs(initial_delay_s),
            period: Duration::from_secs(period_s),
            timeout: Duration::from_secs(1),
            failure_threshold,
        }
    }

    fn s(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn a_liveness_probe_stops_the_instance_after_its_failures_in_a_row() {
        let mut tracker = LivenessTracker::new(None, Some(probe(5, 10, 3)));
        assert!(tracker.started(), "no startup probe: started at once");
        assert_eq!(tracker.next_probe_at(), Some(s(5)), "after its initial delay");
        assert_eq!(tracker.observe(false, s(5)), None);
        assert_eq!(tracker.next_probe_at(), Some(s(15)));
        assert_eq!(tracker.observe(true, s(15)), None, "a pass starts the count again");
        assert_eq!(tracker.observe(false, s(25)), None);
        assert_eq!(tracker.observe(false, s(35)), None);
        assert_eq!(tracker.observe(false, s(45)), Some(LIVENESS_PROBE_FAILED));
    }

    #[test]
    fn the_startup_probe_runs_alone_first_and_its_failures_stop_the_instance() {
        let mut tracker = LivenessTracker::new(Some(probe(0, 1, 2)), Some(probe(30, 10, 3)));
        assert!(!tracker.started());
        assert_eq!(tracker.next_probe_at(), Some(s(0)));
        assert_eq!(tracker.observe(false, s(0)), None);
        assert_eq!(tracker.observe(false, s(1)), Some(STARTUP_PROBE_FAILED));

        let mut tracker = LivenessTracker::new(Some(probe(0, 1, 60)), Some(probe(30, 10, 3)));
        for second in 0..40 {
            assert_eq!(tracker.observe(false, s(second)), None, "slow to start: {second} s");
        }
        assert_eq!(tracker.observe(true, s(40)), None);
        assert!(tracker.started());
        assert_eq!(tracker.next_probe_at(), Some(s(40)), "the liveness probe's delay is over already");
        assert_eq!(tracker.observe(true, s(40)), None);
        assert_eq!(tracker.next_probe_at(), Some(s(50)));

        // Started quickly: the liveness probe waits for its own delay from the start.
        let mut tracker = LivenessTracker::new(Some(probe(0, 1, 3)), Some(probe(30, 10, 3)));
        assert_eq!(tracker.observe(true, s(2)), None);
        assert_eq!(tracker.next_probe_at(), Some(s(30)));
    }

    #[test]
    fn a_startup_probe_alone_is_done_once_it_passes() {
        let mut tracker = LivenessTracker::new(Some(probe(0, 1, 3)), None);
        assert_eq!(tracker.observe(true, s(3)), None);
        assert!(tracker.started());
        assert_eq!(tracker.next_probe_at(), None);
        assert_eq!(tracker.observe(false, s(4)), None, "nothing probes any more");
        assert_eq!(LivenessTracker::new(None, None).next_probe_at(), None);
    }

    proptest! {
        #[test]
        fn an_instance_is_stopped_exactly_at_the_threshold_of_failures_in_a_row(
            results in proptest::collection::vec(any::<bool>(), 0..60),
            threshold in 1u32..6,
        ) {
            let mut tracker = LivenessTracker::new(None, Some(probe(0, 1, threshold)));
            let mut in_a_row = 0;
            for (second, passed) in results.into_iter().enumerate() {
                let at = s(second as u64);
                prop_assert_eq!(tracker.next_probe_at(), Some(at));
                in_a_row = if passed { 0 } else { in_a_row + 1 };
                let verdict = tracker.observe(passed, at);
                prop_assert_eq!(verdict.is_some(), in_a_row == threshold);
                if verdict.is_some() {
                    break;
                }
            }
        }
    }
}
