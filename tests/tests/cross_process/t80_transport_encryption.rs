//! Transport encryption (docs/security.md): https ingress with a 426 for plaintext in strict mode, a rotated
//! certificate served without a restart, https addresses with CACerts, mutual TLS between nodes and a node
//! of another CA refused while the cluster keeps serving.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{ApplyResourceRequest, InitRequest, Member, ResourceRef, StatusRequest};
use sluice_proto::raft::GroupMessage;
use sluice_proto::raft::raft_transport_client::RaftTransportClient;
use sluice_security::{DevCertificates, TransportEncryption};
use sluice_tests::subscriber::Subscriber;
use sluice_tests::{
    NodeProc, TestCluster, apply_resource, broker_object, https_client, plaintext_channel_lazy, start_single_node,
    tls_channel, tls_channel_lazy, tls_node_args, trigger_object, wait_ready, wait_until, write_tls_files,
};

const WAIT: Duration = Duration::from_secs(30);

fn args(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

/// A call the connection failed under (reset, closed), as opposed to one a handler answered.
fn refused_by_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some_and(|source| source.is::<tonic::transport::Error>())
}

async fn post_event(client: &reqwest::Client, url: &str, id: &str) -> Result<StatusCode> {
    let response = client
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/t80")
        .header("ce-type", "t80.event")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await?;
    Ok(response.status())
}

#[tokio::test]
async fn strict_ingress_takes_https_only_and_serves_a_rotated_certificate() -> Result<()> {
    let root = tempfile::tempdir()?;
    let first_ca = DevCertificates::new_ca("t80 first CA")?;
    let node_files = write_tls_files(&root.path().join("tls"), &first_ca, "node")?;
    let admin_files = write_tls_files(&root.path().join("tls"), &first_ca, "operator")?;
    let mut node = NodeProc::new(1, root.path(), &args(&tls_node_args("strict", &node_files)));
    node.start()?;

    // The admin port takes TLS only; the probes answer plaintext.
    let channel = wait_until(WAIT, || async { Ok(tls_channel(&node.admin, &admin_files).await.ok()) })
        .await
        .with_context(|| node.log_tail())?;
    let mut cluster = ClusterClient::new(channel.clone());
    cluster
        .init(InitRequest { members: vec![Member { node_id: 1, peer_addr: node.peer.clone() }], partitions: 1 })
        .await?;
    wait_ready(&node.http).await.with_context(|| node.log_tail())?;
    let mut plaintext = ClusterClient::new(plaintext_channel_lazy(&node.admin)?);
    let status = plaintext.status(StatusRequest {}).await.expect_err("plaintext gRPC is refused in strict mode");
    assert!(refused_by_transport(&status), "{status:?}");

    let mut resources = ResourcesClient::new(channel);
    let object = broker_object("default", "default", serde_json::json!({}));
    resources.apply(ApplyResourceRequest { object_json: object.to_string(), dry_run: false }).await?;

    let https_url = format!("https://{}/default/default", node.http);
    let trusts_first = https_client(&first_ca.ca_cert_pem)?;
    let accepted = wait_until(WAIT, || async {
        Ok((post_event(&trusts_first, &https_url, "e1").await? != StatusCode::NOT_FOUND).then_some(()))
    });
    accepted.await?;
    assert_eq!(post_event(&trusts_first, &https_url, "e2").await?, StatusCode::ACCEPTED);

    let plain = reqwest::Client::new();
    let response = plain
        .post(format!("http://{}/default/default", node.http))
        .header("ce-specversion", "1.0")
        .header("ce-id", "plain-1")
        .header("ce-source", "/t80")
        .header("ce-type", "t80.event")
        .body("hello")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["field"], "scheme", "{body}");
    assert!(body["rule"].as_str().unwrap_or_default().contains("strict"), "{body}");
    assert_eq!(plain.get(format!("http://{}/readyz", node.http)).send().await?.status(), StatusCode::OK);

    // The Broker advertises https with the CA (only https: strict).
    let broker = resources
        .get(ResourceRef { kind: "Broker".into(), namespace: "default".into(), name: "default".into() })
        .await?
        .into_inner();
    let broker: serde_json::Value = serde_json::from_str(&broker.object_json)?;
    assert_eq!(broker["status"]["address"]["url"], https_url, "{broker}");
    assert_eq!(broker["status"]["address"]["CACerts"], first_ca.ca_cert_pem.trim(), "{broker}");
    assert_eq!(broker["status"]["addresses"].as_array().map(Vec::len), Some(1), "{broker}");

    // Rotation: a certificate of a new CA replaces the files; the node serves it without a restart.
    let second_ca = DevCertificates::new_ca("t80 second CA")?;
    let staged = write_tls_files(&root.path().join("staged"), &second_ca, "node")?;
    for (from, to) in [(&staged.key, &node_files.key), (&staged.cert, &node_files.cert), (&staged.ca, &node_files.ca)] {
        std::fs::copy(from, to)?;
    }
    let trusts_second = https_client(&second_ca.ca_cert_pem)?;
    wait_until(WAIT, || async {
        Ok(post_event(&trusts_second, &https_url, "e3").await.ok().filter(|s| *s == StatusCode::ACCEPTED))
    })
    .await
    .with_context(|| node.log_tail())?;
    // Status advertises the new CA (read per call, not at start).
    let second_operator = write_tls_files(&root.path().join("operator2"), &second_ca, "operator")?;
    let mut resources = ResourcesClient::new(tls_channel(&node.admin, &second_operator).await?);
    let reference = ResourceRef { kind: "Broker".into(), namespace: "default".into(), name: "default".into() };
    let broker: serde_json::Value = serde_json::from_str(&resources.get(reference).await?.into_inner().object_json)?;
    assert_eq!(broker["status"]["address"]["CACerts"], second_ca.ca_cert_pem.trim(), "{broker}");
    // New connections (a pooled one stays up) no longer verify with the old CA.
    let fresh = https_client(&first_ca.ca_cert_pem)?;
    assert!(post_event(&fresh, &https_url, "e4").await.is_err(), "the old CA no longer verifies the node");
    Ok(())
}

