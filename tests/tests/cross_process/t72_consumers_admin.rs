//! The Consumers and DeadLetters admin services end to end on 3 nodes: status with backlog growing while
//! paused and draining after resume; replay by time delivers exactly the events from that time again;
//! dead letters listed, redriven once the subscriber is fixed (and what fails again stays), purged; the CLI.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use sluice_proto::admin::consumers_client::ConsumersClient;
use sluice_proto::admin::dead_letters_client::DeadLettersClient;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{
    ApplyResourceRequest, ConsumerRef, DeadLetterList, DeadLetterPosition, ListDeadLettersRequest, PurgeRequest,
    RedriveProgress, RedriveRequest, ReplayRequest, ResourceRef, replay_request,
};
use sluice_tests::subscriber::{Delivery, Gate, Reply, Subscriber};
use sluice_tests::{TestCluster, apply_resource, broker_object, send_event_accepted, trigger_object, wait_until};

fn trigger(name: &str) -> ConsumerRef {
    ConsumerRef { kind: "trigger".into(), namespace: "default".into(), name: name.into() }
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    let mut ids: Vec<String> = deliveries.iter().map(|d| d.header("ce-id").unwrap_or_default().to_string()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_replay_by_time_and_status() -> anyhow::Result<()> {
    // One partition: "nothing else" below is checked once the partition's dispatcher is idle.
    let cluster = TestCluster::start(3, 1, &["--dispatch-commit-interval-ms", "200"]).await?;
    let admin = cluster.nodes[1].admin.clone();
    let http = cluster.nodes[2].http.clone();
    let subscriber = Subscriber::start(Subscriber::ok()).await?;
    // A second Trigger, never paused: its deliveries show that the partition's dispatcher has read the events
    // that the paused one must not deliver.
    let witness = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&admin, broker_object("default", "b", json!({}))).await?;
    apply_resource(&admin, trigger_object("default", "t", "b", &subscriber.url(), json!({}), json!({}))).await?;
    apply_resource(&admin, trigger_object("default", "w", "b", &witness.url(), json!({}), json!({}))).await?;
    let mut consumers = ConsumersClient::connect(format!("http://{admin}")).await?;
    let client = reqwest::Client::new();

    // Every node answers from what it has applied: wait until this one has the Trigger.
    wait_until(Duration::from_secs(20), || {
        let mut consumers = consumers.clone();
        async move { Ok(consumers.status(trigger("t")).await.ok().map(|_| ())) }
    })
    .await?;
    // A pause survives applies once every member has said it reads the entries that keep it
    // (`node/log_format.rs`): the node taking the pause sees the three nodes' publications.
    sluice_tests::wait_for_log_format(&admin, 3, 3).await?;
    // Paused: the backlog grows and nothing is delivered; resumed: it drains.
    let paused = consumers.pause(trigger("t")).await?.into_inner();
    assert!(paused.paused);
    // Applied again without the annotation (as the Kubernetes controller's resync does): still paused.
    let mut resources = ResourcesClient::connect(format!("http://{}", cluster.nodes[0].admin)).await?;
    let again = trigger_object("default", "t", "b", &subscriber.url(), json!({}), json!({}));
    let reply = resources.apply(ApplyResourceRequest { object_json: again.to_string(), dry_run: false }).await?;
    assert_eq!(reply.into_inner().outcome, "unchanged", "the pause is kept (a removed one would be `configured`)");
    let sent_from = chrono_ms();
    for i in 0..6 {
        send_event_accepted(&client, &http, "/default/b", &format!("p{i}"), "t", &[], "{}").await?;
    }
    let sent_to = chrono_ms();
    let status = wait_until(Duration::from_secs(20), || {
        let mut consumers = consumers.clone();
        async move {
            let status = consumers.status(trigger("t")).await?.into_inner();
            Ok((status.backlog == 6).then_some(status))
        }
    })
    .await?;
    assert_eq!(status.partitions[0].end_offset, 6);
    witness.wait_for(6, Duration::from_secs(30)).await?;
    wait_until(Duration::from_secs(20), || {
        let mut consumers = consumers.clone();
        async move {
            let status = consumers.status(trigger("w")).await?.into_inner();
            Ok((status.backlog == 0 && status.partitions[0].in_flight == 0).then_some(()))
        }
    })
    .await?;
    assert!(subscriber.deliveries().is_empty(), "nothing delivered while paused");
    assert_eq!(consumers.status(trigger("t")).await?.into_inner().backlog, 6, "the paused backlog stays");
    // Its oldest event's age, though nothing of it is in flight (regression: a paused backlog showed none).
    wait_until(Duration::from_secs(2), || async { Ok((chrono_ms() > sent_to).then_some(())) }).await?;
    let age_ms = consumers.status(trigger("t")).await?.into_inner().partitions[0].oldest_undelivered_age_ms;
    let at_most = chrono_ms() - sent_from;
    assert!(age_ms >= 1 && age_ms <= at_most, "the paused backlog's oldest is {age_ms} ms old (at most {at_most})");
    consumers.resume(trigger("t")).await?;
    subscriber.wait_for(6, Duration::from_secs(30)).await?;
    let drained = wait_until(Duration::from_secs(20), || {
        let mut consumers = consumers.clone();
        async move {
            let status = consumers.status(trigger("t")).await?.into_inner();
            Ok((status.backlog == 0 && status.partitions[0].delivered == 6).then_some(status))
        }
    })
    .await?;
    assert!(!drained.paused && drained.dispatchable);

    // Replay by time: exactly the events from that time on come again.
    let replay_from = chrono_ms();
    wait_until(Duration::from_secs(2), || async { Ok((chrono_ms() > replay_from).then_some(())) }).await?;
    for i in 0..4 {
        send_event_accepted(&client, &http, "/default/b", &format!("r{i}"), "t", &[], "{}").await?;
    }
    subscriber.wait_for(10, Duration::from_secs(30)).await?;
    let request = ReplayRequest {
        consumer: Some(trigger("t")),
        to: Some(replay_request::To::TimeMs(replay_from)),
        partition: None,
        wait: true,
    };
    let reply = consumers.replay(request).await?.into_inner();
    assert!(reply.applied, "applied by the dispatcher");
    // From the last committed offset (6..=10, commits trail deliveries by up to one interval) to 6.
    assert_eq!(reply.targets[0].to_offset, 6);
    assert!((6..=10).contains(&reply.targets[0].from_offset), "{:?}", reply.targets);
    subscriber.wait_for(14, Duration::from_secs(30)).await?;
    send_event_accepted(&client, &http, "/default/b", "marker", "t", &[], "{}").await?;
    subscriber.wait_for(15, Duration::from_secs(30)).await?;
    wait_until(Duration::from_secs(20), || {
        let mut consumers = consumers.clone();
        async move {
            let status = consumers.status(trigger("t")).await?.into_inner();
            Ok((status.backlog == 0 && status.partitions[0].in_flight == 0).then_some(()))
        }
    })
    .await?;
    let all = ids(&subscriber.deliveries());
    let expected: Vec<String> = {
        let mut e: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
        e.extend((0..4).flat_map(|i| [format!("r{i}"), format!("r{i}")]));
        e.push("marker".into());
        e.sort();
        e
    };
    assert_eq!(all, expected, "the replay delivered r0..r3 again, and nothing else");

    // Regression: a Trigger that never committed (here waiting for a subscriber that does not exist) counted the
    // whole stream from offset 0 as its backlog, though it starts at its creation time.
    let before_second = chrono_ms() / 1000 * 1000 + 1000;
    wait_until(Duration::from_secs(3), || async { Ok((chrono_ms() > before_second).then_some(())) }).await?;
    let mut waiting = trigger_object("default", "waiting", "b", "http://unused/", json!({}), json!({}));
    waiting["spec"]["subscriber"] =
        json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "nope"}});
    apply_resource(&admin, waiting).await?;
    let status = wait_until(Duration::from_secs(20), || {
        let mut consumers = consumers.clone();
        async move { Ok(consumers.status(trigger("waiting")).await.ok().map(|s| s.into_inner())) }
    })
    .await?;
    assert!(!status.dispatchable, "{status:?}");
    assert_eq!((status.backlog, status.partitions[0].committed_offset), (0, 11), "it starts at its creation");
    for i in 0..2 {
        send_event_accepted(&client, &http, "/default/b", &format!("n{i}"), "t", &[], "{}").await?;
    }
    let status = wait_until(Duration::from_secs(20), || {
        let mut consumers = consumers.clone();
        async move {
            let status = consumers.status(trigger("waiting")).await?.into_inner();
            Ok((status.partitions[0].end_offset == 13).then_some(status))
        }
    })
    .await?;
    assert_eq!(status.backlog, 2, "what arrived since it was made");
    Ok(())
}

