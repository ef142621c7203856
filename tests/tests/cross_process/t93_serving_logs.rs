//! `sluice logs` and the autoscaler's decisions on a cluster: each node runs the instances its own requests
//! need, and the node asked gathers every node's part (from the others' peer listeners), names a node it
//! cannot ask, and gives its own alone with `--this-node-only`.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use sluice_tests::{TestCluster, apply_resource, wait_until};

use super::t90_serving::{READY_WITHIN, client, service, url, wait_ready};

/// `sluice logs ksvc NAME --prefix ARGS… --admin ADMIN`: (exit success, stdout, stderr).
async fn logs(admin: &str, name: &str, args: &[&str]) -> Result<(bool, String, String)> {
    let run = tokio::process::Command::new(sluice_tests::sluice_bin())
        .args(["logs", "ksvc", name, "--prefix", "--admin", admin])
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run).await??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Whether `output` holds the first line of an instance that ran on `node`.
fn started_on(output: &str, node: u64) -> bool {
    output.lines().any(|line| line.starts_with(&format!("[echo-00001 node {node}] hello: listening on")))
}

#[tokio::test]
async fn logs_and_decisions_are_gathered_from_every_node_and_a_node_that_cannot_be_asked_is_named() -> Result<()> {
    let mut cluster = TestCluster::start(3, 1, &[]).await?;
    let (a, b, c) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let (a_id, b_id, c_id) = (a.id, b.id, c.id);
    let admin = a.admin.clone();
    apply_resource(&admin, service("echo", json!([]), json!({}), json!({}))).await?;
    wait_ready(&admin, "Service", "echo").await?;
    // A request through a node starts an instance there: one on A, one on B.
    for node in [a, b] {
        let client = client(&node.http, &["echo.default.localhost"])?;
        let response = client.get(url("echo.default.localhost", &node.http, "/")).send().await?;
        anyhow::ensure!(response.status() == 200, "node {}: {}", node.id, response.status());
    }

    let gathered = wait_until(READY_WITHIN, || async {
        let (ok, out, err) = logs(&admin, "echo", &[]).await?;
        anyhow::ensure!(ok, "sluice logs failed: {err}");
        Ok((started_on(&out, a_id) && started_on(&out, b_id)).then_some(out))
    })
    .await
    .context("the lines of the instances on A and B, asked of A")?;
    assert!(gathered.lines().all(|l| l.starts_with("[echo-00001 node ")), "every line names its node: {gathered}");

    // A Service that is not there is not found, as `sluice get` says it (regression: "has no revisions").
    let (ok, _, err) = logs(&admin, "nope", &[]).await?;
    assert!(!ok && err.contains("services.serving.knative.dev \"nope\" not found"), "{err}");

    let (ok, own, err) = logs(&admin, "echo", &["--this-node-only"]).await?;
    assert!(ok, "{err}");
    assert!(started_on(&own, a_id), "{own}");
    assert!(!own.contains(&format!(" node {b_id}] ")), "A's lines alone: {own}");

    // The autoscaler's decisions, too: each node decides for its own instances, and `describe` shows them all.
    let decided = wait_until(READY_WITHIN, || async {
        let described = describe(&admin).await?;
        Ok((decided_on(&described, a_id) && decided_on(&described, b_id)).then_some(described))
    })
    .await
    .context("the decisions of A's and B's autoscalers, asked of A")?;
    assert!(decided.contains("Autoscaler (the last 10 decisions, every node)"), "{decided}");

    // A node that cannot be asked is named (on stderr, in describe's section); the others' lines still come.
    cluster.node(c_id).kill9();
    let (ok, out, err) = logs(&admin, "echo", &[]).await?;
    assert!(ok, "{err}");
    assert!(started_on(&out, a_id) && started_on(&out, b_id), "{out}");
    assert!(err.contains(&format!("node {c_id}: not asked")), "{err}");
    let described = describe(&admin).await?;
    assert!(described.contains(&format!("node {c_id} not asked")), "{described}");
    assert!(decided_on(&described, a_id) || decided_on(&described, b_id), "{described}");
    Ok(())
}

/// `sluice describe ksvc echo --admin ADMIN`'s output.
async fn describe(admin: &str) -> Result<String> {
    let run = tokio::process::Command::new(sluice_tests::sluice_bin())
        .args(["describe", "ksvc", "echo", "--admin", admin])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run).await??;
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether `described` shows a decision of `node`'s autoscaler (a row: REVISION NODE AGE …).
fn decided_on(described: &str, node: u64) -> bool {
    described.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.next() == Some("echo-00001") && fields.next() == Some(node.to_string().as_str())
    })
}
