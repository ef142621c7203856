//! A deterministic simulator: load traces replayed, in virtual time, against a model revision (a service time
//! per request, `containerConcurrency`, a cold-start delay) under the real [`Autoscaler`], with the dispatcher
//! either following the revision's ready capacity (Sluice) or pushing a fixed in-flight window (a Knative
//! Kafka dispatcher in front of the activator).
//!
//! What flows in: the revision's knobs, a [`Model`], a [`Trace`], a [`Mode`] and a seed. What flows out: a
//! [`Score`]: time to drain, event ages, 5xx, instance-seconds, peak instances, the instance count at the end.
//! Same inputs, same score: the randomness (arrivals, service times, cold starts) comes from the seed.

use std::collections::VecDeque;

use sluice_controller::serving::autoscaling::Autoscaling;

use crate::decision::{Autoscaler, Backlog, Observation, Sample};

/// Which signals decide, and how the dispatcher pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Knative's KPA: concurrency only; the dispatcher pushes a fixed window into the activator.
    ConcurrencyOnly,
    /// KEDA-like: the backlog only; the dispatcher follows ready capacity.
    BacklogOnly,
    /// Sluice: one decision over both; the dispatcher follows ready capacity.
    Coupled,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::ConcurrencyOnly, Mode::BacklogOnly, Mode::Coupled];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ConcurrencyOnly => "concurrency only (KPA)",
            Mode::BacklogOnly => "backlog only (KEDA-like)",
            Mode::Coupled => "coupled (Sluice)",
        }
    }
}

/// The revision and the dispatcher in front of it.
#[derive(Clone, Debug)]
pub struct Model {
    pub service_ms: u64,
    /// Service times vary uniformly by ± this percentage.
    pub service_jitter_pct: u64,
    pub cold_start_ms: u64,
    pub container_concurrency: u32,
    /// The fixed in-flight window of [`Mode::ConcurrencyOnly`] (Sluice's default `max-inflight`).
    pub dispatcher_inflight: usize,
    /// A held request is answered 503, never sent (and retried from the log), after this long.
    pub request_timeout_ms: u64,
    /// The activator's queue; beyond it requests are answered 503 (and retried).
    pub queue_limit: usize,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            service_ms: 50,
            service_jitter_pct: 20,
            cold_start_ms: 500,
            container_concurrency: 4,
            dispatcher_inflight: 100,
            request_timeout_ms: 300_000,
            queue_limit: 10_000,
        }
    }
}

/// Events per second over time, or a burst.
#[derive(Clone, Debug)]
pub enum Trace {
    /// `before` events/s, then `after` from `at_ms`.
    Step { before: f64, after: f64, at_ms: u64, duration_ms: u64 },
    /// `base`, with `peak` between `from_ms` and `to_ms`.
    Spike { base: f64, peak: f64, from_ms: u64, to_ms: u64, duration_ms: u64 },
    /// `mean ± amplitude` over `period_ms`.
    Sine { mean: f64, amplitude: f64, period_ms: u64, duration_ms: u64 },
    /// `events` at once at `at_ms`.
    Burst { events: u64, at_ms: u64, duration_ms: u64 },
}

impl Trace {
    pub fn name(&self) -> String {
        match self {
            Trace::Step { before, after, .. } => format!("step {before}→{after}/s"),
            Trace::Spike { base, peak, from_ms, to_ms, .. } => {
                format!("spike {base}→{peak}/s for {} s", to_ms.saturating_sub(*from_ms) / 1000)
            }
            Trace::Sine { mean, amplitude, period_ms, .. } => {
                format!("sine {mean}±{amplitude}/s, {} s period", period_ms / 1000)
            }
            Trace::Burst { events, .. } => format!("burst of {events}"),
        }
    }

    pub fn duration_ms(&self) -> u64 {
        match self {
            Trace::Step { duration_ms, .. }
            | Trace::Spike { duration_ms, .. }
            | Trace::Sine { duration_ms, .. }
            | Trace::Burst { duration_ms, .. } => *duration_ms,
        }
    }

