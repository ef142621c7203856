//! Knative Serving on one node: Services become revisions run as child processes (the `sluice-hello` test
//! app), served at `NAME.NAMESPACE.localhost` on the node's HTTP port by traffic split, activated from zero.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Revisions go to zero 300 ms after their last request (no grace period), decisions every 100 ms.
const QUICK_ZERO: &[&str] = &[
    "--autoscaler",
    "stable-window=300ms",
    "--autoscaler",
    "scale-to-zero-grace-period=0s",
    "--autoscaler",
    "tick-interval=100ms",
];

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{ListResourcesRequest, ResourceRef};
use sluice_tests::{apply_resource, hello_bin, start_single_node, wait_until};

pub(super) const READY_WITHIN: Duration = Duration::from_secs(30);

pub(super) fn service(name: &str, env: Value, annotations: Value, extra_spec: Value) -> Value {
    let mut template_spec = json!({
        "containers": [{
            "image": "ghcr.io/knative/helloworld-go",
            "command": [hello_bin().display().to_string()],
            "env": env,
        }],
    });
    if let (Some(spec), Value::Object(extra)) = (template_spec.as_object_mut(), extra_spec) {
        spec.extend(extra);
    }
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {"metadata": {"annotations": annotations}, "spec": template_spec}},
    })
}

pub(super) async fn get(admin: &str, kind: &str, name: &str) -> Result<Value> {
    let mut client = ResourcesClient::connect(format!("http://{admin}")).await?;
    let reply = client
        .get(ResourceRef { kind: kind.into(), namespace: "default".into(), name: name.into() })
        .await?
        .into_inner();
    Ok(serde_json::from_str(&reply.object_json)?)
}

pub(super) fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == kind)
}

/// Waits until `kind/name` has `field` (a JSON pointer) equal to `expected`; answers the object.
pub(super) async fn wait_for(admin: &str, kind: &str, name: &str, pointer: &str, expected: Value) -> Result<Value> {
    wait_until(READY_WITHIN, || async {
        let object = get(admin, kind, name).await?;
        Ok((object.pointer(pointer) == Some(&expected)).then_some(object))
    })
    .await
    .with_context(|| format!("{kind} {name}: {pointer} never became {expected}"))
}

pub(super) async fn wait_ready(admin: &str, kind: &str, name: &str) -> Result<Value> {
    wait_until(READY_WITHIN, || async {
        let object = get(admin, kind, name).await?;
        Ok(condition(&object, "Ready").filter(|c| c["status"] == "True").is_some().then_some(object.clone()))
    })
    .await
    .with_context(|| format!("{kind} {name} never became Ready"))
}

/// A client that reaches every `*.localhost` host at the node's HTTP port, as curl and browsers do.
pub(super) fn client(http: &str, hosts: &[&str]) -> Result<reqwest::Client> {
    let addr: SocketAddr = http.parse()?;
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(64);
    for host in hosts {
        builder = builder.resolve(host, addr);
    }
    Ok(builder.build()?)
}

pub(super) fn url(host: &str, http: &str, path: &str) -> String {
    let port = http.rsplit_once(':').map(|(_, p)| p).unwrap_or("80");
    format!("http://{host}:{port}{path}")
}

