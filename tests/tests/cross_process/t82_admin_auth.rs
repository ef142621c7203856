//! The admin API asks who you are (docs/security.md): every RPC refused without credentials, every RPC that
//! changes state refused to the read role, and the CLI's exit code for each.

use std::time::Duration;

use anyhow::{Context, Result};
use sluice_proto::admin::WatchResourcesRequest;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_tests::{NodeProc, run_sluice};
use tonic::Code;
use tonic::metadata::MetadataValue;

const READ_TOKEN: &str = "read-token-t82-0123456789";
const OPERATE_TOKEN: &str = "operate-token-t82-0123456789";
const NEW_TOKEN: &str = "new-token-t82-0123456789";
const TIMEOUT: Duration = Duration::from_secs(60);

/// Every admin RPC and whether it changes state.
const METHODS: &[(&str, bool)] = &[
    ("Cluster/Init", true),
    ("Cluster/Status", false),
    ("Cluster/AddNode", true),
    ("Cluster/RemoveNode", true),
    ("Cluster/TransferLeader", true),
    ("Log/Append", true),
    ("Log/Read", false),
    ("Log/OffsetForTime", false),
    ("Resources/Apply", true),
    ("Resources/Get", false),
    ("Resources/List", false),
    ("Resources/Delete", true),
    ("Resources/Watch", false),
    ("Consumers/Status", false),
    ("Consumers/Pause", true),
    ("Consumers/Resume", true),
    ("Consumers/Replay", true),
    ("DeadLetters/List", false),
    ("DeadLetters/Redrive", true),
    ("DeadLetters/Purge", true),
    ("Events/Read", false),
    ("Events/Tail", false),
    ("Events/Find", false),
    ("Serving/Logs", false),
    ("Serving/Decisions", false),
];

/// Calls `method` with an empty message; the code it ends with (OK included), within a second.
async fn call(admin: &str, method: &str, token: Option<&str>) -> Result<Code> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))?.connect().await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}"))?);
    }
    request.set_timeout(Duration::from_secs(1));
    let path = format!("/sluice.admin.v1.{method}").parse()?;
    let codec: tonic_prost::ProstCodec<(), ()> = tonic_prost::ProstCodec::default();
    let outcome = tokio::time::timeout(Duration::from_secs(2), grpc.unary(request, path, codec)).await;
    Ok(match outcome {
        Ok(Ok(_)) => Code::Ok,
        Ok(Err(status)) => status.code(),
        Err(_) => Code::DeadlineExceeded, // A stream that stays open: it was let through.
    })
}

#[tokio::test]
async fn every_rpc_asks_who_you_are() -> Result<()> {
    let root = tempfile::tempdir()?;
    let tokens = root.path().join("tokens.csv");
    std::fs::write(&tokens, format!("# token,name,role\n{READ_TOKEN},alice,read\n{OPERATE_TOKEN},bob,operate\n"))?;
    let mut node = NodeProc::new(1, root.path(), &["--admin-tokens", tokens.to_str().unwrap_or_default()]);
    node.start()?;
    let admin = node.admin.clone();
    // The operator initialises the cluster (nothing else can).
    sluice_tests::init_with_token(&node, OPERATE_TOKEN, 1).await?;

    for (method, changes_state) in METHODS {
        assert_eq!(call(&admin, method, None).await?, Code::Unauthenticated, "{method} without credentials");
        let wrong = call(&admin, method, Some("not-a-token-0000000000")).await?;
        assert_eq!(wrong, Code::Unauthenticated, "{method} with an unknown token");
        let as_reader = call(&admin, method, Some(READ_TOKEN)).await?;
        if *changes_state {
            assert_eq!(as_reader, Code::PermissionDenied, "{method} with the read role");
        } else {
            assert!(!matches!(as_reader, Code::PermissionDenied | Code::Unauthenticated), "{method}: {as_reader:?}");
        }
        let as_operator = call(&admin, method, Some(OPERATE_TOKEN)).await?;
        assert!(!matches!(as_operator, Code::PermissionDenied | Code::Unauthenticated), "{method}: {as_operator:?}");
    }

    // The CLI: credentials from the flag or the environment, and an exit code for each refusal.
    let broker = root.path().join("broker.yaml");
    std::fs::write(&broker, "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n")?;
    let broker = broker.to_str().unwrap_or_default();
    let cases: [(&[&str], i32); 5] = [
        (&["cluster", "status", "--admin", &admin], 6),
        (&["apply", "-f", broker, "--admin", &admin, "--token", READ_TOKEN], 4),
        (&["apply", "-f", broker, "--admin", &admin, "--token", OPERATE_TOKEN], 0),
        (&["get", "brokers", "--admin", &admin, "--token", READ_TOKEN], 0),
        (&["delete", "broker", "b", "--admin", &admin, "--token", READ_TOKEN], 4),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run_sluice(args, TIMEOUT)?;
        assert_eq!(code, expected, "sluice {args:?}: {stderr}");
    }
    let status = std::process::Command::new(sluice_tests::sluice_bin())
        .args(["cluster", "status", "--admin", &admin])
        .env("SLUICE_TOKEN", READ_TOKEN)
        .output()?;
    assert_eq!(status.status.code(), Some(0), "SLUICE_TOKEN: {}", String::from_utf8_lossy(&status.stderr));

    // A watch opened with the read token, open when the token is revoked below.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))?.connect().await?;
    let token: MetadataValue<_> = format!("Bearer {READ_TOKEN}").parse()?;
    let mut resources = ResourcesClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", token.clone());
        Ok(r)
    });
    let mut watch = resources.watch(WatchResourcesRequest { kind: "Broker".into() }).await?.into_inner();

    // The tokens file is read again while the node runs: a revoked token is refused, a new one let in, and a
    // file that does not parse keeps the tokens it replaced.
    let staged = root.path().join("tokens.staged");
    std::fs::write(&staged, format!("{NEW_TOKEN},carol,operate\n"))?;
    std::fs::rename(&staged, &tokens)?;
    sluice_tests::wait_until(TIMEOUT, || async {
        Ok((call(&admin, "Cluster/Status", Some(NEW_TOKEN)).await? != Code::Unauthenticated).then_some(()))
    })
    .await
    .context("the new token let in")?;
    assert_eq!(call(&admin, "Cluster/Status", Some(OPERATE_TOKEN)).await?, Code::Unauthenticated);
    // The watch opened with a revoked token ends (it would otherwise wait for changes to Brokers for ever).
    let ended = tokio::time::timeout(TIMEOUT, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Code::Ok,
                Err(status) => return status.code(),
            }
        }
    })
    .await
    .context("the revoked token's watch ended")?;
    assert_eq!(ended, Code::Unauthenticated);
    std::fs::write(&staged, "not,a,valid,line\n")?;
    std::fs::rename(&staged, &tokens)?;
    // Once the node has read the bad file (its failure counted), the tokens it had still work.
    let metrics_url = format!("http://{}/metrics", node.http);
    sluice_tests::wait_until(TIMEOUT, || async {
        let metrics = reqwest::get(&metrics_url).await?.text().await?;
        Ok(metrics.lines().any(|l| l.starts_with("sluice_admin_tokens_reload_failures_total ")).then_some(()))
    })
    .await
    .context("the bad file read")?;
    assert_eq!(call(&admin, "Cluster/Status", Some(NEW_TOKEN)).await?, Code::Ok);
    Ok(())
}
