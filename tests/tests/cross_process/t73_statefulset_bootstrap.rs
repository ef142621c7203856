//! Three nodes started as `deploy/statefulset.yaml` starts its pods (`sluice node --statefulset`, the pod's
//! name in $POD_NAME, no `--id`, no `cluster init`) form the cluster by themselves; a fourth pod (a scale-up)
//! joins it; pod 0's preStop (`sluice cluster pre-stop`) hands its leaderships away; pod 0, killed and
//! restarted on its volume, is still a member and initialises nothing again; pod 1, restarted on an empty
//! volume (its PersistentVolumeClaim lost), is removed and added again as a new node rather than voting with
//! no log.
//! Each pod gets an address of its own (127.0.0.1N, as a pod has its IP) and the same ports, as on
//! Kubernetes; the headless Service's DNS names are replaced by `--peer-host-template 127.0.0.1{ordinal}`.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sluice_tests::{apply_resource, broker_object, send_event, sluice_bin, status, wait_for_broker, wait_until};

struct Pod {
    ordinal: u32,
    data: std::path::PathBuf,
    log: std::path::PathBuf,
    ports: Ports,
    child: Option<Child>,
}

#[derive(Clone, Copy)]
struct Ports {
    peer: u16,
    http: u16,
    admin: u16,
}

fn ip(ordinal: u32) -> String {
    format!("127.0.0.1{ordinal}")
}

/// Ports free on every pod address (a port is the same on every pod, as the StatefulSet's template makes it).
fn free_ports(pods: u32) -> Ports {
    let free_everywhere = |port: u16| (0..pods).all(|o| std::net::TcpListener::bind((ip(o).as_str(), port)).is_ok());
    let mut candidates = (24_000 + (std::process::id() % 4_000) as u16..40_000).filter(|p| free_everywhere(*p));
    let mut next = || candidates.next().expect("a free port");
    Ports { peer: next(), http: next(), admin: next() }
}

impl Pod {
    fn new(ordinal: u32, root: &Path, ports: Ports) -> Pod {
        Pod {
            ordinal,
            data: root.join(format!("sluice-{ordinal}")),
            log: root.join(format!("sluice-{ordinal}.log")),
            ports,
            child: None,
        }
    }

    fn admin(&self) -> String {
        format!("{}:{}", ip(self.ordinal), self.ports.admin)
    }