#[tokio::test]
async fn nodes_speak_mutual_tls_and_a_node_of_another_ca_is_refused() -> Result<()> {
    let certs = tempfile::tempdir()?;
    let cluster_ca = DevCertificates::new_ca("t80 cluster CA")?;
    let files = write_tls_files(certs.path(), &cluster_ca, "node")?;
    let cluster = TestCluster::start(3, 2, &args(&tls_node_args("permissive", &files))).await?;
    let admin = cluster.nodes[0].admin.clone();
    apply_resource(&admin, broker_object("default", "default", serde_json::json!({}))).await?;

    // Writes to every node, over https and plaintext (permissive): two thirds reach a follower and are
    // forwarded to the leader over mutual TLS.
    let https = https_client(&cluster_ca.ca_cert_pem)?;
    let plain = reqwest::Client::new();
    for node in &cluster.nodes {
        let https_url = format!("https://{}/default/default", node.http);
        wait_until(WAIT, || async {
            Ok((post_event(&https, &https_url, "probe").await? == StatusCode::ACCEPTED).then_some(()))
        })
        .await
        .with_context(|| node.log_tail())?;
        for partition_key in 0..4 {
            let id = format!("n{}-{partition_key}", node.id);
            assert_eq!(post_event(&https, &https_url, &id).await?, StatusCode::ACCEPTED);
            let plain_url = format!("http://{}/default/default", node.http);
            assert_eq!(post_event(&plain, &plain_url, &format!("{id}-plain")).await?, StatusCode::ACCEPTED);
        }
    }

    // A node with a certificate of another CA cannot reach Raft, nor can plaintext.
    let stranger_ca = DevCertificates::new_ca("t80 stranger CA")?;
    let mut stranger = write_tls_files(&certs.path().join("stranger"), &stranger_ca, "stranger")?;
    stranger.ca = files.ca.clone(); // It trusts the cluster, so only its own certificate is wrong.
    let peer = cluster.nodes[0].peer.clone();
    let message = || GroupMessage { group_id: 0, payload: b"not a vote".to_vec().into() };
    // Refused in the handshake, or (TLS 1.3 finishes the client's side before the server checks the client's
    // certificate) by the connection dropping under the first call: either way the call fails in the transport.
    let status = RaftTransportClient::new(tls_channel_lazy(&peer, &stranger)?)
        .vote(message())
        .await
        .expect_err("a stranger is refused");
    assert!(refused_by_transport(&status), "refused by the transport, not the handler: {status:?}");
    let status = RaftTransportClient::new(plaintext_channel_lazy(&peer)?)
        .vote(message())
        .await
        .expect_err("plaintext is refused");
    assert!(refused_by_transport(&status), "refused by the transport, not the handler: {status:?}");
    // A certificate of the cluster's CA that is not a node's (another workload's) cannot speak Raft either.
    let (workload_cert, workload_key) = sluice_security::issue_certificate_for(&cluster_ca, "some-app", None)?;
    let workload = sluice_security::TlsFiles {
        cert: certs.path().join("workload.pem"),
        key: certs.path().join("workload.key"),
        ca: files.ca.clone(),
    };
    std::fs::write(&workload.cert, workload_cert)?;
    std::fs::write(&workload.key, workload_key)?;
    let status = RaftTransportClient::new(tls_channel_lazy(&peer, &workload)?)
        .vote(message())
        .await
        .expect_err("a workload is refused");
    assert!(refused_by_transport(&status), "refused by the transport, not the handler: {status:?}");
    // A member's certificate gets as far as the handler, which refuses the garbled vote itself.
    let member = RaftTransportClient::new(tls_channel(&peer, &files).await?).vote(message()).await;
    let status = member.expect_err("a garbled vote is refused by the handler");
    assert!(!refused_by_transport(&status), "{status:?}");

    // The cluster kept serving.
    for node in &cluster.nodes {
        let url = format!("https://{}/default/default", node.http);
        assert_eq!(post_event(&https, &url, &format!("after-{}", node.id)).await?, StatusCode::ACCEPTED);
    }
    let log = std::fs::read_to_string(&cluster.nodes[0].log)?;
    assert!(!log.contains("panicked"), "{log}");
    Ok(())
}

