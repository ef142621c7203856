//! `--mode compare`: Sluice side by side with NATS JetStream, RabbitMQ quorum queues and the machine's limits
//! (bare HTTP ceiling, fsync calibration). One system runs at a time; each is stopped before the next starts.
//!
//! Per system: (a)+(d) the max-throughput probe (publish → ack, with the subscriber attached and required to
//! keep up) for each payload size; (a)+(b) open-loop runs at fixed rates — a common rate every system runs,
//! and 25 % / 50 % of the system's own probed max at 1 KiB — recording intended → ack and intended → delivery
//! latency; (a') the probe again with producers that batch (Sluice's `application/cloudevents-batch+json`,
//! NATS async publishes, RabbitMQ confirms awaited after the whole batch) and, open loop, at 50 % of that max in
//! the same batches (each event's latency from its own intended send time, so waiting for its batch to fill
//! counts); (c) for Sluice, the probe and the
//! common-rate run again with 1,000 Triggers of which one matches. Each probe step also records the CPU time
//! the system's processes used (publish, acknowledgement and delivery to the subscriber) per acked event.
//! Sluice runs twice per cluster size: `sluice-N` pushes one event per request to its subscriber (Knative's
//! contract), `sluice-N-batched-delivery` lets the subscriber take up to 64 per request, as the peers' consumers
//! take many messages per read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::calibrate;
use crate::driver::System;
use crate::openloop::{self, ProbeConfig, RunConfig, Sink};
use crate::systems::{DELIVERY_BATCH, HttpCeiling, SluiceHttp};

pub(crate) struct CompareConfig {
    pub smoke: bool,
    pub seconds_per_step: f64,
    pub json_out: Option<PathBuf>,
    /// Only these systems (labels such as `sluice-1`, `nats-jetstream-3`); all when empty.
    pub only: Vec<String>,
}

struct Plan {
    probe: ProbeConfig,
    payloads: Vec<usize>,
    fixed_seconds: f64,
    common_rate: f64,
    own_fractions: Vec<f64>,
    /// Fractions of the batching producers' own max at which they run again at a fixed rate, in batches.
    own_batched_fractions: Vec<f64>,
    fanout_triggers: usize,
    per_system_budget: Duration,
    fsync_seconds: f64,
    partitions: u32,
    /// The batching producers' probe: messages per request, requests in flight, first rate, steps.
    batch: usize,
    batch_outstanding: usize,
    batch_start_rate: f64,
    batch_max_steps: usize,
}

impl Plan {
    fn new(config: &CompareConfig) -> Plan {
        if config.smoke {
            return Plan {
                probe: ProbeConfig {
                    start_rate: 20.0,
                    factor: 1.5,
                    max_steps: 2,
                    step: Duration::from_secs_f64(config.seconds_per_step.min(1.0)),
                    grace: Duration::from_millis(500),
                    budget: Duration::from_secs(5),
                    payload_bytes: 1024,
                    max_outstanding: 64,
                    batch: 1,
                    refine_steps: 0,
                },
                payloads: vec![1024],
                fixed_seconds: 1.0,
                common_rate: 20.0,
                own_fractions: vec![],
                own_batched_fractions: vec![],
                fanout_triggers: 0,
                per_system_budget: Duration::from_secs(60),
                fsync_seconds: 0.2,
                partitions: 1,
                batch: 4,
                batch_outstanding: 8,
                batch_start_rate: 20.0,
                batch_max_steps: 2,
            };
        }
        Plan {
            probe: ProbeConfig {
                start_rate: 250.0,
                factor: 1.5,
                max_steps: 14,
                step: Duration::from_secs_f64(config.seconds_per_step),
                grace: Duration::from_secs(1),
                budget: Duration::from_secs_f64(config.seconds_per_step * 20.0),
                payload_bytes: 1024,
                max_outstanding: 512,
                batch: 1,
                refine_steps: 2,
            },
            payloads: vec![128, 1024, 65536],
            fixed_seconds: 10.0,
            common_rate: 500.0,
            own_fractions: vec![0.25, 0.5],
            own_batched_fractions: vec![0.5],
            fanout_triggers: 1000,
            per_system_budget: Duration::from_secs(15 * 60),
            fsync_seconds: 3.0,
            partitions: 2,
            batch: 64,
            batch_outstanding: 64,
            batch_start_rate: 1000.0,
            batch_max_steps: 15,
        }
    }
}

