//! The admin `Events` API and `sluice events` against a 3-node cluster: Read by offset range, time range and
//! CESQL filter with paging, Tail of new events, Find by (source, id), server reflection, and the CLI's output
//! and exit codes.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sluice_proto::admin::events_client::EventsClient;
use sluice_proto::admin::{
    EventStreamRef, FindEventsRequest, LoggedEvent, ReadEventsReply, ReadEventsRequest, TailEventsRequest,
};
use sluice_proto::errors::error_detail;
use sluice_tests::{TestCluster, apply_resource, broker_object, send_event_accepted, sluice_bin, wait_for_broker};
use tonic::Code;
use tonic::transport::Channel;

use sluice_cloudevent::clock::now_ms;

fn orders() -> Option<EventStreamRef> {
    Some(EventStreamRef {
        kind: "broker".into(),
        namespace: "default".into(),
        name: "orders".into(),
        stream: String::new(),
    })
}

fn read_request() -> ReadEventsRequest {
    ReadEventsRequest { target: orders(), ..Default::default() }
}

fn ids(events: &[LoggedEvent]) -> BTreeSet<String> {
    events.iter().map(|e| e.attributes.get("id").cloned().unwrap_or_default()).collect()
}

async fn read(client: &mut EventsClient<Channel>, request: ReadEventsRequest) -> anyhow::Result<ReadEventsReply> {
    Ok(client.read(request).await?.into_inner())
}

