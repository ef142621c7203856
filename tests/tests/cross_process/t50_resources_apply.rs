//! `sluice apply / get / delete` against real nodes: Knative's YAML applies
//! unchanged and reads back with Knative's field names; re-applying is
//! `unchanged`; invalid objects are refused with file, document and field
//! path, and nothing is stored; objects applied through one node of three are
//! read from another, and survive a restart.

use std::time::Duration;

use sluice_tests::{TestCluster, wait_ready, wait_until};

async fn sluice(args: Vec<String>) -> anyhow::Result<(i32, String, String)> {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(sluice_tests::sluice_bin()).args(&args).output()?;
        anyhow::Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    })
    .await?
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knative_yaml_applies_and_reads_back_across_nodes_and_restarts() -> anyhow::Result<()> {
    let fixture_path = sluice_tests::manifest_dir().join("fixtures").join("knative.yaml").display().to_string();
    let mut cluster = TestCluster::start(3, 1, &[]).await?;
    let admin1 = cluster.nodes[0].admin.clone();
    let admin2 = cluster.nodes[1].admin.clone();

    let (code, stdout, stderr) = sluice(args(&["apply", "-f", fixture_path.as_str(), "--admin", &admin1])).await?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "broker.eventing.knative.dev/default created",
            "trigger.eventing.knative.dev/by-attributes created",
            "trigger.eventing.knative.dev/by-dialects created",
            "inmemorychannel.messaging.knative.dev/orders created",
            "subscription.messaging.knative.dev/orders-to-display created",
        ]
    );
    let (code, again, stderr) = sluice(args(&["apply", "-f", fixture_path.as_str(), "--admin", &admin1])).await?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(again.lines().count(), 5, "{again}");
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");

    // What `get -o yaml` prints, applied again, changes nothing (the Trigger's broker label admission adds,
    // the namespace, the uid and status are Sluice's).
    for (kind, name) in [("broker", "default"), ("trigger", "by-attributes"), ("subscription", "orders-to-display")] {
        let (code, yaml, stderr) = sluice(args(&["get", kind, name, "-o", "yaml", "--admin", &admin1])).await?;
        assert_eq!(code, 0, "{stderr}");
        let exported = std::env::temp_dir().join(format!("sluice-t50-export-{}.yaml", std::process::id()));
        std::fs::write(&exported, &yaml)?;
        let (code, again, stderr) =
            sluice(args(&["apply", "-f", exported.to_str().unwrap_or_default(), "--admin", &admin1])).await?;
        let _ = std::fs::remove_file(&exported);
        assert_eq!(code, 0, "{stderr}");
        assert!(again.trim_end().ends_with(" unchanged"), "{kind}/{name} as exported: {again}");
        if kind == "trigger" {
            assert!(yaml.contains("eventing.knative.dev/broker: default"), "the label Knative sets: {yaml}");
        }
    }

    // Read back from another node, as YAML with Knative's field names.
    let get_yaml = |admin: String| async move {
        wait_until(Duration::from_secs(10), || {
            let admin = admin.clone();
            async move {
                let (code, stdout, _) =
                    sluice(args(&["get", "broker", "default", "-o", "yaml", "--admin", &admin])).await?;
                Ok((code == 0).then_some(stdout))
            }
        })
        .await
    };
    let yaml = get_yaml(admin2.clone()).await?;
    let broker: serde_json::Value = serde_json::to_value(serde_yaml_value(&yaml)?)?;
    assert_eq!(broker["spec"]["delivery"]["deadLetterSink"]["ref"]["name"], "dead-letters");
    assert_eq!(broker["spec"]["delivery"]["backoffDelay"], "PT0.2S");
    assert_eq!(broker["spec"]["delivery"]["retryAfterMax"], "PT1M");
    assert_eq!(broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"], "MTChannelBasedBroker");
    assert_eq!(broker["metadata"]["generation"], 1);
    assert!(broker["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));

    let (code, stdout, _) = sluice(args(&["get", "triggers", "--admin", &admin2])).await?;
    assert_eq!(code, 0);
    assert!(stdout.contains("by-attributes") && stdout.contains("by-dialects"), "{stdout}");
    let (_, json, _) = sluice(args(&["get", "trigger", "by-dialects", "-o", "json", "--admin", &admin2])).await?;
    let trigger: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(
        trigger["spec"]["filters"][4]["cesql"],
        "source LIKE '%commerce%' AND type IN ('order.created', 'order.updated')"
    );
    assert_eq!(trigger["spec"]["filters"][3]["any"][1]["not"]["exact"]["type"], "b");

    // A changed spec bumps the generation; the uid stays.
    let changed = std::env::temp_dir().join(format!("sluice-t50-{}.yaml", std::process::id()));
    std::fs::write(&changed, std::fs::read_to_string(fixture_path.as_str())?.replace("retry: 5", "retry: 6"))?;
    let (_, out, _) = sluice(args(&["apply", "-f", changed.to_str().unwrap_or_default(), "--admin", &admin1])).await?;
    assert!(out.contains("broker.eventing.knative.dev/default configured"), "{out}");
    let updated: serde_json::Value = serde_json::to_value(serde_yaml_value(&get_yaml(admin1.clone()).await?)?)?;
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(updated["metadata"]["uid"], broker["metadata"]["uid"]);

    // Invalid objects: refused with file, document index and field path; nothing stored.
    let invalid = std::env::temp_dir().join(format!("sluice-t50-invalid-{}.yaml", std::process::id()));
    std::fs::write(
        &invalid,
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: bad\nspec:\n  broker: default\n  filter:\n    attributes:\n      Type: x\n  subscriber:\n    uri: http://x/\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: bad-moved\nspec:\n  broker: default\n  delivery:\n    retry: -1\n  subscriber:\n    uri: http://x/\n",
    )?;
    let (code, _, stderr) =
        sluice(args(&["apply", "-f", invalid.to_str().unwrap_or_default(), "--admin", &admin1])).await?;
    assert_eq!(code, 4, "{stderr}"); // refused: exit 4 (docs/operations.md)
    assert!(stderr.contains("document 0") && stderr.contains("spec.filter.attributes[Type]"), "{stderr}");
    assert!(stderr.contains("document 1") && stderr.contains("spec.delivery.retry"), "{stderr}");
    let (code, _, _) = sluice(args(&["get", "trigger", "bad", "--admin", &admin1])).await?;
    assert_eq!(code, 3, "a refused object is not stored");

    // Immutable: a Trigger cannot move to another broker.
    let moved = std::fs::read_to_string(fixture_path.as_str())?
        .replace("  broker: default\n  filter:", "  broker: other\n  filter:");
    std::fs::write(&changed, moved)?;
    let (code, _, stderr) =
        sluice(args(&["apply", "-f", changed.to_str().unwrap_or_default(), "--admin", &admin1])).await?;
    assert_eq!(code, 4);
    assert!(stderr.contains("spec.broker: field is immutable"), "{stderr}");

    // Everything survives a restart of every node.
    for id in 1..=3 {
        cluster.node(id).kill9();
        cluster.node(id).start()?;
    }
    for node in &cluster.nodes {
        wait_ready(&node.http).await?;
    }
    let (code, stdout, _) = sluice(args(&["get", "subscriptions", "-A", "--admin", &admin2])).await?;
    assert_eq!(code, 0);
    assert!(stdout.contains("orders-to-display") && stdout.contains("orders"), "{stdout}");

    // Delete through the file.
    let (code, stdout, stderr) = sluice(args(&["delete", "-f", fixture_path.as_str(), "--admin", &admin1])).await?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 5);
    let (code, _, _) = sluice(args(&["get", "broker", "default", "--admin", &admin1])).await?;
    assert_eq!(code, 3);
    let _ = std::fs::remove_file(changed);
    let _ = std::fs::remove_file(invalid);
    Ok(())
}

fn serde_yaml_value(text: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_yaml_ng::from_str(text)?)
}

