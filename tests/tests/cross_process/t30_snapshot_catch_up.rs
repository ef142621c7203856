//! A node that was down while the leader snapshotted and purged its log
//! catches up through a snapshot, and ends with the same stream; neither node
//! keeps a full copy of the state on disk for it.
//!
//! The appends go to the first leader's admin port, which forwards them while
//! an election on a loaded machine moves the leadership: a refused append is
//! sent again, and one whose outcome is unknown is remembered as maybe-stored,
//! never sent again (so the stream can be checked for duplicates).

use std::time::Duration;

use anyhow::Context as _;
use sluice_tests::{Appends, TestCluster, end_offset, status, wait_ready, wait_until};

const STREAM: &str = "channel/default/audit";
const GROUP: u32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_through_a_snapshot() -> anyhow::Result<()> {
    let mut cluster =
        TestCluster::start(3, 1, &["--snapshot-every-entries", "40", "--keep-entries-after-snapshot", "0"]).await?;
    let leader = cluster.leader_of(GROUP).await?;
    let lagging = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    let leader_admin = cluster.node(leader).admin.clone();
    let mut sent = Appends::new(STREAM, 0);
    sent.until_acked(&leader_admin, 20).await?;
    cluster.node(lagging).kill9();

    // Sequential appends: one Raft entry each, enough for several snapshots.
    sent.until_acked(&leader_admin, 300).await?;
    // The leader has purged past everything the lagging node has.
    wait_until(Duration::from_secs(30), || async {
        let s = status(&leader_admin).await?;
        let g = s.groups.iter().find(|g| g.group_id == GROUP).cloned();
        Ok(g.and_then(|g| g.purged_index).filter(|purged| *purged > 100).map(|_| ()))
    })
    .await
    .context("the leader purges its log")?;

    cluster.node(lagging).start()?;
    let lagging_admin = cluster.node(lagging).admin.clone();
    let lagging_http = cluster.node(lagging).http.clone();
    wait_ready(&lagging_http).await.context("the lagging node restarts")?;
    // Both copies agree once the lagging node has caught up (an indeterminate append may still commit meanwhile).
    let (sent_ref, leader_ref, lagging_ref) = (&sent, &leader_admin, &lagging_admin);
    let leader_copy = wait_until(Duration::from_secs(60), || async move {
        let leader_copy = sent_ref.copy_on(leader_ref).await?;
        let lagging_copy = sent_ref.copy_on(lagging_ref).await?;
        Ok((leader_copy == lagging_copy).then_some(leader_copy))
    })
    .await
    .context("the lagging node catches up")?;
    assert!(leader_copy.len() >= 300, "{} records, 300 acknowledged", leader_copy.len());

    let lagging_status = status(&lagging_admin).await?;
    let group = lagging_status.groups.iter().find(|g| g.group_id == GROUP).expect("group status");
    assert!(group.snapshot_index.is_some_and(|i| i > 20), "the lagging node holds a snapshot: {group:?}");
    let metrics = reqwest::get(format!("http://{lagging_http}/metrics")).await?.text().await?;
    assert!(
        metrics.lines().any(|l| l.starts_with("sluice_snapshots_installed_total") && !l.ends_with(" 0")),
        "the lagging node installed a snapshot"
    );

    // The leader sent its state as it read it (the leader as of the catch-up: on a loaded machine an election
    // may have moved it), and the follower kept only the meta of what it installed: no full copy of the state
    // stays on any disk.
    let mut senders = Vec::new();
    for node in cluster.nodes.iter().filter(|n| n.id != lagging) {
        let metrics = reqwest::get(format!("http://{}/metrics", node.http)).await?.text().await?;
        if metrics.lines().any(|l| l.starts_with("sluice_snapshot_sent_bytes_total") && !l.ends_with(" 0")) {
            senders.push(node.id);
        }
    }
    assert!(!senders.is_empty(), "a leader counted the snapshot's bytes it sent");
    // A transfer the leader gave up and sent again may still be arriving; none may stay.
    let nodes: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    for node in nodes {
        let dir = cluster.node(node).data.join("snapshots").join(format!("group-{GROUP}"));
        wait_until(Duration::from_secs(30), || async {
            let entries = match std::fs::read_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(())),
                other => other?,
            };
            let files: Vec<String> = entries
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            if files.iter().all(|name| name.ends_with(".meta")) {
                Ok(Some(()))
            } else {
                Err(anyhow::anyhow!("node {node} keeps more than metas: {files:?}"))
            }
        })
        .await?;
    }

    // The caught-up node keeps replicating after the snapshot.
    let before = sent.acked.len();
    sent.until_acked(&leader_admin, before + 1).await?;
    let last_acked = sent.last_acked().expect("acknowledged appends");
    wait_until(Duration::from_secs(30), || async {
        Ok((end_offset(&lagging_admin, STREAM, 0).await? > last_acked).then_some(()))
    })
    .await
    .context("the caught-up node replicates a new append")?;
    let leader_copy = sent.copy_on(&leader_admin).await?;
    let lagging_copy = sent.copy_on(&lagging_admin).await?;
    assert_eq!(leader_copy[..=last_acked as usize], lagging_copy[..=last_acked as usize]);
    Ok(())
}