/// Runs the CLI: (exit code, stdout, stderr).
async fn sluice(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(sluice_tests::sluice_bin()).args(&args).stdin(std::process::Stdio::null()).output()
    })
    .await??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

use sluice_cloudevent::clock::now_ms as chrono_ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_redriven_and_purged() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 2, &[]).await?;
    let admin = cluster.nodes[0].admin.clone();
    let http = cluster.nodes[1].http.clone();
    let broken = Arc::new(AtomicBool::new(true));
    let flag = broken.clone();
    let subscriber = Subscriber::start(Arc::new(move |_: &Delivery, _| {
        if flag.load(Ordering::SeqCst) { Reply::status(400).with_body("not today") } else { Reply::status(202) }
    }))
    .await?;
    apply_resource(&admin, broker_object("default", "b", json!({}))).await?;
    apply_resource(&admin, trigger_object("default", "d", "b", &subscriber.url(), json!({}), json!({}))).await?;
    let client = reqwest::Client::new();
    for i in 0..4 {
        send_event_accepted(&client, &http, "/default/b", &format!("d{i}"), "t", &[], "{}").await?;
    }
    let mut dlq = DeadLettersClient::connect(format!("http://{admin}")).await?;
    let listed = wait_until(Duration::from_secs(30), || {
        let mut dlq = dlq.clone();
        async move {
            let list = dlq.list(ListDeadLettersRequest { consumer: Some(trigger("d")), limit: 0 }).await?.into_inner();
            Ok((list.total == 4).then_some(list))
        }
    })
    .await?;
    assert_eq!(listed.dead_letters.len(), 4, "every dead letter listed, not only counted");
    for dead in &listed.dead_letters {
        assert_eq!(dead.error_code, "400");
        assert_eq!(dead.error_data.as_ref(), b"not today");
        assert_eq!(dead.error_dest, subscriber.url());
    }

    // Fixed: a redrive delivers them all and empties the dead-letter stream.
    broken.store(false, Ordering::SeqCst);
    let before = subscriber.deliveries().len();
    // Regression: a paused Trigger's subscriber was sent its letters (a pause is for its maintenance).
    sluice_tests::wait_for_log_format(&admin, 3, 3).await?;
    let mut consumers = ConsumersClient::connect(format!("http://{admin}")).await?;
    assert!(consumers.pause(trigger("d")).await?.into_inner().paused);
    let refused = dlq.redrive(RedriveRequest { consumer: Some(trigger("d")), ..Default::default() }).await.err();
    assert_eq!(refused.map(|status| status.code()), Some(tonic::Code::FailedPrecondition), "paused: refused");
    assert_eq!(subscriber.deliveries().len(), before, "nothing sent to the paused Trigger's subscriber");
    consumers.resume(trigger("d")).await?;
    let mut progress =
        dlq.redrive(RedriveRequest { consumer: Some(trigger("d")), ..Default::default() }).await?.into_inner();
    let mut last = None;
    while let Some(update) = progress.message().await? {
        last = Some(update);
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("no progress"))?;
    assert!(last.done);
    assert_eq!((last.total, last.delivered, last.failed), (4, 4, 0));
    let redriven = ids(&subscriber.deliveries()[before..]);
    assert_eq!(redriven, ["d0", "d1", "d2", "d3"]);
    // Redriven dead letters leave the stream (as soon as this node has applied the trim).
    wait_until(Duration::from_secs(20), || {
        let mut dlq = dlq.clone();
        async move {
            let list = dlq.list(ListDeadLettersRequest { consumer: Some(trigger("d")), limit: 0 }).await?.into_inner();
            Ok((list.total == 0).then_some(()))
        }
    })
    .await?;

    // Broken again: a redrive shows what failed again, and it stays (and purge removes it).
    broken.store(true, Ordering::SeqCst);
    send_event_accepted(&client, &http, "/default/b", "e0", "t", &[], "{}").await?;
    wait_until(Duration::from_secs(30), || {
        let mut dlq = dlq.clone();
        async move {
            let list = dlq.list(ListDeadLettersRequest { consumer: Some(trigger("d")), limit: 0 }).await?.into_inner();
            Ok((list.total == 1).then_some(()))
        }
    })
    .await?;
    let mut progress =
        dlq.redrive(RedriveRequest { consumer: Some(trigger("d")), ..Default::default() }).await?.into_inner();
    let mut last = None;
    while let Some(update) = progress.message().await? {
        last = Some(update);
    }
    assert_eq!(last.map(|l| (l.delivered, l.failed)), Some((0, 1)));
    let list = wait_until(Duration::from_secs(20), || {
        let mut dlq = dlq.clone();
        async move {
            let list = dlq.list(ListDeadLettersRequest { consumer: Some(trigger("d")), limit: 0 }).await?.into_inner();
            // The old copy is trimmed and the new one appended.
            Ok((list.total == 1 && list.dead_letters.first().is_some_and(|d| d.offset > 0)).then_some(list))
        }
    })
    .await?;
    assert_eq!(list.dead_letters[0].attributes.get("id").map(String::as_str), Some("e0"));
    let purged = dlq.purge(PurgeRequest { consumer: Some(trigger("d")) }).await?.into_inner();
    assert_eq!(purged.purged, 1);

    // The CLI: status as JSON, dlq list, and exit code 3 for a Trigger that does not exist.
    let (code, out, err) = sluice(&["trigger", "status", "d", "--admin", &admin, "-o", "json"]).await?;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(status["name"], "d");
    assert!(status["partitions"].as_array().is_some_and(|p| p.len() == 2));
    let (code, out, err) = sluice(&["dlq", "list", "d", "--admin", &admin]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 dead letter(s)"), "{out}");
    let (code, _, err) = sluice(&["trigger", "status", "missing", "--admin", &admin]).await?;
    assert_eq!(code, 3, "not found: {err}");
    assert!(err.contains("CONSUMER_NOT_FOUND 1012"), "{err}");
    Ok(())
}

