//! A node that was down while the leader snapshotted and purged its log
//! catches up through a snapshot, and ends with the same stream; neither node
//! keeps a full copy of the state on disk for it.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_tests::{
    AppendOutcome, TestCluster, append, check_stream, end_offset, read_all, status, wait_ready, wait_until,
};

const STREAM: &str = "channel/default/audit";
const GROUP: u32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_through_a_snapshot() -> anyhow::Result<()> {
    let mut cluster =
        TestCluster::start(3, 1, &["--snapshot-every-entries", "40", "--keep-entries-after-snapshot", "0"]).await?;
    let leader = cluster.leader_of(GROUP).await?;
    let lagging = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    let leader_admin = cluster.node(leader).admin.clone();
    let mut acked = BTreeMap::new();
    let send = |i: usize| {
        let admin = leader_admin.clone();
        async move {
            let payload = format!("event-{i}").into_bytes();
            match append(&admin, STREAM, 0, vec![payload.clone()]).await {
                AppendOutcome::Acked(offsets) => Ok((offsets[0], payload)),
                other => Err(anyhow::anyhow!("append {i}: {other:?}")),
            }
        }
    };
    for i in 0..20 {
        let (offset, payload) = send(i).await?;
        acked.insert(offset, payload);
    }
    cluster.node(lagging).kill9();

    // Sequential appends: one Raft entry each, enough for several snapshots.
    for i in 20..300 {
        let (offset, payload) = send(i).await?;
        acked.insert(offset, payload);
    }
    // The leader has purged past everything the lagging node has.
    wait_until(Duration::from_secs(30), || async {
        let s = status(&leader_admin).await?;
        let g = s.groups.iter().find(|g| g.group_id == GROUP).cloned();
        Ok(g.and_then(|g| g.purged_index).filter(|purged| *purged > 100).map(|_| ()))
    })
    .await?;

    cluster.node(lagging).start()?;
    let lagging_admin = cluster.node(lagging).admin.clone();
    let lagging_http = cluster.node(lagging).http.clone();
    wait_ready(&lagging_http).await?;
    wait_until(Duration::from_secs(60), || async {
        Ok((end_offset(&lagging_admin, STREAM, 0).await? >= 300).then_some(()))
    })
    .await?;

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

    let leader_copy = check_stream(&read_all(&leader_admin, STREAM, 0).await?, &acked)?;
    let lagging_copy = check_stream(&read_all(&lagging_admin, STREAM, 0).await?, &acked)?;
    assert_eq!(leader_copy.len(), 300);
    assert_eq!(leader_copy, lagging_copy);

    // The caught-up node keeps replicating after the snapshot.
    let (offset, payload) = send(300).await?;
    acked.insert(offset, payload);
    wait_until(Duration::from_secs(30), || async {
        Ok((end_offset(&lagging_admin, STREAM, 0).await? == 301).then_some(()))
    })
    .await?;
    Ok(())
}