#[tokio::test]
async fn a_service_becomes_ready_answers_at_its_url_and_splits_traffic_by_revision() -> Result<()> {
    let (_dir, node) = start_single_node(1, &[]).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    // `$(PORT)` in an env value expands as Kubernetes expands it.
    let env = json!([{"name": "TARGET", "value": "Sluice"}, {"name": "ADDRESS", "value": "127.0.0.1:$(PORT)"}]);
    apply_resource(&admin, service("hello", env, json!({}), json!({}))).await?;
    let ready = wait_ready(&admin, "Service", "hello").await?;
    let port = http.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    assert_eq!(ready["status"]["url"], format!("http://hello.default.localhost:{port}"));
    assert_eq!(ready["status"]["latestReadyRevisionName"], "hello-00001");
    assert_eq!(ready["status"]["traffic"][0]["revisionName"], "hello-00001");
    let revision = wait_ready(&admin, "Revision", "hello-00001").await?;
    assert_eq!(revision["metadata"]["labels"]["serving.knative.dev/configuration"], "hello");
    assert_eq!(revision["metadata"]["ownerReferences"][0]["kind"], "Configuration");

    let client = client(&http, &["hello.default.localhost", "old-hello.default.localhost"])?;
    let response = client.get(url("hello.default.localhost", &http, "/")).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-revision"], "hello-00001");
    assert_eq!(response.text().await?, "Hello Sluice!\n");
    let contract: Value = client.get(url("hello.default.localhost", &http, "/env")).send().await?.json().await?;
    assert_eq!(contract["K_SERVICE"], "hello");
    assert_eq!(contract["K_CONFIGURATION"], "hello");
    assert_eq!(contract["K_REVISION"], "hello-00001");
    assert!(contract["PORT"].as_str().is_some_and(|p| p.parse::<u16>().is_ok()), "{contract}");
    assert_eq!(contract["ADDRESS"], format!("127.0.0.1:{}", contract["PORT"].as_str().unwrap_or_default()));
    // Headers as Knative's queue-proxy passes them: `TE: trailers` kept (gRPC servers require it), the headers
    // `Connection` names removed, the client's address appended to `X-Forwarded-For`.
    let seen: Value = client
        .get(url("hello.default.localhost", &http, "/headers"))
        .header("te", "trailers")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(seen["te"], "trailers", "{seen}");
    assert!(seen.get("x-hop").is_none() && seen.get("connection").is_none(), "{seen}");
    assert_eq!((&seen["x-forwarded-for"], &seen["x-forwarded-proto"]), (&json!("127.0.0.1"), &json!("http")), "{seen}");
    let unknown =
        client.get(url("hello.default.localhost", &http, "/")).header("host", "nope.default.localhost").send().await?;
    assert_eq!(unknown.status(), 404, "an unknown host under the domain");

    // A template change makes a second revision, which takes the traffic once ready.
    apply_resource(&admin, service("hello", json!([{"name": "TARGET", "value": "Two"}]), json!({}), json!({}))).await?;
    wait_for(&admin, "Service", "hello", "/status/latestReadyRevisionName", json!("hello-00002")).await?;
    wait_ready(&admin, "Service", "hello").await?;
    let body = client.get(url("hello.default.localhost", &http, "/")).send().await?.text().await?;
    assert_eq!(body, "Hello Two!\n");

    // 50/50 between the two, the old one also under a tag.
    let mut split = service("hello", json!([{"name": "TARGET", "value": "Two"}]), json!({}), json!({}));
    split["spec"]["traffic"] = json!([
        {"revisionName": "hello-00001", "percent": 50, "tag": "old"},
        {"latestRevision": true, "percent": 50},
    ]);
    apply_resource(&admin, split).await?;
    let routed = wait_until(READY_WITHIN, || async {
        let route = get(&admin, "Route", "hello").await?;
        let traffic = route.pointer("/status/traffic").cloned().unwrap_or_default();
        Ok((traffic.as_array().map(Vec::len) == Some(2)).then_some(route))
    })
    .await?;
    assert_eq!(routed["status"]["traffic"][0]["url"], format!("http://old-hello.default.localhost:{port}"));
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..1000 {
        let response = client.get(url("hello.default.localhost", &http, "/")).send().await?;
        assert_eq!(response.status(), 200);
        let revision = response.headers()["x-revision"].to_str()?.to_string();
        *counts.entry(revision).or_default() += 1;
    }
    for revision in ["hello-00001", "hello-00002"] {
        let got = counts.get(revision).copied().unwrap_or(0);
        assert!((450..=550).contains(&got), "50/50 within ±5 % over 1,000 requests: {counts:?}");
    }
    for _ in 0..20 {
        let response = client.get(url("old-hello.default.localhost", &http, "/")).send().await?;
        assert_eq!(response.headers()["x-revision"], "hello-00001", "the tag URL reaches its revision");
    }

    // A pinned revision stays pinned when the template changes again.
    let mut pinned = service("hello", json!([{"name": "TARGET", "value": "Three"}]), json!({}), json!({}));
    pinned["spec"]["traffic"] = json!([{"revisionName": "hello-00002", "percent": 100}]);
    apply_resource(&admin, pinned).await?;
    wait_for(&admin, "Service", "hello", "/status/latestReadyRevisionName", json!("hello-00003")).await?;
    for _ in 0..20 {
        let response = client.get(url("hello.default.localhost", &http, "/")).send().await?;
        assert_eq!(response.headers()["x-revision"], "hello-00002");
    }

    // h2c clients are served too (prior knowledge, as gRPC-style clients speak it).
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("hello.default.localhost", http.parse::<SocketAddr>()?)
        .build()?;
    let response = h2c.get(url("hello.default.localhost", &http, "/")).send().await?;
    assert_eq!((response.version(), response.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    assert_eq!(response.headers()["x-revision"], "hello-00002");

    // Every request is counted under its host and status code: 1,025 answered 200 for the Service's host
    // (across three revisions and both protocols), 20 for the tag's, and the unknown host's 404.
    let metrics = reqwest::get(format!("http://{http}/metrics")).await?.text().await?;
    for (series, count) in [
        (r#"sluice_serving_requests_total{host="hello.default.localhost",code="200"}"#, 1025),
        (r#"sluice_serving_requests_total{host="old-hello.default.localhost",code="200"}"#, 20),
        (r#"sluice_serving_requests_total{host="_unrouted",code="404"}"#, 1),
    ] {
        assert!(metrics.lines().any(|l| l == format!("{series} {count}")), "{series} {count} in:\n{metrics}");
    }

    // A template with its own name may not take the name of a Revision made from another template (here one
    // applied by hand).
    let bare = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"name": "taken-v1", "namespace": "default"},
        "spec": {"containers": [{"image": "app", "command": [hello_bin().display().to_string()]}]}});
    apply_resource(&admin, bare).await?;
    let mut taken = service("taken", json!([]), json!({}), json!({}));
    taken["spec"]["template"]["metadata"]["name"] = json!("taken-v1");
    let refused = apply_resource(&admin, taken).await.expect_err("the name of a Revision it did not make");
    assert!(refused.to_string().contains("spec.template.metadata.name"), "{refused:#}");
    Ok(())
}

#[tokio::test]
async fn a_revision_at_zero_answers_concurrent_first_requests_and_container_concurrency_holds() -> Result<()> {
    let (_dir, node) = start_single_node(1, QUICK_ZERO).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    // One instance (`max-scale: 1`), so that its own count shows containerConcurrency holding for all 50.
    let one_instance = json!({"autoscaling.knative.dev/max-scale": "1"});
    apply_resource(&admin, service("cold", json!([]), one_instance, json!({"containerConcurrency": 1}))).await?;
    wait_ready(&admin, "Service", "cold").await?;
    // It went to zero after being idle.
    wait_for(&admin, "Revision", "cold-00001", "/status/actualReplicas", json!(0)).await?;
    // `sluice logs -f` shows the first instance's output, then the next one's as it starts.
    let mut follower = tokio::process::Command::new(sluice_tests::sluice_bin())
        .args(["logs", "ksvc", "cold", "--follow", "--admin", &admin])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut followed = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        follower.stdout.take().context("the follower's output")?,
    ));
    let first = tokio::time::timeout(READY_WITHIN, followed.next_line()).await??.unwrap_or_default();
    assert!(first.starts_with("hello: listening on"), "{first}");
    let client = client(&http, &["cold.default.localhost"])?;
    let requests = (0..50).map(|_| {
        let client = client.clone();
        let url = url("cold.default.localhost", &http, "/?sleep_ms=5");
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
    });
    let statuses: Vec<u16> = futures_collect(requests).await?;
    assert!(statuses.iter().all(|s| *s == 200), "every first request is answered 2xx: {statuses:?}");
    let stats: Value = client.get(url("cold.default.localhost", &http, "/stats")).send().await?.json().await?;
    assert_eq!(stats["max_concurrent"], 1, "containerConcurrency: 1 never sees two requests at once: {stats}");
    assert!(stats["requests"].as_u64().is_some_and(|n| n >= 50), "{stats}");
    let live = tokio::time::timeout(READY_WITHIN, async {
        loop {
            match followed.next_line().await? {
                Some(line) if line.starts_with("hello: listening on") => return Ok::<_, anyhow::Error>(line),
                Some(_) => continue,
                None => bail!("the follower stopped"),
            }
        }
    })
    .await
    .context("the second instance's first line, followed live")??;
    assert!(live.ends_with("as cold-00001"), "{live}");
    Ok(())
}