#[derive(Clone, Debug)]
struct Row {
    scenario: String,
    system: String,
    durability: String,
    /// Events/s for throughput rows; p99 ms for latency rows.
    value: Option<f64>,
    figure: String,
    higher_is_better: bool,
    detail: Value,
}

/// A started system, and the Sluice handle when it is Sluice (for the fan-out scenario).
type Started = (Arc<dyn System>, Option<Arc<SluiceHttp>>);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Candidate {
    Sluice(u64),
    /// Sluice whose subscriber takes batched delivery (`sluice.dev/delivery-batch-max-events`).
    SluiceBatchedDelivery(u64),
    Ceiling,
    Nats,
    Rabbit,
}

impl Candidate {
    fn label(self) -> String {
        match self {
            Candidate::Sluice(n) => format!("sluice-{n}"),
            Candidate::SluiceBatchedDelivery(n) => format!("sluice-{n}-batched-delivery"),
            Candidate::Ceiling => "http-ceiling".into(),
            Candidate::Nats => "nats-jetstream-3".into(),
            Candidate::Rabbit => "rabbitmq-quorum-3".into(),
        }
    }
}

/// What starting a peer needs: its binary, and the driver in `bench/src/peers/`.
fn peer_available(candidate: Candidate) -> Result<(), String> {
    let binary = match candidate {
        Candidate::Nats => "/usr/sbin/nats-server",
        Candidate::Rabbit => "/usr/sbin/rabbitmq-server",
        _ => return Ok(()),
    };
    if !std::path::Path::new(binary).exists() {
        return Err(format!("{binary} not installed (scripts/bench.sh installs it)"));
    }
    Ok(())
}

async fn start_peer(candidate: Candidate) -> Result<Box<dyn System>> {
    match candidate {
        Candidate::Nats => Ok(Box::new(crate::peers::nats::NatsJetStream::start(3).await?)),
        Candidate::Rabbit => Ok(Box::new(crate::peers::rabbitmq::RabbitQuorum::start(3).await?)),
        _ => unreachable!("not a peer"),
    }
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn latency_json(histogram: &Histogram<u64>) -> Value {
    json!({
        "count": histogram.len(),
        "p50_ms": ms(histogram, 0.5),
        "p99_ms": ms(histogram, 0.99),
        "p999_ms": ms(histogram, 0.999),
        "max_ms": histogram.max() as f64 / 1000.0,
    })
}

fn latency_figure(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "no samples".into();
    }
    format!("p50 {:.2} p99 {:.2} p99.9 {:.2} ms", ms(histogram, 0.5), ms(histogram, 0.99), ms(histogram, 0.999))
}

fn payload_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => format!("{b} B"),
    }
}

struct Bench<'a> {
    plan: &'a Plan,
    rows: Vec<Row>,
    /// Steps of the ladder the current system's probes skip at the bottom ([`CEILING_LADDER_SKIP`]).
    ladder_skip: i32,
}

/// The bare HTTP ceiling's probes start this many steps up the ladder (the same rates, ×1.5 apart), so that
/// they reach its max within the steps and budget every system has: from 250/s its fourteen steps ended at
/// 48,655/s still passing (session 51), and "one node ≥ 0.5× the ceiling" could only be bounded, not told.
const CEILING_LADDER_SKIP: i32 = 6;

