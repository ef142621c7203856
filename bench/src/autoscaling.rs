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

/// `--mode autoscaling --real`: the traces on real processes: a node per decision mode (`--autoscaler
/// signals=concurrency|backlog|both`), a Trigger to a Knative Service at zero (`containerConcurrency: 4`,
/// `max-scale: 100`, 50 ms per event, the `sluice-hello` app). The burst is `events` published at once; the
/// rate traces (with `--traces`) are published every 100 ms. Measured: each event's age when the app got it
/// (publish → the bench seeing its line in the app's record, polled every 20 ms), the time until every event
/// arrived (the burst), deliveries received more than once (a 5xx or a timeout makes the dispatcher retry),
/// instance-seconds and the peak from the autoscaler's decisions (`Serving/Decisions`) until the revision is
/// back at zero. `window_s` is the stable window (Knative's is 60 s); the grace period is 2 s, ticks 2 s.
pub(crate) async fn run_real(events: usize, window_s: u64, with_traces: bool, only: &str) -> Result<()> {
    let mut loads = vec![Trace::Burst { events: events as u64, at_ms: 0, duration_ms: 0 }];
    if with_traces {
        loads.extend([
            Trace::Step { before: 0.0, after: 200.0, at_ms: 2_000, duration_ms: 30_000 },
            Trace::Spike { base: 20.0, peak: 400.0, from_ms: 10_000, to_ms: 20_000, duration_ms: 30_000 },
            Trace::Sine { mean: 100.0, amplitude: 90.0, period_ms: 20_000, duration_ms: 40_000 },
        ]);
    }
    println!(
        "real processes: containerConcurrency 4, 50 ms per event, max-scale 100, stable window {window_s} s, {}",
        sluice_tests::sluice_bin().display()
    );
    println!(
        "| trace | decision | drained in | p99 event age | max event age | received twice | instance-seconds | peak |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for trace in &loads {
        for mode in Mode::ALL {
            let name = format!("{} {}", trace.name(), mode.as_str());
            if !only.is_empty() && !only.split(',').all(|word| name.contains(word)) {
                continue;
            }
            let score = real_run(trace, mode, window_s).await?;
            let drained = match trace {
                Trace::Burst { .. } => format!("{:.1} s", score.drained_ms as f64 / 1000.0),
                _ => "—".into(),
            };
            println!(
                "| {} | {} | {drained} | {:.2} s | {:.2} s | {} | {:.0} | {} |",
                trace.name(),
                mode.as_str(),
                score.p99_age_ms as f64 / 1000.0,
                score.max_age_ms as f64 / 1000.0,
                score.twice,
                score.instance_seconds,
                score.peak
            );
        }
    }
    Ok(())
}

struct RealScore {
    drained_ms: u64,
    p99_age_ms: u64,
    max_age_ms: u64,
    twice: usize,
    instance_seconds: f64,
    peak: u32,
}

/// Ages of events as the app's record file shows them arriving.
struct Arrivals {
    published: Vec<Option<std::time::Instant>>,
    ages_ms: Vec<u64>,
    seen: std::collections::HashSet<usize>,
    lines: usize,
    offset: usize,
}

impl Arrivals {
    fn poll(&mut self, record: &std::path::Path) {
        let Ok(text) = std::fs::read(record) else { return };
        let Some(end) = text.iter().rposition(|b| *b == b'\n').map(|i| i + 1) else { return };
        if end <= self.offset {
            return;
        }
        let now = std::time::Instant::now();
        for line in String::from_utf8_lossy(&text[self.offset..end]).lines() {
            self.lines += 1;
            let Some(n) = line.strip_prefix('e').and_then(|n| n.parse::<usize>().ok()) else { continue };
            if self.seen.insert(n)
                && let Some(Some(at)) = self.published.get(n)
            {
                self.ages_ms.push(now.duration_since(*at).as_millis() as u64);
            }
        }
        self.offset = end;
    }
}