async fn futures_collect(
    handles: impl Iterator<Item = tokio::task::JoinHandle<reqwest::Result<u16>>>,
) -> Result<Vec<u16>> {
    let mut statuses = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        statuses.push(handle.await??);
    }
    Ok(statuses)
}

#[tokio::test]
async fn an_app_that_cannot_start_shows_why_in_status() -> Result<()> {
    let (_dir, node) = start_single_node(1, &[]).await?;
    let admin = node.admin.clone();
    apply_resource(&admin, service("crash", json!([{"name": "HELLO_CRASH", "value": "3"}]), json!({}), json!({})))
        .await?;
    let revision = wait_until(READY_WITHIN, || async {
        let revision = get(&admin, "Revision", "crash-00001").await?;
        Ok(condition(&revision, "ContainerHealthy").filter(|c| c["status"] == "False").map(|_| revision.clone()))
    })
    .await?;
    let healthy = condition(&revision, "ContainerHealthy").cloned().unwrap_or_default();
    assert_eq!(healthy["reason"], "ExitCode3", "{healthy}");
    assert!(
        healthy["message"].as_str().is_some_and(|m| m.contains("crashing at start")),
        "the app's output: {healthy}"
    );
    let service = wait_until(READY_WITHIN, || async {
        let service = get(&admin, "Service", "crash").await?;
        Ok(condition(&service, "Ready").filter(|c| c["status"] == "False").map(|_| service.clone()))
    })
    .await?;
    let ready = condition(&service, "Ready").cloned().unwrap_or_default();
    assert_eq!(ready["reason"], "RevisionFailed", "{ready}");
    let logs = tokio::process::Command::new(sluice_tests::sluice_bin())
        .args(["logs", "ksvc", "crash", "--admin", &admin])
        .kill_on_drop(true)
        .output();
    let logs = tokio::time::timeout(Duration::from_secs(20), logs).await??;
    let output = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    assert!(output.contains("hello: crashing at start as asked (HELLO_CRASH=3)"), "{output}");

    // An image without a command cannot run here, and says so instead of hanging.
    let mut image_only = service_without_command("image-only");
    image_only["metadata"]["namespace"] = json!("default");
    apply_resource(&admin, image_only).await?;
    let revision = wait_until(READY_WITHIN, || async {
        let revision = get(&admin, "Revision", "image-only-00001").await?;
        Ok(condition(&revision, "Ready").filter(|c| c["status"] == "False").map(|_| revision.clone()))
    })
    .await?;
    assert_eq!(condition(&revision, "Ready").map(|c| c["reason"].clone()), Some(json!("LocalRuntimeNeedsCommand")));
    Ok(())
}

fn service_without_command(name: &str) -> Value {
    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"image": "ghcr.io/knative/helloworld-go"}]}}}})
}

/// Knative's `config-features` as node flags: a cluster that enables a flag takes what it lets through, and
/// still refuses what the flags it keeps disabled guard.
#[tokio::test]
async fn a_node_with_a_feature_flag_enabled_accepts_what_it_lets_through() -> Result<()> {
    let flag = "kubernetes.podspec-persistent-volume-claim";
    let (_dir, node) = start_single_node(1, &["--serving-feature", &format!("{flag}=enabled")]).await?;
    let mut client = ResourcesClient::connect(format!("http://{}", node.admin)).await?;
    let with_volume = |name: &str, volume: Value| {
        let mount = json!([{"name": volume["name"], "mountPath": "/data", "readOnly": true}]);
        let mut object = service(name, json!([]), json!({}), json!({"volumes": [volume]}));
        object["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = mount;
        sluice_proto::admin::ApplyResourceRequest { object_json: object.to_string(), dry_run: false }
    };
    let claim = json!({"name": "data", "persistentVolumeClaim": {"claimName": "data", "readOnly": true}});
    let reply = client.apply(with_volume("claims", claim)).await?.into_inner();
    assert_eq!(reply.outcome, "created");
    let host = json!({"name": "root", "hostPath": {"path": "/"}});
    let refused = client.apply(with_volume("host", host)).await.expect_err("hostPath is not enabled");
    assert!(
        refused.message().contains("kubernetes.podspec-volumes-hostpath=enabled"),
        "names the flag that would allow it: {}",
        refused.message()
    );
    Ok(())
}

#[tokio::test]
async fn invalid_serving_objects_are_refused_with_their_paths_and_nothing_is_stored() -> Result<()> {
    let (_dir, node) = start_single_node(1, &[]).await?;
    let text = std::fs::read_to_string(sluice_tests::manifest_dir().join("fixtures/serving-invalid.yaml"))?;
    let mut client = ResourcesClient::connect(format!("http://{}", node.admin)).await?;
    let mut refused = 0;
    for document in text.split("\n---\n").filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.starts_with('#'))) {
        let object: Value = serde_yaml_ng::from_str(document)?;
        let expect = object
            .pointer("/metadata/annotations/test.sluice.dev~1expect")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut object = object;
        if let Some(annotations) = object.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
            annotations.remove("test.sluice.dev/expect");
        }
        let result = client
            .apply(sluice_proto::admin::ApplyResourceRequest { object_json: object.to_string(), dry_run: false })
            .await;
        match result {
            Ok(_) => bail!("accepted: {object}"),
            Err(status) => {
                assert!(status.message().contains(&expect), "{expect:?} not in {:?}", status.message());
                refused += 1;
            }
        }
    }
    assert!(refused >= 20, "{refused} invalid objects");
    for kind in ["Service", "Configuration", "Revision", "Route"] {
        let listed = client.list(ListResourcesRequest { kind: kind.into() }).await?.into_inner();
        assert!(listed.objects_json.is_empty(), "nothing stored: {kind}");
    }
    Ok(())
}