impl Bench<'_> {
    fn push(
        &mut self,
        system: &dyn System,
        scenario: String,
        value: Option<f64>,
        figure: String,
        higher: bool,
        detail: Value,
    ) {
        let row = Row {
            scenario,
            system: system.name(),
            durability: system.durability(),
            value,
            figure,
            higher_is_better: higher,
            detail,
        };
        println!("  {:<44} {:<18} {}", row.scenario, row.system, row.figure);
        self.rows.push(row);
    }

    /// Waits (bounded) for the previous scenario's backlog to reach the subscriber, so it does not count
    /// against the next scenario; answers what the JSON report records about it.
    async fn drain(&self, sink: &Sink) -> Value {
        let max = if self.plan.probe.max_steps <= 2 { Duration::from_secs(5) } else { Duration::from_secs(120) };
        let (waited, quiet) = sink.drain(Duration::from_secs(1), max).await;
        if !quiet {
            println!("  (the backlog of the previous scenario was still arriving after {max:?})");
        }
        json!({"waited_s": waited.as_secs_f64(), "quiet": quiet})
    }

    async fn probe_row(
        &mut self,
        system: &Arc<dyn System>,
        sink: &Arc<Sink>,
        scenario: String,
        payload: usize,
        batch: usize,
    ) -> Result<Option<f64>> {
        let mut config = ProbeConfig { payload_bytes: payload, ..self.plan.probe.clone() };
        if batch > 1 {
            config.batch = batch;
            config.max_outstanding = self.plan.batch_outstanding;
            config.max_steps = self.plan.batch_max_steps;
            config.start_rate = self.plan.batch_start_rate;
        }
        config.start_rate *= config.factor.powi(self.ladder_skip);
        let drained = self.drain(sink).await;
        let result = openloop::probe(system.clone(), &config, Some(sink)).await?;
        let steps: Vec<Value> = result
            .steps
            .iter()
            .map(|s| {
                json!({
                    "rate": s.rate, "passed": s.passed, "offered": s.result.offered, "acked": s.result.acked,
                    "errors": s.result.errors, "unsent": s.result.unsent, "delivered": s.result.delivered,
                    "ack_latency": latency_json(&s.result.ack_latency),
                    "cpu_us": s.cpu_us, "cpu_us_per_event": s.cpu_us_per_message(),
                })
            })
            .collect();
        // The CPU of the step that set the max: what an event costs the system there.
        let cpu_at_max = result
            .steps
            .iter()
            .find(|s| s.passed && Some(s.rate) == result.max_rate)
            .and_then(|s| s.cpu_us_per_message());
        let cpu = cpu_at_max.map_or(String::new(), |us| format!(", CPU {us:.1} µs/ev"));
        let figure = match result.max_rate {
            Some(rate) => format!(
                "{}{rate:.0} ev/s ({:.1} MiB/s){cpu}",
                if result.capped { "≥ " } else { "" },
                rate * payload as f64 / (1 << 20) as f64
            ),
            None => format!("< {:.0} ev/s (first step failed)", config.start_rate),
        };
        let detail = json!({
            "max_rate": result.max_rate, "capped": result.capped, "payload_bytes": payload, "steps": steps,
            "batch": config.batch, "max_outstanding_requests": config.max_outstanding,
            "cpu_us_per_event_at_max": cpu_at_max, "drained_before": drained,
        });
        self.push(system.as_ref(), scenario, result.max_rate, figure, true, detail);
        Ok(result.max_rate)
    }

    /// Publish→ack and publish→subscriber latency at a fixed `rate`, in requests of `batch` events (each
    /// event's latency counted from its own intended send time, so a batch's filling is part of it).
    async fn fixed_rows(
        &mut self,
        system: &Arc<dyn System>,
        sink: &Arc<Sink>,
        label: &str,
        rate: f64,
        batch: usize,
    ) -> Result<()> {
        let max_outstanding = if batch > 1 { self.plan.batch_outstanding } else { self.plan.probe.max_outstanding };
        let config = RunConfig {
            rate,
            duration: Duration::from_secs_f64(self.plan.fixed_seconds),
            payload_bytes: 1024,
            max_outstanding,
            grace: Duration::from_secs(5).min(self.plan.probe.grace * 5),
            batch,
        };
        let drained = self.drain(sink).await;
        let result = openloop::run(system.clone(), &config, Some(sink)).await?;
        let counts = json!({
            "rate": rate, "offered": result.offered, "acked": result.acked, "errors": result.errors,
            "unsent": result.unsent, "delivered": result.delivered, "drained_before": drained,
        });
        let lost = result.offered - result.acked;
        let suffix = if lost > 0 { format!(" ({lost} of {} not acked)", result.offered) } else { String::new() };
        let ack = &result.ack_latency;
        self.push(
            system.as_ref(),
            format!("publish→ack latency @ {label}"),
            (!ack.is_empty()).then(|| ms(ack, 0.99)),
            format!("{}{suffix}", latency_figure(ack)),
            false,
            json!({"counts": counts, "latency": latency_json(ack)}),
        );
        let e2e = result.e2e_latency.unwrap_or_else(openloop::new_histogram);
        let delivered = result.delivered.unwrap_or(0);
        let missing = result.acked.saturating_sub(delivered);
        let suffix = if missing > 0 { format!(" ({missing} acked, not delivered)") } else { String::new() };
        self.push(
            system.as_ref(),
            format!("publish→subscriber latency @ {label}"),
            (!e2e.is_empty()).then(|| ms(&e2e, 0.99)),
            format!("{}{suffix}", latency_figure(&e2e)),
            false,
            json!({"counts": counts, "latency": latency_json(&e2e)}),
        );
        Ok(())
    }

    async fn scenarios(&mut self, system: Arc<dyn System>, sluice: Option<&SluiceHttp>) -> Result<()> {
        let sink = Sink::new();
        system.subscribe(sink.on_message()).await.context("subscribe")?;
        let mut max_1k = None;
        for &payload in &self.plan.payloads.clone() {
            let max = self
                .probe_row(&system, &sink, format!("max publish→ack, {}", payload_label(payload)), payload, 1)
                .await?;
            if payload == 1024 {
                max_1k = max;
            }
        }
        let batch = self.plan.batch;
        let batched_max =
            self.probe_row(&system, &sink, format!("max publish→ack, 1 KiB, batches of {batch}"), 1024, batch).await?;
        let common = self.plan.common_rate;
        self.fixed_rows(&system, &sink, &format!("{common:.0}/s"), common, 1).await?;
        if let Some(max) = max_1k {
            for fraction in self.plan.own_fractions.clone() {
                let rate = (max * fraction).max(1.0);
                let label = format!("{:.0}% of own max ({rate:.0}/s)", fraction * 100.0);
                self.fixed_rows(&system, &sink, &label, rate, 1).await?;
            }
        }
        if let Some(max) = batched_max {
            for fraction in self.plan.own_batched_fractions.clone() {
                let rate = (max * fraction).max(1.0);
                let label = format!("{:.0}% of own max, batches of {batch} ({rate:.0}/s)", fraction * 100.0);
                self.fixed_rows(&system, &sink, &label, rate, batch).await?;
            }
        }
        if let (Some(sluice), triggers) = (sluice, self.plan.fanout_triggers)
            && triggers > 1
        {
            sluice.add_idle_triggers(triggers - 1).await.context("adding the idle Triggers")?;
            let scenario = format!("max publish→ack, 1 KiB, {triggers} Triggers (1 matches)");
            self.probe_row(&system, &sink, scenario, 1024, 1).await?;
            self.fixed_rows(&system, &sink, &format!("{common:.0}/s, {triggers} Triggers"), common, 1).await?;
        }
        Ok(())
    }

    fn failed(&mut self, candidate: Candidate, durability: &str, reason: String) {
        println!("  {:<44} {:<18} {}", "(all)", candidate.label(), reason);
        self.rows.push(Row {
            scenario: "(all)".into(),
            system: candidate.label(),
            durability: durability.into(),
            value: None,
            figure: reason,
            higher_is_better: true,
            detail: Value::Null,
        });
    }

    async fn run_candidate(&mut self, candidate: Candidate) {
        println!("== {}", candidate.label());
        if let Err(reason) = peer_available(candidate) {
            self.failed(candidate, "-", format!("not run: {reason}"));
            return;
        }
        let budget = self.plan.per_system_budget;
        self.ladder_skip = if candidate == Candidate::Ceiling { CEILING_LADDER_SKIP } else { 0 };
        let started: Result<Started> = match candidate {
            Candidate::Sluice(n) | Candidate::SluiceBatchedDelivery(n) => {
                let delivery_batch = matches!(candidate, Candidate::SluiceBatchedDelivery(_)).then_some(DELIVERY_BATCH);
                SluiceHttp::start(n, self.plan.partitions, delivery_batch).await.map(|s| {
                    let s = Arc::new(s);
                    (s.clone() as Arc<dyn System>, Some(s))
                })
            }
            Candidate::Ceiling => HttpCeiling::start().await.map(|s| (Arc::new(s) as Arc<dyn System>, None)),
            peer => start_peer(peer).await.map(|s| (Arc::from(s), None)),
        };
        let (system, sluice) = match started {
            Ok(started) => started,
            Err(e) => {
                self.failed(candidate, "-", format!("not run: {e:#}"));
                return;
            }
        };
        let outcome = tokio::time::timeout(budget, self.scenarios(system.clone(), sluice.as_deref())).await;
        let durability = system.durability();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failed(candidate, &durability, format!("failed: {e:#}")),
            Err(_) => self.failed(candidate, &durability, format!("stopped after the {budget:?} budget")),
        }
        drop(sluice);
        stop(system).await;
    }
}

