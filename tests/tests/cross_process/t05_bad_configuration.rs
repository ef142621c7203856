//! Bad configuration ends with a non-zero exit and a one-line error that
//! says what to change.

use std::time::Duration;

use sluice_tests::{free_addr, run_sluice};

const TIMEOUT: Duration = Duration::from_secs(60);

fn last_line(stderr: &str) -> &str {
    stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

fn node_args<'a>(id: &'a str, data: &'a str, peer: &'a str, http: &'a str, admin: &'a str) -> Vec<&'a str> {
    vec!["node", "--id", id, "--data", data, "--peer-listen", peer, "--http", http, "--admin", admin]
}

#[test]
fn unknown_flag_is_rejected() -> anyhow::Result<()> {
    let (code, stderr) = run_sluice(&["node", "--id", "1", "--data", "/tmp/x", "--no-such-flag"], TIMEOUT)?;
    assert_ne!(code, 0);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    Ok(())
}

#[test]
fn unusable_data_dir_is_rejected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory")?;
    let data = file.join("data");
    let data = data.to_str().expect("utf-8 path");
    let (peer, http, admin) = (free_addr(), free_addr(), free_addr());
    let (code, stderr) = run_sluice(&node_args("1", data, &peer, &http, &admin), TIMEOUT)?;
    assert_ne!(code, 0);
    let line = last_line(&stderr);
    assert!(line.starts_with("error: cannot open data dir"), "{stderr}");
    assert!(line.contains(data), "{line}");
    Ok(())
}

#[test]
fn port_in_use_is_rejected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
    let busy_addr = busy.local_addr()?.to_string();
    let data = dir.path().join("n1");
    let (peer, admin) = (free_addr(), free_addr());
    let (code, stderr) =
        run_sluice(&node_args("1", data.to_str().expect("utf-8"), &peer, &busy_addr, &admin), TIMEOUT)?;
    assert_ne!(code, 0);
    let line = last_line(&stderr);
    assert!(line.contains("--http") && line.contains(&busy_addr) && line.contains("in use"), "{line}");
    Ok(())
}

#[test]
fn data_dir_of_another_node_id_is_rejected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("n1");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("node-id"), "1\n")?;
    let (peer, http, admin) = (free_addr(), free_addr(), free_addr());
    let (code, stderr) = run_sluice(&node_args("4", data.to_str().expect("utf-8"), &peer, &http, &admin), TIMEOUT)?;
    assert_ne!(code, 0);
    let line = last_line(&stderr);
    assert!(line.contains("belongs to node 1") && line.contains("--id"), "{line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_without_this_node_is_rejected() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut node = sluice_tests::NodeProc::new(1, root.path(), &[]);
    node.start()?;
    sluice_tests::wait_for_admin(&node.admin).await?;
    let admin = node.admin.clone();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        run_sluice(&["cluster", "init", "--admin", &admin, "--members", "2=127.0.0.1:1,3=127.0.0.1:2"], TIMEOUT)
    })
    .await??;
    assert_ne!(code, 0);
    let line = last_line(&stderr);
    assert!(line.contains("not in the member list"), "{line}");
    Ok(())
}

#[test]
fn zero_node_id_is_rejected() -> anyhow::Result<()> {
    let (code, stderr) = run_sluice(&["node", "--id", "0", "--data", "/tmp/x"], TIMEOUT)?;
    assert_ne!(code, 0);
    assert!(stderr.contains("--id"), "{stderr}");
    Ok(())
}

#[test]
fn malformed_peer_route_is_rejected() -> anyhow::Result<()> {
    for route in ["10.0.0.2:7070", "10.0.0.2:7070=", "=127.0.0.1:1", "10.0.0.2:7070=127.0.0.1:notaport"] {
        let (code, stderr) = run_sluice(&["node", "--id", "1", "--data", "/tmp/x", "--peer-route", route], TIMEOUT)?;
        assert_ne!(code, 0, "{route}");
        assert!(
            stderr.contains("--peer-route") && (stderr.contains("host:port") || stderr.contains("ADDR=VIA")),
            "{route}: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn a_rollout_duration_that_is_not_a_duration_is_rejected() -> anyhow::Result<()> {
    for (value, rule) in [("soon", "is not a duration"), ("-5s", "is negative")] {
        let flag = format!("--serving-rollout-duration={value}");
        let (code, stderr) = run_sluice(&["node", "--id", "1", "--data", "/tmp/x", &flag], TIMEOUT)?;
        assert_ne!(code, 0, "{value}");
        assert!(stderr.contains("--serving-rollout-duration") && stderr.contains(rule), "{value}: {stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_id_not_in_the_stored_cluster_is_rejected() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut node = sluice_tests::NodeProc::new(1, root.path(), &[]);
    node.start()?;
    sluice_tests::wait_for_admin(&node.admin).await?;
    let (admin, members) = (node.admin.clone(), format!("1={}", node.peer));
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        run_sluice(&["cluster", "init", "--admin", &admin, "--members", &members, "--partitions", "1"], TIMEOUT)
    })
    .await??;
    assert_eq!(code, 0, "{stderr}");
    sluice_tests::wait_ready(&node.http).await?;
    node.kill9();
    // The data dir now holds a cluster whose only member is node 1.
    std::fs::remove_file(node.data.join("node-id"))?;
    let data = node.data.to_str().expect("utf-8").to_string();
    let (peer, http, admin) = (free_addr(), free_addr(), free_addr());
    let (code, stderr) =
        tokio::task::spawn_blocking(move || run_sluice(&node_args("2", &data, &peer, &http, &admin), TIMEOUT))
            .await??;
    assert_ne!(code, 0);
    let line = last_line(&stderr);
    assert!(line.contains("node id 2 is not a member") && line.contains("members: 1"), "{line}");
    Ok(())
}

/// Regression: a node started without `cluster init` answered `apply` with "no leader, retry" (exit 5), `get` with
/// "No resources found" and `events read` with RESOURCE_NOT_FOUND; each now says the cluster is not initialised
/// (exit 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_a_node_never_initialised_say_so() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut node = sluice_tests::NodeProc::new(1, root.path(), &[]);
    node.start()?;
    sluice_tests::wait_for_admin(&node.admin).await?;
    let manifest = root.path().join("broker.yaml");
    std::fs::write(&manifest, "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n")?;
    let manifest = manifest.display().to_string();
    let admin = node.admin.clone();
    let commands: Vec<Vec<String>> = vec![
        vec!["apply".into(), "-f".into(), manifest, "--admin".into(), admin.clone()],
        vec!["get".into(), "brokers".into(), "--admin".into(), admin.clone()],
        vec!["events".into(), "read".into(), "--broker".into(), "b".into(), "--admin".into(), admin],
    ];
    for command in commands {
        let args = command.clone();
        let (code, stderr) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_sluice(&args, TIMEOUT)
        })
        .await??;
        assert_eq!(code, 4, "{command:?}: {stderr}");
        assert!(stderr.contains("not initialised"), "{command:?}: {stderr}");
    }
    Ok(())
}
