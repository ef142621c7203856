//! `sluice apply | get | delete`: Knative resource objects through a node's
//! admin API, the way kubectl shows them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use sluice_controller::model::{KindInfo, kind_info};
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{ApplyResourceRequest, ListResourcesRequest, ResourceRef};
use tonic::transport::Channel;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// A YAML or JSON file (several documents allowed), a directory of them, or - for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// brokers, triggers, channels, inmemorychannels, subscriptions (or their short names).
    kind: String,
    name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[arg(short = 'o', long, value_parser = ["table", "wide", "yaml", "json"], default_value = "table")]
    output: String,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    kind: Option<String>,
    name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Delete the objects these files describe.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

async fn connect(admin: &str) -> Result<ResourcesClient<Channel>> {
    ResourcesClient::connect(format!("http://{admin}"))
        .await
        .with_context(|| format!("cannot reach the admin API at {admin} (--admin)"))
}

/// Every document of every file, as (file, index, object).
fn read_documents(files: &[PathBuf]) -> Result<Vec<(String, usize, serde_json::Value)>> {
    let mut paths = Vec::new();
    for file in files {
        if file.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(file)
                .with_context(|| format!("cannot read directory {}", file.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                .collect();
            entries.sort();
            paths.extend(entries);
        } else {
            paths.push(file.clone());
        }
    }
    let mut documents = Vec::new();
    for path in paths {
        let (name, text) = if path == Path::new("-") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            ("-".to_string(), text)
        } else {
            (
                path.display().to_string(),
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
            )
        };
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: serde_json::Value = serde::Deserialize::deserialize(document)
                .map_err(|e| anyhow::anyhow!("{name}: document {index}: not valid YAML: {e}"))?;
            if !value.is_null() {
                documents.push((name.clone(), index, value));
            }
        }
    }
    Ok(documents)
}

fn display_name(object: &serde_json::Value) -> String {
    let kind = object.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
    let group = object
        .get("apiVersion")
        .and_then(|a| a.as_str())
        .and_then(|a| a.split_once('/'))
        .map(|(g, _)| g)
        .unwrap_or_default();
    let name = object.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default();
    format!("{}.{group}/{name}", kind.to_ascii_lowercase())
}

pub async fn apply(args: ApplyArgs) -> Result<()> {
    let documents = read_documents(&args.files)?;
    let mut client = connect(&args.admin).await?;
    let mut rejected = 0;
    for (file, index, object) in documents {
        let name = display_name(&object);
        match client.apply(ApplyResourceRequest { object_json: object.to_string() }).await {
            Ok(reply) => println!("{name} {}", reply.into_inner().outcome),
            Err(status) => {
                eprintln!("error: {file}: document {index} ({name}): {}", status.message());
                rejected += 1;
            }
        }
    }
    if rejected > 0 {
        bail!("{rejected} object(s) rejected");
    }
    Ok(())
}

fn resolve_kind(kind: &str) -> Result<&'static KindInfo> {
    kind_info(kind).with_context(|| {
        format!("unknown kind {kind:?}: use brokers, triggers, channels, inmemorychannels or subscriptions")
    })
}

pub async fn get(args: GetArgs) -> Result<()> {
    let info = resolve_kind(&args.kind)?;
    let mut client = connect(&args.admin).await?;
    let objects: Vec<serde_json::Value> = client
        .list(ListResourcesRequest { kind: info.kind.to_string() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .objects_json
        .iter()
        .filter_map(|json| serde_json::from_str(json).ok())
        .filter(|o: &serde_json::Value| {
            args.all_namespaces
                || o.pointer("/metadata/namespace").and_then(|n| n.as_str()) == Some(args.namespace.as_str())
        })
        .filter(|o| {
            args.name.as_deref().is_none_or(|name| o.pointer("/metadata/name").and_then(|n| n.as_str()) == Some(name))
        })
        .collect();
    if let Some(name) = &args.name
        && objects.is_empty()
    {
        bail!(
            "{}.{} {name:?} not found in namespace {}",
            info.plural,
            info.api_version.split('/').next().unwrap_or_default(),
            args.namespace
        );
    }
    let shown = if args.name.is_some() && objects.len() == 1 {
        objects[0].clone()
    } else {
        serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects })
    };
    match args.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&shown)?),
        "yaml" => print!("{}", serde_yaml::to_string(&shown)?),
        output => print_table(info, &objects, args.all_namespaces, output == "wide"),
    }
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> Result<()> {
    let mut targets = Vec::new();
    if !args.files.is_empty() {
        for (_, _, object) in read_documents(&args.files)? {
            let s = |p: &str| object.pointer(p).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            let namespace =
                Some(s("/metadata/namespace")).filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
            targets.push((resolve_kind(&s("/kind"))?, namespace, s("/metadata/name")));
        }
    } else {
        let (Some(kind), Some(name)) = (&args.kind, &args.name) else {
            bail!("say what to delete: sluice delete KIND NAME, or sluice delete -f FILE");
        };
        targets.push((resolve_kind(kind)?, args.namespace.clone(), name.clone()));
    }
    let mut client = connect(&args.admin).await?;
    for (info, namespace, name) in targets {
        client
            .delete(ResourceRef { kind: info.kind.to_string(), namespace, name: name.clone() })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        println!(
            "{}.{}/{name} deleted",
            info.kind.to_ascii_lowercase(),
            info.api_version.split('/').next().unwrap_or_default()
        );
    }
    Ok(())
}

