//! How many instances of a revision this node runs, until the autoscaler lands: `min-scale` always, one
//! started on demand (a request or an event waiting), kept while requests keep coming, and scaled to zero
//! after `idle_ms` without any; never more than `max-scale`. A new revision runs one instance until it has
//! been ready once, so that it becomes Ready (Knative's `initial-scale`, 1 by default).

/// A revision's scale bounds, from its annotations and the node's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScaleSettings {
    pub(crate) min: u32,
    /// 0: no bound.
    pub(crate) max: u32,
    pub(crate) initial: u32,
    /// Without requests for this long, the revision goes to zero (above `min`).
    pub(crate) idle_ms: u64,
}

/// What the decision looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ScaleInput {
    pub(crate) now_ms: u64,
    /// Requests (and deliveries) holding a slot or waiting for one.
    pub(crate) in_flight: u32,
    pub(crate) waiting: usize,
    /// When a request last started or ended.
    pub(crate) last_active_ms: u64,
    /// Whether an instance has been ready since the revision started here.
    pub(crate) ever_ready: bool,
}

/// The number of instances wanted now.
pub(crate) fn wanted_instances(settings: &ScaleSettings, input: &ScaleInput) -> u32 {
    let busy = input.in_flight > 0 || input.waiting > 0;
    let recently_active = input.now_ms.saturating_sub(input.last_active_ms) < settings.idle_ms;
    let mut wanted = settings.min;
    if busy || recently_active && input.last_active_ms > 0 {
        wanted = wanted.max(1);
    }
    if !input.ever_ready {
        wanted = wanted.max(settings.initial.min(1));
    }
    if settings.max > 0 {
        wanted = wanted.min(settings.max);
    }
    // Until the autoscaler: one instance on demand, `min-scale` if more.
    wanted.min(settings.min.max(1))
}

/// How long to wait before starting an instance again after `consecutive_failures` failed starts: 100 ms
/// doubling to 10 s (a crash loop costs little, a transient failure recovers fast).
pub(crate) fn restart_delay_ms(consecutive_failures: u32) -> u64 {
    if consecutive_failures == 0 {
        return 0;
    }
    100u64.saturating_mul(1 << consecutive_failures.saturating_sub(1).min(7)).min(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: ScaleSettings = ScaleSettings { min: 0, max: 0, initial: 1, idle_ms: 1_000 };

    fn input(now_ms: u64, in_flight: u32, waiting: usize, last_active_ms: u64) -> ScaleInput {
        ScaleInput { now_ms, in_flight, waiting, last_active_ms, ever_ready: true }
    }

    #[test]
    fn one_instance_on_demand_and_zero_after_the_idle_period() {
        let cases = [
            (input(10_000, 0, 0, 0), 0, "never used: zero"),
            (input(10_000, 0, 1, 0), 1, "a request waits at zero: one starts"),
            (input(10_000, 3, 0, 9_999), 1, "busy"),
            (input(10_000, 0, 0, 9_500), 1, "idle for less than idle_ms: kept"),
            (input(10_000, 0, 0, 9_000), 0, "idle for idle_ms: zero"),
        ];
        for (input, wanted, why) in cases {
            assert_eq!(wanted_instances(&SETTINGS, &input), wanted, "{why}");
        }
    }

    #[test]
    fn min_max_and_initial_scale_bound_it() {
        let idle = input(10_000, 0, 0, 0);
        assert_eq!(wanted_instances(&ScaleSettings { min: 2, ..SETTINGS }, &idle), 2, "min-scale stays up");
        assert_eq!(wanted_instances(&ScaleSettings { min: 2, max: 1, ..SETTINGS }, &idle), 1, "max-scale caps");
        let busy = input(10_000, 5, 9, 10_000);
        assert_eq!(wanted_instances(&ScaleSettings { max: 1, ..SETTINGS }, &busy), 1);
        let new = ScaleInput { ever_ready: false, ..idle };
        assert_eq!(wanted_instances(&SETTINGS, &new), 1, "a new revision starts one to become ready");
        assert_eq!(wanted_instances(&ScaleSettings { initial: 0, ..SETTINGS }, &new), 0, "initial-scale 0");
    }

    #[test]
    fn restarts_back_off_to_a_cap() {
        let delays: Vec<u64> = (0..10).map(restart_delay_ms).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000]);
    }
}
