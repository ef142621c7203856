//! Bad input at scale against a TLS ingress (docs/security.md): more than 1,000 distinct malformed or hostile
//! requests (attributes, bodies, batches, media types, headers, paths, methods, framing, slow senders), every
//! one answered with a 4xx or closed by a limit, never a 5xx, nothing stored, and the node still serving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use reqwest::StatusCode;
use sluice_security::DevCertificates;
use sluice_tests::hostile::{hostile_requests, raw_requests};
use sluice_tests::{NodeProc, broker_object, https_client, tls_channel, tls_node_args, wait_until, write_tls_files};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_EVENT_BYTES: usize = 64 << 10;
const MAX_BATCH_EVENTS: usize = 50;

/// What a raw exchange ended with: a status code, or the connection closed without one. The server must end
/// the connection within `HELD_OPEN_LIMIT`: one held open is a failure.
async fn raw_exchange(addr: &str, config: Arc<rustls::ClientConfig>, bytes: &[u8]) -> Result<Option<u16>> {
    let mut stream = sluice_security::dial_with_config(addr, "127.0.0.1", config, Duration::from_secs(5)).await?;
    // The server may close before reading everything: that is one of the allowed endings.
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let mut response = Vec::new();
    read_until_closed(&mut stream, &mut response).await?;
    Ok(status_of(&response))
}

/// Longest a refused connection may stay open: past the header (1 s) and body (2 s) read limits.
const HELD_OPEN_LIMIT: Duration = Duration::from_secs(8);

/// Reads until the server ends the connection (EOF or reset), failing if it is still open after
/// [`HELD_OPEN_LIMIT`].
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin), into: &mut Vec<u8>) -> Result<()> {
    match tokio::time::timeout(HELD_OPEN_LIMIT, stream.read_to_end(into)).await {
        Ok(_) => Ok(()),
        Err(_) => anyhow::bail!("the connection was still open after {HELD_OPEN_LIMIT:?}"),
    }
}

/// The status of an HTTP/1.1 response, if the bytes start with one.
fn status_of(response: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).and_then(|code| code.parse().ok())
}

