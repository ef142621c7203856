//! `sluice get`: objects as tables (`-o wide` too), JSON, YAML, names or JSONPath, and `get -w`, the watch that
//! prints each object as it is added, changed or deleted.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde_json::Value;
use sluice_controller::model::KindInfo;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{WatchResourcesRequest, resource_event};

use super::{
    Found, GetArgs, Output, ScopeArgs, check_scope, connect, distinct_kinds, fetch, get_object, parse_targets,
    report_missing, single_object_implied,
};
use crate::admin_channel::AdminChannel;
use crate::admin_cli::from_status;
use crate::resources_print::{Layout, columns, header, object_name, row, table_lines, text_at};
use crate::table;

/// What `-o json|yaml|jsonpath` applies to: the object when one was asked for by name, else a `List`.
fn document(found: &Found, single: bool) -> Value {
    let objects: Vec<Value> = found.objects().map(|(_, object)| object.clone()).collect();
    match objects.as_slice() {
        [object] if single => object.clone(),
        _ => serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects }),
    }
}

/// `-o json|yaml|name|jsonpath` of one document (an object or a List).
fn format_document(output: &Output, document: &Value, names: &[String]) -> Result<String> {
    Ok(match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(document)?),
        Output::Yaml => serde_yaml_ng::to_string(document)?,
        Output::JsonPath(template) => template.render(document).map_err(|e| anyhow::anyhow!("jsonpath: {e}"))?,
        Output::Name => names.iter().map(|name| format!("{name}\n")).collect(),
        Output::Table | Output::Wide => String::new(),
    })
}

/// (namespace, name) of an object.
fn object_key(object: &Value) -> (String, String) {
    (text_at(object, "/metadata/namespace"), text_at(object, "/metadata/name"))
}

/// Where a table printed by `get -w` stands: its columns and widths so far.
struct WatchTable {
    info: &'static KindInfo,
    layout: Layout,
    widths: Option<Vec<usize>>,
}

impl WatchTable {
    /// The list before the changes: sized to all of its rows.
    fn print_block<'a>(&mut self, objects: impl IntoIterator<Item = &'a Value>) -> Result<()> {
        let (lines, widths) = table_lines(self.info, objects, self.layout, chrono::Utc::now());
        if lines.len() > 1 {
            for line in lines {
                outln!("{line}")?;
            }
            self.widths = Some(widths);
        }
        Ok(())
    }

    /// One changed object: the header first if nothing was printed yet; columns only ever widen.
    fn print_row(&mut self, object: &Value) -> Result<()> {
        let columns = columns(self.info, self.layout);
        let row = row(self.info, &columns, self.layout, object, chrono::Utc::now());
        if self.widths.is_none() {
            let header = header(&columns);
            let widths = table::column_widths(&[header.clone(), row.clone()]);
            outln!("{}", table::format_row(&header, &widths))?;
            self.widths = Some(widths);
        }
        let widths = self.widths.get_or_insert_with(Vec::new);
        table::widen_to_fit(widths, &row);
        outln!("{}", table::format_row(&row, widths))?;
        Ok(())
    }
}

pub(crate) async fn get(args: GetArgs) -> Result<()> {
    let targets = parse_targets(&args.targets)?;
    check_scope(&targets, &args.scope)?;
    let watching = args.watch || args.watch_only;
    if watching && distinct_kinds(&targets) > 1 {
        bail!("--watch takes a single kind (kubectl: you may only specify a single resource type)");
    }
    let mut client = connect(&args.admin).await?;
    // A watch opens before the list, so that no change falls between them.
    let stream = match targets.first() {
        Some(target) if watching => Some(
            client
                .watch(WatchResourcesRequest { kind: target.kind.kind.to_string() })
                .await
                .map_err(from_status)?
                .into_inner(),
        ),
        _ => None,
    };
    let found = fetch(&mut client, &targets, &args.scope).await?;
    let layout = Layout {
        all_namespaces: args.scope.all_namespaces,
        wide: matches!(args.output, Output::Wide),
        show_kind: distinct_kinds(&targets) > 1,
    };
    let mut watch_table = targets.first().map(|t| WatchTable { info: t.kind, layout, widths: None });
    if !args.watch_only {
        match (&args.output, &mut watch_table) {
            (Output::Table | Output::Wide, Some(watch_table)) if watching => {
                watch_table.print_block(found.objects().map(|(_, object)| object))?;
            }
            (Output::Table | Output::Wide, _) => print_tables(&found, layout, &args.scope)?,
            (output, _) if watching => {
                // A watch prints each object by itself, the list's objects too.
                for (info, object) in found.objects() {
                    print_watched(output, info, object)?;
                }
            }
            (output, _) => {
                let names: Vec<String> = found.objects().map(|(info, object)| object_name(info, object)).collect();
                out!("{}", format_document(output, &document(&found, single_object_implied(&targets)), &names)?)?;
            }
        }
    }
    if !watching || !found.missing.is_empty() {
        return report_missing(found.missing);
    }
    let (Some(stream), Some(watch_table)) = (stream, watch_table) else {
        return Ok(());
    };
    let shown: BTreeMap<(String, String), Value> =
        found.objects().map(|(_, object)| (object_key(object), object.clone())).collect();
    let names: Vec<String> = targets.iter().filter_map(|t| t.name.clone()).collect();
    watch(&mut client, stream, WatchState { shown, names, table: watch_table }, &args.scope, &args.output).await
}

