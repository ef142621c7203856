//! `sluice apply | get | describe | delete`: Knative resource objects through a node's admin API, the way
//! kubectl handles them: several kinds (`get broker,trigger`) and names (`get trigger a b`, `get trigger/a`),
//! label selectors (`-l`), `-o wide|json|yaml|name|jsonpath=TEMPLATE`, `get -w`, `delete --all`,
//! `apply --dry-run=server|client`. An object that does not exist is exit 3 with kubectl's message. See
//! docs/operations.md, "Resources".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::admin_channel::AdminChannel;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use sluice_controller::model::{KindInfo, kind_info};
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{
    ApplyResourceRequest, ListResourcesRequest, ResourceRef, WatchResourcesRequest, resource_event,
};
use sluice_proto::errors::{ErrorCode, error_status};
use tonic::{Code, Status};

use crate::admin_cli::{AdminError, EXIT_NOT_FOUND, ServerError, error_code_suffix, exit_code_for, from_status};
use crate::jsonpath::Template;
use crate::resources_print::*;
use crate::selector::Selector;
use crate::table;

/// kubectl's `--dry-run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DryRun {
    /// Store the objects.
    None,
    /// Validate each object here and compare it with the stored one (read with Get): nothing is sent to be
    /// stored.
    Client,
    /// The node validates and merges each object as it would store it, and stores nothing.
    Server,
}

