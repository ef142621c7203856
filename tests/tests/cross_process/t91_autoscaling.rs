//! The autoscaler on one node: a Knative Service that is a Trigger's subscriber scales out on the event
//! backlog and back to zero, scales on HTTP concurrency, and takes one decision when both come at once. The
//! instance counts are read from the admin API (`Serving/Decisions`), not guessed.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_proto::admin::serving_client::ServingClient;
use sluice_proto::admin::{AutoscalerDecision, DecisionsRequest};
use sluice_tests::{apply_resource, start_single_node, wait_until};

use super::t90_serving::{client, publish, service, trigger_status, url, wait_for, wait_ready};

/// A short stable window (2 s) and grace period (1 s), decisions every 200 ms, so that a test sees the
/// revision go to zero.
const QUICK: &[&str] = &[
    "--autoscaler",
    "stable-window=2s",
    "--autoscaler",
    "scale-to-zero-grace-period=1s",
    "--autoscaler",
    "tick-interval=200ms",
];

/// `containerConcurrency: 4`, at most 10 instances, each request taking 50 ms (the Trigger's URI asks for it).
fn sink(record: &std::path::Path) -> Value {
    let env = json!([{"name": "HELLO_RECORD", "value": record.display().to_string()}]);
    service("sink", env, json!({"autoscaling.knative.dev/max-scale": "10"}), json!({"containerConcurrency": 4}))
}

async fn decisions(admin: &str) -> Result<Vec<AutoscalerDecision>> {
    let mut client = ServingClient::connect(format!("http://{admin}")).await?;
    let request = DecisionsRequest { name: "sink".into(), ..Default::default() };
    let mut stream = client.decisions(request).await?.into_inner();
    let mut all = Vec::new();
    while let Some(decision) = stream.message().await? {
        all.push(decision);
    }
    Ok(all)
}

/// Follows the decisions until `stop`, keeping all of them.
fn follow_decisions(admin: String) -> tokio::task::JoinHandle<Result<Vec<AutoscalerDecision>>> {
    tokio::spawn(async move {
        let mut client = ServingClient::connect(format!("http://{admin}")).await?;
        let request = DecisionsRequest { name: "sink".into(), follow: true, ..Default::default() };
        let mut stream = client.decisions(request).await?.into_inner();
        let mut all = Vec::new();
        while let Ok(Some(decision)) = stream.message().await {
            all.push(decision);
        }
        Ok(all)
    })
}

/// A Broker and a Trigger to the sink, each delivery taking 50 ms; answers when the Trigger is Ready.
async fn trigger_to_sink(admin: &str, http: &str) -> Result<()> {
    apply_resource(admin, sluice_tests::broker_object("default", "default", json!({}))).await?;
    let mut trigger = sluice_tests::trigger_object("default", "to-ksvc", "default", "", json!({}), json!({}));
    trigger["spec"]["subscriber"] = json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "name": "sink"}, "uri": "/?sleep_ms=50"});
    apply_resource(admin, trigger).await?;
    wait_ready(admin, "Trigger", "to-ksvc").await?;
    sluice_tests::wait_for_broker(http, "/default/default").await?;
    Ok(())
}

fn lines(record: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(record).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Regression: a retry whose backoff outlived its subscriber's scale to zero waited for a slot that nothing would
/// make (no request, no backlog reported: its window held it as in flight), neither retried nor dead-lettered.
/// Waiting for a slot, it is backlog now: the revision comes back from zero and takes it.
#[tokio::test]
async fn a_retry_that_outlives_its_subscribers_scale_to_zero_brings_it_back() -> Result<()> {
    let (dir, node) = start_single_node(1, QUICK).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let record = dir.path().join("received.txt");
    let healthy = dir.path().join("healthy");
    apply_resource(&admin, sink(&record)).await?;
    wait_ready(&admin, "Service", "sink").await?;
    apply_resource(&admin, sluice_tests::broker_object("default", "default", json!({}))).await?;
    let mut trigger = sluice_tests::trigger_object(
        "default",
        "to-ksvc",
        "default",
        "",
        json!({"delivery": {"retry": 6, "backoffPolicy": "linear", "backoffDelay": "PT4S"}}),
        json!({}),
    );
    trigger["spec"]["subscriber"] = json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "name": "sink"}, "uri": format!("/?fail_until={}", healthy.display())});
    apply_resource(&admin, trigger).await?;
    wait_ready(&admin, "Trigger", "to-ksvc").await?;
    sluice_tests::wait_for_broker(&http, "/default/default").await?;

    publish(&http, "b", 1, "t91-retry").await?;
    // The first attempt is answered 503 (the revision started for it), and in the backoff (4 s, then 8 s, ...)
    // the revision goes back to zero.
    wait_for(&admin, "Revision", "sink-00001", "/status/actualReplicas", json!(1)).await?;
    wait_for(&admin, "Revision", "sink-00001", "/status/actualReplicas", json!(0)).await?;
    assert!(lines(&record).is_empty(), "nothing delivered yet");
    std::fs::write(&healthy, b"")?;
    let delivered = wait_until(Duration::from_secs(90), || async {
        let lines = lines(&record);
        Ok((!lines.is_empty()).then_some(lines))
    })
    .await
    .context("the retry after the scale to zero was delivered")?;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    Ok(())
}

