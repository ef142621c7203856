//! Ordered delivery (`sluice.dev/delivery-order: ordered`) under a subscriber that fails at random: per
//! `partitionkey`, deliveries happen in log order, one at a time, and a later event never overtakes an
//! earlier one (it is not even attempted before the earlier one succeeded).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_tests::subscriber::{Delivery, Reply, Subscriber};
use sluice_tests::{TestCluster, apply_resource, broker_object, send_event_accepted, trigger_object};

const KEYS: usize = 4;
const PER_KEY: usize = 15;

/// Fails about a third of the attempts, deterministically per (event, attempt), never after the 4th.
fn flaky(delivery: &Delivery, attempt: u32) -> Reply {
    let id = delivery.header("ce-id").unwrap_or_default();
    let hash = id.bytes().fold(attempt as u64 * 7919, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    if attempt < 4 && hash % 3 == 0 { Reply::status(503) } else { Reply::status(202) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_deliveries_are_in_log_order_and_never_overtake() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 2, &[]).await?;
    let admin = cluster.nodes[0].admin.clone();
    let http = cluster.nodes[1].http.clone();
    let subscriber = Subscriber::start(Arc::new(flaky)).await?;
    apply_resource(&admin, broker_object("default", "b", json!({}))).await?;
    let delivery = json!({"delivery": {"retry": 10, "backoffPolicy": "linear", "backoffDelay": "PT0.02S"}});
    let annotations = json!({"sluice.dev/delivery-order": "ordered", "sluice.dev/backoff-jitter": "0.5"});
    apply_resource(&admin, trigger_object("default", "ordered", "b", &subscriber.url(), delivery, annotations)).await?;

    // Keys interleaved, each key's events sent in sequence (so the log holds them in sequence).
    let client = reqwest::Client::new();
    for seq in 0..PER_KEY {
        for key in 0..KEYS {
            let id = format!("k{key}-{seq:03}");
            let key_name = format!("key-{key}");
            send_event_accepted(
                &client,
                &http,
                "/default/b",
                &id,
                "ordered.test",
                &[("partitionkey", &key_name)],
                "{}",
            )
            .await?;
        }
    }
    let succeeded = |deliveries: &[Delivery]| {
        let mut ids: Vec<String> = Vec::new();
        for d in deliveries {
            let attempt =
                deliveries.iter().filter(|o| o.header("ce-id") == d.header("ce-id") && o.at <= d.at).count() as u32;
            if flaky(d, attempt).status == 202 {
                ids.push(d.header("ce-id").unwrap_or_default().to_string());
            }
        }
        ids.sort();
        ids.dedup();
        ids.len()
    };
    let deliveries =
        subscriber.wait_until(Duration::from_secs(90), |deliveries| succeeded(deliveries) == KEYS * PER_KEY).await?;
    // Per key, the attempts in arrival order: sequence numbers never go back, and an event is first attempted
    // only after the previous one's successful attempt.
    let mut per_key: BTreeMap<String, Vec<(usize, u32)>> = BTreeMap::new();
    let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
    for d in &deliveries {
        let id = d.header("ce-id").unwrap_or_default().to_string();
        let (key, seq) = id.split_once('-').ok_or_else(|| anyhow::anyhow!("unexpected id {id}"))?;
        let attempt = attempts.entry(id.clone()).or_default();
        *attempt += 1;
        let ok = flaky(d, *attempt).status == 202;
        per_key.entry(key.to_string()).or_default().push((seq.parse()?, u32::from(ok)));
    }
    let mut retried = 0;
    for (key, sequence) in &per_key {
        let mut expected = 0usize;
        for (seq, ok) in sequence {
            assert_eq!(
                *seq, expected,
                "key {key}: event {seq} attempted while {expected} was not yet delivered: {sequence:?}"
            );
            if *ok == 1 {
                expected += 1;
            } else {
                retried += 1;
            }
        }
        assert_eq!(expected, PER_KEY, "key {key}: every event delivered");
    }
    assert!(retried > 0, "the subscriber failed some attempts (the test exercised retries)");
    eprintln!("{} attempts for {} events ({retried} failed and retried)", deliveries.len(), KEYS * PER_KEY);
    Ok(())
}