async fn real_run(trace: &Trace, mode: Mode, window_s: u64) -> Result<RealScore> {
    use anyhow::Context;
    use serde_json::{Value, json};
    use sluice_proto::admin::serving_client::ServingClient;
    use sluice_proto::admin::{AutoscalerDecision, DecisionsRequest};
    use sluice_tests::{apply_resource, hello_bin, start_single_node, wait_until};
    use std::time::{Duration, Instant};

    let signals = match mode {
        Mode::ConcurrencyOnly => "concurrency",
        Mode::BacklogOnly => "backlog",
        Mode::Coupled => "both",
    };
    let (window, signals_flag) = (format!("stable-window={window_s}s"), format!("signals={signals}"));
    let args =
        ["--autoscaler", &window, "--autoscaler", "scale-to-zero-grace-period=2s", "--autoscaler", &signals_flag];
    let (dir, node) = start_single_node(1, &args).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let record = dir.path().join("received.txt");
    let service = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "sink", "namespace": "default"},
        "spec": {"template": {"metadata": {"annotations": {"autoscaling.knative.dev/max-scale": "100"}},
            "spec": {"containerConcurrency": 4, "containers": [{"image": "ghcr.io/knative/helloworld-go",
                "command": [hello_bin().display().to_string()],
                "env": [{"name": "HELLO_RECORD", "value": record.display().to_string()}]}]}}}});
    apply_resource(&admin, service).await?;
    // A new revision runs one instance to become Ready, then goes to zero after the window and the grace.
    crate::serving::wait_replicas_within(&admin, "sink-00001", 0, Duration::from_secs(window_s + 60)).await?;
    apply_resource(&admin, sluice_tests::broker_object("default", "default", json!({}))).await?;
    let mut trigger = sluice_tests::trigger_object("default", "to-ksvc", "default", "", json!({}), json!({}));
    trigger["spec"]["subscriber"] = json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "name": "sink"}, "uri": "/?sleep_ms=50"});
    apply_resource(&admin, trigger).await?;
    sluice_tests::wait_for_broker(&http, "/default/default").await?;
    let resources = sluice_proto::admin::resources_client::ResourcesClient::connect(format!("http://{admin}")).await?;
    wait_until(Duration::from_secs(30), || {
        let mut resources = resources.clone();
        async move {
            let reference = sluice_proto::admin::ResourceRef {
                kind: "Trigger".into(),
                namespace: "default".into(),
                name: "to-ksvc".into(),
            };
            let reply = resources.get(reference).await?.into_inner();
            let object: Value = serde_json::from_str(&reply.object_json)?;
            Ok(object.pointer("/status/subscriberUri").and_then(Value::as_str).map(|_| ()))
        }
    })
    .await
    .context("the Trigger resolves the Service")?;

    let mut serving = ServingClient::connect(format!("http://{admin}")).await?;
    let request = DecisionsRequest { name: "sink".into(), follow: true, ..Default::default() };
    let mut stream = serving.decisions(request).await?.into_inner();
    // The stream starts with the decisions kept from before (the new revision's first instance): only those
    // from the load on count.
    let since_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let followed = tokio::spawn(async move {
        let mut all: Vec<AutoscalerDecision> = Vec::new();
        while let Ok(Some(decision)) = stream.message().await {
            if decision.at_ms < since_ms {
                continue;
            }
            let done = decision.instances == 0 && decision.desired == 0 && all.iter().any(|d| d.instances > 0);
            all.push(decision);
            if done {
                break;
            }
        }
        all
    });

    let client = reqwest::Client::new();
    let publish = |from: usize, to: usize| {
        let client = client.clone();
        let url = format!("http://{http}/default/default");
        async move {
            for chunk_start in (from..to).step_by(500) {
                let body: Vec<Value> = (chunk_start..(chunk_start + 500).min(to))
                    .map(|i| json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/bench", "type": "bench"}))
                    .collect();
                let response = client
                    .post(&url)
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(Value::Array(body).to_string())
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 202, "publish: {}", response.status());
            }
            anyhow::Ok(())
        }
    };
    let mut arrivals =
        Arrivals { published: Vec::new(), ages_ms: Vec::new(), seen: Default::default(), lines: 0, offset: 0 };
    let started = Instant::now();
    let mut total = 0usize;
    if let Trace::Burst { events, .. } = trace {
        total = *events as usize;
        arrivals.published = vec![Some(started); total];
        publish(0, total).await?;
    } else {
        // Every 100 ms, the events the trace's rate asks for (fractions carried over).
        let mut owed = 0.0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while started.elapsed() < Duration::from_millis(trace.duration_ms()) {
            tick.tick().await;
            owed += trace.rate_at(started.elapsed().as_millis() as u64) / 10.0;
            let count = owed.floor() as usize;
            owed -= count as f64;
            if count > 0 {
                arrivals.published.extend(std::iter::repeat_n(Some(Instant::now()), count));
                publish(total, total + count).await?;
                total += count;
            }
            arrivals.poll(&record);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while arrivals.seen.len() < total {
        if Instant::now() >= deadline {
            let missing: Vec<usize> = (0..total).filter(|n| !arrivals.seen.contains(n)).take(10).collect();
            let kept = dir.keep();
            anyhow::bail!(
                "{} of {total} events delivered; missing {missing:?}; node kept in {}",
                arrivals.seen.len(),
                kept.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        arrivals.poll(&record);
    }
    let drained_ms = started.elapsed().as_millis() as u64;
    let back_to_zero = Duration::from_secs(window_s * 2 + 60);
    let decisions = tokio::time::timeout(back_to_zero, followed).await.context("back to zero")??;
    arrivals.poll(&record);
    let mut instance_ms = 0u64;
    for pair in decisions.windows(2) {
        instance_ms += u64::from(pair[0].instances) * pair[1].at_ms.saturating_sub(pair[0].at_ms);
    }
    arrivals.ages_ms.sort_unstable();
    let ages = &arrivals.ages_ms;
    drop(node);
    Ok(RealScore {
        drained_ms,
        p99_age_ms: ages.get(ages.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0),
        max_age_ms: ages.last().copied().unwrap_or(0),
        twice: arrivals.lines - arrivals.seen.len(),
        instance_seconds: instance_ms as f64 / 1000.0,
        peak: decisions.iter().map(|d| d.instances).max().unwrap_or(0),
    })
}
