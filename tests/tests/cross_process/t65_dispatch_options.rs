//! Consumer options end to end: where a new Trigger starts (`creationTimestamp`, or
//! `sluice.dev/initial-offset: earliest`), h2c subscribers (and only subscribers), `sluice.dev/dead-letter: drop`,
//! and the dispatch metrics with Knative's labels.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sluice_tests::subscriber::{Delivery, Reply, Subscriber};
use sluice_tests::{
    apply_resource, broker_object, in_memory_channel_object, read_events, send_event_accepted, subscription_object,
    trigger_object,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_triggers_start_at_creation_unless_earliest() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(2, &[]).await?;
    apply_resource(&node.admin, broker_object("default", "b", json!({}))).await?;
    let client = reqwest::Client::new();
    for i in 0..5 {
        send_event_accepted(&client, &node.http, "/default/b", &format!("old-{i}"), "t", &[], "{}").await?;
    }
    // creationTimestamp has one-second precision: make sure the old events are from an earlier second.
    let before = chrono_second();
    sluice_tests::wait_until(Duration::from_secs(3), || async { Ok((chrono_second() > before).then_some(())) }).await?;
    let latest = Subscriber::start(Subscriber::ok()).await?;
    let earliest = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&node.admin, trigger_object("default", "latest", "b", &latest.url(), json!({}), json!({}))).await?;
    let annotations = json!({"sluice.dev/initial-offset": "earliest", "sluice.dev/subscriber-protocol": "h2c"});
    apply_resource(&node.admin, trigger_object("default", "earliest", "b", &earliest.url(), json!({}), annotations))
        .await?;
    for i in 0..3 {
        send_event_accepted(&client, &node.http, "/default/b", &format!("new-{i}"), "t", &[], "{}").await?;
    }
    let all = earliest.wait_for(8, Duration::from_secs(60)).await?;
    assert!(all.iter().all(|d| d.http_version == "HTTP/2.0"), "h2c: {:?}", all[0].http_version);
    let fresh = latest.wait_for(3, Duration::from_secs(60)).await?;
    let mut ids: Vec<String> = fresh.iter().map(|d| d.header("ce-id").unwrap_or_default().to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["new-0", "new-1", "new-2"], "only events from the Trigger's creation on");
    assert!(fresh.iter().all(|d| d.http_version == "HTTP/1.1"));

    // Metrics with Knative's labels, on the node that dispatched (counted once each response is handled).
    let metrics_url = format!("http://{}/metrics", node.http);
    let delivered = sluice_tests::wait_until(Duration::from_secs(20), || async {
        let metrics = client.get(&metrics_url).send().await?.text().await?;
        let line = metrics.lines().find(|l| {
            l.starts_with("event_count{")
                && l.contains("trigger_name=\"earliest\"")
                && l.contains("response_code=\"202\"")
        });
        Ok(line.filter(|l| l.ends_with(" 8")).map(str::to_string))
    })
    .await?;
    assert!(delivered.contains("broker_name=\"b\"") && delivered.contains("namespace_name=\"default\""), "{delivered}");
    // Per-consumer gauges are published on the dispatcher's commit tick (every second by default).
    sluice_tests::wait_until(Duration::from_secs(20), || async {
        let metrics = client.get(&metrics_url).send().await?.text().await?;
        Ok(metrics.contains("sluice_dispatch_backlog{").then_some(()))
    })
    .await?;
    Ok(())
}