#[tokio::test]
async fn a_trigger_to_a_service_at_zero_gets_every_event_without_retries_or_dead_letters() -> Result<()> {
    let (dir, node) = start_single_node(2, QUICK_ZERO).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let record = dir.path().join("received.txt");
    let env = json!([{"name": "HELLO_RECORD", "value": record.display().to_string()}]);
    apply_resource(&admin, service("sink", env, json!({}), json!({"containerConcurrency": 4}))).await?;
    wait_ready(&admin, "Service", "sink").await?;
    wait_for(&admin, "Revision", "sink-00001", "/status/actualReplicas", json!(0)).await?;

    apply_resource(&admin, sluice_tests::broker_object("default", "default", json!({}))).await?;
    let mut trigger = sluice_tests::trigger_object("default", "to-ksvc", "default", "", json!({}), json!({}));
    trigger["spec"]["subscriber"] =
        json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "sink"}});
    apply_resource(&admin, trigger).await?;
    let port = http.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    wait_for(
        &admin,
        "Trigger",
        "to-ksvc",
        "/status/subscriberUri",
        json!(format!("http://sink.default.localhost:{port}")),
    )
    .await?;
    sluice_tests::wait_for_broker(&http, "/default/default").await?;

    publish(&http, "e", 1000, "t90.event").await?;
    let lines = wait_until(Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        Ok((lines.len() >= 1000).then_some(lines))
    })
    .await
    .context("1,000 events delivered")?;
    let unique: std::collections::BTreeSet<&String> = lines.iter().collect();
    assert_eq!(unique.len(), 1000, "every event");
    assert_eq!(lines.len(), 1000, "none twice: no delivery was retried");

    let consumers = sluice_proto::admin::consumers_client::ConsumersClient::connect(format!("http://{admin}")).await?;
    let status = wait_until(Duration::from_secs(20), || async {
        let status = trigger_status(&consumers).await?;
        let delivered: u64 = status.partitions.iter().map(|p| p.delivered).sum();
        Ok((delivered == 1000).then_some(status))
    })
    .await
    .context("the Trigger's statistics count 1,000 deliveries")?;
    for partition in &status.partitions {
        assert_eq!(
            (partition.retried, partition.dead_lettered, partition.dead_letter_count),
            (0, 0, 0),
            "{partition:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn requests_in_flight_finish_before_an_instance_is_stopped() -> Result<()> {
    let (_dir, node) = start_single_node(1, &[]).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    // The app drops what it is doing on SIGTERM: only the runtime's draining lets the slow request finish.
    let abrupt = json!({"name": "HELLO_ABRUPT_TERM", "value": "1"});
    apply_resource(
        &admin,
        service("drain", json!([{"name": "TARGET", "value": "One"}, abrupt.clone()]), json!({}), json!({})),
    )
    .await?;
    wait_ready(&admin, "Service", "drain").await?;
    let client = client(&http, &["drain.default.localhost"])?;
    // A slow request to the first revision...
    let slow = {
        let client = client.clone();
        let url = url("drain.default.localhost", &http, "/?sleep_ms=1500");
        tokio::spawn(async move {
            let response = client.get(url).send().await?;
            let revision = response.headers()["x-revision"].to_str().unwrap_or_default().to_string();
            Ok::<_, anyhow::Error>((response.status().as_u16(), revision, response.text().await?))
        })
    };
    wait_for(&admin, "Revision", "drain-00001", "/status/actualReplicas", json!(1)).await?;
    // ...while a new template takes all the traffic, so the first revision is stopped.
    apply_resource(&admin, service("drain", json!([{"name": "TARGET", "value": "Two"}, abrupt]), json!({}), json!({})))
        .await?;
    wait_for(&admin, "Service", "drain", "/status/latestReadyRevisionName", json!("drain-00002")).await?;
    let (status, revision, body) = slow.await??;
    assert_eq!((status, revision.as_str(), body.as_str()), (200, "drain-00001", "Hello One!\n"), "it finished");
    wait_for(&admin, "Revision", "drain-00001", "/status/actualReplicas", json!(0)).await?;
    Ok(())
}

#[tokio::test]
async fn kill_9_of_the_node_running_the_instance_during_delivery_loses_no_event() -> Result<()> {
    let mut cluster = sluice_tests::TestCluster::start(3, 1, QUICK_ZERO).await?;
    let record = cluster.root.path().join("received.txt");
    let admin = cluster.nodes[0].admin.clone();
    let env = json!([{"name": "HELLO_RECORD", "value": record.display().to_string()},
        {"name": "HELLO_OUTLIVE_PARENT", "value": "1"}]);
    apply_resource(&admin, service("sink", env, json!({}), json!({"containerConcurrency": 2}))).await?;
    wait_ready(&admin, "Service", "sink").await?;
    apply_resource(&admin, sluice_tests::broker_object("default", "default", json!({}))).await?;
    let mut trigger = sluice_tests::trigger_object("default", "to-ksvc", "default", "", json!({}), json!({}));
    // Slow deliveries (5 ms each), so that the kill lands while events are being delivered.
    trigger["spec"]["subscriber"] = json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "sink"}, "uri": "/?sleep_ms=5"});
    apply_resource(&admin, trigger).await?;
    // The partition's leader dispatches, through its own node's serving: that is where the instance runs.
    let leader = cluster.leader_of(1).await?;
    let other = cluster.nodes.iter().find(|n| n.id != leader).map(|n| (n.http.clone(), n.admin.clone()));
    let (http, other_admin) = other.context("a node other than the leader")?;
    wait_until(READY_WITHIN, || async {
        let trigger = get(&other_admin, "Trigger", "to-ksvc").await?;
        Ok(condition(&trigger, "Ready").filter(|c| c["status"] == "True").map(|_| ()))
    })
    .await?;
    sluice_tests::wait_for_broker(&http, "/default/default").await?;
    publish(&http, "k", 1000, "t90.kill").await?;
    let received = |record: &std::path::Path| -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(record).unwrap_or_default().lines().map(str::to_string).collect()
    };
    wait_until(Duration::from_secs(30), || async { Ok((received(&record).len() >= 200).then_some(())) }).await?;
    cluster.node(leader).kill9();
    let delivered_before_kill = received(&record).len();
    assert!(delivered_before_kill < 1000, "the kill landed during delivery ({delivered_before_kill} delivered)");
    wait_until(Duration::from_secs(90), || async { Ok((received(&record).len() == 1000).then_some(())) })
        .await
        .with_context(|| format!("every event after the kill: {} of 1000", received(&record).len()))?;
    let consumers =
        sluice_proto::admin::consumers_client::ConsumersClient::connect(format!("http://{other_admin}")).await?;
    let status = trigger_status(&consumers).await?;
    for partition in &status.partitions {
        assert_eq!((partition.dead_lettered, partition.dead_letter_count), (0, 0), "{partition:?}");
    }
    // The killed node's instances outlived it; started again, it stops them.
    let instances_dir = cluster.node(leader).data.join("serving").join("instances");
    let orphans: Vec<String> = std::fs::read_dir(&instances_dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    assert!(!orphans.is_empty(), "the killed node ran the instance");
    cluster.node(leader).start()?;
    sluice_tests::wait_ready(&cluster.node(leader).http.clone()).await?;
    wait_until(Duration::from_secs(10), || async {
        Ok(orphans.iter().all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(()))
    })
    .await
    .context("the restarted node stopped the instances its previous run left")?;
    // These instances outlive a killed node on purpose: stop the nodes gracefully, which stops them.
    for node in &cluster.nodes {
        node.signal("TERM")?;
    }
    for node in cluster.nodes.iter_mut() {
        wait_until(Duration::from_secs(30), || {
            let running = node.is_running();
            async move { Ok((!running).then_some(())) }
        })
        .await?;
    }
    Ok(())
}