fn subscription(name: &str) -> ConsumerRef {
    ConsumerRef { kind: "subscription".into(), namespace: "default".into(), name: name.into() }
}

/// Runs a redrive to its end: the last progress.
async fn redrive(
    dlq: &mut DeadLettersClient<tonic::transport::Channel>,
    request: RedriveRequest,
) -> anyhow::Result<RedriveProgress> {
    let mut progress = dlq.redrive(request).await?.into_inner();
    let mut last = None;
    while let Some(update) = progress.message().await? {
        last = Some(update);
    }
    last.ok_or_else(|| anyhow::anyhow!("no progress"))
}

/// The ids of a consumer's dead letters, in stream order, once `count` of them are listed.
async fn letters(
    dlq: &DeadLettersClient<tonic::transport::Channel>,
    consumer: ConsumerRef,
    count: u64,
) -> anyhow::Result<Vec<String>> {
    wait_until(Duration::from_secs(20), || {
        let (mut dlq, consumer) = (dlq.clone(), consumer.clone());
        async move {
            let list = dlq.list(ListDeadLettersRequest { consumer: Some(consumer), limit: 0 }).await?.into_inner();
            let ids = list.dead_letters.iter().filter_map(|d| d.attributes.get("id").cloned()).collect::<Vec<_>>();
            Ok((list.total == count && ids.len() as u64 == count).then_some(ids))
        }
    })
    .await
}