fn chrono_second() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_drop_restores_knatives_drop() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    let rejecting = Subscriber::start(Arc::new(|_: &Delivery, _| Reply::status(422))).await?;
    let after = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&node.admin, broker_object("default", "b", json!({}))).await?;
    let only = |t: &str| json!({"filter": {"attributes": {"type": t}}});
    apply_resource(
        &node.admin,
        trigger_object(
            "default",
            "dropping",
            "b",
            &rejecting.url(),
            only("x"),
            json!({"sluice.dev/dead-letter": "drop"}),
        ),
    )
    .await?;
    apply_resource(&node.admin, trigger_object("default", "keeping", "b", &rejecting.url(), only("x"), json!({})))
        .await?;
    apply_resource(&node.admin, trigger_object("default", "after", "b", &after.url(), only("y"), json!({}))).await?;
    let client = reqwest::Client::new();
    send_event_accepted(&client, &node.http, "/default/b", "x1", "x", &[], "{}").await?;
    rejecting.wait_for(2, Duration::from_secs(60)).await?;
    // The kept one shows up in its dead-letter stream; the dropped one never does.
    let kept = sluice_tests::wait_until(Duration::from_secs(20), || async {
        let events = read_events(&node.admin, "deadletter/trigger/default/keeping", 1).await?;
        Ok((!events.is_empty()).then_some(events))
    })
    .await?;
    assert_eq!(kept[0].get("knativeerrorcode"), Some(&sluice_cloudevent::AttrValue::Integer(422)));
    // Both settled: a later event to another Trigger is delivered, and the dropping Trigger's stream is empty.
    send_event_accepted(&client, &node.http, "/default/b", "y1", "y", &[], "{}").await?;
    after.wait_for(1, Duration::from_secs(60)).await?;
    let metrics_url = format!("http://{}/metrics", node.http);
    sluice_tests::wait_until(Duration::from_secs(20), || async {
        let metrics = client.get(&metrics_url).send().await?.text().await?;
        let dropped =
            metrics.lines().find(|l| l.starts_with("sluice_dispatch_dropped_total{") && l.contains("dropping"));
        Ok(dropped.is_some_and(|l| l.ends_with(" 1")).then_some(()))
    })
    .await?;
    assert!(read_events(&node.admin, "deadletter/trigger/default/dropping", 1).await?.is_empty());
    Ok(())
}

/// The events of a batched request (`application/cloudevents-batch+json`), as Sluice's ingress reads them.
fn batch_of(delivery: &Delivery) -> anyhow::Result<Vec<sluice_cloudevent::CloudEvent>> {
    anyhow::ensure!(
        delivery.header("content-type") == Some("application/cloudevents-batch+json"),
        "not a batch: {:?}",
        delivery.header("content-type")
    );
    Ok(sluice_cloudevent::from_batch(&delivery.body, 1_000)?)
}

async fn send_batch_accepted(
    client: &reqwest::Client,
    http: &str,
    ids: &[String],
    event_type: &str,
) -> anyhow::Result<()> {
    let events: Vec<_> = ids
        .iter()
        .map(|id| json!({"specversion": "1.0", "id": id, "source": "/t65", "type": event_type, "data": {"id": id}}))
        .collect();
    let response = client
        .post(format!("http://{http}/default/b"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_vec(&events)?)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 202, "ingress answered {}", response.status());
    Ok(())
}

/// `sluice.dev/delivery-batch-max-events`: a subscriber that opts in receives the events in CloudEvents' batched
/// mode, at most N per request, each once; a batch that fails is dead-lettered event by event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_subscriber_takes_batches_and_a_failed_batch_is_dead_lettered_event_by_event() -> anyhow::Result<()>
{
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    apply_resource(&node.admin, broker_object("default", "b", json!({}))).await?;
    let client = reqwest::Client::new();
    // A backlog is there before the Trigger: its first reads find many events ready at once.
    let ids: Vec<String> = (0..25).map(|i| format!("e{i:02}")).collect();
    send_batch_accepted(&client, &node.http, &ids, "x").await?;
    let batched = Subscriber::start(Subscriber::ok()).await?;
    let only = |t: &str| json!({"filter": {"attributes": {"type": t}}});
    let annotations = json!({"sluice.dev/initial-offset": "earliest", "sluice.dev/delivery-batch-max-events": "10"});
    apply_resource(&node.admin, trigger_object("default", "batched", "b", &batched.url(), only("x"), annotations))
        .await?;
    let mut received: Vec<String> = Vec::new();
    let deliveries = batched
        .wait_until(Duration::from_secs(60), |deliveries| {
            let events: usize = deliveries.iter().map(|d| batch_of(d).map_or(0, |b| b.len())).sum();
            events >= ids.len()
        })
        .await?;
    let mut largest = 0;
    for delivery in &deliveries {
        let batch = batch_of(delivery)?;
        assert!(!batch.is_empty() && batch.len() <= 10, "1 to 10 events per request: {}", batch.len());
        assert_eq!(delivery.header("prefer"), None, "a batch asks for no reply");
        largest = largest.max(batch.len());
        let batch_ids: Vec<&str> = batch.iter().filter_map(|e| e.get_str("id")).collect();
        assert!(batch_ids.is_sorted(), "a batch is in log order: {batch_ids:?}");
        received.extend(batch.iter().filter_map(|e| e.get_str("id").map(str::to_string)));
    }
    assert!(largest > 1, "a backlog goes in batches, not one by one");
    // Batches of an unordered Trigger run side by side; each is in log order.
    received.sort();
    assert_eq!(received, ids, "every event exactly once");

    // A subscriber that refuses the batch (422, not retryable): every event is dead-lettered on its own.
    let refusing = Subscriber::start(Arc::new(|_: &Delivery, _| Reply::status(422))).await?;
    let annotations = json!({"sluice.dev/initial-offset": "earliest", "sluice.dev/delivery-batch-max-events": "10"});
    apply_resource(&node.admin, trigger_object("default", "refused", "b", &refusing.url(), only("y"), annotations))
        .await?;
    let refused_ids: Vec<String> = (0..3).map(|i| format!("r{i}")).collect();
    send_batch_accepted(&client, &node.http, &refused_ids, "y").await?;
    let dead = sluice_tests::wait_until(Duration::from_secs(60), || async {
        let events = read_events(&node.admin, "deadletter/trigger/default/refused", 1).await?;
        Ok((events.len() >= refused_ids.len()).then_some(events))
    })
    .await?;
    let mut dead_ids: Vec<&str> = dead.iter().filter_map(|e| e.get_str("id")).collect();
    dead_ids.sort_unstable();
    assert_eq!(dead_ids, ["r0", "r1", "r2"], "each event of the batch, once");
    assert!(dead.iter().all(|e| e.get("knativeerrorcode") == Some(&sluice_cloudevent::AttrValue::Integer(422))));
    let offsets: std::collections::BTreeSet<&str> =
        dead.iter().filter_map(|e| e.get_str("sluicesourceoffset")).collect();
    assert_eq!(offsets.len(), 3, "each dead letter names its own offset: {offsets:?}");
    Ok(())
}

