//! Replication goes on one long-lived stream per follower (`StreamAppend`). A follower that stops answering
//! (SIGSTOP) while the leader keeps committing with the other one: the leader's session to it fails (here
//! the HTTP/2 connection errors within a second or so, before the 2 s answer timeout, which the broker's
//! unit tests cover against a follower that never answers), a new one opens when the follower answers
//! again, and the follower ends with every acknowledged append at its offset.

use std::time::Duration;

use sluice_tests::{Appends, TestCluster, metric_sum, wait_until};

const STREAM: &str = "broker/default/paused";
const PARTITION: u32 = 0;
const GROUP: u32 = PARTITION + 1;

async fn counters(metrics_url: &str) -> anyhow::Result<(f64, f64)> {
    let page = reqwest::get(metrics_url).await?.text().await?;
    Ok((
        metric_sum(&page, "sluice_raft_append_streams_total", &[]),
        metric_sum(&page, "sluice_raft_append_stream_failures_total", &[]),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_stops_answering_gets_a_new_session_and_catches_up() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, 1, &["--leader-balance-ms", "0"]).await?;
    let leader = cluster.leader_of(GROUP).await?;
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    let leader_admin = cluster.node(leader).admin.clone();
    let metrics_url = format!("http://{}/metrics", cluster.node(leader).http);
    // Sent to the first leader's admin port, which forwards them if an election on a loaded machine moves it.
    let mut appends = Appends::new(STREAM, PARTITION);
    for seq in 0..20 {
        appends.send(&leader_admin, format!("before-{seq}").into_bytes()).await?;
    }
    let (opened_before, failed_before) = counters(&metrics_url).await?;
    assert!(opened_before >= 1.0, "the leader replicates on append streams: {opened_before} opened");

    // The follower stops answering; the leader and the other follower still form a quorum. Appends keep the
    // session's requests unanswered until the leader gives up on it.
    cluster.node(follower).signal("STOP")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seq = 0;
    let failed_at = loop {
        seq += 1;
        appends.send(&leader_admin, format!("paused-{seq}").into_bytes()).await?;
        let (_, failed) = counters(&metrics_url).await?;
        if failed > failed_before {
            break failed;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the leader never abandoned the session to the paused follower ({seq} appends in 30 s)"
        );
    };
    let (opened_at_failure, _) = counters(&metrics_url).await?;

    cluster.node(follower).signal("CONT")?;
    for seq in 0..20 {
        appends.send(&leader_admin, format!("after-{seq}").into_bytes()).await?;
    }
    let last = appends.last_acked().expect("appends were acknowledged");
    let follower_admin = cluster.node(follower).admin.clone();
    // Every acknowledged append at its offset, nothing twice, nothing never sent.
    wait_until(Duration::from_secs(30), || async {
        let copy = appends.copy_on(&follower_admin).await?;
        Ok((copy.len() as u64 > last).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("the resumed follower did not catch up: {e}"))?;
    let (opened_after, _) = counters(&metrics_url).await?;
    assert!(
        opened_after > opened_at_failure,
        "a new session was opened after the failure ({failed_at} failed; opened {opened_at_failure} → {opened_after})"
    );
    Ok(())
}

#[test]
fn counters_are_summed_over_their_labels_and_only_their_own_name() {
    let page = "# TYPE x counter\nsluice_raft_append_streams_total{group=\"p0\"} 3\nsluice_raft_append_streams_total{group=\"meta\"} 2\nsluice_raft_append_streams_total_other 9\n";
    assert_eq!(metric_sum(page, "sluice_raft_append_streams_total", &[]), 5.0);
    assert_eq!(metric_sum(page, "sluice_raft_append_streams_total", &["group=\"p0\""]), 3.0);
    assert_eq!(metric_sum(page, "sluice_raft_append_stream_failures_total", &[]), 0.0);
}