    /// Events per second at `now_ms` (0 for a burst, which comes at once).
    pub fn rate_at(&self, now_ms: u64) -> f64 {
        match self {
            Trace::Burst { .. } => 0.0,
            _ => self.expected(now_ms, 1_000),
        }
    }

    /// Events expected in `[now, now + step)`.
    fn expected(&self, now_ms: u64, step_ms: u64) -> f64 {
        let per_s = match self {
            Trace::Step { before, after, at_ms, .. } => {
                if now_ms < *at_ms {
                    *before
                } else {
                    *after
                }
            }
            Trace::Spike { base, peak, from_ms, to_ms, .. } => {
                if (*from_ms..*to_ms).contains(&now_ms) {
                    *peak
                } else {
                    *base
                }
            }
            Trace::Sine { mean, amplitude, period_ms, .. } => {
                let phase = now_ms as f64 / *period_ms as f64 * std::f64::consts::TAU;
                (mean + amplitude * phase.sin()).max(0.0)
            }
            Trace::Burst { events, at_ms, .. } => {
                return if (*at_ms..*at_ms + step_ms).contains(&now_ms) { *events as f64 } else { 0.0 };
            }
        };
        per_s * step_ms as f64 / 1000.0
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Score {
    pub delivered: u64,
    /// From the first event to the last delivery, when every event was delivered.
    pub drain_ms: Option<u64>,
    pub max_event_age_ms: u64,
    pub p99_event_age_ms: u64,
    pub errors_5xx: u64,
    pub instance_seconds: f64,
    pub peak_instances: u32,
    pub final_instances: u32,
}

/// xorshift64*: small, seeded, and enough for arrivals and jitter.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `base ± pct %`, uniformly.
    fn around(&mut self, base: u64, pct: u64) -> u64 {
        let jitter = base * pct / 100;
        base - jitter + (self.next_f64() * (2 * jitter + 1) as f64) as u64
    }
}

#[derive(Debug)]
struct Instance {
    ready_at_ms: u64,
    draining: bool,
    /// (finish time, arrival time) of each request it serves.
    busy: Vec<(u64, u64)>,
}

/// Virtual time advances in steps of this.
const STEP_MS: u64 = 5;

/// Runs `trace` and scores it.
pub fn simulate(knobs: &Autoscaling, model: &Model, trace: &Trace, mode: Mode, seed: u64) -> Score {
    let mut rng = Rng(seed.max(1));
    let mut scaler = Autoscaler::new(knobs.clone(), 0, 0, true);
    let cc = model.container_concurrency as usize;
    let mut log: VecDeque<u64> = VecDeque::new();
    // Requests held at the gate: (held since, arrival).
    let mut held: VecDeque<(u64, u64)> = VecDeque::new();
    let mut instances: Vec<Instance> = Vec::new();
    let mut ages: Vec<u64> = Vec::new();
    let mut score = Score::default();
    let mut first_arrival: Option<u64> = None;
    let mut last_delivery = 0u64;
    let mut arrivals = 0u64;
    let mut bucket_concurrency = 0.0;
    let mut bucket_requests = 0u64;
    let mut next_tick = knobs.tick_ms;
    let mut desired = 0u32;
    let mut now = 0u64;
    while now < trace.duration_ms() {
        // Arrivals.
        let expected = trace.expected(now, STEP_MS);
        let mut count = expected.floor() as u64;
        if rng.next_f64() < expected.fract() {
            count += 1;
        }
        log.extend(std::iter::repeat_n(now, count as usize));
        arrivals += count;
        if count > 0 {
            first_arrival.get_or_insert(now);
        }
        // Completions.
        for instance in &mut instances {
            instance.busy.retain(|(finish, arrival)| {
                if *finish > now {
                    return true;
                }
                ages.push(now - arrival);
                score.delivered += 1;
                last_delivery = now;
                false
            });
        }
        instances.retain(|i| !(i.draining && i.busy.is_empty()));
        // Held requests time out and go back to the log (the dispatcher retries them).
        while held.front().is_some_and(|(since, _)| now - since >= model.request_timeout_ms) {
            if let Some((_, arrival)) = held.pop_front() {
                score.errors_5xx += 1;
                log.push_back(arrival);
            }
        }
        // The gate hands held requests to instances with room, then the dispatcher pushes.
        let serve = |arrival: u64, instances: &mut Vec<Instance>, rng: &mut Rng| -> bool {
            let room = |i: &&mut Instance| i.ready_at_ms <= now && !i.draining && (cc == 0 || i.busy.len() < cc);
            let Some(instance) = instances.iter_mut().filter(room).min_by_key(|i| i.busy.len()) else {
                return false;
            };
            let service = rng.around(model.service_ms, model.service_jitter_pct).max(1);
            instance.busy.push((now + service, arrival));
            true
        };
        while let Some((_, arrival)) = held.front().copied() {
            if !serve(arrival, &mut instances, &mut rng) {
                break;
            }
            held.pop_front();
        }
        let in_flight: usize = instances.iter().map(|i| i.busy.len()).sum::<usize>() + held.len();
        let ready_capacity = instances.iter().filter(|i| i.ready_at_ms <= now && !i.draining).count() * cc;
        let window = match mode {
            Mode::BacklogOnly | Mode::Coupled if cc > 0 => ready_capacity,
            _ => model.dispatcher_inflight,
        };
        let mut pushing = in_flight;
        while pushing < window {
            let Some(arrival) = log.pop_front() else { break };
            pushing += 1;
            // Each push reaches the gate, served, held or turned away: a request arrives (what `rps` counts).
            bucket_requests += 1;
            if !serve(arrival, &mut instances, &mut rng) {
                if held.len() >= model.queue_limit {
                    score.errors_5xx += 1;
                    log.push_back(arrival);
                    break;
                }
                held.push_back((now, arrival));
            }
        }
        // Metrics: the level over this step; a bucket closes at its end.
        let level = instances.iter().map(|i| i.busy.len()).sum::<usize>() + held.len();
        bucket_concurrency += level as f64 * STEP_MS as f64;
        let alive = instances.len() as u32;
        score.instance_seconds += f64::from(alive) * STEP_MS as f64 / 1000.0;
        score.peak_instances = score.peak_instances.max(alive);
        now += STEP_MS;
        if now.is_multiple_of(knobs.bucket_ms) {
            let (concurrency, requests) = match mode {
                Mode::BacklogOnly => (0.0, 0),
                _ => (bucket_concurrency / knobs.bucket_ms as f64, bucket_requests),
            };
            scaler.record(now, Sample { concurrency, requests, elapsed_ms: 0 });
            bucket_concurrency = 0.0;
            bucket_requests = 0;
        }
        // Decide at each tick, or at once when a revision at zero is asked for.
        let running = instances.iter().filter(|i| !i.draining).count() as u32;
        let backlog =
            Backlog { events: if mode == Mode::ConcurrencyOnly { 0 } else { log.len() as u64 }, ordered_keys: None };
        let woken = running == 0 && desired == 0 && scaler.wakes(held.len() as u32, backlog);
        if now < next_tick && !woken {
            continue;
        }
        if now >= next_tick {
            next_tick += knobs.tick_ms;
        }
        let observation = Observation {
            now_ms: now,
            wall_ms: now,
            ready: instances.iter().filter(|i| !i.draining && i.ready_at_ms <= now).count() as u32,
            instances: running,
            held: held.len() as u32,
            backlog,
        };
        desired = scaler.decide(&observation).desired;
        let mut active = running;
        while active < desired {
            let ready_at_ms = now + rng.around(model.cold_start_ms, 20);
            instances.push(Instance { ready_at_ms, draining: false, busy: Vec::new() });
            active += 1;
        }
        while active > desired {
            // Instances still starting go first, then the least busy; each finishes what it has.
            let victim = instances
                .iter_mut()
                .filter(|i| !i.draining)
                .max_by_key(|i| (i.ready_at_ms > now, std::cmp::Reverse(i.busy.len())));
            match victim {
                Some(instance) => instance.draining = true,
                None => break,
            }
            active -= 1;
        }
        instances.retain(|i| !(i.draining && i.busy.is_empty()));
    }
    if score.delivered == arrivals && log.is_empty() && held.is_empty() {
        score.drain_ms = first_arrival.map(|first| last_delivery.saturating_sub(first));
    }
    ages.sort_unstable();
    score.max_event_age_ms = ages.last().copied().unwrap_or(0);
    score.p99_event_age_ms = ages.get(ages.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0);
    score.final_instances = instances.iter().filter(|i| !i.draining).count() as u32;
    score
}

#[cfg(test)]
mod tests {
    use sluice_controller::serving::autoscaling::AutoscalerDefaults;