fn print_tables(found: &Found, layout: Layout, scope: &ScopeArgs) -> Result<()> {
    let now = chrono::Utc::now();
    let mut printed = false;
    for (info, objects) in &found.blocks {
        if objects.is_empty() {
            continue;
        }
        if printed {
            outln!()?;
        }
        for line in table_lines(info, objects, layout, now).0 {
            outln!("{line}")?;
        }
        printed = true;
    }
    if !printed && found.missing.is_empty() {
        if scope.all_namespaces {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {} namespace.", scope.namespace);
        }
    }
    Ok(())
}

/// One object of a watch, in a format other than a table.
fn print_watched(output: &Output, info: &KindInfo, object: &Value) -> Result<()> {
    let text = match output {
        Output::Yaml => format!("---\n{}", serde_yaml_ng::to_string(object)?),
        Output::JsonPath(template) => template.render(object).map_err(|e| anyhow::anyhow!("jsonpath: {e}"))?,
        output => format_document(output, object, &[object_name(info, object)])?,
    };
    out!("{text}")?;
    Ok(())
}

/// What a watch has shown: the last form (with status) of every object printed, the list's included, by
/// (namespace, name), so that the stream's initial ADDED events of objects the list printed at the same
/// `resourceVersion` are skipped, and a deleted object's row shows its last status; the names asked for;
/// the table.
struct WatchState {
    shown: BTreeMap<(String, String), Value>,
    names: Vec<String>,
    table: WatchTable,
}

/// Whether a watch event repeats what was printed: the ADDED events the stream starts with, for objects the
/// list printed at the same `resourceVersion`.
fn is_shown_already(shown: &BTreeMap<(String, String), Value>, event_type: i32, object: &Value) -> bool {
    let version = |o: &Value| text_at(o, "/metadata/resourceVersion");
    event_type == resource_event::Type::Added as i32
        && shown.get(&object_key(object)).is_some_and(|shown| version(shown) == version(object))
}