/// Regression: a redrive trimmed every letter it had gone through, whatever became of it, so `--to-broker` on a
/// Subscription (which has no Broker) deleted its whole dead-letter stream, and a letter not selected whose copy
/// failed was lost. Now a letter leaves the stream only once handled, and one redrive per consumer runs at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_loses_no_letter_it_could_not_send_or_did_not_select() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    let slow = Arc::new(AtomicBool::new(false));
    let flag = slow.clone();
    let gate = Gate::closed();
    let held = gate.clone();
    let subscriber = Subscriber::start(Arc::new(move |_: &Delivery, _| {
        let refused = Reply::status(400).with_body("never");
        if flag.load(Ordering::SeqCst) { refused.held_by(&held) } else { refused }
    }))
    .await?;
    apply_resource(&node.admin, sluice_tests::in_memory_channel_object("default", "c")).await?;
    let object = sluice_tests::subscription_object("default", "s", "c", &subscriber.url(), json!({}));
    apply_resource(&node.admin, object).await?;
    let client = reqwest::Client::new();
    for i in 0..3 {
        send_event_accepted(&client, &node.http, "/channels/default/c", &format!("m{i}"), "t", &[], "{}").await?;
    }
    let mut dlq = DeadLettersClient::connect(format!("http://{}", node.admin)).await?;
    // In the order the deliveries failed (they run concurrently).
    let initial = letters(&dlq, subscription("s"), 3).await?;
    let mut sorted = initial.clone();
    sorted.sort();
    assert_eq!(sorted, ["m0", "m1", "m2"]);

    // Back to a Broker: a Subscription has none, so the redrive is refused before it starts, and every letter
    // stays. (Before, it ran and copied every letter to the stream's end, each one failing.)
    let request = RedriveRequest { consumer: Some(subscription("s")), to_broker: true, ..Default::default() };
    let refused = dlq.redrive(request).await.err().map(|status| status.code());
    assert_eq!(refused, Some(tonic::Code::InvalidArgument));
    assert_eq!(letters(&dlq, subscription("s"), 3).await?, initial, "kept, in order");

    // Only the middle one, failing again: it is dead-lettered anew, and the one before it is kept.
    let list = dlq.list(ListDeadLettersRequest { consumer: Some(subscription("s")), limit: 0 }).await?.into_inner();
    let middle = list.dead_letters.iter().find(|d| d.attributes.get("id").map(String::as_str) == Some("m1"));
    let middle = middle.ok_or_else(|| anyhow::anyhow!("m1 listed"))?;
    let selected = vec![DeadLetterPosition { partition: middle.partition, offset: middle.offset }];
    let request = RedriveRequest { consumer: Some(subscription("s")), selected, ..Default::default() };
    let last = redrive(&mut dlq, request).await?;
    assert_eq!((last.total, last.delivered, last.failed), (1, 0, 1));
    let mut after = letters(&dlq, subscription("s"), 3).await?;
    after.sort();
    assert_eq!(after, ["m0", "m1", "m2"], "nothing lost");

    // While a redrive runs, a second one and a purge are refused.
    slow.store(true, Ordering::SeqCst);
    let running = dlq.redrive(RedriveRequest { consumer: Some(subscription("s")), ..Default::default() }).await?;
    let second = dlq.redrive(RedriveRequest { consumer: Some(subscription("s")), ..Default::default() }).await;
    let refused = second.err().ok_or_else(|| anyhow::anyhow!("a second redrive was let in"))?;
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    let purge = dlq.purge(PurgeRequest { consumer: Some(subscription("s")) }).await;
    assert_eq!(purge.err().map(|e| e.code()), Some(tonic::Code::Aborted));
    gate.open();
    let mut running = running.into_inner();
    let mut last = None;
    while let Some(update) = running.message().await? {
        last = Some(update);
    }
    assert_eq!(last.map(|l| (l.done, l.failed)), Some((true, 3)));
    assert_eq!(dlq.purge(PurgeRequest { consumer: Some(subscription("s")) }).await?.into_inner().purged, 3);
    Ok(())
}