/// Runs the CLI; answers its exit code, stdout and stderr.
fn sluice(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = Command::new(sluice_bin()).args(args).stdin(Stdio::null()).output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_read_tail_find_reflection_and_cli() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, 2, &[]).await?;
    let node = cluster.node(1);
    let (admin, http) = (node.admin.clone(), node.http.clone());
    apply_resource(&admin, broker_object("default", "orders", json!({}))).await?;
    wait_for_broker(&http, "/default/orders").await?;
    let client = reqwest::Client::new();

    // Batch A (10 events, two types), then batch B (10 events) after a clock tick.
    for i in 0..10 {
        let kind = if i % 2 == 0 { "order.created" } else { "order.shipped" };
        send_event_accepted(&client, &http, "/default/orders", &format!("a{i}"), kind, &[], &format!("{{\"n\":{i}}}"))
            .await?;
    }
    let a_done = now_ms();
    // Arrival times have millisecond precision: batch B must arrive in a later millisecond than batch A.
    sluice_tests::wait_until(Duration::from_secs(1), || async { Ok((now_ms() > a_done).then_some(())) }).await?;
    let middle = now_ms();
    for i in 0..10 {
        send_event_accepted(&client, &http, "/default/orders", &format!("b{i}"), "order.created", &[], "{}").await?;
    }

    let mut events = EventsClient::connect(format!("http://{admin}")).await?;
    // Node 1 may follow the leader by a moment: wait until it has applied all 20.
    let all = sluice_tests::wait_until(Duration::from_secs(20), || {
        let mut events = events.clone();
        async move {
            let reply = read(&mut events, ReadEventsRequest { max_events: 1000, ..read_request() }).await?;
            Ok((reply.events.len() == 20).then_some(reply))
        }
    })
    .await?;
    assert!(all.next_page_token.is_empty(), "one page holds everything");
    let order: Vec<(u32, u64)> = all.events.iter().map(|e| (e.partition, e.offset)).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "(partition, offset) order");
    let a1 = all.events.iter().find(|e| e.attributes.get("id").map(String::as_str) == Some("a1")).expect("a1");
    assert_eq!(a1.attributes.get("type").map(String::as_str), Some("order.shipped"));
    assert_eq!(a1.attributes.get("source").map(String::as_str), Some("/sluice/tests"));
    assert_eq!(a1.datacontenttype, "application/json");
    assert_eq!(&a1.data[..], b"{\"n\":1}");
    let structured: serde_json::Value = serde_json::from_str(&a1.json)?;
    assert_eq!(structured["id"], "a1");
    assert!(a1.arrival_ms > 0 && a1.arrival_ms <= a_done);

    // Offset range in the fuller partition.
    let per_partition = |p: u32| all.events.iter().filter(|e| e.partition == p).count() as u64;
    let p = if per_partition(0) >= per_partition(1) { 0 } else { 1 };
    assert!(per_partition(p) >= 3, "20 events over 2 partitions");
    let range = read(
        &mut events,
        ReadEventsRequest { partition: Some(p), from_offset: Some(1), to_offset: Some(3), ..read_request() },
    )
    .await?;
    let offsets: Vec<(u32, u64)> = range.events.iter().map(|e| (e.partition, e.offset)).collect();
    assert_eq!(offsets, [(p, 1), (p, 2)]);
    assert!(range.next_page_token.is_empty());

    // Time ranges: batch B from `middle` on, batch A before it.
    let b_ids: BTreeSet<String> = (0..10).map(|i| format!("b{i}")).collect();
    let a_ids: BTreeSet<String> = (0..10).map(|i| format!("a{i}")).collect();
    let since = read(&mut events, ReadEventsRequest { from_time_ms: Some(middle), ..read_request() }).await?;
    assert_eq!(ids(&since.events), b_ids);
    let before = read(&mut events, ReadEventsRequest { to_time_ms: Some(middle), ..read_request() }).await?;
    assert_eq!(ids(&before.events), a_ids);

    // CESQL filter, and an invalid one.
    let shipped =
        read(&mut events, ReadEventsRequest { filter: "type = 'order.shipped'".into(), ..read_request() }).await?;
    assert_eq!(ids(&shipped.events), ["a1", "a3", "a5", "a7", "a9"].map(String::from).into());
    let invalid = events
        .read(ReadEventsRequest { filter: "type = = 'x'".into(), ..read_request() })
        .await
        .expect_err("invalid CESQL is refused");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(error_detail(&invalid).map(|d| d.code), Some(1001), "{invalid:?}");

    // Paging: 3 per page, with and without a filter; tokens carry on where the last page stopped.
    for (filter, expected) in [("", 20), ("type = 'order.created'", 15)] {
        let mut request = ReadEventsRequest { max_events: 3, filter: filter.into(), ..read_request() };
        let mut paged = Vec::new();
        let mut pages = 0;
        loop {
            let reply = read(&mut events, request.clone()).await?;
            assert!(reply.events.len() <= 3);
            pages += 1;
            paged.extend(reply.events);
            if reply.next_page_token.is_empty() {
                break;
            }
            assert!(pages < 50, "paging ends");
            request.page_token = reply.next_page_token;
        }
        assert_eq!(paged.len(), expected, "filter {filter:?}");
        assert!(pages >= expected.div_ceil(3));
        let keys: BTreeSet<(u32, u64)> = paged.iter().map(|e| (e.partition, e.offset)).collect();
        assert_eq!(keys.len(), expected, "no event twice");
    }

    // Unknown broker.
    let missing = events
        .read(ReadEventsRequest {
            target: Some(EventStreamRef { name: "nope".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect_err("unknown broker");
    assert_eq!(missing.code(), Code::NotFound);

    // Find: by (source, id), and NOT_FOUND with EVENT_NOT_FOUND.
    let found = events
        .find(FindEventsRequest {
            target: orders(),
            source: "/sluice/tests".into(),
            id: "a3".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(ids(&found.events), ["a3".to_string()].into());
    assert!(found.complete && found.scanned == 20, "scanned {}", found.scanned);
    let not_found = events
        .find(FindEventsRequest {
            target: orders(),
            source: "/sluice/tests".into(),
            id: "zz".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such event");
    assert_eq!(not_found.code(), Code::NotFound);
    assert_eq!(error_detail(&not_found).map(|d| (d.code, d.name)), Some((1015, "EVENT_NOT_FOUND".to_string())));

    // Tail: events committed after the call returned, filtered.
    let mut tail = events
        .tail(TailEventsRequest { target: orders(), filter: "type = 'order.tail'".into(), ..Default::default() })
        .await?
        .into_inner();
    for (id, kind) in [("t0", "order.tail"), ("t1", "order.other"), ("t2", "order.tail")] {
        send_event_accepted(&client, &http, "/default/orders", id, kind, &[], "{}").await?;
    }
    let mut tailed = Vec::new();
    while tailed.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(20), tail.message()).await??.expect("tail goes on");
        tailed.push(event);
    }
    assert_eq!(ids(&tailed), ["t0", "t2"].map(String::from).into());
    drop(tail);

    // Server reflection lists the admin services.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(Channel::from_shared(format!("http://{admin}"))?.connect().await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(tokio_stream::once(request)).await?.into_inner();
    let reply = replies.message().await?.expect("a reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        anyhow::bail!("unexpected reflection reply {reply:?}")
    };
    let services: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in
        ["sluice.admin.v1.Events", "sluice.admin.v1.Cluster", "sluice.admin.v1.Log", "sluice.admin.v1.Resources"]
    {
        assert!(services.contains(service), "{service} in {services:?}");
    }
    assert!(!services.iter().any(|s| s.starts_with("sluice.raft")), "the Raft transport is not on the admin port");

    // The CLI.
    let (code, stdout, stderr) = sluice(&["events", "read", "--broker", "orders", "--admin", &admin, "-o", "json"])?;
    assert_eq!(code, 0, "{stderr}");
    let printed: Vec<serde_json::Value> = serde_json::from_str(&stdout)?;
    assert_eq!(printed.len(), 23, "{stdout}");
    assert!(printed.iter().any(|e| e["event"]["id"] == "b4" && e["event"]["type"] == "order.created"));
    let (code, stdout, stderr) = sluice(&[
        "events",
        "read",
        "--broker",
        "orders",
        "--admin",
        &admin,
        "-o",
        "json",
        "--filter",
        "type = 'order.tail'",
        "--limit",
        "1",
    ])?;
    assert_eq!(code, 0, "{stderr}");
    let printed: Vec<serde_json::Value> = serde_json::from_str(&stdout)?;
    assert_eq!(printed.len(), 1, "--limit");
    let (code, stdout, stderr) = sluice(&["events", "read", "--broker", "orders", "--admin", &admin])?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("PART") && stdout.lines().count() == 24, "{stdout}");
    let (code, stdout, stderr) = sluice(&[
        "events",
        "find",
        "--broker",
        "orders",
        "--source",
        "/sluice/tests",
        "--id",
        "b4",
        "--admin",
        &admin,
        "-o",
        "json",
    ])?;
    assert_eq!(code, 0, "{stderr}");
    let printed: Vec<serde_json::Value> = serde_json::from_str(&stdout)?;
    assert_eq!(printed.len(), 1);
    assert_eq!(printed[0]["event"]["id"], "b4");
    let (code, _, stderr) = sluice(&[
        "events",
        "find",
        "--broker",
        "orders",
        "--source",
        "/sluice/tests",
        "--id",
        "nope",
        "--admin",
        &admin,
    ])?;
    assert_eq!(code, 3, "not found: {stderr}");
    assert!(stderr.contains("EVENT_NOT_FOUND"), "{stderr}");
    let (code, _, stderr) = sluice(&["events", "read", "--broker", "ghost", "--admin", &admin])?;
    assert_eq!(code, 3, "unknown broker: {stderr}");
    let (code, _, stderr) = sluice(&["events", "read", "--broker", "orders", "--admin", &admin, "--filter", "type ="])?;
    assert_eq!(code, 4, "invalid filter: {stderr}");
    let (code, _, _) = sluice(&["events", "read", "--admin", &admin])?;
    assert_eq!(code, 2, "usage: no --broker");
    let (code, _, _) = sluice(&["events", "read", "--broker", "orders", "--admin", "127.0.0.1:1"])?;
    assert_eq!(code, 5, "unavailable");
    Ok(())
}

/// grpcurl printed `Code: Code(1008) Message: RESOURCE_NOT_FOUND`: the `grpc-status-details-bin` trailer held a
/// bare `ErrorDetail`, which grpc-go decodes as a `google.rpc.Status`. It now holds a `google.rpc.Status` with the
/// detail packed as `Any`, which grpcurl prints (resolving the type through server reflection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_shows_the_status_code_and_the_error_detail() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    let output = Command::new("grpcurl")
        .args(["-plaintext", "-d", r#"{"target":{"name":"nope"}}"#, &node.admin, "sluice.admin.v1.Events/Read"])
        .output()
        .map_err(|e| anyhow::anyhow!("running grpcurl (scripts/setup.sh installs it): {e}"))?;
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{printed}");
    assert!(printed.contains("Code: NotFound"), "{printed}");
    assert!(!printed.contains("Code(1008)"), "{printed}");
    assert!(printed.contains("type.googleapis.com/sluice.admin.v1.ErrorDetail"), "{printed}");
    assert!(printed.contains("RESOURCE_NOT_FOUND") && printed.contains("1008"), "{printed}");
    Ok(())
}

/// Regression: a tail from the past with more matching events behind it than its buffer (256) failed at once
/// with TAIL_TOO_SLOW, before its client could read anything, and its "tail again from" skipped the 256 events it
/// had buffered. It now catches up at the client's pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_from_the_past_catches_up_at_the_clients_pace() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    apply_resource(&node.admin, broker_object("default", "orders", json!({}))).await?;
    wait_for_broker(&node.http, "/default/orders").await?;
    let client = reqwest::Client::new();
    const EVENTS: usize = 1_000;
    for first in (0..EVENTS).step_by(100) {
        let batch: Vec<serde_json::Value> = (first..first + 100)
            .map(|i| json!({"specversion": "1.0", "id": format!("b{i:04}"), "source": "/t71", "type": "order.batch"}))
            .collect();
        let response = client
            .post(format!("http://{}/default/orders", node.http))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&batch)?)
            .send()
            .await?;
        anyhow::ensure!(response.status().as_u16() == 202, "batch: {}", response.status());
    }
    let mut events = EventsClient::connect(format!("http://{}", node.admin)).await?;
    let request = TailEventsRequest { target: orders(), from_offset: Some(0), ..Default::default() };
    let mut tail = events.tail(request).await?.into_inner();
    let mut tailed = Vec::new();
    while tailed.len() < EVENTS {
        let event = tokio::time::timeout(Duration::from_secs(20), tail.message()).await??.expect("the tail goes on");
        tailed.push(event.attributes.get("id").cloned().unwrap_or_default());
    }
    let expected: Vec<String> = (0..EVENTS).map(|i| format!("b{i:04}")).collect();
    assert_eq!(tailed, expected, "every stored event, in offset order");
    Ok(())
}

/// Regression (found by an exploratory test): a node stopping (SIGTERM) waited for every open Tail and Watch to
/// end by itself, 10 s for each server in turn, then cut them: the clients saw an HTTP/2 protocol error, not the
/// UNAVAILABLE docs/operations.md promises, and the node took 20 s to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_stopping_node_ends_its_tail_and_watch_with_unavailable() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(1, 1, &[]).await?;
    let admin = cluster.nodes[0].admin.clone();
    apply_resource(&admin, broker_object("default", "orders", json!({}))).await?;
    wait_for_broker(&cluster.nodes[0].http, "/default/orders").await?;
    let mut events = EventsClient::connect(format!("http://{admin}")).await?;
    let mut tail = events.tail(TailEventsRequest { target: orders(), ..Default::default() }).await?.into_inner();
    let mut resources =
        sluice_proto::admin::resources_client::ResourcesClient::connect(format!("http://{admin}")).await?;
    let request = sluice_proto::admin::WatchResourcesRequest { kind: "Broker".into() };
    let mut watch = resources.watch(request).await?.into_inner();
    tokio::time::timeout(Duration::from_secs(20), watch.message()).await??.expect("the Broker, as the watch starts");

    cluster.nodes[0].signal("TERM")?;
    let tail_end = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Err(status) = tail.message().await {
                return status;
            }
        }
    })
    .await?;
    let watch_end = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Err(status) = watch.message().await {
                return status;
            }
        }
    })
    .await?;
    for (name, status) in [("tail", tail_end), ("watch", watch_end)] {
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        assert!(status.message().contains("shutting down"), "{name}: {status:?}");
    }
    let node = &mut cluster.nodes[0];
    let exited = tokio::time::timeout(Duration::from_secs(60), async {
        while node.is_running() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(exited.is_ok(), "the node did not exit\n{}", node.log_tail());
    let log = std::fs::read_to_string(&node.log)?;
    assert!(!log.contains("still had requests open"), "a server waited out its stop timeout\n{}", node.log_tail());
    Ok(())
}
