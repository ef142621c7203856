//! The official CloudEvents SDKs through a broker, both directions: the Python SDK (`cloudevents` 1.x) and the
//! JavaScript SDK (npm `cloudevents` 10) produce every event of `tests/sdk/events.json` in binary and in
//! structured mode; subscribers built with each SDK receive them through Triggers in binary and in structured
//! (`delivery.format: json`) mode; what each subscriber's SDK parses must equal what the same SDK parses from the
//! event sent to it directly. Non-ASCII and `%` in attributes, quotes, big and exponent numbers, key order, text
//! and binary data, extensions of every type.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sluice_tests::{apply_resource, broker_object, manifest_dir, trigger_object, wait_for_broker, wait_until};
use tokio::io::AsyncBufReadExt;

const WAIT: Duration = Duration::from_secs(90);

fn sdk_dir() -> PathBuf {
    manifest_dir().join("sdk")
}

fn events_file() -> String {
    sdk_dir().join("events.json").display().to_string()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sdk {
    Python,
    JavaScript,
}

impl Sdk {
    fn command(self) -> (String, Vec<String>) {
        match self {
            Sdk::Python => ("python3".into(), vec![sdk_dir().join("python_sdk.py").display().to_string()]),
            Sdk::JavaScript => ("node".into(), vec![sdk_dir().join("js").join("sdk.js").display().to_string()]),
        }
    }

    async fn run(self, args: &[&str]) -> Result<String> {
        let (program, mut all) = self.command();
        all.extend(args.iter().map(|a| a.to_string()));
        let output = tokio::process::Command::new(&program).args(&all).output().await?;
        if !output.status.success() {
            bail!("{program} {all:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// What this SDK parses from each event of the file sent to it directly: id → fingerprint.
    async fn expected(self) -> Result<BTreeMap<String, serde_json::Value>> {
        let mut expected = BTreeMap::new();
        for line in self.run(&["expect", &events_file()]).await?.lines() {
            let entry: serde_json::Value = serde_json::from_str(line)?;
            let id = entry["id"].as_str().context("expect: id")?.to_string();
            expected.insert(id, entry["fingerprint"].clone());
        }
        Ok(expected)
    }
}

/// A subscriber process built with one SDK, recording one line per event it parsed.
struct Subscriber {
    sdk: Sdk,
    url: String,
    out: PathBuf,
    _child: tokio::process::Child,
}

impl Subscriber {
    async fn start(sdk: Sdk, out: PathBuf) -> Result<Self> {
        let (program, mut args) = sdk.command();
        args.extend(["subscribe".into(), "0".into(), out.display().to_string(), events_file()]);
        let mut child = tokio::process::Command::new(&program)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let stdout = child.stdout.take().context("subscriber stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .with_context(|| format!("{sdk:?} subscriber did not print `listening`"))??
            .unwrap_or_default();
        let port = line.strip_prefix("listening on ").with_context(|| format!("unexpected first line {line:?}"))?;
        Ok(Subscriber { sdk, url: format!("http://127.0.0.1:{port}/"), out, _child: child })
    }

    fn received(&self) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).map_err(anyhow::Error::from)).collect()
    }
}

fn produced_ids(sdk: Sdk) -> Result<Vec<String>> {
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(events_file())?)?;
    let (name, tag) = match sdk {
        Sdk::Python => ("python", "py"),
        Sdk::JavaScript => ("js", "js"),
    };
    let mut ids = Vec::new();
    for event in file["events"].as_array().context("events")? {
        let producers = event["producers"].as_array();
        if producers.is_some_and(|p| !p.iter().any(|p| p == name)) {
            continue;
        }
        let id = event["id"].as_str().context("id")?;
        ids.push(format!("{id}.{tag}-bin"));
        ids.push(format!("{id}.{tag}-json"));
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_events_round_trip_through_a_broker_unchanged() -> Result<()> {
    let (root, node) = sluice_tests::start_single_node(2, &[]).await?;
    apply_resource(&node.admin, broker_object("default", "sdk", json!({}))).await?;
    wait_for_broker(&node.http, "/default/sdk").await?;

    let mut subscribers = Vec::new();
    for sdk in [Sdk::Python, Sdk::JavaScript] {
        for format in ["binary", "json"] {
            let out = root.path().join(format!("{sdk:?}-{format}.jsonl"));
            let subscriber = Subscriber::start(sdk, out).await?;
            let name = format!("{}-{format}", format!("{sdk:?}").to_ascii_lowercase());
            let spec = json!({"delivery": {"format": format}});
            apply_resource(&node.admin, trigger_object("default", &name, "sdk", &subscriber.url, spec, json!({})))
                .await?;
            subscribers.push((format, subscriber));
        }
    }

    let url = format!("http://{}/default/sdk", node.http);
    let mut sent = Vec::new();
    for producer in [Sdk::Python, Sdk::JavaScript] {
        let statuses = producer.run(&["produce", &url, &events_file()]).await?;
        let ids = produced_ids(producer)?;
        let statuses: Vec<&str> = statuses.lines().collect();
        assert_eq!(statuses.len(), ids.len(), "{producer:?}: one status per request: {statuses:?}");
        for (id, status) in ids.iter().zip(&statuses) {
            assert_eq!(*status, "202", "{producer:?} {id}: the broker refused what the SDK sent");
        }
        sent.extend(ids);
    }
    sent.sort();

    let mut expected = BTreeMap::new();
    for sdk in [Sdk::Python, Sdk::JavaScript] {
        expected.insert(sdk, sdk.expected().await?);
    }
    let mut mismatches = Vec::new();
    for (format, subscriber) in &subscribers {
        let received = wait_until(WAIT, || async {
            let received = subscriber.received()?;
            Ok((received.len() >= sent.len()).then_some(received))
        })
        .await
        .with_context(|| format!("{:?} {format} subscriber: not every event arrived", subscriber.sdk))?;
        let mut ids: Vec<String> = received.iter().filter_map(|r| r["id"].as_str().map(str::to_string)).collect();
        ids.sort();
        assert_eq!(ids, sent, "{:?} {format}: every event exactly once", subscriber.sdk);
        for record in &received {
            let id = record["id"].as_str().unwrap_or_default();
            let base = id.split('.').next().unwrap_or_default();
            let want = &expected[&subscriber.sdk][base];
            if &record["fingerprint"] != want {
                mismatches.push(format!(
                    "{:?} subscriber ({format}) got {id}:\n  {}\nwhich the SDK parses directly as\n  {want}",
                    subscriber.sdk, record["fingerprint"]
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    Ok(())
}