    use super::*;

    fn knobs() -> Autoscaling {
        let defaults =
            AutoscalerDefaults::from_pairs(["stable-window=6s", "scale-to-zero-grace-period=2s"]).expect("valid");
        Autoscaling::from_defaults(&defaults, 4)
    }

    const BURST: Trace = Trace::Burst { events: 2_000, at_ms: 1_000, duration_ms: 40_000 };

    #[test]
    fn the_same_seed_gives_the_same_score() {
        let a = simulate(&knobs(), &Model::default(), &BURST, Mode::Coupled, 7);
        let b = simulate(&knobs(), &Model::default(), &BURST, Mode::Coupled, 7);
        assert_eq!(a, b);
        let c = simulate(&knobs(), &Model::default(), &BURST, Mode::Coupled, 8);
        assert_ne!(a, c, "the seed matters");
    }

    #[test]
    fn the_coupled_decision_drains_a_burst_faster_without_errors_and_returns_to_zero() {
        let coupled = simulate(&knobs(), &Model::default(), &BURST, Mode::Coupled, 1);
        let kpa = simulate(&knobs(), &Model::default(), &BURST, Mode::ConcurrencyOnly, 1);
        assert_eq!(coupled.delivered, 2_000, "{coupled:?}");
        assert_eq!(coupled.errors_5xx, 0, "{coupled:?}");
        assert_eq!(coupled.final_instances, 0, "back at zero: {coupled:?}");
        let (fast, slow) = (coupled.drain_ms.expect("drained"), kpa.drain_ms.expect("drained"));
        assert!(fast < slow, "coupled {coupled:?} vs concurrency-only {kpa:?}");
    }

