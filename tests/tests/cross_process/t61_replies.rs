//! Replies: a subscriber's 200 with an event goes back into the broker through the log (and on to the next
//! Trigger), one hop further (`knativebrokerttl` - 1, kept by the Broker and not sent to subscribers); a reply loop
//! stops when the TTL runs out; a
//! Subscription's reply goes to its `spec.reply`; a reply whose partition's leader stops answering is stored
//! through the next leader, not dead-lettered.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use sluice_cloudevent::{AttrValue, stable_hash};
use sluice_proto::admin::TransferLeaderRequest;
use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_tests::subscriber::{Delivery, Reply, Subscriber};

use super::t60_dispatch::wait_until_consumers_idle;
use sluice_tests::{
    TestCluster, apply_resource, broker_object, in_memory_channel_object, metric_sum_at, read_events,
    send_event_accepted, start_single_node, subscription_object, trigger_object,
};

fn binary_reply(id: String, event_type: &str) -> Reply {
    Reply::status(200)
        .with_header("ce-specversion", "1.0")
        .with_header("ce-id", id)
        .with_header("ce-source", "/replier")
        .with_header("ce-type", event_type)
        .with_header("content-type", "text/plain")
        .with_body("reply body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_chain_reaches_the_next_trigger_and_a_loop_stops_at_the_ttl() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 2, &[]).await?;
    let admin = cluster.nodes[0].admin.clone();
    let http = cluster.nodes[1].http.clone();

    // Chain: step.one -> (reply step.two) -> second subscriber.
    let replier = Subscriber::start(Arc::new(|delivery: &Delivery, _| match delivery.event() {
        Ok(event) if event.get("type") == Some("step.one") => {
            binary_reply(format!("reply-{}", event.get("id").unwrap_or_default()), "step.two")
        }
        Ok(event) if event.get("type") == Some("loop") => {
            // A structured reply that triggers itself again.
            let body = json!({"specversion": "1.0", "id": format!("{}+", event.get("id").unwrap_or_default()),
                "source": "/looper", "type": "loop", "data": {"hop": true}});
            Reply::status(200).with_header("content-type", "application/cloudevents+json").with_body(body.to_string())
        }
        Ok(event) if event.get("type") == Some("wide") => {
            // More attributes than ingress takes (at most 94 with the default header limits).
            let mut body = json!({"specversion": "1.0", "id": "wide-reply", "source": "/wide", "type": "wide.reply"});
            for i in 0..120 {
                body[format!("x{i}")] = json!("v");
            }
            Reply::status(200).with_header("content-type", "application/cloudevents+json").with_body(body.to_string())
        }
        _ => Reply::status(202),
    }))
    .await?;
    let second = Subscriber::start(Subscriber::ok()).await?;
    let dls = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&admin, broker_object("default", "chain", json!({}))).await?;
    let one = json!({"filter": {"attributes": {"type": "step.one"}}});
    apply_resource(&admin, trigger_object("default", "one", "chain", &replier.url(), one, json!({}))).await?;
    let two = json!({"filter": {"attributes": {"type": "step.two"}}});
    apply_resource(&admin, trigger_object("default", "two", "chain", &second.url(), two, json!({}))).await?;

    let client = reqwest::Client::new();
    for i in 0..5 {
        send_event_accepted(&client, &http, "/default/chain", &format!("e{i}"), "step.one", &[], "{}").await?;
    }
    let replies = second.wait_for(5, Duration::from_secs(60)).await?;
    let mut ids: Vec<String> = Vec::new();
    for delivery in &replies {
        let event = delivery.event()?;
        assert_eq!(event.get("type"), Some("step.two"));
        // Regression: every subscriber got the Broker's TTL; Knative's broker deletes it before sending.
        assert_eq!(event.get("knativebrokerttl"), None, "the Broker's TTL is not sent to a subscriber");
        assert_eq!(delivery.body.as_ref(), b"reply body", "reply data unchanged");
        ids.push(event.get("id").unwrap_or_default().to_string());
    }
    ids.sort();
    assert_eq!(ids, (0..5).map(|i| format!("reply-e{i}")).collect::<Vec<_>>());
    let stored = read_events(&admin, "broker/default/chain", 2).await?;
    let stored_replies: Vec<_> = stored.iter().filter(|e| e.get_str("type") == Some("step.two")).collect();
    assert_eq!(stored_replies.len(), 5);
    for reply in stored_replies {
        assert_eq!(reply.get("knativebrokerttl"), Some(&AttrValue::Integer(254)), "one hop further than 255");
    }

    // Loop: a broker with TTL 4; the looping Trigger sees TTL 4, 3, 2, 1, then the reply is dead-lettered.
    apply_resource(&admin, broker_object("default", "loop", json!({"sluice.dev/ttl": "4"}))).await?;
    let looping =
        json!({"filter": {"attributes": {"type": "loop"}}, "delivery": {"deadLetterSink": {"uri": dls.url()}}});
    apply_resource(
        &admin,
        trigger_object("default", "looping", "loop", &format!("{}loop", replier.url()), looping, json!({})),
    )
    .await?;
    send_event_accepted(&client, &http, "/default/loop", "L", "loop", &[], "{}").await?;
    let dead = dls.wait_for(1, Duration::from_secs(60)).await?;
    let dead_event = dead[0].event()?;
    assert_eq!(dead_event.get("id"), Some("L++++"), "the fifth reply, which has no hop left");
    assert!(dead_event.get("sluiceerrorreason").is_some_and(|r| r.contains("knativebrokerttl")), "{dead_event:?}");
    // Regression: the dead letter kept no TTL, and a redrive of it ran the loop again from the default 255.
    assert_eq!(dead_event.get("knativebrokerttl"), Some("1"), "one hop left for a redrive: {dead_event:?}");
    let hops: Vec<String> = replier
        .deliveries()
        .iter()
        .filter(|d| d.path == "/loop")
        .filter_map(|d| d.event().ok())
        .map(|e| format!("{}:{}", e.get("id").unwrap_or_default(), e.get("knativebrokerttl").unwrap_or("none")))
        .collect();
    assert_eq!(hops, ["L:none", "L+:none", "L++:none", "L+++:none"], "the subscriber sees no TTL");
    let mut stored: Vec<String> = read_events(&admin, "broker/default/loop", 2)
        .await?
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e.get_str("id").unwrap_or_default(),
                e.get("knativebrokerttl").map(|t| t.canonical()).unwrap_or_default()
            )
        })
        .collect();
    stored.sort();
    assert_eq!(stored, ["L+++:1", "L++:2", "L+:3", "L:4"], "each reply stored one hop further");

    // Regression: a reply was stored past the attribute limits ingress holds events to, and every binary-mode
    // delivery of it was refused (431). It is refused as ingress refuses it, and the event is dead-lettered.
    let wide_dls = Subscriber::start(Subscriber::ok()).await?;
    let wide =
        json!({"filter": {"attributes": {"type": "wide"}}, "delivery": {"deadLetterSink": {"uri": wide_dls.url()}}});
    apply_resource(&admin, trigger_object("default", "wide", "chain", &replier.url(), wide, json!({}))).await?;
    send_event_accepted(&client, &http, "/default/chain", "W", "wide", &[], "{}").await?;
    let dead = wide_dls.wait_for(1, Duration::from_secs(60)).await?[0].event()?;
    assert_eq!(dead.get("id"), Some("W"), "the event whose reply was refused");
    assert!(dead.get("sluiceerrorreason").is_some_and(|r| r.contains("too many attributes")), "{dead:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_deliver_a_channel_and_forward_replies_to_spec_reply() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 2, &[]).await?;
    let admin = cluster.nodes[0].admin.clone();
    let http = cluster.nodes[2].http.clone();
    let replier = Subscriber::start(Arc::new(|delivery: &Delivery, _| match delivery.event() {
        Ok(event) => binary_reply(format!("answer-{}", event.get("id").unwrap_or_default()), "answer"),
        Err(_) => Reply::status(400),
    }))
    .await?;
    let reply_sink = Subscriber::start(Subscriber::ok()).await?;
    let plain = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&admin, in_memory_channel_object("default", "c")).await?;
    let subscription = |name: &str, subscriber: String, reply: Option<String>| {
        let spec = reply.map_or_else(|| json!({}), |reply| json!({"reply": {"uri": reply}}));
        subscription_object("default", name, "c", &subscriber, spec)
    };
    apply_resource(&admin, subscription("answering", replier.url(), Some(reply_sink.url()))).await?;
    apply_resource(&admin, subscription("plain", plain.url(), None)).await?;
    let client = reqwest::Client::new();
    for i in 0..4 {
        send_event_accepted(&client, &http, "/channels/default/c", &format!("m{i}"), "message", &[], "{}").await?;
    }
    let plain_got = plain.wait_for(4, Duration::from_secs(60)).await?;
    assert!(plain_got.iter().all(|d| d.event().is_ok_and(|e| e.get("type") == Some("message"))));
    let answers = reply_sink.wait_for(4, Duration::from_secs(60)).await?;
    let mut ids: Vec<String> =
        answers.iter().filter_map(|d| d.event().ok()).map(|e| e.get("id").unwrap_or_default().to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["answer-m0", "answer-m1", "answer-m2", "answer-m3"]);
    Ok(())
}

