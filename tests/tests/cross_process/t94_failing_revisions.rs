//! Revisions whose instances keep failing, seen from a Trigger that delivers to them: its deliveries follow
//! their DeliverySpec (timeout, retries, dead letter) rather than waiting for good, and go to the revision
//! again once it is ready.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use sluice_tests::subscriber::Subscriber;
use sluice_tests::{apply_resource, start_single_node, wait_until};

use crate::t90_serving::{condition, get, publish, service, trigger_status, wait_for, wait_ready};

const QUICK: &[&str] = &["--autoscaler", "tick-interval=100ms"];

/// Regression: a revision that was ready once and then crash-looped kept the dispatcher's in-flight limit at 0
/// (no ready instance × containerConcurrency): its Trigger's deliveries waited for room, neither retried nor
/// dead-lettered, for as long as it crashed.
#[tokio::test]
async fn a_crash_looping_revision_gets_its_deliveries_dead_lettered_not_stalled() -> Result<()> {
    let (dir, node) = start_single_node(1, QUICK).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let record = dir.path().join("received.txt");
    let crash = dir.path().join("crash");
    let env = json!([
        {"name": "HELLO_RECORD", "value": record.display().to_string()},
        {"name": "HELLO_CRASH_WHEN", "value": crash.display().to_string()},
    ]);
    let one_running = json!({"autoscaling.knative.dev/min-scale": "1", "autoscaling.knative.dev/max-scale": "1"});
    apply_resource(&admin, service("flaky", env, one_running, json!({"containerConcurrency": 1}))).await?;
    wait_ready(&admin, "Service", "flaky").await?;

    let dead_letters = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&admin, sluice_tests::broker_object("default", "default", json!({}))).await?;
    let delivery = json!({"retry": 1, "backoffDelay": "PT0.1S", "timeout": "PT1S",
        "deadLetterSink": {"uri": dead_letters.url()}});
    let mut trigger =
        sluice_tests::trigger_object("default", "to-ksvc", "default", "", json!({"delivery": delivery}), json!({}));
    trigger["spec"]["subscriber"] =
        json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "flaky"}});
    apply_resource(&admin, trigger).await?;
    let port = http.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    let subscriber_uri = json!(format!("http://flaky.default.localhost:{port}"));
    wait_for(&admin, "Trigger", "to-ksvc", "/status/subscriberUri", subscriber_uri).await?;
    sluice_tests::wait_for_broker(&http, "/default/default").await?;
    let received = || -> Vec<String> {
        std::fs::read_to_string(&record).unwrap_or_default().lines().map(str::to_string).collect()
    };

    publish(&http, "ready-", 1, "t94.event").await?;
    wait_until(Duration::from_secs(30), || async {
        let lines = received();
        Ok((lines == ["ready-0"]).then_some(()))
    })
    .await
    .context("delivered while the revision is ready")?;

    // It crashes now, and at every restart; the events go once its instance is gone (one still running takes
    // them).
    std::fs::write(&crash, b"")?;
    wait_until(Duration::from_secs(30), || async {
        let revision = get(&admin, "Revision", "flaky-00001").await?;
        let crashed = condition(&revision, "ContainerHealthy")
            .is_some_and(|c| c["message"].as_str().is_some_and(|m| m.contains("crashing as asked")));
        Ok(crashed.then_some(()))
    })
    .await
    .context("the crash shows in the Revision's status")?;
    publish(&http, "crashing-", 3, "t94.event").await?;
    let dead = dead_letters.wait_for(3, Duration::from_secs(60)).await.context("dead-lettered while it crash-loops")?;
    let mut ids: Vec<String> =
        dead.iter().map(|d| d.event().map(|e| e.get("id").unwrap_or_default().to_string())).collect::<Result<_>>()?;
    ids.sort();
    assert_eq!(ids, ["crashing-0", "crashing-1", "crashing-2"]);
    assert_eq!(received(), ["ready-0"], "none reached it");

    // It starts again: the limit is back, and so are its deliveries.
    std::fs::remove_file(&crash)?;
    publish(&http, "recovered-", 1, "t94.event").await?;
    wait_until(Duration::from_secs(60), || async {
        let lines = received();
        Ok((lines == ["ready-0", "recovered-0"]).then_some(()))
    })
    .await
    .context("delivered once it is ready again")?;
    let consumers = sluice_proto::admin::consumers_client::ConsumersClient::connect(format!("http://{admin}")).await?;
    let status = trigger_status(&consumers).await?;
    let dead_lettered: u64 = status.partitions.iter().map(|p| p.dead_lettered).sum();
    assert_eq!(dead_lettered, 3, "{status:?}");
    assert_eq!(dead_letters.deliveries().len(), 3, "nothing else dead-lettered");
    Ok(())
}
