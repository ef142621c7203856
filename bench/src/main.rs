//! `sluice-bench`: throughput and latency against real `sluice node`
//! processes on loopback.
//!
//! - `--mode log`: committed appends per second and append latency (submit →
//!   acknowledged, i.e. committed on a quorum and applied) over the admin API.
//! - `--mode http`: CloudEvents POSTed to a broker: one per request in binary mode
//!   (`--records-per-append 1`), or N per request as `application/cloudevents-batch+json`; events per
//!   second, 202 latency, and the nodes' CPU time per acknowledged event.
//!
//! - `--mode dispatch`: publish → subscriber latency at fixed rates, and
//!   delivery throughput with one Trigger versus many (see `dispatch.rs`).
//! - `--mode serving`: Knative Services: cold starts (compiled and Python apps), the proxy's cost against
//!   the instance straight, the memory of revisions at zero (see `serving.rs`).
//! - `--mode autoscaling`: the autoscaler on the simulator: burst, step, spike and sine traces under
//!   concurrency only (KPA), backlog only (KEDA-like) and both (Sluice) (see `autoscaling.rs`).
//! - `--mode backlog`: `--events` held back by a paused Trigger: the node's memory and disk while they pile
//!   up, then the drain's rate against the steady-state dispatch rate (see `backlog.rs`).
//! - `--mode steady`: one long open-loop run at `--rate` (e.g. half the max for 10 minutes): latency, memory and
//!   the nodes' CPU second by second, `--csv` and an SVG `--plot` (see `steady.rs`).
//! - `--mode compare`: Sluice side by side with NATS JetStream, RabbitMQ and
//!   the machine's limits, open loop (see `compare.rs`, `openloop.rs`).
//!   `--smoke`: Sluice on one node only, tiny rates, a few seconds.
//!
//! `log` and `http` are closed loop: each of `--concurrency` clients sends one request, waits for
//! the answer, and sends the next, for `--seconds`. The node coalesces
//! concurrent appends into Raft entries, so concurrency is what batching feeds on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use sluice_proto::admin::AppendRequest;
use sluice_tests::log_client;

mod autoscaling;
mod backlog;
mod calibrate;
mod compare;
mod cpu;
mod dispatch;
mod driver;
mod openloop;
mod peers;
mod post_client;
mod serving;
mod steady;
mod systems;