fn ready(object: &serde_json::Value) -> (String, String) {
    let ready = object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    (ready["status"].as_str().unwrap_or_default().to_string(), ready["reason"].as_str().unwrap_or_default().to_string())
}

async fn get_json(admin: &str, kind: &str, name: &str) -> anyhow::Result<serde_json::Value> {
    let (code, stdout, stderr) = sluice(args(&["get", kind, name, "-o", "json", "--admin", admin])).await?;
    anyhow::ensure!(code == 0, "get {kind} {name}: {stderr}");
    Ok(serde_json::from_str(&stdout)?)
}

async fn apply_text(admin: &str, yaml: &str) -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("sluice-t50-{}-{}.yaml", std::process::id(), yaml.len()));
    std::fs::write(&file, yaml)?;
    let (code, _, stderr) = sluice(args(&["apply", "-f", file.to_str().unwrap_or_default(), "--admin", admin])).await?;
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(code == 0, "apply: {stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_conditions_follow_the_objects_around_them() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    let admin = node.admin.clone();
    let trigger = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: early\nspec:\n  broker: late\n  subscriber:\n    ref:\n      apiVersion: v1\n      kind: Service\n      name: display\n";
    apply_text(&admin, trigger).await?;
    let t = get_json(&admin, "trigger", "early").await?;
    assert_eq!(ready(&t), ("False".to_string(), "BrokerDoesNotExist".to_string()), "{t}");
    assert_eq!(t["status"]["subscriberUri"], "http://display.default.svc.cluster.local");

    let broker = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: late\nspec:\n  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: messaging.knative.dev/v1\n        kind: InMemoryChannel\n        name: dlq\n";
    apply_text(&admin, broker).await?;
    // The Broker exists but is not Ready (its dead-letter sink does not resolve): nor is the Trigger, as
    // Knative's conformance asks (it was Ready as soon as the Broker existed).
    let t = get_json(&admin, "trigger", "early").await?;
    assert_eq!(ready(&t), ("False".to_string(), "BrokerNotReady".to_string()), "{t}");
    let b = get_json(&admin, "broker", "late").await?;
    assert_eq!(
        ready(&b),
        ("False".to_string(), "DestinationNotFound".to_string()),
        "dead-letter sink unresolvable: {b}"
    );
    assert_eq!(b["status"]["address"]["url"], format!("http://{}/default/late", node.http));

    apply_text(&admin, "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: dlq\n").await?;
    let b = get_json(&admin, "broker", "late").await?;
    assert_eq!(ready(&b).0, "True", "{b}");
    assert_eq!(b["status"]["deadLetterSinkUri"], format!("http://{}/channels/default/dlq", node.http));
    let t = get_json(&admin, "trigger", "early").await?;
    assert_eq!(ready(&t).0, "True", "the trigger is Ready once its broker is: {t}");

    let (code, _, _) = sluice(args(&["delete", "broker", "late", "--admin", &admin])).await?;
    assert_eq!(code, 0);
    let t = get_json(&admin, "trigger", "early").await?;
    assert_eq!(
        ready(&t),
        ("False".to_string(), "BrokerDoesNotExist".to_string()),
        "deleting the broker un-readies it: {t}"
    );

    let (code, stdout, _) = sluice(args(&["describe", "trigger", "early", "--admin", &admin])).await?;
    assert_eq!(code, 0);
    assert!(stdout.contains("BrokerReady") && stdout.contains("BrokerDoesNotExist"), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_refused_with_their_field_path_and_nothing_is_stored() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    let fixture_buf = sluice_tests::manifest_dir().join("fixtures").join("invalid.yaml").display().to_string();
    let fixture = fixture_buf.as_str();
    let expected: Vec<String> = std::fs::read_to_string(fixture)?
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: ").map(str::to_string))
        .collect();
    assert!(expected.len() >= 30, "{} cases", expected.len());
    let (code, stdout, stderr) = sluice(args(&["apply", "-f", fixture, "--admin", &node.admin])).await?;
    assert_eq!(code, 4, "{stdout}");
    assert!(stdout.trim().is_empty(), "nothing applied: {stdout}");
    for (index, path) in expected.iter().enumerate() {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("document {index} ")))
            .unwrap_or_else(|| panic!("no error for document {index}: {stderr}"));
        assert!(line.contains(fixture), "names the file: {line}");
        assert!(line.contains(&format!("{path}: ")), "document {index}: expected {path}: {line}");
    }
    for kind in ["brokers", "triggers", "channels", "inmemorychannels", "subscriptions"] {
        let (code, stdout, _) = sluice(args(&["get", kind, "-A", "-o", "json", "--admin", &node.admin])).await?;
        assert_eq!(code, 0);
        let list: serde_json::Value = serde_json::from_str(&stdout)?;
        assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{kind}: nothing stored");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_every_change() -> anyhow::Result<()> {
    use sluice_proto::admin::resource_event::Type;
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    apply_text(&node.admin, "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: first\n").await?;
    let mut client =
        sluice_proto::admin::resources_client::ResourcesClient::connect(format!("http://{}", node.admin)).await?;
    let mut stream =
        client.watch(sluice_proto::admin::WatchResourcesRequest { kind: "Broker".into() }).await?.into_inner();
    async fn next(stream: &mut tonic::Streaming<sluice_proto::admin::ResourceEvent>) -> anyhow::Result<(Type, String)> {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await??.expect("stream open");
        Ok((Type::try_from(event.r#type)?, event.r#ref.map(|r| r.name).unwrap_or_default()))
    }
    assert_eq!(next(&mut stream).await?, (Type::Added, "first".to_string()), "existing objects come first");
    apply_text(&node.admin, "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: second\n").await?;
    assert_eq!(next(&mut stream).await?, (Type::Added, "second".to_string()));
    apply_text(&node.admin, "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: second\nspec:\n  delivery:\n    retry: 1\n").await?;
    assert_eq!(next(&mut stream).await?, (Type::Modified, "second".to_string()));
    // Other kinds are not part of a Broker watch.
    apply_text(&node.admin, "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: c\n")
        .await?;
    let (code, _, _) = sluice(args(&["delete", "broker", "first", "--admin", &node.admin])).await?;
    assert_eq!(code, 0);
    assert_eq!(next(&mut stream).await?, (Type::Deleted, "first".to_string()));
    Ok(())
}

/// Regression: a Watch learned that its client had gone only when it had a change to send, so a Watch of a
/// kind that did not change kept its place among the node's 256 admin streams after its client left (a
/// `sluice get brokers -w` stopped with Ctrl-C), and past 256 of them every Tail, Watch and Logs was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_watch_whose_client_left_gives_back_its_place() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    let client =
        sluice_proto::admin::resources_client::ResourcesClient::connect(format!("http://{}", node.admin)).await?;
    for opened in 0..300 {
        let stream = wait_until(Duration::from_secs(10), || {
            let mut client = client.clone();
            async move {
                let request = sluice_proto::admin::WatchResourcesRequest { kind: "Broker".into() };
                Ok(client.watch(request).await.ok().map(tonic::Response::into_inner))
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("watch {opened} was never let in: {e}"))?;
        drop(stream);
    }
    Ok(())
}

/// Regression (a review of the apply path): a Service re-applied as Knative prints it (`kubectl get -o yaml`:
/// its defaults written out, `creationTimestamp: null`) bumped the generation and made a new Revision that took
/// the traffic. It is `unchanged`, and a real change still makes the next Revision.
#[tokio::test]
async fn regression_a_service_reapplied_with_knatives_defaults_written_out_makes_no_new_revision() -> anyhow::Result<()>
{
    use serde_json::json;
    let (_dir, node) = sluice_tests::start_single_node(1, &[]).await?;
    let admin = node.admin.clone();
    let env = json!([{"name": "TARGET", "value": "One"}]);
    sluice_tests::apply_resource(&admin, super::t90_serving::service("hello", env.clone(), json!({}), json!({})))
        .await?;
    super::t90_serving::wait_for(&admin, "Configuration", "hello", "/metadata/generation", json!(1)).await?;
    super::t90_serving::wait_for(&admin, "Revision", "hello-00001", "/metadata/name", json!("hello-00001")).await?;

    let mut exported = super::t90_serving::get(&admin, "Service", "hello").await?;
    exported["metadata"]["creationTimestamp"] = serde_json::Value::Null;
    exported["spec"]["template"]["metadata"] = json!({"creationTimestamp": null});
    let template = &mut exported["spec"]["template"]["spec"];
    template["containerConcurrency"] = json!(0);
    template["timeoutSeconds"] = json!(300);
    template["enableServiceLinks"] = json!(false);
    template["containers"][0]["name"] = json!("user-container");
    template["containers"][0]["readinessProbe"] = json!({"successThreshold": 1, "tcpSocket": {"port": 0}});
    template["containers"][0]["resources"] = json!({});
    exported["spec"]["traffic"] = json!([{"latestRevision": true, "percent": 100}]);
    let file = std::env::temp_dir().join(format!("sluice-t50-service-{}.yaml", std::process::id()));
    std::fs::write(&file, serde_json::to_string(&exported)?)?;
    let (code, out, stderr) =
        sluice(args(&["apply", "-f", file.to_str().unwrap_or_default(), "--admin", &admin])).await?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out.trim_end(), "service.serving.knative.dev/hello unchanged");
    let service = super::t90_serving::get(&admin, "Service", "hello").await?;
    assert_eq!(service["metadata"]["generation"], 1);
    let configuration = super::t90_serving::get(&admin, "Configuration", "hello").await?;
    assert_eq!(configuration["metadata"]["generation"], 1);

    // The same export with another image is a change: generation 2, the second Revision.
    exported["spec"]["template"]["spec"]["containers"][0]["env"] = json!([{"name": "TARGET", "value": "Two"}]);
    std::fs::write(&file, serde_json::to_string(&exported)?)?;
    let (code, out, stderr) =
        sluice(args(&["apply", "-f", file.to_str().unwrap_or_default(), "--admin", &admin])).await?;
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out.trim_end(), "service.serving.knative.dev/hello configured");
    super::t90_serving::wait_for(&admin, "Revision", "hello-00002", "/metadata/name", json!("hello-00002")).await?;
    let mut client = sluice_proto::admin::resources_client::ResourcesClient::connect(format!("http://{admin}")).await?;
    let revisions =
        client.list(sluice_proto::admin::ListResourcesRequest { kind: "Revision".into() }).await?.into_inner();
    let names: Vec<String> = revisions
        .objects_json
        .iter()
        .filter_map(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .filter_map(|r| r["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, ["hello-00001", "hello-00002"], "one Revision per real change");
    Ok(())
}

/// Regression (a review of the apply path): an immutable field was checked against the answering node's copy,
/// outside the log, so two applies creating the same Trigger at once through two nodes, each naming another
/// Broker, both succeeded, and the Trigger moved to the second Broker. An apply is now written only over the
/// object version it was checked against: of each pair, one is written and the other is checked again and
/// refused as immutable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_two_racing_applies_cannot_change_an_immutable_field() -> anyhow::Result<()> {
    use sluice_proto::admin::ApplyResourceRequest;
    use sluice_proto::admin::resources_client::ResourcesClient;
    let cluster = TestCluster::start(3, 1, &[]).await?;
    for node in &cluster.nodes[..2] {
        sluice_tests::wait_for_log_format(&node.admin, 3, 5).await?;
    }
    let mut first = ResourcesClient::connect(format!("http://{}", cluster.nodes[0].admin)).await?;
    let mut second = ResourcesClient::connect(format!("http://{}", cluster.nodes[1].admin)).await?;
    let trigger = |name: &str, broker: &str| {
        serde_json::json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"broker": broker, "subscriber": {"uri": "http://127.0.0.1:1/"}}})
        .to_string()
    };
    for round in 0..20 {
        let name = format!("race-{round}");
        let (a, b) = tokio::join!(
            first.apply(ApplyResourceRequest { object_json: trigger(&name, "left"), dry_run: false }),
            second.apply(ApplyResourceRequest { object_json: trigger(&name, "right"), dry_run: false }),
        );
        let written: Vec<&str> = [(a.is_ok(), "left"), (b.is_ok(), "right")]
            .into_iter()
            .filter_map(|(ok, broker)| ok.then_some(broker))
            .collect();
        assert_eq!(written.len(), 1, "round {round}: exactly one apply is written ({a:?}, {b:?})");
        let refused = a.err().or(b.err()).map(|status| status.message().to_string()).unwrap_or_default();
        assert!(refused.contains("immutable") || refused.contains("changed while"), "round {round}: {refused}");
        let mut reader = first.clone();
        let stored = reader
            .get(sluice_proto::admin::ResourceRef {
                kind: "Trigger".into(),
                namespace: "default".into(),
                name: name.clone(),
            })
            .await?
            .into_inner();
        let stored: serde_json::Value = serde_json::from_str(&stored.object_json)?;
        assert_eq!(stored["spec"]["broker"], written[0], "round {round}: the Broker of the apply that was written");
    }
    Ok(())
}

/// Regression: an object applied through a node whose metadata leader had just stopped answering (frozen, its
/// connection open) waited for the forward's 10 s timeout, though the other two elected a new leader within a
/// second. The forward is given up once that leader is deposed (counted), and the apply goes through the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_an_apply_forwarded_to_a_frozen_metadata_leader_is_given_up_for_the_next_one() -> anyhow::Result<()>
{
    use sluice_tests::{apply_resource, broker_object, metric_sum_at};
    // Elections after a second without a heartbeat, not 200 ms: on a loaded machine the apply still reaches the
    // frozen leader before the others can start one.
    let mut cluster = TestCluster::start(3, 1, &["--election-timeout-ms", "1000"]).await?;
    let leader = cluster.leader_of(0).await?;
    let other = cluster.nodes.iter().find(|n| n.id != leader).map(|n| (n.admin.clone(), n.http.clone()));
    let (admin, http) = other.ok_or_else(|| anyhow::anyhow!("no other node"))?;
    apply_resource(&admin, broker_object("default", "before", serde_json::json!({}))).await?;
    // The leader's last heartbeat was at most 50 ms ago, and the others wait at least a second for the next: this
    // apply is forwarded to the frozen leader.
    cluster.node(leader).signal("STOP")?;
    let first = apply_resource(&admin, broker_object("default", "during", serde_json::json!({}))).await;
    // That apply is answered as of unknown outcome (the frozen leader never proposed it); once the others have
    // elected a leader, the same apply goes through.
    wait_until(Duration::from_secs(30), || async {
        Ok(apply_resource(&admin, broker_object("default", "during", serde_json::json!({}))).await.ok())
    })
    .await?;
    let abandoned = metric_sum_at(&http, "sluice_forwards_abandoned_total", &["group=\"metadata\""]).await?;
    cluster.node(leader).signal("CONT")?;
    assert!(abandoned >= 1.0, "the apply forwarded to the frozen leader was not given up ({abandoned}; {first:?})");
    Ok(())
}
