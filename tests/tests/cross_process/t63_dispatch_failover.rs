//! `kill -9` of the node leading a partition while its dispatcher is retrying: after failover, the new
//! leader resumes from the committed offsets and every committed matching event is delivered (or
//! dead-lettered). Duplicates are allowed (at least once) and counted; none is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_tests::subscriber::{Delivery, Reply, Subscriber};
use sluice_tests::{TestCluster, apply_resource, broker_object, send_event, trigger_object};

const EVENTS: usize = 60;

/// The first two attempts of every event fail (503); the third succeeds.
fn fails_twice(_: &Delivery, attempt: u32) -> Reply {
    if attempt <= 2 { Reply::status(503) } else { Reply::status(202) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_committed_event_is_lost_when_the_dispatching_leader_dies() -> anyhow::Result<()> {
    // One partition, so one leader dispatches everything.
    let mut cluster = TestCluster::start(3, 1, &["--dispatch-commit-interval-ms", "200"]).await?;
    let leader = cluster.leader_of(1).await?;
    let survivor = cluster.nodes.iter().find(|n| n.id != leader).map(|n| (n.admin.clone(), n.http.clone()));
    let (admin, http) = survivor.ok_or_else(|| anyhow::anyhow!("no other node"))?;
    let subscriber = Subscriber::start(Arc::new(fails_twice)).await?;
    apply_resource(&admin, broker_object("default", "b", json!({}))).await?;
    let delivery = json!({"delivery": {"retry": 5, "backoffPolicy": "linear", "backoffDelay": "PT0.3S"}});
    apply_resource(&admin, trigger_object("default", "t", "b", &subscriber.url(), delivery, json!({}))).await?;

    let client = reqwest::Client::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut killed = false;
    for i in 0..EVENTS {
        let id = format!("ev-{i:03}");
        // 503s around the election are answered as such; 202 means committed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if send_event(&client, &http, "/default/b", &id, "failover.test", &[], "{}").await.unwrap_or(0) == 202 {
                acked.insert(id.clone());
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "event {id} not accepted after failover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Kill the leader once it is busy retrying a first batch of events.
        if i == EVENTS / 2 && !killed {
            subscriber.wait_for(20, Duration::from_secs(30)).await?;
            cluster.node(leader).kill9();
            killed = true;
        }
    }
    anyhow::ensure!(killed, "the leader was killed");
    let succeeded = |deliveries: &[Delivery]| -> BTreeMap<String, usize> {
        let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
        let mut ok: BTreeMap<String, usize> = BTreeMap::new();
        for d in deliveries {
            let id = d.header("ce-id").unwrap_or_default().to_string();
            let attempt = attempts.entry(id.clone()).or_default();
            *attempt += 1;
            if fails_twice(d, *attempt).status == 202 {
                *ok.entry(id).or_default() += 1;
            }
        }
        ok
    };
    let deliveries = subscriber
        .wait_until(Duration::from_secs(120), |deliveries| {
            let ok = succeeded(deliveries);
            acked.iter().all(|id| ok.contains_key(id))
        })
        .await?;
    let ok = succeeded(&deliveries);
    let duplicates: usize = ok.values().map(|n| n - 1).sum();
    eprintln!(
        "{} events acknowledged, all delivered after failover; {} attempts, {duplicates} duplicate successful deliveries",
        acked.len(),
        deliveries.len()
    );
    Ok(())
}