/// Regression: `sluice.dev/subscriber-protocol: h2c` was used for every URL a delivery sent to, so a dead-letter
/// sink or a Subscription's reply address that speaks only HTTP/1.1 failed every time (and with
/// `sluice.dev/dead-letter: drop` the events were lost). The subscriber alone is sent h2c; the test servers speak
/// both and record which one came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_subscriber_is_sent_h2c_not_the_dead_letter_sink_or_the_reply_address() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    let h2c = json!({"sluice.dev/subscriber-protocol": "h2c"});
    let client = reqwest::Client::new();

    let failing = Subscriber::start(Arc::new(|_: &Delivery, _| Reply::status(500))).await?;
    let sink = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&node.admin, broker_object("default", "b", json!({}))).await?;
    let spec = json!({"delivery": {"deadLetterSink": {"uri": sink.url()}}});
    apply_resource(&node.admin, trigger_object("default", "failing", "b", &failing.url(), spec, h2c.clone())).await?;
    send_event_accepted(&client, &node.http, "/default/b", "x1", "x", &[], "{}").await?;
    let letters = sink.wait_for(1, Duration::from_secs(60)).await?;
    let attempts = failing.deliveries();
    assert!(!attempts.is_empty() && attempts.iter().all(|d| d.http_version == "HTTP/2.0"), "the subscriber: h2c");
    assert_eq!(letters[0].http_version, "HTTP/1.1", "the dead-letter sink is not the subscriber");
    assert_eq!(letters[0].event()?.get("knativeerrorcode"), Some("500"));

    let replier = Subscriber::start(Arc::new(|_: &Delivery, _| {
        Reply::status(200)
            .with_header("ce-specversion", "1.0")
            .with_header("ce-id", "answer")
            .with_header("ce-source", "/replier")
            .with_header("ce-type", "answer")
            .with_header("content-type", "text/plain")
            .with_body("reply body")
    }))
    .await?;
    let reply_address = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&node.admin, in_memory_channel_object("default", "c")).await?;
    let mut subscription =
        subscription_object("default", "s", "c", &replier.url(), json!({"reply": {"uri": reply_address.url()}}));
    subscription
        .pointer_mut("/metadata")
        .and_then(serde_json::Value::as_object_mut)
        .context("a Subscription object has metadata")?
        .insert("annotations".into(), h2c);
    apply_resource(&node.admin, subscription).await?;
    send_event_accepted(&client, &node.http, "/channels/default/c", "m1", "message", &[], "{}").await?;
    let replies = reply_address.wait_for(1, Duration::from_secs(60)).await?;
    let sent = replier.deliveries();
    assert!(!sent.is_empty() && sent.iter().all(|d| d.http_version == "HTTP/2.0"), "the subscriber: h2c");
    assert_eq!(replies[0].http_version, "HTTP/1.1", "the reply address is not the subscriber");
    assert_eq!(replies[0].event()?.get("id"), Some("answer"));
    Ok(())
}