/// Calls [`System::stop`] once the harness holds the last reference (aborted publish tasks let go of theirs
/// shortly); dropping is the fallback (Sluice's nodes are killed on drop).
async fn stop(mut system: Arc<dyn System>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(owned) = Arc::get_mut(&mut system) {
            if tokio::time::timeout(Duration::from_secs(60), owned.stop()).await.is_err() {
                eprintln!("warning: {} did not stop within 60 s", system.name());
            }
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("warning: {} still referenced; dropped without stop()", system.name());
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ratios of each Sluice row to the other systems' rows of the same scenario (and, for 1 KiB throughput, to
/// the disk's fsync limits). Throughput: Sluice ÷ other (> 1 = Sluice faster). Latency: Sluice p99 ÷ other
/// p99 (< 1 = Sluice lower).
fn ratios(rows: &[Row], limits: Option<&calibrate::FsyncReport>) -> Vec<String> {
    rows.iter()
        .map(|row| {
            let (Some(mine), true) = (row.value, row.system.starts_with("sluice")) else { return String::new() };
            let mut parts = Vec::new();
            for other in rows.iter().filter(|o| o.scenario == row.scenario && o.system != row.system) {
                if let Some(theirs) = other.value.filter(|v| *v > 0.0) {
                    parts.push(format!("{:.2}× {}", mine / theirs, other.system));
                }
            }
            if let Some(limits) = limits
                && row.higher_is_better
                && row.scenario.starts_with("max publish→ack, 1 KiB")
            {
                parts.push(format!("{:.2}× fsync-single", mine / limits.single_appends_per_second.max(1e-9)));
                parts.push(format!("{:.2}× group-commit", mine / limits.group_appends_per_second.max(1e-9)));
            }
            parts.join(", ")
        })
        .collect()
}

fn print_table(rows: &[Row], ratios: &[String]) {
    println!();
    let header = "sluice ÷ other (throughput: >1 better; latency p99: <1 better)";
    println!("{:<52} {:<18} {:<38} {:<46} {header}", "scenario", "system", "durability", "figure");
    let mut scenarios: Vec<&str> = Vec::new();
    for row in rows {
        if !scenarios.contains(&row.scenario.as_str()) {
            scenarios.push(&row.scenario);
        }
    }
    for scenario in scenarios {
        for (row, ratio) in rows.iter().zip(ratios).filter(|(r, _)| r.scenario == scenario) {
            println!("{:<52} {:<18} {:<38} {:<46} {}", row.scenario, row.system, row.durability, row.figure, ratio);
        }
    }
}

pub(crate) async fn run(config: CompareConfig) -> Result<()> {
    let plan = Plan::new(&config);
    let started = Instant::now();
    let mut bench = Bench { plan: &plan, rows: Vec::new(), ladder_skip: 0 };

    println!("== machine limits: fsync calibration ({} KiB appends)", calibrate::APPEND_BYTES / 1024);
    let dir = std::env::temp_dir();
    let seconds = plan.fsync_seconds;
    let limits = tokio::task::spawn_blocking(move || calibrate::fsync_calibration(&dir, seconds, 16)).await?;
    let limits = match limits {
        Ok(limits) => {
            for (scenario, durability, value, fsyncs) in [
                (
                    "machine limit: 1 KiB appends, fsync each",
                    "fsync per append".to_string(),
                    limits.single_appends_per_second,
                    None,
                ),
                (
                    "machine limit: 1 KiB appends, group commit",
                    format!("{} writers, one fsync per batch", limits.group_threads),
                    limits.group_appends_per_second,
                    Some(limits.group_fsyncs_per_second),
                ),
            ] {
                let figure = match fsyncs {
                    Some(f) => format!("{value:.0} appends/s ({f:.0} fsyncs/s)"),
                    None => format!("{value:.0} appends/s"),
                };
                println!("  {scenario:<44} {:<18} {figure}", "disk");
                bench.rows.push(Row {
                    scenario: scenario.into(),
                    system: "disk".into(),
                    durability,
                    value: Some(value),
                    figure,
                    higher_is_better: true,
                    detail: limits.to_json(),
                });
            }
            Some(limits)
        }
        Err(e) => {
            println!("  fsync calibration failed: {e:#}");
            None
        }
    };

    let candidates: Vec<Candidate> = if config.smoke {
        vec![Candidate::Sluice(1)]
    } else {
        vec![
            Candidate::Sluice(1),
            Candidate::Sluice(3),
            Candidate::SluiceBatchedDelivery(1),
            Candidate::SluiceBatchedDelivery(3),
            Candidate::Ceiling,
            Candidate::Nats,
            Candidate::Rabbit,
        ]
    };
    for candidate in candidates.into_iter().filter(|c| config.only.is_empty() || config.only.contains(&c.label())) {
        bench.run_candidate(candidate).await;
    }

    let rows = bench.rows;
    let ratios = ratios(&rows, limits.as_ref());
    print_table(&rows, &ratios);
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());

    if let Some(out) = &config.json_out {
        let json_rows: Vec<Value> = rows
            .iter()
            .zip(&ratios)
            .map(|(row, ratio)| {
                json!({
                    "scenario": row.scenario, "system": row.system, "durability": row.durability,
                    "value": row.value, "unit": if row.higher_is_better { "events/s" } else { "p99 ms" },
                    "figure": row.figure, "ratios": ratio, "detail": row.detail,
                })
            })
            .collect();
        let report = json!({
            "smoke": config.smoke,
            "seconds_per_step": config.seconds_per_step,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "sluice_bin": sluice_tests::sluice_bin(),
            "fsync": limits.as_ref().map(calibrate::FsyncReport::to_json),
            "rows": json_rows,
            "seconds": started.elapsed().as_secs_f64(),
        });
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
