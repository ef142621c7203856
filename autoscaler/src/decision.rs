//! The whole decision for one revision on one node: Knative's KPA ([`crate::kpa`]) over the metric's windows
//! and the backlog, then what the KPA leaves to its reconciler (activation from zero, `initial-scale`,
//! `min-scale`/`max-scale`, scale to zero after the idle window and the grace period), as one state machine.
//!
//! What flows in: a [`Sample`] for each closed bucket (time-weighted concurrency, requests arrived), and at
//! each tick (or at once when a revision at zero is asked for) an [`Observation`]: the time, ready and
//! running instances, requests held at the gate, the dispatcher's [`Backlog`]. What flows out: a [`Decision`],
//! the instance count wanted with every input and term that led to it and which one won. Pure: time is data.
//!
//! Time is a monotonic clock's milliseconds (any origin: serving counts from its process's start): the windows,
//! the panic clock, `scale-down-delay`, the idle timer and the progress deadline all measure durations, which a
//! wall clock stepped back (frozen averages) or forward (protections wiped) would get wrong. The wall clock
//! only stamps a decision for people ([`Observation::wall_ms`]).

use sluice_controller::serving::autoscaling::{Autoscaling, Metric, Signals};

use crate::kpa::{Kpa, KpaSpec};
use crate::window::{WindowAverage, round6};

/// One closed bucket of the revision's traffic on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Requests in flight or held, averaged over the bucket's time.
    pub concurrency: f64,
    /// Requests that arrived in the bucket (given a slot, held, or turned away as the queue was full), as
    /// Knative counts them: `metric: rps` must see the requests held at a revision at zero, which have not
    /// ended (and may never).
    pub requests: u64,
    /// How long the bucket lasted: a tick that came late (a busy runtime) makes it longer than the configured
    /// length, and `metric: rps` divides by this. 0 stands for the configured length.
    pub elapsed_ms: u64,
}

/// Events waiting in the log for the revision: matched to a Trigger or Subscription whose subscriber resolves
/// to it, not yet dispatched (in-flight and retry-waiting ones are not backlog).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub events: u64,
    /// For ordered delivery: the keys (or partitions) with events waiting; more instances than this cannot be
    /// used. `None`: unordered.
    pub ordered_keys: Option<u64>,
}

impl Backlog {
    /// Adds another consumer's backlog.
    pub fn merge(self, other: Backlog) -> Backlog {
        let unordered_waiting =
            (self.ordered_keys.is_none() && self.events > 0) || (other.ordered_keys.is_none() && other.events > 0);
        let ordered_keys = match (self.ordered_keys, other.ordered_keys) {
            // An unordered consumer with events waiting can use any number of instances.
            _ if unordered_waiting => None,
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        Backlog { events: self.events + other.events, ordered_keys }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The autoscaler's clock: monotonic milliseconds, the same clock as [`Autoscaler::new`]'s and
    /// [`Autoscaler::record`]'s. Every duration is measured on it.
    pub now_ms: u64,
    /// The wall clock (milliseconds since the Unix epoch), only to stamp the decision for people
    /// ([`Decision::at_ms`]); nothing is timed on it.
    pub wall_ms: u64,
    pub ready: u32,
    /// Running (starting or ready, not draining).
    pub instances: u32,
    /// Requests held at the gate (waiting for a slot).
    pub held: u32,
    pub backlog: Backlog,
}

/// Which input settled the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The metric's stable window (concurrency or rps).
    Metric,
    /// The backlog asked for more than the metric.
    Backlog,
    /// Panic mode: the short window saw a spike; no scale-down until it has passed for a stable window.
    Panic,
    /// At zero, a request is held or the backlog passed the activation threshold.
    Activation,
    /// A new revision starts `initial-scale` instances once.
    InitialScale,
    MinScale,
    MaxScale,
    /// Nothing wanted, but the revision has not been idle for the window and the grace period yet.
    IdleGrace,
    /// `enable-scale-to-zero` is false.
    ScaleToZeroDisabled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Metric => "metric",
            Reason::Backlog => "backlog",
            Reason::Panic => "panic",
            Reason::Activation => "activation",
            Reason::InitialScale => "initial-scale",
            Reason::MinScale => "min-scale",
            Reason::MaxScale => "max-scale",
            Reason::IdleGrace => "idle-grace",
            Reason::ScaleToZeroDisabled => "scale-to-zero-disabled",
        }
    }
}