/// `count` events in batches of 500 to the `default` Broker at `http`, ids `{prefix}0` .. `{prefix}{count - 1}`.
pub(super) async fn publish(http: &str, prefix: &str, count: usize, event_type: &str) -> Result<()> {
    let client = reqwest::Client::new();
    for start in (0..count).step_by(500) {
        let events: Vec<Value> = (start..(start + 500).min(count))
            .map(|i| json!({"specversion": "1.0", "id": format!("{prefix}{i}"), "source": "/t90", "type": event_type}))
            .collect();
        let response = client
            .post(format!("http://{http}/default/default"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(events).to_string())
            .send()
            .await?;
        assert_eq!(response.status(), 202);
    }
    Ok(())
}

/// The `to-ksvc` Trigger's delivery status.
pub(super) async fn trigger_status(
    consumers: &sluice_proto::admin::consumers_client::ConsumersClient<tonic::transport::Channel>,
) -> Result<sluice_proto::admin::ConsumerStatus> {
    let reference = sluice_proto::admin::ConsumerRef {
        kind: "trigger".into(),
        namespace: "default".into(),
        name: "to-ksvc".into(),
    };
    Ok(consumers.clone().status(reference).await?.into_inner())
}

/// Regression: a request waiting for a slot at a revision that a rollout took off traffic was answered 502
/// ("the revision stopped"); it had not been sent, and now goes to the revision the route picks instead.
#[tokio::test]
async fn a_request_waiting_at_a_revision_taken_off_traffic_goes_to_the_new_one() -> Result<()> {
    let (_dir, node) = start_single_node(1, &[]).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    // One instance that takes one request at a time: a second request waits at the gate.
    let one_at_a_time = |target: &str| {
        service(
            "queued",
            json!([{"name": "TARGET", "value": target}]),
            json!({"autoscaling.knative.dev/min-scale": "1", "autoscaling.knative.dev/max-scale": "1"}),
            json!({"containerConcurrency": 1}),
        )
    };
    apply_resource(&admin, one_at_a_time("One")).await?;
    wait_ready(&admin, "Service", "queued").await?;
    let client = client(&http, &["queued.default.localhost"])?;
    // The status is read from the metadata, the node's route table follows it: served once a request is
    // answered (before, under load, both requests could get 404 and none ever waited).
    let plain = url("queued.default.localhost", &http, "/");
    wait_until(READY_WITHIN, || async { Ok(client.get(&plain).send().await?.status().is_success().then_some(())) })
        .await?;
    // Both requests are held by the app until the test makes this file: the one in flight cannot finish (and
    // let the waiting one in at the old revision) before the test has seen the waiting one move.
    let release = tempfile::tempdir()?;
    let release_file = release.path().join("release");
    let send = |client: reqwest::Client| {
        let url = url("queued.default.localhost", &http, &format!("/?hold_until={}", release_file.display()));
        tokio::spawn(async move {
            let response = client.get(url).send().await?;
            let revision = response.headers().get("x-revision").and_then(|v| v.to_str().ok()).map(String::from);
            Ok::<_, anyhow::Error>((response.status().as_u16(), revision.unwrap_or_default()))
        })
    };
    let first = send(client.clone());
    let second = send(client.clone());
    // One of them holds the instance; the other waits at the first revision's gate.
    let metrics_url = format!("http://{http}/metrics");
    let waiting_at_first_revision = |count: u32| {
        let metrics_url = metrics_url.clone();
        async move {
            let text = reqwest::get(&metrics_url).await?.text().await?;
            let line = format!(r#"sluice_serving_waiting{{revision="default/queued-00001"}} {count}"#);
            Ok(text.lines().any(|l| l == line).then_some(()))
        }
    };
    wait_until(READY_WITHIN, || waiting_at_first_revision(1)).await?;
    apply_resource(&admin, one_at_a_time("Two")).await?;
    // The one in flight is still held, so the gate's count drops only if the waiting one left for the new
    // revision.
    wait_until(READY_WITHIN, || waiting_at_first_revision(0)).await?;
    std::fs::write(&release_file, b"")?;
    let mut answers = vec![first.await??, second.await??];
    answers.sort();
    assert_eq!(
        answers,
        [(200, "queued-00001".to_string()), (200, "queued-00002".to_string())],
        "the one in flight finished where it was; the waiting one went to the new revision"
    );
    Ok(())
}

#[tokio::test]
async fn a_service_with_a_rollout_duration_moves_its_traffic_to_a_new_revision_in_steps() -> Result<()> {
    let (_dir, node) = start_single_node(1, &[]).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let rolled = |target: &str| {
        let mut service = service("roll", json!([{"name": "TARGET", "value": target}]), json!({}), json!({}));
        service["metadata"]["annotations"] = json!({"serving.knative.dev/rollout-duration": "20s"});
        service
    };
    apply_resource(&admin, rolled("One")).await?;
    wait_ready(&admin, "Service", "roll").await?;
    apply_resource(&admin, rolled("Two")).await?;
    wait_for(&admin, "Service", "roll", "/status/latestReadyRevisionName", json!("roll-00002")).await?;

    // Right after the new revision is ready, the Route splits between the two (1 % at first, then steps of 6 %
    // a second), both parts the Configuration's latest.
    let route = get(&admin, "Route", "roll").await?;
    let traffic = route.pointer("/status/traffic").and_then(Value::as_array).cloned().unwrap_or_default();
    let share = |traffic: &[Value], revision: &str| {
        traffic.iter().find(|t| t["revisionName"] == revision).and_then(|t| t["percent"].as_u64()).unwrap_or(0)
    };
    assert!(share(&traffic, "roll-00002") < 100, "still rolling out: {traffic:?}");
    assert_eq!(share(&traffic, "roll-00001") + share(&traffic, "roll-00002"), 100, "{traffic:?}");
    assert!(traffic.iter().all(|t| t["latestRevision"] == true), "{traffic:?}");

    // Requests meanwhile reach both: the old one has most of them during the first seconds.
    let client = client(&http, &["roll.default.localhost"])?;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    while seen.len() < 2 && seen.values().sum::<u32>() < 5_000 {
        let response = client.get(url("roll.default.localhost", &http, "/")).send().await?;
        assert_eq!(response.status(), 200);
        *seen.entry(response.headers()["x-revision"].to_str()?.to_string()).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both revisions answered during the rollout: {seen:?}");

    // By its end (20 s after the new revision became ready) all of it goes to the new one.
    wait_until(Duration::from_secs(40), || async {
        let route = get(&admin, "Route", "roll").await?;
        let traffic = route.pointer("/status/traffic").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok((traffic.len() == 1 && share(&traffic, "roll-00002") == 100).then_some(()))
    })
    .await
    .context("the rollout never finished")?;
    wait_ready(&admin, "Service", "roll").await?;
    for _ in 0..50 {
        let response = client.get(url("roll.default.localhost", &http, "/")).send().await?;
        assert_eq!(response.headers()["x-revision"], "roll-00002");
    }
    Ok(())
}

#[tokio::test]
async fn an_instance_that_fails_its_liveness_probe_is_replaced() -> Result<()> {
    let (dir, node) = start_single_node(1, &[]).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let alive = dir.path().join("alive");
    std::fs::write(&alive, b"")?;
    let mut service = service("alive", json!([]), json!({"autoscaling.knative.dev/min-scale": "1"}), json!({}));
    service["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] = json!({
        "exec": {"command": ["test", "-f", alive.display().to_string()]}, "periodSeconds": 1, "failureThreshold": 1});
    apply_resource(&admin, service).await?;
    wait_ready(&admin, "Service", "alive").await?;

    // The probe fails: the instance leaves rotation, is stopped, saying why, and replaced.
    std::fs::remove_file(&alive)?;
    let counted = |name: &'static str, label: &'static str| {
        let http = http.clone();
        async move {
            let metrics = reqwest::get(format!("http://{http}/metrics")).await?.text().await?;
            let total = metrics
                .lines()
                .filter(|l| l.starts_with(name) && l.contains(label))
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, n)| n.parse::<f64>().ok()))
                .sum::<f64>();
            anyhow::Ok(total)
        }
    };
    wait_until(READY_WITHIN, || async {
        let stopped = counted("sluice_serving_probe_stops_total{", "LivenessProbeFailed").await?;
        let unready = counted("sluice_serving_instance_unready_total{", "alive-00001").await?;
        Ok((stopped >= 1.0 && unready >= 1.0).then_some(()))
    })
    .await
    .context("the instance was never taken out of rotation and stopped by its liveness probe")?;

    // Healthy again: a new instance serves; a request meanwhile waits for it (regression: it went to the
    // instance being stopped and got a 502).
    std::fs::write(&alive, b"")?;
    let client = client(&http, &["alive.default.localhost"])?;
    let response = client.get(url("alive.default.localhost", &http, "/")).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await?, "Hello World!\n");
    wait_ready(&admin, "Service", "alive").await?;
    Ok(())
}