fn ready_of(object: &serde_json::Value) -> (String, String) {
    let ready = object
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    (
        ready["status"].as_str().unwrap_or("Unknown").to_string(),
        ready["reason"].as_str().unwrap_or_default().to_string(),
    )
}

fn print_table(info: &KindInfo, objects: &[serde_json::Value], all_namespaces: bool, wide: bool) {
    let namespace_header = if all_namespaces { format!("{:<20} ", "NAMESPACE") } else { String::new() };
    let (extra_header, extra_pointer) = match info.kind {
        "Trigger" => ("BROKER", "/spec/broker"),
        "Subscription" => ("CHANNEL", "/spec/channel/name"),
        _ => ("URL", "/status/address/url"),
    };
    let wide_header = if wide { format!(" {:>10}  {:<25}", "GENERATION", "CREATED") } else { String::new() };
    println!("{namespace_header}{:<28} {:<44} {:<8} {:<22}{wide_header}", "NAME", extra_header, "READY", "REASON");
    for o in objects {
        let s = |p: &str| {
            o.pointer(p).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_default()
        };
        let namespace = if all_namespaces { format!("{:<20} ", s("/metadata/namespace")) } else { String::new() };
        let (ready, reason) = ready_of(o);
        let wide = if wide {
            format!(" {:>10}  {:<25}", s("/metadata/generation"), s("/metadata/creationTimestamp"))
        } else {
            String::new()
        };
        println!("{namespace}{:<28} {:<44} {:<8} {:<22}{wide}", s("/metadata/name"), s(extra_pointer), ready, reason);
    }
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    kind: String,
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

/// `sluice describe KIND NAME`: metadata, spec and status conditions.
pub async fn describe(args: DescribeArgs) -> Result<()> {
    let info = resolve_kind(&args.kind)?;
    let mut client = connect(&args.admin).await?;
    let object: serde_json::Value = serde_json::from_str(
        &client
            .get(ResourceRef {
                kind: info.kind.to_string(),
                namespace: args.namespace.clone(),
                name: args.name.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner()
            .object_json,
    )?;
    let s = |p: &str| {
        object.pointer(p).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_default()
    };
    println!("Name:         {}", s("/metadata/name"));
    println!("Namespace:    {}", s("/metadata/namespace"));
    println!("Kind:         {} ({})", info.kind, s("/apiVersion"));
    println!("UID:          {}", s("/metadata/uid"));
    println!("Generation:   {}", s("/metadata/generation"));
    println!("Created:      {}", s("/metadata/creationTimestamp"));
    for (label, pointer) in [
        ("Address", "/status/address/url"),
        ("Subscriber", "/status/subscriberUri"),
        ("Reply", "/status/replyUri"),
        ("Dead letters", "/status/deadLetterSinkUri"),
    ] {
        if object.pointer(pointer).is_some() {
            println!("{:<14}{}", format!("{label}:"), s(pointer));
        }
    }
    println!("Spec:");
    for line in serde_yaml::to_string(object.get("spec").unwrap_or(&serde_json::Value::Null))?.lines() {
        println!("  {line}");
    }
    if matches!(info.kind, "Broker" | "Channel" | "InMemoryChannel") {
        // Events of interest: what the stream holds, per partition.
        let stream = sluice_broker::resources::stream_name(info.kind, &args.namespace, &args.name);
        let mut log = sluice_proto::admin::log_client::LogClient::connect(format!("http://{}", args.admin)).await?;
        let mut cluster =
            sluice_proto::admin::cluster_client::ClusterClient::connect(format!("http://{}", args.admin)).await?;
        let partitions = cluster.status(sluice_proto::admin::StatusRequest {}).await?.into_inner().partitions;
        println!("Events ({stream}):");
        println!("  {:<10} {:>12} {:>12} {:>10}", "PARTITION", "START", "END", "RETAINED");
        for partition in 0..partitions {
            let reply = log
                .read(sluice_proto::admin::ReadRequest {
                    stream: stream.clone(),
                    partition,
                    from_offset: u64::MAX,
                    max_records: 1,
                    max_bytes: 0,
                })
                .await?
                .into_inner();
            println!(
                "  {:<10} {:>12} {:>12} {:>10}",
                partition,
                reply.start_offset,
                reply.end_offset,
                reply.end_offset - reply.start_offset
            );
        }
    }
    println!("Conditions:");
    println!("  {:<24} {:<8} {:<24} MESSAGE", "TYPE", "STATUS", "REASON");
    for c in object.pointer("/status/conditions").and_then(|c| c.as_array()).into_iter().flatten() {
        let f = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        println!("  {:<24} {:<8} {:<24} {}", f("type"), f("status"), f("reason"), f("message"));
    }
    Ok(())
}
