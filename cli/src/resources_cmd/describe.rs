//! `sluice describe`: an object's metadata, spec, stored events (brokers and channels), the autoscaler's
//! decisions (serving kinds) and status conditions.

use anyhow::Result;
use serde_json::Value;
use sluice_controller::model::KindInfo;

use super::{DescribeArgs, check_scope, connect, fetch, parse_targets, report_missing};
use crate::admin_cli::from_status;
use crate::resources_print::text_at;
use crate::table;

/// `sluice describe KIND [NAME...]`: metadata, spec, the events stored (brokers and channels) and the status
/// conditions of each object.
pub(crate) async fn describe(args: DescribeArgs) -> Result<()> {
    let targets = parse_targets(&args.targets)?;
    check_scope(&targets, &args.scope)?;
    let mut client = connect(&args.admin).await?;
    let found = fetch(&mut client, &targets, &args.scope).await?;
    for (index, (info, object)) in found.objects().enumerate() {
        if index > 0 {
            outln!()?;
            outln!()?;
        }
        describe_object(&args.admin, info, object).await?;
    }
    if found.objects().next().is_none() && found.missing.is_empty() {
        eprintln!("No resources found in {} namespace.", args.scope.namespace);
    }
    report_missing(found.missing)
}

async fn describe_object(admin: &str, info: &KindInfo, object: &Value) -> Result<()> {
    let s = |pointer: &str| text_at(object, pointer);
    outln!("Name:         {}", s("/metadata/name"))?;
    outln!("Namespace:    {}", s("/metadata/namespace"))?;
    outln!("Kind:         {} ({})", info.kind, s("/apiVersion"))?;
    outln!("UID:          {}", s("/metadata/uid"))?;
    outln!("Generation:   {}", s("/metadata/generation"))?;
    outln!("Created:      {}", s("/metadata/creationTimestamp"))?;
    if let Some(labels) = object.pointer("/metadata/labels").and_then(Value::as_object).filter(|l| !l.is_empty()) {
        let labels: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
        outln!("Labels:       {}", labels.join(","))?;
    }
    for line in annotation_lines(object) {
        outln!("{line}")?;
    }
    for (label, pointer) in [
        ("Address", "/status/address/url"),
        ("Subscriber", "/status/subscriberUri"),
        ("Reply", "/status/replyUri"),
        ("Dead letters", "/status/deadLetterSinkUri"),
        // A Subscription's, as Knative lays them out.
        ("Subscriber", "/status/physicalSubscription/subscriberUri"),
        ("Reply", "/status/physicalSubscription/replyUri"),
        ("Dead letters", "/status/physicalSubscription/deadLetterSinkUri"),
    ] {
        if object.pointer(pointer).is_some() {
            outln!("{:<14}{}", format!("{label}:"), s(pointer))?;
        }
    }
    match object.get("spec").filter(|spec| !spec.is_null()) {
        None => outln!("Spec:         <none>")?,
        Some(spec) => {
            outln!("Spec:")?;
            for line in serde_yaml_ng::to_string(spec)?.lines() {
                outln!("  {line}")?;
            }
        }
    }
    if matches!(info.kind, "Broker" | "Channel" | "InMemoryChannel") {
        // Events of interest: what the stream holds, per partition.
        let stream = sluice_broker::stream_name(info.kind, &s("/metadata/namespace"), &s("/metadata/name"));
        let mut log = sluice_proto::admin::log_client::LogClient::new(crate::admin_channel::connect(admin).await?);
        let mut cluster = crate::cluster_cmd::connect(admin).await?;
        let partitions =
            cluster.status(sluice_proto::admin::StatusRequest {}).await.map_err(from_status)?.into_inner().partitions;
        let mut rows = vec![["PARTITION", "START", "END", "RETAINED"].map(String::from).to_vec()];
        for partition in 0..partitions {
            let reply = log
                .read(sluice_proto::admin::ReadRequest {
                    stream: stream.clone(),
                    partition,
                    from_offset: u64::MAX,
                    max_records: 1,
                    max_bytes: 0,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            rows.push(vec![
                partition.to_string(),
                reply.start_offset.to_string(),
                reply.end_offset.to_string(),
                reply.end_offset.saturating_sub(reply.start_offset).to_string(),
            ]);
        }
        outln!("Events ({stream}):")?;
        for line in table::format_table(&rows) {
            outln!("  {line}")?;
        }
    }
    if matches!(info.kind, "Revision" | "Service" | "Configuration") {
        describe_decisions(admin, info.kind, &s("/metadata/namespace"), &s("/metadata/name")).await?;
    }
    outln!("Conditions:")?;
    let mut rows = vec![["TYPE", "STATUS", "REASON", "MESSAGE"].map(String::from).to_vec()];
    for condition in object.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten() {
        rows.push(["/type", "/status", "/reason", "/message"].iter().map(|p| text_at(condition, p)).collect());
    }
    for line in table::format_table(&rows) {
        outln!("  {line}")?;
    }
    Ok(())
}

/// The object's annotations as `kubectl describe` lays them out (`key: value`, one per line, aligned), none when it
/// has none. Regression: `describe` never showed them, so a pause (`sluice.dev/paused`) or a retention was invisible.
fn annotation_lines(object: &Value) -> Vec<String> {
    let annotations = object.pointer("/metadata/annotations").and_then(Value::as_object);
    annotations
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, (key, value))| {
            let label = if i == 0 { "Annotations:" } else { "" };
            let value = value.as_str().map_or_else(|| value.to_string(), str::to_string);
            format!("{label:<14}{key}: {value}")
        })
        .collect()
}