/// A subscriber that answers each event with a reply, on InMemoryChannel `c` through Subscription `s`, whose
/// replies go to `reply_uri`, with `delivery`.
async fn replying_subscription(
    node: &sluice_tests::NodeProc,
    reply_uri: String,
    delivery: serde_json::Value,
) -> anyhow::Result<Subscriber> {
    let replier = Subscriber::start(Arc::new(|delivery: &Delivery, _| match delivery.event() {
        Ok(event) => binary_reply(format!("answer-{}", event.get("id").unwrap_or_default()), "answer"),
        Err(_) => Reply::status(400),
    }))
    .await?;
    apply_resource(&node.admin, in_memory_channel_object("default", "c")).await?;
    let spec = json!({"reply": {"uri": reply_uri}, "delivery": delivery});
    apply_resource(&node.admin, subscription_object("default", "s", "c", &replier.url(), spec)).await?;
    Ok(replier)
}

/// Regression: a Subscription's reply that its reply destination refused with a retryable error was retried on
/// its own, and the event counted as delivered; Knative's conformance retries the entire delivery (the event
/// sent to the subscriber again) up to `retry` times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_the_reply_destination_refuses_for_now_retries_the_whole_delivery() -> anyhow::Result<()> {
    let (_root, node) = start_single_node(1, &[]).await?;
    let refusals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = refusals.clone();
    let reply_sink = Subscriber::start(Arc::new(move |_: &Delivery, _| {
        if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            Reply::status(503)
        } else {
            Reply::status(202)
        }
    }))
    .await?;
    let delivery = json!({"retry": 5, "backoffPolicy": "linear", "backoffDelay": "PT0.05S"});
    let replier = replying_subscription(&node, reply_sink.url(), delivery).await?;
    send_event_accepted(&reqwest::Client::new(), &node.http, "/channels/default/c", "m0", "message", &[], "{}").await?;
    reply_sink.wait_for(3, Duration::from_secs(60)).await?;
    // Settled and committed: a forward or a delivery too many would have been made by now, and counted.
    wait_until_consumers_idle(&node.admin, "subscription", &["s"]).await?;
    assert_eq!(reply_sink.deliveries().len(), 3, "two refusals, then the reply taken, and nothing more");
    let sent = replier.deliveries();
    assert_eq!(sent.len(), 3, "the event went to the subscriber again with each retry of the reply");
    assert!(sent.iter().all(|d| d.event().is_ok_and(|e| e.get("id") == Some("m0"))));
    Ok(())
}