#[tokio::test]
async fn deliveries_to_https_destinations_trust_their_cacerts_and_the_cluster_ca() -> Result<()> {
    let certs = tempfile::tempdir()?;
    let cluster_ca = DevCertificates::new_ca("t80 cluster CA")?;
    let node_files = write_tls_files(certs.path(), &cluster_ca, "node")?;
    let (_root, node) = start_single_node(1, &args(&tls_node_args("permissive", &node_files))).await?;
    let admin = node.admin.clone();

    // A subscriber whose certificate only its own CA signs.
    let subscriber_ca = DevCertificates::new_ca("t80 subscriber CA")?;
    let subscriber_files = write_tls_files(&certs.path().join("subscriber"), &subscriber_ca, "subscriber")?;
    let subscriber_tls =
        sluice_security::Tls::load(TransportEncryption::Strict, Some(subscriber_files))?.context("TLS is on")?;
    let subscriber = Subscriber::start_tls(Subscriber::ok(), subscriber_tls).await?;
    let dead_letters = Subscriber::start(Subscriber::ok()).await?;

    for broker in ["default", "other"] {
        apply_resource(&admin, broker_object("default", broker, serde_json::json!({}))).await?;
    }
    let trusting = serde_json::json!({"subscriber": {"uri": subscriber.url(), "CACerts": subscriber_ca.ca_cert_pem}});
    apply_resource(&admin, trigger_object("default", "trusting", "default", "", trusting, serde_json::json!({})))
        .await?;
    let untrusting = serde_json::json!({"delivery": {"retry": 0, "deadLetterSink": {"uri": dead_letters.url()}}});
    apply_resource(
        &admin,
        trigger_object("default", "untrusting", "default", &subscriber.url(), untrusting, serde_json::json!({})),
    )
    .await?;
    // A Broker as subscriber resolves to its https address, trusted through the cluster's CA.
    let to_broker = serde_json::json!({"subscriber": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "other"}}});
    apply_resource(&admin, trigger_object("default", "forward", "default", "", to_broker, serde_json::json!({})))
        .await?;

    let https = https_client(&cluster_ca.ca_cert_pem)?;
    let url = format!("https://{}/default/default", node.http);
    wait_until(WAIT, || async { Ok((post_event(&https, &url, "tls-1").await? == StatusCode::ACCEPTED).then_some(())) })
        .await?;

    let dead = dead_letters.wait_for(1, WAIT).await?;
    assert_eq!(dead[0].header("ce-knativeerrordest"), Some(subscriber.url().as_str()), "{:?}", dead[0].headers);
    let delivered = subscriber.wait_for(1, WAIT).await?;
    assert_eq!(delivered[0].header("ce-id"), Some("tls-1"));
    let forwarded = wait_until(WAIT, || async {
        let events = sluice_tests::read_events(&admin, "broker/default/other", 1).await?;
        Ok((!events.is_empty()).then_some(events))
    })
    .await?;
    assert_eq!(forwarded.len(), 1);
    assert_eq!(subscriber.deliveries().len(), 1, "only the Trigger that names the subscriber's CA reached it");

    // The cluster's CA bundle rotates to include the subscriber's CA (the node's certificate unchanged): the
    // Trigger without CACerts reaches the subscriber from then on, with no restart and no object change.
    let bundle = format!("{}\n{}", cluster_ca.ca_cert_pem.trim(), subscriber_ca.ca_cert_pem.trim());
    let staged = certs.path().join("ca.staged");
    std::fs::write(&staged, bundle)?;
    std::fs::rename(&staged, &node_files.ca)?;
    let mut sent = 0;
    let reached_by_both = wait_until(WAIT, || {
        sent += 1;
        let id = format!("after-rotation-{sent}");
        let https = &https;
        let url = &url;
        let subscriber = &subscriber;
        async move {
            assert_eq!(post_event(https, url, &id).await?, StatusCode::ACCEPTED);
            // Both Triggers deliver it once the untrusting one trusts the new bundle.
            let both = subscriber
                .wait_until(Duration::from_secs(2), |d| {
                    d.iter().filter(|d| d.header("ce-id") == Some(&id)).count() >= 2
                })
                .await
                .is_ok();
            Ok(both.then_some(id))
        }
    })
    .await?;
    assert!(reached_by_both.starts_with("after-rotation-"));
    Ok(())
}