#[tokio::test]
async fn a_burst_of_events_scales_a_service_out_from_zero_and_back_to_zero() -> Result<()> {
    let (dir, node) = start_single_node(1, QUICK).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let record = dir.path().join("received.txt");
    apply_resource(&admin, sink(&record)).await?;
    wait_ready(&admin, "Service", "sink").await?;
    wait_for(&admin, "Revision", "sink-00001", "/status/actualReplicas", json!(0)).await?;
    trigger_to_sink(&admin, &http).await?;

    let followed = follow_decisions(admin.clone());
    publish(&http, "b", 5_000, "t91").await?;
    let delivered = wait_until(Duration::from_secs(90), || async {
        let lines = lines(&record);
        Ok((lines.len() >= 5_000).then_some(lines))
    })
    .await
    .with_context(|| format!("5,000 events delivered ({} so far)", lines(&record).len()))?;
    assert_eq!(delivered.iter().collect::<BTreeSet<_>>().len(), 5_000, "every event");
    assert_eq!(delivered.len(), 5_000, "none twice: no delivery saw a 5xx and was retried");
    let consumers = sluice_proto::admin::consumers_client::ConsumersClient::connect(format!("http://{admin}")).await?;
    let status = wait_until(Duration::from_secs(20), || async {
        let status = trigger_status(&consumers).await?;
        Ok((status.partitions.iter().map(|p| p.delivered).sum::<u64>() == 5_000).then_some(status))
    })
    .await?;
    for partition in &status.partitions {
        assert_eq!((partition.dead_lettered, partition.dead_letter_count), (0, 0), "none dead-lettered: {partition:?}");
    }

    // Back to zero after the window and the grace period.
    wait_for(&admin, "Revision", "sink-00001", "/status/actualReplicas", json!(0)).await?;
    let kept = decisions(&admin).await?;
    let last = kept.last().context("decisions are kept")?;
    assert_eq!(last.desired, 0, "{last:?}");
    let described = tokio::process::Command::new(sluice_tests::sluice_bin())
        .args(["describe", "revision", "sink-00001", "--admin", &admin])
        .output()
        .await?;
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(described.contains("Autoscaler (the last 10 decisions, every node)"), "{described}");
    assert!(described.lines().any(|l| l.contains("sink-00001") && l.contains(" 0 ")), "{described}");
    drop(node);
    let seen = followed.await??;
    let most_ready = seen.iter().map(|d| d.ready).max().unwrap_or(0);
    assert!(most_ready >= 4, "the burst scaled the revision out: at most {most_ready} ready");
    assert!(seen.iter().all(|d| d.ready <= 10 && d.desired <= 10), "max-scale holds");
    let woken = seen.iter().find(|d| d.backlog_events > 0).context("a decision saw the backlog")?;
    assert!(woken.desired >= 1, "the backlog woke it: {woken:?}");
    let sized = |d: &&AutoscalerDecision| {
        d.backlog_wanted > 1
            && d.backlog_wanted >= d.metric_wanted
            && ["backlog", "max-scale"].contains(&d.reason.as_str())
    };
    assert!(seen.iter().any(|d| sized(&d)), "the backlog sized it (up to max-scale)");
    Ok(())
}

#[tokio::test]
async fn http_load_scales_it_on_concurrency_and_load_with_backlog_is_one_decision() -> Result<()> {
    let (dir, node) = start_single_node(2, QUICK).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let record = dir.path().join("received.txt");
    apply_resource(&admin, sink(&record)).await?;
    wait_ready(&admin, "Service", "sink").await?;
    trigger_to_sink(&admin, &http).await?;
    let followed = follow_decisions(admin.clone());

    // 24 clients, each a request of 50 ms after the other, for 3 s: about 24 in flight, 6 instances' worth at
    // 4 each (target 2.8: up to 9).
    let client = client(&http, &["sink.default.localhost"])?;
    let load = |seconds: u64| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        (0..24)
            .map(|_| {
                let client = client.clone();
                let url = url("sink.default.localhost", &http, "/?sleep_ms=50");
                tokio::spawn(async move {
                    let mut statuses = Vec::new();
                    while tokio::time::Instant::now() < deadline {
                        statuses.push(client.get(&url).send().await.map(|r| r.status().as_u16()).unwrap_or(0));
                    }
                    statuses
                })
            })
            .collect::<Vec<_>>()
    };
    // Rounds of 3 s until a decision counts 3 ready instances (one round on a quiet machine; starting
    // processes on a loaded one can take longer), at most ten.
    let mut statuses = Vec::new();
    let mut most = 0;
    for _round in 0..10 {
        for task in load(3) {
            statuses.extend(task.await?);
        }
        let by_concurrency = decisions(&admin).await?;
        most = by_concurrency.iter().filter(|d| d.backlog_events == 0).map(|d| d.ready).max().unwrap_or(0);
        if most >= 3 {
            break;
        }
    }
    assert!(statuses.iter().all(|s| *s == 200), "every request answered 200");
    assert!(most >= 3, "concurrency alone scaled it out: at most {most} ready");

    // Both at once: HTTP load and a backlog of events.
    let tasks = load(3);
    publish(&http, "m", 2_000, "t91").await?;
    for task in tasks {
        assert!(task.await?.iter().all(|s| *s == 200));
    }
    wait_until(Duration::from_secs(60), || async { Ok((lines(&record).len() >= 2_000).then_some(())) }).await?;
    wait_for(&admin, "Revision", "sink-00001", "/status/actualReplicas", json!(0)).await?;
    drop(node);
    let seen = followed.await??;
    let both = seen
        .iter()
        .find(|d| d.backlog_events > 0 && d.stable_metric > 0.0)
        .context("a decision saw both the backlog and the concurrency")?;
    // One decision: the larger demand wins (the panic window's only while panicking), within max-scale.
    let panic_wanted = if both.panicking { both.panic_wanted } else { 0 };
    let wanted = both.metric_wanted.max(both.backlog_wanted).max(panic_wanted).min(10);
    assert!(both.desired >= wanted.min(both.ready.max(1) * 1000), "{both:?}");
    assert!(["metric", "backlog", "panic", "max-scale"].contains(&both.reason.as_str()), "{both:?}");
    Ok(())
}