/// A decision and everything that explains it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// When, on the wall clock (milliseconds since the Unix epoch): the observation's `wall_ms`.
    pub at_ms: u64,
    pub desired: u32,
    pub reason: Reason,
    pub panicking: bool,
    pub ready: u32,
    pub instances: u32,
    pub held: u32,
    /// The metric's averages over the stable and the panic window.
    pub stable_metric: f64,
    pub panic_metric: f64,
    pub backlog: Backlog,
    /// Instances each term asks for: the metric over the stable window, the panic window (with the
    /// backlog), the backlog.
    pub metric_wanted: u32,
    pub panic_wanted: u32,
    pub backlog_wanted: u32,
    pub excess_burst_capacity: i64,
    /// A route sent the revision traffic when this was decided (else `min-scale` and `initial-scale` did not
    /// apply: [`Autoscaler::set_reachable`]).
    pub reachable: bool,
    /// `initial-scale` is 0 and was reached: the revision counts as ready with no instance, and its first
    /// request (or backlog) starts one, as Knative's `allow-zero-initial-scale` has it. Regression: nothing
    /// started and nothing marked it ready, so no route ever followed it.
    pub ready_at_zero: bool,
}

/// One revision's autoscaler.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    knobs: Autoscaling,
    kpa: Kpa,
    stable: WindowAverage,
    panic: WindowAverage,
    /// When a request, a held request or backlog was last seen (the revision's start counts as activity).
    last_activity_ms: u64,
    inactive_since_ms: Option<u64>,
    /// `initial-scale` has been reached once, its progress deadline passed, or the revision was ready before.
    reached_initial: bool,
    /// When the autoscaler (the revision's task) started: the progress deadline counts from here.
    started_ms: u64,
    /// How long `initial-scale` may keep the revision up without being reached.
    progress_deadline_ms: u64,
    /// Some route sends the revision traffic (Knative's PodAutoscaler `Reachability`).
    reachable: bool,
}

/// Knative's `progress-deadline` (600 s): how long a new revision may take to reach `initial-scale`. Past it,
/// `initial-scale` no longer holds instances up: a runtime that cannot run that many (one instance per node on
/// a fixed `containerPort`, `--max-local-instances`) would otherwise pin the revision above zero for good.
pub const DEFAULT_PROGRESS_DEADLINE_MS: u64 = 600_000;

/// Instances the backlog asks for: `ceil(events / backlog-target)`, no more than ordered delivery can use.
pub fn backlog_instances(knobs: &Autoscaling, backlog: Backlog) -> u32 {
    if backlog.events == 0 {
        return 0;
    }
    let wanted = (backlog.events as f64 / knobs.backlog_target).ceil().min(f64::from(u32::MAX)) as u32;
    match backlog.ordered_keys {
        Some(keys) => wanted.min(keys.clamp(1, u64::from(u32::MAX)) as u32),
        None => wanted,
    }
}

impl Autoscaler {
    /// An autoscaler for a revision with `ready` instances now; `reached_initial`: it was ready before, so
    /// `initial-scale` need not be started again.
    pub fn new(knobs: Autoscaling, ready: u32, now_ms: u64, reached_initial: bool) -> Self {
        let spec = KpaSpec {
            target: knobs.target,
            total: knobs.total,
            target_burst_capacity: knobs.target_burst_capacity,
            panic_threshold: knobs.panic_threshold,
            max_scale_up_rate: knobs.max_scale_up_rate,
            max_scale_down_rate: knobs.max_scale_down_rate,
            stable_window_ms: knobs.stable_window_ms,
            scale_down_delay_ms: knobs.scale_down_delay_ms,
            reachable: true,
            activation_scale: knobs.activation_scale,
            tick_ms: knobs.tick_ms,
        };
        Autoscaler {
            kpa: Kpa::new(spec, ready, now_ms),
            stable: WindowAverage::new(knobs.stable_window_ms, knobs.bucket_ms),
            panic: WindowAverage::new(knobs.panic_window_ms, knobs.bucket_ms),
            knobs,
            last_activity_ms: now_ms,
            inactive_since_ms: None,
            reached_initial,
            started_ms: now_ms,
            progress_deadline_ms: DEFAULT_PROGRESS_DEADLINE_MS,
            reachable: true,
        }
    }

    /// The same autoscaler with another progress deadline (serving passes its `--progress-deadline-ms`, the
    /// one its instances must become ready within).
    pub fn with_progress_deadline_ms(self, progress_deadline_ms: u64) -> Self {
        Autoscaler { progress_deadline_ms, ..self }
    }