#[derive(Parser, Debug)]
#[command(name = "sluice-bench")]
struct Args {
    /// Nodes in the cluster (replication factor = nodes).
    #[arg(long, default_value_t = 1)]
    nodes: u64,
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// `log` (admin API appends), `http` (CloudEvents ingress), `dispatch` or `compare`.
    #[arg(long, default_value = "log", value_parser = ["log", "http", "dispatch", "compare", "serving", "autoscaling", "backlog", "steady"])]
    mode: String,
    /// `autoscaling`: on real processes (nodes and app instances) rather than the simulator.
    #[arg(long)]
    real: bool,
    /// `autoscaling --real`: the stable window in seconds (Knative's default is 60).
    #[arg(long, default_value_t = 6)]
    window_s: u64,
    /// `autoscaling --real`: also the step, spike and sine traces (shortened: 30–40 s each).
    #[arg(long)]
    traces: bool,
    /// `autoscaling --real`: only the runs whose trace and decision names contain every comma-separated word
    /// (`sine,backlog`).
    #[arg(long, default_value = "")]
    only: String,
    /// `autoscaling --real`: events in the burst. `backlog`: events held back (e.g. 10000000).
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// `backlog`: the Broker's `sluice.dev/dedupe-window` (e.g. `10m`, so that every partition's window reaches
    /// its cap of keys whatever the ingest rate); the Broker's default (2 minutes) if empty.
    #[arg(long, default_value = "")]
    dedupe_window: String,
    /// `backlog`: after the steady-state run, seconds with nothing published; the nodes' memory at their start
    /// and end (what a quiet node gives back: an idle stream's dedupe window goes after the window and the
    /// node's `--dedupe-idle-grace-ms`). 0 skips it.
    #[arg(long, default_value_t = 0)]
    quiet_seconds: u64,
    /// `dispatch`: comma-separated publish rates (events/s) for the latency runs.
    #[arg(long, default_value = "100,500")]
    rates: String,
    /// `dispatch`: Triggers on the broker for the second throughput run (one of them matches).
    #[arg(long, default_value_t = 1000)]
    triggers: usize,
    /// Comma-separated list; one run per value.
    #[arg(long, default_value = "64")]
    concurrency: String,
    /// Comma-separated list; one run per value. `steady`: the first value is the events per request.
    #[arg(long, default_value = "1,16,64")]
    records_per_append: String,
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// `log`/`http`: print one JSON object per run instead of a table row. `compare`: `--json OUT` writes the
    /// report to OUT.
    #[arg(long, num_args = 0..=1)]
    json: Option<Option<std::path::PathBuf>>,
    /// `compare`: seconds per step of the max-throughput probe.
    #[arg(long, default_value_t = 4.0)]
    seconds_per_step: f64,
    /// `serving`: cold starts measured per app.
    #[arg(long, default_value_t = 50)]
    cold_starts: usize,
    /// `steady`: events per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// `steady`: instead of `--rate`, half of `sluice-N`'s 1 KiB max in this `--mode compare` JSON report, for
    /// producers sending the first `--records-per-append` events per request (1: the one-event probe; 64: the
    /// probe in batches of 64).
    #[arg(long)]
    rate_from: Option<std::path::PathBuf>,
    /// `steady`: the seconds as CSV.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// `steady`: latency and RSS over time as SVG.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// `compare`: Sluice on one node only, tiny rates, about 5 s (the CI smoke test).
    #[arg(long)]
    smoke: bool,
    /// `compare`: comma-separated systems to run (sluice-1, sluice-3, sluice-1-batched-delivery,
    /// sluice-3-batched-delivery, http-ceiling, nats-jetstream-3,
    /// rabbitmq-quorum-3); all by default.
    #[arg(long, default_value = "")]
    systems: String,
    /// `steady`: the subscriber takes batched delivery, up to this many events per request
    /// (`sluice.dev/delivery-batch-max-events`); one event per request without it.
    #[arg(long)]
    delivery_batch: Option<usize>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.mode == "compare" {
        let config = compare::CompareConfig {
            smoke: args.smoke,
            seconds_per_step: args.seconds_per_step,
            json_out: args.json.clone().flatten(),
            only: args.systems.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        };
        return compare::run(config).await;
    }
    if args.mode == "autoscaling" {
        return if args.real {
            autoscaling::run_real(args.events, args.window_s, args.traces, &args.only).await
        } else {
            autoscaling::run()
        };
    }
    if args.mode == "serving" {
        let concurrency = args.concurrency.split(',').next().unwrap_or("16").trim().parse()?;
        let config =
            serving::ServingArgs { cold_starts: args.cold_starts.max(1), concurrency, seconds: args.seconds.max(1) };
        return serving::run(config).await;
    }
    let sizes: Vec<usize> = args.records_per_append.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
    let concurrencies: Vec<usize> = args.concurrency.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
    if args.mode == "steady" {
        // The first of `--records-per-append` (its default starts with 1: one event per request).
        let events_per_request = sizes.first().copied().unwrap_or(1).max(1);
        let rate = match &args.rate_from {
            Some(path) => {
                let report: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
                let system = format!("sluice-{}", args.nodes);
                steady::half_max_from_report(&report, &system, events_per_request).ok_or_else(|| {
                    anyhow::anyhow!("{}: no 1 KiB max of {system} at {events_per_request} per request", path.display())
                })?
            }
            None => args.rate,
        };
        let bench = steady::SteadyBench {
            nodes: args.nodes,
            partitions: args.partitions,
            rate,
            seconds: args.seconds,
            payload_bytes: args.payload_bytes,
            events_per_request,
            delivery_batch: args.delivery_batch,
            csv: args.csv.clone(),
            plot: args.plot.clone(),
        };
        return bench.run().await;
    }
    if args.mode == "backlog" {
        let bench = backlog::BacklogBench {
            nodes: args.nodes,
            partitions: args.partitions,
            events: args.events as u64,
            payload_bytes: args.payload_bytes,
            producers: concurrencies.first().copied().unwrap_or(16),
            // The largest of `--records-per-append`: producers that fill a backlog batch.
            batch: sizes.iter().copied().max().unwrap_or(64).max(1),
            steady_seconds: args.seconds,
            dedupe_window: (!args.dedupe_window.is_empty()).then(|| args.dedupe_window.clone()),
            quiet_seconds: args.quiet_seconds,
            json: args.json.is_some(),
        };
        return bench.run().await;
    }
    let cluster = systems::start_cluster(args.nodes, args.partitions).await?;
    let admins: Vec<String> = cluster.nodes.iter().map(|n| n.admin.clone()).collect();
    let https: Vec<String> = cluster.nodes.iter().map(|n| n.http.clone()).collect();
    if args.mode == "dispatch" {
        let rates: Vec<u64> = args.rates.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
        let bench = dispatch::DispatchBench {
            admin: admins[0].clone(),
            https: https.clone(),
            seconds: args.seconds,
            payload_bytes: args.payload_bytes,
            partitions: args.partitions,
        };
        bench.run(&rates, args.triggers, concurrencies.first().copied().unwrap_or(64)).await?;
        drop(cluster);
        return Ok(());
    }
    if args.mode == "http" {
        let broker = sluice_tests::broker_object("bench", "bench", serde_json::json!({}));
        sluice_tests::apply_resource(&admins[0], broker).await?;
        for http in &https {
            sluice_tests::wait_for_broker(http, "/bench/bench").await?;
        }
    }
    if args.json.is_none() {
        println!(
            "{:>5} {:>6} {:>11} {:>8} {:>14} {:>10} {:>9} {:>9} {:>9} {:>12}",
            "nodes", "conc", "recs/append", "payload", "records/s", "MiB/s", "p50 ms", "p99 ms", "max ms", "cpu µs/rec"
        );
    }
    let runs: Vec<(usize, usize)> = concurrencies.iter().flat_map(|c| sizes.iter().map(move |s| (*c, *s))).collect();
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    for (concurrency, records) in runs {
        let cpu_before_us = cpu::total_cpu_us(&pids);
        let mut result = if args.mode == "http" {
            run_http(&args, &https, concurrency, records).await?
        } else {
            run(&args, &admins, concurrency, records).await?
        };
        let cpu_us = cpu::total_cpu_us(&pids).saturating_sub(cpu_before_us);
        let acknowledged = result["records"].as_u64().unwrap_or(0).max(1);
        result["node_cpu_us_per_event"] = serde_json::json!(cpu_us as f64 / acknowledged as f64);
        if args.json.is_some() {
            println!("{}", result);
        } else {
            println!(
                "{:>5} {:>6} {:>11} {:>8} {:>14.0} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>12.1}",
                args.nodes,
                concurrency,
                records,
                args.payload_bytes,
                result["records_per_second"].as_f64().unwrap_or(0.0),
                result["mib_per_second"].as_f64().unwrap_or(0.0),
                result["p50_ms"].as_f64().unwrap_or(0.0),
                result["p99_ms"].as_f64().unwrap_or(0.0),
                result["max_ms"].as_f64().unwrap_or(0.0),
                result["node_cpu_us_per_event"].as_f64().unwrap_or(0.0),
            );
        }
    }
    drop(cluster);
    Ok(())
}