/// Regression: the guard that keeps two redrives of one consumer apart was per node, so redrives started
/// through two nodes at once delivered the same letters twice. The claim is now the cluster's (a lease in the
/// metadata group): while a redrive runs through one node, a redrive or a purge through another is refused,
/// and once it has ended another node may go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_through_one_node_refuses_a_redrive_or_purge_through_another() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 1, &[]).await?;
    let (first, second) = (cluster.nodes[0].admin.clone(), cluster.nodes[1].admin.clone());
    let http = cluster.nodes[2].http.clone();
    let fixed = Arc::new(AtomicBool::new(false));
    let flag = fixed.clone();
    let gate = Gate::closed();
    let held = gate.clone();
    let subscriber = Subscriber::start(Arc::new(move |_: &Delivery, _| {
        if flag.load(Ordering::SeqCst) {
            Reply::status(202).held_by(&held)
        } else {
            Reply::status(400).with_body("not yet")
        }
    }))
    .await?;
    apply_resource(&first, broker_object("default", "b", json!({}))).await?;
    apply_resource(&first, trigger_object("default", "l", "b", &subscriber.url(), json!({}), json!({}))).await?;
    sluice_tests::wait_for_log_format(&first, 3, 3).await?;
    sluice_tests::wait_for_log_format(&second, 3, 3).await?;
    let client = reqwest::Client::new();
    for i in 0..3 {
        send_event_accepted(&client, &http, "/default/b", &format!("l{i}"), "t", &[], "{}").await?;
    }
    let mut through_first = DeadLettersClient::connect(format!("http://{first}")).await?;
    let mut through_second = DeadLettersClient::connect(format!("http://{second}")).await?;
    letters(&through_first, trigger("l"), 3).await?;
    letters(&through_second, trigger("l"), 3).await?;

    fixed.store(true, Ordering::SeqCst);
    let before = subscriber.deliveries().len();
    let all = || RedriveRequest { consumer: Some(trigger("l")), ..Default::default() };
    let mut running = through_first.redrive(all()).await?.into_inner();
    let refused = through_second.redrive(all()).await.err().ok_or_else(|| anyhow::anyhow!("a second redrive ran"))?;
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    // Held by the first node's redrive, which this node sees: the claim was committed before the first redrive
    // answered, and a node reads claims only after Raft's read index from the metadata group's leader. (When it
    // read its own copy as it stood, it could miss the claim and only lose the conditional write to it.)
    assert!(refused.message().contains("redrive of it is running on node"), "{refused:?}");
    let purge = through_second.purge(PurgeRequest { consumer: Some(trigger("l")) }).await;
    assert_eq!(purge.err().map(|e| e.code()), Some(tonic::Code::Aborted), "no purge meanwhile");
    gate.open();
    let mut last = None;
    while let Some(update) = running.message().await? {
        last = Some(update);
    }
    assert_eq!(last.map(|l| (l.done, l.delivered)), Some((true, 3)));
    assert_eq!(ids(&subscriber.deliveries()[before..]), ["l0", "l1", "l2"], "each letter redriven once");

    // Ended and given back: a redrive through the other node is let in (once that node has seen the claim go).
    let after = wait_until(Duration::from_secs(20), || {
        let mut through_second = through_second.clone();
        async move {
            match through_second.redrive(all()).await {
                Ok(progress) => {
                    let mut progress = progress.into_inner();
                    let mut last = None;
                    while let Some(update) = progress.message().await? {
                        last = Some(update);
                    }
                    Ok(last)
                }
                Err(status) if status.code() == tonic::Code::Aborted => Ok(None),
                Err(status) => Err(status.into()),
            }
        }
    })
    .await?;
    assert!(after.done);
    assert_eq!(after.total, 0, "nothing left to redrive: {after:?}");
    Ok(())
}

