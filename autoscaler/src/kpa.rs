//! Knative's KPA decision (`pkg/autoscaler/scaling/autoscaler.go`, `Scale`), ported as it is, with one input
//! added: the backlog's recommendation, which takes part in the desired counts but not in the panic test.
//!
//! What flows in: the time, the ready instances, the stable and panic window averages of the metric, the
//! backlog's instance count. What flows out: the desired instances, the excess burst capacity, whether it is
//! panicking, and the terms that led there. Pure; the state is the panic clock, the most instances asked for
//! while panicking, and the scale-down-delay window.

use crate::window::{MaxWindow, round6};

/// The knobs this part reads.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct KpaSpec {
    pub(crate) target: f64,
    pub(crate) total: f64,
    pub(crate) target_burst_capacity: f64,
    pub(crate) panic_threshold: f64,
    pub(crate) max_scale_up_rate: f64,
    pub(crate) max_scale_down_rate: f64,
    pub(crate) stable_window_ms: u64,
    pub(crate) scale_down_delay_ms: u64,
    /// Knative's `Reachable`: something routes to the revision (else it may drop straight to zero).
    pub(crate) reachable: bool,
    pub(crate) activation_scale: u32,
    pub(crate) tick_ms: u64,
}

/// One decision's numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct KpaResult {
    pub(crate) desired: u32,
    pub(crate) excess_burst_capacity: i64,
    pub(crate) panicking: bool,
    /// The panic window's count (metric or backlog, whichever is more), before rate limits.
    pub(crate) panic_wanted: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct Kpa {
    spec: KpaSpec,
    panic_since_ms: Option<u64>,
    max_panic: u32,
    delay: Option<MaxWindow>,
}

impl Kpa {
    /// A decider for a revision that has `ready` instances now: with more than one it starts panicking, so
    /// that losing the metrics' history (a restart) never scales it down.
    pub(crate) fn new(spec: KpaSpec, ready: u32, now_ms: u64) -> Self {
        let delay = (spec.scale_down_delay_ms > 0).then(|| MaxWindow::new(spec.scale_down_delay_ms, spec.tick_ms));
        Kpa { spec, panic_since_ms: (ready > 1).then_some(now_ms), max_panic: ready, delay }
    }

    /// Whether a route sends the revision traffic now (it changes as routes do, without a new decider).
    pub(crate) fn set_reachable(&mut self, reachable: bool) {
        self.spec.reachable = reachable;
    }

    #[cfg(test)]
    pub(crate) fn panicking(&self) -> bool {
        self.panic_since_ms.is_some()
    }