/// Regression: when the reply destination answered 503 with `Retry-After`, the retry of the whole delivery came
/// after the 50 ms backoff: the header read was the subscriber's 200's, which has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_reply_destinations_retry_after_paces_the_retry() -> anyhow::Result<()> {
    let (_root, node) = start_single_node(1, &[]).await?;
    let reply_sink = Subscriber::start(Arc::new(|_: &Delivery, attempt| match attempt {
        1 => Reply::status(503).with_header("retry-after", "2"),
        _ => Reply::status(202),
    }))
    .await?;
    let delivery = json!({"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.05S"});
    let replier = replying_subscription(&node, reply_sink.url(), delivery).await?;
    send_event_accepted(&reqwest::Client::new(), &node.http, "/channels/default/c", "m0", "message", &[], "{}").await?;
    reply_sink.wait_for(2, Duration::from_secs(60)).await?;
    wait_until_consumers_idle(&node.admin, "subscription", &["s"]).await?;
    assert_eq!(reply_sink.deliveries().len(), 2, "one refusal, then the reply taken");
    let sent = replier.deliveries();
    assert_eq!(sent.len(), 2, "one retry of the whole delivery");
    let gap_ms = sent[1].at.duration_since(sent[0].at).as_millis();
    // Never earlier than Retry-After (less the clock's granularity), whatever the load.
    assert!(gap_ms >= 1_980, "the retry came {gap_ms} ms after the first attempt, not after Retry-After: 2");
    Ok(())
}