/// Regression: a second Ctrl-C or SIGTERM during a node's graceful stop was ignored, so an instance that does not
/// stop on SIGTERM held the node for its whole termination grace. The first signal begins the graceful stop; a
/// second one stops the node at once, and the node kills its instances as it goes.
#[tokio::test]
async fn a_second_signal_stops_the_node_at_once_with_its_instances() -> Result<()> {
    const IGNORES_SIGTERM: &str = "import os, signal, socket, time\n\
                                   signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
                                   s = socket.socket()\ns.bind(('127.0.0.1', int(os.environ['PORT'])))\n\
                                   s.listen()\ntime.sleep(3600)";
    // The graceful stop would wait ten minutes for the instance.
    let (_dir, mut node) = start_single_node(1, &["--termination-grace-ms", "600000"]).await?;
    let admin = node.admin.clone();
    let stubborn = json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "stubborn", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{
            "image": "python", "command": ["python3", "-c", IGNORES_SIGTERM],
        }]}}},
    });
    apply_resource(&admin, stubborn).await?;
    wait_ready(&admin, "Service", "stubborn").await?;
    let instances_dir = node.data.join("serving").join("instances");
    let pids: Vec<u32> = std::fs::read_dir(&instances_dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|name| name.parse().ok()))
        .collect();
    assert!(!pids.is_empty(), "the instance runs");
    // Should the test fail, the instance (which ignores SIGTERM) does not outlive it.
    struct KillOnDrop(Vec<u32>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            for pid in &self.0 {
                let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
    }
    let mut cleanup = KillOnDrop(pids.clone());
    // A process that has exited, or a zombie nobody reaped yet: it runs no more.
    let gone = |pid: u32| {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
        stat.rfind(')').and_then(|at| stat[at + 1..].split_whitespace().next()).is_some_and(|state| state == "Z")
    };

    node.signal("TERM")?;
    let log = node.log.clone();
    wait_until(READY_WITHIN, || async {
        let text = std::fs::read_to_string(&log)?;
        Ok(text.contains("a second Ctrl-C or SIGTERM stops at once").then_some(()))
    })
    .await
    .context("the graceful stop began")?;
    assert!(node.is_running(), "the first signal begins a graceful stop: the node waits for its instance");
    assert!(pids.iter().all(|pid| !gone(*pid)), "the instance runs on through its grace");

    node.signal("TERM")?;
    wait_until(READY_WITHIN, || {
        let running = node.is_running();
        async move { Ok((!running).then_some(())) }
    })
    .await
    .with_context(|| format!("the second signal stops the node at once\n{}", node.log_tail()))?;
    assert_eq!(node.exit_code(), Some(143), "it says it was stopped by SIGTERM");
    wait_until(Duration::from_secs(10), || async { Ok(pids.iter().all(|pid| gone(*pid)).then_some(())) })
        .await
        .context("its instance went with it")?;
    // Gone: their pids may name other processes by now.
    cleanup.0.clear();
    Ok(())
}