async fn watch(
    client: &mut ResourcesClient<AdminChannel>,
    mut stream: tonic::Streaming<sluice_proto::admin::ResourceEvent>,
    mut state: WatchState,
    scope: &ScopeArgs,
    output: &Output,
) -> Result<()> {
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            _ = &mut stop => return Ok(()),
            message = stream.message() => message,
        };
        let Some(event) = message.map_err(from_status)? else {
            return Ok(());
        };
        let Ok(object) = serde_json::from_str::<Value>(&event.object_json) else {
            continue;
        };
        let name = text_at(&object, "/metadata/name");
        if !scope.contains(&object) || !(state.names.is_empty() || state.names.contains(&name)) {
            continue;
        }
        let key = object_key(&object);
        if is_shown_already(&state.shown, event.r#type, &object) {
            continue;
        }
        let shown = if event.r#type == resource_event::Type::Deleted as i32 {
            // Its last status, as kubectl shows a deleted object.
            state.shown.remove(&key).unwrap_or(object)
        } else {
            // The stream carries objects as stored; their status is derived on Get.
            let shown = match get_object(client, state.table.info, &key.0, &key.1).await? {
                Ok(with_status) => with_status,
                Err(_) => object,
            };
            state.shown.insert(key, shown.clone());
            shown
        };
        match output {
            Output::Table | Output::Wide => state.table.print_row(&shown)?,
            output => print_watched(output, state.table.info, &shown)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources_cmd::{parse_output, resolve_kind};

    fn trigger(name: &str, uri: &str, created: &str) -> Value {
        json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created, "generation": 2},
            "spec": {"broker": "default", "subscriber": {"uri": uri}},
            "status": {"subscriberUri": uri, "conditions": [{"type": "Ready", "status": "True"}]},
        })
    }

    #[test]
    fn trigger_tables_have_knatives_columns_sized_to_their_content() -> Result<()> {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")?.to_utc();
        let long = "http://subscriber.with-a-very-long-host-name.example.com:8080/deliver/here";
        let objects = [trigger("a", "http://x/", "2026-01-01T11:59:15Z"), trigger("b", long, "2026-01-01T11:57:00Z")];
        let info = resolve_kind("triggers")?;
        let (lines, _) = table_lines(info, &objects, Layout::default(), now);
        let pad = |text: &str, width: usize| format!("{text:<width$}");
        let uri_width = long.len() + 3;
        assert_eq!(
            lines,
            [
                format!("NAME   BROKER    {}AGE   READY   REASON", pad("SUBSCRIBER_URI", uri_width)),
                format!("a      default   {}45s   True", pad("http://x/", uri_width)),
                format!("b      default   {}3m    True", pad(long, uri_width)),
            ]
        );
        let wide = Layout { all_namespaces: true, wide: true, show_kind: true };
        let (lines, _) = table_lines(info, &objects[..1], wide, now);
        assert_eq!(
            lines,
            [
                "NAMESPACE   NAME                             BROKER    SUBSCRIBER_URI   AGE   READY   REASON   GENERATION",
                "default     trigger.eventing.knative.dev/a   default   http://x/        45s   True             2",
            ]
        );
        let broker = json!({"metadata": {"name": "default", "namespace": "default"},
                            "status": {"address": {"url": "http://127.0.0.1:8080/default/default"}}});
        let (lines, _) = table_lines(resolve_kind("broker")?, &[broker], Layout::default(), now);
        assert_eq!(lines[0], "NAME      URL                                     AGE         READY     REASON");
        assert_eq!(lines[1], "default   http://127.0.0.1:8080/default/default   <unknown>   Unknown");
        let (lines, _) = table_lines(resolve_kind("sub")?, &[], Layout::default(), now);
        assert_eq!(lines, ["NAME   AGE   READY   REASON"]);
        Ok(())
    }

    #[test]
    fn outputs_other_than_tables() -> Result<()> {
        let objects =
            vec![trigger("a", "http://x/", "2026-01-01T11:59:15Z"), trigger("b", "http://y/", "2026-01-01T11:59:15Z")];
        let info = resolve_kind("trigger")?;
        let found = Found { blocks: vec![(info, objects)], missing: Vec::new() };
        let list = document(&found, false);
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
        let one = Found { blocks: vec![(info, vec![trigger("a", "http://x/", "")])], missing: Vec::new() };
        assert_eq!(document(&one, true)["kind"], "Trigger", "one object asked for by name is shown by itself");
        assert_eq!(document(&one, false)["kind"], "List");
        let names: Vec<String> = found.objects().map(|(info, o)| object_name(info, o)).collect();
        assert_eq!(
            format_document(&Output::Name, &list, &names)?,
            "trigger.eventing.knative.dev/a\ntrigger.eventing.knative.dev/b\n"
        );
        let template = parse_output("jsonpath={range .items[*]}{.metadata.name}={.status.subscriberUri}{\"\\n\"}{end}");
        let template = template.map_err(|e| anyhow::anyhow!(e))?;
        assert_eq!(format_document(&template, &list, &names)?, "a=http://x/\nb=http://y/\n");
        assert!(parse_output("jsonpath={.a").is_err());
        assert!(parse_output("go-template={{.a}}").is_err());
        Ok(())
    }

    #[test]
    fn a_watch_skips_only_the_initial_added_events_of_listed_objects() {
        let object = |name: &str, version: &str| json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": version}});
        let listed = [object("a", "5")];
        let shown: BTreeMap<(String, String), Value> = listed.iter().map(|o| (object_key(o), o.clone())).collect();
        let (added, modified, deleted) = (
            resource_event::Type::Added as i32,
            resource_event::Type::Modified as i32,
            resource_event::Type::Deleted as i32,
        );
        assert!(is_shown_already(&shown, added, &object("a", "5")), "listed at this version");
        assert!(!is_shown_already(&shown, added, &object("a", "6")), "changed between the watch and the list");
        assert!(!is_shown_already(&shown, added, &object("b", "7")), "new");
        assert!(!is_shown_already(&shown, modified, &object("a", "5")));
        assert!(!is_shown_already(&shown, deleted, &object("a", "5")));
    }
}
