//! A subscriber written with the Python `cloudevents` SDK receives binary (default) and structured
//! (`delivery.format: json`) deliveries and parses them.

use std::time::Duration;

use serde_json::json;
use sluice_tests::subscriber::PythonSubscriber;
use sluice_tests::{apply_resource, broker_object, send_event_accepted, trigger_object};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_parses_binary_and_structured_deliveries() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(2, &[]).await?;
    let python = PythonSubscriber::start().await?;
    apply_resource(&node.admin, broker_object("default", "b", json!({}))).await?;
    let binary = json!({"filter": {"attributes": {"type": "py.binary"}}});
    apply_resource(&node.admin, trigger_object("default", "bin", "b", &python.url(), binary, json!({}))).await?;
    let structured = json!({"filter": {"attributes": {"type": "py.structured"}}, "delivery": {"format": "json"}});
    apply_resource(&node.admin, trigger_object("default", "json", "b", &python.url(), structured, json!({}))).await?;
    let client = reqwest::Client::new();
    let data = r#"{"greeting":"hello","n":3}"#;
    send_event_accepted(&client, &node.http, "/default/b", "b-1", "py.binary", &[("subject", "s1")], data).await?;
    send_event_accepted(&client, &node.http, "/default/b", "s-1", "py.structured", &[("subject", "s2")], data).await?;
    let events = python.wait_for(2, Duration::from_secs(60)).await?;
    let find = |id: &str| events.iter().find(|e| e["attributes"]["id"] == id).cloned();
    let binary = find("b-1").ok_or_else(|| anyhow::anyhow!("binary event missing: {events:?}"))?;
    assert_eq!(binary["mode"], "binary");
    assert_eq!(binary["attributes"]["type"], "py.binary");
    assert_eq!(binary["attributes"]["subject"], "s1");
    assert_eq!(binary["attributes"]["source"], "/sluice/tests");
    assert_eq!(binary["data"], json!({"greeting": "hello", "n": 3}));
    let structured = find("s-1").ok_or_else(|| anyhow::anyhow!("structured event missing: {events:?}"))?;
    assert_eq!(structured["mode"], "structured");
    assert_eq!(structured["attributes"]["type"], "py.structured");
    assert_eq!(structured["attributes"]["subject"], "s2");
    assert_eq!(structured["data"], json!({"greeting": "hello", "n": 3}));
    Ok(())
}