/// Regressions: a replay of a Trigger no dispatcher runs (its subscriber does not resolve) was accepted, kept,
/// and applied hours later when it could run, the CLI saying it would be applied within a commit interval; and a
/// redrive of dead letters that are not there (a position from an older listing, a typo) redrove nothing and
/// exited 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_replay_and_redrive_refuse_what_they_cannot_do() -> anyhow::Result<()> {
    // Commits 5 s apart: a replay stays asked and not applied long enough to ask another.
    let (_root, node) = sluice_tests::start_single_node(1, &["--dispatch-commit-interval-ms", "5000"]).await?;
    let admin = node.admin.clone();
    let subscriber = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&admin, broker_object("default", "b", json!({}))).await?;
    let mut unresolved = trigger_object("default", "nowhere", "b", "", json!({}), json!({}));
    unresolved["spec"]["subscriber"] =
        json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "missing"}});
    apply_resource(&admin, unresolved).await?;
    apply_resource(&admin, trigger_object("default", "t", "b", &subscriber.url(), json!({}), json!({}))).await?;

    let (code, _, stderr) = sluice(&["trigger", "replay", "nowhere", "--to-offset", "0", "--admin", &admin]).await?;
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("CONSUMER_NOT_DISPATCHABLE"), "{stderr}");
    let mut consumers = ConsumersClient::connect(format!("http://{admin}")).await?;
    let status = consumers.status(trigger("nowhere")).await?.into_inner();
    assert!(status.partitions.iter().all(|p| p.replay_pending_to.is_none()), "nothing kept: {status:?}");

    let (code, _, stderr) = sluice(&["dlq", "redrive", "t", "--select", "0:7", "--admin", &admin]).await?;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no dead letter at 0:7"), "{stderr}");

    // A second replay while the first waits for its dispatcher would overwrite it (the last writer won, and both
    // were told theirs was applied): refused until the first is applied.
    let replay = |to: u64| ReplayRequest {
        consumer: Some(trigger("t")),
        to: Some(replay_request::To::Offset(to)),
        partition: None,
        wait: false,
    };
    consumers.replay(replay(0)).await?;
    let refused = consumers.replay(replay(0)).await.expect_err("the first is pending");
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    assert!(refused.message().contains("is asked and not applied yet"), "{}", refused.message());
    Ok(())
}

