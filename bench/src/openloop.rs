//! Open-loop load at a fixed offered rate, and the max-throughput probe built on it.
//!
//! Message `i` of a run is due at `start + i / rate` and is sent at its due time whether or not earlier
//! publishes were acknowledged (each publish is its own task). Outstanding publishes are bounded; when the
//! bound is hit the sender waits for a slot, and that wait shows as latency because every latency is measured
//! from the message's INTENDED send time (no coordinated omission). A message the sender could not even send
//! before the run's hard deadline is counted as offered and not acknowledged, never skipped silently.
//!
//! Batching producers (`batch > 1`): messages are grouped in batches of `batch` consecutive ones, and a batch
//! is sent when its last message is due (as a producer that fills a batch before it sends); each message's
//! latency is still measured from its own intended send time. The outstanding bound counts requests.
//!
//! End-to-end latency: each payload carries its sequence number and intended send time
//! ([`crate::driver::payload`]); the subscriber callback ([`Sink::on_message`]) records intended → receive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::driver::{self, OnMessage, System};

/// Sequence numbers carry the run id in their top bits, so late deliveries of an earlier run are not counted.
pub(crate) const RUN_SHIFT: u32 = 40;

/// Offset of message `i` from the start of a run at `rate` messages per second.
pub(crate) fn due_offset(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// How many messages a run of `duration` at `rate` offers.
pub(crate) fn messages_in(rate: f64, duration: Duration) -> u64 {
    (rate * duration.as_secs_f64()).round().max(1.0) as u64
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // microseconds, 1 µs .. 10 min
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Which sequence numbers of the run have arrived: one bit each.
#[derive(Default)]
pub(crate) struct FirstArrivals {
    bits: Vec<u64>,
}

impl FirstArrivals {
    /// Sequence numbers at or past this are not tracked (every arrival counts as a first): 128 MiB of bits.
    pub(crate) const MAX_TRACKED: u64 = 1 << 30;

    /// Whether `seq` arrives for the first time (and notes it).
    pub(crate) fn first(&mut self, seq: u64) -> bool {
        if seq >= Self::MAX_TRACKED {
            return true;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        let first = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        first
    }
}

/// Where the subscriber's deliveries go: counts and intended → receive latency of the current run.
pub(crate) struct Sink {
    run: AtomicU64,
    delivered: AtomicU64,
    /// Every delivery, of any run (a backlog of an earlier run shows here).
    seen: AtomicU64,
    /// The current run's first arrivals (with its latency, under one lock): a redelivery counts once.
    latency: Mutex<(Histogram<u64>, FirstArrivals)>,
}

impl Sink {
    pub(crate) fn new() -> Arc<Sink> {
        Arc::new(Sink {
            run: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            latency: Mutex::new((new_histogram(), FirstArrivals::default())),
        })
    }

    /// The callback to give [`System::subscribe`].
    pub(crate) fn on_message(self: &Arc<Self>) -> OnMessage {
        let sink = self.clone();
        Arc::new(move |payload: &[u8]| sink.record(payload))
    }

    fn record(&self, payload: &[u8]) {
        self.seen.fetch_add(1, Ordering::AcqRel);
        let Some((seq, intended)) = driver::header(payload) else { return };
        if seq >> RUN_SHIFT != self.run.load(Ordering::Acquire) {
            return;
        }
        let micros = unix_ns().saturating_sub(intended) / 1000;
        let mut current = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        // Regression: a redelivery counted as a delivery, and could make up for one missing in the probe's
        // "the subscriber kept up" (≥ 99 % of acknowledged) and in "acked, not delivered".
        if !current.1.first(seq & ((1 << RUN_SHIFT) - 1)) {
            return;
        }
        current.0.saturating_record(micros.max(1));
        self.delivered.fetch_add(1, Ordering::AcqRel);
    }

    /// Waits until no delivery (of any run) arrived for `quiet`, at most `max`: the backlog of an earlier
    /// run must not count against the next one. Answers how long it waited and whether it got quiet.
    pub(crate) async fn drain(&self, quiet: Duration, max: Duration) -> (Duration, bool) {
        let started = Instant::now();
        let mut last_seen = self.seen.load(Ordering::Acquire);
        let mut last_change = Instant::now();
        while started.elapsed() < max {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let seen = self.seen.load(Ordering::Acquire);
            if seen != last_seen {
                (last_seen, last_change) = (seen, Instant::now());
            } else if last_change.elapsed() >= quiet {
                return (started.elapsed(), true);
            }
        }
        (started.elapsed(), false)
    }

    fn begin(&self, run: u64) {
        *self.latency.lock().unwrap_or_else(PoisonError::into_inner) = (new_histogram(), FirstArrivals::default());
        self.delivered.store(0, Ordering::Release);
        self.run.store(run, Ordering::Release);
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    fn latency(&self) -> Histogram<u64> {
        self.latency.lock().unwrap_or_else(PoisonError::into_inner).0.clone()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct RunConfig {
    pub rate: f64,
    pub duration: Duration,
    pub payload_bytes: usize,
    /// Bound on publishes in flight; hitting it delays sends (seen as latency), never drops them.
    pub max_outstanding: usize,
    /// After the last due time, how long acks (and deliveries) still count for this run.
    pub grace: Duration,
    /// Messages per publish request ([`System::publish_batch`] when > 1).
    pub batch: usize,
}

pub(crate) struct RunResult {
    pub offered: u64,
    /// Acknowledged before the end of the run plus the grace.
    pub acked: u64,
    pub errors: u64,
    /// Offered but never sent before the run's deadline (the outstanding bound held them back).
    pub unsent: u64,
    /// Intended send time → ack, µs.
    pub ack_latency: Histogram<u64>,
    /// Per request, µs: its send time (its last message's intended send time) → the load generator starting
    /// it, the generator's own lag (a timer fired late, a core busy elsewhere in this process).
    pub send_lag: Histogram<u64>,
    /// Per request, µs: started → its response read (the client, the network and the system under test).
    pub request_latency: Histogram<u64>,
    /// Delivered to the subscriber within the run plus the grace (if a sink was given).
    pub delivered: Option<u64>,
    /// Intended send time → received by the subscriber, µs.
    pub e2e_latency: Option<Histogram<u64>>,
}

static RUNS: AtomicU64 = AtomicU64::new(1);

/// One open-loop run against `system`. With `sink`, the system must already be subscribed with
/// `sink.on_message()`; deliveries of this run are counted and timed.
pub(crate) async fn run(system: Arc<dyn System>, config: &RunConfig, sink: Option<&Arc<Sink>>) -> Result<RunResult> {
    let run_id = RUNS.fetch_add(1, Ordering::Relaxed);
    if let Some(sink) = sink {
        sink.begin(run_id);
    }
    let total = messages_in(config.rate, config.duration);
    let ack_latency = Arc::new(Mutex::new(new_histogram()));
    let request_split = Arc::new(Mutex::new((new_histogram(), new_histogram())));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(config.max_outstanding.max(1)));
    let start = Instant::now();
    let start_unix = unix_ns();
    let deadline = start + config.duration + config.grace;
    let mut tasks = JoinSet::new();
    let mut sent = 0u64;
    let batch = config.batch.max(1) as u64;
    while sent < total {
        let first = sent;
        let count = batch.min(total - first);
        let offsets: Vec<Duration> = (first..first + count).map(|i| due_offset(i, config.rate)).collect();
        let sent_at = start + offsets[offsets.len() - 1];
        tokio::time::sleep_until(sent_at.into()).await;
        let permit = match tokio::time::timeout_at(deadline.into(), slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => break,
        };
        let mut payloads: Vec<bytes::Bytes> = (first..first + count)
            .zip(&offsets)
            .map(|(i, offset)| {
                let seq = (run_id << RUN_SHIFT) | i;
                driver::payload(seq, start_unix + offset.as_nanos() as u64, config.payload_bytes)
            })
            .collect();
        let dues: Vec<Instant> = offsets.iter().map(|offset| start + *offset).collect();
        let (system, ack_latency, acked, errors) = (system.clone(), ack_latency.clone(), acked.clone(), errors.clone());
        let request_split = request_split.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let outcome = match payloads.len() {
                1 => system.publish(payloads.remove(0)).await,
                _ => system.publish_batch(payloads).await,
            };
            drop(permit);
            match outcome {
                Ok(()) if Instant::now() <= deadline => {
                    {
                        let mut split = request_split.lock().unwrap_or_else(PoisonError::into_inner);
                        split
                            .0
                            .saturating_record((started.saturating_duration_since(sent_at).as_micros() as u64).max(1));
                        split.1.saturating_record((started.elapsed().as_micros() as u64).max(1));
                    }
                    let mut histogram = ack_latency.lock().unwrap_or_else(PoisonError::into_inner);
                    for due in &dues {
                        histogram.saturating_record((due.elapsed().as_micros() as u64).max(1));
                    }
                    acked.fetch_add(dues.len() as u64, Ordering::AcqRel);
                }
                Ok(()) => {}
                Err(_) => {
                    errors.fetch_add(dues.len() as u64, Ordering::AcqRel);
                }
            }
        });
        sent += count;
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    // Wait for the outstanding publishes until the deadline; the rest count as not acknowledged.
    let _ = tokio::time::timeout_at(deadline.into(), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    if let Some(sink) = sink {
        // Deliveries also get the grace (the deadline is already past, unless every ack came early).
        let wanted = acked.load(Ordering::Acquire);
        while Instant::now() < deadline && sink.delivered() < wanted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let ack_latency = ack_latency.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let (send_lag, request_latency) = request_split.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok(RunResult {
        offered: total,
        acked: acked.load(Ordering::Acquire),
        errors: errors.load(Ordering::Acquire),
        unsent: total - sent,
        ack_latency,
        send_lag,
        request_latency,
        delivered: sink.map(|s| s.delivered()),
        e2e_latency: sink.map(|s| s.latency()),
    })
}

/// The probe's rule for one step: at least 99 % of the offered messages acknowledged within the step (plus
/// the grace), and — with a subscriber — the subscriber kept up (delivered ≥ 99 % of acknowledged).
pub(crate) fn step_passes(offered: u64, acked: u64, delivered: Option<u64>) -> bool {
    let enough_acked = acked as f64 >= 0.99 * offered as f64;
    let kept_up = delivered.is_none_or(|d| d as f64 >= 0.99 * acked as f64);
    offered > 0 && enough_acked && kept_up
}

#[derive(Clone, Debug)]
pub(crate) struct ProbeConfig {
    pub start_rate: f64,
    pub factor: f64,
    pub max_steps: usize,
    pub step: Duration,
    pub grace: Duration,
    /// No new step starts after this much time.
    pub budget: Duration,
    pub payload_bytes: usize,
    pub max_outstanding: usize,
    /// Messages per publish request.
    pub batch: usize,
    /// Steps after the first failure, each halving (geometrically) the interval between the highest pass and
    /// the lowest failure: the verdict is then within `factor^(1/2^refine_steps)` of the true max.
    pub refine_steps: usize,
}

/// The ladder the probe climbs: `start × factor^k` for `k < max_steps`.
pub(crate) fn probe_rates(config: &ProbeConfig) -> Vec<f64> {
    (0..config.max_steps).map(|k| config.start_rate * config.factor.powi(k as i32)).collect()
}

/// The rate of the probe's next step after `steps` (rate, passed), or `None` when it is done: up the ladder
/// until a step fails, then `refine_steps` steps at the geometric middle of the highest pass below the lowest
/// failure and that failure. Nothing to refine when the first step failed.
pub(crate) fn next_probe_rate(config: &ProbeConfig, steps: &[(f64, bool)]) -> Option<f64> {
    let Some(first_failure) = steps.iter().position(|(_, passed)| !passed) else {
        return probe_rates(config).get(steps.len()).copied();
    };
    if steps.len() - first_failure > config.refine_steps {
        return None;
    }
    let lowest_failure = lowest_failure(steps)?;
    let highest_pass = probe_verdict(steps)?;
    Some((highest_pass * lowest_failure).sqrt())
}

fn lowest_failure(steps: &[(f64, bool)]) -> Option<f64> {
    steps.iter().filter(|(_, passed)| !passed).map(|(rate, _)| *rate).reduce(f64::min)
}

/// The max: the highest passing rate below every failing one (a pass above a failure is noise, not a max).
pub(crate) fn probe_verdict(steps: &[(f64, bool)]) -> Option<f64> {
    let ceiling = lowest_failure(steps).unwrap_or(f64::INFINITY);
    steps.iter().filter(|(rate, passed)| *passed && *rate < ceiling).map(|(rate, _)| *rate).reduce(f64::max)
}

pub(crate) struct ProbeStep {
    pub rate: f64,
    pub passed: bool,
    pub result: RunResult,
    /// CPU time the system's processes used during the step (publish, acknowledgement and delivery).
    pub cpu_us: Option<u64>,
}

impl ProbeStep {
    /// CPU µs per acknowledged message of the step.
    pub(crate) fn cpu_us_per_message(&self) -> Option<f64> {
        self.cpu_us.filter(|_| self.result.acked > 0).map(|us| us as f64 / self.result.acked as f64)
    }
}

pub(crate) struct ProbeResult {
    /// Highest rate that passed; `None` if even the first step failed.
    pub max_rate: Option<f64>,
    pub steps: Vec<ProbeStep>,
    /// True if the probe ran out of steps or budget before a step failed (the max may be higher).
    pub capped: bool,
}

/// Steps the offered rate up until a step fails [`step_passes`], the steps run out, or the budget is spent,
/// then narrows the max down ([`next_probe_rate`]).
pub(crate) async fn probe(
    system: Arc<dyn System>,
    config: &ProbeConfig,
    sink: Option<&Arc<Sink>>,
) -> Result<ProbeResult> {
    let started = Instant::now();
    let mut steps: Vec<ProbeStep> = Vec::new();
    let mut capped = true;
    let history = |steps: &[ProbeStep]| steps.iter().map(|s| (s.rate, s.passed)).collect::<Vec<_>>();
    while let Some(rate) = next_probe_rate(config, &history(&steps)) {
        if started.elapsed() >= config.budget {
            break;
        }
        let run_config = RunConfig {
            rate,
            duration: config.step,
            payload_bytes: config.payload_bytes,
            max_outstanding: config.max_outstanding,
            grace: config.grace,
            batch: config.batch,
        };
        let cpu_before_us = system.cpu_us();
        let result = run(system.clone(), &run_config, sink).await?;
        let cpu_us = system.cpu_us().zip(cpu_before_us).map(|(after, before)| after.saturating_sub(before));
        let passed = step_passes(result.offered, result.acked, result.delivered);
        steps.push(ProbeStep { rate, passed, result, cpu_us });
        if !passed {
            capped = false;
        }
        // Let a backlog of this step drain before the next one.
        match sink {
            Some(sink) => {
                sink.drain(Duration::from_millis(300), Duration::from_secs(10)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let verdict = probe_verdict(&history(&steps));
    Ok(ProbeResult { max_rate: verdict, steps, capped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_fixed_by_the_rate() {
        assert_eq!(due_offset(0, 100.0), Duration::ZERO);
        assert_eq!(due_offset(1, 100.0), Duration::from_millis(10));
        assert_eq!(due_offset(250, 100.0), Duration::from_millis(2500));
        assert_eq!(messages_in(100.0, Duration::from_secs(5)), 500);
        assert_eq!(messages_in(0.1, Duration::from_secs(1)), 1);
    }

    #[test]
    fn step_rule() {
        assert!(step_passes(1000, 1000, None));
        assert!(step_passes(1000, 990, Some(990)));
        assert!(!step_passes(1000, 989, None), "fewer than 99 % acked");
        assert!(!step_passes(1000, 1000, Some(980)), "subscriber fell behind");
        assert!(!step_passes(0, 0, None));
    }

    /// 100, 150, 225, 337.5 events/s, then two refining steps.
    fn ladder_of_four() -> ProbeConfig {
        ProbeConfig {
            start_rate: 100.0,
            factor: 1.5,
            max_steps: 4,
            step: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            budget: Duration::from_secs(60),
            payload_bytes: 16,
            max_outstanding: 8,
            batch: 1,
            refine_steps: 2,
        }
    }

    #[test]
    fn probe_rates_and_verdict() {
        let config = ladder_of_four();
        assert_eq!(probe_rates(&config), vec![100.0, 150.0, 225.0, 337.5]);
        assert_eq!(probe_verdict(&[]), None);
        assert_eq!(probe_verdict(&[(100.0, false)]), None);
        assert_eq!(probe_verdict(&[(100.0, true), (150.0, true), (225.0, false)]), Some(150.0));
        assert_eq!(probe_verdict(&[(100.0, true), (150.0, false), (225.0, true)]), Some(100.0));
        assert_eq!(probe_verdict(&[(100.0, true), (150.0, false), (122.0, true), (135.0, false)]), Some(122.0));
    }

    #[test]
    fn the_probe_climbs_then_narrows_the_max_down() {
        let config = ladder_of_four();
        // (steps so far, the next rate); the true max here is 160.
        let mid = |a: f64, b: f64| (a * b).sqrt();
        type Steps = Vec<(f64, bool)>;
        let cases: Vec<(Steps, Option<f64>)> = vec![
            (vec![], Some(100.0)),
            (vec![(100.0, true)], Some(150.0)),
            (vec![(100.0, true), (150.0, true)], Some(225.0)),
            (vec![(100.0, true), (150.0, true), (225.0, false)], Some(mid(150.0, 225.0))),
            (
                vec![(100.0, true), (150.0, true), (225.0, false), (mid(150.0, 225.0), false)],
                Some(mid(150.0, mid(150.0, 225.0))),
            ),
            (vec![(100.0, true), (150.0, true), (225.0, false), (183.7, false), (166.0, false)], None),
            (vec![(100.0, false)], None),
            (vec![(100.0, true), (150.0, true), (225.0, true), (337.5, true)], None),
        ];
        for (steps, expected) in cases {
            let next = next_probe_rate(&config, &steps);
            match (next, expected) {
                (Some(got), Some(want)) => assert!((got - want).abs() < 1e-9, "{steps:?}: {got} ≠ {want}"),
                (got, want) => assert_eq!(got, want, "{steps:?}"),
            }
        }
        let no_refining = ProbeConfig { refine_steps: 0, ..config };
        assert_eq!(next_probe_rate(&no_refining, &[(100.0, true), (150.0, false)]), None);
    }

    /// Acknowledges at once, and remembers how many messages each request carried.
    #[derive(Default)]
    struct Recorder {
        requests: Mutex<Vec<usize>>,
    }

    impl System for Recorder {
        fn name(&self) -> String {
            "recorder".into()
        }
        fn durability(&self) -> String {
            "none".into()
        }
        fn publish(&self, _payload: bytes::Bytes) -> driver::BoxFuture<'_, Result<()>> {
            self.requests.lock().unwrap_or_else(PoisonError::into_inner).push(1);
            Box::pin(async { Ok(()) })
        }
        fn publish_batch(&self, payloads: Vec<bytes::Bytes>) -> driver::BoxFuture<'_, Result<()>> {
            self.requests.lock().unwrap_or_else(PoisonError::into_inner).push(payloads.len());
            Box::pin(async { Ok(()) })
        }
        fn cpu_us(&self) -> Option<u64> {
            None
        }
        fn subscribe(&self, _on_message: OnMessage) -> driver::BoxFuture<'_, Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn stop(&mut self) -> driver::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn a_batching_run_groups_consecutive_messages_and_acks_each_one() {
        let recorder = Arc::new(Recorder::default());
        let config = RunConfig {
            rate: 1000.0,
            duration: Duration::from_millis(10),
            payload_bytes: 32,
            max_outstanding: 4,
            grace: Duration::from_secs(1),
            batch: 4,
        };
        let result = run(recorder.clone(), &config, None).await.expect("run");
        assert_eq!((result.offered, result.acked, result.unsent, result.errors), (10, 10, 0, 0));
        assert_eq!(result.ack_latency.len(), 10, "one latency per message, not per request");
        assert_eq!(*recorder.requests.lock().unwrap_or_else(PoisonError::into_inner), vec![4, 4, 2]);

        let single = RunConfig { batch: 1, ..config };
        let recorder = Arc::new(Recorder::default());
        let result = run(recorder.clone(), &single, None).await.expect("run");
        assert_eq!(result.acked, 10);
        assert_eq!(*recorder.requests.lock().unwrap_or_else(PoisonError::into_inner), vec![1; 10]);
    }

    #[test]
    fn only_an_events_first_arrival_counts() {
        let mut arrivals = FirstArrivals::default();
        let firsts: Vec<bool> = [0, 63, 64, 0, 1_000, 64, 1_000, 1].iter().map(|seq| arrivals.first(*seq)).collect();
        assert_eq!(firsts, [true, true, true, false, true, false, false, true]);
        // Past the tracked range every arrival counts (no unbounded bitmap).
        assert!(arrivals.first(FirstArrivals::MAX_TRACKED));
        assert!(arrivals.first(FirstArrivals::MAX_TRACKED));
        assert_eq!(arrivals.bits.len(), 1_000 / 64 + 1);
    }

    #[test]
    fn sink_counts_only_the_current_run() {
        let sink = Sink::new();
        sink.begin(3);
        let on_message = sink.on_message();
        on_message(&driver::payload((3 << RUN_SHIFT) | 7, unix_ns(), 64));
        on_message(&driver::payload((2 << RUN_SHIFT) | 7, unix_ns(), 64));
        on_message(b"short");
        // A redelivery of the same message counts once.
        on_message(&driver::payload((3 << RUN_SHIFT) | 7, unix_ns(), 64));
        assert_eq!(sink.delivered(), 1);
        assert_eq!(sink.latency().len(), 1);
        on_message(&driver::payload((3 << RUN_SHIFT) | 8, unix_ns(), 64));
        assert_eq!(sink.delivered(), 2);
    }
}
