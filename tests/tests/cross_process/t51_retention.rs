//! Retention trims a broker's stream by age: old events go, offsets stay,
//! and new events keep coming at the end.

use std::time::Duration;

use sluice_tests::{AppendOutcome, append, apply_resource, broker_object, end_offset, read_all, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_are_trimmed_by_age() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &["--retention-check-ms", "200"]).await?;
    let annotations = serde_json::json!({ "sluice.dev/retention": "2s" });
    apply_resource(&node.admin, broker_object("default", "short", annotations)).await?;
    let stream = "broker/default/short";
    for i in 0..10 {
        match append(&node.admin, stream, 0, vec![format!("old-{i}").into_bytes()]).await {
            AppendOutcome::Acked(_) => {}
            other => anyhow::bail!("append: {other:?}"),
        }
    }
    // The old events age out: the stream's start moves to its end.
    wait_until(Duration::from_secs(20), || async {
        Ok(read_all(&node.admin, stream, 0).await?.is_empty().then_some(()))
    })
    .await?;
    assert_eq!(end_offset(&node.admin, stream, 0).await?, 10, "offsets are not reused");
    match append(&node.admin, stream, 0, vec![b"new".to_vec()]).await {
        AppendOutcome::Acked(offsets) => assert_eq!(offsets, vec![10]),
        other => anyhow::bail!("append: {other:?}"),
    }
    let records = read_all(&node.admin, stream, 0).await?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload.as_ref(), b"new");
    // `describe` shows what the stream holds.
    let admin = node.admin.clone();
    let (code, stderr_or_out) = tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(sluice_tests::sluice_bin())
            .args(["describe", "broker", "short", "--admin", &admin])
            .output()?;
        anyhow::Ok((output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned()))
    })
    .await??;
    assert_eq!(code, 0);
    let row = stderr_or_out.lines().find(|l| l.trim_start().starts_with("0 ")).unwrap_or_default();
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["0", "10", "11", "1"], "{stderr_or_out}");

    // A broker with the default retention (7 days) keeps its events.
    apply_resource(&node.admin, broker_object("default", "long", serde_json::json!({}))).await?;
    match append(&node.admin, "broker/default/long", 0, vec![b"kept".to_vec()]).await {
        AppendOutcome::Acked(_) => {}
        other => anyhow::bail!("append: {other:?}"),
    }
    let metrics_url = format!("http://{}/metrics", node.http);
    // Wait for at least one more retention pass after the append.
    let before = trimmed(&metrics_url).await?;
    wait_until(Duration::from_secs(10), || async {
        let _ = append(&node.admin, stream, 0, vec![b"tick".to_vec()]).await;
        Ok((trimmed(&metrics_url).await? > before).then_some(()))
    })
    .await?;
    assert_eq!(read_all(&node.admin, "broker/default/long", 0).await?.len(), 1);
    Ok(())
}

async fn trimmed(url: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(url).await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("sluice_retention_trimmed_records_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0))
}