/// Regression: with `initial-scale: "0"` (allowed by `allow-zero-initial-scale`), no instance started and
/// nothing marked the revision ready, so its Route never followed it and its host was never served. As in
/// Knative, the revision is Ready with no instance, and its first request starts one.
#[tokio::test]
async fn a_revision_of_initial_scale_zero_is_ready_without_instances_and_starts_on_its_first_request() -> Result<()> {
    let mut args = QUICK_ZERO.to_vec();
    args.extend(["--autoscaler", "allow-zero-initial-scale=true"]);
    let (_dir, node) = start_single_node(1, &args).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let zero = json!({"autoscaling.knative.dev/initial-scale": "0"});
    apply_resource(&admin, service("lazy", json!([]), zero, json!({}))).await?;
    wait_ready(&admin, "Service", "lazy").await?;
    let revision = get(&admin, "Revision", "lazy-00001").await?;
    assert_eq!(revision["status"]["actualReplicas"], json!(0), "ready with no instance: {revision}");
    let client = client(&http, &["lazy.default.localhost"])?;
    let response = client.get(url("lazy.default.localhost", &http, "/")).send().await?;
    assert_eq!(response.status().as_u16(), 200, "the first request starts an instance and is answered");
    Ok(())
}

/// Regression: a revision that could not start because the node ran `--max-local-instances` already held its
/// requests to their timeout, then answered only that no instance had room (and a debug line said why). The 503
/// now names the limit, and the node warns once per wait.
#[tokio::test]
async fn a_request_to_a_revision_the_node_has_no_room_for_is_told_why() -> Result<()> {
    let mut args = QUICK_ZERO.to_vec();
    args.extend(["--autoscaler", "allow-zero-initial-scale=true", "--max-local-instances", "1"]);
    let (_dir, node) = start_single_node(1, &args).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let zero = json!({"autoscaling.knative.dev/initial-scale": "0"});
    apply_resource(&admin, service("lazy", json!([]), zero, json!({"timeoutSeconds": 2}))).await?;
    wait_ready(&admin, "Service", "lazy").await?;
    let resident = json!({"autoscaling.knative.dev/min-scale": "1"});
    apply_resource(&admin, service("resident", json!([]), resident, json!({}))).await?;
    wait_ready(&admin, "Service", "resident").await?;
    let client = client(&http, &["lazy.default.localhost"])?;
    let response = client.get(url("lazy.default.localhost", &http, "/")).send().await?;
    assert_eq!(response.status().as_u16(), 503, "the node's one instance is the other revision's");
    let body: Value = response.json().await?;
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("it was not sent") && error.contains("--max-local-instances"), "{body}");
    Ok(())
}

/// Regression: a `containerPort` something else listens on (here the node's own HTTP port, as `containerPort:
/// 8080` in Knative's samples is on a node of the default settings) failed every start, saying a program Sluice
/// did not start held it. The instance now gets a port of its own in `PORT`, as in a rollout.
#[tokio::test]
async fn a_container_port_the_node_listens_on_gives_the_instance_a_port_of_its_own() -> Result<()> {
    let (_dir, node) = start_single_node(1, QUICK_ZERO).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let node_port: u16 = http.rsplit_once(':').map(|(_, p)| p).unwrap_or_default().parse()?;
    let mut object = service("clash", json!([]), json!({}), json!({}));
    object["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": node_port}]);
    apply_resource(&admin, object).await?;
    wait_ready(&admin, "Service", "clash").await?;
    let client = client(&http, &["clash.default.localhost"])?;
    let response = client.get(url("clash.default.localhost", &http, "/")).send().await?;
    assert_eq!(response.status().as_u16(), 200, "served by the instance on its own port");
    Ok(())
}