    fn http(&self) -> String {
        format!("{}:{}", ip(self.ordinal), self.ports.http)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let address = ip(self.ordinal);
        let child = Command::new(sluice_bin())
            .args(["node", "--statefulset", "--initial-members=3", "--initial-partitions=2"])
            .arg("--peer-host-template=127.0.0.1{ordinal}")
            .arg("--data")
            .arg(&self.data)
            .args(["--peer-listen", &format!("{address}:{}", self.ports.peer)])
            .args(["--http", &format!("{address}:{}", self.ports.http)])
            .args(["--admin", &format!("{address}:{}", self.ports.admin)])
            .env("POD_NAME", format!("sluice-{}", self.ordinal))
            .env("POD_NAMESPACE", "sluice-system")
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn members(admin: &str) -> Option<BTreeSet<u64>> {
    let status = status(admin).await.ok()?;
    status.initialized.then(|| status.members.iter().map(|m| m.node_id).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statefulset_pods_form_the_cluster_grow_it_and_restart_into_it() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let ports = free_ports(4);
    let mut pods: Vec<Pod> = (0..3).map(|o| Pod::new(o, root.path(), ports)).collect();
    for pod in &mut pods {
        pod.start()?;
    }
    let founders: BTreeSet<u64> = [1, 2, 3].into();
    for pod in &pods {
        let admin = pod.admin();
        wait_until(Duration::from_secs(60), || async { Ok(members(&admin).await.filter(|m| *m == founders)) })
            .await
            .map_err(|e| anyhow::anyhow!("pod {}: {e}\n{}", pod.ordinal, pod.log_text()))?;
    }
    // The cluster works: a Broker on pod 0, an event through pod 2 acknowledged (committed on a quorum) once
    // every group has elected a leader (readiness).
    for pod in &pods {
        sluice_tests::wait_ready(&pod.http()).await?;
    }
    apply_resource(&pods[0].admin(), broker_object("default", "b", json!({}))).await?;
    wait_for_broker(&pods[2].http(), "/default/b").await?;
    let client = reqwest::Client::new();
    assert_eq!(send_event(&client, &pods[2].http(), "/default/b", "e-1", "statefulset.test", &[], "{}").await?, 202);

    // A scale-up: pod 3 asks a founder to add it.
    let mut pod3 = Pod::new(3, root.path(), ports);
    pod3.start()?;
    let grown: BTreeSet<u64> = [1, 2, 3, 4].into();
    let admin0 = pods[0].admin();
    wait_until(Duration::from_secs(60), || async { Ok(members(&admin0).await.filter(|m| *m == grown)) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", pod3.log_text()))?;
    let admin3 = pod3.admin();
    wait_until(Duration::from_secs(30), || async { Ok(members(&admin3).await.filter(|m| *m == grown)) })
        .await
        .map_err(|e| anyhow::anyhow!("pod 3 does not see itself a member: {e}\n{}", pod3.log_text()))?;
    // Regression (a CI run): pod 3 can see itself a member (the metadata group's change applied) before the
    // founder's add-node call, which goes on to the partition groups, has answered it; so wait for its line.
    wait_until(Duration::from_secs(30), || async {
        Ok(pod3.log_text().contains("statefulset: added to the cluster").then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("pod 3 never logged its add-node answer: {e}\n{}", pod3.log_text()))?;

    // Pod 0's preStop hands its leaderships away (the StatefulSet is not read here: no API server, so it stays a
    // member); then pod 0, which initialised the cluster, restarts on its volume: a member at once, nothing
    // initialised again.
    let leads = |reply: &sluice_proto::admin::StatusReply| {
        reply.groups.iter().filter(|g| g.leader_id == Some(1)).map(|g| g.group_id).collect::<Vec<_>>()
    };
    // Make sure pod 0 leads something, so the handover has work to do.
    let mut cluster = sluice_proto::admin::cluster_client::ClusterClient::connect(format!("http://{admin0}")).await?;
    cluster.transfer_leader(sluice_proto::admin::TransferLeaderRequest { group_id: 0, to_node_id: 1 }).await?;
    wait_until(Duration::from_secs(20), || async { Ok(status(&admin0).await.ok().filter(|s| !leads(s).is_empty())) })
        .await?;
    let output = Command::new(sluice_bin())
        .args(["cluster", "pre-stop", "--admin", &admin0])
        .env("POD_NAME", "sluice-0")
        .output()?;
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{printed}{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("leadership handed to node"), "{printed}");
    wait_until(Duration::from_secs(20), || async { Ok(status(&admin0).await.ok().filter(|s| leads(s).is_empty())) })
        .await
        .map_err(|e| anyhow::anyhow!("node 1 still leads after its preStop: {e}\n{printed}"))?;
    assert!(pods[0].log_text().contains("statefulset: initialising the cluster"), "{}", pods[0].log_text());
    pods[0].kill9();
    let before_restart = pods[0].log_text().len();
    pods[0].start()?;
    let since_restart = || pods[0].log_text().get(before_restart..).unwrap_or_default().to_string();
    wait_until(Duration::from_secs(60), || async { Ok(members(&admin0).await.filter(|m| *m == grown)) }).await?;
    wait_until(Duration::from_secs(30), || async {
        Ok(since_restart().contains("statefulset: this node is a cluster member").then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", since_restart()))?;
    assert!(!since_restart().contains("initialising the cluster"), "{}", since_restart());
    sluice_tests::wait_ready(&pods[0].http()).await?;
    assert_eq!(send_event(&client, &pods[0].http(), "/default/b", "e-2", "statefulset.test", &[], "{}").await?, 202);

    // Pod 1 (node 2) comes back on an empty volume. Regression: it found itself in the member list and took its
    // place as a voter with no log (it could vote twice in a term, or complete a quorum and forget the entry).
    // Now it is removed first and added again as a new node, which a leader catches up before it votes.
    wait_until(Duration::from_secs(30), || async {
        let status = status(&admin0).await?;
        Ok(status.members.iter().find(|m| m.node_id == 2).filter(|m| m.published).map(|_| ()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("node 2 never published itself: {e}"))?;
    pods[1].kill9();
    std::fs::remove_dir_all(&pods[1].data)?;
    let before_wipe = pods[1].log_text().len();
    pods[1].start()?;
    let since_wipe = || pods[1].log_text().get(before_wipe..).unwrap_or_default().to_string();
    let admin1 = pods[1].admin();
    wait_until(Duration::from_secs(120), || async {
        Ok(since_wipe().contains("statefulset: added to the cluster").then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("pod 1 was not added again: {e}\n{}", since_wipe()))?;
    assert!(since_wipe().contains("its volume was lost"), "{}", since_wipe());
    assert!(since_wipe().contains("removed from the cluster"), "{}", since_wipe());
    wait_until(Duration::from_secs(60), || async { Ok(members(&admin1).await.filter(|m| *m == grown)) })
        .await
        .map_err(|e| anyhow::anyhow!("pod 1 does not see itself a member again: {e}\n{}", since_wipe()))?;
    // Every group has node 2 as a voter again, caught up from the others' logs.
    wait_until(Duration::from_secs(60), || async {
        let status = status(&admin1).await?;
        let voter_everywhere = status.groups.len() == 3 && status.groups.iter().all(|g| g.voters.contains(&2));
        Ok(voter_everywhere.then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("node 2 is not a voter of every group again: {e}\n{}", since_wipe()))?;
    sluice_tests::wait_ready(&pods[1].http()).await?;
    assert_eq!(send_event(&client, &pods[1].http(), "/default/b", "e-3", "statefulset.test", &[], "{}").await?, 202);
    Ok(())
}