    /// (Its name promised an end at zero that it never checked, with traffic running to the trace's end; the
    /// last trace now goes quiet for 20 s, past the stable window and the grace period.)
    #[test]
    fn steady_traffic_is_served_and_a_revision_left_quiet_ends_at_zero() {
        for (trace, quiet_at_the_end) in [
            (Trace::Step { before: 0.0, after: 200.0, at_ms: 1_000, duration_ms: 20_000 }, false),
            (Trace::Spike { base: 20.0, peak: 400.0, from_ms: 5_000, to_ms: 8_000, duration_ms: 20_000 }, false),
            (Trace::Sine { mean: 100.0, amplitude: 90.0, period_ms: 10_000, duration_ms: 20_000 }, false),
            (Trace::Step { before: 200.0, after: 0.0, at_ms: 10_000, duration_ms: 30_000 }, true),
        ] {
            let score = simulate(&knobs(), &Model::default(), &trace, Mode::Coupled, 3);
            assert_eq!(score.errors_5xx, 0, "{}: {score:?}", trace.name());
            assert!(score.delivered > 0, "{}: {score:?}", trace.name());
            assert!(score.max_event_age_ms < 5_000, "{}: {score:?}", trace.name());
            if quiet_at_the_end {
                assert_eq!(score.final_instances, 0, "{}: {score:?}", trace.name());
            } else {
                assert!(score.final_instances > 0, "still serving as the trace ends: {}: {score:?}", trace.name());
            }
        }
    }
}