    /// Whether any route sends the revision traffic now (a new autoscaler assumes one does). Knative's
    /// `Reachability`: an unreachable revision (a Configuration's latest while its Route pins traffic
    /// elsewhere, a tag-less old one) is not kept up by `min-scale`, starts one instance rather than
    /// `initial-scale` (so that it becomes Ready once), and may drop straight to zero (no scale-down rate, no
    /// `scale-down-delay`). Routes change while the revision runs, so this is set again at each change.
    pub fn set_reachable(&mut self, reachable: bool) {
        self.reachable = reachable;
        self.kpa.set_reachable(reachable);
    }

    /// Records a closed bucket that ended at `now_ms`.
    pub fn record(&mut self, now_ms: u64, sample: Sample) {
        // Deciding on the backlog alone (KEDA-like), the traffic is not looked at.
        let sample = if self.knobs.signals == Signals::Backlog { Sample::default() } else { sample };
        let value = match self.knobs.metric {
            Metric::Concurrency => sample.concurrency,
            // Per second of the bucket as it lasted: a bucket stretched by a late tick holds more arrivals, not a
            // higher rate (divided by the nominal length it read as one, a false panic).
            Metric::Rps => {
                let lasted_ms = if sample.elapsed_ms == 0 { self.knobs.bucket_ms } else { sample.elapsed_ms };
                sample.requests as f64 * 1000.0 / lasted_ms as f64
            }
        };
        // Stamped with the time it closed, as Knative stamps a scrape: a decision taken then includes it.
        self.stable.record(now_ms, value);
        self.panic.record(now_ms, value);
        if sample.concurrency > 0.0 || sample.requests > 0 {
            self.last_activity_ms = self.last_activity_ms.max(now_ms);
        }
    }

    /// Whether a revision at zero must start now, without waiting for the next tick.
    pub fn wakes(&self, held: u32, backlog: Backlog) -> bool {
        held > 0 || (self.knobs.signals != Signals::Concurrency && backlog.events > self.knobs.activation_backlog)
    }