/// The autoscaler's last decisions for the object's revisions, over every node (instances run on the node that
/// serves the request, so each node decides for its own), newest last; a node that could not be asked is named.
async fn describe_decisions(admin: &str, kind: &str, namespace: &str, name: &str) -> Result<()> {
    const SHOWN: usize = 10;
    let request = sluice_proto::admin::DecisionsRequest {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
        follow: false,
        this_node_only: false,
    };
    let decisions = async {
        let mut client =
            sluice_proto::admin::serving_client::ServingClient::new(crate::admin_channel::connect(admin).await?);
        let mut stream = client.decisions(request).await?.into_inner();
        let mut all = Vec::new();
        while let Some(decision) = stream.message().await? {
            all.push(decision);
        }
        anyhow::Ok(all)
    }
    .await
    .unwrap_or_default();
    let (not_asked, mut decisions): (Vec<_>, Vec<_>) = decisions.into_iter().partition(|d| !d.error.is_empty());
    for d in &not_asked {
        outln!("Autoscaler:   node {} not asked: {}", d.node_id, d.error)?;
    }
    if decisions.is_empty() {
        outln!("Autoscaler:   no decisions (its revisions run on no node asked)")?;
        return Ok(());
    }
    decisions.sort_by_key(|d| d.at_ms);
    outln!("Autoscaler (the last {SHOWN} decisions, every node):")?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut rows = vec![
        [
            "REVISION",
            "NODE",
            "AGE",
            "DESIRED",
            "READY",
            "REASON",
            "PANIC",
            "METRIC STABLE/PANIC",
            "BACKLOG",
            "WANTED M/P/B",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for d in decisions.iter().rev().take(SHOWN).rev() {
        rows.push(vec![
            d.revision.clone(),
            d.node_id.to_string(),
            format!("{:.1}s", now_ms.saturating_sub(d.at_ms) as f64 / 1000.0),
            d.desired.to_string(),
            d.ready.to_string(),
            d.reason.clone(),
            if d.panicking { "yes" } else { "no" }.to_string(),
            format!("{:.2}/{:.2}", d.stable_metric, d.panic_metric),
            d.backlog_events.to_string(),
            format!("{}/{}/{}", d.metric_wanted, d.panic_wanted, d.backlog_wanted),
        ]);
    }
    for line in table::format_table(&rows) {
        outln!("  {line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::annotation_lines;

    #[test]
    fn annotations_are_listed_one_per_line_as_kubectl_does() {
        let paused = json!({"metadata": {"annotations": {"sluice.dev/paused": "true", "sluice.dev/retention": "1h"}}});
        assert_eq!(
            annotation_lines(&paused),
            ["Annotations:  sluice.dev/paused: true", "              sluice.dev/retention: 1h"]
        );
        assert!(annotation_lines(&json!({"metadata": {}})).is_empty());
    }
}