/// When a Subscription's reply keeps being refused, the event is dead-lettered once its retries run out, with
/// the reply destination's answer in its error attributes (not the subscriber's 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_refused_every_time_dead_letters_the_event_naming_the_reply_destination() -> anyhow::Result<()> {
    let (_root, node) = start_single_node(1, &[]).await?;
    let reply_sink = Subscriber::start(Arc::new(|_: &Delivery, _| Reply::status(503))).await?;
    let dead_letters = Subscriber::start(Subscriber::ok()).await?;
    let delivery = json!({"retry": 2, "backoffPolicy": "linear", "backoffDelay": "PT0.05S",
        "deadLetterSink": {"uri": dead_letters.url()}});
    let replier = replying_subscription(&node, reply_sink.url(), delivery).await?;
    send_event_accepted(&reqwest::Client::new(), &node.http, "/channels/default/c", "m0", "message", &[], "{}").await?;
    let letters = dead_letters.wait_for(1, Duration::from_secs(60)).await?;
    let letter = letters[0].event()?;
    assert_eq!(letter.get("id"), Some("m0"), "the event itself is dead-lettered");
    assert_eq!(letter.get("knativeerrordest"), Some(reply_sink.url().as_str()));
    assert_eq!(letter.get("knativeerrorcode"), Some("503"));
    assert_eq!(replier.deliveries().len(), 3, "the first attempt and two retries");
    Ok(())
}

