//! `--mode autoscaling`: the autoscaler's decision on the simulator (`sluice_autoscaler::sim`), the same
//! traces under concurrency only (Knative's KPA, a fixed dispatcher window in front of the activator),
//! backlog only (KEDA-like) and both (Sluice), with Knative's default knobs. Deterministic: the seeds are
//! fixed, so the table is the same on every machine.

use anyhow::Result;
use sluice_autoscaler::sim::{Mode, Model, Score, Trace, simulate};
use sluice_controller::serving::autoscaling::{AutoscalerDefaults, Autoscaling};

const SEEDS: [u64; 3] = [1, 2, 3];

fn traces() -> Vec<Trace> {
    vec![
        Trace::Burst { events: 10_000, at_ms: 1_000, duration_ms: 240_000 },
        Trace::Step { before: 0.0, after: 200.0, at_ms: 5_000, duration_ms: 240_000 },
        Trace::Spike { base: 20.0, peak: 400.0, from_ms: 30_000, to_ms: 40_000, duration_ms: 240_000 },
        Trace::Sine { mean: 100.0, amplitude: 90.0, period_ms: 60_000, duration_ms: 240_000 },
    ]
}

/// The mean of each figure over the seeds (drain time only when every seed drained).
fn mean(scores: &[Score]) -> Score {
    let n = scores.len().max(1) as f64;
    let avg = |f: &dyn Fn(&Score) -> f64| scores.iter().map(f).sum::<f64>() / n;
    Score {
        delivered: avg(&|s| s.delivered as f64) as u64,
        drain_ms: scores.iter().map(|s| s.drain_ms).sum::<Option<u64>>().map(|total| total / scores.len() as u64),
        max_event_age_ms: scores.iter().map(|s| s.max_event_age_ms).max().unwrap_or(0),
        p99_event_age_ms: avg(&|s| s.p99_event_age_ms as f64) as u64,
        errors_5xx: scores.iter().map(|s| s.errors_5xx).sum(),
        instance_seconds: avg(&|s| s.instance_seconds),
        peak_instances: scores.iter().map(|s| s.peak_instances).max().unwrap_or(0),
        final_instances: scores.iter().map(|s| s.final_instances).max().unwrap_or(0),
    }
}

pub(crate) fn run() -> Result<()> {
    let knobs = Autoscaling::from_defaults(&AutoscalerDefaults::default(), 4);
    let model = Model { cold_start_ms: 1_000, ..Model::default() };
    println!(
        "Knative's defaults (stable window 60 s, panic 6 s at 200 %, grace 30 s, tick 2 s), containerConcurrency 4 \
         (target 2.8), backlog-target 100; the model: {} ms per request ±{} %, cold start {} ms ±20 %, the KPA's \
         dispatcher window {} in flight. Means over seeds {SEEDS:?}; 5xx summed; max age the largest.\n",
        model.service_ms, model.service_jitter_pct, model.cold_start_ms, model.dispatcher_inflight
    );
    println!(
        "| trace | decision | drained in | p99 event age | max event age | 5xx | instance-seconds | peak | at the end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for trace in traces() {
        let mut by_mode = Vec::new();
        for mode in Mode::ALL {
            let scores: Vec<Score> = SEEDS.iter().map(|seed| simulate(&knobs, &model, &trace, mode, *seed)).collect();
            let score = mean(&scores);
            let drained = score.drain_ms.map_or("—".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
            let drained = if matches!(trace, Trace::Burst { .. }) { drained } else { "—".into() };
            println!(
                "| {} | {} | {drained} | {:.2} s | {:.2} s | {} | {:.0} | {} | {} |",
                trace.name(),
                mode.as_str(),
                score.p99_event_age_ms as f64 / 1000.0,
                score.max_event_age_ms as f64 / 1000.0,
                score.errors_5xx,
                score.instance_seconds,
                score.peak_instances,
                score.final_instances
            );
            by_mode.push((mode, score));
        }
        if let Trace::Burst { events, .. } = trace {
            let find = |m: Mode| by_mode.iter().find(|(mode, _)| *mode == m).map(|(_, s)| s.clone());
            if let (Some(kpa), Some(coupled)) = (find(Mode::ConcurrencyOnly), find(Mode::Coupled))
                && let (Some(slow), Some(fast)) = (kpa.drain_ms, coupled.drain_ms)
            {
                eprintln!(
                    "burst of {events}: coupled drains {:.2}× faster than concurrency only, with {:.2}× its \
                     instance-seconds and {} 5xx",
                    slow as f64 / fast.max(1) as f64,
                    coupled.instance_seconds / kpa.instance_seconds.max(f64::EPSILON),
                    coupled.errors_5xx
                );
            }
        }
    }
    Ok(())
}