#[tokio::test]
async fn a_thousand_hostile_requests_get_4xx_and_the_node_keeps_serving() -> Result<()> {
    let root = tempfile::tempdir()?;
    let ca = DevCertificates::new_ca("t83 CA")?;
    let files = write_tls_files(&root.path().join("tls"), &ca, "node")?;
    let mut args = tls_node_args("strict", &files);
    args.extend(
        [
            "--max-event-bytes",
            &MAX_EVENT_BYTES.to_string(),
            "--max-batch-events",
            &MAX_BATCH_EVENTS.to_string(),
            "--max-batch-bytes",
            &(1usize << 20).to_string(),
            "--header-read-timeout-ms",
            "1000",
            "--body-read-timeout-ms",
            "2000",
        ]
        .map(String::from),
    );
    let mut node = NodeProc::new(1, root.path(), &args.iter().map(String::as_str).collect::<Vec<_>>());
    node.start()?;
    let channel = wait_until(Duration::from_secs(30), || async { Ok(tls_channel(&node.admin, &files).await.ok()) })
        .await
        .with_context(|| node.log_tail())?;
    let mut cluster = sluice_proto::admin::cluster_client::ClusterClient::new(channel.clone());
    let members = vec![sluice_proto::admin::Member { node_id: 1, peer_addr: node.peer.clone() }];
    cluster.init(sluice_proto::admin::InitRequest { members, partitions: 1 }).await?;
    let mut resources = sluice_proto::admin::resources_client::ResourcesClient::new(channel);
    let object = broker_object("default", "default", serde_json::json!({}));
    resources
        .apply(sluice_proto::admin::ApplyResourceRequest { object_json: object.to_string(), dry_run: false })
        .await?;

    let https = https_client(&ca.ca_cert_pem)?;
    let base = format!("https://{}", node.http);
    let valid = |id: &str| {
        https
            .post(format!("{base}/default/default"))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/t83")
            .header("ce-type", "t83.valid")
            .body("ok")
    };
    wait_until(Duration::from_secs(30), || async {
        Ok((valid("warm-up").send().await?.status() == StatusCode::ACCEPTED).then_some(()))
    })
    .await?;

    let requests = hostile_requests("/default/default", MAX_EVENT_BYTES, MAX_BATCH_EVENTS);
    let raw = raw_requests("/default/default", &node.http);
    let total = requests.len() + raw.len() + 4; // + the slow senders below
    assert!(total >= 1_000, "only {total} hostile requests");

    let outcomes: Vec<(String, Result<u16, String>)> = futures::stream::iter(requests)
        .map(|hostile| {
            let https = https.clone();
            let url = format!("{base}{}", hostile.path);
            async move {
                let method = reqwest::Method::from_bytes(hostile.method.as_bytes()).expect("method");
                let mut request = https.request(method, url).body(hostile.body);
                for (name, value) in hostile.headers {
                    request = request.header(name, value);
                }
                let outcome = request.send().await.map(|r| r.status().as_u16()).map_err(|e| format!("{e:#}"));
                (hostile.name, outcome)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let config = Arc::new(sluice_security::https_client_config(&[&ca.ca_cert_pem], "t83")?);
    let mut raw_outcomes = Vec::new();
    for (name, bytes) in &raw {
        let outcome = raw_exchange(&node.http, config.clone(), bytes).await.map_err(|e| format!("{e:#}"));
        raw_outcomes.push((name.clone(), outcome));
    }

    // Slow senders: headers or a body trickled past the limits are cut off.
    let slow_head = format!("POST /default/default HTTP/1.1\r\nhost: {}\r\nce-specversion: 1.0\r\n", node.http);
    let mut slow = Vec::new();
    for (name, first, wait, rest) in [
        ("headers stop coming", slow_head.clone(), 3_000, "ce-id: s\r\n\r\n".to_string()),
        ("headers trickle", slow_head.clone(), 1_500, "ce-id: s\r\n".to_string()),
        (
            "body stops coming",
            format!("{slow_head}ce-id: s\r\nce-source: /s\r\nce-type: s\r\ncontent-length: 10\r\n\r\nab"),
            4_000,
            "cdefghij".to_string(),
        ),
        ("nothing at all", String::new(), 3_000, String::new()),
    ] {
        let config = config.clone();
        let addr = node.http.clone();
        slow.push(tokio::spawn(async move {
            let outcome = async {
                let mut stream =
                    sluice_security::dial_with_config(&addr, "127.0.0.1", config, Duration::from_secs(5)).await?;
                stream.write_all(first.as_bytes()).await?;
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let _ = stream.write_all(rest.as_bytes()).await;
                let mut response = Vec::new();
                read_until_closed(&mut stream, &mut response).await?;
                anyhow::Ok(status_of(&response))
            };
            (name.to_string(), outcome.await.map_err(|e| format!("{e:#}")))
        }));
    }

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (name, outcome) in outcomes {
        match outcome {
            Ok(status) if (400..500).contains(&status) => *by_status.entry(status.to_string()).or_default() += 1,
            // A limit may close the connection mid-request (a 413 answered before the body was sent).
            Err(_) if name.contains("body +") || name.contains("over the event limit") => {
                *by_status.entry("closed".into()).or_default() += 1;
            }
            other => wrong.push(format!("{name}: {other:?}")),
        }
    }
    for (name, outcome) in raw_outcomes {
        match outcome {
            Ok(Some(status)) if (400..500).contains(&status) => *by_status.entry(status.to_string()).or_default() += 1,
            Ok(None) => *by_status.entry("closed".into()).or_default() += 1,
            other => wrong.push(format!("raw {name}: {other:?}")),
        }
    }
    for task in slow {
        let (name, outcome) = task.await?;
        match outcome {
            Ok(None) => *by_status.entry("closed".into()).or_default() += 1,
            Ok(Some(status)) if (400..500).contains(&status) => *by_status.entry(status.to_string()).or_default() += 1,
            other => wrong.push(format!("slow {name}: {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{} of {total} not refused with a 4xx or a close:\n{}", wrong.len(), wrong.join("\n"));
    println!("{total} hostile requests: {by_status:?}");

    // Still serving, and nothing hostile was stored.
    assert_eq!(valid("after").send().await?.status(), StatusCode::ACCEPTED);
    let plain = reqwest::Client::new();
    assert_eq!(plain.get(format!("http://{}/readyz", node.http)).send().await?.status(), StatusCode::OK);
    let stored = read_events_tls(&node.admin, &files).await?;
    assert_eq!(stored, ["warm-up", "after"], "only the valid events were stored");
    Ok(())
}

async fn read_events_tls(admin: &str, files: &sluice_security::TlsFiles) -> Result<Vec<String>> {
    let mut log = sluice_proto::admin::log_client::LogClient::new(tls_channel(admin, files).await?);
    let request = sluice_proto::admin::ReadRequest {
        stream: "broker/default/default".into(),
        partition: 0,
        from_offset: 0,
        max_records: 10_000,
        ..Default::default()
    };
    let records = log.read(request).await?.into_inner().records;
    let mut ids = Vec::new();
    for record in records {
        let event = sluice_cloudevent::CloudEvent::decode(&record.payload)?;
        ids.push(event.get_str("id").unwrap_or_default().to_string());
    }
    Ok(ids)
}

/// Regression (a review of unbounded growth): `Log/Append` was decoded up to 32 MiB before its payloads were
/// counted, so a request of four million empty payloads (8 MB on the wire, about 100 MB decoded; 16 million in
/// 32 MiB) was built whole first. A request larger than one entry holds is now refused as it is read; one that fits is
/// appended.
#[tokio::test]
async fn a_log_append_larger_than_an_entry_is_refused_before_it_is_decoded() -> Result<()> {
    let (_dir, node) = sluice_tests::start_single_node(1, &[]).await?;
    let mut log = sluice_tests::log_client(&node.admin).await?;
    let many = sluice_proto::admin::AppendRequest {
        stream: "hostile".into(),
        partition: 0,
        payloads: vec![Default::default(); 4_000_000],
    };
    let refused = log.append(many).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("decoded message length too large"), "refused as it is read: {refused:?}");
    let fits = sluice_proto::admin::AppendRequest {
        stream: "hostile".into(),
        partition: 0,
        payloads: vec![vec![b'x'; 200].into(); 4096],
    };
    let appended = log.append(fits).await?.into_inner();
    assert_eq!(appended.offsets.len(), 4096);
    Ok(())
}