/// Regression: a consumer's dead letters are kept in a stream of its name, which a Trigger deleted and made again
/// under it shares: the new one (on another Broker, to another subscriber) listed the old one's letters as its
/// own, and a redrive sent them to its subscriber. They are shown as the earlier consumer's, and never redriven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_trigger_made_again_under_its_name_never_redrives_the_old_ones_letters() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let refusing = Subscriber::start(Arc::new(|_: &Delivery, _| Reply::status(400))).await?;
    let taking = Subscriber::start(Subscriber::ok()).await?;
    apply_resource(&admin, broker_object("default", "a", json!({}))).await?;
    apply_resource(&admin, broker_object("default", "other", json!({}))).await?;
    apply_resource(&admin, trigger_object("default", "t", "a", &refusing.url(), json!({}), json!({}))).await?;
    send_event_accepted(&reqwest::Client::new(), &http, "/default/a", "old-0", "t", &[], "{}").await?;
    let mut dlq = DeadLettersClient::connect(format!("http://{admin}")).await?;
    let listed = |dlq: &DeadLettersClient<tonic::transport::Channel>| {
        let mut dlq = dlq.clone();
        async move {
            let list = dlq.list(ListDeadLettersRequest { consumer: Some(trigger("t")), limit: 0 }).await?.into_inner();
            Ok::<_, anyhow::Error>(list)
        }
    };
    wait_until(Duration::from_secs(30), || async { Ok((listed(&dlq).await?.total == 1).then_some(())) }).await?;

    let mut resources = ResourcesClient::connect(format!("http://{admin}")).await?;
    resources.delete(ResourceRef { kind: "Trigger".into(), namespace: "default".into(), name: "t".into() }).await?;
    apply_resource(&admin, trigger_object("default", "t", "other", &taking.url(), json!({}), json!({}))).await?;
    let list = listed(&dlq).await?;
    assert_eq!(list.total, 1);
    assert!(
        list.dead_letters[0].reason.starts_with("[dead-lettered by an earlier consumer"),
        "{:?}",
        list.dead_letters
    );
    let mut progress =
        dlq.redrive(RedriveRequest { consumer: Some(trigger("t")), ..Default::default() }).await?.into_inner();
    let mut last = None;
    while let Some(update) = progress.message().await? {
        last = Some(update);
    }
    assert_eq!(last.map(|l| (l.done, l.delivered, l.failed)), Some((true, 0, 0)));
    assert!(taking.deliveries().is_empty(), "nothing of Broker a reached the new subscriber");
    wait_until(Duration::from_secs(10), || async { Ok((listed(&dlq).await?.total == 1).then_some(())) }).await?;
    // Regression: every redrive copied the old letter to the stream's end (a new position and arrival time),
    // though no letter of the new Trigger lay behind it.
    let after = listed(&dlq).await?;
    let position = |l: &DeadLetterList| l.dead_letters.iter().map(|d| (d.partition, d.offset)).collect::<Vec<_>>();
    assert_eq!(position(&after), position(&list), "the old letter was left where it was");
    let purged = dlq.purge(PurgeRequest { consumer: Some(trigger("t")) }).await?.into_inner();
    assert_eq!(purged.purged, 1, "purge removes it");
    Ok(())
}