/// Regression: a Subscription without `spec.reply` that got a 200 whose body looked like an event but was not
/// one (structured content type, broken JSON) dead-lettered the delivered event with `knativeerrorcode` 200;
/// Knative drops a reply that has nowhere to go, and a 200 is a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_without_a_reply_destination_ignores_a_broken_reply_and_counts_the_delivery()
-> anyhow::Result<()> {
    let (_root, node) = start_single_node(1, &[]).await?;
    let answering = Subscriber::start(Arc::new(|_: &Delivery, _| {
        Reply::status(200).with_header("content-type", "application/cloudevents+json").with_body("{not an event")
    }))
    .await?;
    let dead_letters = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&node.admin, in_memory_channel_object("default", "c")).await?;
    let spec = json!({"delivery": {"deadLetterSink": {"uri": dead_letters.url()}}});
    apply_resource(&node.admin, subscription_object("default", "quiet", "c", &answering.url(), spec)).await?;
    let client = reqwest::Client::new();
    for id in ["m0", "m1"] {
        send_event_accepted(&client, &node.http, "/channels/default/c", id, "message", &[], "{}").await?;
    }
    answering.wait_for(2, Duration::from_secs(60)).await?;
    // Both settled (a dead letter is sent before its event settles), and both as delivered.
    let settled = sluice_tests::wait_until(Duration::from_secs(60), || async {
        let text = reqwest::get(format!("http://{}/metrics", node.http)).await?.text().await?;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("sluice_dispatch_settled_total{") && l.contains(r#"consumer="quiet""#))
            .map(String::from)
            .collect();
        let total: f64 = lines.iter().filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
        Ok((total >= 2.0).then_some(lines))
    })
    .await?;
    assert!(settled.iter().all(|l| l.contains(r#"outcome="delivered""#)), "{settled:?}");
    assert!(dead_letters.deliveries().is_empty(), "nothing is dead-lettered");
    Ok(())
}

/// Regression: a Trigger's reply that kept the `source` and `id` of the event it answers (a transformer that
/// changed only its type) was taken by the Broker's dedupe window for that event and dropped, acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_keeps_the_identity_of_its_event_reaches_the_next_trigger() -> anyhow::Result<()> {
    let (_root, node) = start_single_node(1, &[]).await?;
    let transformer = Subscriber::start(Arc::new(|delivery: &Delivery, _| match delivery.event() {
        Ok(event) if event.get("type") == Some("raw") => Reply::status(200)
            .with_header("ce-specversion", "1.0")
            .with_header("ce-id", event.get("id").unwrap_or_default())
            .with_header("ce-source", event.get("source").unwrap_or_default())
            .with_header("ce-type", "transformed")
            .with_header("content-type", "text/plain")
            .with_body("transformed"),
        _ => Reply::status(202),
    }))
    .await?;
    let next = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&node.admin, broker_object("default", "b", json!({}))).await?;
    let raw = json!({"filter": {"attributes": {"type": "raw"}}});
    apply_resource(&node.admin, trigger_object("default", "transform", "b", &transformer.url(), raw, json!({})))
        .await?;
    let transformed = json!({"filter": {"attributes": {"type": "transformed"}}});
    apply_resource(&node.admin, trigger_object("default", "next", "b", &next.url(), transformed, json!({}))).await?;
    let client = reqwest::Client::new();
    for id in ["k0", "k1"] {
        send_event_accepted(&client, &node.http, "/default/b", id, "raw", &[], "{}").await?;
    }
    let got = next.wait_for(2, Duration::from_secs(60)).await?;
    let mut ids: Vec<String> =
        got.iter().filter_map(|d| d.event().ok()).map(|e| e.get("id").unwrap_or_default().to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["k0", "k1"]);
    Ok(())
}

/// Regression: a Trigger's reply forwarded to its partition's leader while that leader stopped answering
/// (frozen, or cut off from the dispatching node, its connection still open) waited for the forward's timeout,
/// 10 s, though the other nodes elected a new leader within a second; that spent the reply's whole retry budget
/// (10 s from its first try), and under the default `retry: 0` the event, which the subscriber had processed,
/// was dead-lettered. The forward now gives up once its leader is deposed, and the reply is stored through the
/// new one, its retry counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_reply_forwarded_to_a_frozen_leader_is_stored_through_the_next_one() -> anyhow::Result<()> {
    // Elections after a second without a heartbeat, not 200 ms: on a loaded machine the reply still reaches the
    // frozen leader before the others can start one.
    let mut cluster = TestCluster::start(3, 2, &["--election-timeout-ms", "1000"]).await?;
    // The events go to partition 0 and their replies to partition 1 (by `partitionkey`), each led by its own node.
    let key_of =
        |partition: u64| (0..).map(|i| format!("key-{i}")).find(|k| stable_hash(&[k.as_bytes()]) % 2 == partition);
    let (event_key, reply_key) = (key_of(0).unwrap_or_default(), key_of(1).unwrap_or_default());
    let event_leader = cluster.leader_of(1).await?;
    let mut reply_leader = cluster.leader_of(2).await?;
    let (admin, http) = (cluster.node(event_leader).admin.clone(), cluster.node(event_leader).http.clone());
    if reply_leader == event_leader {
        let to_node_id = cluster.nodes.iter().map(|n| n.id).find(|id| *id != event_leader).unwrap_or_default();
        let mut client = ClusterClient::connect(format!("http://{admin}")).await?;
        reply_leader =
            client.transfer_leader(TransferLeaderRequest { group_id: 2, to_node_id }).await?.into_inner().leader_id;
    }
    anyhow::ensure!(reply_leader != event_leader, "partition 1 still led by partition 0's leader");

    // The replier freezes partition 1's leader (SIGSTOP) just before it answers the first event asked after
    // `freeze` is set: that reply is forwarded to a leader that no longer answers, milliseconds after, while the
    // others wait at least an election timeout (a second here) from its last heartbeat to elect another.
    let reply_leader_pid = cluster.node(reply_leader).pid().unwrap_or_default();
    let freeze = Arc::new(AtomicBool::new(false));
    let freeze_in_replier = freeze.clone();
    let replier = Subscriber::start(Arc::new(move |delivery: &Delivery, _| match delivery.event() {
        Ok(event) if event.get("type") == Some("ask") => {
            if freeze_in_replier.swap(false, Ordering::SeqCst) {
                let stopped =
                    std::process::Command::new("kill").arg("-STOP").arg(reply_leader_pid.to_string()).status();
                assert!(stopped.is_ok_and(|s| s.success()), "SIGSTOP of node {reply_leader}");
            }
            binary_reply(format!("answer-{}", event.get("id").unwrap_or_default()), "answer")
                .with_header("ce-partitionkey", reply_key.clone())
        }
        _ => Reply::status(202),
    }))
    .await?;
    let answers = Subscriber::start(Subscriber::ok()).await?;
    let dead_letters = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&admin, broker_object("default", "b", json!({}))).await?;
    let ask =
        json!({"filter": {"attributes": {"type": "ask"}}, "delivery": {"deadLetterSink": {"uri": dead_letters.url()}}});
    apply_resource(&admin, trigger_object("default", "ask", "b", &replier.url(), ask, json!({}))).await?;
    let answer = json!({"filter": {"attributes": {"type": "answer"}}});
    apply_resource(&admin, trigger_object("default", "answer", "b", &answers.url(), answer, json!({}))).await?;

    let client = reqwest::Client::new();
    let ask = |i: usize| {
        let (client, http, key) = (client.clone(), http.clone(), event_key.clone());
        async move {
            let id = format!("q{i:02}");
            send_event_accepted(&client, &http, "/default/b", &id, "ask", &[("partitionkey", &key)], "{}").await
        }
    };
    const BEFORE: usize = 5;
    const DURING: usize = 10;
    for i in 0..BEFORE {
        ask(i).await?;
    }
    answers.wait_for(BEFORE, Duration::from_secs(60)).await?;

    // Partition 1's leader stops answering as the first reply is sent to it; the events keep coming (partition 0
    // commits with the third node).
    freeze.store(true, Ordering::SeqCst);
    for i in BEFORE..BEFORE + DURING {
        ask(i).await?;
    }
    let expected: BTreeSet<String> = (0..BEFORE + DURING).map(|i| format!("answer-q{i:02}")).collect();
    let answered = |deliveries: &[Delivery]| -> BTreeSet<String> {
        deliveries.iter().filter_map(|d| d.header("ce-id").map(str::to_string)).collect()
    };
    let settled = answers.wait_until(Duration::from_secs(60), |d| expected.is_subset(&answered(d))).await;
    let dead: Vec<String> =
        dead_letters.deliveries().iter().filter_map(|d| d.header("ce-id").map(str::to_string)).collect();
    cluster.node(reply_leader).signal("CONT")?;
    assert!(dead.is_empty(), "events the subscriber answered were dead-lettered: {dead:?}");
    settled?;
    let retried = metric_sum_at(&http, "sluice_dispatch_append_retries_total", &["append=\"reply\""]).await?;
    assert!(retried >= 1.0, "no reply append was tried again ({retried})");
    let abandoned = metric_sum_at(&http, "sluice_forwards_abandoned_total", &["group=\"partition-1\""]).await?;
    assert!(abandoned >= 1.0, "no forward to the frozen leader was given up ({abandoned})");
    Ok(())
}