/// `networking.knative.dev/visibility: cluster-local` (session 66; before, it was ignored and the Service stayed
/// public): the Service is served only under the cluster's own name, its URL is that name, and a Trigger to it
/// gets its events there (the dispatcher sends that name to its node's port). A public Service answers under
/// both; a name under `svc.cluster.local` that no Route is served under (the node's own) stays the ingress's.
#[tokio::test]
async fn a_cluster_local_service_is_served_only_under_the_clusters_name_and_its_trigger_delivers_there() -> Result<()> {
    let (dir, node) = start_single_node(2, &[]).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let record = dir.path().join("received.txt");
    let env = json!([{"name": "HELLO_RECORD", "value": record.display().to_string()}]);
    let mut inside = service("inside", env, json!({}), json!({}));
    inside["metadata"]["labels"] = json!({"networking.knative.dev/visibility": "cluster-local"});
    apply_resource(&admin, inside).await?;
    apply_resource(&admin, service("outside", json!([]), json!({}), json!({}))).await?;
    let inside = wait_ready(&admin, "Service", "inside").await?;
    let outside = wait_ready(&admin, "Service", "outside").await?;
    let port = http.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    assert_eq!(inside["status"]["url"], "http://inside.default.svc.cluster.local");
    assert_eq!(inside["status"]["address"]["url"], "http://inside.default.svc.cluster.local");
    assert_eq!(outside["status"]["url"], json!(format!("http://outside.default.localhost:{port}")));
    assert_eq!(get(&admin, "Route", "inside").await?["status"]["url"], "http://inside.default.svc.cluster.local");

    let hosts = [
        "inside.default.localhost",
        "inside.default.svc.cluster.local",
        "outside.default.localhost",
        "outside.default.svc.cluster.local",
        "sluice-ingress.sluice-system.svc.cluster.local",
    ];
    let client = client(&http, &hosts)?;
    let status_of = |host: &str| {
        let request = client.get(url(host, &http, "/"));
        async move { Ok::<_, anyhow::Error>(request.send().await?.status().as_u16()) }
    };
    assert_eq!(status_of("inside.default.localhost").await?, 404, "not under the public domain");
    assert_eq!(status_of("inside.default.svc.cluster.local").await?, 200);
    assert_eq!(status_of("outside.default.localhost").await?, 200);
    assert_eq!(status_of("outside.default.svc.cluster.local").await?, 200, "a public Service, inside too");

    apply_resource(&admin, sluice_tests::broker_object("default", "default", json!({}))).await?;
    sluice_tests::wait_for_broker(&http, "/default/default").await?;
    let published = client
        .post(url("sluice-ingress.sluice-system.svc.cluster.local", &http, "/default/default"))
        .header("content-type", "application/cloudevents+json")
        .body(
            json!({"specversion": "1.0", "id": "by-cluster-name", "source": "/t90", "type": "t90.nobody"}).to_string(),
        )
        .send()
        .await?;
    assert_eq!(published.status(), 202, "the node's own cluster name is its ingress's, not serving's");

    let mut trigger = sluice_tests::trigger_object("default", "to-inside", "default", "", json!({}), json!({}));
    trigger["spec"]["filter"] = json!({"attributes": {"type": "t90.inside"}});
    trigger["spec"]["subscriber"] =
        json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "inside"}});
    apply_resource(&admin, trigger).await?;
    wait_for(&admin, "Trigger", "to-inside", "/status/subscriberUri", json!("http://inside.default.svc.cluster.local"))
        .await?;
    publish(&http, "in", 50, "t90.inside").await?;
    let lines = wait_until(Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        let lines: std::collections::BTreeSet<String> = text.lines().map(str::to_string).collect();
        Ok((lines.len() >= 50).then_some(lines))
    })
    .await
    .context("the Trigger's 50 events at the cluster-local Service")?;
    assert!(lines.iter().all(|id| id.starts_with("in")), "{lines:?}");
    Ok(())
}

/// Regression (session 64's review): a client whose own upload broke (it half-closed its connection after 10
/// of the 1,000 bytes its `Content-Length` promised) got a 502, counted against the revision as if the app had
/// failed; it is the client's failure, a 400.
#[tokio::test]
async fn a_client_whose_upload_breaks_gets_a_400_not_a_bad_gateway() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, node) = start_single_node(1, &[]).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    apply_resource(&admin, service("upload", json!([]), json!({}), json!({}))).await?;
    wait_ready(&admin, "Service", "upload").await?;
    let whole = client(&http, &["upload.default.localhost"])?
        .post(url("upload.default.localhost", &http, "/"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "whole")
        .header("ce-source", "/t90")
        .header("ce-type", "t90.upload")
        .body(vec![b'x'; 1000])
        .send()
        .await?;
    assert_eq!(whole.status(), 202, "the same request sent whole");

    let mut stream = tokio::net::TcpStream::connect(&http).await?;
    let head = "POST / HTTP/1.1\r\nHost: upload.default.localhost\r\nContent-Length: 1000\r\nce-specversion: 1.0\r\n\
                ce-id: broken\r\nce-source: /t90\r\nce-type: t90.upload\r\n\r\n";
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&[b'x'; 10]).await?;
    stream.shutdown().await?;
    let mut answer = Vec::new();
    tokio::time::timeout(READY_WITHIN, stream.read_to_end(&mut answer)).await.context("an answer")??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request body broke"), "{answer}");
    assert!(answer.contains("end of file before message length reached"), "the cause, not only hyper's: {answer}");
    Ok(())
}