async fn run_http(
    args: &Args,
    https: &[String],
    concurrency: usize,
    events_per_request: usize,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let targets: Vec<Arc<post_client::PostTarget>> = https
        .iter()
        .map(|h| post_client::PostTarget::new(&format!("http://{h}/bench/bench")).map(Arc::new))
        .collect::<Result<_>>()?;
    let mut clients = Vec::new();
    let events_per_request = events_per_request.max(1);
    for worker in 0..concurrency {
        let target = targets[worker % targets.len()].clone();
        let payload = bytes::Bytes::from(vec![b'x'; args.payload_bytes]);
        // Ids unique across workers, so that Sluice's dedupe never drops one.
        let mut next_id = (worker as u64) << 40;
        clients.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut events, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                let started = Instant::now();
                let first_id = next_id;
                next_id += events_per_request as u64;
                let sent = if events_per_request == 1 {
                    systems::post_event(&target, first_id, payload.clone()).await
                } else {
                    systems::post_batch(&target, first_id, vec![payload.clone(); events_per_request]).await
                };
                match sent {
                    Ok(()) => {
                        histogram.record(started.elapsed().as_micros().max(1) as u64)?;
                        events += events_per_request as u64;
                    }
                    Err(_) => errors += 1,
                }
            }
            anyhow::Ok((histogram, events, errors))
        }));
    }
    summarize(args, concurrency, events_per_request, clients).await
}

async fn run(
    args: &Args,
    admins: &[String],
    concurrency: usize,
    records_per_append: usize,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut clients = Vec::new();
    for worker in 0..concurrency {
        let admin = admins[worker % admins.len()].clone();
        let partitions = args.partitions;
        let payload = vec![b'x'; args.payload_bytes];
        clients.push(tokio::spawn(async move {
            let mut client = log_client(&admin).await?;
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut records = 0u64;
            let mut errors = 0u64;
            let mut i = 0u32;
            while Instant::now() < deadline {
                let request = AppendRequest {
                    stream: format!("broker/bench/b{worker}"),
                    partition: i % partitions,
                    payloads: (0..records_per_append).map(|_| payload.clone().into()).collect(),
                };
                i += 1;
                let started = Instant::now();
                match client.append(request).await {
                    Ok(_) => {
                        histogram.record(started.elapsed().as_micros().max(1) as u64)?;
                        records += records_per_append as u64;
                    }
                    Err(_) => errors += 1,
                }
            }
            anyhow::Ok((histogram, records, errors))
        }));
    }
    summarize(args, concurrency, records_per_append, clients).await
}

type ClientResult = tokio::task::JoinHandle<Result<(Histogram<u64>, u64, u64)>>;

async fn summarize(
    args: &Args,
    concurrency: usize,
    records_per_append: usize,
    clients: Vec<ClientResult>,
) -> Result<serde_json::Value> {
    let started = Instant::now();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut records, mut errors) = (0u64, 0u64);
    for client in clients {
        let (h, r, e) = client.await??;
        histogram.add(h)?;
        records += r;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(args.seconds as f64);
    if records == 0 {
        bail!("no append was acknowledged ({errors} errors)");
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "nodes": args.nodes,
        "partitions": args.partitions,
        "mode": args.mode,
        "concurrency": concurrency,
        "records_per_append": records_per_append,
        "payload_bytes": args.payload_bytes,
        "records_per_second": records as f64 / elapsed,
        "mib_per_second": records as f64 * args.payload_bytes as f64 / elapsed / (1 << 20) as f64,
        "records": records,
        "appends": histogram.len(),
        "errors": errors,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": histogram.max() as f64 / 1000.0,
    }))
}
