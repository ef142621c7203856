//! `--mode dispatch`: publish → subscriber, through the broker and the dispatcher.
//!
//! - Latency at fixed rates (open loop): events POSTed at `--rates` events/s to one Broker with one matching
//!   Trigger; latency is from the POST being sent to the subscriber receiving the delivery.
//! - Throughput with 1 Trigger, then with `--triggers` Triggers of which one matches (the others filter on
//!   types that are never sent): closed loop, `--concurrency` publishers for `--seconds`; the figure is events
//!   delivered per second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use serde_json::json;
use sluice_tests::subscriber::{Delivery, Subscriber};
use sluice_tests::{apply_resource, broker_object, trigger_object};

pub(crate) struct DispatchBench {
    pub admin: String,
    pub https: Vec<String>,
    pub seconds: u64,
    pub payload_bytes: usize,
    pub partitions: u32,
}

fn event_request(client: &reqwest::Client, url: &str, id: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/bench")
        .header("ce-type", "bench.event")
        .header("content-type", "application/octet-stream")
        .body(body)
}

impl DispatchBench {
    pub(crate) async fn run(&self, rates: &[u64], triggers: usize, concurrency: usize) -> Result<()> {
        let subscriber = Subscriber::start(Subscriber::ok()).await?;
        apply_resource(&self.admin, broker_object("bench", "bench", json!({}))).await?;
        for http in &self.https {
            sluice_tests::wait_for_broker(http, "/bench/bench").await?;
        }
        let filter = json!({"filter": {"attributes": {"type": "bench.event"}}});
        apply_resource(&self.admin, trigger_object("bench", "match", "bench", &subscriber.url(), filter, json!({})))
            .await?;
        println!("{:>10} {:>10} {:>10} {:>9} {:>9} {:>9}", "rate/s", "sent", "delivered", "p50 ms", "p99 ms", "max ms");
        for (run, rate) in rates.iter().enumerate() {
            let (sent, histogram) = self.latency_run(&subscriber, &format!("l{run}"), *rate).await?;
            let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{:>10} {:>10} {:>10} {:>9.2} {:>9.2} {:>9.2}",
                rate,
                sent,
                histogram.len(),
                ms(0.5),
                ms(0.99),
                histogram.max() as f64 / 1000.0
            );
        }
        println!();
        println!("{:>9} {:>6} {:>14} {:>14}", "triggers", "conc", "published/s", "delivered/s");
        let (published, delivered) = self.throughput_run(&subscriber, "t1", concurrency).await?;
        println!("{:>9} {:>6} {:>14.0} {:>14.0}", 1, concurrency, published, delivered);
        if triggers > 1 {
            add_nonmatching_triggers(&self.admin, &self.https, self.partitions, triggers - 1).await?;
            let (published, delivered) = self.throughput_run(&subscriber, "tn", concurrency).await?;
            println!("{:>9} {:>6} {:>14.0} {:>14.0}", triggers, concurrency, published, delivered);
        }
        Ok(())
    }

    async fn latency_run(&self, subscriber: &Subscriber, prefix: &str, rate: u64) -> Result<(u64, Histogram<u64>)> {
        let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
        let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        let deadline = Instant::now() + Duration::from_secs(self.seconds);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
        let mut tasks = Vec::new();
        let mut i = 0u64;
        while Instant::now() < deadline {
            interval.tick().await;
            i += 1;
            let id = format!("{prefix}-{i}");
            let url = format!("http://{}/bench/bench", self.https[i as usize % self.https.len()]);
            let request = event_request(&client, &url, &id, vec![b'x'; self.payload_bytes]);
            let permit = in_flight.clone().acquire_owned().await?;
            let sent_at = sent_at.clone();
            tasks.push(tokio::spawn(async move {
                if let Ok(mut map) = sent_at.lock() {
                    map.insert(id, Instant::now());
                }
                let accepted = matches!(request.send().await, Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED);
                drop(permit);
                accepted
            }));
        }
        let mut accepted = 0u64;
        for task in tasks {
            accepted += u64::from(task.await?);
        }
        let ours = |d: &Delivery| d.header("ce-id").is_some_and(|id| id.starts_with(&format!("{prefix}-")));
        let deliveries = subscriber
            .wait_until(Duration::from_secs(120), |all| all.iter().filter(|d| ours(d)).count() as u64 >= accepted)
            .await?;
        let sent_at = sent_at.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        for delivery in deliveries.iter().filter(|d| ours(d)) {
            if let Some(sent) = delivery.header("ce-id").and_then(|id| sent_at.get(id)) {
                histogram.record(delivery.at.duration_since(*sent).as_micros().max(1) as u64)?;
            }
        }
        Ok((accepted, histogram))
    }

    async fn throughput_run(&self, subscriber: &Subscriber, prefix: &str, concurrency: usize) -> Result<(f64, f64)> {
        let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.seconds);
        let mut workers = Vec::new();
        for worker in 0..concurrency {
            let client = client.clone();
            let url = format!("http://{}/bench/bench", self.https[worker % self.https.len()]);
            let prefix = prefix.to_string();
            let payload = self.payload_bytes;
            workers.push(tokio::spawn(async move {
                let mut accepted = 0u64;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    let request = event_request(&client, &url, &format!("{prefix}-{worker}-{i}"), vec![b'x'; payload]);
                    if matches!(request.send().await, Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED) {
                        accepted += 1;
                    }
                }
                accepted
            }));
        }
        let mut accepted = 0u64;
        for worker in workers {
            accepted += worker.await?;
        }
        let published_secs = started.elapsed().as_secs_f64();
        if accepted == 0 {
            bail!("no event was accepted");
        }
        let ours = |d: &Delivery| d.header("ce-id").is_some_and(|id| id.starts_with(&format!("{prefix}-")));
        let deliveries = subscriber
            .wait_until(Duration::from_secs(300), |all| all.iter().filter(|d| ours(d)).count() as u64 >= accepted)
            .await?;
        let last = deliveries.iter().filter(|d| ours(d)).map(|d| d.at).max().unwrap_or(started);
        let delivered_secs = last.duration_since(started).as_secs_f64().max(0.001);
        Ok((accepted as f64 / published_secs, accepted as f64 / delivered_secs))
    }
}

/// Applies `count` Triggers to broker `bench/bench` that filter on types never sent (named `n1`..), then waits
/// until every partition leader dispatches all of them (the steady state), at most 120 s.
pub(crate) async fn add_nonmatching_triggers(
    admin: &str,
    https: &[String],
    partitions: u32,
    count: usize,
) -> Result<()> {
    for i in 1..=count {
        let filter = json!({"filter": {"attributes": {"type": format!("never.sent.{i}")}}});
        let trigger = trigger_object("bench", &format!("n{i}"), "bench", "http://127.0.0.1:9/", filter, json!({}));
        apply_resource(admin, trigger).await?;
    }
    let last = format!("consumer=\"n{count}\"");
    let client = reqwest::Client::new();
    sluice_tests::wait_until(Duration::from_secs(120), || {
        let (client, last) = (client.clone(), last.clone());
        async move {
            let mut dispatching = 0;
            for http in https {
                let text = client.get(format!("http://{http}/metrics")).send().await?.text().await?;
                dispatching +=
                    text.lines().filter(|l| l.starts_with("sluice_dispatch_backlog") && l.contains(&last)).count();
            }
            Ok((dispatching >= partitions as usize).then_some(()))
        }
    })
    .await
}