impl DryRun {
    /// What kubectl appends to each line.
    fn suffix(self) -> &'static str {
        match self {
            DryRun::None => "",
            DryRun::Client => " (dry run)",
            DryRun::Server => " (server dry run)",
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct ApplyArgs {
    /// A YAML or JSON file (several documents allowed), a directory of them, or - for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Only show what would happen: server (the node validates and merges, stores nothing) or client
    /// (validated here against the stored object).
    #[arg(long, value_enum, default_value = "none")]
    dry_run: DryRun,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

/// Which objects: a namespace (or all of them) and a label selector.
#[derive(Args, Clone, Debug)]
pub(crate) struct ScopeArgs {
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Only objects whose labels match, e.g. app=x, app!=x, 'app in (a,b)', 'app notin (a)', app, '!app';
    /// commas join requirements that must all hold.
    #[arg(short = 'l', long, value_parser = Selector::parse)]
    selector: Option<Selector>,
}

impl ScopeArgs {
    fn contains(&self, object: &Value) -> bool {
        let in_namespace = self.all_namespaces || str_at(object, "/metadata/namespace") == self.namespace;
        in_namespace && self.selector.as_ref().is_none_or(|selector| selector.matches(object))
    }
}

/// How `get` prints objects (`-o`).
#[derive(Clone, Debug)]
pub(crate) enum Output {
    Table,
    Wide,
    Json,
    Yaml,
    Name,
    JsonPath(Template),
}

fn parse_output(text: &str) -> Result<Output, String> {
    match text {
        "table" => Ok(Output::Table),
        "wide" => Ok(Output::Wide),
        "json" => Ok(Output::Json),
        "yaml" => Ok(Output::Yaml),
        "name" => Ok(Output::Name),
        _ => match text.strip_prefix("jsonpath=") {
            Some(template) => Template::parse(template).map(Output::JsonPath).map_err(|e| format!("jsonpath: {e}")),
            None => Err("expected table, wide, json, yaml, name or jsonpath=TEMPLATE".into()),
        },
    }
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// KIND[,KIND...] [NAME...], or KIND/NAME...; kinds: brokers, triggers, channels, inmemorychannels,
    /// subscriptions (or broker, trigger, ch, imc, sub).
    #[arg(required = true, value_name = "KIND [NAME]")]
    targets: Vec<String>,
    #[command(flatten)]
    scope: ScopeArgs,
    /// table (the default), wide, json, yaml, name, or jsonpath=TEMPLATE (kubectl's JSONPath, e.g.
    /// jsonpath='{.items[*].metadata.name}').
    #[arg(short = 'o', long, default_value = "table", value_parser = parse_output)]
    output: Output,
    /// After the list, print objects as they are added, changed or deleted, until Ctrl-C.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Like --watch, without printing the list first.
    #[arg(long)]
    watch_only: bool,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

#[derive(Args, Debug)]
pub(crate) struct DeleteArgs {
    /// KIND[,KIND...] NAME..., or KIND/NAME...; with --all or -l only the kinds.
    #[arg(value_name = "KIND [NAME]")]
    targets: Vec<String>,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Every object of the kinds in the namespace (with -A, in every namespace).
    #[arg(long)]
    all: bool,
    /// A missing object is not an error.
    #[arg(long)]
    ignore_not_found: bool,
    /// Delete the objects these files describe.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

#[derive(Args, Debug)]
pub(crate) struct DescribeArgs {
    /// KIND [NAME...], or KIND/NAME...; without a name, every object of the kind.
    #[arg(required = true, value_name = "KIND [NAME]")]
    targets: Vec<String>,
    #[command(flatten)]
    scope: ScopeArgs,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

async fn connect(admin: &str) -> Result<ResourcesClient<AdminChannel>> {
    crate::admin_channel::connect(admin).await.map(ResourcesClient::new).map_err(|e| {
        anyhow::Error::new(AdminError {
            exit_code: crate::admin_cli::EXIT_UNAVAILABLE,
            message: format!("cannot reach the admin API at {admin} (--admin): {e}"),
        })
    })
}

/// kubectl's `Error from server (NotFound): triggers.eventing.knative.dev "nope" not found`.
fn not_found(info: &KindInfo, name: &str, status: &Status) -> ServerError {
    ServerError {
        exit_code: EXIT_NOT_FOUND,
        reason: "NotFound",
        message: format!("{}.{} \"{name}\" not found{}", info.plural, group(info), error_code_suffix(status)),
    }
}

/// How a document of a manifest is named in apply's output: `trigger.eventing.knative.dev/NAME` from its
/// kind, API group and name (`service/NAME` for the core group, `<no kind>` and `<no name>` for what is
/// missing).
fn display_name(object: &Value) -> String {
    if !object.is_object() {
        return "<not an object>".into();
    }
    let kind = str_at(object, "/kind");
    let name = Some(str_at(object, "/metadata/name")).filter(|n| !n.is_empty()).unwrap_or("<no name>");
    if kind.is_empty() {
        return format!("<no kind>/{name}");
    }
    let group = match object.get("apiVersion").and_then(Value::as_str) {
        Some(api_version) => api_version.split_once('/').map(|(group, _)| group).unwrap_or_default(),
        // Without an apiVersion, the group Sluice knows for the kind.
        None => kind_info(kind).map(group).unwrap_or_default(),
    };
    let kind = kind.to_ascii_lowercase();
    if group.is_empty() { format!("{kind}/{name}") } else { format!("{kind}.{group}/{name}") }
}

/// Every document of every file, as (file, index, object).
fn read_documents(files: &[PathBuf]) -> Result<Vec<(String, usize, Value)>> {
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
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading standard input")?;
            ("-".to_string(), text)
        } else {
            (
                path.display().to_string(),
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
            )
        };
        for (index, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(document)
                .map_err(|e| anyhow::anyhow!("{name}: document {index}: not valid YAML: {e}"))?;
            if !value.is_null() {
                documents.push((name.clone(), index, value));
            }
        }
    }
    Ok(documents)
}

/// `--dry-run=client`: validated here as the node would (immutable fields against the stored object, read
/// with Get), and the outcome Apply would report. Nothing is sent to be stored.
async fn client_dry_run(client: &mut ResourcesClient<AdminChannel>, object: &Value) -> Result<String, Status> {
    let invalid = |errors: Vec<sluice_controller::validate::FieldError>| {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        error_status(ErrorCode::InvalidResource, text.join("; "))
    };
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.entry("namespace").or_insert_with(|| "default".into());
    }
    sluice_controller::validate::validate_object(&object, None).map_err(invalid)?;
    let reference = ResourceRef {
        kind: str_at(&object, "/kind").to_string(),
        namespace: str_at(&object, "/metadata/namespace").to_string(),
        name: str_at(&object, "/metadata/name").to_string(),
    };
    let existing: Option<Value> = match client.get(reference).await {
        Ok(reply) => serde_json::from_str(&reply.into_inner().object_json).ok(),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => return Err(status),
    };
    sluice_controller::validate::validate_object(&object, existing.as_ref()).map_err(invalid)?;
    let (_, outcome) = sluice_controller::meta::merge_for_apply(existing.as_ref(), object, "", "", 0);
    Ok(outcome.as_str().to_string())
}

pub(crate) async fn apply(args: ApplyArgs) -> Result<()> {
    let documents = read_documents(&args.files)?;
    let mut client = connect(&args.admin).await?;
    let mut rejected = 0;
    let mut exit_code = None;
    for (file, index, object) in documents {
        let name = display_name(&object);
        let outcome = match args.dry_run {
            DryRun::Client => client_dry_run(&mut client, &object).await,
            DryRun::None | DryRun::Server => client
                .apply(ApplyResourceRequest {
                    object_json: object.to_string(),
                    dry_run: args.dry_run == DryRun::Server,
                })
                .await
                .map(|reply| reply.into_inner().outcome),
        };
        match outcome {
            Ok(outcome) => outln!("{name} {outcome}{}", args.dry_run.suffix())?,
            Err(status) => {
                eprintln!(
                    "error: {file}: document {index} ({name}): {}{}",
                    status.message(),
                    error_code_suffix(&status)
                );
                rejected += 1;
                exit_code.get_or_insert(exit_code_for(status.code()));
            }
        }
    }
    if rejected > 0 {
        return Err(anyhow::Error::new(AdminError {
            exit_code: exit_code.unwrap_or(1),
            message: format!("{rejected} object(s) rejected"),
        }));
    }
    Ok(())
}

fn resolve_kind(kind: &str) -> Result<&'static KindInfo> {
    kind_info(kind).with_context(|| {
        format!("unknown kind {kind:?}: use brokers, triggers, channels, inmemorychannels or subscriptions")
    })
}

/// One kind, and one of its objects or (None) all of them in scope.
#[derive(Clone, Debug, PartialEq)]
struct Target {
    kind: &'static KindInfo,
    name: Option<String>,
}

/// The positional arguments of get, describe and delete, as kubectl reads them: `KIND[,KIND...] [NAME...]`
/// (each kind with each name), or `KIND/NAME...`.
fn parse_targets(args: &[String]) -> Result<Vec<Target>> {
    let Some(first) = args.first() else {
        bail!("say which kind: e.g. triggers, brokers, trigger NAME, trigger/NAME");
    };
    if first.contains('/') {
        return args
            .iter()
            .map(|arg| {
                let Some((kind, name)) = arg.split_once('/').filter(|(_, name)| !name.is_empty()) else {
                    bail!(
                        "{arg:?}: there is no need to specify a resource type as a separate argument when passing \
                         arguments in resource/name form (e.g. 'trigger/a trigger/b')"
                    );
                };
                Ok(Target { kind: resolve_kind(kind)?, name: Some(name.to_string()) })
            })
            .collect();
    }
    let mut kinds: Vec<&'static KindInfo> = Vec::new();
    for kind in first.split(',').filter(|k| !k.is_empty()) {
        let info = resolve_kind(kind)?;
        if !kinds.contains(&info) {
            kinds.push(info);
        }
    }
    if kinds.is_empty() {
        bail!("{first:?} names no kind");
    }
    let names = &args[1..];
    if let Some(bad) = names.iter().find(|n| n.contains('/')) {
        bail!("{bad:?}: a name after a kind has no '/'; use either KIND NAME... or KIND/NAME...");
    }
    Ok(kinds
        .into_iter()
        .flat_map(|kind| match names {
            [] => vec![Target { kind, name: None }],
            names => names.iter().map(|name| Target { kind, name: Some(name.clone()) }).collect(),
        })
        .collect())
}

/// kubectl prints a lone object (not a List) when exactly one object was asked for by name.
fn single_object_implied(targets: &[Target]) -> bool {
    matches!(targets, [Target { name: Some(_), .. }])
}

fn distinct_kinds(targets: &[Target]) -> usize {
    let mut kinds: Vec<&str> = targets.iter().map(|t| t.kind.kind).collect();
    kinds.dedup();
    kinds.len()
}

fn check_scope(targets: &[Target], scope: &ScopeArgs) -> Result<()> {
    let named = targets.iter().any(|t| t.name.is_some());
    if named && scope.selector.is_some() {
        bail!("name cannot be provided when a selector is specified");
    }
    if named && scope.all_namespaces {
        bail!("a resource cannot be retrieved by name across all namespaces");
    }
    Ok(())
}

/// An object by name, with its status; `Ok(Err(not found))` when it does not exist.
async fn get_object(
    client: &mut ResourcesClient<AdminChannel>,
    info: &'static KindInfo,
    namespace: &str,
    name: &str,
) -> Result<Result<Value, ServerError>> {
    let reference =
        ResourceRef { kind: info.kind.to_string(), namespace: namespace.to_string(), name: name.to_string() };
    match client.get(reference).await {
        Ok(reply) => {
            let json = reply.into_inner().object_json;
            Ok(Ok(serde_json::from_str(&json).with_context(|| format!("the node answered {name} with bad JSON"))?))
        }
        Err(status) if status.code() == Code::NotFound => Ok(Err(not_found(info, name, &status))),
        Err(status) => Err(from_status(status)),
    }
}

/// Every object of a kind within the scope, with its status.
async fn list_objects(
    client: &mut ResourcesClient<AdminChannel>,
    info: &KindInfo,
    scope: &ScopeArgs,
) -> Result<Vec<Value>> {
    let list = client.list(ListResourcesRequest { kind: info.kind.to_string() }).await.map_err(from_status)?;
    Ok(list
        .into_inner()
        .objects_json
        .iter()
        .filter_map(|json| serde_json::from_str(json).ok())
        .filter(|object| scope.contains(object))
        .collect())
}

/// The objects of each kind asked for, in the order asked, and the named ones that do not exist.
struct Found {
    blocks: Vec<(&'static KindInfo, Vec<Value>)>,
    missing: Vec<ServerError>,
}

impl Found {
    fn objects(&self) -> impl Iterator<Item = (&'static KindInfo, &Value)> {
        self.blocks.iter().flat_map(|(info, objects)| objects.iter().map(move |object| (*info, object)))
    }
}

async fn fetch(client: &mut ResourcesClient<AdminChannel>, targets: &[Target], scope: &ScopeArgs) -> Result<Found> {
    let mut found = Found { blocks: Vec::new(), missing: Vec::new() };
    for target in targets {
        let objects = match &target.name {
            None => list_objects(client, target.kind, scope).await?,
            Some(name) => match get_object(client, target.kind, &scope.namespace, name).await? {
                Ok(object) => vec![object],
                Err(missing) => {
                    found.missing.push(missing);
                    Vec::new()
                }
            },
        };
        match found.blocks.iter_mut().find(|(kind, _)| *kind == target.kind) {
            Some((_, block)) => block.extend(objects),
            None => found.blocks.push((target.kind, objects)),
        }
    }
    Ok(found)
}

/// Prints every not-found error but the last, and answers the last (exit 3), as kubectl reports each.
fn report_missing(mut missing: Vec<ServerError>) -> Result<()> {
    let Some(last) = missing.pop() else {
        return Ok(());
    };
    for error in missing {
        eprintln!("{error}");
    }
    Err(anyhow::Error::new(last))
}

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
        Output::JsonPath(template) => template.render(document),
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
        Output::JsonPath(template) => template.render(object),
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

pub(crate) async fn delete(args: DeleteArgs) -> Result<()> {
    let mut client = connect(&args.admin).await?;
    let mut doomed: Vec<(&'static KindInfo, String, String)> = Vec::new();
    if !args.files.is_empty() {
        if !args.targets.is_empty() || args.all {
            bail!("give either -f FILE or KIND NAME..., not both");
        }
        for (_, _, object) in read_documents(&args.files)? {
            let namespace = Some(str_at(&object, "/metadata/namespace")).filter(|n| !n.is_empty());
            doomed.push((
                resolve_kind(str_at(&object, "/kind"))?,
                namespace.unwrap_or(&args.scope.namespace).to_string(),
                str_at(&object, "/metadata/name").to_string(),
            ));
        }
    } else {
        let targets = parse_targets(&args.targets)?;
        check_scope(&targets, &args.scope)?;
        let named = targets.iter().any(|t| t.name.is_some());
        if args.all || args.scope.selector.is_some() {
            if named {
                bail!("names cannot be given with --all or --selector");
            }
            for target in &targets {
                for object in list_objects(&mut client, target.kind, &args.scope).await? {
                    doomed.push((
                        target.kind,
                        text_at(&object, "/metadata/namespace"),
                        text_at(&object, "/metadata/name"),
                    ));
                }
            }
            if doomed.is_empty() {
                eprintln!("No resources found");
            }
        } else if !named {
            bail!(
                "resource(s) were provided, but no name was specified: give names, or --all for every object of the kind"
            );
        } else {
            for target in targets {
                doomed.push((target.kind, args.scope.namespace.clone(), target.name.unwrap_or_default()));
            }
        }
    }
    let mut missing = Vec::new();
    for (info, namespace, name) in doomed {
        let reference = ResourceRef { kind: info.kind.to_string(), namespace, name: name.clone() };
        match client.delete(reference).await {
            Ok(_) => outln!("{} \"{name}\" deleted", resource(info))?,
            Err(status) if status.code() == Code::NotFound => {
                if !args.ignore_not_found {
                    missing.push(not_found(info, &name, &status));
                }
            }
            Err(status) => return Err(from_status(status)),
        }
    }
    report_missing(missing)
}

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
    for (label, pointer) in [
        ("Address", "/status/address/url"),
        ("Subscriber", "/status/subscriberUri"),
        ("Reply", "/status/replyUri"),
        ("Dead letters", "/status/deadLetterSinkUri"),
    ] {
        if object.pointer(pointer).is_some() {
            outln!("{:<14}{}", format!("{label}:"), s(pointer))?;
        }
    }
    outln!("Spec:")?;
    for line in serde_yaml_ng::to_string(object.get("spec").unwrap_or(&Value::Null))?.lines() {
        outln!("  {line}")?;
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

/// The autoscaler's last decisions for the object's revisions on the node asked (instances run on the node
/// that serves the request, so each node decides for its own).
async fn describe_decisions(admin: &str, kind: &str, namespace: &str, name: &str) -> Result<()> {
    const SHOWN: usize = 10;
    let request = sluice_proto::admin::DecisionsRequest {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
        follow: false,
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
    if decisions.is_empty() {
        outln!("Autoscaler:   no decisions on this node (its revisions do not run here)")?;
        return Ok(());
    }
    outln!("Autoscaler (the last {SHOWN} decisions on this node):")?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut rows = vec![
        ["REVISION", "AGE", "DESIRED", "READY", "REASON", "PANIC", "METRIC STABLE/PANIC", "BACKLOG", "WANTED M/P/B"]
            .map(String::from)
            .to_vec(),
    ];
    for d in decisions.iter().rev().take(SHOWN).rev() {
        rows.push(vec![
            d.revision.clone(),
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

    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn display_names_of_mixed_manifests() {
        let trigger = json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "t"}});
        assert_eq!(display_name(&trigger), "trigger.eventing.knative.dev/t");
        let imc =
            json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "metadata": {"name": "c"}});
        assert_eq!(display_name(&imc), "inmemorychannel.messaging.knative.dev/c");
        // The core group has no group part, as in kubectl's `service/x`.
        assert_eq!(
            display_name(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}})),
            "service/x"
        );
        // Without apiVersion, the group Sluice knows for the kind.
        assert_eq!(
            display_name(&json!({"kind": "Broker", "metadata": {"name": "b"}})),
            "broker.eventing.knative.dev/b"
        );
        assert_eq!(display_name(&json!({"kind": "Widget", "metadata": {"name": "w"}})), "widget/w");
        assert_eq!(
            display_name(&json!({"apiVersion": "eventing.knative.dev/v1", "metadata": {"name": "n"}})),
            "<no kind>/n"
        );
        assert_eq!(
            display_name(&json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger"})),
            "trigger.eventing.knative.dev/<no name>"
        );
        assert_eq!(display_name(&json!({})), "<no kind>/<no name>");
        assert_eq!(display_name(&json!(["a list"])), "<not an object>");
    }

    #[test]
    fn targets_read_as_kubectl_reads_them() -> Result<()> {
        let described = |args: &[&str]| -> Result<Vec<(String, Option<String>)>> {
            Ok(parse_targets(&strings(args))?.into_iter().map(|t| (t.kind.kind.to_string(), t.name)).collect())
        };
        assert_eq!(described(&["triggers"])?, [("Trigger".into(), None)]);
        assert_eq!(
            described(&["trigger", "a", "b"])?,
            [("Trigger".into(), Some("a".into())), ("Trigger".into(), Some("b".into()))]
        );
        assert_eq!(described(&["brokers,triggers"])?, [("Broker".into(), None), ("Trigger".into(), None)]);
        assert_eq!(described(&["broker,brokers,imc"])?, [("Broker".into(), None), ("InMemoryChannel".into(), None)]);
        assert_eq!(
            described(&["trigger/a", "broker/default"])?,
            [("Trigger".into(), Some("a".into())), ("Broker".into(), Some("default".into()))]
        );
        assert!(parse_targets(&strings(&["trigger/a", "b"])).is_err(), "mixed forms");
        assert!(parse_targets(&strings(&["trigger", "broker/b"])).is_err());
        assert!(parse_targets(&strings(&["pods"])).is_err());
        assert!(parse_targets(&strings(&["trigger/"])).is_err());
        assert!(parse_targets(&[]).is_err());
        assert!(single_object_implied(&parse_targets(&strings(&["trigger", "a"]))?));
        assert!(single_object_implied(&parse_targets(&strings(&["trigger/a"]))?));
        assert!(!single_object_implied(&parse_targets(&strings(&["trigger", "a", "b"]))?));
        assert!(!single_object_implied(&parse_targets(&strings(&["triggers"]))?));
        Ok(())
    }

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

    #[test]
    fn dry_run_suffixes_are_kubectls() {
        assert_eq!(DryRun::None.suffix(), "");
        assert_eq!(DryRun::Client.suffix(), " (dry run)");
        assert_eq!(DryRun::Server.suffix(), " (server dry run)");
    }

    #[test]
    fn not_found_reads_as_kubectl() -> Result<()> {
        let status = error_status(ErrorCode::ResourceNotFound, "Trigger default/nope not found");
        let error = not_found(resolve_kind("trigger")?, "nope", &status);
        assert_eq!(
            error.to_string(),
            "Error from server (NotFound): triggers.eventing.knative.dev \"nope\" not found (RESOURCE_NOT_FOUND 1008)"
        );
        assert_eq!(error.exit_code, 3);
        Ok(())
    }
}