    pub(crate) fn scale(&mut self, now_ms: u64, ready: u32, stable: f64, panic: f64, backlog_wanted: u32) -> KpaResult {
        let spec = &self.spec;
        let ready_at_least_one = f64::from(ready.max(1));
        let max_up = (spec.max_scale_up_rate * ready_at_least_one).ceil();
        let max_down = if spec.reachable { (ready_at_least_one / spec.max_scale_down_rate).floor() } else { 0.0 };
        let stable_by_metric = round6(stable / spec.target).ceil();
        let panic_by_metric = round6(panic / spec.target).ceil();
        let dspc = stable_by_metric.max(f64::from(backlog_wanted));
        let dppc = panic_by_metric.max(f64::from(backlog_wanted));
        let mut stable_desired = dspc.max(max_down).min(max_up) as u32;
        let mut panic_desired = dppc.max(max_down).min(max_up) as u32;
        if spec.activation_scale > 1 {
            if dspc > 0.0 {
                stable_desired = stable_desired.max(spec.activation_scale);
            }
            if dppc > 0.0 {
                panic_desired = panic_desired.max(spec.activation_scale);
            }
        }
        // Panic is the metric's: a spike seen in the short window. The backlog is known exactly, not sampled,
        // so it raises the counts without holding them up for a stable window afterwards.
        let over_threshold = panic_by_metric / ready_at_least_one >= spec.panic_threshold;
        if over_threshold {
            self.panic_since_ms = Some(now_ms);
        } else if self.panic_since_ms.is_some_and(|since| since + spec.stable_window_ms < now_ms) {
            self.panic_since_ms = None;
            self.max_panic = 0;
        }
        let mut desired = stable_desired;
        if self.panic_since_ms.is_some() {
            desired = desired.max(panic_desired);
            self.max_panic = self.max_panic.max(desired);
            desired = self.max_panic;
        }
        if spec.reachable
            && let Some(delay) = &mut self.delay
        {
            desired = delay.record(now_ms, desired);
        }
        let tbc = spec.target_burst_capacity;
        let excess_burst_capacity = if tbc == 0.0 {
            0
        } else if tbc < 0.0 {
            -1
        } else {
            (f64::from(ready) * spec.total - tbc - panic).floor() as i64
        };
        KpaResult {
            desired,
            excess_burst_capacity,
            panicking: self.panic_since_ms.is_some(),
            panic_wanted: dppc.min(f64::from(u32::MAX)) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Knative's test autoscaler: `target`, total `target / 0.75`, panic at 2×, rates of 10, 60 s window.
    fn spec(target: f64, tbc: f64) -> KpaSpec {
        KpaSpec {
            target,
            total: target / 0.75,
            target_burst_capacity: tbc,
            panic_threshold: 2.0,
            max_scale_up_rate: 10.0,
            max_scale_down_rate: 10.0,
            stable_window_ms: 60_000,
            scale_down_delay_ms: 0,
            reachable: true,
            activation_scale: 0,
            tick_ms: 2_000,
        }
    }

    /// (t s, ready, stable, panic) → (desired, ebc, panicking)
    type Step = (f64, u32, f64, f64, u32, i64, bool);

    fn run(name: &str, kpa: &mut Kpa, steps: &[Step]) {
        for (i, &(t, ready, stable, panic, desired, ebc, panicking)) in steps.iter().enumerate() {
            let got = kpa.scale((t * 1000.0) as u64, ready, stable, panic, 0);
            assert_eq!(got.desired, desired, "{name} step {i}: desired");
            // Knative's tests accept the excess burst capacity within 1.
            assert!(
                (got.excess_burst_capacity - ebc).abs() <= 1,
                "{name} step {i}: ebc {} vs {ebc}",
                got.excess_burst_capacity
            );
            assert_eq!(got.panicking, panicking, "{name} step {i}: panicking");
        }
    }

    /// The sequences of Knative's `autoscaler_test.go`, each under its test's name.
    #[test]
    fn knatives_sequences() {
        let cases: Vec<(&str, KpaSpec, Vec<Step>)> = vec![
            ("Metrics", spec(10.0, 100.0), vec![(0.0, 1, 50.0, 50.0, 5, -137, true)]),
            (
                "StableModeIncreaseWithConcurrencyDefault",
                spec(10.0, 101.0),
                vec![(0.0, 1, 50.0, 10.0, 5, -98, false), (0.0, 1, 100.0, 10.0, 10, -98, false)],
            ),
            (
                "StableModeIncreaseWithRPS",
                spec(10.0, 101.0),
                vec![(0.0, 1, 50.0, 50.0, 5, -138, true), (0.0, 1, 100.0, 99.0, 10, -187, true)],
            ),
            (
                "UnpanicAfterSlowIncrease",
                spec(1.0, 98.0),
                vec![
                    (0.0, 10, 11.0, 25.0, 25, -110, true),
                    (30.0, 40, 30.0, 41.0, 41, -86, true),
                    (62.0, 55, 50.0, 56.0, 50, -81, false),
                ],
            ),
            (
                "ExtendPanicWindow",
                spec(1.0, 98.0),
                vec![(0.0, 10, 11.0, 25.0, 25, -110, true), (30.0, 40, 30.0, 80.0, 80, -125, true)],
            ),
            (
                "StableModeDecrease",
                spec(10.0, 98.0),
                vec![(0.0, 8, 100.0, 100.0, 10, -92, false), (0.0, 8, 50.0, 50.0, 5, -42, false)],
            ),
            (
                "StableModeNoTrafficScaleToZero",
                spec(10.0, 75.0),
                vec![(0.0, 1, 1.0, 0.0, 1, -62, false), (0.0, 1, 0.0, 0.0, 0, -62, false)],
            ),
            (
                "PanicModeExponentialTrackAndStabilize",
                spec(1.0, 101.0),
                vec![
                    (0.0, 1, 6.0, 6.0, 6, -106, true),
                    (0.0, 6, 36.0, 36.0, 36, -129, true),
                    (1.0, 36, 216.0, 216.0, 216, -269, true),
                    (1.0, 216, 1296.0, 1296.0, 1296, -1109, true),
                    (2.0, 1296, 1296.0, 1296.0, 1296, 331, true),
                ],
            ),
            (
                "PanicThenUnPanicScaleDown",
                spec(10.0, 93.0),
                vec![
                    (0.0, 1, 100.0, 100.0, 10, -180, true),
                    (0.0, 10, 100.0, 1000.0, 100, -960, true),
                    (30.0, 10, 1.0, 1.0, 100, 39, true),
                    (61.0, 10, 1.0, 1.0, 1, 39, false),
                ],
            ),
            (
                "RateLimitScaleUp",
                spec(10.0, 61.0),
                vec![(0.0, 1, 1000.0, 1001.0, 10, -1049, true), (0.0, 10, 1000.0, 1001.0, 100, -929, true)],
            ),
            (
                "RateLimitScaleDown",
                spec(10.0, 61.0),
                vec![(0.0, 100, 1.0, 1.0, 10, 1271, false), (0.0, 10, 1.0, 1.0, 1, 71, false)],
            ),
            ("UseOnePodAsMinimumIfEndpointsNotFound", spec(10.0, 81.0), vec![(0.0, 0, 1000.0, 888.0, 10, -969, true)]),
            ("NoDataAtZeroNoAutoscale", spec(10.0, 100.0), vec![(0.0, 1, 0.0, 0.0, 0, -87, false)]),
            ("StableModeUnlimitedTBC", spec(181.0, -1.0), vec![(0.0, 1, 21.0, 26.0, 1, -1, false)]),
            ("0TBC", spec(10.0, 0.0), vec![(0.0, 1, 50.0, 49.0, 5, 0, true)]),
            ("StableModeNoChangeAlreadyScaled", spec(10.0, 100.0), vec![(0.0, 5, 50.0, 50.0, 5, -84, false)]),
            ("PanicModeDoublePodCount", spec(10.0, 84.0), vec![(0.0, 1, 50.0, 100.0, 10, -171, true)]),
        ];
        for (name, spec, steps) in cases {
            let mut kpa = Kpa::new(spec, 1, 0);
            run(name, &mut kpa, &steps);
        }
        let mut activation = Kpa::new(KpaSpec { activation_scale: 2, ..spec(10.0, 75.0) }, 1, 0);
        run(
            "ActivationScale",
            &mut activation,
            &[(0.0, 1, 0.0, 0.0, 0, -62, false), (0.0, 1, 1.0, 0.0, 2, -62, false)],
        );
        let mut slow_up = Kpa::new(KpaSpec { max_scale_up_rate: 1.1, ..spec(1.0, 1982.0) }, 1, 0);
        run("StableModeIncreaseWithSmallScaleUpRate", &mut slow_up, &[(0.0, 2, 3.0, 3.1, 3, -1983, true)]);
        let mut slow_down = Kpa::new(KpaSpec { max_scale_down_rate: 1.1, ..spec(10.0, 1982.0) }, 1, 0);
        run("StableModeDecreaseWithSmallScaleDownRate", &mut slow_down, &[(0.0, 100, 1.0, 1.0, 90, -650, false)]);
        let mut unreachable =
            Kpa::new(KpaSpec { max_scale_down_rate: 1.1, reachable: false, ..spec(10.0, 1982.0) }, 1, 0);
        run("StableModeDecreaseNonReachable", &mut unreachable, &[(0.0, 100, 1.0, 1.0, 1, -650, false)]);
    }

    #[test]
    fn knatives_panic_table_rows_that_start_panicking() {
        for (stable, panic, desired) in [(50.0, 30.0, 50), (20.0, 30.0, 30)] {
            let mut kpa = Kpa::new(spec(1.0, 100.0), 1, 0);
            kpa.panic_since_ms = Some(55_000);
            kpa.max_panic = 5;
            let got = kpa.scale(60_000, 5, stable, panic, 0);
            assert_eq!((got.desired, got.panicking), (desired, true), "stable {stable}, panic {panic}");
            assert!((got.excess_burst_capacity + 124).abs() <= 1);
        }
    }

    #[test]
    fn it_starts_panicking_with_more_than_one_ready() {
        for (ready, panicking, max_panic) in [(0, false, 0), (1, false, 1), (2, true, 2)] {
            let kpa = Kpa::new(spec(100.0, 11.0), ready, 5_000);
            assert_eq!((kpa.panicking(), kpa.max_panic), (panicking, max_panic), "ready {ready}");
        }
    }

    #[test]
    fn scale_down_delay_holds_the_largest_recent_count() {
        let delayed = KpaSpec {
            target: 10.0,
            total: 0.0,
            target_burst_capacity: 0.0,
            panic_threshold: 100.0,
            max_scale_up_rate: 10.0,
            max_scale_down_rate: 10.0,
            stable_window_ms: 0,
            scale_down_delay_ms: 300_000,
            reachable: true,
            activation_scale: 0,
            tick_ms: 2_000,
        };
        let mut kpa = Kpa::new(delayed.clone(), 0, 0);
        let steps: &[Step] = &[
            (2.0, 0, 40.0, 40.0, 4, 0, false),
            (300.0, 0, 0.0, 0.0, 4, 0, false),
            (302.0, 0, 0.0, 0.0, 0, 0, false),
            (540.0, 0, 40.0, 40.0, 4, 0, false),
            (600.0, 0, 30.0, 30.0, 4, 0, false),
            (660.0, 0, 0.0, 0.0, 4, 0, false),
            (840.0, 0, 0.0, 0.0, 3, 0, false),
            (900.0, 0, 0.0, 0.0, 0, 0, false),
        ];
        run("ScaleDownDelay", &mut kpa, steps);
        let mut no_delay = Kpa::new(KpaSpec { scale_down_delay_ms: 0, reachable: false, ..delayed }, 0, 0);
        run(
            "ScaleDownDelayZero",
            &mut no_delay,
            &[(0.0, 0, 40.0, 40.0, 4, 0, false), (0.5, 0, 20.0, 20.0, 2, 0, false)],
        );
    }

    #[test]
    fn backlog_raises_the_count_without_panicking() {
        let mut kpa = Kpa::new(spec(10.0, 0.0), 1, 0);
        let got = kpa.scale(0, 1, 0.0, 0.0, 8);
        assert_eq!((got.desired, got.panicking), (8, false), "backlog wants 8, the rate limit allows 10");
        let got = kpa.scale(2_000, 8, 0.0, 0.0, 0);
        assert_eq!((got.desired, got.panicking), (0, false), "the backlog is gone: down at the rate limit (8/10 → 0)");
        let got = kpa.scale(4_000, 1, 0.0, 0.0, 500);
        assert_eq!(got.desired, 10, "still bounded by the scale-up rate");
    }
}