/// `sluice dev --nodes 3` in strict mode: the supervisor initialises its children over TLS as a node, https
/// ingress takes events on every node, and the admin API asks an operator for a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_cluster_runs_in_strict_mode() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let data = tempfile::tempdir()?;
    // One run of nine free ports: HTTP, admin and peer ports for nodes 1-3 (free_addr hands out consecutive
    // ports, so three runs asked for one after the other would overlap).
    let base = sluice_tests::free_run(9);
    let base_port: u16 = base.rsplit(':').next().and_then(|p| p.parse().ok()).context("port")?;
    let [http, admin, peer] = [0u16, 3, 6].map(|offset| format!("127.0.0.1:{}", base_port + offset));
    let mut child = tokio::process::Command::new(sluice_tests::sluice_bin())
        .args(["dev", "--nodes", "3", "--tls", "--transport-encryption", "strict"])
        .args(["--http", &http, "--admin", &admin, "--peer-listen", &peer, "--data"])
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(data.path().join("dev.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let started = sluice_tests::wait_for_line(&mut lines, "sluice dev: 3 nodes", Duration::from_secs(120)).await?;
    let log = || std::fs::read_to_string(data.path().join("dev.log")).unwrap_or_default();
    assert!(started, "the dev cluster printed that it runs: {}", log());
    let tls = data.path().join("tls");
    let ca = std::fs::read_to_string(tls.join("ca.pem"))?;
    let https = https_client(&ca)?;
    let port: u16 = http.rsplit(':').next().and_then(|p| p.parse().ok()).context("port")?;
    for node in 0..3u16 {
        let url = format!("https://127.0.0.1:{}/default/default", port + node);
        let id = format!("dev-{node}");
        let status =
            wait_until(WAIT, || async { Ok(post_event(&https, &url, &id).await.ok().filter(|s| s.is_success())) })
                .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "node {node}");
    }
    let as_operator = [
        "--ca-cert".to_string(),
        tls.join("ca.pem").display().to_string(),
        "--client-cert".into(),
        tls.join("node.pem").display().to_string(),
        "--client-key".into(),
        tls.join("node.key").display().to_string(),
    ];
    let status = |extra: &[String]| {
        std::process::Command::new(sluice_tests::sluice_bin())
            .args(["cluster", "status", "--admin", &admin])
            .args(extra)
            .output()
    };
    let refused = status(&as_operator[..2])?;
    assert_eq!(refused.status.code(), Some(6), "a CA but no credentials: {}", String::from_utf8_lossy(&refused.stderr));
    let allowed = status(&as_operator)?;
    assert_eq!(allowed.status.code(), Some(0), "{}", String::from_utf8_lossy(&allowed.stderr));
    assert!(String::from_utf8_lossy(&allowed.stdout).contains("initialised: true"));
    child.kill().await?;
    Ok(())
}