    pub fn decide(&mut self, observed: &Observation) -> Decision {
        // Deciding on concurrency alone (Knative's KPA), the backlog is not looked at.
        let ignored;
        let observed = if self.knobs.signals == Signals::Concurrency {
            ignored = Observation { backlog: Backlog::default(), ..*observed };
            &ignored
        } else {
            observed
        };
        let now = observed.now_ms;
        let knobs = &self.knobs;
        if observed.held > 0 || observed.backlog.events > 0 {
            self.last_activity_ms = self.last_activity_ms.max(now);
        }
        let stable_metric = self.stable.average(now);
        let panic_metric = self.panic.average(now);
        // At zero, a backlog up to `activation-backlog` does not wake the revision (KEDA's activation
        // threshold); once it runs, every waiting event counts.
        let below_activation = observed.instances == 0 && observed.backlog.events <= knobs.activation_backlog;
        let backlog_wanted = if below_activation { 0 } else { backlog_instances(knobs, observed.backlog) };
        let kpa = self.kpa.scale(now, observed.ready, stable_metric, panic_metric, backlog_wanted);
        let metric_wanted = round6(stable_metric / knobs.target).ceil().min(f64::from(u32::MAX)) as u32;
        let mut desired = kpa.desired;
        let mut reason = if kpa.panicking {
            Reason::Panic
        } else if backlog_wanted > metric_wanted {
            Reason::Backlog
        } else {
            Reason::Metric
        };
        if desired == 0 && self.wakes(observed.held, observed.backlog) {
            desired = knobs.activation_scale.max(1);
            reason = Reason::Activation;
        }
        if !self.reached_initial {
            // Never more than `max-scale`: asked for above it, `initial-scale` could never be reached.
            let initial_scale = match knobs.max_scale {
                0 => knobs.initial_scale,
                max_scale => knobs.initial_scale.min(max_scale),
            };
            // Unreachable, one instance, only so that the revision becomes Ready (and can take traffic at once
            // when a route moves to it): Knative ignores `initial-scale` there, yet creates the revision's pods.
            let initial_scale = if self.reachable { initial_scale } else { initial_scale.min(1) };
            // Reached, or given up on: past the progress deadline the runtime has shown it cannot run that many
            // here, and the revision follows its traffic (down to zero) like any other.
            let deadline_passed = now.saturating_sub(self.started_ms) >= self.progress_deadline_ms;
            if observed.ready >= initial_scale || deadline_passed {
                self.reached_initial = true;
            } else if desired < initial_scale {
                desired = initial_scale;
                reason = Reason::InitialScale;
            }
        }
        // Knative ignores `min-scale` on a revision no route sends traffic to: nothing keeps it warm.
        if self.reachable && desired < knobs.min_scale {
            desired = knobs.min_scale;
            reason = Reason::MinScale;
        }
        if knobs.max_scale > 0 && desired > knobs.max_scale {
            desired = knobs.max_scale;
            reason = Reason::MaxScale;
        }
        if desired == 0 {
            // Inactive: nothing (requests, held requests, backlog) for a whole window. The grace period counts
            // from then, so the last instance goes after `window + max(grace, retention)` of quiet.
            let idle_for_window = now.saturating_sub(self.last_activity_ms) >= knobs.stable_window_ms;
            if !idle_for_window {
                self.inactive_since_ms = None;
            }
            let since = if idle_for_window { *self.inactive_since_ms.get_or_insert(now) } else { now };
            let grace_passed = idle_for_window
                && now.saturating_sub(since) >= knobs.scale_to_zero_grace_ms.max(knobs.pod_retention_ms);
            if !knobs.enable_scale_to_zero {
                desired = 1;
                reason = Reason::ScaleToZeroDisabled;
            } else if !grace_passed && observed.instances > 0 {
                // The last instance stays until the revision has been idle for the window and the grace period.
                desired = 1;
                reason = Reason::IdleGrace;
            }
        } else {
            self.inactive_since_ms = None;
        }
        Decision {
            at_ms: observed.wall_ms,
            desired,
            reason,
            panicking: kpa.panicking,
            ready: observed.ready,
            instances: observed.instances,
            held: observed.held,
            stable_metric,
            panic_metric,
            backlog: observed.backlog,
            metric_wanted,
            panic_wanted: kpa.panic_wanted,
            backlog_wanted,
            excess_burst_capacity: kpa.excess_burst_capacity,
            reachable: self.reachable,
            ready_at_zero: self.reached_initial && knobs.initial_scale == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sluice_controller::serving::autoscaling::AutoscalerDefaults;

    use super::*;

    /// Knative's defaults with a 6 s window, containerConcurrency 4 (target 2.8).
    fn knobs() -> Autoscaling {
        let defaults = AutoscalerDefaults::from_pairs(["stable-window=6s"]).expect("valid");
        Autoscaling::from_defaults(&defaults, 4)
    }

    fn observe(now_ms: u64, ready: u32, held: u32, events: u64) -> Observation {
        let backlog = Backlog { events, ordered_keys: None };
        Observation { now_ms, wall_ms: now_ms, ready, instances: ready, held, backlog }
    }

    /// Records `concurrency` each second from `from_s` to `to_s`.
    fn load(scaler: &mut Autoscaler, from_s: u64, to_s: u64, concurrency: f64) {
        for s in from_s..to_s {
            scaler.record((s + 1) * 1000, Sample { concurrency, requests: concurrency as u64, elapsed_ms: 0 });
        }
    }

    /// Regression: `metric: rps` divided a bucket's arrivals by the configured length, so a bucket a late tick
    /// stretched to 3 s read as three times the rate (a false panic in a one-bucket panic window).
    #[test]
    fn regression_a_late_ticks_bucket_is_read_per_second_it_lasted() {
        let rps = || Autoscaling { metric: Metric::Rps, ..knobs() };
        let mut late = Autoscaler::new(rps(), 0, 0, true);
        late.record(3_000, Sample { concurrency: 1.0, requests: 30, elapsed_ms: 3_000 });
        assert_eq!(late.decide(&observe(3_000, 1, 0, 0)).panic_metric, 10.0, "30 requests over 3 s");
        let mut nominal = Autoscaler::new(rps(), 0, 0, true);
        nominal.record(3_000, Sample { concurrency: 1.0, requests: 30, elapsed_ms: 0 });
        assert_eq!(nominal.decide(&observe(3_000, 1, 0, 0)).panic_metric, 30.0, "0: the configured 1 s");
    }

    #[test]
    fn the_backlog_wakes_a_revision_at_zero_and_sizes_it() {
        let mut scaler = Autoscaler::new(knobs(), 0, 0, true);
        load(&mut scaler, 0, 100, 0.0);
        let idle = scaler.decide(&observe(100_000, 0, 0, 0));
        assert_eq!((idle.desired, idle.reason), (0, Reason::Metric));
        assert!(!scaler.wakes(0, Backlog { events: 0, ordered_keys: None }));
        assert!(scaler.wakes(0, Backlog { events: 1, ordered_keys: None }), "activation-backlog 0: strictly greater");
        let burst = scaler.decide(&observe(100_100, 0, 0, 5_000));
        assert_eq!((burst.desired, burst.reason, burst.backlog_wanted), (50, Reason::Backlog, 50));
        assert!(!burst.panicking, "the backlog does not panic");
        let capped =
            Autoscaler::new(Autoscaling { max_scale: 8, ..knobs() }, 0, 0, true).decide(&observe(1, 0, 0, 5_000));
        assert_eq!((capped.desired, capped.reason), (8, Reason::MaxScale));
        let mut threshold = Autoscaler::new(Autoscaling { activation_backlog: 10, ..knobs() }, 0, 0, true);
        load(&mut threshold, 0, 100, 0.0);
        assert!(!threshold.wakes(0, Backlog { events: 10, ordered_keys: None }));
        assert!(threshold.wakes(0, Backlog { events: 11, ordered_keys: None }));
        assert_eq!(threshold.decide(&observe(100_000, 0, 0, 10)).desired, 0, "at zero, 10 events do not wake it");
        assert_eq!(threshold.decide(&observe(100_200, 0, 0, 11)).desired, 1, "11 do");
        assert_eq!(threshold.decide(&observe(100_400, 1, 0, 3)).desired, 1, "running, every event counts");
    }

    #[test]
    fn a_held_request_wakes_a_revision_at_zero_before_the_window_sees_it() {
        let mut scaler = Autoscaler::new(Autoscaling { activation_scale: 3, ..knobs() }, 0, 0, true);
        load(&mut scaler, 0, 100, 0.0);
        assert!(scaler.wakes(1, Backlog::default()));
        let woken = scaler.decide(&observe(100_000, 0, 1, 0));
        assert_eq!((woken.desired, woken.reason), (3, Reason::Activation), "activation-scale");
    }

    #[test]
    fn never_to_zero_while_events_wait_and_to_zero_after_window_and_grace() {
        let knobs = Autoscaling { scale_to_zero_grace_ms: 10_000, ..knobs() };
        let mut scaler = Autoscaler::new(knobs, 1, 0, true);
        load(&mut scaler, 0, 10, 2.0);
        for t in (10_000..40_000).step_by(2_000) {
            let d = scaler.decide(&observe(t, 1, 0, 1));
            assert!(d.desired >= 1, "backlog at {t}: {d:?}");
        }
        // The backlog is gone and nothing comes: the last instance stays for the window and the grace period.
        load(&mut scaler, 40, 80, 0.0);
        let mut zero_at = None;
        for t in (40_000..80_000).step_by(2_000) {
            let d = scaler.decide(&observe(t, 1, 0, 0));
            if d.desired == 0 {
                zero_at = Some(t);
                break;
            }
            assert_eq!((d.desired, d.reason), (1, Reason::IdleGrace), "{d:?}");
        }
        assert_eq!(zero_at, Some(38_000 + 6_000 + 10_000), "window and grace after the last backlog");
    }

    #[test]
    fn events_stuck_in_retries_are_not_backlog_and_let_it_go_to_zero() {
        // A delivery waiting to retry is neither backlog nor held: the revision goes to zero after the window.
        let knobs = Autoscaling { scale_to_zero_grace_ms: 0, ..knobs() };
        let mut scaler = Autoscaler::new(knobs, 1, 0, true);
        load(&mut scaler, 0, 30, 0.0);
        let d = scaler.decide(&observe(30_000, 1, 0, 0));
        assert_eq!(d.desired, 0);
    }

    #[test]
    fn ordered_delivery_caps_the_backlog_term() {
        let knobs = knobs();
        let ordered = |events, keys| Backlog { events, ordered_keys: Some(keys) };
        assert_eq!(backlog_instances(&knobs, ordered(10_000, 3)), 3);
        assert_eq!(backlog_instances(&knobs, ordered(150, 3)), 2);
        assert_eq!(backlog_instances(&knobs, Backlog { events: 10_000, ordered_keys: None }), 100);
        let merged = ordered(500, 2).merge(ordered(500, 3));
        assert_eq!(merged, ordered(1_000, 5));
        let with_unordered = ordered(500, 2).merge(Backlog { events: 10, ordered_keys: None });
        assert_eq!(with_unordered.ordered_keys, None, "an unordered consumer can use every instance");
        assert_eq!(ordered(500, 2).merge(Backlog::default()), ordered(500, 2));
        let mut scaler = Autoscaler::new(knobs, 0, 0, true);
        let d = scaler.decide(&Observation { backlog: ordered(10_000, 2), ..observe(0, 0, 0, 0) });
        assert_eq!((d.desired, d.reason), (2, Reason::Backlog), "two keys: two instances");
    }

    #[test]
    fn initial_min_and_disabled_scale_to_zero() {
        let new =
            Autoscaler::new(Autoscaling { initial_scale: 3, ..knobs() }, 0, 0, false).decide(&observe(0, 0, 0, 0));
        assert_eq!((new.desired, new.reason), (3, Reason::InitialScale));
        let mut reached = Autoscaler::new(Autoscaling { initial_scale: 3, ..knobs() }, 0, 0, false);
        reached.decide(&observe(0, 3, 0, 0));
        assert_eq!(reached.decide(&observe(2_000, 3, 0, 0)).reason, Reason::Metric, "once reached, forgotten");
        let min = Autoscaler::new(Autoscaling { min_scale: 2, ..knobs() }, 0, 0, true).decide(&observe(0, 0, 0, 0));
        assert_eq!((min.desired, min.reason), (2, Reason::MinScale));
        let mut kept = Autoscaler::new(Autoscaling { enable_scale_to_zero: false, ..knobs() }, 1, 0, true);
        assert_eq!(kept.decide(&observe(600_000, 1, 0, 0)).reason, Reason::ScaleToZeroDisabled);
        // A min-scale annotation above a node's default max-scale (or the reverse): the max wins, as in Knative.
        let crossed = Autoscaling { min_scale: 20, max_scale: 10, ..knobs() };
        assert_eq!(Autoscaler::new(crossed, 0, 0, true).decide(&observe(0, 0, 0, 0)).desired, 10);
    }

    #[test]
    fn an_unreachable_revision_ignores_min_scale_and_initial_scale_once_ready() {
        // (reachable, min-scale, initial-scale, was ready before, ready now, wanted, reason, why): the first
        // decision of a revision whose traffic has been idle (6 s window passed, grace 0).
        let cases = [
            (true, 3, 1, true, 3, 3, Reason::MinScale, "routed: min-scale keeps it warm"),
            (false, 3, 1, true, 3, 0, Reason::Metric, "unrouted: min-scale ignored, straight to zero once idle"),
            (true, 0, 3, false, 0, 3, Reason::InitialScale, "routed and new: initial-scale"),
            (false, 0, 3, false, 0, 1, Reason::InitialScale, "unrouted and new: one instance, to become Ready"),
            (false, 3, 3, false, 0, 1, Reason::InitialScale, "unrouted and new, min-scale 3: still one"),
            (false, 3, 3, false, 1, 0, Reason::Metric, "unrouted, Ready now: let go"),
            (false, 0, 0, false, 0, 0, Reason::Metric, "initial-scale 0 stays 0"),
            (false, 2, 1, true, 0, 0, Reason::Metric, "ready before (another node): not started here"),
        ];
        for (reachable, min_scale, initial_scale, ready_before, ready, wanted, reason, why) in cases {
            let knobs = Autoscaling { min_scale, initial_scale, scale_to_zero_grace_ms: 0, ..knobs() };
            let mut scaler = Autoscaler::new(knobs, ready, 0, ready_before);
            scaler.set_reachable(reachable);
            load(&mut scaler, 0, 10, 0.0);
            let d = scaler.decide(&observe(10_000, ready, 0, 0));
            assert_eq!((d.desired, d.reason, d.reachable), (wanted, reason, reachable), "{why}: {d:?}");
        }
    }

    #[test]
    fn a_route_moving_away_lets_a_min_scale_revision_go_and_moving_back_brings_it_up() {
        let knobs = Autoscaling { min_scale: 2, scale_to_zero_grace_ms: 0, ..knobs() };
        let mut scaler = Autoscaler::new(knobs, 2, 0, true);
        load(&mut scaler, 0, 10, 0.0);
        assert_eq!(scaler.decide(&observe(10_000, 2, 0, 0)).desired, 2, "routed");
        scaler.set_reachable(false);
        let d = scaler.decide(&observe(12_000, 2, 0, 0));
        assert_eq!((d.desired, d.reason), (0, Reason::Metric), "unrouted and idle: no scale-down rate holds it");
        scaler.set_reachable(true);
        let d = scaler.decide(&observe(14_000, 0, 0, 0));
        assert_eq!((d.desired, d.reason), (2, Reason::MinScale), "routed again");
    }

    #[test]
    fn initial_scale_gives_way_to_max_scale_and_to_the_progress_deadline() {
        // (initial-scale, max-scale, ready, at, wanted, reason, why): one decision of a new revision.
        let cases = [
            (3, 0, 0, 0, 3, Reason::InitialScale, "a new revision starts initial-scale"),
            (3, 0, 1, 599_999, 3, Reason::InitialScale, "not reached, deadline not passed"),
            (3, 0, 1, 600_000, 1, Reason::IdleGrace, "deadline passed: initial-scale no longer holds it up"),
            (3, 0, 3, 1_000, 1, Reason::Metric, "reached"),
            (5, 2, 0, 0, 2, Reason::InitialScale, "never more than max-scale"),
            (5, 2, 2, 1_000, 1, Reason::Metric, "max-scale ready: reached"),
        ];
        for (initial_scale, max_scale, ready, at, wanted, reason, why) in cases {
            let knobs = Autoscaling { initial_scale, max_scale, ..knobs() };
            let d = Autoscaler::new(knobs, 0, 0, false).decide(&observe(at, ready, 0, 0));
            assert_eq!((d.desired, d.reason), (wanted, reason), "{why}: {d:?}");
        }
    }

    #[test]
    fn a_revision_that_cannot_run_its_initial_scale_goes_to_zero_after_the_progress_deadline() {
        // The runtime runs one instance (a fixed containerPort, one per node) where initial-scale asks for 3.
        let knobs = Autoscaling { initial_scale: 3, scale_to_zero_grace_ms: 0, ..knobs() };
        let mut scaler = Autoscaler::new(knobs, 0, 0, false).with_progress_deadline_ms(60_000);
        let mut zero_at = None;
        for t in (0..=120_000).step_by(2_000) {
            let d = scaler.decide(&observe(t, 1, 0, 0));
            if t < 60_000 {
                assert_eq!((d.desired, d.reason), (3, Reason::InitialScale), "at {t}");
            }
            if d.desired == 0 {
                zero_at = Some(t);
                break;
            }
        }
        assert_eq!(zero_at, Some(60_000), "idle all along: to zero as the deadline passes");
    }

    #[test]
    fn decisions_are_timed_on_the_monotonic_clock_and_stamped_with_the_wall_clock() {
        // The same trace twice, the second with a wall clock stepped back an hour, then forward a day: the
        // same decisions (windows, idle timer, grace), each stamped with the wall time it was taken at.
        let wall_at = |now: u64| -> u64 {
            let epoch = 1_700_000_000_000 + now;
            if now < 20_000 {
                epoch
            } else if now < 40_000 {
                epoch - 3_600_000
            } else {
                epoch + 86_400_000
            }
        };
        let knobs = Autoscaling { scale_to_zero_grace_ms: 10_000, ..knobs() };
        let mut steady = Autoscaler::new(knobs.clone(), 1, 0, true);
        let mut stepped = Autoscaler::new(knobs, 1, 0, true);
        load(&mut steady, 0, 10, 8.0);
        load(&mut stepped, 0, 10, 8.0);
        for now in (10_000..80_000).step_by(2_000) {
            let expected = steady.decide(&observe(now, 1, 0, 0));
            let stamped = stepped.decide(&Observation { wall_ms: wall_at(now), ..observe(now, 1, 0, 0) });
            assert_eq!(stamped.at_ms, wall_at(now));
            assert_eq!(Decision { at_ms: expected.at_ms, ..stamped }, expected, "at {now}");
        }
    }

    /// `initial-scale: 0` is reached at once with no instance, and says so (the revision is then ready at zero);
    /// any other initial scale is not ready at zero, reached or not.
    #[test]
    fn a_zero_initial_scale_is_ready_at_zero_and_no_other_is() {
        for (initial_scale, reachable, desired, ready_at_zero) in
            [(0, false, 0, true), (0, true, 0, true), (1, false, 1, false), (2, true, 2, false)]
        {
            let mut scaler = Autoscaler::new(Autoscaling { initial_scale, ..knobs() }, 0, 0, false);
            scaler.set_reachable(reachable);
            let decision = scaler.decide(&observe(0, 0, 0, 0));
            assert_eq!((decision.desired, decision.ready_at_zero), (desired, ready_at_zero), "{initial_scale}");
        }
    }

    #[test]
    fn one_signal_alone_decides_as_knative_or_keda_would() {
        let mut kpa = Autoscaler::new(Autoscaling { signals: Signals::Concurrency, ..knobs() }, 0, 0, true);
        assert!(!kpa.wakes(0, Backlog { events: 5_000, ordered_keys: None }), "the KPA does not see the backlog");
        assert_eq!(kpa.decide(&observe(0, 0, 0, 5_000)).desired, 0);
        assert!(kpa.wakes(1, Backlog::default()), "a held request wakes it");
        let mut keda = Autoscaler::new(Autoscaling { signals: Signals::Backlog, ..knobs() }, 1, 0, true);
        load(&mut keda, 0, 6, 100.0);
        let d = keda.decide(&observe(6_000, 1, 0, 0));
        assert_eq!((d.stable_metric, d.desired), (0.0, 1), "the traffic is not looked at (the window keeps one up)");
        assert_eq!(keda.decide(&observe(6_200, 1, 0, 5_000)).desired, 50, "the backlog is");
    }

    #[test]
    fn a_new_revision_stays_up_for_a_window_before_going_to_zero() {
        let knobs = Autoscaling { scale_to_zero_grace_ms: 0, ..knobs() };
        let mut scaler = Autoscaler::new(knobs, 0, 0, false);
        assert_eq!(scaler.decide(&observe(0, 0, 0, 0)).desired, 1, "initial-scale 1 to become ready");
        assert_eq!(scaler.decide(&observe(2_000, 1, 0, 0)).reason, Reason::IdleGrace);
        assert_eq!(scaler.decide(&observe(6_000, 1, 0, 0)).desired, 0);
    }

    #[test]
    fn concurrency_scales_it_and_a_spike_panics() {
        let mut scaler = Autoscaler::new(knobs(), 1, 0, true);
        load(&mut scaler, 0, 6, 14.0);
        let d = scaler.decide(&observe(6_000, 1, 0, 0));
        assert_eq!((d.desired, d.reason, d.metric_wanted), (5, Reason::Panic, 5), "14 / 2.8 = 5, 5× the ready one");
        assert!(d.panicking);
    }

    proptest! {
        /// Over any trace: within the bounds, never down while panicking, within the rate limits each tick.
        #[test]
        fn invariants_hold_over_any_trace(
            steps in proptest::collection::vec((0.0f64..400.0, 0u32..3, 0u64..20_000), 1..80),
            min in 0u32..3, max in prop_oneof![Just(0u32), 3u32..40],
        ) {
            let knobs = Autoscaling { min_scale: min, max_scale: max, ..knobs() };
            let mut scaler = Autoscaler::new(knobs.clone(), 0, 0, true);
            let mut ready = 0u32;
            let mut previous: Option<Decision> = None;
            for (i, (concurrency, held, events)) in steps.iter().enumerate() {
                let now = (i as u64 + 1) * 2_000;
                scaler.record(now - 1_000, Sample { concurrency: *concurrency, requests: 0, elapsed_ms: 0 });
                scaler.record(now, Sample { concurrency: *concurrency, requests: 0, elapsed_ms: 0 });
                let d = scaler.decide(&observe(now, ready, *held, *events));
                prop_assert!(d.desired >= min, "{d:?}");
                if max > 0 {
                    prop_assert!(d.desired <= max, "{d:?}");
                }
                let from = f64::from(ready.max(1));
                let up_limit = (knobs.max_scale_up_rate * from).ceil() as u32;
                prop_assert!(d.desired <= up_limit.max(min).max(knobs.initial_scale).max(1), "{d:?}");
                let down_limit = (from / knobs.max_scale_down_rate).floor() as u32;
                if max == 0 || down_limit <= max {
                    prop_assert!(d.desired >= down_limit, "{d:?} from {ready}");
                }
                if let Some(p) = &previous
                    && p.panicking
                    && d.panicking
                {
                    let cap = if max > 0 { max } else { u32::MAX };
                    prop_assert!(d.desired >= p.desired.min(cap), "no decrease while panicking: {p:?} → {d:?}");
                }
                if *events > 0 {
                    prop_assert!(d.desired >= 1, "never to zero with backlog: {d:?}");
                }
                // The revision follows the decision at once here (the simulator models start-up time).
                ready = d.desired;
                previous = Some(d);
            }
        }
    }
}
